//! node_exporter-compatible host metrics.
//!
//! Existing Prometheus rules and Grafana dashboards written for node_exporter must work
//! unchanged against nodetap, so every family here has node_exporter's name, type, label
//! names, unit and HELP text. The reference is node_exporter 1.5.0 as Debian bookworm
//! ships it (`prometheus-node-exporter`), with its default flags: the default collector
//! set and the default exclusion regexes printed by `prometheus-node-exporter --help`.
//!
//! Each collector is a module with a pure `parse` over the text of the files it reads and
//! a small render step; [`COLLECTORS`] is the one place that registers them. Files are
//! read at scrape time, under the configured procfs, sysfs and rootfs paths (in a
//! container these are the host's, mounted e.g. at /host/proc). A collector that cannot
//! read or parse its files reports `node_scrape_collector_success{collector="..."} 0`,
//! logs once, and leaves the rest of the scrape alone.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Deserialize;

mod arp;
mod bcache;
mod bonding;
mod btrfs;
mod conntrack;
mod cpu;
mod cpufreq;
mod diskstats;
mod dmi;
mod edac;
mod entropy;
mod exporter;
mod fibrechannel;
mod filefd;
mod filesystem;
mod filters;
pub mod flags;
mod hwmon;
mod infiniband;
mod ipvs;
mod loadavg;
mod mdadm;
mod meminfo;
mod netclass;
mod netdev;
mod netstat;
mod nfs;
mod nfsd;
mod nvme;
mod os;
mod powersupplyclass;
mod pressure;
mod rapl;
pub(crate) mod render;
mod schedstat;
mod selinux;
mod sockstat;
mod softnet;
mod stat;
mod tapestats;
mod textfile;
mod thermal_zone;
mod time;
mod timex;
mod udp_queues;
mod uname;
mod util;
mod vmstat;
mod xfs;
mod zfs;

use render::Family;

/// Configuration of the node collectors (`[node]` in the agent's config).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where procfs is mounted. Default `/proc`; `/host/proc` in a container that mounts
    /// the host's.
    pub procfs: PathBuf,
    /// Where sysfs is mounted. Default `/sys`.
    pub sysfs: PathBuf,
    /// The host's root filesystem: mount points are stat'ed under it and udev data is
    /// read from `<rootfs>/run/udev/data`. Default `/`.
    pub rootfs: PathBuf,
    /// Collectors to switch on that are off by default (see [`COLLECTORS`]).
    pub enable: Vec<String>,
    /// Collectors to switch off that are on by default (see [`COLLECTORS`]).
    pub disable: Vec<String>,
    /// Start from no collectors instead of the default set; `enable` adds to it
    /// (node_exporter's `--collector.disable-defaults`). Default false.
    pub disable_defaults: bool,
    /// Regular expression of the `Protocol_Field` names the netstat collector serves
    /// (`--collector.netstat.fields`). Default: node_exporter 1.5's.
    pub netstat_fields: String,
    /// Directory of `*.prom` files for the textfile collector
    /// (`--collector.textfile.directory`). Default: none, as in node_exporter.
    pub textfile_directory: Option<PathBuf>,
    /// node_exporter's filter flags (`--collector.filesystem.mount-points-exclude`,
    /// `--collector.filesystem.fs-types-exclude`, `--collector.netdev.device-exclude`,
    /// `--collector.netdev.device-include`, `--collector.diskstats.device-exclude`):
    /// regular expressions replacing node_exporter's defaults. Default: none (the
    /// defaults of node_exporter 1.5).
    pub filesystem_mount_points_exclude: Option<String>,
    pub filesystem_fs_types_exclude: Option<String>,
    pub netdev_device_exclude: Option<String>,
    pub netdev_device_include: Option<String>,
    pub diskstats_device_exclude: Option<String>,
    /// Tape drives the tapestats collector leaves out
    /// (`--collector.tapestats.ignored-devices`), a regular expression. Default: none
    /// (node_exporter's `^$`).
    pub tapestats_ignored_devices: Option<String>,
    /// Whether the bcache collector also reads each cache device's `priority_stats`,
    /// which the kernel computes by walking every bucket
    /// (`--collector.bcache.priorityStats`). Default false, as in node_exporter.
    pub bcache_priority_stats: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
            rootfs: PathBuf::from("/"),
            enable: Vec::new(),
            disable: Vec::new(),
            disable_defaults: false,
            netstat_fields: netstat::DEFAULT_FIELDS.to_string(),
            textfile_directory: None,
            filesystem_mount_points_exclude: None,
            filesystem_fs_types_exclude: None,
            netdev_device_exclude: None,
            netdev_device_include: None,
            diskstats_device_exclude: None,
            tapestats_ignored_devices: None,
            bcache_priority_stats: false,
        }
    }
}

