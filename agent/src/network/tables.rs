//! The kernel's flow tables: taken from the loaded object, switched and drained without
//! losing a packet, and the overflow counters.

use std::{collections::HashMap, time::Duration};

use agent_common::{
    FlowCache, FlowCounters, FlowKey, MAP_NET_ACTIVE, MAP_NET_CACHE, MAP_NET_FLOWS,
    MAP_NET_OVERFLOW,
};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};

/// How often the flow tables are drained. Each table must hold one interval's distinct
/// flows; what does not fit is counted in `nodetap_network_overflow_*`.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("eBPF map {name} missing from the object")]
    MissingMap { name: &'static str },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// The kernel's two flow tables with their per-CPU caches, the index of the one being
/// written, and the overflow counters.
pub struct FlowTables {
    active: Array<MapData, u32>,
    tables: [BpfHashMap<MapData, FlowKey, FlowCounters>; 2],
    /// Per CPU, one element per table: hot flows not yet added to the table.
    cache: PerCpuArray<MapData, FlowCache>,
    overflow: PerCpuArray<MapData, FlowCounters>,
    /// Which table the programs write now.
    current: u32,
    /// Overflow totals already counted, by direction.
    overflow_seen: [FlowCounters; 2],
    pub capacity: u32,
}

impl FlowTables {
    /// Takes the maps out of the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf, capacity: u32) -> Result<Self, NetworkError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(NetworkError::MissingMap { name });
        let err = |name: &'static str| move |source| NetworkError::Map { name, source };
        let active = Array::try_from(take(MAP_NET_ACTIVE)?).map_err(err(MAP_NET_ACTIVE))?;
        let t0 = BpfHashMap::try_from(take(MAP_NET_FLOWS[0])?).map_err(err(MAP_NET_FLOWS[0]))?;
        let t1 = BpfHashMap::try_from(take(MAP_NET_FLOWS[1])?).map_err(err(MAP_NET_FLOWS[1]))?;
        let overflow =
            PerCpuArray::try_from(take(MAP_NET_OVERFLOW)?).map_err(err(MAP_NET_OVERFLOW))?;
        let cache = PerCpuArray::try_from(take(MAP_NET_CACHE)?).map_err(err(MAP_NET_CACHE))?;
        Ok(Self {
            active,
            tables: [t0, t1],
            cache,
            overflow,
            current: 0,
            overflow_seen: [FlowCounters::default(); 2],
            capacity,
        })
    }

    /// Everything counted since the last drain: switches the programs to the other
    /// table, waits until no program can still be writing the old one or its caches,
    /// then reads and empties both. Flows are summed by key (a flow can be in the table
    /// and in several CPUs' caches).
    pub fn drain(&mut self) -> Result<Vec<(FlowKey, FlowCounters)>, NetworkError> {
        let old = self.current;
        let new = 1 - old;
        self.active
            .set(0, new, 0)
            .map_err(|source| NetworkError::Map {
                name: MAP_NET_ACTIVE,
                source,
            })?;
        self.current = new;
        wait_for_running_programs();
        let mut flows: HashMap<FlowKey, FlowCounters> = HashMap::new();
        let table = &mut self.tables[old as usize];
        let keys: Vec<FlowKey> = table
            .iter()
            .filter_map(Result::ok)
            .map(|(key, counters)| {
                add(flows.entry(key).or_default(), &counters);
                key
            })
            .collect();
        for key in &keys {
            // Nothing else writes this table now; a failed delete leaves the flow to be
            // counted again, so say so.
            if let Err(e) = table.remove(key) {
                log::warn!("cannot empty the flow table: {e}");
            }
        }
        let cached = self
            .cache
            .get(&old, 0)
            .map_err(|source| NetworkError::Map {
                name: MAP_NET_CACHE,
                source,
            })?;
        let mut any = false;
        for cpu in cached.iter() {
            for slot in cpu.slots.iter().filter(|s| s.counters.packets != 0) {
                add(flows.entry(slot.key).or_default(), &slot.counters);
                any = true;
            }
        }
        if any {
            // Nothing else writes these caches now either; a failed reset would count
            // them again, so say so.
            if let Err(e) = self.empty_cache(old, cached.len()) {
                log::warn!("cannot empty the flow caches: {e}");
            }
        }
        Ok(flows.into_iter().collect())
    }

    /// Zeroes one element of the caches on every CPU (`cpus` values, as read).
    fn empty_cache(&mut self, index: u32, cpus: usize) -> Result<(), MapError> {
        // SAFETY: FlowCache is plain old data, and all zeroes is an empty cache.
        let empty: FlowCache = unsafe { std::mem::zeroed() };
        let values = PerCpuValues::try_from(vec![empty; cpus]).map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error,
            })
        })?;
        self.cache.set(index, values, 0)
    }

    /// New overflow since the last call, by direction index.
    pub fn overflow_delta(&mut self) -> [FlowCounters; 2] {
        let mut out = [FlowCounters::default(); 2];
        for (dir, slot) in out.iter_mut().enumerate() {
            let total = self
                .overflow
                .get(&(dir as u32), 0)
                .map(|per_cpu| {
                    per_cpu
                        .iter()
                        .fold(FlowCounters::default(), |a, c| FlowCounters {
                            bytes: a.bytes + c.bytes,
                            packets: a.packets + c.packets,
                        })
                })
                .unwrap_or_default();
            let seen = &mut self.overflow_seen[dir];
            *slot = FlowCounters {
                bytes: total.bytes.saturating_sub(seen.bytes),
                packets: total.packets.saturating_sub(seen.packets),
            };
            *seen = total;
        }
        out
    }
}

fn add(sum: &mut FlowCounters, more: &FlowCounters) {
    sum.bytes += more.bytes;
    sum.packets += more.packets;
}

/// The programs read the table index and update the table within one RCU read-side
/// critical section (cgroup_skb programs run under `rcu_read_lock`), so once a grace
/// period has passed after the switch, none is still writing the old table.
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for exactly that (it calls
/// `synchronize_rcu()`); where it is refused (nohz_full CPUs), a pause far longer than
/// any program runs stands in.
fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}
