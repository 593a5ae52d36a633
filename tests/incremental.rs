//! The incremental path against a rebuild from scratch: random sequences of source changes are
//! applied to the publisher's host state and the name table change by change, and after every
//! step each answer of the changed table must equal the answer of a table built whole from all
//! current declarations (merged by `Catalog::merge`, the full-rebuild path), byte for byte.
//!
//! The steps cover what a mesh does: entries replaced in a source and sources dropped whole,
//! conflicting explicit addresses (the winner flips as entries come and go), hosts moving
//! between explicit and address-less (with and without a stored VIP, so pending too),
//! wildcards and deep names appearing and vanishing (empty non-terminals), named ports (SRV),
//! addresses inside the pool (PTR) and statuses claiming addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use globaldns::alloc::{AllocState, Record, Reserved, host_key};
use globaldns::catalog::{Catalog, HostEntry};
use globaldns::publish::hosts::Hosts;
use globaldns::source::service_entry::Port;
use globaldns::source::set::Combined;
use globaldns::source::{Content, Declaration, DeclarationSet};
use globaldns::zone::{Lookup, NameTable, SoaSettings, ZoneSettings};
use hickory_proto::rr::Name;
use proptest::prelude::*;

const HOSTS: &[&str] = &[
    "a.global.",
    "b.a.global.",
    "*.a.global.",
    "c.b.a.global.",
    "x.y.z.global.",
    "*.y.z.global.",
    "d.global.",
    "v.deep.er.global.",
    "e.mesh.example.",
    "out.example.com.",
];
const ADDRESSES: &[&str] = &["240.0.0.1", "240.0.0.2", "2001:db8::1", "198.51.100.7"];
/// Hosts with a stored VIP; the others stay pending while address-less.
const STORED: &[(&str, &str)] = &[
    ("a.global", "240.0.0.100"),
    ("b.a.global", "240.0.0.101"),
    ("x.y.z.global", "240.0.0.102"),
    ("v.deep.er.global", "240.0.0.103"),
    ("e.mesh.example", "240.0.0.2"),
];

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn settings() -> ZoneSettings {
    ZoneSettings {
        zones: vec![name("global."), name("mesh.example.")],
        ttl: 30,
        soa: SoaSettings::default(),
        reverse: vec![
            "240.0.0.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ],
    }
}

fn durable() -> AllocState {
    let mut state = AllocState::default();
    for (host, address) in STORED {
        state.records.insert(
            host.to_string(),
            Record {
                addresses: vec![address.parse().unwrap()],
                pinned: false,
                released_at: None,
            },
        );
    }
    state
}

/// One generated ServiceEntry.
#[derive(Clone, Debug)]
struct Entry {
    hosts: Vec<usize>,
    /// `None`: no `spec.addresses` (needs a VIP); `Some(empty)`: only CIDRs (nothing to answer).
    addresses: Option<Vec<usize>>,
    ports: u8,
    /// A status claiming an address for the entry's first host.
    claim: Option<usize>,
}

#[derive(Clone, Debug)]
enum Step {
    /// Source `s` now declares these entries, in two sets; `keep_first` keeps its first set as
    /// it was (the same allocation), as an unchanged file or cluster bucket is.
    Replace {
        source: usize,
        first: Vec<Entry>,
        second: Vec<Entry>,
        keep_first: bool,
    },
    Drop(usize),
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        prop::collection::vec(0..HOSTS.len(), 1..3),
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(vec![])),
            4 => prop::collection::vec(0..ADDRESSES.len(), 1..3).prop_map(Some),
        ],
        0u8..3,
        prop::option::weighted(0.2, 0..ADDRESSES.len()),
    )
        .prop_map(|(hosts, addresses, ports, claim)| Entry {
            hosts,
            addresses,
            ports,
            claim,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (
            0usize..4,
            prop::collection::vec(entry(), 0..4),
            prop::collection::vec(entry(), 0..4),
            any::<bool>()
        )
            .prop_map(|(source, first, second, keep_first)| Step::Replace {
                source,
                first,
                second,
                keep_first
            }),
        1 => (0usize..4).prop_map(Step::Drop),
    ]
}

