//! Merges what the sources declare into one entry per host.
//!
//! A host may be declared by several ServiceEntries. Explicit addresses are taken from the first
//! declaration in a stable order (origin, namespace, name), so every replica picks the same one;
//! declarations that disagree are reported. Hosts that only entries without `spec.addresses`
//! declare need a VIP from the allocator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::rr::Name;

use crate::source::Declaration;

/// One host and the addresses it resolves to. A host without addresses is declared but not
/// answerable yet (its VIP is not durably allocated): it gets SERVFAIL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub name: Name,
    pub addresses: Vec<IpAddr>,
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
    /// Hosts with explicit addresses, sorted by name.
    pub hosts: Vec<HostEntry>,
    /// Hosts declared only without addresses.
    pub unaddressed: BTreeSet<Name>,
    pub conflicts: Vec<Conflict>,
}

impl Catalog {
    pub fn merge<'a>(declarations: impl IntoIterator<Item = &'a Declaration>) -> Catalog {
        let mut ordered: Vec<&Declaration> = declarations.into_iter().collect();
        ordered.sort_by(|a, b| a.key().cmp(&b.key()));

        let mut by_host: BTreeMap<Name, (&Declaration, Vec<IpAddr>)> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let mut unaddressed = BTreeSet::new();
        for decl in ordered {
            if decl.addresses.is_empty() {
                if decl.needs_vip {
                    unaddressed.extend(decl.hosts.iter().cloned());
                }
                continue;
            }
            for host in &decl.hosts {
                match by_host.get(host) {
                    None => {
                        by_host.insert(host.clone(), (decl, decl.addresses.clone()));
                    }
                    Some((kept, addrs)) if *addrs != decl.addresses => conflicts.push(Conflict {
                        host: host.clone(),
                        kept: kept.id(),
                        ignored: decl.id(),
                    }),
                    Some(_) => {}
                }
            }
        }
        unaddressed.retain(|h| !by_host.contains_key(h));
        let hosts = by_host
            .into_iter()
            .map(|(name, (_, addresses))| HostEntry { name, addresses })
            .collect();
        Catalog {
            hosts,
            unaddressed,
            conflicts,
        }
    }

    /// Explicit addresses and the host each belongs to: the allocator must not hand them out.
    pub fn explicit_addresses(&self) -> impl Iterator<Item = (IpAddr, &Name)> {
        self.hosts
            .iter()
            .flat_map(|h| h.addresses.iter().map(move |a| (*a, &h.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(origin: &str, name: &str, hosts: &[&str], addrs: &[&str]) -> Declaration {
        Declaration {
            origin: origin.into(),
            namespace: "ns".into(),
            name: name.into(),
            hosts: hosts.iter().map(|h| Name::from_ascii(h).unwrap()).collect(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            needs_vip: addrs.is_empty(),
        }
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
}
