//! `conntrack`: netfilter connection tracking table size and statistics from
//! /proc/sys/net/netfilter/nf_conntrack_{count,max} and /proc/net/stat/nf_conntrack
//! (hexadecimal per-CPU columns, summed). Without the nf_conntrack module the files do
//! not exist: no data, as in node_exporter.

use super::render::Family;
use super::util::{read, read_u64};
use super::{CollectError, Ctx, ParseError};

/// The statistics node_exporter serves, in its order, with the column each is taken
/// from (net/netfilter/nf_conntrack_standalone.c, `ct_cpu_seq_show`) and its HELP.
const STATS: [(&str, usize, &str); 8] = [
    ("found", 2, "Number of searched entries which were successful."),
    ("invalid", 4, "Number of packets seen which can not be tracked."),
    ("ignore", 5, "Number of packets seen which are already connected to a conntrack entry."),
    ("insert", 8, "Number of entries inserted into the list."),
    ("insert_failed", 9, "Number of entries for which list insertion was attempted but failed."),
    ("drop", 10, "Number of packets dropped due to conntrack failure."),
    ("early_drop", 11, "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."),
    ("search_restart", 16, "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
];

/// The sums over CPUs of [`STATS`]' columns. The first line is the header.
pub(crate) fn parse_stat(text: &str) -> Result<[u64; 8], ParseError> {
    let mut sums = [0u64; 8];
    for (i, l) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() != 17 {
            return Err(ParseError::new(
                i + 1,
                format!("{} columns, 17 expected", cols.len()),
            ));
        }
        for (sum, (_, col, _)) in sums.iter_mut().zip(STATS) {
            let v = u64::from_str_radix(cols[col], 16).map_err(|_| {
                ParseError::new(i + 1, format!("{:?} is not hexadecimal", cols[col]))
            })?;
            *sum = sum.wrapping_add(v);
        }
    }
    Ok(sums)
}

pub(crate) fn render(count: u64, max: u64, stats: &[u64; 8]) -> Vec<Family> {
    let mut out = vec![
        Family::gauge(
            "node_nf_conntrack_entries",
            "Number of currently allocated flow entries for connection tracking.",
        )
        .with(Vec::new(), count as f64),
        Family::gauge(
            "node_nf_conntrack_entries_limit",
            "Maximum size of connection tracking table.",
        )
        .with(Vec::new(), max as f64),
    ];
    for ((name, _, help), v) in STATS.iter().zip(stats) {
        out.push(
            Family::gauge(format!("node_nf_conntrack_stat_{name}"), *help)
                .with(Vec::new(), *v as f64),
        );
    }
    out
}

fn no_data_if_absent(e: CollectError) -> CollectError {
    match e {
        CollectError::Read { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CollectError::NoData {
                reason: "nf_conntrack is not loaded",
            }
        }
        e => e,
    }
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let uint = |rel: &str| read_u64(&ctx.proc(rel)).map_err(no_data_if_absent);
    let count = uint("sys/net/netfilter/nf_conntrack_count")?;
    let max = uint("sys/net/netfilter/nf_conntrack_max")?;
    let path = ctx.proc("net/stat/nf_conntrack");
    let text = read(&path).map_err(no_data_if_absent)?;
    let stats = parse_stat(&text).map_err(|source| CollectError::Parse { path, source })?;
    Ok(render(count, max, &stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000000  00000000 00000001 00000000 00000002 00000003 00000000 00000000 00000004 00000005 00000006 00000007 00000000  00000000 00000000 00000000 00000008\n\
                    00000000  00000000 00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 0000000a\n";
        assert_eq!(parse_stat(text).unwrap(), [0x11, 2, 3, 4, 5, 6, 7, 0x12]);
        assert!(parse_stat("h\n1 2 3\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") { let _ = parse_stat(&s); }
    }
}
