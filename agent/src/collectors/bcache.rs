//! `bcache`: bcache cache sets in /sys/fs/bcache/<uuid> (Documentation/admin-guide/
//! bcache.rst, "Sysfs - cache set"), read as procfs 0.8 reads them for node_exporter
//! 1.5: per cache set its btree and journal figures, per backing device its dirty data,
//! writeback controller and total hit/miss/bypass counters, per cache device its errors
//! and written bytes (and, with `--collector.bcache.priorityStats`, the unused and
//! metadata share from `priority_stats`, which the kernel computes by walking every
//! bucket, hence off by default). Sizes are "human" numbers (`1.1M`, `20.4G`) decoded
//! with procfs' arithmetic, where a fraction counts in 1/10.24ths. No cache set: success
//! with no families, as in node_exporter.

use std::io;

use super::render::Family;
use super::util::{DirTree, Tree};
use super::{CollectError, Ctx};

/// Why a cache set could not be read.
#[derive(Debug)]
pub(crate) struct ReadError {
    pub rel: String,
    pub source: io::Error,
}

fn invalid(rel: &str, what: String) -> ReadError {
    ReadError {
        rel: rel.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, what),
    }
}

/// Go's `strconv.ParseFloat(s, 64)` for the text bcache writes.
fn go_float(s: &str) -> Option<f64> {
    // Rust accepts what Go accepts here except Go's hexadecimal floats, which bcache never
    // writes; both reject empty text and white space.
    s.parse().ok()
}

/// procfs' `parsePseudoFloat`: `<int>.<frac>` where the fraction is in 1/10.24ths (bcache
/// prints the remainder of a division by 1024 scaled to one decimal digit).
fn pseudo_float(s: &str) -> Option<f64> {
    let mut parts = s.split('.');
    let int = go_float(parts.next().unwrap_or(""))?;
    match parts.next() {
        None => Some(int),
        Some(frac) => Some(int + go_float(frac)? / 10.24),
    }
}

/// procfs' `dehumanize`: a number with an optional binary-prefix letter (`k`, `M`, `G`,
/// ...); any other trailing character counts as a multiplier of 0.
pub(crate) fn dehumanize(s: &str) -> Option<u64> {
    let last = *s.as_bytes().last()?;
    let value = if last > b'9' {
        let mul = match last {
            b'k' => 2f64.powi(10),
            b'M' => 2f64.powi(20),
            b'G' => 2f64.powi(30),
            b'T' => 2f64.powi(40),
            b'P' => 2f64.powi(50),
            b'E' => 2f64.powi(60),
            b'Z' => 2f64.powi(70),
            b'Y' => 2f64.powi(80),
            _ => 0.0,
        };
        let body = std::str::from_utf8(&s.as_bytes()[..s.len() - 1]).ok()?;
        pseudo_float(body)? * mul
    } else {
        go_float(s)?
    };
    Some(value as u64)
}

/// procfs' `dehumanizeSigned`: one leading `-` allowed.
pub(crate) fn dehumanize_signed(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(rest) => dehumanize(rest).map(|v| (v as i64).wrapping_neg()),
        None => dehumanize(s).map(|v| v as i64),
    }
}

/// The figures of `writeback_rate_debug` node_exporter serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WritebackRate {
    pub rate: u64,
    pub target: u64,
    pub proportional: i64,
    pub integral: i64,
    pub change: i64,
}

fn last_field(line: &str) -> &str {
    line.split_whitespace().last().unwrap_or("")
}

