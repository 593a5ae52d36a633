//! The server answering `.global` from zones/, queried over real sockets.

mod support;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::net::UdpSocket;
use std::time::Duration;

use support::*;

fn soa_in_authority(reply: &Message) -> bool {
    matches!(reply.authorities.as_slice(), [r] if r.record_type() == RecordType::SOA && r.name.to_ascii() == "global.")
}

#[test]
fn known_names_answer_over_udp_and_tcp() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for proto in [Proto::Udp, Proto::Tcp] {
        let reply = query(server.addr, "reviews.default.global.", RecordType::A, proto);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative, "{proto:?}: AA");
        assert_eq!(answer_ips(&reply), ["240.0.0.3"]);
        assert_eq!(reply.answers[0].ttl, 30);
        assert_eq!(reply.answers[0].name.to_ascii(), "reviews.default.global.");
        let vm = query(server.addr, "httpbin.bar.global.", RecordType::A, proto);
        assert_eq!(answer_ips(&vm), ["127.255.0.3"]);
    }
}

#[test]
fn every_listen_address_serves_udp_and_tcp() {
    // IPv4 and IPv6 side by side, as a dual-stack cluster needs.
    let server = GlobalDns::start(&repo_zones(), &["--listen", "[::1]:0"]);
    assert_eq!(server.addrs.len(), 2);
    assert!(server.addrs[1].is_ipv6());
    for addr in &server.addrs {
        for proto in [Proto::Udp, Proto::Tcp] {
            let reply = query(*addr, "reviews.default.global.", RecordType::A, proto);
            assert_eq!(answer_ips(&reply), ["240.0.0.3"], "{addr} {proto:?}");
        }
    }
}

#[test]
fn answer_ttl_is_configurable() {
    let server = GlobalDns::start(&repo_zones(), &["--ttl", "120"]);
    let reply = query(
        server.addr,
        "reviews.default.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(reply.answers[0].ttl, 120);
    // Negative answers stay at the SOA minimum (30 by default).
    let nx = query(server.addr, "nope.global.", RecordType::A, Proto::Udp);
    assert_eq!(nx.authorities[0].ttl, 30);
}

#[test]
fn dual_stack_hosts_split_a_and_aaaa() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let a = query(
        server.addr,
        "ratings.prod.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(answer_ips(&a), ["240.0.0.4"]);
    let aaaa = query(
        server.addr,
        "ratings.prod.global.",
        RecordType::AAAA,
        Proto::Udp,
    );
    assert_eq!(answer_ips(&aaaa), ["2001:2::4"]);
    // v6-only host: A is NODATA.
    let v6only = query(
        server.addr,
        "details.prod.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(v6only.metadata.response_code, ResponseCode::NoError);
    assert!(v6only.answers.is_empty() && soa_in_authority(&v6only));
}

#[test]
fn other_type_of_a_known_name_is_nodata_with_soa() {
    let server = GlobalDns::start(&repo_zones(), &["--soa-minimum", "15"]);
    for proto in [Proto::Udp, Proto::Tcp] {
        let reply = query(
            server.addr,
            "reviews.default.global.",
            RecordType::AAAA,
            proto,
        );
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty());
        assert!(soa_in_authority(&reply), "{:?}", reply.authorities);
        // RFC 2308: the negative TTL is the SOA minimum.
        assert_eq!(reply.authorities[0].ttl, 15);
        let RData::SOA(soa) = &reply.authorities[0].data else {
            panic!()
        };
        assert_eq!(soa.minimum, 15);
    }
}

#[test]
fn unknown_name_is_nxdomain_with_soa() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for proto in [Proto::Udp, Proto::Tcp] {
        let reply = query(server.addr, "nope.default.global.", RecordType::A, proto);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty() && soa_in_authority(&reply));
    }
}

#[test]
fn empty_non_terminals_are_nodata() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for name in ["default.global.", "bar.global.", "apps.global."] {
        let reply = query(server.addr, name, RecordType::A, Proto::Udp);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(
            reply.answers.is_empty() && soa_in_authority(&reply),
            "{name}"
        );
    }
}

