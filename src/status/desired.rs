//! What a ServiceEntry's `status.addresses` should hold once our VIPs are in it: decided from
//! the entry, the allocations as stored, and the status as read, so that only our part changes.
//!
//! Our part: for each host of a qualifying entry (the entries istiod allocates for: no
//! `spec.addresses`, resolution not NONE, not opted out) that has a stored VIP, exactly that VIP
//! (one per address family with a pool), in place of whatever istiod wrote for the host. Entries
//! that no longer qualify, and hosts that left the entry, lose the addresses we had written.
//! Everything else (other hosts' addresses, istiod's for hosts we do not serve) stays as it was,
//! in its order, so a status that is already right is left untouched.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::rr::Name;
use serde_json::{Value, json};

use crate::alloc::{AllocState, Policy, host_key};
use crate::source::Declaration;
use crate::source::service_entry::Resolution;

/// The label with which an entry opts out of istiod's allocation (and of ours in its status).
pub const OPT_OUT_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

/// Whether istiod gives the entry's hosts VIPs (and so reads them from the status).
pub fn qualifies(decl: &Declaration) -> bool {
    decl.needs_vip
        && decl.resolution != Some(Resolution::None)
        && decl.labels.get(OPT_OUT_LABEL).map(String::as_str) != Some("false")
}

/// The VIPs we answer for `host` and would write: stored, live, and outside Istio's ranges
/// (istiod tracks its own range and would fight over those).
pub fn our_vips(state: &AllocState, policy: &Policy, host: &Name) -> Vec<IpAddr> {
    (state.records.get(&host_key(host)))
        .filter(|r| r.released_at.is_none())
        .map(|r| {
            (r.addresses.iter().copied())
                .filter(|a| policy.istio_range_of(*a).is_none())
                .collect()
        })
        .unwrap_or_default()
}

/// The `status.addresses` the entry should have, given `current` (as read; `None` when there is
/// none); `None` when `current` is already right. `owns` tells whether this entry is the one
/// of its cluster that carries a host's VIP (see [`Owners`]).
pub fn desired(
    decl: &Declaration,
    current: Option<&[Value]>,
    state: &AllocState,
    policy: &Policy,
    owns: impl Fn(&Name) -> bool,
) -> Option<Vec<Value>> {
    let current = current.unwrap_or_default();
    let qualifying = qualifies(decl);
    // Hosts whose addresses are ours to set in this entry, with what they should be.
    let managed: Vec<(&Name, Vec<IpAddr>)> = if qualifying {
        (decl.hosts.iter())
            .filter(|h| owns(h))
            .map(|h| (h, our_vips(state, policy, h)))
            .filter(|(_, vips)| !vips.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    // What we may have written: a stored VIP outside Istio's ranges.
    let stored = |host: &Name, address: IpAddr| {
        policy.istio_range_of(address).is_none()
            && (state.records.get(&host_key(host))).is_some_and(|r| r.addresses.contains(&address))
    };
    let mut next: Vec<Value> = (current.iter())
        .filter(|entry| {
            let Some((host, address)) = read_entry(entry) else {
                return true; // not ours to judge
            };
            if managed.iter().any(|(h, _)| **h == host) {
                return false; // replaced below
            }
            // An address we wrote, for a host this entry no longer asks us for.
            !stored(&host, address)
        })
        .cloned()
        .collect();
    for (host, vips) in &managed {
        next.extend(
            vips.iter()
                .map(|v| json!({"value": v.to_string(), "host": host_key(host)})),
        );
    }
    (next != current).then_some(next)
}

/// Which entry of a cluster carries each host's VIP: the first qualifying one in (namespace,
/// name) order. istiod takes one address in two entries for a conflict and gives the younger
/// entry a new one, so writing our VIP into every entry of a host would start a fight.
pub struct Owners(HashMap<Name, (String, String)>);

impl Owners {
    pub fn of<'a>(decls: impl IntoIterator<Item = &'a Declaration>) -> Owners {
        let mut owners: HashMap<Name, (String, String)> = HashMap::new();
        for decl in decls.into_iter().filter(|d| qualifies(d)) {
            let key = (decl.namespace.clone(), decl.name.clone());
            for host in &decl.hosts {
                let owner = owners.entry(host.clone()).or_insert_with(|| key.clone());
                if key < *owner {
                    *owner = key.clone();
                }
            }
        }
        Owners(owners)
    }

    /// Whether entry `decl` carries `host`'s VIP (also when no entry was known to: a fresh read).
    pub fn owns(&self, decl: &Declaration, host: &Name) -> bool {
        self.0
            .get(host)
            .is_none_or(|(ns, name)| *ns == decl.namespace && *name == decl.name)
    }
}

/// A host whose status in one entry of one cluster holds other VIPs than we answer (an empty
/// status holds none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// The declaration's origin (`cluster ID`).
    pub origin: String,
    /// `namespace/name`.
    pub entry: String,
    pub host: Name,
    /// What the status holds for the host, sorted.
    pub status: Vec<IpAddr>,
    /// What we answer (and would write), sorted.
    pub ours: Vec<IpAddr>,
}

