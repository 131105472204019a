//! Types shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Every struct is `#[repr(C)]`, `Copy`, and laid out with explicit padding so the
//! two sides agree byte for byte; the size assertions at the bottom keep it so.
#![no_std]

pub mod fd_cache;

/// Largest payload one ring buffer record carries. A call that moved more is sent as
/// several records (segments), each reserved in place in the ring buffer at the smallest
/// size class that holds it: one copy from user memory, little slack.
pub const MAX_SEGMENT: usize = 16384;
/// Payload room of the record size classes, smallest first (the verifier needs constant
/// reservation sizes, so a segment is reserved at one of these).
pub const SEGMENT_CLASSES: [usize; 5] = [64, 256, 1024, 4096, MAX_SEGMENT];
/// Most payload bytes copied for one call, by default. Beyond it the rest of the call is
/// counted (the parser sees a gap of known length and resynchronises if it needed it).
pub const DEFAULT_CALL_CAPTURE: u32 = 262144;
/// The per-call copy limit the agent accepts: at least 64 KiB (a pipelined batch or a
/// large reply fits), at most 64 segments (1 MiB). The default, 256 KiB, holds what real
/// clients write at once (a pipeline flushed as one buffer, a large reply).
pub const MIN_CALL_CAPTURE: u32 = 65536;
pub const MAX_CALL_CAPTURE: u32 = 64 * MAX_SEGMENT as u32;
/// Bytes per direction copied from a connection before userspace has said what it needs.
/// Userspace says so once it has drained the connection's first records (within the
/// drain interval, 20 ms, or sooner under load); this only bounds what an unknown bulk
/// protocol costs meanwhile, and must be large enough that a parsed connection's first
/// burst is never cut (a cut is a gap the parser must resynchronise after).
pub const DEFAULT_UNDECIDED_BYTES: u32 = 16 << 20;
/// A connection's first bytes in each direction are copied even while the ring buffer is
/// busy: they say what the connection speaks.
pub const DETECT_BYTES: u64 = 16384;
/// A counts-only connection reports its counters at most this often (and at its close).
pub const DEFAULT_REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// Map names, shared so the loader cannot misspell them.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_PENDING: &str = "PENDING";
pub const MAP_DROPS: &str = "DROPS";
pub const MAP_STATS: &str = "STATS";
/// Userspace's instructions per connection ([`Instruction`] by connection id).
pub const MAP_INSTRUCTIONS: &str = "INSTRUCTIONS";
/// One u64 userspace bumps after writing instructions: a connection looks its
/// instruction up only when this changed since it last did.
pub const MAP_INSTRUCTION_GEN: &str = "INSTRUCTION_GEN";
/// Final counters of connections whose close record found the ring buffer full.
pub const MAP_CLOSED: &str = "CLOSED";
/// One u64 userspace bumps every [`DEFAULT_REPORT_INTERVAL_NS`]: a counts-only
/// connection reports its counters on its first call in a new epoch. A clock read per
/// call cost more than the rest of a counts-only call's own work.
pub const MAP_REPORT_EPOCH: &str = "REPORT_EPOCH";
/// What each syscall number is (`Syscall` and payload class), filled by the loader: a
/// table lookup rather than a `match`, so the verifier follows one path, not one per
/// syscall.
pub const MAP_SYSCALL_TABLE: &str = "SYSCALL_TABLE";
pub const SYSCALL_TABLE_ENTRIES: u32 = 512;
/// Payload classes in the syscall table (bits 8..10 of an entry; bits 0..8 are the
/// `Syscall`).
pub const PAYLOAD_NONE: u32 = 0;
/// One buffer: the second argument.
pub const PAYLOAD_BUFFER: u32 = 1;
/// An iovec array and its length: the second and third arguments.
pub const PAYLOAD_IOVEC: u32 = 2;
/// A `struct user_msghdr`: the second argument.
pub const PAYLOAD_MSGHDR: u32 = 3;
/// Name of the read-only global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default ring buffer budget in bytes, split into rings for the CPUs (see
/// [`RingLayout`]).
pub const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;
/// The smallest ring a budget is split into: one call of a pipelining client can copy
/// up to the per-call limit (256 KiB by default, more on request) in one burst, all into
/// its CPU's ring. A budget too small for one ring per CPU gives neighbouring CPUs a
/// shared ring rather than each a ring too small for a burst.
pub const MIN_RING_BYTES: u32 = 4 << 20;
/// CPUs the ring table is declared for; the loader sizes it to the machine's.
pub const MAX_CPUS: u32 = 1024;
/// Size of the inner-map template in the object (a ring's real size is set by the
/// loader; the kernel compares type, key, value and flags of inner maps, not size).
pub const RING_TEMPLATE_BYTES: u32 = 64 << 10;

