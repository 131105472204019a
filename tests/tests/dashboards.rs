//! deploy/grafana/*.json (issue 13): every dashboard is importable (datasource and
//! namespace/service/zone variables, every panel on the datasource variable), and every
//! panel's query, with the variables set to match all, parses and returns data from a
//! real Prometheus that scrapes the real agent while this test drives Redis, PostgreSQL,
//! HTTP and gRPC traffic and a cross-zone transfer between two network namespaces.
//! Every latency panel asks for exemplars, and Prometheus (exemplar storage on) answers
//! each such panel's query with exemplars whose `trace_id` names a trace the agent
//! exported to an OTLP receiver: the trace a Grafana exemplar link opens exists.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nodetap_tests::{
    helper_bin, metric_sum,
    netlab::NetLab,
    otlp::{OtlpReceiver, Transport},
    prometheus::Prometheus,
    run_ok,
    servers::{grpc_peer, GrpcServer, Nginx, PostgresServer, RedisServer, TempDir},
    Agent,
};
use serde_json::Value;

fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("deploy/grafana")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (dashboard, panel title, query, exemplars asked for) for every target of every panel.
fn queries() -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for (file, board) in dashboards() {
        for panel in board["panels"].as_array().unwrap() {
            if panel["type"] == "row" {
                continue;
            }
            for target in panel["targets"].as_array().unwrap() {
                out.push((
                    file.clone(),
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                    target["exemplar"].as_bool().unwrap_or(false),
                ));
            }
        }
    }
    out
}

/// The request-duration families, which carry exemplars.
const DURATION_FAMILIES: [&str; 6] = [
    "http_server_request_duration_seconds",
    "http_client_request_duration_seconds",
    "rpc_server_call_duration_seconds",
    "rpc_client_call_duration_seconds",
    "db_server_operation_duration_seconds",
    "db_client_operation_duration_seconds",
];

/// A latency panel's query: a quantile over a request-duration family's buckets (by name
/// or in a `__name__` regex).
fn is_latency_query(query: &str) -> bool {
    query.contains("histogram_quantile(")
        && DURATION_FAMILIES
            .iter()
            .any(|f| query.contains(&format!("{f}_bucket")))
}

/// The query as Grafana sends it with every variable at "All".
fn expand(query: &str) -> String {
    query
        .replace("$__rate_interval", "30s")
        .replace("$namespace", ".*")
        .replace("$service", ".*")
        .replace("$zone", ".*")
}

#[test]
fn dashboards_are_importable() {
    let boards = dashboards();
    assert!(boards.len() >= 6, "only {} dashboards", boards.len());
    let mut uids = std::collections::BTreeSet::new();
    for (file, board) in &boards {
        let uid = board["uid"].as_str().unwrap_or("");
        assert!(
            !uid.is_empty() && uids.insert(uid.to_owned()),
            "{file}: uid {uid:?}"
        );
        assert!(
            board["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        let vars: Vec<&str> = board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            vars,
            ["datasource", "namespace", "service", "zone"],
            "{file}"
        );
        for panel in board["panels"].as_array().unwrap() {
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap();
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: {title}"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            let expr = |t: &Value| t["expr"].as_str().unwrap_or("").to_owned();
            assert!(
                targets.iter().all(|t| !expr(t).is_empty()),
                "{file}: {title}"
            );
            // Exemplars exactly where there are request durations to link to traces.
            for target in targets {
                assert_eq!(
                    target["exemplar"].as_bool(),
                    Some(is_latency_query(&expr(target))),
                    "{file}: {title}: exemplar flag of {}",
                    expr(target)
                );
            }
        }
    }
}

/// The provisioned Prometheus data source links the exemplars' `trace_id` label (the
/// one the agent writes) to a tracing data source chosen at deploy time.
#[test]
fn datasource_links_exemplar_trace_ids() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/datasource.yml");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/datasource.yml");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("datasource.yml");
    let sources = v["datasources"].as_sequence().expect("datasources");
    assert_eq!(sources.len(), 1, "{text}");
    assert_eq!(sources[0]["type"].as_str(), Some("prometheus"));
    let destinations = sources[0]["jsonData"]["exemplarTraceIdDestinations"]
        .as_sequence()
        .expect("exemplarTraceIdDestinations");
    assert_eq!(destinations.len(), 1, "{text}");
    assert_eq!(destinations[0]["name"].as_str(), Some("trace_id"));
    assert_eq!(
        destinations[0]["datasourceUid"].as_str(),
        Some("${TRACING_DATASOURCE_UID}")
    );
}

/// One round of every kind of traffic the dashboards show, errors included.
fn traffic(redis: &RedisServer, pg: &PostgresServer, nginx: &Nginx, grpc: &GrpcServer) {
    let redis_port = redis.port.to_string();
    for args in [
        &["SET", "k", "v"][..],
        &["GET", "k"],
        &["INCR", "n"],
        &["HSET", "h", "f", "1"],
    ] {
        run_ok(
            Command::new("redis-cli")
                .args(["-p", &redis_port])
                .args(args),
        );
    }
    // An error reply (WRONGTYPE) for the error panels; redis-cli exits 0 on it.
    run_ok(Command::new("redis-cli").args(["-p", &redis_port, "INCR", "h"]));
    let pg_port = pg.port.to_string();
    let psql = |sql: &str| {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg_port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-c", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("psql")
    };
    assert!(psql(
        "CREATE TABLE IF NOT EXISTS t (n int); INSERT INTO t VALUES (1); SELECT count(*) FROM t"
    )
    .success());
    // SQLSTATE 22012, division by zero.
    assert!(!psql("SELECT 1/0").success());
    for path in ["/", "/missing"] {
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{}{path}", nginx.http1_port))
            .status();
    }
    run_ok(Command::new("python3").arg(grpc_peer()).args([
        "client",
        &grpc.port.to_string(),
        "ok:5",
        "notfound:1",
    ]));
}

