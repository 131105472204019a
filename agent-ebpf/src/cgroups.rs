//! Cgroups as they are created (`cgroup:cgroup_mkdir`): id and path into `CGROUP_PATHS`,
//! so the agent can name a cgroup that is gone by the time it first needs it (a pod's
//! container removed while its last connections are being drained). Runs once per
//! cgroup created, never on the data path.

use agent_common::{CgroupPath, CGROUP_PATH_ENTRIES};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};

/// The record's layout (`/sys/kernel/tracing/events/cgroup/cgroup_mkdir/format`, the
/// `cgroup` event class in include/trace/events/cgroup.h, the same since the id became
/// 64 bits in Linux 5.5): `int root` at 8, `int level` at 12, `u64 id` at 16, the path's
/// `__data_loc` (offset in the low 16 bits, length in the high 16) at 24.
const ROOT_OFFSET: usize = 8;
const ID_OFFSET: usize = 16;
const PATH_LOC_OFFSET: usize = 24;
/// The v2 hierarchy's id (`0::` in /proc/<pid>/cgroup, cgroups(7)); v1 hierarchies have
/// ids of their own, and their cgroup ids are another numbering.
const V2_HIERARCHY: i32 = 0;

#[map(name = "CGROUP_PATHS")]
static CGROUP_PATHS: LruHashMap<u64, CgroupPath> =
    LruHashMap::with_max_entries(CGROUP_PATH_ENTRIES, 0);

/// Room to build an entry (too large for the stack).
#[map(name = "CGROUP_SCRATCH")]
static CGROUP_SCRATCH: PerCpuArray<CgroupPath> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn nodetap_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = on_mkdir(&ctx);
    0
}

#[inline(always)]
fn on_mkdir(ctx: &TracePointContext) -> Result<(), i32> {
    let root: i32 = unsafe { ctx.read_at(ROOT_OFFSET)? };
    if root != V2_HIERARCHY {
        return Ok(());
    }
    let id: u64 = unsafe { ctx.read_at(ID_OFFSET)? };
    let loc: u32 = unsafe { ctx.read_at(PATH_LOC_OFFSET)? };
    let entry = CGROUP_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's slot, used only here and not across a sleep.
    let entry = unsafe { &mut *entry };
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: the helper checks the address; a failed read stores nothing.
    let len = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut entry.path) }?.len();
    // A path that filled the buffer may have been cut short: better unknown than wrong.
    if len + 1 >= entry.path.len() {
        return Ok(());
    }
    entry.len = len as u32;
    CGROUP_PATHS.insert(&id, &*entry, 0)
}
