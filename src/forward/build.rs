//! Assembling the forwarder from its configuration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::{AnswerCache, CachingForwarder, Forward, ForwardMetrics, UpstreamForwarder};

/// How names outside the served zones are resolved.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Already stripped of this server's own address.
    pub upstreams: Vec<SocketAddr>,
    /// Time for one forwarded query across all upstreams.
    pub budget: Duration,
    /// Cached answers (entries of up to 1 KiB); 0 turns the cache off.
    pub cache_size: u64,
    pub cache_max_ttl: Duration,
    /// How long past their TTL answers are kept, to serve when the upstreams fail (RFC 8767).
    pub serve_stale: Duration,
    /// Clients that may use us as a recursive resolver.
    pub allow_recursion: Vec<IpNet>,
}

/// Queries upstream at once; beyond this, SERVFAIL at once instead of piling up.
const MAX_INFLIGHT: usize = 4096;

/// The forwarder `config` asks for: the upstream relay (its loop check started), behind the
/// cache unless the cache is off; `None` without upstreams.
pub fn build(config: &ForwardConfig, metrics: &Arc<ForwardMetrics>) -> Option<Arc<dyn Forward>> {
    if config.upstreams.is_empty() {
        return None;
    }
    let relay = Arc::new(UpstreamForwarder::new(
        config.upstreams.clone(),
        config.budget,
        MAX_INFLIGHT,
        metrics.clone(),
    ));
    let check = relay.clone();
    tokio::spawn(async move { check.check_loops().await });
    let upstream: Arc<dyn Forward> = relay;
    if config.cache_size == 0 {
        return Some(upstream);
    }
    let cache = AnswerCache::new(config.cache_size, config.cache_max_ttl, config.serve_stale);
    Some(Arc::new(CachingForwarder::new(
        upstream,
        cache,
        metrics.clone(),
    )))
}
