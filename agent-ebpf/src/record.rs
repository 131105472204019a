//! Ring buffer records. A data record carries what its call moved (the direction's
//! stream end, the call kind's count); open, counts and close records carry the full
//! counters. After a lost record the next call sends a counts record, so a lost record
//! loses no byte and no call.
//!
//! A data record is reserved in place at the smallest size class that holds its segment
//! (the verifier needs constant reservation sizes) and the payload is read from user
//! memory straight into it: one copy. A call that moved more than one segment's worth is
//! sent as consecutive records, each saying where its bytes sit in the stream.

use core::ffi::c_void;

use agent_common::{
    DropReason, EventHeader, EventKind, SockState, SummaryRecord, FLAG_LAST_SEGMENT, HEADER_LEN,
    MAX_SEGMENT, PAYLOAD_BUFFER, PAYLOAD_IOVEC, PAYLOAD_MSGHDR, PAYLOAD_NONE, STAT_RING_PRODUCED,
    SUMMARY_RECORD_LEN,
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::map,
    maps::PerCpuArray,
};

use crate::{
    config,
    connection::{Call, Payload},
    copy_words, count_drop, opaque, read_config_u32, socket, CLOSED, STATS,
};

/// At most this many iovecs are walked per call (gRPC's C core writes a slice per header
/// piece); bpf_loop keeps the verifier's work independent of the bound.
const MAX_STEPS: u32 = 256;

/// A record of one size class: the header and room for `N` payload bytes.
#[repr(C)]
struct Record<const N: usize> {
    header: EventHeader,
    payload: [u8; N],
}

/// Per-CPU header of the call being sent, copied into each of its records.
#[map(name = "TEMPLATE")]
static TEMPLATE: PerCpuArray<EventHeader> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn fill(h: &mut EventHeader, kind: EventKind, state: &SockState, call: &Call) {
    h.kind = kind as u8;
    h.direction = call.direction as u8;
    h.syscall = call.syscall;
    h.role = state.role;
    h.fd = call.fd;
    // A close (no caller) names the connection's owner.
    h.pid = if call.pid_tgid == 0 {
        state.owner_pid
    } else {
        (call.pid_tgid >> 32) as u32
    };
    h.tid = call.pid_tgid as u32;
    h.conn_id = state.conn_id;
    h.cgroup_id = state.cgroup_id;
    h.enter_ns = call.enter_ns;
    h.exit_ns = call.exit_ns;
    h.bytes = call.bytes;
    h.call_offset = call.call_offset;
    h.payload_offset = 0;
    h.captured = 0;
    h.flags = FLAG_LAST_SEGMENT;
    h.kind_calls = call.kind_calls;
    h._pad = 0;
    copy_words(&mut h.tuple, &state.tuple);
}

