//! What the forwarder counts: cache hits and misses, the cache's size, and each upstream's
//! queries and failed exchanges.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use super::AnswerCache;
use crate::metrics::{family, single};

/// How a forwarded exchange with one upstream failed.
#[derive(Clone, Copy, Debug)]
pub enum UpstreamFailure {
    Timeout,
    /// Refused (ICMP), unreachable, or a broken TCP stream.
    Network,
}

#[derive(Default)]
struct UpstreamStats {
    queries: AtomicU64,
    timeouts: AtomicU64,
    network_errors: AtomicU64,
}

#[derive(Default)]
pub struct ForwardMetrics {
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache: OnceLock<AnswerCache>,
    upstreams: Vec<(SocketAddr, UpstreamStats)>,
}

impl std::fmt::Debug for ForwardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardMetrics")
    }
}

impl ForwardMetrics {
    /// Counters for `upstreams` (others are not counted).
    pub fn new(upstreams: &[SocketAddr]) -> Self {
        ForwardMetrics {
            upstreams: upstreams
                .iter()
                .map(|&a| (a, UpstreamStats::default()))
                .collect(),
            ..ForwardMetrics::default()
        }
    }

    pub fn cache_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Relaxed);
    }

    /// The cache whose size is reported.
    pub fn watch_cache(&self, cache: AnswerCache) {
        let _ = self.cache.set(cache);
    }

    pub fn upstream_query(&self, upstream: SocketAddr, failure: Option<UpstreamFailure>) {
        let Some((_, stats)) = self.upstreams.iter().find(|(a, _)| *a == upstream) else {
            return;
        };
        stats.queries.fetch_add(1, Relaxed);
        match failure {
            Some(UpstreamFailure::Timeout) => stats.timeouts.fetch_add(1, Relaxed),
            Some(UpstreamFailure::Network) => stats.network_errors.fetch_add(1, Relaxed),
            None => 0,
        };
    }
}

impl Collector for ForwardMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        single(
            &mut encoder,
            "globaldns_cache_hits",
            "Forwarded questions answered from the cache.",
            Counter,
            self.cache_hits.load(Relaxed) as f64,
        )?;
        single(
            &mut encoder,
            "globaldns_cache_misses",
            "Forwarded questions not in the cache.",
            Counter,
            self.cache_misses.load(Relaxed) as f64,
        )?;
        let entries = self.cache.get().map_or(0, AnswerCache::entry_count);
        single(
            &mut encoder,
            "globaldns_cache_entries",
            "Answers in the cache.",
            Gauge,
            entries as f64,
        )?;
        let ups: Vec<(String, &UpstreamStats)> = self
            .upstreams
            .iter()
            .map(|(a, s)| (a.to_string(), s))
            .collect();
        family(
            &mut encoder,
            "globaldns_upstream_queries",
            "Queries sent to each upstream.",
            Counter,
            ups.iter().map(|(a, s)| {
                (
                    vec![("upstream", a.as_str())],
                    s.queries.load(Relaxed) as f64,
                )
            }),
        )?;
        let errors = ups.iter().flat_map(|(a, s)| {
            [("timeout", &s.timeouts), ("network", &s.network_errors)].map(|(kind, c)| {
                (
                    vec![("upstream", a.as_str()), ("kind", kind)],
                    c.load(Relaxed) as f64,
                )
            })
        });
        family(
            &mut encoder,
            "globaldns_upstream_errors",
            "Failed exchanges with each upstream, by kind.",
            Counter,
            errors,
        )
    }
}
