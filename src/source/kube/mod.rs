//! ServiceEntries from Kubernetes clusters: a set of clusters, each watched on its own, fed by
//! kubeconfig contexts and by Istio remote secrets.

mod listed;
pub mod metrics;
mod secrets;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::{error, info};

pub use metrics::ClusterMetrics;
pub use secrets::{
    REMOTE_SECRET_LABEL, RemoteCluster, clusters_in, owner_of, remote_secrets, watch_remote_secrets,
};
pub use watch::{
    declaration_of, discover_version, list_cluster, served_version, service_entries,
    service_entry_resource,
};

use super::readiness::Readiness;
use super::set::SourceSet;

/// The clusters being watched, by cluster ID. The first registration of an ID wins.
pub struct ClusterSet {
    sources: SourceSet,
    readiness: Readiness,
    metrics: Arc<ClusterMetrics>,
    running: Mutex<BTreeMap<String, Running>>,
    companion: Option<Companion>,
}

/// Work that layers above the sources do with each cluster while it is watched (writing
/// statuses): started with the cluster's client, ended by dropping what it returns.
pub type Companion = Box<dyn Fn(&str, kube::Client) -> Option<CompanionHandle> + Send + Sync>;
pub type CompanionHandle = Box<dyn std::any::Any + Send + Sync>;

struct Running {
    /// Who registered it: a kubeconfig context or a remote secret.
    owner: String,
    /// Changes when its kubeconfig does.
    fingerprint: String,
    task: tokio::task::JoinHandle<()>,
    /// Ends with the watch (dropped with it).
    _companion: Option<CompanionHandle>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The source name a cluster publishes under (also the origin of its declarations).
pub fn source_name(id: &str) -> String {
    format!("cluster {id}")
}

impl ClusterSet {
    pub fn new(
        sources: SourceSet,
        readiness: Readiness,
        metrics: Arc<ClusterMetrics>,
    ) -> Arc<Self> {
        Self::with_companion(sources, readiness, metrics, None)
    }

    /// As [`ClusterSet::new`], running `companion` beside each cluster's watch.
    pub fn with_companion(
        sources: SourceSet,
        readiness: Readiness,
        metrics: Arc<ClusterMetrics>,
        companion: Option<Companion>,
    ) -> Arc<Self> {
        Arc::new(ClusterSet {
            sources,
            readiness,
            metrics,
            running: Mutex::default(),
            companion,
        })
    }

    /// Watches cluster `id`. Returns false when another owner already registered that ID.
    pub fn add(&self, id: &str, owner: &str, fingerprint: &str, client: kube::Client) -> bool {
        let mut running = self.running.lock().expect("cluster set lock");
        if let Some(existing) = running.get(id) {
            if existing.owner != owner {
                error!(cluster = id, %owner, registered_by = %existing.owner, "duplicate cluster ID; keeping the first registration");
                return false;
            }
            if existing.fingerprint == fingerprint {
                return true;
            }
            info!(cluster = id, %owner, "cluster credentials changed; reconnecting");
        } else {
            info!(cluster = id, %owner, "cluster added");
        }
        let source = source_name(id);
        self.readiness.expect(&source);
        self.metrics.synced(id, false);
        // The old companion ends before the new one starts.
        running.remove(id);
        let companion = (self.companion.as_ref()).and_then(|start| start(id, client.clone()));
        let task = tokio::spawn(watch::watch_cluster(
            id.to_string(),
            source,
            client,
            self.sources.clone(),
            self.readiness.clone(),
            self.metrics.clone(),
        ));
        running.insert(
            id.to_string(),
            Running {
                owner: owner.to_string(),
                fingerprint: fingerprint.to_string(),
                task,
                _companion: companion,
            },
        );
        true
    }

    /// Stops watching cluster `id` and withdraws its names, if `owner` registered it.
    pub fn remove(&self, id: &str, owner: &str) {
        let mut running = self.running.lock().expect("cluster set lock");
        if running.get(id).is_some_and(|r| r.owner == owner) {
            running.remove(id);
            let source = source_name(id);
            self.sources.remove(&source);
            self.readiness.forget(&source);
            self.metrics.removed(id);
            info!(cluster = id, %owner, "cluster removed");
        }
    }

    /// IDs registered by `owner`.
    pub fn owned_by(&self, owner: &str) -> Vec<String> {
        let running = self.running.lock().expect("cluster set lock");
        running
            .iter()
            .filter(|(_, r)| r.owner == owner)
            .map(|(id, _)| id.clone())
            .collect()
    }
}
