//! `xfs`: per-filesystem XFS statistics from /sys/fs/xfs/<device>/stats/stats
//! (fs/xfs/xfs_stats.c, <https://xfs.wiki.kernel.org/index.php/Runtime_Stats>), parsed as
//! procfs 0.8 does for node_exporter 1.5: every line's values are checked (counts and
//! 32-bit range, `xpc` 64-bit), the extent, B-tree, block-map, directory, inode,
//! read/write and vnode counters are served per `device`. No XFS filesystem mounted (no
//! such files): success with no families, as in node_exporter.

use super::render::Family;
use super::util::{parse_go_u32, parse_go_u64, read};
use super::{CollectError, Ctx, ParseError};

/// The counters served, by line: (line label, values it must have (an alternative
/// count, or 0), and for each value served: (metric name after `node_xfs_`, help)).
type Served = &'static [(&'static str, &'static str)];

const SERVED: [(&str, usize, usize, Served); 8] = [
    (
        "extent_alloc",
        4,
        0,
        &[
            (
                "extent_allocation_extents_allocated_total",
                "Number of extents allocated for a filesystem.",
            ),
            (
                "extent_allocation_blocks_allocated_total",
                "Number of blocks allocated for a filesystem.",
            ),
            (
                "extent_allocation_extents_freed_total",
                "Number of extents freed for a filesystem.",
            ),
            (
                "extent_allocation_blocks_freed_total",
                "Number of blocks freed for a filesystem.",
            ),
        ],
    ),
    (
        "abt",
        4,
        0,
        &[
            (
                "allocation_btree_lookups_total",
                "Number of allocation B-tree lookups for a filesystem.",
            ),
            (
                "allocation_btree_compares_total",
                "Number of allocation B-tree compares for a filesystem.",
            ),
            (
                "allocation_btree_records_inserted_total",
                "Number of allocation B-tree records inserted for a filesystem.",
            ),
            (
                "allocation_btree_records_deleted_total",
                "Number of allocation B-tree records deleted for a filesystem.",
            ),
        ],
    ),
    (
        "blk_map",
        7,
        0,
        &[
            (
                "block_mapping_reads_total",
                "Number of block map for read operations for a filesystem.",
            ),
            (
                "block_mapping_writes_total",
                "Number of block map for write operations for a filesystem.",
            ),
            (
                "block_mapping_unmaps_total",
                "Number of block unmaps (deletes) for a filesystem.",
            ),
            (
                "block_mapping_extent_list_insertions_total",
                "Number of extent list insertions for a filesystem.",
            ),
            (
                "block_mapping_extent_list_deletions_total",
                "Number of extent list deletions for a filesystem.",
            ),
            (
                "block_mapping_extent_list_lookups_total",
                "Number of extent list lookups for a filesystem.",
            ),
            (
                "block_mapping_extent_list_compares_total",
                "Number of extent list compares for a filesystem.",
            ),
        ],
    ),
    (
        "bmbt",
        4,
        0,
        &[
            (
                "block_map_btree_lookups_total",
                "Number of block map B-tree lookups for a filesystem.",
            ),
            (
                "block_map_btree_compares_total",
                "Number of block map B-tree compares for a filesystem.",
            ),
            (
                "block_map_btree_records_inserted_total",
                "Number of block map B-tree records inserted for a filesystem.",
            ),
            (
                "block_map_btree_records_deleted_total",
                "Number of block map B-tree records deleted for a filesystem.",
            ),
        ],
    ),
    (
        "dir",
        4,
        0,
        &[
            (
                "directory_operation_lookup_total",
                "Number of file name directory lookups which miss the operating systems directory name lookup cache.",
            ),
            (
                "directory_operation_create_total",
                "Number of times a new directory entry was created for a filesystem.",
            ),
            (
                "directory_operation_remove_total",
                "Number of times an existing directory entry was created for a filesystem.",
            ),
            (
                "directory_operation_getdents_total",
                "Number of times the directory getdents operation was performed for a filesystem.",
            ),
        ],
    ),
    (
        "ig",
        7,
        0,
        &[
            (
                "inode_operation_attempts_total",
                "Number of times the OS looked for an XFS inode in the inode cache.",
            ),
            (
                "inode_operation_found_total",
                "Number of times the OS looked for and found an XFS inode in the inode cache.",
            ),
            (
                "inode_operation_recycled_total",
                "Number of times the OS found an XFS inode in the cache, but could not use it as it was being recycled.",
            ),
            (
                "inode_operation_missed_total",
                "Number of times the OS looked for an XFS inode in the cache, but did not find it.",
            ),
            (
                "inode_operation_duplicates_total",
                "Number of times the OS tried to add a missing XFS inode to the inode cache, but found it had already been added by another process.",
            ),
            (
                "inode_operation_reclaims_total",
                "Number of times the OS reclaimed an XFS inode from the inode cache to free memory for another purpose.",
            ),
            (
                "inode_operation_attribute_changes_total",
                "Number of times the OS explicitly changed the attributes of an XFS inode.",
            ),
        ],
    ),
    (
        // The kernel writes write calls first, then read calls.
        "rw",
        2,
        0,
        &[
            (
                "write_calls_total",
                "Number of write(2) system calls made to files in a filesystem.",
            ),
            (
                "read_calls_total",
                "Number of read(2) system calls made to files in a filesystem.",
            ),
        ],
    ),
    (
        // Newer kernels add an eighth value (free), which is not served.
        "vnodes",
        7,
        8,
        &[
            (
                "vnode_active_total",
                "Number of vnodes not on free lists for a filesystem.",
            ),
            (
                "vnode_allocate_total",
                "Number of times vn_alloc called for a filesystem.",
            ),
            ("vnode_get_total", "Number of times vn_get called for a filesystem."),
            ("vnode_hold_total", "Number of times vn_hold called for a filesystem."),
            (
                "vnode_release_total",
                "Number of times vn_rele called for a filesystem.",
            ),
            (
                "vnode_reclaim_total",
                "Number of times vn_reclaim called for a filesystem.",
            ),
            (
                "vnode_remove_total",
                "Number of times vn_remove called for a filesystem.",
            ),
        ],
    ),
];

