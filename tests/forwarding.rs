//! Names outside the served zones are relayed to a real upstream: a second globaldns process
//! that serves the `example.` zone.

mod support;

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::*;

fn write_entry(dir: &std::path::Path, file: &str, host: &str, addresses: &[String]) {
    std::fs::write(
        dir.join(file),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {file}}}\nspec:\n  hosts: [{host}]\n  addresses: [{}]\n",
            addresses.join(", ")
        ),
    )
    .unwrap();
}

/// An upstream serving `example.` (and a different view of `global.`).
fn upstream() -> (GlobalDns, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_entry(
        dir.path(),
        "web.yaml",
        "web.example",
        &["192.0.2.80".into()],
    );
    write_entry(
        dir.path(),
        "shadow.yaml",
        "nope.default.global",
        &["192.0.2.99".into()],
    );
    let many: Vec<String> = (1..=60).map(|i| format!("198.51.100.{i}")).collect();
    write_entry(dir.path(), "big.yaml", "big.example", &many);
    let server = GlobalDns::start(dir.path(), &["--zone", "example", "--zone", "global"]);
    (server, dir)
}

#[test]
fn other_names_are_relayed_with_id_case_and_edns_kept() {
    let (up, _dir) = upstream();
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &up.addr.to_string()]);
    for proto in [Proto::Udp, Proto::Tcp] {
        let mut msg = query_message("WeB.ExAmPlE.", RecordType::A, Some(1232));
        msg.edns.as_mut().unwrap().set_dnssec_ok(true);
        let packet = msg.to_vec().unwrap();
        let raw = exchange_raw(front.addr, &packet, proto).expect("reply");
        let reply = Message::from_vec(&raw).unwrap();
        assert_eq!(reply.metadata.id, msg.metadata.id);
        assert_eq!(answer_ips(&reply), ["192.0.2.80"], "{proto:?}");
        assert_eq!(
            raw[12..12 + 13],
            packet[12..12 + 13],
            "question case restored"
        );
        assert!(
            reply
                .edns
                .expect("client's OPT reached the upstream")
                .flags()
                .dnssec_ok
        );
    }
    // Our own answers keep coming from our table.
    let ours = query(
        front.addr,
        "reviews.default.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(answer_ips(&ours), ["240.0.0.3"]);
    assert!(
        ours.metadata.recursion_available,
        "RA is set when a forwarder is configured"
    );
}

#[test]
fn names_inside_our_zone_are_never_forwarded() {
    let (up, _dir) = upstream();
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &up.addr.to_string()]);
    let reply = query(
        front.addr,
        "nope.default.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());
}

#[test]
fn tcp_clients_get_complete_answers_and_udp_clients_truncated_ones() {
    let (up, _dir) = upstream();
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &up.addr.to_string()]);
    let classic = query_message("big.example.", RecordType::A, None);
    let over_tcp = exchange(front.addr, &classic, Proto::Tcp);
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(over_tcp.answers.len(), 60);
    let over_udp = exchange(front.addr, &classic, Proto::Udp);
    assert!(
        over_udp.metadata.truncation,
        "a UDP client gets TC and retries itself"
    );
    let dig = kdig(front.addr, &["+noedns", "big.example", "A"]);
    assert_eq!(dig.matches("198.51.100.").count(), 60, "{dig}");
}

#[test]
fn dead_upstream_gives_servfail_in_time() {
    // A bound-then-closed port: nothing listens there.
    let dead = dead_upstream();
    let front = GlobalDns::start(
        &repo_zones(),
        &[
            "--upstream",
            &dead.to_string(),
            "--forward-timeout-ms",
            "1500",
        ],
    );
    for proto in [Proto::Udp, Proto::Tcp] {
        let started = Instant::now();
        let reply = query(front.addr, "web.example.", RecordType::A, proto);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{proto:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // A silent upstream (bound, never answering) runs into the budget instead.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let front = GlobalDns::start(
        &repo_zones(),
        &[
            "--upstream",
            &silent.local_addr().unwrap().to_string(),
            "--forward-timeout-ms",
            "800",
        ],
    );
    let started = Instant::now();
    let reply = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() >= Duration::from_millis(700)
            && started.elapsed() < Duration::from_secs(3)
    );
}

