//! `udp_queues`: bytes queued in UDP sockets' send and receive buffers, summed over
//! /proc/net/udp and /proc/net/udp6 (net/ipv4/udp.c, `udp4_format_sock`: `tx:rx` in
//! hexadecimal in column 5). A file that does not exist (no IPv6) is skipped; both
//! missing is no data, as in node_exporter.

use super::render::Family;
use super::util::read;
use super::{CollectError, Ctx, ParseError};

/// (tx, rx) sums. The first line is the header.
pub(crate) fn parse(text: &str) -> Result<(u64, u64), ParseError> {
    let (mut tx, mut rx) = (0u64, 0u64);
    for (i, l) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() < 10 {
            return Err(ParseError::new(i + 1, "fewer than 10 columns"));
        }
        let (t, r) = cols[4]
            .split_once(':')
            .ok_or_else(|| ParseError::new(i + 1, "tx_queue:rx_queue without ':'"))?;
        let hex = |s: &str| {
            u64::from_str_radix(s, 16)
                .map_err(|_| ParseError::new(i + 1, format!("{s:?} is not hexadecimal")))
        };
        tx = tx.wrapping_add(hex(t)?);
        rx = rx.wrapping_add(hex(r)?);
    }
    Ok((tx, rx))
}

pub(crate) fn render(v4: Option<(u64, u64)>, v6: Option<(u64, u64)>) -> Vec<Family> {
    let mut f = Family::gauge(
        "node_udp_queues",
        "Number of allocated memory in the kernel for UDP datagrams in bytes.",
    );
    for (ip, sums) in [("v4", v4), ("v6", v6)] {
        if let Some((tx, rx)) = sums {
            f.push(vec![("queue", "tx".into()), ("ip", ip.into())], tx as f64);
            f.push(vec![("queue", "rx".into()), ("ip", ip.into())], rx as f64);
        }
    }
    vec![f]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let sums = |rel: &str| -> Result<Option<(u64, u64)>, CollectError> {
        let path = ctx.proc(rel);
        match read(&path) {
            Ok(t) => parse(&t)
                .map(Some)
                .map_err(|source| CollectError::Parse { path, source }),
            Err(CollectError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let (v4, v6) = (sums("net/udp")?, sums("net/udp6")?);
    if v4.is_none() && v6.is_none() {
        return Err(CollectError::NoData {
            reason: "neither /proc/net/udp nor /proc/net/udp6 exists",
        });
    }
    Ok(render(v4, v6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_queues() {
        let t = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                 0: 00000000:0044 00000000:0000 07 00000010:00000200 00:00000000 00000000     0        0 17540 2 0000000000000000 0\n\
                 1: 3500007F:0035 00000000:0000 07 00000001:00000000 00:00000000 00000000   101        0 16113 2 0000000000000000 0\n";
        assert_eq!(parse(t).unwrap(), (0x11, 0x200));
        assert!(parse("h\n0: a b 07 zz:1 0 0 0 0 0\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") { let _ = parse(&s); }
    }
}
