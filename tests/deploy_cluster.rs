//! deploy/ for real: `kubectl apply -k deploy/` against a real API server (no kubelet, so no pod
//! runs: the objects are created and validated by the server), then the `globaldns` binary run
//! outside with a TokenRequest token of deploy/'s ServiceAccount, so that exactly the RBAC
//! deploy/ grants is what it has.

mod support;

use std::path::Path;
use std::time::Duration;

use support::kube::{Cluster, globaldns_writing as globaldns};
use support::*;

const WITHIN: Duration = Duration::from_secs(15);

/// globaldns as deploy/'s ServiceAccount would run it (its namespace, a kubeconfig with the
/// account's token), with an empty zones directory in `dir`.
fn start_as_service_account(cluster: &Cluster, dir: &Path) -> GlobalDns {
    let token = cluster.token("globaldns", "globaldns");
    let kubeconfig = cluster.token_kubeconfig("Kubernetes", &token);
    let args = ["--namespace", "globaldns", "--sync-timeout", "10"];
    globaldns(dir, &kubeconfig, &args)
}

#[test]
fn deploy_applies_and_its_rbac_is_exactly_enough() {
    let cluster = Cluster::start();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let applied = cluster.kubectl_ok(&["apply", "-k", deploy.to_str().unwrap()]);
    for object in [
        "namespace/globaldns",
        "serviceaccount/globaldns",
        "clusterrole.rbac.authorization.k8s.io/globaldns",
        "clusterrolebinding.rbac.authorization.k8s.io/globaldns",
        "role.rbac.authorization.k8s.io/globaldns",
        "rolebinding.rbac.authorization.k8s.io/globaldns",
        "deployment.apps/globaldns",
        "service/globaldns",
        "poddisruptionbudget.policy/globaldns",
    ] {
        assert!(applied.contains(&format!("{object} created")), "{applied}");
    }
    // The server kept the objects as written: `kubectl diff` (a server-side dry run of the
    // apply) finds nothing. (A second `apply` would report the PodDisruptionBudget
    // "configured" all the same: kubectl always patches its selector, which replaces as a whole.)
    let diff = cluster.kubectl(&["diff", "-k", deploy.to_str().unwrap()]);
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // What the server must see: ServiceEntries of any namespace, and a remote cluster's.
    cluster.put_service_entry("shop", "cart", &["cart.shop.global"], &[]);
    cluster.put_service_entry("shop", "db", &["db.shop.global"], &["240.0.5.1"]);
    let remote = Cluster::start();
    remote.put_service_entry("west", "pay", &["pay.west.global"], &["240.0.5.2"]);
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-west", "namespace": "globaldns",
            "labels": {"istio/multiCluster": "true"}},
        "stringData": {"west": remote.kubeconfig("west")}});
    cluster.apply(&secret.to_string());

    let dir = tempfile::tempdir().unwrap();
    let server = start_as_service_account(&cluster, dir.path());
    assert!(
        eventually(WITHIN, || a_ips(&server, "cart.shop.global.").len() == 1),
        "watched ServiceEntries, took the Lease, wrote a ConfigMap: {}",
        server.log_text()
    );
    assert_eq!(a_ips(&server, "db.shop.global."), ["240.0.5.1"]);
    assert!(
        eventually(WITHIN, || a_ips(&server, "pay.west.global.")
            == ["240.0.5.2"]),
        "read the remote secret: {}",
        server.log_text()
    );
    assert!(
        cluster
            .objects("configmaps", "globaldns")
            .iter()
            .any(|cm| cm["data"].get("cart.shop.global").is_some())
    );
    assert_eq!(cluster.objects("leases", "globaldns").len(), 1);
    // Our VIP went into the entry's status, where istiod reads it: deploy/'s RBAC allows that.
    let vip = a_ips(&server, "cart.shop.global.").remove(0);
    let status = || {
        let entries = cluster.objects("serviceentries.networking.istio.io", "shop");
        let cart = entries
            .iter()
            .find(|e| e["metadata"]["name"] == "cart")
            .cloned();
        cart.map(|e| e["status"]["addresses"].clone())
    };
    let ours = serde_json::json!([{"value": vip, "host": "cart.shop.global"}]);
    assert!(
        eventually(WITHIN, || status() == Some(ours.clone())),
        "{:?}\n{}",
        status(),
        server.log_text()
    );
    assert!(
        !server.log_text().contains("forbidden"),
        "{}",
        server.log_text()
    );
    drop(server);

    // One rule missing from the start: the Lease rules go from the Role. The error names the
    // verb and the resource; what needs no new VIP is still answered.
    let role = cluster.kubectl_ok(&["get", "role", "globaldns", "-n", "globaldns", "-o", "json"]);
    let mut role: serde_json::Value = serde_json::from_str(&role).unwrap();
    let rules = role["rules"].as_array_mut().unwrap();
    rules.retain(|r| r["resources"][0] != "leases");
    role["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    cluster.kubectl_input(&["replace", "-f", "-"], Some(&role.to_string()));
    cluster.put_service_entry("shop", "new", &["new.shop.global"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start_as_service_account(&cluster, dir.path());
    assert!(eventually(WITHIN, || a_ips(&server, "db.shop.global.")
        == ["240.0.5.1"]));
    assert!(
        eventually(WITHIN, || {
            let log = server.log_text();
            log.contains("leases") && log.contains("forbidden")
        }),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("leases") && l.contains("forbidden"))
        .unwrap();
    eprintln!("what the operator sees: {line}");
    assert!(
        line.contains("cannot get resource \"leases\"")
            || line.contains("cannot create resource \"leases\""),
        "{line}"
    );
    assert!(a_ips(&server, "new.shop.global.").is_empty());
    assert_eq!(
        a_ips(&server, "cart.shop.global.").len(),
        1,
        "stored before"
    );
}
