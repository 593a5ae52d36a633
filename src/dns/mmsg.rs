//! Batched UDP I/O: `recvmmsg`/`sendmmsg` move up to [`BATCH`] datagrams per system call, which
//! is most of the cost of answering from a precomputed table.
//!
//! Buffers are allocated once per socket; the kernel headers pointing into them are rebuilt
//! before each call (cheap, and it keeps the structs free of self-references).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query we read; a longer one arrives truncated and is dropped.
const SLOT: usize = 4096;

/// A client's address as the kernel gave it, so replies go back without conversion.
#[derive(Clone, Copy)]
pub struct Peer {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Peer {
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the kernel wrote a sockaddr of the family it reports, and sockaddr_storage is
        // large and aligned enough for every family.
        unsafe {
            match self.storage.ss_family as libc::c_int {
                libc::AF_INET => {
                    let sin = &*(&self.storage as *const _ as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
                }
                libc::AF_INET6 => {
                    let sin6 = &*(&self.storage as *const _ as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    let port = u16::from_be(sin6.sin6_port);
                    Some(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
                }
                _ => None,
            }
        }
    }
}

/// Points one message header at `buf` (through `iov`) and at `peer`'s address, of which
/// `namelen` bytes are used (to send) or available (to receive).
fn aim(
    hdr: &mut libc::mmsghdr,
    iov: &mut libc::iovec,
    buf: &mut [u8],
    peer: &mut Peer,
    namelen: libc::socklen_t,
) {
    iov.iov_base = buf.as_mut_ptr().cast();
    iov.iov_len = buf.len();
    let msg = &mut hdr.msg_hdr;
    msg.msg_name = (&mut peer.storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = namelen;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
}

/// Received datagrams: [`RecvBatch::recv`] fills it, [`RecvBatch::get`] reads it.
pub struct RecvBatch {
    data: Box<[u8]>,
    peers: Vec<Peer>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            data: vec![0; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            peers: vec![unsafe { zeroed() }; BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
        }
    }
}

impl RecvBatch {
    /// Reads whatever is queued, up to [`BATCH`] datagrams, without blocking.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let room = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let slots = self.data.chunks_exact_mut(SLOT).zip(&mut self.peers);
        for (i, (chunk, peer)) in slots.enumerate() {
            aim(&mut hdrs[i], &mut iovs[i], chunk, peer, room);
        }
        // SAFETY: every header points into buffers owned by self (or the local iovecs) that
        // outlive the call, with their true lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, hdr) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = hdr.msg_len as usize;
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.peers[i].len = hdr.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]; `None` if it did not fit a slot.
    pub fn get(&self, i: usize) -> Option<(&[u8], Peer)> {
        if self.truncated[i] {
            return None;
        }
        Some((&self.data[i * SLOT..i * SLOT + self.lens[i]], self.peers[i]))
    }
}

/// Replies waiting to be sent with one `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    replies: Vec<(Vec<u8>, Peer)>,
    /// Replies filled so far; the rest of `replies` are spare buffers.
    queued: usize,
    /// Replies already handed to the kernel.
    sent: usize,
}

impl SendBatch {
    /// An empty buffer for the next reply; it is sent only after [`SendBatch::commit`].
    pub fn next_buffer(&mut self) -> &mut Vec<u8> {
        if self.queued == self.replies.len() {
            // SAFETY: as in RecvBatch::default.
            let peer = Peer {
                storage: unsafe { zeroed() },
                len: 0,
            };
            self.replies.push((Vec::with_capacity(1232), peer));
        }
        let buf = &mut self.replies[self.queued].0;
        buf.clear();
        buf
    }

    pub fn commit(&mut self, peer: Peer) {
        self.replies[self.queued].1 = peer;
        self.queued += 1;
    }

    fn is_empty(&self) -> bool {
        self.sent == self.queued
    }

    /// Sends queued replies, as many as the kernel takes now; returns how many it took.
    fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let pending = &mut self.replies[self.sent..self.queued];
        let count = pending.len().min(BATCH);
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (buf, peer)) in pending.iter_mut().take(count).enumerate() {
            let len = peer.len;
            aim(&mut hdrs[i], &mut iovs[i], buf, peer, len);
        }
        // SAFETY: as in RecvBatch::recv; the kernel only reads these buffers.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.advance(n as usize);
        Ok(n as usize)
    }

    /// Sends every queued reply on `socket`, waiting for buffer space if the kernel has none. A
    /// reply whose send fails otherwise (an unreachable client, say) is given up.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let fd = socket.as_raw_fd();
        while !self.is_empty() {
            let sent = socket.async_io(Interest::WRITABLE, || self.send(fd)).await;
            if let Err(error) = sent {
                debug!(%error, "UDP send failed");
                self.advance(1);
            }
        }
    }

    fn advance(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.queued {
            self.sent = 0;
            self.queued = 0;
        }
    }
}
