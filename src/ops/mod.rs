//! What operators watch: metrics, health and readiness over HTTP.

mod http;
mod limits;

pub use http::{ReadyCheck, serve_http};
