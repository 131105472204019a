//! `cargo xtask bench cost`: what the agent's kernel programs cost per unit of work, from
//! the kernel's own per-program statistics (`kernel.bpf_stats_enabled`: `run_time_ns` and
//! `run_cnt` of the programs the agent holds), for separate workloads in one run:
//!
//! - a parsed TCP stream (redis-benchmark GET/SET against redis-server),
//! - a TCP stream the agent does not parse (TLS-looking records),
//! - a bystander doing only pipe I/O,
//!
//! plus the byte accounting's cost per packet and the agent's CPU per event. The same
//! workloads then run under no-op programs on the same tracepoints (bpftrace), the floor
//! the hooks alone cost. With `--capture-mode` (newer agents) all of it runs once per tier.

use std::{
    fs::File,
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use nodetap_tests::{exposition, servers::RedisServer, ChildGuard};

use crate::bench::{
    events_lost, events_total,
    kernel::{Group, Held, Hook, RawNoop, Sample, StatsEnabled, Tracefs},
    machine, metric_sum, RunningAgent,
};

/// redis-benchmark requests per test (GET and SET), over `REDIS_CLIENTS` connections.
const REDIS_N: u64 = 50_000;
const REDIS_CLIENTS: u32 = 20;
/// The unparsed stream: round trips per connection of `RECORD`-byte records each way.
const TLS_CONNS: usize = 2;
const TLS_ROUND_TRIPS: u64 = 40_000;
const RECORD: usize = 256;
/// The bystander: blocks written through a pipe and read back.
pub const PIPE_BLOCKS: u64 = 400_000;
pub const BLOCK: usize = 512;
/// Idle time before each workload, to measure what other processes on the machine make
/// the same programs spend meanwhile (subtracted, scaled to the workload's duration).
const IDLE: Duration = Duration::from_secs(1);
/// Each workload runs this many times (interleaved); the median estimate counts: other
/// processes' bursts can inflate one (during the workload) or deflate it (during the
/// idle window that is subtracted).
const REPS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Parsed,
    CountsOnly,
    Pipe,
}

impl Load {
    const ALL: [Load; 3] = [Load::Parsed, Load::CountsOnly, Load::Pipe];

    fn name(self) -> &'static str {
        match self {
            Load::Parsed => "parsed TCP (redis-benchmark)",
            Load::CountsOnly => "counts-only TCP (TLS-looking)",
            Load::Pipe => "bystander pipe",
        }
    }

    fn run(self, redis: &Redis) -> Result<(f64, Duration)> {
        match self {
            Load::Parsed => redis.benchmark(),
            Load::CountsOnly => tls_like(),
            Load::Pipe => pipe_pump(PIPE_BLOCKS).map(|(calls, _, t)| (calls, t)),
        }
    }
}

/// The agent's own view of one workload.
struct AgentDelta {
    cpu: f64,
    events: f64,
    lost: f64,
    tcp_syscalls: f64,
}

/// One workload under one set of programs.
struct Measured {
    load: Load,
    /// Syscalls the workload made, counted without the agent (see `Load::run`).
    syscalls: f64,
    /// Seconds between the program samples around the workload.
    secs: f64,
    /// Program runs and time during the workload (raw).
    delta: Sample,
    /// The same during the idle window before it, and that window's length.
    idle: Sample,
    idle_secs: f64,
    agent: Option<AgentDelta>,
    /// ns per syscall of every repetition, and events lost over all of them (set by
    /// `measure_all` on the repetition it keeps).
    tries: Vec<f64>,
    lost_all: f64,
}

impl Measured {
    /// (runs, ns) of a group during the workload, and the ns other processes are
    /// estimated to have caused meanwhile (from the idle window).
    fn group(&self, held: &Held, group: Group) -> ((f64, f64), f64) {
        let (_, idle_ns) = held.group(&self.idle, group);
        (
            held.group(&self.delta, group),
            idle_ns / self.idle_secs * self.secs,
        )
    }

