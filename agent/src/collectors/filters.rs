//! node_exporter's device and mount filter flags. Without a flag, each collector's
//! built-in test of node_exporter's default pattern decides (fast, and tested against
//! the pattern); with one, the given regular expression does, as in node_exporter.

use regex::Regex;

use super::{diskstats, filesystem, netdev, NodeConfig, NodeConfigError};

/// The compiled filter flags; `None` is node_exporter's default.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filters {
    pub mount_points_exclude: Option<Regex>,
    pub fs_types_exclude: Option<Regex>,
    pub netdev_device_exclude: Option<Regex>,
    pub netdev_device_include: Option<Regex>,
    pub diskstats_device_exclude: Option<Regex>,
    pub tapestats_ignored_devices: Option<Regex>,
}

fn compile(flag: &'static str, pattern: &Option<String>) -> Result<Option<Regex>, NodeConfigError> {
    pattern
        .as_deref()
        .map(|p| Regex::new(p).map_err(|source| NodeConfigError::BadPattern { flag, source }))
        .transpose()
}

impl Filters {
    pub(crate) fn from_config(cfg: &NodeConfig) -> Result<Self, NodeConfigError> {
        if cfg.netdev_device_exclude.is_some() && cfg.netdev_device_include.is_some() {
            return Err(NodeConfigError::IncludeAndExclude {
                flag: "collector.netdev.device-include",
            });
        }
        Ok(Self {
            mount_points_exclude: compile(
                "collector.filesystem.mount-points-exclude",
                &cfg.filesystem_mount_points_exclude,
            )?,
            fs_types_exclude: compile(
                "collector.filesystem.fs-types-exclude",
                &cfg.filesystem_fs_types_exclude,
            )?,
            netdev_device_exclude: compile(
                "collector.netdev.device-exclude",
                &cfg.netdev_device_exclude,
            )?,
            netdev_device_include: compile(
                "collector.netdev.device-include",
                &cfg.netdev_device_include,
            )?,
            diskstats_device_exclude: compile(
                "collector.diskstats.device-exclude",
                &cfg.diskstats_device_exclude,
            )?,
            tapestats_ignored_devices: compile(
                "collector.tapestats.ignored-devices",
                &cfg.tapestats_ignored_devices,
            )?,
        })
    }

    pub(crate) fn mount_point_excluded(&self, mount_point: &str) -> bool {
        match &self.mount_points_exclude {
            Some(re) => re.is_match(mount_point),
            None => filesystem::mount_point_excluded(mount_point),
        }
    }

    pub(crate) fn fs_type_excluded(&self, fs_type: &str) -> bool {
        match &self.fs_types_exclude {
            Some(re) => re.is_match(fs_type),
            None => filesystem::EXCLUDED_FS_TYPES.contains(&fs_type),
        }
    }

    pub(crate) fn netdev_excluded(&self, device: &str) -> bool {
        match (&self.netdev_device_include, &self.netdev_device_exclude) {
            (Some(include), _) => !include.is_match(device),
            (None, Some(exclude)) => exclude.is_match(device),
            (None, None) => netdev::excluded(device),
        }
    }

    /// node_exporter's default, `^$`, matches no device name.
    pub(crate) fn tape_ignored(&self, device: &str) -> bool {
        match &self.tapestats_ignored_devices {
            Some(re) => re.is_match(device),
            None => device.is_empty(),
        }
    }

    pub(crate) fn disk_excluded(&self, device: &str) -> bool {
        match &self.diskstats_device_exclude {
            Some(re) => re.is_match(device),
            None => diskstats::excluded(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let d = Filters::default();
        assert!(d.mount_point_excluded("/run/user/0"));
        assert!(!d.fs_type_excluded("tmpfs") && d.fs_type_excluded("overlay"));
        assert!(d.netdev_excluded("lo") && !d.netdev_excluded("eth0"));
        assert!(d.disk_excluded("sda1") && !d.disk_excluded("sda"));
        assert!(!d.tape_ignored("st0"));

        let cfg = NodeConfig {
            filesystem_mount_points_exclude: Some("^/boot".into()),
            filesystem_fs_types_exclude: Some("^tmpfs$".into()),
            netdev_device_include: Some("^eth".into()),
            diskstats_device_exclude: Some("^loop".into()),
            tapestats_ignored_devices: Some("^st1$".into()),
            ..NodeConfig::default()
        };
        let f = Filters::from_config(&cfg).unwrap();
        assert!(f.tape_ignored("st1") && !f.tape_ignored("st10"));
        assert!(f.mount_point_excluded("/boot/efi") && !f.mount_point_excluded("/run/user/0"));
        assert!(f.fs_type_excluded("tmpfs") && !f.fs_type_excluded("overlay"));
        assert!(
            !f.netdev_excluded("eth0") && f.netdev_excluded("lo") && f.netdev_excluded("veth1")
        );
        assert!(f.disk_excluded("loop0") && !f.disk_excluded("sda1"));

        let both = NodeConfig {
            netdev_device_include: Some("a".into()),
            netdev_device_exclude: Some("b".into()),
            ..NodeConfig::default()
        };
        assert!(Filters::from_config(&both).is_err());
        let bad = NodeConfig {
            diskstats_device_exclude: Some("(".into()),
            ..NodeConfig::default()
        };
        let err = Filters::from_config(&bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("collector.diskstats.device-exclude"),
            "{err}"
        );
    }
}
