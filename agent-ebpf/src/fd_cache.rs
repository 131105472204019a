//! The syscall tier's fd cache (agent-common's `fd_cache` has the rules and their tests):
//! (tgid, fd) -> "not a socket" or "this socket", so a data syscall on a pipe or file
//! costs two map lookups instead of a walk of the fd table, and one on a known socket
//! skips the walk too. docs/capture.md says what keeps it exact and what it cannot see.

use agent_common::fd_cache::{
    clone_effect, close_range_effect, entry_valid, fd_key, insert_stands, may_insert, next_gen,
    unshare_splits, CloneFds, FdEntry, FdProc, FD_CACHE_ENTRIES, FD_NO_CACHE_ENTRIES,
    FD_PROCS_ENTRIES, FD_STATS_SLOTS, FD_STAT_INVALIDATED, FD_STAT_NEGATIVE, FD_STAT_NO_CACHE,
    FD_STAT_POSITIVE, FD_STAT_WALKS, FD_STAT_WITHDRAWN, GEN_NO_CACHE,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};
use core::intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering::SeqCst};

use crate::{config, is_agent, read_config_u32, socket::FdSocket};

#[map(name = "FD_CACHE")]
static FD_CACHE: LruHashMap<u64, FdEntry> = LruHashMap::with_max_entries(FD_CACHE_ENTRIES, 0);

#[map(name = "FD_PROCS")]
static FD_PROCS: LruHashMap<u32, FdProc> = LruHashMap::with_max_entries(FD_PROCS_ENTRIES, 0);

#[map(name = "FD_NO_CACHE")]
static FD_NO_CACHE: LruHashMap<u32, u8> = LruHashMap::with_max_entries(FD_NO_CACHE_ENTRIES, 0);

/// Clones in flight that create a process sharing its parent's fd table, by pid_tgid.
#[map(name = "FD_CLONES")]
static FD_CLONES: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);

#[map(name = "FD_CACHE_STATS")]
static FD_CACHE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FD_STATS_SLOTS, 0);

