//! The server watching ServiceEntries across several clusters (API simulators), with the
//! allocations in the primary's ConfigMaps.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;
use support::apiserver::{ApiServer, kubeconfig};
use support::*;

const WITHIN: Duration = Duration::from_secs(5);

fn remove_entry(sim: &ApiServer, ns: &str, name: &str) {
    sim.remove_object("networking.istio.io", "serviceentries", ns, name);
}

fn ips(server: &GlobalDns, name: &str) -> Vec<String> {
    answer_ips(&query(server.addr, name, RecordType::A, Proto::Udp))
}

fn nxdomain(server: &GlobalDns, name: &str) -> bool {
    query(server.addr, name, RecordType::A, Proto::Udp)
        .metadata
        .response_code
        == ResponseCode::NXDomain
}

/// A server on `kubeconfig` and an empty zones directory.
fn start(dir: &Path, kubeconfig: &Path) -> GlobalDns {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    GlobalDns::start(
        &zones,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--sync-timeout",
            "10",
        ],
    )
}

fn write_kubeconfig(dir: &Path, clusters: &[(&str, &ApiServer)]) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let entries: Vec<(&str, std::net::SocketAddr)> =
        clusters.iter().map(|(n, s)| (*n, s.addr)).collect();
    std::fs::write(&path, kubeconfig(&entries, clusters[0].0)).unwrap();
    path
}

