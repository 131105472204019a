//! What node_exporter's own registry serves beside its collectors: the Prometheus client
//! libraries' `process_*` families for the exporter process itself, and
//! `node_exporter_build_info`.
//!
//! These are not collectors (node_exporter has no `--collector.process`, and they carry
//! no `node_scrape_collector_*` series), so they sit outside [`super::COLLECTORS`] and are
//! always served.
//!
//! `process_*` follow client_golang's process collector (prometheus/client_golang
//! `process_collector_procfs.go`, as node_exporter 1.5 builds it): names, HELP and types
//! identical, values from the agent's own `/proc/self` (never the host's `--path.procfs`:
//! in a container the agent's process is in its own /proc), CPU and start time in
//! USER_HZ ticks of 1/100 s as procfs reports them.
//!
//! `node_exporter_build_info` is served so that dashboards and alerts that find node
//! instances through it (node-mixin's instance variable, `up * on(instance)
//! group_left node_exporter_build_info`) keep working. It has node_exporter's label
//! names but nodetap's own values: `version` is nodetap's version, `revision` says
//! `nodetap`, `goversion` says `none`; nothing pretends to be a Go build.

use std::path::Path;

use super::render::{Family, MetricType};
use super::ParseError;

/// procfs reports process CPU and start times in clock ticks of USER_HZ, which is 100
/// on every Linux ABI (`sysconf(_SC_CLK_TCK)`; client_golang hard-codes it too).
const USER_HZ: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` the process families need (proc(5)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ProcStat {
    /// Fields 14 and 15, in ticks.
    pub utime: u64,
    pub stime: u64,
    /// Field 22, ticks after boot.
    pub starttime: u64,
    /// Field 23, bytes.
    pub vsize: u64,
    /// Field 24, pages.
    pub rss: i64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Result<ProcStat, ParseError> {
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| ParseError::new(1, "no ')' after the command name"))?;
    // rest starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| ParseError::new(1, format!("field {n} missing")))
    };
    let num = |n: usize| -> Result<u64, ParseError> {
        field(n)?
            .parse::<u64>()
            .map_err(|_| ParseError::new(1, format!("field {n} is not a number")))
    };
    Ok(ProcStat {
        utime: num(14)?,
        stime: num(15)?,
        starttime: num(22)?,
        vsize: num(23)?,
        rss: field(24)?
            .parse::<i64>()
            .map_err(|_| ParseError::new(1, "field 24 is not a number"))?,
    })
}

/// The soft limit of the `/proc/<pid>/limits` row named `name` (e.g. `Max open files`);
/// `unlimited` is u64::MAX, as procfs makes it.
pub(crate) fn parse_soft_limit(text: &str, name: &str) -> Result<u64, ParseError> {
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // Columns are padded with spaces; the name ends where two spaces start.
        if !rest.starts_with("  ") {
            continue;
        }
        let soft = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| ParseError::new(i + 1, format!("{name}: no soft limit")))?;
        return if soft == "unlimited" {
            Ok(u64::MAX)
        } else {
            soft.parse()
                .map_err(|_| ParseError::new(i + 1, format!("{name}: bad soft limit {soft:?}")))
        };
    }
    Err(ParseError::new(0, format!("no {name:?} row")))
}

/// `btime` of /proc/stat: boot time in seconds since the epoch.
pub(crate) fn parse_boot_time(text: &str) -> Result<u64, ParseError> {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.strip_prefix("btime ").map(|v| (i, v)))
        .ok_or_else(|| ParseError::new(0, "no btime line"))
        .and_then(|(i, v)| {
            v.trim()
                .parse()
                .map_err(|_| ParseError::new(i + 1, "bad btime"))
        })
}

/// What the process families are made of, each read separately: as in client_golang,
/// one unreadable source loses its families only.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessInfo {
    pub stat: Option<ProcStat>,
    pub boot_time: Option<u64>,
    pub open_fds: Option<usize>,
    pub max_fds: Option<u64>,
    pub max_address_space: Option<u64>,
    pub page_size: u64,
}

pub(crate) fn render_process(p: &ProcessInfo) -> Vec<Family> {
    let mut out = Vec::new();
    let gauge = |name: &str, help: &str, v: f64| Family::single(name, help, MetricType::Gauge, v);
    if let Some(s) = p.stat {
        out.push(Family::single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            MetricType::Counter,
            (s.utime + s.stime) as f64 / USER_HZ,
        ));
        out.push(gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            s.vsize as f64,
        ));
        out.push(gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            (s.rss.max(0) as u64 * p.page_size) as f64,
        ));
        if let Some(boot) = p.boot_time {
            out.push(gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + s.starttime as f64 / USER_HZ,
            ));
        }
    }
    if let Some(n) = p.open_fds {
        out.push(gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            n as f64,
        ));
    }
    if let Some(n) = p.max_fds {
        out.push(gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            n as f64,
        ));
    }
    if let Some(n) = p.max_address_space {
        out.push(gauge(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            n as f64,
        ));
    }
    out
}

/// Reads the agent's own process under `proc` (normally `/proc`).
pub(crate) fn read_process(proc: &Path) -> ProcessInfo {
    let read = |rel: &str| std::fs::read_to_string(proc.join(rel)).ok();
    let limits = read("self/limits");
    // SAFETY: sysconf has no memory effects.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    ProcessInfo {
        stat: read("self/stat").and_then(|t| parse_stat(&t).ok()),
        boot_time: read("stat").and_then(|t| parse_boot_time(&t).ok()),
        open_fds: std::fs::read_dir(proc.join("self/fd"))
            .ok()
            .map(|d| d.count()),
        max_fds: limits
            .as_deref()
            .and_then(|t| parse_soft_limit(t, "Max open files").ok()),
        max_address_space: limits
            .as_deref()
            .and_then(|t| parse_soft_limit(t, "Max address space").ok()),
        page_size,
    }
}

/// The Go names of the architectures nodetap is built for, as `goarch` spells them.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

pub(crate) fn render_build_info(version: &str) -> Family {
    Family::gauge(
        "node_exporter_build_info",
        "A metric with a constant '1' value labeled by version, revision, branch, goversion from which node_exporter was built, and the goos and goarch for the build.",
    )
    .with(
        vec![
            ("branch", "nodetap".to_string()),
            ("goarch", go_arch().to_string()),
            ("goos", std::env::consts::OS.to_string()),
            ("goversion", "none".to_string()),
            ("revision", "nodetap".to_string()),
            ("version", version.to_string()),
        ],
        1.0,
    )
}

/// The exporter's own families, read now.
pub(crate) fn families() -> Vec<Family> {
    let mut out = render_process(&read_process(Path::new("/proc")));
    out.push(render_build_info(env!("CARGO_PKG_VERSION")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn stat_with_odd_command_name() {
        // A real /proc/self/stat line, command renamed to contain ") (" and spaces.
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 2470 0 0 0 12 7 0 0 20 0 3 0 \
                    1234567 1122443264 3734 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 \
                    0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                utime: 12,
                stime: 7,
                starttime: 1234567,
                vsize: 1122443264,
                rss: 3734,
            }
        );
        assert!(parse_stat("1 (x) S 1 2").is_err());
        assert!(parse_stat("no parenthesis").is_err());
    }

    #[test]
    fn limits_soft_values() {
        let text = testutil::read("process", "self/limits");
        assert_eq!(parse_soft_limit(&text, "Max open files").unwrap(), 20000);
        assert_eq!(
            parse_soft_limit(&text, "Max address space").unwrap(),
            u64::MAX
        );
        // "Max file size" must not match "Max file locks" or the reverse.
        assert_eq!(parse_soft_limit(&text, "Max file locks").unwrap(), u64::MAX);
        assert!(parse_soft_limit(&text, "Max nothing").is_err());
    }

    /// The fixture's `expected.prom` was computed by hand from its files with
    /// client_golang's formulas: cpu (12+7)/100, rss 3734 pages * 4096, start
    /// 1795960000 + 1234567/100.
    #[test]
    fn renders_like_client_golang() {
        let proc = testutil::fixture("process");
        let mut info = read_process(&proc);
        info.page_size = 4096;
        // The fixture's fd directory holds three entries.
        assert_eq!(info.open_fds, Some(3));
        let got = testutil::render(render_process(&info));
        let want = std::fs::read_to_string(proc.join("expected.prom")).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn absent_sources_lose_only_their_families() {
        let info = read_process(Path::new("/nonexistent"));
        assert_eq!(info.stat, None);
        assert!(render_process(&info).is_empty());
        let info = ProcessInfo {
            max_fds: Some(1024),
            ..ProcessInfo::default()
        };
        let out = testutil::render(render_process(&info));
        assert_eq!(
            out,
            "# HELP process_max_fds Maximum number of open file descriptors.\n\
             # TYPE process_max_fds gauge\nprocess_max_fds 1024\n"
        );
    }

    #[test]
    fn live_self_is_read() {
        let info = read_process(Path::new("/proc"));
        assert!(info.stat.is_some() && info.open_fds.is_some() && info.max_fds.is_some());
        let names: Vec<String> = families().into_iter().map(|f| f.name).collect();
        for n in [
            "process_cpu_seconds_total",
            "process_max_fds",
            "process_open_fds",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_virtual_memory_bytes",
            "process_virtual_memory_max_bytes",
            "node_exporter_build_info",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn build_info_has_node_exporters_label_names() {
        let out = testutil::render(vec![render_build_info("1.2.3")]);
        assert!(out.contains(
            "node_exporter_build_info{branch=\"nodetap\",goarch=\"amd64\",goos=\"linux\",goversion=\"none\",revision=\"nodetap\",version=\"1.2.3\"} 1\n"
        ) || std::env::consts::ARCH != "x86_64", "{out}");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_stat(&s);
            let _ = parse_soft_limit(&s, "Max open files");
            let _ = parse_boot_time(&s);
        }
    }
}
