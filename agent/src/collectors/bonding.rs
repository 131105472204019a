//! `bonding`: configured and active (MII status `up`) slaves of each bonding master,
//! from /sys/class/net/bonding_masters and each master's `bonding/slaves` and
//! `lower_<slave>/bonding_slave/mii_status` (Documentation/networking/bonding.rst). No
//! bonding driver loaded (no `bonding_masters`): no data, as in node_exporter.

use std::path::Path;

use super::render::Family;
use super::util::{read, read_source};
use super::{CollectError, Ctx};

/// (master, configured slaves, active slaves).
pub(crate) type Master = (String, u32, u32);

pub(crate) fn render(masters: &[Master]) -> Vec<Family> {
    let mut slaves = Family::gauge(
        "node_bonding_slaves",
        "Number of configured slaves per bonding interface.",
    );
    let mut active = Family::gauge(
        "node_bonding_active",
        "Number of active slaves per bonding interface.",
    );
    for (m, n, up) in masters {
        slaves.push(super::label("master", m.clone()), f64::from(*n));
        active.push(super::label("master", m.clone()), f64::from(*up));
    }
    vec![slaves, active]
}

/// A slave's MII status; kernels before 4.? named the link `slave_<name>`.
fn mii_status(net: &Path, master: &str, slave: &str) -> Result<String, CollectError> {
    let lower = net
        .join(master)
        .join(format!("lower_{slave}/bonding_slave/mii_status"));
    match read(&lower) {
        Err(CollectError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            read(
                &net.join(master)
                    .join(format!("slave_{slave}/bonding_slave/mii_status")),
            )
        }
        other => other,
    }
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let net = ctx.sys("class/net");
    let masters = read_source(&net.join("bonding_masters"), "bonding driver not loaded")?;
    let mut out = Vec::new();
    for master in masters.split_whitespace() {
        let slaves = read(&net.join(master).join("bonding/slaves"))?;
        let (mut n, mut up) = (0, 0);
        for slave in slaves.split_whitespace() {
            n += 1;
            if mii_status(&net, master, slave)?.trim() == "up" {
                up += 1;
            }
        }
        out.push((master.to_string(), n, up));
    }
    Ok(render(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn fixture_and_absent() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(
            out.contains("node_bonding_active{master=\"bond0\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("node_bonding_slaves{master=\"bond0\"} 2\n"),
            "{out}"
        );
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }
}
