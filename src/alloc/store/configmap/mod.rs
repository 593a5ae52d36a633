//! Allocations in Kubernetes ConfigMaps: the store every replica in every cluster shares.
//!
//! Layout: see [`shard`]. Writes: take the writer [`lease`], re-read every shard, apply the
//! mutation, and write each touched shard once with compare-and-swap on its resourceVersion
//! (create for a new shard). A 409 means someone wrote behind our back: re-read, re-decide,
//! retry with backoff. 5xx and transport errors are retried with backoff, then reported.
//! Readers follow the shards with a watch that also caches them: a transaction that changes
//! nothing is decided from the cache, without a request; one that writes always re-reads.
//!
//! A shard that cannot be parsed is never written: hosts that would go into it are not stored
//! (so not served), and the addresses it seems to hold are kept out of every allocation.

mod lease;
mod retry;
pub mod shard;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use self::lease::{LEASE_NAME, LockError, WAIT as LEASE_WAIT, WriterLock};
pub(super) use self::retry::api_message;
use self::retry::{api_code, with_retries};
use self::shard::{
    FORMAT_ANNOTATION, FORMAT_VERSION, MANAGED_BY, MAX_SHARD_BYTES, SERIAL_ANNOTATION,
    SERIAL_SHARD, SHARD_LABEL, SHARDS, data_size, decode_serial, decode_shard, encode_key,
    encode_serial, encode_value, salvage, shard_name, shard_of,
};
use super::{Mutation, Store, StoreError, StoreFuture, Unavailable};
use crate::alloc::state::{AllocState, Record, ZoneSerial};

/// Attempts of a whole transaction when other writers keep getting in the way.
const TRANSACTION_ATTEMPTS: u32 = 8;

pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    lock: WriterLock,
    namespace: String,
    changes: OnceLock<(watch::Receiver<u64>, tokio::task::JoinHandle<()>)>,
    cache: Arc<ShardCache>,
    seen: Mutex<u64>,
}

/// One shard as read: what is needed to write it back with compare-and-swap.
struct ShardRead {
    resource_version: Option<String>,
    /// Why it cannot be used, if it cannot.
    damage: Option<String>,
}

enum WriteError {
    Conflict,
    Failed(StoreError),
}

