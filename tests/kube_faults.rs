//! Real faults of real clusters: an API server stopped for 30 s, one restarted after etcd was
//! compacted (a real 410 Gone), and one that never comes up. Each test has clusters of its own.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::kube::{Cluster, globaldns, kubeconfig};
use support::*;

const WITHIN: Duration = Duration::from_secs(10);

/// Two clusters of this test's own, started side by side.
fn two_clusters() -> (Cluster, Cluster) {
    std::thread::scope(|s| {
        let a = s.spawn(Cluster::start);
        let b = s.spawn(Cluster::start);
        (a.join().unwrap(), b.join().unwrap())
    })
}

/// globaldns with /metrics, on the clusters of `kubeconfig`.
fn start(dir: &Path, kubeconfig: &str, extra: &[&str]) -> GlobalDns {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    globaldns(dir, kubeconfig, &args)
}

/// How many name tables the server has published so far.
fn publishes(server: &GlobalDns) -> usize {
    server.log_text().matches("name table published").count()
}

fn ready(server: &GlobalDns) -> bool {
    http_get(server.metrics.unwrap(), "/readyz").0 == 200
}

fn synced(server: &GlobalDns, cluster: &str) -> f64 {
    let metrics = http_get(server.metrics.unwrap(), "/metrics").1;
    sample(
        &metrics,
        &format!("globaldns_cluster_synced{{cluster=\"{cluster}\"}}"),
    )
}

#[test]
fn an_api_server_down_for_30_seconds_changes_nothing_and_costs_one_publish() {
    let (a, b) = two_clusters();
    a.put_service_entry("ns", "on-a", &["on-a.ns.global"], &["240.0.0.70"]);
    b.put_service_entry("ns", "on-b", &["on-b.ns.global"], &["240.0.0.71"]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &kubeconfig(&[("a", &a), ("b", &b)], "a"), &[]);
    assert!(eventually(WITHIN, || a_ips(&server, "on-b.ns.global.")
        == ["240.0.0.71"]));
    assert!(eventually(WITHIN, || a_ips(&server, "on-a.ns.global.")
        == ["240.0.0.70"]));
    assert!(eventually(WITHIN, || ready(&server)));

    b.stop_apiserver();
    let down = Instant::now();
    assert!(!b.api_listening());
    a.put_service_entry("ns", "later", &["later.ns.global"], &["240.0.0.72"]);
    assert!(
        eventually(WITHIN, || a_ips(&server, "later.ns.global.")
            == ["240.0.0.72"]),
        "other clusters go on"
    );
    while down.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            a_ips(&server, "on-b.ns.global."),
            ["240.0.0.71"],
            "last-known names stay"
        );
        assert_eq!(a_ips(&server, "on-a.ns.global."), ["240.0.0.70"]);
        assert!(ready(&server), "/readyz stays 200 during the outage");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(synced(&server, "b"), 0.0, "the outage is visible");
    assert!(server.log_text().contains("serving the last-known entries"));
    let before = publishes(&server);

    b.start_apiserver();
    // The watch retries on its backoff (as client-go's: 0.8 s doubling to 30 s, then jittered
    // by up to as much again, so up to 60 s apart by now), then relists at once on the 410
    // Gone its resumed watch gets from the restarted server.
    assert!(
        eventually(Duration::from_secs(75), || synced(&server, "b") == 1.0),
        "the watch came back: {}",
        server.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    let outage = publishes(&server) - before;
    eprintln!("name tables published for the outage: {outage}");
    assert!(outage <= 1, "{outage} publishes for one outage");
    assert_eq!(a_ips(&server, "on-b.ns.global."), ["240.0.0.71"]);
    b.put_service_entry("ns", "after", &["after.ns.global"], &["240.0.0.73"]);
    assert!(
        eventually(WITHIN, || a_ips(&server, "after.ns.global.")
            == ["240.0.0.73"]),
        "watching again"
    );
}

#[test]
fn a_restart_after_compaction_gives_a_real_410_and_a_relist() {
    let (a, b) = two_clusters();
    b.put_service_entry("ns", "old", &["old.ns.global"], &["240.0.0.60"]);
    b.put_service_entry("ns", "kept", &["kept.ns.global"], &["240.0.0.62"]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &kubeconfig(&[("a", &a), ("b", &b)], "a"), &[]);
    assert!(eventually(WITHIN, || a_ips(&server, "old.ns.global.")
        == ["240.0.0.60"]));

    // While b's API server is down, the entry goes from storage (no watch can report it) and
    // etcd's history is compacted past everything the watch has seen.
    b.stop_apiserver();
    b.etcd_delete("/registry/networking.istio.io/serviceentries/ns/old");
    b.compact_etcd();
    b.start_apiserver();
    assert!(
        eventually(Duration::from_secs(30), || nxdomain(
            &server,
            "old.ns.global."
        )),
        "the deletion is seen through the relist: {}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(
        log.contains("410") || log.contains("too old resource version"),
        "the watch resumed from a compacted resourceVersion: {log}"
    );
    assert_eq!(a_ips(&server, "kept.ns.global."), ["240.0.0.62"]);
    b.put_service_entry("ns", "new", &["new.ns.global"], &["240.0.0.61"]);
    assert!(eventually(WITHIN, || a_ips(&server, "new.ns.global.")
        == ["240.0.0.61"]));
}

#[test]
fn a_cluster_that_never_comes_up_does_not_hold_back_the_others() {
    let a = Cluster::start();
    a.put_service_entry("ns", "up", &["up.ns.global"], &["240.0.0.80"]);
    // A second context whose API server never starts: its address accepts no connection.
    let dead = dead_upstream();
    let kc = kubeconfig(&[("a", &a), ("never", &a)], "a");
    let second = kc.rfind(&format!("server: https://{}", a.api)).unwrap();
    let kc = format!(
        "{}server: https://{dead}{}",
        &kc[..second],
        &kc[second + format!("server: https://{}", a.api).len()..]
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &kc, &["--sync-timeout", "5"]);
    assert!(
        eventually(WITHIN, || a_ips(&server, "up.ns.global.") == ["240.0.0.80"]),
        "{}",
        server.log_text()
    );
    assert!(
        eventually(WITHIN, || ready(&server)),
        "ready after --sync-timeout"
    );
    assert_eq!(synced(&server, "never"), 0.0);
    a.put_service_entry("ns", "later", &["later.ns.global"], &["240.0.0.81"]);
    assert!(eventually(WITHIN, || a_ips(&server, "later.ns.global.")
        == ["240.0.0.81"]));
}