#[inline(always)]
fn stat(slot: u32) {
    if let Some(v) = FD_CACHE_STATS.get_ptr_mut(slot) {
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: every sys_enter_* record holds six argument slots after the header.
    unsafe { *((ctx.as_ptr() as *const u8).add(16 + 8 * n) as *const u64) }
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: every sys_exit_* record holds `long ret` at 16.
    unsafe { *((ctx.as_ptr() as *const u8).add(16) as *const i64) }
}

/// What the cache knows of an fd before the call.
pub enum Lookup {
    Socket(FdSocket),
    NotSocket,
    /// Walk; `Some`: the process's state when the walk began, to insert the result.
    Miss(Option<FdProc>),
}

#[inline(always)]
fn snapshot(p: *const FdProc) -> FdProc {
    // Volatile: other CPUs update these fields while this program runs.
    unsafe {
        FdProc {
            gen: core::ptr::read_volatile(&(*p).gen),
            seq: core::ptr::read_volatile(&(*p).seq),
            closing: core::ptr::read_volatile(&(*p).closing),
        }
    }
}

/// The process's state, created with a new generation (or never-cache, if marked).
#[inline(always)]
fn proc_of(tgid: u32) -> Option<*mut FdProc> {
    if let Some(p) = FD_PROCS.get_ptr_mut(&tgid) {
        return Some(p);
    }
    let gen = if unsafe { FD_NO_CACHE.get(&tgid) }.is_some() {
        GEN_NO_CACHE
    } else {
        next_gen(0, unsafe { bpf_ktime_get_ns() })
    };
    let fresh = FdProc {
        gen,
        seq: 0,
        closing: 0,
    };
    let _ = FD_PROCS.insert(&tgid, &fresh, BPF_NOEXIST as u64);
    FD_PROCS.get_ptr_mut(&tgid)
}

#[inline(always)]
pub fn lookup(tgid: u32, fd: i32) -> Lookup {
    let Some(p) = proc_of(tgid) else {
        return Lookup::Miss(None);
    };
    let now = snapshot(p);
    if let Some(e) = unsafe { FD_CACHE.get(&fd_key(tgid, fd)) } {
        if entry_valid(e, &now) {
            return if e.sk == 0 {
                Lookup::NotSocket
            } else {
                Lookup::Socket(FdSocket {
                    sk: e.sk,
                    ino: e.ino,
                })
            };
        }
    }
    Lookup::Miss(may_insert(&now).then_some(now))
}

/// What a walk of the fd table found.
pub enum Walk {
    Socket(FdSocket),
    /// An open file that is not a socket: the only negative result that is cached.
    NotSocket,
    /// Not open, or unreadable: not cached (a socket may take the fd without a close).
    Unknown,
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
unsafe fn read_at<T>(base: u64, offset: &u32) -> Result<T, i32> {
    bpf_probe_read_kernel((base + read_config_u32(offset) as u64) as *const T)
}

/// The current task's fd `fd`: task->files->fdt->fd[fd]->f_inode (and ->private_data->sk
/// for a socket).
#[inline(always)]
pub fn walk(fd: i32) -> Walk {
    stat(FD_STAT_WALKS);
    if fd < 0 {
        return Walk::Unknown;
    }
    let off = &config().kernel;
    unsafe {
        let task = bpf_get_current_task();
        let Ok(files) = read_at::<u64>(task, &off.task_files) else {
            return Walk::Unknown;
        };
        if files == 0 {
            return Walk::Unknown;
        }
        let Ok(fdt) = read_at::<u64>(files, &off.files_fdt) else {
            return Walk::Unknown;
        };
        let Ok(max_fds) = read_at::<u32>(fdt, &off.fdtable_max_fds) else {
            return Walk::Unknown;
        };
        if fd as u32 >= max_fds {
            return Walk::Unknown;
        }
        let Ok(fd_array) = read_at::<u64>(fdt, &off.fdtable_fd) else {
            return Walk::Unknown;
        };
        let file = bpf_probe_read_kernel((fd_array + 8 * fd as u64) as *const u64).unwrap_or(0);
        if file == 0 {
            return Walk::Unknown;
        }
        let Ok(inode) = read_at::<u64>(file, &off.file_inode) else {
            return Walk::Unknown;
        };
        let Ok(mode) = read_at::<u16>(inode, &off.inode_mode) else {
            return Walk::Unknown;
        };
        if mode & S_IFMT != S_IFSOCK {
            return Walk::NotSocket;
        }
        let ino: u64 = read_at(inode, &off.inode_ino).unwrap_or(0);
        let socket: u64 = read_at(file, &off.file_private_data).unwrap_or(0);
        if socket == 0 {
            return Walk::Unknown;
        }
        let sk: u64 = read_at(socket, &off.socket_sk).unwrap_or(0);
        if sk == 0 {
            return Walk::Unknown;
        }
        Walk::Socket(FdSocket { sk, ino })
    }
}

/// Caches a walk's result, unless an fd of the process was closed (or its generation
/// moved) while it ran: the walk may have read the fd before the close.
#[inline(always)]
pub fn fill(tgid: u32, fd: i32, before: &FdProc, sk: u64, ino: u64) {
    let key = fd_key(tgid, fd);
    let entry = FdEntry {
        gen: before.gen,
        sk,
        ino,
    };
    if FD_CACHE.insert(&key, &entry, 0).is_err() {
        return;
    }
    let after = FD_PROCS.get_ptr(&tgid).map(snapshot);
    if insert_stands(before, after.as_ref()) {
        stat(if sk == 0 {
            FD_STAT_NEGATIVE
        } else {
            FD_STAT_POSITIVE
        });
    } else {
        let _ = FD_CACHE.remove(&key);
        stat(FD_STAT_WITHDRAWN);
    }
}

/// The process's entries become invalid (exec, close_range, a thread's exit).
#[inline(always)]
fn invalidate(tgid: u32) {
    if let Some(p) = FD_PROCS.get_ptr_mut(&tgid) {
        unsafe {
            let gen = core::ptr::read_volatile(&(*p).gen);
            if gen != GEN_NO_CACHE {
                core::ptr::write_volatile(&mut (*p).gen, next_gen(gen, bpf_ktime_get_ns()));
                stat(FD_STAT_INVALIDATED);
            }
        }
    }
}

/// The process is never cached again (its fd table is not one per tgid, or io_uring can
/// close its fds unseen).
#[inline(always)]
fn never_cache(tgid: u32) {
    if let Some(p) = FD_PROCS.get_ptr_mut(&tgid) {
        if unsafe { core::ptr::read_volatile(&(*p).gen) } == GEN_NO_CACHE {
            return;
        }
        unsafe { core::ptr::write_volatile(&mut (*p).gen, GEN_NO_CACHE) };
    } else {
        let state = FdProc {
            gen: GEN_NO_CACHE,
            seq: 0,
            closing: 0,
        };
        let _ = FD_PROCS.insert(&tgid, &state, 0);
    }
    let _ = FD_NO_CACHE.insert(&tgid, &1, 0);
    stat(FD_STAT_NO_CACHE);
}

/// A close (or dup2/dup3 over `fd`, or close_range if `fd` is `None`) begins: no entry
/// is inserted until it ends, and a walk in flight withdraws its entry.
#[inline(always)]
fn closing(fd: Option<i32>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(p) = proc_of(tgid) else {
        return;
    };
    unsafe {
        atomic_xadd::<u64, u64, { SeqCst }>(&raw mut (*p).closing, 1);
        atomic_xadd::<u64, u64, { SeqCst }>(&raw mut (*p).seq, 1);
    }
    match fd {
        Some(fd) => {
            let _ = FD_CACHE.remove(&fd_key(tgid, fd));
        }
        None => invalidate(tgid),
    }
}

/// The close ends. If its start was not seen (the agent attached meanwhile, or the
/// process's state was evicted), the whole process is invalidated instead.
#[inline(always)]
fn closed() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match FD_PROCS.get_ptr_mut(&tgid) {
        Some(p) => unsafe {
            atomic_xadd::<u64, u64, { SeqCst }>(&raw mut (*p).seq, 1);
            if core::ptr::read_volatile(&(*p).closing) > 0 {
                atomic_xsub::<u64, u64, { SeqCst }>(&raw mut (*p).closing, 1);
            } else {
                invalidate(tgid);
            }
        },
        None => {
            // A state created now has a generation newer than any entry's.
            let _ = proc_of(tgid);
        }
    }
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    closing(Some(arg(&ctx, 0) as i32));
    0
}

#[tracepoint]
pub fn sys_exit_close(_ctx: TracePointContext) -> u32 {
    closed();
    0
}

/// dup2(oldfd, newfd) and dup3(oldfd, newfd, flags) close `newfd` if it was open.
#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    closing(Some(arg(&ctx, 1) as i32));
    0
}

