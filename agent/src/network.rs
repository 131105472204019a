//! IP bytes per workload and zone pair: drains the kernel's flow tables (filled by the
//! cgroup_skb programs, see agent-ebpf/src/network.rs) into
//! `nodetap_network_{bytes,packets}_total`.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use agent_common::{
    FlowCache, FlowCounters, FlowKey, FAMILY_IPV4, FAMILY_IPV6, MAP_NET_ACTIVE, MAP_NET_CACHE,
    MAP_NET_FLOWS, MAP_NET_OVERFLOW,
};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};

use crate::{
    metadata::identity::Identity,
    metrics::{DirectionLabels, Metrics, NetworkLabels},
};

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

/// The address in a flow key.
pub fn key_addr(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        FAMILY_IPV6 => Some(crate::metadata::cidr::unmap(IpAddr::from(*bytes))),
        _ => None,
    }
}

/// Adds drained flows to the metrics: who (the cgroup's workload), which way, from which
/// zone to which. Transmit goes from the local address's zone to the remote's; receive
/// the other way.
pub fn record(
    metrics: &Metrics,
    identity: &mut Identity,
    flows: &[(FlowKey, FlowCounters)],
    overflow: [FlowCounters; 2],
) {
    // Many flows share a series: sum first, then one lookup per series.
    let mut series: HashMap<NetworkLabels, FlowCounters> = HashMap::new();
    for (key, counters) in flows {
        let (Some(local), Some(remote)) = (
            key_addr(key.family, &key.local),
            key_addr(key.family, &key.remote),
        ) else {
            continue;
        };
        let Some(direction) = direction_of(key.direction) else {
            continue;
        };
        let local_zone = identity.zone_of(local);
        let remote_zone = identity.zone_of(remote);
        let (src_zone, dst_zone) = match direction {
            agent_common::Direction::Transmit => (local_zone, remote_zone),
            agent_common::Direction::Receive => (remote_zone, local_zone),
        };
        let labels = NetworkLabels {
            direction: direction.label(),
            src_zone,
            dst_zone,
            workload: identity.workload(key.cgroup_id, None),
        };
        let sum = series.entry(labels).or_default();
        sum.bytes += counters.bytes;
        sum.packets += counters.packets;
    }
    for (labels, sum) in series {
        metrics
            .network_bytes
            .get_or_create(&labels)
            .inc_by(sum.bytes);
        metrics
            .network_packets
            .get_or_create(&labels)
            .inc_by(sum.packets);
    }
    for (dir, delta) in overflow.iter().enumerate() {
        let Some(direction) = direction_of(dir as u8) else {
            continue;
        };
        let labels = DirectionLabels {
            direction: direction.label(),
        };
        if delta.packets > 0 {
            log::warn!(
                "kernel flow table full: {} {} packets counted without workload or zone",
                delta.packets,
                labels.direction
            );
        }
        metrics
            .network_overflow_bytes
            .get_or_create(&labels)
            .inc_by(delta.bytes);
        metrics
            .network_overflow_packets
            .get_or_create(&labels)
            .inc_by(delta.packets);
    }
    metrics.network_flows.set(flows.len() as i64);
}

fn direction_of(raw: u8) -> Option<agent_common::Direction> {
    match raw {
        0 => Some(agent_common::Direction::Transmit),
        1 => Some(agent_common::Direction::Receive),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{
        identity::SharedZones,
        zones::{SubnetZone, ZoneMap},
    };

    fn key(cgroup: u64, local: [u8; 4], remote: [u8; 4], direction: u8) -> FlowKey {
        let mut k = FlowKey {
            cgroup_id: cgroup,
            local: [0; 16],
            remote: [0; 16],
            family: FAMILY_IPV4,
            direction,
            _pad: [0; 6],
        };
        k.local[..4].copy_from_slice(&local);
        k.remote[..4].copy_from_slice(&remote);
        k
    }

    #[test]
    fn key_addresses_by_family() {
        let mut v6 = [0u8; 16];
        v6[0] = 0x26;
        v6[15] = 1;
        assert_eq!(key_addr(FAMILY_IPV6, &v6), Some("2600::1".parse().unwrap()));
        // An IPv4-mapped IPv6 address is the IPv4 address (dual-stack sockets).
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(
            key_addr(FAMILY_IPV6, &mapped),
            Some("10.1.2.3".parse().unwrap())
        );
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(
            key_addr(FAMILY_IPV4, &v4),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(key_addr(0, &v4), None);
    }

    #[test]
    fn flows_become_zone_pair_series() {
        let zones = SharedZones::new(
            ZoneMap::new(
                "az-a",
                &[
                    SubnetZone {
                        cidr: "10.201.1.0/24".into(),
                        zone: "az-a".into(),
                    },
                    SubnetZone {
                        cidr: "10.201.2.0/24".into(),
                        zone: "az-b".into(),
                    },
                ],
            )
            .unwrap(),
        );
        let mut identity = Identity::new(None, None, zones);
        let metrics = Metrics::new("test");
        let a = [10, 201, 1, 2];
        let b = [10, 201, 2, 2];
        let c = [10, 201, 1, 6];
        let flows = [
            (
                key(7, a, b, 0),
                FlowCounters {
                    bytes: 1000,
                    packets: 10,
                },
            ),
            (
                key(7, a, c, 0),
                FlowCounters {
                    bytes: 500,
                    packets: 5,
                },
            ),
            (
                key(7, a, b, 1),
                FlowCounters {
                    bytes: 60,
                    packets: 1,
                },
            ),
            (
                key(7, a, [8, 8, 8, 8], 0),
                FlowCounters {
                    bytes: 7,
                    packets: 1,
                },
            ),
        ];
        record(
            &metrics,
            &mut identity,
            &flows,
            [
                FlowCounters::default(),
                FlowCounters {
                    bytes: 3,
                    packets: 1,
                },
            ],
        );
        let text = metrics.encode();
        for line in [
            "nodetap_network_bytes_total{direction=\"transmit\",src_zone=\"az-a\",dst_zone=\"az-b\",service_name=\"unknown\"} 1000\n",
            "nodetap_network_bytes_total{direction=\"transmit\",src_zone=\"az-a\",dst_zone=\"az-a\",service_name=\"unknown\"} 500\n",
            "nodetap_network_bytes_total{direction=\"receive\",src_zone=\"az-b\",dst_zone=\"az-a\",service_name=\"unknown\"} 60\n",
            "nodetap_network_bytes_total{direction=\"transmit\",src_zone=\"az-a\",dst_zone=\"external\",service_name=\"unknown\"} 7\n",
            "nodetap_network_packets_total{direction=\"transmit\",src_zone=\"az-a\",dst_zone=\"az-b\",service_name=\"unknown\"} 10\n",
            "nodetap_network_overflow_bytes_total{direction=\"receive\"} 3\n",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
