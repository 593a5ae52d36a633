//! dnsctl against a real cluster (tests/support/kube): the ConfigMap store from the command line.
//! The clusters are shared by this file's tests; each keeps its shards in a namespace of its own.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::kube::{Cluster, kubeconfig, shared};

/// Runs dnsctl with no kubeconfig but what `args` name.
fn dnsctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dnsctl"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .output()
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

/// A kubeconfig for `cluster` (context "primary") in `dir`, and namespace `ns` created.
fn setup(cluster: &Cluster, dir: &Path, ns: &str) -> std::path::PathBuf {
    let kc = dir.join("kubeconfig");
    std::fs::write(&kc, cluster.kubeconfig("primary")).unwrap();
    cluster.ensure_namespace(ns);
    kc
}

#[test]
fn allocate_get_list_check_through_configmaps() {
    let c = shared(2);
    let (cluster, remote) = (c[0], c[1]);
    let ns = "ctl-basics";
    let dir = tempfile::tempdir().unwrap();
    let kc = setup(cluster, dir.path(), ns);
    let (code, out, err) = dnsctl(&[
        "--kubeconfig",
        path(&kc),
        "-n",
        ns,
        "allocate",
        "reviews.default.global",
        "*.apps.global",
    ]);
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
        "-n",
        ns,
        "allocate",
        "reviews.default.global",
        "*.apps.global",
    ]);
    assert_eq!(again, out);
    let (code, get, _) = dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "get", "*.apps.global"]);
    assert_eq!(code, 0);
    assert!(get.ends_with(" pinned\n"), "{get}");
    let (_, json, _) = dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "list", "-o", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "check"]).0, 0);
    // The wildcard lives under an encoded key in a labelled shard.
    let shards = cluster.objects("configmaps", ns);
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
    cluster.put_service_entry(
        "ctl-bar",
        "httpbin",
        &["httpbin.ctl-bar.global", "www.example.com"],
        &["127.255.0.3"],
    );
    let (code, hosts, err) = dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "hosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        hosts
            .lines()
            .any(|l| l == "127.255.0.3 httpbin.ctl-bar.global"),
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
    remote.put_service_entry("ctl-web", "shop", &["shop.ctl-web.global"], &["240.0.9.9"]);
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-west", "namespace": ns,
            "labels": {"istio/multiCluster": "true"}},
        "stringData": {"west": remote.kubeconfig("west"), "broken": "clusters: [unclosed"}});
    cluster.apply(&secret.to_string());
    let (code, hosts, err) = dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "hosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        hosts.lines().any(|l| l == "240.0.9.9 shop.ctl-web.global"),
        "{hosts}"
    );
    assert!(
        hosts
            .lines()
            .any(|l| l == "127.255.0.3 httpbin.ctl-bar.global"),
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
    ]);
    assert_eq!(code, 1);
}

#[test]
fn three_concurrent_processes_get_300_distinct_vips() {
    let ns = "ctl-concurrent";
    let dir = tempfile::tempdir().unwrap();
    let kc = setup(shared(1)[0], dir.path(), ns);
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
        runs.push(std::thread::spawn(move || {
            dnsctl(&[
                "--kubeconfig",
                path(&kc),
                "-n",
                ns,
                "allocate",
                "--from-file",
                path(&list),
            ])
        }));
    }
    let mut vips = BTreeSet::new();
    for run in runs {
        let (code, out, err) = run.join().unwrap();
        assert_eq!(code, 0, "{err}");
        vips.extend(
            out.lines()
                .map(|l| l.split(' ').nth(1).unwrap().to_string()),
        );
    }
    assert_eq!(vips.len(), 300);
    let (code, out, _) = dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "check"]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "ok: 300 hosts, 300 addresses, unique and inside the pools; \
             ServiceEntry statuses hold them\n"
        )
    );
}

#[test]
fn contexts_pick_the_cluster() {
    let c = shared(2);
    let (a, b) = (c[0], c[1]);
    let ns = "ctl-contexts";
    a.ensure_namespace(ns);
    b.ensure_namespace(ns);
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    // One kubeconfig, two contexts; the current one is "a".
    std::fs::write(&kc, kubeconfig(&[("a", a), ("b", b)], "a")).unwrap();
    assert_eq!(
        dnsctl(&[
            "--kubeconfig",
            path(&kc),
            "-n",
            ns,
            "--context",
            "b",
            "allocate",
            "only-b.global"
        ])
        .0,
        0
    );
    assert_eq!(
        dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "get", "only-b.global"]).0,
        1,
        "not in the current context"
    );
    assert_eq!(
        dnsctl(&[
            "--kubeconfig",
            path(&kc),
            "-n",
            ns,
            "--context",
            "b",
            "get",
            "only-b.global"
        ])
        .0,
        0
    );
    let (code, _, err) = dnsctl(&[
        "--kubeconfig",
        path(&kc),
        "-n",
        ns,
        "--context",
        "nope",
        "list",
    ]);
    assert_eq!(code, 4);
    assert!(err.contains("nope") && err.lines().count() == 1, "{err}");
}

#[test]
fn broken_kubeconfigs_and_dead_clusters_fail_in_one_line() {
    let ns = "ctl-broken";
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Config\nclusters: [unclosed\n",
    )
    .unwrap();
    let (code, out, err) = dnsctl(&["--kubeconfig", path(&broken), "list"]);
    assert_eq!(code, 4);
    assert!(
        out.is_empty() && err.starts_with("dnsctl: kubeconfig ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!err.contains("panicked"));

    let missing = dir.path().join("missing");
    let (code, _, err) = dnsctl(&["--kubeconfig", path(&missing), "list"]);
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
    let (code, _, err) = dnsctl(&["--kubeconfig", path(&kc), "-n", ns, "allocate", "a.global"]);
    assert_eq!(code, 4);
    assert!(
        err.contains("unavailable") && err.lines().count() == 1,
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // No kubeconfig anywhere and not in a pod.
    let (code, _, err) = dnsctl(&["list"]);
    assert_eq!(code, 4);
    assert!(err.contains("no kubeconfig found"), "{err}");
}
