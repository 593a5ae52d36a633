//! Relaying to upstream resolvers: over UDP for UDP clients and over TCP for TCP clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, info, warn};

use super::metrics::{ForwardMetrics, UpstreamFailure};
use super::{Forward, ForwardError, ForwardFuture};
use crate::wire::Transport;
use crate::wire::header::{HEADER_LEN, is_response};
use crate::wire::name::skip_name;
use crate::wire::request::Request;
use crate::wire::response::readdress;

/// How often a dead upstream is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

struct Upstream {
    addr: SocketAddr,
    /// It sent one of our own loop probes back to us: never used.
    looped: AtomicBool,
    /// Set after a timeout or refusal; cleared by a successful probe.
    down: AtomicBool,
    probing: AtomicBool,
}

/// Tries the live upstreams in order within one time budget, so the client gets an answer or
/// SERVFAIL before its own retry timer fires. Dead upstreams are skipped (tried last) until a
/// probe gets any reply from them. At most `max_inflight` queries are upstream at once.
pub struct UpstreamForwarder {
    upstreams: Vec<Arc<Upstream>>,
    budget: Duration,
    slots: Semaphore,
    /// Lower-cased wire names of loop probes in flight, and the upstream each went to.
    probes: Mutex<HashMap<Vec<u8>, usize>>,
    metrics: Arc<ForwardMetrics>,
}

impl UpstreamForwarder {
    pub fn new(
        upstreams: Vec<SocketAddr>,
        budget: Duration,
        max_inflight: usize,
        metrics: Arc<ForwardMetrics>,
    ) -> Self {
        let upstreams = upstreams
            .into_iter()
            .map(|addr| {
                Arc::new(Upstream {
                    addr,
                    looped: AtomicBool::new(false),
                    down: AtomicBool::new(false),
                    probing: AtomicBool::new(false),
                })
            })
            .collect();
        UpstreamForwarder {
            upstreams,
            budget,
            slots: Semaphore::new(max_inflight),
            probes: Mutex::default(),
            metrics,
        }
    }

    /// Asks every upstream for a unique name under `.invalid`. An upstream that forwards it
    /// back to us (directly, or through CoreDNS forwarding `.` to us) is a loop: the probe
    /// arrives at our own handler, which reports it through [`Forward::loop_probe`].
    pub async fn check_loops(&self) {
        let mut asks = Vec::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let label = format!("{:016x}", rand::random::<u64>());
            let mut query = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for part in [label.as_str(), "globaldns-loop-check", "invalid"] {
                query.push(part.len() as u8);
                query.extend_from_slice(part.as_bytes());
            }
            query.push(0);
            self.probes
                .lock()
                .expect("probes lock")
                .insert(query[HEADER_LEN..].to_vec(), i);
            query.extend_from_slice(&[0, 1, 0, 1]);
            query[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
            let question = question_len(&query).expect("probe question");
            let addr = upstream.addr;
            asks.push(async move {
                udp_exchange(addr, &query, question, Instant::now() + PROBE_EVERY * 2).await
            });
        }
        futures::future::join_all(asks).await;
        self.probes.lock().expect("probes lock").clear();
    }

    fn usable(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams
            .iter()
            .filter(|u| !u.looped.load(Ordering::Relaxed))
    }

