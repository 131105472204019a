//! `infiniband`: InfiniBand (and RoCE/EFA) devices in /sys/class/infiniband
//! (Documentation/ABI/stable/sysfs-class-infiniband), read as procfs 0.8 reads them for
//! node_exporter 1.5: `node_infiniband_info` per device, and per port its state, physical
//! state, rate and the `counters/` and `counters_ext/` counters the port has (data
//! counters are in units of 4 bytes: served in bytes). No /sys/class/infiniband (or a
//! device missing a file procfs needs): no data, as in node_exporter.

use std::io;

use super::render::Family;
use super::util::{
    parse_go_u64, parse_go_uint, skippable, sys_read_file, ClassReadError as ReadError, DirTree,
    Kind, Tree,
};
use super::{CollectError, Ctx};

/// `counters/` files: (file, metric after `node_infiniband_`, help, multiplier).
const COUNTERS: [(&str, &str, &str, u64); 22] = [
    ("excessive_buffer_overrun_errors", "excessive_buffer_overrun_errors_total", "Number of times that OverrunErrors consecutive flow control update periods occurred, each having at least one overrun error.", 1),
    ("link_downed", "link_downed_total", "Number of times the link failed to recover from an error state and went down", 1),
    ("link_error_recovery", "link_error_recovery_total", "Number of times the link successfully recovered from an error state", 1),
    ("local_link_integrity_errors", "local_link_integrity_errors_total", "Number of times that the count of local physical errors exceeded the threshold specified by LocalPhyErrors.", 1),
    ("multicast_rcv_packets", "multicast_packets_received_total", "Number of multicast packets received (including errors)", 1),
    ("multicast_xmit_packets", "multicast_packets_transmitted_total", "Number of multicast packets transmitted (including errors)", 1),
    ("port_rcv_constraint_errors", "port_constraint_errors_received_total", "Number of packets received on the switch physical port that are discarded", 1),
    ("port_rcv_data", "port_data_received_bytes_total", "Number of data octets received on all links", 4),
    ("port_rcv_discards", "port_discards_received_total", "Number of inbound packets discarded by the port because the port is down or congested", 1),
    ("port_rcv_errors", "port_errors_received_total", "Number of packets containing an error that were received on this port", 1),
    ("port_rcv_packets", "port_packets_received_total", "Number of packets received on all VLs by this port (including errors)", 1),
    ("port_rcv_remote_physical_errors", "port_receive_remote_physical_errors_total", "Number of packets marked with the EBP (End of Bad Packet) delimiter received on the port.", 1),
    ("port_rcv_switch_relay_errors", "port_receive_switch_relay_errors_total", "Number of packets that could not be forwarded by the switch.", 1),
    ("port_xmit_constraint_errors", "port_constraint_errors_transmitted_total", "Number of packets not transmitted from the switch physical port", 1),
    ("port_xmit_data", "port_data_transmitted_bytes_total", "Number of data octets transmitted on all links", 4),
    ("port_xmit_discards", "port_discards_transmitted_total", "Number of outbound packets discarded by the port because the port is down or congested", 1),
    ("port_xmit_packets", "port_packets_transmitted_total", "Number of packets transmitted on all VLs from this port (including errors)", 1),
    ("port_xmit_wait", "port_transmit_wait_total", "Number of ticks during which the port had data to transmit but no data was sent during the entire tick", 1),
    ("symbol_error", "symbol_error_total", "Number of minor link errors detected on one or more physical lanes.", 1),
    ("unicast_rcv_packets", "unicast_packets_received_total", "Number of unicast packets received (including errors)", 1),
    ("unicast_xmit_packets", "unicast_packets_transmitted_total", "Number of unicast packets transmitted (including errors)", 1),
    ("VL15_dropped", "vl15_dropped_total", "Number of incoming VL15 packets dropped due to resource limitations.", 1),
];

