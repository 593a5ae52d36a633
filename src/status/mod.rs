//! The VIP we answer, written where the data plane reads it: `status.addresses` of the
//! ServiceEntries in every cluster whose istiod reads them (issue 16). Downstream of the
//! allocator: it writes only stored VIPs, and never decides one.

mod desired;
mod metrics;
mod patch;
mod writer;

pub use desired::{Drift, OPT_OUT_LABEL, Owners, drifts, held, qualifies};
pub use metrics::StatusMetrics;
pub use patch::{Entry, write_entry};
pub use writer::{StatusInputs, write_cluster};

use std::sync::Arc;

use crate::source::kube::{Companion, CompanionHandle};

/// Where statuses are written.
#[derive(Clone, Debug, Default)]
pub struct StatusSettings {
    /// Off: statuses are only read, and drift reported.
    pub write: bool,
    /// Cluster IDs whose statuses are left alone: the remote clusters of a primary-remote mesh,
    /// whose istiod (the primary's) never reads them.
    pub skip: Vec<String>,
}

/// The status writer of each watched cluster, as the cluster set's companion.
pub fn companion(settings: StatusSettings, inputs: StatusInputs) -> Companion {
    Box::new(move |id: &str, client: kube::Client| {
        if settings.skip.iter().any(|s| s == id) {
            return None;
        }
        let task = tokio::spawn(write_cluster(
            id.to_string(),
            client,
            inputs.clone(),
            settings.write,
        ));
        let handle: CompanionHandle = Box::new(Writing {
            task,
            id: id.to_string(),
            metrics: inputs.metrics.clone(),
        });
        Some(handle)
    })
}

/// A running writer: ended, and its cluster's series removed, when dropped.
struct Writing {
    task: tokio::task::JoinHandle<()>,
    id: String,
    metrics: Arc<StatusMetrics>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.removed(&self.id);
    }
}
