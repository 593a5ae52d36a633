//! Turns what the sources declare into the served name table: merges declarations, makes sure
//! every address-less host has a durably stored VIP, and swaps in a new table.
//!
//! A host whose VIP could not be stored yet is published as pending (SERVFAIL), never with an
//! address that only exists in memory.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::alloc::{
    AllocState, Holders, Policy, Reconciled, Reserved, Scope, Store, Tally, ZoneSerial, reconcile,
    unix_now,
};
use crate::catalog::HostEntry;
use crate::source::readiness::Readiness;
use crate::source::set::Combined;
use crate::zone::{BuildError, NameTable, SharedTable, ZoneSettings};

pub mod hosts;
mod metrics;

pub use metrics::PublishMetrics;

use hosts::Hosts;

/// How often, at most, the allocator looks at every host while only a few change, if that can
/// do anything a change cannot: drop a record whose grace period ended, or give a VIP to a host
/// that is still waiting for one (a full pool refused it). Such a look at a big mesh holds up
/// the changes behind it, so it is not made for nothing.
const LOOK_AT_ALL: Duration = Duration::from_secs(60);

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
    /// What the current serial was given for (see [`hosts::Served::fingerprint`]).
    fingerprint: String,
    /// Whether the store holds the current serial for it; if not, the next publish tries again.
    serial_stored: bool,
    /// Every host: its declarations, what it holds and what is served for it.
    hosts: Hosts,
    /// The store is to be asked again whatever changed: it changed, or a write failed.
    allocate_due: bool,
    /// Whether the sources were complete when the allocator last ran (it releases only then).
    complete: bool,
    /// The last table was built whole (its predecessor's memory is worth handing back).
    rebuilt: bool,
    /// The last table could not be made: the next is built whole from the served hosts.
    out_of_step: bool,
    /// When the allocator last looked at every host.
    looked_at_all: Instant,
    /// Who holds each stored VIP, as of the last transaction, for the next.
    holders: Arc<Mutex<Holders>>,
    /// Pool usage and stranded VIPs of the allocations as last published.
    tally: Tally,
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
        sources: &mut watch::Receiver<Combined>,
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
            serial_stored: false,
            hosts: Hosts::default(),
            allocate_due: true,
            looked_at_all: Instant::now(),
            complete: false,
            rebuilt: false,
            out_of_step: false,
            holders: Arc::default(),
            tally: Tally::default(),
            stranded: 0,
            allocations,
        };
        let (declarations, complete) = this.take(sources);
        this.publish(&declarations, complete).await?;
        crate::background::spawn_blocking(release_free_memory);
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
                _ = self.store.changed() => self.allocate_due = true,
                _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
            }
            let (declarations, complete) = self.take(&mut sources);
            if let Err(error) = self.publish(&declarations, complete).await {
                warn!(%error, "keeping the previous name table");
            }
            // After a whole rebuild: its scratch and the table before are freed by now. A
            // table changed in place frees little, and trimming a big heap takes a while.
            if self.rebuilt {
                crate::background::spawn_blocking(release_free_memory);
            }
        }
    }

    /// The sources' declarations, and whether they are complete. Readiness is read first: a
    /// source publishes its declarations before it counts as synced, so declarations taken
    /// after "ready" hold every synced source's. Read the other way round, a source syncing in
    /// between would make a set without it look complete, and its hosts would be released (and
    /// their VIPs taken out of the ServiceEntry statuses) until the next publish.
    fn take(&self, sources: &mut watch::Receiver<Combined>) -> (Combined, bool) {
        let complete = self.readiness.is_ready();
        (sources.borrow_and_update().clone(), complete)
    }

    async fn publish(&mut self, declarations: &Combined, complete: bool) -> Result<(), BuildError> {
        let (decls, zone, durable) = (
            declarations.clone(),
            self.zone.clone(),
            self.durable.clone(),
        );
        let (update, reserved) = self
            .with_hosts(move |hosts| {
                let update = hosts.update(&decls, &zone);
                (update, hosts.reserved(&durable))
            })
            .await;
        // The allocator looks at every host when the store changed, a write is to be retried,
        // the sources just became complete, or the last such look is a while ago (records past
        // their grace period are dropped then); otherwise only at the hosts the change touched,
        // if any.
        let everything = self.allocate_due
            || complete != self.complete
            || (self.looked_at_all.elapsed() >= LOOK_AT_ALL && self.look_at_all_helps());
        let scope = if everything {
            Some(Scope::All)
        } else {
            update.scope()
        };
        let mut stored = true;
        // What is reserved depends on the stored records, which an allocation may change.
        let reserved_stale = scope.is_some();
        if let Some(scope) = scope {
            stored = self
                .allocate(self.hosts.wanted(), reserved.clone(), complete, scope)
                .await;
        }
        // Hosts whose stored record changed since the last publish (by us or another replica)
        // are looked at again, beside those whose declarations changed. So are all that need a
        // VIP when the reservations changed but could not be stored: a record may clash now.
        let records = self.tally.follow(&self.policy, &self.durable.records);
        if !records.is_empty() {
            self.allocations
                .send_replace(Arc::new(self.durable.clone()));
        }
        let every_vip_host = update.allocation() && self.allocate_due;
        let (touched, durable) = (update.touched, self.durable.clone());
        let change = self
            .with_hosts(move |hosts| {
                let reserved = if reserved_stale {
                    hosts.reserved(&durable)
                } else {
                    reserved
                };
                hosts.resolve(&touched, &records, every_vip_host, &durable, &reserved)
            })
            .await;
        // A new serial only for new content: a republish that changes nothing (a store write
        // by another replica, a rescan) must not send secondaries transferring the same zone.
        let content = self.hosts.served().fingerprint();
        // A store that just failed (say, another writer's lease is busy) is not asked again in
        // the same publish: the table would wait for it twice.
        self.serial = self.serial_for(&content, stored).await;
        self.fingerprint = content;
        let pending = self.hosts.served().pending();
        let (zone, serial) = (self.zone.clone(), self.serial);
        let previous = self.table.load_full();
        // The first table, and a change to most of the mesh, are built whole; otherwise the
        // table before is changed where the hosts changed, sharing the rest. After a table that
        // could not be made, the served hosts are ahead of the table: built whole then too.
        let incremental = !self.out_of_step
            && previous.host_count() > 0
            && change.size() <= previous.host_count() / 2;
        // The scratch is dropped off the runtime's threads too: freeing a big mesh takes a while.
        let mut made = None;
        let mut change = Some(change);
        if incremental && let Some(change) = change.take() {
            let (before, zone) = (previous.clone(), zone.clone());
            let changed = blocking(move || {
                let removed: Vec<&HostEntry> = change.removed.iter().collect();
                let added: Vec<&HostEntry> = change.added.iter().collect();
                before.apply(&zone, serial, &removed, &added)
            })
            .await;
            match changed {
                Ok(table) => made = Some(Ok((table, true))),
                Err(error) => {
                    warn!(%error, "cannot change the name table in place; building it whole")
                }
            }
        }
        let made = match made {
            Some(made) => made,
            None => {
                let all: Vec<HostEntry> = self
                    .with_hosts(|hosts| hosts.served().hosts().cloned().collect())
                    .await;
                blocking(move || {
                    let table = NameTable::build(&zone, serial, &all).map(|mut table| {
                        table.follow(&previous);
                        (table, false)
                    });
                    drop((all, change));
                    table
                })
                .await
            }
        };
        self.out_of_step = made.is_err();
        let (table, incremental) = made?;
        self.metrics.table_made(incremental);
        self.rebuilt = !incremental;
        info!(
            hosts = table.host_count(),
            pending,
            serial = self.serial,
            "name table published"
        );
        let stranded = self.tally.stranded();
        if stranded.len() != self.stranded {
            self.stranded = stranded.len();
            for (host, address, range) in stranded {
                warn!(host, %address, %range, "VIP inside a range istiod allocates from; still answered, move it with `dnsctl allocate HOST --force`");
            }
        }
        self.metrics.published(
            table.host_count(),
            self.tally.usage(&self.policy),
            self.stranded,
        );
        let old = self.table.swap(Arc::new(table));
        let serial = self.serial;
        self.published
            .send_if_modified(|last| std::mem::replace(last, serial) != serial);
        crate::background::spawn_blocking(move || retire(old));
        Ok(())
    }

    /// Whether the allocator looking at every host could change anything a change does not:
    /// a host is waiting for a VIP, or a released record's grace period has ended.
    fn look_at_all_helps(&self) -> bool {
        self.hosts.served().pending() > 0
            || (self.tally.first_expiry(self.policy.grace)).is_some_and(|end| end <= unix_now())
    }

    /// Runs `work` on the hosts off the runtime's threads: what it does grows with the change,
    /// and with the mesh when every host is looked at (the first time, or after the store
    /// changed), which would hold up every query the runtime thread has to answer meanwhile.
    async fn with_hosts<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Hosts) -> T + Send + 'static,
    ) -> T {
        let mut hosts = std::mem::take(&mut self.hosts);
        let (hosts, out) = blocking(move || {
            let out = work(&mut hosts);
            (hosts, out)
        })
        .await;
        self.hosts = hosts;
        out
    }

    /// Stores VIPs for `wanted`; on failure keeps the last durable state, schedules a retry and
    /// returns false.
    /// What the stored run decided (hosts left without a VIP, hosts moved off a VIP an explicit
    /// entry claims) is logged and counted here, once: the store may run the mutation more than
    /// once, so the mutation only reports.
    async fn allocate(
        &mut self,
        wanted: Arc<BTreeSet<String>>,
        reserved: Arc<Reserved>,
        complete: bool,
        scope: Scope,
    ) -> bool {
        let policy = self.policy.clone();
        let report = Arc::new(Mutex::new(Reconciled::default()));
        let last_run = report.clone();
        let everything = scope == Scope::All;
        let holders = self.holders.clone();
        let mutation = Box::new(move |state: &mut AllocState| {
            let now = unix_now();
            let mut holders = holders.lock().unwrap_or_else(PoisonError::into_inner);
            let outcome = reconcile(
                state,
                &policy,
                &wanted,
                &reserved,
                now,
                complete,
                &scope,
                &mut holders,
            );
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
                if everything {
                    self.allocate_due = false;
                    self.complete = complete;
                    self.looked_at_all = Instant::now();
                }
                let outcome =
                    std::mem::take(&mut *report.lock().unwrap_or_else(PoisonError::into_inner));
                for m in &outcome.moved {
                    warn!(host = m.host, address = %m.address, declared_by = m.declared_by, "allocated VIP is now declared explicitly by another ServiceEntry; moved the host");
                }
                self.metrics.conflicts(outcome.moved.len() as u64);
                for (host, error) in &outcome.failed {
                    warn!(host, %error, "no VIP for host; answering SERVFAIL");
                }
                true
            }
            Err(error) => {
                let next = self.retry_store();
                warn!(store = %self.store.describe(), %error, retry_in = ?next, "cannot store allocations; new hosts stay unanswered");
                false
            }
        }
    }

    /// Schedules the next attempt after a failed store write (the allocator looks at every host
    /// then, and the serial is stored too); returns when.
    fn retry_store(&mut self) -> Duration {
        self.allocate_due = true;
        let (_, mut delays) = self
            .retry
            .take()
            .unwrap_or_else(|| (Duration::ZERO, crate::backoff::store_retry()));
        let next = delays.next().expect("store_retry never gives up");
        self.retry = Some((next, delays));
        next
    }

    /// The serial for tables of `content`. Replicas share it through the store, so that they
    /// give one content one serial and a secondary that asks any of them never sees a serial
    /// stand for two contents: the one stored for this content (another replica may have given
    /// it), else a new one, above every serial given before, stored first. While the store holds
    /// another content's serial (a replica ahead of this one, or behind), ours stands: each
    /// serial still names one content, and the replicas agree again once their sources do.
    ///
    /// Without `store`, or when the store fails, the serial is not stored: the same content
    /// keeps it, and a later publish stores it for it (or, should the store hold a later one
    /// by then, a serial above that).
    async fn serial_for(&mut self, content: &str, store: bool) -> u32 {
        let floor = self.serial;
        let current = |z: &ZoneSerial| z.content == content && z.serial >= floor;
        if let Some(stored) = self.durable.zone_serial.as_ref().filter(|z| current(z)) {
            self.serial_stored = true;
            return stored.serial;
        }
        let same = content == self.fingerprint && floor != 0;
        if same && (self.serial_stored || !store) {
            return floor;
        }
        self.serial_stored = false;
        if !store {
            return next_serial(floor);
        }
        let wanted = content.to_string();
        let mutation = Box::new(move |state: &mut AllocState| {
            let stored = state.zone_serial.as_ref();
            if stored.is_some_and(|z| z.content == wanted && z.serial >= floor) {
                return Ok(false);
            }
            let serial = match stored.map(|z| z.serial) {
                Some(last) if last >= floor => next_serial(last),
                _ if same => floor,
                _ => next_serial(floor),
            };
            state.zone_serial = Some(ZoneSerial {
                serial,
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
                    self.serial_stored = true;
                    return stored.serial;
                }
                warn!(store = %self.store.describe(), "the zone serial was not stored; other replicas may give this content another serial");
            }
            Err(error) => {
                let next = self.retry_store();
                warn!(store = %self.store.describe(), %error, retry_in = ?next, "cannot store the zone serial; other replicas may give this content another serial");
            }
        }
        next_serial(floor)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    crate::background::spawn_blocking(f)
        .await
        .expect("publisher work does not panic")
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
