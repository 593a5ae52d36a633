//! What the publisher knows of every host between publishes, kept up host by host: what its
//! declarations make of it, the addresses it holds explicitly or by a status, whether it
//! needs a VIP, and what the table serves for it. A change to a few ServiceEntries looks at the
//! hosts they name and nothing else, so its cost does not grow with the mesh.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hickory_proto::rr::Name;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::alloc::{AllocState, Reserved, Scope, host_key};
use crate::catalog::HostEntry;
use crate::catalog::live::{HostView, LiveCatalog};
use crate::source::set::Combined;
use crate::zone::ZoneSettings;

#[derive(Default)]
pub struct Hosts {
    catalog: LiveCatalog,
    /// What each host held at the last update (hosts holding nothing are left out).
    held: HashMap<Name, Held, RandomState>,
    /// The hosts declaring each explicit address, and those a status holds it for (by key,
    /// sorted; nearly always one, so a vector, not a tree).
    explicit: HashMap<IpAddr, Vec<Arc<str>>, RandomState>,
    claims: HashMap<IpAddr, Vec<Arc<str>>, RandomState>,
    /// Explicit addresses and their host, as the allocator reads them.
    reserved: Arc<Reserved>,
    /// Hosts in the served zones that need a VIP: their names by key, and the keys for the
    /// allocator.
    vip_hosts: HashMap<String, Name, RandomState>,
    wanted: Arc<BTreeSet<String>>,
    served: Served,
}

/// What the publisher keeps of a host between updates: the addresses it holds, and which
/// conflicts were reported for it.
#[derive(Default, PartialEq)]
struct Held {
    explicit: Box<[IpAddr]>,
    claimed: Box<[IpAddr]>,
    /// A digest of the conflicts reported (0: none), to report only new ones.
    conflicts: u64,
}

impl Held {
    fn of(view: &HostView) -> Held {
        let explicit = if view.declared {
            &view.addresses[..]
        } else {
            &[]
        };
        let conflicts = if view.conflicts.is_empty() {
            0
        } else {
            let mut hasher = std::hash::DefaultHasher::new();
            for c in &view.conflicts {
                (&c.kept, &c.ignored).hash(&mut hasher);
            }
            hasher.finish() | 1
        };
        Held {
            explicit: explicit.into(),
            claimed: view.claimed[..].into(),
            conflicts,
        }
    }
}

/// What one update of the declarations touched.
#[derive(Default)]
pub struct Update {
    /// Hosts whose declarations changed.
    pub touched: Vec<Name>,
    /// Keys of the hosts that came to need a VIP or no longer need one.
    pub need: Vec<String>,
    /// Addresses newly declared explicitly or claimed by a status: a VIP stored for another
    /// host there has to move.
    pub reserved: Vec<IpAddr>,
    /// Whether any address the allocator must not hand out came or went.
    pub reservations: bool,
}

impl Update {
    /// Whether what the allocator decides from changed.
    pub fn allocation(&self) -> bool {
        !self.need.is_empty() || self.reservations
    }

    /// The allocator's view of it: what to look at again, if anything.
    pub fn scope(&self) -> Option<Scope> {
        let nothing = self.need.is_empty() && self.reserved.is_empty();
        (!nothing).then(|| Scope::Changed {
            hosts: self.need.clone(),
            addresses: self.reserved.clone(),
        })
    }
}

/// How the served hosts changed from one table to the next: a changed host is in both lists,
/// as it was and as it is.
#[derive(Default)]
pub struct HostChange {
    pub removed: Vec<HostEntry>,
    pub added: Vec<HostEntry>,
}

impl HostChange {
    /// Hosts changed, gone or new.
    pub fn size(&self) -> usize {
        self.removed.len().max(self.added.len())
    }
}

