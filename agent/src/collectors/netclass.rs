//! `netclass`: interface properties from /sys/class/net/<iface>
//! (Documentation/ABI/testing/sysfs-class-net).
//!
//! An attribute that cannot be read (EINVAL for the carrier of a device that is down,
//! EOPNOTSUPP, or absent) leaves its metric out for that device, as node_exporter does.
//! Numbers are parsed like Go's `strconv.ParseInt(s, 0, 64)`, so `flags` (`0x1003`) and
//! `dev_id` (`0x0`) read as hexadecimal.

use std::collections::BTreeMap;

use super::render::{Family, MetricType};
use super::util::{parse_go_int, read_attr};
use super::{label, CollectError, Ctx};

/// The sysfs attributes read per interface.
pub(crate) const ATTRIBUTES: [&str; 22] = [
    "addr_assign_type",
    "address",
    "broadcast",
    "carrier",
    "carrier_changes",
    "carrier_down_count",
    "carrier_up_count",
    "dev_id",
    "dormant",
    "duplex",
    "flags",
    "ifalias",
    "ifindex",
    "iflink",
    "link_mode",
    "mtu",
    "name_assign_type",
    "netdev_group",
    "operstate",
    "speed",
    "tx_queue_len",
    "type",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Iface {
    pub name: String,
    pub address: String,
    pub broadcast: String,
    pub duplex: String,
    pub ifalias: String,
    pub operstate: String,
    /// (metric name without `node_network_`, value, is counter), in node_exporter's order.
    pub numbers: Vec<(&'static str, i64, bool)>,
}

/// Builds an interface from the trimmed contents of its attribute files (absent =
/// unreadable).
pub(crate) fn parse(name: &str, files: &BTreeMap<&str, String>) -> Iface {
    let text = |k: &str| files.get(k).cloned().unwrap_or_default();
    let num = |k: &str| files.get(k).and_then(|v| parse_go_int(v));
    let mut numbers = Vec::new();
    let mut push = |metric: &'static str, v: Option<i64>, counter: bool| {
        if let Some(v) = v {
            numbers.push((metric, v, counter));
        }
    };
    push("address_assign_type", num("addr_assign_type"), false);
    push("carrier", num("carrier"), false);
    push("carrier_changes_total", num("carrier_changes"), true);
    push("carrier_up_changes_total", num("carrier_up_count"), true);
    push(
        "carrier_down_changes_total",
        num("carrier_down_count"),
        true,
    );
    push("device_id", num("dev_id"), false);
    push("dormant", num("dormant"), false);
    push("flags", num("flags"), false);
    push("iface_id", num("ifindex"), false);
    push("iface_link", num("iflink"), false);
    push("iface_link_mode", num("link_mode"), false);
    push("mtu_bytes", num("mtu"), false);
    push("name_assign_type", num("name_assign_type"), false);
    push("net_dev_group", num("netdev_group"), false);
    // Mbit/s to bytes/s with Go's int64 arithmetic: unknown speed (-1) gives -125000,
    // which node_exporter 1.x still exposes by default.
    push(
        "speed_bytes",
        num("speed").map(|s| s.wrapping_mul(1000).wrapping_mul(1000) / 8),
        false,
    );
    push("transmit_queue_length", num("tx_queue_len"), false);
    push("protocol_type", num("type"), false);
    Iface {
        name: name.to_string(),
        address: text("address"),
        broadcast: text("broadcast"),
        duplex: text("duplex"),
        ifalias: text("ifalias"),
        operstate: text("operstate"),
        numbers,
    }
}

pub(crate) fn render(ifaces: &[Iface]) -> Vec<Family> {
    let mut up = Family::gauge(
        "node_network_up",
        "Value is 1 if operstate is 'up', 0 otherwise.",
    );
    let mut info = Family::gauge(
        "node_network_info",
        "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
    );
    let mut by_metric: BTreeMap<&'static str, Family> = BTreeMap::new();
    for i in ifaces {
        up.push(
            label("device", i.name.clone()),
            if i.operstate == "up" { 1.0 } else { 0.0 },
        );
        info.push(
            vec![
                ("device", i.name.clone()),
                ("address", i.address.clone()),
                ("broadcast", i.broadcast.clone()),
                ("duplex", i.duplex.clone()),
                ("operstate", i.operstate.clone()),
                ("ifalias", i.ifalias.clone()),
            ],
            1.0,
        );
        for &(metric, value, counter) in &i.numbers {
            by_metric
                .entry(metric)
                .or_insert_with(|| {
                    Family::new(
                        format!("node_network_{metric}"),
                        format!("Network device property: {metric}"),
                        if counter {
                            MetricType::Counter
                        } else {
                            MetricType::Gauge
                        },
                    )
                })
                .push(label("device", i.name.clone()), value as f64);
        }
    }
    let mut out = vec![up, info];
    out.extend(by_metric.into_values());
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/net");
    let entries = std::fs::read_dir(&dir).map_err(|source| CollectError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut names = Vec::new();
    for e in entries.flatten() {
        // Interfaces are symlinks to their device directory; /sys/class/net also holds
        // regular files such as bonding_masters, which are skipped.
        if e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let ifaces: Vec<Iface> = names
        .iter()
        .map(|name| {
            let base = dir.join(name);
            let files: BTreeMap<&str, String> = ATTRIBUTES
                .iter()
                .filter_map(|a| read_attr(&base.join(a)).map(|v| (*a, v)))
                .collect();
            parse(name, &files)
        })
        .collect();
    Ok(render(&ifaces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    fn files(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn eth0_like_node_exporter() {
        let i = parse(
            "eth0",
            &files(&[
                ("addr_assign_type", "0"),
                ("address", "02:fc:00:00:00:01"),
                ("broadcast", "ff:ff:ff:ff:ff:ff"),
                ("carrier", "1"),
                ("carrier_changes", "2"),
                ("dev_id", "0x0"),
                ("duplex", "unknown"),
                ("flags", "0x1003"),
                ("ifalias", ""),
                ("ifindex", "4"),
                ("mtu", "1400"),
                ("operstate", "up"),
                ("speed", "-1"),
                ("type", "1"),
            ]),
        );
        let out = testutil::render(render(&[i]));
        for line in [
            "# HELP node_network_up Value is 1 if operstate is 'up', 0 otherwise.\n# TYPE node_network_up gauge\nnode_network_up{device=\"eth0\"} 1\n",
            "# HELP node_network_info Non-numeric data from /sys/class/net/<iface>, value is always 1.\n# TYPE node_network_info gauge\nnode_network_info{address=\"02:fc:00:00:00:01\",broadcast=\"ff:ff:ff:ff:ff:ff\",device=\"eth0\",duplex=\"unknown\",ifalias=\"\",operstate=\"up\"} 1\n",
            "# HELP node_network_flags Network device property: flags\n# TYPE node_network_flags gauge\nnode_network_flags{device=\"eth0\"} 4099\n",
            "# TYPE node_network_carrier_changes_total counter\nnode_network_carrier_changes_total{device=\"eth0\"} 2\n",
            "node_network_speed_bytes{device=\"eth0\"} -125000\n",
            "node_network_mtu_bytes{device=\"eth0\"} 1400\n",
            "node_network_protocol_type{device=\"eth0\"} 1\n",
            "node_network_device_id{device=\"eth0\"} 0\n",
            "node_network_iface_id{device=\"eth0\"} 4\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        // Unreadable attributes leave their metric out.
        assert!(!out.contains("node_network_dormant"));
        assert!(!out.contains("node_network_name_assign_type"));
    }

    #[test]
    fn speeds() {
        let s = |v: &str| {
            parse("x", &files(&[("speed", v)]))
                .numbers
                .iter()
                .find(|n| n.0 == "speed_bytes")
                .map(|n| n.1)
        };
        assert_eq!(s("10000"), Some(1_250_000_000));
        assert_eq!(s("-1"), Some(-125_000));
        assert_eq!(s("unknown"), None);
        assert_eq!(
            s("9223372036854775807"),
            Some(9223372036854775807i64.wrapping_mul(1_000_000) / 8)
        );
    }

    #[test]
    fn real_fixture() {
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        for dev in ["eth0", "ifb0", "ifb1", "lo"] {
            assert!(
                out.contains(&format!("node_network_up{{device=\"{dev}\"}}")),
                "{dev}"
            );
        }
        assert!(out.contains("node_network_up{device=\"lo\"} 0\n"));
        assert!(out.contains("node_network_protocol_type{device=\"lo\"} 772\n"));
        assert!(!out.contains("node_network_carrier{device=\"ifb0\"}"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(values in proptest::collection::vec("\\PC{0,24}", ATTRIBUTES.len())) {
            let f: BTreeMap<&str, String> = ATTRIBUTES.iter().copied().zip(values).collect();
            let i = parse("x\"y\\z\n", &f);
            let _ = testutil::render(render(&[i]));
        }
    }
}
