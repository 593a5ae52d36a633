//! The server watching ServiceEntries across three real clusters (etcd + kube-apiserver with
//! Istio's CRDs, see tests/support/kube), with the allocations in the primary's ConfigMaps.
//!
//! The clusters are shared by the tests of this file: each test keeps its allocations and remote
//! secrets in a namespace of its own (`--namespace`) and uses host names of its own. Tests that
//! stop an API server or compact etcd are in tests/kube_faults.rs, on clusters of their own.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hickory_proto::rr::{RData, RecordType};

use support::kube::{Cluster, globaldns, kubeconfig, remote_secret, service_entry_yaml, shared};
use support::*;

const WITHIN: Duration = Duration::from_secs(10);

/// A server on `clusters` (the first is the primary) and an empty zones directory in `dir`,
/// keeping its allocations and reading remote secrets in `namespace` (created in the primary).
fn start(dir: &Path, clusters: &[(&str, &Cluster)], namespace: &str) -> GlobalDns {
    clusters[0].1.ensure_namespace(namespace);
    let args = ["--namespace", namespace, "--sync-timeout", "10"];
    globaldns(dir, &kubeconfig(clusters, clusters[0].0), &args)
}

/// Hosts recorded in the allocation ConfigMaps of `ns`.
fn stored_hosts(cluster: &Cluster, ns: &str) -> BTreeSet<String> {
    cluster
        .objects("configmaps", ns)
        .into_iter()
        .filter(|cm| {
            cm["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("globaldns-vips-")
        })
        .flat_map(|cm| {
            cm["data"]
                .as_object()
                .map(|d| d.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn two_clusters_resolve_and_share_one_vip_per_host() {
    let c = shared(2);
    let (a, b) = (c[0], c[1]);
    a.put_service_entry("mc1", "reviews", &["reviews.mc1.global"], &["240.0.1.3"]);
    b.put_service_entry("mc1", "ratings", &["ratings.mc1.global"], &["240.0.1.4"]);
    a.put_service_entry("mc1", "sleep", &["sleep.mc1.global"], &[]);
    b.put_service_entry("mc1", "sleep-too", &["sleep.mc1.global"], &[]);
    // Conflicting explicit addresses: the first in (cluster, namespace, name) order wins.
    b.put_service_entry("mc1", "reviews-b", &["reviews.mc1.global"], &["240.0.1.99"]);
    let dir = tempfile::tempdir().unwrap();
    // The zones/ files keep working next to the clusters.
    std::fs::create_dir_all(dir.path().join("zones")).unwrap();
    let file_entry = support::service_entry("f", &["from-file.mc1.global"], &["240.0.1.9"]);
    std::fs::write(dir.path().join("zones/file.yaml"), file_entry).unwrap();
    let server = start(dir.path(), &[("a", a), ("b", b)], "mc1-dns");
    assert!(eventually(WITHIN, || a_ips(
        &server,
        "from-file.mc1.global."
    ) == ["240.0.1.9"]));
    assert!(eventually(WITHIN, || a_ips(&server, "reviews.mc1.global.")
        == ["240.0.1.3"]));
    assert!(eventually(WITHIN, || a_ips(&server, "ratings.mc1.global.")
        == ["240.0.1.4"]));
    assert!(eventually(WITHIN, || a_ips(&server, "sleep.mc1.global.")
        .len()
        == 1));
    // Recorded in the primary's ConfigMaps only.
    assert!(stored_hosts(a, "mc1-dns").contains("sleep.mc1.global"));
    assert!(stored_hosts(b, "mc1-dns").is_empty());
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("every source has synced")));
    assert!(
        server
            .log_text()
            .contains("host declared with different addresses")
    );
}

#[test]
fn store_context_moves_the_allocations() {
    let c = shared(2);
    let (a, b) = (c[0], c[1]);
    a.put_service_entry("mc2", "sleep", &["sleep.mc2.global"], &[]);
    b.ensure_namespace("mc2-dns");
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&[("a", a), ("b", b)], "a");
    let args = ["--store-context", "b", "--namespace", "mc2-dns"];
    let server = globaldns(dir.path(), &kc, &args);
    assert!(eventually(WITHIN, || a_ips(&server, "sleep.mc2.global.")
        .len()
        == 1));
    assert!(stored_hosts(b, "mc2-dns").contains("sleep.mc2.global"));
    assert!(a.objects("configmaps", "mc2-dns").is_empty());
}

/// A VIP that an explicit entry starts claiming moves its host. The ConfigMap store runs a
/// transaction's mutation again after reading back what it wrote, so the conflict must be logged
/// and counted once, after the transaction, not by the mutation.
#[test]
fn a_vip_claimed_by_an_explicit_entry_is_counted_and_logged_once() {
    let c = shared(1);
    let a = c[0];
    a.put_service_entry("mc6", "mover", &["mover.mc6.global"], &[]);
    let dir = tempfile::tempdir().unwrap();
    a.ensure_namespace("mc6-dns");
    let kc = kubeconfig(&[("a", a)], "a");
    let args = ["--namespace", "mc6-dns", "--metrics", "127.0.0.1:0"];
    let server = globaldns(dir.path(), &kc, &args);
    assert!(eventually(WITHIN, || a_ips(&server, "mover.mc6.global.")
        .len()
        == 1));
    let taken = a_ips(&server, "mover.mc6.global.").remove(0);
    a.put_service_entry("mc6", "claimer", &["claimer.mc6.global"], &[&taken]);
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "claimer.mc6.global.",
        &taken
    )));
    assert!(eventually(WITHIN, || {
        let now = a_ips(&server, "mover.mc6.global.");
        now.len() == 1 && now[0] != taken
    }));
    // Let any later republish happen too: none may count the same conflict again.
    std::thread::sleep(Duration::from_secs(2));
    let (_, metrics) = http_get(server.metrics.unwrap(), "/metrics");
    assert_eq!(
        sample(&metrics, "globaldns_allocation_conflicts_total"),
        1.0,
        "{metrics}"
    );
    let log = server.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("declared explicitly by another ServiceEntry"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

/// ServiceEntries as users write them, `kubectl apply -f` in each served version, and the ones
/// the real CRD refuses.
#[test]
fn live_changes_in_every_api_version_show_within_seconds() {
    let c = shared(2);
    let (a, b) = (c[0], c[1]);
    let dir = tempfile::tempdir().unwrap();
    b.ensure_namespace("mc3");
    let server = start(dir.path(), &[("a", a), ("b", b)], "mc3-dns");
    assert!(nxdomain(&server, "web.mc3.global."));
    for (version, address) in [
        ("v1alpha3", "240.0.3.50"),
        ("v1beta1", "240.0.3.51"),
        ("v1", "240.0.3.52"),
    ] {
        b.apply(&service_entry_yaml(
            version,
            "mc3",
            "web",
            &["web.mc3.global"],
            &[address],
        ));
        assert!(
            eventually(WITHIN, || a_ips(&server, "web.mc3.global.") == [address]),
            "{version}: {address}"
        );
    }
    // What the CRD's schema and rules refuse never reaches us: the user sees the API's error.
    let refused = [
        ("wildcard", service_entry_yaml("v1", "mc3", "star", &["*"], &[])),
        (
            "port",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: port, namespace: mc3}\nspec:\n  hosts: [port.mc3.global]\n  ports: [{number: 70000, name: http}]\n".to_string(),
        ),
    ];
    for (what, manifest) in refused {
        let out = b.kubectl_input(&["apply", "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        eprintln!("kubectl apply of the {what} entry: {stderr}");
        assert!(stderr.contains("is invalid"), "{what}: {stderr}");
    }
    // What the CRD accepts but we cannot serve is skipped with a log line; the rest goes on.
    b.put_service_entry("mc3", "bad", &["bad.mc3.global"], &["not-an-ip"]);
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("skipping ServiceEntry")));
    assert!(nxdomain(&server, "bad.mc3.global."));
    b.put_service_entry("mc3", "later", &["later.mc3.global"], &["240.0.3.53"]);
    assert!(eventually(WITHIN, || a_ips(&server, "later.mc3.global.")
        == ["240.0.3.53"]));
    b.delete("serviceentries.networking.istio.io", "mc3", "web");
    assert!(
        eventually(WITHIN, || nxdomain(&server, "web.mc3.global.")),
        "deleted"
    );
    // Deleted everywhere: gone, but its VIP is held for the grace period.
    a.put_service_entry("mc3", "auto", &["auto.mc3.global"], &[]);
    assert!(eventually(WITHIN, || a_ips(&server, "auto.mc3.global.")
        .len()
        == 1));
    let vip = a_ips(&server, "auto.mc3.global.");
    a.delete("serviceentries.networking.istio.io", "mc3", "auto");
    assert!(eventually(WITHIN, || nxdomain(&server, "auto.mc3.global.")));
    b.put_service_entry("mc3", "auto-again", &["auto.mc3.global"], &[]);
    assert!(
        eventually(WITHIN, || a_ips(&server, "auto.mc3.global.") == vip),
        "same VIP within grace"
    );
}

