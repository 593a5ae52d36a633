//! The ConfigMap allocation store against the API simulator.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use globaldns::alloc::store::configmap::shard::{SHARDS, shard_name, shard_of};
use globaldns::alloc::{AllocState, Allocator, ConfigMapStore, Policy, Reserved, Store, operate};
use support::apiserver::ApiServer;

fn policy() -> Arc<Policy> {
    Arc::new(Policy {
        pools: vec!["240.0.0.0/4".parse().unwrap()],
        grace: Duration::from_secs(86400),
    })
}

async fn store(sim: &ApiServer) -> ConfigMapStore {
    ConfigMapStore::new(sim.client().await, "istio-system")
}

/// Allocates `hosts` in one transaction; returns the stored state.
async fn allocate(store: &ConfigMapStore, hosts: Vec<String>) -> AllocState {
    operate(store, policy(), move |alloc| {
        hosts.iter().try_for_each(|h| alloc.ensure(h).map(drop))
    })
    .await
    .unwrap()
}

fn addresses(state: &AllocState) -> BTreeSet<IpAddr> {
    state
        .records
        .values()
        .flat_map(|r| r.addresses.clone())
        .collect()
}

fn shard_data(sim: &ApiServer, index: usize) -> Option<BTreeMap<String, String>> {
    let cm = sim.object("", "configmaps", "istio-system", &shard_name(index))?;
    Some(serde_json::from_value(cm["data"].clone()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocators_never_share_an_address() {
    let sim = ApiServer::start().await;
    let mut tasks = Vec::new();
    for w in 0..3 {
        let store = store(&sim).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                allocate(&store, vec![format!("w{w}-{i}.global")]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let state = store(&sim).await.load().await.unwrap();
    assert_eq!(state.records.len(), 300);
    assert_eq!(addresses(&state).len(), 300, "300 distinct VIPs");
}

#[tokio::test]
async fn forty_thousand_hosts_fit_in_few_writes_and_small_shards() {
    let sim = ApiServer::start().await;
    let store = store(&sim).await;
    let before = sim.writes();
    let hosts: Vec<String> = (0..40_000)
        .map(|i| format!("svc{i}.ns{}.global", i % 100))
        .collect();
    for batch in hosts.chunks(10_000) {
        allocate(&store, batch.to_vec()).await;
    }
    let writes = sim.writes() - before;
    assert!(writes <= 400, "{writes} write requests");
    let mut total = 0;
    for index in 0..SHARDS {
        let data = shard_data(&sim, index).expect("every shard is used");
        let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size < 1024 * 1024 / 2, "shard {index}: {size} bytes");
        total += data.len();
    }
    assert_eq!(total, 40_000);
    // A fresh reader gets them all back.
    let state = ConfigMapStore::new(sim.client().await, "istio-system")
        .load()
        .await
        .unwrap();
    assert_eq!(state.records.len(), 40_000);
    assert_eq!(addresses(&state).len(), 40_000);
}

#[tokio::test]
async fn allocation_goes_through_injected_server_errors() {
    let sim = ApiServer::start().await;
    let store = store(&sim).await;
    allocate(&store, vec!["a.global".into()]).await;
    sim.fail_next(4);
    let state = allocate(&store, vec!["b.global".into(), "c.global".into()]).await;
    assert_eq!(state.records.len(), 3);
    // With the API down for good, a clear error instead of a hang or a panic.
    sim.fail_next(1000);
    let err = operate(&store, policy(), |alloc| alloc.ensure("d.global").map(drop))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unavailable") && err.to_string().contains("500"),
        "{err}"
    );
}

#[tokio::test]
async fn writes_are_compare_and_swap() {
    let sim = Arc::new(ApiServer::start().await);
    let store = store(&sim).await;
    allocate(&store, vec!["a.global".into()]).await;
    let index = shard_of("a.global");
    let in_shard = |prefix: &str| {
        (0..1000)
            .map(|i| format!("{prefix}{i}.global"))
            .find(|h| shard_of(h) == index)
            .unwrap()
    };
    let (ours, manual) = (in_shard("ours"), in_shard("manual"));
    // Between our read and our write, someone edits the same shard by hand (kubectl edit).
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (policy, sim2, calls2, manual2, ours2) = (
        policy(),
        sim.clone(),
        calls.clone(),
        manual.clone(),
        ours.clone(),
    );
    let state = store
        .update(Box::new(move |s: &mut AllocState| {
            if calls2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                let mut cm = sim2
                    .object("", "configmaps", "istio-system", &shard_name(index))
                    .unwrap();
                cm["data"][manual2.as_str()] = serde_json::json!("240.0.0.5 pinned");
                sim2.put_object("", "configmaps", "istio-system", cm);
            }
            let none = Reserved::new();
            let mut alloc = Allocator::new(&policy, s, &none, 0);
            alloc.ensure(&ours2)?;
            Ok(alloc.changed())
        }))
        .await
        .unwrap();
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the conflict made it decide again"
    );
    assert!(
        state.records.contains_key(&manual),
        "the manual edit survived"
    );
    assert!(state.records.contains_key(&ours));
    let data = shard_data(&sim, index).unwrap();
    assert_eq!(data.len(), 3, "{data:?}");
    assert_ne!(
        state.records[&ours].addresses[0],
        "240.0.0.5".parse::<IpAddr>().unwrap()
    );
}

#[tokio::test]
async fn readers_catch_up_after_dropped_watches_and_410() {
    let sim = ApiServer::start().await;
    let writer = store(&sim).await;
    let reader = Arc::new(store(&sim).await);
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let r = reader.clone();
    let follower = tokio::spawn(async move {
        loop {
            r.changed().await;
            let n = r.load().await.map(|s| s.records.len()).unwrap_or(0);
            let _ = tx.send(n);
        }
    });
    let wait_for = |rx: &mut tokio::sync::watch::Receiver<usize>, n: usize| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v >= n))
                .await
                .is_ok()
        }
    };
    allocate(&writer, (0..10).map(|i| format!("a{i}.global")).collect()).await;
    assert!(
        wait_for(&mut rx, 10).await,
        "reader saw the first allocations"
    );
    sim.drop_watches();
    sim.compact();
    allocate(&writer, (0..10).map(|i| format!("b{i}.global")).collect()).await;
    assert!(wait_for(&mut rx, 20).await, "reader relisted and caught up");
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_transactions_are_decided_from_the_watched_shards() {
    let sim = ApiServer::start().await;
    let writer = store(&sim).await;
    let reader = store(&sim).await;
    let first: Vec<String> = (0..10).map(|i| format!("a{i}.global")).collect();
    allocate(&writer, first.clone()).await;
    // Following the shards: the first change is the watch's initial list.
    tokio::time::timeout(Duration::from_secs(5), reader.changed())
        .await
        .unwrap();
    // Reads and writes: the watch's own requests are not what is measured.
    let io = || (sim.reads(), sim.writes());
    let before = io();
    let seen = allocate(&reader, first.clone()).await;
    assert_eq!(seen.records.len(), 10);
    assert_eq!(io(), before, "nothing to write: no request");

    // Another writer's change reaches the cache before readers are told of it.
    allocate(&writer, vec!["b.global".into()]).await;
    tokio::time::timeout(Duration::from_secs(5), reader.changed())
        .await
        .unwrap();
    let before = io();
    let seen = allocate(&reader, vec!["b.global".into()]).await;
    assert_eq!(seen.records.len(), 11);
    assert_eq!(io(), before);

    // A change re-reads under the lease, and the stored result is complete.
    let stored = allocate(&reader, vec!["c.global".into()]).await;
    assert!(sim.reads() > before.0 && sim.writes() > before.1);
    assert_eq!(stored.records.len(), 12);
    assert_eq!(addresses(&stored).len(), 12);
}

