//! The fast query reader and the general one (hickory-proto) lead to the same response, bit for
//! bit (issue 7).
//!
//! For every name of the test zone — the ServiceEntries in `zones/`, loaded and published the way
//! the server does it, plus an in-process table for what `zones/` lacks (answers too big for UDP,
//! pending hosts, a second zone with an addressed apex and a wildcard, a name of 255 bytes) — and
//! every query type, class, EDNS variant, letter case, transport and handler set-up, each query
//! is answered four ways:
//!
//! 1. by the server's [`Handler`], as received: the fast reader takes it (asserted);
//! 2. by the same handler, with one trailing byte, which the fast reader refuses and the general
//!    reader ignores: the general path through the server's own code;
//! 3. by the same handler given what [`parse_simple`] read (`Handler::handle_parsed`), and
//! 4. by the same handler given what [`parse_general`] read, the seam that forces the general
//!    path.
//!
//! All four must be the same bytes. Every response is also decoded with hickory-proto and checked
//! against a model of what it must say: ID, flags, the question in the client's letter case,
//! rcode, AA, TC, OPT and the records themselves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData};
use ipnet::IpNet;

use globaldns::alloc::{DEFAULT_POOL, MemoryStore, Policy, Store, host_key};
use globaldns::catalog::HostEntry;
use globaldns::dns::QueryMetrics;
use globaldns::dns::transfer::TransferStream;
use globaldns::dns::{Action, Handler};
use globaldns::forward::{Forward, ForwardError, ForwardFuture};
use globaldns::publish::{PublishMetrics, Publisher};
use globaldns::source::file::scan;
use globaldns::source::readiness::Readiness;
use globaldns::source::set::Combined;
use globaldns::wire::Transport;
use globaldns::wire::request::{Parsed, Request, parse, parse_general, parse_simple};
use globaldns::zone::{NameTable, SharedTable, SoaSettings, ZoneSettings};

const TTL: u32 = 30;

/// A, AAAA, ANY, SOA, NS, TXT, MX, CNAME, SRV, PTR, HTTPS, CAA, AXFR and an unknown type.
const QTYPES: [u16; 14] = [1, 28, 255, 6, 2, 16, 15, 5, 33, 12, 65, 257, 252, 65280];
/// IN, CH, ANY, and an unassigned class.
const QCLASSES: [u16; 4] = [1, 3, 255, 0x1234];

#[derive(Clone, Copy, Debug)]
struct EdnsSpec {
    payload: u16,
    dnssec_ok: bool,
    /// Carry a client cookie option (RFC 7873), which both readers must skip alike.
    cookie: bool,
}

const fn edns(payload: u16, dnssec_ok: bool, cookie: bool) -> Option<EdnsSpec> {
    Some(EdnsSpec {
        payload,
        dnssec_ok,
        cookie,
    })
}

/// No EDNS; the usual 1232 with and without DO; small (512, and 100, below the minimum); large
/// (4096 with a cookie, 65535 with DO).
const EDNS: [Option<EdnsSpec>; 7] = [
    None,
    edns(1232, false, false),
    edns(1232, true, false),
    edns(512, false, false),
    edns(100, true, false),
    edns(4096, false, true),
    edns(65535, true, false),
];

/// What a name is in the table under test.
#[derive(Clone, Debug)]
enum Kind {
    /// A node: its addresses (none for an empty non-terminal), and SOA and NS at a zone apex.
    Node {
        addrs: Vec<IpAddr>,
        apex: bool,
    },
    NxDomain,
    /// Declared, VIP not stored yet: SERVFAIL.
    Pending,
    /// Outside every served zone.
    Outside,
}

#[derive(Clone, Debug)]
struct Target {
    /// Lower case, fully qualified.
    name: String,
    /// The zone it falls in (`None` outside).
    zone: Option<&'static str>,
    kind: Kind,
}

fn node(name: &str, zone: &'static str, addrs: &[&str]) -> Target {
    Target {
        name: name.into(),
        zone: Some(zone),
        kind: Kind::Node {
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            apex: name == zone,
        },
    }
}

