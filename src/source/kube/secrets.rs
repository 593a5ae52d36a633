//! Istio remote secrets: Secrets labelled `istio/multiCluster=true` in the primary's namespace,
//! each data key a cluster ID and its value a kubeconfig. Clusters are added, reconnected and
//! removed as the secrets change; a bad kubeconfig is reported with its secret and key and
//! never stops the others.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher;
use sha2::{Digest, Sha256};
use tracing::{error, warn};

use super::ClusterSet;
use crate::cluster::{ClusterError, connect_yaml};

pub const REMOTE_SECRET_LABEL: &str = "istio/multiCluster=true";

pub async fn watch_remote_secrets(
    client: kube::Client,
    namespace: String,
    clusters: Arc<ClusterSet>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    // The reflector keeps the secrets as listed, swapping in a relist whole: after one, the
    // clusters of secrets it no longer holds (deleted while the watch was down) are removed.
    let (listed, writer) = reflector::store();
    let mut events = reflector(
        writer,
        crate::cluster::relisting_watcher(
            api,
            watcher::Config::default().labels(REMOTE_SECRET_LABEL),
            format!("remote secrets in {namespace}"),
        ),
    )
    .boxed();
    let mut known: BTreeSet<String> = BTreeSet::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitApply(secret) | watcher::Event::Apply(secret)) => {
                let owner = owner_of(&namespace, &secret);
                apply(&clusters, &owner, &secret).await;
                known.insert(owner);
            }
            Ok(watcher::Event::InitDone) => {
                let present: BTreeSet<String> = (listed.state().iter())
                    .map(|secret| owner_of(&namespace, secret))
                    .collect();
                for gone in known.difference(&present).cloned().collect::<Vec<_>>() {
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

/// How a remote secret is named in cluster registrations and messages.
pub fn owner_of(namespace: &str, secret: &Secret) -> String {
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
    let held = clusters_in(owner, secret).await;
    for cluster in &held {
        match &cluster.client {
            Ok(client) => {
                clusters.add(&cluster.id, owner, &cluster.fingerprint, client.clone());
            }
            Err(e) => {
                error!(secret = %owner, key = %cluster.id, error = %e, "bad kubeconfig in remote secret; cluster skipped")
            }
        }
    }
    for id in clusters.owned_by(owner) {
        if !held.iter().any(|c| c.id == id) {
            clusters.remove(&id, owner);
        }
    }
}

/// One data key of a remote secret.
pub struct RemoteCluster {
    pub id: String,
    /// Of the kubeconfig, so that an unchanged one is not reconnected.
    pub fingerprint: String,
    pub client: Result<kube::Client, ClusterError>,
}

/// The clusters `secret` holds, each with a client or why there is none.
pub async fn clusters_in(owner: &str, secret: &Secret) -> Vec<RemoteCluster> {
    let mut out = Vec::new();
    for (id, bytes) in secret.data.iter().flatten() {
        let what = format!("{owner} key {id}");
        let client = match std::str::from_utf8(&bytes.0) {
            Ok(yaml) => connect_yaml(yaml, &what).await,
            Err(_) => Err(ClusterError::NotText { path: what }),
        };
        out.push(RemoteCluster {
            id: id.clone(),
            fingerprint: format!("{:x}", Sha256::digest(&bytes.0)),
            client,
        });
    }
    out
}

/// The remote secrets in `namespace` now.
pub async fn remote_secrets(
    client: kube::Client,
    namespace: &str,
) -> Result<Vec<Secret>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let params = kube::api::ListParams::default().labels(REMOTE_SECRET_LABEL);
    Ok(api.list(&params).await?.items)
}