/// A [`NodeConfig`] that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NodeConfigError {
    /// `node.enable` or `node.disable` names a collector that does not exist.
    #[error("unknown node collector {name:?} in node.{list} (known collectors: {known})")]
    UnknownCollector {
        name: String,
        /// `enable` or `disable`.
        list: &'static str,
        /// The valid names, comma-separated.
        known: String,
    },
    /// A collector is both enabled and disabled.
    #[error("node collector {name:?} is listed in both node.enable and node.disable")]
    EnabledAndDisabled { name: String },
    /// `netstat_fields` is not a regular expression.
    #[error("node.netstat_fields (--collector.netstat.fields) is not a valid regular expression")]
    BadNetstatFields {
        #[source]
        source: regex::Error,
    },
    /// A filter flag is not a regular expression.
    #[error("--{flag} is not a valid regular expression")]
    BadPattern {
        flag: &'static str,
        #[source]
        source: regex::Error,
    },
    /// An include and an exclude pattern for the same devices (node_exporter refuses
    /// them too).
    #[error("--{flag} and the matching device-exclude are mutually exclusive")]
    IncludeAndExclude { flag: &'static str },
}

impl NodeConfig {
    /// Checks that every collector named in `enable` and `disable` exists and that none
    /// is named in both.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        let known = || {
            COLLECTORS
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (list, names) in [("enable", &self.enable), ("disable", &self.disable)] {
            if let Some(name) = names.iter().find(|n| spec(n).is_none()) {
                return Err(NodeConfigError::UnknownCollector {
                    name: name.clone(),
                    list,
                    known: known(),
                });
            }
        }
        if let Some(name) = self.enable.iter().find(|n| self.disable.contains(n)) {
            return Err(NodeConfigError::EnabledAndDisabled { name: name.clone() });
        }
        regex::Regex::new(&self.netstat_fields)
            .map_err(|source| NodeConfigError::BadNetstatFields { source })?;
        filters::Filters::from_config(self)?;
        Ok(())
    }

    /// Whether the collector `name` runs with this configuration.
    pub fn is_enabled(&self, name: &str) -> bool {
        let Some(spec) = spec(name) else {
            return false;
        };
        if self.disable.iter().any(|n| n == name) {
            return false;
        }
        (spec.default_enabled && !self.disable_defaults) || self.enable.iter().any(|n| n == name)
    }
}

/// One node collector: its name (node_exporter's, used in the
/// `node_scrape_collector_*{collector}` label and in `node.enable`/`node.disable`),
/// whether it runs by default, and what it exposes.
pub struct CollectorSpec {
    pub name: &'static str,
    pub default_enabled: bool,
    /// One line for the documentation.
    pub description: &'static str,
    collect: CollectFn,
}

impl std::fmt::Debug for CollectorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorSpec")
            .field("name", &self.name)
            .field("default_enabled", &self.default_enabled)
            .finish_non_exhaustive()
    }
}

type CollectFn = fn(&Ctx) -> Result<Vec<Family>, CollectError>;

