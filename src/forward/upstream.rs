//! Relaying to upstream resolvers over UDP, and TCP when a TCP client's answer was truncated.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use super::{Forward, ForwardError, ForwardFuture};
use crate::dns::Transport;

const HEADER_LEN: usize = 12;

/// Tries each upstream in order within one time budget, so the client gets an answer or
/// SERVFAIL before its own retry timer fires.
pub struct UpstreamForwarder {
    upstreams: Vec<SocketAddr>,
    budget: Duration,
}

impl UpstreamForwarder {
    pub fn new(upstreams: Vec<SocketAddr>, budget: Duration) -> Self {
        UpstreamForwarder { upstreams, budget }
    }

    async fn relay(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>, ForwardError> {
        let question = question_len(query).ok_or(ForwardError::BadQuery)?;
        let deadline = Instant::now() + self.budget;
        let mut last = ForwardError::NoUpstream;
        for (i, &upstream) in self.upstreams.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = Instant::now() + left / (self.upstreams.len() - i) as u32;
            let mut outgoing = query.to_vec();
            outgoing[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
            let mut result = udp_exchange(upstream, &outgoing, question, attempt).await;
            if transport == Transport::Tcp && result.as_ref().is_ok_and(|r| r[2] & 0x02 != 0) {
                result = tcp_exchange(upstream, &outgoing, question, deadline).await;
            }
            match result {
                Ok(mut reply) => {
                    // Give the client back its own ID and question, letter case included.
                    reply[..2].copy_from_slice(&query[..2]);
                    reply[HEADER_LEN..HEADER_LEN + question]
                        .copy_from_slice(&query[HEADER_LEN..HEADER_LEN + question]);
                    return Ok(reply);
                }
                Err(e) => {
                    debug!(%upstream, error = %e, "upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

impl Forward for UpstreamForwarder {
    fn forward<'a>(&'a self, query: &'a [u8], transport: Transport) -> ForwardFuture<'a> {
        Box::pin(self.relay(query, transport))
    }
}

/// Length of the question section of a one-question message.
fn question_len(msg: &[u8]) -> Option<usize> {
    let mut at = HEADER_LEN;
    loop {
        let label = *msg.get(at)? as usize;
        if label & 0xC0 == 0xC0 {
            at += 2;
            break;
        }
        at += 1 + label;
        if label == 0 {
            break;
        }
    }
    (at + 4 <= msg.len()).then_some(at + 4 - HEADER_LEN)
}

/// Whether `reply` answers `query`: same ID, a response, and the same question.
fn matches(query: &[u8], reply: &[u8], question: usize) -> bool {
    let end = HEADER_LEN + question;
    reply.len() >= end
        && reply[..2] == query[..2]
        && reply[2] & 0x80 != 0
        && reply[HEADER_LEN..end].eq_ignore_ascii_case(&query[HEADER_LEN..end])
}

async fn udp_exchange(
    up: SocketAddr,
    query: &[u8],
    question: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io {
        upstream: up,
        source,
    };
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    // A connected socket only accepts datagrams from the upstream and surfaces ICMP errors.
    socket.connect(up).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        let n = timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| ForwardError::Timeout(up))?
            .map_err(io)?;
        if matches(query, &buf[..n], question) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(
    up: SocketAddr,
    query: &[u8],
    question: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io {
        upstream: up,
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(up).await.map_err(io)?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(io)?;
        let len = stream.read_u16().await.map_err(io)? as usize;
        let mut reply = vec![0u8; len];
        stream.read_exact(&mut reply).await.map_err(io)?;
        if matches(query, &reply, question) {
            Ok(reply)
        } else {
            Err(ForwardError::BadReply(up))
        }
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| ForwardError::Timeout(up))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_length_and_matching() {
        let q =
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03Foo\x03com\x00\x00\x01\x00\x01";
        assert_eq!(question_len(q), Some(13));
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[13..16].copy_from_slice(b"fOO");
        assert!(matches(q, &r, 13));
        r[0] = 0;
        assert!(!matches(q, &r, 13));
        assert_eq!(question_len(&q[..20]), None);
    }
}
