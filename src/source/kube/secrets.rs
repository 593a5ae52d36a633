//! Istio remote secrets: Secrets labelled `istio/multiCluster=true` in the primary's namespace,
//! each data key a cluster ID and its value a kubeconfig. Clusters are added, reconnected and
//! removed as the secrets change; a bad kubeconfig is reported with its secret and key and
//! never stops the others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use sha2::{Digest, Sha256};
use tracing::{error, warn};

use super::ClusterSet;
use crate::cluster::connect_yaml;

pub const REMOTE_SECRET_LABEL: &str = "istio/multiCluster=true";

pub async fn watch_remote_secrets(
    client: kube::Client,
    namespace: String,
    clusters: Arc<ClusterSet>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut events = watcher(api, watcher::Config::default().labels(REMOTE_SECRET_LABEL))
        .default_backoff()
        .boxed();
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut relisted: Option<BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relisted = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(secret) | watcher::Event::Apply(secret)) => {
                let owner = owner_of(&namespace, &secret);
                apply(&clusters, &owner, &secret).await;
                known.insert(owner.clone());
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(owner);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // Secrets deleted while the watch was down.
                let seen = relisted.take().unwrap_or_default();
                for gone in known.difference(&seen).cloned().collect::<Vec<_>>() {
                    remove_all(&clusters, &gone);
                    known.remove(&gone);
                }
            }
            Ok(watcher::Event::Delete(secret)) => {
                let owner = owner_of(&namespace, &secret);
                remove_all(&clusters, &owner);
                known.remove(&owner);
            }
            Err(error) => warn!(%namespace, %error, "watching remote secrets failed; retrying"),
        }
    }
}

fn owner_of(namespace: &str, secret: &Secret) -> String {
    format!(
        "secret {namespace}/{}",
        secret.metadata.name.as_deref().unwrap_or("")
    )
}

fn remove_all(clusters: &ClusterSet, owner: &str) {
    for id in clusters.owned_by(owner) {
        clusters.remove(&id, owner);
    }
}

/// Registers every cluster of `secret` and drops the ones it no longer holds.
async fn apply(clusters: &ClusterSet, owner: &str, secret: &Secret) {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (id, bytes) in &data {
        let fingerprint = format!("{:x}", Sha256::digest(bytes));
        let what = format!("{owner} key {id}");
        let client = match std::str::from_utf8(bytes) {
            Ok(yaml) => connect_yaml(yaml, &what).await,
            Err(_) => {
                error!(secret = %owner, key = %id, "remote secret value is not UTF-8 text; cluster skipped");
                continue;
            }
        };
        match client {
            Ok(client) => {
                clusters.add(id, owner, &fingerprint, client);
            }
            Err(e) => {
                error!(secret = %owner, key = %id, error = %e, "bad kubeconfig in remote secret; cluster skipped")
            }
        }
    }
    for id in clusters.owned_by(owner) {
        if !data.contains_key(&id) {
            clusters.remove(&id, owner);
        }
    }
}
