//! nodetap's whole output against the real node_exporter on the same machine (issue
//! 12: every family node_exporter serves, with the exceptions listed below and why),
//! then node-mixin's recording rules and alerts (tests/fixtures/node/node-mixin-rules.yml)
//! in a real Prometheus scraping nodetap,
//! then against a real Prometheus and promtool (issue 6). The collectors compared are
//! the ones nodetap reports running (`node_scrape_collector_success{collector}`), not a
//! copied list.
//!
//! Needs root (nodetap loads eBPF) and Debian's `prometheus-node-exporter` and
//! `prometheus` packages (/usr/bin/prometheus-node-exporter, /usr/bin/prometheus,
//! /usr/bin/promtool).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nodetap_tests::exposition::{self, Family, MetricType};
use nodetap_tests::{ensure_root, free_port, http_get, prometheus::Prometheus, Agent, ChildGuard};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Family name prefixes node_exporter serves that nodetap does not, with the reason.
const NOT_SERVED: [(&str, &str); 2] = [
    (
        "go_",
        "node_exporter's Go runtime statistics; nodetap is not a Go program",
    ),
    (
        "promhttp_metric_handler_",
        "node_exporter's HTTP handler's own counters; nodetap counts its scrapes in nodetap_*",
    ),
];

/// node_exporter default collectors nodetap does not implement yet (issue 12): only
/// their `node_scrape_collector_*{collector}` series are missing from nodetap. On this
/// machine none of them has data except through those series; a collector that gains
/// data, or that nodetap implements, fails the test until this list is updated.
const NOT_YET: [&str; 1] = ["systemd"];

/// Families whose values describe the exporter process itself, so they differ by
/// design: type, HELP and label names are compared, values not.
fn values_describe_the_exporter(name: &str) -> bool {
    name.starts_with("process_")
        || name == "node_exporter_build_info"
        || name == "node_scrape_collector_duration_seconds"
}

/// Gauges whose value cannot change between two scrapes a few milliseconds apart:
/// they must agree exactly.
const FIXED: [&str; 36] = [
    "node_boot_time_seconds",
    "node_memory_MemTotal_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_Hugepagesize_bytes",
    "node_memory_VmallocTotal_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_files",
    "node_filesystem_readonly",
    "node_filesystem_device_error",
    "node_uname_info",
    "node_disk_info",
    "node_network_info",
    "node_network_mtu_bytes",
    "node_network_speed_bytes",
    "node_network_iface_id",
    "node_network_protocol_type",
    "node_network_transmit_queue_length",
    "node_time_clocksource_available_info",
    "node_time_clocksource_current_info",
    "node_time_zone_offset_seconds",
    "node_filefd_maximum",
    "node_entropy_pool_size_bits",
    "node_nf_conntrack_entries_limit",
    "node_os_info",
    "node_os_version",
    "node_selinux_enabled",
    "node_timex_tick_seconds",
    "node_textfile_scrape_error",
    "node_textfile_mtime_seconds",
    "node_scrape_collector_success",
    // A Btrfs filesystem's label, devices and profiles (the loop-device test's).
    "node_btrfs_info",
    "node_btrfs_device_size_bytes",
    "node_btrfs_allocation_ratio",
    // From the test's own textfile directory.
    "backup_last_success_timestamp_seconds",
    "request_seconds",
    "rpc_seconds",
];

/// The tolerance for counters. nodetap is scraped between two node_exporter scrapes, so
/// every counter must lie between node_exporter's before and after values: the
/// tolerance is exactly what elapsed. Only CPU time gets slack: node_exporter (and
/// nodetap) keep a CPU counter at its last value when the kernel's idle or iowait goes
/// back (NO_HZ accounting, Documentation/filesystems/proc.rst), so their two views can
/// differ by the size of such a step; half a second is 50 ticks of USER_HZ.
fn counter_slack(family: &str) -> f64 {
    match family {
        "node_cpu_seconds_total" | "node_cpu_guest_seconds_total" => 0.5,
        _ => 0.0,
    }
}