#[test]
fn apex_has_soa_and_ns() {
    let server = GlobalDns::start(
        &repo_zones(),
        &[
            "--soa-mname",
            "dns.mesh.example",
            "--soa-rname",
            "ops.mesh.example",
            "--soa-refresh",
            "600",
        ],
    );
    let soa = query(server.addr, "global.", RecordType::SOA, Proto::Tcp);
    let RData::SOA(data) = &soa.answers[0].data else {
        panic!("{soa:?}")
    };
    assert_eq!(data.mname.to_ascii(), "dns.mesh.example.");
    assert_eq!(data.rname.to_ascii(), "ops.mesh.example.");
    assert_eq!(data.refresh, 600);
    assert!(soa.metadata.authoritative);
    let ns = query(server.addr, "global.", RecordType::NS, Proto::Udp);
    let RData::NS(target) = &ns.answers[0].data else {
        panic!("{ns:?}")
    };
    assert_eq!(target.0.to_ascii(), "dns.mesh.example.");
    // Defaults derive from the zone.
    let plain = GlobalDns::start(&repo_zones(), &[]);
    let soa = query(plain.addr, "global.", RecordType::SOA, Proto::Udp);
    let RData::SOA(data) = &soa.answers[0].data else {
        panic!()
    };
    assert_eq!(data.mname.to_ascii(), "ns.dns.global.");
    assert_eq!(data.rname.to_ascii(), "hostmaster.global.");
}

#[test]
fn question_case_is_kept_and_matching_ignores_it() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let msg = query_message("ReViEwS.DeFaUlT.gLoBaL.", RecordType::A, None);
    let packet = msg.to_vec().unwrap();
    let raw = exchange_raw(server.addr, &packet, Proto::Udp).unwrap();
    let question_end = 12 + "ReViEwS.DeFaUlT.gLoBaL.".len() + 1 + 4;
    assert_eq!(
        raw[12..question_end],
        packet[12..question_end],
        "question echoed byte for byte"
    );
    assert_eq!(answer_ips(&Message::from_vec(&raw).unwrap()), ["240.0.0.3"]);
}

#[test]
fn wildcards_cover_names_without_a_closer_match() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for name in ["tenant1.apps.global.", "a.b.apps.global.", "*.apps.global."] {
        let reply = query(server.addr, name, RecordType::A, Proto::Udp);
        assert_eq!(answer_ips(&reply), ["240.0.0.10"], "{name}");
        assert_eq!(
            reply.answers[0].name.to_ascii(),
            name,
            "owner is the query name"
        );
    }
    let nodata = query(
        server.addr,
        "tenant1.apps.global.",
        RecordType::AAAA,
        Proto::Udp,
    );
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty() && soa_in_authority(&nodata));
    // No wildcard next to reviews: its siblings do not exist.
    let reply = query(
        server.addr,
        "x.reviews.default.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn edns_is_echoed_and_do_bit_copied() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let mut msg = query_message("reviews.default.global.", RecordType::A, Some(4096));
    msg.edns.as_mut().unwrap().set_dnssec_ok(true);
    let reply = exchange(server.addr, &msg, Proto::Udp);
    let edns = reply.edns.expect("OPT in reply");
    assert!(edns.flags().dnssec_ok);
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), 1232);
    let plain = exchange(
        server.addr,
        &query_message("reviews.default.global.", RecordType::A, None),
        Proto::Udp,
    );
    assert!(plain.edns.is_none(), "no OPT for a query without one");
}

#[test]
fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let zones = tempfile::tempdir().unwrap();
    let addresses: Vec<String> = (1..=60).map(|i| format!("240.0.1.{i}")).collect();
    std::fs::write(
        zones.path().join("big.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: big}}\nspec:\n  hosts: [big.global]\n  addresses: [{}]\n",
            addresses.join(", ")
        ),
    )
    .unwrap();
    let server = GlobalDns::start(zones.path(), &[]);
    let classic = query_message("big.global.", RecordType::A, None);
    let raw = exchange_raw(server.addr, &classic.to_vec().unwrap(), Proto::Udp).unwrap();
    assert!(raw.len() <= 512, "{} bytes", raw.len());
    let truncated = Message::from_vec(&raw).unwrap();
    assert!(truncated.metadata.truncation);
    let full = exchange(server.addr, &classic, Proto::Tcp);
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 60);
    // The client's EDNS size is respected: 600 bytes cannot hold 60 records.
    let small = exchange(
        server.addr,
        &query_message("big.global.", RecordType::A, Some(600)),
        Proto::Udp,
    );
    assert!(small.metadata.truncation && small.answers.is_empty());
    assert!(small.edns.is_some(), "OPT stays in a truncated reply");
    // An EDNS client with room gets everything over UDP.
    let roomy = exchange(
        server.addr,
        &query_message("big.global.", RecordType::A, Some(1232)),
        Proto::Udp,
    );
    assert_eq!(roomy.answers.len(), 60);
    // A real client falls back to TCP on its own.
    let dig = kdig(server.addr, &["+noedns", "big.global", "A"]);
    assert_eq!(dig.matches("240.0.1.").count(), 60, "{dig}");
    assert!(dig.contains("(TCP)"), "{dig}");
}

