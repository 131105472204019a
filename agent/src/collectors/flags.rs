//! node_exporter's command-line switches for collectors, so that a node_exporter
//! command line (a DaemonSet's `args`, a systemd unit's `ExecStart`) works for nodetap:
//! `--collector.<name>`, `--no-collector.<name>`, `--collector.disable-defaults`,
//! `--collector.netstat.fields=RE` and `--collector.textfile.directory=DIR`.
//!
//! Their names depend on the collector table, so they are taken out of the arguments
//! here, before the agent's own flags are parsed, and applied over the configured
//! [`NodeConfig`] afterwards: flags win over the file, as every other flag does.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{NodeConfig, NodeConfigError, COLLECTORS};

/// What `--help` adds about these switches (clap does not know them).
pub const HELP: &str = "node_exporter switches (see README, Host metrics):
      --collector.<name> / --no-collector.<name>   switch one node collector on or off
      --collector.disable-defaults                 start from no node collectors
      --collector.netstat.fields=REGEX             netstat fields to serve
      --collector.textfile.directory=DIR           directory of *.prom files
      --collector.filesystem.mount-points-exclude=REGEX, --collector.filesystem.fs-types-exclude=REGEX
      --collector.netdev.device-exclude=REGEX, --collector.netdev.device-include=REGEX
      --collector.diskstats.device-exclude=REGEX
      --collector.tapestats.ignored-devices=REGEX
      --collector.bcache.priorityStats             read bcache priority_stats (expensive)";

/// The collector switches found on a command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFlags {
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    pub disable_defaults: bool,
    pub netstat_fields: Option<String>,
    pub textfile_directory: Option<PathBuf>,
    /// Filter flags by their name without `--` (see [`FILTER_OPTIONS`]).
    pub filters: Vec<(&'static str, String)>,
    /// `--collector.bcache.priorityStats` (`Some(true)`) or its `--no-` form.
    pub bcache_priority_stats: Option<bool>,
    /// node_exporter collectors nodetap does not implement, named in a switch: accepted
    /// so that a node_exporter command line still starts nodetap, and logged.
    pub unimplemented: Vec<String>,
}

/// node_exporter's default Linux collectors that nodetap does not implement (yet).
pub const NOT_IMPLEMENTED: [&str; 1] = ["systemd"];

/// Where a filter flag's value goes in [`NodeConfig`].
type FieldOf = fn(&mut NodeConfig) -> &mut Option<String>;

/// node_exporter's filter flags and the [`NodeConfig`] field each sets.
const FILTER_OPTIONS: [(&str, FieldOf); 6] = [
    ("collector.filesystem.mount-points-exclude", |c| {
        &mut c.filesystem_mount_points_exclude
    }),
    ("collector.filesystem.fs-types-exclude", |c| {
        &mut c.filesystem_fs_types_exclude
    }),
    ("collector.netdev.device-exclude", |c| {
        &mut c.netdev_device_exclude
    }),
    ("collector.netdev.device-include", |c| {
        &mut c.netdev_device_include
    }),
    ("collector.diskstats.device-exclude", |c| {
        &mut c.diskstats_device_exclude
    }),
    ("collector.tapestats.ignored-devices", |c| {
        &mut c.tapestats_ignored_devices
    }),
];

/// Options that take a value, as `--opt=value` or `--opt value`.
const VALUE_OPTIONS: [&str; 2] = ["collector.netstat.fields", "collector.textfile.directory"];

/// Splits `args` (program name first) into the arguments left for the agent's own
/// parser and the collector switches. Anything it does not recognise, including
/// `--collector.enable`/`--collector.disable` and unknown collector names, is left for
/// that parser (which rejects what nobody knows).
pub fn split(args: impl IntoIterator<Item = OsString>) -> (Vec<OsString>, NodeFlags) {
    let mut rest = Vec::new();
    let mut flags = NodeFlags::default();
    let mut it = args.into_iter();
    rest.extend(it.next());
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str().and_then(|a| a.strip_prefix("--")) else {
            rest.push(arg);
            continue;
        };
        if text.is_empty() {
            // `--` ends the options: the rest is not ours.
            rest.push(arg);
            rest.extend(it.by_ref());
            break;
        }
        let (key, inline) = match text.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (text, None),
        };
        let filter = FILTER_OPTIONS
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(n, _)| *n);
        if VALUE_OPTIONS.contains(&key) || filter.is_some() {
            let Some(value) = inline.or_else(|| it.next().and_then(|v| v.into_string().ok()))
            else {
                // No value: let the agent's parser report the unknown flag.
                rest.push(arg);
                continue;
            };
            match (key, filter) {
                (_, Some(name)) => flags.filters.push((name, value)),
                ("collector.netstat.fields", _) => flags.netstat_fields = Some(value),
                _ => flags.textfile_directory = Some(PathBuf::from(value)),
            }
            continue;
        }
        if key == "collector.disable-defaults" && inline.is_none() {
            flags.disable_defaults = true;
            continue;
        }
        if inline.is_none() {
            match key {
                "collector.bcache.priorityStats" => {
                    flags.bcache_priority_stats = Some(true);
                    continue;
                }
                "no-collector.bcache.priorityStats" => {
                    flags.bcache_priority_stats = Some(false);
                    continue;
                }
                _ => {}
            }
        }
        let known = |n: &str| COLLECTORS.iter().any(|c| c.name == n);
        match (
            key.strip_prefix("collector."),
            key.strip_prefix("no-collector."),
        ) {
            (Some(name), _) if inline.is_none() && known(name) => {
                flags.enable.push(name.to_string())
            }
            (_, Some(name)) if inline.is_none() && known(name) => {
                flags.disable.push(name.to_string())
            }
            (Some(name), _) | (_, Some(name))
                if inline.is_none() && NOT_IMPLEMENTED.contains(&name) =>
            {
                flags.unimplemented.push(key.to_string())
            }
            _ => rest.push(arg),
        }
    }
    (rest, flags)
}

