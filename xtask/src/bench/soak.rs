//! `cargo xtask bench soak --minutes N`: the agent with its default settings under a mixed
//! load for N minutes (30 is the figure): Redis (redis-benchmark, plain and
//! pipelined), PostgreSQL (pgbench, rate-limited), HTTP (h2load against nginx, HTTP/1.1
//! and h2c) and short connections (connload churn). Every few seconds the agent's RSS,
//! open descriptors and CPU are sampled; at the end every count is checked against the
//! truth: Redis `INFO commandstats`, the load generators' own counts of what completed,
//! and what the churn process opened. Writes a CSV and a PNG plot (gnuplot) of RSS and
//! CPU over time next to BENCHMARKS.md's section (docs/bench/), and fails if an event
//! was lost or a count differs.

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use nodetap_tests::servers::{postgres_bin, Nginx, PostgresServer, RedisServer};

use crate::bench::{
    db::redis_benchmark, events_lost, events_total, machine, metric_sum, stats::percentile,
    test_helper, RunningAgent,
};

/// Seconds between two samples of the agent's resources.
const SAMPLE_SECONDS: u64 = 5;
/// Commands per redis-benchmark test (SET, then GET) in one round.
const REDIS_N: u64 = 20_000;
/// Requests per h2load run (each of HTTP/1.1 and h2c) in one round.
const HTTP_N: u64 = 10_000;
/// pgbench's target rate (transactions per second) and longest run.
const PG_RATE: u32 = 300;
const PG_CHUNK_SECONDS: u64 = 60;
/// Connections per connload churn round, and the bytes each side sends.
const CHURN_N: u64 = 2_000;
const CHURN_PAYLOAD: u64 = 64;
/// The churn process's name, and so its `service_name`.
const CHURN_NAME: &str = "nt-soak-churn";
/// Pause between two rounds of each load: the soak is a steady, mixed load well below
/// the agent's CPU budget, not a saturation test (the other benchmarks are).
const PAUSE: Duration = Duration::from_secs(2);

/// One sample of the agent's resources.
struct Sample {
    seconds: f64,
    rss_bytes: u64,
    fds: usize,
    cpu_seconds: f64,
    /// CPU over the interval since the previous sample, in cores.
    cpu_cores: f64,
    events: f64,
    lost: f64,
    /// The machine's 1-minute load average: what else wanted the CPUs.
    load: f64,
}

/// What the loads did, by their own count.
#[derive(Default)]
struct Done {
    redis_rounds: u64,
    pg_transactions: u64,
    pg_runs: u64,
    h1_requests: u64,
    h2_requests: u64,
    churn_connections: u64,
}

