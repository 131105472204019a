//! Real redis-server, real clients (a RESP client in this process and redis-benchmark),
//! the real agent: exact operation counts per command and error type, on the client and
//! the server side, and durations checked against the client's own clock.

use std::{process::Command, time::Duration};

use nodetap_tests::{
    metric_value, own_process_name,
    resp::{Reply, RespClient},
    servers::RedisServer,
    Agent, Checked,
};

struct Ops<'a> {
    text: &'a str,
    side: &'a str,
    port: String,
    service: &'a str,
}

impl Ops<'_> {
    fn series(&self, suffix: &str, op: &str, error: &str) -> Option<f64> {
        metric_value(
            self.text,
            &format!("db_{}_operation_duration_seconds_{suffix}", self.side),
            &[
                ("db_system_name", "redis"),
                ("db_operation_name", op),
                ("error_type", error),
                ("server_address", "127.0.0.1"),
                ("server_port", &self.port),
                ("service_name", self.service),
            ],
        )
    }

    fn count(&self, op: &str, error: &str) -> f64 {
        self.series("count", op, error).unwrap_or(0.0)
    }
}

#[test]
fn redis_operations_exact_on_both_sides() {
    let redis = RedisServer::start();
    let agent = Agent::start(&[]);
    let me = own_process_name();
    let mut client = RespClient::connect(redis.port);

    // 300 SETs and 200 GETs one at a time, timed by this client.
    let mut set_time = Duration::ZERO;
    for i in 0..300 {
        let (reply, took) = client.command(&["SET", &format!("key:{i}"), "value"]);
        assert_eq!(reply, Reply::Ok("OK".into()));
        set_time += took;
    }
    for i in 0..200 {
        let (reply, _) = client.command(&["GET", &format!("key:{i}")]);
        assert_eq!(reply, Reply::Bulk(Some(b"value".to_vec())));
    }
    // 10 pipelined batches of 16 GETs, each batch in one write.
    for batch in 0..10 {
        let cmds: Vec<Vec<String>> = (0..16)
            .map(|i| vec!["GET".into(), format!("key:{}", batch * 16 + i)])
            .collect();
        assert_eq!(client.pipeline(&cmds).len(), 16);
    }
    // Errors with known types.
    assert!(
        matches!(client.command(&["INCR", "key:1"]).0, Reply::Error(e) if e.starts_with("ERR"))
    );
    for _ in 0..2 {
        assert!(
            matches!(client.command(&["LPUSH", "key:2", "x"]).0, Reply::Error(e) if e.starts_with("WRONGTYPE"))
        );
    }
    assert!(
        matches!(client.command(&["NOSUCHCOMMAND", "a"]).0, Reply::Error(e) if e.starts_with("ERR"))
    );
    // A value far larger than the copied prefix, and reading it back.
    let big = "v".repeat(300_000);
    let (reply, took) = client.command(&["SET", "big", &big]);
    assert_eq!(reply, Reply::Ok("OK".into()));
    set_time += took;
    let (reply, _) = client.command(&["GET", "big"]);
    assert_eq!(reply, Reply::Bulk(Some(big.into_bytes())));
    drop(client);

    // redis-benchmark pipelining 16 deep: 1600 SETs on one connection.
    Command::new("redis-benchmark")
        .args([
            "-p",
            &redis.port.to_string(),
            "-n",
            "1600",
            "-P",
            "16",
            "-c",
            "1",
            "-t",
            "set",
            "-q",
        ])
        .output()
        .checked("redis-benchmark");

    let port = redis.port.to_string();
    let expected_client = [
        ("SET", "", 301.0),
        ("GET", "", 200.0 + 160.0 + 1.0),
        ("INCR", "ERR", 1.0),
        ("LPUSH", "WRONGTYPE", 2.0),
        ("_OTHER", "ERR", 1.0),
    ];
    let text = agent.scrape_until(Duration::from_secs(15), |text| {
        let server = Ops {
            text,
            side: "server",
            port: port.clone(),
            service: "redis-server",
        };
        let bench = Ops {
            text,
            side: "client",
            port: port.clone(),
            service: "redis-benchmark",
        };
        server.count("SET", "") == 301.0 + 1600.0 && bench.count("SET", "") == 1600.0
    });
    let mine = Ops {
        text: &text,
        side: "client",
        port: port.clone(),
        service: &me,
    };
    let server = Ops {
        text: &text,
        side: "server",
        port: port.clone(),
        service: "redis-server",
    };
    let bench = Ops {
        text: &text,
        side: "client",
        port: port.clone(),
        service: "redis-benchmark",
    };
    let mut wrong = Vec::new();
    for (op, error, want) in expected_client {
        let got = mine.count(op, error);
        if got != want {
            wrong.push(format!(
                "client {op} error_type={error:?}: agent {got}, sent {want}"
            ));
        }
    }
    for (op, error, want) in [
        ("SET", "", 301.0 + 1600.0),
        ("GET", "", 361.0),
        ("INCR", "ERR", 1.0),
        ("LPUSH", "WRONGTYPE", 2.0),
        ("_OTHER", "ERR", 1.0),
    ] {
        let got = server.count(op, error);
        if got != want {
            wrong.push(format!(
                "server {op} error_type={error:?}: agent {got}, sent {want}"
            ));
        }
    }
    if bench.count("SET", "") != 1600.0 {
        wrong.push(format!(
            "redis-benchmark SET: agent {}, sent 1600",
            bench.count("SET", "")
        ));
    }
    assert!(
        wrong.is_empty(),
        "{}\n--- scrape (db series) ---\n{}",
        wrong.join("\n"),
        text.lines()
            .filter(|l| l.contains("_count{"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    assert_eq!(
        metric_value(
            &text,
            "nodetap_protocol_parse_errors_total",
            &[("protocol", "redis")]
        )
        .unwrap_or(0.0),
        0.0,
        "no framing lost"
    );

    // Durations: the agent's window for a command (write entry to read exit) lies inside
    // this client's (before write_all to after the reply was parsed), on the same
    // monotonic clock, so its sum can only be smaller. It is at least half: the client's
    // own time outside the two syscalls is microseconds against a loopback round trip.
    let agent_sum = mine.series("sum", "SET", "").expect("SET duration sum");
    let measured = set_time.as_secs_f64();
    // 1 µs of slack for the float sums only.
    assert!(
        agent_sum <= measured + 1e-6,
        "agent's SET durations ({agent_sum} s) exceed the client's own ({measured} s)"
    );
    assert!(
        agent_sum >= 0.5 * set_time.as_secs_f64(),
        "agent's SET durations ({agent_sum} s) are under half the client's ({measured} s)"
    );
}
