//! The floor of UDP serving on this machine: a server that answers each query with the query
//! itself (QR set), through the same sockets, batching and readiness loop as globaldns, and does
//! nothing else. `tests/bench/global.sh` measures it beside NSD and globaldns: whatever CPU it
//! spends per query is the network stack's, which no server can spend less than.
//!
//!     cargo run --release --example udp_floor -- 127.0.0.1:5354

use std::os::fd::AsRawFd;

use globaldns::dns::mmsg::{RecvBatch, SendBatch};
use tokio::io::Interest;
use tokio::net::UdpSocket;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let socket = UdpSocket::bind(addr).await?;
    println!("listening on {}", socket.local_addr()?);
    let fd = socket.as_raw_fd();
    let (mut received, mut replies) = (RecvBatch::default(), SendBatch::default());
    loop {
        let count = socket
            .async_io(Interest::READABLE, || received.recv(fd))
            .await?;
        for (query, peer) in (0..count).filter_map(|i| received.get(i)) {
            let reply = replies.next_buffer();
            reply.extend_from_slice(query);
            if let Some(flags) = reply.get_mut(2) {
                *flags |= 0x80;
            }
            replies.commit(peer);
        }
        replies.flush(&socket).await;
    }
}
