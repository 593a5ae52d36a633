//! Never colliding with Istio's own VIPs (issue 16): no pool hands out what istiod allocates
//! from (`240.240.0.0/16`, `2001:2::/48`), a pool inside those ranges is refused, a VIP stored
//! there before keeps being answered and is reported for an operator to move, and an address
//! some cluster's `status.addresses` holds for a host is never given to another host.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use globaldns::alloc::{DEFAULT_POOL, ISTIO_RANGES, Pool};
use ipnet::IpNet;
use support::kube::{globaldns, shared};
use support::*;

fn istio_v4() -> IpNet {
    ISTIO_RANGES[0].parse().unwrap()
}

/// Hosts (`{prefix}{i}.global`) whose first choice in the whole default pool lies inside
/// Istio's IPv4 range.
fn hosts_first_in_istio_range(prefix: &str, count: usize) -> Vec<String> {
    let whole: Pool = DEFAULT_POOL.parse().unwrap();
    (0..1_000_000)
        .map(|i| format!("{prefix}{i}.global"))
        .filter(|h| istio_v4().contains(&whole.probe(h).next().unwrap()))
        .take(count)
        .collect()
}

fn in_istio_range(address: &str) -> bool {
    let ip: IpAddr = address.parse().unwrap();
    ISTIO_RANGES
        .iter()
        .any(|r| r.parse::<IpNet>().unwrap().contains(&ip))
}

#[test]
fn hosts_whose_first_choice_is_istios_get_an_address_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_first_in_istio_range("first", 3);
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    std::fs::write(
        dir.path().join("hosts.yaml"),
        service_entry("first", &refs, &[]),
    )
    .unwrap();
    let server = GlobalDns::start(dir.path(), &[]);
    for host in &hosts {
        let fqdn = format!("{host}.");
        assert!(eventually(TIMEOUT, || a_ips(&server, &fqdn).len() == 1));
        let vip = a_ips(&server, &fqdn).remove(0);
        assert!(!in_istio_range(&vip), "{host} got {vip}");
    }
}