/// Every drift among `decls` (of any clusters): hosts of qualifying entries, in the entry that
/// carries their VIP in its cluster, whose status does not hold exactly our VIPs.
pub fn drifts(decls: &[Declaration], state: &AllocState, policy: &Policy) -> Vec<Drift> {
    let mut out = Vec::new();
    for (host, origin, status, entry) in held_in_entries(decls, state, policy) {
        let mut ours = our_vips(state, policy, &host);
        ours.sort();
        // An empty status is no drift: no istiod allocates there (before Istio 1.25, or with
        // its allocation off), so the sidecars have no other VIP.
        if !status.is_empty() && status != ours {
            out.push(Drift {
                origin,
                entry,
                host,
                status,
                ours,
            });
        }
    }
    out.sort_by(|a, b| (&a.host, &a.origin, &a.entry).cmp(&(&b.host, &b.origin, &b.entry)));
    out
}

/// What each cluster's status holds for each host with a VIP of ours, in the entry that carries
/// it there: `(host, origin, addresses sorted)`, for `dnsctl check --hosts`.
pub fn held(
    decls: &[Declaration],
    state: &AllocState,
    policy: &Policy,
) -> Vec<(Name, String, Vec<IpAddr>)> {
    let mut out: Vec<_> = (held_in_entries(decls, state, policy).into_iter())
        .map(|(host, origin, status, _)| (host, origin, status))
        .collect();
    out.sort();
    out
}

/// For each host with a VIP of ours and each cluster: what the status of the entry carrying
/// the host's VIP there holds (sorted), and that entry (`namespace/name`).
fn held_in_entries(
    decls: &[Declaration],
    state: &AllocState,
    policy: &Policy,
) -> Vec<(Name, String, Vec<IpAddr>, String)> {
    let mut by_origin: HashMap<&str, Vec<&Declaration>> = HashMap::new();
    for decl in decls {
        by_origin.entry(&decl.origin).or_default().push(decl);
    }
    let mut out = Vec::new();
    for (origin, decls) in by_origin {
        let owners = Owners::of(decls.iter().copied());
        for decl in decls.into_iter().filter(|d| qualifies(d)) {
            for host in decl.hosts.iter().filter(|h| owners.owns(decl, h)) {
                if our_vips(state, policy, host).is_empty() {
                    continue;
                }
                let mut status: Vec<IpAddr> = (decl.claimed.iter())
                    .filter(|(h, _)| h == host)
                    .map(|(_, a)| *a)
                    .collect();
                status.sort();
                let entry = format!("{}/{}", decl.namespace, decl.name);
                out.push((host.clone(), origin.to_string(), status, entry));
            }
        }
    }
    out
}