/// A reader account in `cluster` as istioctl makes one: a ServiceAccount allowed to read
/// ServiceEntries; its kubeconfig, with a TokenRequest token.
fn reader_kubeconfig(cluster: &Cluster, id: &str) -> String {
    cluster.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: mesh-reader, namespace: istio-system}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: mesh-reader}\n\
         rules: [{apiGroups: [networking.istio.io], resources: [serviceentries], verbs: [get, list, watch]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: mesh-reader}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mesh-reader}\n\
         subjects: [{kind: ServiceAccount, name: mesh-reader, namespace: istio-system}]\n",
    );
    cluster.token_kubeconfig(id, &cluster.token("istio-system", "mesh-reader"))
}

#[test]
fn remote_secrets_add_and_remove_clusters_live() {
    let c = shared(3);
    let (a, b, cc) = (c[0], c[1], c[2]);
    b.put_service_entry("mc4", "only-b", &["only-b.mc4.global"], &["240.0.4.20"]);
    cc.put_service_entry("mc4", "only-c", &["only-c.mc4.global"], &["240.0.4.30"]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("a", a)], "mc4-dns");
    assert!(nxdomain(&server, "only-b.mc4.global."));
    assert!(nxdomain(&server, "only-c.mc4.global."));

    let secret_b = remote_secret("istio-remote-secret-b", &[("cluster-b", b.kubeconfig("b"))]);
    a.kubectl_input(&["apply", "-n", "mc4-dns", "-f", "-"], Some(&secret_b));
    assert!(
        eventually(WITHIN, || a_ips(&server, "only-b.mc4.global.")
            == ["240.0.4.20"]),
        "second cluster added: {}",
        server.log_text()
    );
    let secret_c = remote_secret(
        "istio-remote-secret-c",
        &[
            ("cluster-c", reader_kubeconfig(cc, "cluster-c")),
            ("broken", "clusters: [unclosed".to_string()),
            ("a", cc.kubeconfig("dup")),
        ],
    );
    let out = a.kubectl_input(&["apply", "-n", "mc4-dns", "-f", "-"], Some(&secret_c));
    assert!(out.status.success(), "{out:?}");
    assert!(
        eventually(WITHIN, || a_ips(&server, "only-c.mc4.global.")
            == ["240.0.4.30"]),
        "third cluster added with a reader token: {}",
        server.log_text()
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
    // Live changes in a cluster added through a secret.
    cc.put_service_entry("mc4", "later-c", &["later-c.mc4.global"], &["240.0.4.31"]);
    assert!(eventually(WITHIN, || a_ips(&server, "later-c.mc4.global.")
        == ["240.0.4.31"]));

    a.delete("secret", "mc4-dns", "istio-remote-secret-c");
    assert!(
        eventually(WITHIN, || nxdomain(&server, "only-c.mc4.global.")),
        "its names go with it"
    );
    assert!(nxdomain(&server, "later-c.mc4.global."));
    assert_eq!(
        a_ips(&server, "only-b.mc4.global."),
        ["240.0.4.20"],
        "the other remote cluster stays"
    );
}

