use std::net::SocketAddr;

use prost::Message;

use super::{
    export::{build_request, encode_request},
    *,
};
use crate::{
    metadata::workload::{Name, PeerZone},
    protocols::{request::Request, Protocol},
};

fn protocol(label: &str) -> Protocol {
    crate::protocols::PROTOCOLS
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no protocol {label}"))
        .protocol()
}

fn options(sampler: Sampler) -> SpanOptions {
    SpanOptions {
        sampler,
        slow_threshold: Duration::from_millis(100),
        queue_size: 4,
        exporter_addresses: vec!["10.0.0.9:4318".parse().unwrap()],
    }
}

fn spans(sampler: Sampler) -> (Spans, mpsc::Receiver<FinishedSpan>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new("test"));
    let (s, rx) = Spans::new(options(sampler), metrics.clone());
    (s, rx, metrics)
}

fn redis_get(error: Option<&str>, duration_ns: u64) -> Request {
    Request {
        start_ns: 1_000,
        end_ns: 1_000 + duration_ns,
        attributes: Attributes::Db(DbRequest {
            operation: "GET",
            error_type: error.map(str::to_owned),
            status_code: error.map(str::to_owned),
            statement: "GET ?".into(),
            collection: None,
            namespace: None,
        }),
        stream: None,
    }
}

fn http_get(status: u16, traceparent: Option<&str>) -> Request {
    Request {
        start_ns: 5_000,
        end_ns: 9_000,
        attributes: Attributes::Http(HttpRequest {
            method: "GET",
            status,
            route: "/users/{id}".into(),
            path: crate::protocols::request::UrlPath::Path("/users/42".into()),
            request_body_bytes: 0,
            response_body_bytes: 10,
            traceparent: traceparent.map(str::to_owned),
        }),
        stream: None,
    }
}

const SERVER: &str = "10.0.0.2:6379";
const CLIENT: &str = "10.0.0.1:40000";

fn record<'a>(
    protocol: Protocol,
    role: Role,
    request: &'a Request,
    zone: &'a PeerZone,
    workload: &'a WorkloadLabels,
) -> RequestRecord<'a> {
    RequestRecord {
        protocol,
        role,
        request,
        server: SERVER.parse::<SocketAddr>().unwrap(),
        client: CLIENT.parse::<SocketAddr>().unwrap(),
        peer_zone: zone,
        workload,
        link: None,
        thread: None,
        kept_span: Default::default(),
    }
}

fn attributes(span: &FinishedSpan) -> Vec<(String, String)> {
    span.attributes()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), span.text_of(v)))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_redis_client_span_has_the_db_conventions() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let workload = WorkloadLabels::service(Name::new("api"));
    let zone = PeerZone(Some(Name::new("use1-az2")));
    let request = redis_get(None, 2_000);
    let span = s
        .span_of(&record(
            protocol("redis"),
            Role::Client,
            &request,
            &zone,
            &workload,
        ))
        .expect("always_on keeps it");
    assert_eq!(span.name(), "GET");
    assert_eq!(span.kind, Role::Client);
    assert!(!span.error && span.parent.is_none());
    assert_eq!(
        attributes(&span),
        pairs(&[
            ("db.system.name", "redis"),
            ("db.operation.name", "GET"),
            ("db.query.text", "GET ?"),
            ("server.address", "10.0.0.2"),
            ("server.port", "6379"),
            ("network.peer.address", "10.0.0.2"),
            ("network.peer.port", "6379"),
            ("nodetap.peer.zone", "use1-az2"),
        ])
    );
    // One offset for every span: the duration is the kernel's, to the nanosecond.
    assert_eq!(span.end_unix_ns - span.start_unix_ns, 2_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let offset = span.start_unix_ns - 1_000;
    let expected = now - crate::capture::monotonic_ns();
    assert!(
        offset.abs_diff(expected) < 1_000_000_000,
        "wall offset {offset} far from {expected}"
    );
}

