//! Merges what the sources declare into one entry per host.
//!
//! A host may be declared by several ServiceEntries. Explicit addresses are taken from the first
//! declaration in a stable order (origin, namespace, name), so every replica picks the same one;
//! declarations that disagree are reported. Hosts that only entries without `spec.addresses`
//! declare need a VIP from the allocator.

pub mod live;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use foldhash::fast::RandomState;
use hickory_proto::rr::Name;

use crate::source::Declaration;

/// One host and the addresses it resolves to. A host without addresses is declared but not
/// answerable yet (its VIP is not durably allocated): it gets SERVFAIL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostEntry {
    pub name: Name,
    pub addresses: Vec<IpAddr>,
    /// Its named ports, from every entry declaring it: its SRV records.
    pub ports: Vec<SrvPort>,
}

/// One SRV record's worth of a port: `_<service>._<protocol>.<host>` → `number` on the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrvPort {
    /// `_http`, lower case.
    pub service: Box<str>,
    /// `_tcp` or `_udp`.
    pub protocol: &'static str,
    pub number: u16,
}

/// A host declared with different explicit addresses by different ServiceEntries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub host: Name,
    pub kept: String,
    pub ignored: String,
}

#[derive(Debug, Default)]
pub struct Catalog {
    /// Hosts with explicit addresses, in the order of their first declaration.
    pub hosts: Vec<HostEntry>,
    /// Hosts declared only without addresses, in the same order.
    pub unaddressed: Vec<Name>,
    pub conflicts: Vec<Conflict>,
    /// Named ports of every host that has any: the union over the entries declaring it
    /// (several entries, several clusters), sorted.
    pub ports: HashMap<Name, Vec<SrvPort>, RandomState>,
    /// What the entries' `status.addresses` hold, by host, in declaration order.
    pub claimed: Vec<(Name, IpAddr)>,
}

impl Catalog {
    pub fn merge<'a>(declarations: impl IntoIterator<Item = &'a Declaration>) -> Catalog {
        let mut ordered: Vec<&Declaration> = declarations.into_iter().collect();
        ordered.sort_by(|a, b| a.key().cmp(&b.key()));

        // Hashed, not sorted: ordering names label by label dominated big meshes' rebuilds.
        // Declaration order keeps the result the same on every replica.
        let mut first: HashMap<&Name, (&Declaration, usize), RandomState> =
            HashMap::with_capacity_and_hasher(ordered.len(), RandomState::default());
        let mut hosts: Vec<HostEntry> = Vec::with_capacity(ordered.len());
        let mut conflicts = Vec::new();
        let mut without_addresses = Vec::new();
        let mut ports: HashMap<Name, Vec<SrvPort>, RandomState> = HashMap::default();
        let mut claimed = Vec::new();
        for decl in ordered {
            claimed.extend(decl.claimed.iter().cloned());
            let named: Vec<SrvPort> = srv_ports(decl).collect();
            if !named.is_empty() {
                for host in &decl.hosts {
                    let all = ports.entry(host.clone()).or_default();
                    all.extend(named.iter().cloned());
                }
            }
            if decl.addresses.is_empty() {
                if decl.needs_vip {
                    without_addresses.extend(&decl.hosts);
                }
                continue;
            }
            for host in &decl.hosts {
                match first.entry(host) {
                    Entry::Vacant(slot) => {
                        slot.insert((decl, hosts.len()));
                        hosts.push(HostEntry {
                            name: host.clone(),
                            addresses: decl.addresses.clone(),
                            ports: Vec::new(),
                        });
                    }
                    Entry::Occupied(kept) => {
                        let (kept, at) = *kept.get();
                        if hosts[at].addresses != decl.addresses {
                            conflicts.push(Conflict {
                                host: host.clone(),
                                kept: kept.id(),
                                ignored: decl.id(),
                            });
                        }
                    }
                }
            }
        }
        let mut listed = HashSet::with_hasher(RandomState::default());
        let unaddressed = without_addresses
            .into_iter()
            .filter(|host| !first.contains_key(host) && listed.insert(*host))
            .cloned()
            .collect();
        for all in ports.values_mut() {
            all.sort();
            all.dedup();
        }
        Catalog {
            hosts,
            unaddressed,
            conflicts,
            ports,
            claimed,
        }
    }
}

