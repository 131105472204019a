//! Drained flows into metric series: who (the cgroup's workload), which way, between
//! which zones.

use std::{collections::HashMap, net::IpAddr};

use agent_common::{FlowCounters, FlowKey, FAMILY_IPV4, FAMILY_IPV6};

use crate::{
    metadata::identity::Identity,
    metrics::{DirectionLabels, Metrics, NetworkLabels},
};

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