/// `counters_ext/` files, the same way.
const COUNTERS_EXT: [(&str, &str, &str, u64); 8] = [
    (
        "port_multicast_rcv_packets",
        "legacy_multicast_packets_received_total",
        "Number of multicast packets received",
        1,
    ),
    (
        "port_multicast_xmit_packets",
        "legacy_multicast_packets_transmitted_total",
        "Number of multicast packets transmitted",
        1,
    ),
    (
        "port_rcv_data_64",
        "legacy_data_received_bytes_total",
        "Number of data octets received on all links",
        4,
    ),
    (
        "port_rcv_packets_64",
        "legacy_packets_received_total",
        "Number of data packets received on all links",
        1,
    ),
    (
        "port_unicast_rcv_packets",
        "legacy_unicast_packets_received_total",
        "Number of unicast packets received",
        1,
    ),
    (
        "port_unicast_xmit_packets",
        "legacy_unicast_packets_transmitted_total",
        "Number of unicast packets transmitted",
        1,
    ),
    (
        "port_xmit_data_64",
        "legacy_data_transmitted_bytes_total",
        "Number of data octets transmitted on all links",
        4,
    ),
    // node_exporter's HELP says "received" here too.
    (
        "port_xmit_packets_64",
        "legacy_packets_transmitted_total",
        "Number of data packets received on all links",
        1,
    ),
];

/// One port.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Port {
    pub number: u32,
    pub state_id: u32,
    pub phys_state_id: u32,
    pub rate_bytes_per_second: u64,
    /// Values of [`COUNTERS`] then [`COUNTERS_EXT`], `None` where the port has none.
    pub counters: Vec<Option<u64>>,
}

/// One device.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Device {
    pub name: String,
    pub board_id: String,
    pub firmware_version: String,
    pub hca_type: String,
    pub ports: Vec<Port>,
}

/// `state` and `phys_state`: `<id>: <NAME>`.
pub(crate) fn parse_state(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 2 {
        return None;
    }
    parse_go_u64(parts[0].trim()).and_then(|v| u32::try_from(v).ok())
}

/// `rate`: `<Gb/s> Gb/sec (<width> <speed>)`, read as a 32-bit float as procfs does.
pub(crate) fn parse_rate(s: &str) -> Option<u64> {
    let (gbps, _) = s.split_once(' ')?;
    let v: f32 = gbps.trim().parse().ok()?;
    Some((f64::from(v) * 125_000_000.0) as u64)
}

/// A counter file's value (`None`: not counted, "N/A (no PMA)").
fn counter(tree: &impl Tree, rel: &str, mult: u64) -> Result<Option<u64>, ReadError> {
    let value = match sys_read_file(tree, rel) {
        Ok(v) => v,
        Err(e) if skippable(&e, true) => return Ok(None),
        Err(e) => return Err(ReadError::new(rel, e, true)),
    };
    match parse_go_uint(&value) {
        Some(v) => Ok(Some(v.wrapping_mul(mult))),
        None if value.contains("N/A (no PMA)") => Ok(None),
        None => Err(ReadError::invalid(
            rel,
            format!("{value:?} is not a counter"),
        )),
    }
}

/// Reads the regular files of `dir` that `table` names into `out` (offset `base`);
/// other files are read too, as procfs does, so that their read errors count.
fn counters(
    tree: &impl Tree,
    dir: &str,
    table: &[(&str, &str, &str, u64)],
    out: &mut [Option<u64>],
    required: bool,
) -> Result<(), ReadError> {
    let files = match tree.list(dir) {
        Ok(f) => f,
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ReadError::new(dir, e, true)),
    };
    for (name, kind) in files {
        if kind != Kind::File {
            continue;
        }
        let rel = format!("{dir}/{name}");
        match table.iter().position(|(f, ..)| *f == name) {
            Some(i) => out[i] = counter(tree, &rel, table[i].3)?,
            None => match sys_read_file(tree, &rel) {
                Err(e) if !skippable(&e, true) => return Err(ReadError::new(&rel, e, true)),
                _ => {}
            },
        }
    }
    Ok(())
}

