//! `vmstat`: selected counters from /proc/vmstat, untyped as in node_exporter.

use super::render::{Family, MetricType};
use super::util::{parse_f64, read_parse};
use super::{CollectError, Ctx, ParseError};

/// node_exporter's default `--collector.vmstat.fields`, `^(oom_kill|pgpg|pswp|pg.*fault).*`,
/// written out (the agent has no regexp engine, and this is the only pattern it needs).
pub(crate) fn field_selected(name: &str) -> bool {
    name.starts_with("oom_kill")
        || name.starts_with("pgpg")
        || name.starts_with("pswp")
        || name
            .strip_prefix("pg")
            .is_some_and(|rest| rest.contains("fault"))
}

/// Every `name value` line, in file order. As in node_exporter, a value that is not a
/// number fails the whole file, selected or not.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, f64)>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(value) = it.next() else {
            return Err(ParseError::new(i + 1, format!("no value for {name:?}")));
        };
        out.push((name.to_string(), parse_f64(value, i + 1, name)?));
    }
    Ok(out)
}

pub(crate) fn render(fields: &[(String, f64)]) -> Vec<Family> {
    fields
        .iter()
        .filter(|(name, _)| field_selected(name))
        .map(|(name, value)| {
            Family::single(
                format!("node_vmstat_{name}"),
                format!("/proc/vmstat information field {name}."),
                MetricType::Untyped,
                *value,
            )
        })
        .collect()
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(&read_parse(&ctx.proc("vmstat"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn default_field_pattern() {
        for yes in [
            "oom_kill",
            "pgpgin",
            "pgpgout",
            "pswpin",
            "pswpout",
            "pgfault",
            "pgmajfault",
            "pgmajfault_s",
            "pgsteal_fault",
        ] {
            assert!(field_selected(yes), "{yes}");
        }
        for no in [
            "nr_free_pages",
            "pgfree",
            "thp_fault_alloc",
            "pg",
            "workingset_refault_anon",
        ] {
            assert!(!field_selected(no), "{no}");
        }
    }

    #[test]
    fn real_fixture_selects_node_exporters_fields() {
        let f = parse(&testutil::read("real", "proc/vmstat")).unwrap();
        let out = testutil::render(render(&f));
        let names: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(|l| l.split(' ').nth(2).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "node_vmstat_oom_kill",
                "node_vmstat_pgfault",
                "node_vmstat_pgmajfault",
                "node_vmstat_pgpgin",
                "node_vmstat_pgpgout",
                "node_vmstat_pswpin",
                "node_vmstat_pswpout"
            ]
        );
        assert!(out.contains(
            "# HELP node_vmstat_pgfault /proc/vmstat information field pgfault.\n# TYPE node_vmstat_pgfault untyped\n"
        ));
    }

    #[test]
    fn errors() {
        assert!(parse("pgfault\n").is_err());
        assert!(parse("nr_x y\n").is_err());
        assert!(parse("\n\n").unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }
    }
}