    /// Capture-program ns per workload syscall, background subtracted.
    fn ns_per_syscall(&self, held: &Held) -> f64 {
        let ((_, ns), background) = self.group(held, Group::Capture);
        ((ns - background) / self.syscalls).max(0.0)
    }
}

/// The workloads under one set of programs: the agent in one tier, or the floor.
struct Run {
    label: String,
    tier: String,
    held: Held,
    results: Vec<Measured>,
    floor: bool,
}

fn measure(
    held: &Held,
    agent: Option<&RunningAgent>,
    load: Load,
    redis: &Redis,
) -> Result<Measured> {
    let s0 = held.sample()?;
    let t0 = Instant::now();
    std::thread::sleep(IDLE);
    let before = agent.map(|a| (a.scrape(), a.cpu_seconds()));
    let s1 = held.sample()?;
    let t1 = Instant::now();
    let (syscalls, _) = load.run(redis)?;
    let s2 = held.sample()?;
    let t2 = Instant::now();
    let agent = match (agent, before) {
        (Some(a), Some((text0, cpu0))) => {
            // Let the agent drain its ring buffer before reading its counters.
            std::thread::sleep(Duration::from_millis(500));
            let text1 = a.scrape();
            let d = |f: fn(&str) -> f64| f(&text1) - f(&text0);
            let tcp = |t: &str| metric_sum(t, "nodetap_tcp_syscalls_total", &[]);
            Some(AgentDelta {
                cpu: a.cpu_seconds() - cpu0,
                events: d(events_total),
                lost: d(events_lost),
                tcp_syscalls: tcp(&text1) - tcp(&text0),
            })
        }
        _ => None,
    };
    Ok(Measured {
        load,
        syscalls,
        secs: (t2 - t1).as_secs_f64(),
        delta: s2.since(&s1),
        idle: s1.since(&s0),
        idle_secs: (t1 - t0).as_secs_f64(),
        agent,
        tries: Vec::new(),
        lost_all: 0.0,
    })
}

/// Every workload `REPS` times, interleaved; per workload the repetition with the median
/// ns per syscall, carrying all repetitions' estimates and events lost.
fn measure_all(held: &Held, agent: Option<&RunningAgent>, redis: &Redis) -> Result<Vec<Measured>> {
    let mut all: Vec<Vec<(f64, Measured)>> = Load::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..REPS {
        for (i, &load) in Load::ALL.iter().enumerate() {
            let m = measure(held, agent, load, redis)?;
            let ns = m.ns_per_syscall(held);
            eprintln!(
                "cost: {}: {:.0} syscalls in {:.2} s, capture {ns:.0} ns per syscall",
                load.name(),
                m.syscalls,
                m.secs,
            );
            all[i].push((ns, m));
        }
    }
    Ok(all
        .into_iter()
        .filter_map(|mut reps| {
            let tries: Vec<f64> = reps.iter().map(|r| r.0).collect();
            let lost_all = reps
                .iter()
                .filter_map(|r| r.1.agent.as_ref())
                .map(|a| a.lost)
                .sum();
            // Agent CPU over every repetition: its clock ticks (10 ms) are too coarse for
            // one repetition's few hundredths of a second.
            let (cpu_all, events_all) = reps
                .iter()
                .filter_map(|r| r.1.agent.as_ref())
                .fold((0.0, 0.0), |(c, e), a| (c + a.cpu, e + a.events));
            reps.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mid = reps.len().checked_sub(1)? / 2;
            let (_, m) = reps.into_iter().nth(mid)?;
            Some(Measured {
                tries,
                lost_all,
                agent: m.agent.map(|a| AgentDelta {
                    cpu: cpu_all,
                    events: events_all,
                    ..a
                }),
                ..m
            })
        })
        .collect())
}

/// A local redis-server and its pid (its read and write calls are counted from procfs).
struct Redis {
    server: RedisServer,
    pid: u32,
}

impl Redis {
    fn start() -> Result<Redis> {
        let server = RedisServer::start();
        let port = server.port.to_string();
        let pid = pid_with_arg("redis-server", &port)
            .with_context(|| format!("no redis-server process listening on port {port}"))?;
        Ok(Redis { server, pid })
    }

