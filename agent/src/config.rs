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
/// Ring buffer bytes that must be waiting before the kernel wakes the agent.
pub const DEFAULT_WAKEUP_BYTES: u32 = 256 * 1024;

/// Command line. Every flag also reads a `NODETAP_*` environment variable.
#[derive(Debug, Default, Parser)]
#[command(name = "nodetap", version, about = "eBPF node telemetry agent")]
pub struct Cli {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "NODETAP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Size of the kernel-to-agent ring buffer, a power of two [default: 16 MiB].
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
    #[arg(long = "path.procfs", env = "NODETAP_PATH_PROCFS", value_name = "PATH")]
    pub path_procfs: Option<PathBuf>,
    /// Where the host's sysfs is [default: /sys].
    #[arg(long = "path.sysfs", env = "NODETAP_PATH_SYSFS", value_name = "PATH")]
    pub path_sysfs: Option<PathBuf>,
    /// Where the host's root filesystem is [default: /].
    #[arg(long = "path.rootfs", env = "NODETAP_PATH_ROOTFS", value_name = "PATH")]
    pub path_rootfs: Option<PathBuf>,
    /// Node collectors to switch on, comma-separated (see README).
    #[arg(
        long = "collector.enable",
        env = "NODETAP_COLLECTOR_ENABLE",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub collector_enable: Vec<String>,
    /// Node collectors to switch off, comma-separated (see README).
    #[arg(
        long = "collector.disable",
        env = "NODETAP_COLLECTOR_DISABLE",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub collector_disable: Vec<String>,
    /// This node's availability zone; wins over the node label and IMDS [default: none].
    #[arg(long, env = "NODETAP_ZONE", value_name = "ZONE")]
    pub zone: Option<String>,
    /// Base URL of the EC2 instance metadata service; empty switches it off [default:
    /// http://169.254.169.254, asked only on EC2 instances].
    #[arg(long, env = "NODETAP_IMDS_ENDPOINT", value_name = "URL")]
    pub imds_endpoint: Option<String>,
    /// Kubernetes API server URL, used without authentication (e.g. a `kubectl proxy`)
    /// [default: in-cluster configuration when KUBERNETES_SERVICE_HOST is set].
    #[arg(long, env = "NODETAP_KUBERNETES_API_URL", value_name = "URL")]
    pub kubernetes_api_url: Option<String>,
    /// Entries of each kernel flow table (distinct flows per 2 s) [default: 32768].
    #[arg(long, env = "NODETAP_NETWORK_FLOW_ENTRIES", value_name = "N")]
    pub network_flow_entries: Option<u32>,
    /// Run the start-up checks, load and attach every hook, print the report, and exit.
    #[arg(long)]
    pub check: bool,
}

