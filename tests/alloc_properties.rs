//! Property tests of the allocator: random sequences of declare / undeclare / pin / release /
//! restart / time passing, checked against the invariants VIPs must keep.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use globaldns::alloc::{
    AllocState, Allocator, FileStore, Holders, Policy, Reserved, Scope, Store, StoreError, check,
    reconcile,
};
use proptest::prelude::*;

const HOSTS: usize = 40;
const GRACE: u64 = 100;

#[derive(Clone, Debug)]
enum Op {
    Declare(usize),
    Undeclare(usize),
    Pin(usize, u8),
    Release(usize),
    Restart,
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..HOSTS).prop_map(Op::Declare),
        2 => (0..HOSTS).prop_map(Op::Undeclare),
        1 => (0..HOSTS, 1u8..31).prop_map(|(h, a)| Op::Pin(h, a)),
        1 => (0..HOSTS).prop_map(Op::Release),
        1 => Just(Op::Restart),
        1 => (1u64..80).prop_map(Op::Wait),
    ]
}

fn host(i: usize) -> String {
    format!("h{i}.global")
}

/// Small pools, so exhaustion, reuse after grace and collisions all happen.
fn policy() -> Policy {
    Policy {
        pools: vec![
            "10.0.0.0/27".parse().unwrap(),
            "2001:2::/123".parse().unwrap(),
        ],
        grace: Duration::from_secs(GRACE),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn vip_invariants_hold(ops in proptest::collection::vec(op(), 1..60)) {
        let policy = policy();
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        let rt = rt();
        let mut state = AllocState::default();
        let mut declared: BTreeSet<String> = BTreeSet::new();
        let mut now = 1_000u64;
        // Addresses a host held, and until when they are promised to it.
        let mut promised: HashMap<String, (Vec<IpAddr>, u64)> = HashMap::new();
        // The publisher's way: the index of who holds what is carried from one transaction to
        // the next (whatever changed the state in between), and a change to one host looks at
        // that host only.
        let mut holders = Holders::default();

        for op in ops {
            let mut moved_by_operator = None;
            let mut scope = Scope::All;
            match op {
                Op::Declare(h) | Op::Undeclare(h) => {
                    if matches!(op, Op::Declare(_)) {
                        declared.insert(host(h));
                    } else {
                        declared.remove(&host(h));
                    }
                    scope = Scope::Changed { hosts: vec![host(h)], addresses: Vec::new() };
                }
                Op::Pin(h, last) => {
                    let ip: IpAddr = format!("10.0.0.{last}").parse().unwrap();
                    let none = Reserved::new();
                    let result = Allocator::new(&policy, &mut state, &none, now).pin(&host(h), ip, true);
                    if result.is_ok() { moved_by_operator = Some(host(h)); }
                }
                Op::Release(h) => {
                    let none = Reserved::new();
                    let _ = Allocator::new(&policy, &mut state, &none, now).release(&host(h));
                }
                Op::Restart => {
                    let saved = state.clone();
                    let written = rt.block_on(store.update(Box::new(move |s: &mut AllocState| {
                        *s = saved.clone();
                        Ok(true)
                    }))).unwrap();
                    let reloaded = rt.block_on(FileStore::new(store.path()).load()).unwrap();
                    prop_assert_eq!(&reloaded, &state);
                    prop_assert_eq!(&written, &state);
                    state = reloaded;
                }
                Op::Wait(secs) => now += secs,
            }
            let none = Reserved::new();
            reconcile(&mut state, &policy, &declared, &none, now, true, &scope, &mut holders);

            // 1. No address is held by two hosts.
            let mut owners: HashMap<IpAddr, &String> = HashMap::new();
            for (h, r) in &state.records {
                for a in &r.addresses {
                    prop_assert!(owners.insert(*a, h).is_none(), "{} shared", a);
                }
            }
            // 2. Every address is inside a pool, at most one per family.
            prop_assert!(check(&policy, &state).is_empty(), "{:?}", check(&policy, &state));
            // 3. Declared hosts hold an address of each family unless the pools are full.
            for h in &declared {
                let r = &state.records.get(h);
                prop_assert!(r.is_some_and(|r| r.released_at.is_none()) || full(&policy, &state), "{} unallocated", h);
            }
            // 4. A host keeps its addresses while live or within grace.
            for (h, (before, until)) in &promised {
                if now >= *until || moved_by_operator.as_ref() == Some(h) {
                    continue;
                }
                if let Some(r) = state.records.get(h) {
                    for a in before {
                        prop_assert!(r.addresses.contains(a), "{} lost {} within grace", h, a);
                    }
                } else {
                    prop_assert!(false, "{} dropped within grace", h);
                }
            }
            promised = state
                .records
                .iter()
                .map(|(h, r)| {
                    let until = match (r.pinned, r.released_at) {
                        (false, Some(t)) => t + GRACE,
                        _ => u64::MAX,
                    };
                    (h.clone(), (r.addresses.clone(), until))
                })
                .collect();
        }
    }
}

fn full(policy: &Policy, state: &AllocState) -> bool {
    globaldns::alloc::usage(policy, state)
        .iter()
        .any(|u| u.used >= u.capacity)
}

#[test]
fn a_failed_mutation_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("state.json"));
    let rt = rt();
    let p = policy();
    let first = rt
        .block_on(store.update(Box::new(move |s: &mut AllocState| {
            let none = Reserved::new();
            Allocator::new(&p, s, &none, 0).allocate_pinned("a.global")?;
            Ok(true)
        })))
        .unwrap();
    let p = policy();
    let err = rt
        .block_on(store.update(Box::new(move |s: &mut AllocState| {
            let none = Reserved::new();
            let mut alloc = Allocator::new(&p, s, &none, 0);
            alloc.allocate_pinned("b.global")?;
            alloc.pin("c.global", "192.0.2.1".parse().unwrap(), false)?;
            Ok(true)
        })))
        .unwrap_err();
    assert!(matches!(err, StoreError::Alloc(_)));
    assert_eq!(
        rt.block_on(store.load()).unwrap(),
        first,
        "b.global was not stored either"
    );
}
