//! Micro-benchmarks of the query path's hot functions (issue 7): reading a question, looking it
//! up in a table of 10,000 names, writing the answer, a whole query through the handler, and a
//! forwarder cache hit.
//!
//!     cargo bench --bench hot_path [-- --warm-up-time 1 --measurement-time 2]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use globaldns::catalog::HostEntry;
use globaldns::dns::QueryMetrics;
use globaldns::dns::{Action, Handler};
use globaldns::forward::{AnswerCache, CacheKey};
use globaldns::wire::Transport;
use globaldns::wire::request::{Parsed, Request, parse, parse_general, parse_simple};
use globaldns::wire::response::{ReplyFlags, write};
use globaldns::zone::{Lookup, NameTable, SoaSettings, ZoneSettings};

const NAMES: u32 = 10_000;

fn host(i: u32) -> String {
    format!("svc{i}.ns{}.global.", i % 100)
}

/// 10,000 hosts under `global.`, one IPv4 VIP each and an IPv6 one for every tenth.
fn table() -> NameTable {
    let settings = ZoneSettings {
        zones: vec![Name::from_ascii("global.").unwrap()],
        ttl: 30,
        soa: SoaSettings::default(),
        reverse: Vec::new(),
    };
    let hosts: Vec<HostEntry> = (0..NAMES)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            let mut addresses = vec![IpAddr::V4(Ipv4Addr::new(240, a, b, c))];
            if i % 10 == 0 {
                addresses.push(IpAddr::V6(Ipv6Addr::new(
                    0x2001, 2, 0, 0, 0, 0, 0, i as u16,
                )));
            }
            HostEntry {
                name: Name::from_ascii(host(i)).unwrap(),
                addresses,
                ports: Vec::new(),
            }
        })
        .collect();
    NameTable::build(&settings, 1, &hosts).unwrap()
}

/// A query as a stub resolver sends it: RD, EDNS with 1232 bytes.
fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = 0xBEEF;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    msg.to_vec().unwrap()
}

fn request(packet: &[u8]) -> Request {
    match parse(packet) {
        Parsed::Query(req) => req,
        _ => panic!("not a query"),
    }
}

fn lower_wire(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        w.push(label.len() as u8);
        w.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    w.push(0);
    w
}

fn bench_parse(c: &mut Criterion) {
    let packet = query("Svc4242.NS42.global.", RecordType::A);
    assert!(parse_simple(&packet).is_some(), "the fast path takes it");
    let mut g = c.benchmark_group("parse");
    g.bench_function("fast path", |b| b.iter(|| parse(black_box(&packet))));
    g.bench_function("general path (hickory-proto)", |b| {
        b.iter(|| parse_general(black_box(&packet)))
    });
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let t = table();
    let names: Vec<Vec<u8>> = (0..NAMES).map(|i| lower_wire(&host(i))).collect();
    let missing: Vec<Vec<u8>> = (0..NAMES)
        .map(|i| lower_wire(&format!("nope{i}.ns{}.global.", i % 100)))
        .collect();
    let mut g = c.benchmark_group("lookup in 10k names");
    for (label, set) in [("hit", &names), ("NXDOMAIN", &missing)] {
        let mut i = 0;
        g.bench_function(label, |b| {
            b.iter(|| {
                i = (i + 1) % set.len();
                matches!(t.lookup(black_box(&set[i]), 1), Lookup::Authoritative(_))
            })
        });
    }
    g.finish();
}

fn bench_write(c: &mut Criterion) {
    let t = table();
    let req = request(&query("Svc4240.NS40.global.", RecordType::ANY));
    let flags = ReplyFlags {
        authoritative: true,
        recursion_available: true,
    };
    let mut g = c.benchmark_group("write answer");
    for (label, qtype) in [("A", 1), ("ANY (A + AAAA)", 255), ("NODATA (SOA)", 16)] {
        let Lookup::Authoritative(body) = t.lookup(&lower_wire("svc4240.ns40.global."), qtype)
        else {
            panic!("ours")
        };
        let mut out = Vec::with_capacity(1232);
        g.bench_function(label, |b| {
            b.iter(|| {
                write(&mut out, black_box(&req), black_box(body), flags, 1232);
                out.len()
            })
        });
    }
    g.finish();
}

fn bench_handle(c: &mut Criterion) {
    let handler = Handler::new(
        Arc::new(ArcSwap::from_pointee(table())),
        None,
        Vec::new(),
        Arc::new(QueryMetrics::default()),
        false,
    );
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut g = c.benchmark_group("handle (parse, look up, write, count)");
    for (label, name) in [
        ("A", "Svc4242.NS42.global."),
        ("NXDOMAIN", "nope.ns42.global."),
    ] {
        let packet = query(name, RecordType::A);
        let mut out = Vec::with_capacity(1232);
        g.bench_function(label, |b| {
            b.iter(|| {
                let action = handler.handle(black_box(&packet), Transport::Udp, client, &mut out);
                assert!(matches!(action, Action::Reply));
                out.len()
            })
        });
    }
    g.finish();
}

fn bench_cache_hit(c: &mut Criterion) {
    let cache = AnswerCache::new(100_000, Duration::from_secs(3600), Duration::ZERO);
    let stored = request(&query("www.example.com.", RecordType::A));
    let mut reply = Message::from_vec(&query("www.example.com.", RecordType::A)).unwrap();
    reply.metadata.message_type = hickory_proto::op::MessageType::Response;
    reply.metadata.recursion_available = true;
    reply.add_answer(Record::from_rdata(
        Name::from_ascii("www.example.com.").unwrap(),
        300,
        RData::A(Ipv4Addr::new(192, 0, 2, 80).into()),
    ));
    cache.insert(CacheKey::of(&stored).unwrap(), &reply.to_vec().unwrap());
    // Another client, another ID, another letter case.
    let req = request(&query("WWW.Example.COM.", RecordType::A));
    let mut out = Vec::with_capacity(1232);
    assert!(cache.get(&req, &mut out), "the reply was cached");
    c.bench_function("forwarder cache hit", |b| {
        b.iter(|| cache.get(black_box(&req), &mut out))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_parse, bench_lookup, bench_write, bench_handle, bench_cache_hit
}
criterion_main!(benches);
