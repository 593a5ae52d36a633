//! Forwarding names outside the served zones to upstream resolvers.
//!
//! [`Forward`] is the seam: the DNS layer hands over the client's message as received and gets
//! the upstream's reply back, ID and question restored. A cache wraps the same trait.

mod build;
mod cache;
mod coalesce;
pub mod metrics;
mod resolv;
mod upstream;

use std::future::Future;
use std::pin::Pin;

pub use build::{ForwardConfig, build};
pub use cache::{AnswerCache, CacheKey};
pub use coalesce::CachingForwarder;
pub use metrics::{ForwardMetrics, UpstreamFailure};
pub use resolv::{system_upstreams, without_self};
pub use upstream::UpstreamForwarder;

use crate::wire::Transport;
use crate::wire::request::Request;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream configured")]
    NoUpstream,
    #[error("query has no readable question")]
    BadQuery,
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {0}: no answer in time")]
    Timeout(std::net::SocketAddr),
    #[error("upstream {0}: malformed reply")]
    BadReply(std::net::SocketAddr),
    #[error("too many queries in flight upstream")]
    Busy,
    /// The error of the identical query this one waited for (coalesced).
    #[error(transparent)]
    Shared(std::sync::Arc<ForwardError>),
}

pub type ForwardFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<u8>, ForwardError>> + Send + 'a>>;

pub trait Forward: Send + Sync + 'static {
    /// An answer to `req` that needs no waiting (a cache hit), written into `out`.
    fn cached(&self, _req: &Request, _transport: Transport, _out: &mut Vec<u8>) -> bool {
        false
    }

    /// Whether `qname` (lower-cased wire form) is one of our own loop probes coming back.
    fn loop_probe(&self, _qname: &[u8]) -> bool {
        false
    }

    /// Relays `query` (the client's message, as received) and returns the reply for the client.
    fn forward<'a>(
        &'a self,
        req: &'a Request,
        query: &'a [u8],
        transport: Transport,
    ) -> ForwardFuture<'a>;
}
