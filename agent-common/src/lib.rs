//! Types shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Every struct is `#[repr(C)]`, `Copy`, and laid out with explicit padding so the
//! two sides agree byte for byte; the size assertions at the bottom keep it so.
#![no_std]

/// Largest payload prefix a kernel program can copy for one syscall. The copy size in
/// force is `Config::capture_len` (at most this), chosen at start-up.
pub const MAX_CAPTURE: usize = 4096;
/// Payload prefix copied by default. A copy never exceeds what the syscall moved, so
/// small messages cost the same whatever this is; 2048 bytes hold a whole pipelined batch
/// of 32 small Redis commands and PostgreSQL's startup reply, so their framing is never
/// lost, while bulk transfers copy at most 2 KiB per syscall.
pub const DEFAULT_CAPTURE: u32 = 2048;
/// The smallest prefix the agent accepts: protocol detection needs this much.
pub const MIN_CAPTURE: u32 = 256;

/// Map names, shared so the loader cannot misspell them.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_PENDING: &str = "PENDING";
pub const MAP_DROPS: &str = "DROPS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Name of the read-only global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default ring buffer size in bytes (a power of two, as the kernel requires).
pub const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;
/// Entries in the map of syscalls in flight (one per thread blocked in a traced call).
pub const PENDING_ENTRIES: u32 = 16384;
/// Entries in the kernel's cache of connected TCP sockets' addresses (LRU).
pub const SOCKS_ENTRIES: u32 = 65536;

/// What an event reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A data syscall on a TCP socket moved `bytes` bytes.
    Data = 1,
    /// `connect` (role client) or `accept` (role server) produced a TCP socket.
    Open = 2,
    /// The socket reached TCP_CLOSE (from `sock:inet_sock_set_state`).
    Close = 3,
    /// A process closed its file descriptor of a TCP socket (`close(2)`).
    FdClose = 4,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Open,
            3 => Self::Close,
            4 => Self::FdClose,
            _ => return None,
        })
    }
}

/// Direction of a data event, seen from the process that made the syscall.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Transmit = 0,
    Receive = 1,
}

/// Which end of the connection the socket is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Not seen at connect or accept (the connection predates the agent).
    Unknown = 0,
    Client = 1,
    Server = 2,
}

/// The syscall behind a data event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syscall {
    Read = 1,
    Write = 2,
    Readv = 3,
    Writev = 4,
    Recvfrom = 5,
    Sendto = 6,
    Recvmsg = 7,
    Sendmsg = 8,
    Recvmmsg = 9,
    Sendmmsg = 10,
    Sendfile = 11,
}

impl Syscall {
    pub const ALL: [Syscall; 11] = [
        Self::Read,
        Self::Write,
        Self::Readv,
        Self::Writev,
        Self::Recvfrom,
        Self::Sendto,
        Self::Recvmsg,
        Self::Sendmsg,
        Self::Recvmmsg,
        Self::Sendmmsg,
        Self::Sendfile,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == v)
    }

    pub fn direction(self) -> Direction {
        match self {
            Self::Read | Self::Readv | Self::Recvfrom | Self::Recvmsg | Self::Recvmmsg => {
                Direction::Receive
            }
            _ => Direction::Transmit,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Recvfrom => "recvfrom",
            Self::Sendto => "sendto",
            Self::Recvmsg => "recvmsg",
            Self::Sendmsg => "sendmsg",
            Self::Recvmmsg => "recvmmsg",
            Self::Sendmmsg => "sendmmsg",
            Self::Sendfile => "sendfile",
        }
    }
}

/// Why the kernel side lost or degraded an event; an index into the per-CPU `DROPS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer had no room: the event is lost.
    RingbufFull = 0,
    /// The map of syscalls in flight was full at syscall entry: the event is lost.
    PendingFull = 1,
    /// Copying the payload prefix from user memory failed: the event was sent without it.
    PayloadUnreadable = 2,
    /// Walking task -> file -> socket failed for a socket fd: the event is lost.
    SocketUnreadable = 3,
}

pub const DROP_REASONS: usize = 4;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        Self::RingbufFull,
        Self::PendingFull,
        Self::PayloadUnreadable,
        Self::SocketUnreadable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::PendingFull => "pending_map_full",
            Self::PayloadUnreadable => "payload_unreadable",
            Self::SocketUnreadable => "socket_unreadable",
        }
    }

    /// True when the event itself is gone (rather than sent without its payload).
    pub fn loses_event(self) -> bool {
        !matches!(self, Self::PayloadUnreadable)
    }
}

/// Slots of the per-CPU `STATS` array.
pub const STAT_RINGBUF_AVAIL: u32 = 0;
pub const STATS_SLOTS: u32 = 1;