fn parse_port(tree: &impl Tree, dev: &str, port: &str) -> Result<Port, ReadError> {
    let base = format!("{dev}/ports/{port}");
    let number = parse_go_u64(port)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ReadError::invalid(&base, format!("port {port:?} is not a number")))?;
    let read = |f: &str| {
        let rel = format!("{base}/{f}");
        tree.read(&rel)
            .map_err(|e| ReadError::new(&rel, e, true))
            .map(|t| (rel, t))
    };
    let (rel, text) = read("state")?;
    let state_id = parse_state(&text)
        .ok_or_else(|| ReadError::invalid(&rel, format!("bad state {text:?}")))?;
    let (rel, text) = read("phys_state")?;
    let phys_state_id = parse_state(&text)
        .ok_or_else(|| ReadError::invalid(&rel, format!("bad phys_state {text:?}")))?;
    let (rel, text) = read("rate")?;
    let rate =
        parse_rate(&text).ok_or_else(|| ReadError::invalid(&rel, format!("bad rate {text:?}")))?;
    let mut values = vec![None; COUNTERS.len() + COUNTERS_EXT.len()];
    let (main, ext) = values.split_at_mut(COUNTERS.len());
    counters(tree, &format!("{base}/counters"), &COUNTERS, main, true)?;
    counters(
        tree,
        &format!("{base}/counters_ext"),
        &COUNTERS_EXT,
        ext,
        false,
    )?;
    Ok(Port {
        number,
        state_id,
        phys_state_id,
        rate_bytes_per_second: rate,
        counters: values,
    })
}

fn parse_device(tree: &impl Tree, name: &str) -> Result<Device, ReadError> {
    let attr = |f: &str, optional: bool| {
        let rel = format!("{name}/{f}");
        match sys_read_file(tree, &rel) {
            Ok(v) => Ok(v),
            Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(ReadError::new(&rel, e, true)),
        }
    };
    let board_id = attr("board_id", false)?;
    let firmware_version = attr("fw_ver", false)?;
    let hca_type = attr("hca_type", true)?;
    let ports_dir = format!("{name}/ports");
    let mut ports = Vec::new();
    for (port, _) in tree
        .list(&ports_dir)
        .map_err(|e| ReadError::new(&ports_dir, e, true))?
    {
        ports.push(parse_port(tree, name, &port)?);
    }
    Ok(Device {
        name: name.to_string(),
        board_id,
        firmware_version,
        hca_type,
        ports,
    })
}

/// Every device in `tree` (/sys/class/infiniband).
pub(crate) fn parse(tree: &impl Tree) -> Result<Vec<Device>, ReadError> {
    let names = tree.list("").map_err(|e| ReadError::new("", e, true))?;
    names.iter().map(|(n, _)| parse_device(tree, n)).collect()
}

