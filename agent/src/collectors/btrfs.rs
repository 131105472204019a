//! `btrfs`: Btrfs filesystem statistics from /sys/fs/btrfs/<uuid>/ (fs/btrfs/sysfs.c),
//! read as procfs 0.8 reads them for node_exporter 1.5: label, global reserve, per block
//! group type (data, metadata, system) the reserved bytes and per profile (`single`,
//! `dup`, `raid1`, ...) the used and allocated bytes and allocation ratio, and each
//! device's size. No Btrfs filesystem (no /sys/fs/btrfs, or no `<uuid>` in it): success
//! with no families, as in node_exporter.
//!
//! procfs reads with a "sticky" error that later reads overwrite: an unreadable file
//! (other than a missing one) makes the numbers read after it 0 until the next block
//! group type starts afresh, and only an error within the last one (`system`) fails the
//! filesystem. That is reproduced here so that values agree with node_exporter's.
//!
//! Not done: node_exporter 1.5 also asks a mounted Btrfs filesystem for its devices
//! through ioctls (BTRFS_IOC_FS_INFO, DEV_INFO, GET_DEV_STATS) and, where that works,
//! labels `node_btrfs_device_size_bytes` with `btrfs_dev_uuid` and adds
//! `node_btrfs_device_unused_bytes` and `node_btrfs_device_errors_total`. nodetap serves
//! the sysfs form, which is what node_exporter serves where the ioctls fail.

use std::io;

use super::render::Family;
use super::util::{parse_go_u64, sys_read_file, DirTree, Kind, Tree};
use super::{CollectError, Ctx};

/// Sysfs reports device sizes in 512-byte sectors.
const SECTOR_SIZE: u64 = 512;

/// The block group types, in the order procfs reads them.
const BLOCK_GROUP_TYPES: [&str; 3] = ["data", "metadata", "system"];

/// One profile of a block group type (`allocation/<type>/<profile>/`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Layout {
    pub mode: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub ratio: f64,
}

/// One block group type (`allocation/<type>/`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Allocation {
    pub reserved_bytes: u64,
    pub layouts: Vec<Layout>,
}

/// One filesystem.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FsStats {
    pub uuid: String,
    pub label: String,
    pub global_rsv_size: u64,
    /// In [`BLOCK_GROUP_TYPES`] order.
    pub allocation: [Allocation; 3],
    /// Device name and size in bytes.
    pub devices: Vec<(String, u64)>,
}

/// procfs' reader: the first error sticks until overwritten, and makes numbers read 0.
struct Reader<'a, T: Tree> {
    tree: &'a T,
    path: String,
    err: Option<(String, io::Error)>,
    dev_count: usize,
}

impl<'a, T: Tree> Reader<'a, T> {
    fn new(tree: &'a T, path: String, dev_count: usize) -> Self {
        Self {
            tree,
            path,
            err: None,
            dev_count,
        }
    }

    fn rel(&self, n: &str) -> String {
        format!("{}/{n}", self.path)
    }