#[test]
fn an_http_server_span_joins_the_callers_trace() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let workload = WorkloadLabels::service(Name::new("web"));
    let zone = PeerZone(None);
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let request = http_get(503, Some(tp));
    let span = s
        .span_of(&record(
            protocol("http"),
            Role::Server,
            &request,
            &zone,
            &workload,
        ))
        .unwrap();
    assert_eq!(span.name(), "GET /users/{id}");
    assert_eq!(hex_of(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
    let (parent, remote) = span.parent.unwrap();
    assert_eq!(
        (hex_of(&parent).as_str(), remote),
        ("b7ad6b7169203331", true)
    );
    assert_ne!(span.span_id, parent);
    assert!(span.error);
    assert_eq!(
        attributes(&span),
        pairs(&[
            ("http.request.method", "GET"),
            ("http.response.status_code", "503"),
            ("http.route", "/users/{id}"),
            ("url.path", "/users/42"),
            ("error.type", "503"),
            ("server.address", "10.0.0.2"),
            ("server.port", "6379"),
            ("client.address", "10.0.0.1"),
            ("client.port", "40000"),
            ("network.peer.address", "10.0.0.1"),
            ("network.peer.port", "40000"),
        ])
    );
    // The client side of the same call is the span the header names.
    let request = http_get(404, Some(tp));
    let span = s
        .span_of(&record(
            protocol("http"),
            Role::Client,
            &request,
            &zone,
            &workload,
        ))
        .unwrap();
    assert_eq!(span.name(), "GET");
    assert_eq!(hex_of(&span.span_id), "b7ad6b7169203331");
    assert_eq!(hex_of(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert!(span.parent.is_none());
    // 404: an error for the client, not for a server.
    assert!(span.error);
    let request = http_get(404, None);
    let span = s
        .span_of(&record(
            protocol("http"),
            Role::Server,
            &request,
            &zone,
            &workload,
        ))
        .unwrap();
    assert!(!span.error && span.attribute("error.type").is_none());
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn requests_to_the_otlp_endpoint_make_no_span() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let workload = WorkloadLabels::service(Name::new("collector"));
    let zone = PeerZone(None);
    let request = http_get(200, None);
    let mut r = record(protocol("http"), Role::Server, &request, &zone, &workload);
    assert!(s.span_of(&r).is_some());
    r.server = "10.0.0.9:4318".parse().unwrap();
    assert!(s.span_of(&r).is_none());
}

#[test]
fn both_ends_of_a_linked_request_join_without_meeting() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let workload = WorkloadLabels::service(Name::new("api"));
    let zone = PeerZone(None);
    let request = redis_get(None, 1_000);
    let link = |sequence| LinkKey {
        client_conn: 7,
        server_conn: 9,
        sequence,
    };
    let mut client = record(protocol("redis"), Role::Client, &request, &zone, &workload);
    client.link = Some(link(0));
    let mut server = record(protocol("redis"), Role::Server, &request, &zone, &workload);
    server.link = Some(link(0));
    let (c, srv) = (s.span_of(&client).unwrap(), s.span_of(&server).unwrap());
    assert_eq!(c.trace_id, srv.trace_id);
    assert_eq!(srv.parent, Some((c.span_id, true)));
    assert_ne!(srv.span_id, c.span_id);
    assert!(c.parent.is_none());
    // The next request on the same connections: another trace.
    server.link = Some(link(1));
    let next = s.span_of(&server).unwrap();
    assert_ne!(next.trace_id, c.trace_id);
    assert_ne!(next.parent, srv.parent);
    // A traceparent wins over the link.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let traced = http_get(200, Some(tp));
    let mut r = record(protocol("http"), Role::Server, &traced, &zone, &workload);
    r.link = Some(link(2));
    let span = s.span_of(&r).unwrap();
    assert_eq!(hex_of(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
}

#[test]
fn traceparent_parsing_rejects_what_w3c_rejects() {
    let ok = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
    assert!(!ok.sampled);
    for bad in [
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-ff",
    ] {
        assert_eq!(TraceParent::parse(bad), None, "{bad}");
    }
}

#[test]
fn errors_and_slow_requests_are_kept_when_the_sampler_drops_the_rest() {
    let (mut s, mut rx, metrics) = spans(Sampler::AlwaysOff);
    let workload = WorkloadLabels::service(Name::new("api"));
    let zone = PeerZone(None);
    let fast_ok = redis_get(None, 1_000);
    let fast_error = redis_get(Some("WRONGTYPE"), 1_000);
    let slow_ok = redis_get(None, 100_000_000);
    for request in [&fast_ok, &fast_error, &slow_ok, &fast_ok] {
        s.record(&record(
            protocol("redis"),
            Role::Client,
            request,
            &zone,
            &workload,
        ));
    }
    let mut kept = Vec::new();
    while let Ok(span) = rx.try_recv() {
        kept.push((span.error, span.end_unix_ns - span.start_unix_ns));
    }
    assert_eq!(kept, vec![(true, 1_000), (false, 100_000_000)]);
    assert_eq!(metrics.spans_not_sampled.get(), 2);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let (mut s, mut rx, metrics) = spans(Sampler::AlwaysOn);
    let workload = WorkloadLabels::service(Name::new("api"));
    let zone = PeerZone(None);
    let request = redis_get(None, 1_000);
    for _ in 0..10 {
        s.record(&record(
            protocol("redis"),
            Role::Client,
            &request,
            &zone,
            &workload,
        ));
    }
    let mut queued = 0;
    while rx.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, 4);
    let dropped = metrics
        .spans_dropped
        .get_or_create(&ReasonLabels {
            reason: "queue_full",
        })
        .get();
    assert_eq!(dropped, 6);
}

#[test]
fn spans_are_grouped_by_workload_into_resources() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let zone = PeerZone(None);
    let api = WorkloadLabels::service(Name::new("api"));
    let worker = WorkloadLabels::service(Name::new("worker"));
    let request = redis_get(None, 1_000);
    let batch: Vec<FinishedSpan> = [&api, &worker, &api]
        .into_iter()
        .map(|w| {
            s.span_of(&record(protocol("redis"), Role::Server, &request, &zone, w))
                .unwrap()
        })
        .collect();
    let options = ExportOptions {
        endpoint: "http://127.0.0.1:4318/v1/traces".parse().unwrap(),
        protocol: OtlpProtocol::HttpProtobuf,
        headers: Vec::new(),
        timeout: Duration::from_secs(1),
        gzip: false,
        batch_size: 10,
        batch_delay: Duration::from_millis(10),
        retry_budget: Duration::from_secs(1),
        resource: vec![
            ("host.name".into(), "node-1".into()),
            ("service.name".into(), "ignored".into()),
        ],
        ca_certificates: None,
        local_zone: Arc::new(|| Some("use1-az1".into())),
    };
    let request = otlp::ExportTraceServiceRequest::decode(&encoded(&batch, &options)[..]).unwrap();
    let resources: Vec<(Vec<(String, String)>, usize)> = request
        .resource_spans
        .iter()
        .map(|rs| {
            let attrs = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .map(|kv| match &kv.value.as_ref().unwrap().value {
                    Some(otlp::Value::StringValue(s)) => (kv.key.clone(), s.clone()),
                    other => panic!("unexpected value {other:?}"),
                })
                .collect();
            (attrs, rs.scope_spans[0].spans.len())
        })
        .collect();
    let resource = |service: &str| {
        pairs(&[
            ("service.name", service),
            ("cloud.availability_zone", "use1-az1"),
            ("host.name", "node-1"),
        ])
    };
    assert_eq!(
        resources,
        vec![(resource("api"), 2), (resource("worker"), 1)]
    );
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.kind, otlp::SPAN_KIND_SERVER);
    assert_eq!(span.flags, otlp::SPAN_FLAGS_SAMPLED);
    assert!(span.status.is_none() && span.parent_span_id.is_empty());
}

/// The export request's bytes for a batch, as the exporter makes them.
fn encoded(batch: &[FinishedSpan], options: &ExportOptions) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(batch, options, &mut out);
    out
}

