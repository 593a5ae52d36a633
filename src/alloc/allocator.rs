//! Allocation rules, as pure functions over an [`AllocState`]; stores make the result durable.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::holders::Holders;
use super::pool::Pool;
use super::state::AllocState;

/// Which pools to allocate from, and how long a released VIP stays reserved for its host.
#[derive(Clone, Debug)]
pub struct Policy {
    /// In order of preference; IPv4 and IPv6 pools are independent, and a host gets one address
    /// from each family that has a pool.
    pub pools: Vec<Pool>,
    pub grace: Duration,
}

impl Policy {
    /// The Istio range (left out of a pool) that holds `address`, if any.
    pub fn istio_range_of(&self, address: IpAddr) -> Option<IpNet> {
        (self.pools.iter())
            .filter_map(|p| p.excluded())
            .find(|range| range.contains(&address))
    }

    /// Adds one to (or, without `add`, takes one from) the count of each pool that can hand
    /// out `address`; `counts` is per pool, in order.
    pub(super) fn count_usable(&self, counts: &mut [u128], address: IpAddr, add: bool) {
        for (count, pool) in counts.iter_mut().zip(&self.pools) {
            if pool.is_usable(address) {
                *count = if add {
                    count.saturating_add(1)
                } else {
                    count.saturating_sub(1)
                };
            }
        }
    }
}

/// Explicit `spec.addresses` of the sources: address → host declaring it (shared by the
/// addresses of one host: a big mesh has hundreds of thousands).
pub type Reserved = HashMap<IpAddr, Arc<str>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("pool {pools} is exhausted: no free address for {host}")]
    Exhausted { pools: String, host: String },
    #[error("{address} is already allocated to {owner}")]
    Taken { address: IpAddr, owner: String },
    #[error("{address} is declared in spec.addresses of a ServiceEntry for {owner}")]
    Reserved { address: IpAddr, owner: String },
    #[error("{host} already has {current}; release it before pinning {requested}")]
    AlreadyAllocated {
        host: String,
        current: IpAddr,
        requested: IpAddr,
    },
    #[error("{address} is outside every pool ({pools})")]
    OutsidePools { address: IpAddr, pools: String },
    #[error("{address} is inside {range}, where istiod allocates VIPs of its own")]
    IstioRange { address: IpAddr, range: IpNet },
    #[error("{0} has no allocation")]
    NotFound(String),
}

/// One transaction's view of a state: who holds what, kept in step with every change.
pub struct Allocator<'a> {
    policy: &'a Policy,
    state: &'a mut AllocState,
    reserved: &'a Reserved,
    /// Built when first needed: a transaction that only confirms hosts' VIPs (most of them, in
    /// a big mesh) never needs it.
    index: Option<Index>,
    /// An index of an earlier state, to follow to this one when the index is first needed.
    earlier: Option<Holders>,
    now: u64,
    changed: bool,
    /// Allocated VIPs taken back because a ServiceEntry declared them explicitly.
    pub moved: Vec<Moved>,
}

/// A host's allocated VIP that a ServiceEntry now declares explicitly for another host: the host
/// was given another address. Reported, not logged here, since a store may run a transaction
/// more than once and only the run it stored counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub host: String,
    pub address: IpAddr,
    pub declared_by: String,
}

/// Who holds each address, and how many addresses of each pool are in use.
struct Index {
    holders: Holders,
    /// Per pool: addresses reserved by explicit declarations or unreadable storage.
    kept: Vec<u128>,
}

impl Index {
    fn used(&self, pool: usize) -> u128 {
        self.holders.held(pool).saturating_add(self.kept[pool])
    }
}

impl<'a> Allocator<'a> {
    /// Opens `state` at time `now` (Unix seconds), dropping records whose grace period ended.
    pub fn new(
        policy: &'a Policy,
        state: &'a mut AllocState,
        reserved: &'a Reserved,
        now: u64,
    ) -> Self {
        let mut this = Self::open(policy, state, reserved, now);
        this.expire();
        this
    }

    /// Opens `state` as it is: records past their grace period stay until [`Allocator::expire`].
    fn open(
        policy: &'a Policy,
        state: &'a mut AllocState,
        reserved: &'a Reserved,
        now: u64,
    ) -> Self {
        Allocator {
            policy,
            state,
            reserved,
            index: None,
            earlier: None,
            now,
            changed: false,
            moved: Vec::new(),
        }
    }

