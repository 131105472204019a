//! Start-up checks: what the kernel and the process offer, printed as one report before
//! anything is loaded. A missing hard requirement stops the agent with a message naming
//! it and the fix.

use std::{
    ffi::CString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const BPFFS_PATH: &str = "/sys/fs/bpf";

/// Capabilities the agent uses (include/uapi/linux/capability.h): CAP_BPF and
/// CAP_PERFMON (or CAP_SYS_ADMIN) to load and attach; CAP_NET_ADMIN for the cgroup_skb
/// byte accounting; CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH for other processes'
/// /proc entries. Not CAP_SYS_RESOURCE: since Linux 5.11 (older than MIN_KERNEL) eBPF
/// memory is charged to the cgroup, not to RLIMIT_MEMLOCK.
const CAPS: [(u32, &str); 6] = [
    (12, "CAP_NET_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
    (2, "CAP_DAC_READ_SEARCH"),
];

/// Oldest kernel the kernel programs load on: bpf_loop (5.17) walks iovecs; ring
/// buffers (5.8) and BTF are older.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// (major, minor) from a release string like "6.1.109-118.189.amzn2023.x86_64".
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("kernel {release} is older than {}.{}: nodetap's kernel programs need bpf_loop (Linux 5.17 or newer; EKS AMIs with kernel 6.1 have it)", MIN_KERNEL.0, MIN_KERNEL.1)]
    OldKernel { release: String },
    #[error("kernel BTF is missing ({BTF_PATH}): nodetap needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (any EKS AMI or distribution kernel since 5.8 has it)")]
    NoBtf,
    #[error("missing capabilities {missing}: run nodetap as root, or grant CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load the kernel programs, CAP_NET_ADMIN for the network byte accounting, and CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read other processes' /proc entries (the systemd unit's AmbientCapabilities; in Kubernetes the container's securityContext capabilities)")]
    Capabilities { missing: String },
    #[error("tracefs is not mounted and could not be mounted at /sys/kernel/tracing: run `mount -t tracefs nodev /sys/kernel/tracing` (in a container, mount the host's /sys/kernel/tracing)")]
    NoTracefs,
}

/// Where cgroup v2 is mounted, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v2 only, at the given path (usually /sys/fs/cgroup).
    Unified(PathBuf),
    /// v1 controllers with v2 beside them (usually /sys/fs/cgroup/unified).
    Hybrid(PathBuf),
    /// Only cgroup v1: cgroup ids reported by the kernel do not map to paths.
    V1Only,
}

impl CgroupLayout {
    /// Where the v2 hierarchy is mounted, if it is.
    pub fn v2_root(&self) -> Option<&std::path::Path> {
        match self {
            Self::Unified(p) | Self::Hybrid(p) => Some(p),
            Self::V1Only => None,
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub capabilities: Vec<&'static str>,
    pub tracefs: Option<PathBuf>,
    pub tracefs_mounted_by_us: bool,
    pub bpffs: bool,
    pub bpffs_mounted_by_us: bool,
    pub cgroup: CgroupLayout,
}

impl Report {
    /// Hard requirements; the caller exits with this error's message.
    pub fn check(&self) -> Result<(), PreflightError> {
        if kernel_version(&self.kernel).is_some_and(|v| v < MIN_KERNEL) {
            return Err(PreflightError::OldKernel {
                release: self.kernel.clone(),
            });
        }
        if !self.btf {
            return Err(PreflightError::NoBtf);
        }
        let has = |c: &str| self.capabilities.contains(&c);
        let can_bpf = has("CAP_SYS_ADMIN") || (has("CAP_BPF") && has("CAP_PERFMON"));
        if !can_bpf {
            let missing: Vec<&str> = ["CAP_BPF", "CAP_PERFMON"]
                .into_iter()
                .filter(|c| !has(c))
                .collect();
            return Err(PreflightError::Capabilities {
                missing: missing.join(", "),
            });
        }
        if self.tracefs.is_none() {
            return Err(PreflightError::NoTracefs);
        }
        Ok(())
    }

    pub fn render(&self) -> String {
        let mut s = String::from("nodetap start-up report\n");
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let _ = writeln!(s, "  kernel:        {}", self.kernel);
        let _ = writeln!(s, "  BTF:           {} ({BTF_PATH})", yes(self.btf));
        let _ = writeln!(s, "  capabilities:  {}", self.capabilities.join(" "));
        match &self.tracefs {
            Some(p) => {
                let how = if self.tracefs_mounted_by_us {
                    " (mounted by nodetap)"
                } else {
                    ""
                };
                let _ = writeln!(s, "  tracefs:       {}{how}", p.display());
            }
            None => {
                let _ = writeln!(s, "  tracefs:       NOT MOUNTED");
            }
        }
        let how = if self.bpffs_mounted_by_us {
            " (mounted by nodetap)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  bpffs:         {}{how}",
            if self.bpffs {
                BPFFS_PATH
            } else {
                "not mounted (not needed: nodetap pins nothing)"
            }
        );
        let cg = match &self.cgroup {
            CgroupLayout::Unified(p) => format!("v2 unified at {}", p.display()),
            CgroupLayout::Hybrid(p) => {
                format!("v2 hybrid at {} (v1 controllers beside it)", p.display())
            }
            CgroupLayout::V1Only => "v1 only (no cgroup v2 mount found)".into(),
        };
        let _ = writeln!(s, "  cgroup:        {cg}");
        s
    }
}

/// Runs the checks, mounting tracefs and bpffs if they are absent and we may.
pub fn run() -> Report {
    let kernel = kernel_release();
    let btf = Path::new(BTF_PATH).exists();
    let capabilities =
        effective_caps(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = parse_mountinfo(&mountinfo);

    let mut tracefs = TRACEFS_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir());
    let mut tracefs_mounted_by_us = false;
    if tracefs.is_none() && mount("nodev", TRACEFS_PATHS[0], "tracefs") {
        tracefs = Some(PathBuf::from(TRACEFS_PATHS[0]));
        tracefs_mounted_by_us = true;
    }
    let mut bpffs = mounts.iter().any(|(_, fs)| fs == "bpf");
    let mut bpffs_mounted_by_us = false;
    if !bpffs && Path::new(BPFFS_PATH).is_dir() && mount("bpf", BPFFS_PATH, "bpf") {
        bpffs = true;
        bpffs_mounted_by_us = true;
    }
    Report {
        kernel,
        btf,
        capabilities,
        tracefs,
        tracefs_mounted_by_us,
        bpffs,
        bpffs_mounted_by_us,
        cgroup: cgroup_layout(&mounts),
    }
}

fn kernel_release() -> String {
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

fn mount(source: &str, target: &str, fstype: &str) -> bool {
    let (Ok(src), Ok(dst), Ok(fs)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return false;
    };
    unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) == 0 }
}

/// The capabilities named in [`CAPS`] that `CapEff` in /proc/self/status holds.
pub fn effective_caps(status: &str) -> Vec<&'static str> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    CAPS.iter()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// (mount point, filesystem type) pairs from /proc/self/mountinfo.
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            Some((PathBuf::from(mount_point), fstype.to_owned()))
        })
        .collect()
}

