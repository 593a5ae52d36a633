//! Allocations in Kubernetes ConfigMaps: the store every replica in every cluster shares.
//!
//! Layout: see [`shard`]. Writes: take the writer [`lease`], read every shard, apply the
//! mutation, and write each touched shard once with compare-and-swap on its resourceVersion
//! (create for a new shard). A 409 means someone wrote behind our back: re-read, re-decide,
//! retry with backoff. 5xx and transport errors are retried with backoff, then reported.
//! Readers follow the shards with a watch that also caches them: a transaction that changes
//! nothing is decided from the cache, without a request.
//!
//! Reading every shard is a consistent list, which the API server answers only once its watch
//! cache has caught up with etcd: tens of milliseconds, the most of a transaction. So a writer
//! reads the shards once per lease at most, and not at all when its watch already holds the last
//! write made under the lease (see [`lease`]); while it keeps the lease, it goes on from what it
//! read and wrote. A shard write it did not make, seen by the watch, sends it back to reading.
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
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use self::lease::{Held, LEASE_NAME, LockError, WAIT as LEASE_WAIT, Write, WriterLock};
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
/// How long a writer waits for its shard watch to deliver the last write made under the lease
/// before it lists the shards instead.
const CATCH_UP: Duration = Duration::from_millis(100);

pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    lock: WriterLock<View>,
    namespace: String,
    changes: OnceLock<(watch::Receiver<u64>, tokio::task::JoinHandle<()>)>,
    cache: Arc<ShardCache>,
    seen: Mutex<u64>,
    /// How long a transaction waits for another writer's lease before it gives up.
    lease_wait: Duration,
}

