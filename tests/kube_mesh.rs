//! The many-source mesh on real API servers: the smaller run of the scale benchmark, to show
//! that ServiceEntries watched in clusters take the path files take (tests/bench/mesh.sh runs
//! the big one on files). CLUSTERS real clusters (etcd and kube-apiserver with Istio's CRDs,
//! see tests/support/kube; default 10) each hold ENTRIES ServiceEntries (default 10,000) of the
//! same ENTRIES hosts, so every host is declared by every cluster, a third of them without
//! addresses; the VIPs are stored in the first cluster's ConfigMaps, as by default. Prints the
//! time to start and fill the clusters, ready (start until the last explicit and the last
//! address-less host answer), resident memory, and one change at a time (CHANGES, default 50: a
//! ServiceEntry created in one of the clusters, from the create request until DNS answers it).
//!
//! A benchmark, not a test: it runs only when asked for, by `tests/bench/kube_mesh.sh`.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use globaldns::source::kube::service_entry_resource;
use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use support::kube::{Cluster, globaldns, kubeconfig, service_entry_yaml};
use support::{Proto, answer_ips, query};

const NAMESPACES: usize = 10;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn host(h: usize) -> String {
    format!("svc{h}.ns{}.global", h % NAMESPACES)
}

/// Host `h`'s explicit address; every third host has none.
fn address(h: usize) -> Option<String> {
    (!h.is_multiple_of(3))
        .then(|| format!("10.{}.{}.{}", 100 + h / 65536, (h / 256) % 256, h % 256))
}

/// A ServiceEntry as the other cluster tests write it ([`service_entry_yaml`]), for the API.
fn service_entry(name: &str, ns: &str, host: &str, address: Option<String>) -> DynamicObject {
    let addresses: Vec<&str> = address.iter().map(String::as_str).collect();
    serde_saphyr::from_str(&service_entry_yaml("v1", ns, name, &[host], &addresses)).unwrap()
}

fn service_entries(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &service_entry_resource("v1"))
}

/// Creates the namespaces and `entries` ServiceEntries in `cluster`, 32 requests at a time.
async fn fill(cluster: &Cluster, entries: usize) {
    let client = cluster.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..NAMESPACES {
        let ns = serde_json::from_value(json!({"metadata": {"name": format!("ns{n}")}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    futures::stream::iter(0..entries)
        .map(|h| {
            let ns = format!("ns{}", h % NAMESPACES);
            let entry = service_entry(&format!("svc{h}"), &ns, &host(h), address(h));
            let api = service_entries(&client, &ns);
            async move { api.create(&PostParams::default(), &entry).await.unwrap() }
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
}

fn answers(server: &support::GlobalDns, name: &str) -> bool {
    !answer_ips(&query(server.addr, name, RecordType::A, Proto::Udp)).is_empty()
}

fn mib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
#[ignore = "a benchmark: tests/bench/kube_mesh.sh"]
fn many_real_clusters() {
    let (count, entries) = (setting("CLUSTERS", 10), setting("ENTRIES", 10_000));
    let changes = setting("CHANGES", 50);
    let row = |what: &str, value: String| println!("{what:<56} {value:>14}");

    let began = Instant::now();
    let clusters: Vec<Cluster> = std::thread::scope(|s| {
        let started: Vec<_> = (0..count).map(|_| s.spawn(Cluster::start)).collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let up = began.elapsed();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let filling = Instant::now();
    runtime.block_on(futures::future::join_all(
        clusters.iter().map(|c| fill(c, entries)),
    ));
    let filled = filling.elapsed();

    let names: Vec<String> = (0..count).map(|i| format!("c{i}")).collect();
    let contexts: Vec<(&str, &Cluster)> = names.iter().map(String::as_str).zip(&clusters).collect();
    let dir = tempfile::tempdir().unwrap();
    let last_explicit = (0..entries).rev().find(|h| !h.is_multiple_of(3)).unwrap();
    let last_vip = (0..entries).rev().find(|h| h.is_multiple_of(3)).unwrap();
    let starting = Instant::now();
    let server = globaldns(
        dir.path(),
        &kubeconfig(&contexts, "c0"),
        &["--sync-timeout", "120"],
    );
    let deadline = starting + Duration::from_secs(600);
    while !(answers(&server, &host(last_explicit)) && answers(&server, &host(last_vip))) {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = starting.elapsed();
    let rss = mib(server.pid(), "VmRSS:");

    // One client per cluster, connected before the changes are timed.
    let clients: Vec<kube::Client> = runtime.block_on(futures::future::join_all(
        clusters.iter().map(|c| async move {
            let client = c.client().await;
            service_entries(&client, "ns0")
                .list(&Default::default())
                .await
                .unwrap();
            client
        }),
    ));
    let (mut latencies, mut created) = (Vec::new(), Vec::new());
    for k in 0..changes {
        let client = &clients[k % count];
        let name = format!("chg{k}.ns0.global");
        let address = (!k.is_multiple_of(4)).then(|| format!("10.200.{}.{}", k / 250, k % 250 + 1));
        let entry = service_entry(&format!("chg{k}"), "ns0", &name, address);
        let sent = Instant::now();
        runtime.block_on(async {
            let api = service_entries(client, "ns0");
            api.create(&PostParams::default(), &entry).await.unwrap();
        });
        created.push(sent.elapsed().as_secs_f64() * 1000.0);
        while !answers(&server, &name) {
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "{name} never answered"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    created.sort_by(f64::total_cmp);
    if let Ok(path) = std::env::var("SERVER_LOG") {
        std::fs::copy(&server.log, path).unwrap();
    }

    println!(
        "\n{count} real clusters x {entries} ServiceEntries ({} declarations, {entries} hosts), VIPs in ConfigMaps",
        count * entries
    );
    row(
        "clusters started (in parallel)",
        format!("{:.1} s", up.as_secs_f64()),
    );
    row(
        "ServiceEntries created (32 at a time per cluster)",
        format!("{:.1} s", filled.as_secs_f64()),
    );
    row(
        "ready (start until every name answers)",
        format!("{:.2} s", ready.as_secs_f64()),
    );
    row(
        "resident memory when ready / peak",
        format!("{rss} / {} MiB", mib(server.pid(), "VmHWM:")),
    );
    row(
        "  of which the create request, p50 / max",
        format!(
            "{:.1} / {:.1} ms",
            percentile(&created, 0.5),
            percentile(&created, 1.0)
        ),
    );
    for (p, v) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99"), (1.0, "max")] {
        row(
            &format!("one change at a time ({changes}): answered after, {v}"),
            format!("{:.1} ms", percentile(&latencies, p)),
        );
    }
}