    /// Drops the records whose grace period ended (their addresses are free again).
    fn expire(&mut self) {
        let (grace, now) = (self.policy.grace.as_secs(), self.now);
        let expired: Vec<String> = (self.state.records.iter())
            .filter(|(_, r)| {
                !r.pinned
                    && r.released_at
                        .is_some_and(|t| now >= t.saturating_add(grace))
            })
            .map(|(host, _)| host.clone())
            .collect();
        for host in &expired {
            self.state.records.remove(host);
        }
        self.changed |= !expired.is_empty();
    }

    /// Starts from `holders`, an index of some earlier state, instead of indexing every record.
    pub fn with_holders(mut self, holders: Holders) -> Self {
        self.earlier = Some(holders);
        self
    }

    /// The index as of the state now, for [`Allocator::with_holders`] in the next transaction.
    pub fn into_holders(mut self) -> Holders {
        match self.index.take() {
            Some(mut index) => {
                index.holders.settle(&self.state.records);
                index.holders
            }
            None => self.earlier.take().unwrap_or_default(),
        }
    }

    /// Once per transaction, before it changes any address: from then on every change goes
    /// through [`Allocator::take`] and [`Allocator::release_address`].
    fn index(&mut self) -> &mut Index {
        let (policy, state, reserved) = (self.policy, &*self.state, self.reserved);
        let earlier = &mut self.earlier;
        self.index.get_or_insert_with(|| {
            let mut holders = earlier.take().unwrap_or_default();
            holders.follow(policy, &state.records);
            let kept = (policy.pools.iter())
                .map(|pool| {
                    let keys = reserved.keys().chain(&state.unreadable);
                    keys.filter(|a| pool.is_usable(**a)).count() as u128
                })
                .collect();
            Index { holders, kept }
        })
    }

    /// Whether anything needs storing.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Gives `host` an address in every family that has a pool, keeping what it has.
    pub fn ensure(&mut self, host: &str) -> Result<Vec<IpAddr>, AllocError> {
        let mut record = self.state.records.get(host).cloned().unwrap_or_default();
        for address in record.addresses.clone() {
            let Some(owner) = self.reserved.get(&address).filter(|o| ***o != *host) else {
                continue;
            };
            if record.pinned {
                return Err(AllocError::Reserved {
                    address,
                    owner: owner.to_string(),
                });
            }
            self.moved.push(Moved {
                host: host.to_string(),
                address,
                declared_by: owner.to_string(),
            });
            self.release_address(address, host);
            record.addresses.retain(|a| *a != address);
            self.changed = true;
        }
        if record.released_at.take().is_some() {
            self.changed = true;
        }
        for v4 in [true, false] {
            if record.addresses.iter().any(|a| a.is_ipv4() == v4)
                || !self.policy.pools.iter().any(|p| p.is_ipv4() == v4)
            {
                continue;
            }
            let address = self.pick(host, v4)?;
            record.addresses.push(address);
            record.addresses.sort_by_key(|a| a.is_ipv6());
            self.take(address, host);
            self.changed = true;
        }
        let addresses = record.addresses.clone();
        // Records are a persistent map shared with the state before: writing back a record
        // that did not change would copy its path of nodes, and looking at every host (as the
        // allocator does now and then) would copy the whole map, then make the next diff of
        // the two walk every record.
        if self.state.records.get(host) != Some(&record) {
            self.state.records.insert(host.to_string(), record);
        }
        Ok(addresses)
    }

    /// An operator's move of `host` off its addresses inside an Istio range, to new ones from
    /// the pools (pinned or not, as it was).
    pub fn leave_istio_ranges(&mut self, host: &str) -> Result<Vec<IpAddr>, AllocError> {
        let record =
            (self.state.records.get(host)).ok_or_else(|| AllocError::NotFound(host.to_string()))?;
        let policy = self.policy;
        let stranded: Vec<IpAddr> = (record.addresses.iter())
            .filter(|a| policy.istio_range_of(**a).is_some())
            .copied()
            .collect();
        for address in &stranded {
            self.release_address(*address, host);
            self.changed = true;
        }
        if let Some(record) = self.state.records.get_mut(host) {
            record.addresses.retain(|a| !stranded.contains(a));
        }
        self.ensure(host)
    }

