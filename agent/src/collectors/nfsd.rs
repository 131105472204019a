//! `nfsd`: NFS server statistics from /proc/net/rpc/nfsd (fs/nfsd/stats.c,
//! net/sunrpc/stats.c), parsed as procfs 0.8 does for node_exporter 1.5: reply cache,
//! stale file handles, bytes read and written, threads, read-ahead cache, network and
//! RPC counts, and one `requests_total` series per NFSv2, v3 and v4 operation (zero for
//! a version the kernel does not report). No file (no nfsd module loaded): no data.
//!
//! procfs 0.8 rejects any line it does not know, so on kernels that added one (6.6's
//! `wdeleg_getattr`) node_exporter 1.5 reports the collector failed; so does nodetap,
//! which keeps the two interchangeable.

use super::render::Family;
use super::util::{parse_go_u64, read_source};
use super::{CollectError, Ctx, ParseError};

/// NFSv2 and NFSv3 procedures after `Null` (fs/nfsd/nfsproc.c, nfs3proc.c): the client's
/// lists (`nfs.rs`), whose first entry the server's statistics leave out.
const V2: &[&str] = super::nfs::V2.split_at(1).1;
const V3: &[&str] = super::nfs::V3.split_at(1).1;

/// The NFSv4 operations node_exporter serves and the position procfs 0.8 reads each from
/// in the `proc4ops` values (position = operation number, RFC 7530 section 16). procfs
/// maps the last three one position early (`Verify` reads SETCLIENTID's count, `Write`
/// SETCLIENTID_CONFIRM's, `RelLockOwner` VERIFY's); node_exporter 1.5 serves those
/// numbers under those names, and so does nodetap.
const V4: [(&str, usize); 33] = [
    ("Access", 3),
    ("Close", 4),
    ("Commit", 5),
    ("Create", 6),
    ("DelegPurge", 7),
    ("DelegReturn", 8),
    ("GetAttr", 9),
    ("GetFH", 10),
    ("Link", 11),
    ("Lock", 12),
    ("Lockt", 13),
    ("Locku", 14),
    ("Lookup", 15),
    ("LookupRoot", 16),
    ("Nverify", 17),
    ("Open", 18),
    ("OpenAttr", 19),
    ("OpenConfirm", 20),
    ("OpenDgrd", 21),
    ("PutFH", 22),
    ("Read", 25),
    ("ReadDir", 26),
    ("ReadLink", 27),
    ("Remove", 28),
    ("Rename", 29),
    ("Renew", 30),
    ("RestoreFH", 31),
    ("SaveFH", 32),
    ("SecInfo", 33),
    ("SetAttr", 34),
    ("Verify", 35),
    ("Write", 36),
    ("RelLockOwner", 37),
];

/// The fewest `proc4ops` values procfs 0.8 accepts.
const V4_MIN_OPS: usize = 39;

/// What the file says; lines absent from it read zero, as in procfs' structures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerStats {
    /// `rc`: hits, misses, nocache.
    pub reply_cache: [u64; 3],
    /// `fh`: the first of its five values (the others are unused by the kernel).
    pub stale_file_handles: u64,
    /// `io`: bytes read, bytes written.
    pub io: [u64; 2],
    /// `th`: the thread count.
    pub threads: u64,
    /// `ra`: cache size, not-found count.
    pub read_ahead: [u64; 2],
    /// `net`: packets, udp, tcp, tcp connections.
    pub net: [u64; 4],
    /// `rpc`: calls, bad calls, bad format, bad auth, bad client.
    pub rpc: [u64; 5],
    /// `proc2`, `proc3` values after `Null`.
    pub v2: [u64; 17],
    pub v3: [u64; 21],
    /// `proc4ops` values, at least [`V4_MIN_OPS`] when present.
    pub v4_ops: Vec<u64>,
}

fn exactly<const N: usize>(v: &[u64], what: &str, n: usize) -> Result<[u64; N], ParseError> {
    v.try_into()
        .map_err(|_| ParseError::new(n, format!("invalid {what} line: {} values", v.len())))
}