impl NodeFlags {
    /// Applies the switches over `cfg` (the last word on a collector wins over the
    /// file's lists) and validates the result.
    pub fn apply(&self, cfg: &mut NodeConfig) -> Result<(), NodeConfigError> {
        for name in &self.enable {
            cfg.disable.retain(|n| n != name);
            if !cfg.enable.contains(name) {
                cfg.enable.push(name.clone());
            }
        }
        for name in &self.disable {
            cfg.enable.retain(|n| n != name);
            if !cfg.disable.contains(name) {
                cfg.disable.push(name.clone());
            }
        }
        cfg.disable_defaults |= self.disable_defaults;
        if let Some(b) = self.bcache_priority_stats {
            cfg.bcache_priority_stats = b;
        }
        if let Some(f) = &self.netstat_fields {
            cfg.netstat_fields = f.clone();
        }
        for (name, value) in &self.filters {
            if let Some((_, field)) = FILTER_OPTIONS.iter().find(|(n, _)| n == name) {
                *field(cfg) = Some(value.clone());
            }
        }
        if let Some(d) = &self.textfile_directory {
            // An empty directory, as node_exporter's default, means none.
            cfg.textfile_directory = (!d.as_os_str().is_empty()).then(|| d.clone());
        }
        cfg.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn takes_node_exporters_switches_and_leaves_the_rest() {
        let (rest, flags) = split(args(&[
            "nodetap",
            "--listen",
            "127.0.0.1:1",
            "--collector.netstat",
            "--no-collector.textfile",
            "--collector.netstat.fields=^Tcp_.*$",
            "--collector.textfile.directory",
            "/var/lib/node",
            "--collector.disable-defaults",
            "--collector.enable",
            "cpu",
            "--collector.nosuch",
            "--path.procfs=/host/proc",
            "--no-collector.zfs",
            "--no-collector.systemd",
            "--collector.netdev.device-exclude=^(lo|veth.*)$",
            "--collector.filesystem.mount-points-exclude",
            "^/boot",
            "--collector.bcache.priorityStats",
            "--collector.tapestats.ignored-devices=^st9$",
        ]));
        assert_eq!(
            rest,
            args(&[
                "nodetap",
                "--listen",
                "127.0.0.1:1",
                "--collector.enable",
                "cpu",
                "--collector.nosuch",
                "--path.procfs=/host/proc"
            ])
        );
        assert_eq!(
            flags,
            NodeFlags {
                enable: vec!["netstat".into()],
                disable: vec!["textfile".into(), "zfs".into()],
                disable_defaults: true,
                netstat_fields: Some("^Tcp_.*$".into()),
                textfile_directory: Some("/var/lib/node".into()),
                filters: vec![
                    ("collector.netdev.device-exclude", "^(lo|veth.*)$".into()),
                    ("collector.filesystem.mount-points-exclude", "^/boot".into()),
                    ("collector.tapestats.ignored-devices", "^st9$".into()),
                ],
                bcache_priority_stats: Some(true),
                unimplemented: vec!["no-collector.systemd".into()],
            }
        );
        let mut cfg = NodeConfig::default();
        flags.apply(&mut cfg).unwrap();
        assert_eq!(cfg.netdev_device_exclude.as_deref(), Some("^(lo|veth.*)$"));
        assert_eq!(cfg.tapestats_ignored_devices.as_deref(), Some("^st9$"));
        assert!(cfg.bcache_priority_stats);
        assert_eq!(
            cfg.filesystem_mount_points_exclude.as_deref(),
            Some("^/boot")
        );
    }

    #[test]
    fn double_dash_ends_options() {
        let (rest, flags) = split(args(&["nodetap", "--", "--collector.arp"]));
        assert_eq!(rest, args(&["nodetap", "--", "--collector.arp"]));
        assert_eq!(flags, NodeFlags::default());
    }

    #[test]
    fn flags_win_over_the_file_and_are_validated() {
        let mut cfg = NodeConfig {
            disable: vec!["arp".into()],
            ..NodeConfig::default()
        };
        let (_, flags) = split(args(&["nodetap", "--collector.arp", "--no-collector.cpu"]));
        flags.apply(&mut cfg).unwrap();
        assert!(cfg.is_enabled("arp"));
        assert!(!cfg.is_enabled("cpu"));

        let mut cfg = NodeConfig::default();
        let (_, flags) = split(args(&[
            "nodetap",
            "--collector.disable-defaults",
            "--collector.loadavg",
        ]));
        flags.apply(&mut cfg).unwrap();
        let on: Vec<&str> = COLLECTORS
            .iter()
            .filter(|c| cfg.is_enabled(c.name))
            .map(|c| c.name)
            .collect();
        assert_eq!(on, ["loadavg"]);

        let (_, flags) = split(args(&["nodetap", "--collector.netstat.fields=("]));
        let err = flags.apply(&mut NodeConfig::default()).unwrap_err();
        assert!(
            matches!(err, NodeConfigError::BadNetstatFields { .. }),
            "{err}"
        );
    }
}