impl Hosts {
    /// Takes in the sources' current declarations. CPU work that grows with the change (with
    /// the mesh, the first time): not for the runtime's threads.
    pub fn update(&mut self, combined: &Combined, zone: &ZoneSettings) -> Update {
        let mut update = Update {
            touched: self.catalog.update(combined),
            ..Update::default()
        };
        for name in &update.touched {
            let new = self.catalog.view(name).unwrap_or_default();
            let held = Held::of(&new);
            let (explicit, claimed) = (held.explicit.to_vec(), held.claimed.to_vec());
            let conflicts = held.conflicts;
            let old = if held == Held::default() {
                self.held.remove(name)
            } else {
                self.held.insert(name.clone(), held)
            };
            let old = old.unwrap_or_default();
            if conflicts != old.conflicts {
                for c in &new.conflicts {
                    warn!(host = %c.host, kept = %c.kept, ignored = %c.ignored, "host declared with different addresses; keeping the first");
                }
            }
            let key: Arc<str> = host_key(name).into();
            for (old, new, claim) in [
                (&old.explicit, &explicit, false),
                (&old.claimed, &claimed, true),
            ] {
                if old[..] != new[..] {
                    self.own(&key, old, new, claim);
                    update.reservations = true;
                    (update.reserved).extend(new.iter().filter(|a| !old.contains(a)));
                }
            }
            let wants = new.declared && new.needs_vip && zone.serves(name);
            if wants != self.vip_hosts.contains_key(&*key) {
                update.need.push(key.to_string());
                let wanted = Arc::make_mut(&mut self.wanted);
                if wants {
                    self.vip_hosts.insert(key.to_string(), name.clone());
                    wanted.insert(key.to_string());
                } else {
                    self.vip_hosts.remove(&*key);
                    wanted.remove(&*key);
                }
            }
        }
        update
    }

    /// Moves `host`'s hold from the addresses `old` to `new` (explicit ones, or `claim`ed by a
    /// status).
    fn own(&mut self, host: &Arc<str>, old: &[IpAddr], new: &[IpAddr], claim: bool) {
        let owners = if claim {
            &mut self.claims
        } else {
            &mut self.explicit
        };
        for address in old.iter().filter(|a| !new.contains(a)) {
            if let Some(hosts) = owners.get_mut(address) {
                hosts.retain(|h| h != host);
                if hosts.is_empty() {
                    owners.remove(address);
                }
            }
        }
        for address in new {
            let hosts = owners.entry(*address).or_default();
            if let Err(at) = hosts.binary_search(host) {
                hosts.insert(at, host.clone());
                hosts.shrink_to_fit();
            }
        }
        if !claim {
            // The first host in key order owns an address several declare: the same on every
            // replica, whatever order their sources listed them in.
            let reserved = Arc::make_mut(&mut self.reserved);
            for address in old.iter().chain(new) {
                match owners.get(address).and_then(|hosts| hosts.first()) {
                    Some(owner) => reserved.insert(*address, owner.clone()),
                    None => reserved.remove(address),
                };
            }
        }
    }

    /// Hosts in the served zones that need a VIP, by key.
    pub fn wanted(&self) -> Arc<BTreeSet<String>> {
        self.wanted.clone()
    }

    /// Addresses the allocator must not hand out, with the host each belongs to: explicit
    /// addresses, then what some cluster's `status.addresses` holds for a host (istiod's VIPs,
    /// or ours written back), except an address one of our records already holds, which stays
    /// where it is (a VIP never moves on its own; one inside Istio's range is reported for an
    /// operator to move).
    pub fn reserved(&self, durable: &AllocState) -> Arc<Reserved> {
        if self.claims.is_empty() {
            return self.reserved.clone();
        }
        let held: HashSet<IpAddr> = (durable.records.values())
            .flat_map(|r| r.addresses.iter().copied())
            .collect();
        let mut reserved = (*self.reserved).clone();
        for (address, hosts) in &self.claims {
            if !held.contains(address) {
                let first = hosts.first().expect("emptied sets are removed");
                reserved.entry(*address).or_insert_with(|| first.clone());
            }
        }
        Arc::new(reserved)
    }

