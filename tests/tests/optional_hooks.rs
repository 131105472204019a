//! An optional hook that fails to load, by a real kernel refusal: the agent runs in its
//! own mount namespace where a tmpfs covers the cgroup v2 mount, so /proc/self/mountinfo
//! still names cgroup v2 there but the directory the agent opens is not a cgroup, and
//! the kernel refuses to attach the cgroup_skb programs to it. The agent keeps running,
//! its start-up report and `nodetap_probe_attached` say which hooks failed, and the
//! required hooks still count every byte.

use std::process::Command;

use nodetap_tests::{helper_bin, metric_value, netlab::cgroup2_mount, unique_name, Agent, Checked};
use serde_json::Value;

#[test]
fn a_cgroup_skb_hook_refused_by_the_kernel_leaves_the_agent_running_and_says_so() {
    let _serial = nodetap_tests::serial();
    let mount = cgroup2_mount();
    let script = format!(
        "mount -t tmpfs nodetap-test-not-a-cgroup {} && exec \"$0\" \"$@\"",
        mount.display()
    );
    let mut agent = Agent::start_wrapped(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
        &[],
        |agent| nodetap_tests::try_http_get(&agent.metrics_url()).is_ok(),
    );
    let text = agent.scrape();
    for hook in ["egress", "ingress"] {
        let probe = format!("cgroup_skb/{hook} on {}", mount.display());
        assert_eq!(
            metric_value(
                &text,
                "nodetap_probe_attached",
                &[("probe", &probe), ("required", "false")]
            ),
            Some(0.0),
            "{probe} is reported as not attached; agent output:\n{}",
            agent.output()
        );
        let line = format!("{probe} WARNING: not attached (optional): ");
        assert!(
            agent.output().contains(&line),
            "the start-up report names {probe} and why it failed; agent output:\n{}",
            agent.output()
        );
    }
    assert!(
        agent.process.child.try_wait().expect("try_wait").is_none(),
        "the agent keeps running"
    );

    // The required hooks work: a transfer's bytes are exact.
    let name = unique_name("nthook");
    let out = Command::new(helper_bin("tcpgen"))
        .args([&name, "v4", "rw", "50", "1000", "20000"])
        .output()
        .checked("run tcpgen");
    let report: Value = serde_json::from_slice(&out.stdout).expect("tcpgen prints JSON");
    let sent = report["client"]["sent"].as_f64().expect("client.sent");
    let bytes = |t: &str| {
        metric_value(
            t,
            "nodetap_tcp_bytes_total",
            &[
                ("direction", "transmit"),
                ("role", "client"),
                ("service_name", &name),
            ],
        )
    };
    let text = agent.scrape_until(std::time::Duration::from_secs(10), |t| {
        bytes(t) == Some(sent)
    });
    assert_eq!(bytes(&text), Some(sent), "client transmit bytes of {name}");
}