    fn read_file(&mut self, n: &str) -> String {
        let rel = self.rel(n);
        match sys_read_file(self.tree, &rel) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                self.err = Some((rel, e));
                String::new()
            }
        }
    }

    fn read_value(&mut self, n: &str) -> u64 {
        let s = self.read_file(n);
        if self.err.is_some() {
            return 0;
        }
        parse_go_u64(&s).unwrap_or(0)
    }

    fn list(&mut self, n: &str) -> Vec<(String, Kind)> {
        let rel = if n.is_empty() {
            self.path.clone()
        } else {
            self.rel(n)
        };
        match self.tree.list(&rel) {
            Ok(v) => v,
            Err(e) => {
                self.err = Some((rel, e));
                Vec::new()
            }
        }
    }

    fn ratio(&self, profile: &str) -> f64 {
        let n = self.dev_count as f64;
        match profile {
            "single" | "raid0" => 1.0,
            "dup" | "raid1" | "raid10" => 2.0,
            "raid5" => n / (n - 1.0),
            "raid6" => n / (n - 2.0),
            _ => 0.0,
        }
    }

    fn allocation(&mut self, d: &str) -> Allocation {
        let mut sr = Reader::new(self.tree, self.rel(d), self.dev_count);
        // Every file procfs reads, in its order: an error in one zeroes what follows.
        let mut reserved = 0;
        for f in [
            "bytes_may_use",
            "bytes_pinned",
            "bytes_readonly",
            "bytes_reserved",
            "bytes_used",
            "disk_used",
            "disk_total",
            "flags",
            "total_bytes",
            "total_bytes_pinned",
        ] {
            let v = sr.read_value(f);
            if f == "bytes_reserved" {
                reserved = v;
            }
        }
        let mut layouts = Vec::new();
        for (mode, kind) in sr.list("") {
            if kind == Kind::Dir {
                layouts.push(Layout {
                    total_bytes: sr.read_value(&format!("{mode}/total_bytes")),
                    used_bytes: sr.read_value(&format!("{mode}/used_bytes")),
                    ratio: sr.ratio(&mode),
                    mode,
                });
            }
        }
        self.err = sr.err;
        Allocation {
            reserved_bytes: reserved,
            layouts,
        }
    }
}

/// Reads the filesystem in directory `dir` of `tree` (the `<uuid>` directory).
pub(crate) fn parse_fs(tree: &impl Tree, dir: &str) -> Result<FsStats, (String, io::Error)> {
    let mut r = Reader::new(tree, dir.to_string(), 0);
    let mut devices = Vec::new();
    for (name, _) in r.list("devices") {
        let size = r.read_value(&format!("devices/{name}/size"));
        devices.push((name, SECTOR_SIZE.wrapping_mul(size)));
    }
    r.dev_count = devices.len();
    let label = r.read_file("label");
    let uuid = r.read_file("metadata_uuid");
    r.list("features");
    for f in [
        "clone_alignment",
        "nodesize",
        "quota_override",
        "sectorsize",
    ] {
        r.read_value(f);
    }
    r.read_value("allocation/global_rsv_reserved");
    let global_rsv_size = r.read_value("allocation/global_rsv_size");
    let allocation = BLOCK_GROUP_TYPES.map(|t| r.allocation(&format!("allocation/{t}")));
    if let Some(err) = r.err {
        return Err(err);
    }
    Ok(FsStats {
        uuid: if uuid.is_empty() {
            dir.to_string()
        } else {
            uuid
        },
        label,
        global_rsv_size,
        allocation,
        devices,
    })
}

/// Every filesystem in `tree` (/sys/fs/btrfs): the entries whose name holds a `-`, as
/// procfs' glob `*-*` finds them.
pub(crate) fn parse(tree: &impl Tree) -> Result<Vec<FsStats>, (String, io::Error)> {
    let entries = tree.list("").unwrap_or_default();
    entries
        .iter()
        .filter(|(name, _)| name.contains('-'))
        .map(|(name, _)| parse_fs(tree, name))
        .collect()
}