/// The configuration file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub capture_bytes: Option<u32>,
    pub capture_mode: Option<CaptureMode>,
    pub ringbuf_bytes: Option<u32>,
    pub connection_idle_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub request_timeout: Option<u64>,
    pub max_series: Option<usize>,
    pub log_level: Option<String>,
    /// HTTP route patterns.
    pub http_routes: Vec<String>,
    pub http_route_limit: Option<usize>,
    /// Host metrics (`[node]` table).
    pub node: NodeConfig,
    pub network_flow_entries: Option<u32>,
    /// Zones (`[zones]` table).
    pub zones: ZoneConfig,
    /// Pod and node metadata (`[kubernetes]` table).
    pub kubernetes: KubernetesConfig,
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
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn merge(cli: Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let listen = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"));
        let capture_bytes = cli
            .capture_bytes
            .or(file.capture_bytes)
            .unwrap_or(DEFAULT_CALL_CAPTURE);
        if !(MIN_CALL_CAPTURE..=MAX_CALL_CAPTURE).contains(&capture_bytes) {
            return Err(ConfigError::Invalid {
                key: "capture_bytes",
                problem: format!(
                    "{capture_bytes} is outside {MIN_CALL_CAPTURE}..={MAX_CALL_CAPTURE}"
                ),
            });
        }
        let capture_mode = cli
            .capture_mode
            .or(file.capture_mode)
            .unwrap_or(CaptureMode::Auto);
        let ringbuf_bytes = cli
            .ringbuf_bytes
            .or(file.ringbuf_bytes)
            .unwrap_or(DEFAULT_RINGBUF_BYTES);
        if !ringbuf_bytes.is_power_of_two() || !(64 * 1024..=1 << 30).contains(&ringbuf_bytes) {
            return Err(ConfigError::Invalid {
                key: "ringbuf_bytes",
                problem: format!("{ringbuf_bytes} must be a power of two from 65536 to 1073741824"),
            });
        }
        let idle = cli
            .connection_idle_timeout
            .or(file.connection_idle_timeout)
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        if idle == 0 {
            return Err(ConfigError::Invalid {
                key: "connection_idle_timeout",
                problem: "must be at least 1 second".into(),
            });
        }
        let max_connections = cli
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                problem: "must be at least 1".into(),
            });
        }
        let request_timeout = cli
            .request_timeout
            .or(file.request_timeout)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS);
        if request_timeout == 0 {
            return Err(ConfigError::Invalid {
                key: "request_timeout",
                problem: "must be at least 1 second".into(),
            });
        }
        let level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        let log_level = level.parse().map_err(|_| ConfigError::Invalid {
            key: "log_level",
            problem: format!("{level:?} is not one of off, error, warn, info, debug, trace"),
        })?;
        let max_series = cli
            .max_series
            .or(file.max_series)
            .unwrap_or(crate::metrics::DEFAULT_SERIES_LIMIT);
        if max_series == 0 {
            return Err(ConfigError::Invalid {
                key: "max_series",
                problem: "must be at least 1".into(),
            });
        }
        let mut patterns = file.http_routes;
        patterns.extend(cli.http_routes);
        let http_routes =
            crate::protocols::http1::RoutePatterns::new(patterns.iter()).map_err(|e| {
                ConfigError::Invalid {
                    key: "http_routes",
                    problem: e.to_string(),
                }
            })?;
        let http_route_limit = cli
            .http_route_limit
            .or(file.http_route_limit)
            .unwrap_or(crate::protocols::route::DEFAULT_ROUTE_LIMIT);
        if http_route_limit < 2 {
            return Err(ConfigError::Invalid {
                key: "http_route_limit",
                problem: "must be at least 2 (one route and _OTHER)".into(),
            });
        }
        let mut node = file.node;
        if let Some(p) = cli.path_procfs {
            node.procfs = p;
        }
        if let Some(p) = cli.path_sysfs {
            node.sysfs = p;
        }
        if let Some(p) = cli.path_rootfs {
            node.rootfs = p;
        }
        node.enable.extend(cli.collector_enable);
        node.disable.extend(cli.collector_disable);
        node.validate().map_err(ConfigError::Node)?;
        let mut zones = file.zones;
        if let Some(zone) = cli.zone {
            zones.zone = Some(zone);
        }
        let imds_endpoint_set = cli.imds_endpoint.is_some()
            || zones.imds_endpoint != crate::metadata::zones::DEFAULT_IMDS_ENDPOINT;
        if let Some(endpoint) = cli.imds_endpoint {
            zones.imds_endpoint = endpoint;
        }
        zones.validate().map_err(ConfigError::Zones)?;
        let network_flow_entries = cli
            .network_flow_entries
            .or(file.network_flow_entries)
            .unwrap_or(agent_common::NET_FLOW_ENTRIES);
        if !(64..=4 << 20).contains(&network_flow_entries) {
            return Err(ConfigError::Invalid {
                key: "network_flow_entries",
                problem: format!("{network_flow_entries} is outside 64..=4194304"),
            });
        }
        let mut kubernetes = file.kubernetes;
        if let Some(url) = cli.kubernetes_api_url {
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
            check_only: cli.check,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
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
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:1\"\ncapture_bytes = 100000\ncapture_mode = \"socket\"\n",
        )
        .unwrap();
        let cli = Cli {
            capture_bytes: Some(131072),
            capture_mode: Some(CaptureMode::Syscall),
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
        let file: FileConfig =
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
        let err = Config::merge(cli, FileConfig::default()).unwrap_err();
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
        let c = Config::merge(cli, FileConfig::default()).unwrap();
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
        let c = Config::merge(cli, FileConfig::default()).unwrap();
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
