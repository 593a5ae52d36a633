//! The test harness's real clusters themselves.

mod support;

use support::kube::Cluster;

#[test]
fn a_cluster_serves_istio_crds() {
    let t = std::time::Instant::now();
    let c = Cluster::start();
    eprintln!("started in {:?}", t.elapsed());
    c.put_service_entry("smoke", "se", &["a.smoke.global"], &["240.0.0.1"]);
    eprintln!(
        "{}",
        c.kubectl_ok(&["get", "serviceentries.networking.istio.io", "-A"])
    );
}
