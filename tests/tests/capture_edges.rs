//! Capture edge cases against the real agent, each exact: MSG_PEEK, connections that end
//! in RST followed by new ones (socket reuse), sendmmsg/recvmmsg of 32 messages, a
//! bystander doing only pipe and file I/O, and a forced ring-buffer overflow.
//!
//! The traffic comes from `edgegen` (tests/src/bin), which renames itself so its series
//! are its own, and reports what it really moved. Every agent sees every socket on the
//! machine, so these tests run one at a time (`serial`).

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use nodetap_tests::{
    capture_tier, exposition, helper_bin, lines_with, metric_sum, serial, servers::RedisServer,
    tcp_bytes, unique_name, Agent, Checked,
};
use serde_json::Value;

fn edgegen(name: &str, args: &[&str]) -> Value {
    let out = Command::new(helper_bin("edgegen"))
        .arg(name)
        .args(args)
        .output()
        .checked(&format!("edgegen {args:?}"));
    serde_json::from_slice(&out.stdout).expect("edgegen prints JSON")
}

fn num(report: &Value, side: &str, field: &str) -> f64 {
    report[side][field]
        .as_f64()
        .unwrap_or_else(|| panic!("edgegen report lacks {side}.{field}: {report}"))
}

/// `nodetap_tcp_bytes_total` of process `name` by (direction, role).
fn tcp_bytes_by_side(text: &str, name: &str) -> [(&'static str, f64); 4] {
    let b = |direction, role| tcp_bytes(text, name, direction, role);
    [
        ("client transmit", b("transmit", "client")),
        ("client receive", b("receive", "client")),
        ("server transmit", b("transmit", "server")),
        ("server receive", b("receive", "server")),
    ]
}

/// What edgegen moved, in the order of [`tcp_bytes_by_side`].
fn moved(report: &Value) -> [f64; 4] {
    [
        num(report, "client", "sent"),
        num(report, "client", "received"),
        num(report, "server", "sent"),
        num(report, "server", "received"),
    ]
}

/// Waits up to `wait` for the agent's byte counts of `name` to equal what it moved;
/// returns the last scrape and one line per difference.
fn bytes_differences(
    agent: &Agent,
    name: &str,
    report: &Value,
    wait: Duration,
) -> (String, Vec<String>) {
    let want = moved(report);
    let text = agent.scrape_until(wait, |text| {
        tcp_bytes_by_side(text, name)
            .iter()
            .zip(want)
            .all(|((_, got), want)| *got == want)
    });
    let wrong = tcp_bytes_by_side(&text, name)
        .iter()
        .zip(want)
        .filter(|((_, got), want)| got != want)
        .map(|((what, got), want)| {
            format!(
                "{what} bytes: agent {got}, moved {want} (off by {})",
                got - want
            )
        })
        .collect();
    (text, wrong)
}

/// Sum of the samples named `name` whose labels include `filter`, keyed by the values
/// of `keys`: every series there is, so a wrong label value shows as its own key.
fn series_by(
    text: &str,
    name: &str,
    filter: &[(&str, &str)],
    keys: &[&str],
) -> BTreeMap<Vec<String>, f64> {
    let families = exposition::parse(text).unwrap_or_else(|e| panic!("invalid exposition: {e:?}"));
    let mut out = BTreeMap::new();
    for s in exposition::select(&families, name, filter) {
        let key = keys
            .iter()
            .map(|k| s.labels.get(*k).cloned().unwrap_or_default())
            .collect();
        *out.entry(key).or_default() += s.value;
    }
    out
}

fn map_differences(
    what: &str,
    got: &BTreeMap<Vec<String>, f64>,
    want: &BTreeMap<Vec<String>, f64>,
) -> Vec<String> {
    let mut keys: Vec<&Vec<String>> = got.keys().chain(want.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut diffs: Vec<(f64, f64, String)> = keys
        .into_iter()
        .filter_map(|k| {
            let (g, w) = (
                got.get(k).copied().unwrap_or(0.0),
                want.get(k).copied().unwrap_or(0.0),
            );
            (g != w).then(|| (g, w, format!("{what} {k:?}: agent {g}, truth {w}")))
        })
        .collect();
    // The largest differences first; a long tail (a wrong label value per connection)
    // is summarised.
    diffs.sort_by(|a, b| (b.0 - b.1).abs().total_cmp(&(a.0 - a.1).abs()));
    const SHOWN: usize = 12;
    let mut lines: Vec<String> = diffs.iter().take(SHOWN).map(|d| d.2.clone()).collect();
    if diffs.len() > SHOWN {
        let rest = &diffs[SHOWN..];
        lines.push(format!(
            "{what}: {} more series differ (agent {} in them, truth {})",
            rest.len(),
            rest.iter().map(|d| d.0).sum::<f64>(),
            rest.iter().map(|d| d.1).sum::<f64>()
        ));
    }
    lines
}

/// Connections opened and closed by process `name`, by role, against `want` (the same
/// for both).
fn connection_differences(
    text: &str,
    name: &str,
    want: &BTreeMap<Vec<String>, f64>,
) -> Vec<String> {
    ["opened", "closed"]
        .iter()
        .flat_map(|which| {
            map_differences(
                &format!("connections {which} by role"),
                &series_by(
                    text,
                    &format!("nodetap_tcp_connections_{which}_total"),
                    &[("service_name", name)],
                    &["role"],
                ),
                want,
            )
        })
        .collect()
}

fn key(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[test]
fn msg_peek_then_read_counts_bytes_and_requests_once() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let name = unique_name("ntpeek");
    let n = 200;
    let report = edgegen(&name, &["peek", &n.to_string()]);
    let port = report["server_port"].to_string();
    let (text, mut wrong) = bytes_differences(&agent, &name, &report, Duration::from_secs(10));
    let keys = ["server_port", "db_operation_name", "error_type"];
    let want: BTreeMap<_, _> = [(key(&[&port, "GET", ""]), n as f64)].into();
    for side in ["client", "server"] {
        let got = series_by(
            &text,
            &format!("db_{side}_operation_duration_seconds_count"),
            &[("db_system_name", "redis"), ("service_name", &name)],
            &keys,
        );
        wrong.extend(map_differences(&format!("{side} ops"), &got, &want));
    }
    assert!(
        wrong.is_empty(),
        "capture tier {}: {n} GETs, each message peeked (MSG_PEEK) then read, by {name} \
         ({report}):\n{}\n--- scrape (this process) ---\n{}",
        capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, &name)
    );
}

#[test]
fn connections_ending_in_rst_then_new_ones_keep_their_endpoints_and_roles() {
    let _serial = serial();
    let redis = RedisServer::start();
    let agent = Agent::start(&[]);
    let name = unique_name("ntrst");
    let n = 1000;
    let redis_port = redis.port.to_string();
    let report = edgegen(&name, &["rst", &redis_port, &n.to_string()]);
    let fake_port = report["fake_port"].to_string();
    let n = n as f64;

    let keys = ["server_port", "db_operation_name", "error_type"];
    let client_want: BTreeMap<_, _> = [
        (key(&[&redis_port, "GET", ""]), n),
        (key(&[&fake_port, "GET", ""]), n),
    ]
    .into();
    let server_want: BTreeMap<_, _> = [(key(&[&fake_port, "GET", ""]), n)].into();
    let redis_want: BTreeMap<_, _> = [(key(&[&redis_port, "GET", ""]), n)].into();
    let conns_want: BTreeMap<_, _> = [(key(&["client"]), 2.0 * n), (key(&["server"]), n)].into();
    let check = |text: &str| -> Vec<String> {
        let ops = |side: &str, service: &str, port: Option<&str>| {
            let mut filter = vec![("db_system_name", "redis"), ("service_name", service)];
            if let Some(p) = port {
                filter.push(("server_port", p));
            }
            series_by(
                text,
                &format!("db_{side}_operation_duration_seconds_count"),
                &filter,
                &keys,
            )
        };
        let mut wrong = map_differences("client ops", &ops("client", &name, None), &client_want);
        wrong.extend(map_differences(
            "server ops (in-process server)",
            &ops("server", &name, None),
            &server_want,
        ));
        wrong.extend(map_differences(
            "server ops (redis-server)",
            &ops("server", "redis-server", Some(&redis_port)),
            &redis_want,
        ));
        wrong.extend(connection_differences(text, &name, &conns_want));
        wrong
    };
    let text = agent.scrape_until(Duration::from_secs(15), |t| check(t).is_empty());
    let mut wrong = check(&text);
    let (text, bytes_wrong) = bytes_differences(&agent, &name, &report, Duration::ZERO);
    wrong.extend(bytes_wrong);
    assert!(
        wrong.is_empty(),
        "capture tier {}: {name} made {n} GETs to redis-server :{redis_port} on connections it \
         reset (SO_LINGER 0), each followed by a GET to its own server :{fake_port} that reset \
         the connection while {name} still held it ({report}):\n{}\n--- scrape (this process) ---\n{}",
        capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, &name)
    );
}

