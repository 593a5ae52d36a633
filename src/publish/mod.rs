//! Turns what the sources declare into the served name table: merges declarations, makes sure
//! every address-less host has a durably stored VIP, and swaps in a new table.
//!
//! A host whose VIP could not be stored yet is published as pending (SERVFAIL), never with an
//! address that only exists in memory.

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::alloc::{
    AllocState, Policy, Reconciled, Reserved, Store, ZoneSerial, host_key, in_istio_ranges,
    reconcile, unix_now, usage,
};
use crate::catalog::{Catalog, HostEntry};
use crate::source::readiness::Readiness;
use crate::source::set::Combined;
use crate::zone::{BuildError, NameTable, SharedTable, ZoneSettings};

mod metrics;

pub use metrics::PublishMetrics;

pub struct Publisher {
    zone: ZoneSettings,
    policy: Arc<Policy>,
    store: Arc<dyn Store>,
    table: SharedTable,
    serial: u32,
    /// The allocations as last read from or written to the store.
    durable: AllocState,
    /// Set after a failed store write: the wait before the next attempt, and the delays after
    /// it. Cleared by the next success.
    retry: Option<(Duration, backon::ExponentialBackoff)>,
    /// Until every source has synced, what is declared is not the whole truth: nothing is
    /// released on the strength of it.
    readiness: Readiness,
    metrics: Arc<PublishMetrics>,
    /// The serial of the table last swapped in, for whoever announces changes (NOTIFY).
    published: watch::Sender<u32>,
    /// What the current serial was given for (see [`fingerprint`]).
    fingerprint: String,
    /// Stored VIPs inside an Istio range, as last reported.
    stranded: usize,
    /// The allocations as stored, for whoever writes them on (ServiceEntry statuses).
    allocations: watch::Sender<Arc<AllocState>>,
}

