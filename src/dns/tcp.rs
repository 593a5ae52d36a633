//! The TCP listener: length-prefixed messages (RFC 1035 §4.2.2), several per connection, answered
//! in order, with an idle timeout (RFC 7766 §6.2.3) and a cap on open connections.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use super::{Action, Handler, Transport};

const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 1024;

pub async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many TCP connections; closing");
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, peer.ip(), &handler).await {
                debug!(%peer, %error, "TCP connection ended");
            }
            drop(slot);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    client: IpAddr,
    handler: &Handler,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut packet = Vec::new();
    let mut out = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(IDLE_TIMEOUT, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle
        };
        packet.resize(len, 0);
        tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut packet)).await??;
        let reply = match handler.handle(&packet, Transport::Tcp, client, &mut out) {
            Action::Reply => &out,
            Action::Forward(req, started) => {
                out = handler
                    .forward(&req, &packet, Transport::Tcp, client, started)
                    .await;
                &out
            }
            // Nothing sensible can follow an unanswerable message on a stream.
            Action::Drop => return Ok(()),
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(reply);
        stream.write_all(&framed).await?;
    }
}
