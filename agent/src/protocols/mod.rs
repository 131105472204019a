//! Application protocols: detection, pure parsers and per-connection sessions.
//!
//! Each protocol module is pure: bytes in, requests out, no I/O and no clock. The
//! capture layer hands every data syscall on a connection to the connection's
//! [`Session`] as a [`Chunk`]; the session returns completed [`Request`]s. A protocol is
//! one file implementing [`Session`] and one row in [`PROTOCOLS`].

pub mod hpack;
pub mod http1;
pub mod http2;
pub mod postgres;
pub mod redis;
pub mod request;
pub mod route;
#[cfg(test)]
mod test_fixtures;

pub use request::Request;

/// Consecutive bytes of one direction of a connection, as the capture layer saw them.
///
/// The kernel copies what the parser needs of each syscall, up to a per-syscall cap, so
/// `data` may be shorter than `len`: the bytes in `data.len()..len` happened but are
/// unknown. A parser that is skipping a value of known length (a Redis bulk string, a
/// PostgreSQL DataRow) skips them; a parser that needs them to find the next message
/// boundary has lost the framing and resynchronises.
///
/// One syscall may arrive as several consecutive chunks with the same times: copied
/// bytes, then a gap (`data` empty, `len` the bytes not copied because the session said
/// it would skip them, see [`Session::skip_hint`]), then copied bytes again. Sessions
/// treat that exactly like one chunk holding those bytes.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The copied bytes (the first `data.len()` of the `len`).
    pub data: &'a [u8],
    /// Bytes the syscall really moved (`>= data.len()`).
    pub len: usize,
    /// Time (ns, monotonic) to give a message that starts in this chunk.
    pub start_ns: u64,
    /// Time (ns, monotonic) to give a message that ends in this chunk.
    pub end_ns: u64,
}

impl<'a> Chunk<'a> {
    /// A chunk whose bytes were all copied.
    pub fn whole(data: &'a [u8], start_ns: u64, end_ns: u64) -> Self {
        Self {
            data,
            len: data.len(),
            start_ns,
            end_ns,
        }
    }
}

/// A database operation (one request matched to its response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// `db_operation_name`: from a closed set per protocol, `_OTHER` otherwise.
    pub name: &'static str,
    /// `error_type`: `None` on success; a bounded, low-cardinality value otherwise.
    pub error_type: Option<String>,
    /// `db.response.status_code` (spans only, never a label): the code the server
    /// answered with, where the protocol has one (PostgreSQL: the error's SQLSTATE;
    /// Redis: the error's prefix).
    pub status_code: Option<String>,
    /// Start of the operation (the `start_ns` of the chunk holding its first request byte).
    pub start_ns: u64,
    /// End of the operation (the `end_ns` of the chunk holding its last response byte).
    pub end_ns: u64,
    /// Statement text with literals replaced by `?`, bounded in length (for spans only,
    /// never a label).
    pub statement: request::Statement,
    /// Collection (table or key-space) name where it is cheap to know.
    pub collection: Option<std::sync::Arc<str>>,
    /// `db.namespace`, where the session knows it (Redis: the SELECTed index).
    pub namespace: Option<std::sync::Arc<str>>,
}

/// Why requests were lost: they happened (or may have), but no operation reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// The parser needed bytes that were not copied (the per-syscall cap, a lost event).
    CaptureGap,
    /// Bytes that did not parse as the protocol.
    Unparsable,
    /// The queue of open requests was full: the oldest was dropped to make room.
    QueueFull,
    /// The session stopped parsing the connection (see [`StopReason`]) with requests open.
    Stopped,
}

impl LostReason {
    pub const ALL: [LostReason; 4] = [
        LostReason::CaptureGap,
        LostReason::Unparsable,
        LostReason::QueueFull,
        LostReason::Stopped,
    ];

    /// The stable `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            LostReason::CaptureGap => "capture_gap",
            LostReason::Unparsable => "unparsable",
            LostReason::QueueFull => "queue_full",
            LostReason::Stopped => "stopped",
        }
    }
}

/// Requests lost, by reason. Requests dropped when a session resynchronises count here
/// (not as timed out): they may well have been answered, in bytes the session could not
/// follow. A request the session never saw at all (sent in lost bytes) counts when its
/// answer shows it existed, where the protocol makes that possible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostRequests {
    pub capture_gap: u64,
    pub unparsable: u64,
    pub queue_full: u64,
    pub stopped: u64,
}

