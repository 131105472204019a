//! Application protocols: detection, pure parsers and per-connection sessions.
//!
//! Each protocol module is pure: bytes in, operations out, no I/O and no clock. The
//! capture layer hands every data syscall on a connection to the connection's session
//! as a [`Chunk`]; the session returns completed [`Operation`]s.

pub mod hpack;
pub mod http1;
pub mod http2;
pub mod postgres;
pub mod redis;
pub mod route;
#[cfg(test)]
mod test_fixtures;

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
    /// Start of the operation (the `start_ns` of the chunk holding its first request byte).
    pub start_ns: u64,
    /// End of the operation (the `end_ns` of the chunk holding its last response byte).
    pub end_ns: u64,
    /// Statement text with literals replaced by `?`, bounded in length (for spans only,
    /// never a label).
    pub statement: String,
    /// Collection (table or key-space) name where it is cheap to know.
    pub collection: Option<String>,
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

/// Protocols the agent recognises from a connection's first client bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Redis,
    Postgres,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), gRPC included.
    Http2,
    /// Recognised and counted, never parsed.
    Tls,
    /// Anything else: costs nothing further.
    Unknown,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgresql",
            Protocol::Http1 => "http",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Unknown => "unknown",
        }
    }
}

/// A TLS record header carrying a handshake (ClientHello): content type 22, version 3.x.
pub fn looks_like_tls(prefix: &[u8]) -> bool {
    matches!(prefix, [0x16, 0x03, minor, ..] if *minor <= 0x04)
}

/// What a connection speaks, from the first bytes its client sent.
pub fn detect(client_prefix: &[u8]) -> Protocol {
    if looks_like_tls(client_prefix) {
        Protocol::Tls
    } else if postgres::looks_like_startup(client_prefix) {
        Protocol::Postgres
    } else if http2::looks_like_preface(client_prefix) {
        Protocol::Http2
    } else if http1::looks_like_request(client_prefix) {
        Protocol::Http1
    } else if redis::looks_like_request(client_prefix) {
        Protocol::Redis
    } else {
        Protocol::Unknown
    }
}

/// What sessions completed, by kind; the caller drains it after each feed.
#[derive(Default)]
pub struct Completed {
    /// Database operations (Redis, PostgreSQL).
    pub ops: Vec<Operation>,
    /// HTTP/1.x exchanges.
    pub http: Vec<http1::HttpExchange>,
    /// HTTP/2 streams, gRPC calls among them.
    pub h2: Vec<http2::H2Exchange>,
}

impl Completed {
    pub fn clear(&mut self) {
        self.ops.clear();
        self.http.clear();
        self.h2.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.http.is_empty() && self.h2.is_empty()
    }
}

/// A parsing session for one connection.
pub enum Session {
    Redis(Box<redis::RedisSession>),
    Postgres(Box<postgres::PgSession>),
    Http1(Box<http1::Http1Session>),
    Http2(Box<http2::H2Session>),
}

impl Session {
    pub fn protocol(&self) -> Protocol {
        match self {
            Session::Redis(_) => Protocol::Redis,
            Session::Postgres(_) => Protocol::Postgres,
            Session::Http1(_) => Protocol::Http1,
            Session::Http2(_) => Protocol::Http2,
        }
    }

