//! The syscall tier (kernels before 6.3, e.g. EKS's 6.1 nodes): a tracepoint on the exit
//! of each data syscall. A call that moved nothing returns at once; otherwise the exit
//! reads the call's fd and buffer from the task's saved registers (`regs.rs`), finds the
//! fd's socket (in the fd cache, `fd_cache.rs`; on a miss by a walk of the task's fd
//! table), and hands the call to the shared connection code, whose state is kept by
//! socket address (classic tracepoints cannot reach socket storage).
//!
//! No entry programs: the registers still hold the arguments at the exit, so a pipe or
//! file read pays one program and one cache lookup, and a socket call no table of calls
//! in flight. Timing is the socket tier's: both `enter_ns` and `exit_ns` are the exit.
//! The return value is a plain load from the tracepoint record (`ret` at 16).

use agent_common::{
    Direction, DropReason, SockState, Syscall, FD_UNCHECKED, PAYLOAD_BUFFER, PAYLOAD_IOVEC,
    PAYLOAD_MSGHDR, PAYLOAD_NONE, STATE_IGNORED, STATE_TCP, STAT_STATES_IGNORED,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};

use crate::{
    bump_stat,
    connection::{on_call, reset, scratch_state, Call, Payload, Slot, SYS_STATES},
    count_drop,
    fd_cache::{self, Lookup, Walk},
    is_agent,
    regs::syscall_args,
    socket,
};

const MSG_PEEK: u64 = 2;
/// The kernel's limit on *mmsg vectors (UIO_MAXIOV).
const MAX_MMSG: u32 = 1024;

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: every sys_exit_* record holds `long ret` at 16.
    unsafe { *((ctx.as_ptr() as *const u8).add(16) as *const i64) }
}

macro_rules! data_syscall {
    ($exit:ident, $syscall:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $syscall);
            0
        }
    };
}

data_syscall!(sys_exit_read, Syscall::Read);
data_syscall!(sys_exit_write, Syscall::Write);
data_syscall!(sys_exit_readv, Syscall::Readv);
data_syscall!(sys_exit_writev, Syscall::Writev);
data_syscall!(sys_exit_recvfrom, Syscall::Recvfrom);
data_syscall!(sys_exit_sendto, Syscall::Sendto);
data_syscall!(sys_exit_recvmsg, Syscall::Recvmsg);
data_syscall!(sys_exit_sendmsg, Syscall::Sendmsg);
data_syscall!(sys_exit_recvmmsg, Syscall::Recvmmsg);
data_syscall!(sys_exit_sendmmsg, Syscall::Sendmmsg);
data_syscall!(sys_exit_sendfile64, Syscall::Sendfile);

/// Where a syscall's bytes are, and which way they go.
#[inline(always)]
fn shape(syscall: Syscall) -> (u8, Direction) {
    match syscall {
        Syscall::Read | Syscall::Recvfrom => (PAYLOAD_BUFFER as u8, Direction::Receive),
        Syscall::Write | Syscall::Sendto => (PAYLOAD_BUFFER as u8, Direction::Transmit),
        Syscall::Readv => (PAYLOAD_IOVEC as u8, Direction::Receive),
        Syscall::Writev => (PAYLOAD_IOVEC as u8, Direction::Transmit),
        Syscall::Recvmsg => (PAYLOAD_MSGHDR as u8, Direction::Receive),
        Syscall::Sendmsg => (PAYLOAD_MSGHDR as u8, Direction::Transmit),
        Syscall::Recvmmsg => (PAYLOAD_NONE as u8, Direction::Receive),
        _ => (PAYLOAD_NONE as u8, Direction::Transmit),
    }
}

