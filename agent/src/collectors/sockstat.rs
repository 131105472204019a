//! `sockstat`: socket counts and memory per protocol from /proc/net/sockstat and
//! /proc/net/sockstat6 (net/ipv4/proc.c, net/ipv6/proc.c). Either file may be absent
//! (no IPv6, or a kernel without procfs networking): its families are then left out.

use super::render::Family;
use super::util::read;
use super::{CollectError, Ctx, ParseError};

/// One line of a sockstat file: `TCP: inuse 6 orphan 0 tw 60 alloc 6 mem 90`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub protocol: String,
    pub values: Vec<(String, i64)>,
}

pub(crate) fn parse(text: &str) -> Result<Vec<Line>, ParseError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let fields: Vec<&str> = l.split(' ').collect();
        if fields.len() < 3 || fields.len().is_multiple_of(2) {
            return Err(ParseError::new(
                i + 1,
                format!("malformed sockstat line {l:?}"),
            ));
        }
        let mut values = Vec::new();
        for kv in fields[1..].chunks(2) {
            let v = kv[1]
                .parse::<i64>()
                .map_err(|_| ParseError::new(i + 1, format!("{:?} is not an integer", kv[1])))?;
            values.push((kv[0].to_string(), v));
        }
        out.push(Line {
            protocol: fields[0].trim_end_matches(':').to_string(),
            values,
        });
    }
    Ok(out)
}

/// node_exporter's families: `sockets_used` (IPv4 file only), then per protocol the
/// states it knows, plus `mem_bytes` (`mem` is in pages).
pub(crate) fn render(lines: &[Line], ipv6: bool, page_size: i64) -> Vec<Family> {
    let mut out = Vec::new();
    for line in lines {
        let get = |k: &str| line.values.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        if line.protocol == "sockets" {
            if !ipv6 {
                out.push(
                    Family::gauge(
                        "node_sockstat_sockets_used",
                        "Number of IPv4 sockets in use.",
                    )
                    .with(Vec::new(), get("used").unwrap_or(0) as f64),
                );
            }
            continue;
        }
        let mut pairs: Vec<(&str, Option<i64>)> = vec![
            // procfs treats `inuse` as always present (0 when missing).
            ("inuse", Some(get("inuse").unwrap_or(0))),
            ("orphan", get("orphan")),
            ("tw", get("tw")),
            ("alloc", get("alloc")),
            ("mem", get("mem")),
            ("memory", get("memory")),
        ];
        pairs.push(("mem_bytes", get("mem").map(|m| m * page_size)));
        for (state, v) in pairs {
            if let Some(v) = v {
                let p = &line.protocol;
                out.push(
                    Family::gauge(
                        format!("node_sockstat_{p}_{state}"),
                        format!("Number of {p} sockets in state {state}."),
                    )
                    .with(Vec::new(), v as f64),
                );
            }
        }
    }
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    // SAFETY: sysconf has no memory effects.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as i64;
    let mut out = Vec::new();
    for (rel, ipv6) in [("net/sockstat", false), ("net/sockstat6", true)] {
        let path = ctx.proc(rel);
        let text = match read(&path) {
            Ok(t) => t,
            Err(CollectError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let lines = parse(&text).map_err(|source| CollectError::Parse { path, source })?;
        out.extend(render(&lines, ipv6, page_size));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_and_renders() {
        let l = parse("sockets: used 35\nTCP: inuse 6 orphan 0 tw 60 alloc 6 mem 90\nFRAG: inuse 0 memory 0\n").unwrap();
        let out = testutil::render(render(&l, false, 4096));
        assert!(
            out.contains("node_sockstat_TCP_mem_bytes 368640\n"),
            "{out}"
        );
        assert!(out.contains("# HELP node_sockstat_FRAG_memory Number of FRAG sockets in state memory.\n# TYPE node_sockstat_FRAG_memory gauge\nnode_sockstat_FRAG_memory 0\n"), "{out}");
        assert!(out.contains("node_sockstat_sockets_used 35\n"));
        assert!(!out.contains("FRAG_mem_bytes"));
        assert!(parse("TCP: inuse\n").is_err());
        assert!(parse("TCP: inuse x\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            if let Ok(l) = parse(&s) { let _ = render(&l, false, 4096); }
        }
    }
}