/// Two replicas and an operator's `dnsctl` allocate in the same ConfigMaps at once: no VIP is
/// given twice, and none moves afterwards.
#[test]
fn two_replicas_and_dnsctl_writing_at_once_agree() {
    let c = shared(2);
    let (a, b) = (c[0], c[1]);
    let dir = tempfile::tempdir().unwrap();
    let clusters = [("a", a), ("b", b)];
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig(&clusters, "a")).unwrap();
    a.ensure_namespace("mc5-dns");
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = std::thread::scope(|s| {
        let x = s.spawn(|| start(one.path(), &clusters, "mc5-dns"));
        let y = s.spawn(|| start(two.path(), &clusters, "mc5-dns"));
        (x.join().unwrap(), y.join().unwrap())
    });
    let hosts: Vec<String> = (0..50).map(|i| format!("new{i}.mc5.global")).collect();
    let pinned = dir.path().join("pinned.txt");
    let pinned_hosts: String = (0..100)
        .map(|i| format!("pinned{i}.mc5.global\n"))
        .collect();
    std::fs::write(&pinned, pinned_hosts).unwrap();
    let dnsctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dnsctl"))
            .args(["--kubeconfig", kc.to_str().unwrap(), "-n", "mc5-dns"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "dnsctl {args:?}: {out:?}");
        text
    };
    let operator = std::thread::scope(|s| {
        let operator = s.spawn(|| dnsctl(&["allocate", "--from-file", pinned.to_str().unwrap()]));
        // One `kubectl apply` per cluster, as a GitOps sync would.
        for (parity, cluster) in [(0, a), (1, b)] {
            let mut manifest =
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: mc5}\n".to_string();
            for (i, host) in hosts.iter().enumerate().filter(|(i, _)| i % 2 == parity) {
                manifest.push_str("---\n");
                manifest.push_str(&service_entry_yaml(
                    "v1",
                    "mc5",
                    &format!("new{i}"),
                    &[host],
                    &[],
                ));
            }
            cluster.apply(&manifest);
        }
        operator.join().unwrap()
    });
    let resolved = |server: &GlobalDns| -> Option<Vec<String>> {
        let answers: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| a_ips(server, &format!("{h}.")))
            .collect();
        answers
            .iter()
            .all(|a| a.len() == 1)
            .then(|| answers.into_iter().flatten().collect())
    };
    let within = Duration::from_secs(20);
    assert!(eventually(within, || resolved(&first).is_some()
        && resolved(&second).is_some()));
    let (x, y) = (resolved(&first).unwrap(), resolved(&second).unwrap());
    assert_eq!(x, y, "both replicas answer the same VIPs");
    let mut every: BTreeSet<String> = x.iter().cloned().collect();
    assert_eq!(every.len(), 50, "50 distinct VIPs");
    every.extend(
        operator
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().to_string()),
    );
    assert_eq!(every.len(), 150, "none of dnsctl's 100 VIPs is a replica's");
    assert!(dnsctl(&["check"]).starts_with("ok: "));
    // Nothing moves: later publishes (other tests' changes, store watches) keep every answer.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(resolved(&first).unwrap(), x);
    assert_eq!(resolved(&second).unwrap(), x);
    for line in operator.lines() {
        let host = line.split(' ').next().unwrap();
        assert_eq!(
            dnsctl(&["get", host]).split(' ').nth(1),
            line.split(' ').nth(1)
        );
    }
    // One content, one serial: the replicas give the zone the serial stored beside the
    // allocations (on the first shard), so a secondary asking either never sees one serial
    // stand for two contents. Other tests change the shared clusters meanwhile: eventually.
    let serial = served_serial;
    let stored = || stored_serial(a, "mc5-dns");
    assert!(
        eventually(within, || {
            let s = serial(&first);
            s == serial(&second) && stored() == Some(s)
        }),
        "serials {} and {}, stored {:?}",
        serial(&first),
        serial(&second),
        stored()
    );
}