/// A listener that takes the address of a closed connection's socket is not that
/// connection: its close sends nothing. (The syscall tier keeps a connection's state by
/// socket address after its close, for calls that return after it; a listener's close
/// once sent that state's close again, and the agent counted a connection it had
/// forgotten a second time.)
#[test]
fn listeners_at_closed_connections_addresses_are_not_connections() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let name = unique_name("ntlsn");
    // The churn closes more connections (two ends each) than the agent remembers as
    // closed (65,536), as a long-running node does between a socket's close and the
    // close of a listener at its address.
    let (conns, churn, listeners) = (1_000, 40_000, 100);
    let report = edgegen(
        &name,
        &[
            "relisten",
            &conns.to_string(),
            &churn.to_string(),
            &listeners.to_string(),
        ],
    );
    let made = (conns + churn) as f64;
    let want: BTreeMap<_, _> = [(key(&["client"]), made), (key(&["server"]), made)].into();
    let check = |text: &str| connection_differences(text, &name, &want);
    agent.scrape_until(Duration::from_secs(15), |t| check(t).is_empty());
    // The listeners closed after the connections: what they would add comes later.
    std::thread::sleep(Duration::from_secs(1));
    let (text, mut wrong) = bytes_differences(&agent, &name, &report, Duration::ZERO);
    wrong.extend(check(&text));
    assert!(
        wrong.is_empty(),
        "capture tier {}: {name} made {conns} connections, reset by the client, then opened \
         {listeners} listeners, made {churn} more connections one after another and closed \
         the listeners ({report}):\n{}\n--- scrape (this process) ---\n{}",
        capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, &name)
    );
}