/// Every node collector: the one place they are registered. All are on by default, as
/// they are in node_exporter.
pub const COLLECTORS: &[CollectorSpec] = &[
    CollectorSpec {
        name: "arp",
        default_enabled: true,
        description: "ARP table entries per device (/proc/net/arp)",
        collect: arp::collect,
    },
    CollectorSpec {
        name: "bcache",
        default_enabled: true,
        description: "bcache cache sets: btree, journal, per backing device dirty data, writeback rate and hit/miss/bypass counts, per cache device errors and writes (/sys/fs/bcache)",
        collect: bcache::collect,
    },
    CollectorSpec {
        name: "bonding",
        default_enabled: true,
        description: "configured and active slaves per bonding master (/sys/class/net/bonding_masters)",
        collect: bonding::collect,
    },
    CollectorSpec {
        name: "btrfs",
        default_enabled: true,
        description: "Btrfs filesystems: label, global reserve, allocation per block group type and profile, device sizes (/sys/fs/btrfs)",
        collect: btrfs::collect,
    },
    CollectorSpec {
        name: "conntrack",
        default_enabled: true,
        description: "netfilter connection tracking entries, limit and statistics (/proc/sys/net/netfilter, /proc/net/stat/nf_conntrack)",
        collect: conntrack::collect,
    },
    CollectorSpec {
        name: "cpu",
        default_enabled: true,
        description: "CPU time per CPU and mode, guest time, thermal throttles, isolated CPUs (/proc/stat, /sys/devices/system/cpu)",
        collect: cpu::collect,
    },
    CollectorSpec {
        name: "cpufreq",
        default_enabled: true,
        description: "CPU frequencies and scaling limits (/sys/devices/system/cpu/cpu*/cpufreq)",
        collect: cpufreq::collect,
    },
    CollectorSpec {
        name: "diskstats",
        default_enabled: true,
        description: "block device I/O statistics and udev device info (/proc/diskstats, /run/udev/data)",
        collect: diskstats::collect,
    },
    CollectorSpec {
        name: "dmi",
        default_enabled: true,
        description: "firmware's machine description: vendor, product (instance type), BIOS (/sys/class/dmi/id)",
        collect: dmi::collect,
    },
    CollectorSpec {
        name: "edac",
        default_enabled: true,
        description: "memory controllers' correctable and uncorrectable error counts (/sys/devices/system/edac/mc)",
        collect: edac::collect,
    },
    CollectorSpec {
        name: "entropy",
        default_enabled: true,
        description: "available entropy and pool size (/proc/sys/kernel/random)",
        collect: entropy::collect,
    },
    CollectorSpec {
        name: "fibrechannel",
        default_enabled: true,
        description: "Fibre Channel host adapters: attributes and frame, word and error counters (/sys/class/fc_host)",
        collect: fibrechannel::collect,
    },
    CollectorSpec {
        name: "filefd",
        default_enabled: true,
        description: "allocated and maximum file handles (/proc/sys/fs/file-nr)",
        collect: filefd::collect,
    },
    CollectorSpec {
        name: "filesystem",
        default_enabled: true,
        description: "filesystem size, free space and inodes per mount point (/proc/1/mountinfo, statvfs)",
        collect: filesystem::collect,
    },
    CollectorSpec {
        name: "hwmon",
        default_enabled: true,
        description: "hardware sensors: temperatures, voltages, fans, power (/sys/class/hwmon)",
        collect: hwmon::collect,
    },
    CollectorSpec {
        name: "infiniband",
        default_enabled: true,
        description: "InfiniBand/RoCE ports: state, rate, data, packet and error counters (/sys/class/infiniband)",
        collect: infiniband::collect,
    },
    CollectorSpec {
        name: "ipvs",
        default_enabled: true,
        description: "IPVS totals and per-backend connections and weights, as kube-proxy's IPVS mode programs them (/proc/net/ip_vs, ip_vs_stats)",
        collect: ipvs::collect,
    },
    CollectorSpec {
        name: "loadavg",
        default_enabled: true,
        description: "load averages (/proc/loadavg)",
        collect: loadavg::collect,
    },
    CollectorSpec {
        name: "mdadm",
        default_enabled: true,
        description: "software RAID arrays: disks, state, sync progress (/proc/mdstat)",
        collect: mdadm::collect,
    },
    CollectorSpec {
        name: "meminfo",
        default_enabled: true,
        description: "memory statistics (/proc/meminfo)",
        collect: meminfo::collect,
    },
    CollectorSpec {
        name: "netclass",
        default_enabled: true,
        description: "network interface properties (/sys/class/net)",
        collect: netclass::collect,
    },
    CollectorSpec {
        name: "netdev",
        default_enabled: true,
        description: "network interface statistics, except lo (/proc/net/dev)",
        collect: netdev::collect,
    },
    CollectorSpec {
        name: "netstat",
        default_enabled: true,
        description: "IP, ICMP, TCP and UDP SNMP counters selected by --collector.netstat.fields (/proc/net/netstat, snmp, snmp6)",
        collect: netstat::collect,
    },
    CollectorSpec {
        name: "nfs",
        default_enabled: true,
        description: "NFS client RPC and per-procedure counts (/proc/net/rpc/nfs)",
        collect: nfs::collect,
    },
    CollectorSpec {
        name: "nfsd",
        default_enabled: true,
        description: "NFS server reply cache, I/O, threads, network, RPC and per-operation counts (/proc/net/rpc/nfsd)",
        collect: nfsd::collect,
    },
    CollectorSpec {
        name: "nvme",
        default_enabled: true,
        description: "NVMe controllers: model, serial, firmware, state (/sys/class/nvme)",
        collect: nvme::collect,
    },
    CollectorSpec {
        name: "os",
        default_enabled: true,
        description: "distribution name and version (<rootfs>/etc/os-release)",
        collect: os::collect,
    },
    CollectorSpec {
        name: "powersupplyclass",
        default_enabled: true,
        description: "batteries, mains and UPS power supplies (/sys/class/power_supply)",
        collect: powersupplyclass::collect,
    },
    CollectorSpec {
        name: "pressure",
        default_enabled: true,
        description: "pressure stall information (/proc/pressure)",
        collect: pressure::collect,
    },
    CollectorSpec {
        name: "rapl",
        default_enabled: true,
        description: "RAPL energy counters per power zone (/sys/class/powercap)",
        collect: rapl::collect,
    },
    CollectorSpec {
        name: "schedstat",
        default_enabled: true,
        description: "per-CPU scheduler running and waiting time and timeslices (/proc/schedstat)",
        collect: schedstat::collect,
    },
    CollectorSpec {
        name: "selinux",
        default_enabled: true,
        description: "SELinux enabled, configured and current mode (/sys/fs/selinux)",
        collect: selinux::collect,
    },
    CollectorSpec {
        name: "sockstat",
        default_enabled: true,
        description: "sockets in use and their memory per protocol (/proc/net/sockstat, sockstat6)",
        collect: sockstat::collect,
    },
    CollectorSpec {
        name: "softnet",
        default_enabled: true,
        description: "per-CPU packets processed, dropped and squeezed (/proc/net/softnet_stat)",
        collect: softnet::collect,
    },
    CollectorSpec {
        name: "stat",
        default_enabled: true,
        description: "boot time, context switches, forks, interrupts, running and blocked processes (/proc/stat)",
        collect: stat::collect,
    },
    CollectorSpec {
        name: "tapestats",
        default_enabled: true,
        description: "SCSI tape drives: I/Os, bytes, times and residuals (/sys/class/scsi_tape), except --collector.tapestats.ignored-devices",
        collect: tapestats::collect,
    },
    CollectorSpec {
        name: "textfile",
        default_enabled: true,
        description: "metrics from *.prom files in --collector.textfile.directory",
        collect: textfile::collect,
    },
    CollectorSpec {
        name: "thermal_zone",
        default_enabled: true,
        description: "thermal zone temperatures and cooling device states (/sys/class/thermal)",
        collect: thermal_zone::collect,
    },
    CollectorSpec {
        name: "time",
        default_enabled: true,
        description: "system time, time zone offset and clock sources (/sys/devices/system/clocksource)",
        collect: time::collect,
    },
    CollectorSpec {
        name: "timex",
        default_enabled: true,
        description: "kernel clock synchronisation state (adjtimex(2))",
        collect: timex::collect,
    },
    CollectorSpec {
        name: "udp_queues",
        default_enabled: true,
        description: "bytes queued in UDP sockets (/proc/net/udp, udp6)",
        collect: udp_queues::collect,
    },
    CollectorSpec {
        name: "uname",
        default_enabled: true,
        description: "uname(2) system information",
        collect: uname::collect,
    },
    CollectorSpec {
        name: "vmstat",
        default_enabled: true,
        description: "paging, swapping and OOM kill counters (/proc/vmstat)",
        collect: vmstat::collect,
    },
    CollectorSpec {
        name: "xfs",
        default_enabled: true,
        description: "XFS per-filesystem extent, B-tree, block map, directory, inode, read/write and vnode counters (/sys/fs/xfs/*/stats/stats)",
        collect: xfs::collect,
    },
    CollectorSpec {
        name: "zfs",
        default_enabled: true,
        description: "OpenZFS ARC, ABD, dmu_tx, zfetch, ZIL and other kstats, per-pool I/O, dataset and state (/proc/spl/kstat/zfs)",
        collect: zfs::collect,
    },
];