/// How a ring buffer budget is split: `rings` rings of `bytes` each (a power of two, the
/// kernel's requirement); CPU `c` writes into ring `c % rings`. One ring per CPU where
/// the budget gives each at least [`MIN_RING_BYTES`], fewer (shared) rings otherwise, one
/// ring of the whole budget at least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub rings: u32,
    pub bytes: u32,
}

impl RingLayout {
    pub const fn new(budget: u32, cpus: u32) -> RingLayout {
        let cpus = if cpus == 0 { 1 } else { cpus };
        let by_budget = budget / MIN_RING_BYTES;
        let rings = if by_budget == 0 {
            1
        } else if by_budget < cpus {
            by_budget
        } else {
            cpus
        };
        let share = budget / rings;
        let bytes = if share == 0 {
            4096
        } else {
            1u32 << (31 - share.leading_zeros())
        };
        RingLayout { rings, bytes }
    }

    /// CPUs writing into one ring (the most of any ring).
    pub const fn cpus_per_ring(&self, cpus: u32) -> u32 {
        cpus.div_ceil(self.rings)
    }
}

/// Connections the syscall tier keeps state for (the socket tier's state lives in the
/// socket itself and has no bound).
pub const SYSCALL_SOCKETS: u32 = 65536;
/// Instructions kept (LRU): one per connection being parsed or counted.
pub const INSTRUCTION_ENTRIES: u32 = 65536;
/// Close records kept while the ring buffer is full.
pub const CLOSED_ENTRIES: u32 = 8192;

/// How the kernel side finds data, chosen by the agent at start-up.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `sock:sock_send_length`/`sock_recv_length` (Linux 6.3+): fired only for sockets.
    Socket = 1,
    /// Syscall tracepoints on every read and write (older kernels).
    Syscall = 2,
}

impl Tier {
    pub fn label(self) -> &'static str {
        match self {
            Tier::Socket => "socket",
            Tier::Syscall => "syscall",
        }
    }
}

/// What an event reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A call on a TCP socket moved `bytes` bytes; the record carries one segment of
    /// its payload (possibly none).
    Data = 1,
    /// The kernel side saw a connection for the first time: its addresses, role and
    /// owner (the process that made the call).
    Open = 2,
    /// The socket reached TCP_CLOSE, with its final counters.
    Close = 3,
    /// A counts-only connection's counters (sent at most once per report interval).
    Counts = 4,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Open,
            3 => Self::Close,
            4 => Self::Counts,
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

impl Direction {
    pub fn from_u8(v: u8) -> Self {
        if v == 1 {
            Self::Receive
        } else {
            Self::Transmit
        }
    }

    /// The stable `direction` label value.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Transmit => "transmit",
            Direction::Receive => "receive",
        }
    }
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

impl Role {
    /// The stable `role` label value.
    pub fn label(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }
}

/// The call that moved a connection's bytes. The socket tier sees every path into a
/// socket, so it also names splice/sendfile and io_uring, whose bytes it counts but whose
/// payload is not in the calling syscall's arguments.
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
    Splice = 12,
    IoUring = 13,
    /// Anything else that reached the socket (a kernel socket user, an unknown syscall).
    Other = 14,
}

/// Slots of a per-direction call counter array (indexed by `Syscall as usize`).
pub const CALL_KINDS: usize = 16;

impl Syscall {
    pub const ALL: [Syscall; 14] = [
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
        Self::Splice,
        Self::IoUring,
        Self::Other,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == v)
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
            Self::Splice => "splice",
            Self::IoUring => "io_uring",
            Self::Other => "other",
        }
    }
}

