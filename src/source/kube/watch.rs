//! One cluster's ServiceEntries, kept current with a list + watch.
//!
//! kube-runtime's watcher relists after a 410 and resumes from bookmarks; each relist replaces
//! the cluster's set whole, so entries deleted while the watch was down disappear. When the API
//! server is unreachable the last-known set stays published: names only go when the cluster
//! says they are gone, or when the cluster is removed.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::listed::{Applied, Listed};
use super::metrics::ClusterMetrics;
use crate::cluster::ClusterError;
use crate::source::readiness::Readiness;
use crate::source::service_entry::{
    API_VERSIONS, ObjectMeta, ServiceEntry, ServiceEntrySpec, ServiceEntryStatus,
};
use crate::source::set::SourceSet;
use crate::source::{Declaration, DeclarationSet};

const GROUP: &str = "networking.istio.io";

/// Events already waiting that are applied before publishing once.
const MAX_BURST: usize = 4096;

/// A cluster's declarations are published in this many sets, by a hash of the entry's
/// namespace and name: an event rebuilds only its entry's set, and the publisher, which tells
/// changes by the sets that are new, looks at that set's entries alone.
const BUCKETS: usize = 64;

/// The newest ServiceEntry version the cluster serves.
pub async fn served_version(client: &kube::Client) -> Result<&'static str, ClusterError> {
    let group = kube::discovery::group(client, GROUP)
        .await
        .map_err(ClusterError::Api)?;
    let served: Vec<&str> = group.versions().collect();
    let wanted = API_VERSIONS.map(|v| v.trim_start_matches("networking.istio.io/"));
    wanted
        .into_iter()
        .find(|v| served.contains(v))
        .ok_or_else(|| ClusterError::NoVersion {
            group: GROUP,
            wanted: wanted.to_vec(),
            served: served.iter().map(|v| v.to_string()).collect(),
        })
}

/// [`served_version`], asked again on the discovery backoff until the cluster serves one (a
/// cluster without Istio's CRDs yet may get them later); `failed` hears of each failure.
pub async fn discover_version(
    client: &kube::Client,
    failed: impl Fn(&ClusterError, std::time::Duration),
) -> &'static str {
    let mut delays = crate::backoff::discovery();
    loop {
        match served_version(client).await {
            Ok(version) => return version,
            Err(error) => {
                let delay = delays.next().expect("discovery never gives up");
                failed(&error, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// ServiceEntries of every namespace, in API version `version`.
pub fn service_entries(client: kube::Client, version: &str) -> Api<DynamicObject> {
    Api::all_with(client, &service_entry_resource(version))
}

/// The ServiceEntry resource in API version `version`.
pub fn service_entry_resource(version: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk(GROUP, version, "ServiceEntry");
    ApiResource::from_gvk_with_plural(&gvk, "serviceentries")
}

/// Cluster `id`'s ServiceEntries as they are now (one list; malformed entries skipped).
pub async fn list_cluster(
    id: &str,
    client: kube::Client,
) -> Result<Vec<Declaration>, ClusterError> {
    let version = served_version(&client).await?;
    let list = service_entries(client, version)
        .list(&kube::api::ListParams::default())
        .await
        .map_err(ClusterError::Api)?;
    let origin: Arc<str> = super::source_name(id).into();
    Ok(list
        .items
        .into_iter()
        .filter_map(|object| read(id, &origin, object).map(|(_, decl)| decl))
        .collect())
}

/// Publishes cluster `id`'s ServiceEntries under `source` until the task is aborted.
pub async fn watch_cluster(
    id: String,
    source: String,
    client: kube::Client,
    sources: SourceSet,
    readiness: Readiness,
    metrics: Arc<ClusterMetrics>,
) {
    let version = discover_version(&client, |error, delay| {
        warn!(cluster = %id, %error, retry_in = ?delay, "cannot discover the ServiceEntry API");
    })
    .await;
    info!(cluster = %id, version, "watching ServiceEntries");
    let api = service_entries(client, version);
    let mut events = crate::cluster::relisting_watcher(
        api,
        watcher::Config::default(),
        format!("ServiceEntries of cluster {id}"),
    );
    let mut view = ClusterView {
        id: &id,
        origin: source.as_str().into(),
        metrics: &metrics,
        entries: Listed::default(),
        restarts: 0,
        listed: false,
        buckets: vec![Arc::default(); BUCKETS],
        dirty: vec![false; BUCKETS],
    };
    while let Some(event) = events.next().await {
        let mut change = view.apply(event);
        // A burst (a namespace deleted, a GitOps sync) is published once.
        for _ in 0..MAX_BURST {
            let Some(Some(event)) = events.next().now_or_never() else {
                break;
            };
            change = change.max(view.apply(event));
        }
        if change >= Change::Changed {
            sources.publish_chunks(&source, view.rebuild_dirty());
        }
        if change == Change::Synced {
            readiness.synced(&source);
        }
    }
}

/// What one or more watch events did to the cluster's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    None,
    Changed,
    /// Listed whole: changed, and in sync.
    Synced,
}

/// One cluster's ServiceEntries as its watch reports them.
struct ClusterView<'a> {
    id: &'a str,
    origin: Arc<str>,
    metrics: &'a ClusterMetrics,
    entries: Listed<(String, String), Declaration>,
    restarts: u64,
    /// Listed at least once: from then on, the watch being up means we are in sync.
    listed: bool,
    /// The entries as published, in [`BUCKETS`] sets, and which sets an event changed since.
    buckets: Vec<DeclarationSet>,
    dirty: Vec<bool>,
}

/// The set an entry is published in.
fn bucket_of(key: &(String, String)) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() as usize % BUCKETS
}

impl ClusterView<'_> {
    /// The sets to publish: those no event touched as they were (the same allocations), the
    /// others built again from the entries.
    fn rebuild_dirty(&mut self) -> Vec<DeclarationSet> {
        let mut fresh: Vec<Option<Vec<Declaration>>> =
            (self.dirty.iter()).map(|&d| d.then(Vec::new)).collect();
        for (key, decl) in self.entries.current() {
            if let Some(set) = &mut fresh[bucket_of(key)] {
                set.push(decl.clone());
            }
        }
        for (at, set) in fresh.into_iter().enumerate() {
            if let Some(set) = set {
                self.buckets[at] = Arc::new(set);
            }
        }
        self.dirty.fill(false);
        self.buckets.clone()
    }

    fn apply(&mut self, event: Result<watcher::Event<DynamicObject>, watcher::Error>) -> Change {
        let id = self.id;
        match &event {
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                debug!(cluster = %self.id, entry = ?object.metadata.name, "ServiceEntry event");
                self.dirty[bucket_of(&key_of(object))] = true;
            }
            Ok(watcher::Event::InitDone) => self.dirty.fill(true),
            _ => {}
        }
        if event.is_ok() && self.listed {
            self.metrics.synced(id, true);
        }
        match event {
            Ok(event) => {
                let origin = &self.origin;
                let read = |object| read(id, origin, object).map(|(_, decl)| decl);
                match self.entries.apply(event, key_of, read) {
                    Applied::Nothing => Change::None,
                    Applied::Changed => Change::Changed,
                    Applied::Relisted => {
                        self.listed = true;
                        self.metrics.synced(id, true);
                        let entries = self.entries.current().len();
                        info!(cluster = %id, entries, "ServiceEntries synced");
                        Change::Synced
                    }
                }
            }
            Err(error) => {
                self.restarts += 1;
                self.metrics.watch_restarted(id);
                warn!(cluster = %id, %error, restarts = self.restarts, "ServiceEntry watch failed; retrying and serving the last-known entries");
                Change::None
            }
        }
    }
}

