//! Loading and attaching the kernel programs embedded in the binary, and choosing the
//! capture tier.

pub mod btf;

use agent_common::{
    Config, DropReason, Instruction, SummaryRecord, Syscall, Tier, DROP_REASONS, GLOBAL_CONFIG,
    MAP_CLOSED, MAP_DROPS, MAP_EVENTS, MAP_INSTRUCTIONS, MAP_INSTRUCTION_GEN, MAP_REPORT_EPOCH,
    MAP_STATS, MAP_SYSCALL_TABLE, PAYLOAD_BUFFER, PAYLOAD_IOVEC, PAYLOAD_MSGHDR, PAYLOAD_NONE,
    STAT_STATES_CREATED, STAT_STATES_IGNORED,
};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TracePoint},
    Btf, Ebpf, EbpfLoader,
};

use crate::config::CaptureMode;

/// The kernel programs, built by build.rs from agent-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodetap.bpf.o"));

/// Whether the agent can run without a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Without it the agent's numbers would be wrong: start-up fails.
    Required,
    /// Without it some traffic is not seen: a warning and `nodetap_probe_attached 0`.
    Optional,
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A classic tracepoint: category and name.
    Tracepoint(&'static str, &'static str),
    /// A BTF tracepoint (tp_btf): the raw tracepoint's name.
    BtfTracepoint(&'static str),
}

/// One kernel program: its name in the object, where it attaches, whether the agent can
/// do without it, and the tier it belongs to (`None`: every tier).
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub program: &'static str,
    pub attach: Attach,
    pub need: Need,
    pub tier: Option<Tier>,
}

const fn syscall_hook(program: &'static str, need: Need) -> Hook {
    Hook {
        program,
        attach: Attach::Tracepoint("syscalls", program),
        need,
        tier: Some(Tier::Syscall),
    }
}

/// Every tracing program, in attach order. The connection life cycle comes first so a
/// connection's role is known before its first data call; a syscall's exit comes before
/// its entry so a call is never entered without its exit hooked. The data syscalls have
/// only their exits (their arguments are read from the task's registers there).
pub const HOOKS: &[Hook] = &[
    Hook {
        program: "inet_sock_set_state",
        attach: Attach::BtfTracepoint("inet_sock_set_state"),
        need: Need::Required,
        tier: None,
    },
    Hook {
        program: "sock_send_length",
        attach: Attach::BtfTracepoint("sock_send_length"),
        need: Need::Required,
        tier: Some(Tier::Socket),
    },
    Hook {
        program: "sock_recv_length",
        attach: Attach::BtfTracepoint("sock_recv_length"),
        need: Need::Required,
        tier: Some(Tier::Socket),
    },
    // The fd cache (agent-ebpf/src/fd_cache.rs): what replaces an fd without the data
    // syscalls seeing it. Required: without one of them a cached "not a socket" could
    // outlive its fd and hide a socket's traffic. Each exit before its entry, and all
    // before the data hooks: an entry cached while a close went unseen would be stale.
    syscall_hook("sys_exit_close", Need::Required),
    syscall_hook("sys_enter_close", Need::Required),
    syscall_hook("sys_exit_dup2", Need::Required),
    syscall_hook("sys_enter_dup2", Need::Required),
    syscall_hook("sys_exit_dup3", Need::Required),
    syscall_hook("sys_enter_dup3", Need::Required),
    syscall_hook("sys_exit_close_range", Need::Required),
    syscall_hook("sys_enter_close_range", Need::Required),
    syscall_hook("sys_exit_clone", Need::Required),
    syscall_hook("sys_enter_clone", Need::Required),
    syscall_hook("sys_exit_clone3", Need::Required),
    syscall_hook("sys_enter_clone3", Need::Required),
    syscall_hook("sys_enter_unshare", Need::Required),
    syscall_hook("sys_enter_io_uring_setup", Need::Required),
    syscall_hook("sys_enter_io_uring_enter", Need::Required),
    Hook {
        program: "sched_process_exec",
        attach: Attach::Tracepoint("sched", "sched_process_exec"),
        need: Need::Required,
        tier: Some(Tier::Syscall),
    },
    Hook {
        program: "sched_process_exit",
        attach: Attach::Tracepoint("sched", "sched_process_exit"),
        need: Need::Required,
        tier: Some(Tier::Syscall),
    },
    syscall_hook("sys_exit_read", Need::Required),
    syscall_hook("sys_exit_write", Need::Required),
    syscall_hook("sys_exit_readv", Need::Required),
    syscall_hook("sys_exit_writev", Need::Required),
    syscall_hook("sys_exit_recvfrom", Need::Required),
    syscall_hook("sys_exit_sendto", Need::Required),
    syscall_hook("sys_exit_recvmsg", Need::Required),
    syscall_hook("sys_exit_sendmsg", Need::Required),
    syscall_hook("sys_exit_recvmmsg", Need::Optional),
    syscall_hook("sys_exit_sendmmsg", Need::Optional),
    syscall_hook("sys_exit_sendfile64", Need::Optional),
    // Cgroups as they are created (agent-ebpf/src/cgroups.rs): without it, a cgroup
    // removed before the agent's walk of the hierarchy saw it leaves its last traffic
    // labelled by process name.
    Hook {
        program: CGROUP_MKDIR_PROGRAM,
        attach: Attach::Tracepoint("cgroup", "cgroup_mkdir"),
        need: Need::Optional,
        tier: None,
    },
];

