//! The Prometheus scrape endpoint.

use std::sync::Arc;

use axum::{
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::metrics::Metrics;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { "nodetap: metrics at /metrics, health at /healthz\n" }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n").into_response() })
}
