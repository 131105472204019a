//! `cargo xtask bench network`: pod-to-pod TCP through the lab's router (tests/src/netlab.rs),
//! with and without the agent, alternating rounds in one run: an iperf3 bulk transfer
//! and many short connections. With the agent: its CPU and RSS, its flow-table use, and
//! its byte count for the client pod against the pod's veth counters.

use std::{
    ffi::CString,
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use nodetap_tests::{
    exposition,
    fake_kube::{node_json, pod_json, FakeKube},
    metric_value,
    netlab::{cgroup2_mount, kubelet_cgroup, NetLab, PodNet, VethCounters},
    servers::TempDir,
    ChildGuard,
};

use crate::bench::{
    kernel::{Group, Held, Sample, StatsEnabled},
    machine, median, test_helper, RunningAgent,
};

/// Alternating rounds of each load, without and with the agent.
const ROUNDS: usize = 5;
/// Length of one iperf3 run.
const BULK: Duration = Duration::from_secs(8);
const IPERF_PORT: u16 = 5201;
/// Connections per short-connection round, each sending `REQUEST` bytes. Fewer than
/// the even ports (connect's first choice) of pod A's widened ephemeral range, so no
/// port is reused in a round: a reused port meets the server's TIME_WAIT socket for the
/// same four-tuple and costs SYN retransmits (20000 with the default range halved the
/// rate).
const CONNS: usize = 10000;
const REQUEST: usize = 1000;
/// Each short-connection round uses its own server port, so no connection meets a
/// TIME_WAIT socket of an earlier round.
const CHURN_PORT: u16 = 7300;
/// IPv4 + TCP with timestamps: the headers each extra wire segment of a GSO skb carries.
const TCP_HEADERS: f64 = 52.0;

const NODE: &str = "bench-node";
const CLIENT: &str = "bench-client";
const SERVER: &str = "bench-server";

/// Two pods on this node, A (client) and B (server), each in its own subnet behind the
/// lab's router, with a stand-in Kubernetes API that names them.
struct Setup {
    config: PathBuf,
    a: PodNet,
    b: PodNet,
    lab: NetLab,
    _dir: TempDir,
    _kube: FakeKube,
}

fn setup() -> Result<Setup> {
    let kube = FakeKube::start();
    kube.add_node(node_json(
        NODE,
        Some("zone-a"),
        "192.0.2.10",
        "10.211.0.0/16",
    ));
    let specs = [
        (
            "bench-client-5c7d9b8f6-q2w3e",
            "6a1f0c3e-1d2a-4c6b-9e8f-00000000aa01",
            'a',
            ("ReplicaSet", "bench-client-5c7d9b8f6"),
            "5c7d9b8f6",
        ),
        (
            "bench-server-0",
            "6a1f0c3e-1d2a-4c6b-9e8f-00000000bb02",
            'b',
            ("StatefulSet", "bench-server"),
            "",
        ),
    ];
    let lab = NetLab::new("bench");
    let mut cgroups = Vec::new();
    for (name, uid, seed, owner, hash) in specs {
        let container_id = seed.to_string().repeat(64);
        let labels: Vec<(&str, &str)> = if hash.is_empty() {
            vec![]
        } else {
            vec![("pod-template-hash", hash)]
        };
        let container = format!("containerd://{container_id}");
        kube.add_pod(pod_json(
            "bench",
            name,
            uid,
            NODE,
            Some(owner),
            &labels,
            &[("app", &container)],
        ));
        cgroups.push(lab.cgroup(&kubelet_cgroup(uid, &container_id)));
    }
    let a = lab.add_pod(
        "a",
        Ipv4Addr::new(10, 211, 1, 2),
        Ipv4Addr::new(10, 211, 1, 1),
        30,
        &cgroups[0],
    );
    let b = lab.add_pod(
        "b",
        Ipv4Addr::new(10, 211, 2, 2),
        Ipv4Addr::new(10, 211, 2, 1),
        30,
        &cgroups[1],
    );
    // The lab switches offloads off (one frame per wire packet, for exact tests); a
    // real host segments in the device (GSO/TSO) and coalesces on receive (GRO).
    for pod in [&a, &b] {
        offloads_on(&pod.netns, "eth0")?;
        offloads_on(&pod.router_netns, &pod.router_dev)?;
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &a.netns, "sysctl", "-q", "-w"])
        .arg("net.ipv4.ip_local_port_range=1024 65535")
        .output()
        .context("running sysctl")?;
    ensure!(
        out.status.success(),
        "sysctl ip_local_port_range in pod A: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = TempDir::new("nodetap-bench-net");
    let config = dir.0.join("nodetap.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\napi_url = \"{}\"\nnode_name = \"{NODE}\"\n\n[zones]\nimds_endpoint = \"\"\n",
            kube.url()
        ),
    )?;
    Ok(Setup {
        config,
        a,
        b,
        lab,
        _dir: dir,
        _kube: kube,
    })
}