    /// An operator's allocation: like [`Allocator::ensure`], and the record is pinned.
    pub fn allocate_pinned(&mut self, host: &str) -> Result<Vec<IpAddr>, AllocError> {
        let addresses = self.ensure(host)?;
        self.set_pinned(host);
        Ok(addresses)
    }

    /// Pins `address` to `host`. Idempotent; refuses to take an address from anyone. With
    /// `replace`, the host's current address of that family is dropped (freed at once) instead
    /// of being an error: the operator is moving the host on purpose.
    pub fn pin(&mut self, host: &str, address: IpAddr, replace: bool) -> Result<(), AllocError> {
        if !self.policy.pools.iter().any(|p| p.contains(address)) {
            return Err(AllocError::OutsidePools {
                address,
                pools: self.pool_list(None),
            });
        }
        if let Some(range) = self.policy.istio_range_of(address) {
            return Err(AllocError::IstioRange { address, range });
        }
        if let Some(owner) = (self.index().holders.owner(&address)).filter(|o| *o != host) {
            return Err(AllocError::Taken {
                address,
                owner: owner.to_string(),
            });
        }
        if self.state.unreadable.contains(&address) {
            return Err(AllocError::Taken {
                address,
                owner: "(unreadable storage)".into(),
            });
        }
        if let Some(owner) = self.reserved.get(&address).filter(|o| ***o != *host) {
            return Err(AllocError::Reserved {
                address,
                owner: owner.to_string(),
            });
        }
        let mut record = self.state.records.get(host).cloned().unwrap_or_default();
        let current = record
            .addresses
            .iter()
            .find(|a| a.is_ipv4() == address.is_ipv4() && **a != address)
            .copied();
        if let Some(current) = current {
            if !replace {
                return Err(AllocError::AlreadyAllocated {
                    host: host.to_string(),
                    current,
                    requested: address,
                });
            }
            record.addresses.retain(|a| *a != current);
            self.release_address(current, host);
        }
        if !record.addresses.contains(&address) {
            record.addresses.push(address);
            record.addresses.sort_by_key(|a| a.is_ipv6());
            self.take(address, host);
        }
        record.released_at = None;
        self.changed |= self.state.records.get(host) != Some(&record);
        self.state.records.insert(host.to_string(), record);
        self.set_pinned(host);
        Ok(())
    }

    /// Starts the grace period of `host` (and unpins it); its addresses stay reserved for it.
    pub fn release(&mut self, host: &str) -> Result<(), AllocError> {
        let now = self.now;
        let record = self
            .state
            .records
            .get_mut(host)
            .ok_or_else(|| AllocError::NotFound(host.to_string()))?;
        if record.pinned || record.released_at.is_none() {
            record.pinned = false;
            record.released_at = Some(now);
            self.changed = true;
        }
        Ok(())
    }

    /// Releases every automatic allocation whose host is no longer in `declared`.
    pub fn release_undeclared(&mut self, declared: &BTreeSet<String>) {
        let undeclared: Vec<String> = (self.state.records.iter())
            .filter(|(host, _)| !declared.contains(*host))
            .map(|(host, _)| host.clone())
            .collect();
        for host in &undeclared {
            self.release_automatic(host);
        }
    }

    /// Starts the grace period of `host`'s allocation unless it is pinned or already released.
    fn release_automatic(&mut self, host: &str) {
        let now = self.now;
        let record = self.state.records.get(host);
        if record.is_some_and(|r| !r.pinned && r.released_at.is_none())
            && let Some(record) = self.state.records.get_mut(host)
        {
            record.released_at = Some(now);
            self.changed = true;
        }
    }

    fn set_pinned(&mut self, host: &str) {
        if let Some(record) = self.state.records.get_mut(host).filter(|r| !r.pinned) {
            record.pinned = true;
            self.changed = true;
        }
    }

