//! Application protocols: detection, pure parsers and per-connection sessions.
//!
//! Each protocol module is pure: bytes in, operations out, no I/O and no clock. The
//! capture layer hands every data syscall on a connection to the connection's session
//! as a [`Chunk`]; the session returns completed [`Operation`]s.

pub mod postgres;
pub mod redis;

/// One data syscall's worth of a byte stream, as the capture layer saw it.
///
/// The kernel copies only a prefix of what a syscall moved, so `data` may be shorter than
/// `len`: the bytes in `data.len()..len` happened but are unknown. A parser that is
/// skipping a value of known length (a Redis bulk string, a PostgreSQL DataRow) skips
/// them; a parser that needs them to find the next message boundary has lost the framing.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The copied prefix.
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

/// What a session reports about its own health, drained by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionHealth {
    /// Bytes that could not be parsed (framing errors).
    pub parse_errors: u64,
    /// Requests dropped because they never got a response.
    pub timed_out: u64,
    /// The session stopped decoding this connection for good.
    pub gave_up: bool,
    /// The connection turned out to be TLS (after a STARTTLS-style upgrade).
    pub tls: bool,
}

/// Protocols the agent recognises from a connection's first client bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Redis,
    Postgres,
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
    } else if redis::looks_like_request(client_prefix) {
        Protocol::Redis
    } else {
        Protocol::Unknown
    }
}

/// A parsing session for one connection.
pub enum Session {
    Redis(Box<redis::RedisSession>),
    Postgres(Box<postgres::PgSession>),
}

impl Session {
    pub fn protocol(&self) -> Protocol {
        match self {
            Session::Redis(_) => Protocol::Redis,
            Session::Postgres(_) => Protocol::Postgres,
        }
    }

    /// Client-to-server bytes.
    pub fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Operation>) {
        match self {
            Session::Redis(s) => s.on_request(chunk),
            Session::Postgres(s) => {
                s.on_frontend(chunk);
                s.take_completed(out);
            }
        }
    }

    /// Server-to-client bytes.
    pub fn on_response(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Operation>) {
        match self {
            Session::Redis(s) => s.on_response(chunk, out),
            Session::Postgres(s) => s.on_backend(chunk, out),
        }
    }

    /// The connection closed: hand out what only its end completes.
    pub fn finish(&mut self, out: &mut Vec<Operation>) {
        if let Session::Postgres(s) = self {
            s.take_completed(out);
        }
    }

    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        match self {
            Session::Redis(s) => s.expire(now_ns, timeout_ns),
            Session::Postgres(s) => s.expire(now_ns, timeout_ns),
        }
    }

    pub fn pending(&self) -> usize {
        match self {
            Session::Redis(s) => s.pending(),
            Session::Postgres(s) => s.pending(),
        }
    }

    pub fn take_health(&mut self) -> SessionHealth {
        match self {
            Session::Redis(s) => s.take_health(),
            Session::Postgres(s) => s.take_health(),
        }
    }
}

/// The protocol state of one connection.
#[derive(Default)]
pub enum ConnectionProtocol {
    /// No client bytes seen yet.
    #[default]
    Undetected,
    Parsing(Session),
    /// Recognised as something not parsed (TLS, unknown, or a session that gave up).
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
    /// Feeds one syscall's bytes. `from_client` says which way they went; completed
    /// operations are appended to `out`.
    pub fn feed(
        &mut self,
        from_client: bool,
        chunk: &Chunk<'_>,
        out: &mut Vec<Operation>,
    ) -> FeedOutcome {
        let mut outcome = FeedOutcome::default();
        if let ConnectionProtocol::Undetected = self {
            if chunk.data.is_empty() {
                // sendfile and *mmsg carry no payload: wait for bytes to look at.
                return outcome;
            }
            // A server that speaks first (banner protocols) is not one we parse.
            let protocol = if from_client {
                detect(chunk.data)
            } else {
                Protocol::Unknown
            };
            outcome.detected = Some(protocol);
            *self = match protocol {
                Protocol::Redis => ConnectionProtocol::Parsing(Session::Redis(Box::default())),
                Protocol::Postgres => {
                    ConnectionProtocol::Parsing(Session::Postgres(Box::default()))
                }
                Protocol::Tls | Protocol::Unknown => ConnectionProtocol::Ignored,
            };
        }
        if let ConnectionProtocol::Parsing(session) = self {
            if from_client {
                session.on_request(chunk, out);
            } else {
                session.on_response(chunk, out);
            }
            outcome.health = session.take_health();
            if outcome.health.gave_up || outcome.health.tls {
                *self = ConnectionProtocol::Ignored;
            }
        }
        outcome
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

    #[test]
    fn detects_each_protocol_from_client_bytes() {
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), Protocol::Redis);
        assert_eq!(
            detect(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]),
            Protocol::Postgres
        );
        assert_eq!(detect(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Protocol::Tls);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Protocol::Unknown);
        assert_eq!(detect(b""), Protocol::Unknown);
    }

    #[test]
    fn a_redis_connection_yields_one_operation_per_command() {
        let mut conn = ConnectionProtocol::default();
        let mut ops = Vec::new();
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let out = conn.feed(true, &Chunk::whole(req, 10, 20), &mut ops);
        assert_eq!(out.detected, Some(Protocol::Redis));
        conn.feed(
            false,
            &Chunk::whole(b"+OK\r\n$1\r\nv\r\n", 50, 60),
            &mut ops,
        );
        let names: Vec<_> = ops.iter().map(|o| (o.name, o.start_ns, o.end_ns)).collect();
        assert_eq!(names, vec![("SET", 10, 60), ("GET", 10, 60)]);
    }

    #[test]
    fn server_first_and_tls_connections_are_ignored() {
        let mut ops = Vec::new();
        let mut banner = ConnectionProtocol::default();
        let out = banner.feed(false, &Chunk::whole(b"220 smtp ready\r\n", 1, 1), &mut ops);
        assert_eq!(out.detected, Some(Protocol::Unknown));
        assert!(matches!(banner, ConnectionProtocol::Ignored));
        let mut tls = ConnectionProtocol::default();
        let out = tls.feed(
            true,
            &Chunk::whole(&[0x16, 3, 1, 0, 5, 1, 0, 0, 1, 3], 1, 1),
            &mut ops,
        );
        assert_eq!(out.detected, Some(Protocol::Tls));
        assert!(matches!(tls, ConnectionProtocol::Ignored) && ops.is_empty());
    }
}
