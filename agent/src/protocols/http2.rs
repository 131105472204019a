//! HTTP/2 over cleartext TCP with prior knowledge (h2c), and gRPC on top of it.
//!
//! [`H2Session`] turns the two byte streams of one connection into [`H2Exchange`]s, one per
//! request stream that completed. It follows RFC 9113: the client connection preface
//! (§3.4), then frames (§4.1) in both directions, each with its own HPACK decoder
//! ([`super::hpack`], RFC 7541). gRPC (PROTOCOL-HTTP2 of grpc/grpc) is recognised by the
//! request's `content-type` and described by [`GrpcInfo`].
//!
//! # Frames
//!
//! The session follows frames by their lengths and reads payloads only as far as it needs
//! them, so a DATA frame whose body was not copied by the capture (see [`Chunk`]) is skipped
//! by its length.
//!
//! | frame | what the session does |
//! |---|---|
//! | DATA (§6.1) | counts the body (length less padding); END_STREAM from the server completes the stream |
//! | HEADERS (§6.2), CONTINUATION (§6.10) | collects the header block (padding and priority fields removed), decodes it whole |
//! | PRIORITY (§6.3), PING (§6.7), WINDOW_UPDATE (§6.9), unknown types (§5.5) | skipped |
//! | RST_STREAM (§6.4), either way | completes the stream as reset |
//! | SETTINGS (§6.5) | SETTINGS_HEADER_TABLE_SIZE bounds the peer's HPACK table once acknowledged |
//! | PUSH_PROMISE (§6.6) | its header block is decoded (it changes the server's HPACK table); pushed streams are not exchanges |
//! | GOAWAY (§6.8) from the server | streams above its last stream id were never processed: dropped (counted as timed out) |
//!
//! # Exchanges
//!
//! A stream opens with the client's HEADERS carrying `:method` (its `start_ns` is that of the
//! chunk holding the frame's first byte) and completes with END_STREAM from the server, or
//! RST_STREAM from either side (its `end_ns` is that of the chunk holding the frame's last
//! byte; for a header block, the last byte of its last frame). A stream reset before its
//! response ended has no gRPC status. Interim (1xx) responses do not set the status.
//! Streaming RPCs therefore last from stream open to stream end. Body bytes are counted
//! until the stream completes (a server may answer before the request body is all sent).
//! When the connection ends ([`H2Session::finish`]), its open streams complete as reset,
//! at the last time seen on the connection; [`H2Session::expire`] drops streams instead.
//!
//! Label values are bounded: `method` is one of the methods of RFC 9110 §9 or `_OTHER`
//! (OpenTelemetry's `http.request.method` rule); `path` is `:path` as sent (lossy UTF-8, at
//! most [`MAX_PATH`] bytes: it still needs a route); gRPC service and method names must be
//! identifiers of at most [`MAX_GRPC_NAME`] bytes (`/package.Service/Method`), else both
//! are `_OTHER`.
//!
//! # Lost bytes
//!
//! HPACK state is shared by every header block of a direction: a block that cannot be
//! decoded makes every later one untrustworthy. So when a frame header, or any byte of a
//! header block, falls in the part of a chunk that was not copied, or a block does not
//! decode, or the framing breaks the rules that keep header blocks whole (CONTINUATION
//! sequences, padding longer than the frame), the session stops parsing the connection for
//! good: [`SessionHealth::stopped`] is [`StopReason::HpackDesync`], one parse error, open
//! streams dropped (counted as lost, `stopped`), all state freed, and every later call
//! returns at once. It never emits an exchange whose labels come from a table it could not
//! follow. A lost frame header is the same case: the frames it hid may have been header
//! blocks. This is the only protocol that cannot resynchronise; the capture layer copies
//! every byte the session needs (up to a per-syscall cap) and nothing of DATA payloads
//! ([`H2Session::skip_hint`]), so it happens only past that cap or when events are lost.
//!
//! # Memory
//!
//! Per connection: two HPACK tables (at most [`hpack::MAX_TABLE_SIZE`] each), one header
//! block being collected (at most [`MAX_HEADER_BLOCK`], given back after a large one), and
//! at most [`MAX_STREAMS`] open streams of at most [`MAX_PATH`] path bytes each; when a new
//! stream would pass that cap, the oldest open stream is dropped (counted as timed out).

use std::collections::{BTreeMap, VecDeque};

use std::sync::Arc;

use super::http1::{method_label, valid_traceparent, RoutePatterns, TRACEPARENT_LEN};
use super::request::{Attributes, HttpRequest, Requests, RpcRequest, Sink, UrlPath};
use super::{
    hpack, Chunk, LostReason, Request, Session, SessionHealth, SessionOptions, StopReason,
};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Open streams kept per connection; the oldest is dropped to make room (counted as lost,
/// `queue_full`). Servers advertise 100 to 128 concurrent streams by default.
pub const MAX_STREAMS: usize = 1024;
/// Largest header block collected (the payloads of a HEADERS or PUSH_PROMISE frame and its
/// CONTINUATION frames). A larger one cannot be decoded: the session gives up.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Bytes of `:path` kept.
pub const MAX_PATH: usize = 512;
/// Longest gRPC service or method name accepted as a label.
pub const MAX_GRPC_NAME: usize = 128;
/// The label value for a method or gRPC name that is not accepted.
pub const OTHER: &str = "_OTHER";
/// SETTINGS frames of one side awaiting acknowledgement that are remembered; older ones
/// are taken as acknowledged.
const MAX_UNACKED_SETTINGS: usize = 8;
/// Header block capacity kept between blocks.
const BLOCK_KEEP: usize = 4096;
/// Frame header size (RFC 9113 §4.1).
const FRAME_HEADER: usize = 9;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

// Frame flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// Whether `prefix`, the first bytes a client sent on a connection, is the HTTP/2 client
/// preface: at least 16 bytes of it (`PRI * HTTP/2.0\r\n`, which no HTTP/1 request starts
/// with), and all of it when more was copied.
pub fn looks_like_preface(prefix: &[u8]) -> bool {
    let n = prefix.len().min(PREFACE.len());
    n >= 16 && prefix[..n] == PREFACE[..n]
}

/// One completed request stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Exchange {
    /// `:method`: a method of RFC 9110 §9 (or PATCH), or `_OTHER`.
    pub method: String,
    /// `:path`, at most [`MAX_PATH`] bytes (lossy UTF-8).
    pub path: String,
    /// `:status` of the final response; 0 if none came (a reset stream).
    pub status: u16,
    /// Set when the request's content-type starts with `application/grpc`.
    pub grpc: Option<GrpcInfo>,
    /// DATA bytes from the client on this stream, padding excluded.
    pub request_body_bytes: u64,
    /// DATA bytes from the server on this stream, padding excluded.
    pub response_body_bytes: u64,
    /// `start_ns` of the chunk holding the first byte of the request HEADERS frame.
    pub start_ns: u64,
    /// `end_ns` of the chunk holding the last byte of the frame that ended the stream
    /// (END_STREAM from the server, or RST_STREAM).
    pub end_ns: u64,
    /// The request's W3C `traceparent`, when it had exactly one and it was valid.
    pub traceparent: Option<String>,
    /// The stream's id: the request's name on both ends of the connection.
    pub stream_id: u32,
}

/// gRPC details of an exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcInfo {
    /// `package.Service` from `:path` `/package.Service/Method`, or `_OTHER`.
    pub service: String,
    /// `Method` from `:path`, or `_OTHER`.
    pub method: String,
    /// `grpc-status` from the trailers, or from a headers-only response (Trailers-Only);
    /// `None` when the stream was reset or the server sent none.
    pub status: Option<u32>,
}

/// The protocol state of one HTTP/2 connection, both directions.
#[derive(Clone, Debug)]
pub struct H2Session {
    /// `None` once the session gave up: nothing is kept, nothing is done.
    state: Option<Box<State>>,
    health: SessionHealth,
}

impl Default for H2Session {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
struct State {
    client: Side,
    server: Side,
    /// Open request streams by id. Client stream ids only grow (RFC 9113 §5.1.1), so the
    /// first entry is the oldest.
    streams: BTreeMap<u32, Stream>,
    /// The highest client stream id opened so far.
    last_stream: u32,
    /// The latest `end_ns` seen, for streams the end of the connection resets.
    last_end_ns: u64,
}

/// One direction: its framing state and the decoder of its header blocks.
#[derive(Clone, Debug)]
struct Side {
    /// Bytes of the client preface still expected (0 for the server side).
    preface_left: u8,
    head: [u8; FRAME_HEADER],
    head_len: u8,
    /// `start_ns` of the chunk holding the first byte of the frame header being read.
    head_start_ns: u64,
    frame: Option<Frame>,
    hpack: hpack::Decoder,
    /// The header block being collected.
    block: Vec<u8>,
    /// A header block started (HEADERS or PUSH_PROMISE) and not yet ended (END_HEADERS).
    open_block: Option<OpenBlock>,
    /// SETTINGS_HEADER_TABLE_SIZE of each SETTINGS frame the peer sent that this side has
    /// not acknowledged yet, oldest first (`None`: the frame did not change it). They
    /// bound this side's encoder, hence `hpack`.
    unacked: VecDeque<Option<u32>>,
    /// The value in force (acknowledged by this side).
    acked_limit: u32,
}

#[derive(Clone, Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    len: u32,
    /// Payload bytes still to come.
    left: u32,
    /// The first payload bytes, as far as they were copied (pad length, GOAWAY's last
    /// stream id).
    lead: [u8; 8],
    lead_len: u8,
    /// SETTINGS: the parameter being read, what was found, and whether bytes were missing.
    param: [u8; 6],
    param_len: u8,
    table_size: Option<u32>,
    settings_unknown: bool,
    /// Header block frames: where this frame's payload starts in `Side::block`.
    frag_start: usize,
}

#[derive(Clone, Copy, Debug)]
struct OpenBlock {
    stream: u32,
    push: bool,
    end_stream: bool,
    start_ns: u64,
}

#[derive(Clone, Debug)]
struct Stream {
    method: &'static str,
    path: String,
    path_truncated: bool,
    /// Boxed: a stream stays small, and few requests carry one.
    traceparent: Option<Box<[u8; TRACEPARENT_LEN]>>,
    grpc: bool,
    status: u16,
    grpc_status: Option<u32>,
    request_body_bytes: u64,
    response_body_bytes: u64,
    start_ns: u64,
}

/// The session cannot follow the connection any further.
struct GiveUp;

type Step = Result<(), GiveUp>;

impl Side {
    fn new(client: bool) -> Self {
        Self {
            preface_left: if client { PREFACE.len() as u8 } else { 0 },
            head: [0; FRAME_HEADER],
            head_len: 0,
            head_start_ns: 0,
            frame: None,
            hpack: hpack::Decoder::new(),
            block: Vec::new(),
            open_block: None,
            unacked: VecDeque::new(),
            acked_limit: hpack::DEFAULT_TABLE_SIZE as u32,
        }
    }

