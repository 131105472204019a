//! nodetap kernel programs: syscall and socket-state tracepoints that report TCP socket
//! activity to userspace. They stay small: find the socket, copy a bounded prefix, stamp
//! the event, push it, count what could not be pushed. All parsing happens in userspace.
#![no_std]
// The BPF target lacks AtomicU64::fetch_add; network.rs uses the intrinsic.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod network;
mod socket;

use agent_common::{
    Config, DataEvent, DropReason, EventKind, PendingCall, Role, SockTuple, Syscall, AF_INET,
    AF_INET6, DROP_REASONS, HEADER_LEN, MAX_CAPTURE, PENDING_ENTRIES, STATS_SLOTS,
    STAT_RINGBUF_AVAIL, TCP_CLOSE, TCP_LISTEN,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};

/// Set by the loader (`EbpfLoader::set_global`) before the programs are loaded.
#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_common::DEFAULT_RINGBUF_BYTES, 0);

/// Syscalls in flight on a TCP socket, keyed by pid_tgid (one per thread at a time).
#[map(name = "PENDING")]
static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(PENDING_ENTRIES, 0);

/// Counters of lost or degraded events, indexed by `DropReason`.
#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS as u32, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// Per-CPU space to build a data event in: too big for the 512-byte eBPF stack.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Marker in `PendingCall::syscall` for a connect in flight.
const PENDING_CONNECT: u8 = 200;
const EINPROGRESS: i64 = 115;
/// Offsets in a syscall tracepoint record (see .../syscalls/sys_enter_*/format): the
/// arguments start after the common header and `__syscall_nr`; `ret` likewise.
const SYS_ARG0: usize = 16;
const SYS_RET: usize = 16;
/// At most this many iovecs are followed per call. gRPC's C core writes a slice per
/// header piece, so one HEADERS frame spans dozens; bpf_loop keeps the verifier's cost
/// independent of this bound.
const MAX_IOV: u32 = 128;
/// At most this many mmsghdr entries are summed per *mmsg call.
const MAX_MMSG: usize = 8;

#[inline(always)]
fn config() -> &'static Config {
    &CONFIG
}

#[inline(always)]
fn read_config_u32(field: &u32) -> u32 {
    // The loader rewrites the global after compilation: stop the compiler from folding
    // the zero it was compiled with.
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn is_agent(pid_tgid: u64) -> bool {
    (pid_tgid >> 32) as u32 == read_config_u32(&config().agent_pid)
}

#[inline(always)]
fn sys_arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(SYS_ARG0 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn sys_ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(SYS_RET) }.unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------
// Data syscalls: the entry saves the arguments if the fd is a TCP socket, the exit sends
// the event with the return value and the payload prefix.

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $syscall:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_data_enter(&ctx, $syscall);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_data_exit(&ctx);
            0
        }
    };
}

data_syscall!(sys_enter_read, sys_exit_read, Syscall::Read);
data_syscall!(sys_enter_write, sys_exit_write, Syscall::Write);
data_syscall!(sys_enter_readv, sys_exit_readv, Syscall::Readv);
data_syscall!(sys_enter_writev, sys_exit_writev, Syscall::Writev);
data_syscall!(sys_enter_recvfrom, sys_exit_recvfrom, Syscall::Recvfrom);
data_syscall!(sys_enter_sendto, sys_exit_sendto, Syscall::Sendto);
data_syscall!(sys_enter_recvmsg, sys_exit_recvmsg, Syscall::Recvmsg);
data_syscall!(sys_enter_sendmsg, sys_exit_sendmsg, Syscall::Sendmsg);
data_syscall!(sys_enter_recvmmsg, sys_exit_recvmmsg, Syscall::Recvmmsg);
data_syscall!(sys_enter_sendmmsg, sys_exit_sendmmsg, Syscall::Sendmmsg);
data_syscall!(sys_enter_sendfile64, sys_exit_sendfile64, Syscall::Sendfile);

