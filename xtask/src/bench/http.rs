//! `cargo xtask bench http`: wrk against nginx (HTTP/1.1 keep-alive, small responses) and
//! h2load against nginx h2c, each with and without the agent in one run: throughput and
//! its ratio, agent CPU per million requests, events lost, and requests counted by the
//! agent against requests completed by the load generator.

use std::process::Command;

use anyhow::{bail, Context, Result};
use nodetap_tests::servers::Nginx;

use crate::bench::{events_lost, machine, metric_sum, overhead, RunningAgent};

/// Sum of `_count` samples of a histogram family whose labels include `labels`.
fn count(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, &format!("{family}_count"), labels)
}

/// One wrk run: (requests/s, requests completed).
fn wrk(port: u16) -> Result<(f64, f64)> {
    wrk_for(port, 8)
}

/// One wrk run of `seconds` (2 threads, 32 connections): (requests/s, requests completed).
pub(super) fn wrk_for(port: u16, seconds: u32) -> Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", "32", "-d", &format!("{seconds}s")])
        .arg(format!("http://127.0.0.1:{port}/api/ping"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk output")?;
    let done = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no request count in wrk output")?;
    Ok((rps, done))
}

/// One h2load run: (requests/s, requests succeeded).
fn h2load(port: u16) -> Result<(f64, f64)> {
    let out = Command::new("h2load")
        .args(["-n", "200000", "-c", "4", "-m", "10"])
        .arg(format!("http://127.0.0.1:{port}/api/ping"))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("h2load failed: {text}");
    }
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no req/s in h2load output")?;
    let done = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.trim().ends_with("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no succeeded count in h2load output")?;
    Ok((rps, done))
}

pub fn run() -> Result<String> {
    let nginx = Nginx::start();
    let mut rows = String::new();
    let mut notes = String::new();
    type Load = fn(u16) -> Result<(f64, f64)>;
    let loads: [(&str, &str, u16, Load); 2] = [
        ("wrk, HTTP/1.1 keep-alive", "wrk", nginx.http1_port, wrk),
        (
            "h2load, h2c, 10 streams per connection",
            "h2load",
            nginx.h2c_port,
            h2load,
        ),
    ];
    let mut breakdowns = Vec::new();
    let mut hook_words = String::new();
    for (name, client, port, load) in loads {
        let mut rps0 = 0.0;
        let without_pass = overhead::pass(|| {
            let (rps, done) = load(port)?;
            rps0 = rps;
            Ok(done)
        })?;
        let agent = RunningAgent::start(&[]);
        let hooks = overhead::AgentHooks::of(&agent)?;
        hook_words = hooks.describe();
        let before = agent.scrape();
        let cpu0 = agent.cpu_seconds();
        let (mut rps1, mut done) = (0.0, 0.0);
        let with_pass = overhead::pass(|| {
            (rps1, done) = load(port)?;
            Ok(done)
        })?;
        let after = agent.scrape();
        let cpu = agent.cpu_seconds() - cpu0;
        let again = || load(port).map(|(_, done)| done);
        let kernel_us = hooks.kernel_us_per_request(again)?;
        drop(agent);
        breakdowns.push(overhead::Breakdown {
            load: name.to_owned(),
            without: without_pass,
            with: with_pass,
            floor: hooks.floor(again)?,
            kernel_us,
            agent_us: cpu / done * 1e6,
        });
        let port_label = port.to_string();
        let counted = |side: &str, service: &str| {
            let labels = [
                ("http_route", "/api/ping"),
                ("server_port", port_label.as_str()),
                ("service_name", service),
            ];
            let family = format!("http_{side}_request_duration_seconds");
            count(&after, &family, &labels) - count(&before, &family, &labels)
        };
        rows.push_str(&format!(
            "| {name} | {rps0:.0} | {rps1:.0} | **{ratio:.3}** | {done:.0} | {client_counted:.0} | {server_counted:.0} | {per:.2} | {lost:.0} |\n",
            ratio = rps1 / rps0,
            client_counted = counted("client", client),
            server_counted = counted("server", "nginx"),
            per = cpu / (done / 1e6),
            lost = events_lost(&after) - events_lost(&before),
        ));
    }
    notes.push_str(
        "Server-side counts can exceed the load generator's own by the requests in flight \
         when it stopped: nginx answered them, the generator had closed its clock.\n",
    );
    Ok(format!(
        "## http: wrk and h2load against nginx, with and without the agent\n\n\
         Command: `cargo xtask bench http` (as root). Machine: {machine}.\n\n\
         nginx answers `/api/ping` with a 3-byte body. `wrk -t 2 -c 32 -d 8s` and \
         `h2load -n 200000 -c 4 -m 10`, first without the agent, then with it (default \
         settings). Counted: the agent's request-duration `_count` for the run on each side.\n\n\
         | load | req/s without | req/s with | ratio | requests done (generator) | counted (client) | counted (server) | agent CPU-s per million requests | events lost |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}\n{notes}\n{breakdown}",
        machine = machine(),
        breakdown = overhead::section(&breakdowns, &hook_words),
    ))
}
