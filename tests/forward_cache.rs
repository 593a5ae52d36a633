//! The forwarder's cache, failover and recursion ACL, against real upstream processes.

mod support;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::*;

/// An upstream authoritative for `example.`: web.example, a wildcard, and NXDOMAIN elsewhere.
fn upstream(ttl: &str) -> (GlobalDns, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let entries = service_entry("web", &["web.example"], &["192.0.2.80"])
        + &service_entry("any", &["*.wild.example"], &["192.0.2.81"]);
    std::fs::write(dir.path().join("example.yaml"), entries).unwrap();
    let server = GlobalDns::start(
        dir.path(),
        &["--zone", "example", "--ttl", ttl, "--soa-minimum", ttl],
    );
    (server, dir)
}

fn ttl_of(msg: &Message) -> u32 {
    msg.answers
        .first()
        .or(msg.authorities.first())
        .map(|r| r.ttl)
        .expect("a record")
}

#[test]
fn cached_answers_outlive_the_upstream_with_ttls_counting_down() {
    let (up, _dir) = upstream("30");
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &up.addr.to_string()]);
    let first = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(answer_ips(&first), ["192.0.2.80"]);
    assert_eq!(ttl_of(&first), 30);
    let nx = query(front.addr, "nope.example.", RecordType::A, Proto::Udp);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    drop(up);
    std::thread::sleep(Duration::from_millis(2100));
    let cached = query(front.addr, "WEB.example.", RecordType::A, Proto::Udp);
    assert_eq!(answer_ips(&cached), ["192.0.2.80"], "served from the cache");
    assert!(
        ttl_of(&cached) <= 28,
        "TTL counted down: {}",
        ttl_of(&cached)
    );
    assert_eq!(cached.queries[0].name().to_ascii(), "WEB.example.");
    let cached_nx = query(front.addr, "nope.example.", RecordType::A, Proto::Tcp);
    assert_eq!(
        cached_nx.metadata.response_code,
        ResponseCode::NXDomain,
        "NXDOMAIN is cached"
    );
    assert!(ttl_of(&cached_nx) <= 28);
    // Never asked before: SERVFAIL, in time.
    let started = Instant::now();
    let miss = query(front.addr, "other.example.", RecordType::A, Proto::Udp);
    assert_eq!(miss.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn expired_answers_are_served_stale_only_when_the_upstream_fails() {
    let (up, _dir) = upstream("1");
    let upstream_flag = up.addr.to_string();
    let common = ["--upstream", &upstream_flag, "--forward-timeout-ms", "500"];
    let stale = GlobalDns::start(
        &repo_zones(),
        &[&common[..], &["--serve-stale", "60"]].concat(),
    );
    let strict = GlobalDns::start(&repo_zones(), &common);
    for front in [&stale, &strict] {
        let first = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
        assert_eq!(answer_ips(&first), ["192.0.2.80"]);
    }
    // While the upstream answers, an expired entry is asked again, not served stale.
    std::thread::sleep(Duration::from_millis(1200));
    let renewed = query(stale.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(ttl_of(&renewed), 1, "a fresh upstream answer");
    drop(up);
    std::thread::sleep(Duration::from_millis(1200));
    let served = query(stale.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(served.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer_ips(&served), ["192.0.2.80"], "served stale");
    assert_eq!(ttl_of(&served), 30, "RFC 8767 TTL");
    let refused = query(strict.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(
        refused.metadata.response_code,
        ResponseCode::ServFail,
        "off by default"
    );
}

#[test]
fn a_silent_first_upstream_is_skipped_in_time() {
    let (up, _dir) = upstream("30");
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_tcp = std::net::TcpListener::bind(silent.local_addr().unwrap()).ok();
    let front = GlobalDns::start(
        &repo_zones(),
        &[
            "--upstream",
            &silent.local_addr().unwrap().to_string(),
            "--upstream",
            &up.addr.to_string(),
            "--cache-size",
            "0",
        ],
    );
    let started = Instant::now();
    let reply = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(answer_ips(&reply), ["192.0.2.80"]);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // Once marked dead it is skipped: the next answer comes at once.
    let started = Instant::now();
    let again = query(front.addr, "www.wild.example.", RecordType::A, Proto::Udp);
    assert_eq!(answer_ips(&again), ["192.0.2.81"]);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        front
            .log_text()
            .contains("skipping it until a probe succeeds")
    );
    drop(silent_tcp);
}

#[test]
fn clients_outside_allow_from_get_refused_for_forwarded_names_only() {
    let (up, _dir) = upstream("30");
    let front = GlobalDns::start(
        &repo_zones(),
        &[
            "--upstream",
            &up.addr.to_string(),
            "--allow-from",
            "10.0.0.0/8",
        ],
    );
    let refused = query(front.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(resolves_to(&front, "reviews.default.global.", "240.0.0.3"));
    let allowed = GlobalDns::start(
        &repo_zones(),
        &[
            "--upstream",
            &up.addr.to_string(),
            "--allow-from",
            "127.0.0.0/8",
        ],
    );
    assert_eq!(
        answer_ips(&query(
            allowed.addr,
            "web.example.",
            RecordType::A,
            Proto::Udp
        )),
        ["192.0.2.80"]
    );
}

#[test]
fn three_thousand_cache_misses_at_3000_qps_are_all_answered() {
    let (up, _dir) = upstream("30");
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &up.addr.to_string()]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let receiver = sock.try_clone().unwrap();
    let collect = std::thread::spawn(move || {
        let mut answered = BTreeSet::new();
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_secs(8);
        while answered.len() < 3000 && Instant::now() < deadline {
            if let Ok(n) = receiver.recv(&mut buf) {
                let reply = Message::from_vec(&buf[..n]).unwrap();
                if answer_ips(&reply) == ["192.0.2.81"] {
                    answered.insert(reply.queries[0].name().to_ascii());
                }
            }
        }
        answered.len()
    });
    sock.connect(front.addr).unwrap();
    let started = Instant::now();
    for i in 0..3000u32 {
        // Paced at 3000 per second.
        let due = started + Duration::from_micros(333 * u64::from(i));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let msg = query_message(&format!("n{i}.wild.example."), RecordType::A, None);
        sock.send(&msg.to_vec().unwrap()).unwrap();
    }
    assert_eq!(
        collect.join().unwrap(),
        3000,
        "every distinct cache miss answered"
    );
}

#[test]
fn identical_questions_in_flight_share_one_upstream_query() {
    // A slow upstream that counts what it is asked.
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = upstream.local_addr().unwrap();
    let counter = std::thread::spawn(move || {
        upstream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut asked = 0;
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            let mut reply = Message::from_vec(&buf[..n]).unwrap();
            // The server's start-up loop probe is not a client question.
            if reply.queries[0].name().to_ascii().to_lowercase() == "same.example." {
                asked += 1;
            }
            reply.metadata.message_type = hickory_proto::op::MessageType::Response;
            let name = reply.queries[0].name().clone();
            let ip = std::net::Ipv4Addr::new(192, 0, 2, 7);
            reply.add_answer(hickory_proto::rr::Record::from_rdata(
                name,
                60,
                hickory_proto::rr::RData::A(ip.into()),
            ));
            std::thread::sleep(Duration::from_millis(300));
            upstream.send_to(&reply.to_vec().unwrap(), from).unwrap();
        }
        asked
    });
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &addr.to_string()]);
    let askers: Vec<_> = (0..20)
        .map(|i| {
            let server = front.addr;
            std::thread::spawn(move || {
                let name = if i % 2 == 0 {
                    "same.example."
                } else {
                    "SAME.example."
                };
                query(server, name, RecordType::A, Proto::Udp)
            })
        })
        .collect();
    for asker in askers {
        let reply = asker.join().unwrap();
        assert_eq!(answer_ips(&reply), ["192.0.2.7"]);
    }
    assert_eq!(
        counter.join().unwrap(),
        1,
        "one upstream query for twenty clients"
    );
}

