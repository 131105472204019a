//! The syscall tier's fd cache: which of a process's fds are sockets, so a read or write
//! on a pipe or file is rejected by map lookups instead of a walk of the fd table.
//!
//! Keyed by (tgid, fd). An entry is valid only while its `gen` equals the process's
//! current generation ([`FdProc::gen`]); events that may replace many fds at once (exec,
//! close_range, a thread's exit) move the generation on, and those that replace one fd
//! (close, dup2/dup3) delete its entry. Processes whose fd table the cache cannot follow
//! (io_uring, a table not shared by all threads or shared with another process) are
//! marked [`GEN_NO_CACHE`]: every call walks. docs/capture.md lists each case.
//!
//! The decisions are pure functions here, so they are tested on the host.

pub const MAP_FD_CACHE: &str = "FD_CACHE";
pub const MAP_FD_PROCS: &str = "FD_PROCS";
pub const MAP_FD_NO_CACHE: &str = "FD_NO_CACHE";
pub const MAP_FD_CACHE_STATS: &str = "FD_CACHE_STATS";

/// Cached fds (LRU: an evicted entry costs one walk).
pub const FD_CACHE_ENTRIES: u32 = 65536;
/// Processes with a generation (LRU: an evicted process gets a new generation, so its
/// entries are invalid, never stale).
pub const FD_PROCS_ENTRIES: u32 = 32768;
/// Processes marked never-cache (LRU, touched at every mark and every generation
/// created): the mark outlives the process's generation entry.
pub const FD_NO_CACHE_ENTRIES: u32 = 65536;

/// The generation of a process whose fds are never cached.
pub const GEN_NO_CACHE: u64 = u64::MAX;

/// `FD_CACHE_STATS` slots (per CPU): fd-table walks (cache misses), entries inserted
/// (negative, positive), inserts withdrawn because an fd of the process was closed
/// meanwhile, generation moves, never-cache marks.
pub const FD_STAT_WALKS: u32 = 0;
pub const FD_STAT_NEGATIVE: u32 = 1;
pub const FD_STAT_POSITIVE: u32 = 2;
pub const FD_STAT_WITHDRAWN: u32 = 3;
pub const FD_STAT_INVALIDATED: u32 = 4;
pub const FD_STAT_NO_CACHE: u32 = 5;
pub const FD_STATS_SLOTS: u32 = 6;

/// One cached fd: `sk == 0` says "an open file that is not a socket" (a negative entry);
/// otherwise the socket's `struct sock` and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdEntry {
    pub gen: u64,
    pub sk: u64,
    pub ino: u64,
}

/// Per process (tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdProc {
    /// Entries with another generation are invalid; [`GEN_NO_CACHE`]: never cache.
    pub gen: u64,
    /// Bumped by every close, dup2/dup3 (at entry and exit): a walk that saw it move
    /// withdraws the entry it inserted (it may have read the fd before the close).
    pub seq: u64,
    /// Closes in progress (entered, not exited): no entry is inserted meanwhile.
    pub closing: u64,
}

/// The cache key of `fd` of process `tgid`.
#[inline(always)]
pub fn fd_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | fd as u32 as u64
}

/// A new generation after `old`: the clock (so a process created after its tgid's
/// generation entry was evicted never meets its predecessor's entries), and always past
/// `old`; never [`GEN_NO_CACHE`].
#[inline(always)]
pub fn next_gen(old: u64, now_ns: u64) -> u64 {
    let next = if now_ns > old {
        now_ns
    } else {
        old.wrapping_add(1)
    };
    if next == GEN_NO_CACHE || next == 0 {
        1
    } else {
        next
    }
}

/// Whether `entry` may answer a lookup for a process in state `proc`.
#[inline(always)]
pub fn entry_valid(entry: &FdEntry, proc: &FdProc) -> bool {
    proc.gen != GEN_NO_CACHE && entry.gen == proc.gen
}

/// Whether a walk that began with the process in state `before` may insert its result.
#[inline(always)]
pub fn may_insert(before: &FdProc) -> bool {
    before.gen != GEN_NO_CACHE && before.closing == 0
}

/// Whether an entry inserted after a walk that began in state `before` stays, the
/// process now being in state `after` (`None`: its generation entry is gone).
#[inline(always)]
pub fn insert_stands(before: &FdProc, after: Option<&FdProc>) -> bool {
    match after {
        Some(a) => a.gen == before.gen && a.seq == before.seq && a.closing == 0,
        None => false,
    }
}

pub const CLOSE_RANGE_UNSHARE: u64 = 1 << 1;
pub const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// What a close_range(2) with `flags` does to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRange {
    /// Fds are closed now (not only marked close-on-exec): the generation moves.
    pub closes: bool,
    /// The calling thread gets its own fd table: the process is never cached again.
    pub unshares: bool,
}

#[inline(always)]
pub fn close_range_effect(flags: u64) -> CloseRange {
    CloseRange {
        closes: flags & CLOSE_RANGE_CLOEXEC == 0,
        unshares: flags & CLOSE_RANGE_UNSHARE != 0,
    }
}