#[test]
fn every_panel_returns_data_from_the_real_agent() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let nginx = Nginx::start();
    let grpc = GrpcServer::start();

    // Two "hosts" in two zones for the network and cost panels.
    let lab = NetLab::new("dash");
    let a_cg = lab.cgroup("system.slice/dash-a.service");
    let b_cg = lab.cgroup("system.slice/dash-b.service");
    let a = lab.add_pod(
        "a",
        Ipv4Addr::new(10, 203, 1, 2),
        Ipv4Addr::new(10, 203, 1, 1),
        30,
        &a_cg,
    );
    let b = lab.add_pod(
        "b",
        Ipv4Addr::new(10, 203, 2, 2),
        Ipv4Addr::new(10, 203, 2, 1),
        30,
        &b_cg,
    );
    let dir = TempDir::new("nodetap-dash");
    let config = dir.0.join("nodetap.toml");
    std::fs::write(
        &config,
        "[zones]\nzone = \"use1-az1\"\nimds_endpoint = \"\"\n\n\
         [[zones.subnets]]\ncidr = \"10.203.1.0/24\"\nzone = \"use1-az1\"\n\n\
         [[zones.subnets]]\ncidr = \"10.203.2.0/24\"\nzone = \"use1-az2\"\n",
    )
    .unwrap();
    // Spans on (every request kept) so the duration histograms carry exemplars.
    let receiver = OtlpReceiver::start(Transport::Http);
    let endpoint = receiver.endpoint();
    let agent = Agent::start(&[
        "--config",
        config.to_str().unwrap(),
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--traces-sampler",
        "always_on",
        "--spans-batch-delay",
        "200",
    ]);

    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.yml");
    let prometheus = Prometheus::start_with_flags(
        &format!(
            "  - job_name: nodetap\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            agent.port
        ),
        &[rules],
        &["--enable-feature=exemplar-storage"],
    );

    // Traffic for a while, so every rate has samples on both sides of an increase.
    let port = 7300;
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline {
        traffic(&redis, &pg, &nginx, &grpc);
        let server = b
            .command(helper_bin("netxfer"))
            .args(["serve", &b.addr.to_string(), &port.to_string(), "1"])
            .stdout(Stdio::null())
            .spawn()
            .expect("netxfer serve");
        b.wait_listening(port, Duration::from_secs(10));
        run_ok(a.command(helper_bin("netxfer")).args([
            "send",
            &b.addr.to_string(),
            &port.to_string(),
            "200000",
            "write",
        ]));
        let _ = server.wait_with_output();
        std::thread::sleep(Duration::from_secs(1));
    }

    let mut empty = Vec::new();
    let all = queries();
    for (file, title, query, _) in &all {
        let expanded = expand(query);
        // Query errors (a parse error) panic inside `query` with the query named.
        let result = prometheus.query(&expanded);
        if result.is_empty() {
            empty.push(format!("{file}: {title}: {expanded}"));
        }
    }
    println!("{} panel queries checked", all.len());
    assert!(
        empty.is_empty(),
        "panel queries with no data while traffic ran:\n{}",
        empty.join("\n")
    );

    // What Grafana asks for an exemplar-enabled query (`/api/v1/query_exemplars` with the
    // panel's expression): exemplars of the panel's own family, each naming a span the
    // agent exported. The exemplars are read first: a span an exemplar names was queued
    // before the scrape that carried it, so 3 s later (batch delay 200 ms) it has been
    // exported unless the exporter dropped it (the agent sees the whole machine's
    // traffic, which can fill the queue: then only unexported exemplars are excused).
    let mut answers = Vec::new();
    for (file, title, query, exemplars) in &all {
        if *exemplars {
            let expanded = expand(query);
            let found = prometheus.query_exemplars(&expanded);
            answers.push((file, title, expanded, found));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let exported: std::collections::HashSet<(String, String)> = receiver
        .spans()
        .iter()
        .map(|s| {
            (
                s["trace_id"].as_str().unwrap().to_owned(),
                s["span_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(!exported.is_empty(), "no spans reached the OTLP receiver");
    let dropped = metric_sum(&agent.scrape(), "nodetap_spans_dropped_total", &[]);
    let mut problems = Vec::new();
    for (file, title, expanded, found) in &answers {
        let mut linked = 0;
        for (series, labels, value, _) in found {
            let name = series["__name__"].as_str().unwrap_or("");
            if name.is_empty() || !expanded.contains(name) || !name.ends_with("_bucket") {
                problems.push(format!("{file}: {title}: exemplar of {series}"));
            }
            match (labels.get("trace_id"), labels.get("span_id")) {
                (Some(trace), Some(span)) if exported.contains(&(trace.clone(), span.clone())) => {
                    linked += 1
                }
                _ if dropped > 0.0 => {}
                _ => problems.push(format!(
                    "{file}: {title}: exemplar {labels:?} on {series} names no exported span \
                     (none dropped)"
                )),
            }
            if !(*value > 0.0 && *value < 10.0) {
                problems.push(format!("{file}: {title}: exemplar value {value}"));
            }
        }
        if linked == 0 {
            problems.push(format!(
                "{file}: {title}: none of {} exemplars names an exported span: {expanded}",
                found.len()
            ));
        }
    }
    println!(
        "{} exemplar queries checked ({} spans exported, {dropped} dropped)",
        answers.len(),
        exported.len()
    );
    assert!(
        answers.len() >= 8,
        "only {} panel queries ask for exemplars",
        answers.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