/// The exit of `syscall` (known to each program, so the verifier follows one path per
/// program rather than one per syscall and direction).
#[inline(always)]
fn on_exit(ctx: &TracePointContext, syscall: Syscall) {
    let ret = ret(ctx);
    if ret <= 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent(pid_tgid) {
        return;
    }
    let Some(regs) = syscall_args() else {
        return;
    };
    let [fd, arg_ptr, arg_count, arg3] = regs.args;
    // A peek moves nothing: the same bytes are read again, and counted then.
    let flags = match syscall {
        Syscall::Recvfrom => arg3,
        Syscall::Recvmsg => arg_count,
        _ => 0,
    };
    if flags & MSG_PEEK != 0 {
        return;
    }
    let fd = fd as i32;
    let tgid = (pid_tgid >> 32) as u32;
    // Most calls are answered by the fd cache: a pipe or file costs its lookup and
    // nothing more; a miss walks the fd table and caches what it found.
    let found = match fd_cache::lookup(tgid, fd) {
        Lookup::Socket(found) => found,
        Lookup::NotSocket => return,
        Lookup::Miss(before) => match fd_cache::walk(fd) {
            Walk::Socket(found) => {
                if let Some(before) = before {
                    fd_cache::fill(tgid, fd, &before, found.sk, found.ino);
                }
                found
            }
            Walk::NotSocket => {
                if let Some(before) = before {
                    fd_cache::fill(tgid, fd, &before, 0, 0);
                }
                return;
            }
            Walk::Unknown => return,
        },
    };
    // A socket known not to be TCP costs this one lookup from now on.
    let Some(state) = state_of(found.sk, found.ino) else {
        return;
    };
    if state.kind == STATE_IGNORED {
        return;
    }
    if state.tuple.family == 0 {
        match socket::read_tuple(found.sk) {
            Ok(tuple) => state.tuple = tuple,
            Err(_) => {
                count_drop(DropReason::SocketUnreadable);
                return;
            }
        }
    }
    // *mmsg return a message count: their bytes are the entries' msg_len.
    let bytes = if matches!(syscall, Syscall::Recvmmsg | Syscall::Sendmmsg) {
        mmsg_bytes(arg_ptr, ret as u64)
    } else {
        ret as u64
    };
    let (payload, direction) = shape(syscall);
    let now = unsafe { bpf_ktime_get_ns() };
    let mut call = Call {
        direction: direction as usize,
        syscall: syscall as u8,
        bytes,
        fd,
        pid_tgid,
        enter_ns: now,
        exit_ns: now,
        payload: Payload {
            class: payload as u32,
            ptr: arg_ptr,
            count: arg_count,
        },
        call_offset: 0,
        kind_calls: 0,
    };
    on_call(state, &mut call);
}

/// The connection state of the call's socket, created on first sight; a state left by an
/// earlier socket at the same address (its close was not seen) is replaced.
#[inline(always)]
fn state_of(sk: u64, ino: u64) -> Option<&'static mut SockState> {
    if let Some(state) = SYS_STATES.get_ptr_mut(&sk) {
        let state = unsafe { &mut *state };
        if state.ino == 0 {
            // Created at the handshake, before any fd named it.
            state.ino = ino;
        }
        if state.ino == ino {
            return Some(state);
        }
    }
    let fresh = scratch_state(Slot::DataPath)?;
    match socket::is_tcp(sk) {
        Ok(true) => reset(fresh, agent_common::Role::Unknown as u8, Slot::DataPath),
        Ok(false) => {
            fresh.kind = STATE_IGNORED;
            bump_stat(STAT_STATES_IGNORED);
        }
        Err(_) => {
            count_drop(DropReason::SocketUnreadable);
            return None;
        }
    }
    fresh.ino = ino;
    fresh.fd = FD_UNCHECKED;
    if SYS_STATES.insert(&sk, fresh, 0).is_err() {
        count_drop(DropReason::StateFull);
        return None;
    }
    let state = SYS_STATES.get_ptr_mut(&sk)?;
    let state = unsafe { &mut *state };
    (state.kind == STATE_TCP || state.kind == STATE_IGNORED).then_some(state)
}

/// State of a *mmsg sum, shared with the bpf_loop callback.
#[repr(C)]
struct MmsgSum {
    vec: u64,
    messages: u64,
    total: u64,
}

/// The *mmsg calls return a message count; the bytes are each entry's `msg_len`
/// (struct mmsghdr: a 56-byte msghdr then `unsigned int msg_len`, 64 bytes in all).
extern "C" fn mmsg_step(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let sum = unsafe { &mut *(ctx as *mut MmsgSum) };
    let i = index as u64;
    if i >= sum.messages {
        return 1;
    }
    let len = unsafe { bpf_probe_read_user((sum.vec + i * 64 + 56) as *const u32) }.unwrap_or(0);
    sum.total += len as u64;
    0
}

#[inline(always)]
fn mmsg_bytes(vec: u64, messages: u64) -> u64 {
    let mut sum = MmsgSum {
        vec,
        messages,
        total: 0,
    };
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            MAX_MMSG,
            mmsg_step as *mut core::ffi::c_void,
            (&mut sum as *mut MmsgSum).cast(),
            0,
        )
    };
    sum.total
}
