//! The per-connection state both tiers share, and what one call does with it: update the
//! exact counters, pick up userspace's instruction, announce the connection once, and send
//! what userspace asked for (everything the parser needs, nothing of what it skips, or
//! nothing at all for a counts-only connection).

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering::Relaxed},
};

use agent_common::{
    DropReason, Role, SockState, CALL_KINDS, DETECT_BYTES, FD_UNCHECKED, MODE_COUNTS_ONLY,
    PAYLOAD_BUFFER, SYSCALL_SOCKETS,
};
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_probe_read_user,
        generated::bpf_sk_storage_get,
    },
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuArray},
};

use crate::{
    config, copy_words, count_drop, read_config_u32, record, zero_words, INSTRUCTIONS,
    INSTRUCTION_GEN, REPORT_EPOCH,
};

/// Socket tier: the state lives in the socket itself and is freed with it, so a socket
/// address reused by a new socket never finds an old connection's state.
#[btf_map]
pub static SOCK_STATES: SkStorage<SockState> = SkStorage::new();

/// Syscall tier (classic tracepoints cannot reach socket storage): by socket address,
/// removed at TCP_CLOSE; the socket inode number tells a reused address apart. LRU, so a
/// state whose close was never seen cannot hold its slot for ever.
#[map(name = "SYS_STATES")]
pub static SYS_STATES: LruHashMap<u64, SockState> =
    LruHashMap::with_max_entries(SYSCALL_SOCKETS, 0);

/// Which kind of program takes a per-CPU slot. A program can be interrupted on its CPU
/// by a softirq that runs another of the agent's programs: `inet_sock_set_state` fires
/// in softirq for a handshake or a reset that arrives while a data-path program (a
/// syscall exit, a socket send or receive) is between reading a per-CPU slot and writing
/// it back. Each kind has its own slot, so the two never share one. Programs of one kind
/// do not nest: a BTF tracepoint program is skipped while it already runs on that CPU,
/// syscall tracepoints never run in interrupt context, and the data-path programs of the
/// socket tier run only in a task.
#[derive(Clone, Copy)]
pub enum Slot {
    /// The data path: syscall exits (syscall tier), socket sends and receives (socket
    /// tier).
    DataPath = 0,
    /// The connection life cycle (`inet_sock_set_state`), also in softirq.
    Lifecycle = 1,
}

const SLOTS: u32 = 2;

/// Per-CPU room to build a new syscall-tier state in before it is inserted, one per
/// [`Slot`]: a 248-byte struct on the BPF stack would leave too little for the calls
/// below it (Linux 6.1 counts the stack of bpf_loop's callback into the 512-byte limit).
#[map(name = "NEW_STATE")]
static NEW_STATE: PerCpuArray<SockState> = PerCpuArray::with_max_entries(SLOTS, 0);

/// A zeroed per-CPU state to build a new connection in (then copied by a map insert).
#[inline(always)]
pub fn scratch_state(slot: Slot) -> Option<&'static mut SockState> {
    let state = NEW_STATE.get_ptr_mut(slot as u32)?;
    unsafe {
        core::ptr::write_bytes(state, 0, 1);
        Some(&mut *state)
    }
}

/// Per-CPU counters behind connection ids, one per [`Slot`]. (A fetching atomic add on
/// one counter would do, but needs the v3 instruction set: see `on_call`.)
#[map(name = "CONN_IDS")]
static CONN_IDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

/// A new connection id, unique for the life of the kernel: a counter of the CPU and
/// slot, the slot, and the CPU. One counter shared by a program and the softirq that
/// interrupts it could hand both the same id.
#[inline(always)]
pub fn new_conn_id(slot: Slot) -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64 & 0xfff;
    let n = match CONN_IDS.get_ptr_mut(slot as u32) {
        Some(counter) => unsafe {
            *counter += 1;
            *counter
        },
        None => 0,
    };
    (n << 13) | ((slot as u64) << 12) | cpu
}

/// The socket tier's state of `sk`, created (zeroed) when `create` is set.
#[inline(always)]
pub fn socket_state(sk: *mut c_void, create: bool) -> Option<&'static mut SockState> {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    let map = &SOCK_STATES as *const SkStorage<SockState> as *mut c_void;
    let state = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), flags) };
    if state.is_null() {
        if create {
            count_drop(DropReason::StateFull);
        }
        return None;
    }
    Some(unsafe { &mut *(state as *mut SockState) })
}

/// Starts a connection in `state` (fresh or reused): a new id, zero counters.
#[inline(always)]
pub fn reset(state: &mut SockState, role: u8, slot: Slot) {
    zero_words(state);
    state.conn_id = new_conn_id(slot);
    state.fd = FD_UNCHECKED;
    state.kind = agent_common::STATE_TCP;
    state.role = role;
    crate::bump_stat(agent_common::STAT_STATES_CREATED);
}

/// Where a call's bytes are in the caller's memory: `class` is `PAYLOAD_*` (none: not in
/// the syscall's arguments, e.g. splice, sendfile, io_uring or a kernel socket), `ptr` the
/// buffer, iovec array or msghdr, `count` the iovec count.
#[derive(Clone, Copy)]
pub struct Payload {
    pub class: u32,
    pub ptr: u64,
    pub count: u64,
}

impl Payload {
    pub const NONE: Payload = Payload {
        class: agent_common::PAYLOAD_NONE,
        ptr: 0,
        count: 0,
    };
}

