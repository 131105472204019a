//! Configuration: defaults, overridden by an optional TOML file, overridden by
//! `NODETAP_*` environment variables, overridden by flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{
    DEFAULT_CALL_CAPTURE, DEFAULT_RINGBUF_BYTES, MAX_CALL_CAPTURE, MIN_CALL_CAPTURE,
};
use clap::Parser;
use serde::Deserialize;

use crate::{
    collectors::NodeConfig,
    metadata::{kubernetes::KubernetesConfig, zones::ZoneConfig},
};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9464";
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;
pub const DEFAULT_MAX_CONNECTIONS: usize = 262_144;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Bytes a CPU's ring buffer takes between two wake-ups of the agent (at most a quarter
/// of the ring). Each wake-up is an interrupt, and under a hypervisor a VM exit: at
/// 256 KiB they were 3 % of the capture programs' time at a million records a second.
pub const DEFAULT_WAKEUP_BYTES: u32 = 1024 * 1024;

/// Command line. Every flag also reads a `NODETAP_*` environment variable.
#[derive(Debug, Default, Parser)]
#[command(name = "nodetap", version, about = "eBPF node telemetry agent")]
pub struct Cli {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "NODETAP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
    /// Run the start-up checks, load and attach every hook, print the report, and exit.
    #[arg(long)]
    pub check: bool,
}

