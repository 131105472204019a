//! `netdev`: per-interface counters, as node_exporter names them by default.
//!
//! node_exporter 1.5.0 reads them over rtnetlink and folds the detailed error counters
//! into the classic /proc/net/dev columns ("legacy" names, computed exactly as
//! net/core/net-procfs.c does), plus `receive_nohandler`. The kernel already did that
//! folding for /proc/net/dev, so this reads /proc/net/dev and takes `rx_nohandler` from
//! /sys/class/net/<iface>/statistics: same counters, no netlink socket. `lo` is excluded
//! (node_exporter's default `--collector.netdev.device-exclude=^lo$`).

use super::filters::Filters;
use super::render::Family;
use super::util::{parse_u64, read_attr, read_parse};
use super::{label, CollectError, Ctx, ParseError};

/// /proc/net/dev columns after the interface name, named as node_exporter names them.
pub(crate) const COLUMNS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DevStats {
    pub device: String,
    pub columns: [u64; 16],
}

pub(crate) fn excluded(device: &str) -> bool {
    device == "lo"
}

/// Parses /proc/net/dev: two header lines, then `<iface>: <16 counters>`.
pub(crate) fn parse(text: &str) -> Result<Vec<DevStats>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(2) {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        // Interface names cannot contain ':' (net/core/dev.c, dev_valid_name).
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| ParseError::new(n, "no ':' after the interface name"))?;
        let name = name.trim();
        let values: Vec<&str> = rest.split_whitespace().collect();
        if values.len() < COLUMNS.len() {
            return Err(ParseError::new(
                n,
                format!(
                    "{name}: {} values, expected {}",
                    values.len(),
                    COLUMNS.len()
                ),
            ));
        }
        let mut columns = [0u64; 16];
        for (slot, v) in columns.iter_mut().zip(&values) {
            *slot = parse_u64(v, n, name)?;
        }
        out.push(DevStats {
            device: name.to_string(),
            columns,
        });
    }
    Ok(out)
}

/// Renders the devices that are not excluded; `nohandler` gives `receive_nohandler` per
/// device where known.
pub(crate) fn render(
    devs: &[DevStats],
    filters: &Filters,
    nohandler: impl Fn(&str) -> Option<u64>,
) -> Vec<Family> {
    let devs: Vec<&DevStats> = devs
        .iter()
        .filter(|d| !filters.netdev_excluded(&d.device))
        .collect();
    let family = |key: &str| {
        Family::counter(
            format!("node_network_{key}_total"),
            format!("Network device statistic {key}."),
        )
    };
    let mut families: Vec<Family> = COLUMNS
        .iter()
        .enumerate()
        .map(|(col, key)| {
            let mut f = family(key);
            for d in &devs {
                f.push(label("device", d.device.clone()), d.columns[col] as f64);
            }
            f
        })
        .collect();
    let mut nh = family("receive_nohandler");
    for d in &devs {
        if let Some(v) = nohandler(&d.device) {
            nh.push(label("device", d.device.clone()), v as f64);
        }
    }
    families.push(nh);
    families
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let devs = read_parse(&ctx.proc("net/dev"), parse)?;
    let net = ctx.sys("class/net");
    Ok(render(&devs, &ctx.filters, |dev| {
        read_attr(&net.join(dev).join("statistics/rx_nohandler")).and_then(|s| s.parse().ok())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    const SAMPLE: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   63187      67    0    0    0     0          0         0    63187      67    0    0    0     0       0          0
  eth0: 349010164    8054    1    2    3     4          5         6   407168    4935    7    8    9    10       11          12
";

    #[test]
    fn parses_and_renders() {
        let devs = parse(SAMPLE).unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[1].device, "eth0");
        assert_eq!(devs[1].columns[0], 349010164);
        assert_eq!(devs[1].columns[15], 12);
        let out = testutil::render(render(&devs, &Filters::default(), |d| {
            (d == "eth0").then_some(42)
        }));
        assert!(!out.contains("\"lo\""));
        for line in [
            "# HELP node_network_receive_bytes_total Network device statistic receive_bytes.\n# TYPE node_network_receive_bytes_total counter\nnode_network_receive_bytes_total{device=\"eth0\"} 3.49010164e+08\n",
            "node_network_receive_errs_total{device=\"eth0\"} 1\n",
            "node_network_receive_drop_total{device=\"eth0\"} 2\n",
            "node_network_receive_multicast_total{device=\"eth0\"} 6\n",
            "node_network_transmit_colls_total{device=\"eth0\"} 10\n",
            "node_network_transmit_carrier_total{device=\"eth0\"} 11\n",
            "node_network_transmit_compressed_total{device=\"eth0\"} 12\n",
            "# HELP node_network_receive_nohandler_total Network device statistic receive_nohandler.\n# TYPE node_network_receive_nohandler_total counter\nnode_network_receive_nohandler_total{device=\"eth0\"} 42\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.matches("# TYPE").count(), 17);
    }

    #[test]
    fn real_fixture() {
        let fams = collect(&testutil::ctx("real")).unwrap();
        let out = testutil::render(fams);
        assert!(out.contains("node_network_receive_bytes_total{device=\"eth0\"}"));
        assert!(out.contains("node_network_receive_nohandler_total{device=\"ifb0\"} 0\n"));
        assert!(!out.contains("device=\"lo\""));
    }

    #[test]
    fn errors() {
        assert!(parse("h\nh\neth0 1 2 3\n").is_err());
        assert!(parse("h\nh\neth0: 1 2 3\n").is_err());
        assert!(parse("h\nh\neth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x\n").is_err());
        assert!(parse("").unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_netdev_like(s in "h\nh\n( {0,3}[a-z0-9]{0,5}:?( [0-9]{1,20}){0,17}\n){0,4}") {
            if let Ok(d) = parse(&s) { let _ = render(&d, &Filters::default(), |_| Some(1)); }
        }
    }
}
