//! HTTP/1.1 (and 1.0): detection, route normalisation and a per-connection session.
//!
//! The session turns the two byte streams of one connection into [`HttpExchange`]s, one per
//! request that got a final response, each with its own duration under keep-alive and
//! pipelining. It is a streaming state machine: the start line and the header fields are read
//! byte by byte into small fixed buffers (only the fields it needs are kept: Content-Length,
//! Transfer-Encoding, Connection, Expect, traceparent), bodies are skipped by length (also
//! when their bytes were not copied, see [`Chunk`]), and every piece of per-connection state
//! has a fixed size except the queue of open requests, capped at [`MAX_PENDING`], each entry
//! holding a route of at most [`MAX_ROUTE`] bytes.
//!
//! Protocol references: RFC 9112 (HTTP/1.1 message syntax) and RFC 9110 (HTTP semantics);
//! section numbers below are theirs. W3C Trace Context for `traceparent`.
//!
//! # Messages
//!
//! - Start lines (§3, §4): `method SP request-target SP HTTP/1.x`, `HTTP/1.x SP 3DIGIT SP
//!   reason`. Empty lines before a request line are skipped (§2.2); a line may end with a bare
//!   LF (§2.2) and a bare CR is ignored. A field line that starts with whitespace (obs-fold,
//!   §5.2) is ignored. Whitespace between a field name and its colon, a field line without a
//!   colon or a head longer than [`MAX_HEADER`] bytes is a framing error.
//! - Field names are case-insensitive (§5.1); list-valued fields may be split over several
//!   lines (RFC 9110 §5.3).
//! - Body length (§6.3), in this order: responses to HEAD and 1xx, 204 and 304 responses have
//!   none, whatever their fields say; a 2xx answer to CONNECT and a 101 (Switching Protocols)
//!   turn the connection into something else: the exchange is reported and the session stops
//!   parsing the connection ([`SessionHealth::stopped`], [`StopReason::Upgrade`]). Then Transfer-Encoding with `chunked` last: chunked (§7.1: chunk-size lines
//!   with extensions, data, trailer fields); Transfer-Encoding without it: a response runs to
//!   the close, a request cannot be framed (error). Then Content-Length (a list of identical
//!   values is accepted, RFC 9110 §8.6; anything else is an error). Otherwise a request has
//!   no body and a response runs until the connection closes: it completes in
//!   [`Http1Session::finish`].
//! - 1xx responses other than 101 (100 Continue, 103 Early Hints) are interim: they close
//!   nothing (RFC 9110 §15.2). `Expect: 100-continue` needs nothing else: the request body
//!   simply follows the 100.
//! - A final response that says `Connection: close` (or an HTTP/1.0 response without
//!   `keep-alive`) ends the connection (§9.6): requests still open after it never get an
//!   answer and are counted as timed out at once.
//!
//! Body sizes are message body lengths as §6 defines them: the bytes after the header
//! section, including chunked framing and trailers (what went over the wire besides the
//! head), from `Chunk::len`, never from the copied prefix.
//!
//! # Matching
//!
//! Requests are queued when their head is complete (a server may answer before the body is
//! all there); each final response closes the oldest open request (pipelining, §9.3.2). A
//! response never closes a request that started after the response's head was sent (the
//! `end_ns` of the chunk completing it); that only happens after lost framing, and the
//! response is then ignored. A request is reported with `start_ns` of the chunk holding its
//! first byte and `end_ns` of the chunk holding the last byte of its final response.
//!
//! # Lost framing
//!
//! The capture layer copies every byte the session needs, up to a cap per syscall, and
//! nothing of a body the session skips by length ([`Http1Session::skip_hint`]). Inside a
//! body of known length, and inside chunk data, the missing bytes are skipped. When
//! something the parser must read to find the next boundary (a start line, a field, a
//! chunk-size line) is among the missing bytes (a syscall over the cap, a lost event), or
//! bytes do not parse, framing is lost. The session never stops decoding the connection
//! because of that; what it cannot attribute is counted in [`SessionHealth::lost`]
//! (`capture_gap` or `unparsable`), not as timed out:
//!
//! - If the message started its syscall, no other request is in flight (the way a client
//!   that does not pipeline behaves: the common case) and its method (its final status, for
//!   a response) is known, the message is taken to end with what that direction sends until
//!   the other direction speaks: a request ends when the server starts its final response
//!   (after an interim one, such as the 100 Continue it waited for, its body goes on), a
//!   response when the client sends again or the connection closes. The exchange keeps its
//!   method, route, status and exact times; its body size is exact when the head was seen or
//!   gave a Content-Length, and otherwise counts every byte after the copied ones (an upper
//!   bound; 0 for GET, HEAD, TRACE and CONNECT requests, which carry no content in
//!   practice). No error is counted, unless the next chunk of that direction does not start
//!   with a request line (`METHOD /...`) or a status line (`HTTP/`): then the assumption was
//!   wrong, and that is a parse error as below. Both ends of one exchange are never assumed:
//!   a response to a request whose end was assumed must be framed.
//! - Otherwise it is a parse error. Requests: the requests already queued are still matched;
//!   a gap marker stands for the unknown requests in the lost bytes, and responses that reach
//!   it are dropped, each counted as one lost request, until one whose head was sent after
//!   the next known request started (right for clients that wait for each response; with
//!   deep pipelining a response to a lost request can be paired with the next known one).
//!   Responses: which response comes next is unknown, so the open requests are dropped
//!   (counted as lost), and so are the requests open while that direction skips chunks,
//!   until one starts with a status line (the skipped bytes may be their responses). The
//!   request direction skips chunks until one starts with a request line, and decodes
//!   everything exactly from there.
//!
//! # Labels
//!
//! `method` is one of [`METHODS`] (case-sensitive, RFC 9110 §9.1) or `_OTHER`. `route` is
//! the request target's path, from [`RoutePatterns`] when one matches (see
//! [`Http1Session::with_routes`]), otherwise from [`normalize_route`]; `*` for
//! `OPTIONS *`, empty for CONNECT (whose target is a host, not a route). Only the first
//! [`MAX_PATH`] bytes of a path are kept: a longer one ends with `/...`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::request::UrlPath;
use super::request::{requests, Sink};
use super::{Chunk, LostReason, Request, Session, SessionHealth, SessionOptions, StopReason};

/// Open requests kept per connection; when full, the oldest is dropped (counted as lost,
/// `queue_full`).
pub const MAX_PENDING: usize = 10_000;
/// Longest head (start line and fields), and longest trailer section, in bytes. Longer is a
/// framing error.
pub const MAX_HEADER: usize = 64 * 1024;
/// Bytes of a request target's path kept to build its route.
pub const MAX_PATH: usize = 256;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: u32 = 4096;
/// Largest Content-Length or chunk size accepted (1 PiB).
const MAX_LENGTH: u64 = 1 << 50;
// Routes live in their own module (HTTP/2 and the metrics layer use them too); these
// names stay reachable here, where the HTTP/1 session makes its routes.
use super::route::normalize;
pub use super::route::{normalize_route, RoutePatternError, RoutePatterns, MAX_ROUTE};

/// The label of any method not in [`METHODS`].
pub const OTHER: &str = "_OTHER";
/// The methods of RFC 9110 §9 and PATCH (RFC 5789): the closed set of method labels.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

const GET: u8 = 0;
const HEAD: u8 = 1;
const CONNECT: u8 = 5;
const TRACE: u8 = 7;
const OTHER_METHOD: u8 = METHODS.len() as u8;
/// `Open::method` of a gap marker.
const GAP: u8 = u8::MAX;

fn method_index(m: &[u8]) -> u8 {
    METHODS
        .iter()
        .position(|x| x.as_bytes() == m)
        .map_or(OTHER_METHOD, |i| i as u8)
}

fn method_name(i: u8) -> &'static str {
    METHODS.get(usize::from(i)).copied().unwrap_or(OTHER)
}

/// The `http_request_method` label for a method token: one of [`METHODS`] (exact case), or
/// `_OTHER`.
pub fn method_label(method: &[u8]) -> &'static str {
    method_name(method_index(method))
}

/// `tchar` (RFC 9110 §5.6.2): the bytes of a method or a field name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_crlf(b: &u8) -> bool {
    matches!(b, b'\r' | b'\n')
}

/// Index of the first LF in `s`, eight bytes at a time (heads are mostly scanned for line
/// ends).
fn find_lf(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = ONES * b'\n' as u64;
    let mut words = s.chunks_exact(8);
    for (i, w) in words.by_ref().enumerate() {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ LF;
        // A zero byte of `x` is an LF; the lowest flagged byte is exact.
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let tail = words.remainder();
    tail.iter()
        .position(|&b| b == b'\n')
        .map(|p| s.len() - tail.len() + p)
}

// ---- detection ----------------------------------------------------------------------------

/// Whether `prefix`, the first bytes a client sent on a connection, looks like an HTTP/1.x
/// request: one of [`METHODS`], a space, then (as far as the prefix goes) a request target in
/// origin form (`/...`), asterisk form (`*`), absolute form (`http://`, `https://`) or, for
/// CONNECT, authority form (`host:port`), then ` HTTP/1.`. A prefix that ends right after the
/// method's space is accepted (clients may write the method in a syscall of its own); Redis
/// inline commands (`GET key\r\n`) and the HTTP/2 preface (`PRI * HTTP/2.0`) are not.
pub fn looks_like_request(prefix: &[u8]) -> bool {
    let Some(sp) = prefix.iter().take(8).position(|&b| b == b' ') else {
        return false;
    };
    let method = method_index(&prefix[..sp]);
    method != OTHER_METHOD && plausible_after_method(&prefix[sp + 1..], method == CONNECT)
}

/// The request line after `METHOD SP`, as far as `rest` goes.
fn plausible_after_method(rest: &[u8], connect: bool) -> bool {
    let end = rest
        .iter()
        .position(|&b| b == b' ' || is_crlf(&b))
        .unwrap_or(rest.len());
    let target = &rest[..end];
    let complete = end < rest.len();
    if target.is_empty() {
        return !complete;
    }
    if !target.iter().all(|&b| b > b' ' && b != 0x7f) {
        return false;
    }
    let form = match target[0] {
        _ if connect => target[0].is_ascii_alphanumeric() || target[0] == b'[',
        b'/' => true,
        b'*' => target.len() == 1,
        _ => [&b"http://"[..], b"https://"].iter().any(|scheme| {
            let n = target.len().min(scheme.len());
            target[..n].eq_ignore_ascii_case(&scheme[..n]) && (n == scheme.len() || !complete)
        }),
    };
    if !form || !complete {
        return form;
    }
    if rest[end] != b' ' {
        return false;
    }
    let version = &rest[end + 1..];
    let want = b"HTTP/1.";
    let n = version.len().min(want.len());
    version[..n] == want[..n]
        && version.get(7).is_none_or(u8::is_ascii_digit)
        && version.get(8).is_none_or(is_crlf)
}

/// Whether a chunk can start a request (after lost framing, or after a message whose end
/// was assumed): a request line as [`looks_like_request`] sees it. A shorter start (`P`) is
/// not enough: it is as likely to be the middle of something else.
fn plausible_request(data: &[u8]) -> bool {
    let start = data.iter().position(|b| !is_crlf(b)).unwrap_or(data.len());
    looks_like_request(&data[start..])
}

/// Whether a chunk can start a response: `HTTP/1.x NNN` as far as it goes, `HTTP/` at least.
fn plausible_response(data: &[u8]) -> bool {
    let want = b"HTTP/1.";
    if data.len() < 5 {
        return false;
    }
    let n = data.len().min(want.len());
    if data[..n] != want[..n] {
        return false;
    }
    let mut rest = data.iter().skip(7);
    rest.next().is_none_or(u8::is_ascii_digit)
        && rest.next().is_none_or(|&b| b == b' ')
        && rest.take(3).all(u8::is_ascii_digit)
}

// ---- traceparent --------------------------------------------------------------------------

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// Whether `value` is a valid W3C `traceparent` (Trace Context §3.2):
/// `version-traceid-parentid-flags`, lower-case hex, version not `ff`, neither id all zeros;
/// version `00` is exactly 55 characters, later versions may append `-...`.
pub fn valid_traceparent(value: &str) -> bool {
    traceparent_ok(value.as_bytes(), false)
}

/// `longer`: the value has more bytes than `v` holds.
fn traceparent_ok(v: &[u8], longer: bool) -> bool {
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|&c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    let (version, trace_id, parent_id, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !hex(version) || version == b"ff" || !hex(trace_id) || !hex(parent_id) || !hex(flags) {
        return false;
    }
    if zero(trace_id) || zero(parent_id) {
        return false;
    }
    let exact = v.len() == TRACEPARENT_LEN && !longer;
    exact || (version != b"00" && v.get(TRACEPARENT_LEN) == Some(&b'-'))
}

// ---- exchanges ----------------------------------------------------------------------------

/// One request matched to its final response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// One of [`METHODS`], or `_OTHER`.
    pub method: &'static str,
    /// The final status code (100..=999).
    pub status: u16,
    /// Low-cardinality route (see the module documentation).
    pub route: String,
    /// The request target's path (query and fragment left out), for spans.
    pub path: UrlPath,
    /// Message body length of the request (see the module documentation).
    pub request_body_bytes: u64,
    /// Message body length of the response.
    pub response_body_bytes: u64,
    /// `start_ns` of the chunk holding the request's first byte.
    pub start_ns: u64,
    /// `end_ns` of the chunk holding the response's last byte.
    pub end_ns: u64,
    /// The request's `traceparent`, when it had exactly one and it was valid.
    pub traceparent: Option<String>,
}

// ---- message parsing ----------------------------------------------------------------------

/// Where in the head the parser is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Method,
    Target,
    Version,
    StatusVersion,
    Status,
    /// At the start of a field line (or of the empty line ending the head).
    FieldStart,
    FieldName,
    Value(Field),
    /// The rest of the line is not looked at: a reason phrase, a value we do not need, an
    /// obs-fold line.
    Skip,
}

/// The fields the session reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    TraceParent,
}

/// Longest method accepted (the longest registered one, UPDATEREDIRECTREF, has 17 bytes).
const MAX_METHOD: u8 = 32;
/// Longest field name kept ("transfer-encoding").
const NAME_CAP: usize = 17;
/// Longest list element of a known field kept (a traceparent with room for a later version's
/// extra part to be noticed).
const TOKEN_CAP: usize = 64;

/// The head of one message: the start line and the fields the session needs.
#[derive(Clone, Copy, Debug)]
struct Head {
    request: bool,
    /// Bytes so far, bounded by [`MAX_HEADER`].
    size: u32,
    line: Line,
    method: [u8; 8],
    /// Method bytes (counted past the 8 kept, up to [`MAX_METHOD`]).
    method_len: u8,
    version: [u8; 8],
    version_len: u8,
    status: u16,
    status_digits: u8,
    name: [u8; NAME_CAP],
    /// Name bytes; `NAME_CAP + 1` when longer than any field we read.
    name_len: u8,
    tok: [u8; TOKEN_CAP],
    tok_len: u8,
    /// The element had more bytes than `tok` holds.
    tok_over: bool,
    /// Whitespace seen after the element's last byte (kept only if more bytes follow).
    tok_ws: u8,
    content_length: Option<u64>,
    bad_length: bool,
    /// Transfer-Encoding is present; `chunked` says it ends with chunked.
    te: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    http10: bool,
    expect_continue: bool,
    /// traceparent values seen (an element count: two is invalid).
    traceparents: u8,
    traceparent_ok: bool,
    traceparent: [u8; TRACEPARENT_LEN],
}