/// Lines procfs checks but node_exporter does not serve: (label, count, alternative).
const CHECKED: [(&str, usize, usize); 13] = [
    ("trans", 3, 0),
    ("log", 5, 0),
    ("push_ail", 10, 0),
    ("xstrat", 2, 0),
    ("attr", 4, 0),
    ("icluster", 3, 0),
    ("buf", 9, 0),
    ("abtb2", 15, 0),
    ("abtc2", 15, 0),
    ("bmbt2", 15, 0),
    ("ibt2", 15, 0),
    ("qm", 8, 9),
    ("debug", 1, 0),
];

/// The served counters of one stats file, in [`SERVED`] order (absent lines read 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stats {
    pub values: [Vec<u32>; 8],
}

pub(crate) fn parse(text: &str) -> Result<Stats, ParseError> {
    let mut s = Stats {
        values: SERVED.map(|(_, _, _, served)| vec![0; served.len()]),
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 2 {
            continue;
        }
        let label = parts[0];
        let count = parts.len() - 1;
        if label == "xpc" {
            // Extended precision byte counters: the only 64-bit line.
            for t in &parts[1..] {
                parse_go_u64(t)
                    .ok_or_else(|| ParseError::new(n, format!("{t:?} is not a count")))?;
            }
            if count != 3 {
                return Err(ParseError::new(n, format!("xpc: {count} values, want 3")));
            }
            continue;
        }
        let values: Vec<u32> = parts[1..]
            .iter()
            .map(|t| {
                parse_go_u32(t)
                    .ok_or_else(|| ParseError::new(n, format!("{t:?} is not a 32-bit count")))
            })
            .collect::<Result<_, _>>()?;
        let want = |a: usize, b: usize| {
            if count == a || (b != 0 && count == b) {
                Ok(())
            } else {
                Err(ParseError::new(
                    n,
                    format!("{label}: {count} values, want {a}"),
                ))
            }
        };
        if let Some(k) = SERVED.iter().position(|(l, ..)| *l == label) {
            let (_, a, b, served) = SERVED[k];
            want(a, b)?;
            s.values[k] = values[..served.len()].to_vec();
        } else if let Some((_, a, b)) = CHECKED.iter().find(|(l, ..)| *l == label) {
            want(*a, *b)?;
        }
    }
    Ok(s)
}

/// Families for each (device, stats) pair.
pub(crate) fn render(devices: &[(String, Stats)]) -> Vec<Family> {
    let mut out = Vec::new();
    for (k, (_, _, _, served)) in SERVED.iter().enumerate() {
        for (j, (name, help)) in served.iter().enumerate() {
            let mut f = Family::counter(format!("node_xfs_{name}"), *help);
            for (device, s) in devices {
                f.push(
                    super::label("device", device.clone()),
                    f64::from(s.values[k][j]),
                );
            }
            out.push(f);
        }
    }
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let mut devices = Vec::new();
    // procfs globs fs/xfs/*/stats/stats; a missing /sys/fs/xfs is no XFS filesystem.
    let dir = ctx.sys("fs/xfs");
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for name in names {
        let path = dir.join(&name).join("stats/stats");
        if !path.exists() {
            continue;
        }
        let text = read(&path)?;
        let stats = parse(&text).map_err(|source| CollectError::Parse { path, source })?;
        devices.push((name, stats));
    }
    Ok(render(&devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_the_storage_fixture() {
        let s = parse(&testutil::read("storage", "sys/fs/xfs/sda1/stats/stats")).unwrap();
        assert_eq!(s.values[0], [92447, 97589, 92448, 93751]);
        assert_eq!(s.values[6], [28, 3]);
        assert_eq!(s.values[7], [78, 0, 0, 0, 72, 72, 72]);
    }

    #[test]
    fn rejects_what_procfs_rejects() {
        for bad in [
            "extent_alloc 1 2 3\n",
            "vnodes 1 2 3 4 5 6\n",
            "qm 1 2 3\n",
            "xpc 1 2\n",
            "rw 1 4294967296\n",
            "unknown 1 x\n",
            "abtb2 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        // Short lines and unknown lines with counts are skipped; xpc is 64-bit.
        let s = parse("\nx\nrmapbt 1 2 3\nxpc 1 2 18446744073709551615\nvnodes 1 2 3 4 5 6 7 8\n")
            .unwrap();
        assert_eq!(s.values[7], [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(s.values[0], [0, 0, 0, 0]);
    }

    #[test]
    fn absent_source_is_success_without_families() {
        assert_eq!(collect(&testutil::ctx("real")).unwrap().len(), 39);
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        assert_eq!(out, "");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|((extent_alloc|abt|blk_map|bmbt|dir|ig|rw|vnodes|xpc|qm|buf) [0-9]{1,3}( [0-9]{1,3}){0,16}\n){1,5}") {
            if let Ok(st) = parse(&s) { let _ = render(&[("sda".into(), st)]); }
        }
    }
}
