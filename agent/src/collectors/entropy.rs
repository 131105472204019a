//! `entropy`: the kernel's entropy estimate and pool size from
//! /proc/sys/kernel/random/{entropy_avail,poolsize}. A missing file fails the
//! collector, as in node_exporter.

use super::render::Family;
use super::util::read_u64;
use super::{CollectError, Ctx};

pub(crate) fn render(available: u64, pool_size: u64) -> Vec<Family> {
    vec![
        Family::gauge("node_entropy_available_bits", "Bits of available entropy.")
            .with(Vec::new(), available as f64),
        Family::gauge("node_entropy_pool_size_bits", "Bits of entropy pool.")
            .with(Vec::new(), pool_size as f64),
    ]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    Ok(render(
        read_u64(&ctx.proc("sys/kernel/random/entropy_avail"))?,
        read_u64(&ctx.proc("sys/kernel/random/poolsize"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::collectors::testutil;

    #[test]
    fn fixture_and_absent() {
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        assert!(out.contains("\nnode_entropy_pool_size_bits 256\n"), "{out}");
        assert!(collect(&testutil::ctx("no_pressure")).is_err());
    }
}
