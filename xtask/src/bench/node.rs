//! `cargo xtask bench node`: scrape time of nodetap's /metrics against node_exporter's,
//! on the same machine in the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodetap_tests::{free_port, Agent, ChildGuard};

use super::stats::percentile;

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const WARMUP: usize = 10;
const SCRAPES: usize = 200;

/// GET http://127.0.0.1:<port>/metrics; returns the body size.
fn scrape(port: u16) -> Result<usize> {
    nodetap_tests::try_http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .map(|body| body.len())
        .map_err(|e| anyhow::anyhow!("scrape of port {port}: {e}"))
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

struct Stats {
    median_ms: f64,
    p99_ms: f64,
    body_bytes: usize,
}

fn stats(mut ms: Vec<f64>, body_bytes: usize) -> Stats {
    ms.sort_by(f64::total_cmp);
    Stats {
        median_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        body_bytes,
    }
}

/// Runs node_exporter (default collectors) and `nodetap_bin --listen 127.0.0.1:<port>`
/// (root, eBPF loaded), scrapes each [`SCRAPES`] times, interleaved, after [`WARMUP`]
/// scrapes, and returns a markdown section for BENCHMARKS.md.
pub fn run() -> Result<String> {
    if !Path::new(NODE_EXPORTER).exists() {
        bail!("{NODE_EXPORTER} is missing: apt-get install -y prometheus-node-exporter");
    }
    let ne_port = free_port();
    let mut cmd = Command::new(NODE_EXPORTER);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let node_exporter = ChildGuard::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(ne_port).is_err() {
        if Instant::now() > deadline {
            bail!("node_exporter did not answer on port {ne_port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let nodetap = Agent::start(&[]);
    let nt_port = nodetap.port;

    for _ in 0..WARMUP {
        scrape(ne_port).context("warm-up scrape of node_exporter")?;
        scrape(nt_port).context("warm-up scrape of nodetap")?;
    }
    let (mut ne_ms, mut nt_ms) = (Vec::with_capacity(SCRAPES), Vec::with_capacity(SCRAPES));
    let (mut ne_bytes, mut nt_bytes) = (0, 0);
    for i in 0..SCRAPES {
        // Alternate who goes first, so neither always scrapes a just-warmed cache.
        let order = if i % 2 == 0 {
            [ne_port, nt_port]
        } else {
            [nt_port, ne_port]
        };
        for port in order {
            let start = Instant::now();
            let bytes = scrape(port).with_context(|| format!("scrape {i} of port {port}"))?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if port == ne_port {
                ne_ms.push(ms);
                ne_bytes = bytes;
            } else {
                nt_ms.push(ms);
                nt_bytes = bytes;
            }
        }
    }
    drop(nodetap);
    drop(node_exporter);

    let ne = stats(ne_ms, ne_bytes);
    let nt = stats(nt_ms, nt_bytes);
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let ne_version = first_line(NODE_EXPORTER, &["--version"]);

    let mut md = String::new();
    md.push_str("## node: /metrics scrape time, nodetap vs node_exporter\n\n");
    md.push_str(&format!(
        "Command: `cargo xtask bench node` (as root). Machine: {nproc} CPUs (`nproc`), kernel {kernel}. \
         Reference: {ne_version}, default collectors.\n\n"
    ));
    md.push_str(&format!(
        "Each endpoint scraped {SCRAPES} times over loopback, interleaved (alternating which goes first), \
         after {WARMUP} warm-up scrapes; time is from connecting to reading the last byte.\n\n"
    ));
    md.push_str("| endpoint | median | p99 | body |\n|---|---|---|---|\n");
    for (name, s) in [("node_exporter", &ne), ("nodetap", &nt)] {
        md.push_str(&format!(
            "| {name} | {:.2} ms | {:.2} ms | {:.1} KiB |\n",
            s.median_ms,
            s.p99_ms,
            s.body_bytes as f64 / 1024.0
        ));
    }
    md.push_str(&format!(
        "\nRatio nodetap / node_exporter: median {:.2}x, p99 {:.2}x.\n\n",
        nt.median_ms / ne.median_ms,
        nt.p99_ms / ne.p99_ms
    ));
    md.push_str(
        "Not like for like: nodetap's /metrics also carries its non-node families (RED metrics, \
         traffic, the agent's own health), and Debian's node_exporter runs its 46 default \
         collectors where nodetap runs 45 (all of upstream node_exporter 1.5's default Linux set; \
         not systemd, which Debian's build adds). This compares the endpoints as deployed.\n",
    );
    Ok(md)
}
