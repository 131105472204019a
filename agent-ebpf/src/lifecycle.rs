//! Connection life from `sock:inet_sock_set_state` (tp_btf): the role at the handshake,
//! the final counters at TCP_CLOSE.
//!
//! tp_btf rather than the classic tracepoint: the socket comes as a typed pointer, so its
//! socket storage is reachable, and a BTF tracepoint's recursion guard is per program, so
//! a close fired from softirq while another of the agent's programs runs on that CPU is
//! not skipped (a classic tracepoint is skipped then, and counted nowhere).

use core::ffi::c_void;

use agent_common::{
    Role, SockState, Tier, STATE_TCP, TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT,
};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    config,
    connection::{reset, scratch_state, socket_state, Slot, SYS_STATES},
    read_config_u32, record, socket,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    on_state(&ctx);
    0
}

#[inline(always)]
fn on_state(ctx: &BtfTracePointContext) {
    let newstate: i32 = ctx.arg(2);
    let role = match newstate {
        // connect(2) sent a SYN: this end is the client.
        TCP_SYN_SENT => Role::Client,
        // A child socket of a listener got a SYN: this end is the server.
        TCP_SYN_RECV => Role::Server,
        TCP_CLOSE => Role::Unknown,
        _ => return,
    };
    let sk: *mut c_void = ctx.arg(0);
    let socket_tier = read_config_u32(&config().tier) == Tier::Socket as u32;
    let oldstate: i32 = ctx.arg(1);
    if newstate == TCP_CLOSE && oldstate == TCP_LISTEN {
        // A listener is not a connection (and its TCP_LISTEN came without this
        // tracepoint). In the syscall tier, a state at its address is an earlier
        // socket's, kept for calls that return after that one's close: the listener's
        // close must not send that connection's close again, long after the agent
        // stopped remembering it as closed. That socket is gone, so its state goes too.
        if !socket_tier {
            let _ = SYS_STATES.remove(&(sk as u64));
        }
        return;
    }
    if newstate == TCP_CLOSE {
        if socket_tier {
            if let Some(state) = socket_state(sk, false) {
                close(state);
            }
        } else {
            // The state stays (the table is LRU): a call returning after the close
            // still belongs to the connection, and a new socket at this address is told
            // apart by its inode number.
            let key = sk as u64;
            if let Some(state) = SYS_STATES.get_ptr_mut(&key) {
                close(unsafe { &mut *state });
            }
        }
        return;
    }
    if !matches!(socket::is_tcp(sk as u64), Ok(true)) {
        return;
    }
    if socket_tier {
        if let Some(state) = socket_state(sk, true) {
            reset(state, role as u8, Slot::Lifecycle);
        }
    } else {
        if let Some(fresh) = scratch_state(Slot::Lifecycle) {
            reset(fresh, role as u8, Slot::Lifecycle);
            let _ = SYS_STATES.insert(&(sk as u64), fresh, 0);
        }
    }
}

/// Sends the final counters of a connection the agent saw move data. The state keeps its
/// id: a call that returns after the close (a reply sent as the peer's reset arrived)
/// still belongs to it; a socket that connects again starts a new connection at
/// TCP_SYN_SENT.
#[inline(always)]
fn close(state: &mut SockState) {
    if state.kind != STATE_TCP || state.conn_id == 0 {
        return;
    }
    if state.announced != 0 || state.totals.bytes[0] != 0 || state.totals.bytes[1] != 0 {
        record::close(state);
    }
}
