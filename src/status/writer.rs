//! One cluster's status writer: puts the VIP we answer into `status.addresses` of the cluster's
//! ServiceEntries, where istiod reads it (and keeps it: istiod allocates only for hosts that
//! have none there), so the sidecars' listeners and DNS proxies use the address DNS gives out.
//!
//! It writes only what the store holds (the allocations it is given are the stored ones), only
//! when the status differs, and only where the cluster lets us: a SelfSubjectAccessReview asks
//! first, so a read-only identity (Istio's reader service account) never sends a PATCH; there
//! the drift is reported instead. Each patch tests the status it was computed from, as istiod
//! does: a concurrent writer makes it fail, and it is recomputed from a fresh read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::desired::{Owners, desired, drifts};
use super::metrics::StatusMetrics;
use super::patch::{Entry, write_entry};
use crate::alloc::{AllocState, Policy};
use crate::source::Declaration;
use crate::source::kube::{discover_version, service_entry_resource, source_name};
use crate::source::set::Combined;

/// How often a cluster's permission is asked again (RBAC can change under us).
const RECHECK: Duration = Duration::from_secs(300);
/// Patches of one entry within [`FIGHT_WINDOW`] that mean another writer keeps undoing ours
/// (another globaldns with a store of its own, say): the entry is then left alone until the
/// window ends, with a warning, rather than patched without end.
const FIGHT_PATCHES: u32 = 10;
const FIGHT_WINDOW: Duration = Duration::from_secs(600);

/// What every cluster's writer follows.
#[derive(Clone)]
pub struct StatusInputs {
    pub declarations: watch::Receiver<Combined>,
    /// The allocations as stored.
    pub allocations: watch::Receiver<Arc<AllocState>>,
    pub policy: Arc<Policy>,
    pub metrics: Arc<StatusMetrics>,
}

