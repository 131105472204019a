//! Benchmark plumbing shared by every `cargo xtask bench <what>`: starting the agent,
//! scraping it, reading its CPU and memory, and writing BENCHMARKS.md.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// Loopback TCP ping-pong with and without the agent.
    Capture,
    /// Scrape time of the node collectors, nodetap vs node_exporter.
    Node,
}

pub fn run(what: What, nodetap: &Path, root: &Path) -> Result<()> {
    let (key, section) = match what {
        What::Capture => ("capture", crate::bench_capture::run(nodetap)?),
        What::Node => ("node", crate::bench_node::run(nodetap)?),
    };
    println!("{section}");
    write_section(&root.join("BENCHMARKS.md"), key, &section)
}

/// Replaces (or appends) the section between `<!-- bench:KEY -->` markers.
pub fn write_section(path: &Path, key: &str, section: &str) -> Result<()> {
    let begin = format!("<!-- bench:{key} -->");
    let end = format!("<!-- /bench:{key} -->");
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEach section is written by the command it names; numbers are from one run \
         on the machine it names. Benchmarks are not tests: they measure ratios (with the agent \
         vs without, in the same run).\n"
            .to_owned()
    });
    let block = format!("{begin}\n{}\n{end}", section.trim_end());
    match (text.find(&begin), text.find(&end)) {
        (Some(a), Some(b)) if b > a => text.replace_range(a..b + end.len(), &block),
        _ => {
            text.push('\n');
            text.push_str(&block);
            text.push('\n');
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// This machine, for the record.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), kernel {}", kernel.trim())
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}");
    };
    if !head.contains(" 200 ") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Sum of the samples of `name` whose line contains every `needle`.
pub fn metric_sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The real agent, for benchmarks.
pub struct RunningAgent {
    child: Child,
    pub addr: String,
}

impl RunningAgent {
    pub fn start(bin: &Path, extra: &[&str]) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(bin)
            .args(["--listen", &addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nodetap")?;
        let agent = RunningAgent { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&agent.addr, "/metrics").is_err() {
            if Instant::now() > deadline {
                bail!("nodetap did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn scrape(&self) -> Result<String> {
        http_get(&self.addr, "/metrics")
    }

    /// User + system CPU seconds the agent has used.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.pid())
    }

    pub fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
