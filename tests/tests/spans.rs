//! Spans over OTLP: the real agent, real servers and clients, and a stand-in receiver
//! that speaks the real protocol (HTTP/protobuf and gRPC) and decodes what arrives with
//! the official bindings. At 100% sampling every request is exactly one client and one
//! server span, with exact attributes; trace context joins (W3C traceparent, and both
//! ends on this node by connection and order); a receiver that is down loses spans only by
//! count, never capture.

use std::{
    collections::{BTreeMap, HashSet},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nodetap_tests::{
    http1::HttpClient,
    metric_sum, metric_value,
    otlp::{attribute, OtlpReceiver, Transport, KIND_CLIENT, KIND_SERVER},
    own_process_name,
    pgwire::{PgClient, SqlError},
    resp::{Reply, RespClient},
    serial,
    servers::{
        grpc_peer, GrpcServer, HttpProxy, Nginx, PostgresServer, ProxiedRequest, ProxyMode,
        RedisServer,
    },
    Agent, Checked,
};
use serde_json::Value;

/// Exported at most 200 ms after they end; every span unless `extra` names a sampler.
fn agent_exporting_to(receiver: &OtlpReceiver, extra: &[&str]) -> Agent {
    let endpoint = receiver.endpoint();
    let protocol = match receiver.transport {
        Transport::Http => "http/protobuf",
        Transport::Grpc => "grpc",
    };
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        protocol,
        "--spans-batch-delay",
        "200",
    ];
    if !extra.contains(&"--traces-sampler") {
        args.extend_from_slice(&["--traces-sampler", "always_on"]);
    }
    args.extend_from_slice(extra);
    Agent::start(&args)
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A span's attributes as strings (integers as decimal text).
fn attributes(span: &Value) -> BTreeMap<String, String> {
    span["attributes"]
        .as_object()
        .expect("attributes")
        .keys()
        .map(|k| (k.clone(), attribute(span, k).unwrap()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn resource(span: &Value) -> BTreeMap<String, String> {
    span["resource"]
        .as_object()
        .expect("resource")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
        .collect()
}

fn host_name() -> String {
    let out = Command::new("hostname").output().checked("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn u64_of(span: &Value, key: &str) -> u64 {
    span[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {span}"))
}

/// The spans of one server port, split by kind.
fn by_kind(spans: &[Value]) -> (Vec<&Value>, Vec<&Value>) {
    let client = spans.iter().filter(|s| s["kind"] == KIND_CLIENT).collect();
    let server = spans.iter().filter(|s| s["kind"] == KIND_SERVER).collect();
    (client, server)
}

fn on_port(port: u16) -> impl Fn(&Value) -> bool {
    let port = port.to_string();
    move |span| attribute(span, "server.port").as_deref() == Some(port.as_str())
}

#[test]
fn redis_requests_are_exactly_one_client_and_one_server_span_each_over_http() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let redis = RedisServer::start();
    let agent = agent_exporting_to(
        &receiver,
        &[
            "--otlp-compression",
            "gzip",
            "--otlp-headers",
            "x-test-token=one%20two",
        ],
    );
    let me = own_process_name();
    let mut client = RespClient::connect(redis.port);
    let client_port = client.local_port().to_string();
    let before = wall_ns();
    for i in 0..100 {
        let (reply, _) = client.command(&["SET", &format!("key:{i}"), "value"]);
        assert_eq!(reply, Reply::Ok("OK".into()));
    }
    for i in 0..50 {
        let (reply, _) = client.command(&["GET", &format!("key:{i}")]);
        assert_eq!(reply, Reply::Bulk(Some(b"value".to_vec())));
    }
    let after = wall_ns();

    let spans = receiver.wait_for(300, Duration::from_secs(30), on_port(redis.port));
    let (client_spans, server_spans) = by_kind(&spans);
    assert_eq!(
        (client_spans.len(), server_spans.len(), spans.len()),
        (150, 150, 300),
        "spans of the redis port (agent tier {}):\n{}",
        agent.tier(),
        agent.output()
    );
    let port = redis.port.to_string();
    let host = host_name();
    for (side, list, service) in [
        ("client", &client_spans, me.as_str()),
        ("server", &server_spans, "redis-server"),
    ] {
        let mut ops = BTreeMap::new();
        for span in list.iter() {
            let op = span["name"].as_str().unwrap().to_owned();
            let statement = if op == "SET" { "SET ? ?" } else { "GET ?" };
            let mut expected = map(&[
                ("db.system.name", "redis"),
                ("db.operation.name", &op),
                ("db.query.text", statement),
                ("server.address", "127.0.0.1"),
                ("server.port", &port),
            ]);
            if side == "client" {
                expected.extend(map(&[
                    ("network.peer.address", "127.0.0.1"),
                    ("network.peer.port", &port),
                ]));
            } else {
                expected.extend(map(&[
                    ("client.address", "127.0.0.1"),
                    ("client.port", &client_port),
                    ("network.peer.address", "127.0.0.1"),
                    ("network.peer.port", &client_port),
                ]));
            }
            assert_eq!(attributes(span), expected, "{side} span {span}");
            assert_eq!(
                resource(span),
                map(&[("service.name", service), ("host.name", &host)]),
                "{side} span's resource"
            );
            assert_eq!(span["status"], 0, "{side} span {span}");
            assert_eq!(span["scope"], "nodetap");
            // What the exporter sent: gzip, with the configured header decoded.
            assert_eq!(
                (&span["compression"], &span["token"]),
                (&Value::from("gzip"), &Value::from("one two"))
            );
            // Kernel times, turned into wall-clock time once, nest inside this client's
            // own readings of the wall clock around all its commands.
            let (start, end) = (u64_of(span, "start"), u64_of(span, "end"));
            assert!(
                before <= start && start <= end && end <= after,
                "{side} span [{start}, {end}] outside the client's [{before}, {after}]"
            );
            *ops.entry(op).or_insert(0) += 1;
        }
        assert_eq!(
            ops,
            BTreeMap::from([("GET".to_owned(), 50), ("SET".to_owned(), 100)]),
            "{side} span names"
        );
    }
    // Both ends are on this node and the agent saw both connections open: the i-th
    // server span is the child of the i-th client span, and each pair is a trace of its
    // own. The truth: the order this client sent its commands in, and the time order
    // causality fixes (below).
    let mut client_spans = client_spans;
    let mut server_spans = server_spans;
    client_spans.sort_by_key(|s| u64_of(s, "start"));
    server_spans.sort_by_key(|s| u64_of(s, "start"));
    for (i, (c, srv)) in client_spans.iter().zip(&server_spans).enumerate() {
        let op = if i < 100 { "SET" } else { "GET" };
        assert_eq!(
            (&c["name"], &srv["name"]),
            (&Value::from(op), &Value::from(op))
        );
        assert_eq!(c["parent_span_id"], "", "client span {i}");
        assert_eq!(srv["trace_id"], c["trace_id"], "request {i}");
        assert_eq!(srv["parent_span_id"], c["span_id"], "request {i}");
        // Time order, as far as causality fixes it. A send is timed at its return in the
        // socket tier (docs/design.md, "Timing"), and on loopback the other end's read can
        // return first, so a server span need not nest inside its client span. What
        // always holds for a client that waits for each reply: request i is read after
        // the client read reply i-1, and reply i was sent before the server read request
        // i+1, so before the client's read of reply i+1 returned.
        if i > 0 {
            let previous = &client_spans[i - 1];
            assert!(
                u64_of(previous, "end") <= u64_of(srv, "start"),
                "server span {i} {srv} starts before client span {} {previous} ends",
                i - 1
            );
        }
        if let Some(next) = client_spans.get(i + 1) {
            assert!(
                u64_of(srv, "end") <= u64_of(next, "end"),
                "server span {i} {srv} ends after client span {} {next}",
                i + 1
            );
        }
    }
    let traces: HashSet<&str> = spans
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(traces.len(), 150);
    let text = agent.scrape();
    assert_eq!(
        metric_value(&text, "nodetap_spans_exported_total", &[]),
        Some(receiver.spans().len() as f64),
        "exported counter against what the receiver decoded"
    );
}

/// A W3C traceparent for request `i` of a test run: trace and parent ids unique per run.
fn traceparent(run: &str, i: usize) -> (String, String, String) {
    let trace = format!("{run}{i:08x}");
    let parent = format!("{:016x}", 0x00f0_0000_0000_0000u64 + i as u64);
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

/// The attributes of an HTTP span to nginx on 127.0.0.1:`port` from `client_port` (a
/// server span names its client, a client span the server it called).
fn http_span_attributes(
    kind: u64,
    (route, path, status): (&str, &str, &str),
    port: &str,
    client_port: &str,
) -> BTreeMap<String, String> {
    let (peer_port, client) = if kind == KIND_SERVER {
        (client_port, true)
    } else {
        (port, false)
    };
    let mut expected = map(&[
        ("http.request.method", "GET"),
        ("http.response.status_code", status),
        ("http.route", route),
        ("url.path", path),
        ("server.address", "127.0.0.1"),
        ("server.port", port),
        ("network.peer.address", "127.0.0.1"),
        ("network.peer.port", peer_port),
    ]);
    if client {
        expected.insert("client.address".into(), "127.0.0.1".into());
        expected.insert("client.port".into(), client_port.into());
    }
    expected
}

#[test]
fn http1_spans_join_the_callers_traceparent_over_grpc() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Grpc);
    let nginx = Nginx::start();
    let agent = agent_exporting_to(&receiver, &[]);
    let me = own_process_name();
    let run = &nodetap_tests::random_token(24)
        .bytes()
        .map(|b| format!("{:x}", b % 16))
        .collect::<String>();
    let mut client = HttpClient::connect(nginx.http1_port);
    let mut client_ports = Vec::new();
    let mut headers = Vec::new();
    for i in 0..20 {
        let (tp, trace, parent) = traceparent(run, i);
        // The query never reaches a span.
        let response = client.get_with_headers("/api/orders?page=2", &[("traceparent", &tp)]);
        assert_eq!(response.status, 200);
        headers.push((trace, parent));
        client_ports.push(client.local_port().to_string());
    }
    // nginx closes the connection after a 500: one connection each.
    for _ in 0..5 {
        let mut client = HttpClient::connect(nginx.http1_port);
        let response = client.request("GET", "/status/500", b"");
        assert_eq!(response.status, 500);
        client_ports.push(client.local_port().to_string());
    }

    let spans = receiver.wait_for(50, Duration::from_secs(30), on_port(nginx.http1_port));
    let (client_spans, server_spans) = by_kind(&spans);
    assert_eq!(
        (client_spans.len(), server_spans.len()),
        (25, 25),
        "spans of the nginx port (agent tier {}):\n{}",
        agent.tier(),
        agent.output()
    );
    let port = nginx.http1_port.to_string();
    // Requests were made one after the other: the i-th span of each side by start time
    // is the i-th request.
    let (mut client_spans, mut server_spans) = (client_spans, server_spans);
    client_spans.sort_by_key(|s| u64_of(s, "start"));
    server_spans.sort_by_key(|s| u64_of(s, "start"));
    for (i, (client_span, server_span)) in client_spans.iter().zip(&server_spans).enumerate() {
        let traced = i < 20;
        let client_port = &client_ports[i];
        let (route, path, status) = if traced {
            ("/api/orders", "/api/orders", "200")
        } else {
            // The agent's default route normalisation (digits are an id).
            ("/status/{id}", "/status/500", "500")
        };
        let request = (route, path, status);
        let mut expected_server = http_span_attributes(KIND_SERVER, request, &port, client_port);
        let mut expected_client = http_span_attributes(KIND_CLIENT, request, &port, client_port);
        if !traced {
            expected_server.insert("error.type".into(), "500".into());
            expected_client.insert("error.type".into(), "500".into());
        }
        assert_eq!(attributes(server_span), expected_server, "server span {i}");
        assert_eq!(attributes(client_span), expected_client, "client span {i}");
        assert_eq!(server_span["name"], format!("GET {route}"));
        assert_eq!(client_span["name"], "GET");
        let error = if traced { 0 } else { 2 };
        assert_eq!(
            (&server_span["status"], &client_span["status"]),
            (&Value::from(error), &Value::from(error)),
            "span status of request {i}"
        );
        assert_eq!(resource(server_span)["service.name"], "nginx");
        assert_eq!(resource(client_span)["service.name"], me);
        if traced {
            let (trace, parent) = &headers[i];
            // The server span: the caller's trace, the caller's span as parent.
            assert_eq!(server_span["trace_id"], *trace, "server span {i}");
            assert_eq!(server_span["parent_span_id"], *parent, "server span {i}");
            assert_ne!(server_span["span_id"], *parent);
            // The client span is the caller's span the header names.
            assert_eq!(client_span["trace_id"], *trace, "client span {i}");
            assert_eq!(client_span["span_id"], *parent, "client span {i}");
            assert_eq!(client_span["parent_span_id"], "", "client span {i}");
        } else {
            // No header, but both ends on this node: linked by connection and order.
            assert_eq!(
                server_span["trace_id"], client_span["trace_id"],
                "request {i}"
            );
            assert_eq!(
                server_span["parent_span_id"], client_span["span_id"],
                "request {i}"
            );
            assert_eq!(client_span["parent_span_id"], "", "client span {i}");
        }
    }
}

/// Plain HTTP/2 (not gRPC) from a real client library: httpx over h2c with prior
/// knowledge, one connection, requests one after the other.
#[test]
fn h2_spans_from_httpx_join_the_callers_traceparent_over_http() {
    const TRACED: usize = 20;
    const UNTRACED: usize = 5;
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let nginx = Nginx::start();
    let agent = agent_exporting_to(&receiver, &[]);
    let run = &nodetap_tests::random_token(24)
        .bytes()
        .map(|b| format!("{:x}", b % 16))
        .collect::<String>();
    let name = nodetap_tests::unique_name("nth2");
    let done = nodetap_tests::peers::run_peer(
        "h2_client.py",
        &[
            &name,
            &nginx.h2c_port.to_string(),
            run,
            &TRACED.to_string(),
            &UNTRACED.to_string(),
        ],
    );
    let statuses: Vec<u64> = done["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(statuses, vec![200; TRACED + UNTRACED]);
    assert!(
        done["http_versions"]
            .as_array()
            .expect("versions")
            .iter()
            .all(|v| v == "HTTP/2"),
        "httpx spoke {}",
        done["http_versions"]
    );
    let client_port = done["local_port"].as_u64().expect("local port").to_string();

    let n = TRACED + UNTRACED;
    let spans = receiver.wait_for(2 * n, Duration::from_secs(30), on_port(nginx.h2c_port));
    let (client_spans, server_spans) = by_kind(&spans);
    assert_eq!(
        (client_spans.len(), server_spans.len()),
        (n, n),
        "spans of the h2c port (agent tier {}):\n{}",
        agent.tier(),
        agent.output()
    );
    let port = nginx.h2c_port.to_string();
    // One request at a time: the i-th span of each side by start time is the i-th request.
    let (mut client_spans, mut server_spans) = (client_spans, server_spans);
    client_spans.sort_by_key(|s| u64_of(s, "start"));
    server_spans.sort_by_key(|s| u64_of(s, "start"));
    for (i, (client_span, server_span)) in client_spans.iter().zip(&server_spans).enumerate() {
        let request = ("/api/orders", "/api/orders", "200");
        let expected_server = http_span_attributes(KIND_SERVER, request, &port, &client_port);
        let expected_client = http_span_attributes(KIND_CLIENT, request, &port, &client_port);
        assert_eq!(attributes(server_span), expected_server, "server span {i}");
        assert_eq!(attributes(client_span), expected_client, "client span {i}");
        assert_eq!(server_span["name"], "GET /api/orders");
        assert_eq!(client_span["name"], "GET");
        assert_eq!(
            (&server_span["status"], &client_span["status"]),
            (&Value::from(0), &Value::from(0)),
            "span status of request {i}"
        );
        assert_eq!(resource(server_span)["service.name"], "nginx");
        assert_eq!(resource(client_span)["service.name"], name);
        if i < TRACED {
            let (_, trace, parent) = traceparent(run, i);
            // The server span: the caller's trace, the caller's span as parent.
            assert_eq!(server_span["trace_id"], trace, "server span {i}");
            assert_eq!(server_span["parent_span_id"], parent, "server span {i}");
            // The client span is the caller's span the header names.
            assert_eq!(client_span["trace_id"], trace, "client span {i}");
            assert_eq!(client_span["span_id"], parent, "client span {i}");
            assert_eq!(client_span["parent_span_id"], "", "client span {i}");
        } else {
            // No header, both ends on this node: linked by connection and stream.
            assert_eq!(
                server_span["trace_id"], client_span["trace_id"],
                "request {i}"
            );
            assert_eq!(
                server_span["parent_span_id"], client_span["span_id"],
                "request {i}"
            );
            assert_eq!(client_span["parent_span_id"], "", "client span {i}");
        }
    }
}

#[test]
fn grpc_calls_are_spans_with_rpc_attributes_and_status() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let server = GrpcServer::start();
    let _agent = agent_exporting_to(&receiver, &[]);
    let out = Command::new("python3")
        .arg(grpc_peer())
        .args([
            "client",
            &server.port.to_string(),
            "ok:8",
            "notfound:4",
            "traced:4",
        ])
        .output()
        .checked("grpc client");
    let done: Value = serde_json::from_slice(&out.stdout).expect("grpc client's JSON");
    let traceparents: Vec<&str> = done["traceparents"]
        .as_array()
        .expect("traceparents")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(traceparents.len(), 4);

    let spans = receiver.wait_for(32, Duration::from_secs(30), on_port(server.port));
    let (client_spans, server_spans) = by_kind(&spans);
    assert_eq!((client_spans.len(), server_spans.len()), (16, 16));
    // traceparent in gRPC metadata (an HTTP/2 header): the server span joins the caller's
    // trace under the caller's span, and the client span is that span.
    for tp in &traceparents {
        let (trace, parent) = (&tp[3..35], &tp[36..52]);
        let in_trace = |list: &[&Value]| -> Vec<Value> {
            list.iter()
                .filter(|s| s["trace_id"] == trace)
                .map(|s| (*s).clone())
                .collect()
        };
        let (c, srv) = (in_trace(&client_spans), in_trace(&server_spans));
        assert_eq!((c.len(), srv.len()), (1, 1), "spans of trace {trace}");
        assert_eq!(c[0]["span_id"], parent);
        assert_eq!(c[0]["parent_span_id"], "");
        assert_eq!(srv[0]["parent_span_id"], parent);
    }
    let traced: HashSet<&str> = traceparents.iter().map(|tp| &tp[3..35]).collect();
    let port = server.port.to_string();
    for (side, list, service) in [
        ("client", &client_spans, "grpc-client"),
        ("server", &server_spans, "grpc-server"),
    ] {
        let mut outcomes = BTreeMap::new();
        for span in list.iter() {
            let code = attribute(span, "rpc.grpc.status_code").expect("status code");
            assert_eq!(span["name"], "nodetap.test.Echo/Echo");
            assert_eq!(resource(span)["service.name"], service);
            let attrs = attributes(span);
            for (key, value) in [
                ("rpc.system", "grpc"),
                ("rpc.service", "nodetap.test.Echo"),
                ("rpc.method", "Echo"),
                ("server.address", "127.0.0.1"),
                ("server.port", port.as_str()),
            ] {
                assert_eq!(
                    attrs.get(key).map(String::as_str),
                    Some(value),
                    "{key} of {span}"
                );
            }
            // NOT_FOUND is the caller's error, not a failure of the server.
            let expected_status = if side == "client" && code == "5" {
                2
            } else {
                0
            };
            assert_eq!(span["status"], expected_status, "{side} span {span}");
            *outcomes.entry(code).or_insert(0) += 1;
        }
        assert_eq!(
            outcomes,
            BTreeMap::from([("0".to_owned(), 12), ("5".to_owned(), 4)]),
            "{side} status codes"
        );
    }
    // Without a traceparent, both ends on this node: the server span is the child of the
    // client span of the same call, paired by the HTTP/2 stream (not by order, which
    // streams do not keep). The client made its calls one after the other: the i-th
    // client span by start time is the i-th server span's call.
    let untraced = |list: &[&Value]| -> Vec<Value> {
        let mut spans: Vec<Value> = list
            .iter()
            .filter(|s| !traced.contains(s["trace_id"].as_str().unwrap()))
            .map(|s| (*s).clone())
            .collect();
        spans.sort_by_key(|s| u64_of(s, "start"));
        spans
    };
    let (calls, served) = (untraced(&client_spans), untraced(&server_spans));
    assert_eq!((calls.len(), served.len()), (12, 12));
    for (i, (call, served)) in calls.iter().zip(&served).enumerate() {
        assert_eq!(call["parent_span_id"], "", "client span {i}: {call}");
        assert_eq!(
            served["parent_span_id"], call["span_id"],
            "server span {i}: {served}"
        );
        assert_eq!(served["trace_id"], call["trace_id"], "server span {i}");
        assert_eq!(
            attribute(served, "rpc.grpc.status_code"),
            attribute(call, "rpc.grpc.status_code"),
            "call {i}"
        );
    }
    let traces: HashSet<&str> = calls
        .iter()
        .map(|c| c["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(traces.len(), 12, "each call a trace of its own");
}

#[test]
fn a_receiver_that_is_down_costs_counted_spans_never_capture() {
    let _serial = serial();
    let mut receiver = OtlpReceiver::stopped(Transport::Http);
    let redis = RedisServer::start();
    let queue = 64usize;
    let agent = agent_exporting_to(&receiver, &["--spans-queue-size", "64"]);
    let mut client = RespClient::connect(redis.port);
    for i in 0..1000 {
        let (reply, _) = client.command(&["SET", &format!("key:{i}"), "v"]);
        assert_eq!(reply, Reply::Ok("OK".into()));
    }
    let port = redis.port.to_string();
    let set_count = |text: &str, side: &str, service: &str| {
        metric_value(
            text,
            &format!("db_{side}_operation_duration_seconds_count"),
            &[
                ("db_system_name", "redis"),
                ("db_operation_name", "SET"),
                ("error_type", ""),
                ("server_address", "127.0.0.1"),
                ("server_port", &port),
                ("service_name", service),
            ],
        )
        .unwrap_or(0.0)
    };
    let me = own_process_name();
    // Capture went on at full count while no span could leave.
    let failures =
        |t: &str| metric_value(t, "nodetap_spans_export_failures_total", &[]).unwrap_or(0.0);
    let text = agent.scrape_until(Duration::from_secs(10), |t| {
        set_count(t, "client", &me) == 1000.0
            && set_count(t, "server", "redis-server") == 1000.0
            && failures(t) >= 1.0
    });
    assert_eq!(set_count(&text, "client", &me), 1000.0);
    assert_eq!(set_count(&text, "server", "redis-server"), 1000.0);
    let dropped = |text: &str, reason: &str| {
        metric_value(text, "nodetap_spans_dropped_total", &[("reason", reason)]).unwrap_or(0.0)
    };
    // 2,000 spans; at most one batch (512) and the queue are held.
    let full = dropped(&text, "queue_full");
    assert!(
        full >= (2000 - 512 - queue) as f64,
        "{full} spans dropped for a full queue of {queue}"
    );
    assert!(metric_value(&text, "nodetap_spans_export_failures_total", &[]).unwrap_or(0.0) >= 1.0);
    assert_eq!(receiver.spans().len(), 0);

    receiver.resume();
    // Export resumes at the next retry (backoff at most 5 s): the held batch arrives.
    let is_set = |s: &Value| on_port(redis.port)(s) && s["name"] == "SET";
    let held = receiver.wait_for(1, Duration::from_secs(40), is_set);
    assert!(
        !held.is_empty(),
        "no held SET span arrived after the receiver came back; agent metrics:\n{}\nagent output:\n{}",
        nodetap_tests::lines_with(&agent.scrape(), "nodetap_spans"),
        agent.output()
    );
    // Then new spans flow again: 100 GETs at a pace the queue of 64 absorbs while a
    // batch is on its way.
    for i in 0..100 {
        let (reply, _) = client.command(&["GET", &format!("key:{i}")]);
        assert_eq!(reply, Reply::Bulk(Some(b"v".to_vec())));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every SET span is either received or counted as dropped.
    let is_get = |s: &Value| on_port(redis.port)(s) && s["name"] == "GET";
    let gets = receiver.wait_for(200, Duration::from_secs(30), is_get);
    assert_eq!(gets.len(), 200, "GET spans after the receiver came back");
    let sets = receiver
        .spans()
        .into_iter()
        .filter(|s| on_port(redis.port)(s) && s["name"] == "SET")
        .count();
    let text = agent.scrape();
    let lost = dropped(&text, "queue_full") + dropped(&text, "export_failed");
    assert!(
        sets as f64 + lost >= 2000.0 && sets <= 512 + queue,
        "{sets} SET spans received and {lost} dropped, of 2000"
    );
    assert_eq!(
        metric_value(&text, "nodetap_spans_exported_total", &[]),
        Some(receiver.spans().len() as f64),
        "exported counter against what the receiver decoded"
    );
}

#[test]
fn ratio_sampling_keeps_its_share_by_trace_and_every_error_and_slow_request() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let redis = RedisServer::start();
    let agent = agent_exporting_to(
        &receiver,
        &[
            "--traces-sampler",
            "traceidratio",
            "--traces-sampler-arg",
            "0.1",
            "--spans-slow-threshold",
            "200",
        ],
    );
    let mut client = RespClient::connect(redis.port);
    assert_eq!(client.command(&["SET", "k", "v"]).0, Reply::Ok("OK".into()));
    for _ in 0..10_000 {
        assert_eq!(
            client.command(&["GET", "k"]).0,
            Reply::Bulk(Some(b"v".to_vec()))
        );
    }
    // Errors: INCR of a value that is no integer.
    for _ in 0..50 {
        assert!(
            matches!(client.command(&["INCR", "k"]).0, Reply::Error(e) if e.starts_with("ERR"))
        );
    }
    // Slow: BLPOP waits 0.3 s on an empty list, then answers nil.
    for _ in 0..3 {
        let (_, took) = client.command(&["BLPOP", "empty", "0.3"]);
        assert!(took >= Duration::from_millis(300));
    }

    let mine = on_port(redis.port);
    // Wait for the slow ones (last sent), then for the rest to settle.
    receiver.wait_for(6, Duration::from_secs(30), |s| {
        mine(s) && s["name"] == "BLPOP"
    });
    let spans: Vec<Value> = receiver.spans().into_iter().filter(&mine).collect();
    let count = |name: &str, kind: u64| {
        spans
            .iter()
            .filter(|s| s["name"] == name && s["kind"] == kind)
            .count()
    };
    // Every error and every slow request, on both sides.
    assert_eq!(
        (count("INCR", KIND_CLIENT), count("INCR", KIND_SERVER)),
        (50, 50)
    );
    assert_eq!(
        (count("BLPOP", KIND_CLIENT), count("BLPOP", KIND_SERVER)),
        (3, 3)
    );
    assert!(spans
        .iter()
        .filter(|s| s["name"] == "INCR")
        .all(|s| s["status"] == 2));
    // The error's prefix, as redis-server answered it, is its type and its code.
    for span in spans.iter().filter(|s| s["name"] == "INCR") {
        let attrs = attributes(span);
        assert_eq!(
            (
                attrs.get("error.type").map(String::as_str),
                attrs.get("db.response.status_code").map(String::as_str)
            ),
            (Some("ERR"), Some("ERR")),
            "{span}"
        );
    }
    // The GETs: a tenth, within 5 standard deviations (sd of 10,000 draws at 0.1: 30).
    let (client_gets, server_gets) = (count("GET", KIND_CLIENT), count("GET", KIND_SERVER));
    assert!(
        (850..=1150).contains(&client_gets),
        "{client_gets} of 10,000 GETs kept at ratio 0.1 (agent tier {})",
        agent.tier()
    );
    // Decided by trace id: both ends of a request (one trace) get the same answer.
    assert_eq!(server_gets, client_gets);
    let traces = |kind: u64| -> HashSet<String> {
        spans
            .iter()
            .filter(|s| s["name"] == "GET" && s["kind"] == kind)
            .map(|s| s["trace_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(traces(KIND_CLIENT), traces(KIND_SERVER));
    // And the sampler's own arithmetic: the low 64 bits of every kept trace id are below
    // 0.1 * 2^64.
    let bound = (0.1 * 18_446_744_073_709_551_616.0) as u128;
    for trace in traces(KIND_CLIENT) {
        let low = u64::from_str_radix(&trace[16..], 16).unwrap();
        assert!(
            u128::from(low) < bound,
            "trace {trace} kept above the ratio"
        );
    }
    // Left out: the GETs not kept, on both sides, and the first SET's two spans unless
    // its trace was kept (one in ten). Other traffic of this machine may add to it.
    let set_kept = count("SET", KIND_CLIENT);
    assert_eq!(count("SET", KIND_SERVER), set_kept);
    let left_out = (2 * (10_000 - client_gets) + 2 * (1 - set_kept)) as f64;
    let not_sampled =
        |text: &str| metric_value(text, "nodetap_spans_not_sampled_total", &[]).unwrap_or(0.0);
    let text = agent.scrape_until(Duration::from_secs(10), |text| {
        not_sampled(text) >= left_out
    });
    assert!(
        not_sampled(&text) >= left_out,
        "spans left out are counted: {} of at least {left_out}",
        not_sampled(&text)
    );
}

#[test]
fn postgresql_spans_carry_the_collection_the_obfuscated_query_and_the_error_class() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let pg = PostgresServer::start();
    let _agent = agent_exporting_to(&receiver, &[]);
    let mut db = PgClient::connect(pg.port);
    db.simple("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .0
        .unwrap();
    for i in 0..20 {
        db.simple(&format!("INSERT INTO items VALUES ({i}, 'secret {i}')"))
            .0
            .unwrap();
    }
    assert_eq!(
        db.simple("SELECT * FROM no_such_table").0,
        Err(SqlError("42P01".into()))
    );

    // 22 queries, both sides; the start-up and authentication exchange is no request.
    let spans = receiver.wait_for(44, Duration::from_secs(30), on_port(pg.port));
    let (client_spans, server_spans) = by_kind(&spans);
    assert_eq!(
        (client_spans.len(), server_spans.len()),
        (22, 22),
        "{spans:#?}"
    );
    for (side, list) in [("client", &client_spans), ("server", &server_spans)] {
        let mut names = BTreeMap::new();
        for span in list.iter() {
            let name = span["name"].as_str().unwrap();
            let attrs = attributes(span);
            let expected: &[(&str, &str)] = match name {
                "CREATE" => &[
                    ("db.operation.name", "CREATE"),
                    (
                        "db.query.text",
                        "CREATE TABLE items (id int PRIMARY KEY, v text)",
                    ),
                ],
                "INSERT items" => &[
                    ("db.operation.name", "INSERT"),
                    ("db.collection.name", "items"),
                    ("db.query.text", "INSERT INTO items VALUES (?, ?)"),
                ],
                "SELECT no_such_table" => &[
                    ("db.operation.name", "SELECT"),
                    ("db.collection.name", "no_such_table"),
                    ("db.query.text", "SELECT * FROM no_such_table"),
                    ("error.type", "42"),
                    // PostgreSQL's own code for it: undefined_table.
                    ("db.response.status_code", "42P01"),
                ],
                other => panic!("unexpected {side} span {other:?}: {span}"),
            };
            // The database the client's StartupMessage named (pgwire connects to `postgres`).
            for (key, value) in expected.iter().chain(&[
                ("db.system.name", "postgresql"),
                ("db.namespace", "postgres"),
            ]) {
                assert_eq!(
                    attrs.get(*key).map(String::as_str),
                    Some(*value),
                    "{key} of {span}"
                );
            }
            // Literals never reach a span.
            assert!(!span.to_string().contains("secret"), "{span}");
            let error = name.starts_with("SELECT");
            assert_eq!(span["status"], if error { 2 } else { 0 }, "{span}");
            *names.entry(name.to_owned()).or_insert(0) += 1;
        }
        assert_eq!(
            names,
            BTreeMap::from([
                ("CREATE".to_owned(), 1),
                ("INSERT items".to_owned(), 20),
                ("SELECT no_such_table".to_owned(), 1),
            ]),
            "{side} spans"
        );
    }
}

#[test]
fn spans_still_queued_at_shutdown_are_sent() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let redis = RedisServer::start();
    let endpoint = receiver.endpoint();
    // A batch waits a minute to fill: only the shutdown can send it within the test.
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--traces-sampler",
        "always_on",
        "--spans-batch-delay",
        "60000",
    ]);
    let mut client = RespClient::connect(redis.port);
    for i in 0..10 {
        let (reply, _) = client.command(&["SET", &format!("key:{i}"), "v"]);
        assert_eq!(reply, Reply::Ok("OK".into()));
    }
    let port = redis.port.to_string();
    let me = own_process_name();
    let sets = |text: &str, side: &str, service: &str| {
        metric_value(
            text,
            &format!("db_{side}_operation_duration_seconds_count"),
            &[
                ("db_system_name", "redis"),
                ("db_operation_name", "SET"),
                ("error_type", ""),
                ("server_address", "127.0.0.1"),
                ("server_port", &port),
                ("service_name", service),
            ],
        )
    };
    let text = agent.scrape_until(Duration::from_secs(10), |t| {
        sets(t, "client", &me) == Some(10.0) && sets(t, "server", "redis-server") == Some(10.0)
    });
    assert_eq!(sets(&text, "client", &me), Some(10.0));
    assert_eq!(sets(&text, "server", "redis-server"), Some(10.0));
    let mine = on_port(redis.port);
    assert_eq!(receiver.spans().iter().filter(|s| mine(s)).count(), 0);

    agent.process.signal(libc::SIGTERM);
    assert_eq!(
        agent.process.wait_timeout(Duration::from_secs(20)),
        Some(0),
        "agent exit; its output:\n{}",
        agent.output()
    );
    let spans: Vec<Value> = receiver.spans().into_iter().filter(&mine).collect();
    let (client_spans, server_spans) = by_kind(&spans);
    assert_eq!((client_spans.len(), server_spans.len()), (10, 10));
}

#[test]
fn spans_reach_a_tls_endpoint_over_grpc_and_http_with_the_given_ca() {
    let _serial = serial();
    let redis = RedisServer::start();
    for transport in [Transport::Grpc, Transport::Http] {
        let receiver = OtlpReceiver::start_tls(transport);
        let ca = receiver.ca.clone().unwrap();
        let _agent = agent_exporting_to(&receiver, &["--otlp-certificate", ca.to_str().unwrap()]);
        let mut client = RespClient::connect(redis.port);
        for _ in 0..5 {
            assert_eq!(client.command(&["PING"]).0, Reply::Ok("PONG".into()));
        }
        let spans = receiver.wait_for(10, Duration::from_secs(30), on_port(redis.port));
        assert_eq!(spans.len(), 10, "{transport:?}: PING spans over TLS");
        assert!(spans.iter().all(|s| s["name"] == "PING"));
    }
}

/// GET `path` from the agent with an `Accept` header: (content type, body).
fn get_accepting(port: u16, path: &str, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect agent");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .expect("content type");
    let body = if head.to_ascii_lowercase().contains("chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (content_type, body)
}

#[test]
fn duration_histograms_carry_the_kept_spans_as_exemplars_prometheus_stores() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let redis = RedisServer::start();
    let agent = agent_exporting_to(&receiver, &[]);
    let prometheus = nodetap_tests::prometheus::Prometheus::start_with_exemplars(&format!(
        "  - job_name: nodetap\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        agent.port
    ));
    let mut client = RespClient::connect(redis.port);
    const N: usize = 5;
    let mut seen = Vec::new();
    for i in 0..N {
        let (reply, _) = client.command(&["SET", &format!("exemplar:{i}"), "v"]);
        assert_eq!(reply, Reply::Ok("OK".into()));
        let spans = receiver.wait_for(2 * (i + 1), Duration::from_secs(30), on_port(redis.port));
        assert_eq!(
            spans.len(),
            2 * (i + 1),
            "spans of the redis port after request {i} (tier {}; spans dropped: {:?}, as other \
             traffic on the machine can fill the queue): {:?}",
            agent.tier(),
            metric_sum(&agent.scrape(), "nodetap_spans_dropped_total", &[]),
            spans
                .iter()
                .map(|s| (s["kind"].clone(), s["name"].clone(), s["start"].clone()))
                .collect::<Vec<_>>()
        );
        let (clients, servers) = by_kind(&spans);
        // This request's spans: the latest of each kind (one command at a time).
        for (family, side) in [
            ("db_client_operation_duration_seconds_bucket", &clients),
            ("db_server_operation_duration_seconds_bucket", &servers),
        ] {
            let span = *side
                .iter()
                .max_by_key(|s| u64_of(s, "start"))
                .expect("a span");
            let trace = span["trace_id"].as_str().unwrap();
            // Prometheus scrapes every second; the bucket's slot keeps this span until the
            // next request, so it must arrive.
            let query = format!("{family}{{server_port=\"{}\"}}", redis.port);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let exemplar = loop {
                let found =
                    prometheus
                        .query_exemplars(&query)
                        .into_iter()
                        .find(|(_, labels, _, _)| {
                            labels.get("trace_id").map(String::as_str) == Some(trace)
                        });
                if let Some(e) = found {
                    break e;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no exemplar with trace {trace} for {query}: {:?}\nOpenMetrics:\n{}",
                    prometheus.query_exemplars(&query),
                    get_accepting(
                        agent.port,
                        "/metrics",
                        "application/openmetrics-text; version=1.0.0"
                    )
                    .1
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            let (series, labels, value, timestamp) = exemplar;
            assert_eq!(
                labels,
                BTreeMap::from([
                    ("trace_id".to_owned(), trace.to_owned()),
                    (
                        "span_id".to_owned(),
                        span["span_id"].as_str().unwrap().to_owned()
                    ),
                ]),
                "{family} exemplar of request {i}"
            );
            assert_eq!(series["db_operation_name"], "SET", "{series}");
            // The exemplar is the observation: the span's duration (both from the same
            // kernel timestamps), stamped with the span's end (Prometheus keeps ms).
            let (start, end) = (u64_of(span, "start"), u64_of(span, "end"));
            let duration = (end - start) as f64 / 1e9;
            assert!(
                (value - duration).abs() <= duration * 1e-9,
                "{family} exemplar value {value} against the span's {duration} s"
            );
            assert!(
                (timestamp - end as f64 / 1e9).abs() < 0.001,
                "{family} exemplar time {timestamp} against the span's end {end}"
            );
            seen.push(trace.to_owned());
        }
    }
    // Every exemplar Prometheus stored for the port names a trace the receiver got.
    let received: HashSet<String> = receiver
        .spans()
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    let mut stored = HashSet::new();
    for family in [
        "db_client_operation_duration_seconds_bucket",
        "db_server_operation_duration_seconds_bucket",
    ] {
        for (_, labels, _, _) in
            prometheus.query_exemplars(&format!("{family}{{server_port=\"{}\"}}", redis.port))
        {
            let trace = labels["trace_id"].clone();
            assert!(
                received.contains(&trace),
                "exemplar trace {trace} never exported"
            );
            stored.insert(trace);
        }
    }
    assert_eq!(
        stored,
        seen.into_iter().collect::<HashSet<_>>(),
        "exemplar traces against the requests'"
    );
    // Prometheus parsed every scrape (node collectors' families included) as OpenMetrics.
    assert_eq!(
        prometheus.targets(),
        vec![("nodetap".to_owned(), "up".to_owned(), String::new())]
    );
    let (om_type, om) = get_accepting(
        agent.port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert_eq!(
        om_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        om.ends_with("# EOF\n") && om.contains(" # {trace_id=\""),
        "{om}"
    );
    // The text format, the default, has none.
    let (text_type, text) = get_accepting(agent.port, "/metrics", "text/plain;version=0.0.4");
    assert_eq!(text_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains("trace_id") && !text.contains("# EOF"),
        "{text}"
    );
}

/// The spans of a proxied request: the caller's, the proxy's server and client spans,
/// the backend's, by the paths the proxy's truth names.
struct Proxied<'a> {
    /// By `url.path`, for each of the four sides.
    caller: BTreeMap<String, &'a Value>,
    served: BTreeMap<String, &'a Value>,
    call: BTreeMap<String, &'a Value>,
    backend: BTreeMap<String, &'a Value>,
}

fn by_path<'a>(spans: &[&'a Value], what: &str) -> BTreeMap<String, &'a Value> {
    let mut out = BTreeMap::new();
    for span in spans {
        let path = attribute(span, "url.path").unwrap_or_else(|| panic!("url.path of {span}"));
        assert!(
            out.insert(path.clone(), *span).is_none(),
            "two {what} spans of {path}"
        );
    }
    out
}

/// Waits for `n` requests' four spans each through `proxy` to `nginx`.
fn proxied_spans(
    receiver: &OtlpReceiver,
    proxy_port: u16,
    nginx_port: u16,
    n: usize,
) -> Vec<Value> {
    let (on_proxy, on_nginx) = (on_port(proxy_port), on_port(nginx_port));
    receiver.wait_for(4 * n, Duration::from_secs(30), |s| {
        on_proxy(s) || on_nginx(s)
    })
}

fn split_proxied<'a>(spans: &'a [Value], proxy_port: u16, nginx_port: u16) -> Proxied<'a> {
    let on_proxy: Vec<&Value> = spans.iter().filter(|s| on_port(proxy_port)(s)).collect();
    let on_nginx: Vec<&Value> = spans.iter().filter(|s| on_port(nginx_port)(s)).collect();
    let kind = |list: &[&'a Value], kind: u64| -> Vec<&'a Value> {
        list.iter().copied().filter(|s| s["kind"] == kind).collect()
    };
    Proxied {
        caller: by_path(&kind(&on_proxy, KIND_CLIENT), "caller"),
        served: by_path(&kind(&on_proxy, KIND_SERVER), "proxy server"),
        call: by_path(&kind(&on_nginx, KIND_CLIENT), "proxy client"),
        backend: by_path(&kind(&on_nginx, KIND_SERVER), "nginx server"),
    }
}

/// Every thread link the spans show (a proxy client span with a parent) is the truth:
/// its parent is the proxy's server span of the request that made the call, in the same
/// trace; every backend span is its caller's child in the caller's trace. Returns how
/// many calls were linked to their request.
fn check_links(p: &Proxied<'_>, truth: &[ProxiedRequest]) -> usize {
    let made_by: BTreeMap<&str, &str> = truth
        .iter()
        .map(|t| (t.path_out.as_str(), t.path_in.as_str()))
        .collect();
    let served_by_id: BTreeMap<&str, &Value> = p
        .served
        .values()
        .map(|s| (s["span_id"].as_str().unwrap(), *s))
        .collect();
    let mut linked = 0;
    for (path_out, call) in &p.call {
        let backend = p.backend[path_out];
        assert_eq!(
            backend["parent_span_id"], call["span_id"],
            "backend span of {path_out}"
        );
        assert_eq!(
            backend["trace_id"], call["trace_id"],
            "backend span of {path_out}"
        );
        let parent = call["parent_span_id"].as_str().unwrap();
        if parent.is_empty() {
            continue;
        }
        let served = served_by_id.get(parent).unwrap_or_else(|| {
            panic!("the call {path_out} names a parent {parent} that is no proxy server span")
        });
        let path_in = attribute(served, "url.path").unwrap();
        assert_eq!(
            Some(path_in.as_str()),
            made_by.get(path_out.as_str()).copied(),
            "the call {path_out} is linked under the request {path_in}; the proxy says otherwise"
        );
        assert_eq!(call["trace_id"], served["trace_id"], "call {path_out}");
        linked += 1;
    }
    linked
}

#[test]
fn a_proxy_on_one_thread_serving_requests_one_by_one_links_its_calls_under_them() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let nginx = Nginx::start();
    let proxy = HttpProxy::start(ProxyMode::Loop, nginx.http1_port);
    let agent = agent_exporting_to(&receiver, &[]);
    let n = 20;
    let mut client = HttpClient::connect(proxy.port);
    for i in 0..n {
        let response = client.request("GET", &format!("/r/{i}"), b"");
        assert_eq!(response.status, 200);
    }
    let truth = proxy.truth();
    assert_eq!(truth.len(), n);
    // The premise: one thread served them all.
    let threads: HashSet<u64> = truth.iter().map(|t| t.thread).collect();
    assert_eq!(threads.len(), 1, "proxy threads {threads:?}");

    let spans = proxied_spans(&receiver, proxy.port, nginx.http1_port, n);
    let p = split_proxied(&spans, proxy.port, nginx.http1_port);
    assert_eq!(
        (
            p.caller.len(),
            p.served.len(),
            p.call.len(),
            p.backend.len()
        ),
        (n, n, n, n),
        "spans of the proxy and nginx ports (agent tier {}):\n{}",
        agent.tier(),
        agent.output()
    );
    let mut traces = HashSet::new();
    for t in &truth {
        let (caller, served) = (p.caller[&t.path_in], p.served[&t.path_in]);
        let (call, backend) = (p.call[&t.path_out], p.backend[&t.path_out]);
        // One trace: caller -> proxy (same node, by connection) -> its call (by thread)
        // -> nginx (same node, by connection).
        assert_eq!(caller["parent_span_id"], "", "caller span of {}", t.path_in);
        assert_eq!(
            served["parent_span_id"], caller["span_id"],
            "proxy span of {}",
            t.path_in
        );
        assert_eq!(
            call["parent_span_id"], served["span_id"],
            "proxy call {}",
            t.path_out
        );
        assert_eq!(
            backend["parent_span_id"], call["span_id"],
            "nginx span of {}",
            t.path_out
        );
        for span in [served, call, backend] {
            assert_eq!(span["trace_id"], caller["trace_id"], "{span}");
        }
        assert_eq!(resource(served)["service.name"], "http-proxy");
        assert_eq!(resource(call)["service.name"], "http-proxy");
        assert!(traces.insert(caller["trace_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(check_links(&p, &truth), n);
}

/// Requests `/r/<tag>-<i>` from `clients` connections at once, `each` per connection.
fn concurrently(port: u16, tag: &str, clients: usize, each: usize) {
    std::thread::scope(|scope| {
        for c in 0..clients {
            scope.spawn(move || {
                let mut client = HttpClient::connect(port);
                for i in 0..each {
                    let path = format!("/r/{tag}-{}", c * each + i);
                    let response = client.request("GET", &path, b"");
                    assert_eq!(response.status, 200);
                }
            });
        }
    });
}

#[test]
fn the_same_proxy_under_concurrency_makes_no_wrong_link() {
    let _serial = serial();
    let receiver = OtlpReceiver::start(Transport::Http);
    let nginx = Nginx::start();
    let event_loop = HttpProxy::start(ProxyMode::Loop, nginx.http1_port);
    let threaded = HttpProxy::start(ProxyMode::Threads, nginx.http1_port);
    let agent = agent_exporting_to(&receiver, &[]);
    let (clients, each) = (8, 25);
    let n = clients * each;
    for (proxy, tag) in [(&event_loop, "loop"), (&threaded, "threads")] {
        concurrently(proxy.port, tag, clients, each);
        assert_eq!(proxy.truth().len(), n);
    }
    let loop_threads: HashSet<u64> = event_loop.truth().iter().map(|t| t.thread).collect();
    assert_eq!(loop_threads.len(), 1, "event loop threads {loop_threads:?}");

    let spans = receiver.wait_for(8 * n, Duration::from_secs(30), |s| {
        [event_loop.port, threaded.port, nginx.http1_port]
            .iter()
            .any(|port| on_port(*port)(s))
    });
    let mut linked = BTreeMap::new();
    for (name, proxy, tag) in [
        ("event loop", &event_loop, "loop"),
        ("threaded", &threaded, "threads"),
    ] {
        let truth = proxy.truth();
        // Each proxy's calls to nginx by their paths (/api/up/<tag>-<i>).
        let its_call = format!("/api/up/{tag}-");
        let proxy_spans: Vec<Value> = spans
            .iter()
            .filter(|s| {
                on_port(proxy.port)(s)
                    || (on_port(nginx.http1_port)(s)
                        && attribute(s, "url.path").is_some_and(|p| p.starts_with(&its_call)))
            })
            .cloned()
            .collect();
        let p = split_proxied(&proxy_spans, proxy.port, nginx.http1_port);
        assert_eq!(
            (
                p.caller.len(),
                p.served.len(),
                p.call.len(),
                p.backend.len()
            ),
            (n, n, n, n),
            "{name}: spans (agent tier {}):\n{}",
            agent.tier(),
            agent.output()
        );
        linked.insert(name, check_links(&p, &truth));
    }
    eprintln!("calls linked to their request: {linked:?}");
    // A thread per connection has one request open at a time: every call is linked.
    assert_eq!(linked["threaded"], n, "links {linked:?}");
    assert!(linked["event loop"] <= n, "links {linked:?}");
}
