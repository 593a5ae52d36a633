//! The DNS wire format, at the bottom of the query side: the header, names, reading queries,
//! prepared answer bodies and writing responses. It imports no other layer; `dns` (sockets and
//! the handler), `zone` (the name table) and `forward` (upstreams and the cache) all build on it.

pub mod header;
pub mod name;
pub mod prepared;
pub mod records;
pub mod request;
pub mod response;
pub mod transfer;
pub mod tsig;

/// The OPT pseudo-record type (RFC 6891), which carries EDNS in the additional section.
pub const TYPE_OPT: u16 = 41;

/// How a client reached us; it decides size limits and how upstreams are asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}