    /// The largest table the encoder of this side may use now: the value in force, or a
    /// larger one sent but not acknowledged yet (an encoder may use it as soon as it has
    /// read it). A smaller one takes effect with its acknowledgement (RFC 9113 §6.5.3).
    fn update_limit(&mut self) {
        let pending = self.unacked.iter().flatten().copied().max().unwrap_or(0);
        let limit = self.acked_limit.max(pending);
        self.hpack.set_limit(limit as usize);
    }

    /// The peer sent SETTINGS; `value` is its SETTINGS_HEADER_TABLE_SIZE, if present.
    fn peer_settings(&mut self, value: Option<u32>) {
        if self.unacked.len() == MAX_UNACKED_SETTINGS {
            self.acknowledge();
        }
        self.unacked.push_back(value);
        self.update_limit();
    }

    /// This side acknowledged the peer's oldest unacknowledged SETTINGS.
    fn acknowledge(&mut self) {
        if let Some(Some(v)) = self.unacked.pop_front() {
            self.acked_limit = v;
        }
        self.update_limit();
    }
}

impl H2Session {
    /// A session for a new connection (nothing seen yet).
    pub fn new() -> Self {
        Self {
            state: Some(Box::new(State {
                client: Side::new(true),
                server: Side::new(false),
                streams: BTreeMap::new(),
                last_stream: 0,
                last_end_ns: 0,
            })),
            health: SessionHealth::default(),
        }
    }

    /// Open request streams (sent, not yet completed).
    pub fn pending(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.streams.len())
    }

    /// Returns what happened since the last call and resets it (`stopped` is reported once).
    pub fn take_health(&mut self) -> SessionHealth {
        std::mem::take(&mut self.health)
    }

    /// How many of the next bytes in that direction the session will skip without looking
    /// at them: the rest of the payload of the DATA frame being read (once its pad length,
    /// if any, is in hand). 0 when unsure.
    pub fn skip_hint(&self, from_client: bool) -> u64 {
        let Some(state) = &self.state else {
            return 0;
        };
        let side = if from_client {
            &state.client
        } else {
            &state.server
        };
        match &side.frame {
            Some(f) if f.kind == DATA && (f.flags & PADDED == 0 || f.lead_len > 0) => {
                u64::from(f.left)
            }
            _ => 0,
        }
    }

    /// Drops the streams opened more than `timeout_ns` before `now_ns` (counted in
    /// `timed_out`).
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        if let Some(s) = &mut self.state {
            let before = s.streams.len();
            s.streams
                .retain(|_, st| st.start_ns.saturating_add(timeout_ns) >= now_ns);
            self.health.timed_out += (before - s.streams.len()) as u64;
        }
    }

    /// The connection closed: every open stream ends with it (RFC 9113 §5.1: closing the
    /// connection closes its streams), as if reset at the last time seen on the connection.
    pub fn finish(&mut self, out: &mut impl Sink<H2Exchange>) {
        if let Some(s) = &mut self.state {
            let end = s.last_end_ns;
            for (id, st) in std::mem::take(&mut s.streams) {
                out.push(exchange(id, st, end, true));
            }
        }
    }

    /// Client-to-server bytes.
    pub fn on_client(&mut self, chunk: &Chunk, out: &mut impl Sink<H2Exchange>) {
        self.feed(true, chunk, out);
    }

    /// Server-to-client bytes.
    pub fn on_server(&mut self, chunk: &Chunk, out: &mut impl Sink<H2Exchange>) {
        self.feed(false, chunk, out);
    }

    fn feed(&mut self, from_client: bool, chunk: &Chunk, out: &mut impl Sink<H2Exchange>) {
        let Some(state) = &mut self.state else {
            return;
        };
        if state
            .feed(from_client, chunk, out, &mut self.health)
            .is_err()
        {
            self.give_up();
        }
    }

    fn give_up(&mut self) {
        if let Some(s) = self.state.take() {
            self.health
                .lost
                .add(LostReason::Stopped, s.streams.len() as u64);
        }
        self.health.parse_errors += 1;
        self.health.stopped = Some(StopReason::HpackDesync);
    }
}

impl State {
    fn sides(&mut self, from_client: bool) -> (&mut Side, &mut Side) {
        if from_client {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        }
    }

    fn feed(
        &mut self,
        from_client: bool,
        chunk: &Chunk,
        out: &mut impl Sink<H2Exchange>,
        health: &mut SessionHealth,
    ) -> Step {
        self.last_end_ns = self.last_end_ns.max(chunk.end_ns);
        let data = chunk.data;
        let total = chunk.len.max(data.len());
        let mut pos = 0;
        while pos < total {
            let (side, _) = self.sides(from_client);
            if side.preface_left > 0 {
                let done = PREFACE.len() - usize::from(side.preface_left);
                let n = usize::from(side.preface_left).min(total - pos);
                let known = &data[pos.min(data.len())..(pos + n).min(data.len())];
                if known != &PREFACE[done..done + known.len()] {
                    // Not prior-knowledge HTTP/2 after all.
                    return Err(GiveUp);
                }
                side.preface_left -= n as u8;
                pos += n;
                continue;
            }
            if side.frame.is_none() {
                if pos >= data.len() {
                    // A frame header among the bytes not copied: the framing is lost.
                    return Err(GiveUp);
                }
                if side.head_len == 0 {
                    side.head_start_ns = chunk.start_ns;
                }
                let have = usize::from(side.head_len);
                let n = (FRAME_HEADER - have).min(data.len() - pos);
                side.head[have..have + n].copy_from_slice(&data[pos..pos + n]);
                side.head_len += n as u8;
                pos += n;
                if usize::from(side.head_len) == FRAME_HEADER {
                    side.head_len = 0;
                    start_frame(side)?;
                    if side.frame.as_ref().is_some_and(|f| f.len == 0) {
                        self.end_frame(from_client, chunk.end_ns, out, health)?;
                    }
                }
                continue;
            }
            let frame = side.frame.as_mut().expect("checked above");
            let n = (frame.left as usize).min(total - pos);
            let known = &data[pos.min(data.len())..(pos + n).min(data.len())];
            payload(side, known, n - known.len())?;
            pos += n;
            let frame = side.frame.as_mut().expect("payload keeps the frame");
            frame.left -= n as u32;
            if frame.left == 0 {
                self.end_frame(from_client, chunk.end_ns, out, health)?;
            }
        }
        Ok(())
    }

    /// A frame's payload is complete (or it has none).
    fn end_frame(
        &mut self,
        from_client: bool,
        end_ns: u64,
        out: &mut impl Sink<H2Exchange>,
        health: &mut SessionHealth,
    ) -> Step {
        let (side, peer) = self.sides(from_client);
        let f = side.frame.take().expect("a frame is being read");
        match f.kind {
            DATA => {
                let body = if f.flags & PADDED == 0 {
                    u64::from(f.len)
                } else if f.lead_len == 0 {
                    // The pad length was not copied: count the padding as body.
                    u64::from(f.len.saturating_sub(1))
                } else if u32::from(f.lead[0]) < f.len {
                    u64::from(f.len - 1 - u32::from(f.lead[0]))
                } else {
                    // Padding longer than the frame (RFC 9113 §6.1: PROTOCOL_ERROR).
                    health.parse_errors += 1;
                    0
                };
                if let Some(st) = self.streams.get_mut(&f.stream) {
                    if from_client {
                        st.request_body_bytes += body;
                    } else {
                        st.response_body_bytes += body;
                        if f.flags & END_STREAM != 0 {
                            let st = self.streams.remove(&f.stream).expect("present");
                            out.push(exchange(f.stream, st, end_ns, false));
                        }
                    }
                }
            }
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                strip_fragment(side, &f)?;
                if f.flags & END_HEADERS != 0 {
                    let block = side.open_block.take().expect("start_frame opened it");
                    let mut fields = Fields::default();
                    let decoded = side.hpack.decode(&side.block, |n, v| fields.add(n, v));
                    side.block.clear();
                    if side.block.capacity() > BLOCK_KEEP {
                        side.block = Vec::new();
                    }
                    if decoded.is_err() {
                        return Err(GiveUp);
                    }
                    self.header_block(from_client, block, fields, end_ns, out, health);
                }
            }
            RST_STREAM => {
                if let Some(st) = self.streams.remove(&f.stream) {
                    out.push(exchange(f.stream, st, end_ns, true));
                }
            }
            SETTINGS => {
                if f.flags & ACK != 0 {
                    // This side acknowledges the peer's SETTINGS: they bound its encoder.
                    side.acknowledge();
                } else {
                    // This side's SETTINGS bound the peer's encoder. When parameters were
                    // not copied, any table size (up to the decoder's own cap) is allowed.
                    let value = if f.settings_unknown {
                        Some(u32::MAX)
                    } else {
                        f.table_size
                    };
                    peer.peer_settings(value);
                }
            }
            GOAWAY if !from_client && f.lead_len >= 4 => {
                // Streams above the last one the server processed never will be
                // (RFC 9113 §6.8); the client retries them elsewhere.
                let last =
                    u32::from_be_bytes([f.lead[0], f.lead[1], f.lead[2], f.lead[3]]) & 0x7fff_ffff;
                let refused = self.streams.split_off(&last.saturating_add(1));
                health.timed_out += refused.len() as u64;
            }
            _ => {}
        }
        Ok(())
    }

    /// A complete, decoded header block.
    fn header_block(
        &mut self,
        from_client: bool,
        block: OpenBlock,
        fields: Fields,
        end_ns: u64,
        out: &mut impl Sink<H2Exchange>,
        health: &mut SessionHealth,
    ) {
        if block.push {
            // A promised request: decoded to keep the HPACK table in step, not followed.
            return;
        }
        if from_client {
            // A new request. Anything else (trailers, a stream id that went backwards) is
            // not one.
            let Some(method) = fields.method else {
                return;
            };
            if block.stream <= self.last_stream {
                return;
            }
            self.last_stream = block.stream;
            if self.streams.len() >= MAX_STREAMS {
                self.streams.pop_first();
                health.lost.add(LostReason::QueueFull, 1);
            }
            let (path, path_truncated) = fields.path.unwrap_or_default();
            let traceparent = (fields.traceparents == 1)
                .then_some(fields.traceparent)
                .flatten();
            self.streams.insert(
                block.stream,
                Stream {
                    method,
                    path,
                    path_truncated,
                    traceparent,
                    grpc: fields.grpc,
                    status: 0,
                    grpc_status: None,
                    request_body_bytes: 0,
                    response_body_bytes: 0,
                    start_ns: block.start_ns,
                },
            );
        } else if let Some(st) = self.streams.get_mut(&block.stream) {
            if let Some(status) = fields.status {
                if status >= 200 {
                    st.status = status;
                }
            }
            if fields.grpc_status.is_some() {
                st.grpc_status = fields.grpc_status;
            }
            if block.end_stream {
                let st = self.streams.remove(&block.stream).expect("present");
                out.push(exchange(block.stream, st, end_ns, false));
            }
        }
    }
}