    /// Works out again what is served for `names`, for the hosts whose stored record is among
    /// `records` (keys), and for every host that needs a VIP when `every_vip_host`; returns
    /// what changed.
    pub fn resolve(
        &mut self,
        names: &[Name],
        records: &[String],
        every_vip_host: bool,
        durable: &AllocState,
        reserved: &Reserved,
    ) -> HostChange {
        let mut change = HostChange::default();
        let vip_hosts: Vec<Name> = if every_vip_host {
            self.vip_hosts.values().cloned().collect()
        } else {
            (records.iter())
                .filter_map(|key| self.vip_hosts.get(key).cloned())
                .collect()
        };
        for name in names.iter().chain(&vip_hosts) {
            let entry = self.entry(name, durable, reserved);
            self.served.set(name, entry, &mut change);
        }
        change
    }

    /// What is served for `name`: its explicit addresses, or its stored VIPs (none while
    /// pending). A stored VIP that an explicit entry now claims is withheld, so no address is
    /// served for two hosts.
    fn entry(&self, name: &Name, durable: &AllocState, reserved: &Reserved) -> Option<HostEntry> {
        let view = self.catalog.view(name).filter(|v| v.declared)?;
        let entry = |addresses| HostEntry {
            name: name.clone(),
            addresses,
            ports: view.ports.clone(),
        };
        if !view.addresses.is_empty() {
            return Some(entry(view.addresses.clone()));
        }
        let key = host_key(name);
        if !self.vip_hosts.contains_key(&key) {
            return None;
        }
        let record = (durable.records.get(&key)).filter(|r| r.released_at.is_none());
        let addresses = record.map_or_else(Vec::new, |r| {
            let clash =
                (r.addresses.iter()).any(|a| reserved.get(a).is_some_and(|owner| **owner != *key));
            if clash {
                Vec::new()
            } else {
                r.addresses.clone()
            }
        });
        Some(entry(addresses))
    }

    pub fn served(&self) -> &Served {
        &self.served
    }
}

/// The hosts of the current table, and what they add up to.
#[derive(Default)]
pub struct Served {
    /// By the entry's own name (a big mesh's names are not kept twice).
    hosts: HashTable<HostEntry>,
    hasher: RandomState,
    /// The sum of every host's [`digest`].
    sum: u128,
    /// Hosts served without an address: waiting for their VIP to be stored.
    pending: usize,
}

impl Served {
    /// Serves `entry` for `name` (nothing, for `None`), noting any difference in `change`.
    fn set(&mut self, name: &Name, entry: Option<HostEntry>, change: &mut HostChange) {
        let hash = self.hasher.hash_one(name);
        let found = self.hosts.find_entry(hash, |h| h.name == *name);
        let old = match (found, &entry) {
            (Ok(slot), Some(new)) if slot.get() == new => return,
            (Ok(mut slot), Some(new)) => Some(std::mem::replace(slot.get_mut(), new.clone())),
            (Ok(slot), None) => Some(slot.remove().0),
            (Err(_), Some(new)) => {
                let hasher = &self.hasher;
                (self.hosts).insert_unique(hash, new.clone(), |h| hasher.hash_one(&h.name));
                None
            }
            (Err(_), None) => None,
        };
        if let Some(old) = old {
            self.sum = self.sum.wrapping_sub(digest(&old));
            self.pending -= usize::from(old.addresses.is_empty());
            change.removed.push(old);
        }
        if let Some(new) = entry {
            self.sum = self.sum.wrapping_add(digest(&new));
            self.pending += usize::from(new.addresses.is_empty());
            change.added.push(new);
        }
    }

    /// Hosts served without an address (SERVFAIL) until their VIP is stored.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn hosts(&self) -> impl Iterator<Item = &HostEntry> {
        self.hosts.iter()
    }

    /// What the table is built from (the zone settings are fixed for the process), as hex:
    /// equal for equal content, whatever order the sources listed it in, in every process of
    /// one build, so a rebuild keeps its serial and replicas agree on theirs. Each host is
    /// digested on its own and the digests summed, which ignores their order without sorting a
    /// big mesh's names, and is kept up host by host as they change.
    pub fn fingerprint(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// One host's part of the fingerprint.
fn digest(host: &HostEntry) -> u128 {
    let mut hasher = DigestHasher(Sha256::new());
    host.hash(&mut hasher);
    let digest = hasher.0.finalize();
    u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 is 32 bytes"))
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