#[tokio::test]
async fn a_damaged_shard_is_refused_without_data_loss() {
    let sim = ApiServer::start().await;
    let store = store(&sim).await;
    let first = allocate(&store, vec!["a.global".into()]).await;
    let index = shard_of("a.global");
    let a_vip = first.records["a.global"].addresses[0];
    // Damage the shard: an entry with an unreadable value next to the good one.
    let mut cm = sim
        .object("", "configmaps", "istio-system", &shard_name(index))
        .unwrap();
    cm["data"]["broken.global"] = serde_json::json!("240.7.7.7;oops");
    sim.put_object("", "configmaps", "istio-system", cm);
    let damaged = shard_data(&sim, index).unwrap();

    let state = store.load().await.unwrap();
    assert!(
        !state.records.contains_key("a.global"),
        "hosts of the damaged shard are not trusted"
    );
    assert!(
        state.unreadable.contains(&a_vip)
            && state.unreadable.contains(&"240.7.7.7".parse().unwrap())
    );

    // A host that belongs in the damaged shard is not stored; one elsewhere is, and gets
    // none of the damaged shard's addresses.
    let same: String = (0..500)
        .map(|i| format!("s{i}.global"))
        .find(|h| shard_of(h) == index)
        .unwrap();
    let other: String = (0..500)
        .map(|i| format!("o{i}.global"))
        .find(|h| shard_of(h) != index)
        .unwrap();
    let after = allocate(&store, vec![same.clone(), other.clone()]).await;
    assert!(!after.records.contains_key(&same));
    assert!(after.records.contains_key(&other));
    assert!(
        !after
            .unreadable
            .contains(&after.records[&other].addresses[0])
    );
    assert_eq!(
        shard_data(&sim, index).unwrap(),
        damaged,
        "the damaged shard was not rewritten"
    );
}