    async fn relay(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>, ForwardError> {
        let _slot = self.slots.try_acquire().map_err(|_| ForwardError::Busy)?;
        let question = question_len(query).ok_or(ForwardError::BadQuery)?;
        let deadline = Instant::now() + self.budget;
        let (live, dead): (Vec<_>, Vec<_>) =
            self.usable().partition(|u| !u.down.load(Ordering::Relaxed));
        let order: Vec<&Arc<Upstream>> = live.into_iter().chain(dead).collect();
        let mut last = ForwardError::NoUpstream;
        for (i, upstream) in order.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = Instant::now() + left / (order.len() - i) as u32;
            let mut outgoing = query.to_vec();
            outgoing[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
            // TCP clients are asked over TCP; a UDP client gets a truncated reply to retry itself.
            let result = match transport {
                Transport::Udp => udp_exchange(upstream.addr, &outgoing, question, attempt).await,
                Transport::Tcp => tcp_exchange(upstream.addr, &outgoing, question, attempt).await,
            };
            let failure = match &result {
                Err(ForwardError::Timeout(_)) => Some(UpstreamFailure::Timeout),
                Err(ForwardError::Io { .. }) => Some(UpstreamFailure::Network),
                _ => None,
            };
            self.metrics.upstream_query(upstream.addr, failure);
            match result {
                Ok(reply) => {
                    upstream.down.store(false, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) => {
                    debug!(upstream = %upstream.addr, error = %e, "upstream failed");
                    if failure.is_some() {
                        self.mark_down(upstream);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn mark_down(&self, upstream: &Arc<Upstream>) {
        if !upstream.down.swap(true, Ordering::Relaxed) {
            warn!(upstream = %upstream.addr, "upstream is not answering; skipping it until a probe succeeds");
        }
        if upstream.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // `. NS` is answered (or refused) by every resolver; any reply proves it is back.
            let probe = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01";
            while upstream.down.load(Ordering::Relaxed) {
                tokio::time::sleep(PROBE_EVERY).await;
                let mut query = probe.to_vec();
                query[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
                let question = question_len(&query).expect("probe question");
                if udp_exchange(
                    upstream.addr,
                    &query,
                    question,
                    Instant::now() + PROBE_EVERY,
                )
                .await
                .is_ok()
                {
                    upstream.down.store(false, Ordering::Relaxed);
                    info!(upstream = %upstream.addr, "upstream answers again");
                }
            }
            upstream.probing.store(false, Ordering::Relaxed);
        });
    }
}

impl Forward for UpstreamForwarder {
    fn loop_probe(&self, qname: &[u8]) -> bool {
        let Some(i) = self.probes.lock().expect("probes lock").remove(qname) else {
            return false;
        };
        let upstream = &self.upstreams[i];
        if !upstream.looped.swap(true, Ordering::Relaxed) {
            error!(upstream = %upstream.addr, "forwarding loop: this upstream sends our queries back to us; not using it");
        }
        true
    }

    fn forward<'a>(
        &'a self,
        req: &'a Request,
        query: &'a [u8],
        transport: Transport,
    ) -> ForwardFuture<'a> {
        Box::pin(async move {
            let mut reply = self.relay(query, transport).await?;
            // The client's own ID and question (letter case included) and header bits.
            readdress(&mut reply, req);
            Ok(reply)
        })
    }
}

/// Length of the question section of a one-question message.
fn question_len(msg: &[u8]) -> Option<usize> {
    let end = skip_name(msg, HEADER_LEN)? + 4;
    (end <= msg.len()).then_some(end - HEADER_LEN)
}

/// Whether `reply` answers `query`: same ID, a response, and the same question.
fn matches(query: &[u8], reply: &[u8], question: usize) -> bool {
    let end = HEADER_LEN + question;
    reply.len() >= end
        && reply[..2] == query[..2]
        && is_response(reply)
        && reply[HEADER_LEN..end].eq_ignore_ascii_case(&query[HEADER_LEN..end])
}

/// Wraps an I/O error of the exchange with `upstream`.
fn io_error(upstream: SocketAddr) -> impl Fn(std::io::Error) -> ForwardError + Copy {
    move |source| ForwardError::Io { upstream, source }
}

async fn udp_exchange(
    up: SocketAddr,
    query: &[u8],
    question: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ForwardError> {
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(io_error(up))?;
    // A connected socket only accepts datagrams from the upstream and surfaces ICMP errors.
    socket.connect(up).await.map_err(io_error(up))?;
    socket.send(query).await.map_err(io_error(up))?;
    // Uninitialized capacity: zeroing 64 KiB per query would cost more than the exchange.
    let mut buf = Vec::with_capacity(u16::MAX as usize);
    loop {
        buf.clear();
        timeout_at(deadline, socket.recv_buf(&mut buf))
            .await
            .map_err(|_| ForwardError::Timeout(up))?
            .map_err(io_error(up))?;
        if matches(query, &buf, question) {
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
    let exchange = async {
        let mut stream = TcpStream::connect(up).await.map_err(io_error(up))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(io_error(up))?;
        let len = stream.read_u16().await.map_err(io_error(up))? as usize;
        let mut reply = vec![0u8; len];
        stream.read_exact(&mut reply).await.map_err(io_error(up))?;
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
