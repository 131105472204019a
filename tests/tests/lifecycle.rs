//! Start-up, configuration errors and clean shutdown of the real binary.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use nodetap_tests::{ensure_root, nodetap_bin, servers::RedisServer, Agent, ChildGuard};
use serde_json::Value;

fn bpftool_json(what: &str) -> Value {
    let out = Command::new("bpftool")
        .args(["-j", what, "show"])
        .output()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(out.status.success(), "bpftool {what} show failed");
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

/// Ids (`prog_id:` or `link_id:` lines) of the eBPF objects a process holds open, from
/// /proc/<pid>/fdinfo: exact, and not confused by other agents running concurrently.
fn held_by(pid: u32, key: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix(key).and_then(|v| v.trim().parse().ok()) {
                ids.insert(id);
            }
        }
    }
    ids
}

fn ids_in(what: &str, field: &str) -> BTreeSet<u64> {
    bpftool_json(what)
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|o| o[field].as_u64())
        .collect()
}

/// Every hook the agent attaches here, by capture tier: `inet_sock_set_state` (tp_btf),
/// the tier's data hooks (2 tp_btf, or the exits of 11 data syscalls and the fd cache's
/// 17 tracepoints), `cgroup:cgroup_mkdir` (cgroups as they are created), and the 2
/// cgroup_skb programs of the byte accounting.
fn hooks_of(agent: &Agent) -> usize {
    let text = agent.scrape();
    if text.contains("nodetap_capture_info{tier=\"socket\"} 1") {
        1 + 2 + 1 + 2
    } else if text.contains("nodetap_capture_info{tier=\"syscall\"} 1") {
        1 + 11 + 17 + 1 + 2
    } else {
        panic!("no capture tier reported:\n{text}")
    }
}

#[test]
fn sigterm_detaches_everything_and_exits_zero() {
    let mut agent = Agent::start(&[]);
    let hooks = hooks_of(&agent);
    let pid = agent.process.pid();
    let links = held_by(pid, "link_id:");
    // Each program (probes::HOOKS of the tier, probes::NETWORK_HOOKS) is attached
    // through one link.
    assert_eq!(links.len(), hooks, "links held by the agent: {links:?}");
    let ours: BTreeSet<u64> = bpftool_json("link")
        .as_array()
        .expect("array")
        .iter()
        .filter(|l| l["id"].as_u64().is_some_and(|id| links.contains(&id)))
        .filter_map(|l| l["prog_id"].as_u64())
        .collect();
    assert_eq!(
        ours.len(),
        hooks,
        "programs behind the agent's links: {ours:?}"
    );
    assert!(
        ours.is_subset(&ids_in("prog", "id")),
        "bpftool lists the programs"
    );

    agent.process.signal(libc::SIGTERM);
    let code = agent.process.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; output:\n{}",
        agent.output()
    );

    // BTF tracepoint programs are freed after an RCU grace period (the kernel defers
    // the free of a tracing program's trampoline), so their ids may linger a moment
    // after the agent is gone: wait for them, briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut programs_left: Vec<u64> = ids_in("prog", "id").intersection(&ours).copied().collect();
    while !programs_left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        programs_left = ids_in("prog", "id").intersection(&ours).copied().collect();
    }
    assert!(
        programs_left.is_empty(),
        "programs still loaded: {programs_left:?}"
    );
    let links_left: Vec<u64> = ids_in("link", "id").intersection(&links).copied().collect();
    assert!(
        links_left.is_empty(),
        "links still attached: {links_left:?}"
    );
}

