//! The catalog kept up to date change by change: for every host, the declarations naming it.
//!
//! Sources publish their declarations in shared sets, and a set that did not change is the
//! same allocation from one publish to the next. So the sets that came and went since the last
//! update are the change, and only the hosts their declarations name are looked at again: a
//! change to a few ServiceEntries costs a few hosts, whatever the size of the mesh. What a
//! host comes to is worked out from its declarations alone, by the rules of
//! [`Catalog::merge`](super::Catalog::merge), which builds the same from scratch.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hickory_proto::rr::Name;

use super::{Conflict, SrvPort, srv_ports};
use crate::source::set::Combined;
use crate::source::{Declaration, DeclarationSet};

#[derive(Default)]
pub struct LiveCatalog {
    /// Every declaration set applied, by address.
    sets: HashMap<usize, DeclarationSet, RandomState>,
    hosts: HashMap<Name, HostDecls, RandomState>,
}

/// The declarations that name one host.
#[derive(Default)]
struct HostDecls {
    /// Declarations listing the host, in declaration order (origin, namespace, name).
    declared: Vec<DeclRef>,
    /// Declarations whose status holds addresses for the host, in the same order.
    claims: Vec<DeclRef>,
}

/// One declaration, inside the set that holds it.
#[derive(Clone)]
struct DeclRef {
    set: DeclarationSet,
    at: u32,
}

impl DeclRef {
    fn get(&self) -> &Declaration {
        &self.set[self.at as usize]
    }

    fn is(&self, set: &DeclarationSet, at: usize) -> bool {
        Arc::ptr_eq(&self.set, set) && self.at as usize == at
    }
}

/// What the declarations naming one host make of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// Some ServiceEntry lists the host (it may only be claimed in a status otherwise).
    pub declared: bool,
    /// The first explicit declaration's addresses; empty when none has any.
    pub addresses: Vec<IpAddr>,
    /// No declaration has addresses, and one of them needs a VIP (has no `spec.addresses`).
    pub needs_vip: bool,
    /// Named ports of every declaration, sorted: its SRV records.
    pub ports: Vec<SrvPort>,
    /// Explicit declarations after the first that disagree with it.
    pub conflicts: Vec<Conflict>,
    /// Addresses statuses hold for the host, in declaration order.
    pub claimed: Vec<IpAddr>,
}

fn address_of(set: &DeclarationSet) -> usize {
    Arc::as_ptr(set) as *const () as usize
}

impl LiveCatalog {
    /// Brings the catalog to `combined`; returns the hosts whose declarations changed (named
    /// or claimed), each once.
    pub fn update(&mut self, combined: &Combined) -> Vec<Name> {
        let current: HashMap<usize, &DeclarationSet, RandomState> =
            combined.sets().map(|s| (address_of(s), s)).collect();
        let gone: Vec<DeclarationSet> = (self.sets.iter())
            .filter(|(at, _)| !current.contains_key(*at))
            .map(|(_, set)| set.clone())
            .collect();
        let came: Vec<DeclarationSet> = (current.iter())
            .filter(|(at, _)| !self.sets.contains_key(*at))
            .map(|(_, set)| Arc::clone(set))
            .collect();
        let mut touched: HashSet<Name, RandomState> = HashSet::default();
        for set in gone {
            self.sets.remove(&address_of(&set));
            for (at, decl) in set.iter().enumerate() {
                for host in &decl.hosts {
                    self.unlist(host, &set, at, false);
                    touched.insert(host.clone());
                }
                for (host, _) in decl.claimed.iter() {
                    self.unlist(host, &set, at, true);
                    touched.insert(host.clone());
                }
            }
        }
        for set in came {
            for (at, decl) in set.iter().enumerate() {
                let reference = DeclRef {
                    set: set.clone(),
                    at: at as u32,
                };
                for host in &decl.hosts {
                    self.list(host, reference.clone(), false);
                    touched.insert(host.clone());
                }
                let mut claimed: Vec<&Name> = decl.claimed.iter().map(|(h, _)| h).collect();
                claimed.sort();
                claimed.dedup();
                for host in claimed {
                    self.list(host, reference.clone(), true);
                    touched.insert(host.clone());
                }
            }
            self.sets.insert(address_of(&set), set);
        }
        // Lists grown one insert at a time keep up to twice their room; a mesh has many.
        for host in &touched {
            if let Some(decls) = self.hosts.get_mut(host) {
                decls.declared.shrink_to_fit();
                decls.claims.shrink_to_fit();
            }
        }
        touched.into_iter().collect()
    }

    fn list(&mut self, host: &Name, reference: DeclRef, claim: bool) {
        let decls = self.hosts.entry(host.clone()).or_default();
        let list = if claim {
            &mut decls.claims
        } else {
            &mut decls.declared
        };
        let key = reference.get().key();
        let at = list.partition_point(|d| d.get().key() <= key);
        list.insert(at, reference);
    }

    fn unlist(&mut self, host: &Name, set: &DeclarationSet, at: usize, claim: bool) {
        let Some(decls) = self.hosts.get_mut(host) else {
            return;
        };
        let list = if claim {
            &mut decls.claims
        } else {
            &mut decls.declared
        };
        list.retain(|d| !d.is(set, at));
        if decls.declared.is_empty() && decls.claims.is_empty() {
            self.hosts.remove(host);
        }
    }

    /// What `host`'s declarations make of it; `None` when nothing names it.
    pub fn view(&self, host: &Name) -> Option<HostView> {
        let decls = self.hosts.get(host)?;
        let mut view = HostView {
            declared: !decls.declared.is_empty(),
            ..HostView::default()
        };
        let mut kept: Option<&Declaration> = None;
        for decl in decls.declared.iter().map(DeclRef::get) {
            view.ports.extend(srv_ports(decl));
            if decl.addresses.is_empty() {
                view.needs_vip |= decl.needs_vip;
                continue;
            }
            match kept {
                None => {
                    kept = Some(decl);
                    view.addresses = decl.addresses.clone();
                }
                Some(first) if first.addresses != decl.addresses => view.conflicts.push(Conflict {
                    host: host.clone(),
                    kept: first.id(),
                    ignored: decl.id(),
                }),
                Some(_) => {}
            }
        }

        view.needs_vip &= kept.is_none();
        view.ports.sort();
        view.ports.dedup();
        for decl in decls.claims.iter().map(DeclRef::get) {
            let mine = decl.claimed.iter().filter(|(h, _)| h == host);
            view.claimed.extend(mine.map(|(_, address)| *address));
        }
        Some(view)
    }
}
