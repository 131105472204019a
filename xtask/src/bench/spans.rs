//! `cargo xtask bench spans`: what making and exporting a span for every request costs.
//! Redis (redis-benchmark SET and GET) and HTTP (wrk against nginx) loads, each run twice
//! in one go against the same servers: the agent with spans off, then the agent with spans
//! at 100% (`always_on`) exported over OTLP/HTTP to a receiver that accepts without
//! decoding (tests/peers/otlp_receiver.py `discard`). Reported: the throughput ratio
//! (spans on / off), the agent's extra CPU per span, spans exported per agent CPU-second,
//! and spans dropped.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Result;
use nodetap_tests::{
    peers::peer_script,
    servers::{wait_for_port, Nginx, RedisServer},
    ChildGuard,
};

use crate::bench::{db::redis_benchmark, http::wrk_for, machine, metric_sum, RunningAgent};

/// Commands per redis-benchmark test (SET, then GET), and seconds of wrk: short, as the
/// machine is shared.
const REDIS_N: u64 = 50_000;
const WRK_SECONDS: u32 = 4;

/// One load against its server: (requests/s, requests completed).
type Load<'a> = Box<dyn Fn() -> Result<(f64, f64)> + 'a>;

/// What one agent run saw.
struct Run {
    rps: f64,
    requests: f64,
    cpu: f64,
    exported: f64,
    dropped: f64,
    not_sampled: f64,
}

fn measure(agent: &RunningAgent, load: &Load) -> Result<Run> {
    let before = agent.scrape();
    let cpu0 = agent.cpu_seconds();
    let (rps, requests) = load()?;
    // Let the exporter send the last batches (batch delay 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    let after = agent.scrape();
    let cpu = agent.cpu_seconds() - cpu0;
    let d = |name: &str| metric_sum(&after, name, &[]) - metric_sum(&before, name, &[]);
    Ok(Run {
        rps,
        requests,
        cpu,
        exported: d("nodetap_spans_exported_total"),
        dropped: d("nodetap_spans_dropped_total"),
        not_sampled: d("nodetap_spans_not_sampled_total"),
    })
}

pub fn run() -> Result<String> {
    let redis = RedisServer::start();
    let nginx = Nginx::start();
    let receiver_port = nodetap_tests::free_port();
    let dir = std::env::temp_dir().join(format!("nodetap-bench-spans-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new("python3");
    cmd.arg(peer_script("otlp_receiver.py"))
        .args(["discard", &receiver_port.to_string()])
        .arg(dir.join("spans.jsonl"))
        .stdout(Stdio::null());
    let mut receiver = ChildGuard::spawn(cmd);
    wait_for_port(receiver_port, "otlp receiver", &mut receiver);
    let endpoint = format!("http://127.0.0.1:{receiver_port}");

    let loads: [(&str, Load); 2] = [
        (
            "redis-benchmark SET+GET, 50 clients",
            Box::new(|| {
                let rows = redis_benchmark(redis.port, REDIS_N, &[])?;
                // Both tests' commands; throughput as the mean of the two.
                let rps = rows.iter().map(|r| r.1).sum::<f64>() / rows.len().max(1) as f64;
                Ok((rps, (REDIS_N as usize * rows.len()) as f64))
            }),
        ),
        (
            "wrk, HTTP/1.1 keep-alive, 32 connections",
            Box::new(|| wrk_for(nginx.http1_port, WRK_SECONDS)),
        ),
    ];
    let mut rows = String::new();
    for (name, load) in &loads {
        let off = {
            let agent = RunningAgent::start(&[]);
            measure(&agent, load)?
        };
        let on = {
            let agent = RunningAgent::start(&[
                "--otlp-endpoint",
                &endpoint,
                "--traces-sampler",
                "always_on",
            ]);
            measure(&agent, load)?
        };
        let spans = on.exported + on.dropped;
        // The agent's CPU per request with spans, less without, over the spans each
        // request made (a client and a server span when both ends are on the node).
        let extra_per_request = on.cpu / on.requests - off.cpu / off.requests;
        let spans_per_request = spans / on.requests;
        rows.push_str(&format!(
            "| {name} | {rps_off:.0} | {rps_on:.0} | **{ratio:.3}** | {spans:.0} | {spr:.2} | **{us:.2}** | **{per_core:.0}** | **{dropped:.0}** | {not_sampled:.0} |\n",
            rps_off = off.rps,
            rps_on = on.rps,
            ratio = on.rps / off.rps,
            spr = spans_per_request,
            us = extra_per_request / spans_per_request.max(f64::MIN_POSITIVE) * 1e6,
            per_core = on.exported / on.cpu.max(f64::MIN_POSITIVE),
            dropped = on.dropped,
            not_sampled = on.not_sampled,
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "## spans: every request a span (100%), against spans off\n\n\
         Command: `cargo xtask bench spans` (as root). Machine: {machine}.\n\n\
         Each load runs twice against the same servers: the agent with spans off, then with \
         `--otlp-endpoint` and `--traces-sampler always_on`, exporting over OTLP/HTTP to a \
         receiver that accepts without decoding. redis-benchmark `-n {REDIS_N} -t set,get`; \
         `wrk -t 2 -c 32 -d {WRK_SECONDS}s` on `/api/ping`. CPU per span: the agent's CPU per \
         request with spans less without, over the spans per request (client and server). \
         Spans per agent core: spans exported per CPU-second of the agent with spans on \
         (capture included).\n\n\
         | load | req/s spans off | req/s spans on | ratio | spans (exported + dropped) | spans per request | extra agent CPU per span (µs) | spans exported per agent CPU-second | spans dropped | not sampled |\n\
         |---|---|---|---|---|---|---|---|---|---|\n{rows}",
        machine = machine(),
    ))
}
