//! Spans: one span per request record, client or server kind by the observing side, named
//! and attributed by the OpenTelemetry semantic conventions, sampled at the edge (errors
//! and slow requests always kept), and handed to the exporter through a bounded queue
//! that capture never waits on: a full queue drops the span and counts it.
//!
//! Trace context: a request carrying a W3C `traceparent` gives a server span that trace
//! and parent, and a client span its trace and its own id (the id the caller put in the
//! header is the id of the client side of the call, which is this span). A request whose
//! two ends are both on this node (a [`LinkKey`]) gets a client span whose ids derive from
//! the key, and a server span that is its child. Other requests start a trace of their own.

pub mod export;
pub mod otlp;
pub mod sampler;

use std::{
    cell::Cell,
    collections::hash_map::RandomState,
    hash::BuildHasher,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use agent_common::Role;
use tokio::sync::mpsc;

use super::{LinkKey, ParentRef, RequestKey, RequestRecord, Signal, ThreadContext, TraceSource};
use crate::{
    metadata::workload::{Name, WorkloadLabels},
    metrics::{Metrics, ReasonLabels, SpanExemplar},
    protocols::request::{Attributes, DbRequest, HttpRequest, RpcRequest},
};
pub use export::{ExportOptions, OtlpProtocol};
pub use sampler::Sampler;

/// Spans queued for the exporter by default; a span is a few hundred bytes.
pub const DEFAULT_QUEUE_SIZE: usize = 16_384;
/// Spans slower than this are kept whatever the sampler says, by default.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(1);

/// How spans are made (the exporter has its own [`ExportOptions`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanOptions {
    pub sampler: Sampler,
    /// Spans at least this long are always kept; zero keeps none for being slow.
    pub slow_threshold: Duration,
    /// Most spans waiting for the exporter.
    pub queue_size: usize,
    /// The OTLP endpoint's own addresses: requests to them make no span, or every export
    /// to a collector on this node would make a span of its own, exported in the next
    /// batch, for ever.
    pub exporter_addresses: Vec<SocketAddr>,
}

