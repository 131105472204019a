//! PostgreSQL frontend/backend protocol, version 3: detection and a per-connection
//! session that turns the two byte streams of a connection into [`Operation`]s.
//!
//! Reference: the PostgreSQL documentation, chapter "Frontend/Backend Protocol"
//! (<https://www.postgresql.org/docs/current/protocol-flow.html> for the message flow,
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html> for the
//! formats, <https://www.postgresql.org/docs/current/protocol-error-fields.html> for
//! the fields of ErrorResponse).
//!
//! # Framing
//!
//! After the start-up packets (untyped: `int32 length, int32 code, ...`), every message
//! is `byte type, int32 length (including itself), body`. The session follows those
//! lengths on both directions, so a message whose body is far larger than the copied
//! prefix of a syscall (a 1 MB DataRow, a big CopyData) is skipped using
//! [`Chunk::len`]. Only a bounded start of the bodies it needs is kept: Query, Parse,
//! Bind, Describe, Execute, Close and the start-up packet on the frontend side
//! (4 KiB), CommandComplete and ErrorResponse on the backend side (512 bytes).
//!
//! # Matching
//!
//! Requests are queued in order (FIFO) as the frontend sends them; backend replies close
//! them in order:
//!
//! - simple Query `Q`: one operation per Q message, completed at its ReadyForQuery. A
//!   multi-statement Q is one operation, named after its first statement; its error is
//!   the first ErrorResponse.
//! - extended query: Parse, Bind, Describe and Close wait for their ParseComplete,
//!   BindComplete, RowDescription/NoData, CloseComplete; each Execute is one operation,
//!   completed by its CommandComplete, EmptyQueryResponse, PortalSuspended or
//!   ErrorResponse, and named from the SQL of the statement its portal was bound to (a
//!   per-connection statement cache, [`MAX_CACHED_STATEMENTS`] entries, least recently
//!   used out). Sync waits for ReadyForQuery.
//! - after an ErrorResponse the server skips every message until Sync. The failed request
//!   is reported once: an Execute as itself, a failed Parse, Bind or Describe as an
//!   operation named after its statement (a syntax error at Parse is the failure the
//!   client sees). The Executes the server then skipped never ran: they are not reported,
//!   and they are counted by [`PgSession::take_skipped_executes`]. ReadyForQuery closes
//!   everything up to and including the oldest Sync or Query: that is how the queue
//!   realigns after any surprise.
//! - COPY: CopyInResponse / CopyOutResponse / CopyBothResponse, CopyData, CopyDone and
//!   CopyFail are followed by length; the server ignores Sync and Flush in copy-in mode,
//!   so a Sync sent with a COPY's Execute is dropped from the queue (libpq sends another
//!   after CopyDone, which the server answers).
//! - NoticeResponse, NotificationResponse, ParameterStatus, BackendKeyData,
//!   NegotiateProtocolVersion and Authentication messages are never replies.
//!
//! # Lost framing and resynchronisation
//!
//! The capture layer copies every byte the session needs, up to a cap per syscall, and
//! nothing of a body the session skips by length ([`PgSession::skip_hint`]). Framing is
//! lost when a message header falls into bytes that were not copied (a syscall over the
//! cap, a lost event: reason `capture_gap`), or when a header is not a valid message for
//! that direction (`unparsable`). Each loss counts once in
//! [`SessionHealth::parse_errors`]. The session then resynchronises; it never stops
//! decoding a connection because of past losses. All of this relies on the two
//! directions being fed in the order they happened.
//!
//! - A direction realigns at the first later chunk that starts with a plausible message:
//!   a valid type and length for that direction, followed either by another valid header
//!   in the copied bytes or by the exact end of the chunk (applications write whole
//!   messages, and a reply usually starts a read).
//! - Frontend: the requests already queued stay (their replies still come, in order).
//!   A `Gap` marker is queued for the unknown requests sent in the lost bytes (none in
//!   copy-in mode, where the lost bytes are copy data). When the gap reaches the head of
//!   the queue, replies are absorbed by it: each CommandComplete, EmptyQueryResponse,
//!   PortalSuspended or ErrorResponse is reported as an operation of its own (named by
//!   the tag, statement text only when the tag agrees with the last Bind/Parse before
//!   the loss, started where the loss happened), and the next ReadyForQuery ends the gap
//!   (with the Sync group queued after it when the absorbed answers cover that group: a
//!   pipeline write cut in the middle holds no Sync). A simple Query queued after the
//!   gap, sent before an answer ended, ends the gap too: a client sends one only when
//!   idle, so that answer is the query's.
//!   Statement and portal names may have been rebound in the lost bytes, so the unnamed
//!   statement and the portals are forgotten.
//! - Backend: the backend also realigns (a) at a fully copied chunk that ends with a
//!   ReadyForQuery, from that ReadyForQuery or the CommandComplete / ErrorResponse /
//!   EmptyQueryResponse just before it (found by walking back), or (b) when the frontend
//!   starts a new request (or Terminate) with exactly one request open: a client that
//!   waits for its answer has read all of it, so that request is completed at the end of
//!   the last backend chunk, without error information (handed out by the next
//!   `on_backend` or by [`PgSession::take_completed`]), and the next backend chunk
//!   starts a message. At a realignment with more than one request open (pipelining),
//!   which reply the chunk belongs to is unknown: the open requests are dropped and
//!   counted in [`SessionHealth::lost`] with the reason of the loss.
//! - Pipelining clients whose one write, longer than the copied prefix, holds several
//!   Syncs or Queries are the known weak spot: how many ReadyForQuery the gap should
//!   absorb is unknown, so a few operations after it can be misattributed until the
//!   pipeline drains. Clients that wait for each answer (libpq without pipeline mode,
//!   psql, pgbench's default modes, most drivers) and batches ending in one Sync are
//!   matched exactly.
//! - Framing lost before the start-up packet was understood (or the one-byte answer to
//!   SSLRequest not copied): the frontend is taken as typed messages from then on and
//!   realigns like any other loss (a TLS handshake record instead still stops parsing).
//!
//! SSLRequest / GSSENCRequest answered `S` / `G` switch the connection to an encrypted
//! stream: [`SessionHealth::tls`] is set and the session stops parsing (O(1) from then
//! on). Answered `N`, the client goes on in plain text. A CancelRequest connection carries
//! no operation; the session stops quietly.
//!
//! # Bounded memory
//!
//! At most [`MAX_PENDING`] open requests (the oldest is dropped and counted beyond
//! that), at most [`MAX_QUEUED_TEXT`] bytes of statement text held by them (beyond that,
//! new requests keep their name and collection but an empty statement), at most
//! [`MAX_CACHED_STATEMENTS`] named statements holding [`MAX_CACHED_TEXT`] bytes, at most
//! [`MAX_NAMED_PORTALS`] named portals, and the two bounded message-body buffers.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::request::{requests, Sink, Statement};
use super::{Chunk, LostReason, Operation, Request, Session, SessionHealth, SessionOptions};

/// `SSLRequest` code (1234 << 16 | 5679).
const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code (1234 << 16 | 5680).
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code (1234 << 16 | 5678).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// The server's limit on a start-up packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_LEN: usize = 10_000;
/// No message is larger than the server's 1 GiB allocation limit.
const MAX_BIG_LEN: usize = 0x4000_0000;
/// Limit for messages that carry only names, tags and small values.
const MAX_SMALL_LEN: usize = 1 << 20;

/// Longest statement text reported (bytes).
pub const MAX_STATEMENT_LEN: usize = 1024;
/// Most open requests kept per connection.
pub const MAX_PENDING: usize = 8192;
/// Most bytes of statement text (and collection names) held by open requests.
pub const MAX_QUEUED_TEXT: usize = 256 * 1024;
/// Most named prepared statements remembered per connection.
pub const MAX_CACHED_STATEMENTS: usize = 256;
/// Most bytes of statement text held by the statement cache.
pub const MAX_CACHED_TEXT: usize = 64 * 1024;
/// Most named portals remembered per connection.
pub const MAX_NAMED_PORTALS: usize = 16;
/// Longest statement or portal name remembered (longer ones are not cached).
const MAX_NAME_LEN: usize = 128;
/// Longest collection (table) name reported.
const MAX_COLLECTION_LEN: usize = 128;
/// Longest user / database name kept (NAMEDATALEN - 1).
const MAX_IDENT_LEN: usize = 63;
/// Bytes kept of a frontend message body that the session reads.
const FE_BODY_CAP: usize = 4096;
/// Bytes kept of a backend message body that the session reads.
const BE_BODY_CAP: usize = 512;
/// Tokens looked at when extracting a collection name.
const MAX_SCAN_TOKENS: usize = 2048;

// ----------------------------------------------------------------------------- detection

/// Whether the first bytes a client sent on a connection are a PostgreSQL start-up
/// packet: SSLRequest, GSSENCRequest, CancelRequest or a v3 StartupMessage.
///
/// Needs at least 8 bytes (`int32 length, int32 code`); fewer answer `false`. Redis
/// (`*`, `+`), HTTP (`GET `), HTTP/2 (`PRI `) and TLS (`0x16 0x03`) never match: their
/// first four bytes are far beyond the 10,000-byte start-up packet limit.
pub fn looks_like_startup(prefix: &[u8]) -> bool {
    if prefix.len() < 8 {
        return false;
    }
    let len = be_u32(&prefix[0..4]) as usize;
    let code = be_u32(&prefix[4..8]);
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => len == 8,
        // 16 bytes in protocol 3.0; 3.2 allows a cancel key of up to 256 bytes.
        CANCEL_REQUEST_CODE => (16..=12 + 256).contains(&len),
        _ if is_v3(code) => {
            if len <= 8 || len > MAX_STARTUP_LEN {
                return false;
            }
            // Parameters are NUL-terminated names: the first one starts with a letter,
            // and the packet ends with a NUL.
            if let Some(&b) = prefix.get(8) {
                if !(b.is_ascii_alphabetic() || b == b'_') {
                    return false;
                }
            }
            match prefix.get(len - 1) {
                Some(&last) => last == 0,
                None => true,
            }
        }
        _ => false,
    }
}

