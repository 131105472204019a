//! The Kubernetes API down and flapping, against the real agent and its real watch
//! client (kube-rs) on a stand-in API server: pods' labels stay on their series while
//! the API is unreachable, and when it is back the watch resumes and picks up a pod
//! created meanwhile; and a pod whose cgroup is removed (and the pod deleted) right after
//! its last connection keeps its bytes under its labels. Pods are kubelet-named cgroups
//! on this host; their traffic is tcpgen on loopback, so every byte is known.

use std::time::Duration;

use nodetap_tests::{
    fake_kube::{node_json, pod_json, FakeKube},
    helper_bin, metric_sum, metric_value,
    netlab::{kubelet_cgroup, LabCgroup, NetLab},
    servers::TempDir,
    Agent, Checked,
};
use serde_json::Value;

const NODE: &str = "node-a";
const NAMESPACE: &str = "shop";

struct Pod {
    name: &'static str,
    uid: &'static str,
    container_id: String,
}

impl Pod {
    fn new(name: &'static str, uid: &'static str, seed: char) -> Pod {
        Pod {
            name,
            uid,
            container_id: seed.to_string().repeat(64),
        }
    }

    fn json(&self) -> Value {
        let container = format!("containerd://{}", self.container_id);
        pod_json(
            NAMESPACE,
            self.name,
            self.uid,
            NODE,
            None,
            &[],
            &[("app", &container)],
        )
    }
}

/// tcpgen in `cgroup`, 100 writes of 100 bytes and a 1,000-byte reply; returns the bytes
/// its client sent.
fn traffic(cgroup: &LabCgroup) -> f64 {
    let out = cgroup
        .command(helper_bin("tcpgen"))
        .args(["ntkube", "v4", "rw", "100", "100", "1000"])
        .output()
        .checked("run tcpgen in a pod cgroup");
    let report: Value = serde_json::from_slice(&out.stdout).expect("tcpgen prints JSON");
    report["client"]["sent"]
        .as_f64()
        .unwrap_or_else(|| panic!("tcpgen report lacks client.sent: {report}"))
}

/// Bytes the agent counts as sent by clients of pod `name`.
fn pod_bytes(text: &str, name: &str) -> f64 {
    metric_sum(
        text,
        "nodetap_tcp_bytes_total",
        &[
            ("direction", "transmit"),
            ("role", "client"),
            ("k8s_namespace_name", NAMESPACE),
            ("k8s_pod_name", name),
        ],
    )
}

fn assert_pod_bytes(agent: &Agent, name: &str, want: f64, when: &str) {
    let text = agent.scrape_until(Duration::from_secs(15), |t| pod_bytes(t, name) == want);
    assert_eq!(
        pod_bytes(&text, name),
        want,
        "{when}: bytes sent by pod {name}, as the agent labels them\n{}",
        nodetap_tests::lines_with(
            &text,
            "nodetap_tcp_bytes_total{direction=\"transmit\",role=\"client\""
        )
    );
}

fn watch_errors(agent: &Agent) -> f64 {
    metric_value(
        &agent.scrape(),
        "nodetap_kubernetes_watch_errors_total",
        &[],
    )
    .unwrap_or(0.0)
}

/// Takes the API down: open watches end and every request fails until `up`.
fn down(kube: &FakeKube) {
    kube.fail_next_requests(u32::MAX);
    kube.close_watches();
}

fn up(kube: &FakeKube) {
    kube.fail_next_requests(0);
}

