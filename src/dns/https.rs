//! DNS over HTTPS (RFC 8484): `/dns-query`, GET with the message in `?dns=` (base64url) or POST
//! with it as the `application/dns-message` body, over HTTP/2 or HTTP/1.1 in TLS. The message is
//! answered by the same handler as over TCP (size limits included), forwarding too.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use data_encoding::BASE64URL_NOPAD;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tracing::debug;

use super::tcp::TcpSlots;
use super::tls::{SharedAcceptor, accept_tls};
use super::{Action, Handler};
use crate::wire::Transport;
use crate::wire::records::records;

const DNS_MESSAGE: &str = "application/dns-message";
/// A DNS message is at most this long (the TCP limit).
const MAX_MESSAGE: usize = 65_535;

/// Accepts DNS-over-HTTPS connections on `listener`, within the TCP connection limits.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: SharedAcceptor,
    handler: Arc<Handler>,
    slots: Arc<TcpSlots>,
) {
    let lifetime = slots.lifetime();
    accept_tls(listener, acceptor, slots, move |stream, peer, slot| {
        let handler = handler.clone();
        async move {
            // Held until the connection ends.
            let _slot = slot;
            let client = peer.ip();
            let service = service_fn(move |req| answer(req, handler.clone(), client));
            let builder = Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(lifetime, connection).await {
                Ok(Err(error)) => debug!(%peer, %error, "HTTPS connection ended"),
                Err(_) => debug!(%peer, "HTTPS connection closed at the end of its lifetime"),
                Ok(Ok(())) => {}
            }
        }
    })
    .await
}

/// One DoH request.
async fn answer(
    req: Request<Incoming>,
    handler: Arc<Handler>,
    client: IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/dns-query" {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let query = match *req.method() {
        Method::GET => {
            let param = (req.uri().query().unwrap_or_default().split('&'))
                .find_map(|p| p.strip_prefix("dns="));
            match param.map(|p| BASE64URL_NOPAD.decode(p.as_bytes())) {
                Some(Ok(query)) => query,
                _ => return Ok(status(StatusCode::BAD_REQUEST)),
            }
        }
        Method::POST => {
            let content_type = req.headers().get(CONTENT_TYPE);
            if content_type.is_none_or(|t| t.as_bytes() != DNS_MESSAGE.as_bytes()) {
                return Ok(status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
            }
            match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
                Ok(body) => body.to_bytes().to_vec(),
                Err(_) => return Ok(status(StatusCode::PAYLOAD_TOO_LARGE)),
            }
        }
        _ => return Ok(status(StatusCode::METHOD_NOT_ALLOWED)),
    };
    let mut out = Vec::new();
    let reply = match handler.handle(&query, Transport::Tcp, client, &mut out) {
        Action::Reply => out,
        Action::Forward(req, started) => {
            handler
                .forward(&req, &query, Transport::Tcp, client, started)
                .await
        }
        // Zone transfers are streams, which DoH does not carry; junk gets no DNS answer.
        Action::Transfer(..) | Action::Drop => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let mut response = Response::builder()
        .header(CONTENT_TYPE, DNS_MESSAGE)
        .header(CACHE_CONTROL, format!("max-age={}", min_ttl(&reply)));
    if reply.is_empty() {
        response = response.status(StatusCode::BAD_REQUEST);
    }
    Ok(response
        .body(Full::new(Bytes::from(reply)))
        .expect("valid headers"))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// The smallest TTL of the answer records, for HTTP caches (RFC 8484 §5.1); 0 without any.
fn min_ttl(reply: &[u8]) -> u32 {
    (records(reply).map_while(|r| r))
        .filter(|r| r.section == 1)
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0)
}
