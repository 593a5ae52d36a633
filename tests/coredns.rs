//! CoreDNS in front, as operators run it: the server block from deploy/coredns/Corefile.global
//! (rendered with test ports) forwarding `.global` to globaldns, which watches a real cluster.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::kube::process::Proc;
use support::kube::{bin, globaldns, shared};
use support::*;

/// deploy/coredns/Corefile.global with its port and upstream replaced for the test, and a
/// `bind` so CoreDNS listens on loopback only (by default it binds every address).
fn render_corefile(port: u16, globaldns: SocketAddr) -> String {
    let block = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/coredns/Corefile.global"),
    )
    .unwrap();
    assert!(block.contains("global:53 {") && block.contains("forward . 10.96.0.53"));
    block
        .replace(
            "global:53 {",
            &format!("global:{port} {{\n    bind 127.0.0.1"),
        )
        .replace("forward . 10.96.0.53", &format!("forward . {globaldns}"))
}

/// CoreDNS on 127.0.0.1 and a free port, answering.
fn start_coredns(dir: &Path, globaldns: SocketAddr) -> (Proc, SocketAddr) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let corefile = dir.join("Corefile");
    std::fs::write(&corefile, render_corefile(port, globaldns)).unwrap();
    let mut cmd = Command::new(bin("coredns"));
    cmd.arg("-conf").arg(&corefile);
    let proc = Proc::spawn("coredns", cmd, &dir.join("coredns.log"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(Duration::from_secs(20), || {
        let msg = query_message("global.", RecordType::SOA, Some(1232));
        exchange_raw(addr, &msg.to_vec().unwrap(), Proto::Udp).is_some()
    });
    assert!(up, "CoreDNS did not answer: {}", proc.log_tail());
    (proc, addr)
}

fn rcode(addr: SocketAddr, name: &str, qtype: RecordType) -> ResponseCode {
    query(addr, name, qtype, Proto::Udp).metadata.response_code
}

#[test]
fn coredns_forwards_global_to_us_and_caches_within_our_ttl() {
    let cluster = shared(1)[0];
    let ns = "coredns-test";
    cluster.put_service_entry(ns, "reviews", &["reviews.cdns.global"], &["240.0.6.3"]);
    cluster.put_service_entry(
        ns,
        "ratings",
        &["ratings.cdns.global"],
        &["240.0.6.4", "2001:db8::4"],
    );
    cluster.put_service_entry(ns, "apps", &["*.apps.cdns.global"], &["240.0.6.10"]);
    let many: Vec<String> = (1..=60).map(|i| format!("240.0.7.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    cluster.put_service_entry(ns, "big", &["big.cdns.global"], &many);
    cluster.put_service_entry(ns, "moving", &["moving.cdns.global"], &["240.0.6.20"]);

    let dir = tempfile::tempdir().unwrap();
    cluster.ensure_namespace("coredns-dns");
    // A short TTL, so that CoreDNS's cache (capped by our TTL) turns over within the test.
    let args = ["--namespace", "coredns-dns", "--ttl", "3"];
    let server = globaldns(dir.path(), &cluster.kubeconfig("c1"), &args);
    assert!(eventually(Duration::from_secs(10), || resolves_to(
        &server,
        "moving.cdns.global.",
        "240.0.6.20"
    )));
    let (_coredns, front) = start_coredns(dir.path(), server.addr);

    let a = query(front, "reviews.cdns.global.", RecordType::A, Proto::Udp);
    assert_eq!(answer_ips(&a), ["240.0.6.3"]);
    let aaaa = query(front, "ratings.cdns.global.", RecordType::AAAA, Proto::Udp);
    assert_eq!(answer_ips(&aaaa), ["2001:db8::4"]);
    // NODATA: the name exists, the type does not; the SOA comes along for negative caching.
    let nodata = query(front, "reviews.cdns.global.", RecordType::AAAA, Proto::Udp);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(
        nodata
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );
    assert_eq!(
        rcode(front, "nope.cdns.global.", RecordType::A),
        ResponseCode::NXDomain
    );
    assert_eq!(
        answer_ips(&query(
            front,
            "shop.apps.cdns.global.",
            RecordType::A,
            Proto::Udp
        )),
        ["240.0.6.10"],
        "wildcard"
    );
    // 60 addresses do not fit in 512 bytes: UDP without EDNS is truncated, TCP gets them all.
    let plain = query_message("big.cdns.global.", RecordType::A, None);
    let udp = exchange(front, &plain, Proto::Udp);
    assert!(udp.metadata.truncation, "TC over UDP without EDNS");
    let tcp = exchange(front, &plain, Proto::Tcp);
    assert_eq!(answer_ips(&tcp).len(), 60);
    let kdig_tcp = kdig(front, &["+tcp", "+short", "big.cdns.global", "A"]);
    assert_eq!(kdig_tcp.lines().count(), 60, "{kdig_tcp}");

    // A change in the cluster: CoreDNS answers from its cache until our TTL runs out, then the
    // new address.
    assert_eq!(
        answer_ips(&query(
            front,
            "moving.cdns.global.",
            RecordType::A,
            Proto::Udp
        )),
        ["240.0.6.20"]
    );
    cluster.put_service_entry(ns, "moving", &["moving.cdns.global"], &["240.0.6.21"]);
    assert!(eventually(Duration::from_secs(10), || resolves_to(
        &server,
        "moving.cdns.global.",
        "240.0.6.21"
    )));
    assert!(
        eventually(Duration::from_secs(10), || answer_ips(&query(
            front,
            "moving.cdns.global.",
            RecordType::A,
            Proto::Udp
        )) == ["240.0.6.21"]),
        "CoreDNS's cache turned over within our TTL"
    );
}

/// CoreDNS serving `global.` itself as a secondary of globaldns (issue 15): each cluster's
/// CoreDNS answers the mesh's names from its own copy, no extra hop. Its `secondary` plugin
/// transfers by AXFR at start and on the SOA refresh timer (it keeps the copy in memory only):
/// with `--soa-refresh 2`, a new ServiceEntry reaches it within seconds.
#[test]
fn coredns_secondary_copies_global_and_refreshes_it() {
    let zones = tempfile::tempdir().unwrap();
    let entry = |name: &str, host: &str, vip: &str| service_entry(name, &[host], &[vip]);
    std::fs::write(
        zones.path().join("a.yaml"),
        entry("reviews", "reviews.sec.global", "240.0.8.3"),
    )
    .unwrap();
    let server = GlobalDns::start(zones.path(), &["--soa-refresh", "2", "--soa-retry", "2"]);

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            "global:{port} {{\n    bind 127.0.0.1\n    secondary {{\n        transfer from {}\n    }}\n}}\n",
            server.addr
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("coredns"));
    cmd.arg("-conf").arg(&corefile);
    let proc = Proc::spawn("coredns", cmd, &dir.path().join("coredns.log"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // CoreDNS may not listen yet: no reply is "not yet".
    let copied = |name: &str, vip: &str| {
        let msg = query_message(name, RecordType::A, Some(1232));
        let reply = exchange_raw(addr, &msg.to_vec().unwrap(), Proto::Udp);
        reply
            .and_then(|raw| hickory_proto::op::Message::from_vec(&raw).ok())
            .is_some_and(|r| r.metadata.authoritative && answer_ips(&r) == [vip])
    };
    assert!(
        eventually(Duration::from_secs(20), || copied(
            "reviews.sec.global.",
            "240.0.8.3"
        )),
        "first transfer\n{}\n{}",
        proc.log_tail(),
        server.log_text()
    );
    std::fs::write(
        zones.path().join("b.yaml"),
        entry("web", "web.sec.global", "240.0.8.9"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || copied(
            "web.sec.global.",
            "240.0.8.9"
        )),
        "after the refresh\n{}\n{}",
        proc.log_tail(),
        server.log_text()
    );
    assert!(server.log_text().contains("zone transferred"));
}
