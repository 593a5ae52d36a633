//! The real programs under the tests, and the harness's clusters themselves.

mod support;

use std::process::Command;

use support::kube::{Cluster, bin, istio_crds};

/// The programs come from the Go module proxy at the pinned versions, and the CRDs from the
/// istio.io/api module in Go's module cache.
#[test]
fn programs_and_crds_come_from_their_modules() {
    let out = Command::new("go")
        .arg("version")
        .arg("-m")
        .arg(bin("kube-apiserver"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.lines().any(|l| l.split_whitespace().take(3).eq([
            "mod",
            "k8s.io/kubernetes",
            "v1.36.3"
        ])),
        "{info}"
    );
    let crds = istio_crds().to_str().unwrap();
    assert!(crds.contains("/istio.io/api@v"), "{crds}");
}

#[test]
fn a_cluster_serves_every_version_of_istios_service_entry() {
    let c = Cluster::start();
    let version = c.kubectl_ok(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.36.3");
    let crd = c.kubectl_ok(&[
        "get",
        "crd",
        "serviceentries.networking.istio.io",
        "-o",
        "jsonpath={.spec.versions[*].name} {.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(crd, "v1 v1alpha3 v1beta1 True");
    // Written in one version, read in another: one stored object.
    c.put_service_entry("smoke", "se", &["a.smoke.global"], &["240.0.0.1"]);
    let read = c.kubectl_ok(&[
        "get",
        "serviceentries.v1alpha3.networking.istio.io",
        "se",
        "-n",
        "smoke",
        "-o",
        "jsonpath={.apiVersion} {.spec.hosts[0]}",
    ]);
    assert_eq!(read, "networking.istio.io/v1alpha3 a.smoke.global");
}