#[test]
fn any_is_answered_with_what_exists() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let reply = query(
        server.addr,
        "ratings.prod.global.",
        RecordType::ANY,
        Proto::Udp,
    );
    assert_eq!(answer_ips(&reply), ["2001:2::4", "240.0.0.4"]);
    let missing = query(
        server.addr,
        "nope.prod.global.",
        RecordType::ANY,
        Proto::Udp,
    );
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn unsupported_opcodes_get_notimp() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for opcode in [OpCode::Notify, OpCode::Update, OpCode::Status] {
        let mut msg = query_message("global.", RecordType::SOA, None);
        msg.metadata.op_code = opcode;
        let reply = exchange(server.addr, &msg, Proto::Udp);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NotImp,
            "{opcode:?}"
        );
        assert_eq!(reply.metadata.op_code, opcode);
    }
}

/// `version.bind` and friends (class CH) are ours: the `--identity` text, or REFUSED; never
/// forwarded to the upstream, whose identity they would report. QCLASS ANY gets the IN data
/// without AA, as NSD, BIND and Knot answer it.
#[test]
fn identity_names_in_class_ch_are_ours_and_qclass_any_is_not_authoritative() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let up = GlobalDns::start(
        upstream_dir.path(),
        &["--identity", "the-upstream", "--query-log"],
    );
    let up_flag = up.addr.to_string();
    let named = GlobalDns::start(
        &repo_zones(),
        &["--identity", "globaldns test", "--upstream", &up_flag],
    );
    for name in [
        "version.bind",
        "version.server",
        "hostname.bind",
        "id.server",
    ] {
        let out = kdig(named.addr, &["CH", "TXT", name]);
        assert!(out.contains("NOERROR") && out.contains(" aa"), "{out}");
        assert!(out.contains("\"globaldns test\""), "{name}: {out}");
        assert!(!out.contains("the-upstream"), "{out}");
    }
    let quiet = GlobalDns::start(&repo_zones(), &["--upstream", &up_flag]);
    for name in ["version.bind", "id.server", "www.example"] {
        let out = kdig(quiet.addr, &["CH", "TXT", name]);
        assert!(out.contains("status: REFUSED"), "{name}: {out}");
    }
    let upstream_log = up.log_text();
    assert!(
        !upstream_log.contains("version") && !upstream_log.contains("id.server"),
        "class CH reached the upstream:\n{upstream_log}"
    );

    let any_class = kdig(named.addr, &["-c", "ANY", "reviews.default.global", "A"]);
    assert!(any_class.contains("240.0.0.3"), "{any_class}");
    assert!(
        !any_class.contains(" aa"),
        "AA set for QCLASS ANY: {any_class}"
    );
    let in_class = kdig(named.addr, &["reviews.default.global", "A"]);
    assert!(in_class.contains(" aa"), "{in_class}");
}