#[test]
fn second_upstream_answers_when_the_first_is_dead() {
    let (up, _dir) = upstream();
    let dead = dead_upstream();
    let front = GlobalDns::start(
        &repo_zones(),
        &[
            "--upstream",
            &dead.to_string(),
            "--upstream",
            &up.addr.to_string(),
        ],
    );
    let reply = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(answer_ips(&reply), ["192.0.2.80"]);
}

#[test]
fn without_upstream_other_names_are_refused() {
    let front = GlobalDns::start(&repo_zones(), &[]);
    let reply = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(!reply.metadata.recursion_available);
}

/// A question compressed with a pointer into the header is FORMERR at once: never relayed as
/// sent (upstreams drop it, and a forward slot would wait out the whole budget).
#[test]
fn a_question_pointing_into_the_header_is_formerr_not_forwarded() {
    let zones = tempfile::tempdir().unwrap();
    write_entry(
        zones.path(),
        "web.yaml",
        "web.example",
        &["192.0.2.80".into()],
    );
    let upstream = GlobalDns::start(zones.path(), &["--zone", "example", "--query-log"]);
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &upstream.addr.to_string()]);
    let mut packet = query_message("web.example.", RecordType::A, None)
        .to_vec()
        .unwrap();
    packet.truncate(12);
    packet.extend_from_slice(&[0xC0, 4, 0, 1, 0, 1]);
    for proto in [Proto::Udp, Proto::Tcp] {
        let started = Instant::now();
        let reply = exchange_raw(front.addr, &packet, proto).expect("a reply");
        assert_eq!(reply[3] & 0x0F, 1, "{proto:?}: FORMERR");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The upstream logs what reaches it: the well-formed query does, the other never did.
    let count = || upstream.log_text().matches("web.example").count();
    assert_eq!(count(), 0, "nothing reached the upstream");
    assert_eq!(
        answer_ips(&query(
            front.addr,
            "web.example.",
            RecordType::A,
            Proto::Udp
        )),
        ["192.0.2.80"]
    );
    assert!(eventually(Duration::from_secs(2), || count() == 1));
}

/// PTR names of pool addresses are ours (issue 15): answered with the hosts on the address, or
/// NXDOMAIN with our SOA, and never forwarded; reverse names outside the pools still are, even
/// right next to a pool.
#[test]
fn reverse_names_of_the_pools_are_ours_and_others_forwarded() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let up = GlobalDns::start(upstream_dir.path(), &["--query-log"]);
    let front = GlobalDns::start(
        &repo_zones(),
        &["--upstream", &up.addr.to_string(), "--pool", "240.0.0.0/4"],
    );
    let ours = kdig(front.addr, &["-x", "240.0.0.3"]);
    assert!(
        ours.contains("status: NOERROR") && ours.contains(" aa"),
        "{ours}"
    );
    assert!(
        ours.contains("3.0.0.240.in-addr.arpa.") && ours.contains("PTR\treviews.default.global."),
        "{ours}"
    );
    let unused = kdig(front.addr, &["-x", "240.9.9.9"]);
    assert!(
        unused.contains("status: NXDOMAIN") && unused.contains(" aa"),
        "{unused}"
    );
    assert!(
        unused.contains("240.in-addr.arpa.") && unused.contains("SOA\tns.dns.global."),
        "{unused}"
    );
    let log = up.log_text();
    assert!(
        !log.contains("240.in-addr"),
        "a pool's PTR name was forwarded:\n{log}"
    );

    for outside in ["10.1.2.3", "239.255.255.255"] {
        let reply = kdig(front.addr, &["-x", outside]);
        assert!(!reply.contains(" aa"), "{outside}: {reply}");
        let reversed: Vec<&str> = outside.split('.').rev().collect();
        let name = format!("{}.in-addr.arpa", reversed.join("."));
        assert!(
            eventually(Duration::from_secs(5), || up.log_text().contains(&name)),
            "{name} not forwarded:\n{}",
            up.log_text()
        );
    }
}