impl LostRequests {
    pub fn add(&mut self, reason: LostReason, n: u64) {
        *self.slot(reason) += n;
    }

    pub fn get(&self, reason: LostReason) -> u64 {
        match reason {
            LostReason::CaptureGap => self.capture_gap,
            LostReason::Unparsable => self.unparsable,
            LostReason::QueueFull => self.queue_full,
            LostReason::Stopped => self.stopped,
        }
    }

    fn slot(&mut self, reason: LostReason) -> &mut u64 {
        match reason {
            LostReason::CaptureGap => &mut self.capture_gap,
            LostReason::Unparsable => &mut self.unparsable,
            LostReason::QueueFull => &mut self.queue_full,
            LostReason::Stopped => &mut self.stopped,
        }
    }

    pub fn total(&self) -> u64 {
        LostReason::ALL.iter().map(|&r| self.get(r)).sum()
    }

    /// Every reason with its count (zeros included), in [`LostReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (LostReason, u64)> + '_ {
        LostReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    pub fn merge(&mut self, other: &LostRequests) {
        for (r, n) in other.iter() {
            self.add(r, n);
        }
    }
}

/// Why a session stopped parsing a connection for good. These are the only ones: any
/// other loss of framing is recovered from (see each protocol's "Lost framing" section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// Redis SYNC/PSYNC: the connection became a replication stream, not request/response.
    Replication,
    /// HTTP/1 `101 Switching Protocols` or a CONNECT tunnel: another protocol follows.
    Upgrade,
    /// HTTP/2: bytes of the connection were lost or did not decode, so the HPACK tables
    /// (shared by every later header block) cannot be trusted again.
    HpackDesync,
}

impl StopReason {
    pub const ALL: [StopReason; 3] = [
        StopReason::Replication,
        StopReason::Upgrade,
        StopReason::HpackDesync,
    ];

    /// The stable `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::Replication => "replication",
            StopReason::Upgrade => "upgrade",
            StopReason::HpackDesync => "hpack_desync",
        }
    }
}

/// What a session reports about its own health, drained by the caller: every field
/// counts what happened since the last `take_health`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionHealth {
    /// Framing losses (each followed by a resynchronisation).
    pub parse_errors: u64,
    /// Requests dropped because they got no response within the timeout.
    pub timed_out: u64,
    /// Requests lost, by reason.
    pub lost: LostRequests,
    /// The session stopped decoding this connection for good, and why (reported once).
    pub stopped: Option<StopReason>,
    /// The connection turned out to be TLS (after a STARTTLS-style upgrade).
    pub tls: bool,
}

impl SessionHealth {
    /// Adds `other`'s counts to these (a call fed as several pieces).
    pub fn merge(&mut self, other: &SessionHealth) {
        self.parse_errors += other.parse_errors;
        self.timed_out += other.timed_out;
        self.lost.merge(&other.lost);
        self.stopped = self.stopped.or(other.stopped);
        self.tls |= other.tls;
    }
}

/// A protocol the agent recognises, named by its stable `protocol` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocol(&'static str);

impl Protocol {
    /// TLS: recognised and counted, never parsed.
    pub const TLS: Protocol = Protocol("tls");
    /// Anything else: costs nothing further.
    pub const UNKNOWN: Protocol = Protocol("unknown");

    pub fn label(self) -> &'static str {
        self.0
    }

    /// Whether its requests complete in order ([`ProtocolSpec::in_order`]).
    pub fn in_order(self) -> bool {
        PROTOCOLS
            .iter()
            .any(|spec| spec.label == self.0 && spec.in_order)
    }
}

/// What a new session may need to know: the user's settings that shape its results.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// The user's HTTP route patterns (they win over the default normalisation).
    pub http_routes: std::sync::Arc<http1::RoutePatterns>,
}

/// Makes a session for a new connection.
pub type NewSession = fn(&SessionOptions) -> Box<dyn Session>;

