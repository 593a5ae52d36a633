//! What operators watch: metrics, health and readiness over HTTP.

mod http;
mod limits;
pub mod metrics;

pub use http::serve_http;
pub use metrics::{AnswerSource, Metrics, UpstreamFailure};