#[test]
fn sendmmsg_recvmmsg_of_32_messages_exact_bytes() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let name = unique_name("ntmmsg");
    let rounds = 20;
    let report = edgegen(&name, &["mmsg", &rounds.to_string()]);
    for side in ["client", "server"] {
        assert_eq!(
            report[format!("{side}_sendmmsg_of_32")].as_u64(),
            Some(rounds),
            "every sendmmsg should send its 32 messages in full: {report}"
        );
    }
    let (text, wrong) = bytes_differences(&agent, &name, &report, Duration::from_secs(10));
    assert!(
        wrong.is_empty(),
        "capture tier {}: {name}, {rounds} rounds of sendmmsg of 32 messages answered by \
         recvmmsg into 32 buffers, each way ({report}):\n{}\n--- scrape (this process) ---\n{}",
        capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, &name)
    );
}

fn events_seen(agent: &Agent) -> f64 {
    metric_sum(&agent.scrape(), "nodetap_events_total", &[])
}

#[test]
fn bystander_doing_pipe_and_file_io_produces_no_events_or_series() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let name = unique_name("ntbys");
    let ops = 200_000;
    // Let start-up traffic (the harness's readiness probes) drain.
    std::thread::sleep(Duration::from_secs(1));

    let before = events_seen(&agent);
    let start = Instant::now();
    let report = edgegen(&name, &["bystander", &ops.to_string()]);
    let took = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let during = events_seen(&agent) - before;

    // The same length of time without the bystander: what this machine's other TCP
    // traffic and the scrapes themselves cause.
    let before = events_seen(&agent);
    std::thread::sleep(took + Duration::from_secs(1));
    let idle = events_seen(&agent) - before;

    let text = agent.scrape();
    let own_series = lines_with(&text, &format!("service_name=\"{name}\""));
    let syscalls = 2 * ops + ops / 5;
    assert!(
        own_series.is_empty() && during <= 2.0 * idle + 1000.0,
        "capture tier {}: {name} did {syscalls} pipe and file syscalls and no networking \
         ({report}) in {took:?}:\n\
         events during it: {during}; during as long a window without it: {idle} \
         (allowed: 2 x idle + 1000)\n\
         series with its name (should be none):\n{own_series}",
        capture_tier(&text),
    );
}

#[test]
fn ring_buffer_overflow_loses_payload_not_bytes() {
    let _serial = serial();
    // The smallest ring the agent accepts (README), under load from 8 connections, with
    // the agent stopped while the load runs: the ring must overflow however fast the
    // agent drains on this machine (a drain fast enough kept up with the load alone).
    let mut agent = Agent::start(&["--ringbuf-bytes", "65536"]);
    let name = unique_name("ntflood");
    let pid = agent.process.child.id() as libc::pid_t;
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGSTOP) },
        0,
        "SIGSTOP the agent"
    );
    let report = edgegen(&name, &["load", "8", "1000"]);
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGCONT) },
        0,
        "SIGCONT the agent"
    );
    let (text, mut wrong) = bytes_differences(&agent, &name, &report, Duration::from_secs(20));
    let lost = metric_sum(
        &text,
        "nodetap_events_lost_total",
        &[("reason", "ringbuf_full")],
    );
    if lost <= 0.0 {
        wrong.push(format!(
            "nodetap_events_lost_total{{reason=\"ringbuf_full\"}} is {lost}: the load did not \
             overflow the ring, so this test proves nothing (make the load heavier)"
        ));
    }
    if let Ok(Some(status)) = agent.process.child.try_wait() {
        wrong.push(format!("the agent exited: {status}"));
    }
    assert!(
        wrong.is_empty(),
        "capture tier {}: {name} moved {report} over 8 connections of 16-write PING bursts \
         with a 64 KiB ring buffer and the agent stopped meanwhile:\n{}\n--- events lost ---\n{}\n--- scrape (this process) ---\n{}",
        capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, "nodetap_events_lost_total"),
        lines_with(&text, &name)
    );
}
