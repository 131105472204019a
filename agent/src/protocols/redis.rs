//! Redis: detection and a per-connection session for RESP2 and RESP3.
//!
//! The session turns the two byte streams of one connection into [`Operation`]s, one per
//! command that got a reply, with the command's own duration even under pipelining. It is a
//! streaming state machine: no byte is buffered, headers are parsed digit by digit, values of
//! known length are skipped (also when their bytes were not copied, see [`Chunk`]), and every
//! piece of per-connection state is a fixed-size field except the queue of open requests,
//! which is capped at [`MAX_PENDING`].
//!
//! Protocol references: the RESP specification (redis.io/docs/latest/develop/reference/protocol-spec/)
//! for the wire format, and the Redis command reference for the commands whose replies are not
//! one-per-request (SUBSCRIBE family, MONITOR, CLIENT REPLY, MULTI/EXEC, RESET).
//!
//! # Matching requests and replies
//!
//! Requests are queued in the order they were sent; each top-level reply closes the oldest
//! open request (so every pipelined command gets its own duration). The exceptions follow
//! what redis-server does:
//!
//! - RESP3 push messages (`>`) are never replies, except the confirmations of
//!   SUBSCRIBE-family commands, which RESP3 sends as pushes: one of them closes the matching
//!   request at the head of the queue.
//! - SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE and their UNSUBSCRIBE counterparts get one
//!   confirmation per channel: the first closes the request, the others are absorbed (for an
//!   UNSUBSCRIBE without arguments, whose count is unknown, further confirmations of that kind
//!   are absorbed until one says no subscription is left, a request of that kind is at the
//!   head, or another reply comes). In RESP2 a connection with
//!   subscriptions receives `message`/`pmessage`/`smessage` arrays: they are not replies.
//!   The subscription counts carried by the confirmations tell when the connection leaves
//!   that mode.
//! - MONITOR: after its `+OK`, simple strings starting with a digit (the monitor lines) are
//!   not replies; RESET ends the mode.
//! - MULTI/EXEC need nothing special: queued commands get `+QUEUED` (or an error), which
//!   closes them, and EXEC gets its array. Errors nested in that array are not errors of EXEC.
//! - CLIENT REPLY OFF/SKIP: the commands that will get no reply are not queued at all (they
//!   produce no operation); CLIENT REPLY ON and RESET end the OFF mode.
//! - SYNC/PSYNC turn the connection into a replication stream: parsing stops (see below).
//! - A reply never closes a request that started after the reply ended (impossible in a
//!   correct pairing; it happens only after lost framing, and the reply is then ignored).
//!
//! # Operation names
//!
//! `name` is the command from [`COMMANDS`] (all commands of Redis 7.0 to 7.4), upper case;
//! anything else is `_OTHER`. Commands with subcommands (CLIENT, CONFIG, CLUSTER, ...) are
//! reported by their container word, which keeps `db_operation_name` a small set; the
//! statement keeps the subcommand when it is a known one ([`SUBCOMMANDS`]): `CONFIG GET ?`.
//! The statement is otherwise the command name and one `?` per argument, at most
//! [`MAX_STATEMENT`] bytes; it never contains a byte of the request.
//!
//! # Lost framing
//!
//! The capture layer copies every byte the session needs, up to a cap per syscall, and
//! nothing of a value the session skips by length ([`RedisSession::skip_hint`]). Inside a
//! value of known length the missing bytes are skipped. When a header is among the missing
//! bytes (a syscall over the cap, a lost event), or bytes do not parse, the framing is lost.
//! The session never stops decoding the connection because of that: it recovers at the next
//! boundary it can prove, and counts what it could not attribute in
//! [`SessionHealth::lost`] (reason `capture_gap` or `unparsable`), never as timed out.
//!
//! - If the message being parsed started a chunk, and no other request is open (the way a
//!   client that does not pipeline behaves), the message is taken to end with what that
//!   direction sends until the other direction speaks: a request is queued at once and its
//!   remaining bytes are skipped until the first reply bytes arrive; a reply closes its request
//!   with the end time of the last reply chunk before the next request. No error is counted
//!   unless the next chunk of that direction does not start a message.
//! - Otherwise it is a parse error. Requests: the requests already queued are still matched
//!   (their replies come first, in order); a gap marker stands for the unknown requests, and
//!   replies that reach it are dropped, each counted as one lost request, until one ends after
//!   the next known request started (exact for clients that read their replies before
//!   writing again; with a client that keeps writing, a reply to a lost request can be paired
//!   with the next known one). The request direction recovers at the first chunk that starts
//!   like a command: a RESP array header whose first bulk string is printable, or a whole
//!   inline line starting with a known command and not followed by a bulk header (which
//!   would make it the body of a bulk string).
//! - Replies: how many were lost is unknown, so is which request the next reply answers: the
//!   open requests are dropped (counted as lost). The reply direction recovers only at a chunk
//!   that starts like a reply and comes after the client spoke: a client sends again once it
//!   has what it waited for, so the server's next bytes start a reply; a chunk of the server
//!   that comes before that is the rest of the lost reply, and requests open while it is
//!   skipped are dropped (counted as lost) as it may hold their replies.
//! - SYNC/PSYNC turn the connection into a replication stream: the session stops parsing it
//!   for good ([`SessionHealth::stopped`], [`StopReason::Replication`]); requests open then
//!   count as lost (`stopped`).
//!
//! Streamed RESP3 strings and aggregates (`$?`, `*?`), which redis-server never sends, are
//! framing errors.

use std::{collections::VecDeque, sync::Arc};

use super::request::{requests, Sink, Statement};
use super::{
    Chunk, LostReason, Operation, Request, Session, SessionHealth, SessionOptions, StopReason,
};

/// Open requests kept per connection; when full, the oldest is dropped (counted as lost,
/// `queue_full`).
pub const MAX_PENDING: usize = 10_000;
/// Longest line accepted: a header, a simple string or error, an inline command (Redis's
/// own limit for inline requests is the same). Longer is a framing error, except the lines a
/// MONITOR connection receives, which quote whole commands.
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting of aggregates accepted in a reply (Redis 7.0's COMMAND DOCS reply, in
/// tests/fixtures/redis/plain.resp, nests 12 levels).
pub const MAX_DEPTH: usize = 24;
/// Longest statement, in bytes.
pub const MAX_STATEMENT: usize = 256;
/// Largest bulk string accepted (redis-server's proto-max-bulk-len is 512 MB by default).
const MAX_BULK: u64 = 1 << 40;
/// Largest aggregate accepted, in elements.
const MAX_AGGREGATE: u64 = (u32::MAX / 2) as u64;
/// Most arguments of one request (redis-server rejects more than i32::MAX).
const MAX_ARGS: u64 = i32::MAX as u64;
/// The operation name of anything not in [`COMMANDS`].
pub const OTHER: &str = "_OTHER";

/// Every command of Redis 7 (7.0 as listed by `COMMAND LIST`, plus WAITAOF (7.2) and the
/// hash-field expiry commands (7.4)), upper case, sorted bytewise (binary-searchable; the
/// session itself looks names up in a hash table built from this list at compile time).
#[rustfmt::skip]
pub const COMMANDS: &[&str] = &[
    "ACL", "APPEND", "ASKING", "AUTH", "BGREWRITEAOF", "BGSAVE", "BITCOUNT", "BITFIELD",
    "BITFIELD_RO", "BITOP", "BITPOS", "BLMOVE", "BLMPOP", "BLPOP", "BRPOP", "BRPOPLPUSH",
    "BZMPOP", "BZPOPMAX", "BZPOPMIN", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "COPY",
    "DBSIZE", "DEBUG", "DECR", "DECRBY", "DEL", "DISCARD", "DUMP", "ECHO", "EVAL", "EVALSHA",
    "EVALSHA_RO", "EVAL_RO", "EXEC", "EXISTS", "EXPIRE", "EXPIREAT", "EXPIRETIME", "FAILOVER",
    "FCALL", "FCALL_RO", "FLUSHALL", "FLUSHDB", "FUNCTION", "GEOADD", "GEODIST", "GEOHASH",
    "GEOPOS", "GEORADIUS", "GEORADIUSBYMEMBER", "GEORADIUSBYMEMBER_RO", "GEORADIUS_RO",
    "GEOSEARCH", "GEOSEARCHSTORE", "GET", "GETBIT", "GETDEL", "GETEX", "GETRANGE", "GETSET",
    "HDEL", "HELLO", "HEXISTS", "HEXPIRE", "HEXPIREAT", "HEXPIRETIME", "HGET", "HGETALL",
    "HINCRBY", "HINCRBYFLOAT", "HKEYS", "HLEN", "HMGET", "HMSET", "HPERSIST", "HPEXPIRE",
    "HPEXPIREAT", "HPEXPIRETIME", "HPTTL", "HRANDFIELD", "HSCAN", "HSET", "HSETNX", "HSTRLEN",
    "HTTL", "HVALS", "INCR", "INCRBY", "INCRBYFLOAT", "INFO", "KEYS", "LASTSAVE", "LATENCY",
    "LCS", "LINDEX", "LINSERT", "LLEN", "LMOVE", "LMPOP", "LOLWUT", "LPOP", "LPOS", "LPUSH",
    "LPUSHX", "LRANGE", "LREM", "LSET", "LTRIM", "MEMORY", "MGET", "MIGRATE", "MODULE",
    "MONITOR", "MOVE", "MSET", "MSETNX", "MULTI", "OBJECT", "PERSIST", "PEXPIRE", "PEXPIREAT",
    "PEXPIRETIME", "PFADD", "PFCOUNT", "PFDEBUG", "PFMERGE", "PFSELFTEST", "PING", "PSETEX",
    "PSUBSCRIBE", "PSYNC", "PTTL", "PUBLISH", "PUBSUB", "PUNSUBSCRIBE", "QUIT", "RANDOMKEY",
    "READONLY", "READWRITE", "RENAME", "RENAMENX", "REPLCONF", "REPLICAOF", "RESET", "RESTORE",
    "RESTORE-ASKING", "ROLE", "RPOP", "RPOPLPUSH", "RPUSH", "RPUSHX", "SADD", "SAVE", "SCAN",
    "SCARD", "SCRIPT", "SDIFF", "SDIFFSTORE", "SELECT", "SET", "SETBIT", "SETEX", "SETNX",
    "SETRANGE", "SHUTDOWN", "SINTER", "SINTERCARD", "SINTERSTORE", "SISMEMBER", "SLAVEOF",
    "SLOWLOG", "SMEMBERS", "SMISMEMBER", "SMOVE", "SORT", "SORT_RO", "SPOP", "SPUBLISH",
    "SRANDMEMBER", "SREM", "SSCAN", "SSUBSCRIBE", "STRLEN", "SUBSCRIBE", "SUBSTR", "SUNION",
    "SUNIONSTORE", "SUNSUBSCRIBE", "SWAPDB", "SYNC", "TIME", "TOUCH", "TTL", "TYPE", "UNLINK",
    "UNSUBSCRIBE", "UNWATCH", "WAIT", "WAITAOF", "WATCH", "XACK", "XADD", "XAUTOCLAIM",
    "XCLAIM", "XDEL", "XGROUP", "XINFO", "XLEN", "XPENDING", "XRANGE", "XREAD", "XREADGROUP",
    "XREVRANGE", "XSETID", "XTRIM", "ZADD", "ZCARD", "ZCOUNT", "ZDIFF", "ZDIFFSTORE", "ZINCRBY",
    "ZINTER", "ZINTERCARD", "ZINTERSTORE", "ZLEXCOUNT", "ZMPOP", "ZMSCORE", "ZPOPMAX",
    "ZPOPMIN", "ZRANDMEMBER", "ZRANGE", "ZRANGEBYLEX", "ZRANGEBYSCORE", "ZRANGESTORE", "ZRANK",
    "ZREM", "ZREMRANGEBYLEX", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "ZREVRANGE",
    "ZREVRANGEBYLEX", "ZREVRANGEBYSCORE", "ZREVRANK", "ZSCAN", "ZSCORE", "ZUNION",
    "ZUNIONSTORE",
];
/// Known subcommands of the container commands, as "CONTAINER SUBCOMMAND", sorted bytewise
/// (Redis 7.0's `COMMAND LIST`, plus CLIENT SETINFO, CLIENT NO-TOUCH, CLUSTER MYSHARDID of 7.2).
#[rustfmt::skip]
pub const SUBCOMMANDS: &[&str] = &[
    "ACL CAT", "ACL DELUSER", "ACL DRYRUN", "ACL GENPASS", "ACL GETUSER", "ACL HELP",
    "ACL LIST", "ACL LOAD", "ACL LOG", "ACL SAVE", "ACL SETUSER", "ACL USERS", "ACL WHOAMI",
    "CLIENT CACHING", "CLIENT GETNAME", "CLIENT GETREDIR", "CLIENT HELP", "CLIENT ID",
    "CLIENT INFO", "CLIENT KILL", "CLIENT LIST", "CLIENT NO-EVICT", "CLIENT NO-TOUCH",
    "CLIENT PAUSE", "CLIENT REPLY", "CLIENT SETINFO", "CLIENT SETNAME", "CLIENT TRACKING",
    "CLIENT TRACKINGINFO", "CLIENT UNBLOCK", "CLIENT UNPAUSE", "CLUSTER ADDSLOTS",
    "CLUSTER ADDSLOTSRANGE", "CLUSTER BUMPEPOCH", "CLUSTER COUNT-FAILURE-REPORTS",
    "CLUSTER COUNTKEYSINSLOT", "CLUSTER DELSLOTS", "CLUSTER DELSLOTSRANGE", "CLUSTER FAILOVER",
    "CLUSTER FLUSHSLOTS", "CLUSTER FORGET", "CLUSTER GETKEYSINSLOT", "CLUSTER HELP",
    "CLUSTER INFO", "CLUSTER KEYSLOT", "CLUSTER LINKS", "CLUSTER MEET", "CLUSTER MYID",
    "CLUSTER MYSHARDID", "CLUSTER NODES", "CLUSTER REPLICAS", "CLUSTER REPLICATE",
    "CLUSTER RESET", "CLUSTER SAVECONFIG", "CLUSTER SET-CONFIG-EPOCH", "CLUSTER SETSLOT",
    "CLUSTER SHARDS", "CLUSTER SLAVES", "CLUSTER SLOTS", "COMMAND COUNT", "COMMAND DOCS",
    "COMMAND GETKEYS", "COMMAND GETKEYSANDFLAGS", "COMMAND HELP", "COMMAND INFO",
    "COMMAND LIST", "CONFIG GET", "CONFIG HELP", "CONFIG RESETSTAT", "CONFIG REWRITE",
    "CONFIG SET", "FUNCTION DELETE", "FUNCTION DUMP", "FUNCTION FLUSH", "FUNCTION HELP",
    "FUNCTION KILL", "FUNCTION LIST", "FUNCTION LOAD", "FUNCTION RESTORE", "FUNCTION STATS",
    "LATENCY DOCTOR", "LATENCY GRAPH", "LATENCY HELP", "LATENCY HISTOGRAM", "LATENCY HISTORY",
    "LATENCY LATEST", "LATENCY RESET", "MEMORY DOCTOR", "MEMORY HELP", "MEMORY MALLOC-STATS",
    "MEMORY PURGE", "MEMORY STATS", "MEMORY USAGE", "MODULE HELP", "MODULE LIST", "MODULE LOAD",
    "MODULE LOADEX", "MODULE UNLOAD", "OBJECT ENCODING", "OBJECT FREQ", "OBJECT HELP",
    "OBJECT IDLETIME", "OBJECT REFCOUNT", "PUBSUB CHANNELS", "PUBSUB HELP", "PUBSUB NUMPAT",
    "PUBSUB NUMSUB", "PUBSUB SHARDCHANNELS", "PUBSUB SHARDNUMSUB", "SCRIPT DEBUG",
    "SCRIPT EXISTS", "SCRIPT FLUSH", "SCRIPT HELP", "SCRIPT KILL", "SCRIPT LOAD", "SLOWLOG GET",
    "SLOWLOG HELP", "SLOWLOG LEN", "SLOWLOG RESET", "XGROUP CREATE", "XGROUP CREATECONSUMER",
    "XGROUP DELCONSUMER", "XGROUP DESTROY", "XGROUP HELP", "XGROUP SETID", "XINFO CONSUMERS",
    "XINFO GROUPS", "XINFO HELP", "XINFO STREAM",
];

/// Commands that have subcommands: reported by this word (see the module documentation).
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

const NO_INDEX: u16 = u16::MAX;

/// The operation name for a command name (case-insensitive): an entry of [`COMMANDS`], or
/// `_OTHER`.
pub fn operation_name(cmd: &[u8]) -> &'static str {
    match command_index(cmd) {
        Some(i) => COMMANDS[usize::from(i)],
        None => OTHER,
    }
}

