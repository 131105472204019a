//! `zfs`: OpenZFS kstats from /proc/spl/kstat/zfs (module/os/linux/spl/spl-kstat.c), as
//! node_exporter 1.5 serves them: every numeric (type 4) entry of the ARC, ABD, dbuf,
//! dmu_tx, dnode, fm, vdev cache, vdev mirror, xuio, zfetch and ZIL kstats as an untyped
//! `node_zfs_<subsystem>_<name>` whose HELP is the kstat's sysctl-style name; per pool the
//! `io` counters (`node_zfs_zpool_*{zpool}`), the per-dataset `objset-*` counters
//! (`node_zfs_zpool_dataset_*{zpool,dataset}`) and `node_zfs_zpool_state{zpool,state}`.
//! No /proc/spl/kstat/zfs (no zfs module): no data. A kstat file that is missing is
//! skipped; one that cannot be parsed fails the collector, as in node_exporter.

use super::render::{Family, MetricType};
use super::util::{parse_go_u64, read};
use super::{CollectError, Ctx, ParseError};

/// (subsystem after `node_`, kstat file), node_exporter's `linuxPathMap`.
const KSTATS: [(&str, &str); 11] = [
    ("zfs_abd", "abdstats"),
    ("zfs_arc", "arcstats"),
    ("zfs_dbuf", "dbuf_stats"),
    ("zfs_dmu_tx", "dmu_tx"),
    ("zfs_dnode", "dnodestats"),
    ("zfs_fm", "fm"),
    ("zfs_vdev_cache", "vdev_cache_stats"),
    ("zfs_vdev_mirror", "vdev_mirror_stats"),
    ("zfs_xuio", "xuio_stats"),
    ("zfs_zfetch", "zfetchstats"),
    ("zfs_zil", "zil"),
];

/// The states `node_zfs_zpool_state` has a series for.
const POOL_STATES: [&str; 6] = [
    "online", "degraded", "faulted", "offline", "removed", "unavail",
];

/// The kstat data type of a 64-bit unsigned value (KSTAT_DATA_UINT64).
const KSTAT_DATA_UINT64: &str = "4";

fn is_header(parts: &[&str]) -> bool {
    parts == ["name", "type", "data"]
}

/// A named kstat (`name type data` rows after a header line): its `uint64` entries.
pub(crate) fn parse_kstat(text: &str) -> Result<Vec<(String, u64)>, ParseError> {
    let mut out = Vec::new();
    let mut in_data = false;
    for (i, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if !in_data {
            in_data = is_header(&parts);
            continue;
        }
        if parts.len() < 3 || parts[1] != KSTAT_DATA_UINT64 {
            continue;
        }
        let v = parse_go_u64(parts[2]).ok_or_else(|| {
            ParseError::new(
                i + 1,
                format!("{}: {:?} is not an integer", parts[0], parts[2]),
            )
        })?;
        out.push((parts[0].to_string(), v));
    }
    if !in_data {
        return Err(ParseError::new(1, "no \"name type data\" header"));
    }
    Ok(out)
}

/// A pool's `io` kstat: a header row of at least 12 field names starting with `nread`,
/// then rows of values, each value paired with its field name.
pub(crate) fn parse_pool_io(text: &str) -> Result<Vec<(String, u64)>, ParseError> {
    let mut out = Vec::new();
    let mut fields: Option<Vec<&str>> = None;
    for (i, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let Some(names) = &fields else {
            if parts.len() >= 12 && parts[0] == "nread" {
                fields = Some(parts);
            }
            continue;
        };
        for (k, name) in names.iter().enumerate() {
            // node_exporter 1.5 indexes the row without a bound check and dies on a
            // short row; a parse error costs only this collector.
            let token = parts.get(k).ok_or_else(|| {
                ParseError::new(
                    i + 1,
                    format!("{} values for {} fields", parts.len(), names.len()),
                )
            })?;
            let v = parse_go_u64(token).ok_or_else(|| {
                ParseError::new(i + 1, format!("{name}: {token:?} is not an integer"))
            })?;
            out.push((name.to_string(), v));
        }
    }
    Ok(out)
}

/// One value of a dataset's `objset-*` kstat: the dataset (`None` before the
/// `dataset_name` row, where node_exporter labels it with an empty pool and dataset),
/// the entry's name and value.
pub(crate) type ObjsetValue = (Option<String>, String, u64);