/// Why the kernel side lost or degraded an event; an index into the per-CPU `DROPS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer had no room: a record is lost (the connection's counters are not:
    /// the next record, or the close, carries them).
    RingbufFull = 0,
    /// The map of syscalls in flight was full at syscall entry. No longer produced: the
    /// syscall tier reads a call's arguments at its exit and keeps no such map; the
    /// reason stays so the `reason` values of `nodetap_events_lost_total` do not change.
    PendingFull = 1,
    /// Copying the payload from user memory failed: the record was sent without it.
    PayloadUnreadable = 2,
    /// Reading the socket's fields failed: the call is not seen.
    SocketUnreadable = 3,
    /// The kernel could not allocate a connection's state (or the syscall tier's table
    /// was full): its calls are not seen.
    StateFull = 4,
    /// A close record found the ring buffer full and the fallback table full too.
    CloseLost = 5,
    /// Payload beyond the per-call copy limit (bytes counted, not copied).
    CallCapped = 6,
}

pub const DROP_REASONS: usize = 7;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        Self::RingbufFull,
        Self::PendingFull,
        Self::PayloadUnreadable,
        Self::SocketUnreadable,
        Self::StateFull,
        Self::CloseLost,
        Self::CallCapped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::PendingFull => "pending_map_full",
            Self::PayloadUnreadable => "payload_unreadable",
            Self::SocketUnreadable => "socket_unreadable",
            Self::StateFull => "state_full",
            Self::CloseLost => "close_lost",
            Self::CallCapped => "call_capped",
        }
    }

    /// True when a record itself is gone (rather than sent without its payload).
    pub fn loses_event(self) -> bool {
        !matches!(self, Self::PayloadUnreadable | Self::CallCapped)
    }
}

/// Slots of the per-CPU `STATS` array.
/// Bytes of records reserved on this CPU's ring buffer (its producer position, which
/// only this CPU moves): a record that crosses a multiple of the wake-up threshold wakes
/// the reader, with no helper call to ask the ring how full it is.
pub const STAT_RING_PRODUCED: u32 = 0;
/// Connection states created by the kernel side (TCP sockets it saw move data).
pub const STAT_STATES_CREATED: u32 = 1;
/// Non-TCP sockets (Unix, UDP, ...) marked once so their later calls cost one lookup.
pub const STAT_STATES_IGNORED: u32 = 2;
pub const STATS_SLOTS: u32 = 3;

/// A TCP connection's addresses. IPv4 addresses use the first 4 bytes of the arrays;
/// ports are in host byte order. Aligned to 8 so the kernel side copies it in words.
#[repr(C, align(8))]
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

/// A connection's exact counters, kept by the kernel per socket. Open, counts and close
/// records carry them in full; a data record carries the part its call moved (the
/// direction's stream end and the call kind's count after the call), so a lost record
/// loses no byte (the next data record in that direction covers it) and no call (the
/// kernel sends a counts record after any loss, and the close carries everything).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes moved, by [`Direction`].
    pub bytes: [u64; 2],
    /// Calls that moved at least one byte, by [`Direction`] then `Syscall as usize`
    /// (u32: userspace takes wrapping differences).
    pub calls: [[u32; CALL_KINDS]; 2],
}

/// Record flag: the last segment of its call.
pub const FLAG_LAST_SEGMENT: u32 = 1;

/// Header of every record in the ring buffer. A data record is followed by its payload
/// segment (`captured` bytes; the record may be padded beyond them to its size class);
/// open, counts and close records by a [`Summary`]. Small on purpose: it is written for
/// every data record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// [`EventKind`].
    pub kind: u8,
    /// [`Direction`] (data records).
    pub direction: u8,
    /// [`Syscall`] (data and counts records).
    pub syscall: u8,
    /// [`Role`].
    pub role: u8,
    /// The caller's file descriptor of the socket, or -1 where the tier does not know it.
    pub fd: i32,
    /// Process id (tgid) of the caller (0 in softirq context: close records).
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// The connection's id: unique for the life of the kernel, never reused.
    pub conn_id: u64,
    /// cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) at the call's start, as far as the tier sees it
    /// (syscall entry in the syscall tier; the socket operation's return in the socket tier).
    pub enter_ns: u64,
    /// CLOCK_MONOTONIC at the call's return (or at the state change, for close records).
    pub exit_ns: u64,
    /// Bytes the call really moved.
    pub bytes: u64,
    /// Stream offset (bytes before it in `direction`) of the call's first byte.
    pub call_offset: u64,
    /// Stream offset of this record's first payload byte.
    pub payload_offset: u64,
    /// Payload bytes that follow this header.
    pub captured: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Data records: the connection's count of calls of this kind in this direction,
    /// this call included (u32, wrapping).
    pub kind_calls: u32,
    pub _pad: u32,
    pub tuple: SockTuple,
}