pub fn cgroup_layout(mounts: &[(PathBuf, String)]) -> CgroupLayout {
    let v2 = mounts
        .iter()
        .find(|(_, fs)| fs == "cgroup2")
        .map(|(p, _)| p.clone());
    let v1 = mounts.iter().any(|(_, fs)| fs == "cgroup");
    match (v2, v1) {
        (Some(p), false) => CgroupLayout::Unified(p),
        (Some(p), true) => CgroupLayout::Hybrid(p),
        (None, _) => CgroupLayout::V1Only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_effective_capabilities() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let caps = effective_caps(root);
        assert!(
            caps.contains(&"CAP_BPF") && caps.contains(&"CAP_SYS_ADMIN"),
            "{caps:?}"
        );
        let bpf_only = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1u64 << 38));
        assert_eq!(effective_caps(&bpf_only), vec!["CAP_PERFMON", "CAP_BPF"]);
        assert!(effective_caps("garbage").is_empty());
    }

    #[test]
    fn finds_hybrid_and_unified_cgroup_v2() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup_layout(&parse_mountinfo(hybrid)),
            CgroupLayout::Hybrid("/sys/fs/cgroup/unified".into())
        );
        let unified = "31 25 0:27 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_layout(&parse_mountinfo(unified)),
            CgroupLayout::Unified("/sys/fs/cgroup".into())
        );
        assert_eq!(cgroup_layout(&parse_mountinfo("")), CgroupLayout::V1Only);
    }

    #[test]
    fn missing_requirements_name_the_fix() {
        let report = Report {
            kernel: "6.1".into(),
            btf: true,
            capabilities: vec!["CAP_BPF"],
            tracefs: Some("/sys/kernel/tracing".into()),
            tracefs_mounted_by_us: false,
            bpffs: false,
            bpffs_mounted_by_us: false,
            cgroup: CgroupLayout::V1Only,
        };
        let err = report.check().unwrap_err().to_string();
        assert!(
            err.starts_with("missing capabilities CAP_PERFMON: run nodetap as root"),
            "{err}"
        );
        // The fix names exactly the capabilities the systemd unit grants, and nothing
        // the agent does not use (CAP_SYS_RESOURCE was once named here).
        let unit = include_str!("../../deploy/systemd/nodetap.service");
        let granted: Vec<&str> = unit
            .lines()
            .find_map(|l| l.strip_prefix("AmbientCapabilities="))
            .expect("the unit sets AmbientCapabilities")
            .split_whitespace()
            .collect();
        let named: Vec<&str> = err
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|w| w.starts_with("CAP_"))
            .collect();
        for cap in &granted {
            assert!(named.contains(cap), "{cap} not named in: {err}");
        }
        for cap in &named {
            assert!(
                granted.contains(cap) || *cap == "CAP_SYS_ADMIN",
                "{cap} named but the unit does not grant it: {err}"
            );
        }
        let no_btf = Report {
            btf: false,
            ..report
        };
        assert!(no_btf
            .check()
            .unwrap_err()
            .to_string()
            .contains("CONFIG_DEBUG_INFO_BTF"));
    }
}