#[test]
fn other_classes_inside_the_zone_are_refused() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let mut msg = query_message("reviews.default.global.", RecordType::A, None);
    msg.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    let reply = exchange(server.addr, &msg, Proto::Udp);
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn junk_never_stops_the_server() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let good = query_message("reviews.default.global.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xFF],
        vec![0u8; 11],
        good[..good.len() - 3].to_vec(), // cut inside the question
        [&good[..12], b"\xC0\x0C\x00\x01\x00\x01"].concat(), // name pointing at itself
        [&good[..12], b"\x3F\x00"].concat(), // label longer than the packet
        [&good[..], &[0u8; 40]].concat(), // trailing garbage
    ];
    let mut header_only = good[..12].to_vec();
    header_only[5] = 3; // claims three questions
    junk.push(header_only);
    let mut response = good.clone();
    response[2] |= 0x80;
    junk.push(response);
    for seed in 0..200u32 {
        let len = (seed as usize * 7) % 300;
        junk.push(
            (0..len)
                .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
                .collect(),
        );
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for packet in &junk {
        sock.send_to(packet, server.addr).unwrap();
    }
    // Anything it did answer is a well-formed response, never a crash.
    sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let reply = Message::from_vec(&buf[..n]).expect("replies to junk decode");
        assert_eq!(reply.metadata.message_type, MessageType::Response);
    }
    // Junk over TCP, then a good query on a fresh connection.
    let started = std::time::Instant::now();
    assert!(
        exchange_raw(server.addr, b"\x00\x01\x02", Proto::Tcp).is_none(),
        "connection closed, no reply"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "closed at once, not left hanging"
    );
    let after = query(
        server.addr,
        "reviews.default.global.",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(answer_ips(&after), ["240.0.0.3"]);
    let after_tcp = query(
        server.addr,
        "reviews.default.global.",
        RecordType::A,
        Proto::Tcp,
    );
    assert_eq!(answer_ips(&after_tcp), ["240.0.0.3"]);
}

#[test]
fn malformed_questions_get_formerr() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    let good = query_message("reviews.default.global.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let cut = exchange_raw(server.addr, &good[..good.len() - 3], Proto::Udp).expect("FORMERR");
    let reply = Message::from_vec(&cut).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.id, u16::from_be_bytes([good[0], good[1]]));
}

#[test]
fn kdig_resolves_over_udp_and_tcp() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for transport in ["+notcp", "+tcp"] {
        let out = kdig(
            server.addr,
            &[transport, "+short", "httpbin.bar.global", "A"],
        );
        assert_eq!(out.trim(), "127.255.0.3", "{transport}");
        let out = kdig(server.addr, &[transport, "nope.global", "A"]);
        assert!(
            out.contains("status: NXDOMAIN") && out.contains("aa"),
            "{out}"
        );
    }
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    assert!(server.terminate().success());
}

/// OPT and TSIG cannot be questions (FORMERR); TKEY is not implemented (NOTIMP).
#[test]
fn meta_types_asked_as_questions_are_refused() {
    let server = GlobalDns::start(&repo_zones(), &[]);
    for (qtype, rcode) in [
        (41, ResponseCode::FormErr),
        (250, ResponseCode::FormErr),
        (249, ResponseCode::NotImp),
    ] {
        for proto in [Proto::Udp, Proto::Tcp] {
            let msg = query_message("reviews.default.global.", RecordType::from(qtype), None);
            let reply = exchange(server.addr, &msg, proto);
            assert_eq!(
                reply.metadata.response_code, rcode,
                "type {qtype} {proto:?}"
            );
            assert!(reply.answers.is_empty());
        }
    }
}

/// RA is set only for clients we would resolve other names for.
#[test]
fn recursion_available_only_for_clients_allowed_to_recurse() {
    let upstream = dead_upstream().to_string();
    for (allow, ra) in [("127.0.0.0/8", true), ("10.0.0.0/8", false)] {
        let args = ["--upstream", upstream.as_str(), "--allow-from", allow];
        let server = GlobalDns::start(&repo_zones(), &args);
        let reply = query(
            server.addr,
            "reviews.default.global.",
            RecordType::A,
            Proto::Udp,
        );
        assert!(reply.metadata.authoritative);
        assert_eq!(
            reply.metadata.recursion_available, ra,
            "--allow-from {allow}"
        );
    }
}

/// Sends one query on `stream` and reads its answer; false when the server closed it.
fn ask(stream: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    let msg = query_message("reviews.default.global.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    let mut len = [0u8; 2];
    if stream.write_all(&framed).is_err() || stream.read_exact(&mut len).is_err() {
        return false;
    }
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).is_ok()
}

/// A TCP connection to `server` from the loopback address `source` that has had one query
/// answered, or `None` when the server closed it instead.
fn tcp_session(server: &GlobalDns, source: &str) -> Option<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    ask(&mut stream).then_some(stream)
}