#[test]
fn a_forwarding_loop_is_detected_and_broken() {
    // An "upstream" that sends everything back to the server: CoreDNS forwarding `.` to us.
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let target = std::sync::Arc::new(std::sync::Mutex::new(None::<std::net::SocketAddr>));
    let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (t, f) = (target.clone(), forwarded.clone());
    std::thread::spawn(move || {
        relay
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = relay.recv_from(&mut buf) {
            if buf[2] & 0x80 != 0 {
                continue; // a reply from the server to our relayed query
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            let to = loop {
                if let Some(to) = *t.lock().unwrap() {
                    break to;
                }
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(10));
            };
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            relay.send_to(&buf[..n], to).unwrap();
        }
    });
    let server = GlobalDns::start(&repo_zones(), &["--upstream", &relay_addr.to_string()]);
    *target.lock().unwrap() = Some(server.addr);
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_text()
            .contains("forwarding loop")),
        "{}",
        server.log_text()
    );
    let before = forwarded.load(std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let reply = query(server.addr, "web.example.", RecordType::A, Proto::Udp);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no time lost on the looping upstream"
    );
    assert_eq!(
        forwarded.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "nothing sent into the loop"
    );
    // Our own names still answer.
    assert_eq!(
        answer_ips(&query(
            server.addr,
            "reviews.default.global.",
            RecordType::A,
            Proto::Udp
        )),
        ["240.0.0.3"]
    );
}

