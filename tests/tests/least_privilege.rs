//! The agent with exactly the capabilities the deploy files grant, no more (issue 13):
//! the systemd unit's `AmbientCapabilities` as the unprivileged `nobody` user, and the
//! DaemonSet's `capabilities.add` as uid 0 with every other capability dropped. Each
//! must attach every hook and count a known transfer's bytes exactly.
//!
//! The capability sets are read from deploy/, so the files and this test cannot drift.

use std::{path::PathBuf, process::Command, time::Duration};

use nodetap_tests::{helper_bin, metric_value, try_http_get, unique_name, Agent};
use serde_json::Value;

fn deploy_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `AmbientCapabilities=` of the systemd unit, as setpriv names (`bpf`, `perfmon`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = deploy_file("systemd/nodetap.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit sets AmbientCapabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// `capabilities.add` of the DaemonSet's container.
fn daemonset_capabilities() -> Vec<String> {
    let text = deploy_file("kubernetes/daemonset.yaml");
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc: serde_yaml_ng::Value =
            serde::Deserialize::deserialize(doc).expect("daemonset.yaml parses");
        if doc["kind"] != "DaemonSet" {
            continue;
        }
        let security = &doc["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        assert_eq!(
            security["privileged"], false,
            "the DaemonSet must not be privileged"
        );
        assert_eq!(
            security["capabilities"]["drop"][0], "ALL",
            "the DaemonSet drops every capability it does not add"
        );
        return security["capabilities"]["add"]
            .as_sequence()
            .expect("capabilities.add")
            .iter()
            .map(|c| c.as_str().expect("capability name").to_ascii_lowercase())
            .collect();
    }
    panic!("no DaemonSet in deploy/kubernetes/daemonset.yaml");
}

/// The capability mask the kernel shows in /proc/<pid>/status for these names.
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "dac_read_search" => 2,
            "net_admin" => 12,
            "sys_ptrace" => 19,
            "sys_admin" => 21,
            "sys_resource" => 24,
            "perfmon" => 38,
            "bpf" => 39,
            other => panic!("capability {other} unknown to this test"),
        })
        .fold(0, |m, bit| m | 1u64 << bit)
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// What the systemd unit needs mounted before it starts (systemd mounts it at boot;
/// without CAP_SYS_ADMIN the agent cannot).
fn ensure_tracefs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("tracefs"))
    {
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount tracefs at /sys/kernel/tracing");
    }
}

fn start_with(caps: &[String], user: &str, group: &str) -> Agent {
    ensure_tracefs();
    let set = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let bounding = format!("--bounding-set=-all,{set}");
    let (inheritable, ambient) = if user == "root" {
        // uid 0 gets its bounding set on exec; nothing ambient (as in a container).
        ("--inh-caps=-all".to_owned(), None)
    } else {
        (
            format!("--inh-caps=-all,{set}"),
            Some(format!("--ambient-caps={set}")),
        )
    };
    let reuid = format!("--reuid={user}");
    let regid = format!("--regid={group}");
    let mut wrapper = vec![
        "setpriv",
        &reuid,
        &regid,
        "--clear-groups",
        "--no-new-privs",
        &inheritable,
        &bounding,
    ];
    if let Some(a) = &ambient {
        wrapper.push(a);
    }
    Agent::start_wrapped(&wrapper, &[], |agent| {
        try_http_get(&agent.metrics_url()).is_ok()
    })
}

fn assert_works_with(caps: &[String], user: &str, group: &str, uid: &str) {
    let agent = start_with(caps, user, group);
    let pid = agent.process.pid();
    // The process is who the deploy file says, with exactly its capabilities.
    let uids = status_field(pid, "Uid:");
    assert_eq!(
        uids.split_whitespace().next(),
        Some(uid),
        "agent uid ({uids})"
    );
    let effective = u64::from_str_radix(&status_field(pid, "CapEff:"), 16).unwrap();
    assert_eq!(
        effective,
        mask(caps),
        "agent's effective capabilities {effective:#x}, the deploy file grants {:#x}",
        mask(caps)
    );

    // Every hook attached, as under root.
    let text = agent.scrape();
    let probes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("nodetap_probe_attached{"))
        .collect();
    assert!(!probes.is_empty(), "no nodetap_probe_attached series");
    let detached: Vec<&&str> = probes.iter().filter(|l| !l.ends_with(" 1")).collect();
    assert!(
        detached.is_empty(),
        "hooks not attached with capabilities {caps:?}:\n{detached:?}\n{}",
        agent.output()
    );

    // What the DaemonSet's readiness probe and a unit's health check ask.
    let ready = try_http_get(&format!("http://127.0.0.1:{}/readyz", agent.port));
    assert!(
        ready.as_deref().is_ok_and(|body| body.starts_with("ready")),
        "/readyz with capabilities {caps:?} as {user}: {ready:?}"
    );

    // A known transfer, counted exactly.
    let name = unique_name("lp");
    let out = Command::new(helper_bin("tcpgen"))
        .args([&name, "v4", "rw", "40", "1000", "300"])
        .output()
        .expect("run tcpgen");
    assert!(out.status.success(), "tcpgen failed");
    let report: Value = serde_json::from_slice(&out.stdout).expect("tcpgen prints JSON");
    let sent = |side: &str| report[side]["sent"].as_f64().expect("sent");
    let bytes = |text: &str, direction: &str, role: &str| {
        metric_value(
            text,
            "nodetap_tcp_bytes_total",
            &[
                ("direction", direction),
                ("role", role),
                ("service_name", &name),
            ],
        )
    };
    let text = agent.scrape_until(Duration::from_secs(10), |text| {
        bytes(text, "receive", "client") == Some(sent("server"))
            && bytes(text, "receive", "server") == Some(sent("client"))
    });
    for (direction, role, truth) in [
        ("transmit", "client", sent("client")),
        ("receive", "server", sent("client")),
        ("transmit", "server", sent("server")),
        ("receive", "client", sent("server")),
    ] {
        assert_eq!(
            bytes(&text, direction, role),
            Some(truth),
            "{direction} {role} bytes of {name} with capabilities {caps:?} as {user}"
        );
    }
    // Host metrics work under the same set: a collector may fail only where it also fails
    // for root with every capability (its source is absent on this machine, e.g. no
    // bonding or hwmon, which node_exporter reports the same way).
    let failed = failing_collectors(&text);
    if !failed.is_empty() {
        let unrestricted = Agent::start(&[]);
        let as_root = failing_collectors(&unrestricted.scrape());
        let extra: Vec<&String> = failed.iter().filter(|c| !as_root.contains(c)).collect();
        assert!(
            extra.is_empty(),
            "collectors failing as {user} with {caps:?} but not as unrestricted root: \
             {extra:?} (failing for both: {as_root:?})"
        );
    }
}

/// The `node_scrape_collector_success` series that say 0.
fn failing_collectors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("node_scrape_collector_success{") && l.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn systemd_unit_user_and_ambient_capabilities() {
    let caps = unit_capabilities();
    assert!(
        !caps.iter().any(|c| c == "sys_admin"),
        "the unit must not need CAP_SYS_ADMIN: {caps:?}"
    );
    assert_works_with(&caps, "nobody", "nogroup", "65534");
}

#[test]
fn daemonset_capability_set() {
    let caps = daemonset_capabilities();
    assert!(
        !caps.iter().any(|c| c == "sys_admin"),
        "the DaemonSet must not need SYS_ADMIN: {caps:?}"
    );
    assert_works_with(&caps, "root", "root", "0");
}
