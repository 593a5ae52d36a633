//! One entry's status write: read, decide, patch with a `test` of what was read, and again
//! from a fresh read when another writer changed the status in between (JSON Patch `test`
//! fails with 422; a changed object with 409). Nothing is ever written blind.

use std::time::Duration;

use hickory_proto::rr::Name;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::desired::{Owners, desired, read_entry};
use super::metrics::StatusMetrics;
use crate::alloc::{AllocState, Policy};
use crate::source::kube::declaration_of;

/// Tries of one entry's patch when other writers keep changing its status.
const ATTEMPTS: u32 = 5;

/// Which entry: its namespaced API, its cluster's ID and its name.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub api: &'a Api<DynamicObject>,
    pub cluster: &'a str,
    pub name: &'a str,
}

/// Brings the entry's status to what it should be, deciding from `read` (the entry as read
/// before, when the caller has it) or a fresh GET; each retry reads afresh. Whether it wrote.
pub async fn write_entry(
    entry: Entry<'_>,
    mut read: Option<DynamicObject>,
    state: &AllocState,
    policy: &Policy,
    owners: &Owners,
    metrics: &StatusMetrics,
) -> Result<bool, kube::Error> {
    let Entry { api, cluster, name } = entry;
    for attempt in 1..=ATTEMPTS {
        let object = match read.take() {
            Some(object) => object,
            None => api.get(name).await?,
        };
        let status = object.data.get("status").cloned();
        let Some(fresh) = declaration_of(cluster, object) else {
            return Ok(false); // malformed now: the watch reports it
        };
        let current = (status.as_ref())
            .and_then(|s| s.get("addresses"))
            .and_then(Value::as_array);
        let owns = |host: &Name| owners.owns(&fresh, host);
        let Some(next) = desired(&fresh, current.map(Vec::as_slice), state, policy, owns) else {
            return Ok(false);
        };
        let ops = match (&status, current) {
            (None | Some(Value::Null), _) => json!([
                {"op": "test", "path": "/status", "value": null},
                {"op": "add", "path": "/status", "value": {"addresses": next}},
            ]),
            (Some(status), None) => json!([
                {"op": "test", "path": "/status", "value": status},
                {"op": "add", "path": "/status/addresses", "value": next},
            ]),
            (Some(_), Some(current)) => json!([
                {"op": "test", "path": "/status/addresses", "value": current},
                {"op": "replace", "path": "/status/addresses", "value": next},
            ]),
        };
        let patch: json_patch::Patch =
            serde_json::from_value(ops).expect("the operations are a JSON patch");
        let params = PatchParams::default();
        match api
            .patch_status(name, &params, &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => {
                metrics.patched(cluster);
                let addresses: Vec<_> =
                    next.iter().filter_map(read_entry).map(|(_, a)| a).collect();
                info!(cluster, namespace = %fresh.namespace, entry = name, ?addresses, "wrote our VIPs into the ServiceEntry's status");
                return Ok(true);
            }
            Err(kube::Error::Api(e)) if (e.code == 422 || e.code == 409) && attempt < ATTEMPTS => {
                metrics.conflict(cluster);
                debug!(
                    cluster,
                    entry = name,
                    attempt,
                    "status changed under us; reading it again"
                );
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}
