//! The TCP listener: length-prefixed messages (RFC 1035 §4.2.2), several per connection, answered
//! in order, within limits that keep one client from holding the listener (RFC 7766 §6.2.3):
//! a cap on open connections across every listener, a cap per client (an IPv4 address, or an
//! IPv6 /64), an idle timeout that drops to one second while more than half the slots are
//! taken, and a lifetime after which a connection is closed however busy it is, so a client
//! trickling queries cannot keep its slots forever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info};

use super::client::network;
use super::transfer::TransferStream;
use super::{Action, Handler};
use crate::wire::Transport;
use crate::wire::request::Request;
use crate::wire::tsig::ReplySigner;
use crate::zone::NameTable;

/// What every TCP listener of the server holds to together.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    pub connections: usize,
    pub per_client: usize,
    pub idle: Duration,
    pub lifetime: Duration,
}

/// The idle timeout while more than half the connection slots are taken.
const BUSY_IDLE: Duration = Duration::from_secs(1);

/// The connection slots shared by every TCP listener.
pub struct TcpSlots {
    limits: TcpLimits,
    total: Arc<Semaphore>,
    clients: Mutex<HashMap<IpNet, usize>>,
}

/// One open connection's slot, given back when dropped.
pub(super) struct Slot {
    slots: Arc<TcpSlots>,
    client: IpNet,
    _permit: OwnedSemaphorePermit,
}

impl TcpSlots {
    pub fn new(limits: TcpLimits) -> Arc<Self> {
        Arc::new(TcpSlots {
            limits,
            total: Arc::new(Semaphore::new(limits.connections)),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `client`, unless it or the server has no more.
    /// How long a connection may stay open however busy it is.
    pub(super) fn lifetime(&self) -> Duration {
        self.limits.lifetime
    }

    pub(super) fn take(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let client = client_key(client);
        let mut clients = self.clients.lock().expect("TCP client counts");
        let count = clients.entry(client).or_insert(0);
        if *count >= self.limits.per_client {
            return None;
        }
        let permit = self.total.clone().try_acquire_owned().ok()?;
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            client,
            _permit: permit,
        })
    }

    /// How long a connection may wait for its next query right now.
    fn idle_timeout(&self) -> Duration {
        let taken = self.limits.connections - self.total.available_permits();
        if taken * 2 > self.limits.connections {
            self.limits.idle.min(BUSY_IDLE)
        } else {
            self.limits.idle
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self.slots.clients.lock().expect("TCP client counts");
        if let Some(count) = clients.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

/// A client as the per-client cap counts it: an IPv4 address, or an IPv6 /64 (one host's
/// usual share of addresses).
fn client_key(ip: IpAddr) -> IpNet {
    network(ip, 32, 64)
}

pub async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>, slots: Arc<TcpSlots>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            debug!(%peer, "too many TCP connections from this client or in all; closing");
            continue;
        };
        let handler = handler.clone();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, peer.ip(), &handler, &slot).await {
                debug!(%peer, %error, "TCP connection ended");
            }
            drop(slot);
        });
    }
}

/// Answers the queries of one stream (TCP, or TLS over TCP) until the client closes it, goes
/// idle, or its lifetime is over.
pub(super) async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    client: IpAddr,
    handler: &Handler,
    slot: &Slot,
) -> std::io::Result<()> {
    let end_of_life = Instant::now() + slot.slots.limits.lifetime;
    let mut packet = Vec::new();
    let mut out = Vec::with_capacity(4096);
    loop {
        let left = end_of_life.saturating_duration_since(Instant::now());
        let wait = slot.slots.idle_timeout().min(left);
        let len = match tokio::time::timeout(wait, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle, or its lifetime is over
        };
        packet.resize(len, 0);
        tokio::time::timeout(slot.slots.limits.idle, stream.read_exact(&mut packet)).await??;
        let reply = match handler.handle(&packet, Transport::Tcp, client, &mut out) {
            Action::Reply => &out,
            Action::Transfer(req, table, signer) => {
                let idle = slot.slots.limits.idle;
                send_zone(&mut stream, &req, &table, signer, client, idle).await?;
                continue;
            }
            Action::Forward(req, started) => {
                out = handler
                    .forward(&req, &packet, Transport::Tcp, client, started)
                    .await;
                &out
            }
            // Nothing sensible can follow an unanswerable message on a stream.
            Action::Drop => return Ok(()),
        };
        write_framed(&mut stream, reply).await?;
    }
}

/// One message with its two-byte length (RFC 1035 §4.2.2).
async fn write_framed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
) -> std::io::Result<()> {
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Streams the zone `req` asks for; a client that stops reading for `idle` is dropped.
async fn send_zone<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
    table: &NameTable,
    signer: Option<Box<ReplySigner>>,
    client: IpAddr,
    idle: Duration,
) -> std::io::Result<()> {
    let started = Instant::now();
    let Some(mut messages) = TransferStream::new(req, table, signer) else {
        return Ok(());
    };
    let mut count = 0;
    for message in messages.by_ref() {
        tokio::time::timeout(idle, write_framed(stream, &message)).await??;
        count += 1;
        // A fast reader never makes the write wait: without this, one transfer would keep a
        // runtime thread from every query until it is done.
        tokio::task::yield_now().await;
    }
    let zone = req.question.as_ref().map(|q| q.name.to_string());
    info!(%client, zone, serial = table.serial(), incremental = messages.incremental(), records = messages.records(), messages = count, millis = started.elapsed().as_millis() as u64, "zone transferred");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_address_or_ipv6_64() {
        let v6 = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:10.1.2.3"), v6("10.1.2.3"));
    }

    #[test]
    fn slots_are_capped_per_client_and_in_all() {
        let slots = TcpSlots::new(TcpLimits {
            connections: 4,
            per_client: 2,
            idle: Duration::from_secs(10),
            lifetime: Duration::from_secs(60),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let (a1, a2) = (slots.take(a).unwrap(), slots.take(a).unwrap());
        assert!(slots.take(a).is_none(), "per client");
        assert_eq!(slots.idle_timeout(), Duration::from_secs(10));
        let _b = [slots.take(b).unwrap(), slots.take(b).unwrap()];
        assert!(slots.take(c).is_none(), "in all");
        assert_eq!(slots.idle_timeout(), BUSY_IDLE, "busy: short idle timeout");
        drop(a1);
        assert!(slots.take(c).is_some());
        drop(a2);
        assert!(slots.take(a).is_some(), "a's count went down");
    }
}