fn declaration(source: usize, set: usize, at: usize, e: &Entry) -> Declaration {
    let port = |n: &str, number| Port {
        number,
        protocol: Some("TCP".into()),
        name: Some(n.into()),
        target_port: None,
    };
    let mut hosts: Vec<Name> = e.hosts.iter().map(|&h| name(HOSTS[h])).collect();
    hosts.sort();
    hosts.dedup();
    let mut addresses: Vec<IpAddr> = (e.addresses.iter().flatten())
        .map(|&a| ADDRESSES[a].parse().unwrap())
        .collect();
    addresses.dedup();
    let content = Content {
        namespace: "ns".into(),
        name: format!("e{at}"),
        claimed: (e.claim.iter())
            .map(|&a| (hosts[0].clone(), ADDRESSES[a].parse().unwrap()))
            .collect(),
        hosts,
        addresses,
        needs_vip: e.addresses.is_none(),
        resolution: None,
        ports: [port("http", 80), port("grpc", 90)][..e.ports as usize].into(),
        labels: Default::default(),
    };
    Declaration::new(format!("source{source}/set{set}").into(), content)
}

/// The table built whole from every current declaration: the catalog merged from scratch,
/// stored VIPs for the hosts needing one, withheld when an explicit address is reserved for
/// another host (the first host, in key order, of an address several declare).
fn from_scratch(combined: &Combined, durable: &AllocState, serial: u32) -> NameTable {
    let zone = settings();
    let catalog = Catalog::merge(combined.iter());
    let mut owners: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for host in &catalog.hosts {
        for a in &host.addresses {
            owners.entry(*a).or_default().insert(host_key(&host.name));
        }
    }
    let held: BTreeSet<IpAddr> = durable
        .records
        .values()
        .flat_map(|r| r.addresses.clone())
        .collect();
    let mut claims: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for (host, a) in &catalog.claimed {
        if !held.contains(a) {
            claims.entry(*a).or_default().insert(host_key(host));
        }
    }
    let owner =
        |a: &IpAddr| (owners.get(a).or_else(|| claims.get(a))).and_then(|o| o.first().cloned());
    let mut hosts: Vec<HostEntry> = catalog.hosts.clone();
    for host in &mut hosts {
        host.ports = catalog.ports.get(&host.name).cloned().unwrap_or_default();
    }
    for host in catalog.unaddressed.iter().filter(|h| zone.serves(h)) {
        let key = host_key(host);
        let addresses = (durable.records.get(&key))
            .filter(|r| {
                !r.addresses
                    .iter()
                    .any(|a| owner(a).is_some_and(|o| o != key))
            })
            .map_or_else(Vec::new, |r| r.addresses.clone());
        hosts.push(HostEntry {
            name: host.clone(),
            addresses,
            ports: catalog.ports.get(host).cloned().unwrap_or_default(),
        });
    }
    NameTable::build(&zone, serial, &hosts).unwrap()
}

/// Every name worth asking: the hosts, their SRV names and the names between, names only a
/// wildcard covers, names that do not exist, the apexes, and the reverse names of the pools.
fn questions() -> Vec<Vec<u8>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for host in HOSTS {
        let mut n = name(host);
        names.insert(n.to_ascii());
        for prefix in ["_http._tcp.", "_grpc._tcp.", "_tcp.", "q.", "q.r."] {
            names.insert(format!("{prefix}{host}"));
        }
        while n.num_labels() > 0 {
            n = n.base_name();
            names.insert(n.to_ascii());
        }
    }
    for a in ADDRESSES {
        let ip: IpAddr = a.parse().unwrap();
        let reverse = Name::from(ip).to_ascii();
        names.insert(reverse.clone());
        names.insert(reverse.split_once('.').unwrap().1.to_string());
    }
    for (_, a) in STORED {
        let ip: IpAddr = a.parse().unwrap();
        names.insert(Name::from(ip).to_ascii());
    }
    names.insert("0.0.240.in-addr.arpa.".into());
    names
        .iter()
        .map(|n| {
            let mut wire = Vec::new();
            for label in name(n).iter() {
                wire.push(label.len() as u8);
                wire.extend(label.iter().map(u8::to_ascii_lowercase));
            }
            wire.push(0);
            wire
        })
        .collect()
}

