//! `selinux`: whether SELinux is enabled and, if so, its configured and current modes.
//!
//! node_exporter asks go-selinux, which finds selinuxfs (normally at /sys/fs/selinux)
//! and reads its `enforce` file for the current mode and `/etc/selinux/config`'s
//! `SELINUX=` for the configured one. Modes: enforcing 1, permissive 0, disabled -1.

use super::render::Family;
use super::util::read_attr;
use super::{CollectError, Ctx};

/// The `SELINUX=` value of /etc/selinux/config as a mode number (go-selinux
/// `DefaultEnforceMode`: anything but enforcing or permissive is disabled).
pub(crate) fn parse_config_mode(text: &str) -> i32 {
    let value = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("SELINUX="))
        .unwrap_or("")
        .trim();
    match value {
        "enforcing" => 1,
        "permissive" => 0,
        _ => -1,
    }
}

pub(crate) fn render(modes: Option<(i32, i32)>) -> Vec<Family> {
    let enabled = |v: f64| {
        Family::gauge(
            "node_selinux_enabled",
            "SELinux is enabled, 1 is true, 0 is false",
        )
        .with(Vec::new(), v)
    };
    match modes {
        None => vec![enabled(0.0)],
        Some((config, current)) => vec![
            enabled(1.0),
            Family::gauge(
                "node_selinux_config_mode",
                "Configured SELinux enforcement mode",
            )
            .with(Vec::new(), f64::from(config)),
            Family::gauge(
                "node_selinux_current_mode",
                "Current SELinux enforcement mode",
            )
            .with(Vec::new(), f64::from(current)),
        ],
    }
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    // selinuxfs mounted means enabled; its `enforce` file holds the current mode.
    let modes = read_attr(&ctx.sys("fs/selinux/enforce")).map(|current| {
        let config =
            std::fs::read_to_string(super::util::join_rooted(&ctx.rootfs, "etc/selinux/config"))
                .map(|t| parse_config_mode(&t))
                .unwrap_or(-1);
        (config, if current == "1" { 1 } else { 0 })
    });
    Ok(render(modes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn modes() {
        assert_eq!(
            parse_config_mode("# c\nSELINUX=enforcing\nSELINUXTYPE=targeted\n"),
            1
        );
        assert_eq!(parse_config_mode("SELINUX=permissive\n"), 0);
        assert_eq!(parse_config_mode("SELINUX=disabled\n"), -1);
        assert_eq!(parse_config_mode(""), -1);
        let out = testutil::render(render(Some((1, 0))));
        assert!(out.contains("\nnode_selinux_config_mode 1\n"), "{out}");
        assert!(out.contains("\nnode_selinux_current_mode 0\n"), "{out}");
        assert!(out.contains("\nnode_selinux_enabled 1\n"), "{out}");
        assert_eq!(
            testutil::render(render(None)),
            "# HELP node_selinux_enabled SELinux is enabled, 1 is true, 0 is false\n# TYPE node_selinux_enabled gauge\nnode_selinux_enabled 0\n"
        );
    }
}