/// A measurement, not a test (nothing is asserted of the times): the CPU a span costs
/// from its record to its encoded bytes, by step, on this thread. Run it with
/// `cargo test --release -p nodetap --lib per_span_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: prints the cost per span"]
fn per_span_cost() {
    use std::time::Instant;
    const N: u64 = 100_000;
    let metrics = Arc::new(Metrics::new("test"));
    let mut o = options(Sampler::AlwaysOn);
    o.queue_size = 4 * N as usize;
    let (mut s, mut rx) = Spans::new(o, metrics);
    let client = WorkloadLabels::service(Name::new("redis-benchmark"));
    let server = WorkloadLabels::service(Name::new("redis-server"));
    let zone = PeerZone(None);
    let get = redis_get(None, 20_000);
    let http = http_get(200, None);
    let options = ExportOptions {
        endpoint: "http://127.0.0.1:4318/v1/traces".parse().unwrap(),
        protocol: OtlpProtocol::HttpProtobuf,
        headers: Vec::new(),
        timeout: Duration::from_secs(1),
        gzip: false,
        batch_size: 512,
        batch_delay: Duration::from_millis(10),
        retry_budget: Duration::from_secs(1),
        resource: vec![("host.name".into(), "node-1".into())],
        ca_certificates: None,
        local_zone: Arc::new(|| None),
    };
    println!("a span is {} bytes", std::mem::size_of::<FinishedSpan>());
    for round in 0..5 {
        let started = Instant::now();
        for i in 0..N {
            let link = Some(LinkKey {
                client_conn: 7,
                server_conn: 9,
                sequence: i,
            });
            let (request, p) = if i % 4 == 3 {
                (&http, protocol("http"))
            } else {
                (&get, protocol("redis"))
            };
            let mut r = record(p, Role::Client, request, &zone, &client);
            r.link = link;
            s.record(&r);
            let mut r = record(p, Role::Server, request, &zone, &server);
            r.link = link;
            s.record(&r);
        }
        let made = started.elapsed();
        let mut all = Vec::with_capacity(2 * N as usize);
        while let Ok(span) = rx.try_recv() {
            all.push(span);
        }
        let started = Instant::now();
        let mut bytes = 0;
        for batch in all.chunks(512) {
            bytes += encoded(batch, &options).len();
        }
        let encoding = started.elapsed();
        let started = Instant::now();
        drop(all);
        let dropping = started.elapsed();
        let per = |d: Duration| d.as_nanos() as f64 / (2 * N) as f64;
        println!(
            "round {round}: record {:.0} ns, encode {:.0} ns, drop {:.0} ns per span; {} bytes per span",
            per(made),
            per(encoding),
            per(dropping),
            bytes as u64 / (2 * N),
        );
    }
}