    fn pick(&mut self, host: &str, v4: bool) -> Result<IpAddr, AllocError> {
        let (policy, reserved) = (self.policy, self.reserved);
        self.index();
        let (index, unreadable) = (
            self.index.as_ref().expect("indexed"),
            &self.state.unreadable,
        );
        let free = |ip: &IpAddr| {
            index.holders.owner(ip).is_none()
                && !reserved.contains_key(ip)
                && !unreadable.contains(ip)
        };
        for (i, pool) in policy.pools.iter().enumerate() {
            if pool.is_ipv4() != v4 || index.used(i) >= pool.capacity() {
                continue;
            }
            if let Some(ip) = pool.probe(host).find(free) {
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted {
            pools: self.pool_list(Some(v4)),
            host: host.to_string(),
        })
    }

    fn pool_list(&self, v4: Option<bool>) -> String {
        let pools: Vec<String> = self
            .policy
            .pools
            .iter()
            .filter(|p| v4.is_none_or(|v4| p.is_ipv4() == v4))
            .map(|p| p.to_string())
            .collect();
        pools.join(", ")
    }

    fn take(&mut self, address: IpAddr, host: &str) {
        let policy = self.policy;
        self.index().holders.take(policy, address, host);
    }

    /// Frees `address` held by `host`; called while the state still holds it, so that an index
    /// built now counts it before taking it away.
    fn release_address(&mut self, address: IpAddr, host: &str) {
        let policy = self.policy;
        self.index().holders.release(policy, address, host);
    }
}

/// Which hosts a [`reconcile`] looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every wanted host and every record; records past their grace period are dropped.
    #[default]
    All,
    /// The hosts whose need for a VIP changed, and the holders of addresses newly declared
    /// explicitly or claimed by a status (they may have to move): all that a change to a few
    /// ServiceEntries can affect, found without walking every wanted host.
    Changed {
        hosts: Vec<String>,
        addresses: Vec<IpAddr>,
    },
}

/// Outcome of matching the stored allocations to what the sources declare.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub changed: bool,
    /// Hosts that could not get an address, and why.
    pub failed: Vec<(String, AllocError)>,
    pub moved: Vec<Moved>,
}

/// Every host in `wanted` gets its VIPs (kept, revived or new). With `complete` (every source
/// has synced, so `wanted` is the whole truth), automatic allocations of hosts no longer wanted
/// start their grace period; a replica still syncing never releases anything.
///
/// `scope` says which hosts to look at: with [`Scope::Changed`], only those a change can have
/// affected, and records past their grace period stay until the next [`Scope::All`].
/// `holders` is an index of some earlier state (or empty), followed to this one and left
/// describing the result.
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    state: &mut AllocState,
    policy: &Policy,
    wanted: &BTreeSet<String>,
    reserved: &Reserved,
    now: u64,
    complete: bool,
    scope: &Scope,
    holders: &mut Holders,
) -> Reconciled {
    let earlier = std::mem::take(holders);
    let mut failed = Vec::new();
    let mut ensure = |alloc: &mut Allocator, host: &String| {
        if let Err(e) = alloc.ensure(host) {
            failed.push((host.clone(), e));
        }
    };
    let mut alloc;
    match scope {
        Scope::All => {
            alloc = Allocator::new(policy, state, reserved, now).with_holders(earlier);
            if complete {
                alloc.release_undeclared(wanted);
            }
            for host in wanted {
                ensure(&mut alloc, host);
            }
        }
        Scope::Changed { hosts, addresses } => {
            let holders: Vec<String> = if addresses.is_empty() {
                Vec::new()
            } else {
                (state.records.iter())
                    .filter(|(_, r)| r.addresses.iter().any(|a| addresses.contains(a)))
                    .map(|(host, _)| host.clone())
                    .collect()
            };
            alloc = Allocator::open(policy, state, reserved, now).with_holders(earlier);
            let looked_at: BTreeSet<&String> = hosts.iter().chain(&holders).collect();
            for host in looked_at {
                if wanted.contains(host) {
                    ensure(&mut alloc, host);
                } else if complete {
                    alloc.release_automatic(host);
                }
            }
        }
    }
    let outcome = Reconciled {
        changed: alloc.changed(),
        failed,
        moved: std::mem::take(&mut alloc.moved),
    };
    *holders = alloc.into_holders();
    outcome
}

/// How full a pool is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub pool: String,
    pub capacity: u128,
    pub used: u128,
}

pub fn usage(policy: &Policy, state: &AllocState) -> Vec<PoolUsage> {
    policy
        .pools
        .iter()
        .map(|pool| PoolUsage {
            pool: pool.to_string(),
            capacity: pool.capacity(),
            used: state
                .records
                .values()
                .flat_map(|r| &r.addresses)
                .filter(|a| pool.is_usable(**a))
                .count() as u128,
        })
        .collect()
}

