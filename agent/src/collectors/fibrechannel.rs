//! `fibrechannel`: Fibre Channel host adapters in /sys/class/fc_host
//! (drivers/scsi/scsi_transport_fc.c), read as procfs 0.8 reads them for node_exporter
//! 1.5: `node_fibrechannel_info` with the adapter's attributes as labels (the `0x` of
//! port and fabric names removed) and its `statistics/` counters, except those the
//! driver reports as all ones (not counted). No /sys/class/fc_host: no data.
//!
//! Where node_exporter 1.5 dies on a counter it cannot parse (procfs dereferences a nil
//! pointer), nodetap reports the collector failed.

use std::io;

use super::render::Family;
use super::util::{
    parse_go_uint, skippable, sys_read_file, ClassReadError as ReadError, DirTree, Kind, Tree,
};
use super::{CollectError, Ctx};

/// `statistics/` files: (file, metric after `node_fibrechannel_`, help).
const COUNTERS: [(&str, &str, &str); 14] = [
    (
        "dumped_frames",
        "dumped_frames_total",
        "Number of dumped frames",
    ),
    (
        "error_frames",
        "error_frames_total",
        "Number of errors in frames",
    ),
    (
        "invalid_crc_count",
        "invalid_crc_total",
        "Invalid Cyclic Redundancy Check count",
    ),
    ("rx_frames", "rx_frames_total", "Number of frames received"),
    (
        "rx_words",
        "rx_words_total",
        "Number of words received by host port",
    ),
    (
        "tx_frames",
        "tx_frames_total",
        "Number of frames transmitted by host port",
    ),
    (
        "tx_words",
        "tx_words_total",
        "Number of words transmitted by host port",
    ),
    (
        "seconds_since_last_reset",
        "seconds_since_last_reset_total",
        "Number of seconds since last host port reset",
    ),
    (
        "invalid_tx_word_count",
        "invalid_tx_words_total",
        "Number of invalid words transmitted by host port",
    ),
    (
        "link_failure_count",
        "link_failure_total",
        "Number of times the host port link has failed",
    ),
    (
        "loss_of_sync_count",
        "loss_of_sync_total",
        "Number of failures on either bit or transmission word boundaries",
    ),
    (
        "loss_of_signal_count",
        "loss_of_signal_total",
        "Number of times signal has been lost",
    ),
    (
        "nos_count",
        "nos_total",
        "Number Not_Operational Primitive Sequence received by host port",
    ),
    (
        "fcp_packet_aborts",
        "fcp_packet_aborts_total",
        "Number of aborted packets",
    ),
];

/// The attributes procfs requires, in its order; `true` for those whose first two
/// characters (`0x`) it drops.
const ATTRIBUTES: [(&str, bool); 11] = [
    ("speed", false),
    ("port_state", false),
    ("port_type", false),
    ("node_name", true),
    ("port_id", true),
    ("port_name", true),
    ("fabric_name", true),
    ("dev_loss_tmo", false),
    ("symbolic_name", false),
    ("supported_classes", false),
    ("supported_speeds", false),
];

/// The `node_fibrechannel_info` labels after `fc_host`, each with its attribute.
const INFO_LABELS: [&str; 10] = [
    "speed",
    "port_state",
    "port_type",
    "port_id",
    "port_name",
    "fabric_name",
    "symbolic_name",
    "supported_classes",
    "supported_speeds",
    "dev_loss_tmo",
];

/// One adapter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Host {
    pub name: String,
    /// [`ATTRIBUTES`] values, in that order.
    pub attributes: Vec<String>,
    /// [`COUNTERS`] values; absent counters read 0, as in procfs.
    pub counters: [u64; 14],
}

fn parse_host(tree: &impl Tree, name: &str) -> Result<Host, ReadError> {
    let mut attributes = Vec::new();
    for (f, strip) in ATTRIBUTES {
        let rel = format!("{name}/{f}");
        let v = sys_read_file(tree, &rel).map_err(|e| ReadError::new(&rel, e, false))?;
        attributes.push(if strip && v.len() > 2 {
            String::from_utf8_lossy(&v.as_bytes()[2..]).into_owned()
        } else {
            v
        });
    }
    let dir = format!("{name}/statistics");
    let mut counters = [0u64; 14];
    for (file, kind) in tree.list(&dir).map_err(|e| ReadError::new(&dir, e, true))? {
        if kind != Kind::File || file == "reset_statistics" {
            continue;
        }
        let rel = format!("{dir}/{file}");
        let value = match sys_read_file(tree, &rel) {
            Ok(v) => v,
            Err(e) if skippable(&e, false) => continue,
            Err(e) => return Err(ReadError::new(&rel, e, false)),
        };
        if let Some(i) = COUNTERS.iter().position(|(f, ..)| *f == file) {
            counters[i] = parse_go_uint(&value).ok_or_else(|| {
                ReadError::new(
                    &rel,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{value:?} is not a counter"),
                    ),
                    false,
                )
            })?;
        }
    }
    Ok(Host {
        name: name.to_string(),
        attributes,
        counters,
    })
}

