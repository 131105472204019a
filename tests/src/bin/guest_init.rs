//! PID 1 of the second-kernel test VM (`cargo xtask test-kernels`, see docs/kernels.md).
//!
//! The xtask packs this program as `/init` of an initramfs beside the release `nodetap`,
//! `tcpgen` and Debian's `redis-server`, boots a kernel under qemu, and reads the
//! serial console. This program mounts what the agent needs, runs the checks, prints one
//! machine-readable line per check and powers the VM off:
//!
//! ```text
//! NODETAP-TEST <name> PASS|FAIL <one-line detail>
//! NODETAP-TESTS-DONE <number of checks>
//! ```
//!
//! Everything else it prints is for people. A check never skips: what it cannot do (a
//! missing flag, a program that was not packed) is a FAIL that says why.

use std::{
    ffi::CString,
    io::Write,
    net::TcpStream,
    panic::AssertUnwindSafe,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nodetap_tests::{
    exposition, free_port,
    resp::{Reply, RespClient},
    sample_value, try_http_get, ChildGuard,
};

const NODETAP: &str = "/bin/nodetap";
const TCPGEN: &str = "/bin/tcpgen";
const REDIS_SERVER: &str = "/bin/redis-server";
/// The socket tier's data tracepoint (Linux 6.3+).
const SOCK_SEND_LENGTH: &str = "/sys/kernel/tracing/events/sock/sock_send_length";
/// Loading and verifying the kernel programs runs under emulation here: slow.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long counts may trail the traffic (the agent drains its ring buffer on a timer).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

type Outcome = Result<String, String>;

fn main() {
    if std::process::id() != 1 {
        eprintln!("guest_init is the init of the test VM; run it with `cargo xtask test-kernels`");
        std::process::exit(2);
    }
    std::env::set_var("PATH", "/bin");
    std::env::set_var("NODETAP_BIN", NODETAP);
    let mut ran = 0;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut ran)));
    if outcome.is_err() {
        result(
            "guest-init",
            Err("the guest's init panicked (see above)".into()),
        );
        ran += 1;
    }
    println!("NODETAP-TESTS-DONE {ran}");
    let _ = std::io::stdout().flush();
    power_off();
}

fn run(ran: &mut usize) {
    setup_system();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("guest: kernel {}", release.trim());
    println!(
        "guest: sock:sock_send_length {}: auto mode must choose the {} tier",
        if Path::new(SOCK_SEND_LENGTH).exists() {
            "present"
        } else {
            "absent"
        },
        kernel_tier()
    );
    println!(
        "guest: cpus {}, memory {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("?")
    );

    let mut check = |name: &str, f: &mut dyn FnMut() -> Outcome| {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err("panicked (see above)".into()));
        let took = started.elapsed().as_secs_f64();
        result(name, outcome.map(|d| format!("{d} ({took:.1} s)")));
        *ran += 1;
    };

    let help = Command::new(NODETAP)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mode = CaptureMode {
        supported: help.contains("--capture-mode"),
        asked: asked_capture_mode(),
    };
    if let (Some(asked), false) = (&mode.asked, mode.supported) {
        check("capture-mode", &mut || {
            Err(format!(
                "asked for --capture-mode {asked}, but this nodetap has no such flag"
            ))
        });
    }
    let mode_args = mode.args();

    check("check", &mut || check_report(&mode_args));

    let agent = match std::panic::catch_unwind(|| Agent::start(&mode_args)) {
        Ok(Ok(agent)) => agent,
        Ok(Err(e)) => {
            check("agent-start", &mut || Err(e.clone()));
            return;
        }
        Err(_) => {
            check("agent-start", &mut || Err("panicked (see above)".into()));
            return;
        }
    };
    println!(
        "guest: agent serving /metrics after {:.1} s",
        agent.started_in.as_secs_f64()
    );

    check("capture-tier", &mut || capture_tier(&agent, &mode));
    for (name, family, api, calls, size, reply, send, recv) in TRANSFERS {
        check(&format!("tcp-exact-{name}"), &mut || {
            tcp_exact(&agent, name, family, api, calls, size, reply, send, recv)
        });
    }
    check("redis-exact", &mut || redis_exact(&agent));
    let log = agent.output();
    let shown: Vec<&str> = log.lines().rev().take(40).collect();
    println!("guest: agent log tail:");
    for line in shown.iter().rev() {
        println!("  {line}");
    }
}

