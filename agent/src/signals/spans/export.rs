//! The OTLP trace exporter: one task that takes spans off the signal's bounded queue,
//! batches them, groups them by resource (workload), and sends them over OTLP/HTTP
//! (protobuf) or OTLP/gRPC, retrying retryable failures with exponential backoff.
//!
//! While it retries it does not drain the queue, so the queue fills and the signal drops
//! (and counts) new spans: memory stays bounded by the queue and one batch, and capture
//! never waits. A batch that still fails when the retry budget is spent is dropped and
//! counted (`nodetap_spans_dropped_total{reason="export_failed"}`).
//!
//! gRPC here is a unary call over HTTP/2 cleartext (prior knowledge), framed by hand (a
//! flag byte and a 4-byte length before the message; `grpc-status` in the trailers):
//! that is the whole of what OTLP/gRPC needs, on the hyper client the HTTP exporter uses,
//! without a gRPC framework.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    io::Write,
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use agent_common::Role;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use prost::Message;
use tokio::{sync::mpsc, time::Instant};

use super::{
    otlp::{self, wire},
    AttributeValue, FinishedSpan,
};
use crate::{
    metadata::workload::WorkloadLabels,
    metrics::{Metrics, ReasonLabels},
};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`
    Grpc,
    /// `http/protobuf`
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// The gRPC method OTLP trace export calls.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where and how spans are sent.
#[derive(Clone)]
pub struct ExportOptions {
    /// For HTTP the full URL (`.../v1/traces`); for gRPC the scheme and authority.
    pub endpoint: Uri,
    pub protocol: OtlpProtocol,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Each export attempt's time limit.
    pub timeout: Duration,
    pub gzip: bool,
    /// Most spans in one export request.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_delay: Duration,
    /// How long one batch is retried before it is dropped.
    pub retry_budget: Duration,
    /// CA certificates for an `https://` endpoint (`OTEL_EXPORTER_OTLP_CERTIFICATE`);
    /// `None` trusts the host's CA store.
    pub ca_certificates: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// Resource attributes every span carries: the node's (`host.name`, `k8s.node.name`)
    /// and the user's (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// This node's zone (`cloud.availability_zone`), asked at each export: it can be
    /// learnt after start-up.
    pub local_zone: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers carry credentials (an API key): never their values.
        f.debug_struct("ExportOptions")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self.headers.iter().map(|h| &h.0).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

/// Why one export attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot reach the endpoint")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("reading the response failed")]
    Body(#[source] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the endpoint answered HTTP {status}")]
    Http { status: StatusCode },
    #[error("the endpoint answered gRPC status {code}: {message}")]
    Grpc { code: u32, message: String },
    #[error("the endpoint's answer is not an OTLP export response")]
    Decode,
}

impl ExportError {
    /// Retryable per the OTLP specification ("Failures" under OTLP/gRPC and OTLP/HTTP).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Body(_) | Self::Timeout(_) => true,
            Self::Http { status } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
            // UNAVAILABLE, DATA_LOSS.
            Self::Grpc { code, .. } => matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15),
            Self::Decode => false,
        }
    }
}

/// What the endpoint said of an accepted request.
struct Accepted {
    rejected: u64,
}

/// Why the exporter cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("a CA certificate for the OTLP endpoint is not usable")]
    Certificate(#[source] rustls::Error),
    #[error("TLS setup failed")]
    Tls(#[source] rustls::Error),
    #[error(
        "no CA certificates found on this host for the https endpoint (set --otlp-certificate)"
    )]
    NativeRoots(#[source] std::io::Error),
}

/// An OTLP connection: the pooled hyper client, the export URL, and how a request is
/// framed, compressed and judged. Spans ([`Exporter`]) and metrics
/// (`signals::otlp_metrics`) each hold one; neither has a transport of its own.
pub struct Transport {
    options: ExportOptions,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
}

