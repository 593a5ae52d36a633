//! What the status writers count, per cluster: whether we may write its ServiceEntries'
//! status, how many hosts' status there disagrees with the VIP we answer (drift), and the
//! patches made and refused by a concurrent writer.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use crate::metrics::family;

#[derive(Clone, Copy, Default)]
struct ClusterStatus {
    writable: bool,
    drift: u64,
    patches: u64,
    conflicts: u64,
}

#[derive(Default)]
pub struct StatusMetrics {
    clusters: Mutex<BTreeMap<String, ClusterStatus>>,
}

impl std::fmt::Debug for StatusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusMetrics")
    }
}

impl StatusMetrics {
    fn update(&self, cluster: &str, change: impl FnOnce(&mut ClusterStatus)) {
        let mut clusters = self.clusters.lock().expect("metrics lock");
        change(clusters.entry(cluster.to_string()).or_default());
    }

    pub fn writable(&self, cluster: &str, writable: bool) {
        self.update(cluster, |c| c.writable = writable);
    }

    pub fn drift(&self, cluster: &str, hosts: usize) {
        self.update(cluster, |c| c.drift = hosts as u64);
    }

    pub fn patched(&self, cluster: &str) {
        self.update(cluster, |c| c.patches += 1);
    }

    pub fn conflict(&self, cluster: &str) {
        self.update(cluster, |c| c.conflicts += 1);
    }

    pub fn removed(&self, cluster: &str) {
        self.clusters.lock().expect("metrics lock").remove(cluster);
    }
}

impl Collector for StatusMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let clusters = self.clusters.lock().expect("metrics lock").clone();
        let series = |value: fn(&ClusterStatus) -> f64| {
            (clusters.iter()).map(move |(id, c)| (vec![("cluster", id.as_str())], value(c)))
        };
        family(
            &mut encoder,
            "globaldns_status_writable",
            "1 if globaldns may patch the status of the cluster's ServiceEntries.",
            Gauge,
            series(|c| f64::from(u8::from(c.writable))),
        )?;
        family(
            &mut encoder,
            "globaldns_status_drift_hosts",
            "Hosts whose status.addresses in the cluster do not hold exactly the VIP globaldns answers.",
            Gauge,
            series(|c| c.drift as f64),
        )?;
        family(
            &mut encoder,
            "globaldns_status_patches",
            "Status patches written to the cluster's ServiceEntries.",
            Counter,
            series(|c| c.patches as f64),
        )?;
        family(
            &mut encoder,
            "globaldns_status_conflicts",
            "Status patches refused because another writer changed the status first (then re-read and retried).",
            Counter,
            series(|c| c.conflicts as f64),
        )
    }
}
