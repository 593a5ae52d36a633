//! NOTIFY (RFC 1996): tells the configured secondaries, for every served zone, that its serial
//! changed, so they transfer it at once instead of at their next refresh.
//!
//! Each change is sent to every secondary for every zone over UDP, and sent again (1 s, then
//! doubling, five tries) until the secondary answers with the same ID; any answer counts, a
//! refusal is logged. A newer change replaces the one still being announced.

use std::net::SocketAddr;

use futures::future::join_all;
use hickory_proto::rr::TSigner;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use crate::wire::header::{AA, HEADER_LEN, is_response, rcode};
use crate::wire::name::to_text;
use crate::wire::tsig::{TsigKeys, sign_request, unix_now};
use crate::zone::SharedTable;

const OPCODE_NOTIFY: u8 = 4;
/// Byte 2 of a NOTIFY: its opcode, and AA (RFC 1996 §3.3 has the primary set it).
const NOTIFY_AA: u8 = (OPCODE_NOTIFY << 3) | AA;
const TYPE_SOA: u16 = 6;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;
const NOTAUTH: u8 = 9;
const CLASS_IN: u16 = 1;

/// Announces every new serial the publisher sends on `published` to `secondaries`.
pub async fn notify_secondaries(
    table: SharedTable,
    mut published: watch::Receiver<u32>,
    secondaries: Vec<SocketAddr>,
    keys: TsigKeys,
) {
    if secondaries.is_empty() {
        return;
    }
    loop {
        let serial = *published.borrow_and_update();
        let messages: Vec<(String, Vec<u8>, Option<TSigner>)> = {
            let table = table.load();
            (table.apexes())
                .filter_map(|apex| {
                    let soa = table.zone_content(apex)?.soa;
                    let key = keys.for_zone(apex).next().cloned();
                    Some((to_text(apex), notify_message(apex, soa), key))
                })
                .collect()
        };
        let sends = secondaries.iter().flat_map(|&to| {
            (messages.iter())
                .map(move |(zone, message, key)| announce(to, zone, message, key.as_ref(), serial))
        });
        tokio::select! {
            _ = join_all(sends) => {}
            changed = published.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        if published.changed().await.is_err() {
            return;
        }
    }
}

/// A NOTIFY for the zone at `apex` (lower-cased wire form), carrying its SOA `record` (type,
/// class, TTL, length, data) as RFC 1996 §3.7 allows, so the secondary may skip its SOA query.
fn notify_message(apex: &[u8], record: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + apex.len() + 4 + 2 + record.len());
    m.extend_from_slice(&[0, 0, NOTIFY_AA, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    m.extend_from_slice(apex);
    m.extend_from_slice(&TYPE_SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m.extend_from_slice(&[0xC0, 0x0C]);
    m.extend_from_slice(record);
    m
}

/// Sends `message` to `to` with a fresh ID (signed with `key`, when the zone has one) until it
/// is answered or the tries run out.
async fn announce(to: SocketAddr, zone: &str, message: &[u8], key: Option<&TSigner>, serial: u32) {
    let bind: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(error) => return warn!(secondary = %to, %error, "cannot send NOTIFY"),
    };
    for wait in crate::backoff::notify_wait() {
        let id = rand::random::<u16>().to_be_bytes();
        let mut message = message.to_vec();
        message[..2].copy_from_slice(&id);
        // The signature covers the ID: a new one for every try.
        if let Some(key) = key
            && let Err(error) = sign_request(key, &mut message, unix_now())
        {
            return warn!(secondary = %to, zone, %error, "cannot sign NOTIFY; the secondary will transfer at its next refresh");
        }
        if let Err(error) = socket.send_to(&message, to).await {
            debug!(secondary = %to, %error, "NOTIFY not sent");
        }
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + wait;
        while let Ok(Ok((n, from))) = timeout_at(deadline, socket.recv_from(&mut buf)).await {
            let reply = &buf[..n];
            let notify_opcode = reply
                .get(2)
                .is_some_and(|b| (b >> 3) & 0x0F == OPCODE_NOTIFY);
            if from != to
                || reply.get(..2) != Some(&id[..])
                || !is_response(reply)
                || !notify_opcode
            {
                continue;
            }
            match rcode(reply) {
                Some(0) => info!(secondary = %to, zone, serial, "NOTIFY acknowledged"),
                // A secondary need not copy every zone we serve (the pools' reverse zones, say).
                Some(NXDOMAIN | NOTAUTH | REFUSED) => {
                    debug!(secondary = %to, zone, "the secondary does not take this zone")
                }
                code => {
                    warn!(secondary = %to, zone, serial, rcode = code, "NOTIFY answered with an error; the secondary will transfer at its next refresh")
                }
            }
            return;
        }
    }
    warn!(secondary = %to, zone, serial, "no answer to NOTIFY; the secondary will transfer at its next refresh");
}