/// What follows the header of open, counts and close records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub totals: Totals,
    /// Name of the caller's process (the thread group leader's comm), in open records
    /// only.
    pub comm: [u8; 16],
}

/// An open, counts or close record (also the value of the `CLOSED` table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SummaryRecord {
    pub header: EventHeader,
    pub summary: Summary,
}

pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();
pub const SUMMARY_RECORD_LEN: usize = core::mem::size_of::<SummaryRecord>();

/// Connection state kinds kept by the kernel.
pub const STATE_TCP: u8 = 0;
/// Not a TCP socket over IPv4/IPv6: every call returns after one lookup.
pub const STATE_IGNORED: u8 = 1;

/// What userspace wants copied of one direction of a connection.
pub const MODE_PARSE: u8 = 0;
/// Nothing copied, no data records: counters only (TLS, unknown protocols, given up).
pub const MODE_COUNTS_ONLY: u8 = 1;

/// `SockState::fd` before a call's fd was checked.
pub const FD_UNCHECKED: i32 = -1;
/// `SockState::fd` of a socket the calling syscall's fd is not (a kernel socket).
pub const FD_NONE: i32 = -2;

/// The kernel's state of one connection (socket storage in the socket tier, a table
/// keyed by socket address in the syscall tier).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    pub conn_id: u64,
    pub totals: Totals,
    /// Userspace's skip windows, applied: stream offsets below which nothing is copied.
    pub skip_until: [u64; 2],
    /// The report epoch in which counters were last reported (counts-only connections).
    pub report_epoch: u64,
    /// The instruction generation last applied.
    pub instruction_gen: u64,
    /// The socket inode number (syscall tier: tells a reused socket address apart).
    pub ino: u64,
    /// cgroup v2 id of the process that first used the connection (read once, sent in
    /// every record).
    pub cgroup_id: u64,
    /// That process (tgid) and its name, for the close record: a connection whose open
    /// record found the ring buffer full is still counted under its owner.
    pub owner_pid: u32,
    pub _owner_pad: u32,
    pub owner_comm: [u8; 16],
    /// The (process, fd) last proven to be this socket: the payload of a call is read
    /// from its syscall's arguments only when they name this socket. `FD_UNCHECKED`
    /// until proven; `FD_NONE` for a socket no process's fd names (a kernel socket).
    pub fd: i32,
    pub fd_tgid: u32,
    pub tuple: SockTuple,
    /// `STATE_*`.
    pub kind: u8,
    pub role: u8,
    /// Whether the open record was sent.
    pub announced: u8,
    /// Whether an instruction was applied (until then, at most `undecided_bytes` per
    /// direction are copied).
    pub instructed: u8,
    /// `MODE_*` by direction.
    pub mode: [u8; 2],
    /// Whether `fd`/`fd_tgid` name this socket (1) or were found not to (0).
    pub fd_ok: u8,
    /// A record of this connection was lost: the next call sends a counts record first,
    /// so userspace's counters are whole again before the close.
    pub resend_totals: u8,
}

/// Userspace's word on one connection, by connection id. A missing or stale one fails
/// safe: the kernel then copies everything the parser could need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instruction {
    /// By direction: the stream offset up to which the parser skips by length (bytes
    /// below it are not copied; an offset the connection has passed does nothing).
    pub skip_until: [u64; 2],
    /// `MODE_*` by direction.
    pub mode: [u8; 2],
    pub _pad: [u8; 6],
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
    pub inode_ino: u32,
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
}