/// One protocol's row in [`PROTOCOLS`].
pub struct ProtocolSpec {
    /// The `protocol` label value (and `db.system.name` of a database protocol).
    pub label: &'static str,
    /// Whether a connection's first client bytes are this protocol's.
    pub detect: fn(&[u8]) -> bool,
    /// A session for a new connection; `None` for a protocol recognised but not parsed.
    pub new_session: Option<NewSession>,
    /// Whether a connection's requests complete in the order they were sent (one at a
    /// time or pipelined): then the n-th request one end completes is the n-th the other
    /// end completes, which links the two ends' spans. Not HTTP/2 (streams interleave).
    pub in_order: bool,
}

impl ProtocolSpec {
    pub fn protocol(&self) -> Protocol {
        Protocol(self.label)
    }
}

/// Every protocol: the one place they are registered, in detection order (the first whose
/// `detect` accepts a connection's first client bytes speaks it). Each `detect` is strict
/// enough that no two accept the same prefix (HTTP/1 refuses Redis inline commands and
/// the HTTP/2 preface, Redis refuses HTTP request lines); the order puts the binary,
/// cheapest checks first.
pub const PROTOCOLS: &[ProtocolSpec] = &[
    ProtocolSpec {
        label: "tls",
        detect: looks_like_tls,
        new_session: None,
        in_order: false,
    },
    ProtocolSpec {
        label: "postgresql",
        detect: postgres::looks_like_startup,
        new_session: Some(postgres::new_session),
        in_order: true,
    },
    ProtocolSpec {
        label: "http2",
        detect: http2::looks_like_preface,
        new_session: Some(http2::new_session),
        in_order: false,
    },
    ProtocolSpec {
        label: "http",
        detect: http1::looks_like_request,
        new_session: Some(http1::new_session),
        in_order: true,
    },
    ProtocolSpec {
        label: "redis",
        detect: redis::looks_like_request,
        new_session: Some(redis::new_session),
        in_order: true,
    },
];

/// A TLS record header carrying a handshake (ClientHello): content type 22, version 3.x.
pub fn looks_like_tls(prefix: &[u8]) -> bool {
    matches!(prefix, [0x16, 0x03, minor, ..] if *minor <= 0x04)
}

/// What a connection speaks, from the first bytes its client sent; `None` for anything
/// no protocol recognises.
pub fn detect(client_prefix: &[u8]) -> Option<&'static ProtocolSpec> {
    PROTOCOLS.iter().find(|spec| (spec.detect)(client_prefix))
}

/// A parsing session for one connection: what every protocol implements, in one
/// vocabulary. Pure: bytes and times in, [`Request`]s and health out.
pub trait Session: Send {
    /// Client-to-server bytes; what they complete is appended to `out`.
    fn client_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>);

    /// Server-to-client bytes; what they complete is appended to `out`.
    fn server_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>);

    /// The connection closed: hand out what only its end completes.
    fn finish(&mut self, out: &mut Vec<Request>);

    /// Drops the requests that started more than `timeout_ns` before `now_ns` (counted in
    /// `timed_out`).
    fn expire(&mut self, now_ns: u64, timeout_ns: u64);

    /// Returns what happened since the last call and resets it (`stopped` and `tls` are
    /// reported once).
    fn take_health(&mut self) -> SessionHealth;

    /// Requests waiting for their response.
    fn pending(&self) -> usize;

    /// How many of the next bytes in that direction the session will skip by length
    /// without looking at them, after the chunks fed so far: the capture layer need not
    /// copy them, and hands them over as a gap chunk (`data` empty, `len` the count). 0
    /// when unsure; never a byte the session needs.
    fn skip_hint(&self, from_client: bool) -> u64;

    /// The W3C `traceparent` of the newest request waiting for its response, when it had
    /// exactly one and it was valid (thread-based linking decides a server request's
    /// trace when it opens). `None` where the protocol carries none.
    fn newest_traceparent(&self) -> Option<&[u8]> {
        None
    }
}

/// An HTTP/2 server's connection preface is a SETTINGS frame on stream 0 (RFC 9113
/// section 3.4), which servers send right after accepting, often before they read the
/// client's preface.
pub fn looks_like_h2_server_settings(prefix: &[u8]) -> bool {
    matches!(prefix, [l0, l1, l2, 0x04, flags, 0, 0, 0, 0, ..]
        if (u32::from(*l0) << 16 | u32::from(*l1) << 8 | u32::from(*l2)) % 6 == 0 && *flags == 0)
}

/// Most server bytes kept while waiting for the client to say what the connection is.
const MAX_HELD_SERVER_BYTES: usize = 256;

