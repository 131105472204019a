//! Harness for the integration tests: the real `nodetap` binary, real child processes,
//! RAII guards that clean up even when a test fails, and metric lookups.
//!
//! Every test runs as root (CI does): eBPF tests must load their programs or fail, never
//! skip.

pub mod exposition;
pub mod fake_kube;
pub mod http1;
pub mod netlab;
pub mod ops;
pub mod otlp;
pub mod peers;
pub mod pgwire;
pub mod prometheus;
pub mod resp;
pub mod servers;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Panics unless running as root: the agent needs it, and a test that cannot run its
/// eBPF programs must fail, not pass by skipping.
pub fn ensure_root() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load eBPF programs and must run as root (use `cargo xtask test` as root)"
    );
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// The agent under test: `NODETAP_BIN`, else the release build `cargo xtask test` made.
pub fn nodetap_bin() -> PathBuf {
    let path = std::env::var_os("NODETAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/nodetap"));
    assert!(
        path.exists(),
        "nodetap binary not found at {} (run `cargo xtask build`, or set NODETAP_BIN)",
        path.display()
    );
    path
}

/// A helper binary of this crate (built beside the test executables).
pub fn helper_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test executables live in target/<profile>/deps; binaries one level up.
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "helper binary {} not built", path.display());
    path
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A child process killed (and reaped) when the guard drops.
pub struct ChildGuard {
    pub child: Child,
    name: String,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> ChildGuard {
        let name = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard { child, name }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `timeout` for the child to exit; returns its exit code.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so an agent detaches its programs; then make sure.
            self.signal(libc::SIGTERM);
            if self.wait_timeout(Duration::from_secs(5)).is_none() {
                eprintln!("{} did not exit on SIGTERM; killing it", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// GET over plain HTTP/1.1; returns the body. Panics with the URL on failure.
pub fn http_get(url: &str) -> String {
    try_http_get(url).unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
}

pub fn try_http_get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept-Encoding: identity\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The real agent, started with a free `--listen` port and stopped with SIGTERM on drop.
pub struct Agent {
    pub process: ChildGuard,
    pub port: u16,
    log: PathBuf,
}

impl Agent {
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_until(args, |agent| try_http_get(&agent.metrics_url()).is_ok())
    }

    /// Started with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_wrapped_env(&[], args, env, |agent| {
            try_http_get(&agent.metrics_url()).is_ok()
        })
    }

    /// Starts the agent and waits until `serving` says its endpoint answers (an agent
    /// serving TLS or asking for a password does not answer [`try_http_get`]).
    pub fn start_until(args: &[&str], serving: impl Fn(&Agent) -> bool) -> Agent {
        Agent::start_wrapped(&[], args, serving)
    }

    /// Starts the agent under `wrapper` (a command that runs the one after it, e.g.
    /// `setpriv` with a user and capabilities), else as [`Agent::start_until`].
    pub fn start_wrapped(
        wrapper: &[&str],
        args: &[&str],
        serving: impl Fn(&Agent) -> bool,
    ) -> Agent {
        Agent::start_wrapped_env(wrapper, args, &[], serving)
    }