pub(crate) fn parse_objset(text: &str) -> Result<Vec<ObjsetValue>, ParseError> {
    let mut out = Vec::new();
    let mut in_data = false;
    let mut dataset: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if !in_data {
            in_data = is_header(&parts);
            continue;
        }
        if parts.len() < 3 {
            continue;
        }
        if parts[0] == "dataset_name" {
            dataset = Some(parts[2].to_string());
            continue;
        }
        if parts[1] != KSTAT_DATA_UINT64 {
            continue;
        }
        let v = parse_go_u64(parts[2]).ok_or_else(|| {
            ParseError::new(
                i + 1,
                format!("{}: {:?} is not an integer", parts[0], parts[2]),
            )
        })?;
        out.push((dataset.clone(), parts[0].to_string(), v));
    }
    if !in_data {
        return Err(ParseError::new(1, "no \"name type data\" header"));
    }
    Ok(out)
}

/// A pool's `state` file: its first line, lower-cased (`ONLINE`, `DEGRADED`, ...).
pub(crate) fn parse_state(text: &str) -> String {
    text.lines().next().unwrap_or("").to_lowercase()
}

/// node_exporter's metric name for a kstat key: the part after the last `.`, with `-`
/// made `_`. `None` when the result is no valid metric name part (node_exporter would
/// panic on it).
fn metric_name(prefix: &str, key: &str) -> Option<String> {
    let last = key.rsplit('.').next().unwrap_or(key).replace('-', "_");
    let name = format!("{prefix}_{last}");
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        .then_some(name)
}