/// The 1-minute load average (/proc/loadavg).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Sleeps up to `d`, waking early when `stop` is set.
fn pause(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Redis `INFO commandstats`: calls of `command` (lowercase).
fn redis_calls(port: u16, command: &str) -> Result<u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .context("running redis-cli INFO commandstats")?;
    ensure!(out.status.success(), "redis-cli INFO commandstats failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("cmdstat_{command}:calls=");
    Ok(text
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// One rate-limited pgbench run of `seconds` with a script of one SELECT by key (a
/// custom script, so pgbench runs no queries of its own beside it): transactions done.
fn pgbench(port: u16, script: &Path, seconds: u64) -> Result<u64> {
    let out = Command::new(postgres_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-n", "-M", "prepared", "-c", "2", "-j", "1"])
        .args(["-R", &PG_RATE.to_string(), "-T", &seconds.to_string()])
        .arg("-f")
        .arg(script)
        .arg("postgres")
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("number of transactions actually processed: ")
        })
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .context("no transaction count in pgbench output")
}

/// One h2load run of `HTTP_N` requests (`--h1` for HTTP/1.1): requests that succeeded.
fn h2load(port: u16, h1: bool) -> Result<u64> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &HTTP_N.to_string(), "-c", "2"]);
    if h1 {
        cmd.arg("--h1");
    } else {
        cmd.args(["-m", "4"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/api/ping"))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "h2load failed: {text}");
    text.lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.trim().ends_with("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no succeeded count in h2load output")
}

/// One connload churn round: connections opened and closed.
fn churn(connload: &Path) -> Result<u64> {
    let out = Command::new(connload)
        .args([
            CHURN_NAME,
            "churn",
            &CHURN_N.to_string(),
            &CHURN_PAYLOAD.to_string(),
        ])
        .output()
        .context("running connload churn")?;
    ensure!(
        out.status.success(),
        "connload churn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("connload prints JSON")?;
    report["connections"]
        .as_u64()
        .context("connload report lacks connections")
}

/// Runs `round` until `stop`, pausing between rounds; the first error stops everything.
fn repeat(stop: &AtomicBool, what: &str, mut round: impl FnMut() -> Result<()>) -> Result<()> {
    while !stop.load(Relaxed) {
        if let Err(e) = round() {
            stop.store(true, Relaxed);
            return Err(e.context(format!("{what} load")));
        }
        pause(stop, PAUSE);
    }
    Ok(())
}

/// Sum of a histogram family's `_count` over the samples with `labels`.
fn count(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, &format!("{family}_count"), labels)
}

/// One checked figure: what the agent counted against the truth.
struct Check {
    what: String,
    truth: f64,
    counted: f64,
}

pub fn run(minutes: u64, root: &Path) -> Result<String> {
    ensure!(minutes > 0, "--minutes must be at least 1");
    let connload = test_helper("connload")?;
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let nginx = Nginx::start();
    let init = Command::new(postgres_bin("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-i", "-s", "1", "-q", "postgres"])
        .output()
        .context("pgbench -i")?;
    ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let script_dir = nodetap_tests::servers::TempDir::new("nodetap-soak");
    let script = script_dir.0.join("select.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
    )?;
    let redis_before = [
        redis_calls(redis.port, "set")?,
        redis_calls(redis.port, "get")?,
    ];

    let agent = RunningAgent::start(&[]);
    let pid = agent.pid();
    let before = agent.scrape();
    let started = Instant::now();
    let duration = Duration::from_secs(minutes * 60);
    let stop = AtomicBool::new(false);
    let mut samples: Vec<Sample> = Vec::new();
    let mut done = Done::default();

    eprintln!("xtask: soak for {minutes} min (agent pid {pid}), sampling every {SAMPLE_SECONDS} s");
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let stop = &stop;
        let (redis_port, pg_port) = (redis.port, pg.port);
        let (h1_port, h2_port) = (nginx.http1_port, nginx.h2c_port);
        let connload = &connload;
        let script = &script;
        let redis_load = scope.spawn(move || {
            let mut rounds = 0u64;
            let r = repeat(stop, "redis", || {
                let extra: &[&str] = if rounds.is_multiple_of(2) {
                    &["-c", "4"]
                } else {
                    &["-c", "2", "-P", "16"]
                };
                redis_benchmark(redis_port, REDIS_N, extra)?;
                rounds += 1;
                Ok(())
            });
            (r, rounds)
        });
        let pg_load = scope.spawn(move || {
            let (mut transactions, mut runs) = (0u64, 0u64);
            let r = repeat(stop, "postgres", || {
                let left = duration.saturating_sub(started.elapsed()).as_secs();
                let seconds = left.clamp(1, PG_CHUNK_SECONDS);
                transactions += pgbench(pg_port, script, seconds)?;
                runs += 1;
                Ok(())
            });
            (r, transactions, runs)
        });
        let http_load = scope.spawn(move || {
            let (mut h1, mut h2) = (0u64, 0u64);
            let r = repeat(stop, "http", || {
                h1 += h2load(h1_port, true)?;
                h2 += h2load(h2_port, false)?;
                Ok(())
            });
            (r, h1, h2)
        });
        let churn_load = scope.spawn(move || {
            let mut connections = 0u64;
            let r = repeat(stop, "short connections", || {
                connections += churn(connload)?;
                Ok(())
            });
            (r, connections)
        });

        // Sample until the time is up (or a load failed).
        let mut last_cpu = (0.0, agent.cpu_seconds());
        // The first sample after a whole interval: its CPU is over that interval.
        let mut next = Duration::from_secs(SAMPLE_SECONDS);
        while started.elapsed() < duration && !stop.load(Relaxed) {
            if started.elapsed() >= next {
                let text = agent.scrape();
                let seconds = started.elapsed().as_secs_f64();
                let cpu = agent.cpu_seconds();
                let cpu_cores = if seconds > last_cpu.0 {
                    (cpu - last_cpu.1) / (seconds - last_cpu.0)
                } else {
                    0.0
                };
                last_cpu = (seconds, cpu);
                samples.push(Sample {
                    seconds,
                    rss_bytes: agent.rss_bytes(),
                    fds: open_fds(pid),
                    cpu_seconds: cpu,
                    cpu_cores,
                    events: events_total(&text) - events_total(&before),
                    lost: events_lost(&text) - events_lost(&before),
                    load: load_average(),
                });
                if samples.len() % 12 == 1 {
                    let s = samples.last().unwrap();
                    eprintln!(
                        "xtask: soak {:.1} min: RSS {:.1} MiB, {} fds, CPU {:.3} cores, events {:.0}, lost {:.0}, load average {:.1}",
                        s.seconds / 60.0,
                        s.rss_bytes as f64 / 1048576.0,
                        s.fds,
                        s.cpu_cores,
                        s.events,
                        s.lost,
                        s.load
                    );
                }
                next += Duration::from_secs(SAMPLE_SECONDS);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Relaxed);
        let (r1, rounds) = redis_load.join().expect("redis load thread");
        let (r2, transactions, runs) = pg_load.join().expect("postgres load thread");
        let (r3, h1, h2) = http_load.join().expect("http load thread");
        let (r4, connections) = churn_load.join().expect("churn load thread");
        done = Done {
            redis_rounds: rounds,
            pg_transactions: transactions,
            pg_runs: runs,
            h1_requests: h1,
            h2_requests: h2,
            churn_connections: connections,
        };
        vec![r1, r2, r3, r4]
    });
    for r in results {
        r?;
    }
    let load_seconds = started.elapsed().as_secs_f64();

    // Let the agent drain the last records and closes (it drains every 20 ms, closes
    // that found the ring full every second).
    std::thread::sleep(Duration::from_secs(5));
    let after = agent.scrape();
    let d = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    let dc = |family: &str, labels: &[(&str, &str)]| {
        count(&after, family, labels) - count(&before, family, labels)
    };

    let redis_port = redis.port.to_string();
    let pg_port = pg.port.to_string();
    let h1_port = nginx.http1_port.to_string();
    let h2_port = nginx.h2c_port.to_string();
    let mut checks = Vec::new();
    let mut check = |what: String, truth: f64, counted: f64| {
        checks.push(Check {
            what,
            truth,
            counted,
        })
    };
    for (i, op) in ["SET", "GET"].iter().enumerate() {
        let truth = (redis_calls(redis.port, &op.to_lowercase())? - redis_before[i]) as f64;
        check(
            format!("Redis {op}: redis-benchmark's own count"),
            truth,
            (done.redis_rounds * REDIS_N) as f64,
        );
        for (side, service) in [("server", "redis-server"), ("client", "redis-benchmark")] {
            check(
                format!("Redis {op} ({side} side, `{service}`) vs INFO commandstats"),
                truth,
                dc(
                    &format!("db_{side}_operation_duration_seconds"),
                    &[
                        ("db_operation_name", op),
                        ("server_port", &redis_port),
                        ("service_name", service),
                    ],
                ),
            );
        }
    }
    for (side, service) in [("server", "postgres"), ("client", "pgbench")] {
        check(
            format!("PostgreSQL SELECT ({side} side, `{service}`) vs pgbench transactions"),
            done.pg_transactions as f64,
            dc(
                &format!("db_{side}_operation_duration_seconds"),
                &[
                    ("db_operation_name", "SELECT"),
                    ("server_port", &pg_port),
                    ("service_name", service),
                ],
            ),
        );
    }
    for (proto, port, truth) in [
        ("HTTP/1.1", &h1_port, done.h1_requests),
        ("h2c", &h2_port, done.h2_requests),
    ] {
        for (side, service) in [("server", "nginx"), ("client", "h2load")] {
            check(
                format!("{proto} requests ({side} side, `{service}`) vs h2load succeeded"),
                truth as f64,
                dc(
                    &format!("http_{side}_request_duration_seconds"),
                    &[
                        ("http_route", "/api/ping"),
                        ("server_port", port),
                        ("service_name", service),
                    ],
                ),
            );
        }
    }
    for role in ["client", "server"] {
        for (name, metric) in [
            ("opened", "nodetap_tcp_connections_opened_total"),
            ("closed", "nodetap_tcp_connections_closed_total"),
        ] {
            check(
                format!("short connections {name} ({role})"),
                done.churn_connections as f64,
                d(metric, &[("role", role), ("service_name", CHURN_NAME)]),
            );
        }
        check(
            format!("short connections' bytes sent ({role})"),
            (done.churn_connections * CHURN_PAYLOAD) as f64,
            d(
                "nodetap_tcp_bytes_total",
                &[
                    ("role", role),
                    ("direction", "transmit"),
                    ("service_name", CHURN_NAME),
                ],
            ),
        );
    }
    let lost = events_lost(&after) - events_lost(&before);
    let events = events_total(&after) - events_total(&before);
    let degraded = d("nodetap_capture_degraded_connections_total", &[]);
    let requests_lost = d("nodetap_protocol_requests_lost_total", &[]);
    check("events lost".into(), 0.0, lost);
    check(
        "connections degraded by the CPU budget".into(),
        0.0,
        degraded,
    );
    check("protocol requests lost".into(), 0.0, requests_lost);
    drop(agent);

    // CSV and plot.
    let out_dir = root.join("docs/bench");
    std::fs::create_dir_all(&out_dir)?;
    let csv = out_dir.join("soak.csv");
    let png = out_dir.join("soak.png");
    let mut text = String::from(
        "seconds,rss_mib,open_fds,cpu_seconds,cpu_cores,events,events_lost,load_average\n",
    );
    for s in &samples {
        text.push_str(&format!(
            "{:.1},{:.2},{},{:.2},{:.4},{:.0},{:.0},{:.2}\n",
            s.seconds,
            s.rss_bytes as f64 / 1048576.0,
            s.fds,
            s.cpu_seconds,
            s.cpu_cores,
            s.events,
            s.lost,
            s.load
        ));
    }
    std::fs::write(&csv, text).with_context(|| format!("writing {}", csv.display()))?;
    plot(&csv, &png, minutes)?;

    let section = section(
        minutes,
        load_seconds,
        &samples,
        &done,
        &checks,
        events,
        &csv,
        &png,
        root,
    );
    let failed: Vec<&Check> = checks.iter().filter(|c| c.truth != c.counted).collect();
    println!("{section}");
    crate::bench::write_section(&root.join("BENCHMARKS.md"), "soak", &section)?;
    if !failed.is_empty() {
        bail!(
            "soak: {} check(s) differ: {}",
            failed.len(),
            failed
                .iter()
                .map(|c| format!("{} (truth {}, counted {})", c.what, c.truth, c.counted))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(section)
}

/// RSS (MiB, left axis) and CPU (% of one core, right axis) over minutes, with gnuplot
/// (`gnuplot-nox`, installed by `cargo xtask setup`). A sample at 0 s has no interval
/// before it, so no CPU figure.
fn plot(csv: &Path, png: &Path, minutes: u64) -> Result<()> {
    let script = format!(
        "set terminal pngcairo size 1000,500 font ',10'\n\
         set output '{png}'\n\
         set datafile separator ','\n\
         set title 'nodetap soak: {minutes} min of mixed Redis, PostgreSQL, HTTP and short-connection load'\n\
         set xlabel 'minutes'\n\
         set ylabel 'RSS (MiB)'\n\
         set y2label 'CPU (% of one core)'\n\
         set ytics nomirror\n\
         set y2tics\n\
         set yrange [0:*]\n\
         set y2range [0:*]\n\
         set grid\n\
         set key top left\n\
         plot '{csv}' using ($1/60):2 skip 1 with lines lw 2 title 'RSS (MiB)' axes x1y1, \
              '{csv}' using ($1/60):($1 < 1 ? NaN : $5*100) skip 1 with lines title 'CPU (% of a core)' axes x1y2\n",
        png = png.display(),
        csv = csv.display(),
    );
    let file = std::env::temp_dir().join(format!("nodetap-soak-{}.gp", std::process::id()));
    std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let out = Command::new("gnuplot").arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.context("running gnuplot (installed by `cargo xtask setup` as gnuplot-nox)")?;
    ensure!(
        out.status.success(),
        "gnuplot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn section(
    minutes: u64,
    load_seconds: f64,
    samples: &[Sample],
    done: &Done,
    checks: &[Check],
    events: f64,
    csv: &Path,
    png: &Path,
    root: &Path,
) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    // Steady state: the first minute (start-up, first series) aside.
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.seconds >= 60.0).collect();
    let steady = if steady.len() >= 4 {
        steady
    } else {
        samples.iter().collect()
    };
    let tenth = (steady.len() / 10).max(1);
    let mean = |v: &[&Sample], f: &dyn Fn(&Sample) -> f64| {
        v.iter().map(|s| f(s)).sum::<f64>() / v.len().max(1) as f64
    };
    let rss = |s: &Sample| mib(s.rss_bytes);
    let (first, last) = (
        &steady[..tenth.min(steady.len())],
        &steady[steady.len() - tenth.min(steady.len())..],
    );
    let mut cpu: Vec<f64> = steady.iter().map(|s| s.cpu_cores).collect();
    cpu.sort_by(|a, b| a.total_cmp(b));
    let cpu_total = samples.last().map_or(0.0, |s| s.cpu_seconds)
        - samples.first().map_or(0.0, |s| s.cpu_seconds);
    let span =
        samples.last().map_or(0.0, |s| s.seconds) - samples.first().map_or(0.0, |s| s.seconds);
    let fds: Vec<usize> = steady.iter().map(|s| s.fds).collect();
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let mut rows = String::new();
    for c in checks {
        rows.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} |\n",
            c.what,
            c.truth,
            c.counted,
            if c.truth == c.counted {
                "exact"
            } else {
                "**differs**"
            }
        ));
    }
    if checks.iter().any(|c| c.truth != c.counted) {
        rows.push_str(
            "\nWhere a count differs: records the kernel could not put in a full ring buffer \
             (`events lost`) took the requests they carried with them; the agent counts those \
             in `nodetap_protocol_requests_lost_total` instead of guessing, and a connection \
             whose open or close record was lost is missing from the connection counts \
             (README, \"Limits and guarantees\", overload). Byte counts come from the \
             kernel's per-connection counters and stay exact.\n",
        );
    }
    format!(
        "## soak: {minutes} minutes of mixed load against the agent's defaults\n\n\
         Command: `cargo xtask bench soak --minutes {minutes}` (as root). Machine: {machine}; \
         shared with other work while it ran, so CPU figures include contention.\n\n\
         The agent with default settings for {load:.0} s of load, all at once, each in rounds \
         with a {pause} s pause: redis-benchmark `-n {REDIS_N} -t set,get` (alternately `-c 4` \
         and `-c 2 -P 16`; {rounds} rounds); pgbench `-M prepared -c 2 -R {PG_RATE}` with a \
         one-SELECT script ({pg_runs} runs); h2load `-n {HTTP_N} -c 2` against nginx, \
         HTTP/1.1 (`--h1`) then h2c (`-m 4`); connload churn ({CHURN_N} connections per round, \
         {CHURN_PAYLOAD} bytes each way, closed with a reset). The agent's RSS, open \
         descriptors and CPU sampled every {SAMPLE_SECONDS} s: [{csv}]({csv}), plot \
         [{png}]({png}).\n\n\
         ![RSS and CPU over time]({png})\n\n\
         | | first minute aside: first 10 % of samples | last 10 % | max |\n\
         |---|---|---|---|\n\
         | RSS, MiB | {rss_first:.1} | {rss_last:.1} | {rss_max:.1} |\n\
         | open descriptors | {fd_first:.0} | {fd_last:.0} | {fd_max} |\n\
         | CPU, cores | {cpu_first:.3} | {cpu_last:.3} | {cpu_max:.3} |\n\n\
         Agent CPU over the run: {cpu_total:.1} s in {span:.0} s = **{cpu_mean:.3} cores** \
         on average (median of {SAMPLE_SECONDS} s samples {cpu_p50:.3}, p99 {cpu_p99:.3}); \
         {events:.0} kernel events (every process's TCP traffic on the host, other work's \
         included). The machine's 1-minute load average over the run: mean {load_mean:.1}, \
         max {load_max:.1} on {cores} cores.\n\n\
         Counts at the end (the truth: Redis `INFO commandstats`, the generators' own counts, \
         connload's report):\n\n\
         | check | truth | agent | |\n|---|---|---|---|\n{rows}",
        machine = machine(),
        load = load_seconds,
        load_mean = mean(&samples.iter().collect::<Vec<_>>(), &|s| s.load),
        load_max = samples.iter().map(|s| s.load).fold(0.0, f64::max),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        pause = PAUSE.as_secs(),
        rounds = done.redis_rounds,
        pg_runs = done.pg_runs,
        csv = rel(csv),
        png = rel(png),
        rss_first = mean(first, &rss),
        rss_last = mean(last, &rss),
        rss_max = steady.iter().map(|s| rss(s)).fold(0.0, f64::max),
        fd_first = mean(first, &|s| s.fds as f64),
        fd_last = mean(last, &|s| s.fds as f64),
        fd_max = fds.iter().max().copied().unwrap_or(0),
        cpu_first = mean(first, &|s| s.cpu_cores),
        cpu_last = mean(last, &|s| s.cpu_cores),
        cpu_max = cpu.last().copied().unwrap_or(0.0),
        cpu_mean = if span > 0.0 { cpu_total / span } else { 0.0 },
        cpu_p50 = if cpu.is_empty() {
            0.0
        } else {
            percentile(&cpu, 50.0)
        },
        cpu_p99 = if cpu.is_empty() {
            0.0
        } else {
            percentile(&cpu, 99.0)
        },
    )
}
