//! `--metrics ADDR`: `/metrics` (OpenMetrics text of the registry every layer registered its
//! metrics in), `/healthz` (the process answers) and `/readyz` (what the server's readiness
//! check says: every source synced once and the allocation store reached once).
//!
//! This module knows no layer: it serves what it is given.
//!
//! The listener is bounded (see `limits`): a cap on connections and on each one's lifetime.
//!
//! Readiness does not flip back when the API server goes away later: replicas keep answering
//! from their last-known table, and pulling them all out of the Service would turn an API
//! outage into a DNS outage.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::warn;

use prometheus_client::registry::Registry;

use super::limits::Bounded;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the server is ready, or why not (the body of a 503).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

pub async fn serve_http(listener: TcpListener, registry: Arc<Registry>, ready: ReadyCheck) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, OPENMETRICS)], render(&registry)) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let answer = match ready() {
                    Ok(()) => (StatusCode::OK, "ready\n"),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                };
                async move { answer }
            }),
        );
    if let Err(error) = axum::serve(Bounded::new(listener), app).await {
        warn!(%error, "metrics endpoint stopped");
    }
}

/// The Prometheus text exposition of `registry`.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}