impl Transport {
    /// A transport to `options.endpoint`; for gRPC the call goes to `grpc_path`
    /// (the service's Export method).
    pub fn new(options: ExportOptions, grpc_path: &str) -> Result<Self, ExporterError> {
        let mut builder = Client::builder(TokioExecutor::new());
        if options.protocol == OtlpProtocol::Grpc {
            builder.http2_only(true);
        }
        let connector = connector(&options)?;
        let url = match options.protocol {
            OtlpProtocol::HttpProtobuf => options.endpoint.clone(),
            OtlpProtocol::Grpc => {
                let mut parts = options.endpoint.clone().into_parts();
                parts.path_and_query = Some(grpc_path.parse().expect("a valid path"));
                Uri::from_parts(parts).unwrap_or_else(|_| options.endpoint.clone())
            }
        };
        Ok(Self {
            client: builder.build(connector),
            options,
            url,
        })
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    pub fn options(&self) -> &ExportOptions {
        &self.options
    }

    /// An export request's body: the message compressed and framed as the transport
    /// wants it.
    pub fn frame(&self, message: Vec<u8>) -> Bytes {
        let payload = if self.options.gzip {
            gzip(&message)
        } else {
            message
        };
        match self.options.protocol {
            OtlpProtocol::HttpProtobuf => Bytes::from(payload),
            OtlpProtocol::Grpc => {
                // Length-Prefixed-Message: compressed flag, length (big-endian), message.
                let mut framed = Vec::with_capacity(payload.len() + 5);
                framed.push(u8::from(self.options.gzip));
                framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                framed.extend_from_slice(&payload);
                Bytes::from(framed)
            }
        }
    }

    /// One attempt: the response message (empty when the endpoint sent none), or why the
    /// attempt failed.
    pub async fn send(&self, body: Bytes) -> Result<Bytes, ExportError> {
        let mut request = Request::post(self.url.clone());
        let headers = request.headers_mut().expect("a fresh builder");
        match self.options.protocol {
            OtlpProtocol::HttpProtobuf => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if self.options.gzip {
                    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
            }
            OtlpProtocol::Grpc => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
                if self.options.gzip {
                    headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
                }
            }
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("nodetap/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &self.options.headers {
            headers.insert(name.clone(), value.clone());
        }
        let request = request.body(Full::new(body)).expect("valid request parts");
        let timeout = self.options.timeout;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(ExportError::Connect)?;
            let (parts, body) = response.into_parts();
            let collected = body.collect().await.map_err(ExportError::Body)?;
            let trailers = collected.trailers().cloned();
            Ok::<_, ExportError>((parts, collected.to_bytes(), trailers))
        };
        let (parts, body, trailers) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExportError::Timeout(timeout))??;
        match self.options.protocol {
            OtlpProtocol::HttpProtobuf => {
                if !parts.status.is_success() {
                    return Err(ExportError::Http {
                        status: parts.status,
                    });
                }
                Ok(body)
            }
            OtlpProtocol::Grpc => {
                if parts.status != StatusCode::OK {
                    return Err(ExportError::Http {
                        status: parts.status,
                    });
                }
                // A trailers-only response carries the status in its headers.
                let status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .or_else(|| parts.headers.get("grpc-status"))
                    .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                    .unwrap_or(2);
                if status != 0 {
                    let message = trailers
                        .as_ref()
                        .and_then(|t| t.get("grpc-message"))
                        .or_else(|| parts.headers.get("grpc-message"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    return Err(ExportError::Grpc {
                        code: status,
                        message,
                    });
                }
                match body.get(5..) {
                    Some(message) if body[0] == 0 => Ok(body.slice(5..5 + message.len())),
                    // No message (or a compressed one we did not ask for): accepted whole.
                    _ => Ok(Bytes::new()),
                }
            }
        }
    }
}

pub struct Exporter {
    transport: Transport,
    metrics: Arc<Metrics>,
    /// The last request's size: the next one's buffer is allocated at that size once.
    last_request_len: usize,
}

impl Exporter {
    pub fn new(options: ExportOptions, metrics: Arc<Metrics>) -> Result<Self, ExporterError> {
        Ok(Self {
            transport: Transport::new(options, GRPC_EXPORT_PATH)?,
            metrics,
            last_request_len: 0,
        })
    }