fn key_of(object: &DynamicObject) -> (String, String) {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// One ServiceEntry object of cluster `cluster` as its declaration; `None` (logged) when it is
/// malformed.
pub fn declaration_of(cluster: &str, object: DynamicObject) -> Option<Declaration> {
    let origin: Arc<str> = super::source_name(cluster).into();
    read(cluster, &origin, object).map(|(_, decl)| decl)
}

/// A ServiceEntry as a declaration; a malformed one is logged and left out.
fn read(
    cluster: &str,
    origin: &Arc<str>,
    object: DynamicObject,
) -> Option<((String, String), Declaration)> {
    let key = key_of(&object);
    // Straight from the object's tree: no copy of the whole object (managedFields and all).
    let spec = object
        .data
        .get("spec")
        .ok_or_else(|| "missing field `spec`".to_string());
    let entry = spec.and_then(|spec| {
        let spec = ServiceEntrySpec::deserialize(spec).map_err(|e| format!("spec: {e}"))?;
        let metadata = ObjectMeta {
            name: key.1.clone(),
            namespace: object.metadata.namespace,
            labels: object.metadata.labels.unwrap_or_default(),
        };
        // istiod's to write: one that does not read is left out, never the entry with it.
        let status = (object.data.get("status"))
            .map(ServiceEntryStatus::deserialize)
            .transpose()
            .unwrap_or_else(|error| {
                warn!(cluster, namespace = %key.0, name = %key.1, %error, "status of ServiceEntry does not read; its addresses are not reserved");
                None
            })
            .unwrap_or_default();
        let entry = ServiceEntry {
            metadata,
            spec,
            status,
        };
        Declaration::from_entry(origin.clone(), entry).map_err(|e| e.to_string())
    });
    match entry {
        Ok((decl, cidrs)) => {
            decl.warn_ignored(&cidrs);
            Some((key, decl))
        }
        Err(error) => {
            warn!(cluster, namespace = %key.0, name = %key.1, %error, "skipping ServiceEntry");
            None
        }
    }
}
