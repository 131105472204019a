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
//! For a mounted filesystem, the devices come from its ioctls instead (BTRFS_IOC_FS_INFO,
//! DEV_INFO, GET_DEV_STATS, include/uapi/linux/btrfs.h), as node_exporter 1.5 gets them
//! through github.com/dennwc/btrfs: `node_btrfs_device_size_bytes` then also carries
//! `btrfs_dev_uuid`, and `node_btrfs_device_unused_bytes` and
//! `node_btrfs_device_errors_total{type}` are added. Where the ioctls fail (the mount
//! point is not a subvolume root, or opening it with O_NOATIME is refused to a process
//! that does not own it and lacks CAP_FOWNER), the sysfs form is served, as there.

use std::collections::BTreeMap;
use std::io;

use super::render::Family;
use super::util::{join_rooted, parse_go_u64, read, sys_read_file, DirTree, Kind, Tree};
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

/// A device as a mounted filesystem's ioctls describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IoctlDevice {
    /// The last element of the device's path (`/dev/sdb` -> `sdb`).
    pub name: String,
    /// Its UUID in the 8-4-4-4-12 form (`<zero>` when all zero, as dennwc/btrfs writes it).
    pub uuid: String,
    pub total_bytes: u64,
    pub bytes_used: u64,
    /// Write, read, flush, corruption and generation errors.
    pub errors: [u64; 5],
}

/// The error types of [`IoctlDevice::errors`], as node_exporter labels them.
const ERROR_TYPES: [&str; 5] = ["write", "read", "flush", "corruption", "generation"];

/// The mounts node_exporter reads for the ioctls (/proc/1/mounts, or /proc/mounts):
/// (device, mount point, type), with `\040` and `\011` decoded as node_exporter decodes
/// them. A line of fewer than four fields makes the whole file unusable, as there.
pub(crate) fn parse_mounts(text: &str) -> Option<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 4 {
            return None;
        }
        let mount_point = parts[1].replace("\\040", " ").replace("\\011", "\t");
        out.push((parts[0].to_string(), mount_point, parts[2].to_string()));
    }
    Some(out)
}

/// The families of `filesystems`; a filesystem whose UUID (without dashes) is a key of
/// `ioctl` gets its devices from there.
pub(crate) fn render(
    filesystems: &[FsStats],
    ioctl: &BTreeMap<String, Vec<IoctlDevice>>,
) -> Vec<Family> {
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
    let mut unused = gauge(
        "device_unused_bytes",
        "Unused bytes unused on a device that is part of the filesystem.",
    );
    let mut errors = Family::counter(
        "node_btrfs_device_errors_total",
        "Errors reported for the device",
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
        match ioctl.get(&fs.uuid.replace('-', "")) {
            None => {
                for (name, bytes) in &fs.devices {
                    device_size.push(vec![uuid(), ("device", name.clone())], *bytes as f64);
                }
            }
            Some(devices) => {
                for d in devices {
                    let labels = || {
                        vec![
                            uuid(),
                            ("device", d.name.clone()),
                            ("btrfs_dev_uuid", d.uuid.clone()),
                        ]
                    };
                    device_size.push(labels(), d.total_bytes as f64);
                    unused.push(labels(), d.total_bytes.wrapping_sub(d.bytes_used) as f64);
                    for (t, v) in ERROR_TYPES.iter().zip(d.errors) {
                        let mut l = labels();
                        l.push(("type", t.to_string()));
                        errors.push(l, v as f64);
                    }
                }
            }
        }
    }
    vec![
        info,
        rsv,
        reserved,
        used,
        size,
        ratio,
        device_size,
        unused,
        errors,
    ]
}

/// The devices of every mounted Btrfs filesystem whose ioctls answer, by filesystem ID
/// (hexadecimal, no dashes), as node_exporter's `getIoctlStats` collects them. Failures
/// only leave a filesystem out (node_exporter logs them at debug level).
fn ioctl_stats(ctx: &Ctx) -> BTreeMap<String, Vec<IoctlDevice>> {
    let mut out = BTreeMap::new();
    let text = match read(&ctx.proc("1/mounts")) {
        Err(CollectError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            read(&ctx.proc("mounts"))
        }
        other => other,
    };
    let Some(mounts) = text.ok().as_deref().and_then(parse_mounts) else {
        return out;
    };
    let mut devices_done = std::collections::HashSet::new();
    for (device, mount_point, fs_type) in mounts {
        if fs_type != "btrfs" || devices_done.contains(&device) {
            continue;
        }
        let mount_point = super::filesystem::strip_rootfs(&ctx.rootfs, &mount_point);
        let path = join_rooted(&ctx.rootfs, &mount_point);
        match ioctl::query(&path) {
            Ok((fsid, devs)) => {
                if out.contains_key(&fsid) {
                    continue;
                }
                devices_done.insert(device);
                out.insert(fsid, devs);
            }
            Err(e) => log::debug!("btrfs ioctls on {}: {e}", path.display()),
        }
    }
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.sys("fs/btrfs");
    let filesystems =
        parse(&DirTree(base.clone())).map_err(|(rel, source)| CollectError::Read {
            path: base.join(rel),
            source,
        })?;
    // node_exporter reads the mounts at every scrape; with no filesystem in sysfs
    // nothing would use them.
    let ioctl = if filesystems.is_empty() {
        BTreeMap::new()
    } else {
        ioctl_stats(ctx)
    };
    Ok(render(&filesystems, &ioctl))
}