/// The SRV records' worth of `decl`'s ports: those with a name.
fn srv_ports(decl: &Declaration) -> impl Iterator<Item = SrvPort> + '_ {
    (decl.ports.iter()).filter_map(|p| match p.srv_labels() {
        Ok(Some((service, protocol))) => Some(SrvPort {
            service: service.into(),
            protocol,
            number: p.number,
        }),
        // Unnamed ports have no SRV name; bad names were reported by the source.
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Content;

    fn decl(origin: &str, name: &str, hosts: &[&str], addrs: &[&str]) -> Declaration {
        let content = Content {
            namespace: "ns".into(),
            name: name.into(),
            hosts: hosts.iter().map(|h| Name::from_ascii(h).unwrap()).collect(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            needs_vip: addrs.is_empty(),
            resolution: None,
            ports: Box::default(),
            labels: Default::default(),
            claimed: Box::default(),
        };
        Declaration::new(origin.into(), content)
    }

    #[test]
    fn one_entry_per_host_first_declaration_wins() {
        let decls = [
            decl("b.yaml", "late", &["a.global."], &["240.0.0.2"]),
            decl(
                "a.yaml",
                "early",
                &["a.global.", "b.global."],
                &["240.0.0.1"],
            ),
            decl("c.yaml", "same", &["b.global."], &["240.0.0.1"]),
            decl("d.yaml", "no-vip", &["c.global.", "a.global."], &[]),
        ];
        let catalog = Catalog::merge(&decls);
        let hosts: Vec<(String, Vec<IpAddr>)> = catalog
            .hosts
            .iter()
            .map(|h| (h.name.to_ascii(), h.addresses.clone()))
            .collect();
        let vip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        assert_eq!(
            hosts,
            [
                ("a.global.".into(), vip("240.0.0.1")),
                ("b.global.".into(), vip("240.0.0.1"))
            ]
        );
        assert_eq!(
            catalog.conflicts.len(),
            1,
            "agreeing declarations are not conflicts"
        );
        assert_eq!(catalog.conflicts[0].kept, "a.yaml ns/early");
        assert_eq!(catalog.conflicts[0].ignored, "b.yaml ns/late");
        // Input order does not matter.
        let mut reversed = decls.to_vec();
        reversed.reverse();
        assert_eq!(Catalog::merge(&reversed).hosts, catalog.hosts);
    }

    #[test]
    fn ports_are_the_union_over_every_entry_declaring_the_host() {
        use crate::source::service_entry::Port;
        let port = |name: &str, protocol: Option<&str>, number| Port {
            number,
            protocol: protocol.map(String::from),
            name: Some(name.into()),
            target_port: None,
        };
        let explicit = decl("a.yaml", "one", &["a.global."], &["240.0.0.1"]).changed(|c| {
            c.ports = vec![port("HTTP", Some("HTTP"), 80), port("bad_name", None, 81)].into()
        });
        let other = decl("b.yaml", "two", &["a.global.", "b.global."], &[]).changed(|c| {
            c.ports = vec![port("dns", Some("UDP"), 53), port("http", Some("TCP"), 80)].into()
        });
        let catalog = Catalog::merge(&[explicit, other]);
        let listed = |host: &str| -> Vec<String> {
            catalog.ports[&Name::from_ascii(host).unwrap()]
                .iter()
                .map(|p| format!("{}.{} {}", p.service, p.protocol, p.number))
                .collect()
        };
        assert_eq!(listed("a.global."), ["_dns._udp 53", "_http._tcp 80"]);
        assert_eq!(listed("b.global."), ["_dns._udp 53", "_http._tcp 80"]);
    }
}
