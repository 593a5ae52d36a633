//! The UDP listener loop: one task per socket, reusing its buffers for every query.

use std::sync::Arc;

use tokio::net::UdpSocket;
use tracing::debug;

use super::{Action, Handler, Transport};

pub async fn serve_udp(socket: Arc<UdpSocket>, handler: Arc<Handler>) {
    let mut packet = vec![0u8; u16::MAX as usize];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (len, peer) = match socket.recv_from(&mut packet).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "UDP receive failed");
                continue;
            }
        };
        if peer.port() == 0 {
            continue; // cannot be answered; a classic reflection probe
        }
        match handler.handle(&packet[..len], Transport::Udp, peer.ip(), &mut out) {
            Action::Reply => {
                if let Err(error) = socket.send_to(&out, peer).await {
                    debug!(%peer, %error, "UDP send failed");
                }
            }
            Action::Forward(req) => {
                let query = packet[..len].to_vec();
                let (socket, handler) = (socket.clone(), handler.clone());
                tokio::spawn(async move {
                    let reply = handler.forward(&req, &query, Transport::Udp).await;
                    if let Err(error) = socket.send_to(&reply, peer).await {
                        debug!(%peer, %error, "UDP send failed");
                    }
                });
            }
            Action::Drop => {}
        }
    }
}
