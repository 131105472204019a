//! The Prometheus scrape endpoint.

use std::sync::Arc;

use axum::{
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::{collectors::NodeCollectors, metrics::Metrics};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One scrape: the agent's families, then the node collectors'. Reading /proc, /sys
/// and statfs can block (a hung mount), so it runs off the async worker threads.
fn scrape(metrics: &Metrics, node: &NodeCollectors) -> String {
    let mut text = metrics.encode();
    node.encode(&mut text);
    text
}

pub fn router(metrics: Arc<Metrics>, node: Arc<NodeCollectors>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let node = node.clone();
                async move {
                    match tokio::task::spawn_blocking(move || scrape(&metrics, &node)).await {
                        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                        Err(e) => {
                            log::error!("scrape failed: {e}");
                            (StatusCode::INTERNAL_SERVER_ERROR, "scrape failed\n").into_response()
                        }
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { "nodetap: metrics at /metrics, health at /healthz\n" }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n").into_response() })
}