/// Every kind of span the signal makes, on both sides, with and without parents, errors,
/// zones and IPv6 peers, over several workloads (one of them twice, as two equal values).
fn every_kind_of_span(s: &Spans) -> Vec<FinishedSpan> {
    use crate::metadata::workload::{PodLabels, WorkloadFields};
    use crate::protocols::request::{Statement, UrlPath};
    let pod = |container: &str| {
        WorkloadLabels::new(WorkloadFields {
            k8s: Some(PodLabels {
                namespace: Name::new("shop"),
                pod: Name::new("cart-7d9f"),
                container: Name::new(container),
                owner: Name::new("cart"),
            }),
            service_name: Name::new("cart"),
        })
    };
    let workloads = [
        WorkloadLabels::service(Name::new("api")),
        pod("cart"),
        pod(""),
        WorkloadLabels::service(Name::new("api")),
    ];
    let zones = [PeerZone(None), PeerZone(Some(Name::new("use1-az2")))];
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let postgres = Request {
        start_ns: 0,
        end_ns: 7_000,
        attributes: Attributes::Db(DbRequest {
            operation: "SELECT",
            error_type: Some("42".into()),
            status_code: Some("42P01".into()),
            statement: Statement::from(
                "SELECT a, b, c FROM orders o JOIN customers c ON o.customer = c.id \
                 WHERE o.id = ? AND c.region IN (?, ?, ?) ORDER BY o.created DESC LIMIT ?",
            ),
            collection: Some("orders".into()),
            namespace: Some("shop".into()),
        }),
        stream: None,
    };
    let redis_set = Request {
        attributes: Attributes::Db(DbRequest {
            operation: "SET",
            error_type: None,
            status_code: None,
            statement: Statement::Placeholders {
                head: "SET",
                count: 2,
            },
            collection: None,
            namespace: Some("0".into()),
        }),
        ..redis_get(None, 3_000)
    };
    let redis_other = Request {
        attributes: Attributes::Db(DbRequest {
            operation: "_OTHER",
            error_type: None,
            status_code: None,
            statement: Statement::EMPTY,
            collection: None,
            namespace: None,
        }),
        ..redis_get(None, 3_000)
    };
    let mut no_response = http_get(0, None);
    if let Attributes::Http(h) = &mut no_response.attributes {
        h.method = "_OTHER";
        h.path = UrlPath::Unknown;
    }
    let mut route_path = http_get(201, Some(tp));
    if let Attributes::Http(h) = &mut route_path.attributes {
        h.path = UrlPath::Route;
    }
    let rpc = |status| Request {
        start_ns: 10,
        end_ns: 20,
        attributes: Attributes::Rpc(RpcRequest {
            system: "grpc",
            service: "shop.Cart".into(),
            method: "Add".into(),
            status,
            traceparent: None,
        }),
        stream: Some(3),
    };
    let requests = [
        (protocol("redis"), redis_get(None, 2_000)),
        (protocol("redis"), redis_get(Some("WRONGTYPE"), 2_000)),
        (protocol("redis"), redis_set),
        (protocol("redis"), redis_other),
        (protocol("postgresql"), postgres),
        (protocol("http"), http_get(200, None)),
        (protocol("http"), http_get(404, Some(tp))),
        (protocol("http"), http_get(503, None)),
        (protocol("http"), no_response),
        (protocol("http"), route_path),
        (protocol("http2"), rpc(0)),
        (protocol("http2"), rpc(14)),
    ];
    let v6_server: SocketAddr = "[2001:db8::5]:8080".parse().unwrap();
    let v6_client: SocketAddr = "[::ffff:10.1.2.3]:51000".parse().unwrap();
    let mut out = Vec::new();
    let mut n = 0u64;
    for (protocol, request) in &requests {
        for role in [Role::Client, Role::Server] {
            for (i, workload) in workloads.iter().enumerate() {
                let zone = &zones[i % 2];
                let mut r = record(*protocol, role, request, zone, workload);
                n += 1;
                match n % 4 {
                    0 => {
                        r.server = v6_server;
                        r.client = v6_client;
                    }
                    1 => {
                        r.link = Some(LinkKey {
                            client_conn: 1,
                            server_conn: 2,
                            sequence: n,
                        })
                    }
                    2 => {
                        r.thread = Some(match role {
                            Role::Server => ThreadContext::Parent {
                                key: RequestKey {
                                    conn: 3,
                                    sequence: n,
                                },
                                trace: TraceSource::Own(RequestKey {
                                    conn: 3,
                                    sequence: n,
                                }),
                                parent: None,
                            },
                            _ => ThreadContext::Child {
                                parent: RequestKey {
                                    conn: 3,
                                    sequence: n,
                                },
                                trace: TraceSource::Own(RequestKey {
                                    conn: 3,
                                    sequence: n,
                                }),
                            },
                        })
                    }
                    _ => {}
                }
                out.push(s.span_of(&r).expect("always_on keeps it"));
            }
        }
    }
    out
}

