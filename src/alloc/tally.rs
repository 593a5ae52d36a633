//! Pool usage and stored VIPs inside Istio's ranges, kept up record by record as the stored
//! allocations change: a publish reports them without walking every record of a big mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::allocator::{Policy, PoolUsage};
use super::state::{Records, follow_records};

/// What [`usage`](super::usage) and [`in_istio_ranges`](super::in_istio_ranges) report, for
/// the records last followed.
#[derive(Default)]
pub struct Tally {
    records: Records,
    /// Addresses held, per pool (in the policy's order).
    used: Vec<u128>,
    /// By host and address: the Istio range each is inside.
    stranded: BTreeMap<(String, IpAddr), IpNet>,
    /// Records released and not pinned, by when (Unix seconds) and host: the first is the
    /// next whose grace period ends.
    released: BTreeSet<(u64, String)>,
}

impl Tally {
    /// Moves on to `records`; returns the keys of the records added, removed or changed since
    /// the last call. Two states of one store share most of their nodes, which the walk skips.
    pub fn follow(&mut self, policy: &Policy, records: &Records) -> Vec<String> {
        self.used.resize(policy.pools.len(), 0);
        let mut changed = Vec::new();
        let (used, stranded, released) = (&mut self.used, &mut self.stranded, &mut self.released);
        follow_records(&mut self.records, records, |host, before, after| {
            for (record, add) in [(before, false), (after, true)] {
                if let Some(at) = record.filter(|r| !r.pinned).and_then(|r| r.released_at) {
                    let key = (at, host.clone());
                    if add {
                        released.insert(key);
                    } else {
                        released.remove(&key);
                    }
                }
                for address in record.iter().flat_map(|r| &r.addresses) {
                    policy.count_usable(used, *address, add);
                    if let Some(range) = policy.istio_range_of(*address) {
                        let key = (host.clone(), *address);
                        if add {
                            stranded.insert(key, range);
                        } else {
                            stranded.remove(&key);
                        }
                    }
                }
            }
            changed.push(host.clone());
        });
        changed
    }

    pub fn usage(&self, policy: &Policy) -> Vec<PoolUsage> {
        (policy.pools.iter().zip(&self.used))
            .map(|(pool, used)| PoolUsage {
                pool: pool.to_string(),
                capacity: pool.capacity(),
                used: *used,
            })
            .collect()
    }

    /// When (Unix seconds) the first grace period of a released record ends, if any record
    /// is released.
    pub fn first_expiry(&self, grace: std::time::Duration) -> Option<u64> {
        let (at, _) = self.released.first()?;
        Some(at.saturating_add(grace.as_secs()))
    }

    /// Stored VIPs inside an Istio range: host, address and range.
    pub fn stranded(&self) -> impl ExactSizeIterator<Item = (&str, IpAddr, IpNet)> {
        (self.stranded.iter()).map(|((host, address), range)| (host.as_str(), *address, *range))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alloc::{AllocState, Holders, Reserved, Scope, in_istio_ranges, reconcile, usage};

    #[test]
    fn agrees_with_a_walk_over_every_record() {
        let policy = Policy {
            pools: ["240.0.0.0/4", "2001:db8::/64"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
            grace: Duration::from_secs(10),
        };
        let mut state = AllocState::default();
        let mut tally = Tally::default();
        let stranded: IpAddr = "240.240.0.9".parse().unwrap();
        let steps: [&[&str]; 4] = [&["a", "b", "c"], &["b", "c", "d"], &[], &["e"]];
        for (now, hosts) in steps.iter().enumerate() {
            let wanted = hosts.iter().map(|h| format!("{h}.global")).collect();
            let none = Reserved::new();
            let (at, all) = (now as u64 * 20, &Scope::All);
            reconcile(
                &mut state,
                &policy,
                &wanted,
                &none,
                at,
                true,
                all,
                &mut Holders::default(),
            );
            if now == 1 {
                // An old VIP now inside a range the pools leave out for istiod.
                let record = state.records.get_mut("b.global").unwrap();
                record.addresses = vec![stranded];
            }
            let changed = tally.follow(&policy, &state.records);
            assert!(!changed.is_empty(), "step {now} changed records");
            assert_eq!(tally.usage(&policy), usage(&policy, &state));
            let walked = in_istio_ranges(&policy, &state);
            assert_eq!(tally.stranded().collect::<Vec<_>>(), walked, "step {now}");
            let first_expiry = (state.records.values())
                .filter(|r| !r.pinned)
                .filter_map(|r| r.released_at)
                .min()
                .map(|at| at + 10);
            assert_eq!(tally.first_expiry(policy.grace), first_expiry, "step {now}");
            let expected = [None, Some(30), Some(50), None][now];
            assert_eq!(first_expiry, expected, "step {now} releases what it should");
        }
        assert!(tally.follow(&policy, &state.records.clone()).is_empty());
    }
}
