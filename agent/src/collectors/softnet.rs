//! `softnet`: per-CPU packet processing counters from /proc/net/softnet_stat
//! (net/core/net-procfs.c: hexadecimal columns, one line per online CPU).

use super::render::Family;
use super::util::read_parse;
use super::{CollectError, Ctx, ParseError};

/// processed, dropped, time_squeezed of each line, in file order.
pub(crate) fn parse(text: &str) -> Result<Vec<[u32; 3]>, ParseError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // procfs 0.8 (node_exporter 1.5) wants the 9 columns of kernels since 2.6.
        if cols.len() < 9 {
            return Err(ParseError::new(
                i + 1,
                format!("{} columns, at least 9 expected", cols.len()),
            ));
        }
        let mut v = [0u32; 3];
        for (slot, c) in v.iter_mut().zip(&cols[..3]) {
            *slot = u32::from_str_radix(c, 16)
                .map_err(|_| ParseError::new(i + 1, format!("{c:?} is not hexadecimal")))?;
        }
        out.push(v);
    }
    Ok(out)
}

/// The `cpu` label is the line's index, as in node_exporter 1.5 (not the CPU id column
/// that kernels since 5.10 append).
pub(crate) fn render(stats: &[[u32; 3]]) -> Vec<Family> {
    let mut processed = Family::counter(
        "node_softnet_processed_total",
        "Number of processed packets",
    );
    let mut dropped = Family::counter("node_softnet_dropped_total", "Number of dropped packets");
    let mut squeezed = Family::counter(
        "node_softnet_times_squeezed_total",
        "Number of times processing packets ran out of quota",
    );
    for (cpu, s) in stats.iter().enumerate() {
        let l = || super::label("cpu", cpu.to_string());
        processed.push(l(), f64::from(s[0]));
        dropped.push(l(), f64::from(s[1]));
        squeezed.push(l(), f64::from(s[2]));
    }
    vec![processed, dropped, squeezed]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(&read_parse(&ctx.proc("net/softnet_stat"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_hex_columns() {
        let s = parse("02f5f151 00000000 00000008 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n").unwrap();
        assert_eq!(s, vec![[0x02f5f151, 0, 8]]);
        assert!(parse("1 2 3\n").is_err());
        assert!(parse("zz 0 0 0 0 0 0 0 0\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") { let _ = parse(&s); }
    }
}