/// Every adapter in `tree` (/sys/class/fc_host).
pub(crate) fn parse(tree: &impl Tree) -> Result<Vec<Host>, ReadError> {
    let names = tree.list("").map_err(|e| ReadError::new("", e, true))?;
    names.iter().map(|(n, _)| parse_host(tree, n)).collect()
}

pub(crate) fn render(hosts: &[Host]) -> Vec<Family> {
    let mut info = Family::gauge(
        "node_fibrechannel_info",
        "Non-numeric data from /sys/class/fc_host/<host>, value is always 1.",
    );
    let mut counters: Vec<Family> = COUNTERS
        .iter()
        .map(|(_, name, help)| Family::counter(format!("node_fibrechannel_{name}"), *help))
        .collect();
    for h in hosts {
        let attr = |n: &str| {
            let i = ATTRIBUTES.iter().position(|(a, _)| *a == n).unwrap_or(0);
            h.attributes.get(i).cloned().unwrap_or_default()
        };
        let mut labels = vec![("fc_host", h.name.clone())];
        labels.extend(INFO_LABELS.iter().map(|l| (*l, attr(l))));
        info.push(labels, 1.0);
        for (f, v) in counters.iter_mut().zip(h.counters) {
            // All ones: the driver does not count this.
            if v != u64::MAX {
                f.push(vec![("fc_host", h.name.clone())], v as f64);
            }
        }
    }
    let mut out = vec![info];
    out.append(&mut counters);
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.sys("class/fc_host");
    match parse(&DirTree(base.clone())) {
        Ok(hosts) => Ok(render(&hosts)),
        Err(e) => Err(e.into_collect_error(
            &base,
            "no /sys/class/fc_host (or an adapter without statistics)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use crate::collectors::util::MapTree;
    use proptest::prelude::*;

    #[test]
    fn reads_the_storage_fixture() {
        let hosts = parse(&DirTree(
            testutil::fixture("storage").join("sys/class/fc_host"),
        ))
        .unwrap();
        assert_eq!(hosts.len(), 1);
        let h = &hosts[0];
        assert_eq!(h.name, "host0");
        assert_eq!(h.attributes[0], "16 Gbit");
        // port_name without its 0x.
        assert_eq!(h.attributes[5], "1000e0071bce95f2");
        assert_eq!(h.counters[1], 0);
        assert_eq!(h.counters[3], 0x30);
        // Counters the driver does not keep read all ones and are not served.
        assert_eq!(h.counters[0], u64::MAX);
        assert_eq!(h.counters[13], u64::MAX);
        let out = testutil::render(render(&hosts));
        assert!(
            !out.contains("node_fibrechannel_fcp_packet_aborts_total{"),
            "{out}"
        );
        assert!(
            out.contains("node_fibrechannel_rx_frames_total{fc_host=\"host0\"} 48\n"),
            "{out}"
        );
    }

    #[test]
    fn missing_attributes_and_statistics() {
        let attrs: String = ATTRIBUTES
            .iter()
            .map(|(a, _)| format!("host1/{a}=0x1\n"))
            .collect();
        // No statistics directory: node_exporter reports no data.
        let e = parse(&MapTree::from_lines(&attrs)).unwrap_err();
        assert!(e.no_data, "{e:?}");
        // A missing attribute is an error.
        let e = parse(&MapTree::from_lines(
            "host1/speed=1\nhost1/statistics/rx_frames=1\n",
        ))
        .unwrap_err();
        assert!(!e.no_data && e.rel == "host1/port_state", "{e:?}");
        // "0x1" loses its first two characters; counters are base-0 numbers.
        let ok =
            format!("{attrs}host1/statistics/rx_frames=0x10\nhost1/statistics/lip_count=junk\n");
        let h = &parse(&MapTree::from_lines(&ok)).unwrap()[0];
        assert_eq!(h.attributes[3], "1");
        assert_eq!(h.counters[3], 16);
        let bad = format!("{attrs}host1/statistics/rx_frames=junk\n");
        assert!(parse(&MapTree::from_lines(&bad)).is_err());
    }

    #[test]
    fn absent_source_is_no_data() {
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(h/(speed|port_state|port_type|node_name|port_id|port_name|fabric_name|dev_loss_tmo|symbolic_name|supported_classes|supported_speeds|statistics/(rx_frames|nos_count|tx_words))=[0-9a-fx]{0,6}\n){1,14}") {
            if let Ok(h) = parse(&MapTree::from_lines(&s)) { let _ = render(&h); }
        }
    }
}
