//! `meminfo`: /proc/meminfo (Documentation/filesystems/proc.rst, "meminfo").
//!
//! node_exporter's naming rule, kept exactly so dashboards match: the key loses its
//! trailing `:`, a parenthesised part becomes an underscore suffix (`Active(anon)` ->
//! `Active_anon`), and a line with a unit (always kB) is multiplied by 1024 and gets a
//! `_bytes` suffix, while a line without one (`HugePages_Total`) keeps its name and value.
//! A key ending in lowercase `_total` would be a counter; everything else is a gauge.

use super::render::{Family, MetricType};
use super::util::{parse_f64, read_parse};
use super::{CollectError, Ctx, ParseError};

/// (metric name suffix, value) per line, in file order; a repeated key keeps its last value.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, f64)>, ParseError> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let parts: Vec<&str> = line.split_whitespace().collect();
        // Some kernels (CentOS 6) print empty lines.
        let Some(first) = parts.first() else { continue };
        let Some(raw) = parts.get(1) else {
            return Err(ParseError::new(n, format!("no value for {first:?}")));
        };
        let mut value = parse_f64(raw, n, first)?;
        // Drop the last character (the ':'), whatever it is, as node_exporter does.
        let mut key = match first.char_indices().last() {
            Some((idx, _)) => first[..idx].to_string(),
            None => String::new(),
        };
        key = paren_to_suffix(&key);
        match parts.len() {
            2 => {}
            3 => {
                value *= 1024.0;
                key.push_str("_bytes");
            }
            _ => return Err(ParseError::new(n, format!("unexpected line {line:?}"))),
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => out.push((key, value)),
        }
    }
    Ok(out)
}

/// `Active(anon)` -> `Active_anon`: the regexp `\((.*)\)` replaced by `_$1`, i.e. from the
/// first `(` to the last `)` after it.
fn paren_to_suffix(key: &str) -> String {
    if let Some(open) = key.find('(') {
        if let Some(close) = key.rfind(')').filter(|&c| c > open) {
            return format!(
                "{}_{}{}",
                &key[..open],
                &key[open + 1..close],
                &key[close + 1..]
            );
        }
    }
    key.to_string()
}

pub(crate) fn render(fields: &[(String, f64)]) -> Vec<Family> {
    fields
        .iter()
        .map(|(key, value)| {
            let kind = if key.ends_with("_total") {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            Family::single(
                format!("node_memory_{key}"),
                format!("Memory information field {key}."),
                kind,
                *value,
            )
        })
        .collect()
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(&read_parse(&ctx.proc("meminfo"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn names_like_node_exporter() {
        let f = parse(
            "MemTotal:       24684084 kB\nActive(anon):       1536 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n\nDirectMap4k:       30720 kB\n",
        )
        .unwrap();
        assert_eq!(
            f,
            vec![
                ("MemTotal_bytes".to_string(), 24684084.0 * 1024.0),
                ("Active_anon_bytes".to_string(), 1536.0 * 1024.0),
                ("HugePages_Total".to_string(), 0.0),
                ("Hugepagesize_bytes".to_string(), 2097152.0),
                ("DirectMap4k_bytes".to_string(), 31457280.0),
            ]
        );
        let out = testutil::render(render(&f));
        assert!(
            out.contains(
                "# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.\n\
             # TYPE node_memory_MemTotal_bytes gauge\n\
             node_memory_MemTotal_bytes 2.5276502016e+10\n"
            ),
            "{out}"
        );
        assert!(out.contains("node_memory_HugePages_Total 0\n"));
    }

    #[test]
    fn total_suffix_is_a_counter() {
        let out = testutil::render(render(&[("Foo_total".to_string(), 1.0)]));
        assert!(out.contains("# TYPE node_memory_Foo_total counter\n"));
    }

    #[test]
    fn real_fixture() {
        let f = parse(&testutil::read("real", "proc/meminfo")).unwrap();
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "MemTotal_bytes",
            "MemAvailable_bytes",
            "Active_file_bytes",
            "Inactive_anon_bytes",
            "HugePages_Free",
            "NFS_Unstable_bytes",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
    }

    #[test]
    fn errors() {
        assert!(parse("MemTotal:\n").is_err());
        assert!(parse("MemTotal: x kB\n").is_err());
        assert!(parse("MemTotal: 1 kB extra\n").is_err());
        assert_eq!(paren_to_suffix("a)b(c"), "a)b(c");
        assert_eq!(paren_to_suffix("a(b)c(d)"), "a_b)c(d");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_meminfo_like(s in "([A-Za-z()_é]{0,12}:? {0,3}[0-9.]{0,8}( kB)?\n){0,6}") {
            if let Ok(f) = parse(&s) { let _ = render(&f); }
        }
    }
}
