//! The ConfigMap allocation store against a real API server (tests/support/kube): sharding,
//! compare-and-swap, concurrent writers, damage, and counting requests through the API server's
//! audit log. Each test keeps its shards in a namespace of its own on the shared cluster; only
//! the injected 500s use the simulator, since a real server cannot fail on demand.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use globaldns::alloc::store::configmap::shard::{SHARDS, shard_name, shard_of};
use globaldns::alloc::{
    AllocState, Allocator, ConfigMapStore, Policy, Reserved, Store, ZoneSerial, operate,
};
use support::apiserver::ApiServer;
use support::kube::{Cluster, shared};

fn policy() -> Arc<Policy> {
    Arc::new(Policy {
        pools: vec!["240.0.0.0/4".parse().unwrap()],
        grace: Duration::from_secs(86400),
    })
}

/// A store on the shared cluster in namespace `ns` (created).
async fn store(ns: &str) -> ConfigMapStore {
    let cluster = shared(1)[0];
    cluster.ensure_namespace(ns);
    ConfigMapStore::new(cluster.client().await, ns)
}

fn cluster() -> &'static Cluster {
    shared(1)[0]
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

/// A shard's ConfigMap in `ns`, as JSON.
fn shard(ns: &str, index: usize) -> Option<serde_json::Value> {
    let out = cluster().kubectl(&[
        "get",
        "configmap",
        &shard_name(index),
        "-n",
        ns,
        "-o",
        "json",
    ]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn shard_data(ns: &str, index: usize) -> Option<BTreeMap<String, String>> {
    let cm = shard(ns, index)?;
    Some(serde_json::from_value(cm["data"].clone()).unwrap_or_default())
}

/// Sets `key` of a shard to `value` as an operator would (`kubectl patch`).
fn edit_shard(ns: &str, index: usize, key: &str, value: &str) {
    let patch = serde_json::json!({"data": {key: value}}).to_string();
    cluster().kubectl_ok(&[
        "patch",
        "configmap",
        &shard_name(index),
        "-n",
        ns,
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// Reads and writes the store made in `ns` so far: (gets and lists, creates and updates).
fn io(ns: &str) -> (usize, usize) {
    let requests = cluster().requests_in(ns);
    let count = |verbs: &[&str]| {
        requests
            .iter()
            .filter(|(v, _)| verbs.contains(&v.as_str()))
            .count()
    };
    (
        count(&["get", "list"]),
        count(&["create", "update", "patch"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocators_never_share_an_address() {
    let mut tasks = Vec::new();
    for w in 0..3 {
        let store = store("cm-concurrent").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                allocate(&store, vec![format!("w{w}-{i}.global")]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let state = store("cm-concurrent").await.load().await.unwrap();
    assert_eq!(state.records.len(), 300);
    assert_eq!(addresses(&state).len(), 300, "300 distinct VIPs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_thousand_hosts_fit_in_few_writes_and_small_shards() {
    let ns = "cm-forty-thousand";
    let store = store(ns).await;
    let hosts: Vec<String> = (0..40_000)
        .map(|i| format!("svc{i}.ns{}.global", i % 100))
        .collect();
    for batch in hosts.chunks(10_000) {
        allocate(&store, batch.to_vec()).await;
    }
    let writes = io(ns).1;
    // Each of the 64 shards is created once, then updated by a few of the four batches.
    assert!((64..=400).contains(&writes), "{writes} write requests");
    let mut total = 0;
    for index in 0..SHARDS {
        let data = shard_data(ns, index).expect("every shard is used");
        let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size < 1024 * 1024 / 2, "shard {index}: {size} bytes");
        total += data.len();
    }
    assert_eq!(total, 40_000);
    // A fresh reader gets them all back.
    let state = ConfigMapStore::new(cluster().client().await, ns)
        .load()
        .await
        .unwrap();
    assert_eq!(state.records.len(), 40_000);
    assert_eq!(addresses(&state).len(), 40_000);
}

/// A real API server cannot fail on demand: the simulator injects the 500s.
#[tokio::test]
async fn allocation_goes_through_injected_server_errors() {
    let sim = ApiServer::start().await;
    let store = ConfigMapStore::new(sim.client().await, "istio-system");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_compare_and_swap() {
    let ns = "cm-cas";
    let store = store(ns).await;
    allocate(&store, vec!["a.global".into()]).await;
    let index = shard_of("a.global");
    let in_shard = |prefix: &str| {
        (0..1000)
            .map(|i| format!("{prefix}{i}.global"))
            .find(|h| shard_of(h) == index)
            .unwrap()
    };
    let (ours, manual) = (in_shard("ours"), in_shard("manual"));
    // Between our read and our write, someone edits the same shard by hand (kubectl patch).
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (policy, calls2, manual2, ours2) = (policy(), calls.clone(), manual.clone(), ours.clone());
    let state = store
        .update(Box::new(move |s: &mut AllocState| {
            if calls2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                edit_shard(ns, index, &manual2, "240.0.0.5 pinned");
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
    let data = shard_data(ns, index).unwrap();
    assert_eq!(data.len(), 3, "{data:?}");
    assert_ne!(
        state.records[&ours].addresses[0],
        "240.0.0.5".parse::<IpAddr>().unwrap()
    );
}

/// A reader whose watch resumes after an API server restart on compacted etcd history gets a
/// real 410 Gone, relists and catches up. Its own cluster: the test stops the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_catch_up_after_a_restart_on_compacted_history() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let writer = ConfigMapStore::new(cluster.client().await, "istio-system");
    let reader = Arc::new(ConfigMapStore::new(cluster.client().await, "istio-system"));
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
            tokio::time::timeout(Duration::from_secs(45), rx.wait_for(|v| *v >= n))
                .await
                .is_ok()
        }
    };
    allocate(&writer, (0..10).map(|i| format!("a{i}.global")).collect()).await;
    assert!(
        wait_for(&mut rx, 10).await,
        "reader saw the first allocations"
    );
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c.stop_apiserver();
        c.compact_etcd();
        c.start_apiserver();
    })
    .await
    .unwrap();
    allocate(&writer, (0..10).map(|i| format!("b{i}.global")).collect()).await;
    assert!(wait_for(&mut rx, 20).await, "reader relisted and caught up");
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_transactions_are_decided_from_the_watched_shards() {
    let ns = "cm-unchanged";
    let writer = store(ns).await;
    let reader = store(ns).await;
    let first: Vec<String> = (0..10).map(|i| format!("a{i}.global")).collect();
    allocate(&writer, first.clone()).await;
    // Following the shards: the first change is the watch's initial list.
    tokio::time::timeout(Duration::from_secs(5), reader.changed())
        .await
        .unwrap();
    // Reads and writes, as the API server's audit log has them; watches are not counted.
    let before = io(ns);
    let seen = allocate(&reader, first.clone()).await;
    assert_eq!(seen.records.len(), 10);
    assert_eq!(io(ns), before, "nothing to write: no request");

    // Another writer's change reaches the cache before readers are told of it.
    allocate(&writer, vec!["b.global".into()]).await;
    tokio::time::timeout(Duration::from_secs(5), reader.changed())
        .await
        .unwrap();
    let before = io(ns);
    let seen = allocate(&reader, vec!["b.global".into()]).await;
    assert_eq!(seen.records.len(), 11);
    assert_eq!(io(ns), before);

    // A change re-reads under the lease, and the stored result is complete.
    let stored = allocate(&reader, vec!["c.global".into()]).await;
    let after = io(ns);
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} {after:?}"
    );
    assert_eq!(stored.records.len(), 12);
    assert_eq!(addresses(&stored).len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_shard_is_refused_without_data_loss() {
    let ns = "cm-damaged";
    let store = store(ns).await;
    let first = allocate(&store, vec!["a.global".into()]).await;
    let index = shard_of("a.global");
    let a_vip = first.records["a.global"].addresses[0];
    // Damage the shard: an entry with an unreadable value next to the good one.
    edit_shard(ns, index, "broken.global", "240.7.7.7;oops");
    let damaged = shard_data(ns, index).unwrap();
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
        shard_data(ns, index).unwrap(),
        damaged,
        "the damaged shard was not rewritten"
    );
}

/// The zones' serial travels with the allocations (an annotation on the first shard): stored,
/// read back by another replica, and kept when that shard's hosts are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_serial_is_shared_and_survives_host_writes() {
    let ns = "cm-serial";
    let (writer, reader) = (store(ns).await, store(ns).await);
    let given = ZoneSerial {
        serial: 2_000_000_000,
        content: "0123abcd".into(),
    };
    let set = given.clone();
    writer
        .update(Box::new(move |state: &mut AllocState| {
            state.zone_serial = Some(set.clone());
            Ok(true)
        }))
        .await
        .unwrap();
    let annotation = shard(ns, 0).unwrap()["metadata"]["annotations"]["globaldns.io/zone-serial"]
        .as_str()
        .map(str::to_string);
    assert_eq!(annotation.as_deref(), Some("2000000000 0123abcd"));
    assert_eq!(
        reader.load().await.unwrap().zone_serial.as_ref(),
        Some(&given)
    );

    // Hosts landing in the first shard rewrite it: the serial stays.
    let first_shard: Vec<String> = (0..2000)
        .map(|i| format!("s{i}.global"))
        .filter(|h| shard_of(h) == 0)
        .take(3)
        .collect();
    assert_eq!(first_shard.len(), 3);
    allocate(&reader, first_shard).await;
    assert_eq!(writer.load().await.unwrap().zone_serial, Some(given));
}

/// A store as a server keeps it: the writer lease kept while transactions come (`idle` apart at
/// most; for as long as a lease may be kept, longer than a test's transactions take), and its
/// shard watch running.
async fn holding_store(ns: &str, idle: Duration) -> ConfigMapStore {
    let store = store(ns).await.holding_lease(Duration::from_secs(7), idle);
    tokio::time::timeout(Duration::from_secs(5), store.changed())
        .await
        .expect("the shard watch lists");
    store
}

/// Lists of the shards the store made in `ns` so far (the consistent read that costs the most).
fn shard_lists(ns: &str) -> usize {
    (cluster().requests_in(ns).iter())
        .filter(|(verb, resource)| verb == "list" && resource == "configmaps")
        .count()
}

fn lease_holder(ns: &str) -> String {
    let holder = cluster().kubectl_ok(&[
        "get",
        "lease",
        "globaldns-allocator",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    holder.trim().to_string()
}

/// A kept lease: the transactions that follow the first write their shard and nothing else,
/// the lease goes once they stop, and the next writer (another replica) takes it and goes on
/// from its watch of the shards, without listing them, because the lease says which write
/// was the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_writes_without_reading() {
    let ns = "cm-kept";
    let first = holding_store(ns, Duration::from_millis(500)).await;
    allocate(&first, vec!["a0.global".into()]).await;
    let before = io(ns);
    for i in 1..6 {
        allocate(&first, vec![format!("a{i}.global")]).await;
    }
    assert_eq!(
        io(ns),
        (before.0, before.1 + 5),
        "one write per transaction, no read, while the lease is kept"
    );
    assert!(!lease_holder(ns).is_empty(), "the lease is kept");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lease_holder(ns), "", "given up once idle");

    let second = holding_store(ns, Duration::from_millis(500)).await;
    let lists = shard_lists(ns);
    let stored = allocate(&second, vec!["b.global".into()]).await;
    assert_eq!(shard_lists(ns), lists, "the watch held the last write");
    assert_eq!(stored.records.len(), 7);
    assert_eq!(addresses(&stored).len(), 7);
    second.close().await;
    assert_eq!(lease_holder(ns), "", "closing gives the lease up");
}

/// While a writer keeps the lease, an operator edits a shard it is not writing (pinning a host
/// to the address the writer's next host would get). The writer's watch sees a write that is not
/// its own, so it reads again instead of deciding on what it read before: no address twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_notices_writes_it_did_not_make() {
    let ns = "cm-kept-foreign";
    // The address "next" gets in an empty store: the first candidate of its hash.
    let candidate = allocate(&store("cm-kept-scratch").await, vec!["next.global".into()])
        .await
        .records["next.global"]
        .addresses[0];
    let elsewhere = |prefix: &str| {
        (0..1000)
            .map(|i| format!("{prefix}{i}.global"))
            .find(|h| shard_of(h) != shard_of("next.global"))
            .unwrap()
    };
    let first = elsewhere("a");
    let writer = holding_store(ns, Duration::from_secs(20)).await;
    allocate(&writer, vec![first.clone()]).await;
    // In the shard just written (so it exists), not in the one the writer writes next.
    let pinned = (0..1000)
        .map(|i| format!("manual{i}.global"))
        .find(|h| shard_of(h) == shard_of(&first))
        .unwrap();
    let seen = writer.changed();
    edit_shard(
        ns,
        shard_of(&pinned),
        &pinned,
        &format!("{candidate} pinned"),
    );
    tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .unwrap();
    assert!(!lease_holder(ns).is_empty(), "the lease is still kept");
    let stored = allocate(&writer, vec!["next.global".into()]).await;
    assert!(stored.records.contains_key(&pinned), "the edit was read");
    assert_ne!(stored.records["next.global"].addresses[0], candidate);
    assert_eq!(addresses(&stored).len(), 3);
    writer.close().await;
}

/// Writers that keep the lease, taking turns with it, in a pool so small that addresses must
/// collide unless every writer sees every other's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_keeping_the_lease_never_share_an_address() {
    let ns = "cm-kept-concurrent";
    let small = Arc::new(Policy {
        pools: vec!["240.0.0.0/26".parse().unwrap()],
        grace: Duration::from_secs(86400),
    });
    let mut tasks = Vec::new();
    for w in 0..3 {
        let store = holding_store(ns, Duration::from_millis(100)).await;
        let policy = small.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let host = format!("w{w}-{i}.global");
                operate(&store, policy.clone(), move |alloc| {
                    alloc.ensure(&host).map(drop)
                })
                .await
                .unwrap();
                if i % 5 == 4 {
                    // Gaps longer than the idle time: the lease changes hands.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            store.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let state = store(ns).await.load().await.unwrap();
    assert_eq!(state.records.len(), 45);
    assert_eq!(addresses(&state).len(), 45, "45 distinct VIPs");
}
