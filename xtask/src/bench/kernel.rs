//! The kernel's own accounting of eBPF programs, for benchmarks: which programs a process
//! holds, where each is attached, and their run time and run count
//! (`kernel.bpf_stats_enabled`, read back as `run_time_ns`/`run_cnt`).
//!
//! Programs are found by the process that holds them (the `prog_id` of its program and
//! link file descriptors in /proc/<pid>/fdinfo), not by name, and grouped by program type,
//! so a bench keeps working when the agent's programs are renamed or replaced.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
const TRACEFS: &str = "/sys/kernel/tracing";

/// The kernel's per-program run-time statistics, on while this lives. They cost a clock
/// read per program run, so benches switch them on only for what they measure; the
/// previous setting comes back on drop.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn on() -> Result<StatsEnabled> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing {STATS_SYSCTL}"))?;
        Ok(StatsEnabled {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.previous);
    }
}

/// What a program is for, from its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// Tracepoint, raw tracepoint and BTF tracepoint (`tracing`) programs: the capture
    /// path (syscall or socket tracepoints) and connection life.
    Capture,
    /// cgroup_skb programs: per-packet byte accounting.
    Bytes,
    /// Anything else (sock_ops, uprobes, ...).
    Other,
}

impl Group {
    fn of(kind: &str) -> Group {
        match kind {
            "tracepoint" | "raw_tracepoint" | "raw_tracepoint_writable" | "tracing" => {
                Group::Capture
            }
            "cgroup_skb" => Group::Bytes,
            _ => Group::Other,
        }
    }
}

/// One program a process holds.
#[derive(Clone, Debug)]
pub struct Program {
    pub id: u32,
    /// The kernel's name (cut at 15 characters).
    pub name: String,
    /// bpftool's program type (`tracepoint`, `cgroup_skb`, ...).
    pub kind: String,
    pub group: Group,
    /// Where it is attached, as far as the kernel says (`syscalls:sys_enter_read`,
    /// `raw:sys_enter`, `btf:inet_sock_set_state`, `cgroup ingress`), else empty.
    pub hook: String,
}

/// Run count and nanoseconds per program id.
#[derive(Clone, Debug, Default)]
pub struct Sample(BTreeMap<u32, (f64, f64)>);

impl Sample {
    /// `self - earlier`, per program.
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample(
            self.0
                .iter()
                .map(|(id, (runs, ns))| {
                    let (r0, n0) = earlier.0.get(id).copied().unwrap_or_default();
                    (*id, (runs - r0, ns - n0))
                })
                .collect(),
        )
    }

    /// (runs, ns) of one program.
    pub fn of(&self, id: u32) -> (f64, f64) {
        self.0.get(&id).copied().unwrap_or_default()
    }
}

/// The programs one process holds.
pub struct Held {
    pub pid: u32,
    pub programs: Vec<Program>,
}

