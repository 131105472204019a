//! `cargo xtask bench capture`: a loopback TCP ping-pong with small messages, with and
//! without the agent, alternating rounds in one run.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use nodetap_tests::metric_value;

use crate::bench::{events_lost, machine, median, overhead, RunningAgent};

const CONNECTIONS: usize = 4;
const MESSAGE: usize = 64;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

/// Round trips per second over `CONNECTIONS` connections for `ROUND`, and how many.
fn ping_pong() -> Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..CONNECTIONS {
            let (mut s, _) = listener.accept().expect("accept");
            workers.push(std::thread::spawn(move || {
                let mut buf = [0u8; MESSAGE];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.join();
        }
    });
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || -> u64 {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let msg = [7u8; MESSAGE];
                let mut buf = [0u8; MESSAGE];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&msg).expect("write");
                    s.read_exact(&mut buf).expect("read");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(ROUND);
    stop.store(true, Ordering::Relaxed);
    let total: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let elapsed = start.elapsed().as_secs_f64();
    let _ = server.join();
    Ok((total as f64 / elapsed, total as f64))
}

pub fn run() -> Result<String> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut cpu = 0.0;
    let mut events = 0.0;
    let mut lost = 0.0;
    let mut rss = 0;
    let mut breakdowns = Vec::new();
    let mut hook_words = String::new();
    let round_trips = || ping_pong().map(|(_, n)| n);
    for round in 0..ROUNDS {
        let mut rate = 0.0;
        let without_pass = overhead::pass(|| {
            let (r, n) = ping_pong()?;
            rate = r;
            Ok(n)
        })?;
        eprintln!("round {round}: without agent {rate:.0} round trips/s");
        without.push(rate);

        let agent = RunningAgent::start(&[]);
        let hooks = overhead::AgentHooks::of(&agent)?;
        hook_words = hooks.describe();
        let before = agent.scrape();
        let cpu_before = agent.cpu_seconds();
        let mut done = 0.0;
        // The pass ends with time for the agent to drain its ring buffers.
        let with_pass = overhead::pass(|| {
            (rate, done) = ping_pong()?;
            Ok(done)
        })?;
        let after = agent.scrape();
        let round_cpu = agent.cpu_seconds() - cpu_before;
        cpu += round_cpu;
        let kernel_us = hooks.kernel_us_per_request(round_trips)?;
        let data =
            |t: &str| metric_value(t, "nodetap_events_total", &[("kind", "data")]).unwrap_or(0.0);
        events += data(&after) - data(&before);
        lost += events_lost(&after);
        rss = rss.max(agent.rss_bytes());
        eprintln!("round {round}: with agent {rate:.0} round trips/s");
        with.push(rate);
        drop(agent);
        breakdowns.push(overhead::Breakdown {
            load: format!("round {round}"),
            without: without_pass,
            with: with_pass,
            floor: hooks.floor(round_trips)?,
            kernel_us,
            agent_us: round_cpu / done * 1e6,
        });
    }
    let base = median(without.clone());
    let traced = median(with.clone());
    let ratio = traced / base;
    let cpu_per_million = if events > 0.0 {
        cpu / (events / 1e6)
    } else {
        f64::NAN
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "## capture: loopback TCP ping-pong\n\n\
         Command: `cargo xtask bench capture` (as root). Machine: {machine}.\n\n\
         {CONNECTIONS} connections, {MESSAGE}-byte request and response per round trip \
         (4 traced syscalls), {ROUNDS} alternating rounds of {secs} s without and with the \
         agent (default settings).\n\n\
         | | round trips/s (median) | rounds |\n|---|---|---|\n\
         | without agent | {base:.0} | {w} |\n| with agent | {traced:.0} | {t} |\n\n\
         - throughput ratio with/without: **{ratio:.3}** ({loss:.1}% loss; target: ratio ≥ 0.90)\n\
         - agent CPU: {cpu:.2} s for {events:.0} data events = **{cpu_per_million:.2} CPU-s per million events**\n\
         - events lost: **{lost:.0}**\n\
         - agent RSS at the end: {rss_mib:.1} MiB\n\n{breakdown}",
        machine = machine(),
        breakdown = overhead::section(&breakdowns, &hook_words),
        secs = ROUND.as_secs(),
        w = fmt(&without),
        t = fmt(&with),
        loss = (1.0 - ratio) * 100.0,
        rss_mib = rss as f64 / (1024.0 * 1024.0),
    ))
}