/// A server chunk that came before any client bytes, kept until detection.
pub struct HeldChunk {
    data: Vec<u8>,
    len: usize,
    start_ns: u64,
    end_ns: u64,
}

/// The protocol state of one connection.
#[derive(Default)]
pub enum ConnectionProtocol {
    /// No client bytes seen yet.
    #[default]
    Undetected,
    /// The server spoke first with what may be HTTP/2 SETTINGS; waiting for the client.
    HeldServerFirst(HeldChunk),
    Parsing(Protocol, Box<dyn Session>),
    /// Recognised as something not parsed (TLS, unknown, or a session that stopped).
    Ignored,
}

/// What feeding a chunk changed, for the caller's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedOutcome {
    /// The connection was just recognised as this protocol.
    pub detected: Option<Protocol>,
    pub health: SessionHealth,
}

impl FeedOutcome {
    /// Health alone, from a session fed outside detection (expiry, close).
    pub fn health(health: SessionHealth) -> Self {
        FeedOutcome {
            detected: None,
            health,
        }
    }
}

impl ConnectionProtocol {
    /// Feeds one syscall's bytes. `from_client` says which way they went; what the
    /// session completes is appended to `out`. `options` are given to a new session.
    pub fn feed(
        &mut self,
        from_client: bool,
        chunk: &Chunk<'_>,
        options: &SessionOptions,
        out: &mut Vec<Request>,
    ) -> FeedOutcome {
        let mut outcome = FeedOutcome::default();
        let undetected = matches!(
            self,
            ConnectionProtocol::Undetected | ConnectionProtocol::HeldServerFirst(_)
        );
        let mut held = None;
        if undetected {
            if chunk.data.is_empty() {
                // sendfile and *mmsg carry no payload: wait for bytes to look at.
                return outcome;
            }
            if !from_client {
                if matches!(self, ConnectionProtocol::Undetected)
                    && looks_like_h2_server_settings(chunk.data)
                    && chunk.data.len() <= MAX_HELD_SERVER_BYTES
                {
                    *self = ConnectionProtocol::HeldServerFirst(HeldChunk {
                        data: chunk.data.to_vec(),
                        len: chunk.len,
                        start_ns: chunk.start_ns,
                        end_ns: chunk.end_ns,
                    });
                    return outcome;
                }
                // A server that speaks first otherwise (banner protocols): not parsed.
                outcome.detected = Some(Protocol::UNKNOWN);
                *self = ConnectionProtocol::Ignored;
                return outcome;
            }
            if let ConnectionProtocol::HeldServerFirst(h) = std::mem::take(self) {
                held = Some(h);
            }
            let spec = detect(chunk.data);
            outcome.detected = Some(spec.map_or(Protocol::UNKNOWN, ProtocolSpec::protocol));
            *self = match spec {
                Some(
                    spec @ ProtocolSpec {
                        new_session: Some(new_session),
                        ..
                    },
                ) => ConnectionProtocol::Parsing(spec.protocol(), new_session(options)),
                _ => ConnectionProtocol::Ignored,
            };
        }
        if let ConnectionProtocol::Parsing(_, session) = self {
            if from_client {
                session.client_bytes(chunk, out);
            } else {
                session.server_bytes(chunk, out);
            }
            // The server's early SETTINGS, after the client's preface it crossed on the wire.
            if let Some(h) = held {
                let early = Chunk {
                    data: &h.data,
                    len: h.len,
                    start_ns: h.start_ns,
                    end_ns: h.end_ns,
                };
                session.server_bytes(&early, out);
            }
            outcome.health = session.take_health();
            if outcome.health.stopped.is_some() || outcome.health.tls {
                *self = ConnectionProtocol::Ignored;
            }
        }
        outcome
    }

    /// [`Session::skip_hint`] of a connection being parsed; 0 otherwise.
    pub fn skip_hint(&self, from_client: bool) -> u64 {
        match self {
            ConnectionProtocol::Parsing(_, s) => s.skip_hint(from_client),
            _ => 0,
        }
    }

