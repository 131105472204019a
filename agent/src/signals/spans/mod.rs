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
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use agent_common::Role;
use tokio::sync::mpsc;

use super::{LinkKey, ParentRef, RequestKey, RequestRecord, Signal, ThreadContext, TraceSource};
use crate::{
    metadata::workload::WorkloadLabels,
    metrics::{Metrics, ReasonLabels, SpanExemplar},
    protocols::request::{Attributes, DbRequest, HttpRequest, RpcRequest, Statement, UrlPath},
};
pub use export::{ExportOptions, OtlpProtocol};
pub use sampler::Sampler;

/// Spans queued for the exporter by default; a span is under 700 bytes (its attributes
/// inline) and shares or owns the rest of its text, so a full queue holds about 10.5 MiB.
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

/// Most attributes a span has (a database span with every optional attribute, on the
/// server side, with the peer's zone).
pub const MAX_ATTRIBUTES: usize = 14;

/// One finished span, as the signal hands it to the exporter: plain values, so that
/// encoding the protobuf (and grouping by resource) happens on the exporter's task, not on
/// the capture path. Built without copying what the request already shares (statements,
/// names) and with one allocation at most: the text the span does not share with the
/// request (its name when it joins two parts, a route, an error) lives in one buffer that
/// its values point into.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The parent's span id, and whether the parent is in another process.
    pub parent: Option<([u8; 8], bool)>,
    pub kind: Role,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Span status Error (the convention's rule for the protocol and side).
    pub error: bool,
    /// The resource: who on this node made or served the request.
    pub workload: WorkloadLabels,
    /// The span's own text, which its name and values point into.
    text: String,
    /// [`AttributeValue::Static`] or [`AttributeValue::Own`].
    name: AttributeValue,
    attributes: [(&'static str, AttributeValue); MAX_ATTRIBUTES],
    attribute_count: u8,
}

/// An attribute's value (or a span's name), without copies of what the request shares.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Static(&'static str),
    /// The span's own text, `start..end`.
    Own {
        start: u32,
        end: u32,
    },
    /// Text the request shares (a statement, a namespace, a zone).
    Shared(Arc<str>),
    /// A command followed by one ` ?` per argument (`SET ? ?`), written out when encoded.
    Placeholders {
        head: &'static str,
        count: u16,
    },
    Int(i64),
    /// An address, formatted by the exporter (off the capture path).
    Ip(IpAddr),
}

impl FinishedSpan {
    pub fn name(&self) -> &str {
        self.str_of(&self.name).unwrap_or_default()
    }

    pub fn attributes(&self) -> &[(&'static str, AttributeValue)] {
        &self.attributes[..usize::from(self.attribute_count)]
    }

    /// The value of attribute `key` (tests read it).
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A value's text where it is held whole (not for placeholders, numbers or addresses).
    pub fn str_of<'a>(&'a self, value: &'a AttributeValue) -> Option<&'a str> {
        match value {
            AttributeValue::Static(s) => Some(s),
            AttributeValue::Own { start, end } => self.text.get(*start as usize..*end as usize),
            AttributeValue::Shared(s) => Some(s),
            _ => None,
        }
    }

    /// A value as text, as it is exported (numbers as their digits).
    pub fn text_of(&self, value: &AttributeValue) -> String {
        match value {
            AttributeValue::Placeholders { head, count } => {
                let mut text = (*head).to_owned();
                (0..*count).for_each(|_| text.push_str(" ?"));
                text
            }
            AttributeValue::Int(i) => i.to_string(),
            AttributeValue::Ip(ip) => ip.to_string(),
            other => self.str_of(other).unwrap_or_default().to_owned(),
        }
    }
}

/// Building a span in place: its attributes and its own text.
impl FinishedSpan {
    fn push(&mut self, key: &'static str, value: AttributeValue) {
        // The protocols' attribute lists fit by construction (see MAX_ATTRIBUTES).
        if let Some(slot) = self.attributes.get_mut(usize::from(self.attribute_count)) {
            *slot = (key, value);
            self.attribute_count += 1;
        } else {
            debug_assert!(false, "more than {MAX_ATTRIBUTES} attributes");
        }
    }

    /// Appends `parts` to the span's text as one value.
    fn own(&mut self, parts: &[&str]) -> AttributeValue {
        let start = self.text.len() as u32;
        parts.iter().for_each(|p| self.text.push_str(p));
        AttributeValue::Own {
            start,
            end: self.text.len() as u32,
        }
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
    /// Keys the ids derived from a [`LinkKey`] or a [`RequestKey`]: random per agent, so
    /// ids differ between agents and do not give away connection ids.
    link_keys: [u64; 4],
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
            link_keys: [random_seed(), random_seed(), random_seed(), random_seed()],
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
        self.derived_id(
            link.client_conn,
            link.server_conn,
            link.sequence,
            u64::from(part),
        )
        .max(1)
    }

    /// An id derived from a server request's key (`part` 0x100 and up, apart from the
    /// link keys' parts).
    fn request_id(&self, key: &RequestKey, part: u8) -> u64 {
        self.derived_id(key.conn, key.sequence, 0, 0x100 | u64::from(part))
    }

    /// A keyed mix of four words: folded 64x64->128-bit multiplications of the words
    /// xored with the agent's random keys (the construction of foldhash and wyhash),
    /// cheaper than SipHash on every linked span and as well spread for ids.
    fn derived_id(&self, a: u64, b: u64, c: u64, d: u64) -> u64 {
        let [k0, k1, k2, k3] = self.link_keys;
        let h = fold(a ^ k0, b ^ k1);
        let h = fold(h ^ c ^ k2, d ^ k3);
        fold(h ^ k1, k2 ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The trace id a thread-linked request's trace source names.
    fn trace_of(&self, source: &TraceSource) -> [u8; 16] {
        let mut trace_id = [0u8; 16];
        let (high, low) = match source {
            TraceSource::Header { trace_id, .. } => return *trace_id,
            TraceSource::Link(link) => (self.linked_id(link, 0), self.linked_id(link, 1)),
            TraceSource::Own(key) => (self.request_id(key, 0).max(1), self.request_id(key, 1)),
        };
        trace_id[..8].copy_from_slice(&high.to_be_bytes());
        trace_id[8..].copy_from_slice(&low.to_be_bytes());
        trace_id
    }

    /// The span id of a server request whose thread made client requests: derived from
    /// its key, so its children (which end first) name it.
    fn request_span_id(&self, key: &RequestKey) -> [u8; 8] {
        self.request_id(key, 2).max(1).to_be_bytes()
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
        let text_len = match &r.request.attributes {
            Attributes::Db(db) => db_text_len(db),
            Attributes::Http(http) => http_text_len(role, http),
            Attributes::Rpc(rpc) => rpc.service.len() + 1 + rpc.method.len(),
        };
        // Built where it stays until it is queued: the attributes are most of its size.
        let mut span = FinishedSpan {
            trace_id,
            span_id,
            parent,
            kind: role,
            start_unix_ns: r.request.start_ns.wrapping_add(self.wall_offset_ns),
            end_unix_ns: r.request.end_ns.wrapping_add(self.wall_offset_ns),
            error,
            workload: r.workload.clone(),
            text: String::with_capacity(text_len),
            name: AttributeValue::Static(""),
            attributes: [const { ("", AttributeValue::Int(0)) }; MAX_ATTRIBUTES],
            attribute_count: 0,
        };
        span.name = match &r.request.attributes {
            Attributes::Db(db) => db_attributes(r, db, &mut span),
            Attributes::Http(http) => http_attributes(r, http, &mut span),
            Attributes::Rpc(rpc) => rpc_attributes(rpc, &mut span),
        };
        connection_attributes(r, &mut span);
        Some(span)
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

/// The text a database span owns: its name when it joins operation and collection, and
/// the error's code and type.
fn db_text_len(db: &DbRequest) -> usize {
    db.collection
        .as_ref()
        .map_or(0, |c| db.operation.len() + 1 + c.len())
        + db.status_code.as_ref().map_or(0, String::len)
        + db.error_type.as_ref().map_or(0, String::len)
}

/// Database attributes; the name is `{db.operation.name} {db.collection.name}`, or the
/// operation alone, or the system when the operation is unknown.
fn db_attributes(r: &RequestRecord<'_>, db: &DbRequest, b: &mut FinishedSpan) -> AttributeValue {
    let system = r.protocol.label();
    b.push("db.system.name", AttributeValue::Static(system));
    b.push("db.operation.name", AttributeValue::Static(db.operation));
    // The name joins operation and collection; the collection is the end of it.
    let joined = db
        .collection
        .as_ref()
        .map(|collection| b.own(&[db.operation, " ", collection]));
    if let (Some(AttributeValue::Own { end, .. }), Some(collection)) = (&joined, &db.collection) {
        let end = *end;
        let start = end - collection.len() as u32;
        b.push("db.collection.name", AttributeValue::Own { start, end });
    }
    if let Some(namespace) = &db.namespace {
        b.push("db.namespace", AttributeValue::Shared(namespace.clone()));
    }
    match &db.statement {
        Statement::Text(text) if !text.is_empty() => {
            b.push("db.query.text", AttributeValue::Shared(text.clone()));
        }
        Statement::Placeholders { head, count } if !(head.is_empty() && *count == 0) => {
            b.push(
                "db.query.text",
                AttributeValue::Placeholders {
                    head,
                    count: *count,
                },
            );
        }
        _ => {}
    }
    if let Some(code) = &db.status_code {
        let code = b.own(&[code]);
        b.push("db.response.status_code", code);
    }
    if let Some(error) = &db.error_type {
        let error = b.own(&[error]);
        b.push("error.type", error);
    }
    match (joined, db.operation) {
        (_, "_OTHER") => AttributeValue::Static(system),
        (Some(joined), _) => joined,
        (None, op) => AttributeValue::Static(op),
    }
}

/// The text an HTTP span owns: the route (in the name, on the server side), the path
/// where it is not the route, an error's status code.
fn http_text_len(role: Role, http: &HttpRequest) -> usize {
    let name = match role {
        Role::Server if !http.route.is_empty() => "HTTP".len().max(http.method.len()) + 1,
        _ => 0,
    };
    let path = match &http.path {
        UrlPath::Path(p) => p.len(),
        _ => 0,
    };
    name + http.route.len() + path + 3
}

/// HTTP attributes; the name is `{method} {http.route}` on the server side, `{method}` on
/// the client side (the route there is the agent's guess, not the caller's template), and
/// `HTTP` for an unknown method.
fn http_attributes(
    r: &RequestRecord<'_>,
    http: &HttpRequest,
    b: &mut FinishedSpan,
) -> AttributeValue {
    b.push("http.request.method", AttributeValue::Static(http.method));
    if http.status != 0 {
        b.push(
            "http.response.status_code",
            AttributeValue::Int(i64::from(http.status)),
        );
    }
    let method = if http.method == "_OTHER" {
        "HTTP"
    } else {
        http.method
    };
    // The route, inside the name where the name has it.
    let (name, route) = match r.role {
        Role::Server if !http.route.is_empty() => {
            let name = b.own(&[method, " ", &http.route]);
            let AttributeValue::Own { end, .. } = name else {
                unreachable!("own text")
            };
            let route = AttributeValue::Own {
                start: end - http.route.len() as u32,
                end,
            };
            (name, Some(route))
        }
        _ => (
            AttributeValue::Static(method),
            (!http.route.is_empty()).then(|| b.own(&[&http.route])),
        ),
    };
    if let Some(route) = &route {
        b.push("http.route", route.clone());
    }
    match (&http.path, &route) {
        (UrlPath::Route, Some(route)) => b.push("url.path", route.clone()),
        // An empty route held as the path: an empty path.
        (UrlPath::Route, None) => b.push("url.path", AttributeValue::Static("")),
        (UrlPath::Path(path), _) => {
            let path = b.own(&[path]);
            b.push("url.path", path);
        }
        (UrlPath::Unknown, _) => {}
    }
    if is_error(r.role, &r.request.attributes) {
        let error = if http.status == 0 {
            AttributeValue::Static("_OTHER")
        } else {
            let mut digits = [0u8; 5];
            b.own(&[status_digits(http.status, &mut digits)])
        };
        b.push("error.type", error);
    }
    name
}

/// A status code's decimal digits, without the formatting machinery.
fn status_digits(mut status: u16, buf: &mut [u8; 5]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (status % 10) as u8;
        status /= 10;
        if status == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// gRPC attributes; the name is `{rpc.service}/{rpc.method}`, which holds both.
fn rpc_attributes(rpc: &RpcRequest, b: &mut FinishedSpan) -> AttributeValue {
    let name = b.own(&[&rpc.service, "/", &rpc.method]);
    let AttributeValue::Own { start, end } = name else {
        unreachable!("own text")
    };
    b.push("rpc.system", AttributeValue::Static(rpc.system));
    b.push(
        "rpc.service",
        AttributeValue::Own {
            start,
            end: start + rpc.service.len() as u32,
        },
    );
    b.push(
        "rpc.method",
        AttributeValue::Own {
            start: end - rpc.method.len() as u32,
            end,
        },
    );
    b.push(
        "rpc.grpc.status_code",
        AttributeValue::Int(i64::from(rpc.status)),
    );
    name
}

/// Where the request went: the server's address and port on both sides; the client's
/// address on the server side; the other end of the connection as the network peer; the
/// other end's zone when the agent knows it.
fn connection_attributes(r: &RequestRecord<'_>, b: &mut FinishedSpan) {
    b.push("server.address", AttributeValue::Ip(r.server.ip()));
    b.push(
        "server.port",
        AttributeValue::Int(i64::from(r.server.port())),
    );
    let peer: SocketAddr = match r.role {
        Role::Server => {
            b.push("client.address", AttributeValue::Ip(r.client.ip()));
            b.push(
                "client.port",
                AttributeValue::Int(i64::from(r.client.port())),
            );
            r.client
        }
        _ => r.server,
    };
    b.push("network.peer.address", AttributeValue::Ip(peer.ip()));
    b.push(
        "network.peer.port",
        AttributeValue::Int(i64::from(peer.port())),
    );
    if let Some(zone) = &r.peer_zone.0 {
        b.push("nodetap.peer.zone", AttributeValue::Shared(zone.0.clone()));
    }
}

/// The high and low halves of `x * y` xored: every bit of both inputs reaches the result.
#[inline]
fn fold(x: u64, y: u64) -> u64 {
    let product = u128::from(x) * u128::from(y);
    (product as u64) ^ ((product >> 64) as u64)
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