/// A server keeps the allocator lease while changes come. Stopped in the middle of them, it
/// gives the lease up on its way out: another replica, or `dnsctl`, must not wait out the
/// lease's 15 s.
#[test]
fn a_stopped_server_leaves_the_lease_free() {
    let a = shared(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("a", a)], "mc7-dns");
    let holder = || {
        a.kubectl_ok(&[
            "get",
            "lease",
            "globaldns-allocator",
            "-n",
            "mc7-dns",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .trim()
        .to_string()
    };
    // Address-less hosts from three writers, so that changes come closer together than the
    // server's idle time even on a busy machine: every change writes a VIP and a serial. They
    // stop when told, or after a while should an assertion fail before.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = std::time::Instant::now() + 2 * WITHIN;
    std::thread::scope(|s| {
        for w in 0..3 {
            let stop = &stop;
            s.spawn(move || {
                for i in (w..).step_by(3) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || std::time::Instant::now() > deadline
                    {
                        break;
                    }
                    let host = format!("s{i}.mc7.global");
                    a.put_service_entry("mc7", &format!("s{i}"), &[&host], &[]);
                }
            });
        }
        assert!(eventually(WITHIN, || a_ips(&server, "s3.mc7.global.")
            .len()
            == 1));
        assert!(
            eventually(WITHIN, || !holder().is_empty()),
            "the lease is kept while changes come"
        );
        assert!(server.terminate().success());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(holder(), "", "given up on the way out");
}

/// A server killed while it keeps the lease cannot give it up: the lease stays held until it
/// expires (15 s). A restart must not wait that out before it serves: it serves what is stored
/// at once, and stores what is new only once the lease has expired. The lease is left held as a
/// kill leaves it (by the test, so that the test does not depend on killing at the right moment).
#[test]
fn a_restart_serves_at_once_while_a_killed_replica_holds_the_lease() {
    let a = shared(1)[0];
    let dir = tempfile::tempdir().unwrap();
    a.put_service_entry("mc8", "early", &["early.mc8.global"], &[]);
    let server = start(dir.path(), &[("a", a)], "mc8-dns");
    assert!(eventually(WITHIN, || a_ips(&server, "early.mc8.global.")
        .len()
        == 1));
    let stored = a_ips(&server, "early.mc8.global.");
    drop(server);

    // What a replica killed while it keeps the lease leaves: held, just renewed.
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let lease = serde_json::json!({"spec": {
        "holderIdentity": "a-killed-replica",
        "acquireTime": time,
        "renewTime": time,
        "leaseDurationSeconds": 15,
    }});
    let patched = std::time::Instant::now();
    a.kubectl_ok(&[
        "patch",
        "lease",
        "globaldns-allocator",
        "-n",
        "mc8-dns",
        "--type=merge",
        "-p",
        &lease.to_string(),
    ]);
    a.put_service_entry("mc8", "late", &["late.mc8.global"], &[]);

    let server = start(dir.path(), &[("a", a)], "mc8-dns");
    assert!(
        eventually(WITHIN, || a_ips(&server, "early.mc8.global.") == stored),
        "what is stored is served after the restart"
    );
    let serving = patched.elapsed();
    assert!(
        serving < Duration::from_secs(8),
        "the restart waited {serving:?} for the killed replica's lease"
    );
    assert!(
        a_ips(&server, "late.mc8.global.").is_empty(),
        "nothing is stored while another holds the lease"
    );
    assert!(
        eventually(3 * WITHIN, || a_ips(&server, "late.mc8.global.").len() == 1),
        "a new host is stored and answered once the lease has expired"
    );
    let waited = patched.elapsed();
    assert!(waited >= Duration::from_secs(14), "stored after {waited:?}");
    // The serials it could not store meanwhile are not left unstored.
    assert!(
        eventually(WITHIN, || stored_serial(a, "mc8-dns")
            == Some(served_serial(&server))),
        "serial {} served, {:?} stored",
        served_serial(&server),
        stored_serial(a, "mc8-dns")
    );
}

/// The zone serial `server` answers with.
fn served_serial(server: &GlobalDns) -> u32 {
    match query(server.addr, "global.", RecordType::SOA, Proto::Udp)
        .answers
        .first()
        .map(|r| &r.data)
    {
        Some(RData::SOA(soa)) => soa.serial,
        other => panic!("SOA: {other:?}"),
    }
}

/// The zone serial stored beside the allocations of namespace `ns` (on the first shard).
fn stored_serial(cluster: &Cluster, ns: &str) -> Option<u32> {
    let text = cluster.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        ns,
        "globaldns-vips-00",
        "-o",
        "jsonpath={.metadata.annotations.globaldns\\.io/zone-serial}",
    ]);
    text.split(' ').next()?.parse().ok()
}