/// A frame header was read: checks it against the header block rules and starts the frame.
fn start_frame(side: &mut Side) -> Step {
    let h = side.head;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    let (kind, flags) = (h[3], h[4]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    // A header block is a HEADERS or PUSH_PROMISE frame followed only by CONTINUATION
    // frames of the same stream (RFC 9113 §6.10).
    match (&side.open_block, kind) {
        (Some(b), CONTINUATION) if b.stream == stream => {}
        (Some(_), _) | (None, CONTINUATION) => return Err(GiveUp),
        (None, HEADERS | PUSH_PROMISE) => {
            if stream == 0 {
                return Err(GiveUp);
            }
            side.block.clear();
            side.open_block = Some(OpenBlock {
                stream,
                push: kind == PUSH_PROMISE,
                end_stream: kind == HEADERS && flags & END_STREAM != 0,
                start_ns: side.head_start_ns,
            });
        }
        (None, _) => {}
    }
    if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
        if side.block.len() + len as usize > MAX_HEADER_BLOCK {
            return Err(GiveUp);
        }
        // Exactly what the block needs, so that its capacity stays within the bound.
        side.block.reserve_exact(len as usize);
    }
    side.frame = Some(Frame {
        kind,
        flags,
        stream,
        len,
        left: len,
        lead: [0; 8],
        lead_len: 0,
        param: [0; 6],
        param_len: 0,
        table_size: None,
        settings_unknown: false,
        frag_start: side.block.len(),
    });
    Ok(())
}

/// Payload bytes of the current frame: `known` were copied, then `unknown` were not.
fn payload(side: &mut Side, known: &[u8], unknown: usize) -> Step {
    let f = side.frame.as_mut().expect("a frame is being read");
    match f.kind {
        HEADERS | PUSH_PROMISE | CONTINUATION => {
            if unknown > 0 {
                // Part of a header block was not copied: HPACK state is lost.
                return Err(GiveUp);
            }
            side.block.extend_from_slice(known);
        }
        SETTINGS if f.flags & ACK == 0 => {
            if f.settings_unknown {
                return Ok(());
            }
            for &b in known {
                f.param[usize::from(f.param_len)] = b;
                f.param_len += 1;
                if f.param_len == 6 {
                    f.param_len = 0;
                    let id = u16::from_be_bytes([f.param[0], f.param[1]]);
                    if id == SETTINGS_HEADER_TABLE_SIZE {
                        f.table_size = Some(u32::from_be_bytes([
                            f.param[2], f.param[3], f.param[4], f.param[5],
                        ]));
                    }
                }
            }
            if unknown > 0 {
                f.settings_unknown = true;
            }
        }
        _ => {
            // Keep the first bytes while they are contiguous from the payload start.
            let offset = (f.len - f.left) as usize;
            if offset == usize::from(f.lead_len) && offset < f.lead.len() {
                let n = known.len().min(f.lead.len() - offset);
                f.lead[offset..offset + n].copy_from_slice(&known[..n]);
                f.lead_len += n as u8;
            }
        }
    }
    Ok(())
}

/// Removes the pad length, priority fields, promised stream id and padding of a header
/// block frame from the collected block (RFC 9113 §6.2, §6.6).
fn strip_fragment(side: &mut Side, f: &Frame) -> Step {
    let start = f.frag_start;
    let mut head = 0usize;
    let mut pad = 0usize;
    if f.kind != CONTINUATION && f.flags & PADDED != 0 {
        pad = usize::from(*side.block.get(start).ok_or(GiveUp)?);
        head = 1;
    }
    if f.kind == HEADERS && f.flags & PRIORITY != 0 {
        head += 5;
    }
    if f.kind == PUSH_PROMISE {
        head += 4;
    }
    if head + pad > f.len as usize {
        // RFC 9113 §6.2: padding that leaves no room is a PROTOCOL_ERROR.
        return Err(GiveUp);
    }
    side.block.truncate(side.block.len() - pad);
    side.block.drain(start..start + head);
    Ok(())
}

/// The fields of a header block that exchanges need.
#[derive(Debug, Default)]
struct Fields {
    method: Option<&'static str>,
    path: Option<(String, bool)>,
    /// `traceparent` fields seen (two make the context invalid, W3C Trace Context §3.2),
    /// and the value of the first when it is valid.
    traceparents: u8,
    traceparent: Option<Box<[u8; TRACEPARENT_LEN]>>,
    status: Option<u16>,
    grpc: bool,
    grpc_status: Option<u32>,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b":method" => self.method = Some(method_name(value)),
            b":path" => self.path = Some(bounded(value, MAX_PATH)),
            b":status" => self.status = parse_status(value),
            b"content-type" => {
                self.grpc =
                    value.len() >= 16 && value[..16].eq_ignore_ascii_case(b"application/grpc")
            }
            b"grpc-status" => self.grpc_status = parse_u32(value),
            b"traceparent" => {
                self.traceparents = self.traceparents.saturating_add(1);
                self.traceparent = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| valid_traceparent(v))
                    .and_then(|v| v.as_bytes().try_into().ok())
                    .map(Box::new);
            }
            _ => {}
        }
    }
}

/// Request methods kept as label values (RFC 9110 §9.1 and PATCH, RFC 5789).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn method_name(value: &[u8]) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.as_bytes() == value)
        .copied()
        .unwrap_or(OTHER)
}

/// At most `max` bytes of `value` as UTF-8 (lossy), and whether it was cut.
fn bounded(value: &[u8], max: usize) -> (String, bool) {
    let cut = value.len() > max;
    let mut s = String::from_utf8_lossy(&value[..value.len().min(max)]).into_owned();
    // Replacement characters can make the string longer than the bytes it came from.
    while s.len() > max {
        s.pop();
    }
    (s, cut)
}

