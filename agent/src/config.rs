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

use crate::signals::spans::{ExportOptions, OtlpProtocol, Sampler, SpanOptions};
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
    /// Bytes of the kernel-to-agent ring buffers, a power of two: one ring per CPU where
    /// each gets at least 4 MiB, else fewer rings shared by neighbouring CPUs
    /// [default: 16 MiB].
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
    /// The agent's CPU budget, a fraction of one core (0.5 is half a core); above it new
    /// connections are counted but not parsed until it has been back under for 5 s
    /// [default: 0.5].
    #[arg(long, env = "NODETAP_CPU_BUDGET", value_name = "CORES")]
    pub cpu_budget: Option<f64>,
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
    /// OTLP endpoint for spans (`OTEL_EXPORTER_OTLP_ENDPOINT`): `http://host:4318` for
    /// http/protobuf (`/v1/traces` is appended), `http://host:4317` for gRPC. Spans are on
    /// whenever an endpoint is set [default: none, spans off].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP endpoint for spans, used as given (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); wins
    /// over `otlp_endpoint`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,
    /// OTLP transport: `http/protobuf` or `grpc` (`OTEL_EXPORTER_OTLP_PROTOCOL`)
    /// [default: http/protobuf].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Headers sent with every export, `key=value,key2=value2`, values URL-encoded
    /// (`OTEL_EXPORTER_OTLP_HEADERS`) [default: none].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", value_name = "HEADERS")]
    pub otlp_headers: Option<String>,
    /// Time limit of one export attempt in milliseconds (`OTEL_EXPORTER_OTLP_TIMEOUT`)
    /// [default: 10000].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", value_name = "MS")]
    pub otlp_timeout: Option<u64>,
    /// PEM file of the CA certificates that sign an `https://` endpoint's certificate
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`) [default: the host's CA store].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE", value_name = "FILE")]
    pub otlp_certificate: Option<PathBuf>,
    /// `gzip` or `none` (`OTEL_EXPORTER_OTLP_COMPRESSION`) [default: none].
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_COMPRESSION",
        value_name = "COMPRESSION"
    )]
    pub otlp_compression: Option<String>,
    /// Resource attributes added to every span, `key=value,...`, values URL-encoded
    /// (`OTEL_RESOURCE_ATTRIBUTES`); `service.name` and the workload's `k8s.*` come from the
    /// workload and win [default: none].
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", value_name = "ATTRIBUTES")]
    pub resource_attributes: Option<String>,
    /// Baseline span sampler (`OTEL_TRACES_SAMPLER`): always_on, always_off,
    /// traceidratio, parentbased_always_on, parentbased_always_off,
    /// parentbased_traceidratio; errors and slow requests are kept whatever it says
    /// [default: parentbased_always_on].
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_name = "SAMPLER")]
    pub traces_sampler: Option<String>,
    /// The sampler's ratio, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`) [default: 1].
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", value_name = "RATIO")]
    pub traces_sampler_arg: Option<String>,
    /// Requests at least this long (milliseconds) always get their span; 0 turns the rule
    /// off [default: 1000].
    #[arg(long, env = "NODETAP_SPANS_SLOW_THRESHOLD", value_name = "MS")]
    pub spans_slow_threshold: Option<u64>,
    /// Most spans waiting for export; past it new spans are dropped and counted
    /// [default: 16384].
    #[arg(long, env = "NODETAP_SPANS_QUEUE_SIZE", value_name = "N")]
    pub spans_queue_size: Option<usize>,
    /// Longest a span waits to be exported with others, in milliseconds
    /// (`OTEL_BSP_SCHEDULE_DELAY`) [default: 1000].
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", value_name = "MS")]
    pub spans_batch_delay: Option<u64>,
    /// OTLP endpoint for metrics, used as given (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`);
    /// wins over `otlp_endpoint` (which gets `/v1/metrics` for http/protobuf). Metrics are
    /// pushed whenever either is set [default: none, metrics only scraped].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", value_name = "URL")]
    pub otlp_metrics_endpoint: Option<String>,
    /// Milliseconds between metric pushes (`OTEL_METRIC_EXPORT_INTERVAL`) [default: 60000].
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", value_name = "MS")]
    pub metric_export_interval: Option<u64>,
    /// `cumulative`, `delta` or `lowmemory` (delta for the agent's counters and
    /// histograms) (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`)
    /// [default: cumulative].
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        value_name = "TEMPORALITY"
    )]
    pub otlp_metrics_temporality: Option<String>,
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
            cpu_budget: self.cpu_budget.or(under.cpu_budget),
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
            otlp_endpoint: self.otlp_endpoint.or(under.otlp_endpoint),
            otlp_traces_endpoint: self.otlp_traces_endpoint.or(under.otlp_traces_endpoint),
            otlp_protocol: self.otlp_protocol.or(under.otlp_protocol),
            otlp_headers: self.otlp_headers.or(under.otlp_headers),
            otlp_timeout: self.otlp_timeout.or(under.otlp_timeout),
            otlp_compression: self.otlp_compression.or(under.otlp_compression),
            otlp_certificate: self.otlp_certificate.or(under.otlp_certificate),
            resource_attributes: self.resource_attributes.or(under.resource_attributes),
            traces_sampler: self.traces_sampler.or(under.traces_sampler),
            traces_sampler_arg: self.traces_sampler_arg.or(under.traces_sampler_arg),
            spans_slow_threshold: self.spans_slow_threshold.or(under.spans_slow_threshold),
            spans_queue_size: self.spans_queue_size.or(under.spans_queue_size),
            spans_batch_delay: self.spans_batch_delay.or(under.spans_batch_delay),
            otlp_metrics_endpoint: self.otlp_metrics_endpoint.or(under.otlp_metrics_endpoint),
            metric_export_interval: self.metric_export_interval.or(under.metric_export_interval),
            otlp_metrics_temporality: self
                .otlp_metrics_temporality
                .or(under.otlp_metrics_temporality),
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
    /// Fraction of one core (see `capture::budget`).
    pub cpu_budget: f64,
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
    /// Spans and their export, when an OTLP endpoint is set.
    pub spans: Option<SpansConfig>,
    /// Metrics pushed over OTLP, when a metrics endpoint (or the generic one) is set.
    pub metrics_export: Option<MetricsExportConfig>,
    pub check_only: bool,
}