    fn start_wrapped_env(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        serving: impl Fn(&Agent) -> bool,
    ) -> Agent {
        ensure_root();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("nodetap-test-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("agent log file");
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(nodetap_bin());
                cmd
            }
            None => Command::new(nodetap_bin()),
        };
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file);
        let mut agent = Agent {
            process: ChildGuard::spawn(cmd),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = agent.process.child.try_wait() {
                panic!(
                    "nodetap exited during start-up ({status}); its output:\n{}",
                    agent.output()
                );
            }
            if serving(&agent) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "nodetap did not serve /metrics within 60 s; its output:\n{}",
                agent.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn scrape(&self) -> String {
        http_get(&self.metrics_url())
    }

    /// The capture tier the agent reports (`nodetap_capture_info{tier}`), for failure
    /// messages: CI runs the suite once per tier (`NODETAP_CAPTURE_MODE`).
    pub fn tier(&self) -> String {
        capture_tier(&self.scrape())
    }

    /// What the agent printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes until `f` holds or `timeout` passes; returns the last scrape. The agent
    /// drains its ring buffer on a timer, so a count can trail the traffic briefly.
    pub fn scrape_until(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.scrape();
            if f(&text) || Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A finished command, checked: every helper and tool a test runs must succeed.
pub trait Checked {
    /// The output of a command that ran and exited 0; otherwise panics naming `what`,
    /// with the command's stderr.
    fn checked(self, what: &str) -> std::process::Output;
}

impl Checked for std::io::Result<std::process::Output> {
    fn checked(self, what: &str) -> std::process::Output {
        let out = self.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The value of the series `name{labels}` in Prometheus text; labels must match
/// exactly (all of them, in any order). Panics if the text is not valid exposition
/// format: the agent's output must always parse.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let families = exposition::parse(text).unwrap_or_else(|e| panic!("invalid exposition: {e:?}"));
    sample_value(&families, name, labels)
}

/// The value of the series `name{labels}` among parsed families; labels must match
/// exactly (all of them, in any order).
pub fn sample_value(
    families: &[exposition::Family],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    exposition::select(families, name, labels)
        .find(|s| s.labels.len() == labels.len())
        .map(|s| s.value)
}

/// `nodetap_tcp_bytes_total` of the process (service) `name` in one direction and role,
/// summed over any other labels.
pub fn tcp_bytes(text: &str, name: &str, direction: &str, role: &str) -> f64 {
    metric_sum(
        text,
        "nodetap_tcp_bytes_total",
        &[
            ("direction", direction),
            ("role", role),
            ("service_name", name),
        ],
    )
}

/// The tier named by the `nodetap_capture_info{tier}` sample that is 1, or a note that
/// the agent reports none.
pub fn capture_tier(text: &str) -> String {
    let families = exposition::parse(text).unwrap_or_else(|e| panic!("invalid exposition: {e:?}"));
    families
        .iter()
        .flat_map(|f| f.samples.iter())
        .find(|s| s.name == "nodetap_capture_info" && s.value == 1.0)
        .and_then(|s| s.labels.get("tier").cloned())
        .unwrap_or_else(|| "unknown (no nodetap_capture_info{tier} = 1)".to_owned())
}

/// The sum of the samples named `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let families = exposition::parse(text).unwrap_or_else(|e| panic!("invalid exposition: {e:?}"));
    exposition::select(&families, name, labels)
        .map(|s| s.value)
        .sum()
}

/// The sample lines of a scrape that name `needle`, for failure messages (the first 60).
pub fn lines_with(text: &str, needle: &str) -> String {
    const MAX: usize = 60;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .collect();
    let mut out = lines[..lines.len().min(MAX)].join("\n");
    if lines.len() > MAX {
        out.push_str(&format!("\n... and {} more lines", lines.len() - MAX));
    }
    out
}

/// Holds a lock for the whole test: tests whose load or exactness would disturb one
/// another (every agent sees every socket on the machine) run one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's name as the kernel reports it (what the agent calls service_name).
pub fn own_process_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("/proc/self/comm")
        .trim_end()
        .to_owned()
}

/// A unique, 15-character-safe process name for one test's traffic.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(
        name.len() <= 15,
        "process names are cut at 15 bytes: {name}"
    );
    name.truncate(15);
    name
}

/// Runs `cmd` and returns its stdout; panics with the command and everything it printed
/// if it cannot start or exits unsuccessfully.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e} (cargo xtask setup installs the tools)"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `len` random lowercase letters (from the kernel's random source): a value that can
/// only show up somewhere if it was copied there.
pub fn random_token(len: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| (b'a' + b % 26) as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_series_with_exact_labels() {
        let text =
            "# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"z\"} 5\nx_total{a=\"1\"} 7\ny 3\n";
        assert_eq!(
            metric_value(text, "x_total", &[("b", "q\"z"), ("a", "1")]),
            Some(5.0)
        );
        assert_eq!(metric_value(text, "x_total", &[("a", "1")]), Some(7.0));
        assert_eq!(metric_value(text, "y", &[]), Some(3.0));
        assert_eq!(metric_value(text, "x_total", &[("a", "2")]), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