/// A 3-digit status code (RFC 9110 §15).
fn parse_status(v: &[u8]) -> Option<u16> {
    match v {
        [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n).ok()
}

/// `package.Service` and `Method` from a gRPC `:path` (`/package.Service/Method`), or
/// `_OTHER` for both when the path is not of that shape.
pub fn grpc_names(path: &str) -> (String, String) {
    fn identifier(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
    }
    let parsed = path.strip_prefix('/').and_then(|rest| {
        let (service, method) = rest.split_once('/')?;
        let ok = service.len() <= MAX_GRPC_NAME
            && method.len() <= MAX_GRPC_NAME
            && service.split('.').all(identifier)
            && identifier(method);
        ok.then(|| (service.to_string(), method.to_string()))
    });
    parsed.unwrap_or_else(|| (OTHER.to_string(), OTHER.to_string()))
}

fn exchange(stream_id: u32, st: Stream, end_ns: u64, reset: bool) -> H2Exchange {
    let grpc = st.grpc.then(|| {
        let (service, method) = if st.path_truncated {
            (OTHER.to_string(), OTHER.to_string())
        } else {
            grpc_names(&st.path)
        };
        GrpcInfo {
            service,
            method,
            status: if reset { None } else { st.grpc_status },
        }
    });
    H2Exchange {
        method: st.method.to_string(),
        path: st.path,
        status: st.status,
        grpc,
        request_body_bytes: st.request_body_bytes,
        response_body_bytes: st.response_body_bytes,
        start_ns: st.start_ns,
        end_ns: end_ns.max(st.start_ns),
        // Validated: lower-case hex digits and dashes.
        traceparent: st
            .traceparent
            .map(|t| String::from_utf8_lossy(&t[..]).into_owned()),
        stream_id,
    }
}

// ---- the protocol registry's session ------------------------------------------------------

/// gRPC status UNKNOWN (2): a stream reset without grpc-status failed for a reason the
/// wire does not say.
const GRPC_UNKNOWN: u32 = 2;

/// `:path` without its query and fragment, reusing its buffer.
fn url_path(mut path: String) -> UrlPath {
    if let Some(end) = path.find(['?', '#']) {
        path.truncate(end);
    }
    if path.is_empty() {
        UrlPath::Unknown
    } else {
        UrlPath::Path(path.into_boxed_str())
    }
}

impl H2Exchange {
    /// This stream as a request record: a gRPC call, or an HTTP request whose route comes
    /// from the user's patterns first.
    fn into_request(self, routes: &RoutePatterns) -> Request {
        let attributes = match self.grpc {
            Some(grpc) => Attributes::Rpc(RpcRequest {
                system: "grpc",
                service: grpc.service,
                method: grpc.method,
                status: grpc.status.unwrap_or(GRPC_UNKNOWN),
                traceparent: self.traceparent,
            }),
            None => Attributes::Http(HttpRequest {
                method: method_label(self.method.as_bytes()),
                status: self.status,
                route: routes.route(&self.path),
                path: url_path(self.path),
                request_body_bytes: self.request_body_bytes,
                response_body_bytes: self.response_body_bytes,
                traceparent: self.traceparent,
            }),
        };
        Request {
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            attributes,
            stream: Some(self.stream_id),
        }
    }
}

/// An HTTP/2 session as the registry holds it: the session itself stays small, and the
/// route patterns that turn its streams into requests sit beside it.
struct Registered {
    session: H2Session,
    /// The user's route patterns, for the `http.route` of requests that are not gRPC.
    routes: Arc<RoutePatterns>,
}

/// An HTTP/2 (and gRPC) session for [`super::PROTOCOLS`].
pub fn new_session(options: &SessionOptions) -> Box<dyn Session> {
    Box::new(Registered {
        session: H2Session::new(),
        routes: options.http_routes.clone(),
    })
}

impl Session for Registered {
    fn client_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        let routes = &self.routes;
        let mut out = Requests(out, |ex: H2Exchange| ex.into_request(routes));
        self.session.on_client(chunk, &mut out);
    }

    fn server_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        let routes = &self.routes;
        let mut out = Requests(out, |ex: H2Exchange| ex.into_request(routes));
        self.session.on_server(chunk, &mut out);
    }

    fn finish(&mut self, out: &mut Vec<Request>) {
        let routes = &self.routes;
        let mut out = Requests(out, |ex: H2Exchange| ex.into_request(routes));
        self.session.finish(&mut out);
    }

    fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        self.session.expire(now_ns, timeout_ns);
    }

    fn take_health(&mut self) -> SessionHealth {
        self.session.take_health()
    }

    fn pending(&self) -> usize {
        self.session.pending()
    }

    fn skip_hint(&self, from_client: bool) -> u64 {
        self.session.skip_hint(from_client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::StopReason;

    // ---- fixtures ------------------------------------------------------------------------

    use crate::protocols::test_fixtures::Fixture;

    /// A connection captured between real clients and servers (see
    /// tests/fixtures/http2/README.md).
    fn fixture(name: &str) -> Fixture {
        crate::protocols::test_fixtures::load("http2", name)
    }

    /// One syscall as the capture layer would hand it over.
    #[derive(Clone, Copy, Debug)]
    struct Piece<'a> {
        client: bool,
        data: &'a [u8],
        len: usize,
    }

    /// The fixture's recv() calls, as syscalls, interleaved as they happened.
    fn logged(f: &Fixture) -> Vec<Piece<'_>> {
        let (mut q, mut r) = (0, 0);
        f.order
            .iter()
            .map(|&(client, n)| {
                let (buf, at) = if client {
                    (&f.req, &mut q)
                } else {
                    (&f.resp, &mut r)
                };
                let data = &buf[*at..*at + n];
                *at += n;
                Piece {
                    client,
                    data,
                    len: n,
                }
            })
            .collect()
    }

    /// All client bytes, then all server bytes, one syscall each.
    fn whole(f: &Fixture) -> Vec<Piece<'_>> {
        vec![
            Piece {
                client: true,
                data: &f.req,
                len: f.req.len(),
            },
            Piece {
                client: false,
                data: &f.resp,
                len: f.resp.len(),
            },
        ]
    }

    /// Each syscall keeps only its first `keep` bytes; `len` stays true.
    fn truncated<'a>(pieces: &[Piece<'a>], keep: usize) -> Vec<Piece<'a>> {
        pieces
            .iter()
            .map(|p| Piece {
                data: &p.data[..p.data.len().min(keep)],
                ..*p
            })
            .collect()
    }

    struct Outcome {
        exchanges: Vec<H2Exchange>,
        health: SessionHealth,
        pending: usize,
    }

    /// Piece `i` runs from `1000 * (i + 1)` to that plus 500 ns.
    fn time_of(i: usize) -> u64 {
        1000 * (i as u64 + 1)
    }

    fn run(pieces: &[Piece<'_>]) -> Outcome {
        let mut s = H2Session::new();
        let mut exchanges = Vec::new();
        let mut health = SessionHealth::default();
        for (i, p) in pieces.iter().enumerate() {
            feed_piece(&mut s, p, time_of(i), &mut exchanges);
            let h = s.take_health();
            health.parse_errors += h.parse_errors;
            health.timed_out += h.timed_out;
            health.lost.merge(&h.lost);
            health.stopped = health.stopped.or(h.stopped);
        }
        Outcome {
            exchanges,
            health,
            pending: s.pending(),
        }
    }

    fn check_bounds(s: &H2Session) {
        let Some(st) = &s.state else {
            return;
        };
        assert!(
            st.streams.len() <= MAX_STREAMS,
            "{} streams open",
            st.streams.len()
        );
        for side in [&st.client, &st.server] {
            assert!(
                side.block.len() <= MAX_HEADER_BLOCK,
                "block of {}",
                side.block.len()
            );
            assert!(side.unacked.len() <= MAX_UNACKED_SETTINGS);
            assert!(side.hpack.max_size() <= hpack::MAX_TABLE_SIZE);
            assert!(
                side.hpack.heap_bytes() <= 4 * hpack::MAX_TABLE_SIZE,
                "{}",
                side.hpack.heap_bytes()
            );
        }
        for stream in st.streams.values() {
            assert!(stream.path.len() <= MAX_PATH);
        }
    }

    /// `METHOD PATH STATUS req=N resp=N` and ` grpc=SERVICE/METHOD:STATUS` (`-` for none).
    fn summary(e: &H2Exchange) -> String {
        let mut s = format!(
            "{} {} {} req={} resp={}",
            e.method, e.path, e.status, e.request_body_bytes, e.response_body_bytes
        );
        if let Some(g) = &e.grpc {
            let status = g.status.map_or("-".to_string(), |c| c.to_string());
            s.push_str(&format!(" grpc={}/{}:{status}", g.service, g.method));
        }
        s
    }

    fn sorted(exchanges: &[H2Exchange]) -> Vec<String> {
        let mut v: Vec<String> = exchanges.iter().map(summary).collect();
        v.sort();
        v
    }

    /// A gRPC call of the fixture service.
    fn echo(method: &str, req: u64, status: u16, resp: u64, grpc: Option<u32>) -> String {
        let g = grpc.map_or("-".to_string(), |c| c.to_string());
        format!(
            "POST /nodetap.test.Echo/{method} {status} req={req} resp={resp} \
             grpc=nodetap.test.Echo/{method}:{g}"
        )
    }

    fn get(path: &str, status: u16, resp: u64) -> String {
        format!("GET {path} {status} req=0 resp={resp}")
    }

    /// Body sizes: protobuf messages of capture.py plus gRPC's 5-byte message prefix; nginx's
    /// files and error pages.
    fn expected(name: &str) -> Vec<String> {
        let mut v = match name {
            // msg("hello") = 7 bytes; msg("echo hello") = 12 bytes.
            "grpc_unary" => vec![echo("Unary", 12, 200, 17, Some(0))],
            // 100,000 random-ish bytes each way, in frames of at most 16,384 bytes.
            "grpc_large" => vec![echo("Unary", 100_021, 200, 100_014, Some(0))],
            "grpc_server_stream" => vec![
                // five messages of 13 bytes
                echo("ServerStream", 14, 200, 65, Some(0)),
                // three messages of 8 bytes
                echo("ClientStream", 24, 200, 12, Some(0)),
            ],
            "grpc_errors" => vec![
                // Trailers-Only: one HEADERS frame with :status and grpc-status.
                echo("Unary", 16, 200, 0, Some(5)),
                // Two messages, then trailers with INVALID_ARGUMENT.
                echo("ServerStream", 19, 200, 26, Some(3)),
                // UNIMPLEMENTED from the server's router, Trailers-Only.
                echo("NoSuchMethod", 8, 200, 0, Some(12)),
                echo("Unary", 9, 200, 14, Some(0)),
            ],
            "grpc_cancel" => vec![
                // Cancelled by the client (RST_STREAM) after two messages.
                echo("ServerStream", 11, 200, 26, None),
                // Deadline exceeded: reset by the client before any response.
                echo("Unary", 16, 0, 0, None),
                echo("Unary", 12, 200, 17, Some(0)),
            ],
            "grpc_concurrent" => {
                let mut v = vec![echo("Unary", 13, 200, 18, Some(0))];
                for i in 0..64 {
                    v.push(match i {
                        _ if i % 2 == 1 => echo("Unary", 17, 200, 22, Some(0)),
                        0..=9 => echo("Unary", 9, 200, 14, Some(0)),
                        _ => echo("Unary", 10, 200, 15, Some(0)),
                    });
                }
                v
            }
            "curl_get" => vec![get("/index.html", 200, 65)],
            "curl_404" => vec![get("/missing", 404, 153)],
            "curl_big" => vec![get("/big.bin", 200, 300_000)],
            "nginx_nghttp" => vec![
                get("/index.html", 200, 65),
                get("/style.css", 200, 380),
                get("/missing", 404, 153),
                get("/big.bin", 200, 300_000),
            ],
            "nginx_continuation" => vec![get("/index.html", 200, 65)],
            // nginx answers 405 after the first 16,384 body bytes; the rest of the body comes
            // after the response ended the stream, and is not counted.
            "nginx_post" => vec!["POST /index.html 405 req=16384 resp=157".to_string()],
            "nginx_h2load" => vec![get("/index.html", 200, 65); 100],
            _ => panic!("no expectation for fixture {name}"),
        };
        v.sort();
        v
    }

    /// The expectation when all client bytes come before all server bytes.
    fn expected_whole(name: &str) -> Vec<String> {
        let mut v = expected(name);
        for e in &mut v {
            match name {
                // The whole request body is seen before the response.
                "nginx_post" => *e = e.replace("req=16384", "req=30000"),
                // The client's RST_STREAM is seen before the server's response.
                "grpc_cancel" if e.contains("ServerStream") => {
                    *e = e.replace(" 200 ", " 0 ").replace("resp=26", "resp=0")
                }
                _ => {}
            }
        }
        v.sort();
        v
    }

    const FIXTURES: &[&str] = &[
        "grpc_unary",
        "grpc_large",
        "grpc_server_stream",
        "grpc_errors",
        "grpc_cancel",
        "grpc_concurrent",
        "curl_get",
        "curl_404",
        "curl_big",
        "nginx_nghttp",
        "nginx_continuation",
        "nginx_post",
        "nginx_h2load",
    ];

    fn assert_clean(name: &str, how: &str, o: &Outcome) {
        assert_exactly(name, how, o, &expected(name));
    }

    fn assert_exactly(name: &str, how: &str, o: &Outcome, want: &[String]) {
        assert_eq!(
            sorted(&o.exchanges),
            want,
            "{name} ({how}): exchanges differ"
        );
        assert_eq!(
            o.health,
            SessionHealth::default(),
            "{name} ({how}): health not clean"
        );
        assert_eq!(o.pending, 0, "{name} ({how}): streams left open");
    }

    /// Whatever was lost, what came out is a subset of the truth (same labels, same sizes).
    fn assert_subset(name: &str, how: &str, o: &Outcome) {
        let mut left = expected(name);
        for e in &o.exchanges {
            let s = summary(e);
            let i = left
                .iter()
                .position(|x| *x == s)
                .unwrap_or_else(|| panic!("{name} ({how}): unexpected exchange {s}"));
            left.remove(i);
            assert!(e.start_ns <= e.end_ns, "{name} ({how}): {e:?}");
        }
    }

    #[test]
    fn traceparent_of_http_and_grpc_requests() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut req = client_start();
        let requests: [&[(&str, &str)]; 4] = [
            &[(":method", "GET"), (":path", "/a"), ("traceparent", TP)],
            &[
                (":method", "POST"),
                (":path", "/pkg.Svc/M"),
                ("content-type", "application/grpc"),
                ("traceparent", TP),
            ],
            // Two fields: invalid (W3C Trace Context §3.2).
            &[
                (":method", "GET"),
                (":path", "/b"),
                ("traceparent", TP),
                ("traceparent", TP),
            ],
            &[
                (":method", "GET"),
                (":path", "/c"),
                (
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                ),
            ],
        ];
        let mut resp = settings(&[]);
        for (i, fields) in requests.iter().enumerate() {
            let id = 2 * i as u32 + 1;
            req.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block(fields)));
            resp.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &block(&[(":status", "200"), ("grpc-status", "0")]),
            ));
        }
        let mut s = H2Session::new();
        let mut out = Vec::new();
        s.on_client(&Chunk::whole(&req, 1, 2), &mut out);
        s.on_server(&Chunk::whole(&resp, 3, 4), &mut out);
        out.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<(&str, Option<&str>)> = out
            .iter()
            .map(|e| (e.path.as_str(), e.traceparent.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("/a", Some(TP)),
                ("/b", None),
                ("/c", None),
                ("/pkg.Svc/M", Some(TP))
            ]
        );
    }

    #[test]
    fn fixtures_whole() {
        for name in FIXTURES {
            assert_exactly(
                name,
                "whole",
                &run(&whole(&fixture(name))),
                &expected_whole(name),
            );
        }
    }

    #[test]
    fn fixtures_as_logged_with_times() {
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            let o = run(&pieces);
            assert_clean(name, "as logged", &o);
            for e in &o.exchanges {
                let at = |t: u64| (0..pieces.len()).find(|&i| time_of(i) == t);
                let s = at(e.start_ns).unwrap_or_else(|| panic!("{name}: start of {e:?}"));
                let end = at(e.end_ns - 500).unwrap_or_else(|| panic!("{name}: end of {e:?}"));
                assert!(pieces[s].client && s < end, "{name}: times of {e:?}");
                // Only a reset from the client ends a stream on a client chunk.
                let reset = e.grpc.as_ref().is_some_and(|g| g.status.is_none());
                assert!(!pieces[end].client || reset, "{name}: end of {e:?}");
            }
        }
    }

    #[test]
    fn fixture_timing_of_streams() {
        // Server streaming: the call lasts from the request HEADERS to the trailers, which
        // come after the five messages.
        let f = fixture("grpc_server_stream");
        let pieces = logged(&f);
        let o = run(&pieces);
        let call = o
            .exchanges
            .iter()
            .find(|e| e.path.ends_with("ServerStream"))
            .unwrap();
        let first_req = pieces
            .iter()
            .position(|p| p.client && p.data.windows(4).any(|w| w == [0, 0, 0, 1]));
        assert!(call.start_ns >= time_of(first_req.unwrap_or(0)));
        let resp_before_end: usize = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| !p.client && time_of(*i) + 500 <= call.end_ns)
            .map(|(_, p)| p.len)
            .sum();
        assert!(resp_before_end >= 65, "the end comes after the messages");
        // Concurrent calls on one connection each get their own start and end.
        let f = fixture("grpc_concurrent");
        let pieces = logged(&f);
        let o = run(&pieces);
        let starts: std::collections::BTreeSet<u64> =
            o.exchanges.iter().map(|e| e.start_ns).collect();
        let ends: std::collections::BTreeSet<u64> = o.exchanges.iter().map(|e| e.end_ns).collect();
        assert!(
            starts.len() > 1 && ends.len() > 10,
            "{} starts, {} ends",
            starts.len(),
            ends.len()
        );
        for e in &o.exchanges {
            assert!(e.start_ns < e.end_ns, "{e:?}");
        }
    }

    fn split_points(len: usize) -> Vec<usize> {
        if len <= 20_000 {
            (1..len).collect()
        } else {
            (1..len)
                .filter(|&k| k < 2000 || k > len - 2000 || k % 31 == 0)
                .collect()
        }
    }

    fn feed_piece(s: &mut H2Session, p: &Piece<'_>, t: u64, out: &mut Vec<H2Exchange>) {
        let c = Chunk {
            data: p.data,
            len: p.len,
            start_ns: t,
            end_ns: t + 500,
        };
        if p.client {
            s.on_client(&c, out);
        } else {
            s.on_server(&c, out);
        }
        check_bounds(s);
    }

    /// Every syscall split in two at every point (a stride in large ones): the session
    /// ends the two halves in the very state the whole syscall leaves it in (so whatever
    /// follows goes the same), having emitted the same exchanges. The halves carry the
    /// whole syscall's times, so times must match too.
    #[test]
    fn fixtures_split_everywhere() {
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            let mut s = H2Session::new();
            let mut out = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                let before = s.clone();
                let emitted = out.len();
                feed_piece(&mut s, p, time_of(i), &mut out);
                let after = format!("{s:?}");
                for k in split_points(p.len) {
                    let mut t = before.clone();
                    let mut o = Vec::new();
                    feed_piece(
                        &mut t,
                        &Piece {
                            data: &p.data[..k],
                            len: k,
                            ..*p
                        },
                        time_of(i),
                        &mut o,
                    );
                    feed_piece(
                        &mut t,
                        &Piece {
                            data: &p.data[k..],
                            len: p.len - k,
                            ..*p
                        },
                        time_of(i),
                        &mut o,
                    );
                    assert_eq!(
                        o,
                        out[emitted..],
                        "{name}: piece {i} split at {k}: exchanges differ"
                    );
                    assert!(
                        format!("{t:?}") == after,
                        "{name}: piece {i} split at {k}: state differs"
                    );
                }
            }
            let o = Outcome {
                exchanges: out,
                health: s.take_health(),
                pending: s.pending(),
            };
            assert_clean(name, "split everywhere", &o);
        }
    }

    /// xorshift64*: reproducible random splits without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_split<'a>(pieces: &[Piece<'a>], rng: &mut Rng, max: usize) -> Vec<Piece<'a>> {
        let mut v = Vec::new();
        for p in pieces {
            let mut at = 0;
            while at < p.len {
                let n = (1 + rng.below(max)).min(p.len - at);
                v.push(Piece {
                    data: &p.data[at..at + n],
                    len: n,
                    ..*p
                });
                at += n;
            }
        }
        v
    }

    #[test]
    fn fixtures_random_splits() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            for round in 0..24 {
                let max = [1, 2, 3, 9, 16, 64, 1000, 20000][round % 8];
                let v = random_split(&pieces, &mut rng, max);
                assert_clean(name, &format!("random split round {round}"), &run(&v));
            }
        }
    }

    /// Whether a capture of `pieces` lost bytes that the session needs: a frame header, or a
    /// byte of a header block. Computed apart from the session, by walking the frames of
    /// the whole streams and checking each needed byte against what its syscall copied.
    fn lost_needed_bytes(f: &Fixture, pieces: &[Piece<'_>]) -> bool {
        [true, false].into_iter().any(|client| {
            let stream = if client { &f.req } else { &f.resp };
            let mut copied = Vec::with_capacity(stream.len());
            for p in pieces.iter().filter(|p| p.client == client) {
                copied.extend((0..p.len).map(|i| i < p.data.len()));
            }
            assert_eq!(copied.len(), stream.len(), "pieces cover the stream");
            let mut i = if client { PREFACE.len() } else { 0 };
            while i + FRAME_HEADER <= stream.len() {
                let len = u32::from_be_bytes([0, stream[i], stream[i + 1], stream[i + 2]]) as usize;
                let kind = stream[i + 3];
                let needed = if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
                    FRAME_HEADER + len
                } else {
                    FRAME_HEADER
                };
                if copied[i..i + needed].iter().any(|c| !c) {
                    return true;
                }
                i += FRAME_HEADER + len;
            }
            false
        })
    }

    /// Either exact, or given up (once) exactly when needed bytes were lost, with nothing
    /// wrong emitted before.
    fn assert_exact_or_gave_up(name: &str, how: &str, f: &Fixture, pieces: &[Piece<'_>]) -> bool {
        let o = run(pieces);
        let lost = lost_needed_bytes(f, pieces);
        assert_eq!(
            o.health.stopped.is_some(),
            lost,
            "{name} ({how}): gave up iff needed bytes were lost"
        );
        if lost {
            assert_eq!(o.health.parse_errors, 1, "{name} ({how})");
            assert_eq!(o.pending, 0, "{name} ({how})");
            assert_subset(name, how, &o);
        } else {
            assert_clean(name, how, &o);
        }
        lost
    }

    #[test]
    fn fixtures_truncated() {
        // 256 bytes (the smallest capture length the agent accepts): the connections whose
        // syscalls carry several frames lose a frame header or a header block, and stop.
        // 2048 bytes (the default): the gRPC calls with small messages and the small nginx
        // responses are whole; large bodies cut frame headers (the proxy's reads, which
        // these pieces are, hold several of nginx's 8 KiB DATA frames each, and
        // nginx_continuation's 16 KiB HEADERS frame is cut).
        for (keep, survivors) in [
            (256, &["curl_get", "curl_404"][..]),
            (
                2048,
                &[
                    "grpc_unary",
                    "grpc_server_stream",
                    "grpc_errors",
                    "grpc_cancel",
                    "grpc_concurrent",
                    "curl_get",
                    "curl_404",
                    "nginx_post",
                    "nginx_h2load",
                ][..],
            ),
        ] {
            let mut kept = Vec::new();
            for name in FIXTURES {
                let f = fixture(name);
                let how = format!("truncated to {keep}");
                if !assert_exact_or_gave_up(name, &how, &f, &truncated(&logged(&f), keep)) {
                    kept.push(*name);
                }
            }
            assert_eq!(
                kept, survivors,
                "fixtures decoded whole when truncated to {keep}"
            );
        }
    }

    #[test]
    fn fixtures_random_truncation() {
        let mut rng = Rng(42);
        for name in FIXTURES {
            let f = fixture(name);
            let (mut lost, mut kept) = (0, 0);
            for round in 0..60 {
                let v = random_split(&logged(&f), &mut rng, 400);
                // Mostly whole syscalls, sometimes a random prefix.
                let v: Vec<Piece<'_>> = v
                    .iter()
                    .map(|p| {
                        let keep = if rng.below(4) == 0 {
                            rng.below(p.data.len() + 1)
                        } else {
                            p.data.len()
                        };
                        Piece {
                            data: &p.data[..keep],
                            ..*p
                        }
                    })
                    .collect();
                if assert_exact_or_gave_up(
                    name,
                    &format!("random truncation round {round}"),
                    &f,
                    &v,
                ) {
                    lost += 1;
                } else {
                    kept += 1;
                }
            }
            assert!(
                lost > 0,
                "{name}: random truncation never lost a needed byte ({kept} kept)"
            );
        }
    }

    #[test]
    fn fixtures_use_what_they_should() {
        // The fixtures exercise what they are said to (README.md): frame types and flags
        // seen per fixture, by a frame walk independent of the session.
        fn kinds(data: &[u8]) -> Vec<(u8, u8)> {
            let mut i = if data.starts_with(PREFACE) {
                PREFACE.len()
            } else {
                0
            };
            let mut v = Vec::new();
            while i + 9 <= data.len() {
                let len = u32::from_be_bytes([0, data[i], data[i + 1], data[i + 2]]) as usize;
                v.push((data[i + 3], data[i + 4]));
                i += 9 + len;
            }
            assert_eq!(i, data.len(), "frames end with the stream");
            v
        }
        let has = |name: &str, client: bool, kind: u8, flags: u8| {
            let f = fixture(name);
            kinds(if client { &f.req } else { &f.resp })
                .iter()
                .any(|&(k, fl)| k == kind && fl & flags == flags)
        };
        assert!(has("nginx_continuation", true, CONTINUATION, END_HEADERS));
        assert!(has("nginx_nghttp", true, HEADERS, PRIORITY));
        assert!(has("nginx_nghttp", true, 0x2, 0), "PRIORITY frames");
        assert!(has("grpc_cancel", true, RST_STREAM, 0));
        assert!(has("grpc_unary", true, 0x6, 0), "PING");
        assert!(
            has("nginx_post", false, RST_STREAM, 0),
            "RST_STREAM after the response"
        );
        assert!(has("nginx_h2load", true, GOAWAY, 0));
        // nghttp's encoder starts its first header block with a size update to 256
        // (RFC 7541 §6.3), then evicts: the requests still decode (fixtures_whole).
        let f = fixture("nginx_nghttp");
        let mut i = PREFACE.len();
        loop {
            let len = u32::from_be_bytes([0, f.req[i], f.req[i + 1], f.req[i + 2]]) as usize;
            if f.req[i + 3] == HEADERS {
                let flags = f.req[i + 4];
                let mut at = i + FRAME_HEADER;
                at += usize::from(flags & PADDED != 0);
                at += if flags & PRIORITY != 0 { 5 } else { 0 };
                let mut pos = at;
                assert_eq!(f.req[at] & 0xe0, 0x20, "a size update first");
                assert_eq!(hpack::integer(&f.req, &mut pos, 5), Ok(256));
                break;
            }
            i += FRAME_HEADER + len;
        }
    }

    // ---- synthetic frames ------------------------------------------------------------------

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.push(kind);
        v.push(flags);
        v.extend(stream.to_be_bytes());
        v.extend(payload);
        v
    }

    fn enc_int(flags: u8, n: u32, value: usize) -> Vec<u8> {
        let max = (1usize << n) - 1;
        if value < max {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | max as u8];
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
        out
    }

    /// A literal field with a literal name, indexed or not (RFC 7541 §6.2.1, §6.2.2).
    fn lit(name: &str, value: &str, index: bool) -> Vec<u8> {
        let mut v = vec![if index { 0x40 } else { 0x00 }];
        for s in [name, value] {
            v.extend(enc_int(0, 7, s.len()));
            v.extend(s.as_bytes());
        }
        v
    }

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        fields.iter().flat_map(|(n, v)| lit(n, v, false)).collect()
    }

    fn settings(params: &[(u16, u32)]) -> Vec<u8> {
        let p: Vec<u8> = params
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        frame(SETTINGS, 0, 0, &p)
    }

    fn client_start() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend(settings(&[(0x3, 100)]));
        v
    }

    fn grpc_request(stream: u32, path: &str) -> Vec<u8> {
        frame(
            HEADERS,
            END_HEADERS,
            stream,
            &block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]),
        )
    }

    fn get_request(stream: u32, path: &str) -> Vec<u8> {
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &block(&[(":method", "GET"), (":scheme", "http"), (":path", path)]),
        )
    }

    fn status(stream: u32, code: &str, end: bool) -> Vec<u8> {
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block(&[(":status", code)]))
    }

    fn trailers(stream: u32, grpc_status: &str) -> Vec<u8> {
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &block(&[("grpc-status", grpc_status)]),
        )
    }

    /// Drives a session with whole chunks; chunk `i` runs from `10 * (i + 1)` to `+ 5`.
    struct Driver {
        s: H2Session,
        out: Vec<H2Exchange>,
        t: u64,
    }

    impl Driver {
        fn new() -> Self {
            Self {
                s: H2Session::new(),
                out: Vec::new(),
                t: 0,
            }
        }
        fn client(&mut self, data: &[u8]) -> &mut Self {
            self.client_len(data, data.len())
        }
        fn client_len(&mut self, data: &[u8], len: usize) -> &mut Self {
            self.t += 10;
            let c = Chunk {
                data,
                len,
                start_ns: self.t,
                end_ns: self.t + 5,
            };
            self.s.on_client(&c, &mut self.out);
            check_bounds(&self.s);
            self
        }
        fn server(&mut self, data: &[u8]) -> &mut Self {
            self.server_len(data, data.len())
        }
        fn server_len(&mut self, data: &[u8], len: usize) -> &mut Self {
            self.t += 10;
            let c = Chunk {
                data,
                len,
                start_ns: self.t,
                end_ns: self.t + 5,
            };
            self.s.on_server(&c, &mut self.out);
            check_bounds(&self.s);
            self
        }
        fn summary(&self) -> Vec<String> {
            self.out.iter().map(summary).collect()
        }
    }

    #[test]
    fn detection() {
        assert!(looks_like_preface(PREFACE));
        assert!(looks_like_preface(&PREFACE[..16]));
        assert!(!looks_like_preface(&PREFACE[..15]));
        assert!(looks_like_preface(&client_start()));
        assert!(!looks_like_preface(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"));
        assert!(!looks_like_preface(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!looks_like_preface(b""));
        for name in FIXTURES {
            let f = fixture(name);
            assert!(
                looks_like_preface(logged(&f).iter().find(|p| p.client).unwrap().data),
                "{name}"
            );
        }
    }

    #[test]
    fn a_unary_call_by_hand() {
        let mut d = Driver::new();
        let mut req = client_start();
        req.extend(grpc_request(1, "/pkg.v1.Svc/Do"));
        req.extend(frame(DATA, END_STREAM, 1, &[0; 12]));
        d.client(&req);
        let mut resp = settings(&[]);
        resp.extend(frame(SETTINGS, ACK, 0, &[]));
        resp.extend(status(1, "200", false));
        resp.extend(frame(DATA, 0, 1, &[0; 7]));
        d.server(&resp);
        assert_eq!(d.s.pending(), 1);
        d.server(&trailers(1, "0"));
        assert_eq!(
            d.summary(),
            ["POST /pkg.v1.Svc/Do 200 req=12 resp=7 grpc=pkg.v1.Svc/Do:0"]
        );
        assert_eq!((d.out[0].start_ns, d.out[0].end_ns), (10, 35));
        assert_eq!(d.s.take_health(), SessionHealth::default());
        assert_eq!(d.s.pending(), 0);
    }

    #[test]
    fn padding_priority_and_continuation() {
        let mut d = Driver::new();
        d.client(&client_start());
        // HEADERS with PADDED and PRIORITY, the block split over two CONTINUATIONs.
        let b = block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/padded"),
        ]);
        let mut p = vec![3];
        p.extend([0x80, 0, 0, 0, 16]);
        p.extend(&b[..5]);
        p.extend([0, 0, 0]);
        d.client(&frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &p));
        d.client(&frame(CONTINUATION, 0, 1, &b[5..9]));
        assert_eq!(
            d.s.pending(),
            0,
            "the request is not open until its block ends"
        );
        d.client(&frame(CONTINUATION, END_HEADERS, 1, &b[9..]));
        assert_eq!(d.s.pending(), 1);
        // A padded DATA frame: 1 + 10 + 4 bytes, 10 of body.
        let mut p = vec![4];
        p.extend([7; 10]);
        p.extend([0; 4]);
        d.server(&status(1, "200", false));
        d.server(&frame(DATA, PADDED, 1, &p));
        // A padded DATA frame whose pad length was not copied: counted whole but one byte.
        d.server_len(&frame(DATA, PADDED | END_STREAM, 1, &[9; 21])[..9], 30);
        assert_eq!(d.summary(), ["GET /padded 200 req=0 resp=30"]);
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn padding_errors() {
        // In DATA: counted, the framing goes on.
        let mut d = Driver::new();
        d.client(&client_start()).client(&get_request(1, "/"));
        d.server(&status(1, "200", false))
            .server(&frame(DATA, PADDED | END_STREAM, 1, &[5, 0, 0]));
        assert_eq!(d.summary(), ["GET / 200 req=0 resp=0"]);
        let h = d.s.take_health();
        assert_eq!((h.parse_errors, h.stopped.is_some()), (1, false));
        // In HEADERS: the block cannot be trusted.
        let mut d = Driver::new();
        d.client(&client_start());
        d.client(&frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 0x82]));
        let h = d.s.take_health();
        assert_eq!((h.parse_errors, h.stopped.is_some()), (1, true));
    }

    #[test]
    fn continuation_rules() {
        for bad in [
            // A DATA frame inside a header block.
            [frame(HEADERS, 0, 1, &[0x82]), frame(DATA, 0, 1, &[])].concat(),
            // CONTINUATION of another stream.
            [
                frame(HEADERS, 0, 1, &[0x82]),
                frame(CONTINUATION, END_HEADERS, 3, &[]),
            ]
            .concat(),
            // CONTINUATION without a block.
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            // HEADERS on stream 0.
            frame(HEADERS, END_HEADERS, 0, &[0x82]),
        ] {
            let mut d = Driver::new();
            d.client(&client_start()).client(&bad);
            assert!(d.s.take_health().stopped.is_some(), "{bad:?}");
        }
    }

    #[test]
    fn resets() {
        let mut d = Driver::new();
        d.client(&client_start());
        d.client(&grpc_request(1, "/a.B/C"))
            .client(&grpc_request(3, "/a.B/C"));
        d.client(&get_request(5, "/x"));
        // Server resets 1 before any response; client resets 3 after the response headers.
        d.server(&frame(RST_STREAM, 0, 1, &7u32.to_be_bytes()));
        d.server(&status(3, "200", false));
        d.client(&frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()));
        // A reset after the end is nothing.
        d.server(&status(5, "204", true))
            .server(&frame(RST_STREAM, 0, 5, &[0; 4]));
        assert_eq!(
            d.summary(),
            [
                "POST /a.B/C 0 req=0 resp=0 grpc=a.B/C:-",
                "POST /a.B/C 200 req=0 resp=0 grpc=a.B/C:-",
                "GET /x 204 req=0 resp=0",
            ]
        );
        assert_eq!(
            d.out[1].end_ns,
            d.t - 20 + 5,
            "ends with the client's RST_STREAM"
        );
    }

    #[test]
    fn trailers_only_and_interim_responses() {
        let mut d = Driver::new();
        d.client(&client_start())
            .client(&grpc_request(1, "/a.B/C"))
            .client(&get_request(3, "/"));
        d.server(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(&[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
            ]),
        ));
        d.server(&status(3, "100", false))
            .server(&status(3, "200", true));
        assert_eq!(
            d.summary(),
            [
                "POST /a.B/C 200 req=0 resp=0 grpc=a.B/C:5",
                "GET / 200 req=0 resp=0"
            ]
        );
    }

    #[test]
    fn push_promise_changes_the_servers_table() {
        let mut d = Driver::new();
        d.client(&client_start()).client(&get_request(1, "/page"));
        // PUSH_PROMISE (padded) for stream 2 adds "x-pushed: yes" to the server's table...
        let mut p = vec![2];
        p.extend(2u32.to_be_bytes());
        p.extend(block(&[(":method", "GET"), (":path", "/style.css")]));
        p.extend(lit("x-pushed", "yes", true));
        p.extend([0, 0]);
        d.server(&frame(PUSH_PROMISE, PADDED | END_HEADERS, 1, &p));
        // ... which the response then references by index 62.
        let mut b = block(&[(":status", "200")]);
        b.push(0x80 | 62);
        d.server(&frame(HEADERS, END_HEADERS, 1, &b));
        // The pushed stream's response is not an exchange.
        d.server(&status(2, "200", false))
            .server(&frame(DATA, END_STREAM, 2, &[1; 40]));
        d.server(&frame(DATA, END_STREAM, 1, &[1; 3]));
        assert_eq!(d.summary(), ["GET /page 200 req=0 resp=3"]);
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn stream_cap_drops_the_oldest() {
        let mut d = Driver::new();
        d.client(&client_start());
        let mut reqs = Vec::new();
        for i in 0..=MAX_STREAMS as u32 {
            reqs.extend(get_request(2 * i + 1, "/"));
        }
        d.client(&reqs);
        assert_eq!(d.s.pending(), MAX_STREAMS);
        let h = d.s.take_health();
        assert_eq!((h.timed_out, h.lost.queue_full), (0, 1));
        d.server(&status(1, "200", true))
            .server(&status(3, "200", true));
        assert_eq!(d.summary(), ["GET / 200 req=0 resp=0"]);
        assert_eq!(d.s.pending(), MAX_STREAMS - 1);
    }

    #[test]
    fn header_table_size_settings() {
        // The server allows a 100-byte table; once the client acknowledges, its encoder may
        // not ask for 4096.
        let big = [
            enc_int(0x20, 5, 4096),
            block(&[(":method", "GET"), (":path", "/")]),
        ]
        .concat();
        let small = [
            enc_int(0x20, 5, 100),
            block(&[(":method", "GET"), (":path", "/")]),
        ]
        .concat();
        let mut d = Driver::new();
        d.client(&client_start());
        d.server(&settings(&[(SETTINGS_HEADER_TABLE_SIZE, 100)]));
        d.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &big));
        assert!(
            d.s.take_health().stopped.is_none(),
            "not acknowledged yet: 4096 still allowed"
        );
        d.client(&frame(SETTINGS, ACK, 0, &[]));
        d.client(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &small));
        assert!(d.s.take_health().stopped.is_none());
        d.client(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &big));
        assert!(
            d.s.take_health().stopped.is_some(),
            "4096 above the acknowledged 100"
        );
        // A larger table may be used as soon as it was offered.
        let mut d = Driver::new();
        d.client(&client_start());
        d.server(&settings(&[(SETTINGS_HEADER_TABLE_SIZE, 8192)]));
        let b = [
            enc_int(0x20, 5, 8192),
            block(&[(":method", "GET"), (":path", "/")]),
        ]
        .concat();
        d.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &b));
        assert!(d.s.take_health().stopped.is_none());
        // Beyond what the decoder keeps: give up.
        let mut d = Driver::new();
        d.client(&client_start());
        d.server(&settings(&[(SETTINGS_HEADER_TABLE_SIZE, 1 << 20)]));
        let b = [enc_int(0x20, 5, 1 << 20), block(&[(":method", "GET")])].concat();
        d.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &b));
        assert!(d.s.take_health().stopped.is_some());
        // SETTINGS whose parameters were not copied allow any size up to the cap.
        let mut d = Driver::new();
        d.client(&client_start());
        let s = settings(&[(0x3, 100), (SETTINGS_HEADER_TABLE_SIZE, 65536)]);
        d.server_len(&s[..12], s.len());
        let b = [
            enc_int(0x20, 5, 65536),
            block(&[(":method", "GET"), (":path", "/")]),
        ]
        .concat();
        d.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &b));
        assert!(d.s.take_health().stopped.is_none());
        assert_eq!(d.s.state.as_ref().unwrap().client.hpack.max_size(), 65536);
    }

    #[test]
    fn other_frames_are_skipped() {
        let mut d = Driver::new();
        let mut c = client_start();
        c.extend(frame(0x2, 0, 3, &[0, 0, 0, 1, 16])); // PRIORITY
        c.extend(frame(0x6, 0, 0, &[1; 8])); // PING
        c.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        c.extend(frame(0xfa, 0xff, 7, &[1, 2, 3])); // unknown type
        c.extend(get_request(1, "/"));
        d.client(&c);
        d.server(&[status(1, "200", true), frame(0x6, ACK, 0, &[1; 8])].concat());
        assert_eq!(d.summary(), ["GET / 200 req=0 resp=0"]);
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn large_bodies_are_skipped_by_length() {
        let mut d = Driver::new();
        let mut req = client_start();
        req.extend(grpc_request(1, "/a.B/C"));
        let data = frame(DATA, 0, 1, &vec![0; 100_000]);
        req.extend(&data[..100]);
        // 100,000 body bytes, 100 of the frame copied; then a frame in a later syscall.
        d.client_len(&req, req.len() - 100 + data.len());
        d.client(&frame(DATA, END_STREAM, 1, &[0; 5]));
        // The response's DATA frame header is in the copied part, its body is not, and the
        // trailers come in the next syscall.
        let head = [
            status(1, "200", false),
            frame(DATA, 0, 1, &[0; 50])[..9].to_vec(),
        ]
        .concat();
        // 50 declared, 70,000 moved: the frame ends and the next header is in lost bytes.
        d.server_len(&head, head.len() + 70_000);
        assert!(
            d.s.take_health().stopped.is_some(),
            "a frame header among lost bytes gives up"
        );
        let mut d = Driver::new();
        d.client_len(&req, req.len() - 100 + data.len());
        d.client(&frame(DATA, END_STREAM, 1, &[0; 5]));
        let mut head = [status(1, "200", false), frame(DATA, 0, 1, &[])].concat();
        let n = head.len();
        head[n - 9..n - 6].copy_from_slice(&[0x01, 0x11, 0x70]); // 70,000
        d.server_len(&head, head.len() + 70_000);
        d.server(&trailers(1, "0"));
        assert_eq!(
            d.summary(),
            ["POST /a.B/C 200 req=100005 resp=70000 grpc=a.B/C:0"]
        );
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn skip_hints() {
        let mut d = Driver::new();
        d.client(&client_start()).client(&get_request(1, "/a"));
        d.server(&status(1, "200", false));
        let data = frame(DATA, END_STREAM, 1, &[b'x'; 10_000]);
        d.server(&data[..FRAME_HEADER + 100]);
        assert_eq!(d.s.skip_hint(false), 9_900, "the rest of the DATA payload");
        d.server_len(&[], 9_900);
        assert_eq!(d.s.skip_hint(false), 0, "a frame header comes next");
        // Padded DATA: the pad length is read first.
        d.client(&get_request(3, "/b"));
        d.server(&status(3, "200", false));
        let mut padded = vec![4u8];
        padded.extend([b'y'; 1000]);
        padded.extend([0u8; 4]);
        let data = frame(DATA, END_STREAM | PADDED, 3, &padded);
        d.server(&data[..FRAME_HEADER]);
        assert_eq!(d.s.skip_hint(false), 0, "pad length not seen yet");
        d.server(&data[FRAME_HEADER..FRAME_HEADER + 1]);
        assert_eq!(d.s.skip_hint(false), 1004);
        d.server_len(&[], 1004);
        // A header block is never skipped.
        let req = get_request(5, "/c");
        d.client(&req[..FRAME_HEADER + 1]);
        assert_eq!(d.s.skip_hint(true), 0);
        d.client(&req[FRAME_HEADER + 1..]);
        assert_eq!(
            d.summary(),
            ["GET /a 200 req=0 resp=10000", "GET /b 200 req=0 resp=1000"]
        );
        assert_eq!(d.s.take_health(), SessionHealth::default());
        assert_eq!(d.s.pending(), 1);
    }

    #[test]
    fn a_header_block_in_lost_bytes_gives_up_for_good() {
        let mut d = Driver::new();
        d.client(&client_start())
            .client(&get_request(1, "/a"))
            .client(&get_request(3, "/b"));
        d.server(&status(1, "200", true));
        let r = get_request(5, "/c");
        d.client_len(&r[..12], r.len());
        let h = d.s.take_health();
        assert_eq!(
            (h.parse_errors, h.timed_out, h.lost.stopped, h.stopped),
            (1, 0, 1, Some(StopReason::HpackDesync))
        );
        assert!(d.s.state.is_none(), "state is freed");
        assert_eq!(d.s.pending(), 0);
        // Nothing more comes out, and no more errors are counted.
        d.server(&status(3, "200", true))
            .client(&get_request(7, "/d"));
        assert_eq!(d.summary(), ["GET /a 200 req=0 resp=0"]);
        // `stopped` was reported once.
        assert_eq!(d.s.take_health(), SessionHealth::default());
        assert!(std::mem::size_of::<H2Session>() <= 96);
    }

    #[test]
    fn a_frame_header_in_lost_bytes_gives_up() {
        let mut d = Driver::new();
        let c = client_start();
        d.client_len(&c[..30], c.len());
        assert!(d.s.take_health().stopped.is_some());
        // The preface itself may be missing (the capture already recognised it).
        let mut d = Driver::new();
        d.client_len(&[], 24)
            .client(&get_request(1, "/"))
            .server(&status(1, "200", true));
        assert_eq!(d.summary(), ["GET / 200 req=0 resp=0"]);
    }

    #[test]
    fn not_a_preface_gives_up() {
        let mut d = Driver::new();
        d.client(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
        assert!(d.s.take_health().stopped.is_some());
        let mut d = Driver::new();
        d.client(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(d.s.take_health().stopped.is_some());
    }

    #[test]
    fn goaway_drops_unprocessed_streams() {
        let mut d = Driver::new();
        d.client(&client_start());
        for i in 0..4 {
            d.client(&get_request(2 * i + 1, "/"));
        }
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend(0u32.to_be_bytes());
        d.server(&frame(GOAWAY, 0, 0, &p));
        assert_eq!(d.s.pending(), 2);
        assert_eq!(d.s.take_health().timed_out, 2);
        d.server(&status(1, "200", true))
            .server(&status(3, "200", true));
        assert_eq!(d.out.len(), 2);
    }

    #[test]
    fn expire_and_finish() {
        let mut d = Driver::new();
        d.client(&client_start()).client(&get_request(1, "/old"));
        d.client(&grpc_request(3, "/a.B/Watch"));
        d.server(&status(3, "200", false));
        d.s.expire(1000, 975);
        assert_eq!(d.s.take_health().timed_out, 1);
        assert_eq!(d.s.pending(), 1);
        // The connection ends: the streaming call ends with it, without a gRPC status.
        let mut out = Vec::new();
        d.s.finish(&mut out);
        assert_eq!(
            out.iter().map(summary).collect::<Vec<_>>(),
            ["POST /a.B/Watch 200 req=0 resp=0 grpc=a.B/Watch:-"]
        );
        assert_eq!(out[0].end_ns, d.t + 5);
        assert_eq!(d.s.pending(), 0);
    }

    #[test]
    fn new_requests_only() {
        let mut d = Driver::new();
        d.client(&client_start()).client(&get_request(5, "/five"));
        // Request trailers, and a stream id that went backwards, are not new requests.
        d.client(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            5,
            &block(&[("x-checksum", "1")]),
        ));
        d.client(&get_request(3, "/three"));
        assert_eq!(d.s.pending(), 1);
        d.server(&status(5, "200", true))
            .server(&status(3, "200", true));
        assert_eq!(d.summary(), ["GET /five 200 req=0 resp=0"]);
    }

    #[test]
    fn label_values_are_bounded() {
        assert_eq!(
            grpc_names("/pkg.v1.Svc/Do"),
            ("pkg.v1.Svc".into(), "Do".into())
        );
        assert_eq!(grpc_names("/Svc/Do_2"), ("Svc".into(), "Do_2".into()));
        for bad in [
            "",
            "/",
            "/Svc",
            "/Svc/",
            "//Do",
            "/a..b/Do",
            "/.a/Do",
            "/a./Do",
            "/a b/Do",
            "/a/b/c",
            "/a/Do?x=1",
            "/1a/Do",
            "/a-b/Do",
            "Svc/Do",
            "/a/é",
        ] {
            assert_eq!(grpc_names(bad), (OTHER.into(), OTHER.into()), "{bad:?}");
        }
        let long = format!("/{}/Do", "a".repeat(MAX_GRPC_NAME + 1));
        assert_eq!(grpc_names(&long).0, OTHER);
        let ok = format!("/{}/Do", "a".repeat(MAX_GRPC_NAME));
        assert_eq!(grpc_names(&ok).1, "Do");
        assert_eq!(method_name(b"GET"), "GET");
        assert_eq!(method_name(b"get"), OTHER);
        assert_eq!(method_name(b"PROPFIND"), OTHER);
        assert_eq!(
            bounded(&[b'a'; 600], MAX_PATH),
            ("a".repeat(MAX_PATH), true)
        );
        assert!(bounded(&[0xff; 600], MAX_PATH).0.len() <= MAX_PATH);
        assert_eq!(parse_status(b"200"), Some(200));
        assert_eq!(parse_status(b"99"), None);
        assert_eq!(parse_status(b"600"), None);
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        // A long path through a whole session: kept bounded, gRPC names refused.
        let mut d = Driver::new();
        let path = format!("/{}/M", "s".repeat(1000));
        d.client(&client_start()).client(&grpc_request(1, &path));
        d.server(&trailers(1, "0"));
        assert_eq!(d.out[0].path.len(), MAX_PATH);
        assert_eq!(d.out[0].grpc.as_ref().unwrap().service, OTHER);
    }

    #[test]
    fn session_is_small() {
        assert!(
            std::mem::size_of::<H2Session>() <= 64,
            "{}",
            std::mem::size_of::<H2Session>()
        );
        assert!(
            std::mem::size_of::<Stream>() <= 96,
            "{}",
            std::mem::size_of::<Stream>()
        );
    }

    // ---- properties ------------------------------------------------------------------------

    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Syscall {
        client: bool,
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
                .prop_map(|(client, data, extra, gap_ns)| Syscall {
                    client,
                    data,
                    extra,
                    gap_ns,
                }),
            0..40,
        )
    }

    fn feed(calls: &[Syscall], preface: bool) {
        let mut s = H2Session::new();
        let mut out = Vec::new();
        let mut t = 0;
        if preface {
            s.on_client(&Chunk::whole(PREFACE, 0, 0), &mut out);
        }
        for c in calls {
            t += c.gap_ns;
            let chunk = Chunk {
                data: &c.data,
                len: c.data.len() + c.extra,
                start_ns: t,
                end_ns: t + 10,
            };
            if c.client {
                s.on_client(&chunk, &mut out);
            } else {
                s.on_server(&chunk, &mut out);
            }
            check_bounds(&s);
            if t % 7 == 0 {
                s.expire(t, 2000);
            }
        }
        s.finish(&mut out);
        for e in &out {
            assert!(
                METHODS.contains(&e.method.as_str()) || e.method == OTHER,
                "{e:?}"
            );
            assert!(e.path.len() <= MAX_PATH);
            if let Some(g) = &e.grpc {
                assert!(g.service.len() <= MAX_GRPC_NAME && g.method.len() <= MAX_GRPC_NAME);
            }
        }
        let _ = s.take_health();
    }

    /// Bytes made of frames with random types, flags, small lengths and random payloads
    /// (sometimes HPACK-looking), to reach deep states.
    fn frame_noise() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            (
                prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
                prop::sample::select(vec![0u8, 1, 4, 5, 8, 0x20, 0x25, 0x2d]),
                prop::sample::select(vec![0u32, 1, 2, 3, 5]),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..40),
                    Just(block(&[
                        (":method", "POST"),
                        (":path", "/a.B/C"),
                        ("content-type", "application/grpc")
                    ])),
                    Just(block(&[(":status", "200"), ("grpc-status", "0")])),
                    Just(vec![0x82, 0x84, 0x86]),
                    Just(vec![0, 1, 0, 0, 0x10, 0]),
                ],
            )
                .prop_map(|(k, f, s, p)| frame(k, f, s, &p)),
            0..8,
        )
        .prop_map(|v| v.concat())
    }

    /// One request and what the server does with it.
    #[derive(Clone, Debug)]
    struct Call {
        grpc: bool,
        path: String,
        req_body: Vec<usize>,
        resp_body: Vec<usize>,
        status: u16,
        grpc_status: Option<u32>,
        reset: bool,
        indexed: bool,
    }

    fn call() -> impl Strategy<Value = Call> {
        (
            any::<bool>(),
            prop::sample::select(vec![
                "/a.B/C",
                "/pkg.v1.Svc/Get",
                "/index.html",
                "/x?y=1",
                "/bad path/M",
            ]),
            prop::collection::vec(0usize..3000, 0..3),
            prop::collection::vec(0usize..3000, 0..3),
            prop::sample::select(vec![200u16, 404, 503]),
            prop::option::of(0u32..17),
            prop_oneof![5 => Just(false), 1 => Just(true)],
            any::<bool>(),
        )
            .prop_map(
                |(grpc, path, req_body, resp_body, status, grpc_status, reset, indexed)| Call {
                    grpc,
                    path: path.to_string(),
                    req_body,
                    resp_body,
                    status,
                    grpc_status,
                    reset,
                    indexed,
                },
            )
    }

    /// Client and server byte streams for `calls`, all requests first (each stream's
    /// request frames together), then the responses in order; and the expected summaries.
    fn conversation(calls: &[Call]) -> (Vec<u8>, Vec<u8>, Vec<String>) {
        let mut req = client_start();
        let mut resp = settings(&[(SETTINGS_HEADER_TABLE_SIZE, 4096)]);
        resp.extend(frame(SETTINGS, ACK, 0, &[]));
        req.extend(frame(SETTINGS, ACK, 0, &[]));
        let mut want = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            let id = 2 * i as u32 + 1;
            let mut b = Vec::new();
            b.extend(lit(
                ":method",
                if c.grpc { "POST" } else { "GET" },
                c.indexed,
            ));
            b.extend(lit(":path", &c.path, c.indexed));
            if c.grpc {
                b.extend(lit("content-type", "application/grpc+proto", c.indexed));
            }
            let end = if c.req_body.is_empty() { END_STREAM } else { 0 };
            req.extend(frame(HEADERS, END_HEADERS | end, id, &b));
            for (k, &n) in c.req_body.iter().enumerate() {
                let last = k + 1 == c.req_body.len();
                req.extend(frame(
                    DATA,
                    if last { END_STREAM } else { 0 },
                    id,
                    &vec![0xab; n],
                ));
            }
            if c.reset {
                resp.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 2]));
            } else {
                let code = c.status.to_string();
                let only = c.resp_body.is_empty() && c.grpc;
                let mut b = lit(":status", &code, c.indexed);
                if only {
                    if let Some(g) = c.grpc_status {
                        b.extend(lit("grpc-status", &g.to_string(), c.indexed));
                    }
                }
                let plain_end = !c.grpc && c.resp_body.is_empty();
                let end = if only || plain_end { END_STREAM } else { 0 };
                resp.extend(frame(HEADERS, END_HEADERS | end, id, &b));
                for (k, &n) in c.resp_body.iter().enumerate() {
                    let last = k + 1 == c.resp_body.len() && !c.grpc;
                    resp.extend(frame(
                        DATA,
                        if last { END_STREAM } else { 0 },
                        id,
                        &vec![0xcd; n],
                    ));
                }
                if c.grpc && !only {
                    let b = c.grpc_status.map_or(Vec::new(), |g| {
                        lit("grpc-status", &g.to_string(), c.indexed)
                    });
                    resp.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &b));
                }
            }
            let e = H2Exchange {
                method: if c.grpc { "POST" } else { "GET" }.to_string(),
                path: c.path.clone(),
                status: if c.reset { 0 } else { c.status },
                grpc: c.grpc.then(|| {
                    let (service, method) = grpc_names(&c.path);
                    GrpcInfo {
                        service,
                        method,
                        status: if c.reset { None } else { c.grpc_status },
                    }
                }),
                request_body_bytes: c.req_body.iter().sum::<usize>() as u64,
                response_body_bytes: if c.reset {
                    0
                } else {
                    c.resp_body.iter().sum::<usize>() as u64
                },
                traceparent: None,
                start_ns: 0,
                end_ns: 0,
                stream_id: id,
            };
            want.push(summary(&e));
        }
        want.sort();
        (req, resp, want)
    }

    fn cut<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();
        points.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_never_panic(
            calls in syscalls(prop::collection::vec(any::<u8>(), 0..300).boxed()),
            preface in any::<bool>(),
        ) {
            feed(&calls, preface);
        }

        #[test]
        fn frame_noise_never_panics(calls in syscalls(frame_noise().boxed())) {
            feed(&calls, true);
        }

        /// Valid conversations with a few bytes changed: deep states, any outcome but a
        /// panic or unbounded memory.
        #[test]
        fn mutated_conversations_never_panic(
            calls in prop::collection::vec(call(), 1..8),
            flips in prop::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let (mut req, mut resp, _) = conversation(&calls);
            for (at, byte, client) in &flips {
                let v = if *client { &mut req } else { &mut resp };
                let i = at % v.len();
                v[i] = *byte;
            }
            let mut s = H2Session::new();
            let mut out = Vec::new();
            let mut t = 0;
            for c in cut(&req, &cuts) {
                t += 10;
                s.on_client(&Chunk::whole(c, t, t + 1), &mut out);
                check_bounds(&s);
            }
            for c in cut(&resp, &cuts) {
                t += 10;
                s.on_server(&Chunk::whole(c, t, t + 1), &mut out);
                check_bounds(&s);
            }
            s.expire(t, 5);
            s.finish(&mut out);
            for e in &out {
                prop_assert!(e.path.len() <= MAX_PATH && e.start_ns <= e.end_ns);
            }
        }

        #[test]
        fn valid_conversations_match_exactly(
            calls in prop::collection::vec(call(), 1..12),
            req_cuts in prop::collection::vec(any::<usize>(), 0..20),
            resp_cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let (req, resp, want) = conversation(&calls);
            let mut s = H2Session::new();
            let mut out = Vec::new();
            let mut t = 0;
            for c in cut(&req, &req_cuts) {
                t += 10;
                s.on_client(&Chunk::whole(c, t, t + 1), &mut out);
            }
            for c in cut(&resp, &resp_cuts) {
                t += 10;
                s.on_server(&Chunk::whole(c, t, t + 1), &mut out);
            }
            prop_assert_eq!(sorted(&out), want);
            prop_assert_eq!(s.take_health(), SessionHealth::default());
            prop_assert_eq!(s.pending(), 0);
        }

        #[test]
        fn truncated_conversations_never_mislabel(
            calls in prop::collection::vec(call(), 1..12),
            req_cuts in prop::collection::vec(any::<usize>(), 0..20),
            resp_cuts in prop::collection::vec(any::<usize>(), 0..20),
            keep in prop::collection::vec(0usize..400, 40),
        ) {
            let (req, resp, want) = conversation(&calls);
            let mut s = H2Session::new();
            let mut out = Vec::new();
            let mut t = 0;
            let mut k = keep.iter().cycle();
            for c in cut(&req, &req_cuts) {
                t += 10;
                let n = (*k.next().unwrap()).min(c.len());
                s.on_client(&Chunk { data: &c[..n], len: c.len(), start_ns: t, end_ns: t + 1 }, &mut out);
                check_bounds(&s);
            }
            for c in cut(&resp, &resp_cuts) {
                t += 10;
                let n = (*k.next().unwrap()).min(c.len());
                s.on_server(&Chunk { data: &c[..n], len: c.len(), start_ns: t, end_ns: t + 1 }, &mut out);
                check_bounds(&s);
            }
            let h = s.take_health();
            let mut left = want.clone();
            for e in &out {
                let sm = summary(e);
                let i = left.iter().position(|x| *x == sm);
                prop_assert!(i.is_some(), "unexpected {}", sm);
                left.remove(i.unwrap());
            }
            if h.stopped.is_none() {
                prop_assert!(left.is_empty(), "missing {:?}", left);
            }
        }
    }
}
