//! nodetap's node_* families against the real node_exporter on the same machine, then
//! against a real Prometheus and promtool (issue 6).
//!
//! Needs root (nodetap loads eBPF) and Debian's `prometheus-node-exporter` and
//! `prometheus` packages (/usr/bin/prometheus-node-exporter, /usr/bin/prometheus,
//! /usr/bin/promtool).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodetap_tests::exposition::{self, Family, MetricType};
use nodetap_tests::{ensure_root, free_port, http_get, prometheus::Prometheus, Agent, ChildGuard};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const PROMTOOL: &str = "/usr/bin/promtool";

/// The node_exporter collectors nodetap implements (nodetap's `collectors::COLLECTORS`).
const COLLECTORS: [&str; 12] = [
    "cpu",
    "diskstats",
    "filesystem",
    "loadavg",
    "meminfo",
    "netclass",
    "netdev",
    "pressure",
    "stat",
    "time",
    "uname",
    "vmstat",
];

/// Whether a family comes from one of [`COLLECTORS`] in node_exporter's default set.
fn owned(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "node_cpu_",
        "node_disk_",
        "node_filesystem_",
        "node_memory_",
        "node_network_",
        "node_pressure_",
        "node_time_",
        "node_vmstat_",
        "node_uname_",
        "node_scrape_collector_",
    ];
    const NAMES: [&str; 9] = [
        "node_load1",
        "node_load5",
        "node_load15",
        "node_boot_time_seconds",
        "node_context_switches_total",
        "node_forks_total",
        "node_intr_total",
        "node_procs_running",
        "node_procs_blocked",
    ];
    // node_cpu_{frequency,scaling}_* belong to node_exporter's cpufreq collector.
    if name.starts_with("node_cpu_frequency_") || name.starts_with("node_cpu_scaling_") {
        return false;
    }
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Gauges whose value cannot change between two scrapes a few milliseconds apart:
/// they must agree exactly.
const FIXED: [&str; 20] = [
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
    // vmstat's fields are untyped in node_exporter but are all event counters.
    f.kind == MetricType::Counter
        || f.name.starts_with("node_vmstat_")
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

fn start_node_exporter() -> (ChildGuard, String) {
    assert!(
        Path::new(NODE_EXPORTER).exists(),
        "{NODE_EXPORTER} is missing: apt-get install -y prometheus-node-exporter"
    );
    let port = free_port();
    let mut cmd = Command::new(NODE_EXPORTER);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
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

/// Series identity: the label map, minus nothing.
fn series(f: &Family) -> BTreeSet<Vec<(String, String)>> {
    f.samples
        .iter()
        .map(|s| {
            s.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect()
}

fn value_of(f: &Family, labels: &Vec<(String, String)>) -> Option<f64> {
    f.samples
        .iter()
        .find(|s| {
            s.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
                == *labels
        })
        .map(|s| s.value)
}

/// Keeps only node_scrape_collector_* series of the collectors nodetap implements.
fn only_our_collectors(mut f: Family) -> Family {
    if f.name.starts_with("node_scrape_collector_") {
        f.samples.retain(|s| {
            s.labels
                .get("collector")
                .is_some_and(|c| COLLECTORS.contains(&c.as_str()))
        });
    }
    f
}

fn compare(before: &str, nodetap: &str, after: &str) -> Vec<String> {
    let owned_families = |text: &str, who: &str| -> BTreeMap<String, Family> {
        parse(text, who)
            .into_iter()
            .filter(|(n, _)| owned(n))
            .map(|(n, f)| (n, only_our_collectors(f)))
            .collect()
    };
    let ne1 = owned_families(before, "node_exporter");
    let nt = owned_families(nodetap, "nodetap");
    let ne2 = owned_families(after, "node_exporter");

    let mut problems = Vec::new();
    let names: BTreeSet<&String> = ne1.keys().chain(nt.keys()).collect();
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
        let (sa, st) = (series(a), series(t));
        if sa != st {
            problems.push(format!(
                "{name}: series only in node_exporter {:?}, only in nodetap {:?}",
                sa.difference(&st).collect::<Vec<_>>(),
                st.difference(&sa).collect::<Vec<_>>()
            ));
            continue;
        }
        if name == "node_scrape_collector_success" {
            for s in &sa {
                if value_of(a, s) != value_of(t, s) {
                    problems.push(format!(
                        "{name}{s:?}: node_exporter {:?}, nodetap {:?}",
                        value_of(a, s),
                        value_of(t, s)
                    ));
                }
            }
            continue;
        }
        if FIXED.contains(&name.as_str()) {
            for s in &sa {
                let (va, vt) = (value_of(a, s), value_of(t, s));
                if va != vt {
                    problems.push(format!(
                        "{name}{s:?}: node_exporter {va:?}, nodetap {vt:?} (must be equal)"
                    ));
                }
            }
        } else if is_counter_like(a) {
            let Some(b) = ne2.get(name) else {
                problems.push(format!("{name}: gone from node_exporter's second scrape"));
                continue;
            };
            let slack = counter_slack(name);
            for s in &sa {
                let (Some(lo), Some(v), Some(hi)) =
                    (value_of(a, s), value_of(t, s), value_of(b, s))
                else {
                    continue; // a series that vanished between scrapes: the label check covers it
                };
                if v < lo - slack || v > hi + slack {
                    problems.push(format!(
                        "{name}{s:?}: nodetap {v} not within node_exporter's {lo}..{hi} (slack {slack})"
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn node_families_match_node_exporter_and_work_in_prometheus() {
    ensure_root();
    let (_node_exporter, ne_url) = start_node_exporter();
    let agent = Agent::start(&[]);

    // 1. Family by family against node_exporter, scraped back to back: node_exporter,
    //    nodetap, node_exporter again.
    let before = http_get(&ne_url);
    let nodetap = agent.scrape();
    let after = http_get(&ne_url);
    let problems = compare(&before, &nodetap, &after);
    let matched = parse(&nodetap, "nodetap")
        .keys()
        .filter(|n| owned(n))
        .count();
    println!("{matched} node_exporter families compared");
    assert!(
        problems.is_empty(),
        "nodetap differs from node_exporter in {} ways:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        matched > 100,
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
    let prometheus = Prometheus::start(&format!(
        "  - job_name: nodetap\n    metrics_path: {path}\n    static_configs:\n      - targets: ['{hostport}']\n"
    ));
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
}