impl Head {
    const fn new(request: bool) -> Self {
        Self {
            request,
            size: 0,
            line: if request {
                Line::Method
            } else {
                Line::StatusVersion
            },
            method: [0; 8],
            method_len: 0,
            version: [0; 8],
            version_len: 0,
            status: 0,
            status_digits: 0,
            name: [0; NAME_CAP],
            name_len: 0,
            tok: [0; TOKEN_CAP],
            tok_len: 0,
            tok_over: false,
            tok_ws: 0,
            content_length: None,
            bad_length: false,
            te: false,
            chunked: false,
            close: false,
            keep_alive: false,
            http10: false,
            expect_continue: false,
            traceparents: 0,
            traceparent_ok: false,
            traceparent: [0; TRACEPARENT_LEN],
        }
    }

    fn method(&self) -> u8 {
        let n = usize::from(self.method_len);
        if n == 0 || n > self.method.len() {
            return OTHER_METHOD;
        }
        method_index(&self.method[..n])
    }

    /// The request line got as far as the method.
    fn method_known(&self) -> bool {
        self.method_len > 0 && self.line != Line::Method
    }

    /// The status line is complete.
    fn status_known(&self) -> bool {
        !self.request && !matches!(self.line, Line::StatusVersion | Line::Status)
    }

    fn traceparent(&self) -> Option<[u8; TRACEPARENT_LEN]> {
        (self.traceparents == 1 && self.traceparent_ok).then_some(self.traceparent)
    }

    fn count(&mut self, n: usize) -> Result<(), ()> {
        self.size = self.size.saturating_add(n.min(u32::MAX as usize) as u32);
        if self.size as usize > MAX_HEADER {
            return Err(());
        }
        Ok(())
    }

    /// One byte of the current line (not CR, not LF).
    fn byte(&mut self, b: u8, target: &mut Target) -> Result<(), ()> {
        match self.line {
            Line::Method => {
                if b == b' ' {
                    if self.method_len == 0 {
                        return Err(());
                    }
                    self.line = Line::Target;
                    target.clear();
                } else if is_tchar(b) {
                    if let Some(slot) = self.method.get_mut(usize::from(self.method_len)) {
                        *slot = b;
                    }
                    self.method_len += 1;
                    if self.method_len > MAX_METHOD {
                        return Err(());
                    }
                } else {
                    return Err(());
                }
            }
            Line::Target => {
                if b == b' ' {
                    if target.len == 0 && !target.stop {
                        return Err(());
                    }
                    self.line = Line::Version;
                } else if b < b' ' || b == 0x7f {
                    return Err(());
                } else {
                    target.push(b);
                }
            }
            Line::Version | Line::StatusVersion => {
                if self.line == Line::StatusVersion && b == b' ' {
                    if !self.version_ok() {
                        return Err(());
                    }
                    self.line = Line::Status;
                } else if usize::from(self.version_len) < self.version.len() {
                    self.version[usize::from(self.version_len)] = b;
                    self.version_len += 1;
                } else {
                    return Err(());
                }
            }
            Line::Status => match b {
                b'0'..=b'9' if self.status_digits < 3 => {
                    self.status = self.status * 10 + u16::from(b - b'0');
                    self.status_digits += 1;
                }
                b' ' if self.status_digits == 3 && self.status >= 100 => self.line = Line::Skip,
                _ => return Err(()),
            },
            Line::FieldStart => {
                if b == b' ' || b == b'\t' {
                    // obs-fold, or whitespace before the first field (§2.2, §5.2): ignored.
                    self.line = Line::Skip;
                } else {
                    self.name_len = 0;
                    self.line = Line::FieldName;
                    return self.byte(b, target);
                }
            }
            Line::FieldName => {
                if b == b':' {
                    if self.name_len == 0 {
                        return Err(());
                    }
                    self.line = match self.field() {
                        Some(f) => {
                            self.tok_len = 0;
                            self.tok_over = false;
                            self.tok_ws = 0;
                            Line::Value(f)
                        }
                        None => Line::Skip,
                    };
                } else if is_tchar(b) {
                    let n = usize::from(self.name_len);
                    if n < NAME_CAP {
                        self.name[n] = b.to_ascii_lowercase();
                        self.name_len += 1;
                    } else {
                        self.name_len = NAME_CAP as u8 + 1;
                    }
                } else {
                    // Whitespace before the colon is forbidden (§5.1), anything else too.
                    return Err(());
                }
            }
            Line::Value(f) => match b {
                b',' => self.element_end(f),
                b' ' | b'\t' => {
                    if self.tok_len > 0 || self.tok_over {
                        self.tok_ws = self.tok_ws.saturating_add(1);
                    }
                }
                _ => {
                    for _ in 0..self.tok_ws {
                        self.tok_push(b' ');
                    }
                    self.tok_ws = 0;
                    self.tok_push(b);
                }
            },
            Line::Skip => {}
        }
        Ok(())
    }

    fn version_ok(&mut self) -> bool {
        let v = &self.version[..usize::from(self.version_len)];
        let ok = v.len() == 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit();
        self.http10 = ok && v[7] == b'0';
        ok
    }

    fn field(&self) -> Option<Field> {
        let n = usize::from(self.name_len);
        if n > NAME_CAP {
            return None;
        }
        Some(match &self.name[..n] {
            b"content-length" => Field::ContentLength,
            b"transfer-encoding" => Field::TransferEncoding,
            b"connection" => Field::Connection,
            b"expect" if self.request => Field::Expect,
            b"traceparent" if self.request => Field::TraceParent,
            _ => return None,
        })
    }

    fn tok_push(&mut self, b: u8) {
        match self.tok.get_mut(usize::from(self.tok_len)) {
            Some(slot) => {
                *slot = b;
                self.tok_len += 1;
            }
            None => self.tok_over = true,
        }
    }

    /// The end of a list element of a known field.
    fn element_end(&mut self, f: Field) {
        let over = self.tok_over;
        let n = usize::from(self.tok_len);
        self.tok_len = 0;
        self.tok_over = false;
        self.tok_ws = 0;
        let t = &self.tok[..n];
        if t.is_empty() && !over {
            // Empty list elements are allowed (RFC 9110 §5.6.1).
            return;
        }
        match f {
            Field::ContentLength => {
                let value = (!over && t.len() <= 16 && t.iter().all(u8::is_ascii_digit))
                    .then(|| t.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
                    .filter(|&v| v <= MAX_LENGTH);
                match value {
                    Some(v) if self.content_length.is_none_or(|c| c == v) => {
                        self.content_length = Some(v)
                    }
                    _ => self.bad_length = true,
                }
            }
            Field::TransferEncoding => {
                self.te = true;
                let coding = t.split(|&b| b == b';').next().unwrap_or(t).trim_ascii();
                self.chunked = !over && coding.eq_ignore_ascii_case(b"chunked");
            }
            Field::Connection => {
                if t.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
            Field::Expect => {
                if t.eq_ignore_ascii_case(b"100-continue") {
                    self.expect_continue = true;
                }
            }
            Field::TraceParent => {
                self.traceparents = self.traceparents.saturating_add(1);
                self.traceparent_ok = self.traceparents == 1 && traceparent_ok(t, over);
                if self.traceparent_ok {
                    self.traceparent.copy_from_slice(&t[..TRACEPARENT_LEN]);
                }
            }
        }
    }

    /// A whole request line or field line (without its line end, and without CR), read the
    /// way [`byte`](Self::byte) and [`line_end`](Self::line_end) would read it a byte at a
    /// time; true when it ends the head.
    fn whole_line(&mut self, line: &[u8], target: &mut Target) -> Result<bool, ()> {
        match self.line {
            Line::Method => {
                let sp = line.iter().position(|&b| b == b' ').ok_or(())?;
                let method = &line[..sp];
                if method.is_empty()
                    || method.len() > usize::from(MAX_METHOD)
                    || !method.iter().all(|&b| is_tchar(b))
                {
                    return Err(());
                }
                let n = method.len().min(self.method.len());
                self.method[..n].copy_from_slice(&method[..n]);
                self.method_len = method.len() as u8;
                let rest = &line[sp + 1..];
                let sp = rest.iter().position(|&b| b == b' ').ok_or(())?;
                let (t, version) = (&rest[..sp], &rest[sp + 1..]);
                if t.is_empty() || t.iter().any(|&b| b < b' ' || b == 0x7f) {
                    return Err(());
                }
                target.clear();
                target.extend(t);
                if version.len() > self.version.len() {
                    return Err(());
                }
                self.version[..version.len()].copy_from_slice(version);
                self.version_len = version.len() as u8;
                self.line = Line::Version;
            }
            Line::FieldStart => {
                match line.first() {
                    None => return Ok(true),
                    // obs-fold (§5.2): ignored.
                    Some(b' ' | b'\t') => self.line = Line::Skip,
                    Some(_) => {
                        let colon = line.iter().position(|&b| b == b':').ok_or(())?;
                        let name = &line[..colon];
                        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                            return Err(());
                        }
                        if name.len() <= NAME_CAP {
                            for (d, s) in self.name.iter_mut().zip(name) {
                                *d = s.to_ascii_lowercase();
                            }
                            self.name_len = name.len() as u8;
                        } else {
                            self.name_len = NAME_CAP as u8 + 1;
                        }
                        match self.field() {
                            Some(f) => {
                                // List elements, trimmed (tabs read as spaces, as
                                // `byte` does).
                                for element in line[colon + 1..].split(|&b| b == b',') {
                                    let e = element.trim_ascii();
                                    let n = e.len().min(TOKEN_CAP);
                                    for (d, &s) in self.tok.iter_mut().zip(&e[..n]) {
                                        *d = if s == b'\t' { b' ' } else { s };
                                    }
                                    self.tok_len = n as u8;
                                    self.tok_over = e.len() > TOKEN_CAP;
                                    self.element_end(f);
                                }
                                self.line = Line::FieldStart;
                                return Ok(false);
                            }
                            None => self.line = Line::Skip,
                        }
                    }
                }
            }
            _ => unreachable!("whole lines are read at a line's start only"),
        }
        self.line_end()
    }

    /// A line feed; true when it ends the head.
    fn line_end(&mut self) -> Result<bool, ()> {
        match self.line {
            Line::Method | Line::Target | Line::StatusVersion => return Err(()),
            Line::Version => {
                if !self.version_ok() {
                    return Err(());
                }
            }
            // A status line without a reason phrase (nor its space) is accepted.
            Line::Status if self.status_digits == 3 && self.status >= 100 => {}
            Line::Status | Line::FieldName => return Err(()),
            Line::FieldStart => return Ok(true),
            Line::Value(f) => self.element_end(f),
            Line::Skip => {}
        }
        self.line = Line::FieldStart;
        Ok(false)
    }
}

/// The start of a request target: its path (up to `?` or `#`), at most [`MAX_PATH`] bytes.
#[derive(Clone, Copy, Debug)]
struct Target {
    buf: [u8; MAX_PATH],
    len: u16,
    /// The path ended (`?`, `#`) or the buffer is full.
    stop: bool,
    /// The path is longer than the buffer.
    truncated: bool,
}

impl Target {
    const NEW: Self = Self {
        buf: [0; MAX_PATH],
        len: 0,
        stop: false,
        truncated: false,
    };

    fn clear(&mut self) {
        self.len = 0;
        self.stop = false;
        self.truncated = false;
    }

    /// `push` for each byte of `t`.
    fn extend(&mut self, t: &[u8]) {
        let end = t.iter().position(|&b| b == b'?' || b == b'#');
        let path = &t[..end.unwrap_or(t.len())];
        let n = path.len().min(MAX_PATH);
        self.buf[..n].copy_from_slice(&path[..n]);
        self.len = n as u16;
        self.truncated = path.len() > MAX_PATH;
        self.stop = end.is_some() || self.truncated;
    }

    fn push(&mut self, b: u8) {
        if self.stop {
            return;
        }
        if b == b'?' || b == b'#' {
            self.stop = true;
        } else if usize::from(self.len) < MAX_PATH {
            self.buf[usize::from(self.len)] = b;
            self.len += 1;
        } else {
            self.stop = true;
            self.truncated = true;
        }
    }

    /// The path for `url.path`: [`UrlPath::Route`] when the route is the path itself
    /// (nothing copied), unknown for CONNECT and for a path not kept whole.
    fn path(&self, method: u8, partial: bool, route: &str) -> UrlPath {
        if method == CONNECT || self.truncated || (partial && !self.stop) || self.len == 0 {
            return UrlPath::Unknown;
        }
        let raw = &self.buf[..usize::from(self.len)];
        if raw[0] != b'/' {
            // Absolute form (a proxy's request) or `*`: not a path alone.
            UrlPath::Unknown
        } else if raw == route.as_bytes() {
            UrlPath::Route
        } else {
            UrlPath::Path(String::from_utf8_lossy(raw).into())
        }
    }

    fn route(&self, method: u8, partial: bool, routes: Option<&RoutePatterns>) -> Box<str> {
        if method == CONNECT {
            return "".into();
        }
        let raw = &self.buf[..usize::from(self.len)];
        let text = String::from_utf8_lossy(raw);
        let truncated = self.truncated || (partial && !self.stop);
        if let Some(p) = routes.and_then(|r| r.matches(&text)).filter(|_| !truncated) {
            return p.into();
        }
        normalize(&text, truncated).into_boxed_str()
    }
}

/// Where a direction's parser is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages (empty lines are skipped).
    Idle,
    /// Between messages, after one whose end was assumed: the next chunk must start like a
    /// message, or the assumption was wrong (a framing error).
    ExpectStart,
    Head,
    /// A body of known length (`left` bytes to go).
    Body,
    /// Chunked body: a chunk-size line (the size so far in `left`).
    ChunkSize,
    /// Chunked body: chunk data (`left` bytes to go).
    ChunkData,
    /// Chunked body: the CRLF after chunk data (`left` bytes of it to go).
    ChunkEnd,
    /// Chunked body: the trailer section, up to its empty line.
    Trailer,
    /// A response that runs until the connection closes.
    UntilClose,
    /// Framing lost in a message that is still accounted for: all bytes belong to it until
    /// the other direction speaks.
    LostTail,
    /// Framing lost: chunks are skipped until one starts like a message.
    Resync,
}

/// What parsing copied bytes led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// All bytes consumed.
    More,
    /// A head is complete: the session decides how its body is framed.
    Head,
    /// A message is complete.
    Done,
}

/// What skipping the uncopied bytes of a chunk led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// A message ended inside the skipped bytes; more may remain.
    Complete,
    /// All skipped.
    Exhausted,
    /// Something the parser must read is among the uncopied bytes: inside a message, or
    /// between two.
    Lost { inside: bool },
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug)]
struct Dir {
    state: State,
    head: Head,
    left: u64,
    /// Message body bytes so far.
    body: u64,
    /// Bytes of the current chunk-size line.
    chunk_line: u32,
    /// Hex digits of the current chunk size.
    chunk_digits: u8,
    /// In a chunk extension (skipped up to the line's end).
    chunk_ext: bool,
    /// Trailer section: no byte of the current line yet.
    line_empty: bool,
    /// `start_ns` of the chunk holding the message's first byte.
    start_ns: u64,
    /// `end_ns` of the chunk holding the end of the message's head.
    head_end_ns: u64,
    /// The message (or the interim responses before it) started its chunk.
    at_chunk_start: bool,
    /// The interim responses before the next one started their chunk.
    interim_at_start: bool,
}

impl Dir {
    const fn new(request: bool) -> Self {
        Self {
            state: State::Idle,
            head: Head::new(request),
            left: 0,
            body: 0,
            chunk_line: 0,
            chunk_digits: 0,
            chunk_ext: false,
            line_empty: true,
            start_ns: 0,
            head_end_ns: 0,
            at_chunk_start: false,
            interim_at_start: false,
        }
    }