fn result(name: &str, outcome: Outcome) {
    let (verdict, detail) = match outcome {
        Ok(d) => ("PASS", d),
        Err(d) => ("FAIL", d),
    };
    // One line per check, whatever the detail holds.
    let detail = detail.replace('\n', " | ");
    println!("NODETAP-TEST {name} {verdict} {detail}");
    let _ = std::io::stdout().flush();
}

/// Mounts what a booted host has and the agent expects (docs/design.md: tracefs and bpffs
/// are not mounted at boot on the build machines either), and brings up loopback.
fn setup_system() {
    let mounts: [(&str, &str, &str); 7] = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("tracefs", "/sys/kernel/tracing", "tracefs"),
        ("bpf", "/sys/fs/bpf", "bpf"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ];
    for (source, target, fstype) in mounts {
        let _ = std::fs::create_dir_all(target);
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (src, tgt, fs) = (c(source), c(target), c(fstype));
        let rc =
            unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            println!(
                "guest: mount {fstype} on {target} failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if let Err(e) = loopback_up() {
        println!("guest: cannot bring up lo: {e}");
    }
}

fn loopback_up() -> std::io::Result<()> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn power_off() -> ! {
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot(2) does not return on success; PID 1 must not exit either.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `nodetap --check` loads and attaches every hook, prints its report and exits 0.
fn check_report(mode_args: &[String]) -> Outcome {
    let out = Command::new(NODETAP)
        .arg("--check")
        .args(mode_args)
        .output()
        .map_err(|e| format!("cannot run {NODETAP}: {e}"))?;
    println!("guest: nodetap --check said:");
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("  {line}");
    }
    if out.status.success() {
        Ok("nodetap --check exited 0".into())
    } else {
        Err(format!(
            "nodetap --check failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
        ))
    }
}

/// The agent, serving /metrics on a free loopback port.
struct Agent {
    process: ChildGuard,
    port: u16,
    log: std::path::PathBuf,
    started_in: Duration,
}

impl Agent {
    fn start(mode_args: &[String]) -> Result<Agent, String> {
        let port = free_port();
        let log = Path::new("/tmp/nodetap.log").to_path_buf();
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(NODETAP);
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        // The guest is emulated (TCG), tens of times slower than the hardware the CPU
        // budget's default (half a core) is meant for: under it the agent goes over
        // budget and counts new connections without parsing them, and the request
        // counts here would be zero. The budget has its own tests (tests/overload.rs).
        cmd.args(["--cpu-budget", "64"]);
        cmd.args(mode_args);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file);
        let started = Instant::now();
        let mut agent = Agent {
            process: ChildGuard::spawn(cmd),
            port,
            log,
            started_in: Duration::ZERO,
        };
        loop {
            if let Ok(Some(status)) = agent.process.child.try_wait() {
                return Err(format!(
                    "nodetap exited during start-up ({status}): {}",
                    agent.output().replace('\n', " | ")
                ));
            }
            if try_http_get(&agent.url()).is_ok() {
                agent.started_in = started.elapsed();
                return Ok(agent);
            }
            if started.elapsed() > AGENT_START_TIMEOUT {
                return Err(format!(
                    "nodetap did not serve /metrics within {} s",
                    AGENT_START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn scrape(&self) -> Result<Vec<exposition::Family>, String> {
        let text = try_http_get(&self.url()).map_err(|e| format!("scrape failed: {e}"))?;
        exposition::parse(&text).map_err(|e| format!("invalid exposition: {e:?}"))
    }

    /// Scrapes until `done` holds or the settle timeout passes; returns the last scrape.
    fn scrape_until(
        &self,
        done: impl Fn(&[exposition::Family]) -> bool,
    ) -> Result<Vec<exposition::Family>, String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let families = self.scrape()?;
            if done(&families) || Instant::now() >= deadline {
                return Ok(families);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The capture tier the run asks for, and whether this agent can be asked.
struct CaptureMode {
    /// The agent has `--capture-mode auto|socket|syscall`.
    supported: bool,
    /// `nodetap.capture_mode=` on the kernel command line (`cargo xtask test-kernels
    /// --capture-mode`); auto when absent.
    asked: Option<String>,
}

impl CaptureMode {
    fn args(&self) -> Vec<String> {
        if !self.supported {
            return Vec::new();
        }
        let mode = self.asked.clone().unwrap_or_else(|| "auto".into());
        vec!["--capture-mode".into(), mode]
    }

    /// The tier the agent must run in: the one forced, else the one this kernel
    /// allows: `socket` where it has the socket-level data tracepoints (Linux 6.3+),
    /// `syscall` below (Debian's and EKS's 6.1).
    fn expected_tier(&self) -> String {
        match self.asked.as_deref() {
            Some(forced @ ("socket" | "syscall")) => forced.into(),
            _ => kernel_tier().into(),
        }
    }
}

fn kernel_tier() -> &'static str {
    if Path::new(SOCK_SEND_LENGTH).exists() {
        "socket"
    } else {
        "syscall"
    }
}

fn asked_capture_mode() -> Option<String> {
    std::fs::read_to_string("/proc/cmdline")
        .ok()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nodetap.capture_mode="))
        .map(str::to_owned)
}

/// The agent must run in the tier asked for, or in auto mode the one this kernel
/// allows. An agent without `--capture-mode` has one capture path only: the check says
/// so.
fn capture_tier(agent: &Agent, mode: &CaptureMode) -> Outcome {
    if !mode.supported {
        return Err("this nodetap has no --capture-mode: it cannot say which tier it runs".into());
    }
    let want = mode.expected_tier();
    let families = agent.scrape()?;
    let tiers: Vec<String> = families
        .iter()
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.name == "nodetap_capture_info" && s.value == 1.0)
        .filter_map(|s| s.labels.get("tier").cloned())
        .collect();
    let how = mode.asked.as_deref().unwrap_or("auto");
    match tiers.as_slice() {
        [tier] if *tier == want => Ok(format!("--capture-mode {how}: tier {want}")),
        [] => Err("no nodetap_capture_info{tier} series with value 1".into()),
        other => Err(format!(
            "--capture-mode {how}: expected tier {want}, agent reports {other:?}"
        )),
    }
}

/// (name, family, api, calls, size, reply bytes, send syscall, receive syscall)
type Transfer = (
    &'static str,
    &'static str,
    &'static str,
    usize,
    usize,
    usize,
    &'static str,
    &'static str,
);

/// The host's capture tests' transfers (tests/tests/capture.rs): every data syscall
/// family, both address families.
const TRANSFERS: [Transfer; 4] = [
    ("rw-v4", "v4", "rw", 1000, 100, 300_000, "write", "read"),
    (
        "sendrecv-v6",
        "v6",
        "sendrecv",
        500,
        1_000,
        1_000_000,
        "sendto",
        "recvfrom",
    ),
    (
        "vectored-v4",
        "v4",
        "vectored",
        300,
        777,
        123_457,
        "writev",
        "readv",
    ),
    (
        "msg-v6", "v6", "msg", 250, 4_000, 2_000_001, "sendmsg", "recvmsg",
    ),
];

/// tcpgen moves known bytes in known calls over one connection; every count the agent
/// reports for that process must equal what tcpgen did.
#[allow(clippy::too_many_arguments)]
fn tcp_exact(
    agent: &Agent,
    name: &str,
    family: &str,
    api: &str,
    calls: usize,
    size: usize,
    reply: usize,
    send_syscall: &str,
    recv_syscall: &str,
) -> Outcome {
    // Process names are cut at 15 bytes; keep each transfer's name unique.
    let process = format!("kt{}", name.replace('-', ""));
    let out = Command::new(TCPGEN)
        .args([&process, family, api])
        .args([calls.to_string(), size.to_string(), reply.to_string()])
        .output()
        .map_err(|e| format!("cannot run {TCPGEN}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tcpgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("tcpgen printed no JSON ({e})"))?;
    let truth = |side: &str, field: &str| report[side][field].as_f64().unwrap_or(-1.0);
    let svc = process.as_str();
    let bytes = |f: &[exposition::Family], direction: &str, role: &str| {
        sample_value(
            f,
            "nodetap_tcp_bytes_total",
            &[
                ("direction", direction),
                ("role", role),
                ("service_name", svc),
            ],
        )
    };
    let syscalls = |f: &[exposition::Family], direction: &str, role: &str, syscall: &str| {
        sample_value(
            f,
            "nodetap_tcp_syscalls_total",
            &[
                ("direction", direction),
                ("role", role),
                ("syscall", syscall),
                ("service_name", svc),
            ],
        )
    };
    let conns = |f: &[exposition::Family], which: &str, role: &str| {
        sample_value(
            f,
            &format!("nodetap_tcp_connections_{which}_total"),
            &[("role", role), ("service_name", svc)],
        )
    };
    let request = truth("client", "sent");
    let response = truth("server", "sent");
    let families = agent.scrape_until(|f| {
        conns(f, "closed", "server") == Some(1.0)
            && conns(f, "closed", "client") == Some(1.0)
            && bytes(f, "receive", "client") == Some(response)
            && bytes(f, "receive", "server") == Some(request)
    })?;
    let f = families.as_slice();
    let expect = [
        (
            "client transmit bytes",
            bytes(f, "transmit", "client"),
            request,
        ),
        (
            "server receive bytes",
            bytes(f, "receive", "server"),
            request,
        ),
        (
            "server transmit bytes",
            bytes(f, "transmit", "server"),
            response,
        ),
        (
            "client receive bytes",
            bytes(f, "receive", "client"),
            response,
        ),
        (
            "client send calls",
            syscalls(f, "transmit", "client", send_syscall),
            truth("client", "send_calls"),
        ),
        (
            "server send calls",
            syscalls(f, "transmit", "server", send_syscall),
            truth("server", "send_calls"),
        ),
        (
            "client receive calls",
            syscalls(f, "receive", "client", recv_syscall),
            truth("client", "recv_calls"),
        ),
        (
            "server receive calls",
            syscalls(f, "receive", "server", recv_syscall),
            truth("server", "recv_calls"),
        ),
        ("client opened", conns(f, "opened", "client"), 1.0),
        ("server opened", conns(f, "opened", "server"), 1.0),
        ("client closed", conns(f, "closed", "client"), 1.0),
        ("server closed", conns(f, "closed", "server"), 1.0),
    ];
    let mut wrong: Vec<String> = expect
        .iter()
        .filter(|(_, got, want)| *got != Some(*want))
        .map(|(what, got, want)| format!("{what}: agent {got:?}, truth {want}"))
        .collect();
    wrong.extend(events_lost(f));
    if wrong.is_empty() {
        Ok(format!(
            "{request} B out, {response} B back, {} + {} calls, 1 connection: all exact",
            truth("client", "send_calls"),
            truth("server", "send_calls"),
        ))
    } else {
        Err(wrong.join("; "))
    }
}

fn events_lost(f: &[exposition::Family]) -> Vec<String> {
    f.iter()
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.name == "nodetap_events_lost_total" && s.value != 0.0)
        .map(|s| format!("events lost {:?}: {}", s.labels, s.value))
        .collect()
}

/// A real redis-server in the guest and a RESP client with known commands: operation
/// counts on the client and the server side must be exact.
fn redis_exact(agent: &Agent) -> Outcome {
    if !Path::new(REDIS_SERVER).exists() {
        return Err(format!("{REDIS_SERVER} was not packed into the initramfs"));
    }
    let port = free_port();
    let mut cmd = Command::new(REDIS_SERVER);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--dir", "/tmp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = ChildGuard::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("redis-server exited during start-up: {status}"));
        }
        if Instant::now() > deadline {
            return Err("redis-server did not listen within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = RespClient::connect(port);
    for i in 0..100 {
        let (reply, _) = client.command(&["SET", &format!("k{i}"), "v"]);
        if reply != Reply::Ok("OK".into()) {
            return Err(format!("SET k{i}: {reply:?}"));
        }
    }
    for i in 0..50 {
        client.command(&["GET", &format!("k{i}")]);
    }
    // 4 pipelined batches of 16 GETs, one write each.
    for batch in 0..4 {
        let cmds: Vec<Vec<String>> = (0..16)
            .map(|i| vec!["GET".into(), format!("k{}", batch * 16 + i)])
            .collect();
        client.pipeline(&cmds);
    }
    let (reply, _) = client.command(&["INCR", "k1"]);
    if !matches!(&reply, Reply::Error(e) if e.starts_with("ERR")) {
        return Err(format!("INCR on a string: {reply:?}"));
    }
    drop(client);
    let me = std::fs::read_to_string("/proc/self/comm")
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    let port_s = port.to_string();
    let count = |f: &[exposition::Family], side: &str, service: &str, op: &str, error: &str| {
        sample_value(
            f,
            &format!("db_{side}_operation_duration_seconds_count"),
            &[
                ("db_system_name", "redis"),
                ("db_operation_name", op),
                ("error_type", error),
                ("server_address", "127.0.0.1"),
                ("server_port", &port_s),
                ("service_name", service),
            ],
        )
        .unwrap_or(0.0)
    };
    let expect = [
        ("SET", "", 100.0),
        ("GET", "", 50.0 + 64.0),
        ("INCR", "ERR", 1.0),
    ];
    let families = agent.scrape_until(|f| {
        expect.iter().all(|(op, err, n)| {
            count(f, "client", &me, op, err) == *n
                && count(f, "server", "redis-server", op, err) == *n
        })
    })?;
    let mut wrong = Vec::new();
    for (side, service) in [("client", me.as_str()), ("server", "redis-server")] {
        for (op, err, n) in expect {
            let got = count(&families, side, service, op, err);
            if got != n {
                wrong.push(format!(
                    "{side} {op} error_type={err:?}: agent {got}, truth {n}"
                ));
            }
        }
    }
    wrong.extend(events_lost(&families));
    if !wrong.is_empty() {
        // What the agent did say of Redis and of these connections, to tell a wrong
        // label from a missed request.
        wrong.extend(
            families
                .iter()
                .flat_map(|f| f.samples.iter())
                .filter(|s| {
                    s.name.starts_with("db_") && s.name.ends_with("_count")
                        || s.name.starts_with("nodetap_tcp_connections_")
                            && s.labels.values().any(|v| v == "redis-server" || *v == me)
                        || s.name.starts_with("nodetap_protocol_")
                        || s.name.starts_with("nodetap_capture_degraded")
                })
                .map(|s| format!("agent: {} {:?} {}", s.name, s.labels, s.value)),
        );
    }
    drop(server);
    if wrong.is_empty() {
        Ok("100 SET, 114 GET (64 pipelined), 1 INCR error: exact on both sides".into())
    } else {
        Err(wrong.join("; "))
    }
}
