//! One query in, one decision out: an answer from the name table, an error, or forwarding.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::chaos::{CLASS_CH, Chaos};
use super::client::{loopback, unmapped};
use super::metrics::{AnswerSource, QueryMetrics};
use super::rate_limit::{RateLimiter, Verdict};
use crate::forward::{Forward, ForwardError};
use crate::wire::header::rcode;
use crate::wire::request::{Parsed, Request, is_internet_class, parse};
use crate::wire::response::{
    MAX_TCP_MESSAGE, ReplyFlags, udp_limit, write, write_error, write_truncated,
};
use crate::wire::tsig::{self, ReplySigner, TsigKeys, unix_now};
use crate::wire::{TYPE_OPT, Transport};
use crate::zone::{Lookup, NameTable, SharedTable};
use hickory_proto::rr::DNSClass;

pub enum Action {
    /// The response is in the output buffer.
    Reply,
    /// Relay the query upstream; the request is kept to answer SERVFAIL if that fails.
    Forward(Box<Request>, Instant),
    /// Send the zone the request names (its apex), from this table, over the stream; each
    /// message signed when the request was (TSIG).
    Transfer(Box<Request>, Arc<NameTable>, Option<Box<ReplySigner>>),
    /// Send nothing.
    Drop,
}

pub struct Handler {
    table: SharedTable,
    forwarder: Option<Arc<dyn Forward>>,
    /// Clients that may use us as a recursive resolver; everyone gets our own zones.
    allow_recursion: Vec<IpNet>,
    metrics: Arc<QueryMetrics>,
    /// Log every answered query (`--query-log`).
    query_log: bool,
    /// Response rate limiting for UDP (`--rate-limit`), when on.
    rate_limit: Option<RateLimiter>,
    /// Answers for the server-identity names of class CH.
    chaos: Chaos,
    /// Clients that may transfer zones (AXFR, IXFR).
    allow_transfer: Vec<IpNet>,
    /// TSIG keys, one of which must sign a transfer request when there are any.
    transfer_keys: TsigKeys,
}

impl Handler {
    pub fn new(
        table: SharedTable,
        forwarder: Option<Arc<dyn Forward>>,
        allow_recursion: Vec<IpNet>,
        metrics: Arc<QueryMetrics>,
        query_log: bool,
    ) -> Self {
        Handler {
            table,
            forwarder,
            allow_recursion,
            metrics,
            query_log,
            rate_limit: None,
            chaos: Chaos::new(None).expect("no record to encode"),
            allow_transfer: loopback(),
            transfer_keys: TsigKeys::default(),
        }
    }

    /// Clients that may transfer the served zones; others get REFUSED (default: loopback).
    /// A transfer of a zone that has `keys` must also be signed with one of them (TSIG), and
    /// every message of the reply is signed with it.
    pub fn with_transfers(mut self, allow: Vec<IpNet>, keys: TsigKeys) -> Self {
        self.allow_transfer = allow;
        self.transfer_keys = keys;
        self
    }

    /// Answers `version.bind` and the other identity names of class CH (see [`Chaos`]).
    pub fn with_chaos(mut self, chaos: Chaos) -> Self {
        self.chaos = chaos;
        self
    }

    /// Limits UDP responses per client network (see [`RateLimiter`]); `None` leaves them free.
    pub fn with_rate_limit(mut self, rate_limit: Option<RateLimiter>) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    fn may_recurse(&self, client: IpAddr) -> bool {
        let client = unmapped(client);
        self.allow_recursion.iter().any(|net| net.contains(&client))
    }

