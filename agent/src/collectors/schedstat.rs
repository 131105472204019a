//! `schedstat`: per-CPU scheduler statistics from /proc/schedstat
//! (Documentation/scheduler/sched-stats.rst: on each `cpu<N>` line, fields 7 to 9 are
//! the time spent running and waiting, in nanoseconds, and the timeslices run). The
//! file exists only with CONFIG_SCHEDSTATS; without it: no data, as in node_exporter.

use super::render::Family;
use super::util::read_source;
use super::{CollectError, Ctx};

/// One CPU's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CpuStat {
    pub cpu: String,
    pub running_ns: u64,
    pub waiting_ns: u64,
    pub timeslices: u64,
}

/// Lines that do not look like `cpu<N>` followed by nine numbers are skipped, as
/// procfs' pattern skips them.
pub(crate) fn parse(text: &str) -> Vec<CpuStat> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let numbers: Vec<u64> = fields.take(9).map_while(|f| f.parse().ok()).collect();
        if numbers.len() < 9 {
            continue;
        }
        out.push(CpuStat {
            cpu: cpu.to_string(),
            running_ns: numbers[6],
            waiting_ns: numbers[7],
            timeslices: numbers[8],
        });
    }
    out
}

pub(crate) fn render(cpus: &[CpuStat]) -> Vec<Family> {
    let mut running = Family::counter(
        "node_schedstat_running_seconds_total",
        "Number of seconds CPU spent running a process.",
    );
    let mut waiting = Family::counter(
        "node_schedstat_waiting_seconds_total",
        "Number of seconds spent by processing waiting for this CPU.",
    );
    let mut slices = Family::counter(
        "node_schedstat_timeslices_total",
        "Number of timeslices executed by CPU.",
    );
    for c in cpus {
        let l = || super::label("cpu", c.cpu.clone());
        running.push(l(), c.running_ns as f64 / 1e9);
        waiting.push(l(), c.waiting_ns as f64 / 1e9);
        slices.push(l(), c.timeslices as f64);
    }
    vec![running, waiting, slices]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let text = read_source(
        &ctx.proc("schedstat"),
        "no /proc/schedstat (CONFIG_SCHEDSTATS off)",
    )?;
    Ok(render(&parse(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_cpu_lines_only() {
        let t = "version 15\ntimestamp 4295\ncpu0 0 0 0 0 0 0 2500000000 1000 77\n\
                 domain0 03 1 2 3 4 5 6 7 8 9\ncpu1 1 2\ncpux 0 0 0 0 0 0 1 2 3\n";
        assert_eq!(
            parse(t),
            vec![CpuStat {
                cpu: "0".into(),
                running_ns: 2_500_000_000,
                waiting_ns: 1000,
                timeslices: 77
            }]
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") { let _ = parse(&s); }
    }
}
