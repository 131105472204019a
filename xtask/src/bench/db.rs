//! `cargo xtask bench redis` and `cargo xtask bench postgres`: the real benchmarks of
//! each server, with and without the agent in one run; throughput, agent CPU, events
//! lost, whether every command was counted, and the agent's latency percentiles beside
//! the benchmark's own.

use std::process::Command;

use anyhow::{bail, Context, Result};
use nodetap_tests::{
    exposition::{self, Family},
    servers::{postgres_bin, PostgresServer, RedisServer},
};

use crate::bench::{events_lost, machine, overhead, RunningAgent};

/// Samples of a histogram family's `_count` and `_bucket` series matching `labels`,
/// summed over the other labels: (count, [(le, cumulative count)]).
fn histogram(text: &str, family: &str, labels: &[(&str, &str)]) -> (f64, Vec<(f64, f64)>) {
    let families = exposition::parse(text).unwrap_or_default();
    let Some(f) = families.iter().find(|f: &&Family| f.name == family) else {
        return (0.0, Vec::new());
    };
    let matches = |s: &&exposition::Sample| s.has_labels(labels);
    let count = f
        .samples
        .iter()
        .filter(|s| s.name == format!("{family}_count"))
        .filter(matches)
        .map(|s| s.value)
        .sum();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for s in f
        .samples
        .iter()
        .filter(|s| s.name == format!("{family}_bucket"))
        .filter(matches)
    {
        let le = match s.labels.get("le").map(String::as_str) {
            Some("+Inf") => f64::INFINITY,
            Some(v) => v.parse().unwrap_or(f64::INFINITY),
            None => continue,
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(b) => b.1 += s.value,
            None => buckets.push((le, s.value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (count, buckets)
}

/// Bucket deltas between two scrapes.
fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1);
            (*le, c - b)
        })
        .collect()
}

/// Quantile from cumulative buckets, interpolating linearly inside a bucket (as
/// Prometheus's histogram_quantile does).
fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(total) = buckets.last().map(|b| b.1) else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let within = if count > prev.1 {
                (rank - prev.1) / (count - prev.1)
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, count);
    }
    prev.0
}

/// One redis-benchmark run's CSV rows: (test, requests/s, p50 ms, p99 ms).
pub(super) fn redis_benchmark(
    port: u16,
    n: u64,
    extra: &[&str],
) -> Result<Vec<(String, f64, f64, f64)>> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-n",
            &n.to_string(),
            "-t",
            "set,get",
            "--csv",
        ])
        .args(extra)
        .output()
        .context("running redis-benchmark")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<String> = l
                .split(',')
                .map(|x| x.trim_matches('"').to_owned())
                .collect();
            Some((
                f.first()?.clone(),
                f.get(1)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
                f.get(6)?.parse().ok()?,
            ))
        })
        .collect();
    Ok(rows)
}

