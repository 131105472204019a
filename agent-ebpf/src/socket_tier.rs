//! The socket tier (Linux 6.3+): `sock:sock_send_length` and `sock:sock_recv_length`.
//!
//! They fire inside `sock_sendmsg`/`sock_recvmsg` for every path into a socket (write,
//! writev, send*, recv*, read on a socket, each message of *mmsg, io_uring, splice) and
//! never for files or pipes, so a process that does no networking runs none of this. The
//! socket comes with the event; its state lives in socket storage. The payload is read
//! from the arguments of the syscall in progress (its registers, `regs.rs`),
//! and only once the syscall's fd is proven to be this socket (a kernel socket used on
//! behalf of a file write, e.g. NFS, gets no payload). Timing: the tracepoint fires at the
//! socket operation's return, so both `enter_ns` and `exit_ns` are that instant.

use core::ffi::c_void;

use agent_common::{
    Direction, DropReason, Role, Syscall, MODE_COUNTS_ONLY, PAYLOAD_NONE, STATE_IGNORED,
    STAT_STATES_IGNORED, SYSCALL_TABLE_ENTRIES,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    bump_stat,
    connection::{on_call, reset, socket_state, Call, Payload, Slot},
    count_drop, is_agent,
    regs::{syscall_args, SyscallArgs},
    socket, SYSCALL_TABLE,
};

const MSG_PEEK: i32 = 2;

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_socket_call(&ctx, Direction::Transmit);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_socket_call(&ctx, Direction::Receive);
    0
}

#[inline(always)]
fn on_socket_call(ctx: &BtfTracePointContext, direction: Direction) {
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return;
    }
    // A peek moves nothing: the same bytes are read again, and counted then.
    let flags: i32 = ctx.arg(2);
    if direction == Direction::Receive && flags & MSG_PEEK != 0 {
        return;
    }
    let sk: *mut c_void = ctx.arg(0);
    let Some(state) = socket_state(sk, true) else {
        return;
    };
    if state.kind == STATE_IGNORED {
        return;
    }
    if state.conn_id == 0 {
        // First sight of this socket (it predates the agent, or is not TCP). The agent's
        // own sockets are ignored from here on, so later calls need not ask who calls.
        if is_agent(bpf_get_current_pid_tgid()) {
            state.kind = STATE_IGNORED;
            return;
        }
        match socket::is_tcp(sk as u64) {
            Ok(true) => reset(state, Role::Unknown as u8, Slot::DataPath),
            Ok(false) => {
                state.kind = STATE_IGNORED;
                bump_stat(STAT_STATES_IGNORED);
                return;
            }
            Err(_) => {
                count_drop(DropReason::SocketUnreadable);
                return;
            }
        }
    }
    if state.tuple.family == 0 {
        match socket::read_tuple(sk as u64) {
            Ok(tuple) => state.tuple = tuple,
            Err(_) => {
                count_drop(DropReason::SocketUnreadable);
                return;
            }
        }
    }
    let (mut syscall, mut payload, fd) = syscall_in_progress();
    let d = direction as usize & 1;
    let counts_only = state.mode[d] == MODE_COUNTS_ONLY && state.announced != 0;
    // A counts-only direction needs no payload: skip the fd proof. Nor does it need the
    // caller (its records, counts, name the connection's owner) or the time.
    let mut pid_tgid = 0;
    if counts_only {
        payload = Payload::NONE;
    } else {
        pid_tgid = bpf_get_current_pid_tgid();
        // Before a connection is announced: the handshake hook makes states without
        // knowing whose they are (a server's socket is born in softirq), and the agent's
        // own connections (its scrapes, its API calls) are not traffic to report.
        if state.announced == 0 && is_agent(pid_tgid) {
            state.kind = STATE_IGNORED;
            return;
        }
    }
    // A counts-only call is timed only if it sends a record (see `connection::stamp`).
    let now = if counts_only {
        0
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    if payload.class != PAYLOAD_NONE {
        // The payload is in this syscall's arguments only if its fd is this socket.
        let tgid = (pid_tgid >> 32) as u32;
        if state.fd != fd || state.fd_tgid != tgid {
            state.fd = fd;
            state.fd_tgid = tgid;
            state.fd_ok = socket::socket_of_fd(fd).is_some_and(|s| s.sk == sk as u64) as u8;
        }
        if state.fd_ok == 0 {
            payload = Payload::NONE;
            syscall = Syscall::Other as u8;
        }
    }
    let mut call = Call {
        direction: direction as usize,
        syscall,
        bytes: ret as u64,
        fd,
        pid_tgid,
        enter_ns: now,
        exit_ns: now,
        payload,
        call_offset: 0,
        kind_calls: 0,
    };
    on_call(state, &mut call);
}

/// The syscall in progress (`Syscall as u8`), where its bytes are, and its fd: from the
/// task's saved user registers and the syscall table. Anything the table does not know
/// (io_uring, splice, sendfile, a kernel socket's user) has no payload there.
#[inline(always)]
fn syscall_in_progress() -> (u8, Payload, i32) {
    let other = (Syscall::Other as u8, Payload::NONE, -1);
    let Some(SyscallArgs { nr, args }) = syscall_args() else {
        return other;
    };
    let [di, si, dx, _] = args;
    // An io_uring worker's registers are zeroed: no user buffer.
    if si == 0 || nr >= SYSCALL_TABLE_ENTRIES as u64 {
        return other;
    }
    let Some(entry) = SYSCALL_TABLE.get(nr as u32) else {
        return other;
    };
    let entry = *entry;
    if entry == 0 {
        return other;
    }
    let payload = Payload {
        class: (entry >> 8) & 3,
        ptr: si,
        count: dx,
    };
    (entry as u8, payload, di as i32)
}
