//! The HTTP endpoint: `/metrics` for Prometheus, `/healthz` (the process answers) and
//! `/readyz` (the required kernel hooks are attached), with node_exporter's
//! `--web.config.file` TLS and basic authentication ([`web_config`]).

mod basic_auth;
mod tls;
pub mod web_config;

use std::{future::Future, sync::Arc};

use axum::{
    extract::Request,
    http::{header, HeaderName, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::net::TcpListener;

use crate::{
    collectors::NodeCollectors,
    metrics::Metrics,
    probes::{HookStatus, Need},
};
use basic_auth::BasicAuth;
pub use tls::TlsError;
use web_config::WebConfig;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What a scraper that asks for OpenMetrics gets: the same families, plus the exemplars
/// on the request-duration histograms.
pub const OPEN_METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Paths a kubelet or load balancer probes without credentials: they say whether the
/// agent works, nothing about the node (TLS still applies to them).
const UNAUTHENTICATED_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// One scrape: the agent's families, then the node collectors' (with the agent's own
/// `process_*`, see `collectors::exporter`). Reading /proc, /sys and statfs can block (a
/// hung mount), so it runs off the async worker threads.
fn scrape(metrics: &Metrics, node: &NodeCollectors, format: Format) -> String {
    match format {
        Format::Prometheus => scrape_text(metrics, node),
        Format::OpenMetrics => {
            let mut text = metrics.encode_open_metrics();
            let mut node_text = String::with_capacity(64 * 1024);
            node.encode(&mut node_text);
            crate::metrics::prometheus_text_to_open_metrics(&node_text, &mut text);
            text.push_str("# EOF\n");
            text
        }
    }
}

/// What `/metrics` serves by default (text 0.0.4): also what the OTLP metrics push sends.
pub fn scrape_text(metrics: &Metrics, node: &NodeCollectors) -> String {
    let mut text = metrics.encode();
    node.encode(&mut text);
    text
}

/// What the OTLP metrics push reads: the text 0.0.4 `/metrics` serves by default, and
/// the agent's own families in OpenMetrics (the same encoding, before its conversion to
/// 0.0.4 drops the exemplars).
pub fn scrape_for_push(
    metrics: &Metrics,
    node: &NodeCollectors,
) -> crate::signals::otlp_metrics::Exposition {
    let open_metrics = metrics.encode_open_metrics();
    let mut text = crate::metrics::to_prometheus_text(&open_metrics);
    node.encode(&mut text);
    crate::signals::otlp_metrics::Exposition { text, open_metrics }
}

/// The exposition format of one scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Text 0.0.4: what node_exporter serves, and the default.
    Prometheus,
    /// OpenMetrics 1.0.0, with exemplars.
    OpenMetrics,
}

/// Content negotiation (RFC 9110 §12.5.1): OpenMetrics 1.0.0 when the scraper's
/// `Accept` ranks it at least as high as the text format (Prometheus sends
/// `application/openmetrics-text;version=1.0.0,...;text/plain;version=0.0.4;q=0.5`),
/// else text 0.0.4. An OpenMetrics range naming another version (0.0.1) does not count.
fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Prometheus;
    };
    let mut open_metrics = 0.0f32;
    let mut text = 0.0f32;
    for range in accept.split(',') {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for p in params {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                "version" => version = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => {
                open_metrics = open_metrics.max(q)
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if open_metrics > 0.0 && open_metrics >= text {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

/// What `/readyz` reports: each hook's fate at start-up.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    hooks: Vec<(String, Need, bool)>,
}

impl Readiness {
    pub fn new(hooks: &[HookStatus]) -> Self {
        Readiness {
            hooks: hooks
                .iter()
                .map(|h| (h.tracepoint.clone(), h.need, h.error.is_none()))
                .collect(),
        }
    }

    /// 200 when every required hook is attached, else 503; the body lists the hooks.
    fn respond(&self) -> Response {
        let missing: Vec<&str> = self
            .hooks
            .iter()
            .filter(|(_, need, attached)| *need == Need::Required && !attached)
            .map(|(name, _, _)| name.as_str())
            .collect();
        let mut body = if missing.is_empty() {
            "ready: every required hook is attached\n".to_owned()
        } else {
            format!(
                "not ready: required hooks not attached: {}\n",
                missing.join(", ")
            )
        };
        for (name, need, attached) in &self.hooks {
            let need = if *need == Need::Required {
                "required"
            } else {
                "optional"
            };
            let state = if *attached {
                "attached"
            } else {
                "not attached"
            };
            body.push_str(&format!("{name} {need} {state}\n"));
        }
        let status = if missing.is_empty() && !self.hooks.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body).into_response()
    }
}

pub fn router(
    metrics: Arc<Metrics>,
    node: Arc<NodeCollectors>,
    readiness: Readiness,
    web: &WebConfig,
) -> Router {
    let readiness = Arc::new(readiness);
    let mut router = Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let metrics = metrics.clone();
                let node = node.clone();
                let format = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
                let content_type = match format {
                    Format::Prometheus => CONTENT_TYPE,
                    Format::OpenMetrics => OPEN_METRICS_CONTENT_TYPE,
                };
                async move {
                    match tokio::task::spawn_blocking(move || scrape(&metrics, &node, format)).await
                    {
                        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
                        Err(e) => {
                            log::error!("scrape failed: {e}");
                            (StatusCode::INTERNAL_SERVER_ERROR, "scrape failed\n").into_response()
                        }
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { readiness.respond() }))
        .route(
            "/",
            get(|| async {
                "nodetap: metrics at /metrics, health at /healthz, readiness at /readyz\n"
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n").into_response() });
    if !web.users.is_empty() {
        let auth = Arc::new(BasicAuth::new(web.users.clone()));
        router = router.layer(middleware::from_fn(move |request, next| {
            require_user(auth.clone(), request, next)
        }));
    }
    if !web.headers.is_empty() {
        let headers: Arc<Vec<(HeaderName, HeaderValue)>> = Arc::new(
            web.headers
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).expect("checked by web_config"),
                        HeaderValue::from_str(v).expect("checked by web_config"),
                    )
                })
                .collect(),
        );
        router = router.layer(middleware::map_response(move |mut response: Response| {
            let headers = headers.clone();
            async move {
                for (name, value) in headers.iter() {
                    response.headers_mut().insert(name.clone(), value.clone());
                }
                response
            }
        }));
    }
    router
}

async fn require_user(auth: Arc<BasicAuth>, request: Request, next: Next) -> Response {
    if UNAUTHENTICATED_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if auth.allows(header).await {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic")],
        "Unauthorized\n",
    )
        .into_response()
}

/// Checks at start-up that the TLS files load, so a bad path or key fails the agent
/// (as node_exporter fails) instead of every scrape.
pub fn check(web: &WebConfig) -> Result<(), TlsError> {
    match &web.tls {
        Some(settings) => tls::server_config(settings).map(|_| ()),
        None => Ok(()),
    }
}

/// Serves `router` on `listener`, over TLS when the web config has it, until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: &WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match &web.tls {
        Some(settings) => {
            let listener = tls::TlsListener::new(listener, settings.clone())?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, need: Need, error: Option<&str>) -> HookStatus {
        HookStatus {
            program: "test",
            tracepoint: name.to_owned(),
            need,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn open_metrics_only_when_asked_for_first() {
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")),
            Format::Prometheus
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=0.0.1,text/plain;q=0.5"
            )),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(Some(
                "text/plain,application/openmetrics-text;version=1.0.0;q=0.9"
            )),
            Format::Prometheus
        );
    }

    #[test]
    fn ready_only_when_every_required_hook_is_attached() {
        let ready = Readiness::new(&[
            hook("tp_btf:inet_sock_set_state", Need::Required, None),
            hook("sys_exit_sendfile64", Need::Optional, Some("EINVAL")),
        ]);
        assert_eq!(ready.respond().status(), StatusCode::OK);
        let not_ready = Readiness::new(&[
            hook("tp_btf:inet_sock_set_state", Need::Required, Some("EPERM")),
            hook("sys_exit_sendfile64", Need::Optional, None),
        ]);
        assert_eq!(
            not_ready.respond().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Readiness::default().respond().status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "no hooks at all is not ready"
        );
    }
}
