//! The UDP listener loop: one task per socket, reading and answering queries in batches.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use super::mmsg::{RecvBatch, SendBatch};
use super::{Action, Handler};
use crate::wire::Transport;

pub async fn serve_udp(socket: Arc<UdpSocket>, handler: Arc<Handler>) {
    let fd = socket.as_raw_fd();
    let mut received = RecvBatch::default();
    let mut replies = SendBatch::default();
    loop {
        let count = match socket
            .async_io(Interest::READABLE, || received.recv(fd))
            .await
        {
            Ok(count) => count,
            Err(error) => {
                debug!(%error, "UDP receive failed");
                continue;
            }
        };
        for i in 0..count {
            let Some((packet, peer)) = received.get(i) else {
                debug!("oversized UDP query dropped");
                continue;
            };
            // Port 0 cannot be answered: a classic reflection probe.
            let Some(addr) = peer.socket_addr().filter(|a| a.port() != 0) else {
                continue;
            };
            match handler.handle(packet, Transport::Udp, addr.ip(), replies.next_buffer()) {
                Action::Reply => replies.commit(peer),
                Action::Forward(req, started) => {
                    let query = packet.to_vec();
                    let (socket, handler) = (socket.clone(), handler.clone());
                    tokio::spawn(async move {
                        let reply = handler
                            .forward(&req, &query, Transport::Udp, addr.ip(), started)
                            .await;
                        if let Err(error) = socket.send_to(&reply, addr).await {
                            debug!(peer = %addr, %error, "UDP send failed");
                        }
                    });
                }
                // The handler streams zones over TCP only.
                Action::Transfer(..) | Action::Drop => {}
            }
        }
        replies.flush(&socket).await;
    }
}