    /// Takes spans off the queue until it closes (the capture side ended), exporting them
    /// in batches; what is queued when it closes is still exported.
    pub async fn run(mut self, mut queue: mpsc::Receiver<FinishedSpan>) {
        let batch_size = self.transport.options.batch_size.max(1);
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            if queue.recv_many(&mut batch, batch_size).await == 0 {
                return;
            }
            let deadline = Instant::now() + self.transport.options.batch_delay;
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            self.export(&batch).await;
            batch.clear();
        }
    }

    /// Exports one batch, retrying what may succeed later within the retry budget.
    async fn export(&mut self, spans: &[FinishedSpan]) {
        let mut message = Vec::with_capacity(self.last_request_len);
        encode_request(spans, &self.transport.options, &mut message);
        self.last_request_len = message.len();
        let body = self.transport.frame(message);
        let count = spans.len() as u64;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .transport
                .send(body.clone())
                .await
                .and_then(|m| accepted(&m))
            {
                Ok(accepted) => {
                    self.metrics
                        .spans_exported
                        .inc_by(count.saturating_sub(accepted.rejected));
                    if accepted.rejected > 0 {
                        self.dropped("rejected", accepted.rejected.min(count));
                    }
                    return;
                }
                Err(e) => {
                    self.metrics.spans_export_failures.inc();
                    let give_up = !e.retryable()
                        || started.elapsed() + backoff > self.transport.options.retry_budget;
                    log::warn!(
                        "OTLP export of {count} spans to {} failed: {}{}",
                        self.transport.url,
                        crate::error_chain(&e),
                        if give_up {
                            "; dropping them"
                        } else {
                            "; retrying"
                        }
                    );
                    if give_up {
                        self.dropped("export_failed", count);
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn dropped(&self, reason: &'static str, n: u64) {
        self.metrics
            .spans_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }
}

/// Plain TCP for `http://`, TLS (rustls, ring) for `https://` with the given CAs or the
/// host's; gRPC offers only h2 in ALPN, HTTP/protobuf only HTTP/1.1.
fn connector(options: &ExportOptions) -> Result<HttpsConnector<HttpConnector>, ExporterError> {
    let https = options.endpoint.scheme_str() == Some("https");
    let builder = HttpsConnectorBuilder::new();
    let builder = match (&options.ca_certificates, https) {
        (None, true) => builder
            .with_native_roots()
            .map_err(ExporterError::NativeRoots)?,
        (certificates, _) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates.iter().flatten() {
                roots
                    .add(certificate.clone())
                    .map_err(ExporterError::Certificate)?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(ExporterError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let builder = builder.https_or_http();
    Ok(match options.protocol {
        OtlpProtocol::Grpc => builder.enable_http2().build(),
        OtlpProtocol::HttpProtobuf => builder.enable_http1().build(),
    })
}

/// Reads a partial success out of an export response (an empty one accepts all).
fn accepted(body: &[u8]) -> Result<Accepted, ExportError> {
    let response =
        otlp::ExportTraceServiceResponse::decode(body).map_err(|_| ExportError::Decode)?;
    let rejected = response
        .partial_success
        .map_or(0, |p| p.rejected_spans.max(0) as u64);
    Ok(Accepted { rejected })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// The export request for a batch (`ExportTraceServiceRequest`), encoded into `out`: one
/// `ResourceSpans` per workload, in the order the workloads first appear, each span in
/// batch order. Written straight from the spans, field by field: no message structs, no
/// per-span copies of keys, values or ids; each group's resource is written once.
pub fn encode_request(spans: &[FinishedSpan], options: &ExportOptions, out: &mut Vec<u8>) {
    let zone = (options.local_zone)();
    let (groups, order) = group_by_workload(spans);
    let mut next = 0;
    for (workload, len) in groups {
        let resource_spans = wire::begin(out, 1, 3);
        encode_resource(out, workload, options, zone.as_deref());
        let scope_spans = wire::begin(out, 2, 3);
        let scope = wire::begin(out, 1, 1);
        wire::bytes(out, 1, b"nodetap");
        wire::bytes(out, 2, env!("CARGO_PKG_VERSION").as_bytes());
        scope.end(out);
        for &i in &order[next..next + len] {
            encode_span(out, &spans[i as usize]);
        }
        next += len;
        scope_spans.end(out);
        resource_spans.end(out);
    }
}

/// The batch's workloads in the order they first appear, each with its number of spans,
/// and the spans' indices grouped that way (batch order within a group). Clones of one
/// workload (the usual case) are matched by address; distinct but equal values by value.
fn group_by_workload(spans: &[FinishedSpan]) -> (Vec<(&WorkloadLabels, usize)>, Vec<u32>) {
    let mut by_address: HashMap<usize, u32, BuildHasherDefault<AddressHasher>> = HashMap::default();
    let mut by_value: HashMap<&WorkloadLabels, u32> = HashMap::new();
    let mut groups: Vec<(&WorkloadLabels, usize)> = Vec::new();
    let mut group_of = Vec::with_capacity(spans.len());
    for span in spans {
        let group = *by_address
            .entry(span.workload.identity())
            .or_insert_with(|| {
                *by_value.entry(&span.workload).or_insert_with(|| {
                    groups.push((&span.workload, 0));
                    (groups.len() - 1) as u32
                })
            });
        groups[group as usize].1 += 1;
        group_of.push(group);
    }
    // Counting sort: each group's first slot, then the spans in batch order.
    let mut slot = Vec::with_capacity(groups.len());
    let mut start = 0;
    for (_, len) in &groups {
        slot.push(start);
        start += len;
    }
    let mut order = vec![0u32; spans.len()];
    for (i, group) in group_of.into_iter().enumerate() {
        let at = &mut slot[group as usize];
        order[*at] = i as u32;
        *at += 1;
    }
    (groups, order)
}

/// Hashes a pointer-sized address: multiplied by a 64-bit odd constant (Fibonacci
/// hashing), which spreads allocations' aligned addresses over the table.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, address: usize) {
        self.0 = (address as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32);
    }
}

/// A `Resource` (field 1 of `ResourceSpans`): `service.name` and the workload's
/// Kubernetes names, this node's zone, then the node's and the user's attributes (a key
/// the workload sets is not repeated).
fn encode_resource(
    out: &mut Vec<u8>,
    workload: &WorkloadLabels,
    options: &ExportOptions,
    zone: Option<&str>,
) {
    let fields = workload.fields();
    let mut keys: Vec<&str> = Vec::with_capacity(5 + options.resource.len());
    let resource = wire::begin(out, 1, 1);
    let mut attribute = |out: &mut Vec<u8>, key: &'static str, value: &str| {
        encode_string_attribute(out, 1, key, value);
        keys.push(key);
    };
    attribute(out, "service.name", &fields.service_name.0);
    if let Some(k8s) = &fields.k8s {
        for (key, value) in [
            ("k8s.namespace.name", &k8s.namespace),
            ("k8s.pod.name", &k8s.pod),
            ("k8s.container.name", &k8s.container),
        ] {
            if !value.0.is_empty() {
                attribute(out, key, &value.0);
            }
        }
    }
    if let Some(zone) = zone {
        attribute(out, "cloud.availability_zone", zone);
    }
    for (key, value) in &options.resource {
        if !keys.contains(&key.as_str()) {
            encode_string_attribute(out, 1, key, value);
        }
    }
    resource.end(out);
}

/// A `KeyValue` with a string value, as field `field` of its message.
fn encode_string_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let kv = wire::begin(out, field, 1);
    if !key.is_empty() {
        wire::bytes(out, 1, key.as_bytes());
    }
    let any = wire::begin(out, 2, 1);
    wire::bytes(out, 1, value.as_bytes());
    any.end(out);
    kv.end(out);
}

/// A `Span` (field 2 of `ScopeSpans`).
fn encode_span(out: &mut Vec<u8>, span: &FinishedSpan) {
    let message = wire::begin(out, 2, 2);
    wire::bytes(out, 1, &span.trace_id);
    wire::bytes(out, 2, &span.span_id);
    if let Some((parent, _)) = &span.parent {
        wire::bytes(out, 4, parent);
    }
    let name = span.name();
    if !name.is_empty() {
        wire::bytes(out, 5, name.as_bytes());
    }
    wire::int64(out, 6, i64::from(span_kind(span.kind)));
    if span.start_unix_ns != 0 {
        wire::fixed64(out, 7, span.start_unix_ns);
    }
    if span.end_unix_ns != 0 {
        wire::fixed64(out, 8, span.end_unix_ns);
    }
    for (key, value) in span.attributes() {
        match value {
            AttributeValue::Int(i) => {
                // `AnyValue.int_value` (field 3).
                let any_len = 1 + wire::varint_len(*i as u64);
                key_value_head(out, key, any_len);
                wire::int64(out, 3, *i);
            }
            AttributeValue::Placeholders { head, count } => {
                let len = head.len() + 2 * usize::from(*count);
                key_value_head(out, key, 1 + wire::varint_len(len as u64) + len);
                wire::key(out, 1, wire::LEN);
                wire::varint(out, len as u64);
                out.extend_from_slice(head.as_bytes());
                (0..*count).for_each(|_| out.extend_from_slice(b" ?"));
            }
            AttributeValue::Ip(ip) => {
                let mut text = Vec::with_capacity(0);
                let ip = match ip {
                    IpAddr::V4(v4) => {
                        let mut buf = [0u8; 15];
                        let len = write_ipv4(&mut buf, v4);
                        string_value(out, key, &buf[..len]);
                        continue;
                    }
                    IpAddr::V6(_) => {
                        write_ip(&mut text, ip);
                        &text
                    }
                };
                string_value(out, key, ip);
            }
            other => string_value(out, key, span.str_of(other).unwrap_or_default().as_bytes()),
        }
    }
    if span.error {
        // `Status`: the code alone (an empty message is not sent).
        let status = wire::begin(out, 15, 1);
        wire::int64(out, 3, i64::from(otlp::STATUS_CODE_ERROR));
        status.end(out);
    }
    wire::fixed32(out, 16, span_flags(span));
    message.end(out);
}

/// A `KeyValue` (field 9 of `Span`) up to its `AnyValue`'s body, which is `any_len` bytes.
#[inline]
fn key_value_head(out: &mut Vec<u8>, key: &str, any_len: usize) {
    let kv_len = 1
        + wire::varint_len(key.len() as u64)
        + key.len()
        + 1
        + wire::varint_len(any_len as u64)
        + any_len;
    wire::key(out, 9, wire::LEN);
    wire::varint(out, kv_len as u64);
    wire::bytes(out, 1, key.as_bytes());
    wire::key(out, 2, wire::LEN);
    wire::varint(out, any_len as u64);
}

/// A `KeyValue` (field 9 of `Span`) with a string value (`AnyValue.string_value`, field 1).
#[inline]
fn string_value(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    key_value_head(
        out,
        key,
        1 + wire::varint_len(value.len() as u64) + value.len(),
    );
    wire::bytes(out, 1, value);
}

fn span_kind(kind: Role) -> i32 {
    match kind {
        Role::Server => otlp::SPAN_KIND_SERVER,
        _ => otlp::SPAN_KIND_CLIENT,
    }
}

/// Sampled (a span exported was kept), and whether the parent is remote when there is one.
fn span_flags(span: &FinishedSpan) -> u32 {
    let mut flags = otlp::SPAN_FLAGS_SAMPLED;
    match span.parent {
        Some((_, true)) => flags |= otlp::SPAN_FLAGS_HAS_IS_REMOTE | otlp::SPAN_FLAGS_IS_REMOTE,
        Some((_, false)) => flags |= otlp::SPAN_FLAGS_HAS_IS_REMOTE,
        None => {}
    }
    flags
}

/// An address as `Display` writes it, straight into the buffer: IPv4 digit by digit (the
/// common case, without the formatting machinery), IPv6 through `Display`.
pub(crate) fn write_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let len = write_ipv4(&mut buf, v4);
            out.extend_from_slice(&buf[..len]);
        }
        IpAddr::V6(v6) => {
            write!(out, "{v6}").expect("writing to memory");
        }
    }
}

/// Writes `a.b.c.d` into `buf` (15 bytes at most); returns its length.
#[inline]
fn write_ipv4(buf: &mut [u8; 15], ip: &std::net::Ipv4Addr) -> usize {
    let mut at = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[at] = b'.';
            at += 1;
        }
        if octet >= 100 {
            buf[at] = b'0' + octet / 100;
            at += 1;
        }
        if octet >= 10 {
            buf[at] = b'0' + octet / 10 % 10;
            at += 1;
        }
        buf[at] = b'0' + octet % 10;
        at += 1;
    }
    at
}