/// Read-only configuration of the kernel programs, set by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// [`Tier`] in force: the other tier's programs, if loaded, do nothing.
    pub tier: u32,
    /// The agent's own tgid: its sockets (the /metrics endpoint) are not traced.
    pub agent_pid: u32,
    /// Wake the reader each time the bytes waiting in the ring buffer cross a multiple of
    /// this (a power of two); between wake-ups the agent drains on a short timer.
    /// Batching wake-ups keeps the overhead per event low.
    pub wakeup_bytes: u32,
    /// Most payload bytes copied per call.
    pub call_capture: u32,
    /// Bytes per direction copied before the connection's first instruction.
    pub undecided_bytes: u32,
    /// Before its first instruction a connection's payload (past its first
    /// `DETECT_BYTES`) is copied only while less than this many bytes wait in the ring
    /// buffer (half of it): connections userspace has decided on keep the room.
    pub undecided_ring_bytes: u32,
    pub kernel: KernelOffsets,
}

/// TCP states used by the kernel side (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

const _: () = assert!(core::mem::size_of::<SockTuple>() == 40);
const _: () = assert!(core::mem::size_of::<Totals>() == 144);
const _: () = assert!(HEADER_LEN == 128);
const _: () = assert!(SUMMARY_RECORD_LEN == 288);
const _: () = assert!(core::mem::size_of::<SockState>() == 280);
const _: () = assert!(core::mem::size_of::<Instruction>() == 24);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);
const _: () = assert!(core::mem::size_of::<Config>() == 104);

// ---------------------------------------------------------------------------------------
// IP-layer byte accounting (cgroup_skb programs)

/// Flow tables, double-buffered: the programs add to the one [`MAP_NET_ACTIVE`] names
/// (and to its per-CPU caches, [`MAP_NET_CACHE`]), userspace flips the index, waits out
/// the programs still writing the other one (an RCU grace period), then reads and empties
/// it and its caches. Nothing is lost between read and delete.
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

/// Per-CPU write-combining caches in front of the flow tables, one element per table
/// (same index as [`MAP_NET_FLOWS`]): a packet of a flow already in its CPU's slot adds
/// to it there, with no hash-table lookup and no atomic; another flow in that slot is
/// first added to the table. Drained with the table it belongs to, from every CPU.
pub const MAP_NET_CACHE: &str = "NET_CACHE";
/// Slots of each CPU's cache (direct-mapped by a hash of the key; a power of two).
pub const NET_CACHE_SLOTS: usize = 64;

/// One cached flow: its key and what it counted since it took the slot. An empty slot
/// is all zeroes (no real key has family 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub counters: FlowCounters,
}

/// One CPU's cache for one table.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowCache {
    pub slots: [FlowSlot; NET_CACHE_SLOTS],
}

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 64);
const _: () = assert!(NET_CACHE_SLOTS.is_power_of_two());

// ---------------------------------------------------------------------------------------
// Cgroups as they are created (tracepoint cgroup:cgroup_mkdir)

/// cgroup v2 id to [`CgroupPath`], written when the cgroup is created: userspace asks it
/// for an id its walk of the hierarchy does not know, so a cgroup removed before the
/// agent first looked at it (a pod whose last connections are still being drained) keeps
/// its name.
pub const MAP_CGROUP_PATHS: &str = "CGROUP_PATHS";
/// Cgroups remembered (LRU): those created since userspace last needed one.
pub const CGROUP_PATH_ENTRIES: u32 = 4096;
/// Longest path kept, with its NUL (the tracepoint's own buffer holds 1,024 bytes,
/// `TRACE_CGROUP_PATH_LEN` in kernel/cgroup/cgroup.c; a kubelet container's path is about
/// 230). A longer path is not stored.
pub const CGROUP_PATH_BYTES: usize = 512;

/// A cgroup's path relative to the v2 root (`/kubepods.slice/...`), NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupPath {
    /// Bytes of `path` before the NUL.
    pub len: u32,
    pub _pad: u32,
    pub path: [u8; CGROUP_PATH_BYTES],
}

const _: () = assert!(core::mem::size_of::<CgroupPath>() == 8 + CGROUP_PATH_BYTES);

// SAFETY: plain old data: repr(C), Copy, no implicit padding (checked above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowSlot {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowCache {}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain old data: repr(C), Copy, no implicit padding (checked above).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Instruction {}
    unsafe impl aya::Pod for Totals {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for SummaryRecord {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowCounters {}
    unsafe impl aya::Pod for fd_cache::FdEntry {}
    unsafe impl aya::Pod for fd_cache::FdProc {}
    unsafe impl aya::Pod for CgroupPath {}
}