fn same_answers(changed: &NameTable, built: &NameTable) -> Result<(), TestCaseError> {
    prop_assert_eq!(changed.host_count(), built.host_count());
    for q in questions() {
        for qtype in [1u16, 28, 33, 12, 2, 6, 255, 16] {
            let (a, b) = (changed.lookup(&q, qtype), built.lookup(&q, qtype));
            let text = String::from_utf8_lossy(&q).into_owned();
            match (a, b) {
                (Lookup::NotOurs, Lookup::NotOurs) => {}
                (Lookup::Authoritative(a), Lookup::Authoritative(b)) => {
                    prop_assert_eq!(
                        (a.rcode, a.answers, a.authorities, a.additionals, a.body),
                        (b.rcode, b.answers, b.authorities, b.additionals, b.body),
                        "{} type {}",
                        text,
                        qtype
                    );
                }
                (a, b) => prop_assert!(false, "{text} type {qtype}: {a:?} vs {b:?}"),
            }
        }
    }
    for apex in built.apexes() {
        let records = |t: &NameTable| {
            let mut all: Vec<(Vec<u8>, Vec<u8>)> = (t.zone_content(apex).unwrap().records)
                .map(|(o, r)| (o.into_owned(), r.to_vec()))
                .collect();
            all.sort();
            all
        };
        prop_assert_eq!(records(changed), records(built));
        prop_assert_eq!(changed.zone_size(apex), built.zone_size(apex));
    }
    Ok(())
}

fn combined(sources: &BTreeMap<usize, Vec<DeclarationSet>>) -> Combined {
    Combined::from(sources.values().flatten().cloned().collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn changed_tables_answer_as_rebuilt_ones(steps in prop::collection::vec(step(), 1..25)) {
        let zone = settings();
        let durable = durable();
        let mut hosts = Hosts::default();
        let mut sources: BTreeMap<usize, Vec<DeclarationSet>> = BTreeMap::new();
        let mut table = NameTable::build(&zone, 1, &[]).unwrap();
        let mut wanted_before = BTreeSet::new();
        let mut reserved_before = Reserved::new();
        for (i, step) in steps.iter().enumerate() {
            let serial = 2 + i as u32;
            match step {
                Step::Replace { source, first, second, keep_first } => {
                    let old = sources.remove(source).unwrap_or_default();
                    let kept = old.first().filter(|_| *keep_first).cloned();
                    let first = kept.unwrap_or_else(|| {
                        Arc::new(first.iter().enumerate().map(|(at, e)| declaration(*source, 0, at, e)).collect())
                    });
                    let second: DeclarationSet = Arc::new(
                        second.iter().enumerate().map(|(at, e)| declaration(*source, 1, at, e)).collect(),
                    );
                    sources.insert(*source, vec![first, second]);
                }
                Step::Drop(source) => {
                    sources.remove(source);
                }
            }
            let all = combined(&sources);
            let update = hosts.update(&all, &zone);
            // The allocator is asked about exactly the hosts a merge from scratch leaves
            // address-less in the served zones.
            let merged = Catalog::merge(all.iter());
            let unaddressed: BTreeSet<String> =
                merged.unaddressed.iter().filter(|h| zone.serves(h)).map(host_key).collect();
            prop_assert_eq!(&*hosts.wanted(), &unaddressed);
            // What the allocator looks at: the hosts that came or ceased to want a VIP, and
            // at least every address newly kept from it.
            let need: BTreeSet<String> = update.need.iter().cloned().collect();
            let flipped: BTreeSet<String> =
                wanted_before.symmetric_difference(&unaddressed).cloned().collect();
            prop_assert_eq!(need.len(), update.need.len(), "each host once");
            prop_assert_eq!(&need, &flipped);
            wanted_before = unaddressed;
            let reserved: Arc<Reserved> = hosts.reserved(&durable);
            for address in reserved.keys().filter(|a| !reserved_before.contains_key(*a)) {
                prop_assert!(update.reserved.contains(address), "{} newly reserved", address);
            }
            prop_assert!(*reserved == reserved_before || update.reservations);
            reserved_before = (*reserved).clone();
            let change = hosts.resolve(&update.touched, &[], update.allocation(), &durable, &reserved);
            let removed: Vec<&HostEntry> = change.removed.iter().collect();
            let added: Vec<&HostEntry> = change.added.iter().collect();
            table = table.apply(&zone, serial, &removed, &added).unwrap();
            same_answers(&table, &from_scratch(&all, &durable, serial))?;
        }
    }
}
