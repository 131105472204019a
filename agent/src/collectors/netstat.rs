//! `netstat`: the kernel's SNMP and extended counters from /proc/net/netstat,
//! /proc/net/snmp and /proc/net/snmp6, the fields selected by
//! `--collector.netstat.fields`, untyped as in node_exporter.

use std::collections::BTreeMap;

use super::render::{Family, MetricType};
use super::util::{parse_f64, read, read_parse};
use super::{CollectError, Ctx, ParseError};

/// node_exporter 1.5's default `--collector.netstat.fields`.
pub const DEFAULT_FIELDS: &str = "^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$";

/// protocol -> field -> value text.
pub(crate) type Stats = BTreeMap<String, BTreeMap<String, String>>;

/// /proc/net/netstat and /proc/net/snmp: pairs of lines, `Proto: names...` then
/// `Proto: values...` (net/ipv4/proc.c).
pub(crate) fn parse_pairs(text: &str) -> Result<Stats, ParseError> {
    let mut out = Stats::new();
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.is_empty());
    while let Some((i, names)) = lines.next() {
        let Some((_, values)) = lines.next() else {
            return Err(ParseError::new(i + 1, "header line without a value line"));
        };
        let names: Vec<&str> = names.split(' ').collect();
        let values: Vec<&str> = values.split(' ').collect();
        let Some(protocol) = names[0].strip_suffix(':') else {
            return Err(ParseError::new(i + 1, format!("{:?} has no ':'", names[0])));
        };
        if names.len() != values.len() {
            return Err(ParseError::new(
                i + 2,
                format!(
                    "{protocol}: {} names but {} values",
                    names.len(),
                    values.len()
                ),
            ));
        }
        let fields = names[1..]
            .iter()
            .zip(&values[1..])
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        out.insert(protocol.to_string(), fields);
    }
    Ok(out)
}

/// /proc/net/snmp6: `Ip6InReceives  8548` lines; the protocol is the name up to its
/// first `6`, as node_exporter splits it.
pub(crate) fn parse_snmp6(text: &str) -> Stats {
    let mut out = Stats::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        if let Some(six) = name.find('6') {
            out.entry(name[..=six].to_string())
                .or_default()
                .insert(name[six + 1..].to_string(), value.to_string());
        }
    }
    out
}

/// One untyped family per selected `Protocol_Field`. As in node_exporter, a value that
/// is not a number fails the whole scrape, selected or not.
pub(crate) fn render(stats: &Stats, fields: &regex::Regex) -> Result<Vec<Family>, ParseError> {
    let mut out = Vec::new();
    for (protocol, values) in stats {
        for (name, value) in values {
            let key = format!("{protocol}_{name}");
            let v = parse_f64(value, 0, &key)?;
            if fields.is_match(&key) {
                out.push(Family::single(
                    format!("node_netstat_{key}"),
                    format!("Statistic {protocol}{name}."),
                    MetricType::Untyped,
                    v,
                ));
            }
        }
    }
    Ok(out)
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let mut stats = read_parse(&ctx.proc("net/netstat"), parse_pairs)?;
    // snmp's protocols replace netstat's of the same name, as in node_exporter (there
    // are none in common).
    stats.extend(read_parse(&ctx.proc("net/snmp"), parse_pairs)?);
    // Without IPv6 the file does not exist, which is no error.
    let snmp6 = ctx.proc("net/snmp6");
    match read(&snmp6) {
        Ok(text) => stats.extend(parse_snmp6(&text)),
        Err(CollectError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
        }
        Err(e) => return Err(e),
    }
    render(&stats, &ctx.netstat_fields).map_err(|source| CollectError::Parse {
        path: ctx.proc("net"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    fn default_fields() -> regex::Regex {
        regex::Regex::new(DEFAULT_FIELDS).unwrap()
    }

    #[test]
    fn pairs_and_snmp6() {
        let s =
            parse_pairs("Tcp: ActiveOpens CurrEstab\nTcp: 5 -1\nUdp: InErrors\nUdp: 7\n").unwrap();
        assert_eq!(s["Tcp"]["CurrEstab"], "-1");
        assert_eq!(s["Udp"]["InErrors"], "7");
        assert!(parse_pairs("Tcp: A B\nTcp: 1\n").is_err());
        assert!(parse_pairs("Tcp: A B\n").is_err());
        let s6 = parse_snmp6("Ip6InOctets   \t 12\nIcmp6OutType133 3\nnonsense\n");
        assert_eq!(s6["Ip6"]["InOctets"], "12");
        assert_eq!(s6["Icmp6"]["OutType133"], "3");
        assert_eq!(s6.len(), 2);
    }

    #[test]
    fn default_pattern_selects_node_exporters_fields() {
        let f = default_fields();
        for yes in [
            "Tcp_InErrs",
            "UdpLite6_InErrors",
            "Ip_Forwarding",
            "IpExt_InOctets",
            "TcpExt_ListenDrops",
            "Udp6_NoPorts",
            "Tcp_CurrEstab",
        ] {
            assert!(f.is_match(yes), "{yes}");
        }
        for no in [
            "Ip_DefaultTTL",
            "TcpExt_TCPOFOQueue",
            "Tcp_MaxConn",
            "Icmp_OutErrors",
        ] {
            assert!(!f.is_match(no), "{no}");
        }
    }

    #[test]
    fn bad_value_fails_even_when_unselected() {
        let s = parse_pairs("Ip: DefaultTTL\nIp: x\n").unwrap();
        assert!(render(&s, &default_fields()).is_err());
    }

    #[test]
    fn renders_help_and_type() {
        let s = parse_pairs("Tcp: InErrs\nTcp: 3\n").unwrap();
        let out = testutil::render(render(&s, &default_fields()).unwrap());
        assert_eq!(
            out,
            "# HELP node_netstat_Tcp_InErrs Statistic TcpInErrs.\n# TYPE node_netstat_Tcp_InErrs untyped\nnode_netstat_Tcp_InErrs 3\n"
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_pairs(&s);
            let _ = parse_snmp6(&s);
        }
    }
}
