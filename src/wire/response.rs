//! Writing responses: header, the client's question as received, a prepared body, and OPT.

use hickory_proto::op::ResponseCode;

use super::header::{AA, CD, HEADER_LEN, QR, RA, RD, TC};
use super::prepared::{Body, Prepared};
use super::request::{Edns, Request};

/// Largest UDP response we send (DNS flag day 2020: avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// RFC 1035 §4.2.1: the limit for clients without EDNS.
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// DNS over TCP is limited by its two-byte length prefix.
pub const MAX_TCP_MESSAGE: usize = u16::MAX as usize;

/// Largest UDP response this client can take.
pub fn udp_limit(edns: Option<Edns>) -> usize {
    match edns {
        None => CLASSIC_UDP_PAYLOAD as usize,
        Some(e) => e.payload.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize,
    }
}

/// Flags of a response beyond what the request determines.
#[derive(Clone, Copy)]
pub struct ReplyFlags {
    pub authoritative: bool,
    pub recursion_available: bool,
}

/// Writes the response to `req` into `out` (cleared first). When it is longer than `limit`, the
/// records are dropped and TC is set, so the client retries over TCP (RFC 2181 §9).
pub fn write(out: &mut Vec<u8>, req: &Request, body: Body<'_>, flags: ReplyFlags, limit: usize) {
    out.clear();
    write_header(
        out,
        req,
        body.rcode,
        flags,
        false,
        [body.answers, body.authorities, body.additionals],
    );
    write_question(out, req);
    out.extend_from_slice(body.body);
    write_opt(out, req, body.rcode);
    if out.len() > limit {
        out.clear();
        write_header(out, req, body.rcode, flags, true, [0; 3]);
        write_question(out, req);
        write_opt(out, req, body.rcode);
    }
}

/// A response carrying only an error code (and the question, when there was a readable one).
pub fn write_error(
    out: &mut Vec<u8>,
    req: &Request,
    rcode: ResponseCode,
    recursion_available: bool,
) {
    write_empty(out, req, rcode, recursion_available, usize::MAX);
}

/// An empty reply with TC set: the client should ask again over TCP (rate limiting's slip).
pub fn write_truncated(out: &mut Vec<u8>, req: &Request, recursion_available: bool) {
    // Nothing fits in a limit of 0, so `write` sets TC.
    write_empty(out, req, ResponseCode::NoError, recursion_available, 0);
}

/// A non-authoritative response without records.
fn write_empty(
    out: &mut Vec<u8>,
    req: &Request,
    rcode: ResponseCode,
    recursion_available: bool,
    limit: usize,
) {
    let flags = ReplyFlags {
        authoritative: false,
        recursion_available,
    };
    write(out, req, Prepared::empty(rcode).view(), flags, limit);
}

pub(super) fn write_header(
    out: &mut Vec<u8>,
    req: &Request,
    rcode: ResponseCode,
    flags: ReplyFlags,
    truncated: bool,
    [answers, authorities, additionals]: [u16; 3],
) {
    let b2 = QR
        | (req.opcode << 3)
        | if flags.authoritative { AA } else { 0 }
        | if truncated { TC } else { 0 }
        | if req.recursion_desired { RD } else { 0 };
    let b3 = if flags.recursion_available { RA } else { 0 }
        | if req.checking_disabled { CD } else { 0 }
        | rcode.low();
    out.extend_from_slice(&req.id.to_be_bytes());
    out.extend_from_slice(&[b2, b3]);
    for count in [
        u16::from(req.question.is_some()),
        answers,
        authorities,
        additionals + u16::from(req.edns.is_some()),
    ] {
        out.extend_from_slice(&count.to_be_bytes());
    }
}

/// Makes a reply that came from elsewhere (an upstream, or the cache) the reply to `req`: the
/// client's ID and question name as it wrote them, its RD and CD bits, AA cleared (the answer is
/// not ours) and RA set (we recursed for it). Whoever filled the cache, and whatever an
/// authoritative upstream set, the client sees one consistent header.
pub fn readdress(reply: &mut [u8], req: &Request) {
    if reply.len() < HEADER_LEN {
        return;
    }
    reply[..2].copy_from_slice(&req.id.to_be_bytes());
    reply[2] = (reply[2] & !(AA | RD)) | if req.recursion_desired { RD } else { 0 };
    reply[3] = (reply[3] & !CD) | RA | if req.checking_disabled { CD } else { 0 };
    if let Some(q) = &req.question {
        let name = q.name.wire();
        if let Some(dest) = reply.get_mut(HEADER_LEN..HEADER_LEN + name.len()) {
            dest.copy_from_slice(name);
        }
    }
}

pub(super) fn write_question(out: &mut Vec<u8>, req: &Request) {
    if let Some(q) = &req.question {
        out.extend_from_slice(q.name.wire());
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&q.qclass.to_be_bytes());
    }
}

/// RFC 6891 §6.1.1: a query with OPT gets OPT back; the DO bit is copied (RFC 3225 §3).
pub(super) fn write_opt(out: &mut Vec<u8>, req: &Request, rcode: ResponseCode) {
    let Some(edns) = req.edns else { return };
    out.push(0);
    out.extend_from_slice(&41u16.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[rcode.high(), 0]);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}
