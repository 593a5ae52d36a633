//! Any datagram through the query handler (parse, look up, write) over a table with plain,
//! dual-stack and wildcard hosts, and names outside it through the caching forwarder to an
//! upstream that answers oddly: never a panic, every reply the handler writes is a DNS message
//! that answers the query's ID, every relayed reply answers it too, and a reply the cache serves
//! again is as decodable as the one it kept.
//!
//! The upstream is in-process: it keeps the `Forward` contract (the query's ID and question
//! come back) and fills the rest (flags, counts, records) from the fuzzer's bytes, so the
//! cache's reading of TTLs and negative answers sees anything an upstream could send.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use globaldns::catalog::HostEntry;
use globaldns::dns::transfer::TransferStream;
use globaldns::dns::{Action, Handler, QueryMetrics};
use globaldns::forward::{
    AnswerCache, CachingForwarder, Forward, ForwardError, ForwardFuture, ForwardMetrics,
};
use globaldns::wire::Transport;
use globaldns::wire::header::HEADER_LEN;
use globaldns::wire::name::skip_name;
use globaldns::wire::request::Request;
use globaldns::zone::{NameTable, SharedTable, SoaSettings, ZoneSettings};
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;

/// The name table, built once.
fn table() -> &'static SharedTable {
    static TABLE: OnceLock<SharedTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let settings = ZoneSettings {
            zones: vec![Name::from_ascii("global.").unwrap()],
            ttl: 30,
            soa: SoaSettings::default(),
            // PTR names of the pools go through the reverse zones' own reader.
            reverse: vec!["240.0.0.0/4".parse().unwrap(), "2001:2::/48".parse().unwrap()],
        };
        let host = |name: &str, addresses: Vec<IpAddr>| HostEntry {
            name: Name::from_ascii(name).unwrap(),
            addresses,
            ports: Vec::new(),
        };
        let hosts = vec![
            host("a.global.", vec![IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1))]),
            host(
                "b.ns.global.",
                vec![
                    IpAddr::V4(Ipv4Addr::new(240, 0, 0, 2)),
                    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2)),
                ],
            ),
            host(
                "*.apps.global.",
                vec![IpAddr::V4(Ipv4Addr::new(240, 0, 0, 3))],
            ),
            host("pending.global.", Vec::new()),
        ];
        let table = NameTable::build(&settings, 1, &hosts).unwrap();
        Arc::new(ArcSwap::from_pointee(table))
    })
}

/// A handler over the table with an empty cache in front of the odd upstream: each input
/// starts with nothing cached, so what is served from the cache came from this input's query.
fn handler() -> Handler {
    let cache = AnswerCache::new(100, Duration::from_secs(3600), Duration::from_secs(60));
    let metrics = Arc::new(ForwardMetrics::default());
    let forwarder = CachingForwarder::new(Arc::new(OddUpstream), cache, metrics);
    Handler::new(
        table().clone(),
        Some(Arc::new(forwarder)),
        vec!["127.0.0.0/8".parse().unwrap()],
        Arc::new(QueryMetrics::default()),
        false,
    )
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

/// Answers with the query's header (QR set) and question, then flags, counts and records
/// taken from the bytes after the question; a query ending in 0xFF gets no answer at all.
struct OddUpstream;

impl Forward for OddUpstream {
    fn forward<'a>(
        &'a self,
        _req: &'a Request,
        query: &'a [u8],
        _transport: Transport,
    ) -> ForwardFuture<'a> {
        Box::pin(async move {
            let up = "127.0.0.1:53".parse().unwrap();
            let question_end = skip_name(query, HEADER_LEN).ok_or(ForwardError::BadQuery)? + 4;
            if query.last() == Some(&0xFF) || question_end > query.len() {
                return Err(ForwardError::Timeout(up));
            }
            let tail = &query[question_end..];
            let mut reply = query[..question_end].to_vec();
            reply[2] |= 0x80;
            if let [flags, rcode, counts @ ..] = tail {
                reply[2] = 0x80 | (flags & 0x07);
                reply[3] = rcode & 0x8F;
                let n = counts.len().min(6);
                reply[6..6 + n].copy_from_slice(&counts[..n]);
                reply.extend_from_slice(&counts[n..]);
            }
            Ok(reply)
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let handler = handler();
    // Whether the upstream's reply (relayed as it came) failed to decode: then a cache hit for
    // it may not decode either.
    let mut relayed_undecodable = false;
    for transport in [Transport::Udp, Transport::Tcp] {
        out.clear();
        match handler.handle(data, transport, client, &mut out) {
            Action::Reply => {
                assert_eq!(&out[..2], &data[..2], "the reply answers the query's ID");
                let Ok(reply) = Message::from_vec(&out) else {
                    assert!(relayed_undecodable, "every reply the server writes decodes");
                    continue;
                };
                assert!(reply.metadata.message_type == hickory_proto::op::MessageType::Response);
            }
            Action::Forward(req, started) => {
                let relayed =
                    runtime().block_on(handler.forward(&req, data, transport, client, started));
                assert_eq!(
                    &relayed[..2],
                    &data[..2],
                    "the relayed reply answers the query's ID"
                );
                relayed_undecodable |= Message::from_vec(&relayed).is_err();
                // Asked again: from the cache when it kept the reply, which must decode as
                // well as the one it kept.
                out.clear();
                if let Action::Reply = handler.handle(data, transport, client, &mut out) {
                    assert_eq!(
                        &out[..2],
                        &data[..2],
                        "the cached reply answers the query's ID"
                    );
                    if Message::from_vec(&relayed).is_ok() {
                        Message::from_vec(&out).expect("a cached reply decodes as its original");
                    }
                }
            }
            Action::Transfer(req, table, signer) => {
                let messages =
                    TransferStream::new(&req, &table, signer).expect("an apex of the table");
                for message in messages {
                    assert_eq!(&message[..2], &data[..2], "a transfer message answers the query's ID");
                    Message::from_vec(&message).expect("every transfer message decodes");
                }
            }
            Action::Drop => {}
        }
    }
});