    fn begin(&mut self, request: bool, start_ns: u64, at_chunk_start: bool) {
        self.state = State::Head;
        self.head = Head::new(request);
        self.left = 0;
        self.body = 0;
        self.start_ns = start_ns;
        self.at_chunk_start = at_chunk_start || self.interim_at_start;
        self.interim_at_start = false;
    }

    fn set_body(&mut self, framing: Framing) -> bool {
        self.left = 0;
        self.state = match framing {
            Framing::None => State::Idle,
            Framing::Length(0) => State::Idle,
            Framing::Length(n) => {
                self.left = n;
                State::Body
            }
            Framing::Chunked => {
                self.chunk_line = 0;
                self.chunk_digits = 0;
                self.chunk_ext = false;
                State::ChunkSize
            }
            Framing::UntilClose => State::UntilClose,
        };
        self.state == State::Idle
    }

    /// Parses copied bytes from `data[*pos..]`, stopping after each event.
    fn advance(
        &mut self,
        request: bool,
        data: &[u8],
        pos: &mut usize,
        start_ns: u64,
        target: &mut Target,
    ) -> Result<Event, ()> {
        while *pos < data.len() {
            match self.state {
                State::Idle | State::ExpectStart => {
                    match data[*pos..].iter().position(|b| !is_crlf(b)) {
                        Some(i) => *pos += i,
                        None => {
                            *pos = data.len();
                            break;
                        }
                    }
                    let fresh = data[..*pos].iter().all(is_crlf);
                    self.begin(request, start_ns, fresh);
                }
                State::Head => {
                    if self.head_bytes(data, pos, target)? {
                        return Ok(Event::Head);
                    }
                }
                State::Body => {
                    let k = self.left.min((data.len() - *pos) as u64);
                    *pos += k as usize;
                    self.left -= k;
                    self.body += k;
                    if self.left == 0 {
                        self.state = State::Idle;
                        return Ok(Event::Done);
                    }
                }
                State::ChunkSize => self.chunk_size_bytes(data, pos)?,
                State::ChunkData => {
                    let k = self.left.min((data.len() - *pos) as u64);
                    *pos += k as usize;
                    self.left -= k;
                    self.body += k;
                    if self.left == 0 {
                        self.state = State::ChunkEnd;
                        self.left = 2;
                    }
                }
                State::ChunkEnd => {
                    let b = data[*pos];
                    *pos += 1;
                    self.body += 1;
                    match b {
                        b'\r' if self.left == 2 => self.left = 1,
                        b'\n' => {
                            self.left = 0;
                            self.set_body(Framing::Chunked);
                        }
                        _ => return Err(()),
                    }
                }
                State::Trailer => {
                    if self.trailer_bytes(data, pos)? {
                        self.state = State::Idle;
                        return Ok(Event::Done);
                    }
                }
                State::UntilClose | State::LostTail | State::Resync => {
                    self.body += (data.len() - *pos) as u64;
                    *pos = data.len();
                }
            }
        }
        Ok(Event::More)
    }

    /// Head bytes; true when the head is complete.
    fn head_bytes(
        &mut self,
        data: &[u8],
        pos: &mut usize,
        target: &mut Target,
    ) -> Result<bool, ()> {
        while *pos < data.len() {
            let line_start = match self.head.line {
                Line::Method => self.head.method_len == 0,
                Line::FieldStart => true,
                _ => false,
            };
            if line_start {
                // The common case: a whole line in this chunk, read at once.
                let rest = &data[*pos..];
                if let Some(lf) = find_lf(rest) {
                    let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
                    if !line.contains(&b'\r') {
                        self.head.count(lf + 1)?;
                        *pos += lf + 1;
                        if self.head.whole_line(line, target)? {
                            return Ok(true);
                        }
                        continue;
                    }
                }
            }
            if self.head.line == Line::Skip {
                let rest = &data[*pos..];
                match find_lf(rest) {
                    None => {
                        self.head.count(rest.len())?;
                        *pos = data.len();
                        return Ok(false);
                    }
                    Some(i) => {
                        self.head.count(i)?;
                        *pos += i;
                    }
                }
            }
            let b = data[*pos];
            *pos += 1;
            self.head.count(1)?;
            match b {
                // A line ends at LF; a CR before it (or a bare one) is dropped (§2.2).
                b'\r' => {}
                b'\n' => {
                    if self.head.line_end()? {
                        return Ok(true);
                    }
                }
                _ => self.head.byte(b, target)?,
            }
        }
        Ok(false)
    }

