//! `filefd`: allocated and maximum file handles from /proc/sys/fs/file-nr
//! (Documentation/admin-guide/sysctl/fs.rst: allocated, free, maximum, tab-separated).

use super::render::Family;
use super::util::{parse_f64, read_parse};
use super::{CollectError, Ctx, ParseError};

/// (allocated, maximum).
pub(crate) fn parse(text: &str) -> Result<(f64, f64), ParseError> {
    let parts: Vec<&str> = text.trim().split('\t').collect();
    if parts.len() < 3 {
        return Err(ParseError::new(
            1,
            format!("expected 3 tab-separated numbers in {text:?}"),
        ));
    }
    Ok((
        parse_f64(parts[0], 1, "allocated")?,
        parse_f64(parts[2], 1, "maximum")?,
    ))
}

pub(crate) fn render((allocated, maximum): (f64, f64)) -> Vec<Family> {
    vec![
        Family::gauge(
            "node_filefd_allocated",
            "File descriptor statistics: allocated.",
        )
        .with(Vec::new(), allocated),
        Family::gauge(
            "node_filefd_maximum",
            "File descriptor statistics: maximum.",
        )
        .with(Vec::new(), maximum),
    ]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(read_parse(&ctx.proc("sys/fs/file-nr"), parse)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        assert_eq!(parse("1187\t0\t2466165\n").unwrap(), (1187.0, 2466165.0));
        assert!(parse("1187 0 2466165\n").is_err());
        assert!(parse("a\t0\t1\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") { let _ = parse(&s); }
    }
}