/// One client holds at most --tcp-per-client connections; others are still served; and a
/// connection kept busy is closed after --tcp-lifetime all the same (RFC 7766 §6.2.3).
#[test]
fn one_client_cannot_hold_the_tcp_listener() {
    let args = ["--tcp-per-client", "4", "--tcp-lifetime", "3"];
    let server = GlobalDns::start(&repo_zones(), &args);
    let held: Vec<_> = (0..10).map(|_| tcp_session(&server, "127.0.0.1")).collect();
    let open = held.iter().filter(|s| s.is_some()).count();
    assert_eq!(open, 4, "per-client cap");
    assert!(
        tcp_session(&server, "127.0.0.2").is_some(),
        "another client is served"
    );

    // A connection asking every half second is still closed once its lifetime is over.
    let mut busy = tcp_session(&server, "127.0.0.3").unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(8) && ask(&mut busy) {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let lived = started.elapsed();
    assert!(
        (std::time::Duration::from_secs(2)..std::time::Duration::from_secs(5)).contains(&lived),
        "closed after its lifetime: {lived:?}"
    );
}

/// The most addresses an entry may have still fit in one answer over TCP.
#[test]
fn four_thousand_addresses_are_answered_over_tcp() {
    let zones = tempfile::tempdir().unwrap();
    let addresses: Vec<String> = (0..4000u32)
        .map(|i| format!("10.0.{}.{}", i >> 8, i & 255))
        .collect();
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    std::fs::write(
        zones.path().join("many.yaml"),
        service_entry("many", &["many.global"], &refs),
    )
    .unwrap();
    let server = GlobalDns::start(zones.path(), &[]);
    let reply = query(server.addr, "many.global.", RecordType::A, Proto::Tcp);
    assert_eq!(reply.answers.len(), 4000);
}

/// A UDP datagram from `source` to `dest` with a forged source address, sent through a raw
/// socket (needs CAP_NET_RAW: the tests run as root). The kernel fills in the IP checksum,
/// length and ID; a zero UDP checksum means none (RFC 768).
fn spoofed_sender() -> socket2::Socket {
    socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(255)), // IPPROTO_RAW: we write the IP header
    )
    .expect("a raw socket (CAP_NET_RAW; the tests run as root)")
}

fn send_spoofed(
    raw: &socket2::Socket,
    source: std::net::SocketAddrV4,
    dest: std::net::SocketAddrV4,
    payload: &[u8],
) {
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&source.ip().octets());
    packet.extend_from_slice(&dest.ip().octets());
    packet.extend_from_slice(&source.port().to_be_bytes());
    packet.extend_from_slice(&dest.port().to_be_bytes());
    packet.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let total = packet.len() as u16;
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    let to: std::net::SocketAddr = dest.into();
    raw.send_to(&packet, &to.into()).expect("raw send");
}