fn spec(name: &str) -> Option<&'static CollectorSpec> {
    COLLECTORS.iter().find(|c| c.name == name)
}

/// Why a collector produced nothing on one scrape.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("collector panicked: {message}")]
    Panicked { message: String },
    /// The source does not exist on this machine (no nf_conntrack module, no
    /// os-release): `success 0` like a failure, as node_exporter's `ErrNoData`, but
    /// logged at debug level only, since nothing is wrong.
    #[error("no data: {reason}")]
    NoData { reason: &'static str },
}

/// A file's text did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(crate) struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            reason: reason.into(),
        }
    }
}

/// What collectors get: the paths to read under and the little state some keep between
/// scrapes.
pub(crate) struct Ctx {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub rootfs: PathBuf,
    pub cpu: cpu::State,
    pub filesystem: filesystem::State,
    /// `--collector.netstat.fields`, compiled.
    pub netstat_fields: regex::Regex,
    pub textfile_directory: Option<PathBuf>,
    pub filters: filters::Filters,
    /// `--collector.bcache.priorityStats`.
    pub bcache_priority_stats: bool,
}

impl Ctx {
    pub(crate) fn new(procfs: PathBuf, sysfs: PathBuf, rootfs: PathBuf) -> Self {
        Self {
            procfs,
            sysfs,
            rootfs,
            cpu: cpu::State::default(),
            filesystem: filesystem::State::default(),
            netstat_fields: regex::Regex::new(netstat::DEFAULT_FIELDS)
                .expect("the default netstat pattern compiles"),
            textfile_directory: None,
            filters: filters::Filters::default(),
            bcache_priority_stats: false,
        }
    }

    pub(crate) fn proc(&self, rel: &str) -> PathBuf {
        self.procfs.join(rel)
    }

    pub(crate) fn sys(&self, rel: &str) -> PathBuf {
        self.sysfs.join(rel)
    }
}

struct Enabled {
    spec: &'static CollectorSpec,
    /// Set while the collector is failing, so a failure is logged once, not every scrape.
    failing: AtomicBool,
}

/// The enabled node collectors, ready to be scraped.
pub struct NodeCollectors {
    enabled: Vec<Enabled>,
    ctx: Ctx,
}