pub(crate) fn render(devices: &[Device]) -> Vec<Family> {
    let mut info = Family::gauge(
        "node_infiniband_info",
        "Non-numeric data from /sys/class/infiniband/<device>, value is always 1.",
    );
    let mut state = Family::gauge(
        "node_infiniband_state_id",
        "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)",
    );
    let mut phys = Family::gauge(
        "node_infiniband_physical_state_id",
        "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, 4: shift, 5: link up, 6: link error recover, 7: phytest)",
    );
    let mut rate = Family::gauge(
        "node_infiniband_rate_bytes_per_second",
        "Maximum signal transfer rate",
    );
    let mut counters: Vec<Family> = COUNTERS
        .iter()
        .chain(COUNTERS_EXT.iter())
        .map(|(_, name, help, _)| Family::counter(format!("node_infiniband_{name}"), *help))
        .collect();
    for d in devices {
        info.push(
            vec![
                ("device", d.name.clone()),
                ("board_id", d.board_id.clone()),
                ("firmware_version", d.firmware_version.clone()),
                ("hca_type", d.hca_type.clone()),
            ],
            1.0,
        );
        for p in &d.ports {
            let labels = || vec![("device", d.name.clone()), ("port", p.number.to_string())];
            state.push(labels(), f64::from(p.state_id));
            phys.push(labels(), f64::from(p.phys_state_id));
            rate.push(labels(), p.rate_bytes_per_second as f64);
            for (f, v) in counters.iter_mut().zip(&p.counters) {
                if let Some(v) = v {
                    f.push(labels(), *v as f64);
                }
            }
        }
    }
    let mut out = vec![info, state, phys, rate];
    out.append(&mut counters);
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let base = ctx.sys("class/infiniband");
    match parse(&DirTree(base.clone())) {
        Ok(devices) => Ok(render(&devices)),
        // node_exporter reports no data for a missing file anywhere (errors.Is(err,
        // fs.ErrNotExist) sees through procfs' wrapping): every ReadError::new here says so.
        Err(e) => {
            Err(e.into_collect_error(&base, "no /sys/class/infiniband (or a device lacks a file)"))
        }
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
        let devices = parse(&DirTree(
            testutil::fixture("storage").join("sys/class/infiniband"),
        ))
        .unwrap();
        assert_eq!(devices.len(), 2);
        let mlx = &devices[1];
        assert_eq!(mlx.name, "mlx4_0");
        assert_eq!(mlx.hca_type, "MT4099");
        assert_eq!(mlx.ports.len(), 2);
        assert_eq!(mlx.ports[0].state_id, 4);
        assert_eq!(mlx.ports[0].rate_bytes_per_second, 5_000_000_000);
        // port_rcv_data is in 4-byte words.
        assert_eq!(mlx.ports[0].counters[7], Some(2_221_223_609 * 4));
        // hfi1 has no hca_type and an "N/A (no PMA)" counter.
        assert_eq!(devices[0].hca_type, "");
        assert_eq!(devices[0].ports[0].counters[0], None);
    }

    #[test]
    fn states_and_rates() {
        assert_eq!(parse_state("4: ACTIVE\n"), Some(4));
        assert_eq!(parse_state("5: LinkUp"), Some(5));
        assert_eq!(parse_state("ACTIVE"), None);
        assert_eq!(parse_state("1: a: b"), None);
        assert_eq!(parse_rate("40 Gb/sec (4X QDR)\n"), Some(5_000_000_000));
        assert_eq!(parse_rate("100 Gb/sec (4X EDR)\n"), Some(12_500_000_000));
        assert_eq!(parse_rate("2.5 Gb/sec (1X SDR)\n"), Some(312_500_000));
        assert_eq!(parse_rate("40\n"), None);
    }

    #[test]
    fn a_missing_file_is_no_data_a_bad_value_an_error() {
        let base = "mlx5_0/board_id=MT_1\nmlx5_0/fw_ver=1.0\nmlx5_0/ports/1/state=4: ACTIVE\nmlx5_0/ports/1/phys_state=5: LinkUp\nmlx5_0/ports/1/counters/symbol_error=0\n";
        let err = parse(&MapTree::from_lines(base)).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound, "no rate file");
        let bad =
            format!("{base}mlx5_0/ports/1/rate=10 Gb/sec\nmlx5_0/ports/1/counters/link_downed=x\n");
        let err = parse(&MapTree::from_lines(&bad)).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::InvalidData);
        let good = format!("{base}mlx5_0/ports/1/rate=10 Gb/sec\n");
        let d = parse(&MapTree::from_lines(&good)).unwrap();
        assert_eq!(d[0].ports[0].rate_bytes_per_second, 1_250_000_000);
        assert_eq!(d[0].ports[0].counters[18], Some(0));
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
        fn parse_never_panics(s in "\\PC*|(d/(board_id|fw_ver|hca_type|ports/[0-9]/(state|phys_state|rate|counters/(port_rcv_data|VL15_dropped|symbol_error)|counters_ext/port_xmit_data_64))=[0-9a-zN/: .]{0,12}\n){1,12}") {
            if let Ok(d) = parse(&MapTree::from_lines(&s)) { let _ = render(&d); }
        }
    }
}
