//! nodetap kernel programs. They stay small: find the connection's state, keep its exact
//! counters, copy to the ring buffer only what userspace asked for on that connection,
//! count what could not be delivered. All parsing happens in userspace.
//!
//! One file per hook family:
//! - `socket_tier.rs`: `sock:sock_send_length`/`sock_recv_length` (Linux 6.3+), fired only
//!   for sockets, so a process that does no networking runs none of this code;
//! - `syscall_tier.rs`: syscall tracepoints on the data syscalls (older kernels);
//! - `fd_cache.rs`: the syscall tier's (tgid, fd) cache and the hooks that keep it exact;
//! - `lifecycle.rs`: `inet_sock_set_state` for role, and the close with final counters;
//! - `connection.rs`: the per-connection state both tiers share, and one call's handling;
//! - `record.rs`: ring buffer records (open, data segments, counts, close);
//! - `regs.rs`: the syscall in progress, from the task's saved user registers;
//! - `socket.rs`: reading `struct sock` and the fd table with offsets from BTF;
//! - `network.rs`: IP byte accounting per workload (cgroup_skb);
//! - `cgroups.rs`: cgroup ids and paths as cgroups are created (`cgroup:cgroup_mkdir`).
#![no_std]
// The BPF target lacks AtomicU64::fetch_add; the counters use the intrinsic.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod cgroups;
mod connection;
mod fd_cache;
mod lifecycle;
mod network;
mod record;
mod regs;
mod socket;
mod socket_tier;
mod syscall_tier;

use agent_common::{
    Config, DropReason, Instruction, SummaryRecord, CLOSED_ENTRIES, DROP_REASONS,
    INSTRUCTION_ENTRIES, STATS_SLOTS, SYSCALL_TABLE_ENTRIES,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};

use aya_ebpf::{
    btf_maps::{ArrayOfMaps, RingBuf},
    helpers::bpf_get_smp_processor_id,
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray},
};

/// Set by the loader (`EbpfLoader::override_global`) before the programs are loaded.
#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

/// One ring buffer per CPU, filled by the loader (index: CPU number). A ring shared by
/// all CPUs makes every record take one spinlock and move the producer position between
/// CPUs: on two busy CPUs that cache-line traffic cost more than the rest of a record.
/// The agent merges the rings by time. (The template's size is not the rings' size: the
/// kernel does not compare ring sizes of inner maps.)
#[btf_map]
static EVENTS: ArrayOfMaps<Ring, { agent_common::MAX_CPUS as usize }> = ArrayOfMaps::new();

/// A ring buffer of records.
pub type Ring = RingBuf<u8, { agent_common::RING_TEMPLATE_BYTES as usize }>;

/// This CPU's ring buffer (`None` only if the loader left its slot empty).
#[inline(always)]
fn events() -> Option<&'static Ring> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    EVENTS.get(cpu)
}

/// Bytes waiting in this CPU's ring buffer.
#[inline(always)]
fn ring_waiting() -> u64 {
    match events() {
        Some(ring) => unsafe {
            aya_ebpf::helpers::generated::bpf_ringbuf_query(
                ring as *const Ring as *mut core::ffi::c_void,
                aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64,
            )
        },
        None => 0,
    }
}

/// Reserves a record of type `T` in this CPU's ring buffer; a full ring is counted.
#[inline(always)]
fn reserve<T: 'static>() -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    let entry = events().and_then(|ring| ring.reserve_untyped::<T>(0));
    if entry.is_none() {
        count_drop(DropReason::RingbufFull);
    }
    entry
}

/// Counters of lost or degraded records, indexed by `DropReason`.
#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS as u32, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// Userspace's instructions, by connection id (LRU: a closed connection's entry ages out).
#[map(name = "INSTRUCTIONS")]
static INSTRUCTIONS: LruHashMap<u64, Instruction> =
    LruHashMap::with_max_entries(INSTRUCTION_ENTRIES, 0);

/// Bumped by userspace after it writes instructions.
#[map(name = "INSTRUCTION_GEN")]
static INSTRUCTION_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Bumped by userspace once per report interval (see `MAP_REPORT_EPOCH`).
#[map(name = "REPORT_EPOCH")]
static REPORT_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Close records that found the ring buffer full, by connection id; userspace drains it.
#[map(name = "CLOSED")]
static CLOSED: LruHashMap<u64, SummaryRecord> = LruHashMap::with_max_entries(CLOSED_ENTRIES, 0);

/// What each syscall number is: `Syscall` in bits 0..8, `PAYLOAD_*` in bits 8..10 (0 for
/// syscalls that do not move socket data). Filled by the loader.
#[map(name = "SYSCALL_TABLE")]
static SYSCALL_TABLE: Array<u32> = Array::with_max_entries(SYSCALL_TABLE_ENTRIES, 0);

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
        // Atomic: a softirq running another of the agent's programs on this CPU may
        // count between this program's read and write (see `connection::Slot`).
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(slot, 1) };
    }
}

#[inline(always)]
fn bump_stat(slot: u32) {
    if let Some(slot) = STATS.get_ptr_mut(slot) {
        // Atomic, as in `count_drop`.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(slot, 1) };
    }
}

#[inline(always)]
fn is_agent(pid_tgid: u64) -> bool {
    (pid_tgid >> 32) as u32 == read_config_u32(&config().agent_pid)
}

/// Hides a value from LLVM so it cannot drop the bounds checks that follow by reasoning
/// about ranges the verifier does not track (a volatile stack read; the verifier keeps
/// its bounds).
#[inline(always)]
fn opaque(v: u64) -> u64 {
    unsafe { core::ptr::read_volatile(&v) }
}

/// Copies a value word by word. LLVM lowers a plain struct copy on BPF to a call of a
/// byte-at-a-time `memmove` (hundreds of instructions for a 40-byte tuple); volatile
/// word accesses stay as they are written.
#[inline(always)]
fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let (d, s) = (
        (dst as *mut T).cast::<u64>(),
        (src as *const T).cast::<u64>(),
    );
    for i in 0..core::mem::size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}

/// Zeroes a value word by word (see [`copy_words`]).
#[inline(always)]
fn zero_words<T: Copy>(dst: &mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let d = (dst as *mut T).cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
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
