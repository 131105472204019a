//! Why a throughput ratio is what it is: each load run in the same bench once more under
//! no-op programs on the agent's own tracepoints (the floor: what the hooks alone cost),
//! and the machine's CPU per request with and without the agent, beside the two parts of
//! the difference each side accounts for: the kernel programs' run time (the kernel's BPF
//! statistics, in a pass of its own because they add a clock read per program run) and
//! the agent process's CPU.
//!
//! On a machine whose cores the load keeps busy, each CPU-µs the agent adds per request is
//! taken from the load, so `without / with` CPU per request predicts the ratio; the rows
//! say how far the prediction and the measurement agree.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench::{
    cost::{floor_words, Floor},
    kernel::{Group, Held, Hook, StatsEnabled, Tracefs},
    RunningAgent,
};

/// After a pass, time for the agent to drain its ring buffers (counted in the pass's CPU).
const DRAIN: Duration = Duration::from_millis(500);

/// Seconds every CPU of the machine spent busy since boot (/proc/stat: all but idle and
/// iowait).
fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let fields: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i != 7)
        .map(|(_, v)| v)
        .sum();
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One run of a load: requests per wall-clock second, and the machine's busy CPU per
/// request (the drain after the load included).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pass {
    pub rate: f64,
    pub cpu_us: f64,
}

/// Runs `load` (which returns how many requests it completed) and measures it.
pub fn pass(load: impl FnOnce() -> Result<f64>) -> Result<Pass> {
    let busy0 = busy_cpu_seconds();
    let t0 = Instant::now();
    let requests = load()?;
    let seconds = t0.elapsed().as_secs_f64();
    std::thread::sleep(DRAIN);
    let busy = busy_cpu_seconds() - busy0;
    Ok(Pass {
        rate: requests / seconds,
        cpu_us: busy / requests * 1e6,
    })
}

/// The agent's kernel programs and its tracepoints, taken while it runs.
pub struct AgentHooks {
    held: Held,
    hooks: Vec<Hook>,
    _tracefs: Tracefs,
}

impl AgentHooks {
    pub fn of(agent: &RunningAgent) -> Result<AgentHooks> {
        let tracefs = Tracefs::ensure()?;
        let held = Held::of(agent.pid())?;
        let hooks = held.capture_hooks();
        Ok(AgentHooks {
            held,
            hooks,
            _tracefs: tracefs,
        })
    }

    /// Runs `load` with the kernel's BPF statistics on: the agent's program time per
    /// request (capture and byte accounting together), in µs.
    pub fn kernel_us_per_request(&self, load: impl FnOnce() -> Result<f64>) -> Result<f64> {
        let _stats = StatsEnabled::on()?;
        let before = self.held.sample()?;
        let requests = load()?;
        std::thread::sleep(DRAIN);
        let run = self.held.sample()?.since(&before);
        let ns = self.held.group(&run, Group::Capture).1 + self.held.group(&run, Group::Bytes).1;
        Ok(ns / requests / 1e3)
    }

    /// Runs `load` with no-op programs on the agent's tracepoints (each of the same
    /// kind: raw for raw and BTF, classic for classic) and nothing else of the agent: the
    /// floor.
    pub fn floor(&self, load: impl FnOnce() -> Result<f64>) -> Result<Pass> {
        let floor = Floor::attach(&self.hooks)?;
        let result = pass(load);
        drop(floor);
        result
    }

    /// "4 tracepoints (4 raw)" and the like.
    pub fn describe(&self) -> String {
        floor_words(&self.hooks)
    }
}

/// One load's breakdown row.
pub struct Breakdown {
    pub load: String,
    pub without: Pass,
    pub with: Pass,
    pub floor: Pass,
    /// The agent's kernel programs per request (BPF statistics pass), µs.
    pub kernel_us: f64,
    /// The agent process's CPU per request (from the `with` pass), µs.
    pub agent_us: f64,
}

impl Breakdown {
    fn row(&self) -> String {
        let added = self.with.cpu_us - self.without.cpu_us;
        let rest = added - self.kernel_us - self.agent_us;
        format!(
            "| {load} | {w:.0} | {a:.0} | **{ratio:.3}** | {f:.0} | **{floor:.3}** | {cw:.2} | {ca:.2} | {predicted:.3} | {added:.2} | {k:.2} | {ag:.2} | {rest:.2} |\n",
            load = self.load,
            w = self.without.rate,
            a = self.with.rate,
            ratio = self.with.rate / self.without.rate,
            f = self.floor.rate,
            floor = self.floor.rate / self.without.rate,
            cw = self.without.cpu_us,
            ca = self.with.cpu_us,
            predicted = self.without.cpu_us / self.with.cpu_us,
            k = self.kernel_us,
            ag = self.agent_us,
        )
    }
}

/// The breakdown table and how to read it.
pub fn section(rows: &[Breakdown], hooks: &str) -> String {
    let body: String = rows.iter().map(Breakdown::row).collect();
    format!(
        "Where the throughput goes (each load run again in this bench: under no-op programs \
         on the agent's {hooks}, for the floor: raw tracepoint programs for its raw and \
         BTF tracepoints, bpftrace for classic ones, as each kind costs its own to enter; and with the agent and \
         the kernel's BPF statistics on, for its program time). Rates here are requests per \
         wall-clock second of each whole pass. CPU per request is the machine's busy time \
         (/proc/stat, every core, the 0.5 s drain included) over the pass's requests; the \
         load keeps this machine's cores busy, so what the agent adds per request is taken \
         from the load, and *without / with* CPU per request predicts the ratio. The added \
         CPU splits into the agent's kernel programs (capture and byte accounting; the \
         no-op floor has no byte accounting), the agent \
         process (utime + stime), and the rest (the hooks' own entry, wake-ups, cache and \
         scheduler effects: what neither accounts).\n\n\
         | load | req/s without | req/s with agent | ratio | req/s no-op floor | floor ratio | machine CPU µs/request without | with agent | predicted ratio | added µs/request | kernel programs | agent process | rest |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n{body}"
    )
}