    /// The protocol being parsed and its session.
    pub fn session_mut(&mut self) -> Option<(Protocol, &mut dyn Session)> {
        match self {
            ConnectionProtocol::Parsing(protocol, s) => Some((*protocol, s.as_mut())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod dispatch_tests {
    use super::*;

    fn no_routes() -> SessionOptions {
        SessionOptions::default()
    }

    /// The label of what `prefix` is detected as.
    fn detected(prefix: &[u8]) -> &'static str {
        detect(prefix).map_or(Protocol::UNKNOWN.label(), |spec| spec.label)
    }

    #[test]
    fn detects_each_protocol_from_client_bytes() {
        assert_eq!(detected(b"*1\r\n$4\r\nPING\r\n"), "redis");
        assert_eq!(detected(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]), "postgresql");
        assert_eq!(detected(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), "tls");
        assert_eq!(detected(http2::PREFACE), "http2");
        assert_eq!(detected(b"GET / HTTP/1.1\r\n"), "http");
        assert_eq!(detected(b"GET "), "http");
        assert_eq!(detected(b"\x00\x01garbage"), "unknown");
        assert_eq!(detected(b""), "unknown");
    }

    #[test]
    fn registered_labels_are_unique_and_tls_is_not_parsed() {
        let labels: Vec<_> = PROTOCOLS.iter().map(|p| p.label).collect();
        assert_eq!(labels, ["tls", "postgresql", "http2", "http", "redis"]);
        let parsed: Vec<_> = PROTOCOLS
            .iter()
            .filter(|p| p.new_session.is_some())
            .map(|p| p.label)
            .collect();
        assert_eq!(parsed, ["postgresql", "http2", "http", "redis"]);
    }

    /// The (operation, start, end) of each database request.
    fn db(out: &[Request]) -> Vec<(&'static str, u64, u64)> {
        out.iter()
            .map(|r| match &r.attributes {
                request::Attributes::Db(db) => (db.operation, r.start_ns, r.end_ns),
                other => panic!("not a database request: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_redis_connection_yields_one_operation_per_command() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Vec::new();
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let outcome = conn.feed(true, &Chunk::whole(req, 10, 20), &no_routes(), &mut out);
        assert_eq!(outcome.detected.map(Protocol::label), Some("redis"));
        conn.feed(
            false,
            &Chunk::whole(b"+OK\r\n$1\r\nv\r\n", 50, 60),
            &no_routes(),
            &mut out,
        );
        assert_eq!(db(&out), vec![("SET", 10, 60), ("GET", 10, 60)]);
    }

    #[test]
    fn an_http1_connection_applies_user_routes() {
        let routes = SessionOptions {
            http_routes: std::sync::Arc::new(http1::RoutePatterns::new(["/shop/{item}"]).unwrap()),
        };
        let mut conn = ConnectionProtocol::default();
        let mut out = Vec::new();
        conn.feed(
            true,
            &Chunk::whole(b"GET /shop/apples HTTP/1.1\r\nHost: x\r\n\r\n", 1, 2),
            &routes,
            &mut out,
        );
        conn.feed(
            false,
            &Chunk::whole(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 5, 6),
            &routes,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let request::Attributes::Http(http) = &out[0].attributes else {
            panic!("not an HTTP request: {:?}", out[0]);
        };
        assert_eq!(
            (http.method, http.status, http.route.as_str()),
            ("GET", 200, "/shop/{item}")
        );
    }

    #[test]
    fn an_h2_server_speaking_first_is_held_until_the_client_preface() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Vec::new();
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let outcome = conn.feed(
            false,
            &Chunk::whole(&settings, 1, 1),
            &no_routes(),
            &mut out,
        );
        assert_eq!(outcome.detected, None);
        assert!(matches!(conn, ConnectionProtocol::HeldServerFirst(_)));
        let mut client = http2::PREFACE.to_vec();
        client.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let outcome = conn.feed(true, &Chunk::whole(&client, 2, 2), &no_routes(), &mut out);
        assert_eq!(outcome.detected.map(Protocol::label), Some("http2"));
        assert!(matches!(
            conn,
            ConnectionProtocol::Parsing(Protocol("http2"), _)
        ));
        assert_eq!(outcome.health, SessionHealth::default());
    }

    #[test]
    fn a_replication_stream_stops_the_connection_with_its_reason() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Vec::new();
        let psync = b"*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n";
        let outcome = conn.feed(true, &Chunk::whole(psync, 1, 1), &no_routes(), &mut out);
        assert_eq!(outcome.detected.map(Protocol::label), Some("redis"));
        assert_eq!(outcome.health.stopped, Some(StopReason::Replication));
        assert!(matches!(conn, ConnectionProtocol::Ignored));
        assert_eq!(conn.skip_hint(false), 0);
        assert_eq!(StopReason::Replication.label(), "replication");
    }

    #[test]
    fn skip_hints_through_the_connection() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Vec::new();
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        conn.feed(true, &Chunk::whole(head, 1, 1), &no_routes(), &mut out);
        assert_eq!(conn.skip_hint(true), 5000);
        assert_eq!(conn.skip_hint(false), 0);
        assert_eq!(ConnectionProtocol::default().skip_hint(true), 0);
    }

    #[test]
    fn lost_request_labels_are_stable() {
        let labels: Vec<_> = LostReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            ["capture_gap", "unparsable", "queue_full", "stopped"]
        );
        let stops: Vec<_> = StopReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(stops, ["replication", "upgrade", "hpack_desync"]);
        let mut lost = LostRequests::default();
        lost.add(LostReason::CaptureGap, 2);
        lost.add(LostReason::QueueFull, 3);
        let mut more = lost;
        more.merge(&lost);
        assert_eq!(
            (more.capture_gap, more.queue_full, more.total()),
            (4, 6, 10)
        );
        assert_eq!(
            lost.iter().collect::<Vec<_>>(),
            [
                (LostReason::CaptureGap, 2),
                (LostReason::Unparsable, 0),
                (LostReason::QueueFull, 3),
                (LostReason::Stopped, 0)
            ]
        );
    }

    #[test]
    fn server_first_and_tls_connections_are_ignored() {
        let mut out = Vec::new();
        let mut banner = ConnectionProtocol::default();
        let outcome = banner.feed(
            false,
            &Chunk::whole(b"220 smtp ready\r\n", 1, 1),
            &no_routes(),
            &mut out,
        );
        assert_eq!(outcome.detected, Some(Protocol::UNKNOWN));
        assert!(matches!(banner, ConnectionProtocol::Ignored));
        let mut tls = ConnectionProtocol::default();
        let hello = [0x16, 3, 1, 0, 5, 1, 0, 0, 1, 3];
        let outcome = tls.feed(true, &Chunk::whole(&hello, 1, 1), &no_routes(), &mut out);
        assert_eq!(outcome.detected, Some(Protocol::TLS));
        assert!(matches!(tls, ConnectionProtocol::Ignored) && out.is_empty());
    }
}

/// Skip hints never claim a byte a session needs: feeding recorded connections of every
/// protocol with the hinted bytes replaced by gap chunks (as the kernel delivers them
/// when told to skip) gives the same results as feeding every byte.
#[cfg(test)]
mod skip_hint_tests {
    use super::*;
    use crate::protocols::test_fixtures::{self, Rng};
    use std::path::PathBuf;

    type Syscalls = Vec<(bool, Vec<u8>)>;

    fn dir(protocol: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(protocol)
    }

    /// Every recorded connection of a protocol, as (from client, bytes) syscalls.
    fn recorded(protocol: &str) -> Vec<(String, Syscalls)> {
        let mut names: Vec<String> = std::fs::read_dir(dir(protocol))
            .expect("fixture folder")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".order").map(str::to_string)
            })
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let calls = if protocol == "postgres" {
                    postgres(&name)
                } else {
                    let f = test_fixtures::load(protocol, &name);
                    test_fixtures::logged(&f)
                        .iter()
                        .map(|p| (p.req, p.data.to_vec()))
                        .collect()
                };
                (name, calls)
            })
            .collect()
    }

    /// PostgreSQL's recordings: `.fe`, `.be`, and `f N` / `b N` order lines.
    fn postgres(name: &str) -> Syscalls {
        let read =
            |ext: &str| std::fs::read(dir("postgres").join(format!("{name}.{ext}"))).unwrap();
        let (fe, be, order) = (read("fe"), read("be"), read("order"));
        let (mut f, mut b) = (0, 0);
        String::from_utf8(order)
            .unwrap()
            .lines()
            .map(|l| {
                let (d, n) = l.split_once(' ').unwrap();
                let n: usize = n.parse().unwrap();
                if d == "f" {
                    f += n;
                    (true, fe[f - n..f].to_vec())
                } else {
                    b += n;
                    (false, be[b - n..b].to_vec())
                }
            })
            .collect()
    }

    /// A new session of the protocol whose recordings are in the `fixtures` folder.
    fn session(fixtures: &str) -> Box<dyn Session> {
        let label = match fixtures {
            "postgres" => "postgresql",
            "http1" => "http",
            other => other,
        };
        let spec = PROTOCOLS.iter().find(|p| p.label == label).unwrap();
        (spec.new_session.unwrap())(&SessionOptions::default())
    }

    /// What a feed produced: everything completed, the health after each syscall, what
    /// stayed open, then what the close completed.
    #[derive(Debug, PartialEq)]
    struct Result {
        completed: String,
        health: Vec<SessionHealth>,
        pending: usize,
    }

    /// Feeds the syscalls; with `hints`, each syscall is cut at a random point and the
    /// bytes the session then says it will skip go as a gap chunk. Returns the result and
    /// the bytes skipped.
    fn feed(protocol: &str, calls: &Syscalls, hints: Option<&mut Rng>) -> (Result, u64) {
        let mut s = session(protocol);
        let mut out = Vec::new();
        let mut all = String::new();
        let mut health = Vec::new();
        let mut skipped = 0;
        let mut rng = hints;
        for (i, (from_client, data)) in calls.iter().enumerate() {
            let t = 1000 * (i as u64 + 1);
            let give =
                |s: &mut Box<dyn Session>, data: &[u8], len: usize, out: &mut Vec<Request>| {
                    let c = Chunk {
                        data,
                        len,
                        start_ns: t,
                        end_ns: t + 500,
                    };
                    if *from_client {
                        s.client_bytes(&c, out);
                    } else {
                        s.server_bytes(&c, out);
                    }
                };
            match rng.as_deref_mut() {
                None => give(&mut s, data, data.len(), &mut out),
                Some(rng) => {
                    let j = rng.below(data.len() + 1);
                    if j > 0 {
                        give(&mut s, &data[..j], j, &mut out);
                    }
                    let k = (s.skip_hint(*from_client) as usize).min(data.len() - j);
                    if k > 0 {
                        give(&mut s, &[], k, &mut out);
                        skipped += k as u64;
                    }
                    if j + k < data.len() {
                        give(&mut s, &data[j + k..], data.len() - j - k, &mut out);
                    }
                }
            }
            all += &format!("{out:?}");
            out.clear();
            health.push(s.take_health());
        }
        let pending = s.pending();
        s.finish(&mut out);
        all += &format!("{out:?}");
        health.push(s.take_health());
        (
            Result {
                completed: all,
                health,
                pending,
            },
            skipped,
        )
    }

    #[test]
    fn hinted_gaps_change_nothing_on_recorded_connections() {
        let mut rng = Rng(0x5eed);
        for protocol in ["redis", "postgres", "http1", "http2"] {
            let mut skipped = 0;
            for (name, calls) in recorded(protocol) {
                let (want, _) = feed(protocol, &calls, None);
                for round in 0..4 {
                    // Also cut the syscalls further, so that hints are asked for at many
                    // points inside bodies.
                    let calls: Syscalls = if round == 0 {
                        calls.clone()
                    } else {
                        let max = [0, 7, 300, 5000][round];
                        calls
                            .iter()
                            .flat_map(|(c, d)| {
                                let mut parts = Vec::new();
                                let mut at = 0;
                                while at < d.len() {
                                    let n = (1 + rng.below(max)).min(d.len() - at);
                                    parts.push((*c, d[at..at + n].to_vec()));
                                    at += n;
                                }
                                parts
                            })
                            .collect()
                    };
                    let (plain, _) = feed(protocol, &calls, None);
                    let (hinted, n) = feed(protocol, &calls, Some(&mut rng));
                    assert!(
                        plain == hinted,
                        "{protocol}/{name} round {round}: hinted gaps changed the result\n\
                         plain:  {plain:?}\nhinted: {hinted:?}"
                    );
                    if round == 0 {
                        assert_eq!(plain.completed, want.completed, "{protocol}/{name}");
                    }
                    skipped += n;
                }
            }
            // Not vacuous: every protocol's recordings have bodies to skip.
            assert!(skipped > 10_000, "{protocol}: only {skipped} bytes hinted");
        }
    }
}