/// The three ioctls, with the argument layouts of include/uapi/linux/btrfs.h.
mod ioctl {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    use super::IoctlDevice;

    const MAGIC: u64 = 0x94;

    /// `_IOC(dir, 0x94, nr, size)` (include/uapi/asm-generic/ioctl.h).
    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr
    }
    const READ: u64 = 2;
    const READ_WRITE: u64 = 3;

    /// struct btrfs_ioctl_fs_info_args (1 KiB).
    #[repr(C)]
    struct FsInfoArgs {
        max_id: u64,
        num_devices: u64,
        fsid: [u8; 16],
        rest: [u8; 1024 - 32],
    }

    /// struct btrfs_ioctl_dev_info_args (4 KiB).
    #[repr(C)]
    struct DevInfoArgs {
        devid: u64,
        uuid: [u8; 16],
        bytes_used: u64,
        total_bytes: u64,
        fsid: [u8; 16],
        unused: [u64; 377],
        path: [u8; 1024],
    }

    /// struct btrfs_ioctl_get_dev_stats (3 + 5 + 121 u64s).
    #[repr(C)]
    struct DevStatsArgs {
        devid: u64,
        nr_items: u64,
        flags: u64,
        values: [u64; 5],
        unused: [u64; 121],
    }

    const FS_INFO: u64 = ioc(READ, 31, std::mem::size_of::<FsInfoArgs>());
    const DEV_INFO: u64 = ioc(READ_WRITE, 30, std::mem::size_of::<DevInfoArgs>());
    const GET_DEV_STATS: u64 = ioc(READ_WRITE, 52, std::mem::size_of::<DevStatsArgs>());

    /// The root of a Btrfs subvolume has inode 256 (BTRFS_FIRST_FREE_OBJECTID).
    const SUBVOLUME_ROOT_INODE: u64 = 256;
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A zeroed argument block on the heap (up to 4 KiB).
    fn zeroed<T>() -> Box<T> {
        // SAFETY: the argument structs are plain integers and byte arrays, for which
        // all-zero bytes are a valid value.
        Box::new(unsafe { std::mem::zeroed() })
    }

    fn is_subvolume(path: &Path) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path)?;
        if md.ino() != SUBVOLUME_ROOT_INODE || !md.is_dir() {
            return Ok(false);
        }
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: an all-zero struct statfs is valid; statfs overwrites it.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a valid out pointer.
        check(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
        Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// dennwc/btrfs' UUID form.
    pub(super) fn uuid(b: &[u8; 16]) -> String {
        if b.iter().all(|x| *x == 0) {
            return "<zero>".into();
        }
        format!(
            "{}-{}-{}-{}-{}",
            hex(&b[..4]),
            hex(&b[4..6]),
            hex(&b[6..8]),
            hex(&b[8..10]),
            hex(&b[10..])
        )
    }

    /// The filesystem ID and devices of the Btrfs filesystem mounted at `path`: every
    /// device ID up to `max_id` that answers (ENODEV: a removed device, skipped), until
    /// `num_devices` are found.
    pub(super) fn query(path: &Path) -> io::Result<(String, Vec<IoctlDevice>)> {
        use std::os::unix::fs::OpenOptionsExt;
        if !is_subvolume(path)? {
            return Err(io::Error::other("not the root of a Btrfs subvolume"));
        }
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)?;
        let fd = dir.as_raw_fd();
        let mut info = zeroed::<FsInfoArgs>();
        // SAFETY: FS_INFO fills a btrfs_ioctl_fs_info_args, which `info` is.
        check(unsafe { libc::ioctl(fd, FS_INFO as _, &mut *info as *mut FsInfoArgs) })?;
        let mut devices = Vec::new();
        for devid in 0..=info.max_id {
            let mut dev = zeroed::<DevInfoArgs>();
            dev.devid = devid;
            // SAFETY: DEV_INFO reads and fills a btrfs_ioctl_dev_info_args.
            let rc = unsafe { libc::ioctl(fd, DEV_INFO as _, &mut *dev as *mut DevInfoArgs) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENODEV) {
                    continue;
                }
                return Err(e);
            }
            let mut stats = zeroed::<DevStatsArgs>();
            stats.devid = devid;
            stats.nr_items = 5;
            // SAFETY: GET_DEV_STATS reads and fills a btrfs_ioctl_get_dev_stats.
            check(unsafe {
                libc::ioctl(fd, GET_DEV_STATS as _, &mut *stats as *mut DevStatsArgs)
            })?;
            let end = dev
                .path
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(dev.path.len());
            let dev_path = String::from_utf8_lossy(&dev.path[..end]).into_owned();
            devices.push(IoctlDevice {
                name: dev_path.rsplit('/').next().unwrap_or("").to_string(),
                uuid: uuid(&dev.uuid),
                total_bytes: dev.total_bytes,
                bytes_used: dev.bytes_used,
                errors: stats.values,
            });
            if devices.len() as u64 == info.num_devices {
                break;
            }
        }
        Ok((hex(&info.fsid), devices))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn layouts_and_request_numbers_match_the_kernel() {
            assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
            assert_eq!(std::mem::size_of::<DevInfoArgs>(), 4096);
            assert_eq!(std::mem::size_of::<DevStatsArgs>(), 1032);
            // The values the uapi header's _IOR/_IOWR macros give.
            assert_eq!(FS_INFO, 0x8400_941f);
            assert_eq!(DEV_INFO, 0xd000_941e);
            assert_eq!(GET_DEV_STATS, 0xc408_9434);
            assert_eq!(uuid(&[0; 16]), "<zero>");
            let mut b = [0u8; 16];
            b[0] = 0xab;
            b[15] = 1;
            assert_eq!(uuid(&b), "ab000000-0000-0000-0000-000000000001");
        }

        #[test]
        fn a_directory_that_is_no_btrfs_subvolume_is_refused() {
            let e = query(Path::new("/proc")).unwrap_err();
            assert_eq!(e.to_string(), "not the root of a Btrfs subvolume");
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
    fn mounts_and_the_ioctl_form() {
        let m = parse_mounts("/dev/sdb /mnt/my\\040data btrfs rw 0 0\nproc /proc proc rw 0 0\n")
            .unwrap();
        assert_eq!(
            m[0],
            ("/dev/sdb".into(), "/mnt/my data".into(), "btrfs".into())
        );
        assert_eq!(parse_mounts("/dev/sdb /mnt btrfs\n"), None);
        let fss = parse(&DirTree(testutil::fixture("storage").join("sys/fs/btrfs"))).unwrap();
        let mut ioctl = BTreeMap::new();
        ioctl.insert(
            "7f07c59f6136449cab87e1cf2328731b".to_string(),
            vec![IoctlDevice {
                name: "loop22".into(),
                uuid: "0ac1c1a5-0b11-4d7e-a1a4-0b2e1d6b2f01".into(),
                total_bytes: 10737418240,
                bytes_used: 1073741824,
                errors: [1, 2, 3, 4, 5],
            }],
        );
        let out = testutil::render(render(&fss, &ioctl));
        let raid = "uuid=\"7f07c59f-6136-449c-ab87-e1cf2328731b\"";
        for line in [
            format!("node_btrfs_device_size_bytes{{btrfs_dev_uuid=\"0ac1c1a5-0b11-4d7e-a1a4-0b2e1d6b2f01\",device=\"loop22\",{raid}}} 1.073741824e+10\n"),
            format!("node_btrfs_device_unused_bytes{{btrfs_dev_uuid=\"0ac1c1a5-0b11-4d7e-a1a4-0b2e1d6b2f01\",device=\"loop22\",{raid}}} 9.663676416e+09\n"),
            format!("node_btrfs_device_errors_total{{btrfs_dev_uuid=\"0ac1c1a5-0b11-4d7e-a1a4-0b2e1d6b2f01\",device=\"loop22\",type=\"corruption\",{raid}}} 4\n"),
            // The other filesystem keeps the sysfs form.
            "node_btrfs_device_size_bytes{device=\"sda2\",uuid=\"0abb23a9-9aa3-4df9-b3bb-2f2b4e1d4a6f\"} 3.221225472e+10\n".to_string(),
        ] {
            assert!(out.contains(&line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains("device=\"loop23\""), "{out}");
    }

    #[test]
    fn absent_source_is_success_without_families() {
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        assert_eq!(out, "");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(a-b/(devices/d[0-9]/size|label|metadata_uuid|allocation/(data|system|metadata)/(raid[56]|dup)/(used|total)_bytes|allocation/global_rsv_size)=[0-9a-z]{0,4}\n){1,12}") {
            if let Ok(f) = parse(&MapTree::from_lines(&s)) { let _ = render(&f, &BTreeMap::new()); }
        }
    }
}