/// SIGTERM while the agent is busy (redis-benchmark pipelining into a real redis-server,
/// which the agent parses on both sides): exit 0 within 5 s, every link it held gone.
#[test]
fn sigterm_under_load_exits_within_5_s_and_detaches() {
    let redis = RedisServer::start();
    let mut agent = Agent::start(&[]);
    let pid = agent.process.pid();
    let links = held_by(pid, "link_id:");
    assert_eq!(links.len(), hooks_of(&agent), "links held by the agent");
    let mut load = Command::new("redis-benchmark");
    load.args(["-p", &redis.port.to_string(), "-q", "-c", "10", "-P", "16"])
        .args(["-n", "5000000", "-t", "set,get"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _load = ChildGuard::spawn(load);
    // Wait until the agent is really parsing the load.
    let busy = agent.scrape_until(Duration::from_secs(20), |t| {
        nodetap_tests::metric_sum(
            t,
            "db_server_operation_duration_seconds_count",
            &[("server_port", &redis.port.to_string())],
        ) > 10_000.0
    });
    assert!(
        nodetap_tests::metric_sum(
            &busy,
            "db_server_operation_duration_seconds_count",
            &[("server_port", &redis.port.to_string())],
        ) > 10_000.0,
        "the agent did not see the load"
    );

    let t = std::time::Instant::now();
    agent.process.signal(libc::SIGTERM);
    let code = agent.process.wait_timeout(Duration::from_secs(5));
    assert_eq!(
        code,
        Some(0),
        "exit within 5 s of SIGTERM under load (waited {:?}); output:\n{}",
        t.elapsed(),
        agent.output()
    );
    let links_left: Vec<u64> = ids_in("link", "id").intersection(&links).copied().collect();
    assert!(
        links_left.is_empty(),
        "links still attached: {links_left:?}"
    );
}

#[test]
fn start_up_report_names_every_check_and_hook() {
    let agent = Agent::start(&[]);
    let hooks = hooks_of(&agent);
    let out = agent.output();
    for line in [
        "capture tier:",
        "kernel:",
        "BTF:           yes",
        "capabilities:",
        "tracefs:",
        "bpffs:",
        "cgroup:",
    ] {
        assert!(out.contains(line), "report lacks {line:?}:\n{out}");
    }
    assert_eq!(
        out.matches(" attached\n").count(),
        hooks,
        "every hook attached:\n{out}"
    );
    let text = agent.scrape();
    assert_eq!(
        text.matches("nodetap_probe_attached{").count(),
        hooks,
        "{text}"
    );
    let not_attached: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("nodetap_probe_attached{") && !l.ends_with(" 1"))
        .collect();
    assert!(
        not_attached.is_empty(),
        "hooks reported as not attached: {not_attached:?}"
    );
    // Every attached hook says how many of its runs the kernel skipped (read from the
    // program's fdinfo once a second).
    let text = agent.scrape_until(Duration::from_secs(10), |t| {
        t.matches("nodetap_probe_runs_missed_total{").count() == hooks
    });
    assert_eq!(
        text.matches("nodetap_probe_runs_missed_total{").count(),
        hooks,
        "{}",
        nodetap_tests::lines_with(&text, "nodetap_probe_")
    );
}

#[test]
fn check_mode_attaches_and_exits_zero() {
    ensure_root();
    let out = Command::new(nodetap_bin())
        .arg("--check")
        .output()
        .expect("run nodetap --check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("all required hooks attached"), "{stderr}");
}

fn run_with(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(nodetap_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run nodetap");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_a_clear_error_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("nodetap-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "listen = \"127.0.0.1:1\"\nringbuffer = 5\n").unwrap();
    let (code, err) = run_with(&["--config", unknown.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown field `ringbuffer`"), "{err}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "capture_bytes = 10\n").unwrap();
    let (code, err) = run_with(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad value for capture_bytes: 10 is outside 65536..=1048576"),
        "{err}"
    );

    let (code, err) = run_with(&[], &[("NODETAP_CAPTURE_BYTES", "lots")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--capture-bytes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn busy_port_fails_before_loading_anything() {
    ensure_root();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run_with(&["--listen", &addr], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!err.contains("hook:"), "nothing should be loaded: {err}");
}