/// A backing device's `writeback_rate_debug`.
pub(crate) fn parse_writeback_rate_debug(text: &str) -> Result<WritebackRate, String> {
    let mut w = WritebackRate::default();
    for line in text.lines() {
        let v = last_field(line);
        let bad = || format!("bad {line:?}");
        if line.starts_with("rate:") {
            w.rate = dehumanize(v.strip_suffix("/sec").unwrap_or(v)).ok_or_else(bad)?;
        } else if line.starts_with("dirty:") {
            dehumanize(v).ok_or_else(bad)?;
        } else if line.starts_with("target:") {
            w.target = dehumanize(v).ok_or_else(bad)?;
        } else if line.starts_with("proportional:") {
            w.proportional = dehumanize_signed(v).ok_or_else(bad)?;
        } else if line.starts_with("integral:") {
            w.integral = dehumanize_signed(v).ok_or_else(bad)?;
        } else if line.starts_with("change:") {
            w.change = dehumanize_signed(v.strip_suffix("/sec").unwrap_or(v)).ok_or_else(bad)?;
        } else if line.starts_with("next io:") {
            let ms = v.strip_suffix("ms").unwrap_or(v);
            let ok = ms
                .strip_prefix(['+', '-'])
                .unwrap_or(ms)
                .bytes()
                .all(|b| b.is_ascii_digit());
            if !ok || ms.parse::<i64>().is_err() {
                return Err(bad());
            }
        }
    }
    Ok(w)
}

/// A cache device's `priority_stats`: (unused percent, metadata percent).
pub(crate) fn parse_priority_stats(text: &str) -> Result<(u64, u64), String> {
    let mut out = (0, 0);
    for line in text.lines() {
        let slot = if line.starts_with("Unused:") {
            &mut out.0
        } else if line.starts_with("Metadata:") {
            &mut out.1
        } else {
            continue;
        };
        let v = last_field(line);
        *slot = super::util::parse_go_u64(v.strip_suffix('%').unwrap_or(v))
            .ok_or_else(|| format!("bad {line:?}"))?;
    }
    Ok(out)
}

/// Hit, miss and bypass counters of `stats_total/`, in [`PERIOD_METRICS`] order.
const PERIOD_FILES: [&str; 7] = [
    "bypassed",
    "cache_hits",
    "cache_misses",
    "cache_bypass_hits",
    "cache_bypass_misses",
    "cache_miss_collisions",
    "cache_readaheads",
];

const PERIOD_METRICS: [(&str, &str); 7] = [
    (
        "bypassed_bytes_total",
        "Amount of IO (both reads and writes) that has bypassed the cache.",
    ),
    (
        "cache_hits_total",
        "Hits counted per individual IO as bcache sees them.",
    ),
    (
        "cache_misses_total",
        "Misses counted per individual IO as bcache sees them.",
    ),
    (
        "cache_bypass_hits_total",
        "Hits for IO intended to skip the cache.",
    ),
    (
        "cache_bypass_misses_total",
        "Misses for IO intended to skip the cache.",
    ),
    (
        "cache_miss_collisions_total",
        "Instances where data insertion from cache miss raced with write (data already present).",
    ),
    (
        "cache_readaheads_total",
        "Count of times readahead occurred.",
    ),
];

/// Files of the cache set directory and `internal/`, in [`SET_METRICS`] order.
const SET_FILES: [&str; 10] = [
    "average_key_size",
    "btree_cache_size",
    "cache_available_percent",
    "congested",
    "root_usage_percent",
    "tree_depth",
    "internal/active_journal_entries",
    "internal/btree_nodes",
    "internal/btree_read_average_duration_us",
    "internal/cache_read_races",
];

/// (metric after `node_bcache_`, help, counter?, scale).
const SET_METRICS: [(&str, &str, bool, f64); 10] = [
    ("average_key_size_sectors", "Average data per key in the btree (sectors).", false, 1.0),
    ("btree_cache_size_bytes", "Amount of memory currently used by the btree cache.", false, 1.0),
    ("cache_available_percent", "Percentage of cache device without dirty data, usable for writeback (may contain clean cached data).", false, 1.0),
    ("congested", "Congestion.", false, 1.0),
    ("root_usage_percent", "Percentage of the root btree node in use (tree depth increases if too high).", false, 1.0),
    ("tree_depth", "Depth of the btree.", false, 1.0),
    ("active_journal_entries", "Number of journal entries that are newer than the index.", false, 1.0),
    ("btree_nodes", "Total nodes in the btree.", false, 1.0),
    // The file is in microseconds; node_exporter 1.5 scales it as nanoseconds.
    ("btree_read_average_duration_seconds", "Average btree read duration.", false, 1e-9),
    ("cache_read_races_total", "Counts instances where while data was being read from the cache, the bucket was reused and invalidated - i.e. where the pointer was stale after the read completed.", true, 1.0),
];

