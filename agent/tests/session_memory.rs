//! Sessions keep bounded memory on endless adversarial input. A counting allocator
//! measures the live heap of this test process while one connection's session is fed
//! protocol-shaped garbage without end: requests that are never answered (the pending
//! queues), ever-new keys, paths and header names (HPACK's table, routes, statement
//! text), stray bytes that break framing (resynchronisation buffers), and lost bytes.
//! After the caps have been reached the heap must stop growing: the live bytes after
//! `2 * ROUNDS` chunks are within a small slack of those after `ROUNDS`, and under a
//! fixed ceiling per session.
//!
//! It runs in its own test binary because the allocator is process-wide; the test
//! functions run one at a time under a lock so their measurements do not mix.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicIsize, Ordering},
        Arc, Mutex,
    },
};

use nodetap::protocols::{
    http1::RoutePatterns, Chunk, ConnectionProtocol, Request, SessionOptions,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Chunks per measurement: far past every per-connection cap (10,000 pending requests).
const ROUNDS: usize = 40_000;
/// Most a session may hold once its caps are reached.
const CEILING: isize = 16 << 20;
/// Growth allowed between the two measurements (allocator noise, hash table steps).
const SLACK: isize = 512 << 10;

/// xorshift64*: reproducible garbage without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One client (or server) write of the adversarial stream, chosen by `i`.
type Generator = fn(&mut Rng, usize) -> (bool, Vec<u8>);

/// Feeds `first` and then generated chunks forever (2 * ROUNDS of them), returns the
/// live heap held after ROUNDS and after 2 * ROUNDS, relative to before.
/// `gaps`: now and then the kernel could not copy a call's tail (not for HTTP/2, whose
/// header table cannot survive a gap: the agent stops decoding such a connection).
fn measure(first: &[(bool, Vec<u8>)], gaps: bool, generate: Generator) -> (isize, isize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let options = SessionOptions {
        http_routes: Arc::new(RoutePatterns::default()),
    };
    let mut out: Vec<Request> = Vec::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let base = LIVE.load(Ordering::Relaxed);
    let mut conn = ConnectionProtocol::default();
    let mut t = 0u64;
    let mut feed = |conn: &mut ConnectionProtocol, from_client: bool, data: &[u8], lost: usize| {
        t += 1000;
        let chunk = Chunk {
            data,
            len: data.len() + lost,
            start_ns: t,
            end_ns: t + 10,
        };
        conn.feed(from_client, &chunk, &options, &mut out);
        out.clear();
    };
    for (from_client, data) in first {
        feed(&mut conn, *from_client, data, 0);
    }
    let mut marks = [0; 2];
    for mark in &mut marks {
        for i in 0..ROUNDS {
            let (from_client, data) = generate(&mut rng, i);
            let lost = if gaps && i % 997 == 0 { 4096 } else { 0 };
            feed(&mut conn, from_client, &data, lost);
        }
        *mark = LIVE.load(Ordering::Relaxed) - base;
    }
    assert!(
        !matches!(conn, ConnectionProtocol::Ignored),
        "the session gave up, so the test measured nothing"
    );
    drop(conn);
    (marks[0], marks[1])
}

fn check(protocol: &str, (half, full): (isize, isize)) {
    eprintln!(
        "{protocol}: {half} live bytes after {ROUNDS} chunks, {full} after {}",
        2 * ROUNDS
    );
    assert!(
        full <= CEILING,
        "{protocol}: the session holds {full} bytes after {} chunks (ceiling {CEILING})",
        2 * ROUNDS
    );
    assert!(
        full - half <= SLACK,
        "{protocol}: the session kept growing: {half} bytes after {ROUNDS} chunks, {full} after {}",
        2 * ROUNDS
    );
}

#[test]
fn redis_unanswered_commands_with_new_keys_and_stray_bytes() {
    let r = measure(&[], true, |rng, i| {
        if i % 15_000 == 14_999 {
            // Now and then a stray reply and bytes that are no RESP at all; in between,
            // the open-request queue fills to its cap.
            let mut b = b"-ERR x\r\n".to_vec();
            b.extend(rng.bytes(30));
            return (false, b);
        }
        if i % 1000 == 999 {
            return (true, rng.bytes(64));
        }
        let key = rng.word(40);
        let cmd = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n", key.len());
        (true, cmd.into_bytes())
    });
    check("redis", r);
}

#[test]
fn http1_unanswered_requests_to_new_paths_with_long_heads() {
    let r = measure(&[], true, |rng, i| {
        if i % 40 == 39 {
            return (true, rng.bytes(200));
        }
        let req = format!(
            "GET /{}/{}?q={} HTTP/1.1\r\nHost: h\r\nX-{}: {}\r\n\r\n",
            rng.word(8),
            rng.word(12),
            rng.word(5),
            rng.word(10),
            rng.word(300)
        );
        (true, req.into_bytes())
    });
    check("http1", r);
}

#[test]
fn postgres_unanswered_queries_and_parses_with_new_statements() {
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend(((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    let mut startup = Vec::new();
    let params = b"user\0u\0database\0d\0\0";
    startup.extend(((params.len() + 8) as u32).to_be_bytes());
    startup.extend(196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    let first = [(true, startup), (false, message(b'R', &0u32.to_be_bytes()))];
    let r = measure(&first, true, |rng, i| {
        let text = format!(
            "SELECT * FROM t_{} WHERE x = '{}'\0",
            rng.word(12),
            rng.word(200)
        );
        if i % 2 == 0 {
            return (true, message(b'Q', text.as_bytes()));
        }
        // Named statements that are never closed, and a Sync to end the batch.
        let mut parse = format!("s_{}\0", rng.word(16)).into_bytes();
        parse.extend_from_slice(text.as_bytes());
        parse.extend([0, 0]);
        let mut b = message(b'P', &parse);
        b.extend(message(b'S', b""));
        (true, b)
    });
    check("postgres", r);
}

#[test]
fn http2_streams_never_closed_with_new_header_names() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(4, 0, 0, b""));
    let first = [(true, hello), (false, frame(4, 0, 0, b""))];
    let r = measure(&first, false, |rng, i| {
        // HEADERS (END_HEADERS) opening stream 2i+1: :method GET, :scheme http, :path
        // as a literal with incremental indexing of a new path, and a new header name
        // with incremental indexing: the dynamic table churns.
        let path = format!("/{}", rng.word(40));
        let name = format!("x-{}", rng.word(12));
        let value = rng.word(100);
        let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
        block.extend(path.as_bytes());
        block.extend([0x40, name.len() as u8]);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
        let stream = (2 * (i as u32 % 1_000_000_000)) + 1;
        (true, frame(1, 0x4, stream, &block))
    });
    check("http2", r);
}