fn is_counter_like(f: &Family) -> bool {
    // vmstat's and netstat's fields are untyped in node_exporter; all but two netstat
    // fields (a gauge of established connections, a forwarding switch) are counters.
    f.kind == MetricType::Counter
        || f.name.starts_with("node_vmstat_")
        || (f.name.starts_with("node_netstat_")
            && !matches!(
                f.name.as_str(),
                "node_netstat_Tcp_CurrEstab" | "node_netstat_Ip_Forwarding"
            ))
        || f.name == "node_time_seconds"
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("nodetap-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GET that tolerates a server that is not up yet.
fn try_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // One write: a server that reads the request once must get all of it.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?;
    (status == "200").then(|| body.to_string())
}

fn wait_for(url: &str, what: &str) {
    let start = Instant::now();
    while try_get(url).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not answer on {url} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_node_exporter(args: &[&str]) -> (ChildGuard, String) {
    assert!(
        Path::new(NODE_EXPORTER).exists(),
        "{NODE_EXPORTER} is missing: apt-get install -y prometheus-node-exporter"
    );
    let port = free_port();
    let mut cmd = Command::new(NODE_EXPORTER);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guard = ChildGuard::spawn(cmd);
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_for(&url, "node_exporter");
    (guard, url)
}

fn parse(text: &str, who: &str) -> BTreeMap<String, Family> {
    exposition::parse_map(text).unwrap_or_else(|e| panic!("{who}'s /metrics does not parse: {e}"))
}

/// A series: its sample name (histogram parts differ) and labels.
type SeriesKey = (String, Vec<(String, String)>);

fn series(f: &Family) -> BTreeMap<SeriesKey, f64> {
    f.samples
        .iter()
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            ((s.name.clone(), labels), s.value)
        })
        .collect()
}

