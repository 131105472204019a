//! `cargo xtask bench bystander`: pipe I/O of processes that do no networking, with and
//! without the agent (default settings), alternating rounds in one run. Whatever the
//! agent hooks on the data path of every process shows here; its target is none of it.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use crate::{
    bench::cost::{pipe_pump, reported_tier, start_agent, BLOCK},
    bench::{events_lost, machine, median},
};

const ROUNDS: usize = 5;
/// Blocks of `BLOCK` bytes per run of each load.
const BLOCKS: u64 = 1_000_000;

/// `dd if=/dev/zero bs=512 count=N | dd of=/dev/null bs=512`: MB/s through the pipe.
fn dd_pipeline() -> Result<f64> {
    let bs = format!("bs={BLOCK}");
    let start = Instant::now();
    let mut source = Command::new("dd")
        .args([
            "if=/dev/zero",
            &bs,
            &format!("count={BLOCKS}"),
            "status=none",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dd")?;
    let pipe = source.stdout.take().context("dd's stdout")?;
    let sink = Command::new("dd")
        .args(["of=/dev/null", &bs, "status=none"])
        .stdin(pipe)
        .status()
        .context("running dd")?;
    let source = source.wait()?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        source.success() && sink.success(),
        "dd failed ({source}, {sink})"
    );
    Ok((BLOCKS * BLOCK as u64) as f64 / secs / 1e6)
}

/// The in-process pipe pump (two threads, nothing but pipe read/write): MB/s.
fn pump() -> Result<f64> {
    let (_, bytes, elapsed) = pipe_pump(BLOCKS)?;
    Ok(bytes as f64 / elapsed.as_secs_f64() / 1e6)
}

type Load = (&'static str, fn() -> Result<f64>);

const LOADS: [Load; 2] = [
    (
        "two `dd bs=512` processes, /dev/zero into the pipe, the pipe into /dev/null \
         (their reads of /dev/zero and writes to /dev/null are syscalls too)",
        dd_pipeline,
    ),
    (
        "pipe only: two threads, write(2) and read(2) of 512 bytes",
        pump,
    ),
];

pub fn run() -> Result<String> {
    let mut off = vec![Vec::new(); LOADS.len()];
    let mut on = vec![Vec::new(); LOADS.len()];
    let (mut cpu, mut lost, mut tier) = (0.0, 0.0, None);
    for round in 0..ROUNDS {
        for (i, (name, load)) in LOADS.iter().enumerate() {
            let rate = load()?;
            eprintln!("bystander round {round}: {name}: without agent {rate:.0} MB/s");
            off[i].push(rate);
        }
        let agent = start_agent(None).context("the agent did not start")?;
        // The agent's start-up work settles before the rounds with it.
        std::thread::sleep(Duration::from_millis(500));
        let before = agent.scrape();
        tier = tier.or_else(|| reported_tier(&before));
        let cpu0 = agent.cpu_seconds();
        for (i, (name, load)) in LOADS.iter().enumerate() {
            let rate = load()?;
            eprintln!("bystander round {round}: {name}: with agent {rate:.0} MB/s");
            on[i].push(rate);
        }
        cpu += agent.cpu_seconds() - cpu0;
        lost += events_lost(&agent.scrape()) - events_lost(&before);
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = String::new();
    for (i, (name, _)) in LOADS.iter().enumerate() {
        let (a, b) = (median(off[i].clone()), median(on[i].clone()));
        let ratio = b / a;
        let verdict = if ratio >= 0.98 { "pass" } else { "miss" };
        rows.push_str(&format!(
            "| {name} | {a:.0} | {b:.0} | **{ratio:.3}** ({verdict}; target ≥ 0.98) | {} | {} |\n",
            list(&off[i]),
            list(&on[i]),
        ));
    }
    Ok(format!(
        "## bystander: pipe I/O of a process that does no networking, with and without the agent\n\n\
         Command: `cargo xtask bench bystander` (as root). Machine: {machine}.\n\n\
         Each load moves {BLOCKS} blocks of {BLOCK} bytes through a pipe; {ROUNDS} alternating \
         rounds, without then with the agent (default settings, started for each round; \
         tier: {tier}). Throughput is bytes through the pipe over wall time, median of the \
         rounds.\n\n\
         | load | MB/s without (median) | MB/s with (median) | ratio with/without | rounds without | rounds with |\n\
         |---|---|---|---|---|---|\n{rows}\n\
         - agent CPU during the rounds with it: {cpu:.2} s; events lost: **{lost:.0}**\n",
        machine = machine(),
        tier = tier.unwrap_or_else(|| "syscall, the binary's only one".into()),
    ))
}
