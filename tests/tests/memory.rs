//! Memory under connection load, against the real agent: the request-metric families
//! filled to their series limit, 50,000 tracked TCP connections open at once, then
//! 1,000,000 connections opened and closed. The agent's resident set must stay within
//! [`RSS_LIMIT`] at each steady point, and its exact counts must still hold: a bound on
//! memory that lost counts would be no bound at all.
//!
//! The traffic comes from `connload` processes (client and server on loopback, both in
//! one process), so every connection and byte is known and the agent reports them under
//! the name the test gives them.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use nodetap_tests::{exposition, helper_bin, unique_name, Agent, Checked, ChildGuard};

/// The agent's memory goal (issue 14): 64 MiB resident, steady.
const RSS_LIMIT: u64 = 64 << 20;
/// Connections held open at once: both ends are on this node, so the agent tracks
/// twice as many (`TRACKED`).
const CONCURRENT: usize = 25_000;
const TRACKED: usize = 2 * CONCURRENT;
/// Connections opened and closed after those.
const CHURN: usize = 1_000_000;
/// Bytes each load connection sends each way: small, so the test measures the
/// connection table rather than the ring buffers.
const PAYLOAD: usize = 16;
/// The agent's default series limit per request-metric family (`--max-series`).
const SERIES_LIMIT: usize = 10_000;
/// HTTP ports and status codes whose product passes the series limit: each
/// (port, status) pair is a distinct series of each `http_*` family, on both sides (the
/// agent keeps statuses 200 to 599 apart).
const HTTP_PORTS: usize = 26;
const HTTP_STATUSES: usize = 400;
/// Processes holding the concurrent connections: both ends of 5,000 connections each,
/// under the 20,000 descriptors a process may have on the test machines. Each listens on
/// its own port, and a client's ephemeral port can be reused towards another
/// destination, so the ports do not run out either.
const LOAD_PROCESSES: usize = 5;
/// Processes churning connections at once (each a client and a server thread). One:
/// more saturate both cores of a test machine, the agent falls behind and its ring
/// buffers overflow (counted as `ringbuf_full`; connection counts, which come from
/// records, can then fall short); this test is about memory, not overload.
const CHURN_PROCESSES: usize = 1;

/// What the test's clients and servers sent, for the exact assertions.
#[derive(Default)]
struct Sent {
    client: AtomicU64,
    server: AtomicU64,
    connections: AtomicU64,
}

/// The agent's resident set in bytes (`VmRSS` in /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}

/// The agent's own families of a scrape (`nodetap_*`), parsed. With the request
/// families at their limit a scrape is tens of megabytes; the counts asserted here are
/// all in the agent's own families.
fn own_families(text: &str) -> Vec<exposition::Family> {
    let own: String = text
        .lines()
        .filter(|l| {
            l.starts_with("nodetap_")
                || l.starts_with("# HELP nodetap_")
                || l.starts_with("# TYPE nodetap_")
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    exposition::parse(&own).unwrap_or_else(|e| panic!("invalid exposition: {e:?}"))
}

fn value(families: &[exposition::Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition::select(families, name, labels)
        .map(|s| s.value)
        .sum()
}

/// Distinct series of a histogram family in a scrape (its `_count` lines).
fn series_count(text: &str, family: &str) -> usize {
    let prefix = format!("{family}_count{{");
    text.lines().filter(|l| l.starts_with(&prefix)).count()
}

/// The agent's RSS at a steady point, printed with what dominates it; over
/// [`RSS_LIMIT`] it fails the test when `enforce` says so.
fn check_rss(agent: &Agent, point: &str, enforce: bool) -> u64 {
    // Steady: after the agent's periodic return of freed heap (every 10 s,
    // `agent/src/heap.rs`), so a scrape's text just dropped is not counted as held.
    std::thread::sleep(Duration::from_secs(11));
    let pid = agent.process.pid();
    let bytes = rss(pid);
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let mib = bytes as f64 / (1 << 20) as f64;
    eprintln!("agent RSS {point}: {mib:.1} MiB\n{rollup}");
    assert!(
        !enforce || bytes <= RSS_LIMIT,
        "agent RSS {point} is {mib:.1} MiB, over the {} MiB limit\n{rollup}",
        RSS_LIMIT >> 20
    );
    bytes
}

/// What one connload process reported.
fn load_report(line: &str) -> (u64, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("connload printed {line:?}: {e}"));
    let field = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("connload lacks {k}: {v}"))
    };
    (
        field("connections"),
        field("client_sent"),
        field("server_sent"),
    )
}

fn add_report(sent: &Sent, line: &str) {
    let (connections, client, server) = load_report(line);
    sent.connections.fetch_add(connections, Relaxed);
    sent.client.fetch_add(client, Relaxed);
    sent.server.fetch_add(server, Relaxed);
}

