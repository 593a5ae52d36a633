//! Pieces every layer's metrics are written with: each layer keeps its own counters (the query
//! path's as plain atomics in fixed arrays, no label lookups) and implements prometheus-client's
//! [`Collector`](prometheus_client::collector::Collector) to expose them; the server registers
//! every layer's collector into one [`Registry`](prometheus_client::registry::Registry), and
//! `ops` serves it. This module sits at the bottom: it imports no layer.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0,
];

/// A latency histogram updated with two relaxed atomic adds.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
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

/// Encodes one metric family whose members are (labels, value) pairs.
pub fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    members: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, f64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in members {
        write_value(metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

/// Encodes one metric without labels.
pub fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: f64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    write_value(metric, kind, value)
}

/// Counters are whole numbers; gauges may exceed i64 (an IPv6 pool's size).
fn write_value(mut encoder: MetricEncoder, kind: MetricType, value: f64) -> std::fmt::Result {
    match kind {
        MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(&(value as u64), None),
        _ => encoder.encode_gauge(&value),
    }
}
