//! `ipvs`: IP Virtual Server totals from /proc/net/ip_vs_stats and per-backend
//! connections and weights from /proc/net/ip_vs (net/netfilter/ipvs/ip_vs_ctl.c) — what
//! kube-proxy in IPVS mode programs on an EKS node. Backends sharing all label values
//! are summed, as node_exporter does. No IPVS module loaded: no data.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::render::Family;
use super::util::{read, read_source};
use super::{CollectError, Ctx, ParseError};

/// connections, incoming packets, outgoing packets, incoming bytes, outgoing bytes.
pub(crate) fn parse_stats(text: &str) -> Result<[u64; 5], ParseError> {
    let lines: Vec<&str> = text.splitn(4, '\n').collect();
    if lines.len() != 4 {
        return Err(ParseError::new(0, "ip_vs_stats too short"));
    }
    let fields: Vec<&str> = lines[2].split_whitespace().collect();
    if fields.len() != 5 {
        return Err(ParseError::new(
            3,
            "ip_vs_stats: unexpected number of fields",
        ));
    }
    let mut out = [0u64; 5];
    for (slot, f) in out.iter_mut().zip(&fields) {
        *slot = u64::from_str_radix(f, 16)
            .map_err(|_| ParseError::new(3, format!("{f:?} is not hexadecimal")))?;
    }
    Ok(out)
}

/// Labels of one backend, in node_exporter's order: local_address, local_port,
/// remote_address, remote_port, proto, local_mark.
type Key = [String; 6];

/// `0A000001:0050` (IPv4) or `[fd00:0000:...:0001]:0050` (IPv6) as Go's net.IP prints it.
fn ip_port(s: &str, n: usize) -> Result<(String, u16), ParseError> {
    let bad = || ParseError::new(n, format!("unexpected IP:Port {s:?}"));
    let ip = match s.len() {
        13 => {
            let v = u32::from_str_radix(s.get(0..8).ok_or_else(bad)?, 16).map_err(|_| bad())?;
            Ipv4Addr::from(v).to_string()
        }
        46 => {
            let v6: Ipv6Addr = s.get(1..40).ok_or_else(bad)?.parse().map_err(|_| bad())?;
            // Go prints IPv4-mapped addresses in dotted form.
            v6.to_ipv4_mapped()
                .map(|v4| v4.to_string())
                .unwrap_or_else(|| v6.to_string())
        }
        _ => return Err(bad()),
    };
    let port = u16::from_str_radix(s.get(s.len() - 4..).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    Ok((ip, port))
}

/// Per label set: (active, inactive, weight), summed.
pub(crate) fn parse_backends(text: &str) -> Result<BTreeMap<Key, [u64; 3]>, ParseError> {
    let mut out: BTreeMap<Key, [u64; 3]> = BTreeMap::new();
    let (mut proto, mut mark, mut local, mut local_port) =
        (String::new(), String::new(), String::new(), 0u16);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f[0] == "IP" || f[0] == "Prot" || f.get(1) == Some(&"RemoteAddress:Port") {
            continue;
        }
        match f[0] {
            "TCP" | "UDP" if f.len() >= 2 => {
                proto = f[0].to_string();
                mark.clear();
                (local, local_port) = ip_port(f[1], n)?;
            }
            "FWM" if f.len() >= 2 => {
                proto = f[0].to_string();
                mark = f[1].to_string();
                local.clear();
                local_port = 0;
            }
            "->" if f.len() >= 6 => {
                let (remote, remote_port) = ip_port(f[1], n)?;
                let num = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| ParseError::new(n, format!("{s:?} is not a count")))
                };
                let (weight, active, inactive) = (num(f[3])?, num(f[4])?, num(f[5])?);
                let key = [
                    local.clone(),
                    local_port.to_string(),
                    remote,
                    remote_port.to_string(),
                    proto.clone(),
                    mark.clone(),
                ];
                let e = out.entry(key).or_default();
                e[0] += active;
                e[1] += inactive;
                e[2] += weight;
            }
            _ => {}
        }
    }
    Ok(out)
}

const LABELS: [&str; 6] = [
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
    "local_mark",
];

pub(crate) fn render(stats: &[u64; 5], backends: &BTreeMap<Key, [u64; 3]>) -> Vec<Family> {
    let totals = [
        ("connections_total", "The total number of connections made."),
        (
            "incoming_packets_total",
            "The total number of incoming packets.",
        ),
        (
            "outgoing_packets_total",
            "The total number of outgoing packets.",
        ),
        ("incoming_bytes_total", "The total amount of incoming data."),
        ("outgoing_bytes_total", "The total amount of outgoing data."),
    ];
    let mut out: Vec<Family> = totals
        .iter()
        .zip(stats)
        .map(|((name, help), v)| {
            Family::counter(format!("node_ipvs_{name}"), *help).with(Vec::new(), *v as f64)
        })
        .collect();
    let mut active = Family::gauge(
        "node_ipvs_backend_connections_active",
        "The current active connections by local and remote address.",
    );
    let mut inactive = Family::gauge(
        "node_ipvs_backend_connections_inactive",
        "The current inactive connections by local and remote address.",
    );
    let mut weight = Family::gauge(
        "node_ipvs_backend_weight",
        "The current backend weight by local and remote address.",
    );
    for (key, v) in backends {
        let labels = || {
            LABELS
                .iter()
                .zip(key)
                .map(|(l, v)| (*l, v.clone()))
                .collect::<Vec<_>>()
        };
        active.push(labels(), v[0] as f64);
        inactive.push(labels(), v[1] as f64);
        weight.push(labels(), v[2] as f64);
    }
    out.extend([active, inactive, weight]);
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let stats_path = ctx.proc("net/ip_vs_stats");
    let text = read_source(&stats_path, "no /proc/net/ip_vs_stats (IPVS not loaded)")?;
    let stats = parse_stats(&text).map_err(|source| CollectError::Parse {
        path: stats_path,
        source,
    })?;
    let path = ctx.proc("net/ip_vs");
    let backends =
        parse_backends(&read(&path)?).map_err(|source| CollectError::Parse { path, source })?;
    Ok(render(&stats, &backends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn addresses_like_go() {
        assert_eq!(
            ip_port("0A640001:01BB", 1).unwrap(),
            ("10.100.0.1".to_string(), 443)
        );
        assert_eq!(
            ip_port("[fd00:0000:0000:0000:0000:0000:0000:0001]:0050", 1).unwrap(),
            ("fd00::1".to_string(), 80)
        );
        assert!(ip_port("0A640001", 1).is_err());
        assert!(parse_stats("a\nb\n").is_err());
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_stats(&s);
            let _ = parse_backends(&s);
        }
    }
}