#[inline(always)]
fn on_data_enter(ctx: &TracePointContext, syscall: Syscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return;
    }
    let fd = sys_arg(ctx, 0) as i32;
    let Some((sock_id, tuple)) = socket::tcp_socket_of_fd(fd, &config().kernel) else {
        return;
    };
    let pending = PendingCall {
        sock_id,
        arg_ptr: sys_arg(ctx, 1),
        arg_count: sys_arg(ctx, 2),
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd,
        syscall: syscall as u8,
        _pad: [0; 3],
        tuple,
    };
    if PENDING.insert(pid_tgid, pending, 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
}

#[inline(always)]
fn on_data_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING.get(pid_tgid) }).copied() else {
        return;
    };
    let _ = PENDING.remove(pid_tgid);
    let ret = sys_ret(ctx);
    if ret <= 0 {
        return;
    }
    let Some(syscall) = syscall_from_u8(pending.syscall) else {
        return;
    };
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let event = unsafe { &mut *event };
    let bytes = match syscall {
        Syscall::Recvmmsg | Syscall::Sendmmsg => mmsg_bytes(pending.arg_ptr, ret as u64),
        _ => ret as u64,
    };
    fill_header(
        event,
        EventKind::Data,
        pid_tgid,
        pending.sock_id,
        pending.fd,
        pending.tuple,
    );
    let h = &mut event.header;
    h.direction = syscall.direction() as u8;
    h.syscall = syscall as u8;
    h.role = Role::Unknown as u8;
    h.enter_ns = pending.enter_ns;
    h.bytes = bytes;
    let captured = copy_payload(event, syscall, &pending, bytes);
    event.header.captured = captured as u32;
    submit(event, HEADER_LEN + captured);
}

fn syscall_from_u8(v: u8) -> Option<Syscall> {
    // A match rather than Syscall::from_u8: iterators over arrays are a poor fit for the
    // verifier.
    Some(match v {
        1 => Syscall::Read,
        2 => Syscall::Write,
        3 => Syscall::Readv,
        4 => Syscall::Writev,
        5 => Syscall::Recvfrom,
        6 => Syscall::Sendto,
        7 => Syscall::Recvmsg,
        8 => Syscall::Sendmsg,
        9 => Syscall::Recvmmsg,
        10 => Syscall::Sendmmsg,
        11 => Syscall::Sendfile,
        _ => return None,
    })
}

/// The *mmsg calls return a message count; the bytes are each entry's `msg_len`
/// (struct mmsghdr: a 56-byte msghdr then `unsigned int msg_len`).
#[inline(always)]
fn mmsg_bytes(vec: u64, messages: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..MAX_MMSG as u64 {
        if i >= messages {
            break;
        }
        let len = unsafe { bpf_probe_read_user((vec + i * 64 + 56) as *const u32) }.unwrap_or(0);
        total += len as u64;
    }
    total
}

/// Copies up to `capture_len` bytes of what the syscall moved into the event and returns
/// how many were copied.
#[inline(always)]
fn copy_payload(
    event: &mut DataEvent,
    syscall: Syscall,
    pending: &PendingCall,
    bytes: u64,
) -> usize {
    let cap = read_config_u32(&config().capture_len) as u64;
    let want = if bytes < cap { bytes } else { cap };
    match syscall {
        Syscall::Read | Syscall::Write | Syscall::Recvfrom | Syscall::Sendto => {
            copy_user(event, 0, pending.arg_ptr, want)
        }
        Syscall::Readv | Syscall::Writev => copy_iovecs(pending.arg_ptr, pending.arg_count, want),
        Syscall::Recvmsg | Syscall::Sendmsg => {
            // struct user_msghdr: msg_iov at offset 16, msg_iovlen at 24.
            let iov = unsafe { bpf_probe_read_user((pending.arg_ptr + 16) as *const u64) };
            let iovlen = unsafe { bpf_probe_read_user((pending.arg_ptr + 24) as *const u64) };
            match (iov, iovlen) {
                (Ok(iov), Ok(iovlen)) => copy_iovecs(iov, iovlen, want),
                _ => {
                    count_drop(DropReason::PayloadUnreadable);
                    0
                }
            }
        }
        // No payload: the bytes are spread over many messages or come from a file.
        Syscall::Recvmmsg | Syscall::Sendmmsg | Syscall::Sendfile => 0,
    }
}

/// State of an iovec walk, on the caller's stack, shared with the bpf_loop callback.
#[repr(C)]
struct IovWalk {
    iov: u64,
    count: u64,
    want: u64,
    done: u64,
}