/// One status entry as (host, address); `None` for one that does not read.
pub fn read_entry(entry: &Value) -> Option<(Name, IpAddr)> {
    let host = entry.get("host")?.as_str()?;
    let value = entry.get("value")?.as_str()?;
    let mut name = Name::from_ascii(host).ok()?;
    name.set_fqdn(true);
    Some((name.to_lowercase(), value.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Record;
    use crate::source::Content;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    fn decl(hosts: &[&str], labels: &[(&str, &str)]) -> Declaration {
        let content = Content {
            namespace: "ns".into(),
            name: "e".into(),
            hosts: hosts.iter().map(|h| Name::from_ascii(h).unwrap()).collect(),
            addresses: Vec::new(),
            needs_vip: true,
            resolution: None,
            ports: Box::default(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            claimed: Box::default(),
        };
        Declaration::new(Arc::from("cluster a"), content)
    }

    fn state(records: &[(&str, &str)]) -> AllocState {
        let mut state = AllocState::default();
        for (host, address) in records {
            state.records.insert(
                host.to_string(),
                Record {
                    addresses: vec![address.parse().unwrap()],
                    ..Default::default()
                },
            );
        }
        state
    }

    fn policy() -> Policy {
        let pool: crate::alloc::Pool = "240.0.0.0/4".parse().unwrap();
        Policy {
            pools: vec![
                pool.excluding(&["240.240.0.0/16".parse().unwrap()])
                    .unwrap(),
            ],
            grace: Duration::from_secs(60),
        }
    }

    fn entry(host: &str, value: &str) -> Value {
        json!({"value": value, "host": host})
    }

    #[test]
    fn our_vip_replaces_istiods_for_our_hosts_only() {
        let d = decl(&["a.global.", "b.example."], &[]);
        let s = state(&[("a.global", "240.0.0.9")]);
        let current = [
            entry("a.global", "240.240.0.1"),
            entry("a.global", "2001:2::1"),
            entry("b.example", "240.240.0.2"),
        ];
        let next = desired(&d, Some(&current), &s, &policy(), |_| true).unwrap();
        assert_eq!(
            next,
            [
                entry("b.example", "240.240.0.2"),
                entry("a.global", "240.0.0.9")
            ]
        );
        // Written once, then left alone: a restart patches nothing.
        assert_eq!(desired(&d, Some(&next), &s, &policy(), |_| true), None);
        // No status yet: ours alone.
        assert_eq!(
            desired(&d, None, &s, &policy(), |_| true).unwrap(),
            [entry("a.global", "240.0.0.9")]
        );
    }

    #[test]
    fn entries_that_stop_qualifying_lose_our_addresses_only() {
        let s = state(&[("a.global", "240.0.0.9")]);
        let current = [
            entry("a.global", "240.0.0.9"),
            entry("c.global", "240.240.0.3"),
        ];
        let opted_out = decl(&["a.global.", "c.global."], &[(OPT_OUT_LABEL, "false")]);
        assert_eq!(
            desired(&opted_out, Some(&current), &s, &policy(), |_| true).unwrap(),
            [entry("c.global", "240.240.0.3")]
        );
        let explicit = decl(&["a.global."], &[]).changed(|c| c.needs_vip = false);
        assert_eq!(
            desired(&explicit, Some(&current), &s, &policy(), |_| true).unwrap(),
            [entry("c.global", "240.240.0.3")]
        );
        let none = decl(&["a.global."], &[]).changed(|c| c.resolution = Some(Resolution::None));
        assert!(desired(&none, Some(&current), &s, &policy(), |_| true).is_some());
        // The host left the entry.
        let left = decl(&["c.global."], &[]);
        assert_eq!(
            desired(&left, Some(&current), &s, &policy(), |_| true).unwrap(),
            [entry("c.global", "240.240.0.3")]
        );
    }

    #[test]
    fn one_entry_per_host_carries_its_vip() {
        let s = state(&[("a.global", "240.0.0.9")]);
        let first = decl(&["a.global."], &[]).changed(|c| c.name = "a-first".into());
        let second = decl(&["a.global."], &[]).changed(|c| c.name = "b-second".into());
        let owners = Owners::of([&second, &first]);
        assert!(owners.owns(&first, &first.hosts[0]) && !owners.owns(&second, &second.hosts[0]));
        let istiods = [entry("a.global", "240.240.0.4")];
        assert_eq!(
            desired(&first, Some(&istiods), &s, &policy(), |h: &Name| owners
                .owns(&first, h))
            .unwrap(),
            [entry("a.global", "240.0.0.9")]
        );
        assert_eq!(
            desired(&second, Some(&istiods), &s, &policy(), |h: &Name| owners
                .owns(&second, h)),
            None
        );
        // Ours, left in the other entry from before: taken out.
        let ours = [entry("a.global", "240.0.0.9")];
        assert_eq!(
            desired(&second, Some(&ours), &s, &policy(), |h: &Name| owners
                .owns(&second, h))
            .unwrap(),
            Vec::<Value>::new()
        );
    }

    #[test]
    fn vips_inside_istios_range_are_never_written() {
        let d = decl(&["a.global."], &[]);
        let s = state(&[("a.global", "240.240.0.7")]);
        let current = [entry("a.global", "240.240.0.5")];
        assert_eq!(desired(&d, Some(&current), &s, &policy(), |_| true), None);
    }
}