pub(crate) fn render(filesystems: &[FsStats]) -> Vec<Family> {
    let gauge = |name: &str, help: &str| Family::gauge(format!("node_btrfs_{name}"), help);
    let mut info = gauge("info", "Filesystem information");
    let mut rsv = gauge("global_rsv_size_bytes", "Size of global reserve.");
    let mut reserved = gauge("reserved_bytes", "Amount of space reserved for a data type");
    let mut used = gauge("used_bytes", "Amount of used space by a layout/data type");
    let mut size = gauge(
        "size_bytes",
        "Amount of space allocated for a layout/data type",
    );
    let mut ratio = gauge(
        "allocation_ratio",
        "Data allocation ratio for a layout/data type",
    );
    let mut device_size = gauge(
        "device_size_bytes",
        "Size of a device that is part of the filesystem.",
    );
    for fs in filesystems {
        let uuid = || ("uuid", fs.uuid.clone());
        info.push(vec![uuid(), ("label", fs.label.clone())], 1.0);
        rsv.push(vec![uuid()], fs.global_rsv_size as f64);
        for (t, a) in BLOCK_GROUP_TYPES.iter().zip(&fs.allocation) {
            reserved.push(
                vec![uuid(), ("block_group_type", t.to_string())],
                a.reserved_bytes as f64,
            );
            for l in &a.layouts {
                let labels = || {
                    vec![
                        uuid(),
                        ("block_group_type", t.to_string()),
                        ("mode", l.mode.clone()),
                    ]
                };
                used.push(labels(), l.used_bytes as f64);
                size.push(labels(), l.total_bytes as f64);
                ratio.push(labels(), l.ratio);
            }
        }
        for (name, bytes) in &fs.devices {
            device_size.push(vec![uuid(), ("device", name.clone())], *bytes as f64);
        }
    }
    vec![info, rsv, reserved, used, size, ratio, device_size]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.sys("fs/btrfs");
    let filesystems =
        parse(&DirTree(base.clone())).map_err(|(rel, source)| CollectError::Read {
            path: base.join(rel),
            source,
        })?;
    Ok(render(&filesystems))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use crate::collectors::util::MapTree;
    use proptest::prelude::*;

    #[test]
    fn reads_the_storage_fixture() {
        let tree = DirTree(testutil::fixture("storage").join("sys/fs/btrfs"));
        let fss = parse(&tree).unwrap();
        assert_eq!(fss.len(), 2);
        let raid = &fss[1];
        assert_eq!(raid.uuid, "7f07c59f-6136-449c-ab87-e1cf2328731b");
        assert_eq!(raid.label, "");
        assert_eq!(raid.devices.len(), 4);
        assert_eq!(raid.devices[0], ("loop22".to_string(), 10737418240));
        let data = &raid.allocation[0];
        assert_eq!(data.layouts.len(), 1);
        assert_eq!(data.layouts[0].mode, "raid5");
        assert_eq!(data.layouts[0].ratio, 4.0 / 3.0);
        assert_eq!(raid.allocation[1].layouts[0].ratio, 2.0);
    }

    #[test]
    fn errors_stick_as_in_procfs() {
        // An unreadable features/ (a file, not a directory) zeroes the numbers read after
        // it, and the next block group type clears the error.
        let base = "u-1/devices/sda/size=8\nu-1/label=L\nu-1/features=x\nu-1/allocation/global_rsv_size=5\nu-1/allocation/data/bytes_reserved=3\nu-1/allocation/metadata/bytes_reserved=1\nu-1/allocation/system/bytes_reserved=2\n";
        let fs = parse_fs(&MapTree::from_lines(base), "u-1").unwrap();
        assert_eq!(fs.global_rsv_size, 0);
        assert_eq!(fs.devices, vec![("sda".to_string(), 4096)]);
        assert_eq!(fs.label, "L");
        assert_eq!(fs.uuid, "u-1");
        assert_eq!(fs.allocation[0].reserved_bytes, 3);
        // A broken system/ block group type fails the filesystem.
        let broken = format!("{base}u-1/allocation/system/bytes_used/x=1\n");
        assert!(parse(&MapTree::from_lines(&broken)).is_err());
    }

    #[test]
    fn absent_source_is_success_without_families() {
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        assert_eq!(out, "");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(a-b/(devices/d[0-9]/size|label|metadata_uuid|allocation/(data|system|metadata)/(raid[56]|dup)/(used|total)_bytes|allocation/global_rsv_size)=[0-9a-z]{0,4}\n){1,12}") {
            if let Ok(f) = parse(&MapTree::from_lines(&s)) { let _ = render(&f); }
        }
    }
}
