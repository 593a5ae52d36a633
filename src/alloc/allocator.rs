//! Allocation rules, as pure functions over an [`AllocState`]; stores make the result durable.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

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
    owners: HashMap<IpAddr, String>,
    used: Vec<u128>,
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

impl<'a> Allocator<'a> {
    /// Opens `state` at time `now` (Unix seconds), dropping records whose grace period ended.
    pub fn new(
        policy: &'a Policy,
        state: &'a mut AllocState,
        reserved: &'a Reserved,
        now: u64,
    ) -> Self {
        let grace = policy.grace.as_secs();
        let before = state.records.len();
        state
            .records
            .retain(|_, r| r.pinned || r.released_at.is_none_or(|t| now < t.saturating_add(grace)));
        let changed = state.records.len() != before;
        let mut this = Allocator {
            policy,
            state,
            reserved,
            owners: HashMap::new(),
            used: vec![0; policy.pools.len()],
            now,
            changed,
            moved: Vec::new(),
        };
        let held: Vec<(IpAddr, String)> = this
            .state
            .records
            .iter()
            .flat_map(|(h, r)| r.addresses.iter().map(move |a| (*a, h.clone())))
            .collect();
        for (address, host) in held {
            this.take(address, host);
        }
        for address in reserved.keys() {
            this.count(*address, 1);
        }
        let unreadable: Vec<IpAddr> = this.state.unreadable.iter().copied().collect();
        for address in unreadable {
            this.take(address, "(unreadable storage)".to_string());
        }
        this
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
            record.addresses.retain(|a| *a != address);
            self.release_address(address);
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
            self.take(address, host.to_string());
            self.changed = true;
        }
        let addresses = record.addresses.clone();
        self.state.records.insert(host.to_string(), record);
        Ok(addresses)
    }

    /// An operator's move of `host` off its addresses inside an Istio range, to new ones from
    /// the pools (pinned or not, as it was).
    pub fn leave_istio_ranges(&mut self, host: &str) -> Result<Vec<IpAddr>, AllocError> {
        let record = (self.state.records.get_mut(host))
            .ok_or_else(|| AllocError::NotFound(host.to_string()))?;
        let policy = self.policy;
        let stranded: Vec<IpAddr> = (record.addresses.iter())
            .filter(|a| policy.istio_range_of(**a).is_some())
            .copied()
            .collect();
        record.addresses.retain(|a| !stranded.contains(a));
        for address in stranded {
            self.release_address(address);
            self.changed = true;
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
        if let Some(owner) = self.owners.get(&address).filter(|o| *o != host) {
            return Err(AllocError::Taken {
                address,
                owner: owner.clone(),
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
            self.release_address(current);
        }
        if !record.addresses.contains(&address) {
            record.addresses.push(address);
            record.addresses.sort_by_key(|a| a.is_ipv6());
            self.take(address, host.to_string());
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
        let now = self.now;
        for (host, record) in self.state.records.iter_mut() {
            if !record.pinned && record.released_at.is_none() && !declared.contains(host) {
                record.released_at = Some(now);
                self.changed = true;
            }
        }
    }

    fn set_pinned(&mut self, host: &str) {
        if let Some(record) = self.state.records.get_mut(host).filter(|r| !r.pinned) {
            record.pinned = true;
            self.changed = true;
        }
    }

    fn pick(&self, host: &str, v4: bool) -> Result<IpAddr, AllocError> {
        let free = |ip: &IpAddr| !self.owners.contains_key(ip) && !self.reserved.contains_key(ip);
        for (i, pool) in self.policy.pools.iter().enumerate() {
            if pool.is_ipv4() != v4 || self.used[i] >= pool.capacity() {
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

    fn take(&mut self, address: IpAddr, host: String) {
        self.owners.insert(address, host);
        self.count(address, 1);
    }

    fn release_address(&mut self, address: IpAddr) {
        self.owners.remove(&address);
        self.count(address, -1);
    }

    fn count(&mut self, address: IpAddr, delta: i8) {
        for (i, pool) in self.policy.pools.iter().enumerate() {
            if pool.is_usable(address) {
                self.used[i] = self.used[i].saturating_add_signed(delta.into());
            }
        }
    }
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
pub fn reconcile(
    state: &mut AllocState,
    policy: &Policy,
    wanted: &BTreeSet<String>,
    reserved: &Reserved,
    now: u64,
    complete: bool,
) -> Reconciled {
    let mut alloc = Allocator::new(policy, state, reserved, now);
    let mut failed = Vec::new();
    if complete {
        alloc.release_undeclared(wanted);
    }
    for host in wanted {
        if let Err(e) = alloc.ensure(host) {
            failed.push((host.clone(), e));
        }
    }
    Reconciled {
        changed: alloc.changed(),
        failed,
        moved: alloc.moved,
    }
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
        reconcile(state, p, &set(hosts), &Reserved::new(), now, true)
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
        let r = reconcile(&mut state, &p, &set(&["pinned.global"]), &reserved, 3, true);
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
