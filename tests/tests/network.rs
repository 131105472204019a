//! IP bytes per workload and zone pair, checked against the kernel's own veth counters.
//!
//! Network namespaces joined by veth pairs to a router namespace stand in for pods and
//! hosts (tests/src/netlab.rs keeps the wire silent but for the test's traffic), their
//! processes in cgroups the test creates. Every packet a pod's interface counts was sent
//! or received by a socket of the pod's own process, so the agent's bytes for that
//! workload must equal the interface's IP bytes (bytes − 14 per frame) exactly.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener},
    process::Output,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use nodetap_tests::{
    helper_bin, metric_value,
    netlab::{NetLab, PodNet, VethCounters},
    servers::TempDir,
    Agent,
};

const SETTLE: Duration = Duration::from_secs(20);

/// Runs `netxfer send` in `from` to `to`'s server and checks it succeeded.
fn send(from: &PodNet, to: Ipv4Addr, port: u16, bytes: u64, api: &str) {
    let out: Output = from
        .command(helper_bin("netxfer"))
        .args([
            "send",
            &to.to_string(),
            &port.to_string(),
            &bytes.to_string(),
            api,
        ])
        .output()
        .expect("run netxfer send");
    assert!(
        out.status.success(),
        "netxfer send {api} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `netxfer serve` in `pod` for `conns` connections and waits until it listens.
fn serve(pod: &PodNet, port: u16, conns: u32) -> std::process::Child {
    let child = pod
        .command(helper_bin("netxfer"))
        .args([
            "serve",
            &pod.addr.to_string(),
            &port.to_string(),
            &conns.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run netxfer serve");
    pod.wait_listening(port, Duration::from_secs(10));
    child
}

/// Starts the agent and checks that the byte accounting hooks attached: they are
/// optional to the agent, not to these tests.
fn start_agent(config: &std::path::Path) -> Agent {
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    let text = agent.scrape();
    for hook in ["egress", "ingress"] {
        let probe = format!(
            "cgroup_skb/{hook} on {}",
            nodetap_tests::netlab::cgroup2_mount().display()
        );
        assert_eq!(
            metric_value(
                &text,
                "nodetap_probe_attached",
                &[("probe", &probe), ("required", "false")]
            ),
            Some(1.0),
            "{probe} did not attach; agent output:\n{}",
            agent.output()
        );
    }
    agent
}

fn finish(child: std::process::Child) {
    let out = child.wait_with_output().expect("netxfer serve");
    assert!(out.status.success(), "netxfer serve failed");
}

/// One workload's network series, by (direction, src_zone, dst_zone): bytes, packets.
fn series(text: &str, labels: &[(&str, &str)], dir: &str, src: &str, dst: &str) -> (u64, u64) {
    let mut l: Vec<(&str, &str)> = labels.to_vec();
    l.extend([("direction", dir), ("src_zone", src), ("dst_zone", dst)]);
    let bytes = metric_value(text, "nodetap_network_bytes_total", &l).unwrap_or(0.0) as u64;
    let packets = metric_value(text, "nodetap_network_packets_total", &l).unwrap_or(0.0) as u64;
    (bytes, packets)
}

/// Sum of every network series whose labels include `labels`, by direction.
fn totals(text: &str, labels: &[(&str, &str)]) -> [(u64, u64); 2] {
    let families = nodetap_tests::exposition::parse(text).expect("valid exposition");
    let mut out = [(0u64, 0u64); 2];
    for f in &families {
        for s in &f.samples {
            if !s.has_labels(labels) {
                continue;
            }
            let dir = match s.labels.get("direction").map(String::as_str) {
                Some("transmit") => 0,
                Some("receive") => 1,
                _ => continue,
            };
            match s.name.as_str() {
                "nodetap_network_bytes_total" => out[dir].0 += s.value as u64,
                "nodetap_network_packets_total" => out[dir].1 += s.value as u64,
                _ => {}
            }
        }
    }
    out
}

/// What the pod's interface says: [(transmit IP bytes, packets), (receive ...)].
fn wire(c: &VethCounters) -> [(u64, u64); 2] {
    [
        (c.tx_ip_bytes(), c.tx_packets),
        (c.rx_ip_bytes(), c.rx_packets),
    ]
}

/// A stand-in for the EC2 instance metadata service (IMDSv2): a token for a PUT, the
/// zone for a GET that carries the token. Records request lines.
struct FakeImds {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeImds {
    fn start(zone: &'static str) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake IMDS");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut token_ok = false;
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if lower.starts_with("x-aws-ec2-metadata-token: t0ken") {
                        token_ok = true;
                    }
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                seen.lock().unwrap().push(line.trim_end().to_owned());
                let (status, body) = if line.starts_with("PUT /latest/api/token ") {
                    ("200 OK", "t0ken")
                } else if line.starts_with("GET /latest/meta-data/placement/availability-zone ")
                    && token_ok
                {
                    ("200 OK", zone)
                } else {
                    ("401 Unauthorized", "")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeImds { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A plain host, no Kubernetes: the zone comes from (a stand-in) IMDS, peers' zones
/// from the subnet table, workloads are systemd services. An app in the local zone
/// sends to a Redis-like server in another zone by write(2) and by sendfile(2), and to
/// a peer in its own zone.
#[test]
fn plain_host_bytes_by_zone_pair_equal_the_veth_counters() {
    let imds = FakeImds::start("use1-az1");
    let lab = NetLab::new("host");
    let app_cg = lab.cgroup("system.slice/fake-app.service");
    let cache_cg = lab.cgroup("system.slice/system-cache.slice/fake-cache@main.service");
    let peer_cg = lab.cgroup("system.slice/fake-peer.service");
    let app = lab.add_pod(
        "app",
        Ipv4Addr::new(10, 201, 1, 2),
        Ipv4Addr::new(10, 201, 1, 1),
        30,
        &app_cg,
    );
    let peer = lab.add_pod(
        "peer",
        Ipv4Addr::new(10, 201, 1, 6),
        Ipv4Addr::new(10, 201, 1, 5),
        30,
        &peer_cg,
    );
    let cache = lab.add_pod(
        "cache",
        Ipv4Addr::new(10, 201, 2, 2),
        Ipv4Addr::new(10, 201, 2, 1),
        30,
        &cache_cg,
    );

    let dir = TempDir::new("nodetap-net");
    let config = dir.0.join("nodetap.toml");
    std::fs::write(
        &config,
        format!(
            "[zones]\nimds_endpoint = \"{}\"\n\n\
             [[zones.subnets]]\ncidr = \"10.201.1.0/24\"\nzone = \"use1-az1\"\n\n\
             [[zones.subnets]]\ncidr = \"10.201.2.0/24\"\nzone = \"use1-az2\"\n",
            imds.url()
        ),
    )
    .unwrap();
    let agent = start_agent(&config);
    agent.scrape_until(Duration::from_secs(10), |t| {
        metric_value(
            t,
            "nodetap_zone_info",
            &[("zone", "use1-az1"), ("source", "imds")],
        ) == Some(1.0)
    });

    let before = [app.counters(), cache.counters(), peer.counters()];
    let port = 7100;
    let server = serve(&cache, port, 2);
    send(&app, cache.addr, port, 1_000_000, "write");
    send(&app, cache.addr, port, 700_000, "sendfile");
    finish(server);
    let server = serve(&peer, port, 1);
    send(&app, peer.addr, port, 300_000, "write");
    finish(server);
    lab.wait_quiet(
        &[&app, &cache, &peer],
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    let app_wire = wire(&app.counters().since(&before[0]));
    let cache_wire = wire(&cache.counters().since(&before[1]));
    let peer_wire = wire(&peer.counters().since(&before[2]));

    let app_l = [("service_name", "fake-app")];
    let cache_l = [("service_name", "fake-cache@main")];
    let peer_l = [("service_name", "fake-peer")];
    let text = agent.scrape_until(SETTLE, |t| {
        totals(t, &app_l) == app_wire
            && totals(t, &cache_l) == cache_wire
            && totals(t, &peer_l) == peer_wire
    });

    eprintln!(
        "veth [(tx IP bytes, packets), (rx ...)]: app {app_wire:?} cache {cache_wire:?} peer {peer_wire:?}"
    );
    // Each workload's bytes and packets, both ways, equal its interface's exactly.
    assert_eq!(
        totals(&text, &app_l),
        app_wire,
        "fake-app vs its veth [(tx bytes, packets), (rx ...)]\n{text}"
    );
    assert_eq!(
        totals(&text, &cache_l),
        cache_wire,
        "fake-cache vs its veth\n{text}"
    );
    assert_eq!(
        totals(&text, &peer_l),
        peer_wire,
        "fake-peer vs its veth\n{text}"
    );

    // Zone pairs are never mixed: what the app exchanged with the cache is all
    // cross-zone and equals the cache's own counters; with the peer, all same-zone.
    let cross_tx = series(&text, &app_l, "transmit", "use1-az1", "use1-az2");
    let cross_rx = series(&text, &app_l, "receive", "use1-az2", "use1-az1");
    let same_tx = series(&text, &app_l, "transmit", "use1-az1", "use1-az1");
    let same_rx = series(&text, &app_l, "receive", "use1-az1", "use1-az1");
    assert_eq!(
        [cross_tx, cross_rx],
        [cache_wire[1], cache_wire[0]],
        "app<->cache is cross-zone\n{text}"
    );
    assert_eq!(
        [same_tx, same_rx],
        [peer_wire[1], peer_wire[0]],
        "app<->peer is same-zone\n{text}"
    );
    assert_eq!(
        series(&text, &cache_l, "receive", "use1-az1", "use1-az2"),
        cache_wire[1],
        "the cache received from zone use1-az1\n{text}"
    );
    // The payload is in there: 1.7 MB one way, plus headers.
    assert!(cross_tx.0 > 1_700_000, "{cross_tx:?}");

    let requests = imds.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        [
            "PUT /latest/api/token HTTP/1.1",
            "GET /latest/meta-data/placement/availability-zone HTTP/1.1"
        ],
        "IMDSv2 exchange"
    );
}

/// One stand-in pod: its uid, container id and kubelet-style (systemd driver) cgroup.
struct PodSpec {
    name: &'static str,
    uid: &'static str,
    container_id: String,
}

impl PodSpec {
    fn new(name: &'static str, uid: &'static str, seed: char) -> PodSpec {
        PodSpec {
            name,
            uid,
            container_id: seed.to_string().repeat(64),
        }
    }

    fn cgroup(&self) -> String {
        nodetap_tests::netlab::kubelet_cgroup(self.uid, &self.container_id)
    }
}

/// On Kubernetes: pods in kubelet cgroups, their metadata from a stand-in API server
/// (watched by the real client), zones from the nodes' labels and pod CIDRs. Pod A
/// sends to pod B, whose address is in the pod CIDR of a node in the other zone
/// (write to its pod address, sendfile to a Service address), and to pod C in its own
/// zone.
#[test]
fn pod_bytes_by_zone_pair_equal_the_veth_counters() {
    let kube = nodetap_tests::fake_kube::FakeKube::start();
    let node = "node-a";
    kube.add_node(nodetap_tests::fake_kube::node_json(
        node,
        Some("zone-a"),
        "192.0.2.10",
        "10.201.1.0/24",
    ));
    kube.add_node(nodetap_tests::fake_kube::node_json(
        "node-b",
        Some("zone-b"),
        "192.0.2.11",
        "10.201.2.0/24",
    ));
    let pods = [
        PodSpec::new(
            "cart-7d9f8b6c5-x2x4q",
            "5b1f0c3e-1d2a-4c6b-9e8f-000000000a01",
            'a',
        ),
        PodSpec::new("stock-0", "5b1f0c3e-1d2a-4c6b-9e8f-000000000b02", 'b'),
        PodSpec::new(
            "ledger-6c4b9d7f8-k8s9z",
            "5b1f0c3e-1d2a-4c6b-9e8f-000000000c03",
            'c',
        ),
    ];
    let owners = [
        ("ReplicaSet", "cart-7d9f8b6c5", "7d9f8b6c5", "cart"),
        ("StatefulSet", "stock", "", "stock"),
        ("ReplicaSet", "ledger-6c4b9d7f8", "6c4b9d7f8", "ledger"),
    ];
    for (pod, (kind, owner, hash, _)) in pods.iter().zip(owners) {
        let labels: Vec<(&str, &str)> = if hash.is_empty() {
            vec![]
        } else {
            vec![("pod-template-hash", hash)]
        };
        let container = format!("containerd://{}", pod.container_id);
        kube.add_pod(nodetap_tests::fake_kube::pod_json(
            "shop",
            pod.name,
            pod.uid,
            node,
            Some((kind, owner)),
            &labels,
            &[("app", &container)],
        ));
    }
    // A pod of another node: never watched.
    kube.add_pod(nodetap_tests::fake_kube::pod_json(
        "shop",
        "elsewhere",
        "5b1f0c3e-1d2a-4c6b-9e8f-000000000d04",
        "node-b",
        None,
        &[],
        &[],
    ));

    let lab = NetLab::new("pods");
    let cgroups: Vec<_> = pods.iter().map(|p| lab.cgroup(&p.cgroup())).collect();
    let a = lab.add_pod(
        "a",
        Ipv4Addr::new(10, 201, 1, 2),
        Ipv4Addr::new(10, 201, 1, 1),
        30,
        &cgroups[0],
    );
    let b = lab.add_pod(
        "b",
        Ipv4Addr::new(10, 201, 2, 2),
        Ipv4Addr::new(10, 201, 2, 1),
        30,
        &cgroups[1],
    );
    let c = lab.add_pod(
        "c",
        Ipv4Addr::new(10, 201, 1, 6),
        Ipv4Addr::new(10, 201, 1, 5),
        30,
        &cgroups[2],
    );

    let dir = TempDir::new("nodetap-k8s");
    let config = dir.0.join("nodetap.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\napi_url = \"{}\"\nnode_name = \"{node}\"\n\n[zones]\nimds_endpoint = \"\"\n",
            kube.url()
        ),
    )
    .unwrap();
    let agent = start_agent(&config);
    let text = agent.scrape_until(Duration::from_secs(20), |t| {
        metric_value(
            t,
            "nodetap_zone_info",
            &[("zone", "zone-a"), ("source", "node_label")],
        ) == Some(1.0)
            && metric_value(t, "nodetap_kubernetes_pods", &[]) == Some(3.0)
    });
    assert_eq!(
        metric_value(
            &text,
            "nodetap_zone_info",
            &[("zone", "zone-a"), ("source", "node_label")]
        ),
        Some(1.0),
        "this node's zone from its label\n{}",
        agent.output()
    );
    assert_eq!(
        metric_value(&text, "nodetap_kubernetes_pods", &[]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "nodetap_kubernetes_nodes", &[]),
        Some(2.0),
        "{text}"
    );

    // A Service address for b, translated in a's namespace as kube-proxy does (DNAT in
    // OUTPUT): replies reach a's socket with the Service address as their source, and
    // must still count as coming from zone-b.
    let port = 7200;
    let service_ip = Ipv4Addr::new(10, 100, 0, 10);
    let dnat = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a.netns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
        ])
        .args([
            "-d",
            &service_ip.to_string(),
            "--dport",
            &port.to_string(),
            "-j",
            "DNAT",
        ])
        .args(["--to-destination", &format!("{}:{port}", b.addr)])
        .status()
        .expect("iptables (apt-get install iptables, or cargo xtask setup)");
    assert!(dnat.success(), "iptables DNAT rule in pod a");

    let before = [a.counters(), b.counters(), c.counters()];
    let server = serve(&b, port, 2);
    send(&a, b.addr, port, 1_000_000, "write");
    send(&a, service_ip, port, 700_000, "sendfile");
    finish(server);
    let server = serve(&c, port, 1);
    send(&a, c.addr, port, 300_000, "write");
    finish(server);
    lab.wait_quiet(
        &[&a, &b, &c],
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    let a_wire = wire(&a.counters().since(&before[0]));
    let b_wire = wire(&b.counters().since(&before[1]));
    let c_wire = wire(&c.counters().since(&before[2]));

    let labels = |i: usize| {
        [
            ("k8s_namespace_name", "shop"),
            ("k8s_pod_name", pods[i].name),
            ("k8s_container_name", "app"),
            ("k8s_owner_name", owners[i].3),
            ("service_name", owners[i].3),
        ]
    };
    let (la, lb, lc) = (labels(0), labels(1), labels(2));
    let text = agent.scrape_until(SETTLE, |t| {
        totals(t, &la) == a_wire && totals(t, &lb) == b_wire && totals(t, &lc) == c_wire
    });
    eprintln!("veth [(tx IP bytes, packets), (rx ...)]: a {a_wire:?} b {b_wire:?} c {c_wire:?}");
    assert_eq!(
        totals(&text, &la),
        a_wire,
        "pod a vs its veth [(tx bytes, packets), (rx ...)]\n{text}"
    );
    assert_eq!(totals(&text, &lb), b_wire, "pod b vs its veth\n{text}");
    assert_eq!(totals(&text, &lc), c_wire, "pod c vs its veth\n{text}");
    // Never mixed: a<->b is all cross-zone, a<->c all same-zone.
    assert_eq!(
        [
            series(&text, &la, "transmit", "zone-a", "zone-b"),
            series(&text, &la, "receive", "zone-b", "zone-a")
        ],
        [b_wire[1], b_wire[0]],
        "a<->b is cross-zone\n{text}"
    );
    assert_eq!(
        [
            series(&text, &la, "transmit", "zone-a", "zone-a"),
            series(&text, &la, "receive", "zone-a", "zone-a")
        ],
        [c_wire[1], c_wire[0]],
        "a<->c is same-zone\n{text}"
    );
    assert_eq!(
        [
            series(&text, &lb, "receive", "zone-a", "zone-b"),
            series(&text, &lb, "transmit", "zone-b", "zone-a")
        ],
        [b_wire[1], b_wire[0]],
        "b's side, seen from zone-b\n{text}"
    );
    let requests = kube.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "the pod watch is limited to this node: {requests:#?}"
    );
}

/// The recording rule that turns inter-zone bytes into a cost, checked by Prometheus's
/// own rule tester: same-zone and internet traffic cost nothing, each direction is
/// priced.
#[test]
fn cross_zone_cost_recording_rule() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "rules_test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (apt-get install prometheus, or cargo xtask setup)");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