/// The shards as read and written under the lease.
struct View {
    shards: BTreeMap<usize, ShardRead>,
    state: AllocState,
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
            cache: Arc::new(ShardCache::new(namespace)),
            seen: Mutex::new(0),
            lease_wait: LEASE_WAIT,
        }
    }

    /// Keeps the writer lease for up to `hold` while transactions come less than `idle` apart
    /// (a server; a command that writes once gives it up at once). See [`WriterLock::hold`].
    pub fn holding_lease(mut self, hold: Duration, idle: Duration) -> Self {
        self.lock.hold(hold, idle);
        self
    }

    /// Gives a transaction up when another writer holds the lease for longer than `wait` (one
    /// minute unless told): a server would rather publish what is stored and try again than
    /// hold every other change back while a killed replica's lease runs out.
    pub fn waiting_for_lease(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
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

    /// The allocations as the shard watch last saw them, while it is in sync and has delivered
    /// our own last write (before that, it could make a change look made already).
    fn cached(&self) -> Option<AllocState> {
        let own = self.cache.own.lock().expect("own writes lock");
        if own.pending.is_some() {
            return None;
        }
        drop(own);
        self.cached_view().map(|view| view.state)
    }

    fn cached_view(&self) -> Option<View> {
        if !self.cache.synced.load(Ordering::Acquire) {
            return None;
        }
        let shards = self.cache.shards.state();
        let (shards, state) = self.decode(shards.iter().map(AsRef::as_ref));
        Some(View { shards, state })
    }

    /// The shards as they are now, under the lease: from the watch once it holds `last`, the
    /// last write made under the lease (so every write before it too), else listed.
    async fn fresh_view(&self, last: Option<Write>, list: bool) -> Result<View, StoreError> {
        // Cleared first: a write by someone else from now on makes this view stale.
        self.cache.foreign.store(false, Ordering::Release);
        // Without a watch (a command), listing is quicker than starting one.
        let watching = self.changes.get().is_some();
        if let Some(last) = last.filter(|_| watching && !list) {
            let mut changes = self.watch_changes();
            let caught_up = tokio::time::timeout(CATCH_UP, async {
                while !(self.cache.synced.load(Ordering::Acquire) && self.cache.holds(&last)) {
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            })
            .await;
            if caught_up.is_ok()
                && let Some(view) = self.cached_view()
            {
                return Ok(view);
            }
            debug!(shard = %last.shard, "the shard watch is behind the lease; listing");
        }
        let started = std::time::Instant::now();
        let (shards, state) = self.read().await?;
        debug!(took = ?started.elapsed(), "listed every shard");
        Ok(View { shards, state })
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
            // decide that without the lease, from the watched shards, or (without a watch: a
            // command) from a read. A watch that has not caught up with our own last write
            // cannot tell; the lease is cheap to take then, and what is kept under it can.
            let watching = self.changes.get().is_some();
            let state = match self.cached() {
                _ if attempt > 1 => None,
                Some(state) => Some(state),
                None if watching => None,
                None => Some(self.read().await?.1),
            };
            if let Some(state) = state {
                let mut next = state.clone();
                if !mutate(&mut next)? {
                    return Ok(state);
                }
            }
            // While another writer holds the lease, its writes may make ours moot.
            let mut settled = None;
            let held = self
                .lock
                .lock(self.lease_wait, || match self.cached() {
                    Some(state) if matches!(mutate(&mut state.clone()), Ok(false)) => {
                        settled = Some(state);
                        false
                    }
                    _ => true,
                })
                .await
                .map_err(|e| match e {
                    LockError::Busy { holder, waited } => {
                        self.unavailable(Unavailable::LeaseBusy {
                            lease: LEASE_NAME,
                            holder,
                            waited,
                        })
                    }
                    LockError::Api(e) => self.unavailable(Unavailable::Api(e)),
                })?;
            let Some(mut held) = held else {
                return Ok(settled.expect("the lock is given up only when settled"));
            };
            let started = std::time::Instant::now();
            let result = self.write_locked(&mut held, mutate, attempt > 1).await;
            held.finish().await;
            debug!(attempt, took = ?started.elapsed(), "allocation transaction");
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

    /// Under the lease: decide again on the shards as they are (after a conflict, listed), and
    /// write each touched shard once.
    async fn write_locked(
        &self,
        held: &mut Held<'_, View>,
        mutate: &mut Mutation,
        list: bool,
    ) -> Result<AllocState, WriteError> {
        let kept = held
            .take_view()
            .filter(|_| !list && !self.cache.foreign.load(Ordering::Acquire));
        let View { mut shards, state } = match kept {
            Some(view) => view,
            None => (self.fresh_view(held.last_write().cloned(), list).await)
                .map_err(WriteError::Failed)?,
        };
        let mut next = state.clone();
        if !mutate(&mut next).map_err(|e| WriteError::Failed(e.into()))? {
            held.keep_view(View { shards, state });
            return Ok(next);
        }
        let mut stored = next.clone();
        for index in touched_shards(&state, &next) {
            if !held.may_write() {
                // What was written so far is in the shards and noted; the next attempt reads
                // them under a lease taken anew.
                debug!("the lease is too old to write under; starting again");
                return Err(WriteError::Conflict);
            }
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
                    Ok(write) => {
                        self.cache.wrote(&write);
                        shards.insert(
                            index,
                            ShardRead {
                                resource_version: Some(write.resource_version.clone()),
                                damage: None,
                            },
                        );
                        held.wrote(write);
                        None
                    }
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
        held.keep_view(View {
            shards,
            state: stored.clone(),
        });
        Ok(stored)
    }

    async fn write_shard(
        &self,
        index: usize,
        shard: Option<&ShardRead>,
        hosts: &BTreeMap<&String, &Record>,
        serial: &Option<ZoneSerial>,
    ) -> Result<Write, WriteError> {
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
            Ok(written) => Ok(Write {
                shard: name,
                resource_version: written.metadata.resource_version.unwrap_or_default(),
            }),
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
    namespace: String,
    shards: reflector::Store<ConfigMap>,
    /// Handed to the watch when it starts.
    writer: Mutex<Option<reflector::store::Writer<ConfigMap>>>,
    synced: AtomicBool,
    own: Mutex<OwnWrites>,
    /// Set when the watch delivers a shard change that is not one of [`OwnWrites`] (or relists):
    /// what a writer read before is stale then.
    foreign: AtomicBool,
}

/// The shard writes this store made, to tell them from other writers' in the watch.
#[derive(Default)]
struct OwnWrites {
    /// Our last write, until the watch delivers it.
    pending: Option<Write>,
    versions: BTreeSet<String>,
}

/// Writes remembered to tell them apart; beyond that, the oldest are forgotten (and, should the
/// watch be that far behind, taken for someone else's: a needless read, no more).
const OWN_WRITES: usize = 1024;

impl ShardCache {
    fn new(namespace: &str) -> Self {
        let (shards, writer) = reflector::store();
        ShardCache {
            namespace: namespace.to_string(),
            shards,
            writer: Mutex::new(Some(writer)),
            synced: AtomicBool::new(false),
            own: Mutex::default(),
            foreign: AtomicBool::new(false),
        }
    }

    /// Whether the watch holds `write` (the shard as that write left it).
    fn holds(&self, write: &Write) -> bool {
        let key = ObjectRef::new(&write.shard).within(&self.namespace);
        self.shards.get(&key).is_some_and(|cm| {
            cm.metadata.resource_version.as_deref() == Some(&write.resource_version)
        })
    }

    fn wrote(&self, write: &Write) {
        let version = &write.resource_version;
        {
            let mut own = self.own.lock().expect("own writes lock");
            if own.versions.len() >= OWN_WRITES {
                own.versions.pop_first();
            }
            own.versions.insert(version.clone());
            own.pending = Some(write.clone());
        }
        // The watch may have been quicker than the answer to the write.
        if self.holds(write) {
            let mut own = self.own.lock().expect("own writes lock");
            if own.pending.as_ref() == Some(write) {
                own.pending = None;
            }
        }
    }

    /// Notes an event the reflector has applied; whether readers should look again.
    fn applied(&self, event: &Result<watcher::Event<ConfigMap>, watcher::Error>) -> bool {
        let mut own = self.own.lock().expect("own writes lock");
        let foreign = match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::Delete(cm)) => {
                let version = cm.metadata.resource_version.as_ref();
                if version.is_some() && version == own.pending.as_ref().map(|w| &w.resource_version)
                {
                    own.pending = None;
                }
                version.is_none_or(|v| !own.versions.contains(v))
            }
            // A relist may hold our last write without an event for it.
            Ok(watcher::Event::InitDone) => {
                if own.pending.as_ref().is_some_and(|w| self.holds(w)) {
                    own.pending = None;
                }
                true
            }
            _ => true,
        };
        drop(own);
        if foreign {
            self.foreign.store(true, Ordering::Release);
        }
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

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.lock.close())
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