#[test]
fn the_exporter_writes_the_bytes_prost_writes_for_the_same_messages() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let spans = every_kind_of_span(&s);
    let mut options = export_options();
    for zone in [None, Some("use1-az1")] {
        options.local_zone = Arc::new(move || zone.map(str::to_owned));
        for batch in [&spans[..], &spans[..1], &spans[5..9], &[]] {
            let reference = build_request(batch, &options).encode_to_vec();
            assert!(
                encoded(batch, &options) == reference,
                "the encoding of {} spans differs from prost's",
                batch.len()
            );
        }
        // Past 16 KiB a resource's spans need a 3-byte length.
        let many: Vec<FinishedSpan> = spans.iter().cycle().take(600).cloned().collect();
        assert!(encoded(&many, &options) == build_request(&many, &options).encode_to_vec());
    }
}

fn export_options() -> ExportOptions {
    ExportOptions {
        endpoint: "http://127.0.0.1:4318/v1/traces".parse().unwrap(),
        protocol: OtlpProtocol::HttpProtobuf,
        headers: Vec::new(),
        timeout: Duration::from_secs(1),
        gzip: false,
        batch_size: 512,
        batch_delay: Duration::from_millis(10),
        retry_budget: Duration::from_secs(1),
        resource: vec![
            ("host.name".into(), "node-1".into()),
            ("k8s.pod.name".into(), "not-the-pod".into()),
            ("deployment.environment.name".into(), "prod".into()),
        ],
        ca_certificates: None,
        local_zone: Arc::new(|| None),
    }
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    let mut addresses: Vec<std::net::IpAddr> = (0..=255u8)
        .map(|b| std::net::Ipv4Addr::new(b, 255 - b, b / 3, b.wrapping_mul(7)).into())
        .collect();
    for v6 in [
        "::",
        "::1",
        "2001:db8::5",
        "::ffff:10.1.2.3",
        "fe80::1:2:3:4",
    ] {
        addresses.push(v6.parse().unwrap());
    }
    for ip in addresses {
        let mut out = b"x".to_vec();
        export::write_ip(&mut out, &ip);
        assert_eq!(String::from_utf8(out).unwrap(), format!("x{ip}"));
    }
}