/// Index in [`COMMANDS`] of a command name, any case. Every request goes through here, so
/// it is a hash lookup (one probe for nearly every name) in a table built at compile time.
fn command_index(cmd: &[u8]) -> Option<u16> {
    if cmd.is_empty() || cmd.len() > 32 {
        return None;
    }
    let mut buf = [0u8; 32];
    let mut h = FNV_OFFSET;
    for (d, &c) in buf.iter_mut().zip(cmd) {
        *d = c.to_ascii_uppercase();
        h = (h ^ u32::from(*d)).wrapping_mul(FNV_PRIME);
    }
    let key = &buf[..cmd.len()];
    let mut slot = h as usize & (HASH_SLOTS - 1);
    loop {
        let i = COMMAND_HASH[slot];
        if i == NO_INDEX {
            return None;
        }
        let name = COMMANDS[usize::from(i)].as_bytes();
        // A byte loop: names are a few bytes, and a slice compare calls memcmp.
        if name.len() == key.len() && name.iter().zip(key).all(|(a, b)| a == b) {
            return Some(i);
        }
        slot = (slot + 1) & (HASH_SLOTS - 1);
    }
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;
/// Open-addressing table of [`COMMANDS`] indices by FNV-1a hash; a quarter full.
const HASH_SLOTS: usize = 1024;
static COMMAND_HASH: [u16; HASH_SLOTS] = command_hash();

const fn command_hash() -> [u16; HASH_SLOTS] {
    let mut table = [NO_INDEX; HASH_SLOTS];
    let mut i = 0;
    while i < COMMANDS.len() {
        let name = COMMANDS[i].as_bytes();
        let mut h = FNV_OFFSET;
        let mut j = 0;
        while j < name.len() {
            h = (h ^ name[j] as u32).wrapping_mul(FNV_PRIME);
            j += 1;
        }
        let mut slot = h as usize & (HASH_SLOTS - 1);
        while table[slot] != NO_INDEX {
            slot = (slot + 1) & (HASH_SLOTS - 1);
        }
        table[slot] = i as u16;
        i += 1;
    }
    table
}

/// What a command needs beyond plain matching, per entry of [`COMMANDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommandKind {
    Plain,
    /// Has subcommands (see [`CONTAINERS`]).
    Container,
    /// CLIENT: a container, and CLIENT REPLY changes which commands get replies.
    Client,
    Monitor,
    Reset,
    /// SELECT: the database later commands work in (`db.namespace`).
    Select,
    /// SYNC, PSYNC: the connection becomes a replication stream.
    Sync,
    PubSub(PubSub),
}

static COMMAND_KINDS: [CommandKind; COMMANDS.len()] = kinds();

const fn kinds() -> [CommandKind; COMMANDS.len()] {
    let mut kinds = [CommandKind::Plain; COMMANDS.len()];
    let mut i = 0;
    while i < COMMANDS.len() {
        let name = COMMANDS[i];
        kinds[i] = if str_eq(name, "CLIENT") {
            CommandKind::Client
        } else if str_eq(name, "MONITOR") {
            CommandKind::Monitor
        } else if str_eq(name, "RESET") {
            CommandKind::Reset
        } else if str_eq(name, "SELECT") {
            CommandKind::Select
        } else if str_eq(name, "SYNC") || str_eq(name, "PSYNC") {
            CommandKind::Sync
        } else if str_eq(name, "SUBSCRIBE") {
            CommandKind::PubSub(PubSub::Subscribe)
        } else if str_eq(name, "PSUBSCRIBE") {
            CommandKind::PubSub(PubSub::PSubscribe)
        } else if str_eq(name, "SSUBSCRIBE") {
            CommandKind::PubSub(PubSub::SSubscribe)
        } else if str_eq(name, "UNSUBSCRIBE") {
            CommandKind::PubSub(PubSub::Unsubscribe)
        } else if str_eq(name, "PUNSUBSCRIBE") {
            CommandKind::PubSub(PubSub::PUnsubscribe)
        } else if str_eq(name, "SUNSUBSCRIBE") {
            CommandKind::PubSub(PubSub::SUnsubscribe)
        } else {
            let mut c = 0;
            let mut command_kind = CommandKind::Plain;
            while c < CONTAINERS.len() {
                if str_eq(name, CONTAINERS[c]) {
                    command_kind = CommandKind::Container;
                }
                c += 1;
            }
            command_kind
        };
        i += 1;
    }
    kinds
}

/// Index of "CLIENT REPLY" in [`SUBCOMMANDS`].
const CLIENT_REPLY: u16 = {
    let mut i = 0;
    while !str_eq(SUBCOMMANDS[i], "CLIENT REPLY") {
        i += 1;
    }
    i as u16
};

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

fn subcommand_index(container: &str, sub: &[u8]) -> Option<u16> {
    let mut buf = [0u8; 64];
    let n = container.len();
    if sub.is_empty() || n + 1 + sub.len() > buf.len() {
        return None;
    }
    buf[..n].copy_from_slice(container.as_bytes());
    buf[n] = b' ';
    for (d, &c) in buf[n + 1..].iter_mut().zip(sub) {
        *d = c.to_ascii_uppercase();
    }
    let key = &buf[..n + 1 + sub.len()];
    SUBCOMMANDS
        .binary_search_by(|c| c.as_bytes().cmp(key))
        .ok()
        .map(|i| i as u16)
}

/// Whether `prefix`, the first bytes a client sent on a connection, looks like a Redis
/// request: a RESP array whose first bulk string is a known command (`*1\r\n$4\r\nPING\r\n`),
/// or an inline command: a known command in upper case followed by a space or a line end
/// (`PING\r\n`). Lower-case inline commands are not accepted here (memcached's text protocol
/// looks the same: `get key\r\n`), nor anything that looks like HTTP (`GET / HTTP/1.1`).
/// A prefix too short to show the command name is not accepted either, and an inline
/// command must show its whole line: an HTTP client may write `GET ` in a syscall of its
/// own, and nothing in those four bytes tells it from Redis.
pub fn looks_like_request(prefix: &[u8]) -> bool {
    match prefix.first() {
        Some(b'*') => {
            let mut i = 1;
            let Some(n) = digits(prefix, &mut i, 7) else {
                return false;
            };
            if n == 0 || !prefix[i..].starts_with(b"\r\n$") {
                return false;
            }
            i += 3;
            let Some(len) = digits(prefix, &mut i, 2) else {
                return false;
            };
            if !prefix[i..].starts_with(b"\r\n") {
                return false;
            }
            i += 2;
            let len = len as usize;
            (1..=32).contains(&len)
                && prefix.len() >= i + len
                && command_index(&prefix[i..i + len]).is_some()
        }
        Some(c) if c.is_ascii_uppercase() => {
            let end = prefix
                .iter()
                .position(|&c| !(c.is_ascii_uppercase() || c == b'_' || c == b'-'))
                .unwrap_or(prefix.len());
            let word = &prefix[..end];
            let rest = &prefix[end..];
            if !matches!(rest.first(), Some(b' ' | b'\r' | b'\n')) || command_index(word).is_none()
            {
                return false;
            }
            // HTTP's GET is also a Redis command: `GET /path HTTP/1.1`.
            let Some(line_end) = prefix.iter().position(|&c| c == b'\n') else {
                return false;
            };
            let line = &prefix[..line_end];
            let http = line.windows(5).any(|w| w == b"HTTP/") || rest.starts_with(b" /");
            !http
        }
        _ => false,
    }
}

/// Parses ASCII digits at `data[*i..]` (at most `max` of them, at least one), advancing `i`.
fn digits(data: &[u8], i: &mut usize, max: usize) -> Option<u64> {
    let start = *i;
    let mut n = 0u64;
    while *i < data.len() && data[*i].is_ascii_digit() {
        if *i - start == max {
            return None;
        }
        n = n * 10 + u64::from(data[*i] - b'0');
        *i += 1;
    }
    (*i > start).then_some(n)
}