impl NodeCollectors {
    /// Builds the collectors `cfg` enables. Reads nothing yet; unknown names in `cfg`
    /// (which [`NodeConfig::validate`] rejects) are ignored.
    pub fn new(cfg: &NodeConfig) -> Self {
        let enabled: Vec<Enabled> = COLLECTORS
            .iter()
            .filter(|c| cfg.is_enabled(c.name))
            .map(|spec| Enabled {
                spec,
                failing: AtomicBool::new(false),
            })
            .collect();
        log::info!(
            "node collectors: {} (procfs {}, sysfs {}, rootfs {})",
            enabled
                .iter()
                .map(|e| e.spec.name)
                .collect::<Vec<_>>()
                .join(", "),
            cfg.procfs.display(),
            cfg.sysfs.display(),
            cfg.rootfs.display()
        );
        let mut ctx = Ctx::new(cfg.procfs.clone(), cfg.sysfs.clone(), cfg.rootfs.clone());
        // validate() has checked the pattern; an invalid one keeps the default.
        if let Ok(re) = regex::Regex::new(&cfg.netstat_fields) {
            ctx.netstat_fields = re;
        }
        ctx.textfile_directory = cfg.textfile_directory.clone();
        ctx.filters = filters::Filters::from_config(cfg).unwrap_or_default();
        ctx.bcache_priority_stats = cfg.bcache_priority_stats;
        Self { enabled, ctx }
    }

