//! The DNS layer: sockets, reading queries, and writing answers from the name table.

mod bind;
pub mod chaos;
mod client;
mod handler;
pub mod metrics;
pub mod mmsg;
pub mod rate_limit;
mod tcp;
mod udp;

pub use bind::bind;
pub use handler::{Action, Handler};
pub use metrics::{AnswerSource, QueryMetrics};
pub use tcp::{TcpLimits, TcpSlots, serve_tcp};
pub use udp::serve_udp;
