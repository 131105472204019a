//! End-to-end: the real kube-rs watchers of `metadata::kubernetes` against the stand-in
//! API server of the test harness: this node's pods only, nodes, deletes while
//! disconnected, 410 Gone, server errors.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodetap::metadata::kubernetes::{spawn, KubeIndex, KubeStats, KubernetesConfig, SharedIndex};
use nodetap_tests::fake_kube::{node_json, pod_json, FakeKube};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_pod(index: &SharedIndex, uid: &str) -> bool {
    index.read().unwrap().pod(uid).is_some()
}

fn hex_id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

fn start(fake: &FakeKube) -> (SharedIndex, Arc<KubeStats>, tokio::task::JoinHandle<()>) {
    let _ = env_logger::builder().is_test(true).try_init();
    let index = KubeIndex::new_shared();
    let stats = Arc::new(KubeStats::default());
    let config = KubernetesConfig {
        enabled: Some(true),
        api_url: fake.url(),
        node_name: "node-a".into(),
    };
    let task = spawn(config, index.clone(), stats.clone());
    let task = tokio::spawn(async move {
        let result = task.await.expect("watcher task panicked");
        panic!("watcher task ended: {result:?}");
    });
    (index, stats, task)
}

fn web_pod(containers: &[(&str, &str)]) -> serde_json::Value {
    pod_json(
        "shop",
        "web-5d8f9c7b6-x2x9q",
        "11111111-1111-1111-1111-111111111111",
        "node-a",
        Some(("ReplicaSet", "web-5d8f9c7b6")),
        &[("app", "web"), ("pod-template-hash", "5d8f9c7b6")],
        containers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_this_nodes_pods_and_all_nodes() {
    let fake = FakeKube::start();
    fake.add_node(node_json(
        "node-a",
        Some("eu-west-1a"),
        "192.168.0.10",
        "10.244.1.0/24",
    ));
    fake.add_node(node_json(
        "node-b",
        Some("eu-west-1b"),
        "192.168.0.11",
        "10.244.2.0/24",
    ));
    let web_id = format!("containerd://{}", hex_id(0xa1));
    fake.add_pod(web_pod(&[("web", &web_id)]));
    fake.add_pod(pod_json(
        "db",
        "pg-0",
        "22222222-2222-2222-2222-222222222222",
        "node-a",
        Some(("StatefulSet", "pg")),
        &[],
        &[("postgres", &format!("containerd://{}", hex_id(0xb2)))],
    ));
    fake.add_pod(pod_json(
        "shop",
        "web-5d8f9c7b6-zz",
        "33333333-3333-3333-3333-333333333333",
        "node-b",
        Some(("ReplicaSet", "web-5d8f9c7b6")),
        &[("pod-template-hash", "5d8f9c7b6")],
        &[("web", &format!("containerd://{}", hex_id(0xc3)))],
    ));

    let (index, stats, task) = start(&fake);
    wait_until("initial pods", || {
        has_pod(&index, "11111111-1111-1111-1111-111111111111")
            && has_pod(&index, "22222222-2222-2222-2222-222222222222")
    })
    .await;
    wait_until("initial nodes", || index.read().unwrap().node_count() == 2).await;
    {
        let idx = index.read().unwrap();
        assert!(
            idx.pod("33333333-3333-3333-3333-333333333333").is_none(),
            "pod of node-b indexed"
        );
        let web = idx.pod("11111111-1111-1111-1111-111111111111").unwrap();
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str()),
            ("shop", "web-5d8f9c7b6-x2x9q")
        );
        assert_eq!(
            (web.owner_kind.as_str(), web.owner_name.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(
            web.containers.get(&hex_id(0xa1)).map(String::as_str),
            Some("web")
        );
        let pg = idx.pod("22222222-2222-2222-2222-222222222222").unwrap();
        assert_eq!(
            (pg.owner_kind.as_str(), pg.owner_name.as_str()),
            ("StatefulSet", "pg")
        );

        let a = idx.node("node-a").unwrap();
        assert_eq!(a.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(
            a.internal_ips,
            vec!["192.168.0.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(a.pod_cidrs, vec!["10.244.1.0/24"]);
        assert_eq!(
            idx.node("node-b").unwrap().zone.as_deref(),
            Some("eu-west-1b")
        );
    }
    assert_eq!(stats.pods.load(Ordering::Relaxed), 2);
    assert_eq!(stats.nodes.load(Ordering::Relaxed), 2);

    // A pod added later, and one that is created unscheduled and then bound here.
    fake.add_pod(pod_json(
        "default",
        "bare",
        "44444444-4444-4444-4444-444444444444",
        "node-a",
        None,
        &[],
        &[],
    ));
    fake.add_pod(pod_json(
        "default",
        "late",
        "55555555-5555-5555-5555-555555555555",
        "",
        None,
        &[],
        &[],
    ));
    wait_until("added pod", || {
        has_pod(&index, "44444444-4444-4444-4444-444444444444")
    })
    .await;
    assert!(!has_pod(&index, "55555555-5555-5555-5555-555555555555"));
    fake.update_pod(pod_json(
        "default",
        "late",
        "55555555-5555-5555-5555-555555555555",
        "node-a",
        None,
        &[],
        &[],
    ));
    wait_until("pod bound to this node", || {
        has_pod(&index, "55555555-5555-5555-5555-555555555555")
    })
    .await;
    assert_eq!(
        index
            .read()
            .unwrap()
            .pod("44444444-4444-4444-4444-444444444444")
            .unwrap()
            .owner_kind,
        "Pod"
    );

    // A restarted container gets a new id.
    let restarted = format!("containerd://{}", hex_id(0xd4));
    fake.update_pod(web_pod(&[("web", &restarted)]));
    wait_until("updated containers", || {
        let idx = index.read().unwrap();
        let web = idx.pod("11111111-1111-1111-1111-111111111111").unwrap();
        web.containers.contains_key(&hex_id(0xd4)) && !web.containers.contains_key(&hex_id(0xa1))
    })
    .await;

    assert!(fake.delete_pod("db", "pg-0"));
    wait_until("deleted pod", || {
        !has_pod(&index, "22222222-2222-2222-2222-222222222222")
    })
    .await;

    let before = index.read().unwrap().nodes_generation();
    fake.update_node(node_json(
        "node-b",
        Some("eu-west-1c"),
        "192.168.0.11",
        "10.244.2.0/24",
    ));
    wait_until("node zone change", || {
        index
            .read()
            .unwrap()
            .node("node-b")
            .unwrap()
            .zone
            .as_deref()
            == Some("eu-west-1c")
    })
    .await;
    assert!(index.read().unwrap().nodes_generation() > before);

    let requests = fake.requests();
    let pod_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?"))
        .collect();
    assert!(!pod_requests.is_empty());
    assert!(
        pod_requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{pod_requests:#?}"
    );
    assert!(
        pod_requests.iter().any(|r| r.contains("watch=true")),
        "{pod_requests:#?}"
    );
    assert!(requests.iter().any(|r| r.starts_with("GET /api/v1/nodes?")));
    assert_eq!(stats.watch_errors.load(Ordering::Relaxed), 0);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_closed_streams_expiry_and_errors() {
    let fake = FakeKube::start();
    fake.add_node(node_json(
        "node-a",
        Some("z1"),
        "192.168.0.10",
        "10.244.1.0/24",
    ));
    fake.add_pod(pod_json(
        "ns",
        "p1",
        "00000000-0000-0000-0000-000000000001",
        "node-a",
        None,
        &[],
        &[],
    ));
    let (index, stats, task) = start(&fake);
    wait_until("initial pod", || {
        has_pod(&index, "00000000-0000-0000-0000-000000000001")
    })
    .await;
    wait_until("both watches open", || fake.open_watches() == 2).await;

    // A cleanly closed stream: the watcher resumes from its resourceVersion.
    fake.close_watches();
    fake.add_pod(pod_json(
        "ns",
        "p2",
        "00000000-0000-0000-0000-000000000002",
        "node-a",
        None,
        &[],
        &[],
    ));
    wait_until("pod after stream close", || {
        has_pod(&index, "00000000-0000-0000-0000-000000000002")
    })
    .await;
    assert_eq!(stats.watch_errors.load(Ordering::Relaxed), 0);
    wait_until("both watches reopened", || fake.open_watches() == 2).await;

    // Changes the watcher cannot see, then a compaction: the next watch gets
    // 410 Expired, the watcher relists, and the relist drops the deleted pod.
    fake.hold_watches(true);
    assert!(fake.delete_pod("ns", "p1"));
    fake.add_pod(pod_json(
        "ns",
        "p3",
        "00000000-0000-0000-0000-000000000003",
        "node-a",
        None,
        &[],
        &[],
    ));
    fake.add_node(node_json(
        "node-b",
        Some("z2"),
        "192.168.0.11",
        "10.244.2.0/24",
    ));
    fake.compact();
    fake.hold_watches(false);
    wait_until("relist after 410", || {
        let idx = index.read().unwrap();
        idx.pod("00000000-0000-0000-0000-000000000001").is_none()
            && idx.pod("00000000-0000-0000-0000-000000000003").is_some()
            && idx.node("node-b").is_some()
    })
    .await;
    assert!(fake.gone_sent() >= 2, "gone sent: {}", fake.gone_sent());
    assert!(stats.watch_errors.load(Ordering::Relaxed) >= 2);

    // Failing API requests: retried with backoff until they succeed.
    let errors = stats.watch_errors.load(Ordering::Relaxed);
    wait_until("both watches reopened", || fake.open_watches() == 2).await;
    fake.fail_next_requests(2);
    fake.close_watches();
    fake.add_pod(pod_json(
        "ns",
        "p4",
        "00000000-0000-0000-0000-000000000004",
        "node-a",
        None,
        &[],
        &[],
    ));
    wait_until("pod after failures", || {
        has_pod(&index, "00000000-0000-0000-0000-000000000004")
    })
    .await;
    assert!(stats.watch_errors.load(Ordering::Relaxed) > errors);
    assert_eq!(stats.pods.load(Ordering::Relaxed), 3);
    task.abort();
}

/// The fake's own protocol details that the kube watcher configuration above does not
/// exercise: streaming lists (`sendInitialEvents`), `timeoutSeconds`, chunk framing.
#[test]
fn fake_streaming_list_and_timeout() {
    use std::io::{Read, Write};
    let fake = FakeKube::start();
    fake.add_pod(pod_json(
        "ns",
        "mine",
        "00000000-0000-0000-0000-00000000000a",
        "node-a",
        None,
        &[],
        &[],
    ));
    fake.add_pod(pod_json(
        "ns",
        "theirs",
        "00000000-0000-0000-0000-00000000000b",
        "node-b",
        None,
        &[],
        &[],
    ));
    let addr = fake.url().trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    conn.write_all(
        b"GET /api/v1/pods?watch=1&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dnode-a\
          &allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan HTTP/1.1\r\n\
          Host: fake\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "timeoutSeconds not honoured"
    );
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Transfer-Encoding: chunked"));
    assert!(response.ends_with("\r\n0\r\n\r\n"), "{response}");
    let events: Vec<serde_json::Value> = response
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "mine");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}