/// Wake the reader when this CPU's ring has taken another wake-up threshold's worth of
/// records (counted here: this CPU alone produces into its ring, so no helper call has to
/// ask the ring). Once per threshold, not once per record: a wake-up is an interrupt (a
/// VM exit under a hypervisor), and a reader already woken needs no second one. The
/// reader also drains on a short timer.
#[inline(always)]
fn wakeup_flags(len: usize) -> u64 {
    let Some(slot) = STATS.get_ptr_mut(STAT_RING_PRODUCED) else {
        return BPF_RB_NO_WAKEUP as u64;
    };
    // The ring's own accounting: an 8-byte header, rounded up to 8 bytes.
    let before = unsafe { *slot };
    let after = before + ((len as u64 + 15) & !7);
    unsafe { *slot = after };
    // A power of two (the loader makes it one).
    let mask = !(read_config_u32(&config().wakeup_bytes) as u64).wrapping_sub(1);
    if before & mask != after & mask {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Reserves and sends a record with the connection's full counters; false if the ring
/// buffer is full.
#[inline(always)]
fn summary(kind: EventKind, state: &SockState, call: &Call, comm: bool) -> bool {
    let Some(mut entry) = crate::reserve::<SummaryRecord>() else {
        return false;
    };
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill(&mut record.header, kind, state, call);
    copy_words(&mut record.summary.totals, &state.totals);
    record.summary.comm = if comm {
        socket::process_comm()
    } else if kind == EventKind::Close {
        state.owner_comm
    } else {
        [0; 16]
    };
    entry.submit(wakeup_flags(SUMMARY_RECORD_LEN));
    true
}

/// The connection's first record: addresses, role, owner and its name.
#[inline(always)]
pub fn open(state: &SockState, call: &Call) -> bool {
    summary(EventKind::Open, state, call, true)
}

/// The connection's counters (counts-only connections, and after a lost record).
#[inline(always)]
pub fn counts(state: &SockState, call: &Call) -> bool {
    summary(EventKind::Counts, state, call, false)
}

/// The connection reached TCP_CLOSE: its final counters. If the ring buffer is full they
/// wait in the `CLOSED` table for userspace.
#[inline(always)]
pub fn close(state: &SockState) {
    let now = unsafe { bpf_ktime_get_ns() };
    let call = Call {
        direction: 0,
        syscall: agent_common::Syscall::Other as u8,
        bytes: 0,
        fd: -1,
        pid_tgid: 0,
        enter_ns: now,
        exit_ns: now,
        payload: Payload::NONE,
        call_offset: 0,
        kind_calls: 0,
    };
    if summary(EventKind::Close, state, &call, false) {
        return;
    }
    let Some(record) = CLOSED_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let record = unsafe { &mut *record };
    fill(&mut record.header, EventKind::Close, state, &call);
    copy_words(&mut record.summary.totals, &state.totals);
    record.summary.comm = state.owner_comm;
    if CLOSED
        .insert(&state.conn_id, record, BPF_NOEXIST as u64)
        .is_err()
    {
        count_drop(DropReason::CloseLost);
    }
}

/// Per-CPU room for a close record bound for the `CLOSED` table.
#[map(name = "CLOSED_SCRATCH")]
static CLOSED_SCRATCH: PerCpuArray<SummaryRecord> = PerCpuArray::with_max_entries(1, 0);

/// Sends the call's bytes `from..to` (offsets within the call) as one or more records;
/// a call with nothing to copy still sends one record (its counters and its length).
/// False if a record was lost.
#[inline(always)]
pub fn data(state: &SockState, call: &Call, from: u64, to: u64) -> bool {
    let call_offset = call.call_offset;
    if call.payload.class == PAYLOAD_BUFFER && from < to && to - from <= MAX_SEGMENT as u64 {
        // The common case, one buffer and one segment: the header is written straight
        // into the reserved record (no template, no walk).
        let (src, n) = (call.payload.ptr + from, to - from);
        return if n <= 64 {
            direct::<64>(state, call, from, src, n)
        } else if n <= 256 {
            direct::<256>(state, call, from, src, n)
        } else if n <= 1024 {
            direct::<1024>(state, call, from, src, n)
        } else if n <= 4096 {
            direct::<4096>(state, call, from, src, n)
        } else {
            direct::<MAX_SEGMENT>(state, call, from, src, n)
        };
    }
    let mut payload = call.payload;
    if payload.class == PAYLOAD_MSGHDR {
        // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
        payload = match unsafe { bpf_probe_read_user((payload.ptr + 16) as *const [u64; 2]) } {
            Ok([iov, count]) => Payload {
                class: PAYLOAD_IOVEC,
                ptr: iov,
                count,
            },
            Err(_) => Payload::NONE,
        };
    }
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return false;
    };
    // The walk lives in a map, not on the stack: the verifier then checks the callback
    // once for any walk instead of once per combination of known values.
    let walk = unsafe { &mut *walk };
    walk.base = payload.ptr;
    walk.count = payload.count;
    walk.iovec = (payload.class == PAYLOAD_IOVEC) as u64;
    walk.call_offset = call_offset;
    walk.from = from;
    walk.to = to;
    walk.index = 0;
    walk.iov_start = 0;
    walk.sent = 0;
    walk.lost = 0;
    if payload.class == PAYLOAD_IOVEC && from < to && to - from <= GATHER_MAX as u64 {
        return gathered(state, call, from);
    }
    let Some(template) = TEMPLATE.get_ptr_mut(0) else {
        return false;
    };
    let template = unsafe { &mut *template };
    fill(template, EventKind::Data, state, call);
    if payload.class != PAYLOAD_NONE && from < to {
        unsafe {
            aya_ebpf::helpers::generated::bpf_loop(
                MAX_STEPS,
                step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    if walk.sent == 0 && walk.lost == 0 {
        // Nothing copied (or nothing could be): still report the call, its bytes a gap.
        template.flags = FLAG_LAST_SEGMENT;
        return emit::<0>(template, 0, 0, call_offset + call.bytes);
    }
    walk.lost == 0
}

/// A call's walk over its payload, shared with the bpf_loop callback.
#[repr(C)]
struct Walk {
    /// The buffer, or the iovec array.
    base: u64,
    /// Iovec entries.
    count: u64,
    iovec: u64,
    call_offset: u64,
    /// Still to send: `from..to`, offsets within the call.
    from: u64,
    to: u64,
    /// Iovec walk: the current entry and the call offset where it starts.
    index: u64,
    iov_start: u64,
    /// Records sent, and lost to a full ring buffer.
    sent: u64,
    lost: u64,
}

impl Walk {
    /// The current iovec entry (base, length); an unreadable one is counted.
    #[inline(always)]
    fn entry(&self) -> Option<(u64, u64)> {
        match unsafe { bpf_probe_read_user((self.base + self.index * 16) as *const [u64; 2]) } {
            Ok([base, len]) => Some((base, len)),
            Err(_) => {
                count_drop(DropReason::PayloadUnreadable);
                None
            }
        }
    }
}

#[map(name = "WALK")]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// One step: sends the next segment (at most one record); returns 1 to stop.
extern "C" fn step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let walk = unsafe { &mut *walk };
    if walk.from >= walk.to {
        return 1;
    }
    let Some(template) = TEMPLATE.get_ptr_mut(0) else {
        return 1;
    };
    let template = unsafe { &mut *template };
    let (src, piece) = if walk.iovec == 0 {
        (walk.base + walk.from, walk.to - walk.from)
    } else {
        if walk.index >= walk.count {
            return 1;
        }
        let Some((iov_base, iov_len)) = walk.entry() else {
            return 1;
        };
        let iov_end = walk.iov_start + iov_len;
        if iov_end <= walk.from {
            // Entirely before what is still to send (skipped, or sent already).
            walk.index += 1;
            walk.iov_start = iov_end;
            return 0;
        }
        let end = if iov_end < walk.to { iov_end } else { walk.to };
        (iov_base + (walk.from - walk.iov_start), end - walk.from)
    };
    let n = if piece > MAX_SEGMENT as u64 {
        MAX_SEGMENT as u64
    } else {
        piece
    };
    let offset = walk.call_offset + walk.from;
    let last = walk.from + n >= walk.to;
    template.flags = if last { FLAG_LAST_SEGMENT } else { 0 };
    let sent = if n <= 64 {
        emit::<64>(template, src, n, offset)
    } else if n <= 256 {
        emit::<256>(template, src, n, offset)
    } else if n <= 1024 {
        emit::<1024>(template, src, n, offset)
    } else if n <= 4096 {
        emit::<4096>(template, src, n, offset)
    } else {
        emit::<MAX_SEGMENT>(template, src, n, offset)
    };
    walk.sent += sent as u64;
    walk.lost += !sent as u64;
    walk.from += n;
    i64::from(last)
}

/// Most bytes of a vectored call (writev, sendmsg, readv, recvmsg) gathered into one
/// record. A server's response is often a head and a body in two pieces, and gRPC's C
/// core writes a piece per header: one record per piece cost a reservation, a header and
/// userspace's reassembly each.
const GATHER_MAX: usize = 4096;

/// Per-CPU room to gather a vectored call in: the record's header, then its payload.
/// Twice [`GATHER_MAX`]: the verifier bounds a piece's place and its length apart, each by
/// [`GATHER_MAX`], so their sum needs twice the room (the walk never fills more than one).
#[repr(C)]
struct Gather {
    header: EventHeader,
    payload: [u8; 2 * GATHER_MAX],
}

#[map(name = "GATHER")]
static GATHER: PerCpuArray<Gather> = PerCpuArray::with_max_entries(1, 0);

/// Sends the vectored call's bytes `from..` (the walk, set up by [`data`], holds where
/// they are and where they end, at most [`GATHER_MAX`] bytes) as one record: its pieces
/// are read into the per-CPU [`Gather`] and the record is written to the ring in one go.
/// A piece that cannot be read ends the copy: what follows is a gap for userspace. False
/// if the record was lost.
#[inline(always)]
fn gathered(state: &SockState, call: &Call, from: u64) -> bool {
    let Some(gather) = GATHER.get_ptr_mut(0) else {
        return false;
    };
    let gather = unsafe { &mut *gather };
    fill(&mut gather.header, EventKind::Data, state, call);
    gather.header.payload_offset = call.call_offset + from;
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            MAX_STEPS,
            gather_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return false;
    };
    let captured = unsafe { (*walk).sent };
    gather.header.captured = captured as u32;
    // For the verifier: a length it can bound by the room.
    let len = opaque(HEADER_LEN as u64 + captured);
    if len > (HEADER_LEN + GATHER_MAX) as u64 {
        return false;
    }
    let Some(ring) = crate::events() else {
        count_drop(DropReason::RingbufFull);
        return false;
    };
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_ringbuf_output(
            ring as *const crate::Ring as *mut c_void,
            (gather as *mut Gather).cast(),
            len,
            wakeup_flags(len as usize),
        )
    };
    if ret < 0 {
        count_drop(DropReason::RingbufFull);
        return false;
    }
    true
}

/// One piece of a gathered call: reads the next iovec entry and copies its part of
/// `from..to` after what was gathered so far (`sent`); returns 1 to stop.
extern "C" fn gather_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let walk = unsafe { &mut *walk };
    if walk.from >= walk.to || walk.index >= walk.count {
        return 1;
    }
    let Some(gather) = GATHER.get_ptr_mut(0) else {
        return 1;
    };
    let gather = unsafe { &mut *gather };
    let Some((iov_base, iov_len)) = walk.entry() else {
        return 1;
    };
    let iov_start = walk.iov_start;
    let iov_end = iov_start + iov_len;
    walk.index += 1;
    walk.iov_start = iov_end;
    if iov_end <= walk.from {
        // Entirely before what is still to send (skipped by the parser's word).
        return 0;
    }
    let end = if iov_end < walk.to { iov_end } else { walk.to };
    let src = iov_base + (walk.from - iov_start);
    // For the verifier: a place and a length each bounded by GATHER_MAX (the walk's
    // `to - from` already is, so neither bound ever cuts).
    let at = opaque(walk.sent) & (GATHER_MAX as u64 - 1);
    let len = opaque(end - walk.from);
    if len == 0 || len > GATHER_MAX as u64 {
        return 1;
    }
    let ret = unsafe {
        probe_read_user_raw(
            gather.payload.as_mut_ptr().add(at as usize).cast(),
            len as u32,
            src as *const c_void,
        )
    };
    if ret != 0 {
        count_drop(DropReason::PayloadUnreadable);
        return 1;
    }
    walk.sent += len;
    walk.from = end;
    i64::from(walk.from >= walk.to)
}

