//! `filesystem`: size, free space and inodes of mounted filesystems.
//!
//! Mounts come from `<procfs>/1/mountinfo` (the host's mount namespace when procfs is the
//! host's), falling back to `<procfs>/self/mountinfo` when PID 1 is hidden (hidepid); see
//! Documentation/filesystems/proc.rst, "3.5 /proc/<pid>/mountinfo". Each mount point is
//! stat'ed as `<rootfs>/<mount point>` with statvfs(3), in a helper thread: a hung NFS
//! server must not hang the scrape, so a mount that does not answer within
//! [`MOUNT_TIMEOUT`] reports `node_filesystem_device_error 1` and is skipped until the
//! stuck call returns (node_exporter's `--collector.filesystem.mount-timeout`).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::filters::Filters;
use super::render::Family;
use super::util::{join_rooted, read_parse, unescape_octal};
use super::{CollectError, Ctx, ParseError};

pub(crate) const MOUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// One mountinfo line, with the mount point relative to rootfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    /// Per-mount options (field 6), where `ro` marks a read-only mount.
    pub options: String,
}

/// Parses /proc/<pid>/mountinfo:
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
pub(crate) fn parse(text: &str) -> Result<Vec<Mount>, ParseError> {
    let mut mounts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.is_empty() {
            continue;
        }
        if parts.len() < 10 {
            return Err(ParseError::new(
                n,
                format!("malformed mount point information: {line:?}"),
            ));
        }
        let dev_ok = parts[2]
            .split_once(':')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
        if !dev_ok {
            return Err(ParseError::new(
                n,
                format!("bad major:minor {:?}", parts[2]),
            ));
        }
        let sep = parts[6..]
            .iter()
            .position(|p| *p == "-")
            .map(|p| p + 6)
            .ok_or_else(|| ParseError::new(n, "no '-' separator"))?;
        let (Some(fs_type), Some(device)) = (parts.get(sep + 1), parts.get(sep + 2)) else {
            return Err(ParseError::new(n, "missing fstype or source after '-'"));
        };
        mounts.push(Mount {
            device: device.to_string(),
            mount_point: unescape_octal(parts[4]),
            fs_type: fs_type.to_string(),
            options: parts[5].to_string(),
        });
    }
    Ok(mounts)
}

/// node_exporter's rootfsStripPrefix: with rootfs `/host`, `/host/var` is exposed as `/var`.
pub(crate) fn strip_rootfs(rootfs: &Path, mount_point: &str) -> String {
    let root = rootfs.to_string_lossy();
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return mount_point.to_string();
    }
    match mount_point.strip_prefix(root) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => mount_point.to_string(),
    }
}

/// Debian's node_exporter 1.5.0 default `--collector.filesystem.mount-points-exclude`,
/// `^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`,
/// written out (no regexp engine in the agent).
pub(crate) fn mount_point_excluded(mp: &str) -> bool {
    let Some(rest) = mp.strip_prefix('/') else {
        return false;
    };
    for dir in ["dev", "proc", "run", "sys", "mnt", "media"] {
        if let Some(after) = rest.strip_prefix(dir) {
            if after.is_empty() || after.starts_with('/') {
                return true;
            }
        }
    }
    for dir in ["var/lib/docker/", "var/lib/containers/storage/"] {
        // `.+` then `($|/)`: anything non-empty (up to a line break, which `.` stops at).
        if rest
            .strip_prefix(dir)
            .is_some_and(|after| after.split('\n').next().is_some_and(|s| !s.is_empty()))
        {
            return true;
        }
    }
    false
}

/// node_exporter's default `--collector.filesystem.fs-types-exclude`.
pub(crate) const EXCLUDED_FS_TYPES: [&str; 24] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// The mounts to report: not excluded, mount point relative to rootfs, first of
/// identical (device, mount point, fstype) only (over-mounts would be duplicate series).
pub(crate) fn select(mounts: Vec<Mount>, rootfs: &Path, filters: &Filters) -> Vec<Mount> {
    let mut seen = HashSet::new();
    mounts
        .into_iter()
        .map(|mut m| {
            m.mount_point = strip_rootfs(rootfs, &m.mount_point);
            m
        })
        .filter(|m| !filters.mount_point_excluded(&m.mount_point))
        .filter(|m| !filters.fs_type_excluded(&m.fs_type))
        .filter(|m| seen.insert((m.device.clone(), m.mount_point.clone(), m.fs_type.clone())))
        .collect()
}