impl ConfigMapStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        let identity = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "globaldns".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        ConfigMapStore {
            api: Api::namespaced(client.clone(), namespace),
            lock: WriterLock::new(Api::namespaced(client, namespace), identity),
            namespace: namespace.to_string(),
            changes: OnceLock::new(),
            cache: Arc::default(),
            seen: Mutex::new(0),
        }
    }

    fn unavailable(&self, source: Unavailable) -> StoreError {
        StoreError::Unavailable {
            store: self.describe(),
            source,
        }
    }

    fn selector() -> String {
        format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
    }

    /// Every shard, and the allocations of the readable ones, as the API server has them now.
    async fn read(&self) -> Result<(BTreeMap<usize, ShardRead>, AllocState), StoreError> {
        let params = ListParams::default().labels(&Self::selector());
        let list = with_retries("list shards", || self.api.list(&params))
            .await
            .map_err(|e| self.unavailable(Unavailable::Api(e)))?;
        Ok(self.decode(&list.items))
    }

    /// The allocations as the shard watch last saw them, while it is in sync.
    fn cached(&self) -> Option<AllocState> {
        if !self.cache.synced.load(Ordering::Acquire) {
            return None;
        }
        let shards = self.cache.shards.state();
        Some(self.decode(shards.iter().map(AsRef::as_ref)).1)
    }

    fn decode<'a>(
        &self,
        configmaps: impl IntoIterator<Item = &'a ConfigMap>,
    ) -> (BTreeMap<usize, ShardRead>, AllocState) {
        let mut shards = BTreeMap::new();
        let mut state = AllocState::default();
        for cm in configmaps {
            let name = cm.metadata.name.clone().unwrap_or_default();
            let Some(index) = (0..SHARDS).find(|i| shard_name(*i) == name) else {
                debug!(configmap = %name, "not an allocation shard; ignored");
                continue;
            };
            let annotation = |key| {
                (cm.metadata.annotations.as_ref())?
                    .get(key)
                    .map(String::as_str)
            };
            let format = annotation(FORMAT_ANNOTATION);
            if index == SERIAL_SHARD {
                state.zone_serial = annotation(SERIAL_ANNOTATION).and_then(decode_serial);
            }
            let data = cm.data.clone().unwrap_or_default();
            let damage = match decode_shard(index, format, &data) {
                Ok(records) => {
                    state.records.extend(records);
                    None
                }
                Err(e) => {
                    error!(configmap = %name, namespace = %self.namespace, error = %e, "allocation shard is unreadable; not writing to it until it is repaired");
                    state.unreadable.extend(salvage(&data));
                    Some(e.to_string())
                }
            };
            shards.insert(
                index,
                ShardRead {
                    resource_version: cm.metadata.resource_version.clone(),
                    damage,
                },
            );
        }
        (shards, state)
    }

    async fn transaction(&self, mutate: &mut Mutation) -> Result<AllocState, StoreError> {
        let mut delays = crate::backoff::shard_conflict(TRANSACTION_ATTEMPTS as usize - 1);
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            // Most calls change nothing (a replica republishing after a ServiceEntry change):
            // decide that without the lease, and first from the watched shards, so that a busy
            // mesh does not list every shard on every change. A write always re-reads.
            let state = match self.cached().filter(|_| attempt == 1) {
                Some(state) => state,
                None => self.read().await?.1,
            };
            let mut next = state.clone();
            if !mutate(&mut next)? {
                return Ok(state);
            }
            self.lock.acquire().await.map_err(|e| match e {
                LockError::Busy(holder) => self.unavailable(Unavailable::LeaseBusy {
                    lease: LEASE_NAME,
                    holder,
                    waited: LEASE_WAIT,
                }),
                LockError::Api(e) => self.unavailable(Unavailable::Api(e)),
            })?;
            let result = self.write_locked(mutate).await;
            self.lock.release().await;
            match result {
                Ok(state) => return Ok(state),
                Err(WriteError::Failed(e)) => return Err(e),
                Err(WriteError::Conflict) => {
                    debug!(attempt, "allocation shard changed underneath; retrying");
                    if let Some(delay) = delays.next() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        Err(self.unavailable(Unavailable::Conflicts(TRANSACTION_ATTEMPTS)))
    }

    /// Under the lease: re-read, re-decide, write each touched shard once.
    async fn write_locked(&self, mutate: &mut Mutation) -> Result<AllocState, WriteError> {
        let (shards, state) = self.read().await.map_err(WriteError::Failed)?;
        let mut next = state.clone();
        if !mutate(&mut next).map_err(|e| WriteError::Failed(e.into()))? {
            return Ok(state);
        }
        let mut stored = next.clone();
        for index in touched_shards(&state, &next) {
            let shard = shards.get(&index);
            let hosts: BTreeMap<&String, &Record> = next
                .records
                .iter()
                .filter(|(h, _)| shard_of(h) == index)
                .collect();
            let refusal = match shard.and_then(|s| s.damage.as_ref()) {
                Some(damage) => Some(format!(
                    "shard {} is unreadable ({damage})",
                    shard_name(index)
                )),
                None => match self
                    .write_shard(index, shard, &hosts, &next.zone_serial)
                    .await
                {
                    Ok(()) => None,
                    Err(WriteError::Failed(StoreError::Corrupt { detail, .. })) => Some(detail),
                    Err(e) => return Err(e),
                },
            };
            if let Some(reason) = refusal {
                // Nothing of this shard was stored: what is returned must say so.
                let refused: Vec<&String> = hosts.keys().copied().collect();
                error!(shard = %shard_name(index), hosts = refused.len(), %reason, "allocations not stored");
                for host in hosts.keys() {
                    stored.records.remove(*host);
                }
                stored.records.extend(
                    state
                        .records
                        .iter()
                        .filter(|(h, _)| shard_of(h) == index)
                        .map(|(h, r)| (h.clone(), r.clone())),
                );
                if index == SERIAL_SHARD {
                    stored.zone_serial = state.zone_serial.clone();
                }
            }
        }
        Ok(stored)
    }

    async fn write_shard(
        &self,
        index: usize,
        shard: Option<&ShardRead>,
        hosts: &BTreeMap<&String, &Record>,
        serial: &Option<ZoneSerial>,
    ) -> Result<(), WriteError> {
        let mut data = BTreeMap::new();
        for (host, record) in hosts {
            let key = encode_key(host).ok_or_else(|| {
                WriteError::Failed(StoreError::Corrupt {
                    store: self.describe(),
                    detail: format!("host {host} cannot be a ConfigMap key"),
                })
            })?;
            data.insert(key, encode_value(record));
        }
        if data_size(&data) > MAX_SHARD_BYTES {
            let detail = format!(
                "shard {} would exceed {MAX_SHARD_BYTES} bytes",
                shard_name(index)
            );
            return Err(WriteError::Failed(StoreError::Corrupt {
                store: self.describe(),
                detail,
            }));
        }
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(shard_name(index));
        cm.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (SHARD_LABEL.to_string(), format!("{index:02x}")),
        ]));
        let mut annotations =
            BTreeMap::from([(FORMAT_ANNOTATION.to_string(), FORMAT_VERSION.to_string())]);
        if let Some(serial) = serial.as_ref().filter(|_| index == SERIAL_SHARD) {
            annotations.insert(SERIAL_ANNOTATION.to_string(), encode_serial(serial));
        }
        cm.metadata.annotations = Some(annotations);
        cm.data = Some(data);
        let params = PostParams::default();
        let name = shard_name(index);
        let result = match shard.and_then(|s| s.resource_version.clone()) {
            Some(rv) => {
                cm.metadata.resource_version = Some(rv);
                with_retries("replace shard", || self.api.replace(&name, &params, &cm)).await
            }
            None => with_retries("create shard", || self.api.create(&params, &cm)).await,
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(409) => Err(WriteError::Conflict),
            Err(e) => Err(WriteError::Failed(self.unavailable(Unavailable::Api(e)))),
        }
    }

    /// Starts (once) the watch that keeps the shard cache and counts changes.
    fn watch_changes(&self) -> watch::Receiver<u64> {
        let (rx, _) = self.changes.get_or_init(|| {
            let (tx, rx) = watch::channel(0u64);
            let config = watcher::Config::default().labels(&Self::selector());
            let writer = (self.cache.writer.lock().expect("shard cache lock"))
                .take()
                .expect("the shard watch starts once");
            let mut events = reflector(
                writer,
                crate::cluster::relisting_watcher(
                    self.api.clone(),
                    config,
                    "allocation ConfigMaps".to_string(),
                ),
            )
            .boxed();
            let cache = self.cache.clone();
            let task = tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if cache.applied(&event) {
                        tx.send_modify(|n| *n += 1);
                    }
                }
            });
            (rx, task)
        });
        rx.clone()
    }
}