/// One backing device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bdev {
    pub name: String,
    pub dirty_data: u64,
    pub writeback: WritebackRate,
    pub total: [u64; 7],
}

/// One cache device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cache {
    pub name: String,
    pub io_errors: u64,
    pub metadata_written: u64,
    pub written: u64,
    /// (unused %, metadata %), read only with `--collector.bcache.priorityStats`.
    pub priority: Option<(u64, u64)>,
}

/// One cache set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CacheSet {
    pub uuid: String,
    pub values: [u64; 10],
    pub bdevs: Vec<Bdev>,
    pub caches: Vec<Cache>,
}

/// procfs' `readValue`: a missing file reads 0; the file's last byte (its newline) is
/// dropped before decoding.
fn value(tree: &impl Tree, rel: &str) -> Result<u64, ReadError> {
    let text = match tree.read(rel) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ReadError {
                rel: rel.to_string(),
                source,
            })
        }
    };
    // Text from a file ends at a char boundary; drop its last byte as procfs does (an
    // empty file, where node_exporter would panic, is an error).
    let Some(body) = text.as_bytes().split_last().map(|(_, b)| b) else {
        return Err(invalid(rel, "empty file".into()));
    };
    let body = String::from_utf8_lossy(body);
    dehumanize(&body).ok_or_else(|| invalid(rel, format!("{body:?} is not a number")))
}

fn text(tree: &impl Tree, rel: &str) -> Result<String, ReadError> {
    tree.read(rel).map_err(|source| ReadError {
        rel: rel.to_string(),
        source,
    })
}

/// `prefix` then a digit, as procfs' globs `bdev[0-9]*` and `cache[0-9]*` match.
fn numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|r| r.as_bytes().first().is_some_and(u8::is_ascii_digit))
}

/// Reads the cache set in directory `uuid` of `tree`.
pub(crate) fn parse_set(
    tree: &impl Tree,
    uuid: &str,
    priority_stats: bool,
) -> Result<CacheSet, ReadError> {
    let at = |rel: &str| format!("{uuid}/{rel}");
    let mut values = [0u64; 10];
    for (v, f) in values.iter_mut().zip(SET_FILES) {
        *v = value(tree, &at(f))?;
    }
    // Read (and checked) though not served.
    for dir in ["stats_five_minute", "stats_total"] {
        for f in PERIOD_FILES {
            value(tree, &at(&format!("{dir}/{f}")))?;
        }
    }
    let entries = tree.list(uuid).unwrap_or_default();
    let mut bdevs = Vec::new();
    for (name, _) in entries.iter().filter(|(n, _)| numbered(n, "bdev")) {
        let dirty_data = value(tree, &at(&format!("{name}/dirty_data")))?;
        let rel = at(&format!("{name}/writeback_rate_debug"));
        let writeback =
            parse_writeback_rate_debug(&text(tree, &rel)?).map_err(|e| invalid(&rel, e))?;
        for f in PERIOD_FILES {
            value(tree, &at(&format!("{name}/stats_five_minute/{f}")))?;
        }
        let mut total = [0u64; 7];
        for (v, f) in total.iter_mut().zip(PERIOD_FILES) {
            *v = value(tree, &at(&format!("{name}/stats_total/{f}")))?;
        }
        bdevs.push(Bdev {
            name: name.clone(),
            dirty_data,
            writeback,
            total,
        });
    }
    let mut caches = Vec::new();
    for (name, _) in entries.iter().filter(|(n, _)| numbered(n, "cache")) {
        let io_errors = value(tree, &at(&format!("{name}/io_errors")))?;
        let metadata_written = value(tree, &at(&format!("{name}/metadata_written")))?;
        let written = value(tree, &at(&format!("{name}/written")))?;
        let priority = if priority_stats {
            let rel = at(&format!("{name}/priority_stats"));
            Some(parse_priority_stats(&text(tree, &rel)?).map_err(|e| invalid(&rel, e))?)
        } else {
            None
        };
        caches.push(Cache {
            name: name.clone(),
            io_errors,
            metadata_written,
            written,
            priority,
        });
    }
    Ok(CacheSet {
        uuid: uuid.to_string(),
        values,
        bdevs,
        caches,
    })
}