    /// redis-benchmark GET and SET: (TCP data syscalls of both sides, elapsed).
    /// redis-server does its socket I/O with read(2) and write(2), which the kernel
    /// counts per process (`syscr`, `syscw` in /proc/<pid>/io); redis-benchmark
    /// (hiredis) uses send(2)/recv(2), which it does not, but with one request in flight
    /// per connection it makes one send per request the server reads and one recv per
    /// reply the server writes: both sides = 2 × the server's calls.
    fn benchmark(&self) -> Result<(f64, Duration)> {
        let server0 = read_write_calls(self.pid)?;
        let start = Instant::now();
        let mut child = Command::new("redis-benchmark")
            .args(["-p", &self.server.port.to_string()])
            .args(["-n", &REDIS_N.to_string()])
            .args(["-c", &REDIS_CLIENTS.to_string()])
            .args(["-t", "set,get", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-benchmark")?;
        let status = child.wait()?;
        let elapsed = start.elapsed();
        ensure!(status.success(), "redis-benchmark failed ({status})");
        let server = read_write_calls(self.pid)? - server0;
        Ok((2.0 * server, elapsed))
    }
}

/// The first process named `comm` with `arg` among the words of its command line
/// (split at NUL, space and colon: redis-server retitles itself `redis-server ADDR:PORT`).
fn pid_with_arg(comm: &str, arg: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (name.trim() == comm
            && cmdline
                .split(|&b| matches!(b, 0 | b' ' | b':'))
                .any(|a| a == arg.as_bytes()))
        .then_some(pid)
    })
}

/// read(2)-family plus write(2)-family calls a process has made (all its threads).
fn read_write_calls(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok(get("syscr:")? + get("syscw:")?)
}

/// Reads exactly `buf.len()` bytes, counting calls; `false` at a clean end of stream.
fn read_record(s: &mut TcpStream, buf: &mut [u8], calls: &mut u64) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        *calls += 1;
        match s.read(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

fn write_record(s: &mut TcpStream, buf: &[u8], calls: &mut u64) -> io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        *calls += 1;
        sent += s.write(&buf[sent..])?;
    }
    Ok(())
}

/// A record that looks like TLS application data (content type 0x16 handshake, version
/// 3.3, length) followed by pseudo-random bytes: a stream no parser claims.
fn tls_record(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut r = vec![0x16, 0x03, 0x03];
    r.extend_from_slice(&((RECORD - 5) as u16).to_be_bytes());
    while r.len() < RECORD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.push(x as u8);
    }
    r
}

/// `TLS_CONNS` loopback connections, each `TLS_ROUND_TRIPS` round trips of one record
/// each way, then a close: (send and recv calls made, counted by the code that made
/// them, elapsed).
fn tls_like() -> Result<(f64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> io::Result<u64> {
        let workers: Vec<_> = (0..TLS_CONNS)
            .map(|i| {
                let (mut s, _) = listener.accept()?;
                Ok(std::thread::spawn(move || -> io::Result<u64> {
                    let reply = tls_record(0x5eed + i as u64);
                    let mut buf = [0u8; RECORD];
                    let mut calls = 0;
                    while read_record(&mut s, &mut buf, &mut calls)? {
                        write_record(&mut s, &reply, &mut calls)?;
                    }
                    Ok(calls)
                }))
            })
            .collect::<io::Result<_>>()?;
        let mut calls = 0;
        for w in workers {
            calls += w
                .join()
                .map_err(|_| io::Error::other("server panicked"))??;
        }
        Ok(calls)
    });
    let start = Instant::now();
    let clients: Vec<_> = (0..TLS_CONNS)
        .map(|i| {
            std::thread::spawn(move || -> io::Result<u64> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let record = tls_record(0xc0ffee + i as u64);
                let mut buf = [0u8; RECORD];
                let mut calls = 0;
                for _ in 0..TLS_ROUND_TRIPS {
                    write_record(&mut s, &record, &mut calls)?;
                    if !read_record(&mut s, &mut buf, &mut calls)? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                s.shutdown(Shutdown::Write)?;
                // The server's close.
                calls += 1;
                let _ = s.read(&mut buf)?;
                Ok(calls)
            })
        })
        .collect();
    let mut calls = 0;
    for c in clients {
        calls += c
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))?
            .context("TLS-looking client")?;
    }
    calls += server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))?
        .context("TLS-looking server")?;
    Ok((calls as f64, start.elapsed()))
}