/// Every option, declared once: clap derives its flag (and `NODETAP_*` variable) and
/// serde its file key from the same field. Most are both; `#[serde(skip)]` marks the
/// flags that fill a file table's key (`--path.procfs` is `[node] procfs`), and
/// `#[arg(skip)]` the file's tables. Unknown file keys are errors.
#[derive(Debug, Default, Deserialize, PartialEq, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address of the Prometheus endpoint [default: 0.0.0.0:9464].
    #[arg(long, env = "NODETAP_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Most payload bytes copied per call of a parsed connection, 65536 to 1048576
    /// [default: 262144]; beyond it a call's bytes are counted, not copied.
    #[arg(long, env = "NODETAP_CAPTURE_BYTES", value_name = "BYTES")]
    pub capture_bytes: Option<u32>,
    /// How the kernel side finds data: `socket` (sock_send/recv_length, Linux 6.3+),
    /// `syscall` (syscall tracepoints), or `auto` (socket where the kernel has it)
    /// [default: auto].
    #[arg(long, env = "NODETAP_CAPTURE_MODE", value_name = "MODE")]
    pub capture_mode: Option<CaptureMode>,
    /// Bytes of the kernel-to-agent ring buffers, a power of two split between the CPUs
    /// (each CPU at least 1 MiB) [default: 16 MiB].
    #[arg(long, env = "NODETAP_RINGBUF_BYTES", value_name = "BYTES")]
    pub ringbuf_bytes: Option<u32>,
    /// Seconds without traffic after which a connection leaves the table [default: 600].
    #[arg(long, env = "NODETAP_CONNECTION_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub connection_idle_timeout: Option<u64>,
    /// Most connections tracked at once [default: 262144].
    #[arg(long, env = "NODETAP_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most series per request-metric family; more are dropped and counted
    /// [default: 10000].
    #[arg(long, env = "NODETAP_MAX_SERIES", value_name = "N")]
    pub max_series: Option<usize>,
    /// Seconds a request may wait for its response before it is counted as timed out
    /// [default: 300].
    #[arg(long, env = "NODETAP_REQUEST_TIMEOUT", value_name = "SECONDS")]
    pub request_timeout: Option<u64>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long, env = "NODETAP_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// An HTTP route pattern (repeatable), e.g. `/users/{id}/orders` or `/static/*`;
    /// patterns win over the default route normalisation.
    #[arg(
        long = "http-route",
        env = "NODETAP_HTTP_ROUTES",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub http_routes: Vec<String>,
    /// Most distinct HTTP routes per service, side and server port, `_OTHER` included;
    /// path segments with many values collapse to `{param}` first [default: 100].
    #[arg(long, env = "NODETAP_HTTP_ROUTE_LIMIT", value_name = "N")]
    pub http_route_limit: Option<usize>,
    /// Where the host's procfs is (as node_exporter's flag) [default: /proc].
    #[serde(skip)]
    #[arg(long = "path.procfs", env = "NODETAP_PATH_PROCFS", value_name = "PATH")]
    pub path_procfs: Option<PathBuf>,
    /// Where the host's sysfs is [default: /sys].
    #[serde(skip)]
    #[arg(long = "path.sysfs", env = "NODETAP_PATH_SYSFS", value_name = "PATH")]
    pub path_sysfs: Option<PathBuf>,
    /// Where the host's root filesystem is [default: /].
    #[serde(skip)]
    #[arg(long = "path.rootfs", env = "NODETAP_PATH_ROOTFS", value_name = "PATH")]
    pub path_rootfs: Option<PathBuf>,
    /// Node collectors to switch on, comma-separated (see README).
    #[serde(skip)]
    #[arg(
        long = "collector.enable",
        env = "NODETAP_COLLECTOR_ENABLE",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub collector_enable: Vec<String>,
    /// Node collectors to switch off, comma-separated (see README).
    #[serde(skip)]
    #[arg(
        long = "collector.disable",
        env = "NODETAP_COLLECTOR_DISABLE",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub collector_disable: Vec<String>,
    /// This node's availability zone; wins over the node label and IMDS [default: none].
    #[serde(skip)]
    #[arg(long, env = "NODETAP_ZONE", value_name = "ZONE")]
    pub zone: Option<String>,
    /// Base URL of the EC2 instance metadata service; empty switches it off [default:
    /// http://169.254.169.254, asked only on EC2 instances].
    #[serde(skip)]
    #[arg(long, env = "NODETAP_IMDS_ENDPOINT", value_name = "URL")]
    pub imds_endpoint: Option<String>,
    /// Kubernetes API server URL, used without authentication (e.g. a `kubectl proxy`)
    /// [default: in-cluster configuration when KUBERNETES_SERVICE_HOST is set].
    #[serde(skip)]
    #[arg(long, env = "NODETAP_KUBERNETES_API_URL", value_name = "URL")]
    pub kubernetes_api_url: Option<String>,
    /// Entries of each kernel flow table (distinct flows per 2 s) [default: 32768].
    #[arg(long, env = "NODETAP_NETWORK_FLOW_ENTRIES", value_name = "N")]
    pub network_flow_entries: Option<u32>,
    /// TLS and basic authentication for the endpoint, in node_exporter's web config
    /// format (tls_server_config, basic_auth_users) [default: plain HTTP, no auth].
    #[arg(
        long = "web.config.file",
        env = "NODETAP_WEB_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub web_config_file: Option<PathBuf>,
    /// Host metrics (`[node]` table).
    #[arg(skip)]
    pub node: NodeConfig,
    /// Zones (`[zones]` table).
    #[arg(skip)]
    pub zones: ZoneConfig,
    /// Pod and node metadata (`[kubernetes]` table).
    #[arg(skip)]
    pub kubernetes: KubernetesConfig,
}

impl Settings {
    /// These settings over `under`, field by field: a value set here wins, lists add up
    /// (`under`'s first), tables come from `under` (only the file has them).
    fn over(self, under: Settings) -> Settings {
        fn list(mut under: Vec<String>, over: Vec<String>) -> Vec<String> {
            under.extend(over);
            under
        }
        Settings {
            listen: self.listen.or(under.listen),
            capture_bytes: self.capture_bytes.or(under.capture_bytes),
            capture_mode: self.capture_mode.or(under.capture_mode),
            ringbuf_bytes: self.ringbuf_bytes.or(under.ringbuf_bytes),
            connection_idle_timeout: self
                .connection_idle_timeout
                .or(under.connection_idle_timeout),
            max_connections: self.max_connections.or(under.max_connections),
            max_series: self.max_series.or(under.max_series),
            request_timeout: self.request_timeout.or(under.request_timeout),
            log_level: self.log_level.or(under.log_level),
            http_routes: list(under.http_routes, self.http_routes),
            http_route_limit: self.http_route_limit.or(under.http_route_limit),
            path_procfs: self.path_procfs.or(under.path_procfs),
            path_sysfs: self.path_sysfs.or(under.path_sysfs),
            path_rootfs: self.path_rootfs.or(under.path_rootfs),
            collector_enable: list(under.collector_enable, self.collector_enable),
            collector_disable: list(under.collector_disable, self.collector_disable),
            zone: self.zone.or(under.zone),
            imds_endpoint: self.imds_endpoint.or(under.imds_endpoint),
            kubernetes_api_url: self.kubernetes_api_url.or(under.kubernetes_api_url),
            network_flow_entries: self.network_flow_entries.or(under.network_flow_entries),
            web_config_file: self.web_config_file.or(under.web_config_file),
            node: under.node,
            zones: under.zones,
            kubernetes: under.kubernetes,
        }
    }
}