    /// Reads the files now and appends every enabled collector's families, plus
    /// `node_scrape_collector_duration_seconds` and `node_scrape_collector_success`, to
    /// `out` in the text exposition format 0.0.4. Never fails: a collector that cannot
    /// read or parse reports success 0.
    pub fn encode(&self, out: &mut String) {
        let mut families = Vec::new();
        let mut duration = Family::gauge(
            "node_scrape_collector_duration_seconds",
            "node_exporter: Duration of a collector scrape.",
        );
        let mut success = Family::gauge(
            "node_scrape_collector_success",
            "node_exporter: Whether a collector succeeded.",
        );
        for c in &self.enabled {
            let start = Instant::now();
            // A panic would be a bug in a parser; it must cost one collector's metrics,
            // not the agent's /metrics endpoint.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| (c.spec.collect)(&self.ctx)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(CollectError::Panicked { message })
                });
            let elapsed = start.elapsed().as_secs_f64();
            let ok = match result {
                Ok(fams) => {
                    families.extend(fams);
                    if c.failing.swap(false, Ordering::Relaxed) {
                        log::info!("node collector {} recovered", c.spec.name);
                    }
                    true
                }
                Err(CollectError::NoData { reason }) => {
                    log::debug!("node collector {} returned no data: {reason}", c.spec.name);
                    false
                }
                Err(err) => {
                    if !c.failing.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "node collector {} failed, reporting node_scrape_collector_success 0 until it recovers: {}",
                            c.spec.name,
                            error_chain(&err)
                        );
                    }
                    false
                }
            };
            let label = vec![("collector", c.spec.name.to_string())];
            duration.push(label.clone(), elapsed);
            success.push(label, if ok { 1.0 } else { 0.0 });
        }
        families.push(duration);
        families.push(success);
        families.extend(exporter::families());
        render::write_families(out, families);
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Shorthand for a single-label sample's labels.
pub(crate) fn label(name: &'static str, value: impl Into<String>) -> Vec<(&'static str, String)> {
    vec![(name, value.into())]
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// `tests/fixtures/node/<case>` in the repository.
    pub(crate) fn fixture(case: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/node")
            .join(case)
    }

    pub(crate) fn read(case: &str, rel: &str) -> String {
        let p = fixture(case).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
    }

    pub(crate) fn ctx(case: &str) -> super::Ctx {
        let root = fixture(case);
        super::Ctx::new(root.join("proc"), root.join("sys"), root.join("rootfs"))
    }

    /// The rendered exposition text of `families`.
    pub(crate) fn render(families: Vec<super::Family>) -> String {
        let mut s = String::new();
        super::render::write_families(&mut s, families);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn config_defaults_and_inline_sample() {
        let cfg: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, NodeConfig::default());
        assert_eq!(cfg.procfs, PathBuf::from("/proc"));
        assert_eq!(cfg.sysfs, PathBuf::from("/sys"));
        assert_eq!(cfg.rootfs, PathBuf::from("/"));

        let cfg: NodeConfig = toml::from_str(
            r#"
            procfs = "/host/proc"
            sysfs = "/host/sys"
            rootfs = "/host"
            disable = ["pressure", "filesystem"]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.procfs, PathBuf::from("/host/proc"));
        assert!(!cfg.is_enabled("pressure"));
        assert!(!cfg.is_enabled("filesystem"));
        assert!(cfg.is_enabled("cpu"));
        assert!(!cfg.is_enabled("nosuch"));

        let err = toml::from_str::<NodeConfig>("proc = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_names_unknown_collectors() {
        let cfg = NodeConfig {
            disable: vec!["cpu".into(), "nosuch".into()],
            ..NodeConfig::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            err,
            NodeConfigError::UnknownCollector {
                name: "nosuch".into(),
                list: "disable",
                known: COLLECTORS
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("unknown node collector \"nosuch\" in node.disable"),
            "{msg}"
        );

        let cfg = NodeConfig {
            enable: vec!["cpu".into()],
            disable: vec!["cpu".into()],
            ..NodeConfig::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err(),
            NodeConfigError::EnabledAndDisabled { name: "cpu".into() }
        );
    }

    #[test]
    fn collectors_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NodeCollectors>();
    }

    #[test]
    fn not_implemented_list_has_no_implemented_collector() {
        for name in flags::NOT_IMPLEMENTED {
            assert!(
                spec(name).is_none(),
                "{name} is implemented: remove it from NOT_IMPLEMENTED"
            );
        }
    }

    #[test]
    fn registry_names_are_unique_and_sorted() {
        let names: Vec<_> = COLLECTORS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn failing_collectors_report_success_zero() {
        // Paths that do not exist: every file-based collector fails, as node_exporter's do
        // over such paths; those that read no files, or for which an absent source is a
        // valid answer (no SELinux, no sockstat files, no textfile directory), succeed.
        let cfg = NodeConfig {
            procfs: "/nonexistent/proc".into(),
            sysfs: "/nonexistent/sys".into(),
            rootfs: "/nonexistent".into(),
            ..NodeConfig::default()
        };
        let nc = NodeCollectors::new(&cfg);
        let mut out = String::new();
        nc.encode(&mut out);
        for c in COLLECTORS {
            let ok = matches!(
                c.name,
                "uname"
                    | "time"
                    | "timex"
                    | "selinux"
                    | "sockstat"
                    | "textfile"
                    | "cpufreq"
                    | "thermal_zone"
                    | "edac"
                    | "btrfs"
                    | "xfs"
                    | "bcache"
            );
            let line = format!(
                "node_scrape_collector_success{{collector=\"{}\"}} {}\n",
                c.name,
                if ok { 1 } else { 0 }
            );
            assert!(out.contains(&line), "missing {line:?} in\n{out}");
        }
        // A second scrape still answers (and does not log again).
        let mut again = String::new();
        nc.encode(&mut again);
        assert!(again.contains("node_scrape_collector_success{collector=\"cpu\"} 0"));
    }

    #[test]
    fn disabled_collectors_do_not_run() {
        let cfg = NodeConfig {
            disable: vec!["pressure".into()],
            ..NodeConfig::default()
        };
        let nc = NodeCollectors::new(&cfg);
        assert!(!nc.enabled.iter().any(|e| e.spec.name == "pressure"));
        assert_eq!(nc.enabled.len(), COLLECTORS.len() - 1);
        let mut out = String::new();
        nc.encode(&mut out);
        assert!(!out.contains("collector=\"pressure\""));
    }

    /// name -> (HELP line, TYPE line, sample lines), from exposition text.
    fn blocks(text: &str) -> BTreeMap<String, (String, String, Vec<String>)> {
        let mut out: BTreeMap<String, (String, String, Vec<String>)> = BTreeMap::new();
        let mut cur = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                cur = rest.split(' ').next().unwrap().to_string();
                out.entry(cur.clone()).or_default().0 = l.to_string();
            } else if l.starts_with("# TYPE ") {
                out.entry(cur.clone()).or_default().1 = l.to_string();
            } else if !l.is_empty() {
                out.entry(cur.clone()).or_default().2.push(l.to_string());
            }
        }
        out
    }

    /// Golden test: node_exporter 1.5.0 (Debian bookworm's) was run over each fixture
    /// (`--collector.disable-defaults`, every collector of [`COLLECTORS`],
    /// `--collector.textfile.directory=` (none, nodetap's default),
    /// `--no-collector.netdev.netlink` so it reads the fixture's /proc/net/dev,
    /// `--path.{procfs,sysfs,rootfs,udev.data}` at the fixture) and its output saved as
    /// `node_exporter-1.5.0.prom`. Our output over the same files must be the same, line
    /// for line, except for what depends on the machine or the moment.
    #[test]
    fn fixtures_match_node_exporter_line_for_line() {
        for case in ["real", "no_pressure", "many_disks_ipv6", "ec2", "storage"] {
            let root = testutil::fixture(case);
            // Labels holding a path (rapl's `path`) name the fixture as `@ROOT@`.
            let want = std::fs::read_to_string(root.join("node_exporter-1.5.0.prom"))
                .unwrap()
                .replace("@ROOT@", &root.display().to_string());
            let cfg = NodeConfig {
                procfs: root.join("proc"),
                sysfs: root.join("sys"),
                rootfs: root.join("rootfs"),
                ..NodeConfig::default()
            };
            let mut got = String::new();
            NodeCollectors::new(&cfg).encode(&mut got);
            let mut want = blocks(&want);
            // node_exporter's own metrics are not host metrics.
            want.retain(|name, _| name.starts_with("node_") && name != "node_exporter_build_info");
            let mut got = blocks(&got);
            // The exporter's own families were switched off in the capture
            // (--web.disable-exporter-metrics); exporter.rs tests them.
            got.retain(|name, _| name.starts_with("node_") && name != "node_exporter_build_info");
            // node_exporter reads receive_nohandler over netlink only; with
            // --no-collector.netdev.netlink it has none, we read it from sysfs.
            got.remove("node_network_receive_nohandler_total");
            let mut problems = Vec::new();
            for name in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
                let (Some(w), Some(g)) = (want.get(name), got.get(name)) else {
                    problems.push(format!(
                        "{name}: only in {}",
                        if want.contains_key(name) {
                            "node_exporter"
                        } else {
                            "nodetap"
                        }
                    ));
                    continue;
                };
                if w.0 != g.0 || w.1 != g.1 {
                    problems.push(format!(
                        "{name}: HELP/TYPE {:?} vs {:?}",
                        (&w.0, &w.1),
                        (&g.0, &g.1)
                    ));
                }
                // Values that depend on the clock, the machine or statfs of live paths.
                // timex reads the live kernel clock, not the fixture.
                let values_vary = name.starts_with("node_timex_")
                    || matches!(
                        name.as_str(),
                        "node_scrape_collector_duration_seconds"
                            | "node_time_seconds"
                            | "node_time_zone_offset_seconds"
                            | "node_uname_info"
                            | "node_filesystem_size_bytes"
                            | "node_filesystem_free_bytes"
                            | "node_filesystem_avail_bytes"
                            | "node_filesystem_files"
                            | "node_filesystem_files_free"
                    );
                let strip = |lines: &Vec<String>| -> Vec<String> {
                    let mut v: Vec<String> = lines
                        .iter()
                        .map(|l| {
                            if values_vary {
                                l.rsplit_once(' ').unwrap().0.to_string()
                            } else {
                                l.clone()
                            }
                        })
                        .collect();
                    v.sort();
                    v
                };
                if matches!(
                    name.as_str(),
                    "node_time_zone_offset_seconds" | "node_uname_info"
                ) {
                    continue;
                }
                let (w, g) = (strip(&w.2), strip(&g.2));
                if w != g {
                    problems.push(format!(
                        "{name}:\n  node_exporter: {w:?}\n  nodetap:       {g:?}"
                    ));
                }
            }
            assert!(
                problems.is_empty(),
                "fixture {case}:\n{}",
                problems.join("\n")
            );
        }
    }

    #[test]
    fn fixture_scrape_is_well_formed() {
        let root = testutil::fixture("real");
        let cfg = NodeConfig {
            procfs: root.join("proc"),
            sysfs: root.join("sys"),
            rootfs: root.join("rootfs"),
            ..NodeConfig::default()
        };
        let nc = NodeCollectors::new(&cfg);
        let mut out = String::new();
        nc.encode(&mut out);
        for c in COLLECTORS {
            // The fixture of the VM has no DMI, CONFIG_SCHEDSTATS, NVMe, RAPL, bonding, md,
            // NFS client, hwmon, power supplies or IPVS: `ec2` has those; nor NFS server,
            // ZFS, Fibre Channel, InfiniBand or tape drives: `storage` has those (and
            // bcache, Btrfs and XFS, whose absence is success).
            let ok = !matches!(
                c.name,
                "dmi"
                    | "schedstat"
                    | "nvme"
                    | "rapl"
                    | "bonding"
                    | "mdadm"
                    | "nfs"
                    | "hwmon"
                    | "powersupplyclass"
                    | "ipvs"
                    | "nfsd"
                    | "zfs"
                    | "fibrechannel"
                    | "infiniband"
                    | "tapestats"
            );
            let line = format!(
                "node_scrape_collector_success{{collector=\"{}\"}} {}\n",
                c.name,
                u8::from(ok)
            );
            assert!(out.contains(&line), "missing {line:?} in\n{out}");
        }
        // Every family has HELP then TYPE, and names are unique.
        let mut seen = std::collections::HashSet::new();
        let lines: Vec<&str> = out.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "duplicate family {name}");
                assert!(lines[i + 1].starts_with(&format!("# TYPE {name} ")));
            }
        }
    }
}