/// Response rate limiting: a flood forged from a victim's address is cut to --rate-limit
/// answers per second (plus every second one over it sent truncated), while a client in
/// another network is answered in full, and the victim itself still gets its answer over TCP.
#[test]
fn a_spoofed_flood_is_cut_to_the_rate_limit_while_others_are_served() {
    const LIMIT: u32 = 50;
    let limit = LIMIT.to_string();
    let server = GlobalDns::start(
        &repo_zones(),
        &["--rate-limit", &limit, "--metrics", "127.0.0.1:0"],
    );
    let std::net::SocketAddr::V4(server_v4) = server.addr else {
        unreachable!("the server listens on 127.0.0.1")
    };
    // The victim: a socket on 127.9.9.9 counting what the server sends it.
    let victim = UdpSocket::bind("127.9.9.9:0").unwrap();
    victim
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let std::net::SocketAddr::V4(victim_addr) = victim.local_addr().unwrap() else {
        unreachable!()
    };
    let counter = std::thread::spawn(move || {
        let (mut full, mut truncated) = (0u32, 0u32);
        let mut buf = [0u8; 1500];
        while let Ok(n) = victim.recv(&mut buf) {
            let reply = Message::from_vec(&buf[..n]).expect("replies decode");
            if reply.metadata.truncation {
                assert!(
                    reply.answers.is_empty(),
                    "a slipped reply carries no answer"
                );
                truncated += 1;
            } else {
                assert_eq!(answer_ips(&reply), ["240.0.0.3"]);
                full += 1;
            }
        }
        (full, truncated)
    });

    // 2,000 forged queries over about two seconds, and meanwhile an honest client on another
    // network asking 40 times (within its own limit).
    let query = query_message("reviews.default.global.", RecordType::A, Some(1232))
        .to_vec()
        .unwrap();
    let raw = spoofed_sender();
    let honest = std::thread::spawn({
        let addr = server.addr;
        move || {
            let sock = UdpSocket::bind("127.10.10.10:0").unwrap();
            sock.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut answered = 0;
            for _ in 0..40 {
                let msg = query_message("reviews.default.global.", RecordType::A, Some(1232));
                sock.send_to(&msg.to_vec().unwrap(), addr).unwrap();
                let mut buf = [0u8; 1500];
                let n = sock.recv(&mut buf).expect("the honest client is answered");
                let reply = Message::from_vec(&buf[..n]).unwrap();
                if !reply.metadata.truncation && answer_ips(&reply) == ["240.0.0.3"] {
                    answered += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            answered
        }
    });
    let started = std::time::Instant::now();
    const SENT: u32 = 2000;
    for i in 0..SENT {
        send_spoofed(&raw, victim_addr, server_v4, &query);
        if i % 100 == 99 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let seconds = started.elapsed().as_secs() as u32 + 1;
    let (full, truncated) = counter.join().unwrap();
    assert_eq!(
        honest.join().unwrap(),
        40,
        "the honest client got every answer"
    );
    println!(
        "{SENT} forged queries over {:?}: the victim got {full} answers and {truncated} truncated replies",
        started.elapsed()
    );
    // Seconds are counted from the server's start, so the flood can touch one more.
    assert!(full <= LIMIT * (seconds + 1), "answers capped: {full}");
    assert!(full >= LIMIT, "the limit is answered in full: {full}");
    let over = SENT - full;
    assert!(
        truncated.abs_diff(over / 2) <= 2 * (seconds + 1),
        "every second response over the limit slips: {truncated} of {over}"
    );
    let (_, metrics) = http_get(server.metrics.unwrap(), "/metrics");
    let slipped = r#"globaldns_rate_limited_responses_total{action="slip"}"#;
    let dropped = r#"globaldns_rate_limited_responses_total{action="drop"}"#;
    assert_eq!(sample(&metrics, slipped), f64::from(truncated));
    assert_eq!(sample(&metrics, dropped), f64::from(over - truncated));

    // The victim is still answered over TCP, which cannot be forged.
    let tcp = tcp_session(&server, "127.9.9.9");
    assert!(tcp.is_some(), "TCP is never rate limited");
}

/// SRV records from ServiceEntry ports (issue 15), asked with kdig: `_<port name>._<tcp|udp>`
/// under the host, the union of every entry's ports, the target's address beside them; a port
/// name that is no DNS label is reported and skipped.
#[test]
fn service_entry_ports_are_srv_records() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |name: &str, ports: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [svc.ns.global]\n  addresses: [240.0.0.20]\n  resolution: DNS\n  endpoints: [{{address: gw.example.com}}]\n  ports: {ports}\n"
        )
    };
    let one = entry(
        "one",
        "[{name: http, number: 80, protocol: HTTP}, {name: bad_name, number: 81, protocol: TCP}]",
    );
    let two = entry(
        "two",
        "[{name: grpc, number: 9090, protocol: GRPC}, {name: dns, number: 53, protocol: UDP}]",
    );
    std::fs::write(dir.path().join("one.yaml"), one).unwrap();
    std::fs::write(dir.path().join("two.yaml"), two).unwrap();
    let server = GlobalDns::start(dir.path(), &[]);
    for (name, port) in [
        ("_http._tcp.svc.ns.global", 80),
        ("_grpc._tcp.svc.ns.global", 9090),
        ("_dns._udp.svc.ns.global", 53),
    ] {
        let out = kdig(server.addr, &[name, "SRV"]);
        assert!(
            out.contains("status: NOERROR") && out.contains(" aa"),
            "{out}"
        );
        assert!(
            out.contains(&format!("SRV\t0 100 {port} svc.ns.global.")),
            "{name}: {out}"
        );
        assert!(
            out.contains("ADDITIONAL SECTION")
                && out.contains("svc.ns.global.")
                && out.contains("240.0.0.20"),
            "{name}: {out}"
        );
    }
    let skipped = kdig(server.addr, &["_bad_name._tcp.svc.ns.global", "SRV"]);
    assert!(skipped.contains("status: NXDOMAIN"), "{skipped}");
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = server.log_text();
            log.contains("port name is not a DNS label") && log.contains("bad_name")
        }),
        "{}",
        server.log_text()
    );
}
