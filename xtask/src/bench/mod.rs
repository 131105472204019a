//! Benchmark plumbing shared by every `cargo xtask bench <what>`: starting the agent,
//! scraping it, reading its CPU and memory, and writing BENCHMARKS.md.

use std::path::Path;

use anyhow::{Context, Result};

mod bystander;
mod capture;
mod cost;
mod db;
mod http;
pub mod kernel;
mod network;
mod node;
mod overhead;
mod soak;
mod spans;
mod stats;

pub use stats::median;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// Loopback TCP ping-pong with and without the agent.
    Capture,
    /// Scrape time of the node collectors, nodetap vs node_exporter.
    Node,
    /// redis-benchmark (default and -P 16) with and without the agent.
    Redis,
    /// pgbench select-only with and without the agent.
    Postgres,
    /// wrk and h2load against nginx with and without the agent.
    Http,
    /// iperf3 and short connections between two pods through a router, with and
    /// without the agent.
    Network,
    /// The kernel programs' own run time per TCP syscall, per pipe syscall and per
    /// packet, and agent CPU per event, beside no-op programs on the same hooks.
    Cost,
    /// Pipe I/O of processes that do no networking, with and without the agent.
    Bystander,
    /// Redis and HTTP loads with spans at 100% against spans off: throughput ratio, agent
    /// CPU per span, spans per agent core, spans dropped.
    Spans,
    /// Mixed Redis, PostgreSQL, HTTP and short-connection load for `--minutes`: the
    /// agent's RSS, descriptors and CPU over time (CSV and PNG), events lost and exact
    /// counts at the end.
    Soak,
}

/// Runs one benchmark; `minutes` is how long the soak runs (the others ignore it).
pub fn run(what: What, minutes: u64, nodetap: &Path, root: &Path) -> Result<()> {
    // The harness starts the agent from NODETAP_BIN.
    std::env::set_var("NODETAP_BIN", nodetap);
    let (key, section) = match what {
        What::Capture => ("capture", capture::run()?),
        What::Node => ("node", node::run()?),
        What::Redis => ("redis", db::redis()?),
        What::Postgres => ("postgres", db::postgres()?),
        What::Http => ("http", http::run()?),
        What::Network => ("network", network::run()?),
        What::Cost => ("cost", cost::run()?),
        What::Bystander => ("bystander", bystander::run()?),
        What::Spans => ("spans", spans::run()?),
        What::Soak => ("soak", soak::run(minutes, root)?),
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

/// The real agent for a benchmark run, with its resource use. Started and stopped by
/// the test harness's guard (SIGTERM on drop, so every program is detached).
pub struct RunningAgent(pub nodetap_tests::Agent);

impl RunningAgent {
    pub fn start(extra: &[&str]) -> Self {
        RunningAgent(nodetap_tests::Agent::start(extra))
    }

    pub fn pid(&self) -> u32 {
        self.0.process.pid()
    }

    pub fn scrape(&self) -> String {
        self.0.scrape()
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

/// Sum of the samples named `name` whose labels include `labels` (others may differ).
pub use nodetap_tests::metric_sum;

/// A helper program of the tests crate (tests/src/bin), built for release if needed.
pub fn test_helper(name: &str) -> Result<std::path::PathBuf> {
    crate::run_cmd(
        std::process::Command::new("cargo")
            .current_dir(crate::root())
            .args(["build", "--release", "-p", "nodetap-tests", "--bin", name]),
    )?;
    let path = nodetap_tests::target_dir().join("release").join(name);
    anyhow::ensure!(path.exists(), "{} not built", path.display());
    Ok(path)
}

/// Kernel records the agent lost, every reason but `payload_unreadable` and
/// `call_capped` (records sent without all of their payload, not lost), so reasons added
/// later are counted too.
pub fn events_lost(text: &str) -> f64 {
    let sent_anyway = ["payload_unreadable", "call_capped"]
        .iter()
        .map(|reason| metric_sum(text, "nodetap_events_lost_total", &[("reason", reason)]))
        .sum::<f64>();
    metric_sum(text, "nodetap_events_lost_total", &[]) - sent_anyway
}

/// Events the agent received from the kernel, every kind.
pub fn events_total(text: &str) -> f64 {
    metric_sum(text, "nodetap_events_total", &[])
}