#[tracepoint]
pub fn sys_exit_dup2(_ctx: TracePointContext) -> u32 {
    closed();
    0
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    closing(Some(arg(&ctx, 1) as i32));
    0
}

#[tracepoint]
pub fn sys_exit_dup3(_ctx: TracePointContext) -> u32 {
    closed();
    0
}

/// close_range(first, last, flags).
#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    let effect = close_range_effect(arg(&ctx, 2));
    if effect.unshares {
        never_cache((bpf_get_current_pid_tgid() >> 32) as u32);
    }
    if effect.closes {
        closing(None);
    }
    0
}

#[tracepoint]
pub fn sys_exit_close_range(_ctx: TracePointContext) -> u32 {
    // A CLOEXEC-only call did not count itself as closing: `closed` then moves the
    // generation, which costs walks, never staleness.
    closed();
    0
}

#[inline(always)]
fn on_clone(flags: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    match clone_effect(flags) {
        CloneFds::Plain => {}
        CloneFds::SplitTable => never_cache((pid_tgid >> 32) as u32),
        CloneFds::SharedAcrossProcesses => {
            never_cache((pid_tgid >> 32) as u32);
            let _ = FD_CLONES.insert(&pid_tgid, &1, 0);
        }
    }
}

#[inline(always)]
fn on_clone_exit(ctx: &TracePointContext) {
    let child = ret(ctx);
    if child <= 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if unsafe { FD_CLONES.get(&pid_tgid) }.is_some() {
        let _ = FD_CLONES.remove(&pid_tgid);
        never_cache(child as u32);
    }
}

/// clone(flags, newsp, parent_tid, child_tid, tls) (x86-64 order).
#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    on_clone(arg(&ctx, 0));
    0
}

#[tracepoint]
pub fn sys_exit_clone(ctx: TracePointContext) -> u32 {
    on_clone_exit(&ctx);
    0
}

/// clone3(struct clone_args *args, size): `flags` is the first field.
#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    let args = arg(&ctx, 0) as *const u64;
    // Unreadable: assume the worst (a table not shared by all threads).
    let flags =
        unsafe { bpf_probe_read_user(args) }.unwrap_or(agent_common::fd_cache::CLONE_THREAD);
    on_clone(flags);
    0
}

#[tracepoint]
pub fn sys_exit_clone3(ctx: TracePointContext) -> u32 {
    on_clone_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_unshare(ctx: TracePointContext) -> u32 {
    if unshare_splits(arg(&ctx, 0)) {
        never_cache((bpf_get_current_pid_tgid() >> 32) as u32);
    }
    0
}

/// io_uring closes fds (IORING_OP_CLOSE) without close(2): a process that sets up or
/// submits to a ring is never cached.
#[tracepoint]
pub fn sys_enter_io_uring_setup(_ctx: TracePointContext) -> u32 {
    never_cache((bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

#[tracepoint]
pub fn sys_enter_io_uring_enter(_ctx: TracePointContext) -> u32 {
    never_cache((bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

/// exec closed the close-on-exec fds without close(2).
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    invalidate((bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

/// A thread exits: the last one's move leaves no valid entry for a later process that
/// reuses the tgid.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_agent(pid_tgid) {
        invalidate((pid_tgid >> 32) as u32);
    }
    0
}
