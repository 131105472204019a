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