/// One iovec of the walk: copies its part of the payload; returns 1 to stop.
extern "C" fn iov_step(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let walk = unsafe { &mut *(ctx as *mut IovWalk) };
    let i = index as u64;
    if i >= walk.count || walk.done >= walk.want {
        return 1;
    }
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let event = unsafe { &mut *event };
    let Ok(entry) = (unsafe { bpf_probe_read_user((walk.iov + i * 16) as *const [u64; 2]) }) else {
        count_drop(DropReason::PayloadUnreadable);
        return 1;
    };
    let left = walk.want - walk.done;
    let n = if entry[1] < left { entry[1] } else { left };
    let copied = copy_user(event, walk.done, entry[0], n) as u64;
    walk.done += copied;
    i64::from(copied < n)
}

/// Copies `want` bytes spread over an iovec array, in order. Uses bpf_loop (kernel 5.17+):
/// the verifier checks the step once instead of once per unrolled iteration.
#[inline(always)]
fn copy_iovecs(iov: u64, count: u64, want: u64) -> usize {
    let mut walk = IovWalk {
        iov,
        count,
        want,
        done: 0,
    };
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            MAX_IOV,
            iov_step as *mut core::ffi::c_void,
            (&mut walk as *mut IovWalk).cast(),
            0,
        )
    };
    walk.done as usize
}

/// Hides a value from LLVM so it cannot drop the masks below by reasoning about ranges
/// the verifier does not track (a volatile stack read; the verifier keeps its bounds).
#[inline(always)]
fn opaque(v: u64) -> u64 {
    unsafe { core::ptr::read_volatile(&v) }
}

/// Copies `len` user bytes from `src` into the payload at `offset`; returns bytes copied.
#[inline(always)]
fn copy_user(event: &mut DataEvent, offset: u64, src: u64, len: u64) -> usize {
    if len == 0 || offset >= MAX_CAPTURE as u64 {
        return 0;
    }
    let room = MAX_CAPTURE as u64 - offset;
    let len = if len < room { len } else { room };
    // For the verifier: offset < MAX_CAPTURE and len < 2 * MAX_CAPTURE, always inside
    // payload + slack. The logic above already keeps them within the payload.
    let offset = opaque(offset) & (MAX_CAPTURE as u64 - 1);
    let len = opaque(len) & (2 * MAX_CAPTURE as u64 - 1);
    if len == 0 {
        return 0;
    }
    let dst = unsafe { event.payload.as_mut_ptr().add(offset as usize) };
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(dst.cast(), len as u32, src as *const _)
    };
    if ret == 0 {
        len as usize
    } else {
        count_drop(DropReason::PayloadUnreadable);
        0
    }
}

// ---------------------------------------------------------------------------------------
// Connection life cycle.

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return 0;
    }
    let pending = PendingCall {
        sock_id: 0,
        arg_ptr: 0,
        arg_count: 0,
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: sys_arg(&ctx, 0) as i32,
        syscall: PENDING_CONNECT,
        _pad: [0; 3],
        tuple: SockTuple::default(),
    };
    if PENDING.insert(pid_tgid, pending, 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(pid_tgid);
    let ret = sys_ret(&ctx);
    // A non-blocking connect returns EINPROGRESS with the addresses already bound.
    if pending.syscall != PENDING_CONNECT || (ret != 0 && ret != -EINPROGRESS) {
        return 0;
    }
    emit_open(pid_tgid, pending.fd, Role::Client, pending.enter_ns);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return;
    }
    let fd = sys_ret(ctx);
    if fd < 0 {
        return;
    }
    emit_open(pid_tgid, fd as i32, Role::Server, unsafe {
        bpf_ktime_get_ns()
    });
}

#[inline(always)]
fn emit_open(pid_tgid: u64, fd: i32, role: Role, enter_ns: u64) {
    let Some((sock_id, tuple)) = socket::tcp_socket_of_fd(fd, &config().kernel) else {
        return;
    };
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let event = unsafe { &mut *event };
    fill_header(event, EventKind::Open, pid_tgid, sock_id, fd, tuple);
    event.header.role = role as u8;
    event.header.enter_ns = enter_ns;
    submit(event, HEADER_LEN);
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return 0;
    }
    let fd = sys_arg(&ctx, 0) as i32;
    let Some((sock_id, tuple)) = socket::tcp_socket_of_fd(fd, &config().kernel) else {
        return 0;
    };
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let event = unsafe { &mut *event };
    fill_header(event, EventKind::FdClose, pid_tgid, sock_id, fd, tuple);
    submit(event, HEADER_LEN);
    0
}