/// A `procN <count> <values...>` line: `count` must match and be at least `min`.
fn counted<'a>(v: &'a [u64], min: usize, what: &str, n: usize) -> Result<&'a [u64], ParseError> {
    let values = &v[1..];
    if values.len() as u64 != v[0] || values.len() < min {
        return Err(ParseError::new(
            n,
            format!(
                "invalid {what} line: {} values announced, {} given",
                v[0],
                values.len()
            ),
        ));
    }
    Ok(values)
}

pub(crate) fn parse(text: &str) -> Result<ServerStats, ParseError> {
    let mut s = ServerStats::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 2 {
            return Err(ParseError::new(
                n,
                format!("invalid NFSd metric line {line:?}"),
            ));
        }
        // `th` carries a thread count, a count of times all threads were busy, then
        // obsolete floating-point histogram values: only the first two are read.
        let tokens = if parts[0] == "th" {
            if parts.len() < 3 {
                return Err(ParseError::new(n, "invalid NFSd th metric line"));
            }
            &parts[1..3]
        } else {
            &parts[1..]
        };
        let v: Vec<u64> = tokens
            .iter()
            .map(|t| {
                parse_go_u64(t).ok_or_else(|| ParseError::new(n, format!("{t:?} is not a count")))
            })
            .collect::<Result<_, _>>()?;
        match parts[0] {
            "rc" => s.reply_cache = exactly(&v, "ReplyCache", n)?,
            "fh" => s.stale_file_handles = exactly::<5>(&v, "FileHandles", n)?[0],
            "io" => s.io = exactly(&v, "InputOutput", n)?,
            "th" => s.threads = v[0],
            "ra" => {
                let ra: [u64; 12] = exactly(&v, "ReadAheadCache", n)?;
                s.read_ahead = [ra[0], ra[11]];
            }
            "net" => s.net = exactly(&v, "Network", n)?,
            "rpc" => s.rpc = exactly(&v, "RPC", n)?,
            "proc2" => {
                let values = counted(&v, 18, "V2Stats", n)?;
                s.v2.copy_from_slice(&values[1..18]);
            }
            "proc3" => {
                let values = counted(&v, 22, "V3Stats", n)?;
                s.v3.copy_from_slice(&values[1..22]);
            }
            "proc4" => {
                // Null and COMPOUND: exactly two, and not served.
                let values = counted(&v, 2, "V4Stats", n)?;
                if values.len() != 2 {
                    return Err(ParseError::new(n, "invalid V4Stats line"));
                }
            }
            "proc4ops" => s.v4_ops = counted(&v, V4_MIN_OPS, "V4Ops", n)?.to_vec(),
            other => {
                return Err(ParseError::new(
                    n,
                    format!("unknown NFSd metric line {other:?}"),
                ))
            }
        }
    }
    Ok(s)
}