/// What statvfs said, in node_exporter's units (bytes from `f_bsize`, as node_exporter
/// computes them from statfs(2), even where POSIX would use `f_frsize`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Usage {
    pub size: f64,
    pub free: f64,
    pub avail: f64,
    pub files: f64,
    pub files_free: f64,
}

pub(crate) fn render(mounts: &[(Mount, Option<Usage>)]) -> Vec<Family> {
    let mut size = Family::gauge("node_filesystem_size_bytes", "Filesystem size in bytes.");
    let mut free = Family::gauge(
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes.",
    );
    let mut avail = Family::gauge(
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
    );
    let mut files = Family::gauge("node_filesystem_files", "Filesystem total file nodes.");
    let mut files_free = Family::gauge(
        "node_filesystem_files_free",
        "Filesystem total free file nodes.",
    );
    let mut readonly = Family::gauge("node_filesystem_readonly", "Filesystem read-only status.");
    let mut device_error = Family::gauge(
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
    );
    for (m, usage) in mounts {
        let labels = vec![
            ("device", m.device.clone()),
            ("mountpoint", m.mount_point.clone()),
            ("fstype", m.fs_type.clone()),
        ];
        device_error.push(labels.clone(), if usage.is_some() { 0.0 } else { 1.0 });
        // Like node_exporter: a mount that could not be stat'ed has only device_error.
        let Some(u) = usage else { continue };
        size.push(labels.clone(), u.size);
        free.push(labels.clone(), u.free);
        avail.push(labels.clone(), u.avail);
        files.push(labels.clone(), u.files);
        files_free.push(labels.clone(), u.files_free);
        let ro = m.options.split(',').any(|o| o == "ro");
        readonly.push(labels, if ro { 1.0 } else { 0.0 });
    }
    vec![size, free, avail, files, files_free, readonly, device_error]
}

fn statvfs(path: &Path) -> std::io::Result<Usage> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes only into `buf`, which is a plain C struct, and reads the
    // NUL-terminated path `c` that outlives the call.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let bsize = buf.f_bsize as f64;
    Ok(Usage {
        size: buf.f_blocks as f64 * bsize,
        free: buf.f_bfree as f64 * bsize,
        avail: buf.f_bavail as f64 * bsize,
        files: buf.f_files as f64,
        files_free: buf.f_ffree as f64,
    })
}

/// Mount points whose statvfs has not returned within [`MOUNT_TIMEOUT`].
#[derive(Debug, Default)]
pub(crate) struct State {
    stuck: Arc<Mutex<HashSet<PathBuf>>>,
}

type StatResult = (usize, std::io::Result<Usage>);

/// statvfs of every path, each given at most `timeout`. Runs in one helper thread per
/// scrape, replaced by a fresh one after a path hangs.
fn stat_all(paths: &[PathBuf], state: &State, timeout: Duration) -> Vec<Option<Usage>> {
    stat_all_with(paths, state, timeout, statvfs)
}

