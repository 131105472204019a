//! Metrics over OTLP: the real agent pushes the families `/metrics` serves to the
//! stand-in receiver (tests/peers/otlp_receiver.py, decoding with the official bindings)
//! over OTLP/HTTP and OTLP/gRPC. The truth is the number of Redis commands the test sent:
//! the pushed histogram counts equal it and equal what `/metrics` says; with delta
//! temporality the pushed differences sum to it.

use std::time::{Duration, Instant};

use nodetap_tests::{
    metric_sum,
    otlp::{OtlpReceiver, Transport},
    resp::{Reply, RespClient},
    serial,
    servers::RedisServer,
    Agent,
};
use serde_json::Value;

const DURATION: [&str; 2] = [
    "db_client_operation_duration_seconds",
    "db_server_operation_duration_seconds",
];

fn set(client: &mut RespClient, n: usize, tag: &str) {
    for i in 0..n {
        let (reply, _) = client.command(&["SET", &format!("{tag}:{i}"), "v"]);
        assert_eq!(reply, Reply::Ok("OK".into()));
    }
}

/// The pushed points of `name` whose attributes include every pair of `labels`.
fn points<'a>(all: &'a [Value], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Value> {
    all.iter()
        .filter(|p| p["name"] == name)
        .filter(|p| labels.iter().all(|(k, v)| p["attributes"][*k] == *v))
        .collect()
}

/// Waits until `/metrics` counts `n` SETs to the port on both sides.
fn scrape_counting(agent: &Agent, port: &str, n: usize) -> String {
    let labels = [("server_port", port), ("db_operation_name", "SET")];
    let text = agent.scrape_until(Duration::from_secs(30), |t| {
        DURATION
            .iter()
            .all(|f| metric_sum(t, &format!("{f}_count"), &labels) == n as f64)
    });
    for f in DURATION {
        assert_eq!(
            metric_sum(&text, &format!("{f}_count"), &labels),
            n as f64,
            "{f} on /metrics (tier {})",
            agent.tier()
        );
    }
    text
}