/// Where the metric families are pushed over OTLP, how often, and with which
/// temporality.
#[derive(Clone, Debug)]
pub struct MetricsExportConfig {
    pub export: ExportOptions,
    pub interval: Duration,
    /// Counters and histograms as differences since the previous push (else totals
    /// since the agent started).
    pub delta: bool,
}

/// How spans are made and exported.
#[derive(Clone, Debug)]
pub struct SpansConfig {
    pub spans: SpanOptions,
    /// `local_zone` answers nothing here: the agent wires it to the zone it learns.
    pub export: ExportOptions,
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
        let s_spans = SpanSettings {
            endpoint: s.otlp_endpoint.clone(),
            traces_endpoint: s.otlp_traces_endpoint.clone(),
            protocol: s.otlp_protocol.clone(),
            headers: s.otlp_headers.clone(),
            timeout_ms: s.otlp_timeout,
            compression: s.otlp_compression.clone(),
            certificate: s.otlp_certificate.clone(),
            resource: s.resource_attributes.clone(),
            sampler: s.traces_sampler.clone(),
            sampler_arg: s.traces_sampler_arg.clone(),
            slow_ms: s.spans_slow_threshold,
            queue_size: s.spans_queue_size,
            batch_delay_ms: s.spans_batch_delay,
            metrics_endpoint: s.otlp_metrics_endpoint.clone(),
            metric_export_interval_ms: s.metric_export_interval,
            metrics_temporality: s.otlp_metrics_temporality.clone(),
        };
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
        let cpu_budget = s
            .cpu_budget
            .unwrap_or(crate::capture::budget::DEFAULT_CPU_BUDGET);
        if !(cpu_budget > 0.0 && cpu_budget <= 1024.0) {
            return Err(ConfigError::Invalid {
                key: "cpu_budget",
                problem: format!("{cpu_budget} is not a fraction of cores from above 0 to 1024"),
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
        let spans = spans_config(&s_spans)?;
        let metrics_export = metrics_export_config(&s_spans)?;
        Ok(Config {
            spans,
            metrics_export,
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
            cpu_budget,
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

/// The span settings, taken out of [`Settings`] for [`spans_config`].
struct SpanSettings {
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<String>,
    timeout_ms: Option<u64>,
    compression: Option<String>,
    certificate: Option<PathBuf>,
    resource: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<String>,
    slow_ms: Option<u64>,
    queue_size: Option<usize>,
    batch_delay_ms: Option<u64>,
    metrics_endpoint: Option<String>,
    metric_export_interval_ms: Option<u64>,
    metrics_temporality: Option<String>,
}

/// Where and how one OTLP signal is exported, when its endpoint (or the generic one) is
/// set; the rest is validated only then, as the OpenTelemetry SDKs do (a stray variable
/// does not stop an agent that exports nothing). `specific` is the signal's own endpoint
/// (`otlp_traces_endpoint`, `otlp_metrics_endpoint`), used as given; the generic one gets
/// `path` appended for HTTP.
fn export_options(
    s: &SpanSettings,
    specific: (&'static str, &Option<String>),
    path: &str,
) -> Result<Option<ExportOptions>, ConfigError> {
    let blank = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let protocol = match blank(&s.protocol) {
        None => OtlpProtocol::HttpProtobuf,
        Some(p) => OtlpProtocol::parse(&p).ok_or_else(|| ConfigError::Invalid {
            key: "otlp_protocol",
            problem: format!("{p:?} is not http/protobuf or grpc"),
        })?,
    };
    let (key, given) = match (blank(specific.1), blank(&s.endpoint)) {
        (Some(url), _) => (specific.0, url),
        (None, Some(url)) => ("otlp_endpoint", url),
        (None, None) => return Ok(None),
    };
    let bad = |problem: String| ConfigError::Invalid { key, problem };
    let parsed: http::Uri = given
        .parse()
        .map_err(|e| bad(format!("{given:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
        return Err(bad(format!(
            "{given:?} is not an http:// or https:// URL with a host"
        )));
    }
    // The signal's path is appended to the generic endpoint for HTTP only (OTLP exporter
    // specification, "Endpoint URLs for OTLP/HTTP").
    let endpoint = if key == "otlp_endpoint" && protocol == OtlpProtocol::HttpProtobuf {
        let url = format!("{}{path}", given.trim_end_matches('/'));
        url.parse()
            .map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?
    } else {
        parsed
    };
    let ca_certificates = match &s.certificate {
        None => None,
        Some(path) => Some(
            read_certificates(path).map_err(|problem| ConfigError::Invalid {
                key: "otlp_certificate",
                problem,
            })?,
        ),
    };
    let headers = key_values(s.headers.as_deref().unwrap_or(""))
        .map_err(|problem| ConfigError::Invalid {
            key: "otlp_headers",
            problem,
        })?
        .into_iter()
        .map(|(k, v)| {
            let name = http::HeaderName::from_bytes(k.as_bytes());
            let value = http::HeaderValue::from_str(&v);
            match (name, value) {
                (Ok(n), Ok(v)) => Ok((n, v)),
                // Never the value: headers carry API keys.
                _ => Err(ConfigError::Invalid {
                    key: "otlp_headers",
                    problem: format!("header {k:?} is not a valid HTTP header"),
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gzip = match blank(&s.compression).as_deref() {
        None | Some("none") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "otlp_compression",
                problem: format!("{other:?} is not gzip or none"),
            })
        }
    };
    let resource = key_values(s.resource.as_deref().unwrap_or("")).map_err(|problem| {
        ConfigError::Invalid {
            key: "resource_attributes",
            problem,
        }
    })?;
    let timeout = Duration::from_millis(s.timeout_ms.unwrap_or(10_000).max(1));
    Ok(Some(ExportOptions {
        endpoint,
        protocol,
        headers,
        timeout,
        gzip,
        batch_size: 512,
        batch_delay: Duration::from_millis(s.batch_delay_ms.unwrap_or(1000)),
        retry_budget: Duration::from_secs(30),
        resource,
        ca_certificates,
        local_zone: std::sync::Arc::new(|| None),
    }))
}

/// Spans are on when a traces endpoint (or the generic one) is set.
fn spans_config(s: &SpanSettings) -> Result<Option<SpansConfig>, ConfigError> {
    let Some(export) = export_options(
        s,
        ("otlp_traces_endpoint", &s.traces_endpoint),
        "/v1/traces",
    )?
    else {
        return Ok(None);
    };
    let blank = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let exporter_addresses = endpoint_addresses(&export.endpoint);
    let sampler = match blank(&s.sampler) {
        None => Sampler::default(),
        Some(name) => Sampler::parse(&name, blank(&s.sampler_arg).as_deref()).map_err(|e| {
            ConfigError::Invalid {
                key: "traces_sampler",
                problem: e.to_string(),
            }
        })?,
    };
    let queue_size = s
        .queue_size
        .unwrap_or(crate::signals::spans::DEFAULT_QUEUE_SIZE);
    if queue_size == 0 {
        return Err(ConfigError::Invalid {
            key: "spans_queue_size",
            problem: "must be at least 1".into(),
        });
    }
    Ok(Some(SpansConfig {
        spans: SpanOptions {
            sampler,
            slow_threshold: s.slow_ms.map_or(
                crate::signals::spans::DEFAULT_SLOW_THRESHOLD,
                Duration::from_millis,
            ),
            queue_size,
            exporter_addresses,
        },
        export,
    }))
}

/// Metrics are pushed when a metrics endpoint (or the generic one) is set.
fn metrics_export_config(s: &SpanSettings) -> Result<Option<MetricsExportConfig>, ConfigError> {
    let Some(export) = export_options(
        s,
        ("otlp_metrics_endpoint", &s.metrics_endpoint),
        "/v1/metrics",
    )?
    else {
        return Ok(None);
    };
    let interval = s.metric_export_interval_ms.unwrap_or(60_000);
    if interval == 0 {
        return Err(ConfigError::Invalid {
            key: "metric_export_interval",
            problem: "must be at least 1 millisecond".into(),
        });
    }
    let delta = match s
        .metrics_temporality
        .as_deref()
        .map(|t| t.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("cumulative") => false,
        // Low memory asks for delta on synchronous counters and histograms: every
        // counter and histogram the agent has (OTLP metrics exporter specification).
        Some("delta") | Some("lowmemory") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "otlp_metrics_temporality",
                problem: format!("{other:?} is not cumulative, delta or lowmemory"),
            })
        }
    };
    Ok(Some(MetricsExportConfig {
        export,
        interval: Duration::from_millis(interval),
        delta,
    }))
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The socket addresses of an `http://` endpoint whose host is an address or
/// `localhost` (a name is not resolved: its traffic then makes spans like any other).
fn endpoint_addresses(endpoint: &http::Uri) -> Vec<SocketAddr> {
    let Some(host) = endpoint.host() else {
        return Vec::new();
    };
    let port = endpoint.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host {
        "localhost" => vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ],
        ip => ip
            .parse::<std::net::IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .unwrap_or_default(),
    }
}

/// `key=value,key2=value2` with URL-encoded values, as the OTel variables write lists
/// (W3C Baggage's format, without properties).
fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                format!(
                    "{:?} is not key=value",
                    item.split('=').next().unwrap_or("")
                )
            })?;
            let key = k.trim();
            if key.is_empty() {
                return Err("an empty key".to_owned());
            }
            let value = percent_decode(v.trim())
                .ok_or_else(|| format!("the value of {key:?} is not valid URL encoding"))?;
            Ok((key.to_owned(), value))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

    #[test]
    fn metrics_are_pushed_with_a_metrics_or_generic_endpoint() {
        assert!(from_toml("").unwrap().metrics_export.is_none());
        // A traces endpoint alone pushes no metrics.
        let c = from_toml("otlp_traces_endpoint = \"http://b:2/v1/traces\"\n").unwrap();
        assert!(c.metrics_export.is_none() && c.spans.is_some());
        let c = from_toml("otlp_endpoint = \"http://a:4318/\"\n").unwrap();
        let push = c.metrics_export.expect("metrics pushed");
        assert_eq!(push.export.endpoint.to_string(), "http://a:4318/v1/metrics");
        assert_eq!(
            (push.interval, push.delta),
            (Duration::from_secs(60), false)
        );
        // The metrics endpoint alone: as given, and spans stay off.
        let c = from_toml(
            "otlp_metrics_endpoint = \"http://m:9/push\"\nmetric_export_interval = 500\n\
             otlp_metrics_temporality = \"Delta\"\n",
        )
        .unwrap();
        assert!(c.spans.is_none());
        let push = c.metrics_export.expect("metrics pushed");
        assert_eq!(push.export.endpoint.to_string(), "http://m:9/push");
        assert_eq!(
            (push.interval, push.delta),
            (Duration::from_millis(500), true)
        );
        for (text, start) in [
            (
                "otlp_endpoint = \"http://x\"\notlp_metrics_temporality = \"sometimes\"",
                "bad value for otlp_metrics_temporality",
            ),
            (
                "otlp_metrics_endpoint = \"http://x\"\nmetric_export_interval = 0",
                "bad value for metric_export_interval",
            ),
        ] {
            let e = from_toml(text).unwrap_err().to_string();
            assert!(e.starts_with(start), "{text}: {e}");
        }
    }

    #[test]
    fn spans_are_on_with_an_endpoint_and_follow_the_otel_rules() {
        assert!(from_toml("").unwrap().spans.is_none());
        let c = from_toml(
            "otlp_endpoint = \"http://127.0.0.1:4318/\"\notlp_headers = \"api-key=a%3Db, x-team = core\"\n\
             otlp_compression = \"gzip\"\ntraces_sampler = \"parentbased_traceidratio\"\n\
             traces_sampler_arg = \"0.25\"\nspans_slow_threshold = 250\n",
        )
        .unwrap();
        let spans = c.spans.expect("spans on");
        assert_eq!(
            spans.export.endpoint.to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(spans.export.protocol, OtlpProtocol::HttpProtobuf);
        let headers: Vec<(String, String)> = spans
            .export
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("api-key".to_owned(), "a=b".to_owned()),
                ("x-team".to_owned(), "core".to_owned())
            ]
        );
        assert!(spans.export.gzip);
        assert_eq!(
            spans.spans.sampler,
            Sampler::ParentBased(crate::signals::spans::sampler::Root::TraceIdRatio(0.25))
        );
        assert_eq!(spans.spans.slow_threshold, Duration::from_millis(250));
        assert_eq!(
            spans.spans.exporter_addresses,
            vec!["127.0.0.1:4318".parse::<SocketAddr>().unwrap()]
        );
        // gRPC: the generic endpoint as given; the traces endpoint wins over it.
        let cli = Cli::try_parse_from([
            "nodetap",
            "--otlp-endpoint",
            "http://collector:4317",
            "--otlp-protocol",
            "grpc",
        ])
        .unwrap();
        let spans = Config::merge(cli, Settings::default())
            .unwrap()
            .spans
            .unwrap();
        assert_eq!(spans.export.endpoint.to_string(), "http://collector:4317/");
        assert!(spans.spans.exporter_addresses.is_empty());
        assert!(spans.export.ca_certificates.is_none());
        let c = from_toml(
            "otlp_endpoint = \"http://a:1\"\notlp_traces_endpoint = \"http://b:2/traces\"\n",
        )
        .unwrap();
        assert_eq!(
            c.spans.unwrap().export.endpoint.to_string(),
            "http://b:2/traces"
        );
        for (text, start) in [
            ("otlp_endpoint = \"ftp://x\"", "bad value for otlp_endpoint"),
            (
                "otlp_endpoint = \"http://x\"\notlp_protocol = \"thrift\"",
                "bad value for otlp_protocol",
            ),
            (
                "otlp_endpoint = \"http://x\"\ntraces_sampler = \"sometimes\"",
                "bad value for traces_sampler",
            ),
            (
                "otlp_endpoint = \"http://x\"\notlp_compression = \"zstd\"",
                "bad value for otlp_compression",
            ),
            (
                "otlp_endpoint = \"http://x\"\notlp_headers = \"novalue\"",
                "bad value for otlp_headers",
            ),
        ] {
            let err = from_toml(text).unwrap_err();
            assert!(err.starts_with(start), "{text}: {err}");
        }
    }
}
