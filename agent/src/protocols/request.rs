//! The one request record every protocol produces: timing, outcome and attributes of one
//! request matched to its response. The capture layer adds the protocol, the role and the
//! connection's workload (see `signals::RequestRecord`), and every signal consumes that.
//!
//! A protocol's parser keeps its own richer result type (its unit tests read those); its
//! [`Session`](super::Session) implementation converts them into these, once.

use std::{borrow::Cow, fmt, sync::Arc};

use super::http1::HttpExchange;
use super::Operation;

/// One completed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Start (ns, monotonic): the start of the chunk holding the request's first byte
    /// (see docs/design.md, "Timing").
    pub start_ns: u64,
    /// End (ns, monotonic): the end of the chunk holding the response's last byte.
    pub end_ns: u64,
    /// What was asked and how it went, in the protocol family's terms.
    pub attributes: Attributes,
    /// HTTP/2: the stream's id, the request's name on both ends of its connection
    /// (streams complete in any order, so their place in it names nothing).
    pub stream: Option<u32>,
}

impl Request {
    /// The request's duration in seconds, as the duration histograms observe it.
    pub fn seconds(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// A request's attributes by protocol family; each carries its own outcome (a database
/// error type, an HTTP status, a gRPC status), as its semantic conventions define it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Db(DbRequest),
    Http(HttpRequest),
    Rpc(RpcRequest),
}

/// A database operation (Redis, PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbRequest {
    /// `db.operation.name`: from a closed set per protocol, `_OTHER` otherwise.
    pub operation: &'static str,
    /// `error.type`: `None` on success; a bounded, low-cardinality value otherwise.
    pub error_type: Option<String>,
    /// `db.response.status_code`: the server's code for the outcome, where the protocol
    /// has one (PostgreSQL: the SQLSTATE of an error; Redis: an error's prefix).
    pub status_code: Option<String>,
    /// Statement text with literals replaced by `?` (for spans only, never a label).
    pub statement: Statement,
    /// Collection (table or key-space) name where it is cheap to know.
    pub collection: Option<Arc<str>>,
    /// `db.namespace`: the database the connection works in, where the protocol says
    /// (PostgreSQL: the StartupMessage's database, else its user, as the server does).
    pub namespace: Option<Arc<str>>,
}

/// A database statement with its literals replaced by `?` (`db.query.text`), in the form
/// that costs its protocol nothing per request: only spans read it, so the RED metrics
/// alone must not pay for writing it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// Obfuscated text, shared by every execution of the same statement.
    Text(Arc<str>),
    /// A command followed by one `?` per argument (Redis: `SET ? ?`), written out when read.
    Placeholders { head: &'static str, count: u16 },
}

impl Statement {
    pub const EMPTY: Statement = Statement::Placeholders { head: "", count: 0 };

    /// The statement's text.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Statement::Text(t) => Cow::Borrowed(t),
            Statement::Placeholders { head, count: 0 } => Cow::Borrowed(head),
            Statement::Placeholders { .. } => Cow::Owned(self.to_string()),
        }
    }

    /// Length of the text in bytes.
    pub fn len(&self) -> usize {
        match self {
            Statement::Text(t) => t.len(),
            Statement::Placeholders { head, count } => head.len() + 2 * usize::from(*count),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Text(t) => f.write_str(t),
            Statement::Placeholders { head, count } => {
                f.write_str(head)?;
                (0..*count).try_for_each(|_| f.write_str(" ?"))
            }
        }
    }
}

impl From<&str> for Statement {
    fn from(text: &str) -> Self {
        Statement::Text(Arc::from(text))
    }
}

impl PartialEq<&str> for Statement {
    fn eq(&self, other: &&str) -> bool {
        self.text() == *other
    }
}

/// An HTTP request (HTTP/1.x, or HTTP/2 that is not gRPC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// `http.request.method`: a known method or `_OTHER`.
    pub method: &'static str,
    /// `http.response.status_code`; 0 when no response came (an HTTP/2 reset stream).
    pub status: u16,
    /// `http.route`: low-cardinality, the user's patterns first.
    pub route: String,
    /// `url.path` (for spans only, never a label): the request target's path, its query
    /// and fragment left out.
    pub path: UrlPath,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// The request's W3C `traceparent`, when it had exactly one and it was valid.
    pub traceparent: Option<String>,
}

/// A request's path as the parser kept it. Most routes are the path itself, so the path
/// is not copied a second time for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlPath {
    /// Not known (a CONNECT's target is a host; a path too long to keep whole).
    Unknown,
    /// The same text as the route.
    Route,
    Path(Box<str>),
}

impl UrlPath {
    /// The path, given the request's route.
    pub fn resolve<'a>(&'a self, route: &'a str) -> Option<&'a str> {
        match self {
            UrlPath::Unknown => None,
            UrlPath::Route => Some(route),
            UrlPath::Path(p) => Some(p),
        }
    }
}

/// A remote procedure call (gRPC over HTTP/2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcRequest {
    /// `rpc.system`.
    pub system: &'static str,
    /// `rpc.service`: `package.Service`, or `_OTHER`.
    pub service: String,
    /// `rpc.method`, or `_OTHER`.
    pub method: String,
    /// `rpc.grpc.status_code`.
    pub status: u32,
    /// The call's W3C `traceparent`, when it had exactly one and it was valid.
    pub traceparent: Option<String>,
}

impl From<Operation> for Request {
    fn from(op: Operation) -> Self {
        Request {
            start_ns: op.start_ns,
            end_ns: op.end_ns,
            attributes: Attributes::Db(DbRequest {
                operation: op.name,
                error_type: op.error_type,
                status_code: op.status_code,
                statement: op.statement,
                collection: op.collection,
                namespace: op.namespace,
            }),
            stream: None,
        }
    }
}

impl From<HttpExchange> for Request {
    fn from(ex: HttpExchange) -> Self {
        Request {
            start_ns: ex.start_ns,
            end_ns: ex.end_ns,
            attributes: Attributes::Http(HttpRequest {
                method: ex.method,
                status: ex.status,
                route: ex.route,
                path: ex.path,
                request_body_bytes: ex.request_body_bytes,
                response_body_bytes: ex.response_body_bytes,
                traceparent: ex.traceparent,
            }),
            stream: None,
        }
    }
}

/// Where a parser hands what it completed: a `Vec` of its own results (what its unit
/// tests read), or [`Requests`] (what the registry's sessions hand out).
pub trait Sink<T> {
    fn push(&mut self, item: T);
}

impl<T> Sink<T> for Vec<T> {
    fn push(&mut self, item: T) {
        Vec::push(self, item);
    }
}

/// A sink that turns each result into a [`Request`] as it is pushed: no buffer between
/// a parser and the request records.
pub struct Requests<'a, F>(pub &'a mut Vec<Request>, pub F);

impl<T, F: FnMut(T) -> Request> Sink<T> for Requests<'_, F> {
    fn push(&mut self, item: T) {
        self.0.push((self.1)(item));
    }
}

/// A sink for results that convert by themselves (`Into<Request>`). A closure, not a
/// function pointer, so the conversion is inlined into the parser (through a pointer it
/// was a call and a copy of the whole record per request).
pub fn requests<T: Into<Request>>(
    out: &mut Vec<Request>,
) -> Requests<'_, impl FnMut(T) -> Request> {
    Requests(out, |item: T| item.into())
}