/// `blocks` blocks of `BLOCK` bytes written into a pipe by one thread and read by
/// another, nothing else: (read and write calls, bytes, elapsed).
pub fn pipe_pump(blocks: u64) -> Result<(f64, u64, Duration)> {
    let mut fds = [0; 2];
    ensure!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
        "pipe2: {}",
        io::Error::last_os_error()
    );
    // Each end owned once, closed when its File drops.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (mut r, mut w) = (File::from(r), File::from(w));
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> io::Result<u64> {
        let block = [0x5au8; BLOCK];
        let mut calls = 0;
        for _ in 0..blocks {
            let mut sent = 0;
            while sent < BLOCK {
                calls += 1;
                sent += w.write(&block[sent..])?;
            }
        }
        Ok(calls)
    });
    let mut buf = [0u8; BLOCK];
    let (mut calls, mut bytes) = (0u64, 0u64);
    loop {
        calls += 1;
        match r.read(&mut buf)? {
            0 => break,
            n => bytes += n as u64,
        }
    }
    let elapsed = start.elapsed();
    calls += writer
        .join()
        .map_err(|_| anyhow::anyhow!("pipe writer panicked"))??;
    ensure!(bytes == blocks * BLOCK as u64, "pipe moved {bytes} bytes");
    Ok((calls as f64, bytes, elapsed))
}

/// The capture tiers to measure: each of `--capture-mode`'s when the agent has it, else
/// the binary's only one (`None`).
pub fn capture_modes() -> Result<Vec<Option<&'static str>>> {
    let out = Command::new(nodetap_tests::nodetap_bin())
        .arg("--help")
        .output()
        .context("running nodetap --help")?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(if help.contains("--capture-mode") {
        vec![Some("socket"), Some("syscall")]
    } else {
        vec![None]
    })
}

/// The tier the agent reports in `nodetap_capture_info{tier}`, if it does.
pub fn reported_tier(text: &str) -> Option<String> {
    exposition::parse(text)
        .ok()?
        .iter()
        .flat_map(|f| f.samples.iter())
        .find(|s| s.name == "nodetap_capture_info" && s.value > 0.0)
        .and_then(|s| s.labels.get("tier").cloned())
}

/// The agent with `--capture-mode mode` (none: defaults); `None` if it did not start
/// (a tier this kernel lacks).
pub fn start_agent(mode: Option<&str>) -> Option<RunningAgent> {
    let args: Vec<&str> = mode.map(|m| vec!["--capture-mode", m]).unwrap_or_default();
    std::panic::catch_unwind(|| RunningAgent::start(&args)).ok()
}

/// "4 tracepoints (4 raw)" and the like.
pub(super) fn floor_words(hooks: &[Hook]) -> String {
    let raw = hooks.iter().filter(|h| matches!(h, Hook::Raw(_))).count();
    format!("{} tracepoints ({raw} raw)", hooks.len())
}

/// No-op programs on the agent's capture hooks, each of the same kind: bpftrace with an
/// empty program on each classic tracepoint, and raw tracepoint programs this process
/// holds for the raw and BTF ones.
pub(super) struct Floor {
    bpftrace: Option<ChildGuard>,
    raw: Option<RawNoop>,
}

