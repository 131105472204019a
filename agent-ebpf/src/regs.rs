//! The syscall in progress, from the calling task's saved user registers: its number and
//! its first four arguments. Both tiers read the payload's place from here (the socket
//! tier's hooks carry no syscall arguments; the syscall tier's exit records do not
//! either, and reading them at the exit spares an entry program and a table of calls in
//! flight). x86-64 only: `struct pt_regs` holds r10 at 56, dx at 96, si at 104, di at 112
//! and orig_ax (the syscall number) at 120; the registers keep the arguments until the
//! syscall returns.

use aya_ebpf::helpers::{bpf_get_current_task_btf, generated::bpf_task_pt_regs};

/// A syscall's number and arguments 0 to 3 (di, si, dx, r10).
pub struct SyscallArgs {
    pub nr: u64,
    pub args: [u64; 4],
}

#[inline(always)]
pub fn syscall_args() -> Option<SyscallArgs> {
    // A BTF pointer (struct pt_regs): its fields are read by plain loads, which the JIT
    // guards, instead of a helper call and a copy.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return None;
    }
    let (r10, dx, si, di, nr) = unsafe {
        (
            *regs.add(7),
            *regs.add(12),
            *regs.add(13),
            *regs.add(14),
            *regs.add(15),
        )
    };
    Some(SyscallArgs {
        nr,
        args: [di, si, dx, r10],
    })
}
