//! `pressure`: pressure stall information from /proc/pressure/{cpu,io,memory}
//! (Documentation/accounting/psi.rst). Kernels before 4.20, or without CONFIG_PSI or with
//! psi=0, have no such files: the collector then reports success 0, as node_exporter does.

use super::render::{Family, MetricType};
use super::util::{parse_u64, read_parse};
use super::{CollectError, Ctx, ParseError};

/// The `total=` (microseconds) of the `some` and `full` lines of one resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Psi {
    pub some: Option<u64>,
    pub full: Option<u64>,
}

pub(crate) fn parse(text: &str) -> Result<Psi, ParseError> {
    let mut psi = Psi::default();
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_whitespace();
        let slot = match it.next() {
            Some("some") => &mut psi.some,
            Some("full") => &mut psi.full,
            // Unknown kinds of line may come with newer kernels: ignore them.
            _ => continue,
        };
        let total = it
            .find_map(|kv| kv.strip_prefix("total="))
            .ok_or_else(|| ParseError::new(i + 1, "no total= field"))?;
        *slot = Some(parse_u64(total, i + 1, "total")?);
    }
    Ok(psi)
}

/// Microseconds to seconds, with node_exporter's exact arithmetic (two divisions).
fn seconds(us: u64) -> f64 {
    us as f64 / 1000.0 / 1000.0
}

fn need(v: Option<u64>, what: &str) -> Result<f64, ParseError> {
    v.map(seconds)
        .ok_or_else(|| ParseError::new(0, format!("no {what:?} line")))
}

/// node_exporter 1.5.0 exposes `some` for cpu and both lines for io and memory.
pub(crate) fn render(cpu: &Psi, io: &Psi, memory: &Psi) -> Result<Vec<Family>, ParseError> {
    let c = MetricType::Counter;
    Ok(vec![
        Family::single(
            "node_pressure_cpu_waiting_seconds_total",
            "Total time in seconds that processes have waited for CPU time",
            c,
            need(cpu.some, "some")?,
        ),
        Family::single(
            "node_pressure_io_waiting_seconds_total",
            "Total time in seconds that processes have waited due to IO congestion",
            c,
            need(io.some, "some")?,
        ),
        Family::single(
            "node_pressure_io_stalled_seconds_total",
            "Total time in seconds no process could make progress due to IO congestion",
            c,
            need(io.full, "full")?,
        ),
        Family::single(
            "node_pressure_memory_waiting_seconds_total",
            "Total time in seconds that processes have waited for memory",
            c,
            need(memory.some, "some")?,
        ),
        Family::single(
            "node_pressure_memory_stalled_seconds_total",
            "Total time in seconds no process could make progress due to memory congestion",
            c,
            need(memory.full, "full")?,
        ),
    ])
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let cpu = read_parse(&ctx.proc("pressure/cpu"), parse)?;
    let io = read_parse(&ctx.proc("pressure/io"), parse)?;
    let memory = read_parse(&ctx.proc("pressure/memory"), parse)?;
    render(&cpu, &io, &memory).map_err(|source| CollectError::Parse {
        path: ctx.proc("pressure"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_and_renders_like_node_exporter() {
        let cpu = parse("some avg10=0.04 avg60=0.36 avg300=0.91 total=11860914\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(
            cpu,
            Psi {
                some: Some(11860914),
                full: Some(0)
            }
        );
        let io = parse("some avg10=0.14 avg60=0.21 avg300=0.93 total=16312559\nfull avg10=0.14 avg60=0.19 avg300=0.89 total=15935730\n").unwrap();
        let mem = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        let out = testutil::render(render(&cpu, &io, &mem).unwrap());
        // node_exporter printed exactly these values for these totals.
        assert!(out.contains(
            "# HELP node_pressure_cpu_waiting_seconds_total Total time in seconds that processes have waited for CPU time\n\
             # TYPE node_pressure_cpu_waiting_seconds_total counter\n\
             node_pressure_cpu_waiting_seconds_total 11.860914000000001\n"
        ), "{out}");
        assert!(out.contains("node_pressure_io_stalled_seconds_total 15.93573\n"));
        assert!(out.contains("node_pressure_io_waiting_seconds_total 16.312559\n"));
        assert!(out.contains("node_pressure_memory_stalled_seconds_total 0\n"));
        assert_eq!(out.matches("# TYPE").count(), 5);
    }

    #[test]
    fn old_kernel_cpu_file_has_no_full_line() {
        let cpu = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        let both = parse("some total=1\nfull total=2\n").unwrap();
        assert!(render(&cpu, &both, &both).is_ok());
        assert!(render(&cpu, &cpu, &both).is_err());
    }

    #[test]
    fn fixtures() {
        let ctx = testutil::ctx("real");
        assert_eq!(collect(&ctx).unwrap().len(), 5);
        let ctx = testutil::ctx("no_pressure");
        match collect(&ctx) {
            Err(CollectError::Read { path, source }) => {
                assert!(path.ends_with("proc/pressure/cpu"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn errors() {
        assert!(parse("some avg10=0.00\n").is_err());
        assert!(parse("some total=x\n").is_err());
        assert_eq!(parse("other total=x\n").unwrap(), Psi::default());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }
    }
}