/// The program that records cgroups as they are created.
const CGROUP_MKDIR_PROGRAM: &str = "nodetap_cgroup_mkdir";

/// Paths of cgroups as they were created, by cgroup v2 id.
pub type CgroupPathsMap = HashMap<MapData, u64, agent_common::CgroupPath>;

/// The hooks of `tier` (and those every tier uses).
pub fn hooks_of(tier: Tier) -> impl Iterator<Item = &'static Hook> {
    HOOKS
        .iter()
        .filter(move |h| h.tier.is_none() || h.tier == Some(tier))
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read the kernel's BTF at {path}")]
    ReadBtf {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel's BTF lacks what nodetap needs")]
    Btf(#[source] btf::BtfError),
    #[error("cannot load the kernel's BTF for BTF tracepoints")]
    KernelBtf(#[source] aya::BtfError),
    #[error("the kernel refused to load nodetap's eBPF programs")]
    Load(#[source] aya::EbpfError),
    #[error("required hooks did not attach: {names}")]
    Required { names: String },
    #[error(
        "--capture-mode socket needs sock:sock_send_length and sock:sock_recv_length \
         (Linux 6.3 or later); use --capture-mode auto or syscall on this kernel"
    )]
    NoSocketTier,
    #[error("eBPF map {name} missing from the object")]
    MissingMap { name: &'static str },
    #[error("cannot count the possible CPUs ({path})")]
    Cpus {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF map {name}: cannot create or fill it")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// What happened to one hook at start-up.
#[derive(Clone, Debug)]
pub struct HookStatus {
    pub program: &'static str,
    pub tracepoint: String,
    pub need: Need,
    /// `None` if attached, else why not.
    pub error: Option<String>,
}

#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The cgroup v2 root the byte accounting attaches to; `None` without cgroup v2.
    pub cgroup2: Option<&'a std::path::Path>,
    /// Entries of each kernel flow table.
    pub flow_entries: u32,
    pub capture_mode: CaptureMode,
    pub call_capture: u32,
    pub ringbuf_bytes: u32,
    pub wakeup_bytes: u32,
}

/// The loaded programs. Dropping this detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    pub tier: Tier,
    pub hooks: Vec<HookStatus>,
    /// The ring buffers, until `take_maps`.
    rings: Vec<MapData>,
    /// Whether each ring has one CPU.
    rings_exclusive: bool,
}

/// Counters the kernel keeps, read from the maps.
pub struct KernelCounters {
    drops: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    report_epoch: Array<MapData, u64>,
    epoch: u64,
    /// Each attached hook's program (its `HookStatus::tracepoint`), to read how many of
    /// its runs the kernel skipped.
    programs: Vec<(String, aya::programs::ProgramFd)>,
}

impl KernelCounters {
    /// Starts a new report epoch: each counts-only connection sends its counters on its
    /// next call. Call once per `DEFAULT_REPORT_INTERVAL_NS`.
    pub fn next_report_epoch(&mut self) {
        self.epoch += 1;
        if let Err(e) = self.report_epoch.set(0, self.epoch, 0) {
            log::debug!("cannot start a report epoch: {e}");
        }
    }

    /// Records lost or degraded so far, by reason, summed over CPUs.
    pub fn drops(&self) -> [(DropReason, u64); DROP_REASONS] {
        DropReason::ALL.map(|reason| {
            let total = self
                .drops
                .get(&(reason as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            (reason, total)
        })
    }

    /// Runs of each attached hook's program that the kernel skipped, so far: a classic
    /// tracepoint's program is skipped while another tracing program runs on its CPU,
    /// a BTF tracepoint's while it already runs there (the kernel's `recursion_misses`,
    /// from the program's fdinfo; Linux 5.12+, absent before). A skipped syscall exit
    /// loses that call's bytes; a skipped `inet_sock_set_state` a role or a close.
    pub fn runs_missed(&self) -> impl Iterator<Item = (&str, u64)> {
        self.programs.iter().filter_map(|(hook, fd)| {
            use std::os::fd::{AsFd, AsRawFd};
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            let text = std::fs::read_to_string(path).ok()?;
            Some((hook.as_str(), recursion_misses(&text)?))
        })
    }

    /// Connection states created, and non-TCP sockets marked, summed over CPUs.
    pub fn states(&self) -> (u64, u64) {
        let sum = |slot| {
            self.stats
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        (sum(STAT_STATES_CREATED), sum(STAT_STATES_IGNORED))
    }
}

/// The `recursion_misses:` line of a program's fdinfo.
pub fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The agent's side of the instructions: what to copy of each connection.
pub struct InstructionMaps {
    pub instructions: HashMap<MapData, u64, Instruction>,
    pub generation: Array<MapData, u64>,
}

/// Close records that found the ring buffer full.
pub type ClosedMap = HashMap<MapData, u64, SummaryRecord>;

/// The maps the capture path reads and writes.
pub struct CaptureMaps {
    /// The ring buffers of records (see `agent_common::RingLayout`).
    pub rings: Vec<MapData>,
    /// Whether each ring has one CPU (its records are then in time order).
    pub rings_exclusive: bool,
    pub counters: KernelCounters,
    pub instructions: InstructionMaps,
    pub closed: ClosedMap,
}

/// Why loading failed, with what happened to each hook (empty if none was tried).
#[derive(Debug)]
pub struct LoadFailure {
    pub error: ProbeError,
    pub hooks: Vec<HookStatus>,
}

/// Loads the programs with offsets for the running kernel, chooses the capture tier, and
/// attaches every hook of it. Returns an error if a required hook failed; the statuses
/// say which.
pub fn load(opts: &LoadOptions<'_>) -> Result<Probes, Box<LoadFailure>> {
    let fail = |error| {
        Box::new(LoadFailure {
            error,
            hooks: Vec::new(),
        })
    };
    let btf_bytes = std::fs::read(crate::preflight::BTF_PATH).map_err(|source| {
        fail(ProbeError::ReadBtf {
            path: crate::preflight::BTF_PATH,
            source,
        })
    })?;
    let kernel = btf::Btf::parse(&btf_bytes)
        .and_then(|b| b.kernel_offsets())
        .map_err(|e| fail(ProbeError::Btf(e)))?;
    let kernel_btf = Btf::from_sys_fs().map_err(|e| fail(ProbeError::KernelBtf(e)))?;
    let cpus = possible_cpus().map_err(fail)?;
    let layout = agent_common::RingLayout::new(opts.ringbuf_bytes, cpus);
    let ring_bytes = layout.bytes;
    let mut config = Config {
        tier: Tier::Syscall as u32,
        agent_pid: std::process::id(),
        // A power of two: the kernel finds a crossing with a mask, not two divisions.
        // Counted per CPU: a ring shared by n CPUs wakes the reader before it holds n
        // thresholds.
        wakeup_bytes: prev_power_of_two(
            opts.wakeup_bytes.min(ring_bytes / 4) / layout.cpus_per_ring(cpus),
        ),
        call_capture: opts.call_capture,
        undecided_bytes: agent_common::DEFAULT_UNDECIDED_BYTES,
        undecided_ring_bytes: ring_bytes / 2,
        kernel,
    };
    // The tier is written into the programs' read-only configuration, so it is chosen
    // before loading: by trying the socket tier's programs in a first load.
    let socket_tier = match opts.capture_mode {
        CaptureMode::Syscall => false,
        CaptureMode::Socket | CaptureMode::Auto => socket_tier_loads(&config, &kernel_btf, opts),
    };
    if opts.capture_mode == CaptureMode::Socket && !socket_tier {
        return Err(fail(ProbeError::NoSocketTier));
    }
    let tier = if socket_tier {
        Tier::Socket
    } else {
        Tier::Syscall
    };
    config.tier = tier as u32;
    let mut ebpf = load_object(&config, opts, cpus).map_err(|e| fail(ProbeError::Load(e)))?;
    // Before any program is attached: a program finding its CPU's slot empty drops.
    let rings = create_rings(&mut ebpf, cpus, layout).map_err(fail)?;

    let mut hooks = Vec::new();
    for hook in hooks_of(tier) {
        let error = attach(&mut ebpf, hook, &kernel_btf).err();
        hooks.push(HookStatus {
            program: hook.program,
            tracepoint: hook_label(hook),
            need: hook.need,
            error,
        });
    }
    for (program, attach_type, label) in NETWORK_HOOKS {
        let error = match opts.cgroup2 {
            Some(root) => attach_cgroup_skb(&mut ebpf, program, attach_type, root).err(),
            None => Some("no cgroup v2 mount: IP bytes per workload are not counted".to_owned()),
        };
        hooks.push(HookStatus {
            program,
            tracepoint: format!(
                "{label} on {}",
                opts.cgroup2.map_or("-".into(), |p| p.display().to_string())
            ),
            need: Need::Optional,
            error,
        });
    }
    let missing: Vec<&str> = hooks
        .iter()
        .filter(|h| h.need == Need::Required && h.error.is_some())
        .map(|h| h.program)
        .collect();
    if !missing.is_empty() {
        return Err(Box::new(LoadFailure {
            error: ProbeError::Required {
                names: missing.join(", "),
            },
            hooks,
        }));
    }
    Ok(Probes {
        ebpf,
        tier,
        hooks,
        rings,
        rings_exclusive: layout.cpus_per_ring(cpus) == 1,
    })
}

fn load_object(config: &Config, opts: &LoadOptions<'_>, cpus: u32) -> Result<Ebpf, aya::EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, config, true)
        .map_max_entries(MAP_EVENTS, cpus)
        .map_max_entries(agent_common::MAP_NET_FLOWS[0], opts.flow_entries)
        .map_max_entries(agent_common::MAP_NET_FLOWS[1], opts.flow_entries)
        .load(EBPF_OBJECT)?;
    fill_syscall_table(&mut ebpf)?;
    Ok(ebpf)
}

/// The socket tier's table of syscalls that carry socket data in their arguments, by
/// x86-64 syscall number (arch/x86/entry/syscalls/syscall_64.tbl): (number, syscall,
/// payload class). Others that reach a socket (splice, sendfile, io_uring) are named
/// but have no payload in their arguments.
///
/// The kernel program reads the number and arguments at x86-64's `struct pt_regs`
/// offsets; on any other architecture those words are other registers, so the table is
/// left empty there and every call is counted (bytes, calls) with no payload, never
/// parsed from a wrong register (docs/capture.md, "Limits").
#[cfg(target_arch = "x86_64")]
const SYSCALL_TABLE: &[(u32, Syscall, u32)] = X86_64_SYSCALLS;
#[cfg(not(target_arch = "x86_64"))]
const SYSCALL_TABLE: &[(u32, Syscall, u32)] = &[];

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const X86_64_SYSCALLS: &[(u32, Syscall, u32)] = &[
    (0, Syscall::Read, PAYLOAD_BUFFER),
    (1, Syscall::Write, PAYLOAD_BUFFER),
    (19, Syscall::Readv, PAYLOAD_IOVEC),
    (20, Syscall::Writev, PAYLOAD_IOVEC),
    (40, Syscall::Sendfile, PAYLOAD_NONE),
    (44, Syscall::Sendto, PAYLOAD_BUFFER),
    (45, Syscall::Recvfrom, PAYLOAD_BUFFER),
    (46, Syscall::Sendmsg, PAYLOAD_MSGHDR),
    (47, Syscall::Recvmsg, PAYLOAD_MSGHDR),
    (275, Syscall::Splice, PAYLOAD_NONE),
    (299, Syscall::Recvmmsg, PAYLOAD_NONE),
    (307, Syscall::Sendmmsg, PAYLOAD_NONE),
    // preadv2/pwritev2 with offset -1 are readv/writev (sockets have no offset).
    (327, Syscall::Readv, PAYLOAD_IOVEC),
    (328, Syscall::Writev, PAYLOAD_IOVEC),
    (426, Syscall::IoUring, PAYLOAD_NONE),
];

fn fill_syscall_table(ebpf: &mut Ebpf) -> Result<(), aya::EbpfError> {
    let map = ebpf.map_mut(MAP_SYSCALL_TABLE).ok_or_else(|| {
        aya::EbpfError::MapError(aya::maps::MapError::InvalidName {
            name: MAP_SYSCALL_TABLE.to_owned(),
        })
    })?;
    let mut table: Array<&mut MapData, u32> = Array::try_from(map)?;
    for &(nr, syscall, payload) in SYSCALL_TABLE {
        table.set(nr, syscall as u32 | (payload << 8), 0)?;
    }
    Ok(())
}

/// Whether the socket tier's programs load and attach on this kernel (Linux 6.3+ has
/// the tracepoints; the verifier must accept the programs). The trial object is dropped
/// at once, which detaches everything it attached.
fn socket_tier_loads(config: &Config, kernel_btf: &Btf, opts: &LoadOptions<'_>) -> bool {
    let trial = Config {
        tier: Tier::Socket as u32,
        ..*config
    };
    let small = LoadOptions {
        flow_entries: 1,
        ..*opts
    };
    let mut ebpf = match load_object(&trial, &small, 1) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            log::debug!("socket tier unavailable: {}", crate::error_chain(&e));
            return false;
        }
    };
    for hook in HOOKS.iter().filter(|h| h.tier == Some(Tier::Socket)) {
        if let Err(e) = attach(&mut ebpf, hook, kernel_btf) {
            log::info!("socket tier unavailable ({}): {e}", hook.program);
            return false;
        }
    }
    true
}

fn hook_label(hook: &Hook) -> String {
    match hook.attach {
        Attach::Tracepoint(category, name) => format!("{category}:{name}"),
        Attach::BtfTracepoint(name) => format!("tp_btf:{name}"),
    }
}

/// The byte accounting: (program, attach type, label). Optional: without it the agent
/// still serves everything but `nodetap_network_*`.
pub const NETWORK_HOOKS: [(&str, CgroupSkbAttachType, &str); 2] = [
    (
        "nodetap_net_egress",
        CgroupSkbAttachType::Egress,
        "cgroup_skb/egress",
    ),
    (
        "nodetap_net_ingress",
        CgroupSkbAttachType::Ingress,
        "cgroup_skb/ingress",
    ),
];

/// Attaches a cgroup_skb program to the cgroup v2 root, where it sees every socket of
/// the host. aya attaches through a bpf_link (kernel 5.7 and later, which the agent
/// requires): cgroup links always run beside other programs (systemd's IP accounting,
/// a CNI's), as `BPF_F_ALLOW_MULTI` would, and the kernel refuses any flag on them, so
/// the mode passed is the flag-less one.
fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    program: &str,
    attach_type: CgroupSkbAttachType,
    root: &std::path::Path,
) -> Result<(), String> {
    let prog: &mut CgroupSkb = loaded(ebpf, program, CgroupSkb::load)?;
    let cgroup = std::fs::File::open(root)
        .map_err(|e| format!("cannot open cgroup {}: {e}", root.display()))?;
    prog.attach(&cgroup, attach_type, CgroupAttachMode::Single)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, kernel_btf: &Btf) -> Result<(), String> {
    match hook.attach {
        Attach::Tracepoint(category, name) => {
            let prog: &mut TracePoint = loaded(ebpf, hook.program, TracePoint::load)?;
            prog.attach(category, name)
                .map_err(|e| crate::error_chain(&e))?;
        }
        Attach::BtfTracepoint(name) => {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(hook.program)
                .ok_or_else(|| format!("program {} missing from the object", hook.program))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.load(name, kernel_btf).map_err(|e| {
                let full = crate::error_chain(&e);
                log::debug!("loading {} failed: {full}", hook.program);
                shorten_verifier_log(&full)
            })?;
            prog.attach().map_err(|e| crate::error_chain(&e))?;
        }
    }
    Ok(())
}

/// The program named `program`, as type `T`, loaded into the kernel; the error says
/// what went wrong in one line (the verifier's last lines; the whole log at debug).
fn loaded<'a, T>(
    ebpf: &'a mut Ebpf,
    program: &str,
    load: fn(&mut T) -> Result<(), aya::programs::ProgramError>,
) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog: &mut T = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    load(prog).map_err(|e| {
        let full = crate::error_chain(&e);
        log::debug!("loading {program} failed: {full}");
        shorten_verifier_log(&full)
    })?;
    Ok(prog)
}

