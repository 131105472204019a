//! `loadavg`: the 1, 5 and 15 minute load averages from /proc/loadavg.

use super::render::{Family, MetricType};
use super::util::{parse_f64, read_parse};
use super::{CollectError, Ctx, ParseError};

pub(crate) fn parse(text: &str) -> Result<[f64; 3], ParseError> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() < 3 {
        return Err(ParseError::new(
            1,
            format!("expected 3 load averages in {text:?}"),
        ));
    }
    Ok([
        parse_f64(parts[0], 1, "load1")?,
        parse_f64(parts[1], 1, "load5")?,
        parse_f64(parts[2], 1, "load15")?,
    ])
}

pub(crate) fn render(load: &[f64; 3]) -> Vec<Family> {
    [("1", load[0]), ("5", load[1]), ("15", load[2])]
        .into_iter()
        .map(|(m, v)| {
            Family::single(
                format!("node_load{m}"),
                format!("{m}m load average."),
                MetricType::Gauge,
                v,
            )
        })
        .collect()
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(&read_parse(&ctx.proc("loadavg"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_and_renders() {
        let l = parse("0.21 0.26 0.16 1/90 7250\n").unwrap();
        assert_eq!(l, [0.21, 0.26, 0.16]);
        let out = testutil::render(render(&l));
        assert_eq!(
            out,
            "# HELP node_load1 1m load average.\n# TYPE node_load1 gauge\nnode_load1 0.21\n\
             # HELP node_load15 15m load average.\n# TYPE node_load15 gauge\nnode_load15 0.16\n\
             # HELP node_load5 5m load average.\n# TYPE node_load5 gauge\nnode_load5 0.26\n"
        );
        parse(&testutil::read("real", "proc/loadavg")).unwrap();
        assert!(parse("0.1 0.2").is_err());
        assert!(parse("a b c").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }
    }
}