/// One call that moved bytes on a connection.
pub struct Call {
    pub direction: usize,
    /// `Syscall as u8`.
    pub syscall: u8,
    pub bytes: u64,
    pub fd: i32,
    pub pid_tgid: u64,
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub payload: Payload,
    /// Set by [`on_call`]: the stream offset of the call's first byte, and the
    /// connection's count of calls of this kind in this direction, this one included.
    pub call_offset: u64,
    pub kind_calls: u32,
}

/// Picks up userspace's instruction for this connection when any changed since the last
/// look (one array read per call otherwise).
#[inline(always)]
fn refresh_instruction(state: &mut SockState) {
    let Some(gen) = INSTRUCTION_GEN.get(0) else {
        return;
    };
    let gen = *gen;
    if gen == state.instruction_gen {
        return;
    }
    state.instruction_gen = gen;
    if let Some(instruction) = unsafe { INSTRUCTIONS.get(&state.conn_id) } {
        copy_words(&mut state.skip_until, &instruction.skip_until);
        state.mode = instruction.mode;
        state.instructed = 1;
    }
}

/// Whether this is the client's first call and its bytes start a TLS handshake record
/// (content type 22, version 3.x).
#[inline(always)]
fn starts_tls(state: &SockState, call: &Call) -> bool {
    // Client transmitting (0) or server receiving (1): one comparison, role = direction
    // + 1, which keeps the verifier's paths few.
    const _: () = assert!(Role::Client as usize == 1 && Role::Server as usize == 2);
    let from_client = state.role as usize == call.direction + 1;
    if !from_client || call.payload.class != PAYLOAD_BUFFER || call.bytes < 3 {
        return false;
    }
    match unsafe { bpf_probe_read_user(call.payload.ptr as *const [u8; 3]) } {
        Ok([0x16, 0x03, minor]) => minor <= 4,
        _ => false,
    }
}

/// Gives a call that was not timed (a counts-only call in the socket tier) its time,
/// when it is about to be sent.
#[inline(always)]
fn stamp(call: &mut Call) {
    if call.exit_ns == 0 {
        let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        call.enter_ns = now;
        call.exit_ns = now;
    }
}

/// Counts the call and sends what userspace needs of it.
#[inline(always)]
pub fn on_call(state: &mut SockState, call: &mut Call) {
    let d = call.direction & 1;
    let kind = call.syscall as usize & (CALL_KINDS - 1);
    // Atomic: two threads may write one socket at once; the counters must stay exact.
    // The values before the add say where the call's bytes sit: exact unless another
    // thread moved bytes on this socket in between (then two records claim one offset;
    // userspace takes the largest total it sees, and the close carries the exact ones).
    // (A fetching atomic would make it exact, but needs the v3 instruction set.)
    call.call_offset = state.totals.bytes[d];
    call.kind_calls = state.totals.calls[d][kind].wrapping_add(1);
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut state.totals.bytes[d], call.bytes);
        atomic_xadd::<u32, u32, { Relaxed }>(&raw mut state.totals.calls[d][kind], 1);
    }
    let call_offset = call.call_offset;
    refresh_instruction(state);
    if state.announced == 0 {
        if state.owner_pid == 0 {
            state.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
            state.owner_pid = (call.pid_tgid >> 32) as u32;
            state.owner_comm = crate::socket::process_comm();
        }
        if !record::open(state, call) {
            // Nothing else before the open: a data or counts record arriving first would
            // leave the connection without its owner's name (a smaller record can fit
            // where the open did not). The open, once through, carries the totals; the
            // close carries the owner too.
            return;
        }
        state.announced = 1;
    }
    if state.resend_totals != 0 {
        stamp(call);
        if record::counts(state, call) {
            state.resend_totals = 0;
        }
    }
    if state.instructed == 0 && call_offset == 0 && starts_tls(state, call) {
        // Cheap filtering, before userspace's word: a client's first bytes that are a TLS
        // handshake record will never be parsed (userspace would say counts-only).
        state.mode = [MODE_COUNTS_ONLY; 2];
    }
    if state.mode[d] == MODE_COUNTS_ONLY {
        let epoch = REPORT_EPOCH.get(0).copied().unwrap_or(0);
        if epoch != state.report_epoch {
            state.report_epoch = epoch;
            stamp(call);
            if !record::counts(state, call) {
                state.resend_totals = 1;
            }
        }
        return;
    }
    let call = &*call;
    // The part of the call to copy: nothing below the skip window, at most the per-call
    // limit, and before the first instruction at most the undecided budget.
    let bytes = call.bytes;
    let skip = state.skip_until[d];
    let from = if skip > call_offset {
        let s = skip - call_offset;
        if s < bytes {
            s
        } else {
            bytes
        }
    } else {
        0
    };
    let mut limit = read_config_u32(&config().call_capture) as u64;
    let mut capped = true;
    if state.instructed == 0 {
        let budget = read_config_u32(&config().undecided_bytes) as u64;
        let used = call_offset + from;
        let mut room = budget.saturating_sub(used);
        // Undecided payload yields the ring buffer to connections userspace has decided
        // on: an unknown bulk protocol must not crowd out parsed ones before its
        // counts-only instruction arrives.
        // Its first bytes are always copied: without them userspace cannot tell what the
        // connection speaks.
        if call_offset >= DETECT_BYTES
            && crate::ring_waiting() >= read_config_u32(&config().undecided_ring_bytes) as u64
        {
            room = 0;
        }
        if room < limit {
            limit = room;
            capped = false;
        }
    }
    let to = if bytes - from > limit {
        if capped {
            count_drop(DropReason::CallCapped);
        }
        from + limit
    } else {
        bytes
    };
    if !record::data(state, call, from, to) {
        state.resend_totals = 1;
    }
}
