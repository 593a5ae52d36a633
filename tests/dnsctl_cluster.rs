//! dnsctl against a cluster (the API simulator): the ConfigMap store from the command line.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::apiserver::ApiServer;

/// Runs dnsctl without blocking the runtime that serves the simulator.
async fn dnsctl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dnsctl"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_get_list_check_through_configmaps() {
    let sim = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kc, "primary");
    let (code, out, err) = dnsctl(&[
        "--kubeconfig",
        path(&kc),
        "allocate",
        "reviews.default.global",
        "*.apps.global",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("reviews.default.global 2") && lines[1].starts_with("*.apps.global 2"),
        "{out}"
    );
    // Idempotent: the same answer again.
    let (_, again, _) = dnsctl(&[
        "--kubeconfig",
        path(&kc),
        "allocate",
        "reviews.default.global",
        "*.apps.global",
    ])
    .await;
    assert_eq!(again, out);
    let (code, get, _) = dnsctl(&["--kubeconfig", path(&kc), "get", "*.apps.global"]).await;
    assert_eq!(code, 0);
    assert!(get.ends_with(" pinned\n"), "{get}");
    let (_, json, _) = dnsctl(&["--kubeconfig", path(&kc), "list", "-o", "json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(dnsctl(&["--kubeconfig", path(&kc), "check"]).await.0, 0);
    // The wildcard lives under an encoded key in a labelled shard.
    let shards = sim.objects("", "configmaps", "istio-system");
    assert!(!shards.is_empty());
    assert!(
        shards
            .iter()
            .any(|cm| cm["data"].get("_s.apps.global").is_some())
    );
    assert!(
        shards
            .iter()
            .all(|cm| cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "globaldns")
    );
    // /etc/hosts lines: the allocations plus the cluster's ServiceEntries with addresses.
    sim.put_service_entry(
        "bar",
        "httpbin",
        &["httpbin.bar.global", "www.example.com"],
        &["127.255.0.3"],
    );
    let (code, hosts, err) = dnsctl(&["--kubeconfig", path(&kc), "hosts"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        hosts.lines().any(|l| l == "127.255.0.3 httpbin.bar.global"),
        "{hosts}"
    );
    assert!(
        hosts
            .lines()
            .any(|l| l.ends_with(" reviews.default.global")),
        "{hosts}"
    );
    assert!(
        !hosts.contains("www.example.com"),
        "outside the zone: {hosts}"
    );
    // Remote clusters are found through the remote secrets, as the server finds them; one that
    // cannot be read is named and left out.
    let remote = ApiServer::start().await;
    remote.put_service_entry("web", "shop", &["shop.web.global"], &["240.0.9.9"]);
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-west", "namespace": "istio-system",
            "labels": {"istio/multiCluster": "true"}},
        "stringData": {"west": remote.kubeconfig("west"), "broken": "clusters: [unclosed"}});
    sim.put_object("", "secrets", "istio-system", secret);
    let (code, hosts, err) = dnsctl(&["--kubeconfig", path(&kc), "hosts"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        hosts.lines().any(|l| l == "240.0.9.9 shop.web.global"),
        "{hosts}"
    );
    assert!(
        hosts.lines().any(|l| l == "127.255.0.3 httpbin.bar.global"),
        "{hosts}"
    );
    assert!(err.contains("key broken"), "{err}");
    // Another namespace is another store.
    let (code, _, _) = dnsctl(&[
        "--kubeconfig",
        path(&kc),
        "-n",
        "default",
        "get",
        "reviews.default.global",
    ])
    .await;
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_processes_get_300_distinct_vips() {
    let sim = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kc, "primary");
    let mut runs = Vec::new();
    for w in 0..3 {
        let list = dir.path().join(format!("w{w}.txt"));
        std::fs::write(
            &list,
            (0..100)
                .map(|i| format!("w{w}-{i}.global\n"))
                .collect::<String>(),
        )
        .unwrap();
        let kc = kc.clone();
        runs.push(tokio::spawn(async move {
            dnsctl(&[
                "--kubeconfig",
                path(&kc),
                "allocate",
                "--from-file",
                path(&list),
            ])
            .await
        }));
    }
    let mut vips = BTreeSet::new();
    for run in runs {
        let (code, out, err) = run.await.unwrap();
        assert_eq!(code, 0, "{err}");
        vips.extend(
            out.lines()
                .map(|l| l.split(' ').nth(1).unwrap().to_string()),
        );
    }
    assert_eq!(vips.len(), 300);
    let (code, out, _) = dnsctl(&["--kubeconfig", path(&kc), "check"]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "ok: 300 hosts, 300 addresses, unique and inside the pools\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_pick_the_cluster() {
    let (a, b) = (ApiServer::start().await, ApiServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    // One kubeconfig, two contexts; the current one is "a".
    let combined = support::apiserver::kubeconfig(&[("a", a.addr), ("b", b.addr)], "a");
    std::fs::write(&kc, combined).unwrap();
    assert_eq!(
        dnsctl(&[
            "--kubeconfig",
            path(&kc),
            "--context",
            "b",
            "allocate",
            "only-b.global"
        ])
        .await
        .0,
        0
    );
    assert_eq!(
        dnsctl(&["--kubeconfig", path(&kc), "get", "only-b.global"])
            .await
            .0,
        1,
        "not in the current context"
    );
    assert_eq!(
        dnsctl(&[
            "--kubeconfig",
            path(&kc),
            "--context",
            "b",
            "get",
            "only-b.global"
        ])
        .await
        .0,
        0
    );
    let (code, _, err) = dnsctl(&["--kubeconfig", path(&kc), "--context", "nope", "list"]).await;
    assert_eq!(code, 4);
    assert!(err.contains("nope") && err.lines().count() == 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_kubeconfigs_and_dead_clusters_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Config\nclusters: [unclosed\n",
    )
    .unwrap();
    let (code, out, err) = dnsctl(&["--kubeconfig", path(&broken), "list"]).await;
    assert_eq!(code, 4);
    assert!(
        out.is_empty() && err.starts_with("dnsctl: kubeconfig ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!err.contains("panicked"));

    let missing = dir.path().join("missing");
    let (code, _, err) = dnsctl(&["--kubeconfig", path(&missing), "list"]).await;
    assert_eq!(code, 4);
    assert!(err.contains("missing") && err.lines().count() == 1, "{err}");

    // A kubeconfig whose API server is not there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kc = dir.path().join("dead");
    std::fs::write(&kc, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: d\n  cluster: {{server: http://{dead}}}\nusers:\n- name: d\n  user: {{}}\ncontexts:\n- name: d\n  context: {{cluster: d, user: d}}\ncurrent-context: d\n")).unwrap();
    let started = Instant::now();
    let (code, _, err) = dnsctl(&["--kubeconfig", path(&kc), "allocate", "a.global"]).await;
    assert_eq!(code, 4);
    assert!(
        err.contains("unavailable") && err.lines().count() == 1,
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // No kubeconfig anywhere and not in a pod.
    let (code, _, err) = dnsctl(&["list"]).await;
    assert_eq!(code, 4);
    assert!(err.contains("no kubeconfig found"), "{err}");
}