fn other(name: &str, zone: Option<&'static str>, kind: Kind) -> Target {
    Target {
        name: name.into(),
        zone,
        kind,
    }
}

/// One query as the client sends it.
#[derive(Clone, Debug)]
struct Query {
    id: u16,
    /// In the client's letter case.
    name: String,
    qtype: u16,
    qclass: u16,
    rd: bool,
    cd: bool,
    ad: bool,
    edns: Option<EdnsSpec>,
}

fn name_wire(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

impl Query {
    fn wire(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(&self.id.to_be_bytes());
        p.push(u8::from(self.rd)); // QR 0, opcode QUERY, AA 0, TC 0
        p.push(if self.cd { 0x10 } else { 0 } | if self.ad { 0x20 } else { 0 });
        for count in [1u16, 0, 0, u16::from(self.edns.is_some())] {
            p.extend_from_slice(&count.to_be_bytes());
        }
        p.extend_from_slice(&name_wire(&self.name));
        p.extend_from_slice(&self.qtype.to_be_bytes());
        p.extend_from_slice(&self.qclass.to_be_bytes());
        if let Some(e) = self.edns {
            p.push(0); // root owner
            p.extend_from_slice(&41u16.to_be_bytes());
            p.extend_from_slice(&e.payload.to_be_bytes());
            p.extend_from_slice(&[0, 0]); // extended rcode, version 0
            p.extend_from_slice(&(if e.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
            let option: &[u8] = if e.cookie {
                &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
            } else {
                &[]
            };
            p.extend_from_slice(&(option.len() as u16).to_be_bytes());
            p.extend_from_slice(option);
        }
        p
    }
}

/// `name` in lower case (0), upper case (1), or mixed case (2), varied by `seed` (0x20 clients).
fn in_case(name: &str, variant: usize, seed: u32) -> String {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    name.chars()
        .map(|c| match variant {
            0 => c.to_ascii_lowercase(),
            1 => c.to_ascii_uppercase(),
            _ => {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                if state & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            }
        })
        .collect()
}

/// An upstream that never answers: a forwarded query comes back SERVFAIL.
struct DeadUpstream;

impl Forward for DeadUpstream {
    fn forward<'a>(&'a self, _: &'a Request, _: &'a [u8], _: Transport) -> ForwardFuture<'a> {
        Box::pin(async { Err(ForwardError::NoUpstream) })
    }
}

fn allowed() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().unwrap()]
}

/// A handler set-up: with or without a forwarder, and a client that may or may not recurse.
#[derive(Clone, Copy, Debug)]
struct Setup {
    forwarder: bool,
    client: IpAddr,
}

impl Setup {
    fn may_recurse(&self) -> bool {
        allowed().iter().any(|n| n.contains(&self.client))
    }
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const SETUPS: [Setup; 3] = [
    Setup {
        forwarder: false,
        client: LOCAL,
    },
    Setup {
        forwarder: true,
        client: LOCAL,
    },
    Setup {
        forwarder: true,
        client: STRANGER,
    },
];

fn handler(table: &SharedTable, setup: Setup) -> Handler {
    let forwarder: Option<Arc<dyn Forward>> = setup.forwarder.then(|| Arc::new(DeadUpstream) as _);
    Handler::new(
        table.clone(),
        forwarder,
        allowed(),
        Arc::new(QueryMetrics::default()),
        false,
    )
}

/// The server's handler, start to end (a forwarded query included).
async fn serve(h: &Handler, packet: &[u8], transport: Transport, client: IpAddr) -> Vec<u8> {
    serve_parsed(h, parse(packet), packet, transport, client).await
}

/// The server's handler on a query already read, by the reader the caller chose.
async fn serve_parsed(
    h: &Handler,
    parsed: Parsed,
    packet: &[u8],
    transport: Transport,
    client: IpAddr,
) -> Vec<u8> {
    let mut out = Vec::new();
    match h.handle_parsed(parsed, transport, client, &mut out, Instant::now()) {
        Action::Reply => out,
        Action::Forward(req, started) => h.forward(&req, packet, transport, client, started).await,
        Action::Drop => panic!("query dropped"),
        // A zone transfer: its first message stands for it.
        Action::Transfer(req, table, signer) => TransferStream::new(&req, &table, signer)
            .and_then(|mut messages| messages.next())
            .expect("a transfer has a first message"),
    }
}

/// One record as the model describes it.
fn describe(data: &RData) -> String {
    match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::SOA(soa) => format!("SOA {} {}", soa.mname.to_ascii(), soa.minimum),
        RData::NS(ns) => format!("NS {}", ns.0.to_ascii()),
        other => format!("unexpected {other:?}"),
    }
}