/// A TCP connection's addresses. IPv4 addresses use the first 4 bytes of the arrays;
/// ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Header of every event in the ring buffer. A data event is followed by `captured`
/// payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// [`EventKind`].
    pub kind: u8,
    /// [`Direction`] (data events).
    pub direction: u8,
    /// [`Syscall`] (data events).
    pub syscall: u8,
    /// [`Role`] (open events).
    pub role: u8,
    pub fd: i32,
    /// Process id (tgid) of the caller.
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Kernel address of the `struct sock`: the connection's identity while it lives.
    pub sock_id: u64,
    /// cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) at syscall entry.
    pub enter_ns: u64,
    /// CLOCK_MONOTONIC at syscall exit (or at the state change, for close events).
    pub exit_ns: u64,
    /// Bytes the syscall really moved: its return value (sum of msg_len for *mmsg).
    pub bytes: u64,
    /// Payload bytes that follow this header.
    pub captured: u32,
    pub _pad: u32,
    /// Name of the caller's process (the thread group leader's comm), in open and
    /// fd-close events only: data events leave it zeroed, the agent knows the
    /// connection's owner from its open event (two kernel reads saved per syscall).
    pub comm: [u8; 16],
    pub tuple: SockTuple,
}

pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// A data event as built in the kernel's per-CPU scratch space.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    pub payload: [u8; MAX_CAPTURE],
    /// Never sent. Copies into `payload` use masked offsets and sizes the verifier can
    /// bound without following the program's own logic; this room keeps every masked
    /// access inside the map value.
    pub slack: [u8; 2 * MAX_CAPTURE],
}

/// Offsets of kernel struct fields, read from the running kernel's BTF by the agent at
/// start-up (Rust eBPF has no CO-RE relocations, so the agent does the relocation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_protocol: u32,
    pub sk_type: u32,
    pub _pad: u32,
}

/// Field offsets of the `sock:inet_sock_set_state` tracepoint record, read from its
/// tracefs `format` file at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateTpOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub _pad: u32,
}

/// Read-only configuration of the kernel programs, set by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Payload bytes to copy per data event (at most [`MAX_CAPTURE`]).
    pub capture_len: u32,
    /// The agent's own tgid: its sockets (the /metrics endpoint) are not traced.
    pub agent_pid: u32,
    /// Wake the reader only once this many bytes wait in the ring buffer; below it the
    /// agent drains on a short timer. Batching wake-ups keeps the overhead per event low.
    pub wakeup_bytes: u32,
    pub _pad: u32,
    pub kernel: KernelOffsets,
    pub state_tp: StateTpOffsets,
}

/// Pending syscall state, saved at entry and used at exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    pub sock_id: u64,
    /// User pointer: the buffer, the iovec array, the msghdr or the mmsghdr array.
    pub arg_ptr: u64,
    /// Entry count for iovec/mmsghdr arrays.
    pub arg_count: u64,
    pub enter_ns: u64,
    pub fd: i32,
    pub syscall: u8,
    pub _pad: [u8; 3],
    pub tuple: SockTuple,
}

/// TCP states used by the kernel side (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

const _: () = assert!(core::mem::size_of::<SockTuple>() == 40);
const _: () = assert!(HEADER_LEN == 120);
const _: () = assert!(core::mem::size_of::<PendingCall>() == 80);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);
const _: () = assert!(core::mem::size_of::<StateTpOffsets>() == 48);
const _: () = assert!(core::mem::size_of::<Config>() == 144);

// ---------------------------------------------------------------------------------------
// IP-layer byte accounting (cgroup_skb programs)

/// Flow tables, double-buffered: the programs add to the one [`MAP_NET_ACTIVE`] names,
/// userspace flips the index, waits out the programs still writing the other one (an RCU
/// grace period), then reads and empties it. Nothing is lost between read and delete.
pub const MAP_NET_FLOWS: [&str; 2] = ["NET_FLOWS_0", "NET_FLOWS_1"];
/// One u32: which of [`MAP_NET_FLOWS`] the programs write.
pub const MAP_NET_ACTIVE: &str = "NET_ACTIVE";
/// Per-CPU [`FlowCounters`] by [`Direction`]: what did not fit in a full flow table.
pub const MAP_NET_OVERFLOW: &str = "NET_OVERFLOW";
/// Default entries per flow table (one drain interval's distinct flows).
pub const NET_FLOW_ENTRIES: u32 = 32768;
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Who exchanged packets with whom, in which direction, as the socket's owner saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// cgroup v2 id of the socket's owner (`bpf_skb_cgroup_id`).
    pub cgroup_id: u64,
    /// This end's address: IPv4 in the first 4 bytes, network order.
    pub local: [u8; 16],
    /// The other end's address, likewise.
    pub remote: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// [`Direction`].
    pub direction: u8,
    pub _pad: [u8; 6],
}

/// IP bytes and packets as they are on the wire: a GSO/GRO packet counts as the
/// segments it stands for, each with its own headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub bytes: u64,
    pub packets: u64,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain old data: repr(C), Copy, no implicit padding (checked above).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PendingCall {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowCounters {}
}