/// The export request for a batch as prost messages: the reference [`encode_request`]'s
/// bytes are checked against (tests only).
#[cfg(test)]
pub fn build_request(
    spans: &[FinishedSpan],
    options: &ExportOptions,
) -> otlp::ExportTraceServiceRequest {
    let zone = (options.local_zone)();
    let mut index: HashMap<&WorkloadLabels, usize> = HashMap::new();
    let mut groups: Vec<otlp::ResourceSpans> = Vec::new();
    for span in spans {
        let i = *index.entry(&span.workload).or_insert_with(|| {
            groups.push(otlp::ResourceSpans {
                resource: Some(resource(&span.workload, options, zone.as_deref())),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "nodetap".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: Vec::new(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
            groups.len() - 1
        });
        groups[i].scope_spans[0].spans.push(to_otlp(span));
    }
    otlp::ExportTraceServiceRequest {
        resource_spans: groups,
    }
}

#[cfg(test)]
fn resource(
    workload: &WorkloadLabels,
    options: &ExportOptions,
    zone: Option<&str>,
) -> otlp::Resource {
    let fields = workload.fields();
    let mut attributes = vec![otlp::KeyValue::string(
        "service.name",
        fields.service_name.0.as_ref(),
    )];
    if let Some(k8s) = &fields.k8s {
        for (key, value) in [
            ("k8s.namespace.name", &k8s.namespace),
            ("k8s.pod.name", &k8s.pod),
            ("k8s.container.name", &k8s.container),
        ] {
            if !value.0.is_empty() {
                attributes.push(otlp::KeyValue::string(key, value.0.as_ref()));
            }
        }
    }
    if let Some(zone) = zone {
        attributes.push(otlp::KeyValue::string("cloud.availability_zone", zone));
    }
    for (key, value) in &options.resource {
        if !attributes.iter().any(|kv| kv.key == *key) {
            attributes.push(otlp::KeyValue::string(key, value.as_str()));
        }
    }
    otlp::Resource { attributes }
}

#[cfg(test)]
fn to_otlp(span: &FinishedSpan) -> otlp::Span {
    let attributes = span
        .attributes()
        .iter()
        .map(|(key, value)| match value {
            AttributeValue::Int(i) => otlp::KeyValue::int(key, *i),
            other => otlp::KeyValue::string(key, span.text_of(other)),
        })
        .collect();
    otlp::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        parent_span_id: span.parent.map_or_else(Vec::new, |(p, _)| p.to_vec()),
        name: span.name().to_owned(),
        kind: span_kind(span.kind),
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        attributes,
        status: span.error.then(|| otlp::Status {
            message: String::new(),
            code: otlp::STATUS_CODE_ERROR,
        }),
        flags: span_flags(span),
    }
}
