//! `--metrics ADDR`: `/metrics` (OpenMetrics text), `/healthz` (the process answers) and
//! `/readyz` (every source synced once and the allocation store reached once).
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

use super::Metrics;
use super::limits::Bounded;
use crate::source::readiness::Readiness;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>, readiness: Readiness) {
    let scrape = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, OPENMETRICS)], scrape.render()) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let answer = ready(&readiness, &metrics);
                async move { answer }
            }),
        );
    if let Err(error) = axum::serve(Bounded::new(listener), app).await {
        warn!(%error, "metrics endpoint stopped");
    }
}

fn ready(readiness: &Readiness, metrics: &Metrics) -> (StatusCode, &'static str) {
    match (readiness.is_ready(), metrics.store_reached()) {
        (true, true) => (StatusCode::OK, "ready\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "sources not synced yet\n"),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "allocation store not reached yet\n",
        ),
    }
}
