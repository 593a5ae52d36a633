//! What the DNS layer counts: queries by type, response code and protocol, packets dropped,
//! rate-limited responses, and how long answers took by where they came from. The query path
//! only bumps relaxed atomics in fixed arrays; label sets are built at scrape time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType::{self, Counter};

use crate::metrics::{Histogram, family, single};
use crate::wire::Transport;
use crate::wire::header::rcode;

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

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerSource {
    /// The name table, or an error decided locally (FORMERR, REFUSED…).
    Local,
    Cache,
    Upstream,
}
const SOURCES: [&str; 3] = ["local", "cache", "upstream"];

const QUERY_SLOTS: usize = (QTYPES.len() + 1) * (RCODES.len() + 1) * PROTOCOLS.len();

/// Where the counter of (query type, rcode, protocol), by index, sits in `QueryMetrics::queries`.
fn query_slot(qtype: usize, rcode: usize, protocol: usize) -> usize {
    (qtype * (RCODES.len() + 1) + rcode) * PROTOCOLS.len() + protocol
}

pub struct QueryMetrics {
    queries: [AtomicU64; QUERY_SLOTS],
    dropped: AtomicU64,
    /// UDP responses over the rate limit: [dropped, sent truncated].
    rate_limited: [AtomicU64; 2],
    latency: [Histogram; SOURCES.len()],
}

impl Default for QueryMetrics {
    fn default() -> Self {
        QueryMetrics {
            queries: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped: AtomicU64::new(0),
            rate_limited: Default::default(),
            latency: Default::default(),
        }
    }
}

impl std::fmt::Debug for QueryMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryMetrics")
    }
}

impl QueryMetrics {
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
        let r = rcode(reply).map_or(RCODES.len(), |r| usize::from(r).min(RCODES.len()));
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
}

impl Collector for QueryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
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
        Ok(())
    }
}