pub const CLONE_FILES: u64 = 0x400;
pub const CLONE_THREAD: u64 = 0x10000;

/// What a clone with `flags` does to the fd tables, as the cache sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneFds {
    /// A thread sharing the table, or a process with its own copy: nothing to do (the
    /// copy is under the child's own tgid).
    Plain,
    /// A thread with its own table: (tgid, fd) no longer names one file; the parent is
    /// never cached again.
    SplitTable,
    /// A new process sharing the parent's table: a close by one is not seen under the
    /// other's tgid; both are never cached again.
    SharedAcrossProcesses,
}

#[inline(always)]
pub fn clone_effect(flags: u64) -> CloneFds {
    match (flags & CLONE_THREAD != 0, flags & CLONE_FILES != 0) {
        (true, false) => CloneFds::SplitTable,
        (false, true) => CloneFds::SharedAcrossProcesses,
        _ => CloneFds::Plain,
    }
}

/// Whether unshare(2) with `flags` gives the calling thread its own fd table.
#[inline(always)]
pub fn unshare_splits(flags: u64) -> bool {
    flags & CLONE_FILES != 0
}

const _: () = assert!(core::mem::size_of::<FdEntry>() == 24);
const _: () = assert!(core::mem::size_of::<FdProc>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separates_processes_and_fds() {
        assert_ne!(fd_key(1, 2), fd_key(2, 1));
        assert_eq!(fd_key(7, 3) >> 32, 7);
        assert_eq!(fd_key(7, 3) as u32, 3);
    }

    #[test]
    fn generations_only_move_on() {
        assert_eq!(next_gen(5, 100), 100);
        assert_eq!(next_gen(100, 100), 101);
        assert_eq!(next_gen(200, 100), 201);
        assert_ne!(next_gen(GEN_NO_CACHE - 1, 0), GEN_NO_CACHE);
        assert_ne!(next_gen(GEN_NO_CACHE - 1, 0), 0);
    }

    #[test]
    fn entries_of_an_older_generation_or_never_cached_process_do_not_answer() {
        let proc = FdProc {
            gen: 10,
            ..FdProc::default()
        };
        let entry = FdEntry {
            gen: 10,
            sk: 0,
            ino: 0,
        };
        assert!(entry_valid(&entry, &proc));
        assert!(!entry_valid(&FdEntry { gen: 9, ..entry }, &proc));
        let never = FdProc {
            gen: GEN_NO_CACHE,
            ..proc
        };
        assert!(!entry_valid(
            &FdEntry {
                gen: GEN_NO_CACHE,
                ..entry
            },
            &never
        ));
    }

    #[test]
    fn an_insert_racing_a_close_is_withdrawn() {
        let before = FdProc {
            gen: 3,
            seq: 8,
            closing: 0,
        };
        assert!(may_insert(&before));
        assert!(insert_stands(&before, Some(&before)));
        // A close entered (or exited) while the walk ran.
        assert!(!insert_stands(&before, Some(&FdProc { seq: 9, ..before })));
        assert!(!insert_stands(
            &before,
            Some(&FdProc {
                seq: 9,
                closing: 1,
                ..before
            })
        ));
        // An exec or close_range moved the generation; the process entry was evicted.
        assert!(!insert_stands(&before, Some(&FdProc { gen: 4, ..before })));
        assert!(!insert_stands(&before, None));
        // Nothing is inserted while a close is in progress, or for a never-cached process.
        assert!(!may_insert(&FdProc {
            closing: 1,
            ..before
        }));
        assert!(!may_insert(&FdProc {
            gen: GEN_NO_CACHE,
            ..before
        }));
    }

    #[test]
    fn close_range_flags() {
        assert_eq!(
            close_range_effect(0),
            CloseRange {
                closes: true,
                unshares: false
            }
        );
        assert!(!close_range_effect(CLOSE_RANGE_CLOEXEC).closes);
        assert!(close_range_effect(CLOSE_RANGE_UNSHARE).unshares);
        assert!(close_range_effect(CLOSE_RANGE_UNSHARE).closes);
    }

    #[test]
    fn clone_flags() {
        // pthread_create: CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|...
        assert_eq!(clone_effect(0x3d0f00), CloneFds::Plain);
        // fork(): SIGCHLD only; posix_spawn: CLONE_VM|CLONE_VFORK.
        assert_eq!(clone_effect(17), CloneFds::Plain);
        assert_eq!(clone_effect(0x4100 | 17), CloneFds::Plain);
        assert_eq!(clone_effect(CLONE_THREAD | 0x900), CloneFds::SplitTable);
        assert_eq!(
            clone_effect(CLONE_FILES | 17),
            CloneFds::SharedAcrossProcesses
        );
        assert!(unshare_splits(CLONE_FILES));
        assert!(!unshare_splits(0x20000));
    }
}