/// Every cache set in `tree` (/sys/fs/bcache): the entries whose name holds a `-`.
pub(crate) fn parse(tree: &impl Tree, priority_stats: bool) -> Result<Vec<CacheSet>, ReadError> {
    let entries = tree.list("").unwrap_or_default();
    entries
        .iter()
        .filter(|(n, _)| n.contains('-'))
        .map(|(n, _)| parse_set(tree, n, priority_stats))
        .collect()
}

pub(crate) fn render(sets: &[CacheSet]) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    let mut push =
        |name: &str, help: &str, counter: bool, labels: Vec<(&'static str, String)>, v: f64| {
            let name = format!("node_bcache_{name}");
            match out.iter_mut().find(|f| f.name == name) {
                Some(f) => f.push(labels, v),
                None => {
                    let f = if counter {
                        Family::counter(name, help)
                    } else {
                        Family::gauge(name, help)
                    };
                    out.push(f.with(labels, v));
                }
            }
        };
    for s in sets {
        let uuid = || ("uuid", s.uuid.clone());
        for ((name, help, counter, scale), v) in SET_METRICS.iter().zip(s.values) {
            push(name, help, *counter, vec![uuid()], v as f64 * scale);
        }
        for b in &s.bdevs {
            let labels = || vec![uuid(), ("backing_device", b.name.clone())];
            let w = &b.writeback;
            for (name, help, v) in [
                (
                    "dirty_data_bytes",
                    "Amount of dirty data for this backing device in the cache.",
                    b.dirty_data as f64,
                ),
                (
                    "dirty_target_bytes",
                    "Current dirty data target threshold for this backing device in bytes.",
                    w.target as f64,
                ),
                (
                    "writeback_rate",
                    "Current writeback rate for this backing device in bytes.",
                    w.rate as f64,
                ),
                (
                    "writeback_rate_proportional_term",
                    "Current result of proportional controller, part of writeback rate",
                    w.proportional as f64,
                ),
                (
                    "writeback_rate_integral_term",
                    "Current result of integral controller, part of writeback rate",
                    w.integral as f64,
                ),
                (
                    "writeback_change",
                    "Last writeback rate change step for this backing device.",
                    w.change as f64,
                ),
            ] {
                push(name, help, false, labels(), v);
            }
            for ((name, help), v) in PERIOD_METRICS.iter().zip(b.total) {
                push(name, help, true, labels(), v as f64);
            }
        }
        for c in &s.caches {
            let labels = || vec![uuid(), ("cache_device", c.name.clone())];
            push(
                "io_errors",
                "Number of errors that have occurred, decayed by io_error_halflife.",
                false,
                labels(),
                c.io_errors as f64,
            );
            push(
                "metadata_written_bytes_total",
                "Sum of all non data writes (btree writes and all other metadata).",
                true,
                labels(),
                c.metadata_written as f64,
            );
            push(
                "written_bytes_total",
                "Sum of all data that has been written to the cache.",
                true,
                labels(),
                c.written as f64,
            );
            if let Some((unused, metadata)) = c.priority {
                push(
                    "priority_stats_unused_percent",
                    "The percentage of the cache that doesn't contain any data.",
                    false,
                    labels(),
                    unused as f64,
                );
                push(
                    "priority_stats_metadata_percent",
                    "Bcache's metadata overhead.",
                    false,
                    labels(),
                    metadata as f64,
                );
            }
        }
    }
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.sys("fs/bcache");
    let sets = parse(&DirTree(base.clone()), ctx.bcache_priority_stats).map_err(|e| {
        CollectError::Read {
            path: base.join(e.rel),
            source: e.source,
        }
    })?;
    Ok(render(&sets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use crate::collectors::util::MapTree;
    use proptest::prelude::*;

    #[test]
    fn human_numbers_as_procfs_reads_them() {
        assert_eq!(dehumanize("542"), Some(542));
        assert_eq!(
            dehumanize("1.1M"),
            Some(((1.0 + 1.0 / 10.24) * 1048576.0) as u64)
        );
        assert_eq!(
            dehumanize("20.4G"),
            Some(((20.0 + 4.0 / 10.24) * 1073741824.0) as u64)
        );
        assert_eq!(dehumanize("512k"), Some(524288));
        assert_eq!(dehumanize("3x"), Some(0));
        assert_eq!(dehumanize(""), None);
        assert_eq!(dehumanize("k"), None);
        assert_eq!(
            dehumanize_signed("-1.1M"),
            Some(-(((1.0 + 1.0 / 10.24) * 1048576.0) as i64))
        );
        assert_eq!(dehumanize_signed("0"), Some(0));
    }

    #[test]
    fn writeback_and_priority_files() {
        let w = parse_writeback_rate_debug(
            "rate:\t\t1.1M/sec\ndirty:\t\t20.4G\ntarget:\t\t20.4G\nproportional:\t0\nintegral:\t-512k\nchange:\t\t0/sec\nnext io:\t-5ms\n",
        )
        .unwrap();
        assert_eq!(w.rate, dehumanize("1.1M").unwrap());
        assert_eq!(w.integral, -524288);
        assert!(parse_writeback_rate_debug("next io:\t5x\n").is_err());
        assert!(parse_writeback_rate_debug("rate:\n").is_err());
        assert_eq!(
            parse_priority_stats("Unused:\t\t99%\nClean:\t\t0%\nMetadata:\t0%\nAverage:\t0\n")
                .unwrap(),
            (99, 0)
        );
        assert!(parse_priority_stats("Unused: x%\n").is_err());
    }

    #[test]
    fn reads_the_storage_fixture() {
        let tree = DirTree(testutil::fixture("storage").join("sys/fs/bcache"));
        let sets = parse(&tree, true).unwrap();
        assert_eq!(sets.len(), 1);
        let s = &sets[0];
        assert_eq!(s.uuid, "deaddd54-c735-46d5-868e-f331c5fd7c74");
        assert_eq!(s.values[1], dehumanize("1.1M").unwrap());
        assert_eq!(s.bdevs.len(), 1);
        assert_eq!(s.bdevs[0].total[2], 61);
        assert_eq!(s.caches[0].priority, Some((99, 0)));
        assert_eq!(parse(&tree, false).unwrap()[0].caches[0].priority, None);
    }

    #[test]
    fn a_bad_value_fails_the_set() {
        assert!(parse(&MapTree::from_lines("a-b/tree_depth=xy\n"), false).is_err());
        // A backing device needs its writeback_rate_debug.
        assert!(parse(&MapTree::from_lines("a-b/bdev0/dirty_data=1\n"), false).is_err());
        // The value's last byte (its newline in a real file) is dropped.
        let ok = parse(&MapTree::from_lines("a-b/tree_depth=25\n"), false).unwrap();
        assert_eq!(ok[0].values[5], 2);
    }

    #[test]
    fn absent_source_is_success_without_families() {
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        assert_eq!(out, "");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(u-1/(tree_depth|btree_cache_size|bdev0/(dirty_data|writeback_rate_debug|stats_total/cache_hits)|cache0/(written|priority_stats))=[0-9.kMG:a-z%\\- ]{0,8}\n){1,10}") {
            if let Ok(c) = parse(&MapTree::from_lines(&s), true) { let _ = render(&c); }
        }
    }
}