    /// Client-to-server bytes.
    pub fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Completed) {
        match self {
            Session::Redis(s) => s.on_request(chunk),
            Session::Postgres(s) => {
                s.on_frontend(chunk);
                s.take_completed(&mut out.ops);
            }
            Session::Http1(s) => {
                s.on_request(chunk);
                s.take_completed(&mut out.http);
            }
            Session::Http2(s) => s.on_client(chunk, &mut out.h2),
        }
    }

    /// Server-to-client bytes.
    pub fn on_response(&mut self, chunk: &Chunk<'_>, out: &mut Completed) {
        match self {
            Session::Redis(s) => s.on_response(chunk, &mut out.ops),
            Session::Postgres(s) => s.on_backend(chunk, &mut out.ops),
            Session::Http1(s) => s.on_response(chunk, &mut out.http),
            Session::Http2(s) => s.on_server(chunk, &mut out.h2),
        }
    }

    /// The connection closed: hand out what only its end completes.
    pub fn finish(&mut self, out: &mut Completed) {
        match self {
            Session::Redis(_) => {}
            Session::Postgres(s) => s.take_completed(&mut out.ops),
            Session::Http1(s) => s.finish(&mut out.http),
            Session::Http2(s) => s.finish(&mut out.h2),
        }
    }

    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        match self {
            Session::Redis(s) => s.expire(now_ns, timeout_ns),
            Session::Postgres(s) => s.expire(now_ns, timeout_ns),
            Session::Http1(s) => s.expire(now_ns, timeout_ns),
            Session::Http2(s) => s.expire(now_ns, timeout_ns),
        }
    }

    pub fn pending(&self) -> usize {
        match self {
            Session::Redis(s) => s.pending(),
            Session::Postgres(s) => s.pending(),
            Session::Http1(s) => s.pending(),
            Session::Http2(s) => s.pending(),
        }
    }

    pub fn take_health(&mut self) -> SessionHealth {
        match self {
            Session::Redis(s) => s.take_health(),
            Session::Postgres(s) => s.take_health(),
            Session::Http1(s) => s.take_health(),
            Session::Http2(s) => s.take_health(),
        }
    }

    /// How many of the next bytes in that direction the session will skip by length
    /// without looking at them, after the chunks fed so far: the capture layer need not
    /// copy them, and hands them over as a gap chunk (`data` empty, `len` the count). 0
    /// when unsure; never a byte the session needs.
    pub fn skip_hint(&self, from_client: bool) -> u64 {
        match self {
            Session::Redis(s) => s.skip_hint(from_client),
            Session::Postgres(s) => s.skip_hint(from_client),
            Session::Http1(s) => s.skip_hint(from_client),
            Session::Http2(s) => s.skip_hint(from_client),
        }
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
    Parsing(Session),
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

impl ConnectionProtocol {
    /// Feeds one syscall's bytes. `from_client` says which way they went; what the
    /// session completes is appended to `out`. `routes` are the user's HTTP route
    /// patterns, given to new HTTP/1 sessions.
    pub fn feed(
        &mut self,
        from_client: bool,
        chunk: &Chunk<'_>,
        routes: &std::sync::Arc<http1::RoutePatterns>,
        out: &mut Completed,
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
                outcome.detected = Some(Protocol::Unknown);
                *self = ConnectionProtocol::Ignored;
                return outcome;
            }
            if let ConnectionProtocol::HeldServerFirst(h) = std::mem::take(self) {
                held = Some(h);
            }
            let protocol = detect(chunk.data);
            outcome.detected = Some(protocol);
            let session = match protocol {
                Protocol::Redis => Some(Session::Redis(Box::default())),
                Protocol::Postgres => Some(Session::Postgres(Box::default())),
                Protocol::Http1 => Some(Session::Http1(Box::new(
                    http1::Http1Session::with_routes(routes.clone()),
                ))),
                Protocol::Http2 => Some(Session::Http2(Box::default())),
                Protocol::Tls | Protocol::Unknown => None,
            };
            *self = session.map_or(ConnectionProtocol::Ignored, ConnectionProtocol::Parsing);
        }
        if let ConnectionProtocol::Parsing(session) = self {
            if from_client {
                session.on_request(chunk, out);
            } else {
                session.on_response(chunk, out);
            }
            // The server's early SETTINGS, after the client's preface it crossed on the wire.
            if let Some(h) = held {
                let early = Chunk {
                    data: &h.data,
                    len: h.len,
                    start_ns: h.start_ns,
                    end_ns: h.end_ns,
                };
                session.on_response(&early, out);
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
            ConnectionProtocol::Parsing(s) => s.skip_hint(from_client),
            _ => 0,
        }
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            ConnectionProtocol::Parsing(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod dispatch_tests {
    use super::*;

    fn no_routes() -> std::sync::Arc<http1::RoutePatterns> {
        std::sync::Arc::new(http1::RoutePatterns::default())
    }

    #[test]
    fn detects_each_protocol_from_client_bytes() {
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), Protocol::Redis);
        assert_eq!(
            detect(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]),
            Protocol::Postgres
        );
        assert_eq!(detect(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Protocol::Tls);
        assert_eq!(detect(http2::PREFACE), Protocol::Http2);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(detect(b"GET "), Protocol::Http1);
        assert_eq!(detect(b"\x00\x01garbage"), Protocol::Unknown);
        assert_eq!(detect(b""), Protocol::Unknown);
    }

    #[test]
    fn a_redis_connection_yields_one_operation_per_command() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Completed::default();
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let outcome = conn.feed(true, &Chunk::whole(req, 10, 20), &no_routes(), &mut out);
        assert_eq!(outcome.detected, Some(Protocol::Redis));
        conn.feed(
            false,
            &Chunk::whole(b"+OK\r\n$1\r\nv\r\n", 50, 60),
            &no_routes(),
            &mut out,
        );
        let names: Vec<_> = out
            .ops
            .iter()
            .map(|o| (o.name, o.start_ns, o.end_ns))
            .collect();
        assert_eq!(names, vec![("SET", 10, 60), ("GET", 10, 60)]);
    }

    #[test]
    fn an_http1_connection_applies_user_routes() {
        let routes = std::sync::Arc::new(http1::RoutePatterns::new(["/shop/{item}"]).unwrap());
        let mut conn = ConnectionProtocol::default();
        let mut out = Completed::default();
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
        assert_eq!(out.http.len(), 1);
        assert_eq!(
            (
                out.http[0].method,
                out.http[0].status,
                out.http[0].route.as_str()
            ),
            ("GET", 200, "/shop/{item}")
        );
    }

    #[test]
    fn an_h2_server_speaking_first_is_held_until_the_client_preface() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Completed::default();
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
        assert_eq!(outcome.detected, Some(Protocol::Http2));
        assert!(matches!(
            conn,
            ConnectionProtocol::Parsing(Session::Http2(_))
        ));
        assert_eq!(outcome.health, SessionHealth::default());
    }

    #[test]
    fn a_replication_stream_stops_the_connection_with_its_reason() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Completed::default();
        let psync = b"*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n";
        let outcome = conn.feed(true, &Chunk::whole(psync, 1, 1), &no_routes(), &mut out);
        assert_eq!(outcome.detected, Some(Protocol::Redis));
        assert_eq!(outcome.health.stopped, Some(StopReason::Replication));
        assert!(matches!(conn, ConnectionProtocol::Ignored));
        assert_eq!(conn.skip_hint(false), 0);
        assert_eq!(StopReason::Replication.label(), "replication");
    }

    #[test]
    fn skip_hints_through_the_connection() {
        let mut conn = ConnectionProtocol::default();
        let mut out = Completed::default();
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
        let mut out = Completed::default();
        let mut banner = ConnectionProtocol::default();
        let outcome = banner.feed(
            false,
            &Chunk::whole(b"220 smtp ready\r\n", 1, 1),
            &no_routes(),
            &mut out,
        );
        assert_eq!(outcome.detected, Some(Protocol::Unknown));
        assert!(matches!(banner, ConnectionProtocol::Ignored));
        let mut tls = ConnectionProtocol::default();
        let hello = [0x16, 3, 1, 0, 5, 1, 0, 0, 1, 3];
        let outcome = tls.feed(true, &Chunk::whole(&hello, 1, 1), &no_routes(), &mut out);
        assert_eq!(outcome.detected, Some(Protocol::Tls));
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

    fn session(protocol: &str) -> Session {
        match protocol {
            "redis" => Session::Redis(Box::default()),
            "postgres" => Session::Postgres(Box::default()),
            "http1" => Session::Http1(Box::default()),
            "http2" => Session::Http2(Box::default()),
            _ => unreachable!(),
        }
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
        let mut out = Completed::default();
        let mut all = String::new();
        let mut health = Vec::new();
        let mut skipped = 0;
        let mut rng = hints;
        for (i, (from_client, data)) in calls.iter().enumerate() {
            let t = 1000 * (i as u64 + 1);
            let give = |s: &mut Session, data: &[u8], len: usize, out: &mut Completed| {
                let c = Chunk {
                    data,
                    len,
                    start_ns: t,
                    end_ns: t + 500,
                };
                if *from_client {
                    s.on_request(&c, out);
                } else {
                    s.on_response(&c, out);
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
            all += &format!("{:?}{:?}{:?}", out.ops, out.http, out.h2);
            out.clear();
            health.push(s.take_health());
        }
        let pending = s.pending();
        s.finish(&mut out);
        all += &format!("{:?}{:?}{:?}", out.ops, out.http, out.h2);
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
