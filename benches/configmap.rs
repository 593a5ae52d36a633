//! ConfigMap store at scale, against the in-repo API simulator (release build, in process):
//! time and API writes to allocate 100,000 hosts, and time for a fresh reader to load them.
//!
//!     cargo bench --bench configmap [-- HOSTS]

#[path = "../tests/support/apiserver/mod.rs"]
#[allow(dead_code)] // the fault-injection half is for tests
mod apiserver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use globaldns::alloc::{ConfigMapStore, Policy, Store, operate};

const BATCH: usize = 10_000;

fn main() {
    let hosts: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(hosts));
}

async fn run(count: usize) {
    let sim = apiserver::ApiServer::start().await;
    let store = ConfigMapStore::new(sim.client().await, "istio-system");
    let policy = Arc::new(Policy {
        pools: vec!["240.0.0.0/4".parse().unwrap()],
        grace: Duration::from_secs(86400),
    });
    let hosts: Vec<String> = (0..count)
        .map(|i| format!("svc{i}.ns{}.global", i % 100))
        .collect();

    let (writes0, requests0) = (sim.writes(), sim.requests());
    let started = Instant::now();
    for batch in hosts.chunks(BATCH) {
        let batch = batch.to_vec();
        operate(&store, policy.clone(), move |alloc| {
            batch.iter().try_for_each(|h| alloc.ensure(h).map(drop))
        })
        .await
        .unwrap();
    }
    let allocate = started.elapsed();
    let (writes, requests) = (sim.writes() - writes0, sim.requests() - requests0);

    let started = Instant::now();
    let reader = ConfigMapStore::new(sim.client().await, "istio-system");
    let loaded = reader.load().await.unwrap();
    let load = started.elapsed();
    assert_eq!(loaded.records.len(), count);

    let sizes: Vec<usize> = sim
        .objects("", "configmaps", "istio-system")
        .iter()
        .map(|cm| {
            cm["data"].as_object().map_or(0, |d| {
                d.iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum()
            })
        })
        .collect();
    let largest = sizes.iter().max().copied().unwrap_or(0);
    let total: usize = sizes.iter().sum();

    println!("ConfigMap store, {count} hosts in batches of {BATCH}, API simulator in process");
    println!(
        "{:<44} {:>10.2} s  {:>10.0} allocations/s",
        "allocate",
        allocate.as_secs_f64(),
        count as f64 / allocate.as_secs_f64()
    );
    println!(
        "{:<44} {:>10}    ({} requests in all)",
        "API write requests", writes, requests
    );
    println!(
        "{:<44} {:>10.2} s",
        "fresh reader: load every shard",
        load.as_secs_f64()
    );
    println!(
        "{:<44} {:>10}    largest {} KiB, {} KiB in all",
        "shards",
        sizes.len(),
        largest / 1024,
        total / 1024
    );
}
