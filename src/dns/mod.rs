//! The DNS layer: sockets, reading queries, and writing answers from the name table.

mod client;
mod handler;
pub mod metrics;
pub mod mmsg;
pub mod rate_limit;
pub mod request;
pub mod response;
mod tcp;
mod udp;

pub use handler::{Action, Handler};
pub use metrics::{AnswerSource, QueryMetrics};
pub use tcp::{TcpLimits, TcpSlots, serve_tcp};
pub use udp::serve_udp;

/// How a client reached us; it decides size limits and how upstreams are asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}
