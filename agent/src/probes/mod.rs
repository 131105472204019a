//! Loading and attaching the kernel programs embedded in the binary.

pub mod btf;
pub mod tracefs;

use std::path::Path;

use agent_common::{
    Config, DropReason, DROP_REASONS, GLOBAL_CONFIG, MAP_DROPS, MAP_EVENTS, MAP_STATS,
    STAT_RINGBUF_AVAIL,
};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TracePoint},
    Ebpf, EbpfLoader,
};

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

/// One tracepoint program: (program name in the object, category, tracepoint, need).
/// Exits come before their entries so a call is never entered without its exit hooked.
pub const HOOKS: &[(&str, &str, &str, Need)] = &[
    ("sys_exit_read", "syscalls", "sys_exit_read", Need::Required),
    (
        "sys_enter_read",
        "syscalls",
        "sys_enter_read",
        Need::Required,
    ),
    (
        "sys_exit_write",
        "syscalls",
        "sys_exit_write",
        Need::Required,
    ),
    (
        "sys_enter_write",
        "syscalls",
        "sys_enter_write",
        Need::Required,
    ),
    (
        "sys_exit_readv",
        "syscalls",
        "sys_exit_readv",
        Need::Required,
    ),
    (
        "sys_enter_readv",
        "syscalls",
        "sys_enter_readv",
        Need::Required,
    ),
    (
        "sys_exit_writev",
        "syscalls",
        "sys_exit_writev",
        Need::Required,
    ),
    (
        "sys_enter_writev",
        "syscalls",
        "sys_enter_writev",
        Need::Required,
    ),
    (
        "sys_exit_recvfrom",
        "syscalls",
        "sys_exit_recvfrom",
        Need::Required,
    ),
    (
        "sys_enter_recvfrom",
        "syscalls",
        "sys_enter_recvfrom",
        Need::Required,
    ),
    (
        "sys_exit_sendto",
        "syscalls",
        "sys_exit_sendto",
        Need::Required,
    ),
    (
        "sys_enter_sendto",
        "syscalls",
        "sys_enter_sendto",
        Need::Required,
    ),
    (
        "sys_exit_recvmsg",
        "syscalls",
        "sys_exit_recvmsg",
        Need::Required,
    ),
    (
        "sys_enter_recvmsg",
        "syscalls",
        "sys_enter_recvmsg",
        Need::Required,
    ),
    (
        "sys_exit_sendmsg",
        "syscalls",
        "sys_exit_sendmsg",
        Need::Required,
    ),
    (
        "sys_enter_sendmsg",
        "syscalls",
        "sys_enter_sendmsg",
        Need::Required,
    ),
    (
        "sys_exit_recvmmsg",
        "syscalls",
        "sys_exit_recvmmsg",
        Need::Optional,
    ),
    (
        "sys_enter_recvmmsg",
        "syscalls",
        "sys_enter_recvmmsg",
        Need::Optional,
    ),
    (
        "sys_exit_sendmmsg",
        "syscalls",
        "sys_exit_sendmmsg",
        Need::Optional,
    ),
    (
        "sys_enter_sendmmsg",
        "syscalls",
        "sys_enter_sendmmsg",
        Need::Optional,
    ),
    (
        "sys_exit_sendfile64",
        "syscalls",
        "sys_exit_sendfile64",
        Need::Optional,
    ),
    (
        "sys_enter_sendfile64",
        "syscalls",
        "sys_enter_sendfile64",
        Need::Optional,
    ),
    (
        "sys_exit_connect",
        "syscalls",
        "sys_exit_connect",
        Need::Required,
    ),
    (
        "sys_enter_connect",
        "syscalls",
        "sys_enter_connect",
        Need::Required,
    ),
    (
        "sys_exit_accept",
        "syscalls",
        "sys_exit_accept",
        Need::Required,
    ),
    (
        "sys_exit_accept4",
        "syscalls",
        "sys_exit_accept4",
        Need::Required,
    ),
    (
        "sys_enter_close",
        "syscalls",
        "sys_enter_close",
        Need::Required,
    ),
    (
        "inet_sock_set_state",
        "sock",
        "inet_sock_set_state",
        Need::Required,
    ),
];

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
    #[error("cannot read the tracepoint format {path}")]
    ReadFormat {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected layout of sock:inet_sock_set_state")]
    Format(#[source] tracefs::FormatError),
    #[error("the kernel refused to load nodetap's eBPF programs")]
    Load(#[source] aya::EbpfError),
    #[error("required hooks did not attach: {names}")]
    Required { names: String },
    #[error("eBPF map {name} missing from the object")]
    MissingMap { name: &'static str },
    #[error("eBPF map {name} has an unexpected type")]
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

pub struct LoadOptions<'a> {
    pub tracefs: &'a Path,
    /// The cgroup v2 root the byte accounting attaches to; `None` without cgroup v2.
    pub cgroup2: Option<&'a Path>,
    /// Entries of each kernel flow table.
    pub flow_entries: u32,
    pub capture_len: u32,
    pub ringbuf_bytes: u32,
    pub wakeup_bytes: u32,
}

/// The loaded programs. Dropping this detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
}

/// Counters the kernel keeps, read from the maps.
pub struct KernelCounters {
    drops: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Events lost or degraded so far, by reason, summed over CPUs.
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

    /// Bytes waiting in the ring buffer at the last event, largest over CPUs.
    pub fn ringbuf_waiting(&self) -> u64 {
        self.stats
            .get(&STAT_RINGBUF_AVAIL, 0)
            .map(|per_cpu| per_cpu.iter().copied().max().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Why loading failed, with what happened to each hook (empty if none was tried).
#[derive(Debug)]
pub struct LoadFailure {
    pub error: ProbeError,
    pub hooks: Vec<HookStatus>,
}

/// Loads the programs with offsets for the running kernel and attaches every hook.
/// Returns an error if a required hook failed; the statuses say which.
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
    let format_path = opts.tracefs.join("events/sock/inet_sock_set_state/format");
    let format = std::fs::read_to_string(&format_path).map_err(|source| {
        fail(ProbeError::ReadFormat {
            path: format_path.display().to_string(),
            source,
        })
    })?;
    let state_tp = tracefs::state_offsets(&tracefs::parse_format(&format))
        .map_err(|e| fail(ProbeError::Format(e)))?;
    let config = Config {
        capture_len: opts.capture_len,
        agent_pid: std::process::id(),
        wakeup_bytes: opts.wakeup_bytes,
        _pad: 0,
        kernel,
        state_tp,
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, &config, true)
        .map_max_entries(MAP_EVENTS, opts.ringbuf_bytes)
        .map_max_entries(agent_common::MAP_NET_FLOWS[0], opts.flow_entries)
        .map_max_entries(agent_common::MAP_NET_FLOWS[1], opts.flow_entries)
        .load(EBPF_OBJECT)
        .map_err(|e| fail(ProbeError::Load(e)))?;

    let mut hooks = Vec::with_capacity(HOOKS.len());
    for &(program, category, name, need) in HOOKS {
        let error = attach(&mut ebpf, program, category, name).err();
        hooks.push(HookStatus {
            program,
            tracepoint: format!("{category}:{name}"),
            need,
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
    Ok(Probes { ebpf, hooks })
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
    root: &Path,
) -> Result<(), String> {
    let prog: &mut CgroupSkb = loaded(ebpf, program, CgroupSkb::load)?;
    let cgroup = std::fs::File::open(root)
        .map_err(|e| format!("cannot open cgroup {}: {e}", root.display()))?;
    prog.attach(&cgroup, attach_type, CgroupAttachMode::Single)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

fn attach(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<(), String> {
    let prog: &mut TracePoint = loaded(ebpf, program, TracePoint::load)?;
    prog.attach(category, name)
        .map_err(|e| crate::error_chain(&e))?;
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

    /// Takes the ring buffer of events and the kernel counters out of the object.
    pub fn take_maps(&mut self) -> Result<(RingBuf<MapData>, KernelCounters), ProbeError> {
        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(ProbeError::MissingMap { name })
        };
        let events = take(MAP_EVENTS)?;
        let drops = take(MAP_DROPS)?;
        let stats = take(MAP_STATS)?;
        let map_err = |name: &'static str| move |source| ProbeError::Map { name, source };
        Ok((
            RingBuf::try_from(events).map_err(map_err(MAP_EVENTS))?,
            KernelCounters {
                drops: PerCpuArray::try_from(drops).map_err(map_err(MAP_DROPS))?,
                stats: PerCpuArray::try_from(stats).map_err(map_err(MAP_STATS))?,
            },
        ))
    }
}
