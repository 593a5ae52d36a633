//! Any datagram through the query handler (parse, look up, write) over a table with plain,
//! dual-stack and wildcard hosts: never a panic, and every reply is a DNS message that answers
//! the query's ID.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use globaldns::catalog::HostEntry;
use globaldns::dns::{Action, Handler};
use globaldns::wire::Transport;
use globaldns::dns::QueryMetrics;
use globaldns::zone::{NameTable, SoaSettings, ZoneSettings};
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;

fn handler() -> &'static Handler {
    static HANDLER: OnceLock<Handler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let settings = ZoneSettings {
            zones: vec![Name::from_ascii("global.").unwrap()],
            ttl: 30,
            soa: SoaSettings::default(),
        };
        let host = |name: &str, addresses: Vec<IpAddr>| HostEntry {
            name: Name::from_ascii(name).unwrap(),
            addresses,
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
        Handler::new(
            Arc::new(ArcSwap::from_pointee(table)),
            None,
            Vec::new(),
            Arc::new(QueryMetrics::default()),
            false,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        out.clear();
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if let Action::Reply = handler().handle(data, transport, client, &mut out) {
            let reply = Message::from_vec(&out).expect("every reply decodes");
            assert_eq!(&out[..2], &data[..2], "the reply answers the query's ID");
            assert!(reply.metadata.message_type == hickory_proto::op::MessageType::Response);
        }
    }
});