/// Reserves a record of class `N`, fills its header from the connection and the call,
/// reads the call's `n` (at most `N`) bytes from `from` on, at `src` in user memory, into
/// it, and submits it. It is the call's last record: what follows up to the call's end (a
/// tail beyond the copy limit) is a gap for userspace.
#[inline(always)]
fn direct<const N: usize>(state: &SockState, call: &Call, from: u64, src: u64, n: u64) -> bool {
    let Some(mut entry) = crate::reserve::<Record<N>>() else {
        return false;
    };
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill(&mut record.header, EventKind::Data, state, call);
    record.header.payload_offset = call.call_offset + from;
    record.header.captured = read_payload(&mut record.payload, src, n);
    entry.submit(wakeup_flags(HEADER_LEN + N));
    true
}

/// Reads `n` (at most `N`) bytes of user memory at `src` into `payload`; returns how many.
#[inline(always)]
fn read_payload<const N: usize>(payload: &mut [u8; N], src: u64, n: u64) -> u32 {
    if N == 0 {
        return 0;
    }
    // For the verifier: a length it can bound by the class's room.
    let len = opaque(n);
    if len == 0 || len > N as u64 {
        return 0;
    }
    let ret = unsafe {
        probe_read_user_raw(
            payload.as_mut_ptr().cast(),
            len as u32,
            src as *const c_void,
        )
    };
    if ret == 0 {
        len as u32
    } else {
        count_drop(DropReason::PayloadUnreadable);
        0
    }
}

/// Reserves a record of class `N`, copies the header and `n` (at most `N`) payload bytes
/// from user memory at `src` into it, and submits it.
#[inline(always)]
fn emit<const N: usize>(template: &EventHeader, src: u64, n: u64, payload_offset: u64) -> bool {
    let Some(mut entry) = crate::reserve::<Record<N>>() else {
        return false;
    };
    let record = unsafe { &mut *entry.as_mut_ptr() };
    record.header = *template;
    record.header.payload_offset = payload_offset;
    record.header.captured = read_payload(&mut record.payload, src, n);
    entry.submit(wakeup_flags(HEADER_LEN + N));
    true
}