/// The collectors nodetap runs, as it reports them itself.
fn collectors_of(families: &BTreeMap<String, Family>) -> BTreeSet<String> {
    families
        .get("node_scrape_collector_success")
        .map(|f| {
            f.samples
                .iter()
                .filter_map(|s| s.labels.get("collector").cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// Drops node_exporter's series of the collectors in [`NOT_YET`]; a collector that
/// neither side explains is a problem.
fn without_collectors_not_yet(
    mut f: Family,
    ours: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Family {
    if f.name.starts_with("node_scrape_collector_") {
        f.samples.retain(|s| {
            let c = s.labels.get("collector").cloned().unwrap_or_default();
            if ours.contains(&c) {
                if NOT_YET.contains(&c.as_str()) {
                    problems.push(format!("collector {c} is implemented now: remove it from NOT_YET"));
                }
                return true;
            }
            if !NOT_YET.contains(&c.as_str()) && f.name == "node_scrape_collector_success" {
                problems.push(format!(
                    "node_exporter runs collector {c}, which nodetap neither runs nor lists in NOT_YET"
                ));
            }
            false
        });
    }
    f
}

/// Compares nodetap's whole output with node_exporter's, scraped just before and just
/// after it. Returns the differences and how many families were compared.
fn compare(before: &str, nodetap: &str, after: &str) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let nt_all = parse(nodetap, "nodetap");
    let ours = collectors_of(&nt_all);
    if ours.is_empty() {
        problems.push("nodetap serves no node_scrape_collector_success series".into());
    }
    let not_served = |name: &str| NOT_SERVED.iter().any(|(p, _)| name.starts_with(p));
    let exporter_side =
        |text: &str, who: &str, problems: &mut Vec<String>| -> BTreeMap<String, Family> {
            parse(text, who)
                .into_iter()
                .filter(|(n, _)| !not_served(n))
                .map(|(n, f)| (n, without_collectors_not_yet(f, &ours, problems)))
                .collect()
        };
    let ne1 = exporter_side(before, "node_exporter", &mut problems);
    let mut ignored = Vec::new();
    let ne2 = exporter_side(after, "node_exporter", &mut ignored);
    // nodetap's own families (nodetap_*, RED metrics) have no node_exporter twin.
    let nt: BTreeMap<String, Family> = nt_all
        .into_iter()
        .filter(|(n, _)| ne1.contains_key(n) || n.starts_with("node_") || n.starts_with("process_"))
        .collect();

    let names: BTreeSet<&String> = ne1.keys().chain(nt.keys()).collect();
    let mut compared = 0;
    for name in names {
        let (Some(a), Some(t)) = (ne1.get(name), nt.get(name)) else {
            let side = if ne1.contains_key(name) {
                "nodetap"
            } else {
                "node_exporter"
            };
            problems.push(format!("{name}: missing in {side}"));
            continue;
        };
        compared += 1;
        if a.kind != t.kind {
            problems.push(format!(
                "{name}: type {} in node_exporter, {} in nodetap",
                a.kind, t.kind
            ));
        }
        if a.help != t.help {
            problems.push(format!(
                "{name}: HELP {:?} in node_exporter, {:?} in nodetap",
                a.help, t.help
            ));
        }
        if a.label_names() != t.label_names() {
            problems.push(format!(
                "{name}: label names {:?} in node_exporter, {:?} in nodetap",
                a.label_names(),
                t.label_names()
            ));
            continue;
        }
        if values_describe_the_exporter(name) {
            continue;
        }
        // A series may come or go between the scrapes (an interface, a mount): nodetap's
        // must be in one of node_exporter's scrapes, and one in both must be in nodetap's.
        let (sa, st) = (series(a), series(t));
        let sb = ne2.get(name).map(series).unwrap_or_default();
        let only_nodetap: Vec<_> = st
            .keys()
            .filter(|k| !sa.contains_key(*k) && !sb.contains_key(*k))
            .collect();
        let only_node_exporter: Vec<_> = sa
            .keys()
            .filter(|k| sb.contains_key(*k) && !st.contains_key(*k))
            .collect();
        if !only_nodetap.is_empty() || !only_node_exporter.is_empty() {
            problems.push(format!(
                "{name}: series only in node_exporter {only_node_exporter:?}, only in nodetap {only_nodetap:?}"
            ));
            continue;
        }
        if FIXED.contains(&name.as_str()) {
            for (k, vt) in &st {
                let va = sa.get(k).or_else(|| sb.get(k));
                if va != Some(vt) && !(vt.is_nan() && va.is_some_and(|v| v.is_nan())) {
                    problems.push(format!(
                        "{name}{k:?}: node_exporter {va:?}, nodetap {vt} (must be equal)"
                    ));
                }
            }
        } else if is_counter_like(a) {
            let slack = counter_slack(name);
            for (k, v) in &st {
                let (Some(lo), Some(hi)) = (sa.get(k), sb.get(k)) else {
                    continue; // a series that came or went between scrapes
                };
                if *v < lo - slack || *v > hi + slack {
                    problems.push(format!(
                        "{name}{k:?}: nodetap {v} not within node_exporter's {lo}..{hi} (slack {slack})"
                    ));
                }
            }
        }
    }
    (problems, compared)
}

/// The tests of this file compare two views of the whole machine, and one of them adds
/// filesystems to it: they run one at a time.
static MACHINE: Mutex<()> = Mutex::new(());

fn machine() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn node_families_match_node_exporter_and_work_in_prometheus() {
    ensure_root();
    let _machine = machine();
    // One textfile directory for both: the collector's fixtures, a good file with every
    // metric type and a bad one that both must report without failing.
    let textfiles = TempDir::new("textfiles");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/node/textfile");
    for (from, to) in [
        ("good/app.prom", "app.prom"),
        ("mixed/bad.prom", "bad.prom"),
    ] {
        std::fs::copy(fixtures.join(from), textfiles.0.join(to))
            .unwrap_or_else(|e| panic!("copy textfile fixture {from}: {e}"));
    }
    let textfile_flag = format!("--collector.textfile.directory={}", textfiles.0.display());
    let (_node_exporter, ne_url) = start_node_exporter(&[&textfile_flag]);
    let agent = Agent::start(&[&textfile_flag]);

    // 1. Family by family against node_exporter, scraped back to back: node_exporter,
    //    nodetap, node_exporter again.
    let before = http_get(&ne_url);
    let nodetap = agent.scrape();
    let after = http_get(&ne_url);
    let (problems, matched) = compare(&before, &nodetap, &after);
    println!("{matched} node_exporter families compared");
    assert!(
        problems.is_empty(),
        "nodetap differs from node_exporter in {} ways:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        matched > 200,
        "only {matched} node families: is the node collector wired in?"
    );

    // 2. promtool: no parse error; lint findings only about node_exporter's own names.
    let tmp = TempDir::new("node-exporter-test");
    let scrape_file = tmp.0.join("nodetap.prom");
    std::fs::write(&scrape_file, &nodetap).unwrap();
    let out = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape_file).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e} (apt-get install -y prometheus)"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("error while linting") && out.status.code() != Some(1),
        "promtool cannot parse nodetap's /metrics:\n{report}"
    );
    let node_exporter_names: BTreeSet<String> =
        parse(&before, "node_exporter").into_keys().collect();
    let foreign: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !node_exporter_names.contains(l.split(' ').next().unwrap_or("")))
        .collect();
    assert!(
        foreign.is_empty(),
        "promtool lint findings that are not about node_exporter's historical names:\n{}",
        foreign.join("\n")
    );

    // 3. A real Prometheus scrapes nodetap every second; the usual node dashboards'
    //    queries must return data.
    let target = agent
        .metrics_url()
        .strip_prefix("http://")
        .map(|s| s.to_string())
        .expect("metrics url is http://");
    let (hostport, path) = match target.split_once('/') {
        Some((h, p)) => (h.to_string(), format!("/{p}")),
        None => (target.clone(), "/metrics".to_string()),
    };
    let prometheus = Prometheus::start_with_rules(
        &format!(
            "  - job_name: nodetap\n    metrics_path: {path}\n    static_configs:\n      - targets: ['{hostport}']\n"
        ),
        &[fixtures.join("../node-mixin-rules.yml")],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let up = prometheus.query_until_non_empty("up{job=\"nodetap\"} == 1", deadline);
    assert_eq!(up, vec![1.0]);
    let checks: [(&str, &str, f64, f64); 4] = [
        (
            "CPU utilisation",
            "1 - avg(rate(node_cpu_seconds_total{mode=\"idle\"}[10s]))",
            -0.05,
            1.05,
        ),
        (
            "memory utilisation",
            "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
            0.0,
            1.0,
        ),
        (
            "network throughput",
            "sum(rate(node_network_receive_bytes_total[10s]))",
            0.0,
            f64::MAX,
        ),
        (
            "disk space",
            "node_filesystem_avail_bytes / node_filesystem_size_bytes",
            0.0,
            1.0,
        ),
    ];
    for (what, query, lo, hi) in checks {
        let values = prometheus.query_until_non_empty(query, deadline);
        for v in &values {
            assert!(
                v.is_finite() && *v >= lo && *v <= hi,
                "{what} ({query}) = {v}, expected within {lo}..{hi}"
            );
        }
        println!("{what}: {query} = {values:?}");
    }

    // 4. node-mixin's recording rules answer from nodetap's series, and its textfile
    //    alert fires for the bad file the test put in the textfile directory.
    let cpus = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count() as f64;
    let num_cpu = prometheus.query_until_non_empty("instance:node_num_cpu:sum", deadline);
    assert_eq!(
        num_cpu,
        vec![cpus],
        "instance:node_num_cpu:sum against /proc/stat"
    );
    for (rule, lo, hi) in [
        ("instance:node_cpu_utilisation:rate5m", -0.05, 1.05),
        ("instance:node_load1_per_cpu:ratio", 0.0, f64::MAX),
        ("instance:node_memory_utilisation:ratio", 0.0, 1.0),
        ("instance:node_vmstat_pgmajfault:rate5m", 0.0, f64::MAX),
        (
            "instance:node_network_receive_bytes_excluding_lo:rate5m",
            0.0,
            f64::MAX,
        ),
        (
            "instance:node_network_transmit_drop_excluding_lo:rate5m",
            0.0,
            f64::MAX,
        ),
        (
            "node_nf_conntrack_entries / node_nf_conntrack_entries_limit",
            0.0,
            1.0,
        ),
        (
            "node_filefd_allocated * 100 / node_filefd_maximum",
            0.0,
            100.0,
        ),
        ("min_over_time(node_timex_sync_status[5m])", 0.0, 1.0),
    ] {
        let values = prometheus.query_until_non_empty(rule, deadline);
        for v in &values {
            assert!(
                v.is_finite() && *v >= lo && *v <= hi,
                "node-mixin {rule} = {v}, expected within {lo}..{hi}"
            );
        }
        println!("node-mixin {rule} = {values:?}");
    }
    let firing = prometheus.query_until_non_empty(
        "ALERTS{alertname=\"NodeTextFileCollectorScrapeError\",alertstate=\"firing\"}",
        deadline,
    );
    assert_eq!(
        firing,
        vec![1.0],
        "the textfile alert must fire for bad.prom"
    );
}

/// Loop devices over image files and their mounts, undone (unmounted, detached, deleted)
/// when the test ends, also when it fails.
struct LoopMounts {
    dir: TempDir,
    loops: Vec<String>,
    mounts: Vec<PathBuf>,
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install -y btrfs-progs xfsprogs)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopMounts {
    fn new() -> Self {
        LoopMounts {
            dir: TempDir::new("loopfs"),
            loops: Vec::new(),
            mounts: Vec::new(),
        }
    }

    /// A loop device over a new sparse image of `mib` MiB.
    fn device(&mut self, name: &str, mib: u64) -> String {
        let image = self.dir.0.join(name);
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap_or_else(|e| panic!("create {}: {e}", image.display()));
        let dev = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
        self.loops.push(dev.clone());
        dev
    }

    fn mount(&mut self, dev: &str, name: &str) -> PathBuf {
        let at = self.dir.0.join(name);
        std::fs::create_dir_all(&at).unwrap();
        run("mount", &[dev, at.to_str().unwrap()]);
        self.mounts.push(at.clone());
        at
    }
}

impl Drop for LoopMounts {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

/// Real Btrfs (two devices, RAID1) and XFS filesystems on loop devices: nodetap's btrfs
/// and xfs families equal node_exporter's, including the Btrfs device families
/// node_exporter gets from the filesystem's ioctls and the XFS counters the kernel keeps
/// per filesystem.
#[test]
fn btrfs_and_xfs_filesystems_match_node_exporter() {
    ensure_root();
    let _machine = machine();
    let mut fs = LoopMounts::new();
    let (b1, b2) = (fs.device("b1.img", 300), fs.device("b2.img", 300));
    run(
        "mkfs.btrfs",
        &[
            "-q",
            "-f",
            "-L",
            "nodetap-test",
            "-d",
            "raid1",
            "-m",
            "raid1",
            &b1,
            &b2,
        ],
    );
    let btrfs = fs.mount(&b1, "btrfs");
    let x = fs.device("x.img", 320);
    run("mkfs.xfs", &["-q", "-f", &x]);
    let xfs = fs.mount(&x, "xfs");
    for dir in [&btrfs, &xfs] {
        std::fs::write(dir.join("data"), vec![7u8; 4 << 20]).unwrap();
        let _ = std::fs::read(dir.join("data")).unwrap();
    }
    run("sync", &[]);

    let flags = [
        "--collector.disable-defaults",
        "--collector.btrfs",
        "--collector.xfs",
    ];
    let (_node_exporter, ne_url) = start_node_exporter(&flags);
    let agent = Agent::start(&flags);
    let before = http_get(&ne_url);
    let nodetap = agent.scrape();
    let after = http_get(&ne_url);
    let (problems, matched) = compare(&before, &nodetap, &after);
    assert!(
        problems.is_empty(),
        "nodetap differs from node_exporter in {} ways:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // What the comparison covered: the filesystems are there, Btrfs in its ioctl form.
    let families = parse(&nodetap, "nodetap");
    let samples = |name: &str| -> Vec<BTreeMap<String, String>> {
        families
            .get(name)
            .map(|f| f.samples.iter().map(|s| s.labels.clone()).collect())
            .unwrap_or_default()
    };
    let info = samples("node_btrfs_info");
    assert!(
        info.iter()
            .any(|l| l.get("label").map(String::as_str) == Some("nodetap-test")),
        "no node_btrfs_info for the test's filesystem: {info:?}"
    );
    let uuid = info
        .iter()
        .find(|l| l.get("label").map(String::as_str) == Some("nodetap-test"))
        .and_then(|l| l.get("uuid").cloned())
        .unwrap();
    for family in [
        "node_btrfs_device_size_bytes",
        "node_btrfs_device_unused_bytes",
    ] {
        let devices: BTreeSet<String> = samples(family)
            .into_iter()
            .filter(|l| l.get("uuid") == Some(&uuid) && l.contains_key("btrfs_dev_uuid"))
            .filter_map(|l| l.get("device").cloned())
            .collect();
        let want: BTreeSet<String> = [&b1, &b2]
            .iter()
            .map(|d| d.trim_start_matches("/dev/").to_string())
            .collect();
        assert_eq!(devices, want, "{family} of the RAID1 filesystem");
    }
    let errors = samples("node_btrfs_device_errors_total")
        .into_iter()
        .filter(|l| l.get("uuid") == Some(&uuid))
        .count();
    assert_eq!(errors, 10, "five error types for each of the two devices");
    let xfs_device = x.trim_start_matches("/dev/");
    assert!(
        samples("node_xfs_write_calls_total")
            .iter()
            .any(|l| l.get("device").map(String::as_str) == Some(xfs_device)),
        "no node_xfs_write_calls_total for {xfs_device}"
    );
    println!("{matched} families compared");
}
