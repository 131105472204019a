//! `arp`: ARP table entries per device from /proc/net/arp (net/ipv4/arp.c,
//! `arp_seq_show`: the device is the last column).

use std::collections::BTreeMap;

use super::render::Family;
use super::util::read_parse;
use super::{CollectError, Ctx, ParseError};

pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, u32>, ParseError> {
    let mut out = BTreeMap::new();
    for (i, l) in text.lines().enumerate() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() < 6 {
            return Err(ParseError::new(i + 1, "unexpected ARP table format"));
        }
        if cols[0] != "IP" {
            *out.entry(cols[cols.len() - 1].to_string()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

pub(crate) fn render(entries: &BTreeMap<String, u32>) -> Vec<Family> {
    let mut f = Family::gauge("node_arp_entries", "ARP entries by device");
    for (dev, n) in entries {
        f.push(super::label("device", dev.clone()), f64::from(*n));
    }
    vec![f]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(&read_parse(&ctx.proc("net/arp"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_per_device() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0\n\
                 192.0.2.2        0x1         0x2         02:fc:00:00:00:06     *        eth0\n\
                 198.51.100.1     0x1         0x2         02:fc:00:00:00:07     *        eth1\n";
        let m = parse(t).unwrap();
        assert_eq!(m["eth0"], 2);
        assert_eq!(m["eth1"], 1);
        assert!(parse("IP address\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") { let _ = parse(&s); }
    }
}
