//! What the cluster watches count: whether each cluster is synced, and how often its watch
//! restarted. Clusters come and go (remote secrets), so this is a map behind a lock: it changes
//! only on sync events, never on the query path.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use crate::metrics::family;

#[derive(Clone, Copy, Default)]
struct ClusterState {
    synced: bool,
    restarts: u64,
}

#[derive(Default)]
pub struct ClusterMetrics {
    clusters: Mutex<BTreeMap<String, ClusterState>>,
}

impl std::fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterMetrics")
    }
}

impl ClusterMetrics {
    pub fn synced(&self, cluster: &str, synced: bool) {
        let mut clusters = self.clusters.lock().expect("metrics lock");
        clusters.entry(cluster.to_string()).or_default().synced = synced;
    }

    pub fn watch_restarted(&self, cluster: &str) {
        let mut clusters = self.clusters.lock().expect("metrics lock");
        let state = clusters.entry(cluster.to_string()).or_default();
        state.restarts += 1;
        state.synced = false;
    }

    pub fn removed(&self, cluster: &str) {
        self.clusters.lock().expect("metrics lock").remove(cluster);
    }
}

impl Collector for ClusterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
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
        )
    }
}
