//! The VIP we answer is the VIP the sidecars capture (issue 16): globaldns writes it into
//! `status.addresses` of the ServiceEntries in every cluster, where istiod reads it, against
//! the real API server with Istio's CRDs. A step plays istiod by writing its own
//! `240.240.0.0/16` addresses first, as istiod does.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::kube::{Cluster, globaldns_writing as globaldns, kubeconfig, shared};
use support::*;

const WITHIN: Duration = Duration::from_secs(20);

/// What istiod would do: set `status.addresses` of entry `ns/name` to `addresses`
/// (`(value, host)`).
fn play_istiod(cluster: &Cluster, ns: &str, name: &str, addresses: &[(&str, &str)]) {
    cluster.set_status_addresses(ns, name, addresses);
}

/// Entry `ns/name` as the API server has it.
fn entry(cluster: &Cluster, ns: &str, name: &str) -> Value {
    let text = cluster.kubectl_ok(&[
        "get",
        "serviceentries.networking.istio.io",
        name,
        "-n",
        ns,
        "-o",
        "json",
    ]);
    serde_json::from_str(&text).unwrap()
}

/// `status.addresses` of entry `ns/name` as `(value, host)` pairs, in order.
fn status(cluster: &Cluster, ns: &str, name: &str) -> Vec<(String, String)> {
    let e = entry(cluster, ns, name);
    (e["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter())
    .map(|a| {
        let text = |k: &str| a[k].as_str().unwrap_or_default().to_string();
        (text("value"), text("host"))
    })
    .collect()
}

fn resource_version(cluster: &Cluster, ns: &str, name: &str) -> String {
    entry(cluster, ns, name)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Two clusters declare one address-less host; istiod gave it a different VIP in each. Our VIP
/// replaces both, the status of another host of the same entry stays, DNS answers the same
/// VIP, a restart writes nothing, and an entry that gains spec.addresses, loses a host or opts
/// out loses our address for it.
#[test]
fn our_vip_replaces_istiods_in_every_cluster() {
    let c = shared(2);
    let (a, b) = (c[0], c[1]);
    let host = "shop.st1.global";
    let other = "ext.st1.example.com";
    for (cluster, istiod_vip) in [(a, "240.240.0.1"), (b, "240.240.0.2")] {
        cluster.put_service_entry("st1", "shop", &[host, other], &[]);
        play_istiod(
            cluster,
            "st1",
            "shop",
            &[
                (istiod_vip, host),
                ("2001:2::1", host),
                ("240.240.0.9", other),
            ],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &Path| {
        a.ensure_namespace("st1-dns");
        let args = ["--namespace", "st1-dns", "--sync-timeout", "10"];
        globaldns(dir, &kubeconfig(&[("a", a), ("b", b)], "a"), &args)
    };
    let server = run(dir.path());
    assert!(eventually(WITHIN, || a_ips(&server, &format!("{host}."))
        .len()
        == 1));
    let vip = a_ips(&server, &format!("{host}.")).remove(0);
    assert!(!vip.starts_with("240.240."), "{vip}");
    let expected = vec![
        ("240.240.0.9".to_string(), other.to_string()),
        (vip.clone(), host.to_string()),
    ];
    for cluster in [a, b] {
        assert!(
            eventually(WITHIN, || status(cluster, "st1", "shop") == expected),
            "{:?}\n{}",
            status(cluster, "st1", "shop"),
            server.log_text()
        );
    }

    // A restart finds every status right: nothing is written (same resourceVersions). The
    // first server settles first: its last round may still be reading the entries.
    std::thread::sleep(Duration::from_secs(2));
    let before = [a, b].map(|c| resource_version(c, "st1", "shop"));
    let first_log = server.log_text();
    drop(server);

    // A server that cannot read its store writes nothing either, and reports no drift: an
    // empty state is not knowing our VIPs, not having none (src/status/desired.rs).
    let unread = tempfile::tempdir().unwrap();
    let dead = unread.path().join("dead.kubeconfig");
    std::fs::write(
        &dead,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: store\n  cluster:\n    server: http://127.0.0.1:1\n\
         users:\n- name: store\n  user: {}\ncontexts:\n- name: store\n  context:\n    cluster: store\n    user: store\n\
         current-context: store\n",
    )
    .unwrap();
    let blind = globaldns(
        unread.path(),
        &kubeconfig(&[("a", a), ("b", b)], "a"),
        &[
            "--kubeconfig",
            dead.to_str().unwrap(),
            "--store-context",
            "store",
            "--namespace",
            "st1-dns",
            "--sync-timeout",
            "1",
        ],
    );
    assert!(
        eventually(WITHIN, || blind
            .log_text()
            .contains("cannot read allocations")),
        "{}",
        blind.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        [a, b].map(|c| resource_version(c, "st1", "shop")),
        before,
        "{}",
        blind.log_text()
    );
    let log = blind.log_text();
    assert!(
        log.contains("writing our VIPs into ServiceEntry statuses")
            && !log.contains("use other VIPs"),
        "{log}"
    );
    drop(blind);
    let server = run(dir.path());
    assert!(eventually(WITHIN, || a_ips(&server, &format!("{host}."))
        == [vip.clone()]));
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("writing our VIPs into ServiceEntry statuses")));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        [a, b].map(|c| resource_version(c, "st1", "shop")),
        before,
        "{:?}\n{:?}\n--- first server:\n{first_log}\n--- second:\n{}",
        entry(a, "st1", "shop"),
        entry(b, "st1", "shop"),
        server.log_text()
    );

    // The operator's view: store, statuses and the server agree.
    let kc = dir.path().join("kubeconfig");
    let dnsctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dnsctl"))
            .args(["--kubeconfig", kc.to_str().unwrap(), "--context", "a"])
            .args(["-n", "st1-dns"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let server_addr = server.addr.to_string();
    let (code, out) = dnsctl(&["check", "--server", &server_addr, "--hosts"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ServiceEntry statuses hold them; the servers answer them"),
        "{out}"
    );
    let line = format!("{host} store {vip}; cluster a {vip}; {server_addr} {vip}\n");
    assert!(out.contains(&line), "{line} in\n{out}");

    // An entry that gains spec.addresses, or loses a host, loses our addresses for it.
    let vip_of = |name: &str| {
        let fqdn = format!("{name}.");
        assert!(
            eventually(WITHIN, || a_ips(&server, &fqdn).len() == 1),
            "{name}"
        );
        a_ips(&server, &fqdn).remove(0)
    };
    let pair = ["p1.st1.global", "p2.st1.global"];
    a.put_service_entry("st1", "solo", &["solo.st1.global"], &[]);
    a.put_service_entry("st1", "pair", &pair, &[]);
    let solo_vip = vip_of("solo.st1.global");
    let (p1, p2) = (vip_of(pair[0]), vip_of(pair[1]));
    let ours = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        (pairs.iter())
            .map(|(v, h)| (v.to_string(), h.to_string()))
            .collect()
    };
    let solo_ours = ours(&[(&solo_vip, "solo.st1.global")]);
    assert!(eventually(WITHIN, || status(a, "st1", "solo") == solo_ours));
    let both = ours(&[(&p1, pair[0]), (&p2, pair[1])]);
    assert!(eventually(WITHIN, || status(a, "st1", "pair") == both));
    a.put_service_entry("st1", "solo", &["solo.st1.global"], &["240.0.78.1"]);
    a.put_service_entry("st1", "pair", &pair[..1], &[]);
    assert!(
        eventually(WITHIN, || status(a, "st1", "solo").is_empty()),
        "{:?}",
        status(a, "st1", "solo")
    );
    let first_only = ours(&[(&p1, pair[0])]);
    assert!(
        eventually(WITHIN, || status(a, "st1", "pair") == first_only),
        "{:?}",
        status(a, "st1", "pair")
    );

    // The entry opts out of allocation in one cluster: istiod stops reading its status for the
    // host, and our address leaves it; the other cluster keeps it. (An entry that gains
    // spec.addresses loses it the same way: src/status/desired.rs.)
    let label = |value: &str| {
        let label = format!("networking.istio.io/enable-autoallocate-ip{value}");
        a.kubectl_ok(&[
            "label",
            "serviceentries.networking.istio.io",
            "shop",
            "-n",
            "st1",
            &label,
        ]);
    };
    label("=false");
    let kept = vec![("240.240.0.9".to_string(), other.to_string())];
    assert!(
        eventually(WITHIN, || status(a, "st1", "shop") == kept),
        "{:?}",
        status(a, "st1", "shop")
    );
    assert_eq!(status(b, "st1", "shop"), expected);

    // With the server gone, istiod's VIP comes back into a status: `dnsctl check` names it.
    drop(server);
    label("-");
    play_istiod(
        a,
        "st1",
        "shop",
        &[("240.240.0.5", host), ("240.240.0.9", other)],
    );
    let (code, out) = dnsctl(&["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "{host}: cluster a entry st1/shop: status.addresses holds [240.240.0.5], the store [{vip}]"
        )),
        "{out}"
    );
}

/// A cluster reached with a read-only identity (Istio's reader service account): no PATCH is
/// ever sent (the API server's audit log has none from us), the drift is reported by the
/// metric and by `dnsctl check`, and DNS still answers our VIP. A cluster of its own: the
/// other tests' servers write wherever they may. The allocations live there too, through an
/// admin context whose statuses are left alone (`--status-skip-cluster`), so that the reader
/// is the only way globaldns could write them.
#[test]
fn a_read_only_cluster_is_never_written_and_its_drift_is_reported() {
    let ro = shared(3)[2];
    let host = "ro.st2.global";
    ro.put_service_entry("st2", "ro", &[host], &[]);
    play_istiod(ro, "st2", "ro", &[("240.240.0.3", host)]);
    ro.ensure_namespace("st2-dns");
    let dir = tempfile::tempdir().unwrap();
    let (admin, reader) = (
        dir.path().join("admin.kubeconfig"),
        dir.path().join("ro.kubeconfig"),
    );
    std::fs::write(&admin, ro.kubeconfig("store")).unwrap();
    std::fs::write(&reader, reader_kubeconfig(ro, "ro")).unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    let server = GlobalDns::start(
        &zones,
        &[
            "--kubeconfig",
            admin.to_str().unwrap(),
            "--kubeconfig",
            reader.to_str().unwrap(),
            "--namespace",
            "st2-dns",
            "--status-skip-cluster",
            "store",
            "--sync-timeout",
            "10",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    assert!(eventually(WITHIN, || a_ips(&server, &format!("{host}."))
        .len()
        == 1));
    let vip = a_ips(&server, &format!("{host}.")).remove(0);
    assert_ne!(vip, "240.240.0.3");
    let metrics = || http_get(server.metrics.unwrap(), "/metrics").1;
    assert!(
        eventually(WITHIN, || {
            let m = metrics();
            m.contains(r#"globaldns_status_writable{cluster="ro"} 0"#)
                && sample(&m, r#"globaldns_status_drift_hosts{cluster="ro"}"#) >= 1.0
        }),
        "{}\n{}",
        metrics(),
        server.log_text()
    );
    assert!(
        server
            .log_text()
            .contains("not permitted to patch serviceentries/status")
    );
    assert_eq!(
        status(ro, "st2", "ro"),
        [("240.240.0.3".to_string(), host.to_string())]
    );
    let patches: Vec<_> = (ro.requests_in("st2").into_iter())
        .filter(|(verb, _)| verb == "patch")
        .collect();
    assert!(patches.is_empty(), "{patches:?}");

    // The operator's view says the same, and fails.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dnsctl"))
        .args([
            "--kubeconfig",
            admin.to_str().unwrap(),
            "-n",
            "st2-dns",
            "check",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = format!(
        "{host}: cluster cluster entry st2/ro: status.addresses holds [240.240.0.3], the store [{vip}]"
    );
    assert!(text.contains(&line), "{line} in\n{text}");
}

/// A reader account in `cluster` as istioctl makes one: a ServiceAccount allowed to read
/// ServiceEntries (and nothing else); its kubeconfig, with a TokenRequest token.
fn reader_kubeconfig(cluster: &Cluster, id: &str) -> String {
    cluster.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: se-reader, namespace: istio-system}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: se-reader}\n\
         rules: [{apiGroups: [networking.istio.io], resources: [serviceentries], verbs: [get, list, watch]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: se-reader}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: se-reader}\n\
         subjects: [{kind: ServiceAccount, name: se-reader, namespace: istio-system}]\n",
    );
    cluster.token_kubeconfig(id, &cluster.token("istio-system", "se-reader"))
}

/// Another writer changes the status between our read and our patch (here: we are handed the
/// read from before its change). Our patch's `test` fails at the API server, we read again and
/// patch again, and its change survives beside our VIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_changed_between_our_read_and_our_patch_is_read_again_and_kept() {
    use ::kube::api::{Api, DynamicObject};
    use globaldns::alloc::{AllocState, ISTIO_RANGES, Policy, Pool, Record};
    use globaldns::source::kube::{declaration_of, served_version, service_entry_resource};
    use globaldns::status::{Entry, Owners, StatusMetrics, write_entry};

    let cluster = shared(3)[2];
    let host = "race.st3.global";
    let other = "other.st3.example.com";
    cluster.put_service_entry("st3", "race", &[host], &[]);
    play_istiod(cluster, "st3", "race", &[("240.240.0.6", host)]);
    let client = cluster.client().await;
    let version = served_version(&client).await.unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, "st3", &service_entry_resource(version));
    let ours_read = api.get("race").await.unwrap();
    // The other writer (istiod, for another host) gets in between.
    play_istiod(
        cluster,
        "st3",
        "race",
        &[("240.240.0.6", host), ("240.240.0.7", other)],
    );

    let mut state = AllocState::default();
    let record = Record {
        addresses: vec!["240.0.33.3".parse().unwrap()],
        ..Default::default()
    };
    state.records.insert(host.to_string(), record);
    let ranges = ISTIO_RANGES.map(|r| r.parse().unwrap());
    let pool = "240.0.0.0/4".parse::<Pool>().unwrap();
    let policy = Policy {
        pools: vec![pool.excluding(&ranges).unwrap()],
        grace: Duration::from_secs(60),
    };
    let decl = declaration_of("race", ours_read.clone()).unwrap();
    let owners = Owners::of([&decl]);
    let metrics = std::sync::Arc::new(StatusMetrics::default());
    let entry = Entry {
        api: &api,
        cluster: "race",
        name: "race",
    };
    let wrote = write_entry(entry, Some(ours_read), &state, &policy, &owners, &metrics)
        .await
        .unwrap();
    assert!(wrote);
    assert_eq!(
        status(cluster, "st3", "race"),
        [
            ("240.240.0.7".to_string(), other.to_string()),
            ("240.0.33.3".to_string(), host.to_string()),
        ]
    );
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(metrics.clone()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert_eq!(
        sample(&text, r#"globaldns_status_conflicts_total{cluster="race"}"#),
        1.0,
        "{text}"
    );
}
