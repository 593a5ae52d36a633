//! One query in, one decision out: an answer from the name table, an error, or forwarding.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use ipnet::IpNet;
use tracing::{debug, warn};

use super::Transport;
use super::request::{Parsed, Request, is_internet_class, parse};
use super::response::{MAX_TCP_MESSAGE, ReplyFlags, udp_limit, write, write_error};
use crate::forward::{Forward, ForwardError};
use crate::zone::{Lookup, SharedTable};

pub enum Action {
    /// The response is in the output buffer.
    Reply,
    /// Relay the query upstream; the request is kept to answer SERVFAIL if that fails.
    Forward(Box<Request>),
    /// Send nothing.
    Drop,
}

pub struct Handler {
    table: SharedTable,
    forwarder: Option<Arc<dyn Forward>>,
    /// Clients that may use us as a recursive resolver; everyone gets our own zones.
    allow_recursion: Vec<IpNet>,
}

impl Handler {
    pub fn new(
        table: SharedTable,
        forwarder: Option<Arc<dyn Forward>>,
        allow_recursion: Vec<IpNet>,
    ) -> Self {
        Handler {
            table,
            forwarder,
            allow_recursion,
        }
    }

    fn may_recurse(&self, client: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
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
        let req = match parse(packet) {
            Parsed::Query(req) => req,
            Parsed::Error(req, rcode) => {
                debug!(id = req.id, %rcode, "refusing malformed or unsupported message");
                write_error(out, &req, rcode, self.recursion_available());
                return Action::Reply;
            }
            Parsed::Drop => return Action::Drop,
        };
        let q = req
            .question
            .as_ref()
            .expect("parsed queries have a question");
        let table = self.table.load();
        match table.lookup(q.name.lower(), q.qtype) {
            Lookup::Authoritative(_) if !is_internet_class(q.qclass) => {
                write_error(out, &req, ResponseCode::Refused, self.recursion_available());
            }
            Lookup::Authoritative(body) => {
                let limit = match transport {
                    Transport::Udp => udp_limit(req.edns),
                    Transport::Tcp => MAX_TCP_MESSAGE,
                };
                let flags = ReplyFlags {
                    authoritative: body.rcode != ResponseCode::ServFail,
                    recursion_available: self.recursion_available(),
                };
                write(out, &req, body, flags, limit);
            }
            Lookup::NotOurs => match &self.forwarder {
                Some(_) if !self.may_recurse(client) => {
                    debug!(%client, "recursion refused to a client outside --allow-from");
                    write_error(out, &req, ResponseCode::Refused, false);
                }
                Some(f) if f.cached(&req, transport, out) => {}
                Some(f) if f.loop_probe(q.name.lower()) => {
                    write_error(out, &req, ResponseCode::Refused, false);
                }
                Some(_) => return Action::Forward(Box::new(req)),
                None => write_error(out, &req, ResponseCode::Refused, false),
            },
        }
        Action::Reply
    }

    /// Relays a query that [`Handler::handle`] marked for forwarding; SERVFAIL when every
    /// upstream failed.
    pub async fn forward(&self, req: &Request, packet: &[u8], transport: Transport) -> Vec<u8> {
        let result = match &self.forwarder {
            Some(f) => f.forward(req, packet, transport).await,
            None => Err(ForwardError::NoUpstream),
        };
        result.unwrap_or_else(|error| {
            warn!(id = req.id, qtype = ?req.qtype(), %error, "forwarding failed; answering SERVFAIL");
            let mut out = Vec::new();
            write_error(&mut out, req, ResponseCode::ServFail, self.recursion_available());
            out
        })
    }

    fn recursion_available(&self) -> bool {
        self.forwarder.is_some()
    }
}