fn offloads_on(netns: &str, dev: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ethtool", "-K", dev])
        .args(["tso", "on", "gso", "on", "gro", "on"])
        .output()
        .context("running ethtool")?;
    ensure!(
        out.status.success(),
        "ethtool -K {dev} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Setup {
    /// The agent, once it knows both pods.
    fn agent(&self) -> Result<RunningAgent> {
        let agent = RunningAgent::start(&["--config", self.config.to_str().context("path")?]);
        let text = agent.0.scrape_until(Duration::from_secs(30), |t| {
            metric_value(t, "nodetap_kubernetes_pods", &[]) == Some(2.0)
        });
        ensure!(
            metric_value(&text, "nodetap_kubernetes_pods", &[]) == Some(2.0),
            "the agent did not see the two pods; its output:\n{}",
            agent.0.output()
        );
        Ok(agent)
    }
}

/// A number in JSON text: the first `"key": N` after the first `anchor`.
fn json_number(text: &str, anchor: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(anchor)?..];
    let quoted = format!("\"{key}\"");
    let rest = &rest[rest.find(&quoted)? + quoted.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One iperf3 run from A to B: (bits/s received, bytes received).
fn iperf(s: &Setup) -> Result<(f64, f64)> {
    let out =
        s.a.command("iperf3")
            .args(["-c", &s.b.addr.to_string(), "-p", &IPERF_PORT.to_string()])
            .args(["-t", &BULK.as_secs().to_string(), "-J"])
            .stdin(Stdio::null())
            .output()
            .context("running iperf3 -c")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3 -c failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bps = json_number(&text, "\"sum_received\"", "bits_per_second")
        .context("no sum_received.bits_per_second in iperf3 output")?;
    let bytes = json_number(&text, "\"sum_received\"", "bytes")
        .context("no sum_received.bytes in iperf3 output")?;
    Ok((bps, bytes))
}

/// The bench process in another cgroup until dropped (cgroup v2 moves whole processes,
/// not threads), so the sockets it creates meanwhile belong to that cgroup.
struct InCgroup {
    home: PathBuf,
}

impl InCgroup {
    fn enter(cgroup: &Path) -> Result<InCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 entry in /proc/self/cgroup")?;
        let home = cgroup2_mount().join(rel.trim_start_matches('/'));
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving the bench into {}", cgroup.display()))?;
        Ok(InCgroup { home })
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        // Back home; if that is gone (an emptied scope may be removed), to the root,
        // but never stay in the lab, whose teardown kills everything in it.
        for dir in [self.home.clone(), cgroup2_mount()] {
            if std::fs::write(dir.join("cgroup.procs"), &pid).is_ok() {
                return;
            }
        }
        eprintln!("bench: could not leave the pod's cgroup");
    }
}

/// `CONNS` sequential connections from A to `netxfer serve` in B, each sending
/// `REQUEST` bytes, half-closing, reading the 8-byte reply and the server's close:
/// connections per second. The client is a thread of this process in A's network
/// namespace (setns), with the process in A's cgroup for the run.
fn churn(s: &Setup, netxfer: &Path, port: u16) -> Result<f64> {
    let mut server = s.b.command(netxfer);
    server
        .args(["serve", &s.b.addr.to_string(), &port.to_string()])
        .arg(CONNS.to_string())
        .stdout(Stdio::null());
    let mut server = ChildGuard::spawn(server);
    s.b.wait_listening(port, Duration::from_secs(10));
    let netns = CString::new(
        Path::new("/run/netns")
            .join(&s.a.netns)
            .as_os_str()
            .as_bytes(),
    )?;
    let target = SocketAddr::from((s.b.addr, port));
    let elapsed = {
        let _in_pod = InCgroup::enter(&s.a.cgroup.path)?;
        std::thread::spawn(move || -> std::io::Result<Duration> {
            let fd = unsafe { libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ret = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            let err = std::io::Error::last_os_error();
            unsafe { libc::close(fd) };
            if ret != 0 {
                return Err(err);
            }
            let request = [b'x'; REQUEST];
            let start = Instant::now();
            for _ in 0..CONNS {
                let mut c = TcpStream::connect(target)?;
                c.write_all(&request)?;
                c.shutdown(Shutdown::Write)?;
                let mut reply = [0u8; 8];
                c.read_exact(&mut reply)?;
                if u64::from_le_bytes(reply) != REQUEST as u64 {
                    return Err(std::io::Error::other("server counted a wrong size"));
                }
                // Wait for the server's close (as netxfer send does).
                let mut rest = [0u8; 16];
                if c.read(&mut rest)? != 0 {
                    return Err(std::io::Error::other("bytes after the reply"));
                }
            }
            Ok(start.elapsed())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("churn client panicked"))?
        .context("churn client")?
    };
    let code = server.wait_timeout(Duration::from_secs(10));
    ensure!(code == Some(0), "netxfer serve exited with {code:?}");
    Ok(CONNS as f64 / elapsed.as_secs_f64())
}

/// A workload's network (bytes, packets) by direction [transmit, receive].
fn totals(text: &str, service: &str) -> [(f64, f64); 2] {
    let mut out = [(0.0, 0.0); 2];
    for s in exposition::parse(text)
        .unwrap_or_default()
        .iter()
        .flat_map(|f| f.samples.iter())
    {
        if s.labels.get("service_name").map(String::as_str) != Some(service) {
            continue;
        }
        let dir = match s.labels.get("direction").map(String::as_str) {
            Some("transmit") => 0,
            Some("receive") => 1,
            _ => continue,
        };
        match s.name.as_str() {
            "nodetap_network_bytes_total" => out[dir].0 += s.value,
            "nodetap_network_packets_total" => out[dir].1 += s.value,
            _ => {}
        }
    }
    out
}

fn overflow(text: &str) -> f64 {
    ["transmit", "receive"]
        .iter()
        .map(|d| {
            metric_value(
                text,
                "nodetap_network_overflow_packets_total",
                &[("direction", d)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// What the agent used and saw over the rounds with it (overflow is added from each
/// round's last scrape: every round has its own agent).
#[derive(Default)]
struct Usage {
    cpu: f64,
    rss: u64,
    flows: f64,
    capacity: f64,
    overflow: f64,
}

impl Usage {
    fn add(&mut self, agent: &RunningAgent, cpu: f64, text: &str) {
        self.cpu += cpu;
        self.rss = self.rss.max(agent.rss_bytes());
        let gauge = |name| metric_value(text, name, &[]).unwrap_or(0.0);
        self.flows = self.flows.max(gauge("nodetap_network_flows"));
        self.capacity = gauge("nodetap_network_flow_capacity");
    }
}

/// Run time the kernel measured for the agent's eBPF programs (`kernel.bpf_stats_enabled`),
/// by group: (runs, nanoseconds).
#[derive(Clone, Copy, Default)]
struct ProgramCost {
    net: (f64, f64),
    tracepoints: (f64, f64),
}

impl ProgramCost {
    fn add(&mut self, held: &Held, delta: &Sample) {
        for (slot, group) in [
            (&mut self.net, Group::Bytes),
            (&mut self.tracepoints, Group::Capture),
        ] {
            let (runs, ns) = held.group(delta, group);
            slot.0 += runs;
            slot.1 += ns;
        }
    }
}

/// The agent's count of pod A's transmit in one bulk round against A's eth0.
struct Check {
    agent: (f64, f64),
    veth: VethCounters,
}

pub fn run() -> Result<String> {
    let netxfer = test_helper("netxfer")?;
    let s = setup()?;
    let mut iperf_server = s.b.command("iperf3");
    iperf_server
        .args([
            "-s",
            "-B",
            &s.b.addr.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .stdout(Stdio::null());
    let _iperf_server = ChildGuard::spawn(iperf_server);
    s.b.wait_listening(IPERF_PORT, Duration::from_secs(10));

    // Bulk: without, with, without, with, ...
    let (mut bulk_off, mut bulk_on) = (Vec::new(), Vec::new());
    let mut bulk_use = Usage::default();
    let mut bulk_bytes = 0.0;
    let mut checks = Vec::new();
    let mut kernel_cost = ProgramCost::default();
    for round in 0..ROUNDS {
        let (bps, _) = iperf(&s)?;
        eprintln!("bulk round {round}: without agent {:.2} Gbit/s", bps / 1e9);
        bulk_off.push(bps);

        let stats = StatsEnabled::on()?;
        let agent = s.agent()?;
        let held = Held::of(agent.pid())?;
        let before = s.a.counters();
        let cpu0 = agent.cpu_seconds();
        let cost0 = held.sample()?;
        let (bps, bytes) = iperf(&s)?;
        kernel_cost.add(&held, &held.sample()?.since(&cost0));
        drop(stats);
        let cpu = agent.cpu_seconds() - cpu0;
        bulk_use.add(&agent, cpu, &agent.scrape());
        bulk_bytes += bytes;
        eprintln!(
            "bulk round {round}: with agent {:.2} Gbit/s, agent CPU {cpu:.2} s",
            bps / 1e9
        );
        bulk_on.push(bps);
        // For the record: what the agent counted for A against A's eth0, once both
        // have settled (the agent drains every 2 s).
        s.lab.wait_quiet(
            &[&s.a, &s.b],
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        let veth = s.a.counters().since(&before);
        std::thread::sleep(Duration::from_millis(4500));
        let text = agent.scrape();
        bulk_use.overflow += overflow(&text);
        checks.push(Check {
            agent: totals(&text, CLIENT)[0],
            veth,
        });
    }

    // Many short connections, alternating the same way.
    let (mut churn_off, mut churn_on) = (Vec::new(), Vec::new());
    let mut churn_use = Usage::default();
    let mut port = CHURN_PORT;
    for round in 0..ROUNDS {
        let rate = churn(&s, &netxfer, port)?;
        port += 1;
        eprintln!("churn round {round}: without agent {rate:.0} connections/s");
        churn_off.push(rate);

        let agent = s.agent()?;
        let cpu0 = agent.cpu_seconds();
        let rate = churn(&s, &netxfer, port)?;
        port += 1;
        let cpu = agent.cpu_seconds() - cpu0;
        churn_use.add(&agent, cpu, &agent.scrape());
        eprintln!("churn round {round}: with agent {rate:.0} connections/s, agent CPU {cpu:.2} s");
        churn_on.push(rate);
        std::thread::sleep(Duration::from_millis(4500));
        let text = agent.scrape();
        churn_use.overflow += overflow(&text);
        let served = totals(&text, SERVER);
        eprintln!(
            "churn round {round}: agent counted {SERVER} receive {:.0} bytes / {:.0} packets",
            served[1].0, served[1].1
        );
    }

    Ok(section(
        [&bulk_off, &bulk_on],
        kernel_cost,
        &bulk_use,
        bulk_bytes,
        &checks,
        [&churn_off, &churn_on],
        &churn_use,
    ))
}

fn section(
    bulk: [&[f64]; 2],
    kernel: ProgramCost,
    bulk_use: &Usage,
    bulk_bytes: f64,
    checks: &[Check],
    churn: [&[f64]; 2],
    churn_use: &Usage,
) -> String {
    let list = |v: &[f64], scale: f64, digits: usize| {
        v.iter()
            .map(|r| format!("{:.digits$}", r / scale))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (b0, b1) = (median(bulk[0].to_vec()), median(bulk[1].to_vec()));
    let (c0, c1) = (median(churn[0].to_vec()), median(churn[1].to_vec()));
    let (bulk_ratio, churn_ratio) = (b1 / b0, c1 / c0);
    let bulk_secs = BULK.as_secs_f64() * bulk[1].len() as f64;
    let conns = (CONNS * churn[1].len()) as f64;
    let mut check_rows = String::new();
    for (i, c) in checks.iter().enumerate() {
        let (bytes, packets) = c.agent;
        let (vbytes, vframes) = (c.veth.tx_ip_bytes() as f64, c.veth.tx_packets as f64);
        let per_segment = if packets > vframes {
            format!("{:.1}", (bytes - vbytes) / (packets - vframes))
        } else {
            "–".into()
        };
        check_rows.push_str(&format!(
            "| {i} | {bytes:.0} | {packets:.0} | {vbytes:.0} | {vframes:.0} | {:.4} | {per_segment} |\n",
            bytes / vbytes,
        ));
    }
    format!(
        "## network: pod-to-pod TCP through a router, with and without the agent\n\n\
         Command: `cargo xtask bench network` (as root). Machine: {machine}.\n\n\
         Two pods of the test lab (tests/src/netlab.rs): network namespaces in kubelet-style \
         cgroups (`kubepods.slice/…/cri-containerd-<id>.scope`), each joined by a veth pair \
         to a router namespace, in different subnets, so every packet crosses two veth pairs \
         and is forwarded once. A stand-in Kubernetes API names the pods ({CLIENT}, \
         {SERVER}). **Offloads are on** on all four veth ends (`ethtool -K … tso on gso on \
         gro on`; the lab's tests switch them off), so TCP hands the device GSO skbs as on \
         a real host. The agent runs on the host with default settings plus the stand-in \
         API; its capture programs (the socket tier here) are attached too, so the numbers include them. \
         {ROUNDS} alternating rounds of each load, without then with the agent (started \
         for each round).\n\n\
         - bulk: `iperf3 -c <B> -t {bulk_s} -J` in pod A against `iperf3 -s` in pod B, \
         one TCP stream; `sum_received.bits_per_second`.\n\
         - short connections: {CONNS} sequential connections per round from pod A to \
         `netxfer serve` in pod B, each sending {REQUEST} bytes, half-closing, reading the \
         8-byte reply and the server's close; pod A's ephemeral port range is 1024–65535 \
         so no client port is reused within a round. The client is one thread of the bench process \
         in pod A's network namespace (`setns`), the process moved into pod A's cgroup for \
         the round (one process, no fork per connection).\n\n\
         | load | without agent (median) | with agent (median) | ratio with/without | rounds without | rounds with |\n\
         |---|---|---|---|---|---|\n\
         | bulk, Gbit/s | {b0g:.2} | {b1g:.2} | **{bulk_ratio:.3}** ({bulk_loss:.1}% loss; target < 2%) | {bl0} | {bl1} |\n\
         | short connections, conn/s | {c0:.0} | {c1:.0} | **{churn_ratio:.3}** ({churn_loss:.1}% loss) | {cl0} | {cl1} |\n\n\
         Agent, with the agent on:\n\n\
         - bulk: {bcpu:.2} CPU-s over {bulk_secs:.0} s moving {gb:.1} GB = **{per_gb:.3} CPU-s per GB** \
         ({bpct:.1}% of one core)\n\
         - short connections: {ccpu:.2} CPU-s for {conns:.0} connections = **{per_k:.3} CPU-s per 1000 connections**\n\
         - RSS: {rss:.1} MiB at most\n\
         - kernel programs during the bulk rounds (the kernel's own run-time statistics, \
         `kernel.bpf_stats_enabled`, on only for those rounds): the byte accounting \
         (cgroup_skb) ran {net_runs:.0} times, **{net_ns:.0} ns per run**, {net_cpu:.3} CPU-s = \
         **{net_pct:.2}% of one core**; the syscall tracepoints ran {tp_runs:.0} times, \
         {tp_ns:.0} ns per run, {tp_cpu:.3} CPU-s = {tp_pct:.2}% of one core. This is \
         the agent's whole in-kernel cost, paid by the sending and receiving threads; \
         the throughput ratio above moves by more than that from round to round on this \
         shared 2-core machine\n\
         - flow tables: at most {flows:.0} flows in a drain, capacity {cap:.0} per table \
         (flows are keyed by cgroup, address pair and direction, not by port, so short \
         connections between two pods add no entries); overflow packets: **{ovf:.0}**\n\n\
         Pod A's transmit in each bulk round, agent vs A's eth0 (for the record, not asserted). \
         The veth counts one frame per GSO skb with its headers once (IP bytes = bytes − 14 × \
         frames); the agent counts wire segments, each with its own headers, so it should \
         exceed the veth by {TCP_HEADERS:.0} bytes (IPv4 + TCP with timestamps) per extra \
         segment:\n\n\
         | round | agent bytes | agent packets | veth IP bytes | veth frames | agent/veth bytes | extra bytes per extra segment |\n\
         |---|---|---|---|---|---|---|\n{check_rows}",
        machine = machine(),
        bulk_s = BULK.as_secs(),
        b0g = b0 / 1e9,
        b1g = b1 / 1e9,
        bulk_loss = (1.0 - bulk_ratio) * 100.0,
        churn_loss = (1.0 - churn_ratio) * 100.0,
        bl0 = list(bulk[0], 1e9, 2),
        bl1 = list(bulk[1], 1e9, 2),
        cl0 = list(churn[0], 1.0, 0),
        cl1 = list(churn[1], 1.0, 0),
        bcpu = bulk_use.cpu,
        gb = bulk_bytes / 1e9,
        per_gb = bulk_use.cpu / (bulk_bytes / 1e9),
        bpct = bulk_use.cpu / bulk_secs * 100.0,
        ccpu = churn_use.cpu,
        per_k = churn_use.cpu / (conns / 1000.0),
        rss = bulk_use.rss.max(churn_use.rss) as f64 / (1024.0 * 1024.0),
        net_runs = kernel.net.0,
        net_ns = kernel.net.1 / kernel.net.0.max(1.0),
        net_cpu = kernel.net.1 / 1e9,
        net_pct = kernel.net.1 / 1e9 / bulk_secs * 100.0,
        tp_runs = kernel.tracepoints.0,
        tp_ns = kernel.tracepoints.1 / kernel.tracepoints.0.max(1.0),
        tp_cpu = kernel.tracepoints.1 / 1e9,
        tp_pct = kernel.tracepoints.1 / 1e9 / bulk_secs * 100.0,
        flows = bulk_use.flows.max(churn_use.flows),
        cap = bulk_use.capacity.max(churn_use.capacity),
        ovf = bulk_use.overflow + churn_use.overflow,
    )
}
