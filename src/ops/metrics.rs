//! What the server counts, and its Prometheus exposition.
//!
//! The query path only bumps relaxed atomics in fixed arrays (no locks, no label lookups); label
//! sets are built at scrape time by the [`Collector`] impl. Rare events (cluster sync, pool
//! usage after a publish) go through a mutex.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::alloc::PoolUsage;
use crate::dns::Transport;
use crate::forward::AnswerCache;

/// Query types counted on their own; the rest are "other".
const QTYPES: [(u16, &str); 12] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (255, "ANY"),
];
const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];
const PROTOCOLS: [&str; 2] = ["udp", "tcp"];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0,
];

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerSource {
    /// The name table, or an error decided locally (FORMERR, REFUSED…).
    Local,
    Cache,
    Upstream,
}
const SOURCES: [&str; 3] = ["local", "cache", "upstream"];

/// How a forwarded exchange with one upstream failed.
#[derive(Clone, Copy, Debug)]
pub enum UpstreamFailure {
    Timeout,
    /// Refused (ICMP), unreachable, or a broken TCP stream.
    Network,
}

const QUERY_SLOTS: usize = (QTYPES.len() + 1) * (RCODES.len() + 1) * PROTOCOLS.len();

/// Where the counter of (query type, rcode, protocol), by index, sits in `Metrics::queries`.
fn query_slot(qtype: usize, rcode: usize, protocol: usize) -> usize {
    (qtype * (RCODES.len() + 1) + rcode) * PROTOCOLS.len() + protocol
}

struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[at].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Histogram")
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket counts: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = (self.buckets.iter().enumerate())
            .map(|(i, c)| {
                (
                    BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                    c.load(Relaxed),
                )
            })
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Default)]
struct UpstreamStats {
    queries: AtomicU64,
    timeouts: AtomicU64,
    network_errors: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct ClusterState {
    synced: bool,
    restarts: u64,
}

/// Every counter and gauge of one server.
pub struct Metrics {
    queries: [AtomicU64; QUERY_SLOTS],
    dropped: AtomicU64,
    /// UDP responses over the rate limit: [dropped, sent truncated].
    rate_limited: [AtomicU64; 2],
    latency: [Histogram; SOURCES.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache: OnceLock<AnswerCache>,
    upstreams: Vec<(SocketAddr, UpstreamStats)>,
    names: AtomicU64,
    conflicts: AtomicU64,
    /// Whether the last read or write of the allocation store worked, and whether one ever did.
    store_up: AtomicBool,
    store_reached: AtomicBool,
    pools: Mutex<Vec<PoolUsage>>,
    clusters: Mutex<BTreeMap<String, ClusterState>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(upstreams: &[SocketAddr]) -> Self {
        Metrics {
            queries: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped: AtomicU64::new(0),
            rate_limited: Default::default(),
            latency: std::array::from_fn(|_| Histogram::new()),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache: OnceLock::new(),
            upstreams: upstreams
                .iter()
                .map(|&a| (a, UpstreamStats::default()))
                .collect(),
            names: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            store_up: AtomicBool::new(false),
            store_reached: AtomicBool::new(false),
            pools: Mutex::default(),
            clusters: Mutex::default(),
        }
    }

    /// One answered query; `reply` is the message sent (its header holds the rcode).
    pub fn answered(
        &self,
        qtype: Option<u16>,
        reply: &[u8],
        transport: Transport,
        source: AnswerSource,
        took: Duration,
    ) {
        let t = qtype
            .and_then(|q| QTYPES.iter().position(|&(code, _)| code == q))
            .unwrap_or(QTYPES.len());
        let r = reply
            .get(3)
            .map_or(RCODES.len(), |b| ((b & 0x0F) as usize).min(RCODES.len()));
        self.queries[query_slot(t, r, transport as usize)].fetch_add(1, Relaxed);
        self.latency[source as usize].observe(took);
    }

    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// One UDP response over the rate limit, sent truncated (`slipped`) or not at all.
    pub fn rate_limited(&self, slipped: bool) {
        self.rate_limited[usize::from(slipped)].fetch_add(1, Relaxed);
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

    pub fn published(&self, names: usize, pools: Vec<PoolUsage>) {
        self.names.store(names as u64, Relaxed);
        *self.pools.lock().expect("metrics lock") = pools;
    }

    pub fn store_result(&self, ok: bool) {
        self.store_up.store(ok, Relaxed);
        if ok {
            self.store_reached.store(true, Relaxed);
        }
    }

    pub fn store_reached(&self) -> bool {
        self.store_reached.load(Relaxed)
    }

    pub fn conflicts(&self, count: u64) {
        self.conflicts.fetch_add(count, Relaxed);
    }

    pub fn cluster_synced(&self, cluster: &str, synced: bool) {
        let mut clusters = self.clusters.lock().expect("metrics lock");
        clusters.entry(cluster.to_string()).or_default().synced = synced;
    }

    pub fn cluster_watch_restarted(&self, cluster: &str) {
        let mut clusters = self.clusters.lock().expect("metrics lock");
        let state = clusters.entry(cluster.to_string()).or_default();
        state.restarts += 1;
        state.synced = false;
    }

    pub fn cluster_removed(&self, cluster: &str) {
        self.clusters.lock().expect("metrics lock").remove(cluster);
    }

    /// The Prometheus text exposition of everything above.
    pub fn render(self: &std::sync::Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Encodes one metric family whose members are (labels, value) pairs.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    members: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in members {
        write_value(metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

/// Counters are whole numbers; gauges may exceed i64 (an IPv6 pool's size).
fn write_value(mut encoder: MetricEncoder, kind: MetricType, value: f64) -> std::fmt::Result {
    match kind {
        MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(&(value as u64), None),
        _ => encoder.encode_gauge(&value),
    }
}

fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: f64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    write_value(metric, kind, value)
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let qtype_names = QTYPES.iter().map(|&(_, n)| n).chain(["other"]);
        let rcode_names: Vec<&str> = RCODES.iter().copied().chain(["other"]).collect();
        let mut queries = Vec::new();
        for (t, qtype) in qtype_names.enumerate() {
            for (r, rcode) in rcode_names.iter().enumerate() {
                for (p, protocol) in PROTOCOLS.iter().enumerate() {
                    let count = self.queries[query_slot(t, r, p)].load(Relaxed);
                    if count > 0 {
                        let labels =
                            vec![("qtype", qtype), ("rcode", *rcode), ("protocol", *protocol)];
                        queries.push((labels, count as f64));
                    }
                }
            }
        }
        family(
            &mut encoder,
            "globaldns_queries",
            "Queries answered, by query type, response code and protocol.",
            Counter,
            queries,
        )?;
        single(
            &mut encoder,
            "globaldns_dropped_queries",
            "Packets dropped without an answer (responses, runts, port 0).",
            Counter,
            self.dropped.load(Relaxed) as f64,
        )?;
        family(
            &mut encoder,
            "globaldns_rate_limited_responses",
            "UDP responses over --rate-limit, by what was done instead (dropped, or sent truncated).",
            Counter,
            ["drop", "slip"]
                .into_iter()
                .zip(&self.rate_limited)
                .map(|(action, count)| (vec![("action", action)], count.load(Relaxed) as f64)),
        )?;

        let mut latency = encoder.encode_descriptor(
            "globaldns_query_duration_seconds",
            "Time from reading a query to having its answer, by where the answer came from.",
            None,
            MetricType::Histogram,
        )?;
        for (source, histogram) in SOURCES.iter().zip(&self.latency) {
            let labels = [("source", *source)];
            histogram.encode(latency.encode_family(&labels)?)?;
        }

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
        )?;

        single(
            &mut encoder,
            "globaldns_names",
            "Host names in the served name table.",
            Gauge,
            self.names.load(Relaxed) as f64,
        )?;
        single(
            &mut encoder,
            "globaldns_allocation_conflicts",
            "Allocated VIPs moved because a ServiceEntry declared them.",
            Counter,
            self.conflicts.load(Relaxed) as f64,
        )?;
        single(
            &mut encoder,
            "globaldns_store_up",
            "1 if the last read or write of the allocation store worked.",
            Gauge,
            f64::from(u8::from(self.store_up.load(Relaxed))),
        )?;
        let pools = self.pools.lock().expect("metrics lock").clone();
        for (metric, help, value) in [
            (
                "globaldns_vip_pool_size",
                "Addresses a VIP pool can hand out.",
                (|p: &PoolUsage| p.capacity as f64) as fn(&PoolUsage) -> f64,
            ),
            (
                "globaldns_vip_pool_used",
                "Addresses of a VIP pool held by hosts.",
                |p| p.used as f64,
            ),
            (
                "globaldns_vip_pool_free",
                "Addresses of a VIP pool still free.",
                |p| p.capacity.saturating_sub(p.used) as f64,
            ),
        ] {
            family(
                &mut encoder,
                metric,
                help,
                Gauge,
                pools
                    .iter()
                    .map(|p| (vec![("pool", p.pool.as_str())], value(p))),
            )?;
        }

        let clusters = self.clusters.lock().expect("metrics lock").clone();
        family(
            &mut encoder,
            "globaldns_cluster_synced",
            "1 once a cluster's ServiceEntries are listed, 0 while its watch is down.",
            Gauge,
            clusters.iter().map(|(id, s)| {
                (
                    vec![("cluster", id.as_str())],
                    f64::from(u8::from(s.synced)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "globaldns_cluster_watch_restarts",
            "Times a cluster's ServiceEntry watch failed and restarted.",
            Counter,
            clusters
                .iter()
                .map(|(id, s)| (vec![("cluster", id.as_str())], s.restarts as f64)),
        )?;
        Ok(())
    }
}
