//! The real agent against real TCP traffic: exact bytes and calls per process and role,
//! for every data syscall family, over IPv4 and IPv6.

use std::{process::Command, time::Duration};

use nodetap_tests::{helper_bin, metric_value, unique_name, Agent, Checked};
use serde_json::Value;

/// What tcpgen reported doing.
struct Transfer {
    name: String,
    report: Value,
}

impl Transfer {
    fn get(&self, side: &str, field: &str) -> f64 {
        self.report[side][field]
            .as_f64()
            .unwrap_or_else(|| panic!("tcpgen report lacks {side}.{field}: {}", self.report))
    }
}

fn run_tcpgen(
    prefix: &str,
    family: &str,
    api: &str,
    calls: usize,
    size: usize,
    reply: usize,
) -> Transfer {
    let name = unique_name(prefix);
    let out = Command::new(helper_bin("tcpgen"))
        .args([
            &name,
            family,
            api,
            &calls.to_string(),
            &size.to_string(),
            &reply.to_string(),
        ])
        .output()
        .checked("run tcpgen");
    let report: Value = serde_json::from_slice(&out.stdout).expect("tcpgen prints JSON");
    Transfer { name, report }
}

fn bytes(text: &str, t: &Transfer, direction: &str, role: &str) -> Option<f64> {
    metric_value(
        text,
        "nodetap_tcp_bytes_total",
        &[
            ("direction", direction),
            ("role", role),
            ("service_name", &t.name),
        ],
    )
}

fn calls(text: &str, t: &Transfer, direction: &str, role: &str, syscall: &str) -> Option<f64> {
    metric_value(
        text,
        "nodetap_tcp_syscalls_total",
        &[
            ("direction", direction),
            ("role", role),
            ("syscall", syscall),
            ("service_name", &t.name),
        ],
    )
}

fn connections(text: &str, t: &Transfer, which: &str, role: &str) -> Option<f64> {
    metric_value(
        text,
        &format!("nodetap_tcp_connections_{which}_total"),
        &[("role", role), ("service_name", &t.name)],
    )
}

/// Asserts every count the transfer makes knowable, exactly.
fn assert_exact(agent: &Agent, t: &Transfer, send_syscall: &str, recv_syscall: &str) {
    let request = t.get("client", "sent");
    let reply = t.get("server", "sent");
    let text = agent.scrape_until(Duration::from_secs(10), |text| {
        connections(text, t, "closed", "server") == Some(1.0)
            && connections(text, t, "closed", "client") == Some(1.0)
            && bytes(text, t, "receive", "client") == Some(reply)
            && bytes(text, t, "receive", "server") == Some(request)
    });
    let expect = [
        (
            "client transmit bytes",
            bytes(&text, t, "transmit", "client"),
            request,
        ),
        (
            "server receive bytes",
            bytes(&text, t, "receive", "server"),
            request,
        ),
        (
            "server transmit bytes",
            bytes(&text, t, "transmit", "server"),
            reply,
        ),
        (
            "client receive bytes",
            bytes(&text, t, "receive", "client"),
            reply,
        ),
        (
            "client send calls",
            calls(&text, t, "transmit", "client", send_syscall),
            t.get("client", "send_calls"),
        ),
        (
            "server send calls",
            calls(&text, t, "transmit", "server", send_syscall),
            t.get("server", "send_calls"),
        ),
        (
            "client receive calls",
            calls(&text, t, "receive", "client", recv_syscall),
            t.get("client", "recv_calls"),
        ),
        (
            "server receive calls",
            calls(&text, t, "receive", "server", recv_syscall),
            t.get("server", "recv_calls"),
        ),
        (
            "client connections opened",
            connections(&text, t, "opened", "client"),
            1.0,
        ),
        (
            "server connections opened",
            connections(&text, t, "opened", "server"),
            1.0,
        ),
        (
            "client connections closed",
            connections(&text, t, "closed", "client"),
            1.0,
        ),
        (
            "server connections closed",
            connections(&text, t, "closed", "server"),
            1.0,
        ),
    ];
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(_, got, want)| *got != Some(*want))
        .map(|(what, got, want)| format!("{what}: agent says {got:?}, truth is {want}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "process {} ({}):\n{}\n--- scrape (this process) ---\n{}",
        t.name,
        t.report,
        wrong.join("\n"),
        text.lines()
            .filter(|l| l.contains(&t.name))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for reason in ["ringbuf_full", "pending_map_full", "socket_unreadable"] {
        assert_eq!(
            metric_value(&text, "nodetap_events_lost_total", &[("reason", reason)]),
            Some(0.0),
            "events lost ({reason})"
        );
    }
}

#[test]
fn read_write_ipv4_exact_bytes_and_calls() {
    let agent = Agent::start(&[]);
    let t = run_tcpgen("ntrw", "v4", "rw", 1000, 100, 300_000);
    assert_exact(&agent, &t, "write", "read");
}

#[test]
fn send_recv_ipv6_exact_bytes_and_calls() {
    let agent = Agent::start(&[]);
    let t = run_tcpgen("ntsr6", "v6", "sendrecv", 500, 1_000, 1_000_000);
    assert_exact(&agent, &t, "sendto", "recvfrom");
}

#[test]
fn readv_writev_counted() {
    let agent = Agent::start(&[]);
    let t = run_tcpgen("ntvec", "v4", "vectored", 300, 777, 123_457);
    assert_exact(&agent, &t, "writev", "readv");
}

#[test]
fn sendmsg_recvmsg_counted_ipv6() {
    let agent = Agent::start(&[]);
    let t = run_tcpgen("ntmsg6", "v6", "msg", 250, 4_000, 2_000_001);
    assert_exact(&agent, &t, "sendmsg", "recvmsg");
}

/// Writes far larger than the per-call copy limit count in full: byte counts come from
/// the kernel's counters, never from what was copied.
#[test]
fn large_writes_count_in_full_with_the_smallest_copy_limit() {
    let agent = Agent::start(&["--capture-bytes", "65536"]);
    let t = run_tcpgen("ntbig", "v4", "rw", 20, 1_000_000, 5_000_000);
    assert_exact(&agent, &t, "write", "read");
}