#[test]
fn pod_labels_survive_the_api_down_and_flapping_and_the_watch_resumes() {
    let _serial = nodetap_tests::serial();
    let kube = FakeKube::start();
    kube.add_node(node_json(
        NODE,
        Some("zone-a"),
        "192.0.2.10",
        "10.201.1.0/24",
    ));
    let first = Pod::new("cart-0", "6c2e0d4f-2e3b-4d7c-8f90-000000000a01", 'e');
    let later = Pod::new("cart-1", "6c2e0d4f-2e3b-4d7c-8f90-000000000b02", 'f');
    kube.add_pod(first.json());

    let lab = NetLab::new("kubedown");
    let first_cgroup = lab.cgroup(&kubelet_cgroup(first.uid, &first.container_id));
    let later_cgroup = lab.cgroup(&kubelet_cgroup(later.uid, &later.container_id));

    let (_dir, agent) = agent_listing_one_pod(&kube, "kubedown");

    // Up: the pod's traffic carries its labels.
    let mut sent = traffic(&first_cgroup);
    assert_pod_bytes(&agent, first.name, sent, "API up");

    // Down: the watch fails (and says so), and the labels stay.
    let errors = watch_errors(&agent);
    down(&kube);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while watch_errors(&agent) <= errors && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        watch_errors(&agent) > errors,
        "no watch error counted while the API is down"
    );
    // A pod created while the API is down: the agent cannot know it yet.
    kube.add_pod(later.json());
    sent += traffic(&first_cgroup);
    assert_pod_bytes(&agent, first.name, sent, "API down");
    assert_eq!(
        metric_value(&agent.scrape(), "nodetap_kubernetes_pods", &[]),
        Some(1.0),
        "the pods known before the API went down are kept"
    );

    // Flapping: up and down every half second, with traffic each time.
    for _ in 0..4 {
        up(&kube);
        std::thread::sleep(Duration::from_millis(500));
        down(&kube);
        sent += traffic(&first_cgroup);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_pod_bytes(&agent, first.name, sent, "API flapping");

    // Back: the watch resumes and picks up the pod created meanwhile.
    up(&kube);
    let text = agent.scrape_until(Duration::from_secs(60), |t| {
        metric_value(t, "nodetap_kubernetes_pods", &[]) == Some(2.0)
    });
    assert_eq!(
        metric_value(&text, "nodetap_kubernetes_pods", &[]),
        Some(2.0),
        "the resumed watch has the pod created while the API was down; agent output:\n{}",
        agent.output()
    );
    let later_sent = traffic(&later_cgroup);
    assert_pod_bytes(&agent, later.name, later_sent, "API back, new pod");
    sent += traffic(&first_cgroup);
    assert_pod_bytes(&agent, first.name, sent, "API back");
}

/// A pod that ends as its last connections close: its container's cgroup is removed and
/// the pod deleted from the API right after its process exits, while the agent may still
/// have the connection's records to drain. Its bytes stay exact and under its labels.
#[test]
fn a_pods_counts_stay_with_it_when_its_cgroup_goes_while_they_drain() {
    let _serial = nodetap_tests::serial();
    let kube = FakeKube::start();
    kube.add_node(node_json(
        NODE,
        Some("zone-a"),
        "192.0.2.10",
        "10.201.1.0/24",
    ));
    let pod = Pod::new("batch-0", "6c2e0d4f-2e3b-4d7c-8f90-000000000c03", 'd');
    kube.add_pod(pod.json());
    let lab = NetLab::new("kubegone");

    let (_dir, agent) = agent_listing_one_pod(&kube, "kubegone");

    let container = lab.cgroup(&kubelet_cgroup(pod.uid, &pod.container_id));
    let sent = traffic(&container);
    // The process has exited: the container's cgroup is empty and goes at once, the pod
    // with it (the kubelet removes the cgroup, the API server the pod).
    std::fs::remove_dir(&container.path)
        .unwrap_or_else(|e| panic!("remove {}: {e}", container.path.display()));
    assert!(kube.delete_pod(NAMESPACE, pod.name), "pod deleted");
    assert_pod_bytes(&agent, pod.name, sent, "cgroup removed and pod deleted");
}

/// The agent watching the stand-in API for this node's pods, once it lists the one pod
/// there (the config's directory lives as long as the agent).
fn agent_listing_one_pod(kube: &FakeKube, name: &str) -> (TempDir, Agent) {
    let dir = TempDir::new(&format!("nodetap-{name}"));
    let config = dir.0.join("nodetap.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\napi_url = \"{}\"\nnode_name = \"{NODE}\"\n\n[zones]\nimds_endpoint = \"\"\n",
            kube.url()
        ),
    )
    .expect("write the agent's config");
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    let text = agent.scrape_until(Duration::from_secs(20), |t| {
        metric_value(t, "nodetap_kubernetes_pods", &[]) == Some(1.0)
    });
    assert_eq!(
        metric_value(&text, "nodetap_kubernetes_pods", &[]),
        Some(1.0),
        "the agent lists the node's pod"
    );
    (dir, agent)
}