fn stored_hosts(sim: &ApiServer) -> BTreeSet<String> {
    sim.objects("", "configmaps", "istio-system")
        .into_iter()
        .flat_map(|cm| {
            cm["data"]
                .as_object()
                .map(|d| d.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clusters_resolve_and_share_one_vip_per_host() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    a.put_service_entry(
        "default",
        "reviews",
        &["reviews.default.global"],
        &["240.0.0.3"],
    );
    b.put_service_entry("prod", "ratings", &["ratings.prod.global"], &["240.0.0.4"]);
    a.put_service_entry("foo", "sleep", &["sleep.foo.global"], &[]);
    b.put_service_entry("foo", "sleep-too", &["sleep.foo.global"], &[]);
    // Conflicting explicit addresses: the first in (cluster, namespace, name) order wins.
    b.put_service_entry(
        "default",
        "reviews-b",
        &["reviews.default.global"],
        &["240.0.0.99"],
    );
    let dir = tempfile::tempdir().unwrap();
    // The zones/ files keep working next to the clusters.
    std::fs::create_dir_all(dir.path().join("zones")).unwrap();
    let file_entry = support::service_entry("f", &["from-file.global"], &["240.0.0.9"]);
    std::fs::write(dir.path().join("zones/file.yaml"), file_entry).unwrap();
    let server = start(
        dir.path(),
        &write_kubeconfig(dir.path(), &[("a", &a), ("b", &b)]),
    );
    assert!(eventually(WITHIN, || ips(&server, "from-file.global.")
        == ["240.0.0.9"]));
    assert!(eventually(WITHIN, || ips(
        &server,
        "reviews.default.global."
    ) == ["240.0.0.3"]));
    assert!(eventually(WITHIN, || ips(&server, "ratings.prod.global.")
        == ["240.0.0.4"]));
    assert!(eventually(WITHIN, || ips(&server, "sleep.foo.global.")
        .len()
        == 1));
    // Recorded in the primary's ConfigMaps only.
    assert!(stored_hosts(&a).contains("sleep.foo.global"));
    assert!(stored_hosts(&b).is_empty());
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("every source has synced")));
    assert!(
        server
            .log_text()
            .contains("host declared with different addresses")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_context_moves_the_allocations() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    a.put_service_entry("foo", "sleep", &["sleep.foo.global"], &[]);
    b.ensure_namespace("mesh-dns");
    let dir = tempfile::tempdir().unwrap();
    let kc = write_kubeconfig(dir.path(), &[("a", &a), ("b", &b)]);
    std::fs::create_dir_all(dir.path().join("zones")).unwrap();
    let args = [
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--store-context",
        "b",
        "--namespace",
        "mesh-dns",
    ];
    let server = GlobalDns::start(&dir.path().join("zones"), &args);
    assert!(eventually(WITHIN, || ips(&server, "sleep.foo.global.")
        .len()
        == 1));
    let shards = |sim: &ApiServer, ns: &str| sim.objects("", "configmaps", ns).len();
    assert_eq!(shards(&b, "mesh-dns"), 1);
    assert_eq!(shards(&a, "istio-system") + shards(&a, "mesh-dns"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_changes_show_within_seconds() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &write_kubeconfig(dir.path(), &[("a", &a), ("b", &b)]),
    );
    assert!(nxdomain(&server, "web.foo.global."));
    b.put_service_entry("foo", "web", &["web.foo.global"], &["240.0.0.50"]);
    assert!(
        eventually(WITHIN, || ips(&server, "web.foo.global.") == ["240.0.0.50"]),
        "added"
    );
    b.put_service_entry("foo", "web", &["web.foo.global"], &["240.0.0.51"]);
    assert!(
        eventually(WITHIN, || ips(&server, "web.foo.global.") == ["240.0.0.51"]),
        "changed"
    );
    // A malformed entry is skipped with a log line; everything else keeps resolving.
    b.put_service_entry("foo", "bad", &["bad.foo.global"], &["not-an-ip"]);
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("skipping ServiceEntry")));
    assert!(nxdomain(&server, "bad.foo.global."));
    // So is one whose fields have the wrong type; the watch goes on.
    let typed = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "port", "namespace": "foo"},
        "spec": {"hosts": ["port.foo.global"], "addresses": ["240.0.0.52"], "ports": [{"number": 70000}]}});
    b.put_object("networking.istio.io", "serviceentries", "foo", typed);
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("expected u16")));
    assert!(nxdomain(&server, "port.foo.global."));
    b.put_service_entry("foo", "later", &["later.foo.global"], &["240.0.0.53"]);
    assert!(eventually(WITHIN, || ips(&server, "later.foo.global.")
        == ["240.0.0.53"]));
    remove_entry(&b, "foo", "web");
    assert!(
        eventually(WITHIN, || nxdomain(&server, "web.foo.global.")),
        "deleted"
    );
    // Deleted everywhere: gone, but its VIP is held for the grace period.
    a.put_service_entry("foo", "auto", &["auto.foo.global"], &[]);
    assert!(eventually(WITHIN, || ips(&server, "auto.foo.global.")
        .len()
        == 1));
    let vip = ips(&server, "auto.foo.global.");
    remove_entry(&a, "foo", "auto");
    assert!(eventually(WITHIN, || nxdomain(&server, "auto.foo.global.")));
    b.put_service_entry("foo", "auto-again", &["auto.foo.global"], &[]);
    assert!(
        eventually(WITHIN, || ips(&server, "auto.foo.global.") == vip),
        "same VIP within grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_secrets_add_and_remove_clusters() {
    let (a, c) = (ApiServer::start().await, ApiServer::start().await);
    c.put_service_entry(
        "default",
        "only-c",
        &["only-c.default.global"],
        &["240.0.0.30"],
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &write_kubeconfig(dir.path(), &[("a", &a)]));
    assert!(nxdomain(&server, "only-c.default.global."));
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-c", "namespace": "istio-system", "labels": {"istio/multiCluster": "true"}},
        "stringData": {"cluster-c": c.kubeconfig("cluster-c"), "broken": "clusters: [unclosed", "a": c.kubeconfig("dup")},
    });
    a.put_object("", "secrets", "istio-system", secret);
    assert!(
        eventually(WITHIN, || ips(&server, "only-c.default.global.")
            == ["240.0.0.30"]),
        "third cluster added"
    );
    let log = server.log_text();
    assert!(
        log.contains("bad kubeconfig in remote secret") && log.contains("broken"),
        "{log}"
    );
    assert!(
        log.contains("duplicate cluster ID"),
        "cluster ID `a` is taken by the kubeconfig context"
    );
    a.remove_object("", "secrets", "istio-system", "istio-remote-secret-c");
    assert!(
        eventually(WITHIN, || nxdomain(&server, "only-c.default.global.")),
        "its names go with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_watches_and_410_relist_and_catch_up() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    b.put_service_entry("ns", "old", &["old.ns.global"], &["240.0.0.60"]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &write_kubeconfig(dir.path(), &[("a", &a), ("b", &b)]),
    );
    assert!(eventually(WITHIN, || ips(&server, "old.ns.global.") == ["240.0.0.60"]));
    // The watch drops and its next attempts fail; meanwhile history moves on and is compacted.
    b.fail_next(2);
    b.drop_watches();
    remove_entry(&b, "ns", "old");
    b.put_service_entry("ns", "new", &["new.ns.global"], &["240.0.0.61"]);
    b.compact();
    // kube-runtime backs off after each failure (0.8 s, doubling), so recovery takes seconds.
    let within = Duration::from_secs(20);
    assert!(
        eventually(within, || ips(&server, "new.ns.global.") == ["240.0.0.61"]),
        "caught up: {}",
        server.log_text()
    );
    assert!(
        eventually(within, || nxdomain(&server, "old.ns.global.")),
        "deletion seen through the relist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_cluster_keeps_its_last_known_names() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    a.put_service_entry("ns", "on-a", &["on-a.ns.global"], &["240.0.0.70"]);
    b.put_service_entry("ns", "on-b", &["on-b.ns.global"], &["240.0.0.71"]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &write_kubeconfig(dir.path(), &[("a", &a), ("b", &b)]),
    );
    assert!(eventually(WITHIN, || ips(&server, "on-b.ns.global.") == ["240.0.0.71"]));
    assert!(eventually(WITHIN, || ips(&server, "on-a.ns.global.") == ["240.0.0.70"]));
    b.fail_next(u32::MAX);
    b.drop_watches();
    for _ in 0..15 {
        assert_eq!(
            ips(&server, "on-b.ns.global."),
            ["240.0.0.71"],
            "last-known names stay"
        );
        assert_eq!(ips(&server, "on-a.ns.global."), ["240.0.0.70"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    a.put_service_entry("ns", "later", &["later.ns.global"], &["240.0.0.72"]);
    assert!(
        eventually(WITHIN, || ips(&server, "later.ns.global.")
            == ["240.0.0.72"]),
        "other clusters go on"
    );
    assert!(server.log_text().contains("serving the last-known entries"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_agree_on_fifty_new_hosts() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let kc = write_kubeconfig(dir.path(), &[("a", &a), ("b", &b)]);
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = std::thread::scope(|s| {
        let x = s.spawn(|| start(one.path(), &kc));
        let y = s.spawn(|| start(two.path(), &kc));
        (x.join().unwrap(), y.join().unwrap())
    });
    let hosts: Vec<String> = (0..50).map(|i| format!("new{i}.ns.global")).collect();
    for (i, host) in hosts.iter().enumerate() {
        let cluster = if i % 2 == 0 { &a } else { &b };
        cluster.put_service_entry("ns", &format!("new{i}"), &[host], &[]);
    }
    let resolved = |server: &GlobalDns| -> Option<Vec<String>> {
        let answers: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| ips(server, &format!("{h}.")))
            .collect();
        answers
            .iter()
            .all(|a| a.len() == 1)
            .then(|| answers.into_iter().flatten().collect())
    };
    let within = Duration::from_secs(10);
    assert!(eventually(within, || resolved(&first).is_some()
        && resolved(&second).is_some()));
    let (x, y) = (resolved(&first).unwrap(), resolved(&second).unwrap());
    assert_eq!(x, y, "both replicas answer the same VIPs");
    assert_eq!(
        x.iter().collect::<BTreeSet<_>>().len(),
        50,
        "50 distinct VIPs"
    );
}