pub fn redis() -> Result<String> {
    // Commands per test, per mode: each test lasts a second or two either way. At 200,000
    // commands a -P 16 test took 0.13 to 0.4 s, and the connections' start (protocol
    // detection, the first instructions) weighed on the ratio as much as the steady state.
    const N_DEFAULT: u64 = 200_000;
    const N_PIPELINED: u64 = 2_000_000;
    let server = RedisServer::start();
    let port = server.port.to_string();
    let mut table = String::new();
    let mut notes = String::new();
    let mut breakdowns = Vec::new();
    let mut hook_words = String::new();
    for (name, n, extra) in [
        ("default (50 clients)", N_DEFAULT, vec![]),
        ("-P 16", N_PIPELINED, vec!["-P", "16"]),
    ] {
        // Both tests (SET then GET) are one redis-benchmark run of 2n commands.
        let commands = 2.0 * n as f64;
        let load = || redis_benchmark(server.port, n, &extra).map(|_| commands);
        // Warm-up, untimed: the first run after a change of mode is the slowest of all.
        redis_benchmark(server.port, n / 4, &extra)?;
        let mut without = Vec::new();
        let without_pass = overhead::pass(|| {
            without = redis_benchmark(server.port, n, &extra)?;
            Ok(commands)
        })?;
        let agent = RunningAgent::start(&[]);
        let hooks = overhead::AgentHooks::of(&agent)?;
        hook_words = hooks.describe();
        let before = agent.scrape();
        let cpu0 = agent.cpu_seconds();
        let mut with = Vec::new();
        let with_pass = overhead::pass(|| {
            with = redis_benchmark(server.port, n, &extra)?;
            Ok(commands)
        })?;
        let after = agent.scrape();
        let cpu = agent.cpu_seconds() - cpu0;
        let kernel_us = hooks.kernel_us_per_request(load)?;
        drop(agent);
        breakdowns.push(overhead::Breakdown {
            load: format!("redis-benchmark {name}"),
            without: without_pass,
            with: with_pass,
            floor: hooks.floor(load)?,
            kernel_us,
            agent_us: cpu / commands * 1e6,
        });
        for ((test, rps0, p50b, p99b), (_, rps1, p50w, p99w)) in without.iter().zip(&with) {
            let client = |t: &str| {
                histogram(
                    t,
                    "db_client_operation_duration_seconds",
                    &[
                        ("db_operation_name", test),
                        ("server_port", &port),
                        ("service_name", "redis-benchmark"),
                        ("error_type", ""),
                    ],
                )
            };
            let server_side = |t: &str| {
                histogram(
                    t,
                    "db_server_operation_duration_seconds",
                    &[
                        ("db_operation_name", test),
                        ("server_port", &port),
                        ("service_name", "redis-server"),
                        ("error_type", ""),
                    ],
                )
            };
            let (c0, b0) = client(&before);
            let (c1, b1) = client(&after);
            let (s0, _) = server_side(&before);
            let (s1, _) = server_side(&after);
            let d = delta(&b0, &b1);
            table.push_str(&format!(
                "| {name} | {test} | {rps0:.0} | {rps1:.0} | **{ratio:.3}** | {n} | {client} | {server} | {p50b:.3} / {p99b:.3} | {p50w:.3} / {p99w:.3} | {ap50:.3} / {ap99:.3} |\n",
                ratio = rps1 / rps0,
                client = c1 - c0,
                server = s1 - s0,
                ap50 = quantile(0.5, &d) * 1000.0,
                ap99 = quantile(0.99, &d) * 1000.0,
            ));
        }
        let data = |t: &str| {
            nodetap_tests::metric_value(t, "nodetap_events_total", &[("kind", "data")])
                .unwrap_or(0.0)
        };
        let events = data(&after) - data(&before);
        notes.push_str(&format!(
            "- {name}: agent CPU {cpu:.2} s for {ops} commands = **{per:.2} CPU-s per million commands** ({events:.0} data events); events lost: **{lost:.0}**\n",
            ops = 2 * n,
            per = cpu / (2.0 * n as f64 / 1e6),
            lost = events_lost(&after) - events_lost(&before),
        ));
    }
    Ok(format!(
        "## redis: redis-benchmark with and without the agent\n\n\
         Command: `cargo xtask bench redis` (as root). Machine: {machine}.\n\n\
         `redis-benchmark -n N -t set,get --csv` (N = {N_DEFAULT} in the default mode, \
         {N_PIPELINED} with `-P 16`, so that each test lasts a second or more) against a \
         local redis-server, first without the agent, then with it (default settings), for each mode. Commands \
         counted: the agent's `db_client_operation_duration_seconds_count` (redis-benchmark \
         side) and `db_server_operation_duration_seconds_count` (redis-server side) for \
         the run. Latency: redis-benchmark's own p50/p99 beside the agent's, estimated \
         from the client-side histogram buckets (linear within a bucket).\n\n\
         | mode | test | req/s without | req/s with | ratio | sent | counted (client) | counted (server) | bench p50/p99 ms without | bench p50/p99 ms with | agent p50/p99 ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n{table}\n{notes}\n{breakdown}",
        machine = machine(),
        breakdown = overhead::section(&breakdowns, &hook_words),
    ))
}

