//! The CPU budget against the real agent and a real redis-server: over the budget the
//! agent counts new connections without parsing them, says so in its metrics, and keeps
//! the byte counts exact; at the default budget a light load is parsed as usual.

use std::{process::Command, time::Duration};

use nodetap_tests::{
    helper_bin, metric_sum, metric_value, servers::RedisServer, unique_name, Agent, Checked,
};
use serde_json::Value;

/// Connections the Redis load makes, one after another, each with 10 SETs.
const CONNECTIONS: usize = 50;
const SETS: f64 = 10.0 * CONNECTIONS as f64;

/// What connload did: (client bytes sent, server bytes sent).
fn redis_load(name: &str, port: u16) -> (f64, f64) {
    let out = Command::new(helper_bin("connload"))
        .args([name, "redis", &port.to_string(), &CONNECTIONS.to_string()])
        .output()
        .checked("connload redis");
    let report: Value = serde_json::from_slice(&out.stdout).expect("connload prints JSON");
    let field = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("connload lacks {k}: {report}"))
    };
    (field("client_sent"), field("server_sent"))
}

fn bytes(text: &str, name: &str, direction: &str) -> Option<f64> {
    metric_value(
        text,
        "nodetap_tcp_bytes_total",
        &[
            ("direction", direction),
            ("role", "client"),
            ("service_name", name),
        ],
    )
}

/// SETs the agent recorded for `name` as a Redis client.
fn sets(text: &str, name: &str) -> f64 {
    metric_sum(
        text,
        "db_client_operation_duration_seconds_count",
        &[("db_operation_name", "SET"), ("service_name", name)],
    )
}

/// Waits until the client's bytes are what it sent and received, and asserts them.
fn assert_bytes_exact(agent: &Agent, name: &str, sent: (f64, f64)) -> String {
    let text = agent.scrape_until(Duration::from_secs(10), |t| {
        bytes(t, name, "transmit") == Some(sent.0) && bytes(t, name, "receive") == Some(sent.1)
    });
    assert_eq!(
        bytes(&text, name, "transmit"),
        Some(sent.0),
        "client transmit bytes of {name} (tier {})",
        nodetap_tests::capture_tier(&text)
    );
    assert_eq!(
        bytes(&text, name, "receive"),
        Some(sent.1),
        "client receive bytes of {name}"
    );
    text
}

#[test]
fn over_a_tiny_cpu_budget_new_connections_are_counted_not_parsed() {
    let _serial = nodetap_tests::serial();
    let redis = RedisServer::start();
    // A millionth of a core: the agent is over it in every window it does anything.
    let agent = Agent::start(&["--cpu-budget", "0.000001"]);
    let text = agent.scrape_until(Duration::from_secs(10), |t| {
        metric_value(t, "nodetap_capture_degraded", &[]) == Some(1.0)
    });
    assert_eq!(
        metric_value(&text, "nodetap_capture_degraded", &[]),
        Some(1.0),
        "degraded over the budget"
    );
    let before = metric_value(&text, "nodetap_capture_degraded_connections_total", &[])
        .expect("nodetap_capture_degraded_connections_total is exposed");

    let name = unique_name("ntovl");
    let sent = redis_load(&name, redis.port);
    let text = assert_bytes_exact(&agent, &name, sent);
    let opened = metric_value(
        &text,
        "nodetap_tcp_connections_opened_total",
        &[("role", "client"), ("service_name", &name)],
    );
    assert_eq!(
        opened,
        Some(CONNECTIONS as f64),
        "client connections opened"
    );
    // Each connection has two ends on this node (the client's and redis-server's), both
    // new while degraded; other processes' connections may add to the count.
    let degraded = metric_value(&text, "nodetap_capture_degraded_connections_total", &[])
        .expect("degraded connections")
        - before;
    assert!(
        degraded >= 2.0 * CONNECTIONS as f64,
        "{degraded} connections counted as degraded, {CONNECTIONS} opened with both ends here"
    );
    assert_eq!(
        sets(&text, &name),
        0.0,
        "no SET of a counts-only connection reaches the request metrics"
    );
}

#[test]
fn at_the_default_budget_a_light_load_is_parsed() {
    let _serial = nodetap_tests::serial();
    let redis = RedisServer::start();
    let agent = Agent::start(&[]);
    // Start-up (loading programs, reading /proc) may take more than the budget; the
    // light load starts once the agent is idle.
    let text = agent.scrape_until(Duration::from_secs(20), |t| {
        metric_value(t, "nodetap_capture_degraded", &[]) == Some(0.0)
    });
    assert_eq!(
        metric_value(&text, "nodetap_capture_degraded", &[]),
        Some(0.0),
        "an idle agent is under the default budget"
    );
    let name = unique_name("ntlite");
    let sent = redis_load(&name, redis.port);
    assert_bytes_exact(&agent, &name, sent);
    let text = agent.scrape_until(Duration::from_secs(10), |t| sets(t, &name) == SETS);
    assert_eq!(sets(&text, &name), SETS, "every SET in the request metrics");
    assert_eq!(
        metric_value(&text, "nodetap_capture_degraded", &[]),
        Some(0.0),
        "not degraded at the default budget under a light load"
    );
}