fn connload(name: &str, mode: &str, n: usize) -> Command {
    connload_with(name, mode, n, PAYLOAD)
}

fn connload_with(name: &str, mode: &str, n: usize, last: usize) -> Command {
    let mut cmd = Command::new(helper_bin("connload"));
    cmd.args([name, mode, &n.to_string(), &last.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

/// `CONCURRENT` connections open at once, over `LOAD_PROCESSES` connload processes (a
/// process may hold only so many descriptors); they close when the guards drop.
fn open_concurrent(name: &str, sent: &Sent) -> Vec<ChildGuard> {
    let mut holders = Vec::new();
    // One at a time, for the reason there is one churning process.
    for _ in 0..LOAD_PROCESSES {
        let mut holder = ChildGuard::spawn(connload(name, "hold", CONCURRENT / LOAD_PROCESSES));
        let stdout = holder.child.stdout.as_mut().expect("connload stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("connload's report");
        add_report(sent, &line);
        holders.push(holder);
    }
    holders
}

/// Lets the holders close their connections and waits for them to exit.
fn close_concurrent(holders: Vec<ChildGuard>) {
    for mut holder in holders {
        drop(holder.child.stdin.take());
        let code = holder.wait_timeout(Duration::from_secs(60));
        assert_eq!(code, Some(0), "connload hold exited");
    }
}

/// `CHURN` connections opened and closed, over `CHURN_PROCESSES` processes at once.
fn churn(name: &str, sent: &Sent) {
    let children: Vec<_> = (0..CHURN_PROCESSES)
        .map(|_| {
            connload(name, "churn", CHURN / CHURN_PROCESSES)
                .stdin(Stdio::null())
                .spawn()
                .expect("start connload")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().checked("connload churn");
        add_report(sent, &String::from_utf8_lossy(&out.stdout));
    }
}

/// Waits until the agent's connection and byte counts for this process equal what was
/// sent, and asserts them exactly; returns the last scrape.
fn assert_exact_counts(agent: &Agent, name: &str, sent: &Sent, open: u64, what: &str) -> String {
    let connections = sent.connections.load(Relaxed) as f64;
    let client_bytes = sent.client.load(Relaxed) as f64;
    let server_bytes = sent.server.load(Relaxed) as f64;
    let facts = |f: &[exposition::Family]| {
        let n = |metric: &str, labels: &[(&str, &str)]| {
            let mut all = labels.to_vec();
            all.push(("service_name", name));
            value(f, metric, &all)
        };
        [
            (
                "client connections opened",
                n(
                    "nodetap_tcp_connections_opened_total",
                    &[("role", "client")],
                ),
                connections,
            ),
            (
                "server connections opened",
                n(
                    "nodetap_tcp_connections_opened_total",
                    &[("role", "server")],
                ),
                connections,
            ),
            (
                "client connections closed",
                n(
                    "nodetap_tcp_connections_closed_total",
                    &[("role", "client")],
                ),
                connections - open as f64,
            ),
            (
                "server connections closed",
                n(
                    "nodetap_tcp_connections_closed_total",
                    &[("role", "server")],
                ),
                connections - open as f64,
            ),
            (
                "client transmit bytes",
                n(
                    "nodetap_tcp_bytes_total",
                    &[("role", "client"), ("direction", "transmit")],
                ),
                client_bytes,
            ),
            (
                "server receive bytes",
                n(
                    "nodetap_tcp_bytes_total",
                    &[("role", "server"), ("direction", "receive")],
                ),
                client_bytes,
            ),
            (
                "server transmit bytes",
                n(
                    "nodetap_tcp_bytes_total",
                    &[("role", "server"), ("direction", "transmit")],
                ),
                server_bytes,
            ),
            (
                "client receive bytes",
                n(
                    "nodetap_tcp_bytes_total",
                    &[("role", "client"), ("direction", "receive")],
                ),
                server_bytes,
            ),
        ]
    };
    // Records trail the traffic by a drain, and closes by a grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, wrong) = loop {
        let text = agent.scrape();
        let families = own_families(&text);
        let wrong: Vec<String> = facts(&families)
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(what, got, want)| format!("{what}: agent says {got}, truth is {want}"))
            .collect();
        if wrong.is_empty() || Instant::now() >= deadline {
            break (text, wrong);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        wrong.is_empty(),
        "{what}, process {name} (tier {}):\n{}\n{}",
        nodetap_tests::capture_tier(&text),
        wrong.join("\n"),
        nodetap_tests::lines_with(&text, "nodetap_events_lost_total")
    );
    let families = own_families(&text);
    // Records lost to a full ring buffer are not a failure here: this load opens and
    // closes connections as fast as the machine allows, and whether the reader keeps up
    // depends on the CPU it gets beside the load and whatever else runs (a CI run beside
    // other builds lost 30,610 of some 4 million records). The counts above must be exact
    // either way, which is what this checks; the loss is counted, and shown. The reasons
    // that would mean a bug (an unreadable socket, a table of calls in flight that no
    // longer exists) stay at zero.
    let ring_full = value(
        &families,
        "nodetap_events_lost_total",
        &[("reason", "ringbuf_full")],
    );
    if ring_full > 0.0 {
        eprintln!("{what}: {ring_full} records lost to a full ring buffer; counts exact");
    }
    for reason in ["pending_map_full", "socket_unreadable"] {
        assert_eq!(
            value(
                &families,
                "nodetap_events_lost_total",
                &[("reason", reason)]
            ),
            0.0,
            "{what}: events lost ({reason})"
        );
    }
    text
}

/// The load, with the agent's exact counts checked at each step; returns the RSS at
/// the three steady points (series limits reached, connections open, after the churn).
fn scenario(enforce_rss: bool) -> [u64; 3] {
    let _serial = nodetap_tests::serial();
    // Every connection parsed, whatever the agent's CPU use: the point is the memory of
    // parsed state at its limits, and at the default budget (half a core) this load
    // would rightly make new connections counts-only (tests/tests/overload.rs).
    let agent = Agent::start(&["--cpu-budget", "2"]);
    let started = Instant::now();

    // 1. Every request-metric family of HTTP at its series limit.
    let http_name = unique_name("ntmemh");
    let http = Sent::default();
    let out = connload_with(&http_name, "http", HTTP_PORTS, HTTP_STATUSES)
        .stdin(Stdio::null())
        .output()
        .checked("connload http");
    add_report(&http, &String::from_utf8_lossy(&out.stdout));
    let text = assert_exact_counts(&agent, &http_name, &http, 0, "after the HTTP series");
    assert_eq!(
        value(
            &own_families(&text),
            "nodetap_capture_degraded_connections_total",
            &[]
        ),
        0.0,
        "no connection left unparsed for the CPU budget"
    );
    let wanted = HTTP_PORTS * HTTP_STATUSES;
    let families = own_families(&text);
    for family in [
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
    ] {
        // Other processes' HTTP on this machine may take some of the series; at the
        // limit the family holds exactly the limit either way.
        let text = agent.scrape_until(Duration::from_secs(10), |t| {
            series_count(t, family) == SERIES_LIMIT
        });
        assert_eq!(
            series_count(&text, family),
            SERIES_LIMIT,
            "{family}: {wanted} distinct series were offered"
        );
        assert!(
            value(
                &families,
                "nodetap_series_dropped_total",
                &[("family", family)]
            ) > 0.0,
            "{family}: series past the limit are counted as dropped"
        );
    }
    let rss_series = check_rss(&agent, "with the series limits reached", enforce_rss);

    // 2. 50,000 tracked connections open at once (connload processes' traffic).
    let name = unique_name("ntmem");
    let load = Sent::default();
    let holders = open_concurrent(&name, &load);
    let text = assert_exact_counts(
        &agent,
        &name,
        &load,
        CONCURRENT as u64,
        "with 50,000 tracked connections open",
    );
    let tracked = value(&own_families(&text), "nodetap_connections_tracked", &[]);
    assert!(
        tracked >= TRACKED as f64,
        "the agent tracks {tracked} connections while {TRACKED} are open"
    );
    let rss_open = check_rss(&agent, "with 50,000 tracked connections open", enforce_rss);
    close_concurrent(holders);
    assert_exact_counts(&agent, &name, &load, 0, "after those closed");

    // 3. 1,000,000 connections opened and closed.
    churn(&name, &load);
    assert_exact_counts(
        &agent,
        &name,
        &load,
        0,
        "after 1,000,000 connections churned",
    );
    let rss_churn = check_rss(&agent, "after 1,000,000 connections churned", enforce_rss);

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS MiB: series limits reached {:.1}, 50,000 tracked connections open {:.1}, after 1M churn {:.1} ({} load connections, {:?})",
        mib(rss_series),
        mib(rss_open),
        mib(rss_churn),
        load.connections.load(Relaxed),
        started.elapsed()
    );
    [rss_series, rss_open, rss_churn]
}

/// The exact counts hold through the load, and the RSS figures are printed (the
/// benchmark records them).
#[test]
fn counts_stay_exact_with_50k_connections_1m_churn_and_full_series() {
    scenario(false);
}

/// The memory goal itself. See BENCHMARKS.md ("Memory under connection load") for the
/// figures and what dominates them.
#[test]
#[ignore = "fails today: idle 31 MiB, 76 MiB with the HTTP families at their series limit, 102 MiB with 50,000 tracked connections on top; what dominates is in BENCHMARKS.md (memory)"]
fn rss_stays_within_64_mib_with_50k_connections_1m_churn_and_full_series() {
    scenario(true);
}
