//! One cluster's ServiceEntries, kept current with a list + watch.
//!
//! kube-runtime's watcher relists after a 410 and resumes from bookmarks; each relist replaces
//! the cluster's set whole, so entries deleted while the watch was down disappear. When the API
//! server is unreachable the last-known set stays published: names only go when the cluster
//! says they are gone, or when the cluster is removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use tracing::{info, warn};

use crate::ops::Metrics;
use crate::source::Declaration;
use crate::source::readiness::Readiness;
use crate::source::service_entry::{API_VERSIONS, ObjectMeta, ServiceEntry, ServiceEntrySpec};
use crate::source::set::SourceSet;

const GROUP: &str = "networking.istio.io";

/// The newest ServiceEntry version the cluster serves.
async fn served_version(client: &kube::Client) -> Result<&'static str, String> {
    let group = kube::discovery::group(client, GROUP)
        .await
        .map_err(|e| crate::cluster::one_line(&e))?;
    let served: Vec<&str> = group.versions().collect();
    API_VERSIONS
        .iter()
        .map(|v| v.trim_start_matches("networking.istio.io/"))
        .find(|v| served.contains(v))
        .ok_or_else(|| format!("{GROUP} serves none of v1, v1beta1, v1alpha3 (only {served:?})"))
}

/// ServiceEntries of every namespace, in API version `version`.
fn service_entries(client: kube::Client, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, version, "ServiceEntry");
    Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(&gvk, "serviceentries"),
    )
}

/// Cluster `id`'s ServiceEntries as they are now (one list; malformed entries skipped).
pub async fn list_cluster(id: &str, client: kube::Client) -> Result<Vec<Declaration>, String> {
    let version = served_version(&client).await?;
    let list = service_entries(client, version)
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| crate::cluster::one_line(&e))?;
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
    metrics: Arc<Metrics>,
) {
    let mut delay = Duration::from_millis(500);
    let version = loop {
        match served_version(&client).await {
            Ok(v) => break v,
            Err(error) => {
                warn!(cluster = %id, %error, retry_in = ?delay, "cannot discover the ServiceEntry API");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    info!(cluster = %id, version, "watching ServiceEntries");
    let api = service_entries(client, version);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let origin: Arc<str> = source.as_str().into();
    let mut current: BTreeMap<(String, String), Declaration> = BTreeMap::new();
    let mut relist: Option<BTreeMap<(String, String), Declaration>> = None;
    let mut restarts = 0u64;
    // Listed at least once: from then on, the watch being up means we are in sync.
    let mut listed = false;
    let publish = |set: &BTreeMap<(String, String), Declaration>| {
        sources.publish(&source, Arc::new(set.values().cloned().collect()))
    };
    while let Some(event) = events.next().await {
        if event.is_ok() && listed {
            metrics.cluster_synced(&id, true);
        }
        match event {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(object)) => {
                if let (Some(buffer), Some((key, decl))) =
                    (relist.as_mut(), read(&id, &origin, object))
                {
                    buffer.insert(key, decl);
                }
            }
            Ok(watcher::Event::InitDone) => {
                current = relist.take().unwrap_or_default();
                publish(&current);
                readiness.synced(&source);
                listed = true;
                metrics.cluster_synced(&id, true);
                info!(cluster = %id, entries = current.len(), "ServiceEntries synced");
            }
            Ok(watcher::Event::Apply(object)) => {
                let key = key_of(&object);
                match read(&id, &origin, object) {
                    Some((_, decl)) => current.insert(key, decl),
                    None => current.remove(&key),
                };
                publish(&current);
            }
            Ok(watcher::Event::Delete(object)) => {
                current.remove(&key_of(&object));
                publish(&current);
            }
            Err(error) => {
                restarts += 1;
                metrics.cluster_watch_restarted(&id);
                warn!(cluster = %id, %error, restarts, "ServiceEntry watch failed; retrying and serving the last-known entries");
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
        };
        Declaration::from_entry(origin.clone(), ServiceEntry { metadata, spec })
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