/// Whether a chunk can start a request stream again after lost framing: the known bytes are
/// consistent with `*<n>\r\n$<len>\r\n<printable>` or with an inline known command.
fn plausible_request(data: &[u8]) -> bool {
    match data.first() {
        Some(b'*') => {
            let mut i = 1;
            if !header_prefix(data, &mut i, false) {
                return false;
            }
            match data.get(i) {
                None => return true,
                Some(b'$') => i += 1,
                Some(_) => return false,
            }
            let len_at = i;
            if !header_prefix(data, &mut i, false) {
                return false;
            }
            let mut j = len_at;
            let len = digits(data, &mut j, 12).unwrap_or(0) as usize;
            data[i.min(data.len())..]
                .iter()
                .take(len.min(32))
                .all(|c| c.is_ascii_graphic())
        }
        Some(c) if c.is_ascii_alphabetic() => {
            let Some(end) = data
                .iter()
                .position(|&c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            else {
                return false;
            };
            // `GET\r\n$3\r\nkey\r\n` is the command-name bulk string of an array command,
            // seen from its body on: not a boundary.
            let bulk_follows = data
                .iter()
                .position(|&c| c == b'\n')
                .is_some_and(|nl| data.get(nl + 1) == Some(&b'$'));
            command_index(&data[..end]).is_some() && !bulk_follows
        }
        _ => false,
    }
}

/// Checks, as far as `data` goes, `[-1 | digits]\r\n` at `data[*i..]`; leaves `i` after it.
fn header_prefix(data: &[u8], i: &mut usize, allow_null: bool) -> bool {
    if allow_null && data.get(*i) == Some(&b'-') {
        *i += 1;
        if *i < data.len() && data[*i] != b'1' {
            return false;
        }
        *i += 1;
    } else {
        let start = *i;
        while *i < data.len() && data[*i].is_ascii_digit() {
            *i += 1;
            if *i - start > 12 {
                return false;
            }
        }
        if *i == start && *i < data.len() {
            return false;
        }
    }
    for &want in b"\r\n" {
        match data.get(*i) {
            None => return true,
            Some(&c) if c == want => *i += 1,
            Some(_) => return false,
        }
    }
    true
}

/// Whether a chunk can start a reply stream again after lost framing: a RESP type byte and,
/// as far as the known bytes go, a well-formed first line.
fn plausible_reply(data: &[u8]) -> bool {
    let Some((&t, rest)) = data.split_first() else {
        return false;
    };
    let mut i = 1;
    match t {
        b'$' | b'*' => header_prefix(data, &mut i, true),
        b'%' | b'~' | b'|' | b'>' | b'!' | b'=' => header_prefix(data, &mut i, false),
        b':' | b'(' => {
            if matches!(data.get(1), Some(b'-' | b'+')) {
                i += 1;
            }
            header_prefix(data, &mut i, false)
        }
        b'_' => b"\r\n".starts_with(&rest[..rest.len().min(2)]),
        b'#' => {
            matches!(rest.first(), None | Some(b't' | b'f'))
                && b"\r\n".starts_with(&rest[1.min(rest.len())..rest.len().min(3)])
        }
        b'+' | b'-' | b',' => match rest.iter().position(|&c| c == b'\r' || c == b'\n') {
            None => true,
            Some(p) => rest[p] == b'\r' && matches!(rest.get(p + 1), None | Some(b'\n')),
        },
        _ => false,
    }
}

/// The first bytes of a value, and whether all its bytes were seen.
#[derive(Clone, Copy, Debug)]
struct Cap<const N: usize> {
    buf: [u8; N],
    len: u8,
    /// Bytes the value has so far, captured or not.
    total: u64,
    /// Some bytes were not copied: nothing after them is captured.
    lost: bool,
}

impl<const N: usize> Cap<N> {
    const EMPTY: Self = Self {
        buf: [0; N],
        len: 0,
        total: 0,
        lost: false,
    };

    fn push(&mut self, bytes: &[u8]) {
        if !self.lost {
            let at = usize::from(self.len);
            let k = (N - at).min(bytes.len());
            self.buf[at..at + k].copy_from_slice(&bytes[..k]);
            self.len += k as u8;
        }
        self.total += bytes.len() as u64;
    }

    fn unknown(&mut self, n: u64) {
        if n > 0 {
            self.lost = true;
            self.total += n;
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// No further byte would be kept: skipping the rest changes nothing it says.
    fn full(&self) -> bool {
        usize::from(self.len) == N || self.lost
    }

    /// Every byte of the value is in `bytes()`.
    fn complete(&self) -> bool {
        !self.lost && self.total == u64::from(self.len)
    }
}

/// What skipping the uncopied bytes of a chunk led to.
enum Skip {
    /// A message ended inside the skipped bytes; more may remain.
    Complete,
    /// All skipped.
    Exhausted,
    /// A header is among the uncopied bytes: framing lost, inside a message or between two.
    Lost { inside: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqState {
    /// Before the first byte of a command.
    Start,
    ArrayLen,
    ArrayLenLf,
    BulkType,
    BulkLen,
    BulkLenLf,
    BulkBody,
    Inline,
    /// Framing lost: skipping chunks until one starts like a command.
    Resync,
    /// Framing lost inside a command that started a chunk: skipping its bytes until replies come.
    LostTail,
    /// After `LostTail`: the next chunk must start a command.
    ExpectStart,
}

/// Inline command tokenizer state (a subset of redis-server's sdssplitargs: spaces separate
/// arguments, single or double quotes group them).
#[derive(Clone, Copy, Debug, Default)]
struct Tok {
    in_token: bool,
    quote: u8,
    escape: bool,
}

/// SELECT's argument as a database index (decimal, as redis-server reads it).
fn database_index(arg: &[u8]) -> Option<u32> {
    if arg.is_empty() || arg.len() > 9 || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// A length (`123\r\n`, at most 12 digits as the byte-by-byte parse accepts) whole at
/// `data[at..]`: its value and the index after its LF.
fn whole_length(data: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut i = at;
    while let Some(&d) = data.get(i).filter(|d| d.is_ascii_digit()) {
        if i - at >= 12 {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
        i += 1;
    }
    (i > at && crlf_at(data, i)).then_some((n, i + 2))
}

/// `\r\n` at `data[at..]` (two byte compares: a slice compare was a call to memcmp).
fn crlf_at(data: &[u8], at: usize) -> bool {
    data.get(at) == Some(&b'\r') && data.get(at + 1) == Some(&b'\n')
}

/// The client-to-server direction.
#[derive(Clone, Copy, Debug)]
struct ReqParser {
    state: ReqState,
    num: u64,
    digits: u8,
    /// `BulkBody`: bytes left, trailing CRLF included.
    remaining: u64,
    args_left: u64,
    argc: u64,
    /// Index of the argument being read.
    arg: u64,
    start_ns: u64,
    /// The command being read started at the first byte of a chunk.
    at_chunk_start: bool,
    line_len: usize,
    tok: Tok,
    /// The command name, its first argument (a subcommand), its second (CLIENT REPLY mode).
    a0: Cap<32>,
    a1: Cap<32>,
    a2: Cap<8>,
}

impl ReqParser {
    const NEW: Self = Self {
        state: ReqState::Start,
        num: 0,
        digits: 0,
        remaining: 0,
        args_left: 0,
        argc: 0,
        arg: 0,
        start_ns: 0,
        at_chunk_start: false,
        line_len: 0,
        tok: Tok {
            in_token: false,
            quote: 0,
            escape: false,
        },
        a0: Cap::EMPTY,
        a1: Cap::EMPTY,
        a2: Cap::EMPTY,
    };

    fn begin(&mut self, start_ns: u64, at_chunk_start: bool) {
        *self = Self {
            start_ns,
            at_chunk_start,
            ..Self::NEW
        };
    }

    fn capture(&mut self, bytes: &[u8]) {
        match self.arg {
            0 => self.a0.push(bytes),
            1 => self.a1.push(bytes),
            2 => self.a2.push(bytes),
            _ => {}
        }
    }

    fn capture_unknown(&mut self, n: u64) {
        match self.arg {
            0 => self.a0.unknown(n),
            1 => self.a1.unknown(n),
            2 => self.a2.unknown(n),
            _ => {}
        }
    }

    /// Parses `data[*pos..]` until a command is complete (`Ok(true)`) or the data runs out
    /// (`Ok(false)`). `Err` is a framing error.
    fn advance(&mut self, data: &[u8], pos: &mut usize, start_ns: u64) -> Result<bool, ()> {
        while *pos < data.len() {
            let b = data[*pos];
            match self.state {
                ReqState::Start => match b {
                    b'*' => {
                        if let Some(end) = self.whole_command(data, *pos, start_ns) {
                            *pos = end;
                            return Ok(true);
                        }
                        self.begin(start_ns, *pos == 0);
                        self.state = ReqState::ArrayLen;
                        *pos += 1;
                    }
                    // redis-server skips empty inline lines.
                    b'\r' | b'\n' => *pos += 1,
                    _ if b.is_ascii_alphabetic() => {
                        self.begin(start_ns, *pos == 0);
                        self.state = ReqState::Inline;
                    }
                    _ => return Err(()),
                },
                ReqState::ArrayLen | ReqState::BulkLen => {
                    // The digits in one run: a length nearly always arrives whole, and a
                    // trip through the state dispatch per byte was most of the parse.
                    let mut at = *pos;
                    while let Some(&d) = data.get(at).filter(|d| d.is_ascii_digit()) {
                        if self.digits >= 12 {
                            return Err(());
                        }
                        self.num = self.num * 10 + u64::from(d - b'0');
                        self.digits += 1;
                        at += 1;
                    }
                    *pos = at;
                    match data.get(at) {
                        None => break,
                        Some(b'\r') if self.digits > 0 => {
                            self.state = if self.state == ReqState::ArrayLen {
                                ReqState::ArrayLenLf
                            } else {
                                ReqState::BulkLenLf
                            };
                            *pos += 1;
                        }
                        Some(_) => return Err(()),
                    }
                }
                ReqState::ArrayLenLf => {
                    if b != b'\n' || self.num > MAX_ARGS {
                        return Err(());
                    }
                    *pos += 1;
                    if self.num == 0 {
                        // `*0\r\n`: redis-server ignores it, no reply.
                        self.state = ReqState::Start;
                        continue;
                    }
                    self.argc = self.num;
                    self.args_left = self.num;
                    self.state = ReqState::BulkType;
                }
                ReqState::BulkType => {
                    if b != b'$' {
                        return Err(());
                    }
                    self.num = 0;
                    self.digits = 0;
                    self.state = ReqState::BulkLen;
                    *pos += 1;
                }
                ReqState::BulkLenLf => {
                    if b != b'\n' || self.num > MAX_BULK {
                        return Err(());
                    }
                    *pos += 1;
                    self.remaining = self.num + 2;
                    self.state = ReqState::BulkBody;
                }
                ReqState::BulkBody => {
                    if self.remaining > 2 {
                        let k = (self.remaining - 2).min((data.len() - *pos) as u64) as usize;
                        self.capture(&data[*pos..*pos + k]);
                        *pos += k;
                        self.remaining -= k as u64;
                        continue;
                    }
                    if self.remaining == 2 && crlf_at(data, *pos) {
                        // The terminator whole, in one step.
                        *pos += 2;
                        self.remaining = 0;
                    } else {
                        let want = if self.remaining == 2 { b'\r' } else { b'\n' };
                        if b != want {
                            return Err(());
                        }
                        *pos += 1;
                        self.remaining -= 1;
                    }
                    if self.remaining == 0 && self.arg_done() {
                        return Ok(true);
                    }
                }
                ReqState::Inline => {
                    *pos += 1;
                    if b == b'\n' {
                        self.state = ReqState::Start;
                        if self.argc > 0 {
                            return Ok(true);
                        }
                        continue;
                    }
                    self.line_len += 1;
                    // Inline commands are typed text (redis-cli, telnet): control bytes mean
                    // these are not commands (another protocol, or bytes after lost framing),
                    // and queueing them would shift every later reply onto the wrong request.
                    if self.line_len > MAX_LINE || !(b.is_ascii_graphic() || b" \t\r".contains(&b))
                    {
                        return Err(());
                    }
                    self.inline_byte(b);
                }
                // Handled by the session before parsing.
                ReqState::Resync | ReqState::LostTail | ReqState::ExpectStart => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The array command starting at `data[at]` (its `*`), when all of it is there and
    /// plainly well-formed: parsed in one pass, returning where it ends. Anything else
    /// (a command cut by the chunk's end, a length out of bounds, a framing error) is left
    /// to the byte-by-byte parse, which starts the command over. Most commands arrive
    /// whole, and stepping through the states byte by byte was most of their cost.
    fn whole_command(&mut self, data: &[u8], at: usize, start_ns: u64) -> Option<usize> {
        let (argc, mut next) = whole_length(data, at + 1)?;
        if argc == 0 || argc > MAX_ARGS {
            return None;
        }
        self.begin(start_ns, at == 0);
        self.argc = argc;
        for arg in 0..argc {
            if data.get(next) != Some(&b'$') {
                return None;
            }
            let (len, body) = whole_length(data, next + 1)?;
            if len > MAX_BULK || len > (data.len() - body) as u64 {
                return None;
            }
            let end = body + len as usize;
            if !crlf_at(data, end) {
                return None;
            }
            self.arg = arg;
            self.capture(&data[body..end]);
            next = end + 2;
        }
        self.arg = argc;
        self.args_left = 0;
        self.state = ReqState::Start;
        Some(next)
    }

    /// One bulk string of an array command is complete; returns whether the command is.
    fn arg_done(&mut self) -> bool {
        self.args_left -= 1;
        self.arg += 1;
        if self.args_left == 0 {
            self.state = ReqState::Start;
            true
        } else {
            self.state = ReqState::BulkType;
            false
        }
    }

    fn inline_byte(&mut self, b: u8) {
        if self.tok.quote != 0 {
            if self.tok.escape {
                self.tok.escape = false;
                self.capture(&[b]);
            } else if b == b'\\' && self.tok.quote == b'"' {
                self.tok.escape = true;
            } else if b == self.tok.quote {
                self.tok.quote = 0;
            } else {
                self.capture(&[b]);
            }
            return;
        }
        if matches!(b, b' ' | b'\t' | b'\r') {
            if self.tok.in_token {
                self.tok.in_token = false;
                self.arg += 1;
            }
            return;
        }
        if !self.tok.in_token {
            self.tok.in_token = true;
            self.argc += 1;
        }
        if b == b'"' || b == b'\'' {
            self.tok.quote = b;
        } else {
            self.capture(&[b]);
        }
    }

    /// Skips `*n` uncopied bytes.
    fn skip(&mut self, n: &mut u64) -> Skip {
        loop {
            if *n == 0 {
                return Skip::Exhausted;
            }
            match self.state {
                ReqState::BulkBody => {
                    let k = (*n).min(self.remaining);
                    self.capture_unknown(k.min(self.remaining.saturating_sub(2)));
                    self.remaining -= k;
                    *n -= k;
                    if self.remaining == 0 && self.arg_done() {
                        return Skip::Complete;
                    }
                }
                ReqState::Start => return Skip::Lost { inside: false },
                ReqState::Resync | ReqState::LostTail | ReqState::ExpectStart => {
                    *n = 0;
                    return Skip::Exhausted;
                }
                _ => return Skip::Lost { inside: true },
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RespState {
    /// Before the type byte of a value.
    Type,
    Line,
    LineLf,
    Len,
    LenLf,
    Body,
    /// Framing lost: skipping chunks until one starts like a reply.
    Resync,
    /// Framing lost inside a reply that started a chunk: skipping until the next request.
    LostTail,
    /// After `LostTail`: the next chunk must start a reply.
    ExpectStart,
}

/// Where the bytes of the value being read go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    None,
    Word,
    Count,
}

/// What a top-level reply is, as far as matching needs.
#[derive(Clone, Copy, Debug)]
struct Reply {
    started: bool,
    /// The reply started at the first byte of a chunk.
    at_chunk_start: bool,
    /// Type byte of the reply (after any attribute); 0 until seen.
    top: u8,
    /// Elements of a top-level array or push.
    total: u32,
    /// Type byte of element 0 of a top-level array or push.
    e0_type: u8,
    /// First bytes of an error or simple string reply, or of element 0 of an array or push.
    word: Cap<33>,
    /// Element 2 of an array or push when an integer: a subscription count.
    count: Option<i64>,
}

impl Reply {
    const EMPTY: Self = Self {
        started: false,
        at_chunk_start: false,
        top: 0,
        total: 0,
        e0_type: 0,
        word: Cap::EMPTY,
        count: None,
    };
}

/// The server-to-client direction.
#[derive(Clone, Copy, Debug)]
struct RespParser {
    state: RespState,
    /// Type byte of the value being read.
    kind: u8,
    num: u64,
    digits: u8,
    neg: bool,
    /// `Body`: bytes left, trailing CRLF included.
    remaining: u64,
    line_len: usize,
    /// Lines may exceed [`MAX_LINE`] (MONITOR output).
    long_lines: bool,
    target: Target,
    depth: usize,
    /// Bit `i`: level `i` of `stack` is an attribute (not a value of its parent).
    attr_mask: u32,
    /// Values still to come in each open aggregate.
    stack: [u32; MAX_DEPTH],
    reply: Reply,
}

impl RespParser {
    const NEW: Self = Self {
        state: RespState::Type,
        kind: 0,
        num: 0,
        digits: 0,
        neg: false,
        remaining: 0,
        line_len: 0,
        long_lines: false,
        target: Target::None,
        depth: 0,
        attr_mask: 0,
        stack: [0; MAX_DEPTH],
        reply: Reply::EMPTY,
    };

    fn reset(&mut self, state: RespState) {
        *self = Self {
            state,
            long_lines: self.long_lines,
            ..Self::NEW
        };
    }

    /// Parses `data[*pos..]` until a top-level reply is complete (`Ok(true)`, the reply is in
    /// `self.reply`) or the data runs out (`Ok(false)`). `Err` is a framing error.
    fn advance(&mut self, data: &[u8], pos: &mut usize) -> Result<bool, ()> {
        while *pos < data.len() {
            let b = data[*pos];
            match self.state {
                RespState::Type => {
                    self.start_value(b, *pos == 0)?;
                    *pos += 1;
                }
                RespState::Line => {
                    let rest = &data[*pos..];
                    let end = rest.iter().position(|&c| c == b'\r' || c == b'\n');
                    let seg = &rest[..end.unwrap_or(rest.len())];
                    self.line_bytes(seg)?;
                    *pos += seg.len();
                    if let Some(e) = end {
                        if rest[e] != b'\r' {
                            return Err(());
                        }
                        *pos += 1;
                        self.state = RespState::LineLf;
                    }
                }
                RespState::LineLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    *pos += 1;
                    if self.line_end()? {
                        return Ok(true);
                    }
                }
                RespState::Len => {
                    if b.is_ascii_digit() {
                        if self.digits >= 12 {
                            return Err(());
                        }
                        self.num = self.num * 10 + u64::from(b - b'0');
                        self.digits += 1;
                    } else if b == b'-'
                        && self.digits == 0
                        && !self.neg
                        && (self.kind == b'$' || self.kind == b'*')
                    {
                        // RESP2 null bulk string or array: `$-1`, `*-1`.
                        self.neg = true;
                    } else if b == b'\r' && self.digits > 0 {
                        self.state = RespState::LenLf;
                    } else {
                        return Err(());
                    }
                    *pos += 1;
                }
                RespState::LenLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    *pos += 1;
                    if self.header_end()? {
                        return Ok(true);
                    }
                }
                RespState::Body => {
                    if self.remaining > 2 {
                        let k = (self.remaining - 2).min((data.len() - *pos) as u64) as usize;
                        if self.target == Target::Word {
                            self.reply.word.push(&data[*pos..*pos + k]);
                        }
                        *pos += k;
                        self.remaining -= k as u64;
                        continue;
                    }
                    let want = if self.remaining == 2 { b'\r' } else { b'\n' };
                    if b != want {
                        return Err(());
                    }
                    *pos += 1;
                    self.remaining -= 1;
                    if self.remaining == 0 && self.value_done() {
                        return Ok(true);
                    }
                }
                // Handled by the session before parsing.
                RespState::Resync | RespState::LostTail | RespState::ExpectStart => {
                    return Ok(false)
                }
            }
        }
        Ok(false)
    }

    fn start_value(&mut self, b: u8, at_chunk_start: bool) -> Result<(), ()> {
        if self.depth == 0 && !self.reply.started {
            self.reply.started = true;
            self.reply.at_chunk_start = at_chunk_start;
        }
        self.kind = b;
        self.target = Target::None;
        if self.depth == 0 {
            if b != b'|' {
                self.reply.top = b;
                if matches!(b, b'-' | b'+' | b'!') {
                    self.target = Target::Word;
                }
            }
        } else if self.depth == 1
            && self.attr_mask & 1 == 0
            && matches!(self.reply.top, b'*' | b'>')
        {
            match self.reply.total.checked_sub(self.stack[0]) {
                Some(0) => {
                    self.reply.e0_type = b;
                    if b == b'$' || b == b'+' {
                        self.target = Target::Word;
                    }
                }
                Some(2) if b == b':' => self.target = Target::Count,
                _ => {}
            }
        }
        self.num = 0;
        self.digits = 0;
        self.neg = false;
        match b {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {
                self.line_len = 0;
                self.state = RespState::Line;
            }
            b'$' | b'*' | b'%' | b'~' | b'|' | b'>' | b'!' | b'=' => self.state = RespState::Len,
            _ => return Err(()),
        }
        Ok(())
    }

    /// Bytes of a line (no CR or LF among them).
    fn line_bytes(&mut self, seg: &[u8]) -> Result<(), ()> {
        if seg.is_empty() {
            return Ok(());
        }
        self.line_len += seg.len();
        if self.line_len > MAX_LINE && !self.long_lines {
            return Err(());
        }
        match self.kind {
            b':' | b'(' => {
                for &c in seg {
                    if c.is_ascii_digit() {
                        if self.kind == b':' {
                            self.num = self
                                .num
                                .saturating_mul(10)
                                .saturating_add(u64::from(c - b'0'));
                        }
                        self.digits = self.digits.saturating_add(1);
                    } else if (c == b'-' || c == b'+') && self.digits == 0 && !self.neg {
                        self.neg = true;
                    } else {
                        return Err(());
                    }
                }
            }
            b'#' if self.line_len != 1 || !matches!(seg[0], b't' | b'f') => return Err(()),
            b'_' => return Err(()),
            _ => {}
        }
        if self.target == Target::Word {
            self.reply.word.push(seg);
        }
        Ok(())
    }

    /// The CRLF of a line was read; returns whether the reply is complete.
    fn line_end(&mut self) -> Result<bool, ()> {
        match self.kind {
            b':' | b'(' if self.digits == 0 => return Err(()),
            b'#' if self.line_len != 1 => return Err(()),
            _ => {}
        }
        if self.target == Target::Count {
            // `neg` also marks a leading '+'; a subscription count is never negative anyway.
            self.reply.count = Some(self.num.min(i64::MAX as u64) as i64);
        }
        Ok(self.value_done())
    }

    /// The CRLF of a length header was read; returns whether the reply is complete.
    fn header_end(&mut self) -> Result<bool, ()> {
        if self.neg {
            if self.num != 1 {
                return Err(());
            }
            return Ok(self.value_done());
        }
        match self.kind {
            b'$' | b'!' | b'=' => {
                if self.num > MAX_BULK {
                    return Err(());
                }
                self.remaining = self.num + 2;
                self.state = RespState::Body;
                Ok(false)
            }
            _ => {
                if self.num > MAX_AGGREGATE {
                    return Err(());
                }
                let attr = self.kind == b'|';
                let n = if self.kind == b'%' || attr {
                    self.num * 2
                } else {
                    self.num
                } as u32;
                if self.depth == 0 && !attr {
                    self.reply.total = n;
                }
                if n == 0 {
                    if attr {
                        self.state = RespState::Type;
                        return Ok(false);
                    }
                    return Ok(self.value_done());
                }
                if self.depth >= MAX_DEPTH {
                    return Err(());
                }
                self.stack[self.depth] = n;
                if attr {
                    self.attr_mask |= 1 << self.depth;
                } else {
                    self.attr_mask &= !(1 << self.depth);
                }
                self.depth += 1;
                self.state = RespState::Type;
                Ok(false)
            }
        }
    }

    /// A value is complete; returns whether that completes the top-level reply.
    fn value_done(&mut self) -> bool {
        self.state = RespState::Type;
        self.target = Target::None;
        while self.depth > 0 {
            let l = self.depth - 1;
            self.stack[l] -= 1;
            if self.stack[l] > 0 {
                return false;
            }
            self.depth = l;
            if self.attr_mask & (1 << l) != 0 {
                // An attribute is not a value: the value it annotates follows.
                self.attr_mask &= !(1 << l);
                return false;
            }
        }
        true
    }

    /// Skips `*n` uncopied bytes.
    fn skip(&mut self, n: &mut u64) -> Skip {
        loop {
            if *n == 0 {
                return Skip::Exhausted;
            }
            match self.state {
                RespState::Body => {
                    let k = (*n).min(self.remaining);
                    if self.target == Target::Word {
                        self.reply
                            .word
                            .unknown(k.min(self.remaining.saturating_sub(2)));
                    }
                    self.remaining -= k;
                    *n -= k;
                    if self.remaining == 0 && self.value_done() {
                        return Skip::Complete;
                    }
                }
                RespState::Type if self.depth == 0 && !self.reply.started => {
                    return Skip::Lost { inside: false }
                }
                RespState::Resync | RespState::LostTail | RespState::ExpectStart => {
                    *n = 0;
                    return Skip::Exhausted;
                }
                _ => return Skip::Lost { inside: true },
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PubSub {
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
}

impl PubSub {
    fn is_unsubscribe(self) -> bool {
        matches!(
            self,
            Self::Unsubscribe | Self::PUnsubscribe | Self::SUnsubscribe
        )
    }

    fn is_shard(self) -> bool {
        matches!(self, Self::SSubscribe | Self::SUnsubscribe)
    }
}

/// What a request needs from the reply side beyond plain matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    None,
    /// Not a request: an unknown number of requests whose framing was lost, and why.
    Gap(LostReason),
    Monitor,
    Reset,
    /// SELECT of this database index: the connection's namespace once answered `+OK`.
    Select(u32),
    PubSub(PubSub),
}

/// An open request (kept small: up to [`MAX_PENDING`] of them per connection).
#[derive(Clone, Copy, Debug)]
struct Open {
    start_ns: u64,
    argc: u32,
    /// Index in [`COMMANDS`], or `NO_INDEX`.
    name: u16,
    /// Index in [`SUBCOMMANDS`], or `NO_INDEX`.
    sub: u16,
    special: Special,
}

impl Open {
    fn is_gap(&self) -> bool {
        matches!(self.special, Special::Gap(_))
    }

    fn name(&self) -> &'static str {
        COMMANDS
            .get(usize::from(self.name))
            .copied()
            .unwrap_or(OTHER)
    }

    /// `SET ? ?`: the command (and known subcommand), then one `?` per argument; written
    /// out only if a span asks for it.
    fn statement(&self) -> Statement {
        let (head, used) = match SUBCOMMANDS.get(usize::from(self.sub)) {
            Some(s) => (*s, 2),
            None => (self.name(), 1),
        };
        let marks = (self.argc.saturating_sub(used) as usize).min((MAX_STATEMENT - head.len()) / 2);
        Statement::Placeholders {
            head,
            count: marks as u16,
        }
    }
}

/// A request whose reply lost its framing: it ends when the client sends again.
#[derive(Clone, Debug)]
struct Tail {
    open: Open,
    error: Option<String>,
    end_ns: u64,
    /// A request came: the reply is over, the operation waits to be handed out.
    closed: bool,
}

/// What the first element of an array or push says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A pub/sub message: `message`, `pmessage`, `smessage`.
    Message,
    /// A SUBSCRIBE-family confirmation.
    Confirm(PubSub),
    /// Anything else.
    Other,
    /// Not known (its bytes were not copied).
    Unknown,
}

fn classify(r: &Reply) -> Kind {
    if r.total == 0 || !matches!(r.e0_type, b'$' | b'+') {
        return Kind::Other;
    }
    let w = r.word.bytes();
    if r.word.complete() {
        return match w {
            b"message" | b"pmessage" | b"smessage" => Kind::Message,
            b"subscribe" => Kind::Confirm(PubSub::Subscribe),
            b"psubscribe" => Kind::Confirm(PubSub::PSubscribe),
            b"ssubscribe" => Kind::Confirm(PubSub::SSubscribe),
            b"unsubscribe" => Kind::Confirm(PubSub::Unsubscribe),
            b"punsubscribe" => Kind::Confirm(PubSub::PUnsubscribe),
            b"sunsubscribe" => Kind::Confirm(PubSub::SUnsubscribe),
            _ => Kind::Other,
        };
    }
    // Partly copied: length and first byte tell the kinds apart.
    match (r.word.total, w.first()) {
        (7, Some(b'm')) | (8, Some(b'p' | b's')) => Kind::Message,
        (9, Some(b's')) => Kind::Confirm(PubSub::Subscribe),
        (10, Some(b'p')) => Kind::Confirm(PubSub::PSubscribe),
        (10, Some(b's')) => Kind::Confirm(PubSub::SSubscribe),
        (11, Some(b'u')) => Kind::Confirm(PubSub::Unsubscribe),
        (12, Some(b'p')) => Kind::Confirm(PubSub::PUnsubscribe),
        (12, Some(b's')) => Kind::Confirm(PubSub::SUnsubscribe),
        _ => Kind::Unknown,
    }
}

/// `error_type` of an error reply: its first word when that is 1 to 32 upper-case ASCII
/// letters (`ERR`, `WRONGTYPE`, `MOVED`, `NOAUTH`), `_OTHER` otherwise.
fn error_type(word: &Cap<33>) -> String {
    let b = word.bytes();
    let w = match b.iter().position(|&c| c == b' ') {
        Some(i) => &b[..i],
        None if word.complete() => b,
        None => return OTHER.to_string(),
    };
    if w.is_empty() || w.len() > 32 || !w.iter().all(u8::is_ascii_uppercase) {
        return OTHER.to_string();
    }
    // ASCII upper-case letters only.
    String::from_utf8_lossy(w).into_owned()
}

/// Confirmations still expected for an UNSUBSCRIBE without arguments: unknown.
const UNKNOWN_COUNT: u32 = u32::MAX;

/// Confirmations of a SUBSCRIBE-family command (one per channel) after the first.
#[derive(Clone, Copy, Debug)]
struct Absorb {
    kind: PubSub,
    /// Still expected, or [`UNKNOWN_COUNT`].
    left: u32,
    /// They come as RESP3 pushes (not RESP2 arrays).
    push: bool,
}

/// One Redis connection: both directions, matched into operations.
///
/// Feed it every data syscall in the order they happened: [`on_request`](Self::on_request)
/// for client-to-server bytes, [`on_response`](Self::on_response) for server-to-client bytes,
/// whichever side of the connection was observed.
#[derive(Debug)]
pub struct RedisSession {
    req: ReqParser,
    resp: RespParser,
    open: VecDeque<Open>,
    /// `Special::Gap` entries in `open`.
    gaps: usize,
    tail: Option<Box<Tail>>,
    /// Further confirmations of an answered SUBSCRIBE-family command still to swallow.
    absorb: Option<Absorb>,
    /// RESP2 subscription counts (channels and patterns; shard channels), from confirmations.
    channels: u32,
    shard_channels: u32,
    monitor: bool,
    reply_off: bool,
    skip_next: bool,
    health: SessionHealth,
    /// A SYNC/PSYNC made the connection a replication stream: nothing more is parsed.
    stopped: bool,
    /// Why the reply direction is resynchronising (what requests dropped meanwhile count as).
    resp_lost: LostReason,
    /// The client spoke since the reply direction lost its framing: the server's next chunk
    /// may start a reply.
    resp_armed: bool,
    /// `db.namespace`: the database index a SELECT (or RESET: 0) last chose, as answered;
    /// unknown before either (0 unless the connection predates the agent, which the
    /// session cannot tell). A SELECT queued in a transaction is not followed.
    namespace: Option<Arc<str>>,
}

impl Default for RedisSession {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisSession {
    /// A session for a new connection (nothing seen yet).
    pub fn new() -> Self {
        Self {
            req: ReqParser::NEW,
            resp: RespParser::NEW,
            open: VecDeque::new(),
            gaps: 0,
            tail: None,
            absorb: None,
            channels: 0,
            shard_channels: 0,
            monitor: false,
            reply_off: false,
            skip_next: false,
            health: SessionHealth::default(),
            stopped: false,
            resp_lost: LostReason::Unparsable,
            resp_armed: false,
            namespace: None,
        }
    }

    /// Client-to-server bytes.
    pub fn on_request(&mut self, chunk: &Chunk) {
        if self.stopped {
            return;
        }
        if self.resp.state == RespState::Resync && chunk.len > 0 {
            self.resp_armed = true;
        }
        if self.resp.state == RespState::LostTail {
            // A client that does not pipeline sends again only after the whole reply.
            self.resp.state = RespState::ExpectStart;
            if let Some(t) = &mut self.tail {
                t.closed = true;
            }
        }
        let data = chunk.data;
        match self.req.state {
            ReqState::LostTail => return,
            ReqState::Resync => {
                if !plausible_request(data) {
                    return;
                }
                self.req.state = ReqState::Start;
            }
            ReqState::ExpectStart => {
                if !plausible_request(data) {
                    // The command taken to end with its syscall did not.
                    self.request_framing_lost(chunk.start_ns, LostReason::CaptureGap);
                    return;
                }
                self.req.state = ReqState::Start;
            }
            _ => {}
        }
        let mut pos = 0;
        loop {
            match self.req.advance(data, &mut pos, chunk.start_ns) {
                Ok(true) => {
                    self.finish_request();
                    if self.stopped {
                        return;
                    }
                }
                Ok(false) => break,
                Err(()) => {
                    self.request_framing_lost(chunk.start_ns, LostReason::Unparsable);
                    return;
                }
            }
        }
        let mut unknown = chunk.len.saturating_sub(data.len()) as u64;
        loop {
            match self.req.skip(&mut unknown) {
                Skip::Complete => {
                    self.finish_request();
                    if self.stopped {
                        return;
                    }
                }
                Skip::Exhausted => return,
                Skip::Lost { inside } => {
                    if inside && self.req.at_chunk_start && self.pending() == 0 && self.gaps == 0 {
                        // One command filling the syscall, nothing else in flight: take it as
                        // ending where the client stops sending.
                        self.finish_request();
                        if !self.stopped {
                            self.req.state = ReqState::LostTail;
                        }
                    } else {
                        self.request_framing_lost(chunk.start_ns, LostReason::CaptureGap);
                    }
                    return;
                }
            }
        }
    }

    /// Server-to-client bytes; completed operations are appended to `out`.
    pub fn on_response(&mut self, chunk: &Chunk, out: &mut impl Sink<Operation>) {
        if self.stopped {
            return;
        }
        if self.tail.as_ref().is_some_and(|t| t.closed) {
            if let Some(t) = self.tail.take() {
                self.emit(t.open, t.error, t.end_ns, out);
            }
        }
        if self.req.state == ReqState::LostTail {
            // A server answers a command only after reading all of it.
            self.req.state = ReqState::ExpectStart;
        }
        let data = chunk.data;
        match self.resp.state {
            RespState::LostTail => {
                if let Some(t) = &mut self.tail {
                    t.end_ns = chunk.end_ns;
                }
                return;
            }
            RespState::Resync => {
                if !(self.resp_armed && plausible_reply(data)) {
                    // The rest of a lost reply, or replies to any request open now: pairing a
                    // later reply with one of those requests could be wrong.
                    self.resp_armed = false;
                    self.drop_open(self.resp_lost);
                    return;
                }
                self.resp_armed = false;
                self.resp.state = RespState::Type;
            }
            RespState::ExpectStart => {
                if !plausible_reply(data) {
                    // The reply taken to end with its syscalls did not.
                    self.response_framing_lost(LostReason::CaptureGap);
                    return;
                }
                self.resp.state = RespState::Type;
            }
            _ => {}
        }
        let mut pos = 0;
        loop {
            match self.resp.advance(data, &mut pos) {
                Ok(true) => self.reply_done(chunk.end_ns, out),
                Ok(false) => break,
                Err(()) => {
                    self.response_framing_lost(LostReason::Unparsable);
                    return;
                }
            }
        }
        let mut unknown = chunk.len.saturating_sub(data.len()) as u64;
        loop {
            match self.resp.skip(&mut unknown) {
                Skip::Complete => self.reply_done(chunk.end_ns, out),
                Skip::Exhausted => return,
                Skip::Lost { inside } => {
                    let r = self.resp.reply;
                    let soft = inside
                        && r.at_chunk_start
                        && self.open.len() == 1
                        && self.gaps == 0
                        && r.top != b'>'
                        && !self.subscribed()
                        && !self.monitor;
                    let only = self.open.front().copied().filter(|o| {
                        soft && o.start_ns <= chunk.end_ns && o.special == Special::None
                    });
                    if let Some(open) = only {
                        // One reply filling the syscall for the only open request: it ends
                        // where the server stops sending.
                        self.open.pop_front();
                        let error = matches!(r.top, b'-' | b'!').then(|| error_type(&r.word));
                        self.tail = Some(Box::new(Tail {
                            open,
                            error,
                            end_ns: chunk.end_ns,
                            closed: false,
                        }));
                        self.resp.reset(RespState::LostTail);
                    } else {
                        self.response_framing_lost(LostReason::CaptureGap);
                    }
                    return;
                }
            }
        }
    }

    fn subscribed(&self) -> bool {
        self.channels > 0 || self.shard_channels > 0
    }

    fn head_special(&self) -> Special {
        self.open.front().map_or(Special::None, |o| o.special)
    }

    /// A command was parsed: queue it, unless it will get no reply.
    fn finish_request(&mut self) {
        let r = &self.req;
        let name = if r.a0.complete() {
            command_index(r.a0.bytes())
        } else {
            None
        };
        let command_kind = name.map_or(CommandKind::Plain, |i| COMMAND_KINDS[usize::from(i)]);
        let sub = match command_kind {
            CommandKind::Container | CommandKind::Client if r.argc >= 2 && r.a1.complete() => {
                subcommand_index(COMMANDS[usize::from(name.unwrap_or(0))], r.a1.bytes())
            }
            _ => None,
        };
        let open = Open {
            start_ns: r.start_ns,
            argc: r.argc.min(u64::from(u32::MAX)) as u32,
            name: name.unwrap_or(NO_INDEX),
            sub: sub.unwrap_or(NO_INDEX),
            special: match command_kind {
                CommandKind::Monitor => Special::Monitor,
                CommandKind::Reset => Special::Reset,
                CommandKind::Select if r.argc == 2 && r.a1.complete() => {
                    database_index(r.a1.bytes()).map_or(Special::None, Special::Select)
                }
                CommandKind::PubSub(k) => Special::PubSub(k),
                _ => Special::None,
            },
        };
        match command_kind {
            // The connection becomes a replication stream: not request/response any more.
            CommandKind::Sync => {
                self.stop_replication();
                return;
            }
            // RESET also turns CLIENT REPLY back ON, and is answered.
            CommandKind::Reset => {
                self.reply_off = false;
                self.skip_next = false;
            }
            CommandKind::Client if sub == Some(CLIENT_REPLY) && r.argc == 3 && r.a2.complete() => {
                let mode = r.a2.bytes();
                if mode.eq_ignore_ascii_case(b"OFF") {
                    self.reply_off = true;
                    self.skip_next = false;
                    return;
                }
                if mode.eq_ignore_ascii_case(b"SKIP") {
                    if !self.reply_off {
                        self.skip_next = true;
                    }
                    return;
                }
                if mode.eq_ignore_ascii_case(b"ON") {
                    self.reply_off = false;
                    self.skip_next = false;
                }
            }
            _ => {}
        }
        if self.reply_off {
            return;
        }
        if self.skip_next {
            self.skip_next = false;
            return;
        }
        self.push_open(open);
    }

    fn push_open(&mut self, open: Open) {
        if self.open.len() >= MAX_PENDING {
            if let Some(old) = self.open.pop_front() {
                if old.is_gap() {
                    self.gaps -= 1;
                } else {
                    self.health.lost.add(LostReason::QueueFull, 1);
                }
            }
        }
        if open.is_gap() {
            self.gaps += 1;
        }
        self.open.push_back(open);
    }

    /// The oldest open request a reply ending at `end_ns` answers, removed from the queue.
    fn pop_head(&mut self, end_ns: u64) -> Option<Open> {
        loop {
            let head = *self.open.front()?;
            if let Special::Gap(reason) = head.special {
                // Replies that ended before the next known request started answer lost ones.
                match self.open.get(1) {
                    Some(next) if next.start_ns <= end_ns => {
                        self.open.pop_front();
                        self.gaps -= 1;
                        continue;
                    }
                    _ => {
                        self.health.lost.add(reason, 1);
                        return None;
                    }
                }
            }
            if head.start_ns > end_ns {
                return None;
            }
            return self.open.pop_front();
        }
    }

    /// A top-level reply is complete.
    fn reply_done(&mut self, end_ns: u64, out: &mut impl Sink<Operation>) {
        let r = self.resp.reply;
        self.resp.reply = Reply::EMPTY;
        match r.top {
            b'>' => {
                // RESP3 push: never a reply, but SUBSCRIBE-family confirmations come this way.
                if let Kind::Confirm(k) = classify(&r) {
                    self.confirm(k, r.count, true, end_ns, out);
                }
                return;
            }
            b'*' if self.subscribed()
                || self.absorb.is_some_and(|a| !a.push)
                || matches!(self.head_special(), Special::PubSub(_)) =>
            {
                match classify(&r) {
                    Kind::Message => return,
                    Kind::Unknown if self.subscribed() => return,
                    Kind::Confirm(k) => {
                        self.confirm(k, r.count, false, end_ns, out);
                        return;
                    }
                    _ => {}
                }
            }
            b'+' if self.monitor && r.word.bytes().first().is_some_and(u8::is_ascii_digit) => {
                // A MONITOR line: `+1700000000.123456 [0 127.0.0.1:5000] "GET" "k"`.
                return;
            }
            _ => {}
        }
        self.absorb = None;
        let Some(open) = self.pop_head(end_ns) else {
            return;
        };
        let ok = !matches!(r.top, b'-' | b'!');
        let mut chosen = None;
        match open.special {
            Special::Monitor if ok => self.set_monitor(true),
            Special::Reset if ok => {
                self.set_monitor(false);
                self.channels = 0;
                self.shard_channels = 0;
                chosen = Some(Arc::from("0"));
            }
            // `+OK`, not `+QUEUED`: a SELECT inside MULTI takes effect only at EXEC.
            Special::Select(index) if r.top == b'+' && r.word.bytes() == b"OK" => {
                chosen = Some(Arc::from(index.to_string()));
            }
            _ => {}
        }
        let error = (!ok).then(|| error_type(&r.word));
        // The command itself ran in the database chosen before it.
        self.emit(open, error, end_ns, out);
        if chosen.is_some() {
            self.namespace = chosen;
        }
    }

    fn set_monitor(&mut self, on: bool) {
        self.monitor = on;
        self.resp.long_lines = on;
    }

    /// A SUBSCRIBE-family confirmation; `count` is the subscriptions left, `push` whether it
    /// came as a RESP3 push (which does not change how arrays are read).
    fn confirm(
        &mut self,
        kind: PubSub,
        count: Option<i64>,
        push: bool,
        end_ns: u64,
        out: &mut impl Sink<Operation>,
    ) {
        let count = count.map(|c| c.clamp(0, i64::from(u32::MAX)) as u32);
        if let (Some(c), false) = (count, push) {
            if kind.is_shard() {
                self.shard_channels = c;
            } else {
                self.channels = c;
            }
        }
        let head_matches = self.head_special() == Special::PubSub(kind);
        if let Some(a) = self.absorb {
            if a.kind == kind && !(a.left == UNKNOWN_COUNT && head_matches) {
                self.absorb = if a.left == UNKNOWN_COUNT {
                    // No subscription left: that was the last one.
                    (count != Some(0)).then_some(a)
                } else {
                    (a.left > 1).then_some(Absorb {
                        left: a.left - 1,
                        ..a
                    })
                };
                return;
            }
        }
        if !head_matches {
            return;
        }
        if let Some(open) = self.pop_head(end_ns) {
            // One confirmation per channel argument; without arguments, one per subscription
            // (at least one), ending when none is left.
            let left = if open.argc >= 2 {
                open.argc - 2
            } else if kind.is_unsubscribe() && count != Some(0) {
                UNKNOWN_COUNT
            } else {
                0
            };
            self.absorb = (left > 0).then_some(Absorb { kind, left, push });
            self.emit(open, None, end_ns, out);
        }
    }

    fn emit(
        &mut self,
        open: Open,
        error_type: Option<String>,
        end_ns: u64,
        out: &mut impl Sink<Operation>,
    ) {
        out.push(Operation {
            name: open.name(),
            namespace: self.namespace.clone(),
            // Redis's error prefix is both the error type and the code the server answered.
            status_code: error_type.clone(),
            error_type,
            start_ns: open.start_ns,
            end_ns,
            statement: open.statement(),
            collection: None,
        });
    }

    /// Request framing lost: the queued requests still get their replies first; a gap
    /// stands for the lost ones.
    fn request_framing_lost(&mut self, start_ns: u64, reason: LostReason) {
        self.health.parse_errors += 1;
        self.req = ReqParser::NEW;
        self.req.state = ReqState::Resync;
        if self.open.back().is_none_or(|o| !o.is_gap()) {
            self.push_open(Open {
                start_ns,
                argc: 0,
                name: NO_INDEX,
                sub: NO_INDEX,
                special: Special::Gap(reason),
            });
        }
    }

    /// Reply framing lost: how many replies were lost is unknown, so is which request the
    /// next reply answers: the open requests are dropped.
    fn response_framing_lost(&mut self, reason: LostReason) {
        self.health.parse_errors += 1;
        self.resp.reset(RespState::Resync);
        self.resp_lost = reason;
        self.resp_armed = false;
        self.drop_open(reason);
    }

    /// Drops the open requests, counted as lost for `reason`.
    fn drop_open(&mut self, reason: LostReason) {
        self.health.lost.add(reason, self.pending() as u64);
        self.open.clear();
        self.gaps = 0;
        self.tail = None;
        self.absorb = None;
    }

    /// The connection became a replication stream: stop for good, holding nothing.
    fn stop_replication(&mut self) {
        self.drop_open(LostReason::Stopped);
        self.open = VecDeque::new();
        self.stopped = true;
        self.health.stopped = Some(StopReason::Replication);
        self.req = ReqParser::NEW;
        self.resp = RespParser::NEW;
    }
}

// ---- the protocol registry's session ------------------------------------------------------

/// A Redis session for [`super::PROTOCOLS`].
pub fn new_session(_: &SessionOptions) -> Box<dyn Session> {
    Box::new(RedisSession::new())
}

impl Session for RedisSession {
    fn client_bytes(&mut self, chunk: &Chunk<'_>, _: &mut Vec<Request>) {
        self.on_request(chunk);
    }

    fn server_bytes(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Request>) {
        self.on_response(chunk, &mut requests(out));
    }

    /// A Redis reply is complete when its last byte arrives: the close completes nothing.
    fn finish(&mut self, _: &mut Vec<Request>) {}

    /// Requests waiting for their reply.
    fn pending(&self) -> usize {
        self.open.len() - self.gaps + usize::from(self.tail.is_some())
    }

    /// Returns what happened since the last call and resets it (`stopped` is reported once).
    fn take_health(&mut self) -> SessionHealth {
        std::mem::take(&mut self.health)
    }

    /// How many of the next bytes in that direction the session will skip without looking
    /// at them: the rest of the bulk string being read (its CRLF excluded, which is checked),
    /// when none of it is kept (only the first bytes of the command name, its first two
    /// arguments and the first element of a reply are). 0 when unsure.
    fn skip_hint(&self, from_client: bool) -> u64 {
        if self.stopped {
            return 0;
        }
        if from_client {
            let r = &self.req;
            let kept = match r.arg {
                0 => r.a0.full(),
                1 => r.a1.full(),
                2 => r.a2.full(),
                _ => true,
            };
            if r.state == ReqState::BulkBody && kept {
                return r.remaining.saturating_sub(2);
            }
        } else {
            let r = &self.resp;
            let kept = r.target != Target::Word || r.reply.word.full();
            if r.state == RespState::Body && kept {
                return r.remaining.saturating_sub(2);
            }
        }
        0
    }

    /// Drops the requests that started more than `timeout_ns` before `now_ns` (counted in
    /// `timed_out`).
    fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        while let Some(o) = self.open.front() {
            if o.start_ns.saturating_add(timeout_ns) >= now_ns {
                break;
            }
            if o.is_gap() {
                self.gaps -= 1;
            } else {
                self.health.timed_out += 1;
            }
            self.open.pop_front();
        }
        if let Some(t) = &self.tail {
            if !t.closed && t.open.start_ns.saturating_add(timeout_ns) < now_ns {
                self.tail = None;
                self.health.timed_out += 1;
                if self.resp.state == RespState::LostTail {
                    self.resp.state = RespState::ExpectStart;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{LostRequests, StopReason};

    // ---- fixtures ------------------------------------------------------------------------

    use crate::protocols::test_fixtures::{
        logged, random_split, truncated, whole, Fixture, Piece, Rng,
    };

    fn fixture(name: &str) -> Fixture {
        crate::protocols::test_fixtures::load("redis", name)
    }

    struct Outcome {
        ops: Vec<Operation>,
        health: SessionHealth,
        pending: usize,
        /// Time of each piece, as given to the session.
        times: Vec<u64>,
    }

    /// Feeds the pieces in order; piece `i` runs from `1000 * (i + 1)` to that plus 500 ns.
    fn run(pieces: &[Piece<'_>]) -> Outcome {
        let mut s = RedisSession::new();
        let mut ops = Vec::new();
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
                s.on_response(&c, &mut ops);
            }
            check_bounds(&s);
        }
        Outcome {
            ops,
            health: s.take_health(),
            pending: s.pending(),
            times,
        }
    }

    fn check_bounds(s: &RedisSession) {
        assert!(
            s.pending() <= MAX_PENDING,
            "pending {} over the cap",
            s.pending()
        );
        assert!(
            s.open.len() <= MAX_PENDING,
            "queue {} over the cap",
            s.open.len()
        );
        assert!(
            s.resp.depth <= MAX_DEPTH,
            "reply nesting {} over the cap",
            s.resp.depth
        );
        assert!(
            s.req.line_len <= MAX_LINE,
            "inline line {} over the cap",
            s.req.line_len
        );
        assert!(
            s.resp.line_len <= MAX_LINE || s.resp.long_lines,
            "reply line {} over the cap",
            s.resp.line_len
        );
    }

    /// `NAME` or `NAME:ERROR_TYPE` per operation.
    fn summary(ops: &[Operation]) -> Vec<String> {
        ops.iter()
            .map(|o| match &o.error_type {
                None => o.name.to_string(),
                Some(e) => format!("{}:{e}", o.name),
            })
            .collect()
    }

    fn expected(name: &str) -> Vec<String> {
        let list: Vec<&str> = match name {
            "plain" => vec!["COMMAND", "SET", "GET", "GET", "DEL", "INCR"],
            "pipelined_set" => vec!["SET"; 64],
            "pipelined_get" => vec!["GET"; 64],
            "multi" => vec![
                "SET",
                "MULTI",
                "SET",
                "INCR",
                "LPUSH",
                "GET",
                "EXEC",
                "MULTI",
                "SET:ERR",
                "INCR",
                "EXEC:EXECABORT",
                "MULTI",
                "SET",
                "DISCARD",
            ],
            "errors" => vec![
                "SET",
                "LPUSH:WRONGTYPE",
                "_OTHER:ERR",
                "GET:ERR",
                "GET",
                "EVAL:MYERR",
                "EVAL:_OTHER",
            ],
            "resp3" => vec!["HELLO", "SET", "CLIENT", "GET", "HGETALL", "PING"],
            "subscribe" => vec![
                "SUBSCRIBE",
                "PING",
                "PSUBSCRIBE",
                "UNSUBSCRIBE",
                "PUNSUBSCRIBE",
                "PING",
            ],
            "subscribe_resp3" => vec!["HELLO", "SUBSCRIBE", "GET", "UNSUBSCRIBE", "PING"],
            "monitor" => vec!["MONITOR", "RESET", "PING"],
            "bigvalue" => vec!["SET", "GET", "STRLEN"],
            "inline" => vec!["PING", "SET", "SET", "GET", "_OTHER:ERR", "MGET"],
            "client_reply" => vec!["CLIENT", "GET", "GET"],
            _ => panic!("no expectation for fixture {name}"),
        };
        list.into_iter().map(String::from).collect()
    }

    const FIXTURES: &[&str] = &[
        "plain",
        "pipelined_set",
        "pipelined_get",
        "multi",
        "errors",
        "resp3",
        "subscribe",
        "subscribe_resp3",
        "monitor",
        "bigvalue",
        "inline",
        "client_reply",
    ];

    fn assert_clean(name: &str, how: &str, o: &Outcome) {
        assert_eq!(
            summary(&o.ops),
            expected(name),
            "{name} ({how}): operations differ"
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
            assert_clean(name, "whole", &run(&whole(&f)));
        }
    }

    #[test]
    fn fixtures_as_logged_with_times() {
        for name in FIXTURES {
            let f = fixture(name);
            let pieces = logged(&f);
            let o = run(&pieces);
            assert_clean(name, "as logged", &o);
            // Every operation starts with a client chunk and ends with a later server chunk.
            for op in &o.ops {
                let at = |t: u64| o.times.iter().position(|&x| x == t);
                let s = at(op.start_ns).unwrap_or_else(|| panic!("{name}: start {op:?}"));
                let e = at(op.end_ns - 500).unwrap_or_else(|| panic!("{name}: end {op:?}"));
                assert!(
                    pieces[s].req && !pieces[e].req && s < e,
                    "{name}: times of {op:?}"
                );
            }
        }
    }

    #[test]
    fn fixture_timing_is_per_command() {
        // pipelined: 4 syscalls of 16 SETs, each answered by one syscall of 16 +OK.
        let f = fixture("pipelined_set");
        let o = run(&logged(&f));
        for (i, op) in o.ops.iter().enumerate() {
            let batch = (i / 16) as u64;
            assert_eq!(op.start_ns, 1000 * (2 * batch + 1), "start of SET #{i}");
            assert_eq!(op.end_ns, 1000 * (2 * batch + 2) + 500, "end of SET #{i}");
            assert_eq!(op.statement, "SET ? ?");
        }
        // bigvalue: the SET starts with its first syscall, the GET ends with the last.
        let f = fixture("bigvalue");
        let pieces = logged(&f);
        let o = run(&pieces);
        assert_eq!(
            o.ops[0].start_ns, 1000,
            "SET starts at the first client syscall"
        );
        let last_get_reply = pieces
            .iter()
            .rposition(|p| !p.req && p.data.len() > 1000)
            .expect("GET reply");
        assert_eq!(o.ops[1].end_ns, 1000 * (last_get_reply as u64 + 1) + 500);
        // plain: COMMAND DOCS is answered in three syscalls; it ends with the third.
        let f = fixture("plain");
        let o = run(&logged(&f));
        assert_eq!(
            o.ops[0].end_ns, 4500,
            "COMMAND DOCS ends with its reply's last syscall"
        );
    }

    #[test]
    fn fixture_statements() {
        let o = run(&whole(&fixture("plain")));
        let st: Vec<_> = o.ops.iter().map(|o| o.statement.text()).collect();
        assert_eq!(
            st,
            [
                "COMMAND DOCS",
                "SET ? ?",
                "GET ?",
                "GET ?",
                "DEL ?",
                "INCR ?"
            ]
        );
        let o = run(&whole(&fixture("inline")));
        let st: Vec<_> = o.ops.iter().map(|o| o.statement.text()).collect();
        assert_eq!(
            st,
            ["PING", "SET ? ?", "SET ? ?", "GET ?", "_OTHER ?", "MGET ? ?"]
        );
        let o = run(&whole(&fixture("resp3")));
        assert_eq!(o.ops[2].statement, "CLIENT TRACKING ?");
        let o = run(&whole(&fixture("client_reply")));
        assert_eq!(o.ops[0].statement, "CLIENT REPLY ?");
        assert!(o.ops.iter().all(|o| o.collection.is_none()));
    }

    /// Split points of a piece: all of them for small pieces, otherwise every point near the
    /// ends and a stride in between.
    fn split_points(len: usize) -> Vec<usize> {
        if len <= 4096 {
            (1..len).collect()
        } else {
            (1..len)
                .filter(|&k| k < 600 || k > len - 600 || k % 97 == 0)
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
                    assert_clean(name, &format!("piece {i} split at {k}"), &run(&v));
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
            for round in 0..40 {
                let max = [1, 2, 3, 7, 16, 64, 1000, 20000][round % 8];
                let v = random_split(&pieces, &mut rng, max);
                assert_clean(name, &format!("random split round {round}"), &run(&v));
            }
        }
    }

    #[test]
    fn fixtures_truncated_to_256() {
        for name in FIXTURES {
            let f = fixture(name);
            let o = run(&truncated(&logged(&f), 256));
            match *name {
                // Each syscall carries 16 commands (720 or 576 bytes): the copied 256 bytes hold
                // the first 5 SETs (45 bytes each) or 7 GETs (36 bytes each), then a header is
                // missing. Those are matched exactly; the others are lost, each batch is a
                // parse error, and nothing is misattributed.
                "pipelined_set" | "pipelined_get" => {
                    let (cmd, per) = if *name == "pipelined_set" {
                        ("SET", 5)
                    } else {
                        ("GET", 7)
                    };
                    assert_eq!(summary(&o.ops), vec![cmd.to_string(); 4 * per], "{name}");
                    for (i, op) in o.ops.iter().enumerate() {
                        let batch = (i / per) as u64;
                        assert_eq!(op.start_ns, 1000 * (2 * batch + 1), "{name}: start #{i}");
                        assert_eq!(op.end_ns, 1000 * (2 * batch + 2) + 500, "{name}: end #{i}");
                    }
                    assert_eq!(o.health.parse_errors, 4, "{name}");
                    // Each batch's other replies reach the gap: one lost request each.
                    assert_eq!(
                        o.health.lost,
                        LostRequests {
                            capture_gap: 4 * (16 - per as u64),
                            ..LostRequests::default()
                        },
                        "{name}"
                    );
                    assert_eq!(o.health.stopped, None, "{name}");
                    assert_eq!(o.pending, 0, "{name}");
                }
                // The rest: values larger than 256 bytes are skipped by length, and the
                // COMMAND DOCS reply (nested headers lost) ends where its syscalls end.
                _ => assert_clean(name, "truncated to 256", &o),
            }
            let plain = run(&logged(&fixture("plain")));
            if *name == "plain" {
                assert_eq!(
                    o.ops[0].end_ns, plain.ops[0].end_ns,
                    "COMMAND DOCS end time"
                );
            }
        }
    }

    #[test]
    fn fixtures_random_truncation_never_misnames() {
        // Whatever is lost, an operation that comes out is one of the session's commands, or
        // `_OTHER` when the command name itself was not copied.
        let mut rng = Rng(42);
        for name in FIXTURES {
            let f = fixture(name);
            let names: Vec<String> = expected(name)
                .into_iter()
                .map(|s| s.split(':').next().unwrap().to_string())
                .collect();
            for _ in 0..50 {
                let v = random_split(&logged(&f), &mut rng, 300);
                let v: Vec<Piece<'_>> = v
                    .iter()
                    .map(|p| Piece {
                        data: &p.data[..rng.below(p.data.len() + 1)],
                        ..*p
                    })
                    .collect();
                let o = run(&v);
                for op in &o.ops {
                    assert!(
                        op.name == OTHER || names.iter().any(|n| n == op.name),
                        "{name}: unexpected {op:?}"
                    );
                    assert!(op.start_ns < op.end_ns, "{name}: {op:?}");
                }
            }
        }
    }

    // ---- detection and names ---------------------------------------------------------------

    #[test]
    fn detection() {
        for yes in [
            &b"*1\r\n$4\r\nPING\r\n"[..],
            b"*3\r\n$3\r\nset\r\n$1\r\na\r\n$1\r\nb\r\n",
            b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
            b"PING\r\n",
            b"SET a b\r\n",
            b"GET key\n",
            b"CLIENT SETNAME x\r\n",
        ] {
            assert!(
                looks_like_request(yes),
                "should match: {:?}",
                String::from_utf8_lossy(yes)
            );
        }
        let pg_startup = [0u8, 0, 0, 8, 4, 210, 22, 47];
        let tls = [
            0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for no in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /index.html HTTP/1.1\r\n",
            b"GET HTTP/1.1\r\n",
            b"POST /api HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &pg_startup,
            &tls,
            b"get key\r\n",
            b"PINGX\r\n",
            b"PING",
            // An HTTP client's first write can be the method alone.
            b"GET ",
            b"SET a b",
            b"*1\r\n$4\r\nPIN",
            b"*1\r\n$6\r\nFOOBAR\r\n",
            b"*0\r\n",
            b"+OK\r\n",
            b"",
        ] {
            assert!(
                !looks_like_request(no),
                "should not match: {:?}",
                String::from_utf8_lossy(no)
            );
        }
    }

    #[test]
    fn detection_of_real_clients() {
        for name in FIXTURES {
            let f = fixture(name);
            let first = logged(&f)[0];
            assert!(first.req, "{name}: the client speaks first");
            assert!(
                looks_like_request(first.data),
                "{name}: first client bytes not detected"
            );
            // A reply can look like a request (`*480\r\n$5\r\nwatch\r\n` starts COMMAND DOCS in
            // RESP2): detection is for the bytes the connecting side sends first.
            if f.resp[0] != b'*' {
                assert!(
                    !looks_like_request(&f.resp),
                    "{name}: reply detected as a request"
                );
            }
        }
    }

    #[test]
    fn command_tables() {
        assert!(
            COMMANDS.windows(2).all(|w| w[0] < w[1]),
            "COMMANDS sorted and unique"
        );
        assert!(
            SUBCOMMANDS.windows(2).all(|w| w[0] < w[1]),
            "SUBCOMMANDS sorted and unique"
        );
        for c in COMMANDS {
            assert!(
                c.len() <= 32
                    && c.bytes()
                        .all(|b| b.is_ascii_uppercase() || b"_-".contains(&b))
            );
            assert_eq!(operation_name(c.to_ascii_lowercase().as_bytes()), *c);
        }
        for s in SUBCOMMANDS {
            let (c, sub) = s.split_once(' ').expect("two words");
            assert!(CONTAINERS.contains(&c), "{s}: container not listed");
            assert_eq!(
                subcommand_index(c, sub.to_ascii_lowercase().as_bytes())
                    .map(|i| SUBCOMMANDS[usize::from(i)]),
                Some(*s)
            );
        }
        for c in CONTAINERS {
            assert!(
                COMMANDS.contains(c) && SUBCOMMANDS.iter().any(|s| s.starts_with(&format!("{c} ")))
            );
        }
        assert_eq!(operation_name(b"get"), "GET");
        assert_eq!(operation_name(b"GeoRadius_RO"), "GEORADIUS_RO");
        assert_eq!(operation_name(b"JSON.SET"), OTHER);
        assert_eq!(operation_name(b""), OTHER);
        assert_eq!(operation_name(&[b'A'; 40]), OTHER);
        assert_eq!(COMMANDS.len(), 250);
        assert_eq!(SUBCOMMANDS[usize::from(CLIENT_REPLY)], "CLIENT REPLY");
        for (c, command_kind) in COMMANDS.iter().zip(COMMAND_KINDS.iter()) {
            let container = matches!(command_kind, CommandKind::Container | CommandKind::Client);
            assert_eq!(container, CONTAINERS.contains(c), "{c}: {command_kind:?}");
        }
        assert_eq!(
            COMMAND_KINDS[usize::from(command_index(b"psync").unwrap())],
            CommandKind::Sync
        );
        let used = COMMAND_HASH.iter().filter(|&&i| i != NO_INDEX).count();
        assert_eq!(used, COMMANDS.len(), "every command is in the hash table");
    }

    // ---- behaviours --------------------------------------------------------------------------

    /// A session driven by hand: `req`/`resp` feed one syscall each at increasing times.
    struct Driver {
        s: RedisSession,
        ops: Vec<Operation>,
        t: u64,
    }

    impl Driver {
        fn new() -> Self {
            Self {
                s: RedisSession::new(),
                ops: Vec::new(),
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
                end_ns: self.t + 500,
            });
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
                    end_ns: self.t + 500,
                },
                &mut self.ops,
            );
            check_bounds(&self.s);
            self
        }
        fn summary(&self) -> Vec<String> {
            summary(&self.ops)
        }
    }

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    #[test]
    fn namespace_follows_answered_selects() {
        let mut d = Driver::new();
        let namespaces = |d: &Driver| -> Vec<Option<String>> {
            d.ops
                .iter()
                .map(|o| o.namespace.as_deref().map(str::to_owned))
                .collect()
        };
        // Unknown before any SELECT; a pipelined SELECT changes what follows its reply.
        d.req(
            &[
                cmd(&[b"GET", b"k"]),
                cmd(&[b"SELECT", b"3"]),
                cmd(&[b"GET", b"k"]),
            ]
            .concat(),
        );
        d.resp(b"$-1\r\n+OK\r\n$-1\r\n");
        // A refused SELECT changes nothing; nor does one queued in a transaction that
        // is discarded.
        d.req(&cmd(&[b"SELECT", b"99"]))
            .resp(b"-ERR DB index is out of range\r\n");
        d.req(&cmd(&[b"MULTI"])).resp(b"+OK\r\n");
        d.req(&cmd(&[b"SELECT", b"5"])).resp(b"+QUEUED\r\n");
        d.req(&cmd(&[b"DISCARD"])).resp(b"+OK\r\n");
        // RESET goes back to database 0 (itself still ran in 3).
        d.req(&cmd(&[b"RESET"])).resp(b"+RESET\r\n");
        d.req(&cmd(&[b"GET", b"k"])).resp(b"$-1\r\n");
        let three = Some("3".to_owned());
        assert_eq!(
            namespaces(&d),
            [
                None,
                None,
                three.clone(),
                three.clone(),
                three.clone(),
                three.clone(),
                three.clone(),
                three,
                Some("0".to_owned()),
            ]
        );
    }

    #[test]
    fn resp3_types_and_attributes() {
        let mut d = Driver::new();
        let replies: &[&[u8]] = &[
            b"_\r\n",
            b"#t\r\n",
            b",3.14\r\n",
            b",-inf\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"~2\r\n+a\r\n:1\r\n",
            b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n*2\r\n_\r\n#f\r\n",
            b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
            b"*3\r\n:1\r\n|1\r\n+ttl\r\n:3600\r\n:2\r\n:3\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"%0\r\n",
            b"-MOVED 3999 127.0.0.1:6381\r\n",
            b"-NOAUTH\r\n",
            b"-Error lower\r\n",
            b"-ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG too long\r\n",
        ];
        for _ in replies {
            d.req(&cmd(&[b"GET", b"k"]));
        }
        // A push between replies is not a reply.
        d.resp(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n");
        for r in replies {
            d.resp(r);
        }
        let mut want = vec!["GET"; 10];
        want.push("GET:SYNTAX");
        want.extend(["GET"; 4]);
        want.extend(["GET:MOVED", "GET:NOAUTH", "GET:_OTHER", "GET:_OTHER"]);
        assert_eq!(d.summary(), want);
        assert_eq!(d.s.take_health(), SessionHealth::default());
        assert_eq!(d.s.pending(), 0);
    }

    #[test]
    fn pipelining_gives_each_command_its_time() {
        let mut d = Driver::new();
        let mut batch = cmd(&[b"SET", b"a", b"1"]);
        batch.extend(cmd(&[b"GET", b"a"]));
        batch.extend(b"PING\r\n");
        d.req(&batch); // t=1000
        d.resp(b"+OK\r\n$1\r\n1"); // t=2000
        d.resp(b"\r\n+PONG\r\n"); // t=3000
        let ends: Vec<(u64, u64)> = d.ops.iter().map(|o| (o.start_ns, o.end_ns)).collect();
        assert_eq!(ends, [(1000, 2500), (1000, 3500), (1000, 3500)]);
        assert_eq!(d.summary(), ["SET", "GET", "PING"]);
    }

    #[test]
    fn large_values_are_skipped_by_length() {
        let mut d = Driver::new();
        let value = vec![b'x'; 1_000_000];
        let set = cmd(&[b"SET", b"big", &value]);
        // The kernel copied 256 bytes of a 64 KiB syscall, then nothing of the others.
        d.req_len(&set[..256], 65536);
        let mut at = 65536;
        while at < set.len() {
            let n = (set.len() - at).min(65536);
            d.req_len(&[], n);
            at += n;
        }
        d.resp(b"+OK\r\n");
        let mut get_reply = format!("${}\r\n", value.len()).into_bytes();
        get_reply.extend(&value);
        get_reply.extend(b"\r\n");
        d.req(&cmd(&[b"GET", b"big"]));
        d.resp_len(&get_reply[..100], 300_000);
        d.resp_len(&get_reply[300_000..300_010], get_reply.len() - 300_000);
        assert_eq!(d.summary(), ["SET", "GET"]);
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn lost_framing_inside_a_lone_command_and_reply() {
        // MSET with many keys: the copied prefix ends in the middle of its headers.
        let mut d = Driver::new();
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for i in 0..200 {
            args.push(format!("key:{i}").into_bytes());
            args.push(b"v".to_vec());
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let mset = cmd(&refs);
        d.req_len(&mset[..256], 2000);
        d.req_len(&mset[2000..2100], mset.len() - 2000); // the rest, another syscall
        d.resp(b"+OK\r\n");
        // An HGETALL reply much larger than the copied prefix, in three syscalls.
        d.req(&cmd(&[b"HGETALL", b"h"]));
        let mut reply = b"*400\r\n".to_vec();
        for i in 0..400 {
            let f = format!("field-or-value-{i}");
            reply.extend(format!("${}\r\n{f}\r\n", f.len()).as_bytes());
        }
        d.resp_len(&reply[..256], 4000);
        d.resp_len(&reply[4000..4256], 4000);
        d.resp_len(&reply[8000..8256], reply.len() - 8000); // t = 7000
        d.req(&cmd(&[b"PING"]));
        d.resp(b"+PONG\r\n");
        assert_eq!(d.summary(), ["MSET", "HGETALL", "PING"]);
        assert_eq!(
            d.ops[0].statement.len(),
            MAX_STATEMENT,
            "{}",
            d.ops[0].statement
        );
        assert_eq!((d.ops[0].start_ns, d.ops[0].end_ns), (1000, 3500));
        assert_eq!(
            (d.ops[1].start_ns, d.ops[1].end_ns),
            (4000, 7500),
            "HGETALL ends with its last syscall"
        );
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn lost_framing_in_pipelines_is_counted_and_resynced() {
        let mut d = Driver::new();
        let mut batch = Vec::new();
        for _ in 0..20 {
            batch.extend(cmd(&[b"INCR", b"counter"]));
        }
        // 27 bytes each: 3 commands known, the 4th complete once its key is skipped, then lost.
        d.req_len(&batch[..100], batch.len());
        let mut replies = Vec::new();
        for i in 0..20 {
            replies.extend(format!(":{i}\r\n").as_bytes());
        }
        d.resp(&replies);
        assert_eq!(d.summary(), ["INCR"; 4]);
        assert_eq!(d.s.pending(), 0);
        // The next syscall starts a command: in sync again.
        d.req(&cmd(&[b"GET", b"a"]));
        d.resp(b"$-1\r\n");
        assert_eq!(d.summary(), ["INCR", "INCR", "INCR", "INCR", "GET"]);
        let h = d.s.take_health();
        // The 16 replies that reach the gap answered lost requests.
        assert_eq!(
            (h.parse_errors, h.timed_out, h.lost.capture_gap, h.stopped),
            (1, 0, 16, None)
        );
        // Reply side: a syscall of 20 replies truncated: 2 replies known, the third lost in
        // its line; the 18 open requests are dropped.
        d.req(&batch);
        d.resp_len(&replies[..10], replies.len());
        assert_eq!(d.ops.len(), 7);
        let h = d.s.take_health();
        assert_eq!(
            (h.parse_errors, h.timed_out, h.lost.capture_gap),
            (1, 0, 18)
        );
        // Garbage is skipped until a syscall starts like a reply.
        d.resp(b"garbage");
        d.req(&cmd(&[b"PING"]));
        d.resp(b"+PONG\r\n");
        assert_eq!(d.summary().last().map(String::as_str), Some("PING"));
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn never_gives_up_after_repeated_framing_errors() {
        let mut d = Driver::new();
        for _ in 0..1000 {
            d.req(&cmd(&[b"GET", b"a"]));
            // Starts like a reply (so it is parsed after a resync), then breaks.
            d.resp(b"$3\r\nabcdef\r\n");
        }
        let h = d.s.take_health();
        assert_eq!(
            (h.parse_errors, h.lost.unparsable, h.stopped),
            (1000, 1000, None)
        );
        for _ in 0..10 {
            d.req(&cmd(&[b"GET", b"a"]));
            d.resp(b"+OK\r\n");
        }
        assert_eq!(d.summary(), ["GET"; 10]);
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn replication_stream_stops_parsing_and_says_why() {
        let mut d = Driver::new();
        d.req(&cmd(&[b"GET", b"a"]));
        d.req(&cmd(&[b"PSYNC", b"?", b"-1"]));
        d.resp(b"+FULLRESYNC 8371b4fb1155b71f4a04d3e1bc3e18c4a990aeeb 0\r\n$5\r\nREDIS");
        let h = d.s.take_health();
        assert_eq!(h.stopped, Some(StopReason::Replication));
        assert_eq!((h.parse_errors, h.timed_out, h.lost.stopped), (0, 0, 1));
        d.req(&cmd(&[b"GET", b"a"]));
        d.resp(b"+OK\r\n");
        assert!(d.ops.is_empty());
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.s.take_health(), SessionHealth::default(), "reported once");
        assert_eq!(d.s.skip_hint(true) + d.s.skip_hint(false), 0);
    }

    #[test]
    fn fifo_is_capped() {
        let mut d = Driver::new();
        let mut many = Vec::new();
        for _ in 0..MAX_PENDING + 5 {
            many.extend(b"PING\r\n");
        }
        d.req(&many);
        assert_eq!(d.s.pending(), MAX_PENDING);
        let h = d.s.take_health();
        assert_eq!((h.timed_out, h.lost.queue_full), (0, 5));
        d.s.expire(u64::MAX, 1);
        assert_eq!(d.s.pending(), 0);
        assert_eq!(d.s.take_health().timed_out, MAX_PENDING as u64);
    }

    #[test]
    fn expire_drops_old_requests_only() {
        let mut d = Driver::new();
        d.req(b"PING\r\n"); // t=1000
        d.req(b"PING\r\n"); // t=2000
        d.s.expire(2500, 1000);
        assert_eq!(d.s.pending(), 1);
        assert_eq!(d.s.take_health().timed_out, 1);
        d.resp(b"+PONG\r\n");
        assert_eq!(d.ops.len(), 1);
        assert_eq!(d.ops[0].start_ns, 2000);
    }

    #[test]
    fn reply_never_closes_a_later_request() {
        let mut s = RedisSession::new();
        let mut ops = Vec::new();
        s.on_request(&Chunk {
            data: b"PING\r\n",
            len: 6,
            start_ns: 5000,
            end_ns: 5100,
        });
        s.on_response(
            &Chunk {
                data: b"+PONG\r\n",
                len: 7,
                start_ns: 100,
                end_ns: 200,
            },
            &mut ops,
        );
        assert!(ops.is_empty());
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn subscribe_edge_cases() {
        // SUBSCRIBE pipelined behind another SUBSCRIBE; messages; shard channels; RESET.
        let mut d = Driver::new();
        d.req(&cmd(&[b"SUBSCRIBE", b"a", b"b"]));
        d.req(&cmd(&[b"SUBSCRIBE", b"c"]));
        d.req(&cmd(&[b"SSUBSCRIBE", b"s"]));
        d.resp(
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
        );
        d.resp(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n");
        d.resp(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:3\r\n");
        d.resp(b"*3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n");
        d.resp(b"*3\r\n$8\r\nsmessage\r\n$1\r\ns\r\n$2\r\nhi\r\n");
        d.req(&cmd(&[b"RESET"]));
        d.resp(b"+RESET\r\n");
        // After RESET an array starting with "message" is a plain reply again.
        d.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        d.resp(b"*1\r\n$7\r\nmessage\r\n");
        assert_eq!(
            d.summary(),
            ["SUBSCRIBE", "SUBSCRIBE", "SSUBSCRIBE", "RESET", "LRANGE"]
        );
        assert_eq!(d.s.pending(), 0);
    }

    #[test]
    fn unsubscribe_without_subscriptions() {
        let mut d = Driver::new();
        d.req(&cmd(&[b"UNSUBSCRIBE"]));
        d.resp(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
        d.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        d.resp(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nx\r\n:0\r\n");
        assert_eq!(d.summary(), ["UNSUBSCRIBE", "LRANGE"]);
    }

    #[test]
    fn client_reply_modes() {
        let mut d = Driver::new();
        d.req(&cmd(&[b"CLIENT", b"REPLY", b"SKIP"]));
        d.req(&cmd(&[b"SET", b"a", b"1"]));
        d.req(&cmd(&[b"GET", b"a"]));
        d.resp(b"$1\r\n1\r\n");
        d.req(&cmd(&[b"client", b"reply", b"off"]));
        d.req(&cmd(&[b"SET", b"a", b"2"]));
        d.req(&cmd(&[b"RESET"]));
        d.resp(b"+RESET\r\n");
        assert_eq!(d.summary(), ["GET", "RESET"]);
        assert_eq!(d.s.pending(), 0);
    }

    #[test]
    fn inline_commands() {
        let mut d = Driver::new();
        d.req(b"\r\nset 'a b' \"c\\\"d\" e\r\nget x\n");
        d.resp(b"-ERR syntax error\r\n$-1\r\n");
        assert_eq!(d.summary(), ["SET:ERR", "GET"]);
        assert_eq!(d.ops[0].statement, "SET ? ? ?");
        let mut long = b"SET k ".to_vec();
        long.extend(vec![b'v'; MAX_LINE]);
        d.req(&long);
        assert_eq!(
            d.s.take_health().parse_errors,
            1,
            "inline line over the cap"
        );
    }

    #[test]
    fn monitor_lines_are_not_replies() {
        let mut d = Driver::new();
        d.req(&cmd(&[b"MONITOR"]));
        d.resp(b"+OK\r\n");
        let mut line = b"+1700000000.000001 [0 127.0.0.1:5000] \"SET\" \"k\" \"".to_vec();
        line.extend(vec![b'x'; 100_000]);
        line.extend(b"\"\r\n");
        d.resp(&line);
        d.req(&cmd(&[b"QUIT"]));
        d.resp(b"+OK\r\n");
        assert_eq!(d.summary(), ["MONITOR", "QUIT"]);
        assert_eq!(d.s.take_health(), SessionHealth::default());
    }

    #[test]
    fn nesting_is_capped() {
        let mut d = Driver::new();
        d.req(b"PING\r\n");
        d.resp(&b"*1\r\n".repeat(MAX_DEPTH));
        d.resp(b":1\r\n");
        assert_eq!(d.summary(), ["PING"], "{MAX_DEPTH} levels are accepted");
        d.req(b"PING\r\n");
        d.resp(&b"*1\r\n".repeat(MAX_DEPTH + 1));
        let h = d.s.take_health();
        assert_eq!(
            (h.parse_errors, h.timed_out, h.lost.unparsable),
            (1, 0, 1),
            "one level more is a framing error"
        );
    }

    #[test]
    fn session_is_small() {
        let size = std::mem::size_of::<RedisSession>();
        assert!(size <= 576, "RedisSession is {size} bytes");
        assert!(
            std::mem::size_of::<Open>() <= 24,
            "{}",
            std::mem::size_of::<Open>()
        );
    }

    // ---- real clients: pipelines, large replies, resynchronisation --------------------------

    /// Where each top-level reply of a server stream ends (exclusive offsets).
    fn reply_ends(stream: &[u8]) -> Vec<usize> {
        let mut p = RespParser::NEW;
        let mut pos = 0;
        let mut ends = Vec::new();
        while pos < stream.len() {
            match p.advance(stream, &mut pos) {
                Ok(true) => ends.push(pos),
                Ok(false) => break,
                Err(()) => panic!("fixture reply stream does not parse at {pos}"),
            }
        }
        ends
    }

    /// Where each command of a client stream starts.
    fn command_starts(stream: &[u8]) -> Vec<usize> {
        let mut p = ReqParser::NEW;
        let mut pos = 0;
        let mut starts = vec![0];
        while pos < stream.len() {
            match p.advance(stream, &mut pos, 0) {
                Ok(true) => starts.push(pos),
                Ok(false) => break,
                Err(()) => panic!("fixture request stream does not parse at {pos}"),
            }
        }
        starts.pop();
        starts
    }

    /// Index of the piece (of one direction) that holds byte `at` of that direction.
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

    /// The operations are exactly `want`, and each one runs from the piece holding its
    /// command's first byte to the piece holding its reply's last byte.
    fn assert_exact(what: &str, f: &Fixture, pieces: &[Piece<'_>], o: &Outcome, want: &[String]) {
        let got = summary(&o.ops);
        if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
            panic!(
                "{what}: operation #{i} is {:?}, expected {:?} ({} operations, {} expected)",
                got.get(i),
                want.get(i),
                got.len(),
                want.len()
            );
        }
        assert_eq!(o.health, SessionHealth::default(), "{what}: health");
        assert_eq!(o.pending, 0, "{what}: requests left open");
        let starts = command_starts(&f.req);
        let ends = reply_ends(&f.resp);
        assert_eq!(
            (starts.len(), ends.len()),
            (want.len(), want.len()),
            "{what}"
        );
        for (i, op) in o.ops.iter().enumerate() {
            let s = o.times[piece_of(pieces, true, starts[i])];
            let e = o.times[piece_of(pieces, false, ends[i] - 1)] + 500;
            assert_eq!(
                (op.start_ns, op.end_ns),
                (s, e),
                "{what}: times of #{i} {op:?}"
            );
        }
    }

    /// redis-py's connection set-up: CLIENT SETINFO LIB-NAME and LIB-VER, which Redis 7.0
    /// does not know yet.
    const PY_SETUP: [&str; 2] = ["CLIENT:ERR", "CLIENT:ERR"];

    fn pipelines_py_expected() -> Vec<String> {
        let mut v: Vec<String> = PY_SETUP.map(String::from).to_vec();
        for n in [10, 100, 1000, 10_000] {
            // redis-py's incr() is INCRBY counter 1.
            v.extend((0..n).map(|i| ["SET", "GET", "INCRBY"][i % 3].to_string()));
        }
        v
    }

    fn large_replies_py_expected() -> Vec<String> {
        let mut v: Vec<String> = PY_SETUP.map(String::from).to_vec();
        v.extend(["HSET", "RPUSH", "HGETALL", "LRANGE", "MGET", "GET"].map(String::from));
        v
    }

    #[test]
    fn real_client_pipelines_of_10_to_10000_are_exact() {
        // Each pipeline is sent once the previous one's replies are read: not fed "whole"
        // (that would queue all 11,112 requests at once, over MAX_PENDING).
        let f = fixture("pipelines_py");
        let want = pipelines_py_expected();
        let logged = logged(&f);
        assert_exact("as logged", &f, &logged, &run(&logged), &want);
        let mut rng = Rng(7);
        for max in [1, 3, 64, 1000, 6000, 65_536] {
            let v = random_split(&logged, &mut rng, max);
            assert_exact(&format!("split {max}"), &f, &v, &run(&v), &want);
        }
    }

    #[test]
    fn pipelines_in_one_chunk_and_split_randomly() {
        let mut rng = Rng(11);
        for n in [10usize, 100, 1000, 10_000] {
            let mut reqs = Vec::new();
            let mut replies = Vec::new();
            let mut want = Vec::new();
            for i in 0..n {
                let key = format!("key:{i}");
                match i % 4 {
                    0 => {
                        reqs.extend(cmd(&[b"SET", key.as_bytes(), b"value"]));
                        replies.extend(b"+OK\r\n");
                        want.push("SET".to_string());
                    }
                    1 => {
                        reqs.extend(cmd(&[b"GET", key.as_bytes()]));
                        replies.extend(b"$5\r\nvalue\r\n");
                        want.push("GET".to_string());
                    }
                    2 => {
                        reqs.extend(cmd(&[b"LPUSH", key.as_bytes(), b"x"]));
                        replies.extend(b"-WRONGTYPE Operation against a key\r\n");
                        want.push("LPUSH:WRONGTYPE".to_string());
                    }
                    _ => {
                        reqs.extend(b"PING\r\n");
                        replies.extend(b"+PONG\r\n");
                        want.push("PING".to_string());
                    }
                }
            }
            let f = Fixture {
                order: vec![(true, reqs.len()), (false, replies.len())],
                req: reqs,
                resp: replies,
            };
            let pieces = logged(&f);
            assert_exact(
                &format!("{n} in one chunk"),
                &f,
                &pieces,
                &run(&pieces),
                &want,
            );
            for max in [1, 5, 100, 5000] {
                let v = random_split(&pieces, &mut rng, max);
                assert_exact(&format!("{n} split {max}"), &f, &v, &run(&v), &want);
            }
        }
    }

    #[test]
    fn replies_of_10000_elements_split_across_many_chunks() {
        let f = fixture("large_replies_py");
        let want = large_replies_py_expected();
        assert_exact("whole", &f, &whole(&f), &run(&whole(&f)), &want);
        let logged = logged(&f);
        assert_exact("as logged", &f, &logged, &run(&logged), &want);
        let mut rng = Rng(13);
        for max in [1, 2, 17, 500, 4096, 65_536] {
            let v = random_split(&logged, &mut rng, max);
            assert_exact(&format!("split {max}"), &f, &v, &run(&v), &want);
        }
        // The 10,000-element replies really are that.
        let lrange = &f.resp[reply_ends(&f.resp)[4]..];
        assert!(lrange.starts_with(b"*10000\r\n"), "LRANGE reply");
    }

    /// Feeds `pieces` to `s`, piece `i` at `1000 * (first + i + 1)`.
    fn feed_more(
        s: &mut RedisSession,
        ops: &mut Vec<Operation>,
        pieces: &[Piece<'_>],
        first: usize,
    ) {
        for (i, p) in pieces.iter().enumerate() {
            let t = 1000 * ((first + i) as u64 + 1);
            let c = Chunk {
                data: p.data,
                len: p.len,
                start_ns: t,
                end_ns: t + 500,
            };
            if p.req {
                s.on_request(&c);
            } else {
                s.on_response(&c, ops);
            }
            check_bounds(s);
        }
    }

    #[test]
    fn a_gap_where_commands_were_then_every_later_command_is_counted() {
        // The second client syscall of the 1,000-command pipeline is lost (a gap chunk: its
        // bytes happened, none was copied). The commands before it are matched, the replies
        // to the lost ones are counted as lost, and the 10,000-command pipeline after it is
        // counted exactly.
        let f = fixture("pipelines_py");
        let mut pieces = logged(&f);
        let gap = pieces
            .iter()
            .position(|p| p.req && p.len == 10_135)
            .expect("the 1,000-command pipeline's second write");
        let mut probe = RedisSession::new();
        probe.on_request(&Chunk::whole(pieces[gap - 1].data, 0, 0));
        let known = probe.pending();
        assert!(known > 500 && known < 1000, "{known}");
        pieces[gap].data = &[];
        let o = run(&pieces);
        let mut want = pipelines_py_expected();
        // CLIENT x2, 10, 100, then the first `known` of the 1,000.
        let lost_from = 2 + 10 + 100 + known;
        want.drain(lost_from..2 + 10 + 100 + 1000);
        assert_eq!(summary(&o.ops), want, "everything but the lost commands");
        assert_eq!(
            o.health,
            SessionHealth {
                parse_errors: 1,
                lost: LostRequests {
                    capture_gap: (1000 - known) as u64,
                    ..LostRequests::default()
                },
                ..SessionHealth::default()
            }
        );
        assert_eq!(o.pending, 0);
    }

    #[test]
    fn a_gap_where_replies_were_then_every_later_command_is_counted() {
        // A server syscall in the middle of the 10,000 replies is lost: the requests still
        // open are counted as lost; the next conversation on the connection (redis-py's
        // large replies) is counted exactly.
        let f = fixture("pipelines_py");
        let mut pieces = logged(&f);
        let gap = pieces
            .iter()
            .position(|p| !p.req && p.len == 15_319)
            .expect("a server read of the 10,000 replies");
        pieces[gap].data = &[];
        let mut s = RedisSession::new();
        let mut ops = Vec::new();
        feed_more(&mut s, &mut ops, &pieces[..gap], 0);
        let before = ops.len();
        let answered = before - (2 + 10 + 100 + 1000);
        feed_more(&mut s, &mut ops, &pieces[gap..], gap);
        assert_eq!(ops.len(), before, "nothing matched after the loss");
        let h = s.take_health();
        assert_eq!(
            (
                h.parse_errors,
                h.timed_out,
                h.lost.capture_gap,
                h.lost.total()
            ),
            (1, 0, (10_000 - answered) as u64, (10_000 - answered) as u64)
        );
        let g = fixture("large_replies_py");
        let more = logged(&g);
        feed_more(&mut s, &mut ops, &more, pieces.len());
        assert_eq!(summary(&ops[before..]), large_replies_py_expected());
        assert_eq!(s.take_health(), SessionHealth::default());
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn skip_hints() {
        let mut s = RedisSession::new();
        let mut set = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$100000\r\n".to_vec();
        set.extend([b'v'; 10]);
        s.on_request(&Chunk::whole(&set, 1, 1));
        assert_eq!(s.skip_hint(true), 99_990, "the value, not its CRLF");
        s.on_request(&Chunk {
            data: &[],
            len: 99_990,
            start_ns: 1,
            end_ns: 1,
        });
        assert_eq!(s.skip_hint(true), 0);
        s.on_request(&Chunk::whole(b"\r\n", 1, 1));
        assert_eq!(s.pending(), 1);
        let mut ops = Vec::new();
        s.on_response(&Chunk::whole(b"+OK\r\n", 2, 2), &mut ops);
        // The first two arguments are kept up to 32 bytes: no hint before that.
        s.on_request(&Chunk::whole(b"*2\r\n$3\r\nGET\r\n$100\r\nabc", 3, 3));
        assert_eq!(s.skip_hint(true), 0);
        s.on_request(&Chunk::whole(&[b'k'; 29], 3, 3));
        assert_eq!(s.skip_hint(true), 100 - 32);
        // A bulk reply: skipped; the first element of an array: kept up to 33 bytes.
        s.on_request(&Chunk::whole(&[b'k'; 68], 3, 3));
        s.on_request(&Chunk::whole(b"\r\n", 3, 3));
        s.on_response(&Chunk::whole(b"$100000\r\nxyz", 4, 4), &mut ops);
        assert_eq!(s.skip_hint(false), 99_997);
        s.on_response(
            &Chunk {
                data: &[],
                len: 99_997,
                start_ns: 4,
                end_ns: 4,
            },
            &mut ops,
        );
        s.on_response(&Chunk::whole(b"\r\n", 5, 5), &mut ops);
        assert_eq!(summary(&ops), ["SET", "GET"]);
        s.on_request(&Chunk::whole(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]), 6, 6));
        s.on_response(&Chunk::whole(b"*2\r\n$50\r\nabc", 7, 7), &mut ops);
        assert_eq!(s.skip_hint(false), 0, "element 0 of an array is looked at");
        s.on_response(&Chunk::whole(&[b'x'; 30], 7, 7), &mut ops);
        assert_eq!(s.skip_hint(false), 50 - 33);
        assert_eq!(s.take_health(), SessionHealth::default());
    }

    #[test]
    fn endless_garbage_keeps_memory_bounded() {
        let mut rng = Rng(99);
        let mut s = RedisSession::new();
        let mut ops = Vec::new();
        let alphabet = b"*$:+-%>|_#,(!=~?0123456789\r\n\r\nabcOKGETSETPING \x00\xff";
        for i in 0..20_000u64 {
            let n = rng.below(300);
            let data: Vec<u8> = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let c = Chunk {
                data: &data,
                len: n + if rng.below(4) == 0 {
                    rng.below(100_000)
                } else {
                    0
                },
                start_ns: i,
                end_ns: i,
            };
            if rng.below(2) == 0 {
                s.on_request(&c);
            } else {
                s.on_response(&c, &mut ops);
            }
            check_bounds(&s);
            if i % 1000 == 0 {
                s.expire(i, 500);
            }
        }
        check_ops(&ops);
        assert!(
            s.open.capacity() <= 2 * MAX_PENDING,
            "{}",
            s.open.capacity()
        );
    }

    // ---- properties ------------------------------------------------------------------------

    use proptest::prelude::*;

    fn check_ops(ops: &[Operation]) {
        for op in ops {
            assert!(op.name == OTHER || COMMANDS.contains(&op.name), "{op:?}");
            assert!(op.statement.len() <= MAX_STATEMENT, "{op:?}");
            if let Some(e) = &op.error_type {
                assert!(
                    e == OTHER || (e.len() <= 32 && e.bytes().all(|b| b.is_ascii_uppercase())),
                    "{op:?}"
                );
            }
            assert!(op.collection.is_none());
        }
    }

    /// Bytes that make RESP-looking noise, to reach deep parser states.
    fn resp_noise() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(b"*$:+-%>|_#,(!=~?0123456789\r\n\r\nabcOKGETSETPING ".to_vec()),
            0..300,
        )
    }

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

    fn feed(calls: &[Syscall]) {
        let mut s = RedisSession::new();
        let mut ops = Vec::new();
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
            } else {
                s.on_response(&chunk, &mut ops);
            }
            check_bounds(&s);
            if t % 7 == 0 {
                s.expire(t, 2000);
            }
        }
        check_ops(&ops);
        let _ = s.take_health();
    }

    /// A random RESP3 value, and its type byte (after any attributes).
    fn reply_value() -> impl Strategy<Value = (Vec<u8>, u8)> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..50).prop_map(|b| {
                let mut v = format!("${}\r\n", b.len()).into_bytes();
                v.extend(b);
                v.extend(b"\r\n");
                v
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
            Just(b"#t\r\n".to_vec()),
            Just(b",1.5e10\r\n".to_vec()),
            Just(b"(123456789012345678901234567890\r\n".to_vec()),
            Just(b"=8\r\ntxt:abcd\r\n".to_vec()),
            Just(b"-ERR nested\r\n".to_vec()),
        ]
        .prop_map(|v| {
            let top = v[0];
            (v, top)
        });
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                (
                    prop::sample::select(b"*~>".to_vec()),
                    prop::collection::vec(inner.clone(), 0..5)
                )
                    .prop_map(|(t, items)| {
                        let mut v = format!("{}{}\r\n", t as char, items.len()).into_bytes();
                        items.into_iter().for_each(|(i, _)| v.extend(i));
                        (v, t)
                    }),
                prop::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(|pairs| {
                    let mut v = format!("%{}\r\n", pairs.len()).into_bytes();
                    for ((k, _), (x, _)) in pairs {
                        v.extend(k);
                        v.extend(x);
                    }
                    (v, b'%')
                }),
                (inner.clone(), inner).prop_map(|((a, _), (x, top))| {
                    let mut v = b"|1\r\n+attr\r\n".to_vec();
                    v.extend(a);
                    v.extend(x);
                    (v, top)
                }),
            ]
        })
    }

    fn top_reply() -> impl Strategy<Value = (Vec<u8>, Option<&'static str>)> {
        prop_oneof![
            // A push at top level is not a reply (tested apart).
            4 => reply_value()
                .prop_filter("not a push", |(_, top)| *top != b'>')
                .prop_map(|(v, top)| (v, (top == b'-').then_some("ERR"))),
            1 => Just((b"-WRONGTYPE Operation against a key\r\n".to_vec(), Some("WRONGTYPE"))),
            1 => Just((b"-oops\r\n".to_vec(), Some("_OTHER"))),
            1 => Just((b"!10\r\nSYNTAX bad\r\n".to_vec(), Some("SYNTAX"))),
        ]
    }

    const PLAIN_COMMANDS: &[&str] = &[
        "GET", "SET", "HGETALL", "LRANGE", "INCR", "DEL", "MGET", "PING", "ZADD", "EXEC", "get",
        "hSet", "NOSUCH",
    ];

    fn request() -> impl Strategy<Value = (Vec<u8>, &'static str)> {
        (
            prop::sample::select(PLAIN_COMMANDS),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 0..4),
            any::<bool>(),
        )
            .prop_map(|(c, args, inline)| {
                let name = operation_name(c.as_bytes());
                let v = if inline {
                    let mut v = c.as_bytes().to_vec();
                    for i in 0..args.len() {
                        v.extend(format!(" arg{i}").as_bytes());
                    }
                    v.extend(b"\r\n");
                    v
                } else {
                    let mut all: Vec<&[u8]> = vec![c.as_bytes()];
                    all.extend(args.iter().map(|a| a.as_slice()));
                    cmd(&all)
                };
                (v, name)
            })
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
        fn resp_noise_never_panics(calls in syscalls(resp_noise().boxed())) {
            feed(&calls);
        }

        /// Binary garbage (another protocol, bytes after lost framing; no line ends, so no
        /// inline command can hide in it) in either direction, then a conversation of a
        /// client that waits for each reply: from the third exchange on, every command is
        /// matched exactly, and nothing stays open. Every request of the conversation is
        /// one the session can prove is a start (an array, or an inline command it knows):
        /// after garbage an unknown inline word (`NOSUCH`) is not a boundary, and is
        /// rightly never taken as one.
        #[test]
        fn binary_garbage_then_valid_traffic_recovers(
            garbage in prop::collection::vec(
                (any::<bool>(), prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 1..300)),
                1..6,
            ),
            pairs in prop::collection::vec((request(), top_reply()), 3..12)
                .prop_filter("provable request starts", |pairs| {
                    pairs.iter().all(|((r, _), _)| plausible_request(r))
                }),
        ) {
            let mut s = RedisSession::new();
            let mut ops = Vec::new();
            let mut t = 0;
            for (req, g) in &garbage {
                t += 10;
                let c = Chunk::whole(g, t, t + 1);
                if *req {
                    s.on_request(&c);
                } else {
                    s.on_response(&c, &mut ops);
                }
            }
            let before = ops.len();
            let mut want = Vec::new();
            for ((r, name), (reply, err)) in &pairs {
                t += 10;
                s.on_request(&Chunk::whole(r, t, t + 1));
                t += 10;
                s.on_response(&Chunk::whole(reply, t, t + 1), &mut ops);
                want.push(match err {
                    None => name.to_string(),
                    Some(e) => format!("{name}:{e}"),
                });
                check_bounds(&s);
            }
            let got = summary(&ops[before..]);
            let tail = want.len() - 2;
            prop_assert!(got.len() >= tail, "{:?} for {:?}", got, want);
            prop_assert_eq!(&got[got.len() - tail..], &want[2..]);
            prop_assert_eq!(s.pending(), 0);
        }

        #[test]
        fn valid_streams_match_exactly(
            pairs in prop::collection::vec((request(), top_reply(), any::<bool>()), 1..30),
            req_cuts in prop::collection::vec(any::<usize>(), 0..20),
            resp_cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let mut reqs = Vec::new();
            let mut resps = Vec::new();
            let mut want = Vec::new();
            for ((r, name), (reply, err), push) in &pairs {
                reqs.extend(r);
                if *push {
                    resps.extend(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n");
                }
                resps.extend(reply);
                want.push(match err {
                    None => name.to_string(),
                    Some(e) => format!("{name}:{e}"),
                });
            }
            let mut s = RedisSession::new();
            let mut ops = Vec::new();
            let mut t = 0;
            for c in cut(&reqs, &req_cuts) {
                t += 10;
                s.on_request(&Chunk::whole(&c, t, t + 1));
            }
            for c in cut(&resps, &resp_cuts) {
                t += 10;
                s.on_response(&Chunk::whole(&c, t, t + 1), &mut ops);
            }
            prop_assert_eq!(summary(&ops), want);
            prop_assert_eq!(s.take_health(), SessionHealth::default());
            prop_assert_eq!(s.pending(), 0);
        }
    }
}