fn stat_all_with<F>(
    paths: &[PathBuf],
    state: &State,
    timeout: Duration,
    stat: F,
) -> Vec<Option<Usage>>
where
    F: Fn(&Path) -> std::io::Result<Usage> + Send + Clone + 'static,
{
    let n = paths.len();
    let mut results: Vec<Option<Option<Usage>>> = vec![None; n];
    let lock = |s: &Arc<Mutex<HashSet<PathBuf>>>| {
        s.lock()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    };
    loop {
        let stuck = lock(&state.stuck);
        let mut pending = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            if stuck.contains(p) {
                log::debug!("mount point {} is still unresponsive", p.display());
                results[i] = Some(None);
            } else {
                pending.push((i, p.clone()));
            }
        }
        if pending.is_empty() {
            break;
        }
        let (tx, rx) = mpsc::channel::<StatResult>();
        let cancel = Arc::new(AtomicBool::new(false));
        let worker_cancel = Arc::clone(&cancel);
        let worker_stuck = Arc::clone(&state.stuck);
        let work = pending.clone();
        let worker_stat = stat.clone();
        let spawned = std::thread::Builder::new()
            .name("nodetap-statvfs".into())
            .spawn(move || {
                for (i, p) in work {
                    if worker_cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = worker_stat(&p);
                    let mut stuck = worker_stuck.lock().unwrap_or_else(|e| e.into_inner());
                    if stuck.remove(&p) {
                        log::info!("mount point {} answers again", p.display());
                    }
                    drop(stuck);
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            // No thread: stat inline rather than report nothing.
            log::debug!("cannot spawn statvfs thread: {e}");
            for (i, p) in pending {
                results[i] = Some(stat(&p).ok());
            }
            break;
        }
        for (i, _) in &pending {
            match rx.recv_timeout(timeout) {
                Ok((j, r)) => {
                    if let Err(e) = &r {
                        log::debug!("statvfs {}: {e}", paths[j].display());
                    }
                    results[j] = Some(r.ok());
                }
                Err(RecvTimeoutError::Timeout) => {
                    // The worker is blocked on the first path it has not answered for.
                    log::warn!(
                        "statvfs {} did not return within {timeout:?}: reporting device_error until it does",
                        paths[*i].display()
                    );
                    state
                        .stuck
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(paths[*i].clone());
                    results[*i] = Some(None);
                    cancel.store(true, Ordering::Relaxed);
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Anything still unanswered after a disconnect is an error, not a retry.
        if !cancel.load(Ordering::Relaxed) {
            for (i, _) in &pending {
                results[*i].get_or_insert(None);
            }
        }
    }
    results.into_iter().map(Option::flatten).collect()
}

fn read_mounts(ctx: &Ctx) -> Result<Vec<Mount>, CollectError> {
    let primary = ctx.proc("1/mountinfo");
    match read_parse(&primary, parse) {
        Err(CollectError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // hidepid=2 hides PID 1 from us.
            read_parse(&ctx.proc("self/mountinfo"), parse)
        }
        other => other,
    }
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let mounts = select(read_mounts(ctx)?, &ctx.rootfs, &ctx.filters);
    let paths: Vec<PathBuf> = mounts
        .iter()
        .map(|m| join_rooted(&ctx.rootfs, &m.mount_point))
        .collect();
    let usage = stat_all(&paths, &ctx.filesystem, MOUNT_TIMEOUT);
    let pairs: Vec<(Mount, Option<Usage>)> = mounts.into_iter().zip(usage).collect();
    Ok(render(&pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn real_mountinfo_keeps_only_root() {
        let mounts = parse(&testutil::read("real", "proc/1/mountinfo")).unwrap();
        assert!(mounts.len() > 5);
        let sel = select(mounts, Path::new("/"), &Filters::default());
        assert_eq!(
            sel,
            vec![Mount {
                device: "/dev/vda".into(),
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                options: "rw,relatime".into(),
            }]
        );
    }

    #[test]
    fn exclusions() {
        for yes in [
            "/dev",
            "/dev/shm",
            "/proc",
            "/run",
            "/run/user/0",
            "/sys/fs/cgroup",
            "/mnt",
            "/mnt/x",
            "/media/usb",
            "/var/lib/docker/overlay2/x/merged",
            "/var/lib/containers/storage/overlay",
        ] {
            assert!(mount_point_excluded(yes), "{yes}");
        }
        for no in [
            "/",
            "/devices",
            "/home",
            "/var/lib/docker",
            "/var/lib/docker/",
            "/running",
            "/boot/efi",
            "/var/lib/kubelet/pods/x/volumes/kubernetes.io~secret/token",
            "relative",
        ] {
            assert!(!mount_point_excluded(no), "{no}");
        }
    }

    #[test]
    fn rootfs_prefix() {
        assert_eq!(strip_rootfs(Path::new("/"), "/var"), "/var");
        assert_eq!(strip_rootfs(Path::new("/host"), "/host"), "/");
        assert_eq!(
            strip_rootfs(Path::new("/host/"), "/host/var/lib"),
            "/var/lib"
        );
        assert_eq!(strip_rootfs(Path::new("/host"), "/hostile"), "/hostile");
        assert_eq!(strip_rootfs(Path::new("/host"), "/proc"), "/proc");
    }

    #[test]
    fn escapes_optional_fields_and_duplicates() {
        let text = "\
36 35 98:0 /mnt1 /srv/my\\040data rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue
37 35 0:50 / /export ro,relatime - nfs4 [fd00::1]:/export rw,vers=4.2
38 35 0:50 / /export ro,relatime - nfs4 [fd00::1]:/export rw,vers=4.2
39 35 0:51 / /sys/fs/bpf rw - bpf bpf rw
40 35 0:52 / /data\\012x rw - tmpfs tmpfs rw
";
        let sel = select(parse(text).unwrap(), Path::new("/"), &Filters::default());
        assert_eq!(sel.len(), 3);
        assert_eq!(sel[0].mount_point, "/srv/my data");
        assert_eq!(sel[0].fs_type, "ext3");
        assert_eq!(sel[0].device, "/dev/root");
        assert_eq!(sel[1].device, "[fd00::1]:/export");
        assert_eq!(sel[2].mount_point, "/data\nx");
        let out = testutil::render(render(&[
            (
                sel[1].clone(),
                Some(Usage {
                    size: 4096.0,
                    free: 0.0,
                    avail: 0.0,
                    files: 1.0,
                    files_free: 0.0,
                }),
            ),
            (sel[2].clone(), None),
        ]));
        assert!(out.contains(
            "node_filesystem_readonly{device=\"[fd00::1]:/export\",fstype=\"nfs4\",mountpoint=\"/export\"} 1\n"
        ), "{out}");
        assert!(out.contains(
            "node_filesystem_device_error{device=\"tmpfs\",fstype=\"tmpfs\",mountpoint=\"/data\\nx\"} 1\n"
        ), "{out}");
        assert!(!out.contains("node_filesystem_size_bytes{device=\"tmpfs\""));
    }

    #[test]
    fn errors() {
        assert!(parse("1 2 3\n").is_err());
        assert!(parse("1 2 x 4 5 6 7 8 9 10\n").is_err());
        assert!(parse("1 2 0:1 / / rw a b c d\n").is_err());
        assert!(parse("1 2 0:1 / / rw a b c -\n").is_err());
        assert!(parse("\n").unwrap().is_empty());
    }

    #[test]
    fn stats_real_directories_and_reports_missing_ones() {
        let state = State::default();
        let tmp = std::env::temp_dir();
        let r = stat_all(
            &[tmp.clone(), PathBuf::from("/nonexistent/mount"), tmp],
            &state,
            MOUNT_TIMEOUT,
        );
        assert!(r[0].is_some_and(|u| u.size > 0.0 && u.size >= u.free && u.free >= u.avail));
        assert!(r[1].is_none());
        assert!(r[2].is_some());
    }

    #[test]
    fn a_hung_mount_times_out_and_is_skipped_until_it_answers() {
        use std::sync::atomic::AtomicUsize;
        static HANGS: AtomicUsize = AtomicUsize::new(0);
        fn fake(p: &Path) -> std::io::Result<Usage> {
            if p == Path::new("/hang") && HANGS.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(900));
            }
            Ok(Usage {
                size: 1.0,
                free: 1.0,
                avail: 1.0,
                files: 1.0,
                files_free: 1.0,
            })
        }
        let state = State::default();
        let paths = [
            PathBuf::from("/a"),
            PathBuf::from("/hang"),
            PathBuf::from("/b"),
        ];
        let timeout = Duration::from_millis(300);
        let r = stat_all_with(&paths, &state, timeout, fake);
        assert_eq!(
            r.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true]
        );
        // While the call is stuck, the mount is reported at once, without a new call.
        let start = std::time::Instant::now();
        let r = stat_all_with(&paths, &state, timeout, fake);
        assert_eq!(
            r.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert!(start.elapsed() < Duration::from_millis(250));
        assert_eq!(HANGS.load(Ordering::SeqCst), 1);
        // Once the stuck call returns, the mount is stat'ed again.
        std::thread::sleep(Duration::from_millis(1000));
        let r = stat_all_with(&paths, &state, timeout, fake);
        assert!(r.iter().all(Option::is_some));
    }

    #[test]
    fn rootfs_is_honoured() {
        // The fixture's mountinfo lists "/" for /dev/vda: with rootfs pointing at a
        // directory that exists, it is stat'ed there.
        let ctx = testutil::ctx("real");
        let out = testutil::render(collect(&ctx).unwrap());
        assert!(out.contains(
            "node_filesystem_device_error{device=\"/dev/vda\",fstype=\"ext4\",mountpoint=\"/\"} 0\n"
        ), "{out}");
        assert!(out.contains(
            "node_filesystem_size_bytes{device=\"/dev/vda\",fstype=\"ext4\",mountpoint=\"/\"}"
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
            let _ = mount_point_excluded(&s);
            let _ = strip_rootfs(Path::new("/host"), &s);
        }

        #[test]
        fn parse_never_panics_on_mountinfo_like(s in "([0-9]{1,2} [0-9]{1,2} [0-9:x]{1,5} / [a-z/\\\\0-9]{1,10} (rw|ro)( [a-z:0-9]{1,6}){0,3}( -)?( [a-z0-9/]{1,6}){0,3}\n){0,4}") {
            if let Ok(m) = parse(&s) { let _ = select(m, Path::new("/"), &Filters::default()); }
        }
    }
}
