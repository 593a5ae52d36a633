//! The DNS layer: sockets, reading queries, and writing answers from the name table.

mod bind;
pub mod chaos;
pub mod client;
mod handler;
pub mod https;
pub mod metrics;
pub mod mmsg;
mod notify;
pub mod rate_limit;
mod tcp;
pub mod tls;
pub mod transfer;
mod udp;

pub use bind::bind;
pub use handler::{Action, Handler};
pub use metrics::{AnswerSource, QueryMetrics};
pub use notify::notify_secondaries;
pub use tcp::{TcpLimits, TcpSlots, serve_tcp};
pub use udp::serve_udp;