/// The values a span keeps in its own text (names joining two parts, routes, paths,
/// errors) and the ones it shares with the request read back whole.
#[test]
fn joined_names_and_owned_values_read_back_whole() {
    let (s, _rx, _) = spans(Sampler::AlwaysOn);
    let all = every_kind_of_span(&s);
    let find = |name: &str, kind: Role| {
        all.iter()
            .find(|span| span.name() == name && span.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span {name:?}"))
    };
    let values = |span: &FinishedSpan, keys: &[&str]| -> Vec<String> {
        keys.iter()
            .map(|k| span.attribute(k).map_or("-".into(), |v| span.text_of(v)))
            .collect()
    };
    let pg = find("SELECT orders", Role::Server);
    assert_eq!(
        values(
            pg,
            &[
                "db.system.name",
                "db.collection.name",
                "db.namespace",
                "db.response.status_code",
                "error.type"
            ]
        ),
        ["postgresql", "orders", "shop", "42P01", "42"]
    );
    assert!(pg.attribute("db.query.text").is_some_and(|v| pg
        .text_of(v)
        .starts_with("SELECT a, b, c FROM orders o JOIN")));
    let set = find("SET", Role::Client);
    assert_eq!(
        values(set, &["db.query.text", "db.namespace"]),
        ["SET ? ?", "0"]
    );
    let other = find("redis", Role::Client);
    assert_eq!(
        values(other, &["db.operation.name", "db.query.text"]),
        ["_OTHER", "-"]
    );
    let rpc = find("shop.Cart/Add", Role::Client);
    assert_eq!(
        values(
            rpc,
            &[
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code"
            ]
        ),
        ["grpc", "shop.Cart", "Add", "0"]
    );
    let server = find("GET /users/{id}", Role::Server);
    assert_eq!(
        values(server, &["http.route", "url.path"]),
        ["/users/{id}", "/users/42"]
    );
    let client = all
        .iter()
        .find(|span| {
            span.kind == Role::Client
                && span
                    .attribute("http.response.status_code")
                    .is_some_and(|v| *v == AttributeValue::Int(201))
        })
        .unwrap();
    assert_eq!(client.name(), "GET");
    assert_eq!(
        values(client, &["http.route", "url.path", "error.type"]),
        ["/users/{id}", "/users/{id}", "-"]
    );
    let unknown = find("HTTP", Role::Client);
    assert_eq!(
        values(
            unknown,
            &[
                "http.request.method",
                "http.response.status_code",
                "url.path",
                "error.type"
            ]
        ),
        ["_OTHER", "-", "-", "_OTHER"]
    );
    let failed = all
        .iter()
        .find(|span| {
            span.kind == Role::Client
                && span
                    .attribute("http.response.status_code")
                    .is_some_and(|v| *v == AttributeValue::Int(404))
        })
        .unwrap();
    assert_eq!(values(failed, &["error.type"]), ["404"]);
    let v6 = all
        .iter()
        .find(|span| {
            span.attribute("server.address")
                == Some(&AttributeValue::Ip("2001:db8::5".parse().unwrap()))
        })
        .unwrap();
    assert_eq!(
        v6.text_of(v6.attribute("server.address").unwrap()),
        "2001:db8::5"
    );
}