/// A pool of 127 usable addresses once a (flag-given) Istio range takes its upper half: 120 hosts
/// fill it nearly, and not one address of that half is handed out.
#[test]
fn a_nearly_full_pool_never_spills_into_istios_range() {
    let dir = tempfile::tempdir().unwrap();
    let hosts: Vec<String> = (0..120).map(|i| format!("n{i}.full.global")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    std::fs::write(
        dir.path().join("full.yaml"),
        service_entry("full", &refs, &[]),
    )
    .unwrap();
    let server = GlobalDns::start(
        dir.path(),
        &[
            "--pool",
            "10.99.0.0/24",
            "--istio-range",
            "10.99.0.128/25",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let range: IpNet = "10.99.0.128/25".parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for host in &hosts {
        let fqdn = format!("{host}.");
        assert!(
            eventually(TIMEOUT, || a_ips(&server, &fqdn).len() == 1),
            "{host}"
        );
        let vip: Ipv4Addr = a_ips(&server, &fqdn)[0].parse().unwrap();
        assert!(!range.contains(&IpAddr::V4(vip)), "{host} got {vip}");
        seen.insert(vip);
    }
    assert_eq!(seen.len(), 120);
    let (_, metrics) = http_get(server.metrics.unwrap(), "/metrics");
    assert_eq!(
        sample(&metrics, r#"globaldns_vip_pool_size{pool="10.99.0.0/24"}"#),
        127.0
    );
}

#[test]
fn a_pool_inside_istios_range_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (program, args, instead) in [
        (
            env!("CARGO_BIN_EXE_globaldns"),
            vec!["--pool", "2001:2::/48"],
            "fd00:f1d0::/48",
        ),
        (
            env!("CARGO_BIN_EXE_dnsctl"),
            vec!["--pool", "240.240.3.0/24", "list"],
            "240.0.0.0/4",
        ),
    ] {
        let out = Command::new(program)
            .args(&args)
            .args(["--state"])
            .arg(dir.path().join("state.json"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{program}: {stderr}");
        assert!(
            stderr.contains("istiod allocates VIPs of its own") && stderr.contains(instead),
            "{program}: {stderr}"
        );
    }
}

/// A VIP stored inside Istio's range before it was left out of the pool: still answered (a VIP
/// never moves on its own), counted and reported until an operator moves it.
#[test]
fn a_stored_vip_inside_istios_range_stays_until_an_operator_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(
        zones.join("old.yaml"),
        service_entry("old", &["old.default.global"], &[]),
    )
    .unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"format": "globaldns.io/allocations/v1", "allocations": {"old.default.global": {"addresses": ["240.240.0.7"]}}}"#,
    )
    .unwrap();
    let state_arg = state.to_str().unwrap();
    let server = GlobalDns::start(&zones, &["--state", state_arg, "--metrics", "127.0.0.1:0"]);
    assert!(eventually(TIMEOUT, || a_ips(
        &server,
        "old.default.global."
    ) == ["240.240.0.7"]));
    let stranded = || {
        let (_, metrics) = http_get(server.metrics.unwrap(), "/metrics");
        sample(&metrics, "globaldns_vips_in_istio_range")
    };
    assert_eq!(stranded(), 1.0);
    assert!(
        server
            .log_text()
            .contains("VIP inside a range istiod allocates from")
    );

    let (code, out, err) = dnsctl(&state, &["check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        (out.clone() + &err).contains("old.default.global: 240.240.0.7 is inside 240.240.0.0/16"),
        "{out}{err}"
    );
    let (code, out, err) = dnsctl(&state, &["allocate", "old.default.global", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    let moved = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(!in_istio_range(&moved), "{out}");
    assert!(eventually(Duration::from_secs(10), || a_ips(
        &server,
        "old.default.global."
    ) == [moved.clone()]));
    assert!(eventually(Duration::from_secs(10), || stranded() == 0.0));
    assert_eq!(dnsctl(&state, &["check"]).0, 0);
}

/// Whatever a ServiceEntry's `status.addresses` holds for host A (as istiod writes it) is never
/// given to host B, even when it is B's first choice, and across a restart.
#[test]
fn an_address_a_status_holds_for_one_host_is_never_given_to_another() {
    let cluster = shared(1)[0];
    let ns = "st1";
    cluster.ensure_namespace(ns);
    // B's first choice in our pool, held in a status for A.
    let host_b = "b.st1.global";
    let ranges = ISTIO_RANGES.map(|r| r.parse::<IpNet>().unwrap());
    let pool = DEFAULT_POOL
        .parse::<Pool>()
        .unwrap()
        .excluding(&ranges)
        .unwrap();
    let wanted = pool.probe(host_b).next().unwrap().to_string();
    cluster.put_service_entry(ns, "a", &["a.st1.global"], &[]);
    cluster.set_status_addresses(ns, "a", &[(&wanted, "a.st1.global")]);
    cluster.put_service_entry(ns, "b", &[host_b], &[]);

    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &Path| {
        globaldns(
            dir,
            &cluster.kubeconfig("st"),
            &["--namespace", "st1-dns", "--sync-timeout", "10"],
        )
    };
    cluster.ensure_namespace("st1-dns");
    let server = run(dir.path());
    let vip_of = |server: &GlobalDns| {
        assert!(eventually(Duration::from_secs(10), || a_ips(
            server,
            "b.st1.global."
        )
        .len()
            == 1));
        a_ips(server, "b.st1.global.").remove(0)
    };
    let first = vip_of(&server);
    assert_ne!(first, wanted, "B was given what A's status holds");
    drop(server);
    let server = run(dir.path());
    assert_eq!(vip_of(&server), first, "B's VIP moved across a restart");
}