/// The shards as the watch sees them, kept by kube-runtime's reflector (which swaps in a relist
/// whole). Out of sync (not listed yet, or the watch failed and has not relisted) it is not used.
struct ShardCache {
    shards: reflector::Store<ConfigMap>,
    /// Handed to the watch when it starts.
    writer: Mutex<Option<reflector::store::Writer<ConfigMap>>>,
    synced: AtomicBool,
}

impl Default for ShardCache {
    fn default() -> Self {
        let (shards, writer) = reflector::store();
        ShardCache {
            shards,
            writer: Mutex::new(Some(writer)),
            synced: AtomicBool::new(false),
        }
    }
}

impl ShardCache {
    /// Notes an event the reflector has applied; whether readers should look again.
    fn applied(&self, event: &Result<watcher::Event<ConfigMap>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::InitDone) => {
                self.synced.store(true, Ordering::Release);
                true
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => true,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
            Err(e) => {
                warn!(error = %e, "watching allocation shards; retrying");
                self.synced.store(false, Ordering::Release);
                false
            }
        }
    }
}

impl Drop for ConfigMapStore {
    fn drop(&mut self) {
        if let Some((_, task)) = self.changes.get() {
            task.abort();
        }
    }
}

/// Shards holding a host whose record differs between `before` and `after`, and the one holding
/// the zone serial when that differs.
fn touched_shards(before: &AllocState, after: &AllocState) -> BTreeSet<usize> {
    let hosts: BTreeSet<&String> = before.records.keys().chain(after.records.keys()).collect();
    let serial = (before.zone_serial != after.zone_serial).then_some(SERIAL_SHARD);
    hosts
        .into_iter()
        .filter(|h| before.records.get(*h) != after.records.get(*h))
        .map(|h| shard_of(h))
        .chain(serial)
        .collect()
}

impl Store for ConfigMapStore {
    fn describe(&self) -> String {
        format!(
            "ConfigMaps {}=globaldns in namespace {}",
            MANAGED_BY.0, self.namespace
        )
    }

    fn load(&self) -> StoreFuture<'_, AllocState> {
        Box::pin(async move { Ok(self.read().await?.1) })
    }

    fn update(&self, mut mutate: Mutation) -> StoreFuture<'_, AllocState> {
        Box::pin(async move { self.transaction(&mut mutate).await })
    }

    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.watch_changes();
        Box::pin(async move {
            loop {
                let now = *rx.borrow_and_update();
                {
                    let mut seen = self.seen.lock().expect("seen lock");
                    if now > *seen {
                        *seen = now;
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        })
    }
}