/// The configuration in force.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub capture_bytes: u32,
    pub capture_mode: CaptureMode,
    pub ringbuf_bytes: u32,
    pub wakeup_bytes: u32,
    pub connection_idle_timeout: Duration,
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub max_series: usize,
    pub log_level: log::LevelFilter,
    /// The user's HTTP route patterns.
    pub http_routes: std::sync::Arc<crate::protocols::http1::RoutePatterns>,
    /// Most distinct HTTP routes per service, side and port.
    pub http_route_limit: usize,
    /// Host paths and collectors; `node.procfs` is also where the agent reads processes.
    pub node: NodeConfig,
    pub zones: ZoneConfig,
    pub kubernetes: KubernetesConfig,
    /// Whether the zone source `imds_endpoint` was set by the user (else the default is
    /// used only on EC2).
    pub imds_endpoint_set: bool,
    pub network_flow_entries: u32,
    /// node_exporter-format web config (TLS, basic auth) for the endpoint.
    pub web_config_file: Option<PathBuf>,
    pub check_only: bool,
}

/// The capture tier the user asks for (`--capture-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// The socket tier where the kernel has its tracepoints (6.3+), else the syscall tier.
    Auto,
    /// The socket tier or fail.
    Socket,
    /// The syscall tier, whatever the kernel offers.
    Syscall,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("bad value for {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("bad node collector configuration")]
    Node(#[source] crate::collectors::NodeConfigError),
    #[error("bad zone configuration")]
    Zones(#[source] crate::metadata::zones::ZoneError),
    #[error("bad kubernetes configuration")]
    Kubernetes(#[source] crate::metadata::kubernetes::KubeError),
}

impl Config {
    /// Resolves flags and environment (already in `cli`) over the file over defaults.
    pub fn resolve(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => Settings::default(),
        };
        Self::merge(cli, file)
    }

    pub fn read_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The flags (`cli`) over the file over defaults, each key validated once.
    pub fn merge(cli: Cli, file: Settings) -> Result<Self, ConfigError> {
        let s = cli.settings.over(file);
        let listen = s
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"));
        let capture_bytes = s.capture_bytes.unwrap_or(DEFAULT_CALL_CAPTURE);
        if !(MIN_CALL_CAPTURE..=MAX_CALL_CAPTURE).contains(&capture_bytes) {
            return Err(ConfigError::Invalid {
                key: "capture_bytes",
                problem: format!(
                    "{capture_bytes} is outside {MIN_CALL_CAPTURE}..={MAX_CALL_CAPTURE}"
                ),
            });
        }
        let capture_mode = s.capture_mode.unwrap_or(CaptureMode::Auto);
        let ringbuf_bytes = s.ringbuf_bytes.unwrap_or(DEFAULT_RINGBUF_BYTES);
        if !ringbuf_bytes.is_power_of_two() || !(64 * 1024..=1 << 30).contains(&ringbuf_bytes) {
            return Err(ConfigError::Invalid {
                key: "ringbuf_bytes",
                problem: format!("{ringbuf_bytes} must be a power of two from 65536 to 1073741824"),
            });
        }
        let idle = s
            .connection_idle_timeout
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        if idle == 0 {
            return Err(ConfigError::Invalid {
                key: "connection_idle_timeout",
                problem: "must be at least 1 second".into(),
            });
        }
        let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                problem: "must be at least 1".into(),
            });
        }
        let request_timeout = s.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS);
        if request_timeout == 0 {
            return Err(ConfigError::Invalid {
                key: "request_timeout",
                problem: "must be at least 1 second".into(),
            });
        }
        let level = s.log_level.unwrap_or_else(|| "info".into());
        let log_level = level.parse().map_err(|_| ConfigError::Invalid {
            key: "log_level",
            problem: format!("{level:?} is not one of off, error, warn, info, debug, trace"),
        })?;
        let max_series = s.max_series.unwrap_or(crate::metrics::DEFAULT_SERIES_LIMIT);
        if max_series == 0 {
            return Err(ConfigError::Invalid {
                key: "max_series",
                problem: "must be at least 1".into(),
            });
        }
        let http_routes = crate::protocols::http1::RoutePatterns::new(s.http_routes.iter())
            .map_err(|e| ConfigError::Invalid {
                key: "http_routes",
                problem: e.to_string(),
            })?;
        let http_route_limit = s
            .http_route_limit
            .unwrap_or(crate::protocols::route::DEFAULT_ROUTE_LIMIT);
        if http_route_limit < 2 {
            return Err(ConfigError::Invalid {
                key: "http_route_limit",
                problem: "must be at least 2 (one route and _OTHER)".into(),
            });
        }
        let mut node = s.node;
        if let Some(p) = s.path_procfs {
            node.procfs = p;
        }
        if let Some(p) = s.path_sysfs {
            node.sysfs = p;
        }
        if let Some(p) = s.path_rootfs {
            node.rootfs = p;
        }
        node.enable.extend(s.collector_enable);
        node.disable.extend(s.collector_disable);
        node.validate().map_err(ConfigError::Node)?;
        let mut zones = s.zones;
        if let Some(zone) = s.zone {
            zones.zone = Some(zone);
        }
        let imds_endpoint_set = s.imds_endpoint.is_some()
            || zones.imds_endpoint != crate::metadata::zones::DEFAULT_IMDS_ENDPOINT;
        if let Some(endpoint) = s.imds_endpoint {
            zones.imds_endpoint = endpoint;
        }
        zones.validate().map_err(ConfigError::Zones)?;
        let network_flow_entries = s
            .network_flow_entries
            .unwrap_or(agent_common::NET_FLOW_ENTRIES);
        if !(64..=4 << 20).contains(&network_flow_entries) {
            return Err(ConfigError::Invalid {
                key: "network_flow_entries",
                problem: format!("{network_flow_entries} is outside 64..=4194304"),
            });
        }
        let mut kubernetes = s.kubernetes;
        if let Some(url) = s.kubernetes_api_url {
            kubernetes.api_url = url;
        }
        if kubernetes.is_enabled() {
            // Checked here so that a DaemonSet without NODE_NAME fails at start-up.
            kubernetes.node_name = kubernetes
                .resolve_node_name()
                .map_err(ConfigError::Kubernetes)?;
        }
        Ok(Config {
            listen,
            capture_bytes,
            capture_mode,
            ringbuf_bytes,
            // Never wait for more than a quarter of the buffer before waking the reader.
            wakeup_bytes: DEFAULT_WAKEUP_BYTES.min(ringbuf_bytes / 4),
            connection_idle_timeout: Duration::from_secs(idle),
            max_connections,
            request_timeout: Duration::from_secs(request_timeout),
            max_series,
            log_level,
            http_routes: std::sync::Arc::new(http_routes),
            http_route_limit,
            node,
            zones,
            kubernetes,
            imds_endpoint_set,
            network_flow_entries,
            web_config_file: s.web_config_file,
            check_only: cli.check,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, String> {
        let file: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        Config::merge(Cli::default(), file).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = from_toml("").unwrap();
        assert_eq!(c.listen, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(c.capture_bytes, 262144);
        assert_eq!(c.capture_mode, CaptureMode::Auto);
        assert_eq!(c.ringbuf_bytes, 16 << 20);
        assert_eq!(c.connection_idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn file_values_and_flags_over_file() {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:1\"\ncapture_bytes = 100000\ncapture_mode = \"socket\"\n",
        )
        .unwrap();
        let cli = Cli {
            settings: Settings {
                capture_bytes: Some(131072),
                capture_mode: Some(CaptureMode::Syscall),
                ..Settings::default()
            },
            ..Cli::default()
        };
        let c = Config::merge(cli, file).unwrap();
        assert_eq!(
            (c.listen.port(), c.capture_bytes, c.capture_mode),
            (1, 131072, CaptureMode::Syscall)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = from_toml("capture_byte = 300\n").unwrap_err();
        assert!(err.contains("unknown field `capture_byte`"), "{err}");
        let err = from_toml("capture_bytes = \"lots\"\n").unwrap_err();
        assert!(err.contains("capture_bytes"), "{err}");
        let err = from_toml("capture_bytes = 100\n").unwrap_err();
        assert_eq!(
            err,
            "bad value for capture_bytes: 100 is outside 65536..=1048576"
        );
        let err = from_toml("capture_mode = \"kprobe\"\n").unwrap_err();
        assert!(err.contains("capture_mode"), "{err}");
        let err = from_toml("ringbuf_bytes = 100000\n").unwrap_err();
        assert!(err.starts_with("bad value for ringbuf_bytes"), "{err}");
        let err = from_toml("log_level = \"loud\"\n").unwrap_err();
        assert!(err.starts_with("bad value for log_level"), "{err}");
    }

    #[test]
    fn node_paths_and_collectors() {
        let file: Settings =
            toml::from_str("[node]\nprocfs = \"/host/proc\"\ndisable = [\"pressure\"]\n").unwrap();
        let cli = Cli::try_parse_from([
            "nodetap",
            "--path.sysfs",
            "/host/sys",
            "--collector.disable",
            "vmstat,time",
        ])
        .unwrap();
        let c = Config::merge(cli, file).unwrap();
        assert_eq!(c.node.procfs, PathBuf::from("/host/proc"));
        assert_eq!(c.node.sysfs, PathBuf::from("/host/sys"));
        assert_eq!(c.node.disable, vec!["pressure", "vmstat", "time"]);
        let cli = Cli::try_parse_from(["nodetap", "--collector.enable", "nosuch"]).unwrap();
        let err = Config::merge(cli, Settings::default()).unwrap_err();
        assert!(
            crate::error_chain(&err).contains("unknown node collector \"nosuch\""),
            "{}",
            crate::error_chain(&err)
        );
        assert!(from_toml("[node]\nprocs = \"/x\"\n")
            .unwrap_err()
            .contains("unknown field `procs`"));
    }

    #[test]
    fn zones_table_and_flags() {
        let text = "[zones]\nzone = \"use1-az1\"\nimds_endpoint = \"\"\n\n\
                    [[zones.subnets]]\ncidr = \"10.0.0.0/19\"\nzone = \"use1-az1\"\n\n\
                    [[zones.subnets]]\ncidr = \"10.0.32.0/19\"\nzone = \"use1-az2\"\n";
        let c = from_toml(text).unwrap();
        assert_eq!(c.zones.zone.as_deref(), Some("use1-az1"));
        assert_eq!(c.zones.subnets.len(), 2);
        assert!(!c.zones.imds_enabled() && c.imds_endpoint_set);
        let c = from_toml("").unwrap();
        assert!(c.zones.imds_enabled() && !c.imds_endpoint_set);
        let err =
            from_toml("[[zones.subnets]]\ncidr = \"10.0.0.0/33\"\nzone = \"a\"\n").unwrap_err();
        assert_eq!(err, "bad zone configuration");
        let cli = Cli::try_parse_from(["nodetap", "--zone", "use1-az3"]).unwrap();
        let c = Config::merge(cli, Settings::default()).unwrap();
        assert_eq!(c.zones.zone.as_deref(), Some("use1-az3"));
    }

    #[test]
    fn env_and_flags_parse_through_clap() {
        let cli = Cli::try_parse_from([
            "nodetap",
            "--listen",
            "127.0.0.1:9999",
            "--capture-bytes",
            "70000",
            "--capture-mode",
            "socket",
        ])
        .unwrap();
        let c = Config::merge(cli, Settings::default()).unwrap();
        assert_eq!(
            (c.listen.port(), c.capture_bytes, c.capture_mode),
            (9999, 70000, CaptureMode::Socket)
        );
        let err = Cli::try_parse_from(["nodetap", "--capture-mode", "kprobe"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--capture-mode"), "{err}");
        let err = Cli::try_parse_from(["nodetap", "--capture-bytes", "many"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--capture-bytes"), "{err}");
    }
}
