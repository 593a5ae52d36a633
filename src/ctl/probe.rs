//! Asks a DNS server what it answers for a host (`dnsctl check --server`): plain UDP, one
//! question per query, as a client would.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

const TIMEOUT: Duration = Duration::from_secs(2);

/// The A and AAAA addresses `server` answers for `host`, sorted; an error names what failed.
pub async fn addresses(server: SocketAddr, host: &str) -> Result<Vec<IpAddr>, String> {
    let name = Name::from_ascii(host)
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
        .map_err(|e| format!("{host}: {e}"))?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for qtype in [RecordType::A, RecordType::AAAA] {
        let id = rand::random::<u16>();
        let mut query = Message::query();
        query.metadata.id = id;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), qtype));
        let packet = query.to_vec().map_err(|e| e.to_string())?;
        socket.send(&packet).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let reply = loop {
            let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
                .await
                .map_err(|_| format!("no answer from {server} within {TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
            if reply.metadata.id == id {
                break reply;
            }
        };
        found.extend(reply.answers.iter().filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }));
    }
    found.sort();
    Ok(found)
}
