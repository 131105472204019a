//! `stat`: boot time, context switches, forks, interrupts and process counts from
//! /proc/stat (Documentation/filesystems/proc.rst, "1.8 Miscellaneous kernel statistics").

use super::render::{Family, MetricType};
use super::util::{parse_u64, read_parse};
use super::{CollectError, Ctx, ParseError};

/// The /proc/stat lines node_exporter's stat collector exposes. A missing line is zero,
/// as in procfs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stat {
    pub boot_time: u64,
    pub interrupts: u64,
    pub context_switches: u64,
    pub forks: u64,
    pub procs_running: u64,
    pub procs_blocked: u64,
}

pub(crate) fn parse(text: &str) -> Result<Stat, ParseError> {
    let mut s = Stat::default();
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let slot = match key {
            "btime" => &mut s.boot_time,
            // "intr <total> <per-irq counts...>": only the total is exposed.
            "intr" => &mut s.interrupts,
            "ctxt" => &mut s.context_switches,
            "processes" => &mut s.forks,
            "procs_running" => &mut s.procs_running,
            "procs_blocked" => &mut s.procs_blocked,
            _ => continue,
        };
        *slot = parse_u64(value, i + 1, key)?;
    }
    Ok(s)
}

pub(crate) fn render(s: &Stat) -> Vec<Family> {
    use MetricType::{Counter, Gauge};
    vec![
        Family::single(
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            Gauge,
            s.boot_time as f64,
        ),
        Family::single(
            "node_context_switches_total",
            "Total number of context switches.",
            Counter,
            s.context_switches as f64,
        ),
        Family::single(
            "node_forks_total",
            "Total number of forks.",
            Counter,
            s.forks as f64,
        ),
        Family::single(
            "node_intr_total",
            "Total number of interrupts serviced.",
            Counter,
            s.interrupts as f64,
        ),
        Family::single(
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            Gauge,
            s.procs_blocked as f64,
        ),
        Family::single(
            "node_procs_running",
            "Number of processes in runnable state.",
            Gauge,
            s.procs_running as f64,
        ),
    ]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(&read_parse(&ctx.proc("stat"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_real_proc_stat() {
        let s = parse(&testutil::read("real", "proc/stat")).unwrap();
        assert!(s.boot_time > 1_600_000_000);
        assert!(s.interrupts > 0);
        assert!(s.context_switches > 0);
        assert!(s.forks > 0);
        assert!(s.procs_running >= 1);
    }

    #[test]
    fn renders() {
        let s = parse(
            "cpu  1 2 3\nintr 204744 0 9 0\nctxt 424847\nbtime 1795314435\nprocesses 6127\nprocs_running 2\nprocs_blocked 0\nsoftirq 1 2 3\n",
        )
        .unwrap();
        let out = testutil::render(render(&s));
        for line in [
            "# HELP node_boot_time_seconds Node boot time, in unixtime.\n# TYPE node_boot_time_seconds gauge\nnode_boot_time_seconds 1.795314435e+09\n",
            "# TYPE node_context_switches_total counter\nnode_context_switches_total 424847\n",
            "node_forks_total 6127\n",
            "# HELP node_intr_total Total number of interrupts serviced.\n# TYPE node_intr_total counter\nnode_intr_total 204744\n",
            "# TYPE node_procs_running gauge\nnode_procs_running 2\n",
            "node_procs_blocked 0\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(parse("btime x\n").is_err());
        assert_eq!(parse("btime\n").unwrap(), Stat::default());
        assert_eq!(parse("").unwrap(), Stat::default());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }
    }
}