pub(crate) fn render(s: &ServerStats) -> Vec<Family> {
    let counter = |name: &str, help: &str| Family::counter(format!("node_nfsd_{name}"), help);
    let gauge = |name: &str, help: &str| Family::gauge(format!("node_nfsd_{name}"), help);
    let one = |f: Family, v: u64| f.with(Vec::new(), v as f64);
    let mut packets = counter(
        "packets_total",
        "Total NFSd network packets (sent+received) by protocol type.",
    );
    packets.push(super::label("proto", "udp"), s.net[1] as f64);
    packets.push(super::label("proto", "tcp"), s.net[2] as f64);
    let mut errors = counter(
        "rpc_errors_total",
        "Total number of NFSd RPC errors by error type.",
    );
    for (kind, v) in [("fmt", s.rpc[2]), ("auth", s.rpc[3]), ("cInt", s.rpc[4])] {
        errors.push(super::label("error", kind), v as f64);
    }
    let mut requests = counter(
        "requests_total",
        "Total number NFSd Requests by method and protocol.",
    );
    let mut push = |proto: &str, method: &str, v: u64| {
        requests.push(
            vec![("proto", proto.to_string()), ("method", method.to_string())],
            v as f64,
        )
    };
    for (method, v) in V2.iter().zip(s.v2) {
        push("2", method, v);
    }
    for (method, v) in V3.iter().zip(s.v3) {
        push("3", method, v);
    }
    for (method, op) in V4 {
        push("4", method, s.v4_ops.get(op).copied().unwrap_or(0));
    }
    vec![
        one(
            counter(
                "reply_cache_hits_total",
                "Total number of NFSd Reply Cache hits (client lost server response).",
            ),
            s.reply_cache[0],
        ),
        one(
            counter(
                "reply_cache_misses_total",
                "Total number of NFSd Reply Cache an operation that requires caching (idempotent).",
            ),
            s.reply_cache[1],
        ),
        one(
            counter(
                "reply_cache_nocache_total",
                "Total number of NFSd Reply Cache non-idempotent operations (rename/delete/…).",
            ),
            s.reply_cache[2],
        ),
        one(
            counter(
                "file_handles_stale_total",
                "Total number of NFSd stale file handles",
            ),
            s.stale_file_handles,
        ),
        one(
            counter("disk_bytes_read_total", "Total NFSd bytes read."),
            s.io[0],
        ),
        one(
            counter("disk_bytes_written_total", "Total NFSd bytes written."),
            s.io[1],
        ),
        one(
            gauge(
                "server_threads",
                "Total number of NFSd kernel threads that are running.",
            ),
            s.threads,
        ),
        one(
            gauge(
                "read_ahead_cache_size_blocks",
                "How large the read ahead cache is in blocks.",
            ),
            s.read_ahead[0],
        ),
        one(
            counter(
                "read_ahead_cache_not_found_total",
                "Total number of NFSd read ahead cache not found.",
            ),
            s.read_ahead[1],
        ),
        packets,
        one(
            counter("connections_total", "Total number of NFSd TCP connections."),
            s.net[3],
        ),
        errors,
        one(
            counter("server_rpcs_total", "Total number of NFSd RPCs."),
            s.rpc[0],
        ),
        requests,
    ]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let path = ctx.proc("net/rpc/nfsd");
    let text = read_source(&path, "no /proc/net/rpc/nfsd (no NFS server)")?;
    let stats = parse(&text).map_err(|source| CollectError::Parse { path, source })?;
    Ok(render(&stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_the_storage_fixture() {
        let s = parse(&testutil::read("storage", "proc/net/rpc/nfsd")).unwrap();
        assert_eq!(s.reply_cache, [3, 41, 20517]);
        assert_eq!(s.stale_file_handles, 2);
        assert_eq!(s.io, [268435456, 1048576]);
        assert_eq!(s.threads, 16);
        assert_eq!(s.read_ahead, [32, 5]);
        assert_eq!(s.net, [20587, 11, 20576, 9]);
        assert_eq!(s.rpc, [20580, 4, 1, 2, 1]);
        assert_eq!(s.v2[..4], [73, 1, 0, 4512]);
        assert_eq!(s.v3[..4], [120, 2, 2804, 117]);
        assert_eq!(s.v4_ops.len(), 72);
        assert_eq!(s.v4_ops[3], 1130);
    }

    #[test]
    fn rejects_what_procfs_rejects() {
        for bad in [
            "invalid\n",
            "th 8\n",
            "rc 1 2\n",
            "proc3 22 1 2\n",
            "proc4 3 1 2 3\n",
            "proc4ops 2 1 2\n",
            "wdeleg_getattr 0\n",
            "io 1 -2\n",
            "io +1 2\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        // `th` reads two counts and ignores the histogram after them.
        assert_eq!(parse("th 4 1 0.000 x\n").unwrap().threads, 4);
        // A kernel without NFSv2 (no proc2 line) serves zeros for it.
        assert_eq!(parse("rc 1 2 3\n").unwrap().v2, [0; 17]);
    }

    #[test]
    fn absent_source_is_no_data() {
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|((rc|fh|io|th|ra|net|rpc|proc[234]|proc4ops) [0-9]{1,2}( [0-9]{1,3}){0,45}\n){1,5}") {
            if let Ok(st) = parse(&s) { let _ = render(&st); }
        }
    }
}