    /// Chunk-size line bytes (§7.1): `1*HEXDIG [ BWS ; ext ] CRLF`.
    fn chunk_size_bytes(&mut self, data: &[u8], pos: &mut usize) -> Result<(), ()> {
        while *pos < data.len() {
            let n = if self.chunk_ext {
                // Extensions are skipped up to the line feed.
                let rest = &data[*pos..];
                find_lf(rest).unwrap_or(rest.len())
            } else {
                0
            };
            if n > 0 {
                self.chunk_line = self.chunk_line.saturating_add(n as u32);
                self.body += n as u64;
                *pos += n;
                if self.chunk_line > MAX_CHUNK_LINE {
                    return Err(());
                }
                continue;
            }
            let b = data[*pos];
            *pos += 1;
            self.body += 1;
            self.chunk_line += 1;
            if self.chunk_line > MAX_CHUNK_LINE {
                return Err(());
            }
            match b {
                b'\n' => {
                    if self.chunk_digits == 0 {
                        return Err(());
                    }
                    self.chunk_line = 0;
                    self.chunk_ext = false;
                    self.chunk_digits = 0;
                    if self.left == 0 {
                        // The last chunk: the trailer section follows (§7.1.2).
                        self.state = State::Trailer;
                        self.line_empty = true;
                        self.head.size = 0;
                    } else {
                        self.state = State::ChunkData;
                    }
                    return Ok(());
                }
                b'\r' => {}
                _ if self.chunk_ext => {}
                b';' | b' ' | b'\t' if self.chunk_digits > 0 => self.chunk_ext = true,
                _ => {
                    let d = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        _ => return Err(()),
                    };
                    self.chunk_digits = self.chunk_digits.saturating_add(1);
                    self.left = self.left * 16 + u64::from(d);
                    if self.left > MAX_LENGTH {
                        return Err(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Trailer section bytes (§7.1.2), skipped line by line; true at its empty line.
    fn trailer_bytes(&mut self, data: &[u8], pos: &mut usize) -> Result<bool, ()> {
        while *pos < data.len() {
            let b = data[*pos];
            if !self.line_empty && b != b'\n' {
                let rest = &data[*pos..];
                let n = find_lf(rest).unwrap_or(rest.len());
                self.head.count(n)?;
                self.body += n as u64;
                *pos += n;
                continue;
            }
            *pos += 1;
            self.body += 1;
            self.head.count(1)?;
            match b {
                b'\n' if self.line_empty => return Ok(true),
                b'\n' => self.line_empty = true,
                b'\r' => {}
                _ => self.line_empty = false,
            }
        }
        Ok(false)
    }

    /// Skips up to `*n` uncopied bytes.
    fn skip(&mut self, n: &mut u64) -> Skip {
        loop {
            if *n == 0 {
                return Skip::Exhausted;
            }
            match self.state {
                State::Body | State::ChunkData | State::ChunkEnd => {
                    // The CRLF after chunk data has a known length too.
                    let k = self.left.min(*n);
                    self.left -= k;
                    self.body += k;
                    *n -= k;
                    if self.left > 0 {
                        return Skip::Exhausted;
                    }
                    match self.state {
                        State::Body => {
                            self.state = State::Idle;
                            return Skip::Complete;
                        }
                        State::ChunkData => {
                            self.state = State::ChunkEnd;
                            self.left = 2;
                        }
                        _ => {
                            self.set_body(Framing::Chunked);
                        }
                    }
                }
                State::UntilClose | State::LostTail => {
                    self.body += *n;
                    *n = 0;
                }
                State::Resync => *n = 0,
                State::Idle | State::ExpectStart => return Skip::Lost { inside: false },
                State::Head | State::ChunkSize | State::Trailer => {
                    return Skip::Lost { inside: true }
                }
            }
        }
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

// ---- the session ----------------------------------------------------------------------------

/// A request waiting for its final response.
#[derive(Debug)]
struct Open {
    start_ns: u64,
    body: u64,
    route: Box<str>,
    /// What only some requests have, behind one pointer: open requests queue by the
    /// thousand per connection, so each stays small.
    extra: Option<Box<OpenExtra>>,
    /// Index in [`METHODS`], `OTHER_METHOD`, or `GAP` for a marker standing for requests
    /// lost with the request framing.
    method: u8,
    /// The request's end was assumed (its framing was lost, see the module documentation):
    /// its response's end may not be assumed as well.
    assumed_end: bool,
    /// `url.path` is the route's text ([`UrlPath::Route`]).
    path_is_route: bool,
}

#[derive(Debug)]
struct OpenExtra {
    traceparent: Option<[u8; TRACEPARENT_LEN]>,
    /// `url.path` when it is not the route's text.
    path: Option<Box<str>>,
}

impl Open {
    fn new(
        start_ns: u64,
        method: u8,
        route: Box<str>,
        path: UrlPath,
        traceparent: Option<[u8; TRACEPARENT_LEN]>,
        assumed_end: bool,
    ) -> Self {
        let (path_is_route, path) = match path {
            UrlPath::Route => (true, None),
            UrlPath::Path(p) => (false, Some(p)),
            UrlPath::Unknown => (false, None),
        };
        let extra = (traceparent.is_some() || path.is_some())
            .then(|| Box::new(OpenExtra { traceparent, path }));
        Self {
            start_ns,
            body: 0,
            route,
            extra,
            method,
            assumed_end,
            path_is_route,
        }
    }

    fn gap(start_ns: u64) -> Self {
        Self::new(start_ns, GAP, "".into(), UrlPath::Unknown, None, false)
    }

    fn is_gap(&self) -> bool {
        self.method == GAP
    }
}

/// A response whose framing was lost while it was the only one expected: it ends where the
/// server stops sending (see the module documentation).
#[derive(Debug)]
struct Tail {
    open: Open,
    status: u16,
    /// Bytes after the last byte parsed.
    body: u64,
    /// The body size when known all the same (a Content-Length, or no body at all).
    known_body: Option<u64>,
    end_ns: u64,
    /// The client spoke: the response is over.
    closed: bool,
}

/// One HTTP/1.x connection: both directions, matched into exchanges.
///
/// Feed it every data syscall in the order they happened: [`on_request`](Self::on_request)
/// for client-to-server bytes, [`on_response`](Self::on_response) for server-to-client bytes,
/// whichever side of the connection was observed, and [`finish`](Self::finish) when the
/// connection closes. A response whose end is only known when the client speaks again is
/// handed out by the next `on_response`, by [`take_completed`](Self::take_completed) (call
/// it after `on_request` to get it at once) or by `finish`.
#[derive(Debug)]
pub struct Http1Session {
    req: Dir,
    resp: Dir,
    target: Target,
    open: VecDeque<Open>,
    /// Gap markers in `open`.
    gaps: usize,
    /// The back of `open` is the request whose body the client is sending.
    req_body_open: bool,
    /// The body size of that request when known although its head was lost.
    req_known_body: Option<u64>,
    /// A request in a lost tail was interrupted by the server: an interim response (such as
    /// a 100 Continue) resumes it.
    req_tail_paused: bool,
    tail: Option<Box<Tail>>,
    /// `end_ns` of the last server chunk.
    last_resp_end_ns: u64,
    routes: Option<Arc<RoutePatterns>>,
    health: SessionHealth,
    /// The connection switched protocols: nothing more is parsed.
    stopped: bool,
    /// Why the request direction last lost its framing (what its gap markers count as).
    req_lost: LostReason,
    /// Why the response direction last lost its framing (what requests dropped while it
    /// resynchronises count as).
    resp_lost: LostReason,
}

impl Default for Http1Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Session {
    /// A session for a new connection (nothing seen yet), routes by [`normalize_route`].
    pub fn new() -> Self {
        Self {
            req: Dir::new(true),
            resp: Dir::new(false),
            target: Target::NEW,
            open: VecDeque::new(),
            gaps: 0,
            req_body_open: false,
            req_known_body: None,
            req_tail_paused: false,
            tail: None,
            last_resp_end_ns: 0,
            routes: None,
            health: SessionHealth::default(),
            stopped: false,
            req_lost: LostReason::Unparsable,
            resp_lost: LostReason::Unparsable,
        }
    }

    /// A session whose routes come from `routes` first (see [`RoutePatterns`]).
    pub fn with_routes(routes: Arc<RoutePatterns>) -> Self {
        Self {
            routes: Some(routes),
            ..Self::new()
        }
    }

    /// Client-to-server bytes.
    pub fn on_request(&mut self, chunk: &Chunk) {
        if self.stopped || chunk.len == 0 {
            return;
        }
        self.request_bytes(chunk);
        self.sync_request_body();
    }

    fn request_bytes(&mut self, chunk: &Chunk) {
        if self.resp.state == State::LostTail {
            // A client that does not pipeline sends again only after the whole response.
            self.resp.state = State::ExpectStart;
            if let Some(t) = &mut self.tail {
                t.closed = true;
            }
        }
        let data = &chunk.data[..chunk.data.len().min(chunk.len)];
        match self.req.state {
            State::LostTail => {
                self.req.body += chunk.len as u64;
                return;
            }
            State::Resync => {
                if !plausible_request(data) {
                    return;
                }
                self.req.state = State::Idle;
            }
            State::ExpectStart => {
                if !plausible_request(data) {
                    // The request taken to end with its syscall did not.
                    self.request_framing_lost(chunk.start_ns, LostReason::CaptureGap);
                    return;
                }
                // A new request: the one whose end was assumed gets no more bytes.
                self.sync_request_body();
                self.req_body_open = false;
                self.req.state = State::Idle;
            }
            _ => {}
        }
        self.req_tail_paused = false;
        let mut pos = 0;
        loop {
            match self
                .req
                .advance(true, data, &mut pos, chunk.start_ns, &mut self.target)
            {
                Ok(Event::More) => break,
                Ok(Event::Head) => self.request_head(chunk.start_ns),
                Ok(Event::Done) => self.request_done(),
                Err(()) => {
                    self.request_framing_lost(chunk.start_ns, LostReason::Unparsable);
                    return;
                }
            }
            if self.stopped || self.req.state == State::Resync {
                return;
            }
        }
        let mut unknown = (chunk.len - data.len()) as u64;
        loop {
            match self.req.skip(&mut unknown) {
                Skip::Exhausted => return,
                Skip::Complete => self.request_done(),
                Skip::Lost { inside } => {
                    if inside && self.request_tail_ok() {
                        self.request_tail(unknown);
                    } else {
                        self.request_framing_lost(chunk.start_ns, LostReason::CaptureGap);
                    }
                    return;
                }
            }
        }
    }

    /// Server-to-client bytes; completed exchanges are appended to `out`.
    pub fn on_response(&mut self, chunk: &Chunk, out: &mut impl Sink<HttpExchange>) {
        if self.stopped || chunk.len == 0 {
            return;
        }
        self.take_completed(out);
        if self.req.state == State::LostTail {
            // A server answers once it has read the request (or decided not to), or it sends
            // an interim response first (then the request resumes, see `response_head`).
            self.sync_request_body();
            self.req.state = State::ExpectStart;
            self.req_tail_paused = true;
        }
        self.last_resp_end_ns = chunk.end_ns;
        let data = &chunk.data[..chunk.data.len().min(chunk.len)];
        match self.resp.state {
            State::LostTail => {
                if let Some(t) = &mut self.tail {
                    t.end_ns = chunk.end_ns;
                    t.body += chunk.len as u64;
                }
                return;
            }
            State::Resync => {
                if !plausible_response(data) {
                    // These bytes may be the response to any request open now: pairing a
                    // later response with one of them could be wrong.
                    self.drop_open(Some(self.resp_lost));
                    return;
                }
                self.resp.state = State::Idle;
            }
            State::ExpectStart => {
                if !plausible_response(data) {
                    // The response taken to end with its syscalls did not.
                    self.response_framing_lost(LostReason::CaptureGap);
                    return;
                }
                self.resp.state = State::Idle;
            }
            _ => {}
        }
        let mut pos = 0;
        loop {
            match self
                .resp
                .advance(false, data, &mut pos, chunk.start_ns, &mut self.target)
            {
                Ok(Event::More) => break,
                Ok(Event::Head) => self.response_head(chunk.end_ns, out),
                Ok(Event::Done) => self.response_done(chunk.end_ns, out),
                Err(()) => {
                    self.response_framing_lost(LostReason::Unparsable);
                    return;
                }
            }
            if self.stopped || self.resp.state == State::Resync {
                return;
            }
        }
        let mut unknown = (chunk.len - data.len()) as u64;
        loop {
            match self.resp.skip(&mut unknown) {
                Skip::Exhausted => return,
                Skip::Complete => self.response_done(chunk.end_ns, out),
                Skip::Lost { inside } => {
                    if inside && self.response_tail_ok(chunk.end_ns) {
                        self.response_tail(unknown, chunk.end_ns);
                    } else {
                        self.response_framing_lost(LostReason::CaptureGap);
                    }
                    return;
                }
            }
            if self.stopped {
                return;
            }
        }
    }

    /// Hands out a response that ended when the client spoke again (see the type's
    /// documentation).
    pub fn take_completed(&mut self, out: &mut impl Sink<HttpExchange>) {
        if self.tail.as_ref().is_some_and(|t| t.closed) {
            self.emit_tail(out);
        }
    }

    /// The connection closed: completes a response delimited by the close (and one whose
    /// framing was lost), and drops the requests still open (counted in `timed_out`). Call
    /// [`take_health`](Self::take_health) after it.
    pub fn finish(&mut self, out: &mut impl Sink<HttpExchange>) {
        if self.stopped {
            return;
        }
        self.emit_tail(out);
        if self.resp.state == State::UntilClose {
            self.response_done(self.last_resp_end_ns, out);
        }
        self.sync_request_body();
        self.drop_open(None);
        self.req = Dir::new(true);
        self.resp = Dir::new(false);
    }

    // ---- requests ---------------------------------------------------------------------------

    /// A request head is complete: queue the request and frame its body.
    fn request_head(&mut self, start_ns: u64) {
        let h = &self.req.head;
        let method = h.method();
        let route = self.target.route(method, false, self.routes.as_deref());
        let path = self.target.path(method, false, &route);
        let open = Open::new(
            self.req.start_ns,
            method,
            route,
            path,
            h.traceparent(),
            false,
        );
        // §6.3: chunked last, then Content-Length; a request has no body otherwise.
        let framing = if h.te {
            h.chunked.then_some(Framing::Chunked)
        } else if h.bad_length {
            None
        } else {
            Some(Framing::Length(h.content_length.unwrap_or(0)))
        };
        self.push_open(open);
        self.req_body_open = true;
        self.req_known_body = None;
        match framing {
            Some(f) => {
                if self.req.set_body(f) {
                    self.request_done();
                }
            }
            // The server cannot frame it either: it answers 400 and closes (§6.3).
            None => self.request_framing_lost(start_ns, LostReason::Unparsable),
        }
    }

    fn request_done(&mut self) {
        self.sync_request_body();
        self.req_body_open = false;
        self.req.state = State::Idle;
    }

    /// The back of the queue gets the body bytes counted so far.
    fn sync_request_body(&mut self) {
        if !self.req_body_open {
            return;
        }
        let body = self.req_known_body.unwrap_or(self.req.body);
        if let Some(o) = self.open.back_mut() {
            o.body = body;
        }
    }

    /// Lost inside a request: can it be taken to end where the client stops sending?
    fn request_tail_ok(&self) -> bool {
        let r = &self.req;
        if !r.at_chunk_start || self.gaps > 0 {
            return false;
        }
        if r.state == State::Head {
            r.head.method_known() && self.open.is_empty()
        } else {
            // In a chunked body: the request was queued at its head.
            self.req_body_open && self.open.len() == 1
        }
    }

    fn request_tail(&mut self, unknown: u64) {
        if self.req.state == State::Head {
            let h = &self.req.head;
            let method = h.method();
            let partial = h.line == Line::Target;
            self.req_known_body = if matches!(method, GET | HEAD | TRACE | CONNECT) {
                Some(0)
            } else if !h.te && !h.bad_length {
                h.content_length
            } else {
                None
            };
            let route = self.target.route(method, partial, self.routes.as_deref());
            let path = self.target.path(method, partial, &route);
            let open = Open::new(
                self.req.start_ns,
                method,
                route,
                path,
                h.traceparent(),
                true,
            );
            self.push_open(open);
            self.req_body_open = true;
        } else if let Some(o) = self.open.back_mut() {
            o.assumed_end = true;
        }
        self.req.body += unknown;
        self.req.state = State::LostTail;
    }

    /// Request framing lost: the queued requests still get their responses first; a gap
    /// stands for the lost ones.
    fn request_framing_lost(&mut self, start_ns: u64, reason: LostReason) {
        self.health.parse_errors += 1;
        self.req_lost = reason;
        self.sync_request_body();
        self.req_body_open = false;
        self.req = Dir::new(true);
        self.req.state = State::Resync;
        if self.open.back().is_none_or(|o| !o.is_gap()) {
            self.push_open(Open::gap(start_ns));
        }
    }

    // ---- responses --------------------------------------------------------------------------

    /// The request a response whose head ended at `end_ns` answers (see `pop_answered`),
    /// not removed.
    fn answered(&self, end_ns: u64) -> Option<&Open> {
        let mut i = 0;
        if self.open.front()?.is_gap() {
            match self.open.get(1) {
                Some(next) if next.start_ns <= end_ns => i = 1,
                _ => return None,
            }
        }
        self.open.get(i).filter(|o| o.start_ns <= end_ns)
    }

    /// A response head is complete.
    fn response_head(&mut self, end_ns: u64, out: &mut impl Sink<HttpExchange>) {
        self.resp.head_end_ns = end_ns;
        let h = &self.resp.head;
        let status = h.status;
        let method = self.answered(end_ns).map(|o| o.method);
        if (100..200).contains(&status) && status != 101 {
            // Interim (RFC 9110 §15.2): closes nothing. The next response of the exchange
            // counts as starting its chunk if this one did.
            self.resp.set_body(Framing::None);
            self.resp.interim_at_start = self.resp.at_chunk_start;
            if self.req_tail_paused && self.req.state == State::ExpectStart {
                // Not the answer yet: the client may still be sending (after a 100 Continue,
                // the body it was waiting to send).
                self.req.state = State::LostTail;
            }
            return;
        }
        self.req_tail_paused = false;
        if status == 101 || (method == Some(CONNECT) && (200..300).contains(&status)) {
            // The connection now carries another protocol, or a tunnel (RFC 9110 §9.3.6,
            // §15.2.2): report this exchange and stop.
            self.resp.set_body(Framing::None);
            self.response_done(end_ns, out);
            self.stop_upgraded();
            return;
        }
        // §6.3, in order.
        let framing = if method == Some(HEAD) || status == 204 || status == 304 {
            Some(Framing::None)
        } else if h.te {
            Some(if h.chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            })
        } else if h.bad_length {
            None
        } else {
            Some(
                h.content_length
                    .map_or(Framing::UntilClose, Framing::Length),
            )
        };
        match framing {
            Some(f) => {
                if self.resp.set_body(f) {
                    self.response_done(end_ns, out);
                }
            }
            None => self.response_framing_lost(LostReason::Unparsable),
        }
    }

    fn response_done(&mut self, end_ns: u64, out: &mut impl Sink<HttpExchange>) {
        let h = &self.resp.head;
        let closing = h.close || (h.http10 && !h.keep_alive);
        let (status, body) = (h.status, self.resp.body);
        self.resp.state = State::Idle;
        // The server sent the head once the request had started.
        if let Some(open) = self.pop_answered(self.resp.head_end_ns) {
            self.emit(open, status, body, end_ns, out);
        } else if self.open.front().is_some_and(Open::is_gap) {
            // The answer to a request sent in lost bytes.
            self.health.lost.add(self.req_lost, 1);
        }
        if closing {
            // §9.6: the server closes after this response; nothing else will be answered.
            self.sync_request_body();
            self.drop_open(None);
        }
    }

    /// Lost inside a response: can it be taken to end where the server stops sending?
    fn response_tail_ok(&self, end_ns: u64) -> bool {
        let r = &self.resp;
        // The request must have started before the response's head was sent.
        let head_end_ns = if r.state == State::Head {
            end_ns
        } else {
            r.head_end_ns
        };
        r.at_chunk_start
            && r.head.status_known()
            && r.head.status >= 200
            && self.open.len() == 1
            && self.gaps == 0
            && self
                .open
                .front()
                .is_some_and(|o| o.start_ns <= head_end_ns && o.method != CONNECT && !o.assumed_end)
    }

    fn response_tail(&mut self, unknown: u64, end_ns: u64) {
        let Some(open) = self.pop_front_open() else {
            return;
        };
        let h = &self.resp.head;
        let known_body = if self.resp.state != State::Head {
            None
        } else if open.method == HEAD || h.status == 204 || h.status == 304 {
            Some(0)
        } else if !h.te && !h.bad_length {
            h.content_length
        } else {
            None
        };
        self.tail = Some(Box::new(Tail {
            open,
            status: h.status,
            body: self.resp.body + unknown,
            known_body,
            end_ns,
            closed: false,
        }));
        self.resp.state = State::LostTail;
    }

    fn emit_tail(&mut self, out: &mut impl Sink<HttpExchange>) {
        if let Some(t) = self.tail.take() {
            if self.resp.state == State::LostTail {
                self.resp.state = State::ExpectStart;
            }
            let body = t.known_body.unwrap_or(t.body);
            self.emit(t.open, t.status, body, t.end_ns, out);
        }
    }

    /// Response framing lost: which response comes next is unknown, so the open requests are
    /// dropped.
    fn response_framing_lost(&mut self, reason: LostReason) {
        self.health.parse_errors += 1;
        self.resp_lost = reason;
        self.resp = Dir::new(false);
        self.resp.state = State::Resync;
        self.sync_request_body();
        self.drop_open(Some(reason));
    }

    fn emit(
        &mut self,
        open: Open,
        status: u16,
        response_body_bytes: u64,
        end_ns: u64,
        out: &mut impl Sink<HttpExchange>,
    ) {
        let (traceparent, path) = open.extra.map_or((None, None), |e| (e.traceparent, e.path));
        let path = match path {
            Some(p) => UrlPath::Path(p),
            None if open.path_is_route => UrlPath::Route,
            None => UrlPath::Unknown,
        };
        out.push(HttpExchange {
            method: method_name(open.method),
            status,
            route: open.route.into_string(),
            path,
            request_body_bytes: open.body,
            response_body_bytes,
            start_ns: open.start_ns,
            end_ns,
            // Validated: lower-case hex digits and dashes.
            traceparent: traceparent.map(|t| String::from_utf8_lossy(&t[..]).into_owned()),
        });
    }

    // ---- the queue --------------------------------------------------------------------------

    fn push_open(&mut self, open: Open) {
        if self.open.len() >= MAX_PENDING {
            self.pop_front(Some(LostReason::QueueFull));
        }
        if open.is_gap() {
            self.gaps += 1;
        }
        self.open.push_back(open);
    }

    /// Drops the oldest entry: a request is counted as lost for `lost`, or as timed out.
    fn pop_front(&mut self, lost: Option<LostReason>) {
        if let Some(o) = self.pop_front_open() {
            if o.is_gap() {
                self.gaps -= 1;
            } else {
                self.count_dropped(lost, 1);
            }
        }
    }

    fn count_dropped(&mut self, lost: Option<LostReason>, n: u64) {
        match lost {
            Some(reason) => self.health.lost.add(reason, n),
            None => self.health.timed_out += n,
        }
    }

    /// Removes the oldest entry; the client's body bytes stop going to it.
    fn pop_front_open(&mut self) -> Option<Open> {
        if self.open.len() == 1 && self.req_body_open {
            self.sync_request_body();
            self.req_body_open = false;
        }
        self.open.pop_front()
    }

    /// The request a response whose head ended at `end_ns` answers, removed from the queue:
    /// the oldest, unless a gap is first (responses sent before the next known request
    /// started answer lost requests: none), and never one that started after `end_ns`.
    fn pop_answered(&mut self, end_ns: u64) -> Option<Open> {
        self.answered(end_ns)?;
        if self.open.front().is_some_and(Open::is_gap) {
            self.open.pop_front();
            self.gaps -= 1;
        }
        self.pop_front_open()
    }

    /// Drops the open requests: counted as lost for `lost`, or (the server closes, the
    /// connection ended) as never answered, in `timed_out`.
    fn drop_open(&mut self, lost: Option<LostReason>) {
        self.count_dropped(lost, self.pending() as u64);
        self.open.clear();
        self.gaps = 0;
        self.tail = None;
        self.req_body_open = false;
        if self.resp.state == State::LostTail {
            self.resp.state = State::ExpectStart;
        }
    }

    /// The connection now carries another protocol: stop for good, holding nothing.
    fn stop_upgraded(&mut self) {
        self.drop_open(Some(LostReason::Stopped));
        self.open = VecDeque::new();
        self.stopped = true;
        self.health.stopped = Some(StopReason::Upgrade);
        self.req = Dir::new(true);
        self.resp = Dir::new(false);
    }
}

// ---- the protocol registry's session ------------------------------------------------------

/// A HTTP/1.x session for [`super::PROTOCOLS`].
pub fn new_session(options: &SessionOptions) -> Box<dyn Session> {
    Box::new(Http1Session::with_routes(options.http_routes.clone()))
}

impl Session for Http1Session {
    fn client_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        self.on_request(chunk);
        self.take_completed(&mut requests(out));
    }

    fn server_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        self.on_response(chunk, &mut requests(out));
    }

    fn finish(&mut self, out: &mut Vec<Request>) {
        Http1Session::finish(self, &mut requests(out));
    }

    /// Requests waiting for their final response.
    fn pending(&self) -> usize {
        self.open.len() - self.gaps + usize::from(self.tail.is_some())
    }

    /// Returns what happened since the last call and resets it (`stopped` is reported once).
    fn take_health(&mut self) -> SessionHealth {
        std::mem::take(&mut self.health)
    }

    fn newest_traceparent(&self) -> Option<&[u8]> {
        let open = self.open.back().filter(|o| !o.is_gap())?;
        open.extra.as_ref()?.traceparent.as_ref().map(|t| &t[..])
    }

    /// How many of the next bytes in that direction the session will skip without looking
    /// at them: the rest of a body of known length, or of the data of a chunk (not the CRLF
    /// after it, which is checked). 0 when unsure.
    fn skip_hint(&self, from_client: bool) -> u64 {
        let d = if from_client { &self.req } else { &self.resp };
        match d.state {
            State::Body | State::ChunkData if !self.stopped => d.left,
            _ => 0,
        }
    }

    /// Drops the requests that started more than `timeout_ns` before `now_ns` (counted in
    /// `timed_out`).
    fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        while let Some(o) = self.open.front() {
            if o.start_ns.saturating_add(timeout_ns) >= now_ns {
                break;
            }
            self.pop_front(None);
        }
        if let Some(t) = &self.tail {
            if !t.closed && t.open.start_ns.saturating_add(timeout_ns) < now_ns {
                self.tail = None;
                self.health.timed_out += 1;
                if self.resp.state == State::LostTail {
                    self.resp.state = State::ExpectStart;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{LostRequests, StopReason};

    // ---- fixtures ----------------------------------------------------------------------------

    use crate::protocols::test_fixtures::{
        logged, random_split, truncated, whole, Fixture, Piece, Rng,
    };

    fn fixture(name: &str) -> Fixture {
        crate::protocols::test_fixtures::load("http1", name)
    }

    struct Outcome {
        ex: Vec<HttpExchange>,
        health: SessionHealth,
        pending: usize,
        /// Time of each piece, as given to the session.
        times: Vec<u64>,
    }

    /// Feeds the pieces in order (piece `i` runs from `1000 * (i + 1)` to that plus 500 ns),
    /// then closes the connection.
    fn run(pieces: &[Piece<'_>]) -> Outcome {
        let mut s = Http1Session::new();
        let mut ex = Vec::new();
        let mut times = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let t = 1000 * (i as u64 + 1);
            times.push(t);
            let c = Chunk {
                data: p.data,
                len: p.len,
                start_ns: t,
                end_ns: t + 500,
            };
            if p.req {
                s.on_request(&c);
            } else {
                s.on_response(&c, &mut ex);
            }
            check_bounds(&s);
        }
        s.finish(&mut ex);
        Outcome {
            ex,
            health: s.take_health(),
            pending: s.pending(),
            times,
        }
    }

    fn check_bounds(s: &Http1Session) {
        assert!(
            s.open.len() <= MAX_PENDING,
            "queue {} over the cap",
            s.open.len()
        );
        assert!(
            s.gaps <= s.open.len(),
            "gaps {} > queue {}",
            s.gaps,
            s.open.len()
        );
        for d in [&s.req, &s.resp] {
            assert!(
                d.head.size as usize <= MAX_HEADER,
                "head {} over the cap",
                d.head.size
            );
            assert!(
                d.chunk_line <= MAX_CHUNK_LINE,
                "chunk line {}",
                d.chunk_line
            );
        }
        for o in &s.open {
            assert!(
                o.route.len() <= MAX_ROUTE,
                "route {:?} over the cap",
                o.route
            );
        }
    }

    /// `METHOD STATUS ROUTE REQUEST_BODY RESPONSE_BODY` per exchange.
    fn summary(ex: &[HttpExchange]) -> Vec<String> {
        ex.iter()
            .map(|e| {
                format!(
                    "{} {} {} {} {}",
                    e.method, e.status, e.route, e.request_body_bytes, e.response_body_bytes
                )
            })
            .collect()
    }

    /// End of the head starting at `at`: the index after its empty line.
    fn head_end(b: &[u8], at: usize) -> usize {
        at + b[at..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head ends")
            + 4
    }

    /// Length of the chunked body at `b[at..]`, decoded the simple way (test oracle).
    fn chunked_len(b: &[u8], at: usize) -> u64 {
        let line = |i: usize| i + b[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        let mut i = at;
        loop {
            let end = line(i);
            let text = std::str::from_utf8(&b[i..end - 2]).unwrap();
            let size = usize::from_str_radix(text.split(';').next().unwrap().trim(), 16).unwrap();
            i = end;
            if size == 0 {
                loop {
                    let end = line(i);
                    let empty = end == i + 2;
                    i = end;
                    if empty {
                        return (i - at) as u64;
                    }
                }
            }
            i += size + 2;
        }
    }

    const SMALL: u64 = 1234;
    const MEDIUM: u64 = 65536;
    const LARGE: u64 = 1 << 20;
    const INDEX: u64 = 50;
    const API: u64 = 11;
    const NOT_FOUND: u64 = 153;
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn expected(name: &str, f: &Fixture) -> Vec<String> {
        let first_chunked = || chunked_len(&f.resp, head_end(&f.resp, 0));
        let list: Vec<(&str, u16, &str, u64, u64)> = match name {
            "keepalive" => vec![
                ("GET", 200, "/", 0, INDEX),
                ("GET", 200, "/static/small.txt", 0, SMALL),
                ("GET", 200, "/api/users/{id}", 0, API),
                ("GET", 200, "/static/medium.bin", 0, MEDIUM),
                ("GET", 200, "/api/orders/{id}/items", 0, API),
            ],
            "head" => vec![
                ("HEAD", 200, "/static/medium.bin", 0, 0),
                ("HEAD", 404, "/notfound", 0, 0),
                ("HEAD", 200, "/static/small.txt", 0, 0),
            ],
            "not_found" => vec![
                ("GET", 404, "/no/such/page.html", 0, NOT_FOUND),
                ("GET", 404, "/notfound", 0, NOT_FOUND),
            ],
            "server_error" => vec![("GET", 500, "/error", 0, 177)],
            "large" => vec![("GET", 200, "/static/large.bin", 0, LARGE)],
            "chunked_gzip" => vec![
                ("GET", 200, "/gz/text.txt", 0, first_chunked()),
                ("GET", 200, "/", 0, INDEX),
            ],
            "chunked_proxy" => vec![
                ("GET", 200, "/up/chunked", 0, first_chunked()),
                ("GET", 200, "/static/small.txt", 0, SMALL),
            ],
            "post_expect" => vec![
                ("POST", 201, "/up/echo", 5000, 17),
                ("GET", 200, "/", 0, INDEX),
            ],
            "post_chunked" => vec![(
                "POST",
                201,
                "/up/upload/{id}",
                chunked_len(&f.req, head_end(&f.req, 0)),
                17,
            )],
            "pipelined" => vec![
                ("GET", 200, "/", 0, INDEX),
                ("HEAD", 200, "/static/small.txt", 0, 0),
                ("GET", 404, "/notfound", 0, NOT_FOUND),
                ("GET", 200, "/static/medium.bin", 0, MEDIUM),
                ("GET", 200, "/api/users/{id}", 0, API),
            ],
            "close" => vec![("GET", 200, "/static/small.txt", 0, SMALL)],
            "http10" => vec![(
                "GET",
                200,
                "/gz/text.txt",
                0,
                (f.resp.len() - head_end(&f.resp, 0)) as u64,
            )],
            "traceparent" => vec![
                ("GET", 200, "/api/traced", 0, API),
                ("GET", 200, "/static/small.txt", 0, SMALL),
            ],
            "traceparent_bad" => vec![("GET", 200, "/api/traced", 0, API)],
            "no_body" => vec![
                ("GET", 304, "/static/small.txt", 0, 0),
                ("GET", 204, "/empty", 0, 0),
            ],
            _ => panic!("no expectation for fixture {name}"),
        };
        list.into_iter()
            .map(|(m, s, r, q, p)| format!("{m} {s} {r} {q} {p}"))
            .collect()
    }

    const FIXTURES: &[&str] = &[
        "keepalive",
        "head",
        "not_found",
        "server_error",
        "large",
        "chunked_gzip",
        "chunked_proxy",
        "post_expect",
        "post_chunked",
        "pipelined",
        "close",
        "http10",
        "traceparent",
        "traceparent_bad",
        "no_body",
    ];

    fn assert_clean(name: &str, f: &Fixture, how: &str, o: &Outcome) {
        assert_eq!(
            summary(&o.ex),
            expected(name, f),
            "{name} ({how}): exchanges differ"
        );
        assert_eq!(
            o.health,
            SessionHealth::default(),
            "{name} ({how}): health not clean"
        );
        assert_eq!(o.pending, 0, "{name} ({how}): requests left open");
    }

    #[test]
    fn fixtures_whole() {
        for name in FIXTURES {
            let f = fixture(name);
            assert_clean(name, &f, "whole", &run(&whole(&f)));
        }
    }

    #[test]
    fn fixtures_as_logged_with_times() {
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            let o = run(&pieces);
            assert_clean(name, &f, "as logged", &o);
            // Every exchange starts with a client piece and ends with a later server piece.
            for e in &o.ex {
                let at = |t: u64| o.times.iter().position(|&x| x == t);
                let s = at(e.start_ns).unwrap_or_else(|| panic!("{name}: start of {e:?}"));
                let end = at(e.end_ns - 500).unwrap_or_else(|| panic!("{name}: end of {e:?}"));
                assert!(
                    pieces[s].req && !pieces[end].req && s < end,
                    "{name}: times of {e:?}"
                );
            }
        }
    }

    /// Index of the piece holding byte `at` of one direction.
    fn piece_of(pieces: &[Piece<'_>], req: bool, at: usize) -> usize {
        let mut seen = 0;
        for (i, p) in pieces.iter().enumerate().filter(|(_, p)| p.req == req) {
            if at < seen + p.len {
                return i;
            }
            seen += p.len;
        }
        panic!("byte {at} is past the stream");
    }

    #[test]
    fn fixture_timing_is_per_exchange() {
        let t = |i: usize| 1000 * (i as u64 + 1);
        // Keep-alive: each exchange from its request's piece to its response's last piece.
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            let o = run(&pieces);
            let (mut q, mut r) = (0, 0);
            for e in &o.ex {
                let req_start = piece_of(&pieces, true, q);
                assert_eq!(e.start_ns, t(req_start), "{name}: start of {e:?}");
                let head = head_end(&f.req, q);
                q = head + e.request_body_bytes as usize;
                // Interim responses belong to the exchange.
                while f.resp[r..].starts_with(b"HTTP/1.1 1") {
                    r = head_end(&f.resp, r);
                }
                r = head_end(&f.resp, r) + e.response_body_bytes as usize;
                let resp_end = piece_of(&pieces, false, r - 1);
                assert_eq!(e.end_ns, t(resp_end) + 500, "{name}: end of {e:?}");
            }
        }
        // The 100 Continue does not end the POST; its body follows it.
        let f = fixture("post_expect");
        let pieces = logged(&f);
        let o = run(&pieces);
        let hundred = pieces
            .iter()
            .position(|p| p.data.starts_with(b"HTTP/1.1 100"))
            .expect("a 100 Continue");
        assert!(o.ex[0].end_ns > t(hundred) + 500);
        // Pipelined: all five start with the one client write.
        let o = run(&logged(&fixture("pipelined")));
        assert!(o.ex.iter().all(|e| e.start_ns == 1000), "{:?}", o.ex);
    }

    #[test]
    fn fixture_traceparents() {
        let o = run(&logged(&fixture("traceparent")));
        let tp: Vec<_> = o.ex.iter().map(|e| e.traceparent.as_deref()).collect();
        assert_eq!(tp, [Some(TRACEPARENT), Some(TRACEPARENT)]);
        let o = run(&logged(&fixture("traceparent_bad")));
        assert_eq!(o.ex[0].traceparent, None, "upper-case hex is invalid");
        let o = run(&logged(&fixture("keepalive")));
        assert!(o.ex.iter().all(|e| e.traceparent.is_none()));
    }

    /// Split points of a piece: all of them for small pieces, otherwise every point near the
    /// ends and a stride in between.
    fn split_points(len: usize) -> Vec<usize> {
        if len <= 2048 {
            (1..len).collect()
        } else {
            (1..len)
                .filter(|&k| k < 400 || k > len - 400 || k % 997 == 0)
                .collect()
        }
    }

    #[test]
    fn fixtures_split_everywhere() {
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            for i in 0..pieces.len() {
                for k in split_points(pieces[i].len) {
                    let p = pieces[i];
                    let mut v = pieces[..i].to_vec();
                    v.push(Piece {
                        data: &p.data[..k],
                        len: k,
                        ..p
                    });
                    v.push(Piece {
                        data: &p.data[k..],
                        len: p.len - k,
                        ..p
                    });
                    v.extend_from_slice(&pieces[i + 1..]);
                    assert_clean(name, &f, &format!("piece {i} split at {k}"), &run(&v));
                }
            }
        }
    }

    #[test]
    fn fixtures_random_splits() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            for round in 0..24 {
                let max = [1, 2, 3, 7, 16, 64, 1000, 20000][round % 8];
                if max < 16 && f.req.len() + f.resp.len() > 300_000 {
                    continue; // a byte at a time through a megabyte is slow and adds nothing
                }
                let v = random_split(&pieces, &mut rng, max);
                assert_clean(name, &f, &format!("random split round {round}"), &run(&v));
            }
        }
    }

    #[test]
    fn fixtures_truncated_to_256() {
        for name in FIXTURES {
            let f = fixture(name);
            let o = run(&truncated(&logged(&f), 256));
            if *name == "pipelined" {
                // Lost framing on both sides, matched exactly what can be matched.
                let want = expected(name, &f);
                assert_eq!(summary(&o.ex).first(), want.first(), "{name}");
                assert!(
                    summary(&o.ex).iter().all(|e| want.contains(e)),
                    "{name}: {:?}",
                    o.ex
                );
                assert!(
                    o.health.parse_errors >= 2 && o.health.stopped.is_none(),
                    "{name}"
                );
                assert_eq!(o.pending, 0);
                if f.order == [(true, 339), (false, 65536), (false, 1256)] {
                    // The committed capture (another one may cut the responses elsewhere).
                    // The client's one write holds five requests (339 bytes): the first
                    // three are copied, the fourth is cut inside its head: a parse error,
                    // and a gap stands for what followed. The server's first read holds the
                    // first four responses: the first (286 bytes) ends in the uncopied
                    // part, skipped by its length; the second response's head is not copied
                    // at all: a parse error, and the two requests still open (HEAD,
                    // /notfound) are dropped. The second read starts inside the 64 KiB
                    // body: skipped until the connection closes.
                    assert_eq!(summary(&o.ex), ["GET 200 / 0 50"], "{name}");
                    assert_eq!(o.health.parse_errors, 2, "{name}");
                    // Dropped at the second loss: HEAD and /notfound (the gap goes with them).
                    assert_eq!(o.health.timed_out, 0, "{name}");
                    assert_eq!(o.health.lost.capture_gap, 2, "{name}");
                }
            } else {
                // Heads longer than 256 bytes (nginx's are 236 to 260), chunk-size lines in
                // the uncopied part of a read: each such message is the only one in flight
                // and started its read, so it ends where the other side speaks; bodies of
                // known length are skipped by length.
                assert_clean(name, &f, "truncated to 256", &o);
            }
        }
    }

    #[test]
    fn fixtures_truncated_to_default_capture() {
        // The agent copies 2048 bytes per syscall by default: everything is exact.
        for name in FIXTURES {
            let f = fixture(name);
            assert_clean(
                name,
                &f,
                "truncated to 2048",
                &run(&truncated(&logged(&f), 2048)),
            );
        }
    }

    #[test]
    fn fixtures_with_empty_copies() {
        // sendfile() moves a body without a copy: pieces after each head are data-less.
        for name in ["large", "keepalive", "chunked_proxy", "http10"] {
            let f = fixture(name);
            let o = run(&truncated(&logged(&f), 0));
            // Client pieces too: nothing can be parsed, nothing is reported, nothing breaks.
            assert!(o.ex.is_empty(), "{name}: {:?}", o.ex);
            let pieces: Vec<Piece<'_>> = logged(&f)
                .into_iter()
                .map(|p| {
                    let body_only = !p.req && !p.data.starts_with(b"HTTP/1.");
                    Piece {
                        data: if body_only { &p.data[..0] } else { p.data },
                        ..p
                    }
                })
                .collect();
            assert_clean(name, &f, "bodies not copied", &run(&pieces));
        }
    }

    /// Where each expected exchange's bytes are: (first request byte, final response range).
    fn layout(f: &Fixture, want: &[String]) -> Vec<(usize, std::ops::Range<usize>)> {
        let (mut q, mut r) = (0, 0);
        want.iter()
            .map(|w| {
                let n: Vec<u64> = w
                    .rsplitn(3, ' ')
                    .take(2)
                    .map(|x| x.parse().unwrap())
                    .collect();
                let (resp_body, req_body) = (n[0] as usize, n[1] as usize);
                let start = q;
                q = head_end(&f.req, q) + req_body;
                while f.resp[r..].starts_with(b"HTTP/1.1 1") {
                    r = head_end(&f.resp, r);
                }
                let resp_start = r;
                r = head_end(&f.resp, r) + resp_body;
                (start, resp_start..r)
            })
            .collect()
    }

    #[test]
    fn fixtures_random_truncation_never_misattributes() {
        // Whatever is lost, an exchange that comes out pairs a request with its own response:
        // method, status and route are right (the route may end with "/..." when the target
        // was cut), it starts with the request's first piece and ends in its response.
        let mut rng = Rng(42);
        for name in FIXTURES {
            let f = fixture(name);
            let want = expected(name, &f);
            let places = layout(&f, &want);
            for _ in 0..40 {
                let v = random_split(&logged(&f), &mut rng, 400);
                let v: Vec<Piece<'_>> = v
                    .iter()
                    .map(|p| Piece {
                        data: &p.data[..rng.below(p.data.len() + 1)],
                        ..*p
                    })
                    .collect();
                let o = run(&v);
                // Byte offsets of each piece in its direction.
                let mut offsets = Vec::new();
                let (mut q, mut r) = (0, 0);
                for p in &v {
                    let at = if p.req { &mut q } else { &mut r };
                    offsets.push(*at..*at + p.len);
                    *at += p.len;
                }
                for e in &o.ex {
                    let s = (e.start_ns / 1000 - 1) as usize;
                    let end = (e.end_ns / 1000 - 1) as usize;
                    let i = places
                        .iter()
                        .position(|(start, _)| offsets[s].contains(start) && v[s].req)
                        .unwrap_or_else(|| panic!("{name}: {e:?} starts in no request"));
                    let w: Vec<&str> = want[i].split(' ').collect();
                    assert_eq!(
                        (e.method, e.status.to_string().as_str()),
                        (w[0], w[1]),
                        "{name}"
                    );
                    assert!(
                        e.route == w[2] || e.route.ends_with("/..."),
                        "{name}: {e:?} vs {}",
                        want[i]
                    );
                    let resp = &places[i].1;
                    assert!(
                        !v[end].req
                            && offsets[end].start < resp.end
                            && offsets[end].end >= resp.start,
                        "{name}: {e:?} ends outside its response {resp:?}"
                    );
                }
            }
        }
    }

    // ---- detection ---------------------------------------------------------------------------

    #[test]
    fn detection() {
        for yes in [
            &b"GET "[..],
            b"GET /",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /api/v1/items HTTP/1.0\r\n",
            b"HEAD /index.html HTTP/1.1\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"GET http://example.com/a HTTP/1.1\r\n",
            b"GET HTTPS://example.com/a HTTP/1.1\r\n",
            b"GET htt",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"CONNECT [::1]:443 HTTP/1.1\r\n",
            b"PATCH /a",
            b"DELETE /users/1 HTTP/1.",
            b"PUT /x HTTP/1.1",
            b"TRACE / HTTP",
        ] {
            assert!(
                looks_like_request(yes),
                "{:?}",
                String::from_utf8_lossy(yes)
            );
        }
        for no in [
            &b""[..],
            b"G",
            b"GET",
            b"GET key\r\n",
            b"GET k",
            b"GET h\r\n",
            b"DEL key\r\n",
            b"DELETE key\r\n",
            b"get / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET /  HTTP/1.1\r\n",
            b"GET /\r\n",
            b"GET / HTTP/1.1 extra\r\n",
            b"GET *x HTTP/1.1\r\n",
            b"GET ftp://x/ HTTP/1.1\r\n",
            b"CONNECT /x:1 HTTP/1.1\r\n",
            b"PROPFIND / HTTP/1.1\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"SET k v\r\n",
            b"\x16\x03\x01\x02\x00\x01",
            b"HTTP/1.1 200 OK\r\n",
            b"GET /a\x01b HTTP/1.1\r\n",
        ] {
            assert!(!looks_like_request(no), "{:?}", String::from_utf8_lossy(no));
        }
        for name in FIXTURES {
            let f = fixture(name);
            assert!(looks_like_request(&f.req), "{name}");
            let sp = f.req.iter().position(|&b| b == b' ').unwrap();
            assert!(looks_like_request(&f.req[..=sp]), "{name}: method alone");
            assert!(plausible_response(&f.resp), "{name}");
        }
        assert!(plausible_request(b"\r\nGET / HTTP/1.1\r\n"));
        assert!(plausible_response(b"HTTP/1."));
        assert!(!plausible_response(b"HTT"), "too short to tell");
        assert!(!plausible_request(b"P"), "too short to tell");
        assert!(!plausible_response(b"HTTP/1.1 2x0"));
        assert!(!plausible_response(b""));
        assert!(!plausible_response(b"\x00\x01"));
    }

    #[test]
    fn find_lf_finds_the_first_line_feed() {
        let mut rng = Rng(7);
        for len in 0..40 {
            for _ in 0..50 {
                let v: Vec<u8> = (0..len)
                    .map(|_| [b'\n', b'a', 0x8a, 0x0b, 0x09, 0xff][rng.below(6)])
                    .collect();
                assert_eq!(find_lf(&v), v.iter().position(|&b| b == b'\n'), "{v:?}");
            }
        }
    }

    #[test]
    fn method_labels() {
        for m in METHODS {
            assert_eq!(method_label(m.as_bytes()), m);
        }
        assert_eq!(method_label(b"get"), OTHER, "methods are case-sensitive");
        assert_eq!(method_label(b"PROPFIND"), OTHER);
        assert_eq!(method_label(b""), OTHER);
    }

    // ---- routes and traceparent -----------------------------------------------------------------

    #[test]
    fn traceparent_validation() {
        assert!(valid_traceparent(TRACEPARENT));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
        // A later version may carry more after a dash.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
        ));
        assert!(!valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"
        ));
    }

    // ---- sessions, by hand ------------------------------------------------------------------

    struct Driver {
        s: Http1Session,
        ex: Vec<HttpExchange>,
        t: u64,
    }

    impl Driver {
        fn new() -> Self {
            Self::with(Http1Session::new())
        }
        fn with(s: Http1Session) -> Self {
            Self {
                s,
                ex: Vec::new(),
                t: 0,
            }
        }
        fn req(&mut self, data: &[u8]) -> &mut Self {
            self.req_len(data, data.len())
        }
        fn req_len(&mut self, data: &[u8], len: usize) -> &mut Self {
            self.t += 1000;
            self.s.on_request(&Chunk {
                data,
                len,
                start_ns: self.t,
                end_ns: self.t + 100,
            });
            self.s.take_completed(&mut self.ex);
            check_bounds(&self.s);
            self
        }
        fn resp(&mut self, data: &[u8]) -> &mut Self {
            self.resp_len(data, data.len())
        }
        fn resp_len(&mut self, data: &[u8], len: usize) -> &mut Self {
            self.t += 1000;
            self.s.on_response(
                &Chunk {
                    data,
                    len,
                    start_ns: self.t,
                    end_ns: self.t + 100,
                },
                &mut self.ex,
            );
            check_bounds(&self.s);
            self
        }
        fn finish(&mut self) -> &mut Self {
            self.s.finish(&mut self.ex);
            self
        }
        fn summary(&self) -> Vec<String> {
            summary(&self.ex)
        }
        fn health(&mut self) -> SessionHealth {
            self.s.take_health()
        }
    }

    const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn interim_responses_close_nothing() {
        let mut d = Driver::new();
        d.req(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n");
        d.resp(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n");
        assert!(d.ex.is_empty());
        d.resp(OK_5);
        assert_eq!(d.summary(), ["GET 200 /page 0 5"]);
        assert_eq!(d.ex[0].end_ns, 3100);
        // Expect: 100-continue: the body follows the 100; the 201 ends the exchange.
        d.req(b"PUT /f/1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n");
        d.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
        d.req(b"abcdef");
        d.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(d.summary()[1], "PUT 201 /f/{id} 6 0");
        assert_eq!((d.ex[1].start_ns, d.ex[1].end_ns), (4000, 7100));
        // A final response instead of the 100: the client does not send the body (and
        // closes, RFC 9110 §10.1.1).
        d.req(b"POST /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99999\r\n\r\n");
        d.resp(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        d.finish();
        assert_eq!(d.summary()[2], "POST 413 /big 0 0");
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn upgrade_and_connect_stop_parsing_cleanly() {
        let mut d = Driver::new();
        d.req(b"GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        d.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello");
        assert_eq!(d.summary(), ["GET 101 /chat 0 0"]);
        let h = d.health();
        assert!(
            h.stopped == Some(StopReason::Upgrade)
                && h.parse_errors == 0
                && h.timed_out == 0
                && h.lost.total() == 0,
            "{h:?}"
        );
        d.req(b"\x81\x85garbage");
        assert_eq!(d.ex.len(), 1);

        let mut d = Driver::new();
        d.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        d.resp(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        d.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        assert_eq!(d.summary(), ["CONNECT 200  0 0"]);
        assert_eq!(d.health().stopped, Some(StopReason::Upgrade));

        // A refused CONNECT stays HTTP.
        let mut d = Driver::new();
        d.req(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        d.req(b"GET / HTTP/1.1\r\n\r\n").resp(OK_5);
        assert_eq!(d.summary(), ["CONNECT 403  0 0", "GET 200 / 0 5"]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn bodiless_responses_ignore_their_length_fields() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n");
        d.resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        d.resp(OK_5);
        assert_eq!(
            d.summary(),
            [
                "GET 304 /a 0 0",
                "GET 204 /b 0 0",
                "HEAD 200 /c 0 0",
                "GET 200 /d 0 5"
            ]
        );
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn field_names_are_case_insensitive_and_lines_may_end_with_lf() {
        let mut d = Driver::new();
        d.req(b"\r\n\r\nPOST /x HTTP/1.1\nHost: h\ncontent-LENGTH: 3\n\nabc");
        d.req(b"POST /y HTTP/1.1\r\nTRANSFER-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\nCONTENT-length:   2  \n\nokHTTP/1.1 200 OK\r\ntransfer-ENCODING: gzip, CHUNKED\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        assert_eq!(d.summary(), ["POST 200 /x 3 2", "POST 200 /y 13 12"]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let mut d = Driver::new();
        d.req(b"GET / HTTP/1.1\r\n\r\n");
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
            5;name=value;q=\"a;b\"\r\nhello\r\n000A \t; ext\r\n0123456789\r\n0;last\r\n\
            X-Sum: 15\r\nX-More: yes\r\n\r\n";
        let body = resp.len() - head_end(resp, 0);
        d.resp(resp);
        assert_eq!(d.summary(), [format!("GET 200 / 0 {body}")]);
        assert_eq!(chunked_len(resp, head_end(resp, 0)), body as u64);
        // Big chunks, none of their data copied, with the CRLF after one not copied either.
        let mut d = Driver::new();
        d.req(b"GET /big HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n");
        d.resp_len(b"", 0x100000 + 2);
        d.resp_len(b"10\r\n0123", 4 + 16);
        d.resp(b"\r\n0\r\n\r\n");
        let body = 8 + 0x100000 + 2 + 4 + 16 + 7;
        assert_eq!(d.summary(), [format!("GET 200 /big 0 {body}")]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn content_length_rules() {
        // A list of equal values is one length (RFC 9110 §8.6).
        let mut d = Driver::new();
        d.req(b"GET / HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(d.summary(), ["GET 200 / 0 5"]);
        // Different values, or not a number: framing error.
        for bad in [
            &b"Content-Length: 5\r\nContent-Length: 6"[..],
            b"Content-Length: 5, 6",
            b"Content-Length: -1",
            b"Content-Length: 0x10",
            b"Content-Length: 99999999999999999999",
        ] {
            let mut d = Driver::new();
            d.req(b"GET / HTTP/1.1\r\n\r\n");
            let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
            r.extend(bad);
            r.extend(b"\r\n\r\nhello");
            d.resp(&r);
            let h = d.health();
            assert_eq!(
                (h.parse_errors, h.timed_out, h.lost.unparsable),
                (1, 0, 1),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            let mut d = Driver::new();
            let mut q = b"POST / HTTP/1.1\r\n".to_vec();
            q.extend(bad);
            q.extend(b"\r\n\r\nhello");
            d.req(&q);
            assert_eq!(d.health().parse_errors, 1);
            // The request itself still gets its (400) answer.
            d.resp(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            assert_eq!(d.summary(), ["POST 400 / 0 0"]);
        }
        // Transfer-Encoding wins over Content-Length (§6.3).
        let mut d = Driver::new();
        d.req(b"POST / HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n");
        d.resp(OK_5);
        assert_eq!(d.summary(), ["POST 200 / 11 5"]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn transfer_encoding_without_chunked() {
        // A response runs until the close; a request cannot be framed.
        let mut d = Driver::new();
        d.req(b"GET /z HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc");
        d.resp_len(b"de", 1000);
        assert!(d.ex.is_empty());
        d.finish();
        assert_eq!(d.summary(), ["GET 200 /z 0 1003"]);
        assert_eq!(d.ex[0].end_ns, 3100);
        let mut d = Driver::new();
        d.req(b"POST /z HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\nxyz");
        assert_eq!(d.health().parse_errors, 1);
        // A response without any length runs until the close too, also over HTTP/1.0.
        let mut d = Driver::new();
        d.req(b"GET / HTTP/1.0\r\n\r\n");
        d.resp(b"HTTP/1.0 200 OK\r\n\r\n");
        d.resp(b"0123456789");
        d.finish();
        assert_eq!(d.summary(), ["GET 200 / 0 10"]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn large_bodies_are_skipped_by_length() {
        // 10 GB up and 10 GB down, copied 64 bytes at a time: nothing is buffered.
        let mut d = Driver::new();
        let gb10: u64 = 10_000_000_000;
        d.req(format!("PUT /v HTTP/1.1\r\nContent-Length: {gb10}\r\n\r\n").as_bytes());
        let step = 1 << 30;
        let mut left = gb10;
        while left > 0 {
            let n = left.min(step);
            d.req_len(&[b'x'; 64], n as usize);
            left -= n;
        }
        d.resp(format!("HTTP/1.1 200 OK\r\nContent-Length: {gb10}\r\n\r\n").as_bytes());
        let mut left = gb10;
        while left > 0 {
            let n = left.min(step);
            d.resp_len(&[b'y'; 64], n as usize);
            left -= n;
        }
        assert_eq!(d.summary(), [format!("PUT 200 /v {gb10} {gb10}")]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn pipelining_gives_each_request_its_time() {
        let mut d = Driver::new();
        d.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"); // 1000
        d.req(b"GET /3 HTTP/1.1\r\n\r\n"); // 2000
        d.resp(OK_5); // 3000
        d.resp(&[OK_5, OK_5].concat()); // 4000
        let t: Vec<_> = d.ex.iter().map(|e| (e.start_ns, e.end_ns)).collect();
        assert_eq!(t, [(1000, 3100), (1000, 4100), (2000, 4100)]);
        assert_eq!(d.s.pending(), 0);
    }

    #[test]
    fn response_framing_lost_in_a_pipeline() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
        // Chunk sizes beyond the copied bytes, with three requests open: lost.
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n".to_vec();
        let copied = r.len();
        r.extend(b"4\r\nefgh\r\n0\r\n\r\n");
        r.extend(OK_5);
        d.resp_len(&r[..copied], r.len());
        let h = d.health();
        assert_eq!((h.parse_errors, h.timed_out, h.lost.capture_gap), (1, 0, 3));
        // Skipped until a chunk starts with a status line.
        d.resp(b"garbage");
        d.req(b"GET /d HTTP/1.1\r\n\r\n");
        d.resp(OK_5);
        assert_eq!(d.summary(), ["GET 200 /d 0 5"]);
        assert_eq!(d.health(), SessionHealth::default());
        // A status line that is not one.
        d.req(b"GET /e HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 2OO OK\r\n\r\n");
        assert_eq!(d.health().parse_errors, 1);
    }

    #[test]
    fn request_framing_lost_leaves_a_gap() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\n"); // 1000
                                           // Pipelined behind it, cut inside a head: a gap for what was lost.
        let q = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        d.req_len(&q[..8], q.len()); // 2000
        assert_eq!(d.health().parse_errors, 1);
        assert_eq!(d.s.pending(), 1);
        d.req(b"not a request"); // skipped
        d.resp(OK_5); // answers /a
        d.resp(OK_5); // answers /b (lost): dropped
        d.resp(OK_5); // answers /c (lost): dropped
        d.req(b"GET /d HTTP/1.1\r\n\r\n");
        d.resp(OK_5); // ends after /d started: /d
        assert_eq!(d.summary(), ["GET 200 /a 0 5", "GET 200 /d 0 5"]);
        assert_eq!(d.s.pending(), 0);
        // The two responses that reached the gap answered lost requests.
        let h = d.health();
        assert_eq!(
            h,
            SessionHealth {
                lost: LostRequests {
                    capture_gap: 2,
                    ..LostRequests::default()
                },
                ..SessionHealth::default()
            }
        );
    }

    #[test]
    fn lost_response_head_ends_where_the_client_speaks() {
        let mut d = Driver::new();
        d.req(b"GET /x HTTP/1.1\r\n\r\n"); // 1000
        let head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4000\r\nX-Long: ";
        d.resp_len(head, 5000); // 2000: head cut; Content-Length known
        d.resp_len(b"", 3000); // 3000: more of it
        assert!(d.ex.is_empty());
        assert_eq!(d.s.pending(), 1);
        d.req(b"GET /y HTTP/1.1\r\n\r\n"); // 4000: the response is over
        assert_eq!(d.summary(), ["GET 404 /x 0 4000"]);
        assert_eq!((d.ex[0].start_ns, d.ex[0].end_ns), (1000, 3100));
        // Without a Content-Length, the body counts every byte after the copied ones.
        d.resp_len(b"HTTP/1.1 200 OK\r\nServer: x\r\n", 1000); // 5000
        d.finish();
        assert_eq!(d.summary()[1], format!("GET 200 /y 0 {}", 1000 - 28));
        assert_eq!(d.health(), SessionHealth::default());
        // The next response must start a chunk, else it is an error.
        let mut d = Driver::new();
        d.req(b"GET /x HTTP/1.1\r\n\r\n");
        d.resp_len(b"HTTP/1.1 200 OK\r\n", 500);
        d.req(b"GET /y HTTP/1.1\r\n\r\n");
        d.resp(b"more of the previous body");
        let h = d.health();
        // The assumed end was wrong: /y's response may be in the skipped bytes.
        assert_eq!((h.parse_errors, h.timed_out, h.lost.capture_gap), (1, 0, 1));
        assert_eq!(d.summary(), ["GET 200 /x 0 483"]);
    }

    #[test]
    fn lost_request_head_ends_where_the_server_speaks() {
        let mut d = Driver::new();
        let q = b"GET /page/12 HTTP/1.1\r\nCookie: ";
        d.req_len(q, 6000);
        d.req_len(b"", 2000);
        d.resp(OK_5);
        assert_eq!(d.summary(), ["GET 200 /page/{id} 0 5"]);
        assert_eq!(d.ex[0].start_ns, 1000);
        // A POST: its Content-Length if it was seen, else every byte after the copied ones.
        d.req_len(
            b"POST /f HTTP/1.1\r\nContent-Length: 7000\r\nCookie: ",
            7100,
        );
        d.resp(OK_5);
        d.req_len(b"POST /g HTTP/1.1\r\nCookie: ", 7100);
        d.resp(OK_5);
        assert_eq!(
            d.summary()[1..],
            ["POST 200 /f 7000 5", "POST 200 /g 7074 5"]
        );
        // A target cut short keeps what it can.
        d.req_len(b"GET /a/b/verylongsegm", 3000);
        d.resp(OK_5);
        assert_eq!(d.summary()[3], "GET 200 /a/b/... 0 5");
        // A lost head whose client then waits for 100 Continue.
        d.req_len(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nX-Big: ", 5000);
        d.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
        d.req_len(b"", 10_000);
        d.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            d.summary()[4],
            format!("PUT 201 /up {} 0", 5000 - 47 + 10_000)
        );
        assert_eq!(d.health(), SessionHealth::default());
        // With another request open, a lost head is an error.
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\n");
        d.req_len(b"GET /b HTTP/1.1\r\nCookie: ", 500);
        assert_eq!(d.health().parse_errors, 1);
    }

    #[test]
    fn lost_chunk_size_in_a_lone_request() {
        let mut d = Driver::new();
        let mut q = b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec();
        let copied = q.len();
        q.extend(b"3\r\ndef\r\n0\r\n\r\n");
        d.req_len(&q[..copied], q.len());
        d.resp(OK_5);
        assert_eq!(d.summary(), [format!("POST 200 /u {} 5", q.len() - 48)]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn connection_close_ends_the_connection() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 503 Busy\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(d.summary(), ["GET 503 /a 0 0"]);
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.health().timed_out, 2);
        // HTTP/1.0 closes unless it says keep-alive.
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n");
        d.resp(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(d.s.pending(), 1);
        d.resp(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(d.summary(), ["GET 200 /a 0 5", "GET 200 /b 0 5"]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn finish_drops_what_is_left() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal");
        d.finish();
        assert!(d.ex.is_empty());
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.health().timed_out, 2);
    }

    #[test]
    fn head_size_is_capped() {
        let field = |n: usize| format!("X-Pad: {}\r\n", "p".repeat(n - 9));
        // 64 KiB exactly: accepted.
        let start = "GET / HTTP/1.1\r\n";
        let fill = MAX_HEADER - start.len() - 2;
        let mut q = start.to_string();
        let mut left = fill;
        while left > 0 {
            let n = left.min(4000);
            q.push_str(&field(n));
            left -= n;
        }
        q.push_str("\r\n");
        assert_eq!(q.len(), MAX_HEADER);
        let mut d = Driver::new();
        d.req(q.as_bytes()).resp(OK_5);
        assert_eq!(d.summary(), ["GET 200 / 0 5"]);
        // One byte more: a framing error.
        let mut d = Driver::new();
        d.req(format!("GET / HTTP/1.1\r\nX: 1{}", &q[start.len()..]).as_bytes());
        assert_eq!(d.health().parse_errors, 1);
        // Also when the head comes a byte at a time.
        let mut d = Driver::new();
        let long = format!("HTTP/1.1 200 OK\r\n{}", field(MAX_HEADER));
        d.req(b"GET / HTTP/1.1\r\n\r\n");
        for b in long.as_bytes().chunks(1) {
            d.resp(b);
        }
        let h = d.health();
        assert_eq!((h.parse_errors, h.timed_out, h.lost.unparsable), (1, 0, 1));
    }

    #[test]
    fn malformed_heads_are_framing_errors() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"\x00\x01\x02",
        ] {
            let mut d = Driver::new();
            d.req(bad);
            assert_eq!(
                d.health().parse_errors,
                1,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // obs-fold lines are ignored (§5.2), unknown methods are _OTHER.
        let mut d = Driver::new();
        d.req(b"PROPFIND /dav/ HTTP/1.1\r\nX-A: 1\r\n  folded\r\nDepth: 1\r\n\r\n");
        d.req(b"get /lower HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n");
        d.resp(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            d.summary(),
            ["_OTHER 207 /dav 0 0", "_OTHER 200 /lower 0 0"]
        );
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn traceparent_in_sessions() {
        let tp = |v: &str| format!("GET / HTTP/1.1\r\nTraceparent:  {v} \r\n\r\n");
        let mut d = Driver::new();
        d.req(tp(TRACEPARENT).as_bytes()).resp(OK_5);
        d.req(tp(&TRACEPARENT.to_uppercase()).as_bytes()).resp(OK_5);
        d.req(format!("GET / HTTP/1.1\r\ntraceparent: {TRACEPARENT}\r\ntraceparent: {TRACEPARENT}\r\n\r\n").as_bytes())
            .resp(OK_5);
        d.req(tp(&format!("{TRACEPARENT},{TRACEPARENT}")).as_bytes())
            .resp(OK_5);
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-and-more-than-64-bytes-of-future-fields";
        d.req(tp(later).as_bytes()).resp(OK_5);
        let got: Vec<_> = d.ex.iter().map(|e| e.traceparent.as_deref()).collect();
        assert_eq!(
            got,
            [Some(TRACEPARENT), None, None, None, Some(&later[..55])]
        );
    }

    #[test]
    fn url_paths_leave_out_the_query_and_copy_only_what_differs_from_the_route() {
        let patterns = RoutePatterns::new(["/users/{id}/orders"]).unwrap();
        let mut d = Driver::with(Http1Session::with_routes(Arc::new(patterns)));
        let long = format!("/{}", "a".repeat(MAX_PATH));
        for t in [
            "/users/7/orders?page=2",
            "/static/app.js#top",
            "/items/123",
            "http://example.com/x",
            "*",
            long.as_str(),
        ] {
            d.req(format!("GET {t} HTTP/1.1\r\n\r\n").as_bytes())
                .resp(OK_5);
        }
        d.req(b"CONNECT db:5432 HTTP/1.1\r\n\r\n").resp(OK_5);
        let got: Vec<(&str, &UrlPath)> = d.ex.iter().map(|e| (e.route.as_str(), &e.path)).collect();
        assert_eq!(
            got,
            [
                (
                    "/users/{id}/orders",
                    &UrlPath::Path("/users/7/orders".into())
                ),
                ("/static/app.js", &UrlPath::Route),
                ("/items/{id}", &UrlPath::Path("/items/123".into())),
                (got[3].0, &UrlPath::Unknown),
                ("*", &UrlPath::Unknown),
                (got[5].0, &UrlPath::Unknown),
                ("", &UrlPath::Unknown),
            ]
        );
    }

    #[test]
    fn targets_and_routes() {
        let patterns = RoutePatterns::new(["/users/{id}/orders"]).unwrap();
        let mut d = Driver::with(Http1Session::with_routes(Arc::new(patterns)));
        for t in [
            "/users/7/orders?page=2",
            "/users/7",
            "*",
            "http://example.com/users/8/orders",
            "/x?a=/1/2",
        ] {
            d.req(format!("OPTIONS {t} HTTP/1.1\r\n\r\n").as_bytes());
            d.resp(OK_5);
        }
        let long = format!("/{}", "seg/".repeat(100));
        d.req(format!("GET {long} HTTP/1.1\r\n\r\n").as_bytes())
            .resp(OK_5);
        let routes: Vec<_> = d.ex.iter().map(|e| e.route.as_str()).collect();
        assert_eq!(
            routes,
            [
                "/users/{id}/orders",
                "/users/{id}",
                "*",
                "/users/{id}/orders",
                "/x",
                "/seg/seg/seg/seg/seg/seg/..."
            ]
        );
    }

    #[test]
    fn fifo_is_capped() {
        let mut d = Driver::new();
        let many = b"GET / HTTP/1.1\r\n\r\n".repeat(MAX_PENDING + 5);
        d.req(&many);
        assert_eq!(d.s.pending(), MAX_PENDING);
        let h = d.health();
        assert_eq!((h.timed_out, h.lost.queue_full), (0, 5));
        d.s.expire(u64::MAX, 1);
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.health().timed_out, MAX_PENDING as u64);
    }

    #[test]
    fn expire_drops_old_requests_only() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\n"); // 1000
        d.req(b"GET /b HTTP/1.1\r\n\r\n"); // 2000
        d.s.expire(2500, 1000);
        assert_eq!(d.s.pending(), 1);
        assert_eq!(d.health().timed_out, 1);
        d.resp(OK_5);
        assert_eq!(d.summary(), ["GET 200 /b 0 5"]);
        // A response in a lost tail expires too.
        d.req(b"GET /c HTTP/1.1\r\n\r\n");
        d.resp_len(b"HTTP/1.1 200 OK\r\n", 100);
        assert_eq!(d.s.pending(), 1);
        d.s.expire(u64::MAX, 1);
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.health().timed_out, 1);
    }

    #[test]
    fn response_never_closes_a_later_request() {
        let mut s = Http1Session::new();
        let mut ex = Vec::new();
        let q = b"GET / HTTP/1.1\r\n\r\n";
        s.on_request(&Chunk {
            data: q,
            len: q.len(),
            start_ns: 5000,
            end_ns: 5100,
        });
        s.on_response(
            &Chunk {
                data: OK_5,
                len: OK_5.len(),
                start_ns: 100,
                end_ns: 200,
            },
            &mut ex,
        );
        assert!(ex.is_empty());
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn a_gap_where_a_request_was_then_every_later_request_is_counted() {
        let mut d = Driver::new();
        d.req(b"GET /a HTTP/1.1\r\n\r\n").resp(OK_5);
        // A whole request not copied (a lost event): its head is unknown.
        let lost = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        d.req_len(&[], lost.len());
        d.resp(OK_5);
        for i in 0..100 {
            let req = format!("POST /items/{i} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
            d.req(req.as_bytes()).resp(OK_5);
        }
        d.finish();
        let mut want = vec!["GET 200 /a 0 5".to_string()];
        want.extend((0..100).map(|_| "POST 200 /items/{id} 3 5".to_string()));
        assert_eq!(d.summary(), want);
        let h = d.health();
        assert_eq!(
            (
                h.parse_errors,
                h.timed_out,
                h.lost.capture_gap,
                h.lost.total()
            ),
            (1, 0, 1, 1),
            "the response to the lost request is counted as lost"
        );
    }

    #[test]
    fn a_gap_where_a_response_head_was_then_every_later_request_is_counted() {
        let mut d = Driver::new();
        // Two requests in flight; the first response's head is not copied.
        d.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        d.resp_len(&[], OK_5.len());
        d.resp(OK_5);
        for _ in 0..100 {
            d.req(b"GET /c HTTP/1.1\r\n\r\n").resp(OK_5);
        }
        d.finish();
        assert_eq!(d.summary(), vec!["GET 200 /c 0 5"; 100]);
        let h = d.health();
        assert_eq!((h.parse_errors, h.timed_out, h.lost.capture_gap), (1, 0, 2));
    }

    #[test]
    fn skip_hints() {
        let mut d = Driver::new();
        d.req(b"POST /up HTTP/1.1\r\nContent-Length: 100000\r\n\r\nxyz");
        assert_eq!(d.s.skip_hint(true), 99_997);
        d.req_len(&[], 99_997);
        assert_eq!(d.s.skip_hint(true), 0);
        d.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nab");
        assert_eq!(d.s.skip_hint(false), 0x1000 - 2, "chunk data, not its CRLF");
        d.resp_len(&[], 0x1000 - 2);
        assert_eq!(d.s.skip_hint(false), 0);
        d.resp(b"\r\n0\r\n\r\n");
        d.req(b"GET /x HTTP/1.1\r\n\r\n");
        d.resp(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited");
        assert_eq!(d.s.skip_hint(false), 0, "runs to the close: not by length");
        d.finish();
        assert_eq!(d.summary(), ["POST 200 /up 100000 4109", "GET 200 /x 0 15"]);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn never_gives_up_after_repeated_framing_errors() {
        let mut d = Driver::new();
        for _ in 0..1000 {
            d.req(b"GET / HTTP/1.1\r\n\r\n");
            d.resp(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
        }
        let h = d.health();
        assert_eq!(
            (h.parse_errors, h.lost.unparsable, h.stopped),
            (1000, 1000, None)
        );
        for _ in 0..10 {
            d.req(b"GET / HTTP/1.1\r\n\r\n").resp(OK_5);
        }
        d.finish();
        assert_eq!(d.summary(), ["GET 200 / 0 5"; 10]);
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.health(), SessionHealth::default());
    }

    #[test]
    fn session_is_small() {
        let size = std::mem::size_of::<Http1Session>();
        assert!(size <= 1024, "Http1Session is {size} bytes");
        let open = std::mem::size_of::<Open>();
        assert!(open <= 48, "Open is {open} bytes");
    }

    // ---- properties --------------------------------------------------------------------------

    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Syscall {
        req: bool,
        data: Vec<u8>,
        extra: usize,
        gap_ns: u64,
    }

    fn syscalls(bytes: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<Syscall>> {
        prop::collection::vec(
            (
                any::<bool>(),
                bytes,
                prop_oneof![3 => Just(0usize), 1 => 0usize..100_000],
                0u64..3000,
            )
                .prop_map(|(req, data, extra, gap_ns)| Syscall {
                    req,
                    data,
                    extra,
                    gap_ns,
                }),
            0..40,
        )
    }

    fn check_exchanges(ex: &[HttpExchange]) {
        for e in ex {
            assert!(e.method == OTHER || METHODS.contains(&e.method), "{e:?}");
            assert!(e.route.len() <= MAX_ROUTE, "{e:?}");
            assert!((100..=999).contains(&e.status), "{e:?}");
            assert!(e.start_ns <= e.end_ns, "{e:?}");
            if let Some(tp) = &e.traceparent {
                assert!(valid_traceparent(tp), "{e:?}");
            }
        }
    }

    fn feed(calls: &[Syscall]) {
        let mut s = Http1Session::new();
        let mut ex = Vec::new();
        let mut t = 0;
        for c in calls {
            t += c.gap_ns;
            let chunk = Chunk {
                data: &c.data,
                len: c.data.len() + c.extra,
                start_ns: t,
                end_ns: t + 10,
            };
            if c.req {
                s.on_request(&chunk);
                s.take_completed(&mut ex);
            } else {
                s.on_response(&chunk, &mut ex);
            }
            check_bounds(&s);
            if t % 7 == 0 {
                s.expire(t, 2000);
            }
        }
        s.finish(&mut ex);
        check_exchanges(&ex);
        assert_eq!(s.pending(), 0);
        let _ = s.take_health();
    }

    /// Bytes that make HTTP-looking noise, to reach deep parser states.
    fn http_noise() -> impl Strategy<Value = Vec<u8>> {
        let pieces: &[&[u8]] = &[
            b"GET ",
            b"HEAD ",
            b"POST ",
            b"CONNECT ",
            b"/a/1",
            b"*",
            b" HTTP/1.1\r\n",
            b" HTTP/1.0\r\n",
            b"HTTP/1.1 ",
            b"200 OK\r\n",
            b"100 Continue\r\n",
            b"101 S\r\n",
            b"204 N\r\n",
            b"304 N\r\n",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked\r\n",
            b"Connection: close\r\n",
            b"Expect: 100-continue\r\n",
            b"traceparent: ",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"\r\n",
            b"\n",
            b"\r",
            b"0",
            b"5",
            b"a;x=1",
            b"12",
            b": ",
            b",",
            b" ",
            b"hello",
            b"0\r\n\r\n",
        ];
        prop::collection::vec(prop::sample::select(pieces), 0..40).prop_map(|v| v.concat())
    }

    // A generated exchange, and the bytes both sides send for it.
    #[derive(Clone, Debug)]
    enum BodyGen {
        None,
        Length(usize),
        /// Chunk sizes, with extensions and a trailer or not.
        Chunked(Vec<usize>, bool),
        /// Only for a last response: until the close.
        UntilClose(usize),
    }

    #[derive(Clone, Debug)]
    struct ExchangeGen {
        method: &'static str,
        path: &'static str,
        query: bool,
        traceparent: bool,
        expect: bool,
        early_hints: bool,
        status: u16,
        req_body: BodyGen,
        resp_body: BodyGen,
        upper: bool,
    }

    fn name(upper: bool, n: &str) -> String {
        if upper {
            n.to_ascii_uppercase()
        } else {
            n.to_ascii_lowercase()
        }
    }

    /// (head fields, body bytes) for a body.
    fn body_bytes(b: &BodyGen, upper: bool, fill: u8) -> (String, Vec<u8>) {
        match b {
            BodyGen::None | BodyGen::UntilClose(0) => (String::new(), Vec::new()),
            BodyGen::Length(n) => (
                format!("{}: {n}\r\n", name(upper, "Content-Length")),
                vec![fill; *n],
            ),
            BodyGen::UntilClose(n) => (String::new(), vec![fill; *n]),
            BodyGen::Chunked(sizes, fancy) => {
                let mut v = Vec::new();
                for &n in sizes {
                    if *fancy {
                        v.extend(format!("{n:X};e=\"x;y\"\r\n").as_bytes());
                    } else {
                        v.extend(format!("{n:x}\r\n").as_bytes());
                    }
                    v.extend(vec![fill; n]);
                    v.extend(b"\r\n");
                }
                v.extend(b"0\r\n");
                if *fancy {
                    v.extend(b"X-Trailer: 1\r\n");
                }
                v.extend(b"\r\n");
                (
                    format!("{}: chunked\r\n", name(upper, "Transfer-Encoding")),
                    v,
                )
            }
        }
    }

    impl ExchangeGen {
        /// A response says how long its body is, unless it runs until the close.
        fn response_body(&self) -> BodyGen {
            match self.resp_body {
                BodyGen::None => BodyGen::Length(0),
                ref b => b.clone(),
            }
        }

        fn no_response_body(&self) -> bool {
            self.method == "HEAD" || self.status == 204 || self.status == 304
        }

        /// (request head, request body, interim responses, final response) bytes.
        fn bytes(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
            let (fields, body) = body_bytes(&self.req_body, self.upper, b'q');
            let mut head = format!(
                "{} {}{} HTTP/1.1\r\nHost: h\r\n{fields}",
                self.method,
                self.path,
                if self.query { "?q=1&r=/2" } else { "" }
            );
            if self.traceparent {
                head.push_str(&format!(
                    "{}: {TRACEPARENT}\r\n",
                    name(self.upper, "traceparent")
                ));
            }
            if self.expect {
                head.push_str("Expect: 100-continue\r\n");
            }
            head.push_str("\r\n");
            let mut interim = Vec::new();
            if self.expect {
                interim.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            if self.early_hints {
                interim.extend(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
            }
            let (rfields, rbody) = body_bytes(&self.response_body(), !self.upper, b'r');
            let mut resp = format!("HTTP/1.1 {} X\r\nServer: t\r\n{rfields}", self.status);
            if self.no_response_body() {
                // Length fields that must be ignored.
                resp.push_str("Content-Length: 77\r\n");
            }
            resp.push_str("\r\n");
            let mut resp = resp.into_bytes();
            if !self.no_response_body() {
                resp.extend(rbody);
            }
            (head.into_bytes(), body, interim, resp)
        }

        fn expected(&self) -> String {
            let (_, body, _, _) = self.bytes();
            let resp_body = if self.no_response_body() {
                0
            } else {
                body_bytes(&self.response_body(), false, 0).1.len()
            };
            format!(
                "{} {} {} {} {}",
                method_label(self.method.as_bytes()),
                self.status,
                normalize_route(self.path),
                body.len(),
                resp_body
            )
        }
    }

    fn body_gen(max: usize) -> impl Strategy<Value = BodyGen> {
        prop_oneof![
            2 => Just(BodyGen::None),
            3 => (0..max).prop_map(BodyGen::Length),
            2 => (prop::collection::vec(1..max.max(2), 0..4), any::<bool>())
                .prop_map(|(s, f)| BodyGen::Chunked(s, f)),
        ]
    }

    fn exchange_gen() -> impl Strategy<Value = ExchangeGen> {
        (
            (
                prop::sample::select(
                    &[
                        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND",
                    ][..],
                ),
                prop::sample::select(
                    &[
                        "/",
                        "/a",
                        "/users/42/orders",
                        "/x/550e8400-e29b-41d4-a716-446655440000",
                        "/1/2/3/4/5/6/7/8",
                    ][..],
                ),
                any::<bool>(),
                any::<bool>(),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2),
            ),
            (
                prop::sample::select(&[200u16, 201, 204, 304, 404, 500, 503][..]),
                body_gen(3000),
                body_gen(3000),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (method, path, query, traceparent, expect, early_hints),
                    (status, req_body, resp_body, upper),
                )| {
                    ExchangeGen {
                        method,
                        path,
                        query,
                        traceparent,
                        expect,
                        early_hints,
                        status,
                        req_body,
                        resp_body,
                        upper,
                    }
                },
            )
    }

    fn cut(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();
        points
            .windows(2)
            .map(|w| stream[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_never_panic(calls in syscalls(prop::collection::vec(any::<u8>(), 0..300).boxed())) {
            feed(&calls);
        }

        #[test]
        fn http_noise_never_panics(calls in syscalls(http_noise().boxed())) {
            feed(&calls);
        }

        /// Framing lost (a gap chunk) in one direction or both, binary garbage in the
        /// directions that lost it, then a client that waits for each response: every
        /// exchange is matched exactly, and nothing stays open.
        #[test]
        fn garbage_after_lost_framing_then_valid_traffic_recovers(
            lose in 1u8..4,
            garbage in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 1..300)), 0..6),
            n in 1usize..10,
        ) {
            let (lose_req, lose_resp) = (lose & 1 != 0, lose & 2 != 0);
            let mut s = Http1Session::new();
            let mut ex = Vec::new();
            s.on_request(&Chunk::whole(b"GET /first HTTP/1.1\r\n\r\n", 10, 10));
            s.on_response(&Chunk::whole(OK_5, 15, 15), &mut ex);
            let gap = Chunk { data: &[], len: 100, start_ns: 20, end_ns: 20 };
            if lose_req {
                s.on_request(&gap);
            }
            if lose_resp {
                s.on_response(&gap, &mut ex);
            }
            let mut t = 30;
            for (req, g) in &garbage {
                let req = if lose_req && lose_resp { *req } else { lose_req };
                t += 10;
                if req {
                    s.on_request(&Chunk::whole(g, t, t));
                } else {
                    s.on_response(&Chunk::whole(g, t, t), &mut ex);
                }
            }
            let before = ex.len();
            let paths = ["/alpha", "/beta", "/gamma", "/delta", "/epsilon"];
            for i in 0..n {
                t += 10;
                let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", paths[i % 5]);
                s.on_request(&Chunk::whole(req.as_bytes(), t, t));
                t += 10;
                s.on_response(&Chunk::whole(OK_5, t, t), &mut ex);
                check_bounds(&s);
            }
            s.finish(&mut ex);
            let got: Vec<&str> = ex[before..].iter().map(|e| e.route.as_str()).collect();
            let want: Vec<&str> = (0..n).map(|i| paths[i % 5]).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(s.pending(), 0);
        }

        #[test]
        fn pipelined_streams_match_exactly(
            exchanges in prop::collection::vec(exchange_gen(), 1..12),
            close_delimited in prop::option::of(0usize..5000),
            req_cuts in prop::collection::vec(any::<usize>(), 0..20),
            resp_cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let mut exchanges = exchanges;
            let last = exchanges.last_mut().unwrap();
            if let Some(n) = close_delimited {
                if !last.no_response_body() {
                    last.resp_body = BodyGen::UntilClose(n);
                }
            }
            let (mut reqs, mut resps, mut want) = (Vec::new(), Vec::new(), Vec::new());
            for e in &exchanges {
                let (head, body, interim, resp) = e.bytes();
                reqs.extend(head);
                reqs.extend(body);
                resps.extend(interim);
                resps.extend(resp);
                want.push(e.expected());
            }
            let mut s = Http1Session::new();
            let mut ex = Vec::new();
            let mut t = 0;
            for c in cut(&reqs, &req_cuts) {
                t += 10;
                s.on_request(&Chunk::whole(&c, t, t + 1));
            }
            for c in cut(&resps, &resp_cuts) {
                t += 10;
                s.on_response(&Chunk::whole(&c, t, t + 1), &mut ex);
            }
            s.finish(&mut ex);
            prop_assert_eq!(summary(&ex), want);
            let tps: Vec<bool> = ex.iter().map(|e| e.traceparent.is_some()).collect();
            let want_tps: Vec<bool> = exchanges.iter().map(|e| e.traceparent).collect();
            prop_assert_eq!(tps, want_tps);
            prop_assert_eq!(s.take_health(), SessionHealth::default());
            prop_assert_eq!(s.pending(), 0);
        }

        #[test]
        fn truncated_exchanges_are_never_misattributed(
            exchanges in prop::collection::vec(exchange_gen(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            keeps in prop::collection::vec(prop_oneof![2 => Just(usize::MAX), 1 => 0usize..400], 1..40),
        ) {
            // One exchange after the other (no pipelining), every syscall's copy cut
            // anywhere: whatever comes out has the method and status of the exchange it
            // started in, and ends in that exchange's responses.
            let mut s = Http1Session::new();
            let mut ex = Vec::new();
            let mut t = 0u64;
            let mut k = 0;
            // (first and last time of each exchange's client bytes, of its server bytes)
            let mut spans = Vec::new();
            for e in &exchanges {
                let (head, body, interim, resp) = e.bytes();
                let mut send = |s: &mut Http1Session, ex: &mut Vec<HttpExchange>, bytes: &[u8], req: bool| {
                    let mut times = Vec::new();
                    for c in cut(bytes, &cuts) {
                        t += 10;
                        let keep = keeps[k % keeps.len()].min(c.len());
                        k += 1;
                        let chunk = Chunk { data: &c[..keep], len: c.len(), start_ns: t, end_ns: t + 1 };
                        if req {
                            s.on_request(&chunk);
                            s.take_completed(ex);
                        } else {
                            s.on_response(&chunk, ex);
                        }
                        check_bounds(s);
                        times.push(t);
                    }
                    times
                };
                let mut req_times = Vec::new();
                let mut resp_times = Vec::new();
                if e.expect {
                    req_times.extend(send(&mut s, &mut ex, &head, true));
                    resp_times.extend(send(&mut s, &mut ex, &interim, false));
                    req_times.extend(send(&mut s, &mut ex, &body, true));
                } else {
                    req_times.extend(send(&mut s, &mut ex, &[head, body].concat(), true));
                    resp_times.extend(send(&mut s, &mut ex, &interim, false));
                }
                resp_times.extend(send(&mut s, &mut ex, &resp, false));
                spans.push((req_times, resp_times));
            }
            s.finish(&mut ex);
            check_exchanges(&ex);
            prop_assert_eq!(s.pending(), 0);
            for e in &ex {
                let i = spans.iter().position(|(q, _)| q.first() == Some(&e.start_ns));
                prop_assert!(i.is_some(), "{:?} does not start an exchange", e);
                let i = i.unwrap();
                let g = &exchanges[i];
                prop_assert_eq!(e.method, method_label(g.method.as_bytes()));
                prop_assert_eq!(e.status, g.status);
                prop_assert!(spans[i].1.contains(&(e.end_ns - 1)), "{:?} ends outside its response", e);
                let want = normalize_route(g.path);
                prop_assert!(e.route == want || e.route.ends_with("/..."), "{} vs {}", e.route, want);
            }
        }
    }
}