/// Keeps cluster `id`'s statuses in step with our VIPs until the task is aborted; without
/// `write`, only reports how far they are from them.
pub async fn write_cluster(
    id: String,
    client: kube::Client,
    mut inputs: StatusInputs,
    write: bool,
) {
    // The cluster's watch warns of a missing API; the writer only waits for it.
    let version = discover_version(&client, |error, _| {
        debug!(cluster = %id, %error, "status writer waits for the ServiceEntry API");
    })
    .await;
    let origin = source_name(&id);
    let mut writer = Writer {
        id: &id,
        client: &client,
        version,
        metrics: &inputs.metrics,
        write,
        allowed: None,
        reported: HashMap::new(),
        patched: HashMap::new(),
    };
    loop {
        let state = inputs.allocations.borrow_and_update().clone();
        let declarations: Vec<Declaration> = (inputs.declarations.borrow_and_update().iter())
            .filter(|d| *d.origin == *origin)
            .cloned()
            .collect();
        let failed = writer.round(&declarations, &state, &inputs.policy).await;
        let wait = if failed {
            Duration::from_secs(5)
        } else {
            RECHECK
        };
        tokio::select! {
            changed = inputs.declarations.changed() => if changed.is_err() { return },
            changed = inputs.allocations.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        // A burst of changes (a GitOps sync) is one round.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Writer<'a> {
    id: &'a str,
    client: &'a kube::Client,
    version: &'static str,
    metrics: &'a StatusMetrics,
    /// Whether we are to write at all (off with `--no-status-writes`).
    write: bool,
    /// Whether we may patch statuses, and when that was asked.
    allowed: Option<(bool, Instant)>,
    /// What was last reported for each (entry, host) that drifts, so it is logged once a change.
    reported: HashMap<(String, String), Vec<IpAddr>>,
    /// Patches per entry since the start of its window (see [`FIGHT_PATCHES`]).
    patched: HashMap<(String, String), (u32, Instant)>,
}

impl Writer<'_> {
    /// One pass over the cluster's entries; whether something failed and needs another soon.
    async fn round(&mut self, decls: &[Declaration], state: &AllocState, policy: &Policy) -> bool {
        let allowed = self.allowed().await;
        let mut drift = 0;
        let mut failed = false;
        let owners = Owners::of(decls);
        // Entries written this round: what `decls` says of their status is out of date.
        let mut written = std::collections::HashSet::new();
        for decl in decls {
            let owns = |host: &Name| owners.owns(decl, host);
            let current: Vec<Value> = (decl.claimed.iter())
                .map(|(h, a)| json!({"value": a.to_string(), "host": crate::alloc::host_key(h)}))
                .collect();
            if desired(decl, Some(&current), state, policy, owns).is_none() {
                continue;
            }
            if allowed && !self.fought_over(decl) {
                match self.patch(decl, state, policy, &owners).await {
                    Ok(true) => {
                        self.count_write(decl);
                        written.insert(format!("{}/{}", decl.namespace, decl.name));
                    }
                    Ok(false) => {}
                    Err(error) => {
                        failed = true;
                        warn!(cluster = self.id, namespace = %decl.namespace, entry = %decl.name, %error, "cannot write our VIPs into the ServiceEntry's status; retrying");
                    }
                }
            }
        }
        let mut drifting = HashMap::new();
        for d in drifts(decls, state, policy) {
            if written.contains(&d.entry) {
                continue;
            }
            let key = (d.entry, d.host.to_string());
            if self.reported.get(&key) != Some(&d.status) {
                warn!(cluster = self.id, entry = %key.0, host = %key.1, status = ?d.status, answered = ?d.ours, writable = allowed, "the cluster's sidecars use other VIPs for this host than DNS answers");
            }
            drifting.insert(key, d.status);
            drift += 1;
        }
        self.reported = drifting;
        self.metrics.drift(self.id, drift);
        failed
    }

    /// Whether another writer seems to undo each of our writes of `decl`'s status (warned
    /// once): it is then left alone until its window ends.
    fn fought_over(&mut self, decl: &Declaration) -> bool {
        let key = (decl.namespace.clone(), decl.name.clone());
        let Some((count, since)) = self.patched.get(&key) else {
            return false;
        };
        if since.elapsed() > FIGHT_WINDOW {
            self.patched.remove(&key);
            return false;
        }
        *count >= FIGHT_PATCHES
    }

    /// Counts a write of `decl`'s status, for [`Writer::fought_over`].
    fn count_write(&mut self, decl: &Declaration) {
        let key = (decl.namespace.clone(), decl.name.clone());
        let (count, _) = self.patched.entry(key).or_insert((0, Instant::now()));
        *count += 1;
        if *count == FIGHT_PATCHES {
            warn!(cluster = self.id, namespace = %decl.namespace, entry = %decl.name, "another writer keeps changing this ServiceEntry's status back (another globaldns with its own store?); leaving it alone for a while");
        }
    }

    /// Whether we may patch ServiceEntry statuses in this cluster (asked again now and then).
    async fn allowed(&mut self) -> bool {
        if !self.write {
            self.metrics.writable(self.id, false);
            return false;
        }
        if let Some((allowed, at)) = self.allowed
            && at.elapsed() < RECHECK
        {
            return allowed;
        }
        let allowed = match may_patch_status(self.client).await {
            Ok(allowed) => allowed,
            Err(error) => {
                warn!(cluster = self.id, %error, "cannot ask whether ServiceEntry statuses may be written; not writing them");
                false
            }
        };
        if self.allowed.map(|(a, _)| a) != Some(allowed) {
            if allowed {
                info!(
                    cluster = self.id,
                    "writing our VIPs into ServiceEntry statuses"
                );
            } else {
                warn!(
                    cluster = self.id,
                    "not permitted to patch serviceentries/status: the cluster keeps istiod's VIPs; drift is reported"
                );
            }
        }
        self.metrics.writable(self.id, allowed);
        self.allowed = Some((allowed, Instant::now()));
        allowed
    }

    /// Writes `decl`'s status as it should be (see [`write_entry`]); a 403 marks the cluster
    /// read-only.
    async fn patch(
        &mut self,
        decl: &Declaration,
        state: &AllocState,
        policy: &Policy,
        owners: &Owners,
    ) -> Result<bool, kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &decl.namespace,
            &service_entry_resource(self.version),
        );
        let entry = Entry {
            api: &api,
            cluster: self.id,
            name: &decl.name,
        };
        match write_entry(entry, None, state, policy, owners, self.metrics).await {
            Err(kube::Error::Api(e)) if e.code == 403 => {
                self.allowed = Some((false, Instant::now()));
                self.metrics.writable(self.id, false);
                Err(kube::Error::Api(e))
            }
            other => other,
        }
    }
}

/// Asks the cluster (SelfSubjectAccessReview) whether our identity may patch ServiceEntry
/// statuses, in any namespace.
async fn may_patch_status(client: &kube::Client) -> Result<bool, kube::Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("networking.istio.io".into()),
                resource: Some("serviceentries".into()),
                subresource: Some("status".into()),
                verb: Some("patch".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
