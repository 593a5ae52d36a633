//! The caching forwarder: answers from the cache when it can, makes concurrent identical
//! questions share one upstream query, and falls back to stale answers when the upstreams fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hickory_proto::op::ResponseCode;
use tokio::sync::watch;
use tracing::debug;

use super::cache::{AnswerCache, CacheKey};
use super::metrics::ForwardMetrics;
use super::{Forward, ForwardError, ForwardFuture};
use crate::wire::Transport;
use crate::wire::header::{is_truncated, rcode};
use crate::wire::request::Request;
use crate::wire::response::{readdress, udp_limit};

/// A finished upstream exchange, shared with everyone who asked the same question meanwhile.
type Outcome = Option<Result<Arc<[u8]>, Arc<ForwardError>>>;

pub struct CachingForwarder {
    inner: Arc<dyn Forward>,
    cache: AnswerCache,
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<Outcome>>>,
    metrics: Arc<ForwardMetrics>,
}

/// Removes a question from the in-flight table however its leader ends.
struct InflightGuard<'a> {
    table: &'a Mutex<HashMap<CacheKey, watch::Receiver<Outcome>>>,
    key: CacheKey,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.table.lock().expect("inflight lock").remove(&self.key);
    }
}

/// Whether `reply` suits a client on `transport`: small enough for UDP, complete for TCP.
fn suits(reply: &[u8], req: &Request, transport: Transport) -> bool {
    match transport {
        Transport::Udp => reply.len() <= udp_limit(req.edns),
        Transport::Tcp => reply.len() > 2 && !is_truncated(reply),
    }
}

impl CachingForwarder {
    /// A cache in front of `inner`; `metrics` counts its hits and misses and reports its size.
    pub fn new(inner: Arc<dyn Forward>, cache: AnswerCache, metrics: Arc<ForwardMetrics>) -> Self {
        metrics.watch_cache(cache.clone());
        CachingForwarder {
            inner,
            cache,
            inflight: Mutex::default(),
            metrics,
        }
    }

    /// RFC 8767: when the upstreams fail (no reply, or SERVFAIL), an expired answer still in its
    /// stale window is better than none.
    async fn relay_or_stale(
        &self,
        req: &Request,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, ForwardError> {
        let result = self.relay(req, query, transport).await;
        let failed = match &result {
            Ok(reply) => rcode(reply) == Some(ResponseCode::ServFail.low()),
            Err(_) => true,
        };
        if failed {
            let mut out = Vec::new();
            if self.cache.get_stale(req, &mut out) && suits(&out, req, transport) {
                debug!("upstreams failed; answering from the stale cache");
                return Ok(out);
            }
        }
        result
    }

    async fn relay(
        &self,
        req: &Request,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, ForwardError> {
        let Some(key) = CacheKey::of(req) else {
            return self.inner.forward(req, query, transport).await;
        };
        let joined = {
            let mut table = self.inflight.lock().expect("inflight lock");
            match table.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    table.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        match joined {
            Ok(tx) => {
                let _guard = InflightGuard {
                    table: &self.inflight,
                    key: key.clone(),
                };
                // The error is shared with the followers: one Arc, its cause kept.
                let result = self
                    .inner
                    .forward(req, query, transport)
                    .await
                    .map_err(Arc::new);
                if let Ok(reply) = &result {
                    self.cache.insert(key, reply);
                }
                let shared = result
                    .as_ref()
                    .map(|r| Arc::from(&r[..]))
                    .map_err(Arc::clone);
                let _ = tx.send(Some(shared));
                result.map_err(ForwardError::Shared)
            }
            Err(mut rx) => {
                let outcome = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|o| o.clone());
                match outcome {
                    Some(Ok(reply)) if suits(&reply, req, transport) => {
                        let mut out = reply.to_vec();
                        readdress(&mut out, req);
                        Ok(out)
                    }
                    Some(Err(error)) => Err(ForwardError::Shared(error)),
                    // The leader's reply does not fit this client, or the leader gave up.
                    _ => self.inner.forward(req, query, transport).await,
                }
            }
        }
    }
}

impl Forward for CachingForwarder {
    fn loop_probe(&self, qname: &[u8]) -> bool {
        self.inner.loop_probe(qname)
    }

    fn cached(&self, req: &Request, transport: Transport, out: &mut Vec<u8>) -> bool {
        let hit = self.cache.get(req, out) && suits(out, req, transport);
        self.metrics.cache_lookup(hit);
        hit
    }

    fn forward<'a>(
        &'a self,
        req: &'a Request,
        query: &'a [u8],
        transport: Transport,
    ) -> ForwardFuture<'a> {
        Box::pin(self.relay_or_stale(req, query, transport))
    }
}