/// Stored VIPs inside an Istio range (allocated before the range was left out of the pools):
/// each host, the address and the range. They stay answered (a VIP never moves on its own)
/// until an operator moves them.
pub fn in_istio_ranges<'s>(
    policy: &Policy,
    state: &'s AllocState,
) -> Vec<(&'s str, IpAddr, IpNet)> {
    (state.records.iter())
        .flat_map(|(host, r)| r.addresses.iter().map(move |a| (host.as_str(), *a)))
        .filter_map(|(host, a)| Some((host, a, policy.istio_range_of(a)?)))
        .collect()
}

/// Problems `dnsctl check` reports.
pub fn check(policy: &Policy, state: &AllocState) -> Vec<String> {
    let mut problems: Vec<String> = (in_istio_ranges(policy, state).into_iter())
        .map(|(host, address, range)| {
            format!(
                "{host}: {address} is inside {range}, where istiod allocates VIPs of its own; \
                 move it with `dnsctl allocate {host} --force`"
            )
        })
        .collect();
    let mut owners: HashMap<IpAddr, &str> = HashMap::new();
    for (host, record) in &state.records {
        for address in &record.addresses {
            if let Some(first) = owners.insert(*address, host) {
                problems.push(format!("{address} is held by both {first} and {host}"));
            }
            if !policy.pools.iter().any(|p| p.contains(*address)) {
                problems.push(format!("{host}: {address} is outside every pool"));
            }
        }
        if record.addresses.is_empty() {
            problems.push(format!("{host}: no address"));
        }
        for v4 in [true, false] {
            if record
                .addresses
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .count()
                > 1
            {
                problems.push(format!(
                    "{host}: more than one {} address",
                    if v4 { "IPv4" } else { "IPv6" }
                ));
            }
        }
    }
    problems
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pools: &[&str]) -> Policy {
        Policy {
            pools: pools.iter().map(|p| p.parse().unwrap()).collect(),
            grace: Duration::from_secs(100),
        }
    }

    fn set(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| h.to_string()).collect()
    }

    /// Reconciles `hosts` with no explicit addresses around.
    fn run(state: &mut AllocState, p: &Policy, hosts: &[&str], now: u64) -> Reconciled {
        reconcile(
            state,
            p,
            &set(hosts),
            &Reserved::new(),
            now,
            true,
            &Scope::All,
            &mut Holders::default(),
        )
    }

    /// A look at every host that changes nothing leaves the records as they were, sharing
    /// every node: a copy would cost a big mesh a whole map, and its next diff a whole walk.
    #[test]
    fn looking_at_every_host_copies_nothing_when_nothing_changes() {
        let p = policy(&["240.0.0.0/4"]);
        let hosts: Vec<String> = (0..5000).map(|i| format!("h{i}.global")).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let mut state = AllocState::default();
        assert!(run(&mut state, &p, &hosts, 0).changed);
        let before = state.records.clone();
        assert!(!run(&mut state, &p, &hosts, 1).changed);
        assert!(state.records.ptr_eq(&before), "the records were copied");
    }

    #[test]
    fn one_address_per_family_stable_across_reconciles() {
        let p = policy(&["240.0.0.0/4", "2001:2::/48"]);
        let mut state = AllocState::default();
        let r = run(&mut state, &p, &["a.global", "b.global"], 0);
        assert!(r.changed && r.failed.is_empty());
        let a = state.records["a.global"].addresses.clone();
        assert!(a[0].is_ipv4() && a[1].is_ipv6() && a.len() == 2);
        let again = run(&mut state, &p, &["b.global", "a.global", "c.global"], 1);
        assert!(again.changed);
        assert_eq!(state.records["a.global"].addresses, a);
        assert!(!run(&mut state, &p, &["a.global", "b.global", "c.global"], 2).changed);
    }

    #[test]
    fn released_hosts_come_back_within_grace_and_expire_after() {
        let p = policy(&["10.0.0.0/30"]); // two usable addresses
        let mut state = AllocState::default();
        run(&mut state, &p, &["a.global", "b.global"], 0);
        let a = state.records["a.global"].addresses.clone();
        run(&mut state, &p, &["b.global"], 10);
        assert_eq!(state.records["a.global"].released_at, Some(10));
        // The pool is full while a.global is in grace.
        let full = run(&mut state, &p, &["b.global", "c.global"], 50);
        assert!(
            matches!(&full.failed[..], [(h, AllocError::Exhausted { pools, .. })] if h == "c.global" && pools == "10.0.0.0/30")
        );
        run(&mut state, &p, &["a.global", "b.global"], 60);
        assert_eq!(
            state.records["a.global"].addresses, a,
            "same VIP back within grace"
        );
        run(&mut state, &p, &["b.global"], 70);
        let after = run(&mut state, &p, &["b.global", "c.global"], 170);
        assert!(after.failed.is_empty());
        assert_eq!(
            state.records["c.global"].addresses, a,
            "reused once grace ended"
        );
        assert!(!state.records.contains_key("a.global"));
    }

    #[test]
    fn explicit_addresses_are_reserved_and_win_over_allocations() {
        let p = policy(&["10.0.0.0/29"]);
        let mut state = AllocState::default();
        run(&mut state, &p, &["a.global"], 0);
        let taken = state.records["a.global"].addresses[0];
        let reserved: Reserved = [(taken, "explicit.global".into())].into();
        let r = reconcile(
            &mut state,
            &p,
            &set(&["a.global", "b.global"]),
            &reserved,
            1,
            true,
            &Scope::All,
            &mut Holders::default(),
        );
        assert_eq!(r.moved.len(), 1);
        assert_eq!(r.moved[0].host, "a.global");
        assert_eq!(r.moved[0].address, taken);
        assert_eq!(r.moved[0].declared_by, "explicit.global");
        let a = state.records["a.global"].addresses[0];
        let b = state.records["b.global"].addresses[0];
        assert!(a != taken && b != taken && a != b);
        // A pin is never moved: the conflict is reported instead.
        let none = Reserved::new();
        let mut alloc = Allocator::new(&p, &mut state, &none, 2);
        alloc
            .pin("pinned.global", "10.0.0.6".parse().unwrap(), false)
            .unwrap();
        let reserved: Reserved = [("10.0.0.6".parse().unwrap(), "other.global".into())].into();
        let r = reconcile(
            &mut state,
            &p,
            &set(&["pinned.global"]),
            &reserved,
            3,
            true,
            &Scope::All,
            &mut Holders::default(),
        );
        assert!(matches!(&r.failed[..], [(_, AllocError::Reserved { .. })]));
    }

    #[test]
    fn an_incomplete_view_never_releases() {
        let p = policy(&["10.0.0.0/29"]);
        let mut state = AllocState::default();
        run(&mut state, &p, &["a.global", "b.global"], 0);
        let partial = reconcile(
            &mut state,
            &p,
            &set(&["b.global"]),
            &Reserved::new(),
            5,
            false,
            &Scope::All,
            &mut Holders::default(),
        );
        assert!(!partial.changed);
        assert_eq!(state.records["a.global"].released_at, None);
    }

    #[test]
    fn pins_are_checked_and_idempotent() {
        let p = policy(&["240.0.0.0/4"]);
        let mut state = AllocState::default();
        let none = Reserved::new();
        let mut alloc = Allocator::new(&p, &mut state, &none, 0);
        let ip: IpAddr = "240.0.0.7".parse().unwrap();
        alloc.pin("a.global", ip, false).unwrap();
        alloc.pin("a.global", ip, false).unwrap();
        let taken = AllocError::Taken {
            address: ip,
            owner: "a.global".into(),
        };
        assert_eq!(alloc.pin("b.global", ip, true), Err(taken));
        let moved: IpAddr = "240.0.0.8".parse().unwrap();
        let err = alloc.pin("a.global", moved, false);
        assert!(matches!(err, Err(AllocError::AlreadyAllocated { .. })));
        let err = alloc.pin("c.global", "10.0.0.1".parse().unwrap(), false);
        assert!(matches!(err, Err(AllocError::OutsidePools { .. })));
        alloc.pin("a.global", moved, true).unwrap();
        alloc.pin("b.global", ip, false).unwrap();
        let missing = alloc.release("nope.global");
        assert_eq!(missing, Err(AllocError::NotFound("nope.global".into())));
        drop(alloc);
        assert!(state.records["a.global"].pinned);
        assert_eq!(state.records["a.global"].addresses, [moved]);
        assert!(check(&p, &state).is_empty());
        let usage = usage(&p, &state);
        assert_eq!(usage[0].used, 2);
    }
}