/// A query for `name` with the client's RD and CD bits, over UDP.
fn ask_with(addr: std::net::SocketAddr, name: &str, rd: bool, cd: bool) -> Message {
    let mut msg = query_message(name, RecordType::A, Some(1232));
    msg.metadata.recursion_desired = rd;
    msg.metadata.checking_disabled = cd;
    exchange(addr, &msg, Proto::Udp)
}

/// Forwarded and cached replies carry the asking client's RD and CD, AA cleared and RA set,
/// whatever the authoritative upstream or the client that filled the cache sent. RD=0 is
/// answered from the cache or REFUSED, never sent upstream. CD is part of the cache key.
#[test]
fn forwarded_replies_carry_the_clients_header_bits_and_cd_is_cached_apart() {
    let dir = tempfile::tempdir().unwrap();
    let write = |wild: &str| {
        let entries = service_entry("web", &["web.example"], &["192.0.2.80"])
            + &service_entry("any", &["*.wild.example"], &[wild]);
        std::fs::write(dir.path().join("example.yaml"), entries).unwrap();
    };
    write("192.0.2.81");
    let up = GlobalDns::start(
        dir.path(),
        &["--zone", "example", "--ttl", "300", "--query-log"],
    );
    let front = GlobalDns::start(&repo_zones(), &["--upstream", &up.addr.to_string()]);

    // The upstream is authoritative: its own reply has AA=1.
    let direct = ask_with(up.addr, "web.example.", true, false);
    assert!(direct.metadata.authoritative);

    let relayed = ask_with(front.addr, "web.example.", true, false);
    assert_eq!(answer_ips(&relayed), ["192.0.2.80"]);
    let md = &relayed.metadata;
    assert!(!md.authoritative, "AA cleared on a relayed reply");
    assert!(md.recursion_available && md.recursion_desired && !md.checking_disabled);

    // A cache hit for a client with RD=0 and CD=1 carries that client's bits... with CD=1 it is
    // another cache entry, so first a CD=0, RD=0 hit.
    let hit = ask_with(front.addr, "web.example.", false, false);
    assert_eq!(
        answer_ips(&hit),
        ["192.0.2.80"],
        "RD=0 answered from the cache"
    );
    let md = &hit.metadata;
    assert!(!md.authoritative && md.recursion_available && !md.recursion_desired);

    // RD=0 for a name not in the cache: REFUSED, and the upstream never hears of it.
    let refused = ask_with(front.addr, "never.example.", false, false);
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(
        !up.log_text().contains("never.example"),
        "{}",
        up.log_text()
    );

    // CD=1 fills its own entry, with CD=1 in the reply.
    let cd = ask_with(front.addr, "a.wild.example.", true, true);
    assert_eq!(answer_ips(&cd), ["192.0.2.81"]);
    assert!(cd.metadata.checking_disabled && !cd.metadata.authoritative);
    // The upstream's data changes; a CD=0 client must not get the CD=1 client's cached answer.
    write("192.0.2.91");
    assert!(
        eventually(Duration::from_secs(10), || {
            answer_ips(&ask_with(up.addr, "a.wild.example.", true, false)) == ["192.0.2.91"]
        }),
        "upstream reloaded"
    );
    let validating = ask_with(front.addr, "a.wild.example.", true, false);
    assert_eq!(
        answer_ips(&validating),
        ["192.0.2.91"],
        "CD=0 asked upstream"
    );
    assert!(!validating.metadata.checking_disabled);
    let again = ask_with(front.addr, "a.wild.example.", true, true);
    assert_eq!(
        answer_ips(&again),
        ["192.0.2.81"],
        "CD=1 still cached apart"
    );
}