/// One pgbench run: (tps, transactions processed).
fn pgbench(port: u16, with_agent_note: &str) -> Result<(f64, u64)> {
    let out = Command::new(postgres_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-S", "-M", "prepared", "-c", "4", "-j", "2", "-T", "10", "-n", "postgres",
        ])
        .output()
        .with_context(|| format!("running pgbench ({with_agent_note})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let tps = field("tps = ")
        .and_then(|v| v.parse().ok())
        .context("no tps in pgbench output")?;
    let done = field("number of transactions actually processed: ")
        .and_then(|v| v.split('/').next().and_then(|n| n.parse().ok()))
        .context("no transaction count in pgbench output")?;
    Ok((tps, done))
}

pub fn postgres() -> Result<String> {
    let server = PostgresServer::start();
    let init = Command::new(postgres_bin("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-U",
            "postgres",
            "-i",
            "-s",
            "1",
            "-q",
            "postgres",
        ])
        .output()
        .context("pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let port = server.port.to_string();
    let mut tps0 = 0.0;
    let without_pass = overhead::pass(|| {
        let (tps, done) = pgbench(server.port, "without agent")?;
        tps0 = tps;
        Ok(done as f64)
    })?;
    let agent = RunningAgent::start(&[]);
    let hooks = overhead::AgentHooks::of(&agent)?;
    let before = agent.scrape();
    let cpu0 = agent.cpu_seconds();
    let (mut tps1, mut done) = (0.0, 0);
    let with_pass = overhead::pass(|| {
        (tps1, done) = pgbench(server.port, "with agent")?;
        Ok(done as f64)
    })?;
    let after = agent.scrape();
    let cpu = agent.cpu_seconds() - cpu0;
    let load = || pgbench(server.port, "breakdown").map(|(_, done)| done as f64);
    let kernel_us = hooks.kernel_us_per_request(load)?;
    drop(agent);
    let breakdown = overhead::Breakdown {
        load: "pgbench -S".into(),
        without: without_pass,
        with: with_pass,
        floor: hooks.floor(load)?,
        kernel_us,
        agent_us: cpu / done as f64 * 1e6,
    };
    let count = |t: &str, side: &str, service: &str| {
        histogram(
            t,
            &format!("db_{side}_operation_duration_seconds"),
            &[
                ("db_operation_name", "SELECT"),
                ("server_port", &port),
                ("service_name", service),
                ("error_type", ""),
            ],
        )
    };
    let (c0, _) = count(&before, "client", "pgbench");
    let (c1, b1) = count(&after, "client", "pgbench");
    let (_, b0) = count(&before, "client", "pgbench");
    let (s0, _) = count(&before, "server", "postgres");
    let (s1, _) = count(&after, "server", "postgres");
    let d = delta(&b0, &b1);
    Ok(format!(
        "## postgres: pgbench select-only with and without the agent\n\n\
         Command: `cargo xtask bench postgres` (as root). Machine: {machine}.\n\n\
         `pgbench -S -M prepared -c 4 -j 2 -T 10 -n` (scale 1) against a local PostgreSQL, \
         without then with the agent (default settings). Each select-only transaction is \
         one SELECT.\n\n\
         | tps without | tps with | ratio | transactions | SELECTs counted (client) | SELECTs counted (server) | agent p50/p99 ms |\n\
         |---|---|---|---|---|---|---|\n\
         | {tps0:.0} | {tps1:.0} | **{ratio:.3}** | {done} | {client} | {server} | {p50:.3} / {p99:.3} |\n\n\
         - agent CPU {cpu:.2} s = **{per:.2} CPU-s per million transactions**; events lost: **{lost:.0}**\n\n{breakdown}",
        machine = machine(),
        breakdown = overhead::section(&[breakdown], &hooks.describe()),
        ratio = tps1 / tps0,
        client = c1 - c0,
        server = s1 - s0,
        p50 = quantile(0.5, &d) * 1000.0,
        p99 = quantile(0.99, &d) * 1000.0,
        per = cpu / (done as f64 / 1e6),
        lost = events_lost(&after) - events_lost(&before),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(0.5, &b) - 0.001).abs() < 1e-12);
        assert!((quantile(0.75, &b) - 0.0015).abs() < 1e-12);
        assert!(quantile(0.5, &[]).is_nan());
    }
}