/// Adds one sample to the family `name` in `out`, creating it with `help` and `kind`.
fn push(
    out: &mut Vec<Family>,
    name: String,
    help: String,
    kind: MetricType,
    labels: Vec<(&'static str, String)>,
    v: f64,
) {
    match out.iter_mut().find(|f| f.name == name) {
        Some(f) => f.push(labels, v),
        None => out.push(Family::new(name, help, kind).with(labels, v)),
    }
}

/// Families of one subsystem's kstat entries.
pub(crate) fn render_kstat(
    out: &mut Vec<Family>,
    subsystem: &str,
    file: &str,
    entries: &[(String, u64)],
) {
    for (key, v) in entries {
        let help = format!("kstat.zfs.misc.{file}.{key}");
        if let Some(name) = metric_name(&format!("node_{subsystem}"), &help) {
            push(out, name, help, MetricType::Untyped, Vec::new(), *v as f64);
        }
    }
}

pub(crate) fn render_pool_io(out: &mut Vec<Family>, pool: &str, entries: &[(String, u64)]) {
    for (field, v) in entries {
        let help = format!("kstat.zfs.misc.io.{field}");
        if let Some(name) = metric_name("node_zfs_zpool", &help) {
            push(
                out,
                name,
                help,
                MetricType::Untyped,
                super::label("zpool", pool),
                *v as f64,
            );
        }
    }
}

pub(crate) fn render_objset(out: &mut Vec<Family>, pool: &str, entries: &[ObjsetValue]) {
    for (dataset, key, v) in entries {
        let help = format!("kstat.zfs.misc.objset.{key}");
        let (zpool, dataset) = match dataset {
            Some(d) => (pool.to_string(), d.clone()),
            None => (String::new(), String::new()),
        };
        if let Some(name) = metric_name("node_zfs_zpool_dataset", &help) {
            push(
                out,
                name,
                help,
                MetricType::Untyped,
                vec![("zpool", zpool), ("dataset", dataset)],
                *v as f64,
            );
        }
    }
}

pub(crate) fn render_state(out: &mut Vec<Family>, pool: &str, state: &str) {
    for s in POOL_STATES {
        push(
            out,
            "node_zfs_zpool_state".into(),
            "kstat.zfs.misc.state".into(),
            MetricType::Gauge,
            vec![("zpool", pool.to_string()), ("state", s.to_string())],
            if state == s { 1.0 } else { 0.0 },
        );
    }
}

/// `<base>/<pool>/<file>` for every pool directory holding a file whose name `matches`,
/// as (pool, path), sorted like Go's `filepath.Glob`.
fn pool_files(
    base: &std::path::Path,
    matches: impl Fn(&str) -> bool,
) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let Ok(pools) = std::fs::read_dir(base) else {
        return out;
    };
    let mut pools: Vec<String> = pools
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    pools.sort();
    for pool in pools {
        let Ok(files) = std::fs::read_dir(base.join(&pool)) else {
            continue;
        };
        let mut files: Vec<String> = files
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| matches(f))
            .collect();
        files.sort();
        for f in files {
            out.push((pool.clone(), base.join(&pool).join(f)));
        }
    }
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.proc("spl/kstat/zfs");
    if std::fs::metadata(&base).is_err() {
        return Err(CollectError::NoData {
            reason: "no /proc/spl/kstat/zfs (no zfs module)",
        });
    }
    let mut out = Vec::new();
    for (subsystem, file) in KSTATS {
        let path = base.join(file);
        // A kstat this module version does not have is skipped.
        let Ok(text) = read(&path) else { continue };
        let entries = parse_kstat(&text).map_err(|source| CollectError::Parse { path, source })?;
        render_kstat(&mut out, subsystem, file, &entries);
    }
    for (pool, path) in pool_files(&base, |f| f == "io") {
        let text = read(&path)?;
        let entries =
            parse_pool_io(&text).map_err(|source| CollectError::Parse { path, source })?;
        render_pool_io(&mut out, &pool, &entries);
    }
    for (pool, path) in pool_files(&base, |f| f.starts_with("objset-")) {
        let text = read(&path)?;
        let entries = parse_objset(&text).map_err(|source| CollectError::Parse { path, source })?;
        render_objset(&mut out, &pool, &entries);
    }
    for (pool, path) in pool_files(&base, |f| f == "state") {
        let text = read(&path)?;
        render_state(&mut out, &pool, &parse_state(&text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_kstats() {
        let text = "6 1 0x01 3 144 4416840904 7424224624\nname                            type data\nhits                            4    8772612\nc_min                           4    33554432\narc_no_grow                     4    0\nbogus                           7    text\n";
        assert_eq!(
            parse_kstat(text).unwrap(),
            vec![
                ("hits".to_string(), 8772612),
                ("c_min".to_string(), 33554432),
                ("arc_no_grow".to_string(), 0)
            ]
        );
        assert!(parse_kstat("hits 4 1\n").is_err());
        assert!(parse_kstat("name type data\nhits 4 -1\n").is_err());
    }

    #[test]
    fn parses_pool_files() {
        let io = "12 3 0x00 1 80 2225326830828 32953476980628\nnread    nwritten  reads    writes   wtime    wlentime wupdate  rtime    rlentime rupdate  wcnt     rcnt\n1884160  3206144   22       132      7155162104 104112268 32952839 2040012312 2040012312 32953476 0 0\n";
        let v = parse_pool_io(io).unwrap();
        assert_eq!(v.len(), 12);
        assert_eq!(v[0], ("nread".to_string(), 1884160));
        assert_eq!(v[11], ("rcnt".to_string(), 0));
        assert!(parse_pool_io("nread a b c d e f g h i j k\n1 2\n").is_err());
        let objset = "23 1 0x01 7 2160 5214787391 74985931356512\nname type data\nwrites 4 0\ndataset_name 7 pool1/dataset1\nreads 4 5\n";
        assert_eq!(
            parse_objset(objset).unwrap(),
            vec![
                (None, "writes".to_string(), 0),
                (Some("pool1/dataset1".to_string()), "reads".to_string(), 5)
            ]
        );
        assert_eq!(parse_state("DEGRADED\nx\n"), "degraded");
        assert_eq!(parse_state(""), "");
    }

    #[test]
    fn names_as_node_exporter() {
        assert_eq!(
            metric_name("node_zfs_arc", "kstat.zfs.misc.arcstats.l2-hits").as_deref(),
            Some("node_zfs_arc_l2_hits")
        );
        assert_eq!(
            metric_name("node_zfs_arc", "kstat.zfs.misc.arcstats.a/b"),
            None
        );
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
        fn parsers_never_panic(s in "\\PC*|(name type data\n)?((nread|dataset_name|[a-z]{1,5})( [0-9a-z/]{1,4}){0,13}\n){1,5}") {
            let mut out = Vec::new();
            if let Ok(e) = parse_kstat(&s) { render_kstat(&mut out, "zfs_arc", "arcstats", &e); }
            if let Ok(e) = parse_pool_io(&s) { render_pool_io(&mut out, "p", &e); }
            if let Ok(e) = parse_objset(&s) { render_objset(&mut out, "p", &e); }
            render_state(&mut out, "p", &parse_state(&s));
        }
    }
}
