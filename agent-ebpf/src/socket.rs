//! Reading `struct sock` and the current task's fd table.
//!
//! Rust eBPF has no CO-RE relocations: the field offsets come from the running kernel's
//! BTF, read by the agent at start-up and passed in `Config::kernel`. Every read here is
//! done once per connection (or per process using it), never per call: the results are
//! kept in the connection's state.

use agent_common::{SockTuple, AF_INET, AF_INET6};
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::{config, read_config_u32};

pub const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
unsafe fn read_at<T>(base: u64, offset: &u32) -> Result<T, i32> {
    bpf_probe_read_kernel((base + read_config_u32(offset) as u64) as *const T)
}

/// Whether `sk` is a TCP socket over IPv4 or IPv6.
#[inline(always)]
pub fn is_tcp(sk: u64) -> Result<bool, i32> {
    let off = &config().kernel;
    unsafe {
        let family: u16 = read_at(sk, &off.sk_family)?;
        if family != AF_INET && family != AF_INET6 {
            return Ok(false);
        }
        let protocol: u16 = read_at(sk, &off.sk_protocol)?;
        let sk_type: u16 = read_at(sk, &off.sk_type)?;
        Ok(protocol == IPPROTO_TCP && sk_type == SOCK_STREAM)
    }
}

/// The connection's addresses (read once it is connected: the local port of a client
/// is chosen after TCP_SYN_SENT).
#[inline(always)]
pub fn read_tuple(sk: u64) -> Result<SockTuple, i32> {
    let off = &config().kernel;
    unsafe {
        let family: u16 = read_at(sk, &off.sk_family)?;
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
        Ok(tuple)
    }
}

/// The current task's file behind `fd`, if open.
#[inline(always)]
unsafe fn file_of_fd(fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let off = &config().kernel;
    let task = bpf_get_current_task();
    let files: u64 = read_at(task, &off.task_files).ok()?;
    if files == 0 {
        return None;
    }
    let fdt: u64 = read_at(files, &off.files_fdt).ok()?;
    let max_fds: u32 = read_at(fdt, &off.fdtable_max_fds).ok()?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = read_at(fdt, &off.fdtable_fd).ok()?;
    let file: u64 = bpf_probe_read_kernel((fd_array + 8 * fd as u64) as *const u64).ok()?;
    (file != 0).then_some(file)
}

/// A socket behind an fd: its `struct sock` and its inode number.
pub struct FdSocket {
    pub sk: u64,
    pub ino: u64,
}

/// The socket behind the current task's `fd`, or `None` if `fd` is not an open socket.
#[inline(always)]
pub fn socket_of_fd(fd: i32) -> Option<FdSocket> {
    let off = &config().kernel;
    unsafe {
        let file = file_of_fd(fd)?;
        let inode: u64 = read_at(file, &off.file_inode).ok()?;
        let mode: u16 = read_at(inode, &off.inode_mode).ok()?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let ino: u64 = read_at(inode, &off.inode_ino).ok()?;
        let socket: u64 = read_at(file, &off.file_private_data).ok()?;
        let sk: u64 = read_at(socket, &off.socket_sk).ok()?;
        (sk != 0).then_some(FdSocket { sk, ino })
    }
}

/// The process name: the thread group leader's comm, not the calling thread's (thread
/// names like "tokio-runtime-w" say nothing about the service).
#[inline(always)]
pub fn process_comm() -> [u8; 16] {
    let off = &config().kernel;
    unsafe {
        let task = bpf_get_current_task();
        let leader: u64 = read_at(task, &off.task_group_leader).unwrap_or(task);
        read_at(leader, &off.task_comm).unwrap_or([0u8; 16])
    }
}