/// One finished span, as the signal hands it to the exporter: plain values, so that
/// building the protobuf messages (and grouping by resource) happens on the exporter's
/// task, not on the capture path.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The parent's span id, and whether the parent is in another process.
    pub parent: Option<([u8; 8], bool)>,
    pub name: String,
    pub kind: Role,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Span status Error (the convention's rule for the protocol and side).
    pub error: bool,
    /// The resource: who on this node made or served the request.
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Str(String),
    Name(Name),
    Static(&'static str),
    Int(i64),
    /// An address, formatted by the exporter (off the capture path).
    Ip(IpAddr),
}

impl FinishedSpan {
    /// The value of attribute `key` (tests and the exporter's grouping read it).
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A W3C trace context (`traceparent`: version 00, trace id, parent id, flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>` (what the HTTP parsers validated); all-zero
    /// ids are invalid (W3C Trace Context §3.2.2.3, §3.2.2.4).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?;
        let parent_id: [u8; 8] = hex(parent)?;
        let [flags]: [u8; 1] = hex(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The spans signal: record to span, sample, queue.
pub struct Spans {
    options: SpanOptions,
    queue: mpsc::Sender<FinishedSpan>,
    metrics: Arc<Metrics>,
    /// Wall clock minus monotonic clock, read once when the signal starts: every span's
    /// kernel timestamps are shifted by the same amount, so spans of one node never move
    /// against each other when NTP steps the wall clock.
    wall_offset_ns: u64,
    /// splitmix64 state for trace and span ids (seeded from the OS's randomness).
    rng: Cell<u64>,
    /// Keys the ids derived from a [`LinkKey`]: random per agent, so ids are not
    /// guessable and differ between agents.
    link_ids: RandomState,
    queue_full: prometheus_client::metrics::counter::Counter,
}

impl Spans {
    /// The signal and the receiving end of its queue (for [`export::run`]).
    pub fn new(
        options: SpanOptions,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::Receiver<FinishedSpan>) {
        let (queue, rx) = mpsc::channel(options.queue_size.max(1));
        let queue_full = metrics.spans_dropped.get_or_create_owned(&ReasonLabels {
            reason: "queue_full",
        });
        let spans = Self {
            options,
            queue,
            metrics,
            wall_offset_ns: wall_offset_ns(),
            rng: Cell::new(random_seed()),
            link_ids: RandomState::new(),
            queue_full,
        };
        (spans, rx)
    }

    fn next_u64(&self) -> u64 {
        // splitmix64 (Steele, Lea, Flood 2014): fast, and every output differs for 2^64 calls.
        let state = self.rng.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.rng.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random non-zero span id.
    fn span_id(&self) -> [u8; 8] {
        loop {
            let id = self.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.span_id());
        id
    }

    /// An id derived from a request's link key: both ends of the request compute the
    /// same one without meeting.
    fn linked_id(&self, link: &LinkKey, part: u8) -> u64 {
        let id = self.link_ids.hash_one((link, part));
        id.max(1)
    }

    /// The trace id a thread-linked request's trace source names.
    fn trace_of(&self, source: &TraceSource) -> [u8; 16] {
        let mut trace_id = [0u8; 16];
        let (high, low) = match source {
            TraceSource::Header { trace_id, .. } => return *trace_id,
            TraceSource::Link(link) => (self.linked_id(link, 0), self.linked_id(link, 1)),
            TraceSource::Own(key) => (
                self.link_ids.hash_one((key, 0u8)).max(1),
                self.link_ids.hash_one((key, 1u8)),
            ),
        };
        trace_id[..8].copy_from_slice(&high.to_be_bytes());
        trace_id[8..].copy_from_slice(&low.to_be_bytes());
        trace_id
    }

    /// The span id of a server request whose thread made client requests: derived from
    /// its key, so its children (which end first) name it.
    fn request_span_id(&self, key: &RequestKey) -> [u8; 8] {
        self.link_ids.hash_one((key, 2u8)).max(1).to_be_bytes()
    }

    /// Builds the span of a record, or `None` where the record makes no span (unknown role).
    pub fn span_of(&self, r: &RequestRecord<'_>) -> Option<FinishedSpan> {
        let role = r.role;
        if role == Role::Unknown || self.options.exporter_addresses.contains(&r.server) {
            return None;
        }
        let traceparent = match &r.request.attributes {
            Attributes::Http(http) => http.traceparent.as_deref(),
            Attributes::Rpc(rpc) => rpc.traceparent.as_deref(),
            Attributes::Db(_) => None,
        }
        .and_then(TraceParent::parse);
        let (trace_id, span_id, parent, parent_sampled) = match (traceparent, role, r.thread) {
            // A server request whose thread made client requests: ids decided when it
            // opened (its own traceparent among them), which its children already name.
            (_, Role::Server, Some(ThreadContext::Parent { key, trace, parent })) => {
                let parent = parent.map(|p| match p {
                    ParentRef::Remote(id) => (id, true),
                    ParentRef::Client(link) => (self.linked_id(&link, 2).to_be_bytes(), true),
                });
                (
                    self.trace_of(&trace),
                    self.request_span_id(&key),
                    parent,
                    trace.sampled(),
                )
            }
            (Some(tp), Role::Server, _) => (
                tp.trace_id,
                self.span_id(),
                Some((tp.parent_id, true)),
                Some(tp.sampled),
            ),
            // The caller's header names the client side of this call: this span.
            (Some(tp), _, _) => (tp.trace_id, tp.parent_id, None, Some(tp.sampled)),
            // A client request the thread handling a server request made: that server
            // span's child, in its trace; its own id from its link key when its server
            // end is on this node too (that end names it as parent).
            (None, Role::Client, Some(ThreadContext::Child { parent, trace })) => {
                let span_id = match &r.link {
                    Some(link) => self.linked_id(link, 2).to_be_bytes(),
                    None => self.span_id(),
                };
                (
                    self.trace_of(&trace),
                    span_id,
                    Some((self.request_span_id(&parent), false)),
                    trace.sampled(),
                )
            }
            // Both ends on this node: the client span's ids come from the request's link
            // key, so the server span names it as parent without waiting for it.
            (None, _, _) if r.link.is_some() => {
                let link = r.link.as_ref().expect("checked");
                let client_span = self.linked_id(link, 2).to_be_bytes();
                let (trace_id, sampled) = match (role, r.thread) {
                    // The client end is a thread's child: its trace, not the link's.
                    (Role::Server, Some(ThreadContext::Downstream { trace })) => {
                        (self.trace_of(&trace), trace.sampled())
                    }
                    _ => (self.trace_of(&TraceSource::Link(*link)), None),
                };
                match role {
                    Role::Server => (trace_id, self.span_id(), Some((client_span, true)), sampled),
                    _ => (trace_id, client_span, None, sampled),
                }
            }
            (None, _, _) => (self.trace_id(), self.span_id(), None, None),
        };
        let duration = r.request.end_ns.saturating_sub(r.request.start_ns);
        let error = is_error(role, &r.request.attributes);
        let slow = !self.options.slow_threshold.is_zero()
            && u128::from(duration) >= self.options.slow_threshold.as_nanos();
        if !error && !slow && !self.options.sampler.keeps(&trace_id, parent_sampled) {
            self.metrics.spans_not_sampled.inc();
            return None;
        }
        let mut attributes = Vec::with_capacity(12);
        let name = match &r.request.attributes {
            Attributes::Db(db) => db_attributes(r, db, &mut attributes),
            Attributes::Http(http) => http_attributes(r, http, &mut attributes),
            Attributes::Rpc(rpc) => rpc_attributes(rpc, &mut attributes),
        };
        connection_attributes(r, &mut attributes);
        Some(FinishedSpan {
            trace_id,
            span_id,
            parent,
            name,
            kind: role,
            start_unix_ns: r.request.start_ns.wrapping_add(self.wall_offset_ns),
            end_unix_ns: r.request.end_ns.wrapping_add(self.wall_offset_ns),
            attributes,
            error,
            workload: r.workload.clone(),
        })
    }
}

impl Signal for Spans {
    fn record(&mut self, r: &RequestRecord<'_>) {
        let Some(span) = self.span_of(r) else { return };
        let exemplar = SpanExemplar {
            trace_id: span.trace_id,
            span_id: span.span_id,
            end_unix_ns: span.end_unix_ns,
        };
        // Capture never waits for the exporter: a full queue loses the span, counted.
        if self.queue.try_send(span).is_err() {
            self.queue_full.inc();
        } else {
            r.kept_span.set(Some(exemplar));
        }
    }
}

/// Whether the span's status is Error, per the conventions: a database error; an HTTP
/// status of 4xx/5xx on the client side and 5xx on the server side (a 4xx is the
/// client's fault, not the server's), or no response at all; any gRPC status but OK on
/// the client side, and on the server side the codes that mean the server failed.
fn is_error(role: Role, attributes: &Attributes) -> bool {
    match attributes {
        Attributes::Db(db) => db.error_type.is_some(),
        Attributes::Http(http) => match role {
            Role::Client => http.status == 0 || http.status >= 400,
            _ => http.status == 0 || http.status >= 500,
        },
        Attributes::Rpc(rpc) => match role {
            Role::Client => rpc.status != 0,
            // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
            _ => matches!(rpc.status, 2 | 4 | 12 | 13 | 14 | 15),
        },
    }
}

type Attrs = Vec<(&'static str, AttributeValue)>;

/// Database attributes; the name is `{db.operation.name} {db.collection.name}`, or the
/// operation alone, or the system when the operation is unknown.
fn db_attributes(r: &RequestRecord<'_>, db: &DbRequest, out: &mut Attrs) -> String {
    let system = r.protocol.label();
    out.push(("db.system.name", AttributeValue::Static(system)));
    out.push(("db.operation.name", AttributeValue::Static(db.operation)));
    if let Some(collection) = &db.collection {
        out.push((
            "db.collection.name",
            AttributeValue::Str(collection.to_string()),
        ));
    }
    if let Some(namespace) = &db.namespace {
        out.push((
            "db.namespace",
            AttributeValue::Name(Name(namespace.clone())),
        ));
    }
    if !db.statement.is_empty() {
        out.push((
            "db.query.text",
            AttributeValue::Str(db.statement.to_string()),
        ));
    }
    if let Some(code) = &db.status_code {
        out.push(("db.response.status_code", AttributeValue::Str(code.clone())));
    }
    if let Some(error) = &db.error_type {
        out.push(("error.type", AttributeValue::Str(error.clone())));
    }
    match (&db.collection, db.operation) {
        (_, "_OTHER") => system.to_owned(),
        (Some(collection), op) => format!("{op} {collection}"),
        (None, op) => op.to_owned(),
    }
}

/// HTTP attributes; the name is `{method} {http.route}` on the server side, `{method}` on
/// the client side (the route there is the agent's guess, not the caller's template), and
/// `HTTP` for an unknown method.
fn http_attributes(r: &RequestRecord<'_>, http: &HttpRequest, out: &mut Attrs) -> String {
    out.push(("http.request.method", AttributeValue::Static(http.method)));
    if http.status != 0 {
        out.push((
            "http.response.status_code",
            AttributeValue::Int(i64::from(http.status)),
        ));
    }
    if !http.route.is_empty() {
        out.push(("http.route", AttributeValue::Str(http.route.clone())));
    }
    if let Some(path) = http.path.resolve(&http.route) {
        out.push(("url.path", AttributeValue::Str(path.to_owned())));
    }
    if is_error(r.role, &r.request.attributes) {
        let error = if http.status == 0 {
            AttributeValue::Static("_OTHER")
        } else {
            AttributeValue::Str(http.status.to_string())
        };
        out.push(("error.type", error));
    }
    let method = if http.method == "_OTHER" {
        "HTTP"
    } else {
        http.method
    };
    match r.role {
        Role::Server if !http.route.is_empty() => format!("{method} {}", http.route),
        _ => method.to_owned(),
    }
}

/// gRPC attributes; the name is `{rpc.service}/{rpc.method}`.
fn rpc_attributes(rpc: &RpcRequest, out: &mut Attrs) -> String {
    out.push(("rpc.system", AttributeValue::Static(rpc.system)));
    out.push(("rpc.service", AttributeValue::Str(rpc.service.clone())));
    out.push(("rpc.method", AttributeValue::Str(rpc.method.clone())));
    out.push((
        "rpc.grpc.status_code",
        AttributeValue::Int(i64::from(rpc.status)),
    ));
    format!("{}/{}", rpc.service, rpc.method)
}

/// Where the request went: the server's address and port on both sides; the client's
/// address on the server side; the other end of the connection as the network peer; the
/// other end's zone when the agent knows it.
fn connection_attributes(r: &RequestRecord<'_>, out: &mut Attrs) {
    out.push(("server.address", AttributeValue::Ip(r.server.ip())));
    out.push((
        "server.port",
        AttributeValue::Int(i64::from(r.server.port())),
    ));
    let peer: SocketAddr = match r.role {
        Role::Server => {
            out.push(("client.address", AttributeValue::Ip(r.client.ip())));
            out.push((
                "client.port",
                AttributeValue::Int(i64::from(r.client.port())),
            ));
            r.client
        }
        _ => r.server,
    };
    out.push(("network.peer.address", AttributeValue::Ip(peer.ip())));
    out.push((
        "network.peer.port",
        AttributeValue::Int(i64::from(peer.port())),
    ));
    if let Some(zone) = &r.peer_zone.0 {
        out.push(("nodetap.peer.zone", AttributeValue::Name(zone.clone())));
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, both read back to back, in ns.
fn wall_offset_ns() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    wall.wrapping_sub(crate::capture::monotonic_ns())
}

/// 64 random bits from the OS (std seeds its hash maps from getrandom).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::capture::monotonic_ns());
    h.finish()
}

#[cfg(test)]
mod tests;