impl Publisher {
    /// Builds the first table from `declarations`, allocating and storing VIPs first.
    pub async fn start(
        zone: ZoneSettings,
        policy: Policy,
        store: Arc<dyn Store>,
        readiness: Readiness,
        metrics: Arc<PublishMetrics>,
        declarations: &Combined,
        allocations: watch::Sender<Arc<AllocState>>,
    ) -> Result<Publisher, BuildError> {
        let loaded = store.load().await;
        metrics.store_result(loaded.is_ok());
        let durable = loaded.unwrap_or_else(|error| {
            warn!(%error, "cannot read allocations; new hosts stay unanswered until it can be written");
            AllocState::default()
        });
        let empty = NameTable::build(&zone, 0, &[])?;
        let mut this = Publisher {
            zone,
            policy: Arc::new(policy),
            store,
            table: Arc::new(arc_swap::ArcSwap::from_pointee(empty)),
            serial: 0,
            durable,
            retry: None,
            readiness,
            metrics,
            published: watch::Sender::new(0),
            fingerprint: String::new(),
            stranded: 0,
            allocations,
        };
        this.publish(declarations).await?;
        tokio::task::spawn_blocking(release_free_memory);
        Ok(this)
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// The serial of every table swapped in from now on.
    pub fn published(&self) -> watch::Receiver<u32> {
        self.published.subscribe()
    }

    /// Republishes whenever the sources or the store change, until the sources go away.
    pub async fn run(mut self, mut sources: watch::Receiver<Combined>) {
        loop {
            let retry = self.retry.as_ref().map(|(wait, _)| *wait);
            tokio::select! {
                changed = sources.changed() => if changed.is_err() { return },
                _ = self.store.changed() => {}
                _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
            }
            let declarations = sources.borrow_and_update().clone();
            if let Err(error) = self.publish(&declarations).await {
                warn!(%error, "keeping the previous name table");
            }
            // After publish: its scratch (catalog, host list) is freed by now.
            tokio::task::spawn_blocking(release_free_memory);
        }
    }

    async fn publish(&mut self, declarations: &Combined) -> Result<(), BuildError> {
        let decls = declarations.clone();
        // Merging and building are CPU work that grows with the mesh: off the runtime's threads.
        let catalog = blocking(move || Catalog::merge(decls.iter())).await;
        for c in &catalog.conflicts {
            warn!(host = %c.host, kept = %c.kept, ignored = %c.ignored, "host declared with different addresses; keeping the first");
        }
        let wanted: BTreeSet<String> = catalog
            .unaddressed
            .iter()
            .filter(|n| self.zone.serves(n))
            .map(host_key)
            .collect();
        let reserved = Arc::new(reserved(&catalog, &self.durable));
        self.allocate(&wanted, &reserved).await;

        let hosts = self.resolve(catalog, &reserved);
        let durable = &self.durable;
        self.allocations.send_if_modified(|sent| {
            let changed = **sent != *durable;
            if changed {
                *sent = Arc::new(durable.clone());
            }
            changed
        });
        // A new serial only for new content: a republish that changes nothing (a store write
        // by another replica, a rescan) must not send secondaries transferring the same zone.
        let content = fingerprint(&hosts);
        self.serial = self.serial_for(&content).await;
        self.fingerprint = content;
        let pending = hosts.iter().filter(|h| h.addresses.is_empty()).count();
        let (zone, serial) = (self.zone.clone(), self.serial);
        // The scratch is dropped off the runtime's threads too: freeing a big mesh takes a while.
        let previous = self.table.load_full();
        let table = blocking(move || {
            let table = NameTable::build(&zone, serial, &hosts).map(|mut table| {
                table.follow(&previous);
                table
            });
            drop((hosts, reserved));
            table
        })
        .await?;
        info!(
            hosts = table.host_count(),
            pending,
            serial = self.serial,
            "name table published"
        );
        let stranded = in_istio_ranges(&self.policy, &self.durable);
        if stranded.len() != self.stranded {
            for (host, address, range) in &stranded {
                warn!(host, %address, %range, "VIP inside a range istiod allocates from; still answered, move it with `dnsctl allocate HOST --force`");
            }
            self.stranded = stranded.len();
        }
        self.metrics.published(
            table.host_count(),
            usage(&self.policy, &self.durable),
            self.stranded,
        );
        let old = self.table.swap(Arc::new(table));
        let serial = self.serial;
        self.published
            .send_if_modified(|last| std::mem::replace(last, serial) != serial);
        tokio::task::spawn_blocking(move || retire(old));
        Ok(())
    }

    /// Stores VIPs for `wanted`; on failure keeps the last durable state and schedules a retry.
    /// What the stored run decided (hosts left without a VIP, hosts moved off a VIP an explicit
    /// entry claims) is logged and counted here, once: the store may run the mutation more than
    /// once, so the mutation only reports.
    async fn allocate(&mut self, wanted: &BTreeSet<String>, reserved: &Arc<Reserved>) {
        let complete = self.readiness.is_ready();
        let (policy, wanted2, reserved2) =
            (self.policy.clone(), wanted.clone(), Arc::clone(reserved));
        let report = Arc::new(Mutex::new(Reconciled::default()));
        let last_run = report.clone();
        let mutation = Box::new(move |state: &mut AllocState| {
            let outcome = reconcile(state, &policy, &wanted2, &reserved2, unix_now(), complete);
            let changed = outcome.changed;
            *last_run.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
            Ok(changed)
        });
        let stored = self.store.update(mutation).await;
        self.metrics.store_result(stored.is_ok());
        match stored {
            Ok(state) => {
                self.durable = state;
                self.retry = None;
                let outcome =
                    std::mem::take(&mut *report.lock().unwrap_or_else(PoisonError::into_inner));
                for m in &outcome.moved {
                    warn!(host = m.host, address = %m.address, declared_by = m.declared_by, "allocated VIP is now declared explicitly by another ServiceEntry; moved the host");
                }
                self.metrics.conflicts(outcome.moved.len() as u64);
                for (host, error) in &outcome.failed {
                    warn!(host, %error, "no VIP for host; answering SERVFAIL");
                }
            }
            Err(error) => {
                let (_, mut delays) = self
                    .retry
                    .take()
                    .unwrap_or_else(|| (Duration::ZERO, crate::backoff::store_retry()));
                let next = delays.next().expect("store_retry never gives up");
                warn!(store = %self.store.describe(), %error, retry_in = ?next, "cannot store allocations; new hosts stay unanswered");
                self.retry = Some((next, delays));
            }
        }
    }

    /// The serial for tables of `content`. Replicas share it through the store, so that they
    /// give one content one serial and a secondary that asks any of them never sees a serial
    /// stand for two contents: the one stored for this content (another replica may have given
    /// it), else a new one, above every serial given before, stored first. While the store holds
    /// another content's serial (a replica ahead of this one, or behind), ours stands: each
    /// serial still names one content, and the replicas agree again once their sources do.
    async fn serial_for(&mut self, content: &str) -> u32 {
        let floor = self.serial;
        let current = |z: &ZoneSerial| z.content == content && z.serial >= floor;
        if let Some(stored) = self.durable.zone_serial.as_ref().filter(|z| current(z)) {
            return stored.serial;
        }
        if content == self.fingerprint && floor != 0 {
            return floor;
        }
        let wanted = content.to_string();
        let mutation = Box::new(move |state: &mut AllocState| {
            let stored = state.zone_serial.as_ref();
            if stored.is_some_and(|z| z.content == wanted && z.serial >= floor) {
                return Ok(false);
            }
            let last = stored.map_or(floor, |z| z.serial.max(floor));
            state.zone_serial = Some(ZoneSerial {
                serial: next_serial(last),
                content: wanted.clone(),
            });
            Ok(true)
        });
        let stored = self.store.update(mutation).await;
        self.metrics.store_result(stored.is_ok());
        match stored {
            Ok(state) => {
                self.durable = state;
                if let Some(stored) = self.durable.zone_serial.as_ref().filter(|z| current(z)) {
                    return stored.serial;
                }
                warn!(store = %self.store.describe(), "the zone serial was not stored; other replicas may give this content another serial");
            }
            Err(error) => {
                warn!(store = %self.store.describe(), %error, "cannot store the zone serial; other replicas may give this content another serial");
            }
        }
        next_serial(floor)
    }

    /// Explicit hosts as declared, plus address-less hosts with their stored VIPs. A stored VIP
    /// that an explicit entry now claims is withheld, so no address is served for two hosts.
    fn resolve(&self, catalog: Catalog, reserved: &Reserved) -> Vec<HostEntry> {
        let Catalog {
            mut hosts,
            unaddressed,
            mut ports,
            ..
        } = catalog;
        for host in &mut hosts {
            host.ports = ports.remove(&host.name).unwrap_or_default();
        }
        for name in unaddressed.into_iter().filter(|n| self.zone.serves(n)) {
            let key = host_key(&name);
            let record = self
                .durable
                .records
                .get(&key)
                .filter(|r| r.released_at.is_none());
            let addresses = record.map_or_else(Vec::new, |r| {
                let clash = r
                    .addresses
                    .iter()
                    .any(|a| reserved.get(a).is_some_and(|owner| **owner != *key));
                if clash {
                    Vec::new()
                } else {
                    r.addresses.clone()
                }
            });
            let ports = ports.remove(&name).unwrap_or_default();
            hosts.push(HostEntry {
                name,
                addresses,
                ports,
            });
        }
        hosts
    }
}

/// Explicit addresses and the host each belongs to: the allocator must not hand them out. Then
/// what some cluster's `status.addresses` holds for a host (istiod's VIPs, or ours written
/// back): not handed to another host either, except an address one of our records already
/// holds, which stays where it is (a VIP never moves on its own; one inside Istio's range is
/// reported for an operator to move).
fn reserved(catalog: &Catalog, durable: &AllocState) -> Reserved {
    let mut reserved = Reserved::with_capacity(catalog.hosts.len() + catalog.claimed.len());
    for host in &catalog.hosts {
        let key: Arc<str> = host_key(&host.name).into();
        reserved.extend(host.addresses.iter().map(|a| (*a, key.clone())));
    }
    if !catalog.claimed.is_empty() {
        let held: HashSet<IpAddr> = (durable.records.values())
            .flat_map(|r| r.addresses.iter().copied())
            .collect();
        for (host, address) in &catalog.claimed {
            if !held.contains(address) {
                (reserved.entry(*address)).or_insert_with(|| host_key(host).into());
            }
        }
    }
    reserved
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("publisher work does not panic")
}

/// What the table is built from (the zone settings are fixed for the process), as hex: equal for
/// equal content, whatever order the sources listed it in, in every process of one build, so
/// a rebuild keeps its serial and replicas agree on theirs. Each host is digested on its own and
/// the digests summed, which ignores their order without sorting a big mesh's names.
fn fingerprint(hosts: &[HostEntry]) -> String {
    let mut sum = 0u128;
    for host in hosts {
        let mut hasher = DigestHasher(Sha256::new());
        host.hash(&mut hasher);
        let digest = hasher.0.finalize();
        let part = u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 is 32 bytes"));
        sum = sum.wrapping_add(part);
    }
    format!("{sum:032x}")
}

/// Feeds what `Hash` writes into SHA-256, which (unlike std's hasher) promises the same result
/// in every process and release.
struct DigestHasher(Sha256);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 is 32 bytes"))
    }
}

/// SOA serials follow the clock but always move forward, even for rebuilds within a second.
fn next_serial(previous: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    now.max(previous.wrapping_add(1))
}

/// Frees a replaced table here rather than on a query thread. A query that was reading it when it
/// was replaced holds the last reference for microseconds; freeing a big mesh's table takes
/// milliseconds that its caller would wait. After a second, whoever holds it frees it.
fn retire(mut old: Arc<NameTable>) {
    for _ in 0..1000 {
        match Arc::try_unwrap(old) {
            Ok(table) => return drop(table),
            Err(shared) => old = shared,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Hands memory freed by a rebuild (the previous table, the merge's scratch) back to the OS:
/// glibc keeps it otherwise, and a big mesh's peak would stay resident for good. It takes a
/// while on a big heap, so it runs beside the server, not before it answers.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
