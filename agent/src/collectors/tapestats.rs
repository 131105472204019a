//! `tapestats`: SCSI tape drive statistics from /sys/class/scsi_tape/st<N>/stats
//! (Documentation/scsi/st.rst, "Sysfs and Statistics"), read as procfs 0.8 reads them
//! for node_exporter 1.5: I/Os in flight, read, write and other command counts, bytes,
//! times (nanoseconds, served in seconds) and residual counts per `device`, except the
//! devices `--collector.tapestats.ignored-devices` matches. The `nst*` and mode devices
//! (`st0a`, `st0l`, ...) are the same drive and are skipped. No /sys/class/scsi_tape: no
//! data, as in node_exporter.
//!
//! Where node_exporter 1.5 dies on a counter it cannot parse (procfs dereferences a nil
//! pointer), nodetap reports the collector failed.

use std::io;

use super::render::Family;
use super::util::{parse_go_uint, sys_read_file, ClassReadError as ReadError, DirTree, Tree};
use super::{CollectError, Ctx};

/// `stats/` files, in the order of [`Tape::counters`].
const FILES: [&str; 10] = [
    "in_flight",
    "io_ns",
    "other_cnt",
    "read_byte_cnt",
    "read_cnt",
    "read_ns",
    "resid_cnt",
    "write_byte_cnt",
    "write_cnt",
    "write_ns",
];

/// (metric after `node_tape_`, help, gauge?, index into [`FILES`], scale).
const METRICS: [(&str, &str, bool, usize, f64); 10] = [
    ("io_now", "The number of I/Os currently outstanding to this device.", true, 0, 1.0),
    ("io_time_seconds_total", "The amount of time spent waiting for all I/O to complete (including read and write). This includes tape movement commands such as seeking between file or set marks and implicit tape movement such as when rewind on close tape devices are used.", false, 1, 1e-9),
    ("io_others_total", "The number of I/Os issued to the tape drive other than read or write commands. The time taken to complete these commands uses the following calculation io_time_seconds_total-read_time_seconds_total-write_time_seconds_total", false, 2, 1.0),
    ("read_bytes_total", "The number of bytes read from the tape drive.", false, 3, 1.0),
    ("reads_completed_total", "The number of read requests issued to the tape drive.", false, 4, 1.0),
    ("read_time_seconds_total", "The amount of time spent waiting for read requests to complete.", false, 5, 1e-9),
    ("residual_total", "The number of times during a read or write we found the residual amount to be non-zero. This should mean that a program is issuing a read larger thean the block size on tape. For write not all data made it to tape.", false, 6, 1.0),
    ("written_bytes_total", "The number of bytes written to the tape drive.", false, 7, 1.0),
    ("writes_completed_total", "The number of write requests issued to the tape drive.", false, 8, 1.0),
    ("write_time_seconds_total", "The amount of time spent waiting for write requests to complete.", false, 9, 1e-9),
];

/// One drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tape {
    pub name: String,
    /// [`FILES`] values; absent files read 0.
    pub counters: [u64; 10],
}

/// `st<digits>`: the rewinding device of a drive, one per drive.
fn is_drive(name: &str) -> bool {
    name.strip_prefix("st")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_tape(tree: &impl Tree, name: &str) -> Result<Tape, ReadError> {
    let dir = format!("{name}/stats");
    let mut counters = [0u64; 10];
    for (file, _) in tree.list(&dir).map_err(|e| ReadError::new(&dir, e, true))? {
        let rel = format!("{dir}/{file}");
        // procfs reads every entry, and any read error fails the drive.
        let value = sys_read_file(tree, &rel).map_err(|e| ReadError::new(&rel, e, false))?;
        if let Some(i) = FILES.iter().position(|f| *f == file) {
            counters[i] = parse_go_uint(&value).ok_or_else(|| {
                ReadError::new(
                    &rel,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{value:?} is not a counter"),
                    ),
                    false,
                )
            })?;
        }
    }
    Ok(Tape {
        name: name.to_string(),
        counters,
    })
}

/// Every drive in `tree` (/sys/class/scsi_tape).
pub(crate) fn parse(tree: &impl Tree) -> Result<Vec<Tape>, ReadError> {
    let names = tree.list("").map_err(|e| ReadError::new("", e, true))?;
    names
        .iter()
        .filter(|(n, _)| is_drive(n))
        .map(|(n, _)| parse_tape(tree, n))
        .collect()
}

/// Families of the drives `ignored` does not match.
pub(crate) fn render(tapes: &[Tape], ignored: impl Fn(&str) -> bool) -> Vec<Family> {
    METRICS
        .iter()
        .map(|(name, help, gauge, i, scale)| {
            let name = format!("node_tape_{name}");
            let mut f = if *gauge {
                Family::gauge(name, *help)
            } else {
                Family::counter(name, *help)
            };
            for t in tapes.iter().filter(|t| !ignored(&t.name)) {
                f.push(
                    super::label("device", t.name.clone()),
                    t.counters[*i] as f64 * scale,
                );
            }
            f
        })
        .collect()
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.sys("class/scsi_tape");
    match parse(&DirTree(base.clone())) {
        Ok(tapes) => Ok(render(&tapes, |n| ctx.filters.tape_ignored(n))),
        Err(e) => {
            Err(e.into_collect_error(&base, "no /sys/class/scsi_tape (or a drive without stats)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use crate::collectors::util::MapTree;
    use proptest::prelude::*;

    #[test]
    fn reads_the_storage_fixture() {
        let tapes = parse(&DirTree(
            testutil::fixture("storage").join("sys/class/scsi_tape"),
        ))
        .unwrap();
        let names: Vec<&str> = tapes.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["st0", "st1"]);
        assert_eq!(
            tapes[0].counters,
            [
                1,
                9331400,
                1409,
                979383912,
                3741,
                33788355744,
                19,
                1496246784000,
                424,
                1250256736
            ]
        );
        let out = testutil::render(render(&tapes, |n| n == "st1"));
        assert!(
            out.contains("node_tape_io_time_seconds_total{device=\"st0\"} 0.0093314\n"),
            "{out}"
        );
        assert!(!out.contains("st1"), "{out}");
    }

    #[test]
    fn drives_and_errors() {
        assert!(is_drive("st0") && is_drive("st12"));
        assert!(!is_drive("nst0") && !is_drive("st0a") && !is_drive("st"));
        assert!(
            parse(&MapTree::from_lines("st0/x=1\n"))
                .unwrap_err()
                .no_data
        );
        assert!(
            !parse(&MapTree::from_lines("st0/stats/read_cnt=x\n"))
                .unwrap_err()
                .no_data
        );
        let t = parse(&MapTree::from_lines(
            "st0/stats/read_cnt=0x10\nst0/stats/new=?\nnst0/x=1\n",
        ))
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].counters[4], 16);
    }

    #[test]
    fn absent_source_is_no_data() {
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(st[0-9]/stats/(in_flight|io_ns|read_cnt|write_ns)=[0-9a-fx]{0,6}\n){1,8}") {
            if let Ok(t) = parse(&MapTree::from_lines(&s)) { let _ = render(&t, |_| false); }
        }
    }
}
