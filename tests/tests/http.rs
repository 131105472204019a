//! Real nginx (HTTP/1.1 and h2c), curl, h2load, and a real gRPC server and client
//! (grpcio), the real agent: exact request counts per method, route and status, and
//! exact call counts per gRPC method and status, on the client and the server side.

use std::{process::Command, time::Duration};

use nodetap_tests::{
    http1::{HttpClient, Response},
    metric_value, own_process_name,
    servers::{grpc_peer, GrpcServer, Nginx},
    Agent, Checked,
};

fn http_series(text: &str, family: &str, labels: [(&str, &str); 5]) -> f64 {
    metric_value(text, family, &labels).unwrap_or(0.0)
}

struct Expect {
    side: &'static str,
    service: String,
    port: u16,
    method: &'static str,
    status: &'static str,
    route: &'static str,
    count: f64,
}

fn count_of(text: &str, e: &Expect) -> f64 {
    http_series(
        text,
        &format!("http_{}_request_duration_seconds_count", e.side),
        [
            ("http_request_method", e.method),
            ("http_response_status_code", e.status),
            ("http_route", e.route),
            ("server_port", &e.port.to_string()),
            ("service_name", &e.service),
        ],
    )
}

#[test]
fn http1_and_h2c_requests_exact_on_both_sides() {
    let nginx = Nginx::start();
    let agent = Agent::start(&[]);
    let me = own_process_name();
    let (p1, p2) = (nginx.http1_port, nginx.h2c_port);

    let mut client = HttpClient::connect(p1);
    for _ in 0..20 {
        assert_eq!(client.request("GET", "/users/123", b"").status, 200);
    }
    for _ in 0..10 {
        assert_eq!(
            client.request("GET", "/users/456?tab=orders", b"").status,
            200
        );
    }
    for _ in 0..15 {
        assert_eq!(
            client.request("GET", "/index.html", b""),
            Response {
                status: 200,
                body_len: 612
            }
        );
    }
    for _ in 0..5 {
        assert_eq!(client.request("GET", "/missing", b"").status, 404);
    }
    // nginx closes the connection after its own 500s: one connection each.
    for _ in 0..4 {
        assert_eq!(
            HttpClient::connect(p1)
                .request("GET", "/status/500", b"")
                .status,
            500
        );
    }
    for _ in 0..3 {
        assert_eq!(client.request("HEAD", "/index.html", b"").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            client.request("POST", "/api/items", &[b'p'; 3000]).status,
            200
        );
    }
    // A 1 MB body, far larger than the copied prefix, twice.
    for _ in 0..2 {
        assert_eq!(
            client.request("GET", "/big.bin", b""),
            Response {
                status: 200,
                body_len: 1_000_000
            }
        );
    }
    // Eight requests in one write. Their small responses fit the copied prefix even when
    // nginx answers them in one segment (larger ones would not: see README, limits).
    let pipelined = client.pipeline(&["/api/ping"; 8]);
    assert!(pipelined.iter().all(|r| r.status == 200));
    drop(client);

    let curl = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{p1}/api/ping"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200");

    // h2c with prior knowledge: 100 requests, 10 concurrent streams on one connection.
    let h2 = Command::new("h2load")
        .args(["-n", "100", "-c", "1", "-m", "10"])
        .arg(format!("http://127.0.0.1:{p2}/api/ping"))
        .output()
        .expect("h2load");
    let h2out = String::from_utf8_lossy(&h2.stdout);
    assert!(h2out.contains("100 succeeded"), "{h2out}");

    let e = |side, service: &str, port, method, status, route, count| Expect {
        side,
        service: service.to_owned(),
        port,
        method,
        status,
        route,
        count,
    };
    let mut expected = Vec::new();
    for (side, service) in [("client", me.as_str()), ("server", "nginx")] {
        expected.extend([
            e(side, service, p1, "GET", "200", "/users/{id}", 30.0),
            e(side, service, p1, "HEAD", "200", "/index.html", 3.0),
            e(side, service, p1, "GET", "404", "/missing", 5.0),
            e(side, service, p1, "GET", "500", "/status/{id}", 4.0),
            e(side, service, p1, "POST", "200", "/api/items", 2.0),
            e(side, service, p1, "GET", "200", "/big.bin", 2.0),
        ]);
    }
    expected.extend([
        e("client", &me, p1, "GET", "200", "/index.html", 15.0),
        e("server", "nginx", p1, "GET", "200", "/index.html", 15.0),
        e("client", &me, p1, "GET", "200", "/api/ping", 8.0),
        e("client", "curl", p1, "GET", "200", "/api/ping", 1.0),
        e("server", "nginx", p1, "GET", "200", "/api/ping", 8.0 + 1.0),
        e("client", "h2load", p2, "GET", "200", "/api/ping", 100.0),
        e("server", "nginx", p2, "GET", "200", "/api/ping", 100.0),
    ]);

    let text = agent.scrape_until(Duration::from_secs(15), |t| {
        expected.iter().all(|x| count_of(t, x) == x.count)
    });
    let wrong: Vec<String> = expected
        .iter()
        .filter(|x| count_of(&text, x) != x.count)
        .map(|x| {
            format!(
                "{} {} {} {} {} port {}: agent {}, sent {}",
                x.side,
                x.service,
                x.method,
                x.status,
                x.route,
                x.port,
                count_of(&text, x),
                x.count
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{}\n--- http series ---\n{}",
        wrong.join("\n"),
        text.lines()
            .filter(|l| l.starts_with("http_") && l.contains("_count{")
                || l.starts_with("nodetap_protocol"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Body sizes come from the framing, not from the copied prefix.
    let port = p1.to_string();
    for (side, service) in [("client", me.as_str()), ("server", "nginx")] {
        let body_sum = |what: &str, method: &str, route: &str| {
            http_series(
                &text,
                &format!("http_{side}_{what}_body_size_bytes_sum"),
                [
                    ("http_request_method", method),
                    ("http_response_status_code", "200"),
                    ("http_route", route),
                    ("server_port", &port),
                    ("service_name", service),
                ],
            )
        };
        assert_eq!(
            body_sum("response", "GET", "/big.bin"),
            2_000_000.0,
            "{side}: response bytes of two 1 MB bodies"
        );
        assert_eq!(
            body_sum("request", "POST", "/api/items"),
            6_000.0,
            "{side}: request bytes of two 3000-byte posts"
        );
    }
}

#[test]
fn grpc_calls_exact_on_both_sides() {
    let server = GrpcServer::start();
    let agent = Agent::start(&[]);
    Command::new("python3")
        .arg(grpc_peer())
        .args([
            "client",
            &server.port.to_string(),
            "ok:20",
            "notfound:5",
            "invalid:3",
            "stream:4",
        ])
        .output()
        .checked("grpc client");

    let port = server.port.to_string();
    let expected = [
        ("Echo", "0", 20.0),
        ("Echo", "5", 5.0),
        ("Echo", "3", 3.0),
        ("Stream", "0", 4.0),
    ];
    let count = |text: &str, side: &str, service: &str, method: &str, code: &str| {
        metric_value(
            text,
            &format!("rpc_{side}_call_duration_seconds_count"),
            &[
                ("rpc_system", "grpc"),
                ("rpc_service", "nodetap.test.Echo"),
                ("rpc_method", method),
                ("rpc_grpc_status_code", code),
                ("server_port", &port),
                ("service_name", service),
            ],
        )
        .unwrap_or(0.0)
    };
    let sides = [("client", "grpc-client"), ("server", "grpc-server")];
    let text = agent.scrape_until(Duration::from_secs(15), |t| {
        sides.iter().all(|(side, service)| {
            expected
                .iter()
                .all(|(m, c, n)| count(t, side, service, m, c) == *n)
        })
    });
    let mut wrong = Vec::new();
    for (side, service) in sides {
        for (method, code, want) in expected {
            let got = count(&text, side, service, method, code);
            if got != want {
                wrong.push(format!(
                    "{side} {method} status {code}: agent {got}, made {want}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n--- rpc series ---\n{}",
        wrong.join("\n"),
        text.lines()
            .filter(|l| l.starts_with("rpc_") && l.contains("_count{")
                || l.starts_with("nodetap_protocol"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