/// `args` end with the endpoint flag; `path` follows the receiver's address.
fn cumulative_push_equals_the_scrape(transport: Transport, args: &[&str], path: &str) {
    let _serial = serial();
    let receiver = OtlpReceiver::start(transport);
    let redis = RedisServer::start();
    let endpoint = format!("{}{path}", receiver.endpoint());
    let mut all_args = args.to_vec();
    all_args.extend_from_slice(&[&endpoint, "--metric-export-interval", "500"]);
    let agent = Agent::start(&all_args);
    let port = redis.port.to_string();
    let labels = [("server_port", port.as_str()), ("db_operation_name", "SET")];
    let mut client = RespClient::connect(redis.port);
    const N: usize = 40;
    set(&mut client, N, "cumulative");
    let text = scrape_counting(&agent, &port, N);

    for family in DURATION {
        // The newest push that has seen all N (pushes come every 500 ms).
        let deadline = Instant::now() + Duration::from_secs(30);
        let point = loop {
            let all = receiver.metric_points();
            let latest = points(&all, family, &labels).last().cloned().cloned();
            match latest {
                Some(p) if p["count"] == N => break p,
                _ => assert!(
                    Instant::now() < deadline,
                    "no push of {family} counting {N}; latest {latest:?}; agent:\n{}",
                    agent.output()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(point["kind"], "histogram");
        assert_eq!(point["temporality"], 2, "cumulative");
        assert_eq!(point["unit"], "s");
        // The same double; JSON's decimal text on the way may move it by an ulp.
        let (pushed, scraped) = (
            point["sum"].as_f64().unwrap(),
            metric_sum(&text, &format!("{family}_sum"), &labels),
        );
        assert!(
            (pushed - scraped).abs() <= scraped * 1e-12,
            "{family} sum pushed {pushed}, scraped {scraped}"
        );
        // Buckets: per bucket in OTLP, cumulative on /metrics; the same bounds.
        let bounds: Vec<f64> = point["explicit_bounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_f64().unwrap())
            .collect();
        let counts: Vec<u64> = point["bucket_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(counts.len(), bounds.len() + 1, "{point}");
        assert_eq!(counts.iter().sum::<u64>(), N as u64);
        let mut below = 0;
        for (i, bound) in bounds.iter().enumerate() {
            below += counts[i];
            // As the exposition writes bounds: whole numbers with ".0".
            let le = if bound.fract() == 0.0 {
                format!("{bound:.1}")
            } else {
                format!("{bound}")
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            assert_eq!(
                below as f64,
                metric_sum(&text, &format!("{family}_bucket"), &with_le),
                "{family} bucket le={le}"
            );
        }
        assert_eq!(point["resource"]["service.name"], "nodetap");
        assert!(point["resource"]["host.name"].is_string(), "{point}");
    }
    // A counter: the connections the parsers recognised as Redis, as /metrics says it.
    let scraped = metric_sum(
        &agent.scrape(),
        "nodetap_protocol_connections_total",
        &[("protocol", "redis")],
    );
    assert!(scraped >= 1.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = receiver.metric_points();
        let latest = points(
            &all,
            "nodetap_protocol_connections_total",
            &[("protocol", "redis")],
        )
        .last()
        .cloned()
        .cloned();
        if let Some(p) = &latest {
            assert_eq!(
                (&p["kind"], &p["monotonic"]),
                (&Value::from("sum"), &Value::from(true))
            );
            if p["value"].as_f64() == Some(scraped) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodetap_protocol_connections_total pushed {latest:?}, scraped {scraped}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pushed_cumulative_metrics_equal_the_scrape_over_http() {
    // The metrics endpoint alone, used as given: metrics pushed, spans stay off.
    cumulative_push_equals_the_scrape(Transport::Http, &["--otlp-metrics-endpoint"], "/v1/metrics");
}

#[test]
fn pushed_cumulative_metrics_equal_the_scrape_over_grpc() {
    // The generic endpoint: spans and metrics both, on the one gRPC connection target.
    cumulative_push_equals_the_scrape(
        Transport::Grpc,
        &["--otlp-protocol", "grpc", "--otlp-endpoint"],
        "",
    );
}

#[test]
fn delta_pushes_sum_to_the_commands_sent() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let redis = RedisServer::start();
    let endpoint = format!("{}/v1/metrics", receiver.endpoint());
    let agent = Agent::start(&[
        "--otlp-metrics-endpoint",
        &endpoint,
        "--metric-export-interval",
        "300",
        "--otlp-metrics-temporality",
        "delta",
    ]);
    let port = redis.port.to_string();
    let labels = [("server_port", port.as_str()), ("db_operation_name", "SET")];
    let mut client = RespClient::connect(redis.port);
    let sum_of = |family: &str| -> (u64, usize) {
        let all = receiver.metric_points();
        let pts = points(&all, family, &labels);
        (
            pts.iter().map(|p| p["count"].as_u64().unwrap()).sum(),
            pts.len(),
        )
    };
    let wait_sum = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        for family in DURATION {
            loop {
                let (sum, _) = sum_of(family);
                assert!(
                    sum <= n,
                    "{family}: pushed deltas sum to {sum}, more than {n}"
                );
                if sum == n {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{family}: pushed deltas sum to {sum}, not {n}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // Two rounds, each seen in a push before the next: at least two non-zero deltas.
    set(&mut client, 25, "first");
    wait_sum(25);
    set(&mut client, 15, "second");
    wait_sum(40);
    scrape_counting(&agent, &port, 40);
    // Later pushes add nothing: wait for three more of them.
    let (_, seen) = sum_of(DURATION[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sum_of(DURATION[0]).1 < seen + 3 {
        assert!(Instant::now() < deadline, "no more pushes");
        std::thread::sleep(Duration::from_millis(100));
    }
    for family in DURATION {
        let all = receiver.metric_points();
        let pts = points(&all, family, &labels);
        let counts: Vec<u64> = pts.iter().map(|p| p["count"].as_u64().unwrap()).collect();
        assert_eq!(counts.iter().sum::<u64>(), 40, "{family} deltas {counts:?}");
        assert!(
            counts.iter().filter(|c| **c > 0).count() >= 2,
            "{family} deltas {counts:?}"
        );
        for p in &pts {
            assert_eq!(p["temporality"], 1, "delta");
            let buckets: u64 = p["bucket_counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .sum();
            assert_eq!(buckets, p["count"].as_u64().unwrap(), "{p}");
        }
        // Each interval starts where the previous one ended.
        for pair in pts.windows(2) {
            assert_eq!(pair[1]["start"], pair[0]["time"], "{family} intervals");
        }
    }
    assert!(
        receiver.spans().is_empty(),
        "spans are off without a traces endpoint"
    );
}

/// SIGTERM right after the last request: the agent reads what the rings still hold,
/// exports every span and pushes its metrics a last time before it exits. Neither the
/// batch delay nor the push interval (a minute each) comes due within the test: what
/// arrives, the shutdown sent.
#[test]
fn sigterm_right_after_traffic_exports_every_span_and_the_last_metrics() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let redis = RedisServer::start();
    let endpoint = receiver.endpoint();
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--traces-sampler",
        "always_on",
        "--spans-batch-delay",
        "60000",
        "--metric-export-interval",
        "60000",
    ]);
    let port = redis.port.to_string();
    let mut client = RespClient::connect(redis.port);
    const N: usize = 50;
    set(&mut client, N, "last");
    agent.process.signal(libc::SIGTERM);
    assert_eq!(
        agent.process.wait_timeout(Duration::from_secs(30)),
        Some(0),
        "agent exit; its output:\n{}",
        agent.output()
    );

    let on_redis = |s: &Value| s["attributes"]["server.port"] == redis.port;
    let spans: Vec<Value> = receiver.spans().into_iter().filter(on_redis).collect();
    let kinds = |kind: u64| spans.iter().filter(|s| s["kind"] == kind).count();
    assert_eq!(
        (
            kinds(nodetap_tests::otlp::KIND_CLIENT),
            kinds(nodetap_tests::otlp::KIND_SERVER)
        ),
        (N, N),
        "spans of the redis port; agent:\n{}",
        agent.output()
    );
    let all = receiver.metric_points();
    let labels = [("server_port", port.as_str()), ("db_operation_name", "SET")];
    for family in DURATION {
        let pushed = points(&all, family, &labels);
        assert_eq!(pushed.len(), 1, "one push of {family}: {pushed:?}");
        assert_eq!(pushed[0]["count"], N, "{family}: {}", pushed[0]);
    }
}

/// With spans on, the pushed request-duration histograms carry the kept spans as
/// exemplars, like the OpenMetrics endpoint: each names a span the receiver got, of the
/// same side and server, and its value is that span's duration.
#[test]
fn pushed_histograms_carry_exported_spans_as_exemplars() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Grpc);
    let redis = RedisServer::start();
    let endpoint = receiver.endpoint();
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--traces-sampler",
        "always_on",
        "--spans-batch-delay",
        "200",
        "--metric-export-interval",
        "500",
    ]);
    let port = redis.port.to_string();
    let mut client = RespClient::connect(redis.port);
    const N: usize = 30;
    set(&mut client, N, "exemplar");
    scrape_counting(&agent, &port, N);
    let labels = [("server_port", port.as_str()), ("db_operation_name", "SET")];
    for (family, kind) in [
        (DURATION[0], nodetap_tests::otlp::KIND_CLIENT),
        (DURATION[1], nodetap_tests::otlp::KIND_SERVER),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let point = loop {
            let all = receiver.metric_points();
            match points(&all, family, &labels).last().cloned().cloned() {
                Some(p) if p["count"] == N => break p,
                latest => assert!(
                    Instant::now() < deadline,
                    "no push of {family} counting {N}; latest {latest:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let spans: Vec<Value> = receiver
            .wait_for(2 * N, Duration::from_secs(30), |s| {
                s["attributes"]["server.port"] == redis.port
            })
            .into_iter()
            .filter(|s| s["kind"] == kind)
            .collect();
        assert_eq!(spans.len(), N, "{family}: spans of its side");
        let exemplars = point["exemplars"].as_array().expect("exemplars");
        assert!(!exemplars.is_empty(), "{family}: no exemplar in {point}");
        for e in exemplars {
            let span = spans
                .iter()
                .find(|s| s["trace_id"] == e["trace_id"] && s["span_id"] == e["span_id"])
                .unwrap_or_else(|| panic!("{family}: exemplar {e} names no exported span"));
            let duration =
                (span["end"].as_u64().unwrap() - span["start"].as_u64().unwrap()) as f64 / 1e9;
            let value = e["value"].as_f64().unwrap();
            assert!(
                (value - duration).abs() <= 1e-9,
                "{family}: exemplar value {value}, span duration {duration}"
            );
        }
    }
}