impl Floor {
    pub(super) fn attach(hooks: &[Hook]) -> Result<Floor> {
        ensure!(!hooks.is_empty(), "no tracepoints for no-op programs");
        let classic: Vec<&str> = hooks
            .iter()
            .filter_map(|h| match h {
                Hook::Classic(t) => Some(t.as_str()),
                Hook::Raw(_) => None,
            })
            .collect();
        let raw: Vec<String> = hooks
            .iter()
            .filter_map(|h| match h {
                Hook::Raw(t) => Some(t.clone()),
                Hook::Classic(_) => None,
            })
            .collect();
        let bpftrace = if classic.is_empty() {
            None
        } else {
            let script = classic
                .iter()
                .map(|t| format!("tracepoint:{t} {{}}"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut cmd = Command::new("bpftrace");
            cmd.arg("-e")
                .arg(script)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = ChildGuard::spawn(cmd);
            Held::wait_for(child.pid(), classic.len(), Duration::from_secs(60))?;
            Some(child)
        };
        let raw = if raw.is_empty() {
            None
        } else {
            Some(RawNoop::attach(&raw)?)
        };
        Ok(Floor { bpftrace, raw })
    }

    /// The no-op programs, wherever they are held.
    pub(super) fn held(&self) -> Result<Held> {
        let mut held: Option<Held> = None;
        if let Some(b) = &self.bpftrace {
            held = Some(Held::of(b.pid())?);
        }
        if self.raw.is_some() {
            let own = Held::of(std::process::id())?;
            held = Some(match held {
                Some(h) => h.with(own),
                None => own,
            });
        }
        held.context("no no-op programs")
    }
}

pub fn run() -> Result<String> {
    let _tracefs = Tracefs::ensure()?;
    let _stats = StatsEnabled::on()?;
    let redis = Redis::start()?;
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    for mode in capture_modes()? {
        let Some(agent) = start_agent(mode) else {
            notes.push(format!(
                "- `--capture-mode {}`: the agent did not start on this kernel; not measured",
                mode.unwrap_or("?")
            ));
            continue;
        };
        let held = Held::of(agent.pid())?;
        let tier = reported_tier(&agent.scrape())
            .or(mode.map(str::to_owned))
            .unwrap_or_else(|| "syscall (no `--capture-mode`)".into());
        eprintln!("cost: agent, tier {tier}, {} programs", held.programs.len());
        let results = measure_all(&held, Some(&agent), &redis)?;
        let hooks = held.capture_hooks();
        let label = match mode {
            Some(m) => format!("agent, `--capture-mode {m}`"),
            None => "agent, defaults".to_owned(),
        };
        runs.push(Run {
            label,
            tier: tier.clone(),
            held,
            results,
            floor: false,
        });
        drop(agent);

        eprintln!("cost: floor, no-op programs on {hooks:?}");
        let floor = Floor::attach(&hooks)?;
        let held = floor.held()?;
        let results = measure_all(&held, None, &redis)?;
        drop(floor);
        runs.push(Run {
            label: format!("floor: no-op programs on the same {}", floor_words(&hooks)),
            tier,
            held,
            results,
            floor: true,
        });
    }
    if runs.is_empty() {
        bail!("the agent started in no capture tier");
    }
    Ok(section(&runs, &notes))
}

/// `value` against a target `≤ limit`: "123 (pass)" or "456 (miss, 1.5× target)".
fn judged(value: f64, limit: f64, digits: usize) -> String {
    if value <= limit {
        format!("{value:.digits$} (pass)")
    } else if limit > 0.0 {
        format!("**{value:.digits$}** (miss, {:.1}× target)", value / limit)
    } else {
        format!("**{value:.digits$}** (miss)")
    }
}

fn section(runs: &[Run], notes: &[String]) -> String {
    let mut summary = String::new();
    let mut detail = String::new();
    let mut programs = String::new();
    for run in runs {
        let get = |load: Load| run.results.iter().find(|m| m.load == load);
        let per = |load: Load| get(load).map_or(f64::NAN, |m| m.ns_per_syscall(&run.held));
        let socket_tier = run.tier.starts_with("socket");
        let bystander_limit = if socket_tier { 0.5 } else { 20.0 };
        let row = if run.floor {
            format!(
                "| {} | {} | {:.0} | {:.0} | {:.1} | – | – | – |\n",
                run.label,
                run.tier,
                per(Load::Parsed),
                per(Load::CountsOnly),
                per(Load::Pipe)
            )
        } else {
            // Per packet over both TCP workloads; CPU per event on the parsed one.
            let (mut pkts, mut pkt_ns) = (0.0, 0.0);
            for m in run.results.iter().filter(|m| m.load != Load::Pipe) {
                let ((r, ns), _) = m.group(&run.held, Group::Bytes);
                pkts += r;
                pkt_ns += ns;
            }
            let packet = if pkts > 0.0 {
                judged(pkt_ns / pkts, 100.0, 0)
            } else {
                "no cgroup_skb program".into()
            };
            let cpu = get(Load::Parsed)
                .and_then(|m| m.agent.as_ref())
                .filter(|a| a.events > 0.0)
                .map_or("no events".into(), |a| {
                    judged(a.cpu / a.events * 1e6, 0.1, 2)
                });
            let lost: f64 = run.results.iter().map(|m| m.lost_all).sum();
            format!(
                "| {} | {} | {} | {} | {} | {packet} | {cpu} | {lost:.0} |\n",
                run.label,
                run.tier,
                judged(per(Load::Parsed), 300.0, 0),
                judged(per(Load::CountsOnly), 100.0, 0),
                judged(per(Load::Pipe), bystander_limit, 1),
            )
        };
        summary.push_str(&row);

        for m in &run.results {
            let ((runs_n, ns), background) = m.group(&run.held, Group::Capture);
            let ((pkts, pkt_ns), _) = m.group(&run.held, Group::Bytes);
            let (cpu, events, lost, agent_tcp) = match &m.agent {
                Some(a) => (
                    format!("{:.2}", a.cpu),
                    format!("{:.0}", a.events),
                    format!("{:.0}", m.lost_all),
                    format!("{:.0}", a.tcp_syscalls),
                ),
                None => ("–".into(), "–".into(), "–".into(), "–".into()),
            };
            detail.push_str(&format!(
                "| {} | {} | {:.0} | {agent_tcp} | {:.2} | {runs_n:.0} | {:.2} | {:.3} | {:.3} | **{:.1}** | {} | {pkts:.0} | {} | {cpu} | {events} | {lost} |\n",
                run.label,
                m.load.name(),
                m.syscalls,
                m.secs,
                runs_n / m.syscalls,
                ns / 1e9,
                background / 1e9,
                m.ns_per_syscall(&run.held),
                m.tries
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if pkts > 0.0 { format!("{:.0}", pkt_ns / pkts) } else { "–".into() },
            ));
        }

        programs.push_str(&format!(
            "\n{} (tier {}), {} programs held by pid {}:\n\n\
             | program | type | hook | {} | {} | {} |\n|---|---|---|---|---|---|\n",
            run.label,
            run.tier,
            run.held.programs.len(),
            run.held.pid,
            Load::Parsed.name(),
            Load::CountsOnly.name(),
            Load::Pipe.name(),
        ));
        let mut idle = Vec::new();
        for p in &run.held.programs {
            let cells: Vec<(f64, f64)> = Load::ALL
                .iter()
                .map(|&l| get(l).map_or((0.0, 0.0), |m| m.delta.of(p.id)))
                .collect();
            if cells.iter().all(|c| c.0 == 0.0) {
                idle.push(if p.hook.is_empty() {
                    p.name.clone()
                } else {
                    p.hook.clone()
                });
                continue;
            }
            let cell = |(runs, ns): (f64, f64)| {
                if runs > 0.0 {
                    format!("{runs:.0} × {:.0} ns", ns / runs)
                } else {
                    "0".into()
                }
            };
            programs.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                p.name,
                p.kind,
                if p.hook.is_empty() { "?" } else { &p.hook },
                cell(cells[0]),
                cell(cells[1]),
                cell(cells[2]),
            ));
        }
        if !idle.is_empty() {
            programs.push_str(&format!(
                "\nDid not run during these workloads: {}.\n",
                idle.join(", ")
            ));
        }
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("\n{}\n", notes.join("\n"))
    };
    format!(
        "## cost: kernel program time per syscall and per packet, agent CPU per event\n\n\
         Command: `cargo xtask bench cost` (as root). Machine: {machine}.\n\n\
         From the kernel's own statistics (`kernel.bpf_stats_enabled=1`; `run_time_ns` and \
         `run_cnt` of every program the process holds, found from its descriptors in \
         /proc/<pid>/fdinfo and grouped by program type: *capture* = tracepoint, \
         raw_tracepoint and tracing programs; *byte accounting* = cgroup_skb), the agent \
         with default settings{tiers}, three workloads one after the other:\n\n\
         - **parsed TCP**: `redis-benchmark -n {REDIS_N} -c {REDIS_CLIENTS} -t set,get` \
         against a local redis-server. Syscalls: 2 × redis-server's read(2) and write(2) \
         calls during the run (`syscr + syscw` in /proc/<pid>/io, counted by the kernel, \
         not by the agent): redis-benchmark's send/recv calls, which procfs does not count, \
         mirror them with one request in flight per connection (expect about 4 per \
         request); the agent's own `nodetap_tcp_syscalls_total` beside it.\n\
         - **counts-only TCP**: {TLS_CONNS} loopback connections, {TLS_ROUND_TRIPS} round \
         trips each of {RECORD}-byte records that look like TLS (`16 03 03` + length + \
         random bytes), a stream no parser claims. Syscalls: every send and recv call the \
         bench made, counted where it made them.\n\
         - **bystander pipe**: one thread writes {PIPE_BLOCKS} blocks of {BLOCK} bytes into \
         a pipe, another reads them; no networking. Syscalls: every read and write, \
         counted where made.\n\n\
         ns per syscall = (capture programs' run time during the workload − what they ran \
         for other processes meanwhile, estimated from an idle {idle} s window just \
         before, scaled to the workload's duration) / the workload's syscalls; each workload \
         runs {REPS} times, interleaved, and the median estimate is kept (other processes' \
         bursts on this shared machine inflate an estimate when they fall in the workload, \
         deflate it when they fall in the idle window; every estimate is listed). ns per \
         packet = cgroup_skb run time / run count over the two TCP workloads. Agent CPU \
         per event = agent utime + stime (/proc/<pid>/stat) / `nodetap_events_total`, \
         over every repetition of the parsed workload, each with 0.5 s of draining after \
         it (the agent CPU-s and events columns below are these sums). Events \
         lost: the `nodetap_events_lost_total` delta (every reason but \
         `payload_unreadable` and `call_capped`, records sent without all their payload) over every repetition of every workload. The floor: no-op programs (`r0 = 0; exit`) on \
         the tracepoints under the agent's capture programs, each of the same kind (raw \
         tracepoint programs for its raw and BTF tracepoints, loaded by this command; \
         bpftrace `tracepoint:<category>:<name> {{}}` for classic ones), the same \
         workloads, the same statistics. A no-op run measures about 60 ns here: the \
         statistics time each run with two clock reads, so the same overhead is inside \
         every figure of the agent's too. The byte accounting (cgroup_skb) has no floor \
         here.\n\n\
         | run | tier | ns per parsed TCP syscall (≤ 300) | ns per counts-only TCP syscall (≤ 100) | ns per bystander pipe syscall (≤ 20; 0 in the socket tier) | byte accounting ns per packet (≤ 100) | agent CPU µs per event (≤ 0.1) | events lost |\n\
         |---|---|---|---|---|---|---|---|\n{summary}{notes}\n\
         Per workload, the kept repetition (capture programs unless named; runs per syscall above \
         the tier's expectation, 2 in the syscall tier, show other processes' syscalls):\n\n\
         | run | workload | syscalls | agent-counted TCP syscalls | seconds | capture runs | runs per syscall | capture CPU-s | other processes' share, CPU-s | **ns per syscall** | every repetition | packets | ns per packet | agent CPU-s | events | events lost |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{detail}\n\
         Every program, runs × ns per run in each workload (the kept repetition; raw, other processes included):\n{programs}",
        machine = machine(),
        tiers = if runs.iter().any(|r| r.label.contains("--capture-mode")) {
            ", once per capture tier (`--capture-mode`)"
        } else {
            " (this binary has no `--capture-mode`: its one tier)"
        },
        idle = IDLE.as_secs(),
    )
}
