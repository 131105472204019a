//! From a file descriptor of the current task to its TCP socket.
//!
//! Tracepoints give only the fd, and this kernel has no kprobes, so the programs walk
//! `current->files->fdt->fd[fd]->private_data (struct socket)->sk` themselves. Rust eBPF
//! has no CO-RE relocations: the field offsets come from the running kernel's BTF, read
//! by the agent at start-up and passed in `Config::kernel`.

use agent_common::{KernelOffsets, SockTuple, AF_INET, AF_INET6, SOCKS_ENTRIES};
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::map,
    maps::LruHashMap,
};

use crate::{count_drop, read_config_u32};
use agent_common::DropReason;

/// Addresses of connected TCP sockets by socket address. Reading them costs nine kernel
/// reads per syscall; a lookup here costs one. Only connected sockets (remote port set)
/// are kept: those always pass through TCP_CLOSE before they are freed, where
/// `forget_socket` drops them, so a reused socket address never finds stale addresses.
#[map(name = "SOCKS")]
static SOCKS: LruHashMap<u64, SockTuple> = LruHashMap::with_max_entries(SOCKS_ENTRIES, 0);

pub const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
unsafe fn read_at<T>(base: u64, offset: &u32) -> Result<T, i32> {
    bpf_probe_read_kernel((base + read_config_u32(offset) as u64) as *const T)
}

/// The socket's kernel address and addresses, or `None` if `fd` is not a TCP socket.
#[inline(always)]
pub fn tcp_socket_of_fd(fd: i32, off: &KernelOffsets) -> Option<(u64, SockTuple)> {
    if fd < 0 {
        return None;
    }
    // The file table walk: a failure here means the fd is not open (or the task is
    // exiting), not that something was lost.
    let file = unsafe { file_of_fd(fd as u32, off) }?;
    let inode: u64 = unsafe { read_at(file, &off.file_inode) }.ok()?;
    let mode: u16 = unsafe { read_at(inode, &off.inode_mode) }.ok()?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    // From here on the fd is a socket: a failed read loses an event, so count it.
    match unsafe { tcp_sock_of_file(file, off) } {
        Ok(found) => found,
        Err(_) => {
            count_drop(DropReason::SocketUnreadable);
            None
        }
    }
}

#[inline(always)]
unsafe fn file_of_fd(fd: u32, off: &KernelOffsets) -> Option<u64> {
    let task = bpf_get_current_task();
    let files: u64 = read_at(task, &off.task_files).ok()?;
    if files == 0 {
        return None;
    }
    let fdt: u64 = read_at(files, &off.files_fdt).ok()?;
    let max_fds: u32 = read_at(fdt, &off.fdtable_max_fds).ok()?;
    if fd >= max_fds {
        return None;
    }
    let fd_array: u64 = read_at(fdt, &off.fdtable_fd).ok()?;
    let file: u64 = bpf_probe_read_kernel((fd_array + 8 * fd as u64) as *const u64).ok()?;
    if file == 0 {
        return None;
    }
    Some(file)
}

#[inline(always)]
unsafe fn tcp_sock_of_file(
    file: u64,
    off: &KernelOffsets,
) -> Result<Option<(u64, SockTuple)>, i32> {
    let socket: u64 = read_at(file, &off.file_private_data)?;
    let sk: u64 = read_at(socket, &off.socket_sk)?;
    if sk == 0 {
        return Ok(None);
    }
    if let Some(tuple) = SOCKS.get_ptr(sk) {
        return Ok(Some((sk, *tuple)));
    }
    let family: u16 = read_at(sk, &off.sk_family)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let protocol: u16 = read_at(sk, &off.sk_protocol)?;
    let sk_type: u16 = read_at(sk, &off.sk_type)?;
    if protocol != IPPROTO_TCP || sk_type != SOCK_STREAM {
        return Ok(None);
    }
    let dport: u16 = read_at(sk, &off.sk_dport)?;
    let mut tuple = SockTuple {
        family,
        local_port: read_at(sk, &off.sk_num)?,
        remote_port: u16::from_be(dport),
        ..SockTuple::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = read_at(sk, &off.sk_rcv_saddr)?;
        let remote: [u8; 4] = read_at(sk, &off.sk_daddr)?;
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    } else {
        tuple.local_addr = read_at(sk, &off.sk_v6_rcv_saddr)?;
        tuple.remote_addr = read_at(sk, &off.sk_v6_daddr)?;
    }
    if tuple.remote_port != 0 {
        let _ = SOCKS.insert(sk, tuple, 0);
    }
    Ok(Some((sk, tuple)))
}

/// The socket reached TCP_CLOSE: its address may be reused for another socket.
#[inline(always)]
pub fn forget_socket(sk: u64) {
    let _ = SOCKS.remove(sk);
}

/// The process name: the thread group leader's comm, not the calling thread's (thread
/// names like "tokio-runtime-w" say nothing about the service).
#[inline(always)]
pub fn process_comm(off: &KernelOffsets) -> [u8; 16] {
    unsafe {
        let task = bpf_get_current_task();
        let leader: u64 = read_at(task, &off.task_group_leader).unwrap_or(task);
        read_at(leader, &off.task_comm).unwrap_or([0u8; 16])
    }
}