/// A verifier log runs to thousands of lines; the report keeps the message and the
/// log's last lines, which say what was rejected (the whole log is at debug level).
fn shorten_verifier_log(message: &str) -> String {
    let Some((head, log)) = message.split_once("Verifier output:") else {
        return message.to_owned();
    };
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(6)..];
    format!("{head}verifier said: ... {}", tail.join(" | "))
}

impl Probes {
    /// The kernel flow tables, if the byte accounting attached.
    pub fn take_flow_tables(
        &mut self,
        capacity: u32,
    ) -> Option<Result<crate::network::FlowTables, crate::network::NetworkError>> {
        let attached = self
            .hooks
            .iter()
            .filter(|h| NETWORK_HOOKS.iter().any(|(p, _, _)| *p == h.program))
            .any(|h| h.error.is_none());
        attached.then(|| crate::network::FlowTables::take(&mut self.ebpf, capacity))
    }

    /// The cgroups the kernel saw created (id to path), if their hook attached.
    pub fn take_cgroup_paths(&mut self) -> Option<Result<CgroupPathsMap, ProbeError>> {
        let attached = self
            .hooks
            .iter()
            .any(|h| h.program == CGROUP_MKDIR_PROGRAM && h.error.is_none());
        let name = agent_common::MAP_CGROUP_PATHS;
        attached.then(|| {
            let map = self
                .ebpf
                .take_map(name)
                .ok_or(ProbeError::MissingMap { name })?;
            HashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })
        })
    }

    /// Takes the ring buffer of records, the kernel counters, the instruction maps and
    /// the table of close records that found the ring full out of the object.
    pub fn take_maps(&mut self) -> Result<CaptureMaps, ProbeError> {
        let programs = self
            .hooks
            .iter()
            .filter(|h| h.error.is_none())
            .filter_map(|h| {
                let fd = self.ebpf.program(h.program)?.fd().ok()?.try_clone().ok()?;
                Some((h.tracepoint.clone(), fd))
            })
            .collect();
        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(ProbeError::MissingMap { name })
        };
        let drops = take(MAP_DROPS)?;
        let stats = take(MAP_STATS)?;
        let instructions = take(MAP_INSTRUCTIONS)?;
        let generation = take(MAP_INSTRUCTION_GEN)?;
        let closed = take(MAP_CLOSED)?;
        let report_epoch = take(MAP_REPORT_EPOCH)?;
        let map_err = |name: &'static str| move |source| ProbeError::Map { name, source };
        Ok(CaptureMaps {
            rings: std::mem::take(&mut self.rings),
            rings_exclusive: self.rings_exclusive,
            counters: KernelCounters {
                drops: PerCpuArray::try_from(drops).map_err(map_err(MAP_DROPS))?,
                stats: PerCpuArray::try_from(stats).map_err(map_err(MAP_STATS))?,
                report_epoch: Array::try_from(report_epoch).map_err(map_err(MAP_REPORT_EPOCH))?,
                epoch: 0,
                programs,
            },
            instructions: InstructionMaps {
                instructions: HashMap::try_from(instructions).map_err(map_err(MAP_INSTRUCTIONS))?,
                generation: Array::try_from(generation).map_err(map_err(MAP_INSTRUCTION_GEN))?,
            },
            closed: HashMap::try_from(closed).map_err(map_err(MAP_CLOSED))?,
        })
    }
}

