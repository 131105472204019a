//! `entropy`: the kernel's entropy estimate and pool size from
//! /proc/sys/kernel/random/{entropy_avail,poolsize}. A missing file fails the
//! collector, as in node_exporter.

use super::render::Family;
use super::util::read;
use super::{CollectError, Ctx, ParseError};

/// One unsigned integer, as procfs' ReadUintFromFile reads it.
pub(crate) fn parse_uint(text: &str) -> Result<u64, ParseError> {
    super::util::parse_u64(text.trim(), 1, "value")
}

pub(crate) fn render(available: u64, pool_size: u64) -> Vec<Family> {
    vec![
        Family::gauge("node_entropy_available_bits", "Bits of available entropy.")
            .with(Vec::new(), available as f64),
        Family::gauge("node_entropy_pool_size_bits", "Bits of entropy pool.")
            .with(Vec::new(), pool_size as f64),
    ]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let get = |rel: &str| {
        let path = ctx.proc(rel);
        parse_uint(&read(&path)?).map_err(|source| CollectError::Parse { path, source })
    };
    Ok(render(
        get("sys/kernel/random/entropy_avail")?,
        get("sys/kernel/random/poolsize")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_uint("256\n").unwrap(), 256);
        assert!(parse_uint("-1\n").is_err());
        assert!(parse_uint("").is_err());
    }
}