/// `sock:inet_sock_set_state`: a TCP socket reaching TCP_CLOSE is gone, whoever closed it
/// (close(2), process exit, reset, time-wait). This fires in any context, often softirq,
/// so the caller's pid means nothing here.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let off = &config().state_tp;
    let newstate: i32 = unsafe { ctx.read_at(read_config_u32(&off.newstate) as usize)? };
    if newstate != TCP_CLOSE {
        return Ok(());
    }
    let oldstate: i32 = unsafe { ctx.read_at(read_config_u32(&off.oldstate) as usize)? };
    let protocol: u16 = unsafe { ctx.read_at(read_config_u32(&off.protocol) as usize)? };
    if oldstate == TCP_LISTEN || protocol != socket::IPPROTO_TCP {
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(read_config_u32(&off.family) as usize)? };
    let mut tuple = SockTuple {
        family,
        local_port: unsafe { ctx.read_at(read_config_u32(&off.sport) as usize)? },
        remote_port: unsafe { ctx.read_at(read_config_u32(&off.dport) as usize)? },
        ..SockTuple::default()
    };
    if family == AF_INET {
        let s: [u8; 4] = unsafe { ctx.read_at(read_config_u32(&off.saddr) as usize)? };
        let d: [u8; 4] = unsafe { ctx.read_at(read_config_u32(&off.daddr) as usize)? };
        tuple.local_addr[..4].copy_from_slice(&s);
        tuple.remote_addr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        tuple.local_addr = unsafe { ctx.read_at(read_config_u32(&off.saddr_v6) as usize)? };
        tuple.remote_addr = unsafe { ctx.read_at(read_config_u32(&off.daddr_v6) as usize)? };
    } else {
        return Ok(());
    }
    let sock_id: u64 = unsafe { ctx.read_at(read_config_u32(&off.skaddr) as usize)? };
    socket::forget_socket(sock_id);
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    let event = unsafe { &mut *event };
    fill_header(
        event,
        EventKind::Close,
        bpf_get_current_pid_tgid(),
        sock_id,
        -1,
        tuple,
    );
    submit(event, HEADER_LEN);
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[inline(always)]
fn fill_header(
    event: &mut DataEvent,
    kind: EventKind,
    pid_tgid: u64,
    sock_id: u64,
    fd: i32,
    tuple: SockTuple,
) {
    let now = unsafe { bpf_ktime_get_ns() };
    let h = &mut event.header;
    h.kind = kind as u8;
    h.direction = 0;
    h.syscall = 0;
    h.role = 0;
    h.fd = fd;
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.sock_id = sock_id;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.enter_ns = now;
    h.exit_ns = now;
    h.bytes = 0;
    h.captured = 0;
    h._pad = 0;
    h.comm = if matches!(kind, EventKind::Open | EventKind::FdClose) {
        socket::process_comm(&config().kernel)
    } else {
        [0; 16]
    };
    h.tuple = tuple;
}

/// Sends the first `len` bytes of the event; counts it if the ring buffer is full.
#[inline(always)]
fn submit(event: &DataEvent, len: usize) {
    if len < HEADER_LEN || len > HEADER_LEN + MAX_CAPTURE {
        return;
    }
    // Bounded for the verifier as in copy_user.
    let len = (opaque(len as u64) & (4 * MAX_CAPTURE as u64 - 1)) as usize;
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(slot) = STATS.get_ptr_mut(STAT_RINGBUF_AVAIL) {
        unsafe { *slot = waiting };
    }
    // Wake the reader only when enough has piled up; it also drains on a short timer.
    let flags = if waiting + len as u64 >= read_config_u32(&config().wakeup_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let bytes =
        unsafe { core::slice::from_raw_parts((event as *const DataEvent).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, flags as u64).is_err() {
        count_drop(DropReason::RingbufFull);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