/// Every parser of outside text in the collectors (procfs, sysfs, udev files), each with
/// its renderer where it has a simple one, by name: the fuzzer's `node` target
/// ([`crate::fuzzing`]) runs them on arbitrary text. Registered beside the collectors so a
/// new parser is one more row.
pub type TextParser = fn(&str);

pub const TEXT_PARSERS: &[(&str, TextParser)] = &[
    ("cpu", |t| {
        if let Ok(c) = cpu::parse(t) {
            render::write_families(&mut String::new(), cpu::render(&c));
        }
    }),
    ("diskstats", |t| {
        if let Ok(d) = diskstats::parse(t) {
            let udev = diskstats::parse_udev(t);
            render::write_families(
                &mut String::new(),
                diskstats::render(&d, &filters::Filters::default(), |_| udev.clone()),
            );
        }
    }),
    ("filesystem", |t| {
        if let Ok(m) = filesystem::parse(t) {
            let _ = filesystem::select(m, std::path::Path::new("/"), &filters::Filters::default());
        }
    }),
    ("loadavg", |t| {
        if let Ok(l) = loadavg::parse(t) {
            render::write_families(&mut String::new(), loadavg::render(&l));
        }
    }),
    ("meminfo", |t| {
        if let Ok(m) = meminfo::parse(t) {
            render::write_families(&mut String::new(), meminfo::render(&m));
        }
    }),
    ("netclass", |t| {
        let files = t
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        let iface = netclass::parse("eth0", &files);
        render::write_families(&mut String::new(), netclass::render(&[iface]));
    }),
    ("netdev", |t| {
        if let Ok(d) = netdev::parse(t) {
            render::write_families(
                &mut String::new(),
                netdev::render(&d, &filters::Filters::default(), |_| None),
            );
        }
    }),
    ("pressure", |t| {
        if let Ok(p) = pressure::parse(t) {
            if let Ok(f) = pressure::render(&p, &p, &p) {
                render::write_families(&mut String::new(), f);
            }
        }
    }),
    ("stat", |t| {
        if let Ok(s) = stat::parse(t) {
            render::write_families(&mut String::new(), stat::render(&s));
        }
    }),
    ("vmstat", |t| {
        if let Ok(v) = vmstat::parse(t) {
            render::write_families(&mut String::new(), vmstat::render(&v));
        }
    }),
    ("clocksource", |t| {
        let (available, current) = t.split_once('\n').unwrap_or((t, ""));
        let _ = time::parse_clocksource(available, current);
    }),
    ("cpu_list", |t| {
        let _ = util::parse_cpu_list(t);
    }),
    ("octal_escapes", |t| {
        let _ = util::unescape_octal(t);
    }),
    ("go_int", |t| {
        let _ = util::parse_go_int(t);
    }),
    ("nfsd", |t| {
        if let Ok(s) = nfsd::parse(t) {
            render::write_families(&mut String::new(), nfsd::render(&s));
        }
    }),
    ("xfs", |t| {
        if let Ok(s) = xfs::parse(t) {
            render::write_families(&mut String::new(), xfs::render(&[("sda1".into(), s)]));
        }
    }),
    ("zfs_kstat", |t| {
        let mut out = Vec::new();
        if let Ok(e) = zfs::parse_kstat(t) {
            zfs::render_kstat(&mut out, "zfs_arc", "arcstats", &e);
        }
        zfs::render_state(&mut out, "tank", &zfs::parse_state(t));
        render::write_families(&mut String::new(), out);
    }),
    ("zfs_pool_io", |t| {
        let mut out = Vec::new();
        if let Ok(e) = zfs::parse_pool_io(t) {
            zfs::render_pool_io(&mut out, "tank", &e);
        }
        render::write_families(&mut String::new(), out);
    }),
    ("zfs_objset", |t| {
        let mut out = Vec::new();
        if let Ok(e) = zfs::parse_objset(t) {
            zfs::render_objset(&mut out, "tank", &e);
        }
        render::write_families(&mut String::new(), out);
    }),
    ("btrfs", |t| {
        if let Ok(f) = btrfs::parse(&util::MapTree::from_lines(t)) {
            render::write_families(&mut String::new(), btrfs::render(&f, &Default::default()));
            let _ = btrfs::parse_mounts(t);
        }
    }),
    ("infiniband", |t| {
        if let Ok(d) = infiniband::parse(&util::MapTree::from_lines(t)) {
            render::write_families(&mut String::new(), infiniband::render(&d));
        }
    }),
    ("fibrechannel", |t| {
        if let Ok(h) = fibrechannel::parse(&util::MapTree::from_lines(t)) {
            render::write_families(&mut String::new(), fibrechannel::render(&h));
        }
    }),
    ("tapestats", |t| {
        if let Ok(d) = tapestats::parse(&util::MapTree::from_lines(t)) {
            render::write_families(&mut String::new(), tapestats::render(&d, |_| false));
        }
    }),
    ("bcache", |t| {
        if let Ok(c) = bcache::parse(&util::MapTree::from_lines(t), true) {
            render::write_families(&mut String::new(), bcache::render(&c));
        }
        let _ = bcache::parse_writeback_rate_debug(t);
        let _ = bcache::parse_priority_stats(t);
    }),
];