/// The largest power of two not above `n` (1 for 0).
/// The number of possible CPUs: the per-CPU ring table's size (a CPU brought online later
/// finds its ring ready).
fn possible_cpus() -> Result<u32, ProbeError> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(path, source)| ProbeError::Cpus { path, source })
}

/// Creates the rings of `layout` and gives each CPU its ring in the programs' table.
fn create_rings(
    ebpf: &mut Ebpf,
    cpus: u32,
    layout: agent_common::RingLayout,
) -> Result<Vec<MapData>, ProbeError> {
    let map_err = |source| ProbeError::Map {
        name: MAP_EVENTS,
        source,
    };
    let table = ebpf
        .map_mut(MAP_EVENTS)
        .ok_or(ProbeError::MissingMap { name: MAP_EVENTS })?;
    let mut table: ArrayOfMaps<&mut MapData, MapData> =
        ArrayOfMaps::try_from(table).map_err(map_err)?;
    let rings = (0..layout.rings)
        .map(|_| {
            let definition = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                layout.bytes,
                0,
            );
            MapData::create(definition, "nodetap_events", None).map_err(map_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for cpu in 0..cpus {
        let ring = &rings[(cpu % layout.rings) as usize];
        table.set(cpu, ring, 0).map_err(map_err)?;
    }
    Ok(rings)
}

fn prev_power_of_two(n: u32) -> u32 {
    1 << (31 - n.max(1).leading_zeros())
}

#[cfg(test)]
mod ring_layout_tests {
    use agent_common::{RingLayout, MIN_RING_BYTES};

    #[test]
    fn a_ring_per_cpu_where_the_budget_allows_else_shared_rings() {
        let mib = 1 << 20;
        // This machine's case: two CPUs, the default 16 MiB budget.
        assert_eq!(
            RingLayout::new(16 * mib, 2),
            RingLayout {
                rings: 2,
                bytes: 8 * mib
            }
        );
        // A 64-CPU node: no ring below the minimum, so CPUs share.
        assert_eq!(
            RingLayout::new(16 * mib, 64),
            RingLayout {
                rings: 4,
                bytes: MIN_RING_BYTES
            }
        );
        assert_eq!(RingLayout::new(16 * mib, 64).cpus_per_ring(64), 16);
        // A budget below the minimum is one ring of the whole budget.
        assert_eq!(
            RingLayout::new(65536, 8),
            RingLayout {
                rings: 1,
                bytes: 65536
            }
        );
        // Three CPUs: equal shares rounded down to a power of two.
        assert_eq!(
            RingLayout::new(16 * mib, 3),
            RingLayout {
                rings: 3,
                bytes: 4 * mib
            }
        );
        assert_eq!(RingLayout::new(16 * mib, 3).cpus_per_ring(3), 1);
    }
}

#[cfg(test)]
mod power_tests {
    #[test]
    fn prev_power_of_two() {
        for (n, p) in [
            (0, 1),
            (1, 1),
            (3, 2),
            (4096, 4096),
            (262_143, 131_072),
            (262_144, 262_144),
        ] {
            assert_eq!(super::prev_power_of_two(n), p, "{n}");
        }
    }
}

#[cfg(test)]
mod fdinfo_tests {
    use super::recursion_misses;

    /// A program's /proc/<pid>/fdinfo on Linux 6.18 (the agent's inet_sock_set_state).
    const FDINFO_6_18: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\n\
        prog_type:\t26\nprog_jited:\t1\nprog_tag:\t8898d8f0e260e378\nmemlock:\t8192\n\
        prog_id:\t50903\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\n\
        verified_insns:\t1266\n";

    #[test]
    fn skipped_runs_come_from_the_fdinfo_line_and_are_absent_before_linux_5_12() {
        assert_eq!(recursion_misses(FDINFO_6_18), Some(17));
        let before = FDINFO_6_18.replace("recursion_misses:\t17\n", "");
        assert_eq!(recursion_misses(&before), None);
        assert_eq!(recursion_misses("recursion_misses:\tlots\n"), None);
    }
}