fn is_v3(code: u32) -> bool {
    code >> 16 == 3 && code & 0xffff < 16
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

// ----------------------------------------------------------------------------- SQL

/// What a statement's text says about it.
#[derive(Debug)]
struct StmtInfo {
    name: &'static str,
    /// The name is a guess (`WITH ...` or unknown): the CommandComplete tag may correct it.
    guessed: bool,
    /// Shared with every operation that runs it (`Statement::Text`): no copy per execution.
    statement: Arc<str>,
    collection: Option<Arc<str>>,
}

impl StmtInfo {
    fn from_sql(sql: &str) -> Self {
        let (name, guessed) = classify(sql);
        StmtInfo {
            name,
            guessed,
            statement: Arc::from(obfuscate_sql(sql, MAX_STATEMENT_LEN)),
            collection: collection_of(sql, name),
        }
    }

    fn text_bytes(&self) -> usize {
        self.statement.len() + self.collection.as_ref().map_or(0, |c| c.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    /// Unquoted identifier or keyword.
    Word,
    /// `"quoted identifier"`.
    QIdent,
    /// String literal of any kind, dollar-quoted included.
    Str,
    Num,
    /// `$1` placeholder.
    Param,
    /// One ASCII punctuation byte.
    Punct,
    /// Whitespace or a comment.
    Space,
}

/// A small SQL lexer: enough of PostgreSQL's lexical rules to find keywords and
/// literals (<https://www.postgresql.org/docs/current/sql-syntax-lexical.html>). Every
/// token boundary falls on an ASCII byte or the end, so slicing a `&str` with them is safe.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Lexer {
            s: sql.as_bytes(),
            i: 0,
        }
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// End (exclusive) of a quoted string whose opening quote is just before `i`.
fn skip_string(s: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < s.len() {
        match s[i] {
            b'\\' if backslash => i += 2,
            b'\'' if s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// If `s[start..]` opens a dollar quote (`$$` or `$tag$`), the index of its second `$`.
fn dollar_tag_end(s: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    if j < s.len() && (s[j].is_ascii_alphabetic() || s[j] == b'_' || s[j] >= 0x80) {
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_' || s[j] >= 0x80) {
            j += 1;
        }
    }
    (s.get(j) == Some(&b'$')).then_some(j)
}

fn skip_number(s: &[u8], mut i: usize) -> usize {
    let digit_or_sep = |c: u8| c.is_ascii_digit() || c == b'_';
    if s[i] == b'0' && matches!(s.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < s.len() && (s[i].is_ascii_hexdigit() || s[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < s.len() && digit_or_sep(s[i]) {
        i += 1;
    }
    if i < s.len() && s[i] == b'.' && s.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < s.len() && digit_or_sep(s[i]) {
            i += 1;
        }
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        let mut j = i + 1;
        if matches!(s.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if s.get(j).is_some_and(|c| c.is_ascii_digit()) {
            i = j;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

impl Iterator for Lexer<'_> {
    type Item = (Tok, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        let start = self.i;
        let c = *s.get(start)?;
        let next = s.get(start + 1).copied();
        let (tok, end) = match c {
            c if is_space(c) => {
                let mut i = start + 1;
                while i < s.len() && is_space(s[i]) {
                    i += 1;
                }
                (Tok::Space, i)
            }
            b'-' if next == Some(b'-') => {
                let end = s[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(s.len(), |p| start + p + 1);
                (Tok::Space, end)
            }
            b'/' if next == Some(b'*') => {
                // Block comments nest in PostgreSQL.
                let (mut depth, mut i) = (1usize, start + 2);
                while i < s.len() && depth > 0 {
                    if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                (Tok::Space, i.min(s.len()))
            }
            b'\'' => (Tok::Str, skip_string(s, start + 1, false)),
            b'"' => {
                let mut i = start + 1;
                loop {
                    match s[i.min(s.len())..].iter().position(|&b| b == b'"') {
                        None => break (Tok::QIdent, s.len()),
                        Some(p) if s.get(i + p + 1) == Some(&b'"') => i += p + 2,
                        Some(p) => break (Tok::QIdent, i + p + 1),
                    }
                }
            }
            b'$' if next.is_some_and(|b| b.is_ascii_digit()) => {
                let mut i = start + 1;
                while i < s.len() && s[i].is_ascii_digit() {
                    i += 1;
                }
                (Tok::Param, i)
            }
            b'$' => match dollar_tag_end(s, start) {
                Some(tag_end) => {
                    let tag = &s[start..=tag_end];
                    let body = tag_end + 1;
                    let end = s[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(s.len(), |p| body + p + tag.len());
                    (Tok::Str, end)
                }
                None => (Tok::Punct, start + 1),
            },
            b'0'..=b'9' => (Tok::Num, skip_number(s, start)),
            b'.' if next.is_some_and(|b| b.is_ascii_digit()) => (Tok::Num, skip_number(s, start)),
            c if is_ident_start(c) => {
                let mut i = start + 1;
                while i < s.len() && is_ident_cont(s[i]) {
                    i += 1;
                }
                // E'..', B'..', X'..', N'..' string constants.
                let lower = c | 0x20;
                if i == start + 1
                    && s.get(i) == Some(&b'\'')
                    && matches!(lower, b'e' | b'b' | b'x' | b'n')
                {
                    (Tok::Str, skip_string(s, i + 1, lower == b'e'))
                } else {
                    (Tok::Word, i)
                }
            }
            _ => (Tok::Punct, start + 1),
        };
        let end = end.min(s.len()).max(start + 1);
        self.i = end;
        Some((tok, start, end))
    }
}

/// The SQL with literals (strings, dollar-quoted strings, numbers) replaced by `?`,
/// comments removed and whitespace collapsed; `$n` placeholders and identifiers kept;
/// at most `max` bytes, cut on a character boundary.
pub fn obfuscate_sql(sql: &str, max: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max).min(MAX_STATEMENT_LEN) + 8);
    let mut space = false;
    for (tok, a, b) in Lexer::new(sql) {
        if out.len() >= max {
            break;
        }
        let piece = match tok {
            Tok::Space => {
                space = true;
                continue;
            }
            Tok::Str | Tok::Num => "?",
            _ => &sql[a..b],
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(piece);
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// `db_operation_name` of a SQL text (or of a CommandComplete tag): its leading keyword
/// from a closed set, `_OTHER` when unknown. Leading whitespace, comments and
/// parentheses are skipped; `WITH ...` takes the main statement's verb when it is found
/// at the top level, else `SELECT`; `START TRANSACTION` is `BEGIN`, `END` is `COMMIT`,
/// `ABORT` is `ROLLBACK`, `VALUES` and `TABLE` are `SELECT`.
pub fn operation_name(sql: &str) -> &'static str {
    classify(sql).0
}

fn upper_word(w: &str) -> Option<[u8; 16]> {
    if w.len() > 16 {
        return None;
    }
    let mut buf = [0u8; 16];
    for (d, s) in buf.iter_mut().zip(w.bytes()) {
        *d = s.to_ascii_uppercase();
    }
    Some(buf)
}

fn keyword_op(w: &str) -> Option<&'static str> {
    let buf = upper_word(w)?;
    let u = &buf[..w.len()];
    Some(match u {
        b"SELECT" | b"VALUES" | b"TABLE" => "SELECT",
        b"INSERT" => "INSERT",
        b"UPDATE" => "UPDATE",
        b"DELETE" => "DELETE",
        b"MERGE" => "MERGE",
        b"BEGIN" => "BEGIN",
        b"COMMIT" | b"END" => "COMMIT",
        b"ROLLBACK" | b"ABORT" => "ROLLBACK",
        b"SAVEPOINT" => "SAVEPOINT",
        b"RELEASE" => "RELEASE",
        b"CREATE" => "CREATE",
        b"DROP" => "DROP",
        b"ALTER" => "ALTER",
        b"TRUNCATE" => "TRUNCATE",
        b"COPY" => "COPY",
        b"SET" => "SET",
        b"SHOW" => "SHOW",
        b"RESET" => "RESET",
        b"DISCARD" => "DISCARD",
        b"EXPLAIN" => "EXPLAIN",
        b"ANALYZE" | b"ANALYSE" => "ANALYZE",
        b"VACUUM" => "VACUUM",
        b"GRANT" => "GRANT",
        b"REVOKE" => "REVOKE",
        b"LOCK" => "LOCK",
        b"PREPARE" => "PREPARE",
        b"EXECUTE" => "EXECUTE",
        b"DEALLOCATE" => "DEALLOCATE",
        b"LISTEN" => "LISTEN",
        b"NOTIFY" => "NOTIFY",
        b"UNLISTEN" => "UNLISTEN",
        b"DECLARE" => "DECLARE",
        b"FETCH" => "FETCH",
        b"MOVE" => "MOVE",
        b"CLOSE" => "CLOSE",
        b"CALL" => "CALL",
        b"DO" => "DO",
        b"REFRESH" => "REFRESH",
        b"COMMENT" => "COMMENT",
        b"CHECKPOINT" => "CHECKPOINT",
        _ => return None,
    })
}

fn is_kw(sql: &str, (tok, a, b): (Tok, usize, usize), kw: &str) -> bool {
    tok == Tok::Word && sql[a..b].eq_ignore_ascii_case(kw)
}

/// (operation name, whether it is a guess the CommandComplete tag may correct).
fn classify(sql: &str) -> (&'static str, bool) {
    let mut lex = Lexer::new(sql).filter(|t| t.0 != Tok::Space);
    let first = loop {
        match lex.next() {
            Some((Tok::Punct, a, _)) if sql.as_bytes()[a] == b'(' => continue,
            Some(t) => break t,
            None => return ("_OTHER", true),
        }
    };
    if first.0 != Tok::Word {
        return ("_OTHER", true);
    }
    if is_kw(sql, first, "WITH") {
        // The main statement follows the CTE list, at parenthesis depth 0.
        let mut depth = 0usize;
        for t in lex.take(MAX_SCAN_TOKENS) {
            match t.0 {
                Tok::Punct => match sql.as_bytes()[t.1] {
                    b'(' => depth += 1,
                    b')' => depth = depth.saturating_sub(1),
                    b';' if depth == 0 => break,
                    _ => {}
                },
                Tok::Word if depth == 0 => {
                    let w = &sql[t.1..t.2];
                    for verb in [
                        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE",
                    ] {
                        if w.eq_ignore_ascii_case(verb) {
                            return (keyword_op(verb).unwrap_or("SELECT"), true);
                        }
                    }
                }
                _ => {}
            }
        }
        return ("SELECT", true);
    }
    if is_kw(sql, first, "START") {
        return match lex.next() {
            Some(t) if is_kw(sql, t, "TRANSACTION") => ("BEGIN", false),
            _ => ("_OTHER", true),
        };
    }
    match keyword_op(&sql[first.1..first.2]) {
        Some(op) => (op, false),
        None => ("_OTHER", true),
    }
}

/// The table of a simple `INSERT INTO t`, `UPDATE t`, `DELETE FROM t` or
/// `SELECT ... FROM t`, when the statement names exactly one table: any JOIN, a second
/// FROM (subqueries, `extract(x FROM y)`), USING, a comma-separated FROM list, set
/// operations or a function in FROM make it ambiguous, and then there is none.
fn collection_of(sql: &str, name: &'static str) -> Option<Arc<str>> {
    if !matches!(name, "SELECT" | "INSERT" | "UPDATE" | "DELETE") {
        return None;
    }
    // Significant tokens of the first statement.
    let mut toks: Vec<(Tok, usize, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut from_at_depth0 = 0usize;
    let mut from_total = 0usize;
    for t in Lexer::new(sql).filter(|t| t.0 != Tok::Space) {
        if toks.len() >= MAX_SCAN_TOKENS {
            return None;
        }
        if t.0 == Tok::Punct {
            match sql.as_bytes()[t.1] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b';' if depth == 0 => break,
                _ => {}
            }
        }
        if t.0 == Tok::Word {
            let w = &sql[t.1..t.2];
            if ["JOIN", "USING", "UNION", "INTERSECT", "EXCEPT"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
            {
                return None;
            }
            if w.eq_ignore_ascii_case("FROM") {
                from_total += 1;
                if depth == 0 {
                    from_at_depth0 += 1;
                }
            }
        }
        toks.push(t);
    }
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|&t| is_kw(sql, t, k));
    let (table_at, froms_allowed) = match name {
        "INSERT" if kw(0, "INSERT") && kw(1, "INTO") => (2, 0),
        "UPDATE" if kw(0, "UPDATE") => (if kw(1, "ONLY") { 2 } else { 1 }, 0),
        "DELETE" if kw(0, "DELETE") && kw(1, "FROM") => (if kw(2, "ONLY") { 3 } else { 2 }, 1),
        "SELECT" if kw(0, "SELECT") && from_at_depth0 == 1 => {
            let from = toks.iter().position(|&t| is_kw(sql, t, "FROM"))?;
            (
                if kw(from + 1, "ONLY") {
                    from + 2
                } else {
                    from + 1
                },
                1,
            )
        }
        _ => return None,
    };
    if from_total != froms_allowed {
        return None;
    }
    let (start, mut next) = qualified_name(sql, &toks, table_at)?;
    let end = toks[next - 1].2;
    if name == "SELECT" {
        // `FROM t [[AS] alias]` must end the FROM clause.
        let clause_end = |i: usize| {
            toks.get(i).is_none_or(|&t| {
                (t.0 == Tok::Punct && sql.as_bytes()[t.1] == b';')
                    || [
                        "WHERE", "GROUP", "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR", "HAVING",
                        "WINDOW",
                    ]
                    .iter()
                    .any(|k| is_kw(sql, t, k))
            })
        };
        if !clause_end(next) {
            if kw(next, "AS") {
                next += 1;
            }
            match toks.get(next) {
                Some(&(Tok::Word | Tok::QIdent, ..)) if !clause_end(next) => next += 1,
                _ => return None,
            }
            if !clause_end(next) {
                return None;
            }
        }
    }
    let table = &sql[start..end];
    (table.len() <= MAX_COLLECTION_LEN).then(|| table.into())
}

/// `name[.name[.name]]` starting at token `i`: (byte start, index of the next token).
fn qualified_name(sql: &str, toks: &[(Tok, usize, usize)], mut i: usize) -> Option<(usize, usize)> {
    let is_name = |t: &(Tok, usize, usize)| {
        t.0 == Tok::QIdent
            || (t.0 == Tok::Word
                && keyword_op(&sql[t.1..t.2]).is_none()
                && !["LATERAL", "ONLY", "WHERE", "SET", "AS", "ROWS", "FROM"]
                    .iter()
                    .any(|k| sql[t.1..t.2].eq_ignore_ascii_case(k)))
    };
    let first = toks.get(i).filter(|t| is_name(t))?;
    let start = first.1;
    i += 1;
    for _ in 0..2 {
        match (toks.get(i), toks.get(i + 1)) {
            (Some(&(Tok::Punct, a, _)), Some(t)) if sql.as_bytes()[a] == b'.' && is_name(t) => {
                i += 2
            }
            _ => break,
        }
    }
    Some((start, i))
}

/// SQL text out of a (possibly cut) message body: up to the first NUL, as UTF-8. A cut
/// in the middle of a character drops that character; other invalid bytes (a client
/// encoding other than UTF-8) are replaced.
fn body_text(b: &[u8]) -> Cow<'_, str> {
    let b = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(e) if e.error_len().is_none() => {
            Cow::Borrowed(std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default())
        }
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// A NUL-terminated string at the start of `b`, and the rest after its NUL (`None` when
/// the NUL is not in `b`).
fn cstr(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    match b.iter().position(|&c| c == 0) {
        Some(p) => (&b[..p], Some(&b[p + 1..])),
        None => (b, None),
    }
}

// ----------------------------------------------------------------------------- errors

/// SQLSTATE class of an ErrorResponse, validated (`[0-9A-Z]{2}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrClass {
    /// A SQLSTATE of five digits or upper-case letters; its class is the first two.
    Code([u8; 5]),
    /// A code of another length whose first two characters still name a class.
    Class([u8; 2]),
    Other,
}

impl ErrClass {
    fn from_error_response(body: &[u8]) -> Self {
        let mut rest = body;
        while let Some((&field, after)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let (value, next) = cstr(after);
            if field == b'C' {
                let ok = |c: u8| c.is_ascii_digit() || c.is_ascii_uppercase();
                return match value {
                    &[a, b, c, d, e] if [a, b, c, d, e].into_iter().all(ok) => {
                        ErrClass::Code([a, b, c, d, e])
                    }
                    [a, b, ..] if ok(*a) && ok(*b) => ErrClass::Class([*a, *b]),
                    _ => ErrClass::Other,
                };
            }
            match next {
                Some(n) => rest = n,
                None => break,
            }
        }
        ErrClass::Other
    }

    fn label(self) -> String {
        match self {
            ErrClass::Code([a, b, ..]) | ErrClass::Class([a, b]) => {
                String::from_utf8_lossy(&[a, b]).into_owned()
            }
            ErrClass::Other => "_OTHER".to_string(),
        }
    }

    /// The whole SQLSTATE (`db.response.status_code`), when it is well-formed.
    fn code(self) -> Option<String> {
        match self {
            ErrClass::Code(c) => Some(String::from_utf8_lossy(&c).into_owned()),
            _ => None,
        }
    }
}

// ----------------------------------------------------------------------------- framing

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Frontend,
    Backend,
}

/// Whether a typed message header is valid for its direction.
fn header_ok(dir: Dir, typ: u8, len: usize) -> bool {
    let ok = |min: usize, max: usize| (min..=max).contains(&len);
    match dir {
        Dir::Frontend => match typ {
            b'Q' => ok(5, MAX_BIG_LEN),
            b'P' => ok(8, MAX_BIG_LEN),
            b'B' => ok(12, MAX_BIG_LEN),
            b'E' => ok(9, MAX_SMALL_LEN),
            b'D' | b'C' => ok(6, MAX_SMALL_LEN),
            b'S' | b'H' | b'X' | b'c' => len == 4,
            b'd' => ok(4, MAX_BIG_LEN),
            b'f' => ok(5, MAX_SMALL_LEN),
            b'F' => ok(14, MAX_BIG_LEN),
            b'p' => ok(5, MAX_SMALL_LEN),
            _ => false,
        },
        Dir::Backend => match typ {
            b'R' => ok(8, MAX_SMALL_LEN),
            b'K' => ok(12, 8 + 256),
            b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => len == 4,
            b'Z' => len == 5,
            b'C' => ok(5, 4096),
            b'D' => ok(6, MAX_BIG_LEN),
            b'd' => ok(4, MAX_BIG_LEN),
            b'T' | b't' => ok(6, MAX_SMALL_LEN),
            // Error text can carry user data (RAISE with a long message).
            b'E' | b'N' => ok(5, MAX_BIG_LEN),
            b'S' => ok(6, MAX_SMALL_LEN),
            b'A' => ok(10, MAX_SMALL_LEN),
            b'G' | b'H' | b'W' => ok(7, MAX_SMALL_LEN),
            b'V' => ok(8, MAX_BIG_LEN),
            b'v' => ok(12, MAX_SMALL_LEN),
            _ => false,
        },
    }
}

/// How many body bytes of a message the session reads.
fn body_keep(dir: Dir, typ: u8) -> usize {
    match (dir, typ) {
        (Dir::Frontend, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C') => FE_BODY_CAP,
        (Dir::Backend, b'C' | b'E' | b'Z') => BE_BODY_CAP,
        _ => 0,
    }
}

/// Whether a chunk can be trusted to start at a message boundary: a valid header
/// followed by another valid header, or ending exactly at the chunk's end (with, when
/// it is all known, a body that fits its type).
fn plausible_start(dir: Dir, data: &[u8], total: usize) -> bool {
    if data.len() < 5 || !header_ok(dir, data[0], be_u32(&data[1..5]) as usize) {
        return false;
    }
    let next = 1 + be_u32(&data[1..5]) as usize;
    if next == total {
        if let Some(body) = data.get(5..next) {
            return match data[0] {
                b'Z' => matches!(body, [b'I' | b'T' | b'E']),
                b'Q' | b'C' => body.last() == Some(&0) && !body[..body.len() - 1].contains(&0),
                _ => true,
            };
        }
        return true;
    }
    match data.get(next..next + 5) {
        Some(h) => header_ok(dir, h[0], be_u32(&h[1..5]) as usize),
        None => false,
    }
}

/// Where to realign in a fully copied backend chunk that ends with a ReadyForQuery: the
/// start of that ReadyForQuery, or of the CommandComplete / ErrorResponse / EmptyQuery
/// just before it.
fn tail_realign(data: &[u8]) -> Option<usize> {
    let n = data.len();
    if n < 6
        || data[n - 6] != b'Z'
        || be_u32(&data[n - 5..n - 1]) != 5
        || !matches!(data[n - 1], b'I' | b'T' | b'E')
    {
        return None;
    }
    let z = n - 6;
    let lowest = z.saturating_sub(BE_BODY_CAP);
    for p in (lowest..z.saturating_sub(4)).rev() {
        let t = data[p];
        if matches!(t, b'C' | b'E' | b'I') && p + 5 <= z {
            let len = be_u32(&data[p + 1..p + 5]) as usize;
            if p + 1 + len == z
                && header_ok(Dir::Backend, t, len)
                && (t == b'I' || data[z - 1] == 0)
            {
                return Some(p);
            }
        }
    }
    Some(z)
}

/// What the framer found next in a chunk.
enum Ev {
    /// A whole message: its body start is in `Framer::body`.
    Msg { typ: u8, code: u32, start_ns: u64 },
    /// A header that is invalid (`Unparsable`) or not copied (`CaptureGap`): framing lost.
    Lost(LostReason),
    /// The chunk is used up.
    End,
}

/// Position in a chunk: copied bytes consumed, and uncopied bytes left after them.
struct Cursor {
    pos: usize,
    unknown: usize,
}

impl Cursor {
    fn new(chunk: &Chunk<'_>) -> Self {
        Cursor {
            pos: 0,
            unknown: chunk.len.saturating_sub(chunk.data.len()),
        }
    }
}

/// Follows one direction's message lengths across chunks.
#[derive(Debug, Default)]
struct Framer {
    hdr: [u8; 8],
    hdr_len: u8,
    /// Start-up phase: the next header is `int32 length, int32 code` (frontend only).
    untyped: bool,
    in_body: bool,
    typ: u8,
    code: u32,
    remaining: usize,
    keep: usize,
    body: Vec<u8>,
    /// Some of the body bytes the session wanted were not copied.
    truncated: bool,
    start_ns: u64,
    /// Framing lost: waiting to realign at a chunk boundary.
    lost: bool,
}

impl Framer {
    fn at_boundary(&self) -> bool {
        !self.in_body && self.hdr_len == 0
    }

    /// Back to "a message starts at the next byte".
    fn realign(&mut self) {
        self.hdr_len = 0;
        self.in_body = false;
        self.remaining = 0;
        self.body.clear();
        self.truncated = false;
        self.lost = false;
        if self.body.capacity() > FE_BODY_CAP {
            self.body = Vec::new();
        }
    }

    fn next(&mut self, dir: Dir, chunk: &Chunk<'_>, cur: &mut Cursor) -> Ev {
        let data = chunk.data;
        loop {
            if self.in_body {
                if self.remaining > 0 {
                    if cur.pos < data.len() {
                        let n = self.remaining.min(data.len() - cur.pos);
                        // Only a contiguous start of the body is useful: nothing after a gap.
                        if !self.truncated {
                            let room = self.keep.saturating_sub(self.body.len()).min(n);
                            self.body.extend_from_slice(&data[cur.pos..cur.pos + room]);
                        }
                        cur.pos += n;
                        self.remaining -= n;
                    } else if cur.unknown > 0 {
                        let n = self.remaining.min(cur.unknown);
                        if self.body.len() < self.keep {
                            self.truncated = true;
                        }
                        cur.unknown -= n;
                        self.remaining -= n;
                    } else {
                        return Ev::End;
                    }
                }
                if self.remaining == 0 {
                    self.in_body = false;
                    self.hdr_len = 0;
                    return Ev::Msg {
                        typ: self.typ,
                        code: self.code,
                        start_ns: self.start_ns,
                    };
                }
                continue;
            }
            let need = if self.untyped { 8 } else { 5 };
            if cur.pos < data.len() {
                if self.hdr_len == 0 {
                    self.start_ns = chunk.start_ns;
                }
                let have = self.hdr_len as usize;
                let n = (need - have).min(data.len() - cur.pos);
                self.hdr[have..have + n].copy_from_slice(&data[cur.pos..cur.pos + n]);
                cur.pos += n;
                self.hdr_len += n as u8;
                if (self.hdr_len as usize) < need {
                    continue;
                }
                let (typ, code, body_len) = if self.untyped {
                    let len = be_u32(&self.hdr[0..4]) as usize;
                    let code = be_u32(&self.hdr[4..8]);
                    let ok = match code {
                        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => len == 8,
                        CANCEL_REQUEST_CODE => (16..=12 + 256).contains(&len),
                        c if is_v3(c) => len > 8 && len <= MAX_STARTUP_LEN,
                        _ => false,
                    };
                    if !ok {
                        return Ev::Lost(LostReason::Unparsable);
                    }
                    (0, code, len - 8)
                } else {
                    let typ = self.hdr[0];
                    let len = be_u32(&self.hdr[1..5]) as usize;
                    if !header_ok(dir, typ, len) {
                        return Ev::Lost(LostReason::Unparsable);
                    }
                    (typ, 0, len - 4)
                };
                self.typ = typ;
                self.code = code;
                self.remaining = body_len;
                self.keep = if self.untyped {
                    FE_BODY_CAP
                } else {
                    body_keep(dir, typ)
                };
                self.body.clear();
                self.truncated = false;
                self.in_body = true;
            } else if cur.unknown > 0 {
                return Ev::Lost(LostReason::CaptureGap);
            } else {
                return Ev::End;
            }
        }
    }
}

// ----------------------------------------------------------------------------- session

/// An open request, waiting for its reply.
#[derive(Debug)]
enum Pending {
    /// Simple query: completed by ReadyForQuery.
    Query {
        info: Option<Arc<StmtInfo>>,
        start_ns: u64,
        error: Option<ErrClass>,
        /// Operation named by the first CommandComplete tag.
        tag: Option<&'static str>,
        expired: bool,
    },
    /// Fast-path function call: completed by ReadyForQuery.
    Func {
        start_ns: u64,
        error: Option<ErrClass>,
        expired: bool,
    },
    Parse {
        info: Option<Arc<StmtInfo>>,
        start_ns: u64,
    },
    Bind {
        info: Option<Arc<StmtInfo>>,
        start_ns: u64,
    },
    Describe {
        info: Option<Arc<StmtInfo>>,
        start_ns: u64,
    },
    Execute {
        info: Option<Arc<StmtInfo>>,
        start_ns: u64,
        expired: bool,
    },
    Close,
    Sync,
    /// Frontend framing was lost here: the requests sent in the lost bytes are unknown.
    /// Their answers are absorbed (and reported from the answers alone, see
    /// [`PgSession::gap_answer`]) until a ReadyForQuery, which ends the gap.
    Gap {
        info: Option<Arc<StmtInfo>>,
        start_ns: u64,
    },
}

impl Pending {
    /// Entries that end at a ReadyForQuery.
    fn is_terminator(&self) -> bool {
        matches!(
            self,
            Pending::Query { .. } | Pending::Func { .. } | Pending::Sync | Pending::Gap { .. }
        )
    }

    /// Entries that become an operation.
    fn is_live_op(&self) -> bool {
        matches!(
            self,
            Pending::Query { expired: false, .. }
                | Pending::Func { expired: false, .. }
                | Pending::Execute { expired: false, .. }
        )
    }

    fn info(&self) -> Option<&Arc<StmtInfo>> {
        match self {
            Pending::Query { info, .. }
            | Pending::Parse { info, .. }
            | Pending::Bind { info, .. }
            | Pending::Describe { info, .. }
            | Pending::Execute { info, .. }
            | Pending::Gap { info, .. } => info.as_ref(),
            _ => None,
        }
    }

    fn start_ns(&self) -> Option<u64> {
        match self {
            Pending::Query { start_ns, .. }
            | Pending::Func { start_ns, .. }
            | Pending::Parse { start_ns, .. }
            | Pending::Bind { start_ns, .. }
            | Pending::Describe { start_ns, .. }
            | Pending::Execute { start_ns, .. }
            | Pending::Gap { start_ns, .. } => Some(*start_ns),
            _ => None,
        }
    }

    /// Turn into a tombstone: keeps its place in the FIFO, reports nothing.
    fn expire(&mut self) {
        match self {
            Pending::Query { expired, info, .. } | Pending::Execute { expired, info, .. } => {
                *expired = true;
                *info = None;
            }
            Pending::Func { expired, .. } => *expired = true,
            Pending::Parse { info, .. }
            | Pending::Bind { info, .. }
            | Pending::Describe { info, .. }
            | Pending::Gap { info, .. } => *info = None,
            _ => {}
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    /// Encrypted, gave up, or a cancel request: nothing more to parse.
    Stopped,
}

#[derive(Debug)]
struct CachedStmt {
    info: Arc<StmtInfo>,
    used: u64,
}

/// One PostgreSQL connection, both directions. Pure: no I/O, no clock.
#[derive(Debug)]
pub struct PgSession {
    state: State,
    fe: Framer,
    be: Framer,
    /// SSLRequest / GSSENCRequest sent and not answered yet: the backend answers with one
    /// unframed byte.
    encryption_replies_expected: u8,
    /// The frontend asked for encryption: a TLS record next means it was granted.
    encryption_requested: bool,
    /// A StartupMessage was sent and its ReadyForQuery has not come: the start-up
    /// exchange (authentication, parameters, a FATAL error) answers no request.
    in_startup: bool,
    /// The backend is in copy-in mode: it ignores Sync and Flush.
    copy_in: bool,
    user: Option<Box<str>>,
    database: Option<Box<str>>,
    /// `db.namespace` of every request, made once from `user_and_database`.
    namespace: Option<Arc<str>>,

    queue: VecDeque<Pending>,
    /// Terminators (Query, Func, Sync, Gap) in `queue`.
    terminators: usize,
    /// Live operations (Query, Func, Execute not expired) in `queue`.
    live_ops: usize,
    /// Statement bytes held by `queue` entries.
    queued_text: usize,
    /// The first `expired_prefix` entries of `queue` were looked at by `expire` already.
    expired_prefix: usize,
    /// Start of the first extended-query message since the last Execute or Sync.
    group_start: Option<u64>,
    last_be_end_ns: u64,

    unnamed_stmt: Option<Arc<StmtInfo>>,
    stmts: HashMap<Box<str>, CachedStmt>,
    cached_text: usize,
    tick: u64,
    unnamed_portal: Option<Arc<StmtInfo>>,
    portals: VecDeque<(Box<str>, Option<Arc<StmtInfo>>)>,

    health: SessionHealth,
    skipped_executes: u64,
    /// Why framing was last lost: what requests dropped while realigning count as.
    last_loss: LostReason,
    /// Completions (CommandComplete, EmptyQuery, PortalSuspended) the gap at the head of
    /// the queue absorbed, and whether it absorbed an ErrorResponse.
    gap_answers: usize,
    gap_failed: bool,
    /// Operations completed by frontend traffic (see [`PgSession::take_completed`]).
    inferred: Vec<Operation>,
}

impl Default for PgSession {
    fn default() -> Self {
        Self::new()
    }
}

impl PgSession {
    /// A session for a connection whose first frontend bytes are the start-up packet
    /// (it also copes with a connection picked up mid-stream: a first frontend byte
    /// other than 0 is taken as a typed message).
    pub fn new() -> Self {
        PgSession {
            state: State::Active,
            fe: Framer {
                untyped: true,
                ..Framer::default()
            },
            be: Framer::default(),
            encryption_replies_expected: 0,
            encryption_requested: false,
            in_startup: false,
            copy_in: false,
            user: None,
            database: None,
            namespace: None,
            queue: VecDeque::new(),
            terminators: 0,
            live_ops: 0,
            queued_text: 0,
            expired_prefix: 0,
            group_start: None,
            last_be_end_ns: 0,
            unnamed_stmt: None,
            stmts: HashMap::new(),
            cached_text: 0,
            tick: 0,
            unnamed_portal: None,
            portals: VecDeque::new(),
            health: SessionHealth::default(),
            skipped_executes: 0,
            last_loss: LostReason::CaptureGap,
            gap_answers: 0,
            gap_failed: false,
            inferred: Vec::new(),
        }
    }

    /// `user` and `database` from the StartupMessage. The server defaults the database to
    /// the user name, and so does this.
    pub fn user_and_database(&self) -> (Option<&str>, Option<&str>) {
        let user = self.user.as_deref();
        (user, self.database.as_deref().or(user))
    }

    /// Whether the session stopped parsing for good (TLS, cancel request).
    pub fn stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Operations that frontend traffic completed: after backend framing was lost, the
    /// client's next request (or Terminate) proves that the answer it waited for is over
    /// (see the module documentation). [`PgSession::on_backend`] hands them out too; call
    /// this after `on_frontend` when no backend chunk follows (the connection closed).
    pub fn take_completed(&mut self, out: &mut impl Sink<Operation>) {
        self.inferred.drain(..).for_each(|op| out.push(op));
    }

    /// Executes the server skipped (after an error earlier in the same Sync group) since
    /// the last call: they never ran and are not reported as operations.
    pub fn take_skipped_executes(&mut self) -> u64 {
        std::mem::take(&mut self.skipped_executes)
    }

    /// Client-to-server bytes.
    pub fn on_frontend(&mut self, chunk: &Chunk<'_>) {
        if self.state != State::Active || chunk.len.max(chunk.data.len()) == 0 {
            return;
        }
        let total = chunk.len.max(chunk.data.len());
        if self.fe.lost {
            if !plausible_start(Dir::Frontend, chunk.data, total) {
                return;
            }
            self.fe.realign();
        }
        let mut cur = Cursor::new(chunk);
        loop {
            if self.fe.untyped && self.fe.at_boundary() {
                if let Some(&b) = chunk.data.get(cur.pos) {
                    if b != 0 {
                        if self.encryption_requested && b == 0x16 {
                            // A TLS handshake record: the server said yes.
                            self.stop_encrypted();
                            return;
                        }
                        // Not a start-up packet: a connection picked up mid-stream.
                        self.fe.untyped = false;
                    }
                }
            }
            match self.fe.next(Dir::Frontend, chunk, &mut cur) {
                Ev::End => break,
                Ev::Lost(reason) => {
                    self.frontend_lost(chunk.start_ns, reason);
                    break;
                }
                Ev::Msg {
                    typ,
                    code,
                    start_ns,
                } => {
                    let body = std::mem::take(&mut self.fe.body);
                    self.on_frontend_message(typ, code, &body, start_ns);
                    self.fe.body = body;
                    if self.state != State::Active {
                        return;
                    }
                }
            }
        }
    }

    /// Server-to-client bytes; completed operations are appended to `out`.
    pub fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut impl Sink<Operation>) {
        if self.state != State::Active || chunk.len.max(chunk.data.len()) == 0 {
            return;
        }
        self.inferred.drain(..).for_each(|op| out.push(op));
        let total = chunk.len.max(chunk.data.len());
        let mut cur = Cursor::new(chunk);
        if self.be.lost {
            if plausible_start(Dir::Backend, chunk.data, total) {
                self.resolve_doubt();
                self.be.realign();
            } else if let Some(p) = (chunk.len <= chunk.data.len())
                .then(|| tail_realign(chunk.data))
                .flatten()
            {
                self.resolve_doubt();
                self.be.realign();
                cur.pos = p;
            } else {
                self.last_be_end_ns = chunk.end_ns;
                return;
            }
        }
        // The answer to SSLRequest / GSSENCRequest: one byte, no framing.
        while self.encryption_replies_expected > 0 && self.be.at_boundary() {
            match chunk.data.get(cur.pos) {
                Some(b'N') => {
                    cur.pos += 1;
                    self.encryption_replies_expected -= 1;
                }
                Some(b'S' | b'G') => {
                    self.stop_encrypted();
                    return;
                }
                // An ErrorResponse from a server that does not know the request.
                Some(_) => self.encryption_replies_expected = 0,
                None => {
                    if cur.unknown > 0 {
                        // The answer was not copied: a TLS record from the client will still
                        // tell (`encryption_requested`); the backend realigns like any loss.
                        self.encryption_replies_expected = 0;
                        self.backend_lost(LostReason::CaptureGap);
                    }
                    return;
                }
            }
        }
        loop {
            match self.be.next(Dir::Backend, chunk, &mut cur) {
                Ev::End => break,
                Ev::Lost(reason) => {
                    self.backend_lost(reason);
                    break;
                }
                Ev::Msg { typ, .. } => {
                    let body = std::mem::take(&mut self.be.body);
                    self.on_backend_message(typ, &body, chunk.end_ns, out);
                    self.be.body = body;
                }
            }
        }
        self.last_be_end_ns = chunk.end_ns;
    }

    // ------------------------------------------------------------------ frontend

    fn on_frontend_message(&mut self, typ: u8, code: u32, body: &[u8], start_ns: u64) {
        if self.fe.untyped {
            match code {
                SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
                    self.encryption_replies_expected =
                        self.encryption_replies_expected.saturating_add(1).min(4);
                    self.encryption_requested = true;
                }
                CANCEL_REQUEST_CODE => self.state = State::Stopped,
                _ => {
                    self.read_startup_parameters(body);
                    self.fe.untyped = false;
                    self.encryption_requested = false;
                    self.in_startup = true;
                }
            }
            return;
        }
        // Any message but copy data, Flush and Sync ends copy-in mode (CopyDone and
        // CopyFail normally; anything else is an error that aborts it).
        if self.copy_in && !matches!(typ, b'd' | b'H' | b'S') {
            self.copy_in = false;
        }
        match typ {
            b'Q' => {
                self.group_start = None;
                let sql = body_text(body);
                let info = StmtInfo::from_sql(&sql);
                if matches!(info.name, "DEALLOCATE" | "DISCARD") && mentions_all(&sql) {
                    // Also drops the protocol-level prepared statements.
                    self.stmts.clear();
                    self.cached_text = 0;
                    self.unnamed_stmt = None;
                    self.portals.clear();
                    self.unnamed_portal = None;
                }
                let info = Some(Arc::new(info));
                self.push(Pending::Query {
                    info,
                    start_ns,
                    error: None,
                    tag: None,
                    expired: false,
                });
            }
            b'P' => {
                self.group_start.get_or_insert(start_ns);
                let (name, rest) = cstr(body);
                let sql = body_text(rest.unwrap_or_default());
                let info = Arc::new(StmtInfo::from_sql(&sql));
                if name.is_empty() {
                    self.unnamed_stmt = Some(info.clone());
                } else if rest.is_some() {
                    self.cache_statement(name, info.clone());
                }
                self.push(Pending::Parse {
                    info: Some(info),
                    start_ns,
                });
            }
            b'B' => {
                self.group_start.get_or_insert(start_ns);
                let (portal, rest) = cstr(body);
                let info = rest.and_then(|r| {
                    let (stmt, end) = cstr(r);
                    end.and_then(|_| self.statement(stmt))
                });
                if rest.is_some() {
                    self.bind_portal(portal, info.clone());
                }
                self.push(Pending::Bind { info, start_ns });
            }
            b'D' => {
                self.group_start.get_or_insert(start_ns);
                let info = match body.split_first() {
                    Some((b'S', name)) => self.statement(cstr(name).0),
                    Some((b'P', name)) => self.portal(cstr(name).0),
                    _ => None,
                };
                self.push(Pending::Describe { info, start_ns });
            }
            b'E' => {
                let start = self.group_start.take().unwrap_or(start_ns);
                let (portal, _) = cstr(body);
                let info = self.portal(portal);
                self.push(Pending::Execute {
                    info,
                    start_ns: start,
                    expired: false,
                });
            }
            b'C' => {
                self.group_start.get_or_insert(start_ns);
                match body.split_first() {
                    Some((b'S', name)) => self.forget_statement(cstr(name).0),
                    Some((b'P', name)) => self.forget_portal(cstr(name).0),
                    _ => {}
                }
                self.push(Pending::Close);
            }
            b'S' if !self.copy_in => {
                self.group_start = None;
                self.push(Pending::Sync);
            }
            b'F' => {
                self.group_start = None;
                self.push(Pending::Func {
                    start_ns,
                    error: None,
                    expired: false,
                });
            }
            b'X' => self.client_moved_on(),
            // CopyData, CopyDone, CopyFail, Flush, password / SASL / GSS responses, and
            // Sync in copy-in mode.
            _ => {}
        }
    }

    fn read_startup_parameters(&mut self, body: &[u8]) {
        let mut rest = body;
        loop {
            let (key, after) = cstr(rest);
            let Some(after) = after else { break };
            if key.is_empty() {
                break;
            }
            let (value, next) = cstr(after);
            if next.is_none() {
                break;
            }
            let keep = |v: &[u8]| -> Option<Box<str>> {
                (!v.is_empty() && v.len() <= MAX_IDENT_LEN)
                    .then(|| String::from_utf8_lossy(v).into())
            };
            match key {
                b"user" => self.user = keep(value),
                b"database" => self.database = keep(value),
                _ => {}
            }
            rest = next.unwrap_or_default();
        }
    }

    fn statement(&mut self, name: &[u8]) -> Option<Arc<StmtInfo>> {
        if name.is_empty() {
            return self.unnamed_stmt.clone();
        }
        self.tick += 1;
        let tick = self.tick;
        let key = std::str::from_utf8(name).ok()?;
        let entry = self.stmts.get_mut(key)?;
        entry.used = tick;
        Some(entry.info.clone())
    }

    fn cache_statement(&mut self, name: &[u8], info: Arc<StmtInfo>) {
        let Ok(key) = std::str::from_utf8(name) else {
            return;
        };
        if key.len() > MAX_NAME_LEN {
            return;
        }
        self.forget_statement(name);
        let size = info.text_bytes() + key.len();
        while !self.stmts.is_empty()
            && (self.stmts.len() >= MAX_CACHED_STATEMENTS
                || self.cached_text + size > MAX_CACHED_TEXT)
        {
            // Least recently used out; O(n) only when full.
            let oldest = self
                .stmts
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.forget_statement(k.as_bytes());
            }
        }
        self.tick += 1;
        self.cached_text += size;
        self.stmts.insert(
            key.into(),
            CachedStmt {
                info,
                used: self.tick,
            },
        );
    }

    fn forget_statement(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed_stmt = None;
            return;
        }
        let Ok(key) = std::str::from_utf8(name) else {
            return;
        };
        if let Some(e) = self.stmts.remove(key) {
            self.cached_text = self
                .cached_text
                .saturating_sub(e.info.text_bytes() + key.len());
        }
    }

    fn portal(&self, name: &[u8]) -> Option<Arc<StmtInfo>> {
        if name.is_empty() {
            return self.unnamed_portal.clone();
        }
        self.portals
            .iter()
            .find(|(n, _)| n.as_bytes() == name)
            .and_then(|(_, i)| i.clone())
    }

    fn bind_portal(&mut self, name: &[u8], info: Option<Arc<StmtInfo>>) {
        if name.is_empty() {
            self.unnamed_portal = info;
            return;
        }
        self.forget_portal(name);
        if name.len() > MAX_NAME_LEN {
            return;
        }
        if self.portals.len() >= MAX_NAMED_PORTALS {
            self.portals.pop_front();
        }
        self.portals
            .push_back((String::from_utf8_lossy(name).into(), info));
    }

    fn forget_portal(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed_portal = None;
        } else {
            self.portals.retain(|(n, _)| n.as_bytes() != name);
        }
    }

    fn push(&mut self, p: Pending) {
        self.client_moved_on();
        self.push_entry(p);
    }

    fn push_entry(&mut self, mut p: Pending) {
        if self.queue.len() >= MAX_PENDING {
            // Overflow: the oldest request will never be matched; count it.
            if let Some(old) = self.pop_front() {
                if old.is_live_op() {
                    self.health.lost.add(LostReason::QueueFull, 1);
                }
            }
        }
        if let Some(info) = p.info() {
            let bytes = info.text_bytes();
            if self.queued_text + bytes > MAX_QUEUED_TEXT {
                let lean = Arc::new(StmtInfo {
                    name: info.name,
                    guessed: info.guessed,
                    statement: Arc::from(""),
                    collection: None,
                });
                match &mut p {
                    Pending::Query { info, .. }
                    | Pending::Parse { info, .. }
                    | Pending::Bind { info, .. }
                    | Pending::Describe { info, .. }
                    | Pending::Execute { info, .. }
                    | Pending::Gap { info, .. } => *info = Some(lean),
                    _ => {}
                }
            } else {
                self.queued_text += bytes;
            }
        }
        if p.is_terminator() {
            self.terminators += 1;
        }
        if p.is_live_op() {
            self.live_ops += 1;
        }
        self.queue.push_back(p);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.forget_entry(&p);
        self.expired_prefix = self.expired_prefix.saturating_sub(1);
        Some(p)
    }

    fn forget_entry(&mut self, p: &Pending) {
        if p.is_terminator() {
            self.terminators -= 1;
        }
        if p.is_live_op() {
            self.live_ops -= 1;
        }
        if let Some(info) = p.info() {
            self.queued_text = self.queued_text.saturating_sub(info.text_bytes());
        }
    }

    /// Drops every entry; live operations among them are counted as lost for the reason
    /// framing was last lost (they may have been answered in bytes that were not followed).
    fn drop_all(&mut self) {
        self.gap_answers = 0;
        self.gap_failed = false;
        while let Some(p) = self.pop_front() {
            if p.is_live_op() {
                self.health.lost.add(self.last_loss, 1);
            }
        }
    }

    fn frontend_lost(&mut self, start_ns: u64, reason: LostReason) {
        self.health.parse_errors += 1;
        self.last_loss = reason;
        // Framing lost before the start-up packet was understood: what follows is typed
        // messages (a client does not send a second start-up packet), or a TLS record,
        // which `on_frontend` still recognises after an SSLRequest.
        self.fe.untyped = false;
        self.fe.realign();
        self.fe.lost = true;
        // In copy-in mode the lost bytes are copy data (the client waits for the COPY's
        // result before its next request): no request was lost, no gap.
        if !self.copy_in && !matches!(self.queue.back(), Some(Pending::Gap { .. })) {
            // The statement most likely run by the lost requests: that of the request just
            // before them (a long Parse followed by its Bind/Execute/Sync in one write is
            // the usual way to lose the framing).
            let info = match self.queue.back() {
                Some(
                    p @ (Pending::Parse { .. } | Pending::Bind { .. } | Pending::Describe { .. }),
                ) => p.info().cloned(),
                _ => None,
            };
            let start = self.group_start.unwrap_or(start_ns);
            self.push_entry(Pending::Gap {
                info,
                start_ns: start,
            });
        }
        self.group_start = None;
        // A lost Parse or Bind may have replaced these: do not name later Executes after
        // stale ones (named statements are kept: clients do not usually redefine them).
        self.unnamed_stmt = None;
        self.unnamed_portal = None;
        self.portals.clear();
    }

    fn backend_lost(&mut self, reason: LostReason) {
        self.health.parse_errors += 1;
        self.last_loss = reason;
        // The start-up's ReadyForQuery may be among the lost bytes; a client does not
        // send requests before it, so the first ReadyForQuery seen later answers nothing
        // queued (an empty queue) either way.
        self.in_startup = false;
        self.be.realign();
        self.be.lost = true;
    }

    /// The queue holds exactly one request: one Query or function call, or one
    /// extended-query group ending in its Sync (and no gap of unknown requests).
    fn one_request_open(&self) -> bool {
        self.terminators == 1
            && self
                .queue
                .back()
                .is_some_and(|p| p.is_terminator() && !matches!(p, Pending::Gap { .. }))
    }

    /// The backend realigned at a chunk. With one request open, the chunk is part of its
    /// answer (a client waiting for an answer sends nothing else): keep it. With more
    /// (pipelining), which answer the chunk belongs to is unknown: drop them, counted.
    fn resolve_doubt(&mut self) {
        if !self.one_request_open() {
            self.drop_all();
        }
    }

    /// The frontend starts a new request (or Terminate) while the backend framing is lost.
    /// A client that waits for each answer has read all of the answer to the one request
    /// that was open, so that request ended with the last backend chunk, and the next
    /// backend chunk starts the answer to the new request: realign there. With more than
    /// one request open (pipelining) nothing can be inferred: stay lost.
    fn client_moved_on(&mut self) {
        if !self.be.lost || self.copy_in {
            return;
        }
        if self.queue.is_empty() {
            self.be.realign();
            return;
        }
        if !self.one_request_open() {
            return;
        }
        let end_ns = self.last_be_end_ns;
        while let Some(p) = self.pop_front() {
            let op = match p {
                Pending::Query {
                    info,
                    start_ns,
                    error,
                    tag,
                    expired: false,
                } => make_op(info.as_deref(), tag, error, start_ns, end_ns),
                Pending::Func {
                    start_ns,
                    error,
                    expired: false,
                } => make_op(None, None, error, start_ns, end_ns),
                Pending::Execute {
                    info,
                    start_ns,
                    expired: false,
                } => make_op(info.as_deref(), None, None, start_ns, end_ns),
                _ => continue,
            };
            self.inferred.push(op);
        }
        self.be.realign();
    }

    // ------------------------------------------------------------------ backend

    fn on_backend_message(
        &mut self,
        typ: u8,
        body: &[u8],
        end_ns: u64,
        out: &mut impl Sink<Operation>,
    ) {
        if self.in_startup {
            if typ == b'Z' {
                self.in_startup = false;
            }
            return;
        }
        if matches!(self.queue.front(), Some(Pending::Gap { .. }))
            && matches!(self.queue.get(1), Some(Pending::Query { start_ns, .. }) if *start_ns <= end_ns)
        {
            // A simple query sent before this answer ended: clients send one only when idle
            // (libpq refuses it in pipeline mode), so whatever the lost bytes held was
            // answered before it; this answer is the query's.
            self.gap_answers = 0;
            self.gap_failed = false;
            self.pop_front();
        }
        if matches!(self.queue.front(), Some(Pending::Gap { .. })) {
            match typ {
                b'C' | b'I' | b's' | b'E' => self.gap_answer(typ, body, end_ns, out),
                b'Z' => self.ready_for_query(end_ns, out),
                b'G' | b'W' => self.copy_in = true,
                _ => {}
            }
            return;
        }
        let head = self.queue.front();
        match typ {
            b'1' if matches!(head, Some(Pending::Parse { .. })) => {
                self.pop_front();
            }
            b'2' if matches!(head, Some(Pending::Bind { .. })) => {
                self.pop_front();
            }
            b'3' if matches!(head, Some(Pending::Close)) => {
                self.pop_front();
            }
            b'T' | b'n' if matches!(head, Some(Pending::Describe { .. })) => {
                self.pop_front();
            }
            b'C' | b'I' | b's' => match self.queue.front_mut() {
                Some(Pending::Execute { .. }) => {
                    let tag = (typ == b'C').then(|| operation_name(&body_text(body)));
                    self.complete_head(tag, None, end_ns, out);
                }
                Some(Pending::Query { tag, .. }) if typ == b'C' && tag.is_none() => {
                    *tag = Some(operation_name(&body_text(body)));
                }
                _ => {}
            },
            b'E' => {
                let class = ErrClass::from_error_response(body);
                match self.queue.front_mut() {
                    Some(Pending::Execute { .. }) => {
                        self.complete_head(None, Some(class), end_ns, out)
                    }
                    Some(Pending::Query { error, .. } | Pending::Func { error, .. }) => {
                        error.get_or_insert(class);
                    }
                    Some(
                        Pending::Parse { .. } | Pending::Bind { .. } | Pending::Describe { .. },
                    ) => {
                        // The request that failed; the server now skips to the Sync.
                        if let Some(p) = self.pop_front() {
                            let start = p.start_ns().unwrap_or(end_ns);
                            out.push(make_op(
                                p.info().map(|i| &**i),
                                None,
                                Some(class),
                                start,
                                end_ns,
                            ));
                        }
                    }
                    Some(Pending::Close) => {
                        self.pop_front();
                    }
                    _ => {}
                }
            }
            b'Z' => self.ready_for_query(end_ns, out),
            b'G' => {
                // Copy-in: Sync and Flush are ignored until CopyDone / CopyFail, so a Sync
                // already queued after this Execute will get no ReadyForQuery.
                if matches!(self.queue.front(), Some(Pending::Execute { .. })) {
                    if let Some(i) = self
                        .queue
                        .iter()
                        .skip(1)
                        .position(Pending::is_terminator)
                        .map(|i| i + 1)
                    {
                        if matches!(self.queue[i], Pending::Sync) {
                            if let Some(p) = self.queue.remove(i) {
                                self.forget_entry(&p);
                                if i < self.expired_prefix {
                                    self.expired_prefix -= 1;
                                }
                            }
                        }
                    }
                }
                self.copy_in = true;
            }
            b'W' => self.copy_in = true,
            // RowDescription, DataRow, ParameterDescription, CopyOut, CopyData, CopyDone,
            // FunctionCallResponse, and the asynchronous messages: NoticeResponse,
            // NotificationResponse, ParameterStatus; start-up: Authentication,
            // BackendKeyData, NegotiateProtocolVersion.
            _ => {}
        }
    }

    /// An answer to a request sent in lost frontend bytes: reported from the answer
    /// alone, named by the CommandComplete tag (`_OTHER` without one), with the statement
    /// text of the gap's likely statement when the tag agrees with it, starting where the
    /// framing was lost.
    fn gap_answer(&mut self, typ: u8, body: &[u8], end_ns: u64, out: &mut impl Sink<Operation>) {
        let Some(Pending::Gap { info, start_ns }) = self.queue.front() else {
            return;
        };
        let (tag, error) = match typ {
            b'C' => (Some(operation_name(&body_text(body))), None),
            b'E' => (None, Some(ErrClass::from_error_response(body))),
            _ => (None, None),
        };
        // Only a CommandComplete tag that agrees makes the guess good enough to use.
        let info = info.as_deref().filter(|i| tag == Some(i.name));
        out.push(make_op(info, tag, error, *start_ns, end_ns));
        if typ == b'E' {
            self.gap_failed = true;
        } else {
            self.gap_answers += 1;
        }
    }

    /// Completes the Execute at the head of the queue.
    fn complete_head(
        &mut self,
        tag: Option<&'static str>,
        error: Option<ErrClass>,
        end_ns: u64,
        out: &mut impl Sink<Operation>,
    ) {
        if let Some(Pending::Execute {
            info,
            start_ns,
            expired,
        }) = self.pop_front()
        {
            if !expired {
                out.push(make_op(info.as_deref(), tag, error, start_ns, end_ns));
            }
        }
    }

    fn ready_for_query(&mut self, end_ns: u64, out: &mut impl Sink<Operation>) {
        self.copy_in = false;
        if matches!(self.queue.front(), Some(Pending::Gap { .. })) {
            self.end_gap();
            return;
        }
        if self.terminators == 0 {
            // Nothing can be waiting for this (start-up, or requests whose Sync was lost).
            self.drop_all();
            return;
        }
        while let Some(p) = self.pop_front() {
            match p {
                Pending::Query {
                    info,
                    start_ns,
                    error,
                    tag,
                    expired,
                } => {
                    if !expired {
                        out.push(make_op(info.as_deref(), tag, error, start_ns, end_ns));
                    }
                    break;
                }
                Pending::Func {
                    start_ns,
                    error,
                    expired,
                } => {
                    if !expired {
                        out.push(make_op(None, None, error, start_ns, end_ns));
                    }
                    break;
                }
                Pending::Sync | Pending::Gap { .. } => break,
                Pending::Execute { expired: false, .. } => self.skipped_executes += 1,
                _ => {}
            }
        }
    }

    /// A ReadyForQuery with the gap at the head of the queue ends the gap. The lost bytes
    /// most likely held no Sync: a pipeline write cut in the middle, its Sync sent in a
    /// later write (psycopg and libpq pipelines end with one Sync). Then this ReadyForQuery
    /// also answers the first Sync queued after the gap, and the answers the gap absorbed
    /// include those of the requests queued before that Sync: they go too (reported
    /// already, from their answers). Taken so when those answers are enough to cover them
    /// (or an error made the server skip to the Sync); otherwise only the gap goes.
    fn end_gap(&mut self) {
        let answered = std::mem::take(&mut self.gap_answers);
        let failed = std::mem::take(&mut self.gap_failed);
        self.pop_front();
        let Some(i) = self.queue.iter().position(Pending::is_terminator) else {
            return;
        };
        if !matches!(self.queue[i], Pending::Sync) {
            return;
        }
        let executes = self
            .queue
            .iter()
            .take(i)
            .filter(|p| matches!(p, Pending::Execute { .. }))
            .count();
        if failed || answered >= executes {
            for _ in 0..=i {
                self.pop_front();
            }
        }
    }

    fn stop_encrypted(&mut self) {
        self.health.tls = true;
        self.stop();
    }

    /// O(1) from now on: drop everything held.
    fn stop(&mut self) {
        self.state = State::Stopped;
        self.queue = VecDeque::new();
        self.terminators = 0;
        self.live_ops = 0;
        self.queued_text = 0;
        self.expired_prefix = 0;
        self.stmts = HashMap::new();
        self.cached_text = 0;
        self.portals = VecDeque::new();
        self.unnamed_stmt = None;
        self.unnamed_portal = None;
        self.fe = Framer::default();
        self.be = Framer::default();
    }
}

fn mentions_all(sql: &str) -> bool {
    Lexer::new(sql)
        .filter(|t| t.0 != Tok::Space)
        .take(3)
        .any(|t| is_kw(sql, t, "ALL"))
}

fn make_op(
    info: Option<&StmtInfo>,
    tag: Option<&'static str>,
    error: Option<ErrClass>,
    start_ns: u64,
    end_ns: u64,
) -> Operation {
    let mut name = info.map_or("_OTHER", |i| i.name);
    if info.is_none_or(|i| i.guessed) {
        if let Some(t) = tag.filter(|&t| t != "_OTHER") {
            name = t;
        }
    }
    Operation {
        name,
        error_type: error.map(ErrClass::label),
        status_code: error.and_then(ErrClass::code),
        start_ns,
        end_ns: end_ns.max(start_ns),
        statement: info.map_or(Statement::EMPTY, |i| Statement::Text(i.statement.clone())),
        collection: info.and_then(|i| i.collection.clone()),
        // Named per session once the request is made (`name_namespace`).
        namespace: None,
    }
}

// ---- the protocol registry's session ------------------------------------------------------

/// A PostgreSQL session for [`super::PROTOCOLS`].
pub fn new_session(_: &SessionOptions) -> Box<dyn Session> {
    Box::new(PgSession::new())
}

impl PgSession {
    /// Names the database of the requests `out` gained from `from` on (`db.namespace`).
    fn name_namespace(&mut self, out: &mut [Request], from: usize) {
        if out.len() <= from {
            return;
        }
        if self.namespace.is_none() {
            self.namespace = self.user_and_database().1.map(Arc::from);
        }
        for request in &mut out[from..] {
            if let super::request::Attributes::Db(db) = &mut request.attributes {
                db.namespace.clone_from(&self.namespace);
            }
        }
    }
}

impl Session for PgSession {
    fn client_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        let from = out.len();
        self.on_frontend(chunk);
        self.take_completed(&mut requests(out));
        self.name_namespace(out, from);
    }

    fn server_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        let from = out.len();
        self.on_backend(chunk, &mut requests(out));
        self.name_namespace(out, from);
    }

    /// What the frontend's last bytes completed (see [`PgSession::take_completed`]).
    fn finish(&mut self, out: &mut Vec<Request>) {
        let from = out.len();
        self.take_completed(&mut requests(out));
        self.name_namespace(out, from);
    }

    /// Open operations (simple queries, function calls and Executes waiting for their
    /// reply, expired ones excluded).
    fn pending(&self) -> usize {
        self.live_ops
    }

    /// Returns what happened since the last call and resets it: counters restart at 0, and
    /// the `tls` flag is reported once (the session stays stopped).
    fn take_health(&mut self) -> SessionHealth {
        std::mem::take(&mut self.health)
    }

    /// How many of the next bytes in that direction the session will skip without looking
    /// at them: the rest of the message body being read, once the bounded start of it the
    /// session keeps is in hand (all of a DataRow or CopyData). 0 when unsure.
    fn skip_hint(&self, from_client: bool) -> u64 {
        let f = if from_client { &self.fe } else { &self.be };
        if self.state != State::Active || f.lost || !f.in_body {
            return 0;
        }
        if f.truncated || f.body.len() >= f.keep {
            f.remaining as u64
        } else {
            0
        }
    }

    /// Expires open requests that started at least `timeout_ns` before `now_ns`: they are
    /// counted in `timed_out` and will not be reported. They keep their place in the FIFO
    /// (without their text) so that a late reply still lines up with the right request.
    fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        let deadline = now_ns.saturating_sub(timeout_ns);
        while let Some(p) = self.queue.get_mut(self.expired_prefix) {
            if p.start_ns().is_some_and(|s| s > deadline) {
                break;
            }
            if p.is_live_op() {
                self.live_ops -= 1;
                self.health.timed_out += 1;
            }
            if let Some(info) = p.info() {
                self.queued_text = self.queued_text.saturating_sub(info.text_bytes());
            }
            p.expire();
            self.expired_prefix += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    // ------------------------------------------------------------------ fixture replay

    fn fixture_path(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/postgres")
            .join(file)
    }

    fn read(file: &str) -> Vec<u8> {
        let p = fixture_path(file);
        std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "fixture {} missing ({e}): see tests/fixtures/postgres/README.md",
                p.display()
            )
        })
    }

    /// One recorded connection: both directions and the order of the proxy's reads.
    struct Capture {
        name: String,
        fe: Vec<u8>,
        be: Vec<u8>,
        /// (direction, start, end) in that direction's bytes, in wire order.
        chunks: Vec<(Dir, usize, usize)>,
    }

    fn load(name: &str) -> Capture {
        let fe = read(&format!("{name}.fe"));
        let be = read(&format!("{name}.be"));
        let order = String::from_utf8(read(&format!("{name}.order"))).expect("order file is text");
        let (mut f, mut b) = (0usize, 0usize);
        let mut chunks = Vec::new();
        for line in order.lines().filter(|l| !l.is_empty()) {
            let (d, n) = line.split_once(' ').expect("order line is '<f|b> <bytes>'");
            let n: usize = n.parse().expect("order byte count");
            match d {
                "f" => {
                    chunks.push((Dir::Frontend, f, f + n));
                    f += n;
                }
                "b" => {
                    chunks.push((Dir::Backend, b, b + n));
                    b += n;
                }
                _ => panic!("bad order line {line:?}"),
            }
        }
        assert_eq!(
            (f, b),
            (fe.len(), be.len()),
            "{name}: order file does not add up to the captured bytes"
        );
        Capture {
            name: name.to_string(),
            fe,
            be,
            chunks,
        }
    }

    #[derive(Debug, Default)]
    struct Outcome {
        ops: Vec<Operation>,
        health: SessionHealth,
        skipped: u64,
        pending: usize,
        stopped: bool,
        user: Option<String>,
        database: Option<String>,
    }

    /// Feeds `chunks` to a new session, each chunk's copied prefix cut to `prefix` bytes.
    fn replay(c: &Capture, chunks: &[(Dir, usize, usize)], prefix: usize) -> Outcome {
        let mut s = PgSession::new();
        let mut o = Outcome::default();
        for (i, &(dir, a, b)) in chunks.iter().enumerate() {
            let bytes = match dir {
                Dir::Frontend => &c.fe[a..b],
                Dir::Backend => &c.be[a..b],
            };
            let t = i as u64 * 1000;
            let chunk = Chunk {
                data: &bytes[..bytes.len().min(prefix)],
                len: bytes.len(),
                start_ns: t,
                end_ns: t + 500,
            };
            match dir {
                Dir::Frontend => s.on_frontend(&chunk),
                Dir::Backend => s.on_backend(&chunk, &mut o.ops),
            }
            let h = s.take_health();
            o.health.parse_errors += h.parse_errors;
            o.health.timed_out += h.timed_out;
            o.health.lost.merge(&h.lost);
            o.health.stopped = o.health.stopped.or(h.stopped);
            o.health.tls |= h.tls;
            check_bounds(&s);
        }
        s.take_completed(&mut o.ops);
        o.skipped = s.take_skipped_executes();
        o.pending = s.pending();
        o.stopped = s.stopped();
        let (u, d) = s.user_and_database();
        o.user = u.map(str::to_string);
        o.database = d.map(str::to_string);
        o
    }

    fn check_bounds(s: &PgSession) {
        assert!(
            s.queue.len() <= MAX_PENDING,
            "queue {} > {MAX_PENDING}",
            s.queue.len()
        );
        assert!(s.live_ops <= s.queue.len());
        assert!(
            s.queued_text <= MAX_QUEUED_TEXT,
            "queued text {}",
            s.queued_text
        );
        assert!(s.stmts.len() <= MAX_CACHED_STATEMENTS);
        assert!(
            s.cached_text <= MAX_CACHED_TEXT,
            "cached text {}",
            s.cached_text
        );
        assert!(s.portals.len() <= MAX_NAMED_PORTALS);
        assert!(
            s.fe.body.capacity() <= 2 * FE_BODY_CAP,
            "fe body {}",
            s.fe.body.capacity()
        );
        assert!(
            s.be.body.capacity() <= 2 * FE_BODY_CAP,
            "be body {}",
            s.be.body.capacity()
        );
        assert!(s.inferred.len() <= MAX_PENDING);
        let terminators = s.queue.iter().filter(|p| p.is_terminator()).count();
        assert_eq!(terminators, s.terminators, "terminator count drifted");
        let live = s.queue.iter().filter(|p| p.is_live_op()).count();
        assert_eq!(live, s.live_ops, "live op count drifted");
    }

    /// The recorded chunks, each further cut wherever `cut(chunk index, length)` says.
    fn resplit(
        c: &Capture,
        mut cut: impl FnMut(usize, usize) -> Vec<usize>,
    ) -> Vec<(Dir, usize, usize)> {
        let mut out = Vec::new();
        for (i, &(d, a, b)) in c.chunks.iter().enumerate() {
            let mut at = a;
            let mut points = cut(i, b - a);
            points.sort_unstable();
            for p in points {
                if a + p > at && a + p < b {
                    out.push((d, at, a + p));
                    at = a + p;
                }
            }
            out.push((d, at, b));
        }
        out
    }

    /// All frontend bytes first, then all backend bytes: every request queued before any
    /// reply, the deepest pipelining there is.
    fn frontend_first(c: &Capture) -> Vec<(Dir, usize, usize)> {
        let mut v: Vec<_> = c
            .chunks
            .iter()
            .copied()
            .filter(|x| x.0 == Dir::Frontend)
            .collect();
        v.extend(c.chunks.iter().copied().filter(|x| x.0 == Dir::Backend));
        v
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn summary(ops: &[Operation]) -> Vec<(&'static str, Option<&str>)> {
        ops.iter()
            .map(|o| (o.name, o.error_type.as_deref()))
            .collect()
    }

    /// What each recorded connection must produce: (operation, error class).
    fn expected(name: &str) -> Vec<(&'static str, Option<&'static str>)> {
        let ok = |n: &'static str| (n, None);
        match name {
            "simple" => vec![
                ok("SELECT"),
                ok("INSERT"),
                ok("UPDATE"),
                ok("DELETE"),
                ok("BEGIN"),
                ok("SELECT"),
                ok("SELECT"),
                ok("LISTEN"),
                ok("NOTIFY"),
                ok("SET"),
                ok("SHOW"),
                ok("_OTHER"),
            ],
            "ssl_prefer" | "scram" | "large_result" | "copy_out" => {
                vec![ok(if name == "copy_out" { "COPY" } else { "SELECT" })]
            }
            "errors" => vec![
                ("SELECT", Some("42")),
                ("INSERT", Some("23")),
                ("SELECT", Some("42")),
                ("SELECT", Some("22")),
            ],
            "pgbench_extended" | "pgbench_prepared" | "many_rows" => vec![ok("SELECT"); 2],
            "pgbench_extended.1" => vec![ok("SELECT"); 5],
            "pgbench_prepared.1" => vec![ok("SELECT"); 20],
            "pipeline" => vec![
                ok("SELECT"),
                ok("UPDATE"),
                ok("SELECT"),
                ok("SELECT"),
                ok("SELECT"),
                ok("INSERT"),
                ok("DELETE"),
                ok("_OTHER"),
            ],
            "pipeline_error" => vec![
                ok("SELECT"),
                ("SELECT", Some("42")),
                ("INSERT", Some("23")),
                ok("INSERT"),
                ("INSERT", Some("22")),
                ok("DELETE"),
            ],
            "copy_in" | "copy_extended" => vec![ok("COPY"), ok("DELETE")],
            "psycopg_pipeline" => vec![ok("SELECT"); 501],
            "psycopg_copy" => vec![ok("COPY"), ok("COPY"), ok("DELETE")],
            "auth_fail" | "tls" | "cancel" => vec![],
            _ => panic!("no expectation for {name}"),
        }
    }

    const ALL: &[&str] = &[
        "simple",
        "ssl_prefer",
        "errors",
        "scram",
        "pgbench_extended",
        "pgbench_extended.1",
        "pgbench_prepared",
        "pgbench_prepared.1",
        "pipeline",
        "pipeline_error",
        "copy_in",
        "copy_out",
        "copy_extended",
        "large_result",
        "many_rows",
        "auth_fail",
        "tls",
        "cancel",
        "psycopg_pipeline",
        "psycopg_copy",
    ];

    fn assert_ops(c: &Capture, how: &str, o: &Outcome) {
        let want = expected(&c.name);
        assert_eq!(
            summary(&o.ops),
            want,
            "{} ({how}): operations differ; health {:?}",
            c.name,
            o.health
        );
        for op in &o.ops {
            assert!(
                op.start_ns <= op.end_ns,
                "{} ({how}): {op:?} ends before it starts",
                c.name
            );
        }
        if c.name == "tls" {
            assert!(
                o.health.tls && o.stopped,
                "{} ({how}): TLS not detected: {:?}",
                c.name,
                o.health
            );
        } else {
            assert_eq!(
                o.health,
                SessionHealth::default(),
                "{} ({how}): unexpected health",
                c.name
            );
        }
        assert_eq!(o.pending, 0, "{} ({how}): requests left open", c.name);
    }

    /// `got` appears in `want` in order (some may be missing). With cut prefixes a name
    /// or an error class may be unknown: `_OTHER` then stands for any; an answer that was
    /// never framed (completed because the client moved on) has no error information.
    fn is_subsequence(
        got: &[(&'static str, Option<&str>)],
        want: &[(&'static str, Option<&'static str>)],
    ) -> bool {
        let mut w = want.iter();
        got.iter().all(|g| {
            w.any(|x| {
                (g.0 == x.0 || g.0 == "_OTHER")
                    && (g.1 == x.1 || g.1.is_none() || (g.1 == Some("_OTHER") && x.1.is_some()))
            })
        })
    }

    #[test]
    fn fixtures_as_recorded() {
        for name in ALL {
            let c = load(name);
            let o = replay(&c, &c.chunks, usize::MAX);
            assert_ops(&c, "recorded chunks", &o);
        }
    }

    #[test]
    fn fixture_details() {
        let o = |n: &str| {
            let c = load(n);
            replay(&c, &c.chunks, usize::MAX)
        };
        let simple = o("simple");
        let texts: Vec<String> = simple.ops.iter().map(|o| o.statement.to_string()).collect();
        let st: Vec<_> = simple
            .ops
            .iter()
            .zip(&texts)
            .map(|(o, text)| (text.as_str(), o.collection.as_deref()))
            .collect();
        assert_eq!(
            st,
            vec![
                ("SELECT count(*) FROM items", Some("items")),
                ("INSERT INTO items VALUES (?, ?)", Some("items")),
                ("UPDATE items SET name = ? WHERE id = ?", Some("items")),
                ("DELETE FROM items WHERE id = ?", Some("items")),
                ("BEGIN; SELECT ?; COMMIT", None),
                ("WITH x AS (SELECT ? AS v) SELECT v FROM x", None),
                ("SELECT ?, ?, ?", None),
                ("LISTEN chan", None),
                ("NOTIFY chan, ?", None),
                ("SET application_name = ?", None),
                ("SHOW server_version_num", None),
                (";", None),
            ]
        );
        assert_eq!(
            (simple.user.as_deref(), simple.database.as_deref()),
            (Some("postgres"), Some("nodetap"))
        );
        // Timing: a Q starts with the chunk that carried it and ends with the chunk that
        // carried its ReadyForQuery (recorded chunk i is stamped i*1000 .. i*1000+500).
        let c = load("simple");
        let q_chunk = c
            .chunks
            .iter()
            .position(|&(d, a, _)| d == Dir::Frontend && c.fe[a] == b'Q')
            .unwrap();
        assert_eq!(simple.ops[0].start_ns, q_chunk as u64 * 1000);
        assert_eq!(simple.ops[0].end_ns, (q_chunk as u64 + 1) * 1000 + 500);

        let scram = o("scram");
        assert_eq!(scram.user.as_deref(), Some("scram_user"));

        let prepared = o("pgbench_prepared.1");
        for op in &prepared.ops {
            assert_eq!(
                op.statement,
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
            );
            assert_eq!(op.collection.as_deref(), Some("pgbench_accounts"));
        }
        let extended = o("pgbench_extended.1");
        assert!(extended
            .ops
            .iter()
            .all(|op| op.collection.as_deref() == Some("pgbench_accounts")));

        let pipe = o("pipeline");
        assert_eq!(
            pipe.ops[0].statement,
            "SELECT name FROM items WHERE id = $1"
        );
        assert_eq!(
            pipe.ops[2].statement,
            "SELECT g FROM generate_series(?, ?) g"
        );
        assert_eq!(
            pipe.ops[3].statement,
            "SELECT g FROM generate_series(?, ?) g"
        );
        // Three Syncs in flight: each Execute ends with its own reply chunk.
        assert!(pipe.ops[4].end_ns < pipe.ops[5].end_ns && pipe.ops[5].end_ns < pipe.ops[6].end_ns);

        let err = o("pipeline_error");
        // The Execute of the failed Parse, "SELECT 3", and the Execute after the failed
        // Bind never ran.
        assert_eq!(err.skipped, 4);
        assert_eq!(err.ops[1].statement, "SELECT * FROM no_such_table");

        let errors = o("errors");
        assert_eq!(
            errors.ops[2].statement,
            "SELECT ?; SELECT * FROM nope; SELECT ?"
        );

        let copy = o("copy_extended");
        assert_eq!(copy.ops[0].statement, "COPY copy_in FROM STDIN");

        let auth = o("auth_fail");
        assert_eq!(auth.user.as_deref(), Some("no_such_user"));
        let cancel = o("cancel");
        assert!(cancel.stopped && cancel.health.stopped.is_none());
    }

    #[test]
    fn fixtures_split_at_every_point() {
        for name in ALL {
            let c = load(name);
            let total = c.fe.len() + c.be.len();
            if total > 4096 {
                continue;
            }
            for (i, &(_, a, b)) in c.chunks.iter().enumerate() {
                for p in 1..(b - a) {
                    let chunks = resplit(&c, |j, _| if j == i { vec![p] } else { vec![] });
                    let o = replay(&c, &chunks, usize::MAX);
                    assert_ops(&c, &format!("chunk {i} split at {p}"), &o);
                }
            }
            let bytes = resplit(&c, |_, n| (1..n).collect());
            assert_ops(&c, "one byte at a time", &replay(&c, &bytes, usize::MAX));
        }
    }

    #[test]
    fn fixtures_random_splits() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for name in ALL {
            let c = load(name);
            for round in 0..20 {
                let chunks = resplit(&c, |_, n| (0..rng.below(6)).map(|_| rng.below(n)).collect());
                assert_ops(
                    &c,
                    &format!("random split round {round}"),
                    &replay(&c, &chunks, usize::MAX),
                );
            }
        }
    }

    #[test]
    fn fixtures_frontend_first() {
        for name in ALL {
            let c = load(name);
            let o = replay(&c, &frontend_first(&c), usize::MAX);
            assert_ops(&c, "all frontend bytes first", &o);
        }
    }

    #[test]
    fn fixtures_truncated_to_256() {
        for name in ALL {
            let c = load(name);
            let o = replay(&c, &c.chunks, 256);
            let want = expected(name);
            let got = summary(&o.ops);
            assert_eq!(o.health.stopped, None, "{name}: stopped");
            assert_eq!(o.pending, 0, "{name}: requests left open");
            match *name {
                // One client write of many small messages, longer than the copied prefix:
                // the requests past the prefix are never seen.
                "pipeline" | "pipeline_error" | "psycopg_pipeline" => {
                    assert!(is_subsequence(&got, &want), "{name}: {got:?}");
                    assert!(o.health.parse_errors > 0);
                }
                _ => assert_eq!(
                    got, want,
                    "{name}: operations differ with 256-byte prefixes; {:?}",
                    o.health
                ),
            }
            // Whatever was reported, its start and end are right where framing allowed.
            for op in &o.ops {
                assert!(op.start_ns <= op.end_ns);
            }
        }
        // The large result is followed by length (DataRows bigger than the prefix) or
        // completed when the client moves on: it ends with the last chunk of the answer.
        let c = load("large_result");
        let o = replay(&c, &c.chunks, 256);
        let last_be = c.chunks.iter().rposition(|x| x.0 == Dir::Backend).unwrap() as u64;
        assert_eq!(o.ops[0].end_ns, last_be * 1000 + 500);
        let c = load("many_rows");
        let o = replay(&c, &c.chunks, 256);
        let first_q = c
            .chunks
            .iter()
            .position(|x| x.0 == Dir::Frontend && c.fe[x.1] == b'Q')
            .unwrap() as u64;
        assert_eq!(o.ops[0].start_ns, first_q * 1000);
        let second_q = c
            .chunks
            .iter()
            .rposition(|x| x.0 == Dir::Frontend && c.fe[x.1] == b'Q')
            .unwrap();
        assert_eq!(
            o.ops[0].end_ns,
            (second_q as u64 - 1) * 1000 + 500,
            "ends with the last chunk before the next query"
        );
    }

    #[test]
    fn fixtures_random_splits_and_truncation() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for name in ALL {
            let c = load(name);
            let want = expected(name);
            // More with NODETAP_PG_ROUNDS=5000 (5000 x 18 fixtures pass).
            let rounds = std::env::var("NODETAP_PG_ROUNDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(40);
            for round in 0..rounds {
                let chunks = resplit(&c, |_, n| (0..rng.below(4)).map(|_| rng.below(n)).collect());
                let prefix = [0, 1, 5, 16, 64, 256, 1024][rng.below(7)];
                let o = replay(&c, &chunks, prefix);
                let got = summary(&o.ops);
                if o.health.parse_errors == 0 {
                    assert_eq!(
                        got, want,
                        "{name} round {round} prefix {prefix}: no framing error, yet ops differ"
                    );
                } else if matches!(*name, "pipeline" | "pipeline_error" | "psycopg_pipeline") {
                    // A lost write holding several Syncs: how many answers it gets is
                    // unknown, and later pipelined operations may be misattributed until
                    // the pipeline drains (documented). Still bounded: one operation per
                    // completion message at most, plus inferred ones.
                    assert!(
                        got.len() <= 2 * want.len(),
                        "{name} round {round} prefix {prefix}: {got:?}"
                    );
                } else {
                    assert!(
                        is_subsequence(&got, &want),
                        "{name} round {round} prefix {prefix}: {got:?} not within {want:?}"
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------------ real clients

    /// The recorded chunks, with chunk `gap` not copied at all (a gap chunk).
    fn replay_with_gap(c: &Capture, gap: usize) -> Outcome {
        let mut s = PgSession::new();
        let mut o = Outcome::default();
        for (i, &(dir, a, b)) in c.chunks.iter().enumerate() {
            let bytes = match dir {
                Dir::Frontend => &c.fe[a..b],
                Dir::Backend => &c.be[a..b],
            };
            let t = i as u64 * 1000;
            let chunk = Chunk {
                data: if i == gap { &[] } else { bytes },
                len: bytes.len(),
                start_ns: t,
                end_ns: t + 500,
            };
            match dir {
                Dir::Frontend => s.on_frontend(&chunk),
                Dir::Backend => s.on_backend(&chunk, &mut o.ops),
            }
            let h = s.take_health();
            o.health.parse_errors += h.parse_errors;
            o.health.timed_out += h.timed_out;
            o.health.lost.merge(&h.lost);
            check_bounds(&s);
        }
        s.take_completed(&mut o.ops);
        o.pending = s.pending();
        o
    }

    #[test]
    fn psycopg_pipeline_mode_is_exact() {
        // 500 parameterised SELECTs in pipeline mode: Bind/Describe/Execute per query in
        // many writes, one Sync, every result in one read.
        let c = load("psycopg_pipeline");
        let o = replay(&c, &c.chunks, usize::MAX);
        assert_ops(&c, "recorded", &o);
        let results = c
            .chunks
            .iter()
            .position(|x| x.0 == Dir::Backend && x.2 - x.1 > 30_000)
            .expect("the read holding all results");
        for (i, op) in o.ops[..500].iter().enumerate() {
            assert_eq!(op.end_ns, results as u64 * 1000 + 500, "end of #{i}");
            assert!(op.start_ns < op.end_ns);
            assert_eq!(op.statement, "SELECT name FROM items WHERE id = $1");
        }
        // Each query starts with the write holding its first message.
        assert!(o.ops[..500]
            .windows(2)
            .all(|w| w[0].start_ns <= w[1].start_ns));
        assert_eq!(o.ops[0].start_ns, 2000, "the first pipelined write");
    }

    #[test]
    fn psycopg_copy_in_and_out_are_exact() {
        let c = load("psycopg_copy");
        let o = replay(&c, &c.chunks, usize::MAX);
        assert_ops(&c, "recorded", &o);
        // COPY TO STDOUT ends with the last of the reads holding its 5,000 rows.
        let last_rows = c
            .chunks
            .iter()
            .rposition(|x| x.0 == Dir::Backend && x.2 - x.1 > 60_000)
            .unwrap();
        assert_eq!(o.ops[1].end_ns, last_rows as u64 * 1000 + 500);
        for (name, prefix) in [("64 KiB", 65_536), ("4 KiB", 4096)] {
            let o = replay(&c, &c.chunks, prefix);
            assert_eq!(summary(&o.ops), expected("psycopg_copy"), "{name}");
        }
    }

    #[test]
    fn psycopg_pipeline_with_lost_results_then_exact() {
        // The read holding all 500 results is lost: when the client sends its next query,
        // it has read them all (one Sync group was open), so the 500 complete there, and the
        // next query is exact.
        let c = load("psycopg_pipeline");
        let gap = c
            .chunks
            .iter()
            .position(|x| x.0 == Dir::Backend && x.2 - x.1 > 30_000)
            .unwrap();
        let o = replay_with_gap(&c, gap);
        assert_eq!(summary(&o.ops), expected("psycopg_pipeline"));
        assert!(o.ops[..500]
            .iter()
            .all(|op| op.end_ns == gap as u64 * 1000 + 500));
        assert_eq!(o.ops[500].statement, "SELECT count(*) FROM items");
        assert_eq!(
            (o.health.parse_errors, o.health.lost.total(), o.pending),
            (1, 0, 0)
        );
    }

    #[test]
    fn psycopg_pipeline_with_lost_requests_then_exact() {
        // A write of the pipeline is lost: the answers to what it held are reported from
        // the answers alone, and the query after the pipeline is exact.
        let c = load("psycopg_pipeline");
        let gap = c
            .chunks
            .iter()
            .position(|x| x.0 == Dir::Frontend && x.2 - x.1 > 10_000)
            .unwrap();
        let o = replay_with_gap(&c, gap);
        assert_eq!(
            summary(&o.ops),
            expected("psycopg_pipeline"),
            "{:?}",
            o.health
        );
        assert_eq!(o.ops[500].statement, "SELECT count(*) FROM items");
        assert_eq!(
            (o.health.parse_errors, o.health.lost.total(), o.pending),
            (1, 0, 0)
        );
    }

    #[test]
    fn skip_hints() {
        let mut s = started();
        // A Query's text is kept up to 4 KiB: the rest of a longer one is skipped.
        let sql = format!("SELECT '{}'", "x".repeat(10_000));
        let query = q(&sql);
        fe(&mut s, &query[..100], 1);
        assert_eq!(s.skip_hint(true), 0, "statement text still wanted");
        fe(&mut s, &query[100..5 + FE_BODY_CAP], 1);
        assert_eq!(s.skip_hint(true), (query.len() - 5 - FE_BODY_CAP) as u64);
        s.on_frontend(&Chunk {
            data: &[],
            len: query.len() - 5 - FE_BODY_CAP,
            start_ns: 1,
            end_ns: 1,
        });
        assert_eq!(s.skip_hint(true), 0);
        // A DataRow is not looked at: all of its body after the header.
        let row = m(b'D', &[b'r'; 100_000]);
        let mut out = be(&mut s, &[m(b'T', &[0, 0]), row[..7].to_vec()].concat(), 2);
        assert_eq!(s.skip_hint(false), 100_000 - 2);
        s.on_backend(
            &Chunk {
                data: &[],
                len: 100_000 - 2,
                start_ns: 2,
                end_ns: 2,
            },
            &mut out,
        );
        out.extend(be(&mut s, &[m(b'C', b"SELECT 1\0"), ready()].concat(), 3));
        assert_eq!(summary(&out), vec![("SELECT", None)]);
        assert_eq!(out[0].statement, "SELECT ?");
        assert_eq!(s.take_health(), SessionHealth::default());
        // Lost framing: no hint until realigned.
        s.on_backend(
            &Chunk {
                data: &[b'D', 0],
                len: 1000,
                start_ns: 4,
                end_ns: 4,
            },
            &mut out,
        );
        assert_eq!(s.skip_hint(false), 0);
    }

    // ------------------------------------------------------------------ hand-made traffic

    fn m(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn q(sql: &str) -> Vec<u8> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        m(b'Q', &b)
    }

    fn startup() -> Vec<u8> {
        let mut body = 196608u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0app\0\0");
        let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    }

    fn ready() -> Vec<u8> {
        m(b'Z', b"I")
    }

    fn fe(s: &mut PgSession, bytes: &[u8], t: u64) {
        s.on_frontend(&Chunk::whole(bytes, t, t));
    }

    fn be(s: &mut PgSession, bytes: &[u8], t: u64) -> Vec<Operation> {
        let mut out = Vec::new();
        s.on_backend(&Chunk::whole(bytes, t, t), &mut out);
        out
    }

    fn started() -> PgSession {
        let mut s = PgSession::new();
        fe(&mut s, &startup(), 0);
        be(&mut s, &[m(b'R', &[0, 0, 0, 0]), ready()].concat(), 1);
        s
    }

    fn error(code: &str) -> Vec<u8> {
        m(
            b'E',
            format!("SERROR\0VERROR\0C{code}\0Mboom\0\0").as_bytes(),
        )
    }

    #[test]
    fn detection() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(looks_like_startup(&ssl));
        assert!(looks_like_startup(&gss));
        assert!(looks_like_startup(&cancel));
        assert!(looks_like_startup(&startup()));
        assert!(looks_like_startup(&startup()[..12]));
        for name in ["simple", "ssl_prefer", "scram", "tls", "cancel", "pipeline"] {
            assert!(looks_like_startup(&load(name).fe), "{name}");
        }
        for no in [
            &b"*3\r\n$3\r\nSET\r\n"[..],
            b"+PONG\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"POST /api HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            &[0, 0, 0, 8, 0, 2, 0, 0],             // protocol 2.0
            &[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f], // SSLRequest with a wrong length
            &[0, 0, 0, 20, 0, 3, 0, 0, b'1'],      // parameters must start with a name
            &ssl[..7],
            b"",
        ] {
            assert!(!looks_like_startup(no), "{no:?}");
        }
    }

    #[test]
    fn obfuscation() {
        let cases = [
            (
                "SELECT * FROM t WHERE a = 'x' AND b = 42",
                "SELECT * FROM t WHERE a = ? AND b = ?",
            ),
            (
                "select  'it''s',\n\t E'a\\'b' , $$x$$, $q$ a $$ b $q$",
                "select ?, ? , ?, ?",
            ),
            (
                "INSERT INTO t1 (c2) VALUES (3.5e-3), (.5), (0x1F), (1_000)",
                "INSERT INTO t1 (c2) VALUES (?), (?), (?), (?)",
            ),
            (
                "SELECT $1, $2::int FROM t WHERE x = $10",
                "SELECT $1, $2::int FROM t WHERE x = $10",
            ),
            (
                "/* a 'b' /* nested */ c */ SELECT 1 -- trailing 'x'\n",
                "SELECT ?",
            ),
            (
                "SELECT \"weird \"\" 1\" FROM \"T2\"",
                "SELECT \"weird \"\" 1\" FROM \"T2\"",
            ),
            ("SELECT x'ff', B'101', N'n'", "SELECT ?, ?, ?"),
            ("SELECT -5, a-1, col1+2", "SELECT -?, a-?, col1+?"),
            ("SELECT 'unterminated", "SELECT ?"),
            ("SELECT $tag$unterminated", "SELECT ?"),
            ("SELECT 'héllo', ünïcode", "SELECT ?, ünïcode"),
            ("", ""),
        ];
        for (sql, want) in cases {
            assert_eq!(obfuscate_sql(sql, 1024), want, "{sql:?}");
        }
        let long = format!("SELECT {}", "ééé, ".repeat(500));
        let cut = obfuscate_sql(&long, 1024);
        assert!(
            cut.len() <= 1024 && long.starts_with(&cut),
            "cut on a char boundary"
        );
        assert_eq!(obfuscate_sql("SELECT 1", 3), "SEL");
    }

    #[test]
    fn operation_names() {
        let cases = [
            ("select 1", "SELECT"),
            ("  -- c\n /* d */ ((SELECT 1) UNION (SELECT 2))", "SELECT"),
            (
                "WITH x AS (SELECT 1), y AS (DELETE FROM t RETURNING *) SELECT * FROM x",
                "SELECT",
            ),
            (
                "WITH RECURSIVE r(n) AS (VALUES (1)) INSERT INTO t SELECT n FROM r",
                "INSERT",
            ),
            (
                "with moved as (delete from a returning *) update b set x = 1",
                "UPDATE",
            ),
            ("WITH x AS (SELECT 1)", "SELECT"),
            ("start transaction isolation level serializable", "BEGIN"),
            ("START", "_OTHER"),
            ("begin", "BEGIN"),
            ("END", "COMMIT"),
            ("abort", "ROLLBACK"),
            ("VALUES (1), (2)", "SELECT"),
            ("TABLE t", "SELECT"),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
            ("analyse t", "ANALYZE"),
            ("REFRESH MATERIALIZED VIEW v", "REFRESH"),
            ("DO $$ BEGIN END $$", "DO"),
            ("checkpoint", "CHECKPOINT"),
            ("REINDEX TABLE t", "_OTHER"),
            ("", "_OTHER"),
            (";", "_OTHER"),
            ("'lit'", "_OTHER"),
            ("SELECT 5", "SELECT"),
            ("INSERT 0 1", "INSERT"),
            ("CREATE TABLE", "CREATE"),
        ];
        for (sql, want) in cases {
            assert_eq!(operation_name(sql), want, "{sql:?}");
        }
        for kw in [
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "MERGE",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT",
            "RELEASE",
            "CREATE",
            "DROP",
            "ALTER",
            "TRUNCATE",
            "COPY",
            "SET",
            "SHOW",
            "RESET",
            "DISCARD",
            "EXPLAIN",
            "ANALYZE",
            "VACUUM",
            "GRANT",
            "REVOKE",
            "LOCK",
            "PREPARE",
            "EXECUTE",
            "DEALLOCATE",
            "LISTEN",
            "NOTIFY",
            "UNLISTEN",
            "DECLARE",
            "FETCH",
            "MOVE",
            "CLOSE",
            "CALL",
            "DO",
            "REFRESH",
            "COMMENT",
            "CHECKPOINT",
        ] {
            assert_eq!(operation_name(&format!("{} x", kw.to_lowercase())), kw);
        }
    }

    #[test]
    fn collections() {
        let cases = [
            ("INSERT INTO items (a) VALUES (1)", Some("items")),
            (
                "insert into public.items values (1) returning id",
                Some("public.items"),
            ),
            ("INSERT INTO t SELECT * FROM u", None),
            (
                "UPDATE ONLY \"Items\" SET a = 1 WHERE id = 2",
                Some("\"Items\""),
            ),
            ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", None),
            ("DELETE FROM t WHERE id IN (SELECT id FROM u)", None),
            ("DELETE FROM t USING u WHERE t.id = u.id", None),
            ("DELETE FROM s.t WHERE id = 1", Some("s.t")),
            ("SELECT a FROM t WHERE b = 1", Some("t")),
            ("SELECT a FROM t AS x ORDER BY a", Some("t")),
            ("SELECT a FROM t x LIMIT 1", Some("t")),
            ("SELECT a FROM t;", Some("t")),
            ("SELECT a FROM t; SELECT b FROM u", Some("t")),
            ("SELECT a FROM t, u", None),
            ("SELECT a FROM t JOIN u ON true", None),
            ("SELECT a FROM t UNION SELECT a FROM u", None),
            ("SELECT extract(year FROM d) FROM t", None),
            ("SELECT a FROM generate_series(1, 3) a", None),
            ("SELECT a FROM (SELECT 1 AS a) s", None),
            ("SELECT 1", None),
            ("WITH x AS (SELECT 1) SELECT * FROM x", None),
            ("SELECT 'FROM t' FROM u", Some("u")),
        ];
        for (sql, want) in cases {
            let got = collection_of(sql, operation_name(sql));
            assert_eq!(got.as_deref(), want, "{sql:?}");
        }
        let long = format!("SELECT a FROM {}", "t".repeat(200));
        assert_eq!(collection_of(&long, "SELECT"), None, "too long");
    }

    #[test]
    fn error_classes() {
        let class = |b: &[u8]| ErrClass::from_error_response(b).label();
        assert_eq!(class(b"SERROR\0VERROR\0C42P01\0Mx\0\0"), "42");
        assert_eq!(class(b"C23505\0\0"), "23");
        assert_eq!(class(b"SERROR\0Cx1\0\0"), "_OTHER");
        assert_eq!(class(b"SERROR\0Mno code\0\0"), "_OTHER");
        assert_eq!(class(b"SERROR\0C4"), "_OTHER");
        assert_eq!(class(b""), "_OTHER");
        assert_eq!(class(b"SERR"), "_OTHER");
        let code = |b: &[u8]| ErrClass::from_error_response(b).code();
        assert_eq!(
            code(b"SERROR\0VERROR\0C42P01\0Mx\0\0").as_deref(),
            Some("42P01")
        );
        assert_eq!(code(b"C4200\0\0"), None, "not five characters");
        assert_eq!(code(b"C42p01\0\0"), None, "not a SQLSTATE's characters");
    }

    #[test]
    fn encryption_answers() {
        for (answer, tls) in [(b'S', true), (b'G', true), (b'N', false)] {
            let mut s = PgSession::new();
            let code: u32 = if answer == b'G' {
                GSSENC_REQUEST_CODE
            } else {
                SSL_REQUEST_CODE
            };
            let mut req = 8u32.to_be_bytes().to_vec();
            req.extend_from_slice(&code.to_be_bytes());
            fe(&mut s, &req, 0);
            be(&mut s, &[answer], 1);
            if tls {
                let h = s.take_health();
                assert!(h.tls && h.stopped.is_none() && s.stopped());
                // O(1) from here: nothing is parsed, nothing reported.
                fe(&mut s, &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5], 2);
                assert!(be(&mut s, &[0x17; 100], 3).is_empty());
                assert_eq!(s.take_health(), SessionHealth::default());
            } else {
                fe(&mut s, &startup(), 2);
                be(&mut s, &[m(b'R', &[0; 4]), ready()].concat(), 3);
                fe(&mut s, &q("SELECT 1"), 4);
                let ops = be(&mut s, &[m(b'C', b"SELECT 1\0"), ready()].concat(), 5);
                assert_eq!(summary(&ops), vec![("SELECT", None)]);
                assert_eq!(s.user_and_database(), (Some("app"), Some("app")));
            }
        }
        // GSSENC refused, then SSL refused, then plain start-up.
        let mut s = PgSession::new();
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
        fe(&mut s, &req, 0);
        be(&mut s, b"N", 1);
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        fe(&mut s, &req, 2);
        be(&mut s, b"N", 3);
        fe(&mut s, &startup(), 4);
        be(&mut s, &[m(b'R', &[0; 4]), ready()].concat(), 5);
        assert_eq!(s.take_health(), SessionHealth::default());
        assert!(!s.stopped());
    }

    #[test]
    fn async_messages_are_not_replies() {
        let mut s = started();
        fe(&mut s, &q("SELECT 1"), 10);
        let ops = be(
            &mut s,
            &[
                m(b'N', b"SNOTICE\0C00000\0Mhi\0\0"),
                m(b'A', b"\0\0\0\x01chan\0payload\0"),
                m(b'S', b"TimeZone\0UTC\0"),
                m(b'T', &[0, 0]),
                m(b'C', b"SELECT 0\0"),
                m(b'N', b"SWARNING\0C01000\0Mw\0\0"),
                ready(),
            ]
            .concat(),
            11,
        );
        assert_eq!(summary(&ops), vec![("SELECT", None)]);
        assert_eq!((ops[0].start_ns, ops[0].end_ns), (10, 11));
    }

    #[test]
    fn tag_names_unknown_statements() {
        // A named statement prepared before we saw the connection: the tag names it.
        let mut s = started();
        fe(
            &mut s,
            &[
                m(b'B', b"\0old_stmt\0\0\0\0\0\0\0"),
                m(b'E', b"\0\0\0\0\0"),
                m(b'S', b""),
            ]
            .concat(),
            10,
        );
        let ops = be(
            &mut s,
            &[m(b'2', b""), m(b'C', b"UPDATE 3\0"), ready()].concat(),
            11,
        );
        assert_eq!(summary(&ops), vec![("UPDATE", None)]);
        assert_eq!(ops[0].statement, "");
        // WITH ... : the tag confirms the main verb.
        fe(
            &mut s,
            &q("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a"),
            12,
        );
        let ops = be(&mut s, &[m(b'C', b"INSERT 0 1\0"), ready()].concat(), 13);
        assert_eq!(summary(&ops), vec![("INSERT", None)]);
        // A known verb is not renamed by the tag (COMMIT of a failed transaction says ROLLBACK).
        fe(&mut s, &q("COMMIT"), 14);
        let ops = be(&mut s, &[m(b'C', b"ROLLBACK\0"), ready()].concat(), 15);
        assert_eq!(summary(&ops), vec![("COMMIT", None)]);
    }

    #[test]
    fn statement_cache_is_bounded_and_lru() {
        let mut s = started();
        for i in 0..(MAX_CACHED_STATEMENTS + 50) {
            let body = format!("s{i}\0INSERT INTO t{i} VALUES ($1)\0\0\0");
            fe(
                &mut s,
                &[m(b'P', body.as_bytes()), m(b'S', b"")].concat(),
                i as u64,
            );
            be(&mut s, &[m(b'1', b""), ready()].concat(), i as u64);
            if i % 10 == 0 {
                // Keep s0 in use.
                fe(
                    &mut s,
                    &[m(b'D', b"Ss0\0"), m(b'S', b"")].concat(),
                    i as u64,
                );
                be(&mut s, &[m(b'n', b""), ready()].concat(), i as u64);
            }
        }
        assert!(s.stmts.len() <= MAX_CACHED_STATEMENTS);
        assert!(
            s.stmts.contains_key("s0"),
            "recently used statement evicted"
        );
        assert!(
            !s.stmts.contains_key("s1"),
            "least recently used statement kept"
        );
        fe(
            &mut s,
            &[
                m(b'B', b"\0s0\0\0\0\0\0\0\0"),
                m(b'E', b"\0\0\0\0\0"),
                m(b'S', b""),
            ]
            .concat(),
            1000,
        );
        let ops = be(
            &mut s,
            &[m(b'2', b""), m(b'C', b"INSERT 0 1\0"), ready()].concat(),
            1001,
        );
        assert_eq!(ops[0].collection.as_deref(), Some("t0"));
        // DEALLOCATE ALL forgets them all.
        fe(&mut s, &q("DEALLOCATE ALL"), 1002);
        be(
            &mut s,
            &[m(b'C', b"DEALLOCATE ALL\0"), ready()].concat(),
            1003,
        );
        assert!(s.stmts.is_empty());
        // A Close of a statement forgets it.
        fe(
            &mut s,
            &[
                m(b'P', b"x\0SELECT 1\0\0\0"),
                m(b'C', b"Sx\0"),
                m(b'S', b""),
            ]
            .concat(),
            1004,
        );
        be(
            &mut s,
            &[m(b'1', b""), m(b'3', b""), ready()].concat(),
            1005,
        );
        assert!(s.stmts.is_empty() && s.queue.is_empty());
    }

    #[test]
    fn open_requests_are_bounded() {
        let mut s = started();
        for i in 0..(MAX_PENDING + 1000) {
            fe(
                &mut s,
                &q(&format!("SELECT '{}' FROM t{i}", "x".repeat(2000))),
                i as u64,
            );
            check_bounds(&s);
        }
        assert_eq!(s.queue.len(), MAX_PENDING);
        let h = s.take_health();
        assert_eq!(
            (h.timed_out, h.lost.queue_full),
            (0, 1000),
            "overflow counted"
        );
        assert!(s.queued_text <= MAX_QUEUED_TEXT);
        // The newest ones still have names, even without their text.
        let last = s.queue.back().unwrap();
        assert_eq!(last.info().unwrap().name, "SELECT");
    }

    #[test]
    fn expiry_keeps_alignment() {
        let mut s = started();
        fe(&mut s, &q("SELECT slow"), 100);
        fe(&mut s, &q("UPDATE t SET a = 1"), 200);
        assert_eq!(s.pending(), 2);
        s.expire(1_150, 1_000); // the first is older than 1000 ns
        assert_eq!(s.pending(), 1);
        assert_eq!(s.take_health().timed_out, 1);
        s.expire(1_150, 1_000); // idempotent
        assert_eq!(s.take_health().timed_out, 0);
        // The late answer to the expired query is not reported, and does not close the next.
        let ops = be(&mut s, &[m(b'C', b"SELECT 1\0"), ready()].concat(), 2000);
        assert!(ops.is_empty());
        let ops = be(&mut s, &[m(b'C', b"UPDATE 1\0"), ready()].concat(), 2100);
        assert_eq!(summary(&ops), vec![("UPDATE", None)]);
        assert_eq!((ops[0].start_ns, ops[0].end_ns), (200, 2100));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn copy_fail_and_function_call() {
        let mut s = started();
        fe(&mut s, &q("COPY t FROM STDIN"), 1);
        be(&mut s, &m(b'G', &[0, 0, 1, 0, 0]), 2);
        fe(
            &mut s,
            &[m(b'd', b"1\n"), m(b'f', b"client gave up\0")].concat(),
            3,
        );
        let ops = be(&mut s, &[error("57014"), ready()].concat(), 4);
        assert_eq!(summary(&ops), vec![("COPY", Some("57"))]);
        // Fast-path function call.
        fe(&mut s, &m(b'F', &[0, 0, 0x0b, 0xb8, 0, 0, 0, 0, 0, 0]), 5);
        let ops = be(&mut s, &[m(b'V', &[0, 0, 0, 1, 7]), ready()].concat(), 6);
        assert_eq!(summary(&ops), vec![("_OTHER", None)]);
    }

    #[test]
    fn lost_backend_framing_with_pipelined_requests_drops_them() {
        let mut s = started();
        fe(&mut s, &[q("SELECT 1"), q("SELECT 2")].concat(), 10);
        // A reply whose second header was not copied.
        let reply = [m(b'T', &[0, 0]), m(b'D', &[0, 0]), m(b'D', &[0, 0])].concat();
        let mut out = Vec::new();
        s.on_backend(
            &Chunk {
                data: &reply[..8],
                len: reply.len(),
                start_ns: 11,
                end_ns: 11,
            },
            &mut out,
        );
        assert_eq!(s.take_health().parse_errors, 1);
        // Realigned at a chunk that starts cleanly: the two requests in doubt are dropped.
        let ops = be(
            &mut s,
            &[
                m(b'C', b"SELECT 1\0"),
                ready(),
                m(b'C', b"SELECT 1\0"),
                ready(),
            ]
            .concat(),
            12,
        );
        assert!(ops.is_empty(), "{ops:?}");
        let h = s.take_health();
        assert_eq!((h.timed_out, h.lost.capture_gap), (0, 2));
        assert_eq!(s.pending(), 0);
        // And the next request is matched normally.
        fe(&mut s, &q("DELETE FROM t"), 13);
        let ops = be(&mut s, &[m(b'C', b"DELETE 1\0"), ready()].concat(), 14);
        assert_eq!(summary(&ops), vec![("DELETE", None)]);
    }

    #[test]
    fn lost_backend_framing_realigns_on_a_trailing_ready_for_query() {
        let mut s = started();
        fe(&mut s, &q("SELECT * FROM missing"), 10);
        let rows: Vec<u8> = (0..100)
            .flat_map(|_| m(b'D', &[0, 1, 0, 0, 0, 1, b'x']))
            .collect();
        let mut out = Vec::new();
        s.on_backend(
            &Chunk {
                data: &rows[..30],
                len: rows.len(),
                start_ns: 11,
                end_ns: 11,
            },
            &mut out,
        );
        // Starts in the middle of a DataRow, ends with ErrorResponse + ReadyForQuery.
        let tail = [vec![0, b'x'], error("42P01"), ready()].concat();
        s.on_backend(&Chunk::whole(&tail, 12, 13), &mut out);
        assert_eq!(summary(&out), vec![("SELECT", Some("42"))]);
        assert_eq!(out[0].end_ns, 13);
        let h = s.take_health();
        assert_eq!((h.parse_errors, h.timed_out), (1, 0));
    }

    #[test]
    fn lost_frontend_framing_reports_answers_from_the_gap() {
        let mut s = started();
        // A long Parse and its Bind/Execute/Sync in one write; only 256 bytes copied.
        let sql = format!(
            "UPDATE items SET name = '{}' WHERE id = 7",
            "y".repeat(1000)
        );
        let mut parse = b"\0".to_vec();
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(b"\0\0\0");
        let write = [
            m(b'P', &parse),
            m(b'B', b"\0\0\0\0\0\0\0\0"),
            m(b'E', b"\0\0\0\0\0"),
            m(b'S', b""),
        ]
        .concat();
        s.on_frontend(&Chunk {
            data: &write[..256],
            len: write.len(),
            start_ns: 10,
            end_ns: 10,
        });
        assert_eq!(s.take_health().parse_errors, 1);
        let ops = be(
            &mut s,
            &[m(b'1', b""), m(b'2', b""), m(b'C', b"UPDATE 1\0"), ready()].concat(),
            20,
        );
        assert_eq!(summary(&ops), vec![("UPDATE", None)]);
        assert_eq!((ops[0].start_ns, ops[0].end_ns), (10, 20));
        // The statement text is what the copied prefix held (the literal is cut short).
        assert_eq!(ops[0].statement, "UPDATE items SET name = ?");
        assert_eq!(ops[0].collection.as_deref(), Some("items"));
        assert!(s.queue.is_empty());
        // The next write starts cleanly: back in step.
        fe(&mut s, &q("DELETE FROM t"), 30);
        let ops = be(&mut s, &[m(b'C', b"DELETE 2\0"), ready()].concat(), 31);
        assert_eq!(summary(&ops), vec![("DELETE", None)]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn never_gives_up_after_repeated_losses() {
        let mut s = started();
        let answer = [m(b'C', b"SELECT 1\0"), ready()].concat();
        let mut ops = Vec::new();
        for i in 0..1000u64 {
            fe(&mut s, &q("SELECT 1"), 10 * i);
            // The answer's header was not copied: framing lost, and found again when the
            // client sends its next query (it read the whole answer).
            s.on_backend(
                &Chunk {
                    data: &answer[..3],
                    len: answer.len(),
                    start_ns: 10 * i + 5,
                    end_ns: 10 * i + 6,
                },
                &mut ops,
            );
        }
        fe(&mut s, &q("DELETE FROM t"), 20_000);
        ops.extend(be(
            &mut s,
            &[m(b'C', b"DELETE 3\0"), ready()].concat(),
            20_001,
        ));
        let h = s.take_health();
        assert_eq!((h.parse_errors, h.lost.total(), h.stopped), (1000, 0, None));
        assert_eq!(ops.len(), 1001);
        assert!(ops[..1000].iter().all(|o| o.name == "SELECT"), "{ops:?}");
        assert_eq!(ops[999].end_ns, 9996, "ends with the last backend chunk");
        assert_eq!(ops[1000].name, "DELETE");
        assert!(!s.stopped());
        // Garbage instead of a start-up packet: typed messages are looked for next.
        let mut s = PgSession::new();
        fe(&mut s, &[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff], 0);
        assert_eq!(s.take_health().parse_errors, 1);
        fe(&mut s, &q("SELECT 1"), 1);
        let ops = be(&mut s, &answer, 2);
        assert_eq!(summary(&ops), vec![("SELECT", None)]);
        assert_eq!(s.take_health(), SessionHealth::default());
    }

    #[test]
    fn mid_stream_pickup() {
        // A session created after the start-up: typed messages from the first byte.
        let mut s = PgSession::new();
        fe(&mut s, &q("SELECT 1"), 1);
        let ops = be(&mut s, &[m(b'C', b"SELECT 1\0"), ready()].concat(), 2);
        assert_eq!(summary(&ops), vec![("SELECT", None)]);
        assert_eq!(s.user_and_database(), (None, None));
    }

    // ------------------------------------------------------------------ properties

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A message of a valid type for the direction, with a random body.
        fn message(dir: Dir) -> impl Strategy<Value = Vec<u8>> {
            let types: &'static [u8] = match dir {
                Dir::Frontend => b"QPBEDCSHXdcfFp",
                Dir::Backend => b"RK123nIsZCDdTtENSAGHWVvc",
            };
            let sql = prop::sample::select(vec![
                &b"SELECT 1\0"[..],
                b"INSERT INTO t VALUES ('x')\0",
                b"\0WITH a AS (SELECT 1) SELECT 2\0\0\0",
                b"s1\0UPDATE t SET a = $1\0\0\0",
                b"\0s1\0\0\0\0\0\0\0",
                b"\0\0\0\0\0",
                b"SERROR\0C42601\0\0",
                b"I",
                b"Ss1\0",
                b"P\0",
                b"",
            ]);
            (
                prop::sample::select(types),
                prop_oneof![
                    sql.prop_map(|b| b.to_vec()),
                    prop::collection::vec(any::<u8>(), 0..40)
                ],
            )
                .prop_map(|(t, body)| m(t, &body))
        }

        #[derive(Debug, Clone)]
        struct Step {
            frontend: bool,
            bytes: Vec<u8>,
            prefix: usize,
            extra_unknown: usize,
        }

        fn steps() -> impl Strategy<Value = Vec<Step>> {
            let step = prop_oneof![
                (
                    prop::collection::vec(message(Dir::Frontend), 1..6),
                    0..300usize,
                    0..3usize
                )
                    .prop_map(|(ms, prefix, x)| Step {
                        frontend: true,
                        bytes: ms.concat(),
                        prefix,
                        extra_unknown: x * 1000,
                    }),
                (
                    prop::collection::vec(message(Dir::Backend), 1..6),
                    0..300usize,
                    0..3usize
                )
                    .prop_map(|(ms, prefix, x)| Step {
                        frontend: false,
                        bytes: ms.concat(),
                        prefix,
                        extra_unknown: x * 1000,
                    }),
                (
                    any::<bool>(),
                    prop::collection::vec(any::<u8>(), 0..64),
                    0..300usize
                )
                    .prop_map(|(frontend, bytes, prefix)| Step {
                        frontend,
                        bytes,
                        prefix,
                        extra_unknown: 0,
                    }),
            ];
            prop::collection::vec(step, 0..40)
        }

        fn run(start: bool, steps: &[Step]) {
            let mut s = if start { started() } else { PgSession::new() };
            let mut out = Vec::new();
            for (i, st) in steps.iter().enumerate() {
                let data = &st.bytes[..st.bytes.len().min(st.prefix)];
                let len = st.bytes.len() + st.extra_unknown;
                let chunk = Chunk {
                    data,
                    len,
                    start_ns: i as u64,
                    end_ns: i as u64,
                };
                if st.frontend {
                    s.on_frontend(&chunk);
                } else {
                    s.on_backend(&chunk, &mut out);
                }
                if i % 7 == 0 {
                    s.expire(i as u64, 3);
                }
                check_bounds(&s);
                let _ = s.take_health();
            }
            s.take_completed(&mut out);
            for op in &out {
                assert!(op.statement.len() <= MAX_STATEMENT_LEN);
                assert!(op
                    .collection
                    .as_ref()
                    .is_none_or(|c| c.len() <= MAX_COLLECTION_LEN));
                assert!(op.start_ns <= op.end_ns);
                if let Some(e) = &op.error_type {
                    assert!(
                        e == "_OTHER"
                            || (e.len() == 2
                                && e.bytes()
                                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()))
                    );
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
            ))]

            #[test]
            fn any_message_sequence(steps in steps(), start in any::<bool>()) {
                run(start, &steps);
            }

            #[test]
            fn any_bytes_any_split(fe_bytes in prop::collection::vec(any::<u8>(), 0..512),
                                   be_bytes in prop::collection::vec(any::<u8>(), 0..512),
                                   cuts in prop::collection::vec((any::<bool>(), 1..64usize, 0..80usize, 0..4096usize), 0..40)) {
                let (mut f, mut b) = (&fe_bytes[..], &be_bytes[..]);
                let mut steps = Vec::new();
                for (frontend, n, prefix, extra) in cuts {
                    let src = if frontend { &mut f } else { &mut b };
                    let n = n.min(src.len());
                    let (head, rest) = src.split_at(n);
                    *src = rest;
                    steps.push(Step { frontend, bytes: head.to_vec(), prefix, extra_unknown: extra });
                }
                run(true, &steps);
                run(false, &steps);
            }

            #[test]
            fn mutated_fixtures(name in prop::sample::select(ALL.to_vec()),
                                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
                                seed in any::<u64>(), prefix in 0..400usize) {
                let mut c = load(name);
                for (i, v) in flips {
                    if i.index(2) == 0 && !c.fe.is_empty() {
                        let at = i.index(c.fe.len());
                        c.fe[at] = v;
                    } else if !c.be.is_empty() {
                        let at = i.index(c.be.len());
                        c.be[at] = v;
                    }
                }
                let mut rng = Rng(seed | 1);
                let chunks = resplit(&c, |_, n| (0..rng.below(3)).map(|_| rng.below(n)).collect());
                let o = replay(&c, &chunks, prefix.max(1));
                for op in &o.ops {
                    prop_assert!(op.start_ns <= op.end_ns);
                }
            }

            #[test]
            fn obfuscation_is_bounded_and_total(sql in ".{0,300}", max in 0..200usize) {
                let o = obfuscate_sql(&sql, max);
                prop_assert!(o.len() <= max);
                let _ = operation_name(&sql);
                let _ = collection_of(&sql, operation_name(&sql));
            }

            /// Framing lost (a gap chunk) in one direction or both, binary garbage in the
            /// directions that lost it (what comes after a loss is not at a boundary), then
            /// a client that waits for each answer: every query from the second on is
            /// matched exactly, and nothing stays open.
            #[test]
            fn garbage_after_lost_framing_then_valid_traffic_recovers(
                lose in 1u8..4,
                garbage in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 1..300)), 0..6),
                n in 2usize..10,
            ) {
                let (lose_fe, lose_be) = (lose & 1 != 0, lose & 2 != 0);
                let mut s = started();
                fe(&mut s, &q("SELECT 0"), 10);
                let mut out = be(&mut s, &[m(b'C', b"SELECT 1\0"), ready()].concat(), 15);
                let gap = Chunk { data: &[], len: 100, start_ns: 20, end_ns: 20 };
                if lose_fe {
                    s.on_frontend(&gap);
                }
                if lose_be {
                    s.on_backend(&gap, &mut out);
                }
                let garbage: Vec<_> = garbage
                    .into_iter()
                    .map(|(front, g)| (if lose_fe && lose_be { front } else { lose_fe }, g))
                    .collect();
                let mut t = 30;
                for (front, g) in &garbage {
                    t += 10;
                    if *front {
                        fe(&mut s, g, t);
                    } else {
                        out.extend(be(&mut s, g, t));
                    }
                }
                let before = out.len();
                for i in 0..n {
                    t += 10;
                    fe(&mut s, &q(&format!("UPDATE t{i} SET a = 1")), t);
                    t += 10;
                    out.extend(be(&mut s, &[m(b'C', b"UPDATE 1\0"), ready()].concat(), t));
                    check_bounds(&s);
                }
                s.take_completed(&mut out);
                let got: Vec<_> = out[before..].iter().map(|o| o.collection.as_deref().map(str::to_owned)).collect();
                let want: Vec<_> = (1..n).map(|i| Some(format!("t{i}"))).collect();
                prop_assert!(got.len() >= n - 1, "{:?}", got);
                prop_assert_eq!(&got[got.len() - (n - 1)..], &want[..]);
                prop_assert_eq!(s.pending(), 0);
            }

            #[test]
            fn sql_bytes_never_panic(bytes in prop::collection::vec(prop::sample::select(b"'\"$-/*() \nEe1.x_;,".to_vec()), 0..80)) {
                let sql = String::from_utf8(bytes).unwrap();
                let o = obfuscate_sql(&sql, 1024);
                prop_assert!(o.len() <= 1024);
                let _ = collection_of(&sql, "SELECT");
                let _ = collection_of(&sql, "DELETE");
            }
        }
    }
}