/// Decodes `resp` independently and checks it against the model. `tcp_len` is the size of the
/// same query's TCP answer (never truncated), which decides whether UDP must be truncated.
fn check(
    resp: &[u8],
    q: &Query,
    target: &Target,
    setup: Setup,
    transport: Transport,
    tcp_len: usize,
) {
    let ctx = || format!("{q:?} {transport:?} {setup:?} {target:?}");
    let m = Message::from_vec(resp).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
    let md = &m.metadata;
    assert_eq!(md.id, q.id, "ID: {}", ctx());
    assert_eq!(md.message_type, MessageType::Response, "{}", ctx());
    assert_eq!(md.op_code, OpCode::Query, "{}", ctx());
    assert_eq!(md.recursion_desired, q.rd, "RD copied: {}", ctx());
    assert_eq!(md.checking_disabled, q.cd, "CD copied: {}", ctx());
    assert!(!md.authentic_data, "no AD from us: {}", ctx());

    // The question, in the client's letter case.
    let qwire = name_wire(&q.name);
    assert_eq!(
        &resp[12..12 + qwire.len()],
        &qwire[..],
        "question bytes: {}",
        ctx()
    );
    let [question] = m.queries.as_slice() else {
        panic!("one question: {}", ctx())
    };
    assert_eq!(
        question.name().to_ascii(),
        q.name,
        "question case: {}",
        ctx()
    );
    assert_eq!(u16::from(question.query_type()), q.qtype, "{}", ctx());
    assert_eq!(u16::from(question.query_class()), q.qclass, "{}", ctx());

    // OPT back for OPT (RFC 6891), DO copied, our own size advertised.
    match (q.edns, &m.edns) {
        (None, None) => {}
        (Some(e), Some(got)) => {
            assert_eq!(got.max_payload(), 1232, "{}", ctx());
            assert_eq!(got.version(), 0, "{}", ctx());
            assert_eq!(got.flags().dnssec_ok, e.dnssec_ok, "DO: {}", ctx());
        }
        _ => panic!("OPT echoed iff sent: {}", ctx()),
    }

    let internet = matches!(q.qclass, 1 | 255);
    // AXFR: only loopback clients may transfer (the default), only zone apexes, only over TCP.
    if q.qtype == 252 {
        let apex = matches!(target.kind, Kind::Node { apex: true, .. });
        let recurses = setup.forwarder && setup.may_recurse();
        let (rcode, aa, ra) = match () {
            _ if !setup.client.is_loopback() => (ResponseCode::Refused, false, recurses),
            _ if !apex || !internet => (ResponseCode::NotAuth, false, recurses),
            _ if transport == Transport::Udp => (ResponseCode::FormErr, false, recurses),
            _ => (ResponseCode::NoError, true, false),
        };
        assert_eq!(md.response_code, rcode, "AXFR rcode: {}", ctx());
        assert_eq!(md.authoritative, aa, "AXFR AA: {}", ctx());
        assert_eq!(md.recursion_available, ra, "AXFR RA: {}", ctx());
        if rcode == ResponseCode::NoError {
            let soa = format!("SOA ns.dns.{} 30", target.zone.expect("an apex"));
            assert_eq!(
                m.answers.first().map(|r| describe(&r.data)),
                Some(soa.clone()),
                "{}",
                ctx()
            );
            assert_eq!(
                m.answers.last().map(|r| describe(&r.data)),
                Some(soa),
                "{}",
                ctx()
            );
        } else {
            assert!(m.answers.is_empty(), "{}", ctx());
        }
        return;
    }
    // RA only for clients we would recurse for.
    let recurses = setup.forwarder && setup.may_recurse();
    // AA for class IN only: QCLASS ANY is answered non-authoritatively.
    let class_in = q.qclass == 1;
    let (rcode, aa, ra) = match &target.kind {
        // Other classes are never forwarded.
        _ if !internet => (ResponseCode::Refused, false, recurses),
        // The forwarder under test always fails; RD=0 is answered from the cache or refused.
        Kind::Outside if recurses && q.rd => (ResponseCode::ServFail, false, true),
        Kind::Outside if recurses => (ResponseCode::Refused, false, true),
        Kind::Outside => (ResponseCode::Refused, false, false),
        Kind::Pending => (ResponseCode::ServFail, false, recurses),
        Kind::NxDomain => (ResponseCode::NXDomain, class_in, recurses),
        Kind::Node { .. } => (ResponseCode::NoError, class_in, recurses),
    };
    assert_eq!(md.response_code, rcode, "rcode: {}", ctx());
    assert_eq!(md.authoritative, aa, "AA: {}", ctx());
    assert_eq!(md.recursion_available, ra, "RA: {}", ctx());
    assert!(m.additionals.is_empty(), "{}", ctx());

    let limit = match (transport, q.edns) {
        (Transport::Tcp, _) => usize::MAX,
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => e.payload.clamp(512, 1232) as usize,
    };
    assert!(
        resp.len() <= limit,
        "size {} over {limit}: {}",
        resp.len(),
        ctx()
    );
    let truncated = tcp_len > limit;
    assert_eq!(md.truncation, truncated, "TC: {}", ctx());
    if truncated || !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        assert!(
            m.answers.is_empty() && m.authorities.is_empty(),
            "{}",
            ctx()
        );
        return;
    }

    let zone = target.zone.expect("answered inside a zone");
    let soa = format!("SOA ns.dns.{zone} 30");
    let mut expected: Vec<String> = match &target.kind {
        Kind::Node { addrs, apex } => {
            let v4 = addrs.iter().filter(|a| a.is_ipv4()).map(|a| a.to_string());
            let v6 = addrs.iter().filter(|a| a.is_ipv6()).map(|a| a.to_string());
            let apex: Vec<String> = if *apex {
                vec![soa.clone(), format!("NS ns.dns.{zone}")]
            } else {
                Vec::new()
            };
            match q.qtype {
                1 => v4.collect(),
                28 => v6.collect(),
                6 if !apex.is_empty() => vec![apex[0].clone()],
                2 if !apex.is_empty() => vec![apex[1].clone()],
                255 => apex.iter().cloned().chain(v4).chain(v6).collect(),
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    expected.sort();
    let mut got: Vec<String> = m.answers.iter().map(|r| describe(&r.data)).collect();
    got.sort();
    assert_eq!(got, expected, "answers: {}", ctx());
    for r in &m.answers {
        assert_eq!(
            r.name.to_ascii(),
            q.name,
            "owner in the client's case: {}",
            ctx()
        );
        assert_eq!(r.ttl, TTL, "{}", ctx());
        assert_eq!(r.dns_class, DNSClass::IN, "{}", ctx());
    }
    // NODATA and NXDOMAIN carry the zone's SOA (RFC 2308); positive answers nothing.
    let authorities: Vec<(String, String, u32)> = m
        .authorities
        .iter()
        .map(|r| (r.name.to_ascii(), describe(&r.data), r.ttl))
        .collect();
    if expected.is_empty() {
        assert_eq!(authorities, [(zone.to_string(), soa, TTL)], "{}", ctx());
    } else {
        assert!(authorities.is_empty(), "{}", ctx());
    }
}

/// Runs every query against `table` for `targets`; returns how many were compared.
async fn compare_all(table: &SharedTable, targets: &[Target]) -> usize {
    let handlers: Vec<(Setup, Handler)> = SETUPS.iter().map(|&s| (s, handler(table, s))).collect();
    let mut compared = 0;
    let mut seq: u32 = 0;
    for target in targets {
        for qtype in QTYPES {
            for qclass in QCLASSES {
                for edns in EDNS {
                    for variant in 0..3 {
                        seq += 1;
                        let q = Query {
                            id: (seq.wrapping_mul(7919) & 0xFFFF) as u16,
                            name: in_case(&target.name, variant, seq),
                            qtype,
                            qclass,
                            rd: variant != 1,
                            cd: variant != 0,
                            ad: variant == 2,
                            edns,
                        };
                        let packet = q.wire();
                        let fast = parse_simple(&packet)
                            .unwrap_or_else(|| panic!("the fast path refused {q:?}"));
                        let general = parse_general(&packet);
                        assert!(
                            matches!(general, Parsed::Query(_)),
                            "the general path refused {q:?}"
                        );
                        assert!(matches!(parse(&packet), Parsed::Query(_)));
                        let mut padded = packet.clone();
                        padded.push(0);
                        assert!(
                            parse_simple(&padded).is_none(),
                            "trailing byte: general path"
                        );

                        for (setup, h) in &handlers {
                            let mut tcp_len = 0;
                            for transport in [Transport::Tcp, Transport::Udp] {
                                let served = serve(h, &packet, transport, setup.client).await;
                                let served_general =
                                    serve(h, &padded, transport, setup.client).await;
                                let (fast, general) =
                                    (Parsed::Query(fast.clone()), general.clone());
                                let via_fast =
                                    serve_parsed(h, fast, &packet, transport, setup.client).await;
                                let via_general =
                                    serve_parsed(h, general, &packet, transport, setup.client)
                                        .await;
                                let ctx = || format!("{q:?} {transport:?} {setup:?}");
                                assert_eq!(via_fast, served, "fast reader vs parse(): {}", ctx());
                                assert_eq!(
                                    via_general,
                                    via_fast,
                                    "general vs fast reader: {}",
                                    ctx()
                                );
                                assert_eq!(
                                    served_general,
                                    served,
                                    "handler, general vs fast path: {}",
                                    ctx()
                                );
                                if transport == Transport::Tcp {
                                    tcp_len = served.len();
                                }
                                check(&served, &q, target, *setup, transport, tcp_len);
                                compared += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    compared
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn global_zone() -> ZoneSettings {
    ZoneSettings {
        zones: vec![Name::from_ascii("global.").unwrap()],
        ttl: TTL,
        soa: SoaSettings::default(),
        reverse: Vec::new(),
    }
}

/// `zones/` as the server publishes it: scanned, merged, VIPs allocated and stored, then built.
/// Returns the table and the VIP allocated to `sleep.foo.global`.
async fn publish_repo_zones() -> (SharedTable, IpAddr) {
    let found = scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("zones"));
    assert!(found.failed.is_empty(), "{:?}", found.failed);
    let store = Arc::new(MemoryStore::default());
    let publisher = Publisher::start(
        global_zone(),
        Policy {
            pools: vec![DEFAULT_POOL.parse().unwrap()],
            grace: Duration::from_secs(3600),
        },
        store.clone(),
        Readiness::new(Duration::ZERO),
        Arc::new(PublishMetrics::default()),
        &mut tokio::sync::watch::channel(Combined::from(found.declarations)).1,
        tokio::sync::watch::channel(Default::default()).0,
    )
    .await
    .unwrap();
    let state = store.load().await.unwrap();
    let sleep = host_key(&Name::from_ascii("sleep.foo.global.").unwrap());
    let vip = state.records[&sleep].addresses[0];
    (publisher.table(), vip)
}

#[tokio::test]
async fn zones_dir_answers_alike_on_fast_and_general_paths() {
    let (table, sleep_vip) = publish_repo_zones().await;
    let vip = sleep_vip.to_string();
    let g = "global.";
    let targets = [
        node(g, g, &[]),
        node("reviews.default.global.", g, &["240.0.0.3"]),
        node("ratings.prod.global.", g, &["240.0.0.4", "2001:2::4"]),
        node("details.prod.global.", g, &["2001:2::5"]),
        node("httpbin.bar.global.", g, &["127.255.0.3"]),
        node("sleep.foo.global.", g, &[&vip]),
        // The wildcard itself, and names it covers.
        node("*.apps.global.", g, &["240.0.0.10"]),
        node("tenant1.apps.global.", g, &["240.0.0.10"]),
        node("a.b.apps.global.", g, &["240.0.0.10"]),
        // Empty non-terminals.
        node("default.global.", g, &[]),
        node("prod.global.", g, &[]),
        node("bar.global.", g, &[]),
        node("foo.global.", g, &[]),
        node("apps.global.", g, &[]),
        other("nope.global.", Some(g), Kind::NxDomain),
        other("nope.default.global.", Some(g), Kind::NxDomain),
        other("x.reviews.default.global.", Some(g), Kind::NxDomain),
        other("svc-1.v2.prod.global.", Some(g), Kind::NxDomain),
        other("example.com.", None, Kind::Outside),
        other("global.example.", None, Kind::Outside),
        other("xglobal.", None, Kind::Outside),
        other(".", None, Kind::Outside),
    ];
    let compared = compare_all(&table, &targets).await;
    assert_eq!(compared, targets.len() * 14 * 4 * 7 * 3 * 3 * 2);
}

/// What `zones/` lacks: answers too big for 512 bytes and for 1232, pending hosts (also behind a
/// wildcard), a second zone whose apex has addresses and a wildcard, and a 255-byte name.
#[tokio::test]
async fn edge_cases_answer_alike_on_fast_and_general_paths() {
    let g = "global.";
    let mesh = "mesh.example.";
    let big: Vec<String> = (1..=40)
        .map(|i| Ipv4Addr::new(240, 1, 0, i).to_string())
        .chain((1..=10).map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i).to_string()))
        .collect();
    let huge: Vec<String> = (1..=100)
        .map(|i| Ipv4Addr::new(240, 2, 0, i).to_string())
        .collect();
    let long = format!(
        "{a}.{a}.{a}.{b}.global.",
        a = "x".repeat(63),
        b = "y".repeat(54)
    );
    assert_eq!(name_wire(&long).len(), 255, "the longest name there is");

    let hosts: Vec<(String, Vec<String>)> = vec![
        ("big.global.".into(), big.clone()),
        ("huge.global.".into(), huge.clone()),
        ("pending.global.".into(), vec![]),
        ("*.later.global.".into(), vec![]),
        (
            mesh.into(),
            vec!["240.0.0.20".into(), "2001:db8::20".into()],
        ),
        ("svc.mesh.example.".into(), vec!["240.0.0.21".into()]),
        ("*.w.mesh.example.".into(), vec!["240.0.0.22".into()]),
        (long.clone(), vec!["240.0.0.23".into()]),
    ];
    let entries: Vec<HostEntry> = hosts
        .iter()
        .map(|(h, addrs)| HostEntry {
            name: Name::from_ascii(h).unwrap(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ports: Vec::new(),
        })
        .collect();
    let mut settings = global_zone();
    settings.zones.push(Name::from_ascii(mesh).unwrap());
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(
        NameTable::build(&settings, 1, &entries).unwrap(),
    ));

    let targets = [
        node(g, g, &[]),
        node("big.global.", g, &strs(&big)),
        node("huge.global.", g, &strs(&huge)),
        other("pending.global.", Some(g), Kind::Pending),
        other("*.later.global.", Some(g), Kind::Pending),
        other("a.later.global.", Some(g), Kind::Pending),
        node("later.global.", g, &[]),
        node(mesh, mesh, &["240.0.0.20", "2001:db8::20"]),
        node("svc.mesh.example.", mesh, &["240.0.0.21"]),
        node("one.w.mesh.example.", mesh, &["240.0.0.22"]),
        node("w.mesh.example.", mesh, &[]),
        other("nope.mesh.example.", Some(mesh), Kind::NxDomain),
        node(&long, g, &["240.0.0.23"]),
        other("example.", None, Kind::Outside),
    ];
    let compared = compare_all(&table, &targets).await;
    assert_eq!(compared, targets.len() * 14 * 4 * 7 * 3 * 3 * 2);
}