impl Held {
    /// The programs `pid` holds (program and link descriptors), with bpftool's names and
    /// types and where each is attached.
    pub fn of(pid: u32) -> Result<Held> {
        let fds = fdinfo(pid)?;
        let ids: BTreeSet<u32> = fds.iter().filter_map(|f| num(f, "prog_id")).collect();
        ensure!(!ids.is_empty(), "process {pid} holds no eBPF programs");
        let mut hooks: BTreeMap<u32, String> = BTreeMap::new();
        // Tracepoints and raw tracepoints held as perf event or raw tracepoint
        // descriptors: the kernel's answer per descriptor (BPF_TASK_FD_QUERY).
        for p in bpftool(&["perf", "show"])?.as_array().into_iter().flatten() {
            if p["pid"].as_u64() != Some(pid.into()) {
                continue;
            }
            let Some(id) = p["prog_id"].as_u64() else {
                continue;
            };
            let hook = match (p["fd_type"].as_str(), p["tracepoint"].as_str()) {
                (Some("tracepoint"), Some(tp)) => {
                    tracepoint_path(tp).unwrap_or_else(|| tp.to_owned())
                }
                (Some("raw_tracepoint"), Some(tp)) => format!("raw:{tp}"),
                (Some(kind), _) => kind.to_owned(),
                _ => continue,
            };
            hooks.insert(id as u32, hook);
        }
        // Links: perf and raw tracepoint links name their tracepoint, BTF tracepoints
        // their target by BTF id, cgroup links their direction.
        let mut btf_targets = Vec::new();
        for f in &fds {
            let (Some(id), Some(link)) = (num(f, "prog_id"), field(f, "link_type")) else {
                continue;
            };
            match link {
                // Perf event links name their tracepoint since Linux 6.6.
                "perf" => {
                    if let (Some("tracepoint"), Some(tp)) =
                        (field(f, "event_type"), field(f, "tp_name"))
                    {
                        hooks.insert(id, tracepoint_path(tp).unwrap_or_else(|| tp.to_owned()));
                    }
                }
                "raw_tracepoint" => {
                    if let Some(tp) = field(f, "tp_name") {
                        hooks.insert(id, format!("raw:{tp}"));
                    }
                }
                "tracing" => {
                    if let Some(btf) = num(f, "target_btf_id") {
                        btf_targets.push((id, btf));
                    }
                }
                "cgroup" => {
                    // enum bpf_attach_type: BPF_CGROUP_INET_INGRESS = 0, _EGRESS = 1.
                    let dir = match num(f, "attach_type") {
                        Some(0) => "ingress",
                        Some(1) => "egress",
                        _ => "?",
                    };
                    hooks.insert(id, format!("cgroup {dir}"));
                }
                _ => {}
            }
        }
        if !btf_targets.is_empty() {
            let names = btf_names(btf_targets.iter().map(|t| t.1).collect())?;
            for (id, btf) in btf_targets {
                if let Some(name) = names.get(&btf) {
                    let tp = name.strip_prefix("btf_trace_").unwrap_or(name);
                    hooks.insert(id, format!("btf:{tp}"));
                }
            }
        }
        let mut programs = Vec::new();
        for p in bpftool(&["prog", "show"])?.as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_u64().map(|i| i as u32) else {
                continue;
            };
            if !ids.contains(&id) {
                continue;
            }
            let kind = p["type"].as_str().unwrap_or("?").to_owned();
            programs.push(Program {
                id,
                name: p["name"].as_str().unwrap_or("").to_owned(),
                group: Group::of(&kind),
                kind,
                hook: hooks.remove(&id).unwrap_or_default(),
            });
        }
        programs.sort_by(|a, b| (a.group, &a.hook, &a.name).cmp(&(b.group, &b.hook, &b.name)));
        Ok(Held { pid, programs })
    }

    /// Waits up to `timeout` until `pid` holds at least `count` programs.
    pub fn wait_for(pid: u32, count: usize, timeout: Duration) -> Result<Held> {
        let deadline = Instant::now() + timeout;
        loop {
            let held = fdinfo(pid).map(|fds| {
                fds.iter()
                    .filter_map(|f| num(f, "prog_id"))
                    .collect::<BTreeSet<_>>()
                    .len()
            });
            if held.as_ref().is_ok_and(|&n| n >= count) {
                return Held::of(pid);
            }
            ensure!(
                Instant::now() < deadline,
                "process {pid} did not hold {count} eBPF programs within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Run counts and times of these programs now (zero while statistics are off).
    pub fn sample(&self) -> Result<Sample> {
        let mut s = Sample::default();
        for p in bpftool(&["prog", "show"])?.as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_u64().map(|i| i as u32) else {
                continue;
            };
            if self.programs.iter().any(|q| q.id == id) {
                let runs = p["run_cnt"].as_f64().unwrap_or(0.0);
                let ns = p["run_time_ns"].as_f64().unwrap_or(0.0);
                s.0.insert(id, (runs, ns));
            }
        }
        Ok(s)
    }

    /// (runs, ns) of a group in a sample (or a difference of samples).
    pub fn group(&self, sample: &Sample, group: Group) -> (f64, f64) {
        self.programs
            .iter()
            .filter(|p| p.group == group)
            .map(|p| sample.of(p.id))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The tracepoints under the capture programs, each as the kind of hook it is, for
    /// no-op programs on the same kernel hooks: a raw or BTF tracepoint costs less to
    /// enter than a classic (perf event) tracepoint of the same name, so each is matched
    /// by its own kind.
    pub fn capture_hooks(&self) -> Vec<Hook> {
        let set: BTreeSet<Hook> = self
            .programs
            .iter()
            .filter(|p| p.group == Group::Capture && !p.hook.is_empty())
            .filter_map(|p| {
                if let Some(name) = p
                    .hook
                    .strip_prefix("raw:")
                    .or_else(|| p.hook.strip_prefix("btf:"))
                {
                    return Some(Hook::Raw(name.to_owned()));
                }
                if p.hook.contains(':') {
                    Some(Hook::Classic(p.hook.clone()))
                } else {
                    tracepoint_path(&p.hook).map(Hook::Classic)
                }
            })
            .collect();
        set.into_iter().collect()
    }

    /// Both processes' programs as one set (the floor's bpftrace and this process).
    pub fn with(mut self, other: Held) -> Held {
        self.programs.extend(other.programs);
        self
    }
}

/// The bpf(2) syscall with a 128-byte `union bpf_attr`; the descriptor it returns.
fn bpf(cmd: libc::c_long, attr: &[u8; 128]) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A tracepoint the agent's capture programs run on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// A classic tracepoint, `category:name` (bpftrace `tracepoint:`).
    Classic(String),
    /// A raw or BTF tracepoint, by name.
    Raw(String),
}

/// No-op raw tracepoint programs (`r0 = 0; exit`), one per tracepoint name, attached while
/// this lives: the floor of the agent's raw and BTF tracepoints (bpftrace 0.17, Debian's,
/// has no raw tracepoint probes). Loaded by the bpf(2) syscall directly; this process
/// holds them, so `Held::of(std::process::id())` finds them.
pub struct RawNoop {
    _fds: Vec<std::os::fd::OwnedFd>,
}

impl RawNoop {
    pub fn attach(names: &[String]) -> Result<RawNoop> {
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
        const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
        // mov64 r0, 0; exit
        let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), 0x95];
        let license = c"GPL";
        let mut fds = Vec::new();
        for name in names {
            // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, then
            // log_level, log_size, log_buf, kern_version, prog_flags, prog_name[16].
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
            attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
            attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
            attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
            attr[48..52].copy_from_slice(b"noop");
            let prog =
                bpf(BPF_PROG_LOAD, &attr).context("loading a no-op raw tracepoint program")?;
            // raw_tracepoint: name (a pointer), prog_fd.
            let cname = std::ffi::CString::new(name.as_str())?;
            let mut attr = [0u8; 128];
            attr[0..8].copy_from_slice(&(cname.as_ptr() as u64).to_ne_bytes());
            attr[8..12]
                .copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&prog) as u32).to_ne_bytes());
            let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &attr)
                .with_context(|| format!("attaching a no-op program to raw tracepoint {name}"))?;
            fds.push(prog);
            fds.push(link);
        }
        Ok(RawNoop { _fds: fds })
    }
}