    /// Handles one message from `client`; any response is written into `out`.
    pub fn handle(
        &self,
        packet: &[u8],
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> Action {
        self.handle_parsed(parse(packet), transport, client, out, Instant::now())
    }

    /// [`Handler::handle`] for a message already read (by either reader: the tests feed both)
    /// that arrived at `started`.
    pub fn handle_parsed(
        &self,
        parsed: Parsed,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
        started: Instant,
    ) -> Action {
        let (req, refused) = match parsed {
            Parsed::Query(req) => {
                let refused = meta_question(&req);
                (req, refused)
            }
            Parsed::Error(req, rcode) => (req, Some(rcode)),
            Parsed::Drop => {
                self.metrics.dropped();
                return Action::Drop;
            }
        };
        if let (Transport::Udp, Some(limiter)) = (transport, &self.rate_limit) {
            match limiter.check(client, started) {
                Verdict::Answer => {}
                Verdict::Slip => {
                    self.metrics.rate_limited(true);
                    write_truncated(out, &req, self.recursion_available(client));
                    self.answered(&req, out, transport, client, AnswerSource::Local, started);
                    return Action::Reply;
                }
                Verdict::Drop => {
                    self.metrics.rate_limited(false);
                    return Action::Drop;
                }
            }
        }
        if let Some(rcode) = refused {
            debug!(id = req.id, %rcode, "refusing malformed or unsupported message");
            write_error(out, &req, rcode, self.recursion_available(client));
            self.answered(&req, out, transport, client, AnswerSource::Local, started);
            return Action::Reply;
        }
        if let Some(kind) = req
            .question
            .as_ref()
            .and_then(|q| TransferKind::of(q.qtype))
        {
            match self.transfer(&req, kind, transport, client, out) {
                Some((table, signer)) => return Action::Transfer(Box::new(req), table, signer),
                None => {
                    self.answered(&req, out, transport, client, AnswerSource::Local, started);
                    return Action::Reply;
                }
            }
        }
        if req.signed.is_some() {
            self.answer_signed(&req, transport, client, out);
            self.answered(&req, out, transport, client, AnswerSource::Local, started);
            return Action::Reply;
        }
        let source = match self.answer(&req, transport, client, out) {
            Some(source) => source,
            None => return Action::Forward(Box::new(req), started),
        };
        self.answered(&req, out, transport, client, source, started);
        Action::Reply
    }

    /// A query signed with TSIG (a secondary checking our SOA before a transfer, say): answered
    /// from our zones and signed with its key, never forwarded (an upstream does not hold our
    /// keys); NOTAUTH when the signature does not hold (RFC 8945 §5.2).
    fn answer_signed(
        &self,
        req: &Request,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) {
        let Some(mut signer) = self.signer_for(req, client, out) else {
            return;
        };
        if self.answer(req, transport, client, out).is_none() {
            write_error(
                out,
                req,
                ResponseCode::Refused,
                self.recursion_available(client),
            );
        }
        self.sign(&mut signer, req, client, out);
    }

    /// The signer for the reply to a signed `req`; `None` with NOTAUTH written when its key is
    /// not ours or its signature or time does not hold.
    fn signer_for(
        &self,
        req: &Request,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> Option<Box<ReplySigner>> {
        let message = req.signed.as_ref()?;
        match tsig::check(message, &self.transfer_keys, unix_now()) {
            Ok(signer) => Some(Box::new(signer)),
            Err(error) => {
                info!(%client, %error, "request with a bad TSIG refused");
                write_error(
                    out,
                    req,
                    ResponseCode::NotAuth,
                    self.recursion_available(client),
                );
                None
            }
        }
    }

    /// Signs the reply in `out`; SERVFAIL (unsigned) when that fails.
    fn sign(&self, signer: &mut ReplySigner, req: &Request, client: IpAddr, out: &mut Vec<u8>) {
        if let Err(error) = signer.sign(out, unix_now()) {
            warn!(%error, "cannot sign the reply; answering SERVFAIL");
            write_error(
                out,
                req,
                ResponseCode::ServFail,
                self.recursion_available(client),
            );
        }
    }

    /// Writes the answer to `req` into `out` and says where it came from; `None` when it must
    /// be forwarded.
    fn answer(
        &self,
        req: &Request,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> Option<AnswerSource> {
        let q = req
            .question
            .as_ref()
            .expect("parsed queries have a question");
        // Both are worked out only where an answer of ours needs them: a cache hit does not.
        let limit = || match transport {
            Transport::Udp => udp_limit(req.edns),
            Transport::Tcp => MAX_TCP_MESSAGE,
        };
        if !is_internet_class(q.qclass) {
            let ra = self.recursion_available(client);
            // Other classes are never forwarded; of them we answer only our own identity.
            match self.chaos.answer(q.name.lower(), q.qtype) {
                Some(body) if q.qclass == CLASS_CH => {
                    let flags = ReplyFlags {
                        authoritative: true,
                        recursion_available: ra,
                    };
                    write(out, req, body.view(), flags, limit());
                }
                _ => write_error(out, req, ResponseCode::Refused, ra),
            }
            return Some(AnswerSource::Local);
        }
        let table = self.table.load();
        match table.lookup(q.name.lower(), q.qtype) {
            Lookup::Authoritative(body) => {
                let flags = ReplyFlags {
                    // QCLASS ANY is answered without AA, as NSD, BIND and Knot do: we are
                    // authoritative for class IN only (RFC 1035 §6.2 leaves it to the server).
                    authoritative: body.rcode != ResponseCode::ServFail
                        && q.qclass == u16::from(DNSClass::IN),
                    recursion_available: self.recursion_available(client),
                };
                write(out, req, body, flags, limit());
            }
            Lookup::NotOurs => match &self.forwarder {
                Some(_) if !self.may_recurse(client) => {
                    debug!(%client, "recursion refused to a client outside --allow-from");
                    write_error(out, req, ResponseCode::Refused, false);
                }
                Some(f) if f.loop_probe(q.name.lower()) => {
                    write_error(out, req, ResponseCode::Refused, false);
                }
                // RD=0 asks for what we hold, not for recursion: the cache or REFUSED, never an
                // upstream (as BIND and unbound answer a non-recursive query).
                Some(f) if !req.recursion_desired => {
                    if f.cached(req, transport, out) {
                        return Some(AnswerSource::Cache);
                    }
                    // A forwarder, and a client in --allow-from: we recurse for it (RA).
                    write_error(out, req, ResponseCode::Refused, true);
                }
                Some(f) => return f.cached(req, transport, out).then_some(AnswerSource::Cache),
                None => write_error(out, req, ResponseCode::Refused, false),
            },
        }
        Some(AnswerSource::Local)
    }

    /// Decides a zone transfer request: the table to stream the zone from (and the signer of
    /// its messages), or `None` with the reply written (REFUSED outside `--allow-transfer`,
    /// NOTAUTH without a good TSIG when keys are configured and for a name that is no zone
    /// apex of ours, FORMERR for AXFR over UDP, and for IXFR over UDP or from a client that is
    /// not behind, the current SOA: RFC 1995 §2 and §4).
    fn transfer(
        &self,
        req: &Request,
        kind: TransferKind,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> Option<(Arc<NameTable>, Option<Box<ReplySigner>>)> {
        let q = req
            .question
            .as_ref()
            .expect("parsed queries have a question");
        let ra = self.recursion_available(client);
        let unmapped = unmapped(client);
        if !self
            .allow_transfer
            .iter()
            .any(|net| net.contains(&unmapped))
        {
            debug!(%client, "zone transfer refused to a client outside --allow-transfer");
            write_error(out, req, ResponseCode::Refused, ra);
            return None;
        }
        // A signed request is answered signed (RFC 8945 §5.2: a bad signature is NOTAUTH).
        let mut signer = match &req.signed {
            None => None,
            Some(_) => Some(self.signer_for(req, client, out)?),
        };
        let table = self.table.load_full();
        let apex = q.name.lower();
        if !is_internet_class(q.qclass) || !table.apexes().any(|a| a == apex) {
            write_error(out, req, ResponseCode::NotAuth, ra);
            return None;
        }
        // A zone with keys goes only to a request signed with one of them.
        let mut keys = self.transfer_keys.for_zone(apex).peekable();
        if keys.peek().is_some() {
            let key = signer.as_ref().map(|s| s.key_name());
            if !keys.any(|k| Some(k.signer_name()) == key) {
                debug!(%client, key = ?key.map(|k| k.to_string()), "zone transfer refused: not signed with a key of the zone");
                write_error(out, req, ResponseCode::NotAuth, ra);
                return None;
            }
        }
        let up_to_date = req
            .ixfr_serial
            .is_some_and(|theirs| serial_not_before(theirs, table.serial()));
        match (kind, transport) {
            (TransferKind::Axfr, Transport::Udp) => {
                write_error(out, req, ResponseCode::FormErr, ra);
                None
            }
            (TransferKind::Ixfr, _) if up_to_date || transport == Transport::Udp => {
                let Lookup::Authoritative(body) = table.lookup(apex, TYPE_SOA) else {
                    unreachable!("a zone apex is ours");
                };
                let flags = ReplyFlags {
                    authoritative: true,
                    recursion_available: ra,
                };
                write(out, req, body, flags, MAX_TCP_MESSAGE);
                if let Some(signer) = signer.as_mut() {
                    self.sign(signer, req, client, out);
                }
                None
            }
            _ => Some((table, signer)),
        }
    }

    /// Counts (and with `--query-log`, logs) an answer about to be sent.
    fn answered(
        &self,
        req: &Request,
        reply: &[u8],
        transport: Transport,
        client: IpAddr,
        source: AnswerSource,
        started: Instant,
    ) {
        let took = started.elapsed();
        let qtype = req.question.as_ref().map(|q| q.qtype);
        self.metrics.answered(qtype, reply, transport, source, took);
        if self.query_log {
            let name = req.question.as_ref().map(|q| q.name.to_string());
            let rcode = rcode(reply).unwrap_or(0);
            info!(target: "globaldns::query", %client, ?transport, name, qtype, rcode, ?source, micros = took.as_micros() as u64, "query");
        }
    }

    /// Relays a query that [`Handler::handle`] marked for forwarding; SERVFAIL when every
    /// upstream failed.
    pub async fn forward(
        &self,
        req: &Request,
        packet: &[u8],
        transport: Transport,
        client: IpAddr,
        started: Instant,
    ) -> Vec<u8> {
        let result = match &self.forwarder {
            Some(f) => f.forward(req, packet, transport).await,
            None => Err(ForwardError::NoUpstream),
        };
        let reply = result.unwrap_or_else(|error| {
            warn!(id = req.id, qtype = ?req.qtype(), %error, "forwarding failed; answering SERVFAIL");
            let mut out = Vec::new();
            write_error(&mut out, req, ResponseCode::ServFail, self.recursion_available(client));
            out
        });
        self.answered(
            req,
            &reply,
            transport,
            client,
            AnswerSource::Upstream,
            started,
        );
        reply
    }

    /// RA: set only for clients we would resolve other names for (RFC 1035 §4.1.1), so a client
    /// outside `--allow-from` is never told we recurse for it.
    fn recursion_available(&self, client: IpAddr) -> bool {
        self.forwarder.is_some() && self.may_recurse(client)
    }
}

/// Meta-types that cannot be asked as questions: OPT and TSIG only travel in the additional
/// section (RFC 6891 §6.1.1, RFC 8945 §5.1), so such a question is malformed; TKEY is a
/// transaction we do not implement (RFC 2930).
fn meta_question(req: &Request) -> Option<ResponseCode> {
    const TKEY: u16 = 249;
    const TSIG: u16 = 250;
    match req.question.as_ref()?.qtype {
        TYPE_OPT | TSIG => Some(ResponseCode::FormErr),
        TKEY => Some(ResponseCode::NotImp),
        _ => None,
    }
}

const TYPE_SOA: u16 = 6;

/// The two zone transfer query types.
#[derive(Clone, Copy)]
enum TransferKind {
    /// RFC 1995.
    Ixfr,
    /// RFC 5936.
    Axfr,
}

impl TransferKind {
    fn of(qtype: u16) -> Option<Self> {
        match qtype {
            251 => Some(TransferKind::Ixfr),
            252 => Some(TransferKind::Axfr),
            _ => None,
        }
    }
}

/// Whether serial `a` is `b` or later in serial number arithmetic (RFC 1982).
fn serial_not_before(a: u32, b: u32) -> bool {
    a == b || (a.wrapping_sub(b) as i32) > 0
}