/// `category:name` of a tracepoint known by its name alone, from tracefs.
fn tracepoint_path(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let events = Path::new(TRACEFS).join("events");
    std::fs::read_dir(&events).ok()?.flatten().find_map(|dir| {
        dir.path()
            .join(name)
            .is_dir()
            .then(|| format!("{}:{name}", dir.file_name().to_string_lossy()))
    })
}

/// Mounts tracefs at /sys/kernel/tracing if it is not there (bpftrace and tracepoint
/// lookups need it); unmounts on drop what it mounted.
pub struct Tracefs {
    mounted: Option<PathBuf>,
}

impl Tracefs {
    pub fn ensure() -> Result<Tracefs> {
        let path = PathBuf::from(TRACEFS);
        if path.join("events").is_dir() {
            return Ok(Tracefs { mounted: None });
        }
        crate::run_cmd(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
        Ok(Tracefs {
            mounted: Some(path),
        })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if let Some(p) = &self.mounted {
            let _ = Command::new("umount").arg(p).status();
        }
    }
}

/// The `key:\tvalue` lines of every descriptor of `pid`, one map per descriptor.
fn fdinfo(pid: u32) -> Result<Vec<BTreeMap<String, String>>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        out.push(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        );
    }
    Ok(out)
}

fn field<'a>(f: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    f.get(key).map(String::as_str)
}

fn num(f: &BTreeMap<String, String>, key: &str) -> Option<u32> {
    field(f, key).and_then(|v| v.parse().ok())
}

fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("bpftool")
        .args(args)
        .arg("-j")
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout).context("bpftool's JSON")
}

/// Names of kernel BTF types by id (`bpftool btf dump file /sys/kernel/btf/vmlinux`).
fn btf_names(mut ids: Vec<u32>) -> Result<BTreeMap<u32, String>> {
    ids.sort_unstable();
    let out = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ])
        .output()
        .context("running bpftool btf dump")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // [1234] TYPEDEF 'btf_trace_inet_sock_set_state' type_id=...
            let (id, rest) = l.strip_prefix('[')?.split_once(']')?;
            let id: u32 = id.parse().ok()?;
            ids.binary_search(&id).ok()?;
            let name = rest.split('\'').nth(1)?;
            Some((id, name.to_owned()))
        })
        .collect())
}
