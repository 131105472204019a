//! The agent's metric families, in one place, and their text exposition.
//!
//! Families are registered with prometheus-client, which writes OpenMetrics text; the
//! endpoint serves the Prometheus text format 0.0.4 instead (what node_exporter serves and
//! every scraper reads), so [`to_prometheus_text`] converts the few lines that differ.

use std::fmt;

use crate::metadata::workload::{Name, PeerZone, WorkloadLabels};
use crate::protocols::route::{RouteBudget, RoutePatterns};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge,
        info::Info,
    },
    registry::{Registry, Unit},
};

/// Latency buckets in seconds: from 50 µs (a Redis GET on a fast host) to 10 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

mod histogram;

pub use histogram::{AtomicHistogram, DurationHistogram};

/// Request durations without exemplars (the agent keeps no spans).
fn latency_histogram() -> DurationHistogram {
    DurationHistogram::Atomic(AtomicHistogram::new(&LATENCY_BUCKETS))
}

/// Request durations whose buckets keep the kept spans' exemplars.
fn latency_histogram_with_exemplars() -> DurationHistogram {
    DurationHistogram::WithExemplars(HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter()))
}

/// The span a duration observation belongs to, when the spans signal kept (sampled and
/// queued) it: exposed as the bucket's exemplar on the OpenMetrics endpoint, so a
/// dashboard panel links to the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanExemplar {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// When the request ended, wall clock (the exemplar's timestamp).
    pub end_unix_ns: u64,
}

impl SpanExemplar {
    pub(crate) fn timestamp(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.end_unix_ns)
    }
}

/// `trace_id` and `span_id` in lower-case hex, the names OpenMetrics exemplars and
/// Prometheus's trace links use. Written straight from the bytes: nothing allocated.
impl EncodeLabelSet for SpanExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        fn label(encoder: &mut LabelSetEncoder, key: &str, id: &[u8]) -> fmt::Result {
            use fmt::Write;
            let mut label = encoder.encode_label();
            let mut key_encoder = label.encode_label_key()?;
            key_encoder.write_str(key)?;
            let mut value = key_encoder.encode_label_value()?;
            for byte in id {
                write!(value, "{byte:02x}")?;
            }
            value.finish()
        }
        label(encoder, "trace_id", &self.trace_id)?;
        label(encoder, "span_id", &self.span_id)
    }
}

/// One observation, with an exemplar where the histogram keeps them.
pub trait Observe {
    fn observe_with(&self, value: f64, exemplar: Option<&SpanExemplar>);
}

/// Body size buckets in bytes: empty, then powers of four from 64 B to 64 MiB.
pub const SIZE_BUCKETS: [f64; 12] = [
    0.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

fn size_histogram() -> AtomicHistogram {
    AtomicHistogram::new(&SIZE_BUCKETS)
}

pub type Histograms<L, M = AtomicHistogram> = Family<L, M, fn() -> M>;

/// Most series one request-metric family may hold, by default. Label values come from
/// closed sets, but their product (operations x errors x servers x services) is still
/// unbounded on a busy node; past the limit new series are dropped and counted.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: &'static str,
}

/// A histogram family with a series limit. Only the event reader creates series, so
/// the check-then-create below does not race with itself.
pub struct LimitedHistograms<
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
    M = AtomicHistogram,
> {
    pub family: Histograms<L, M>,
    name: &'static str,
    created: std::sync::atomic::AtomicUsize,
    limit: usize,
    dropped: Family<FamilyLabels, Counter>,
}

impl<L, M> LimitedHistograms<L, M>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
    M: Observe,
{
    fn new(
        name: &'static str,
        limit: usize,
        dropped: Family<FamilyLabels, Counter>,
        buckets: fn() -> M,
    ) -> Self {
        Self {
            family: Family::new_with_constructor(buckets),
            name,
            created: std::sync::atomic::AtomicUsize::new(0),
            limit,
            dropped,
        }
    }

    /// Records `value` in the series `labels`, unless that would be a new series past the
    /// limit: then the observation is dropped and counted.
    pub fn observe(&self, labels: &L, value: f64) {
        self.observe_with(labels, value, None);
    }

    /// [`Self::observe`] with the kept span the observation belongs to, if any.
    pub fn observe_with(&self, labels: &L, value: f64, exemplar: Option<&SpanExemplar>) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(h) = self.family.get(labels) {
            h.observe_with(value, exemplar);
            return;
        }
        if self.created.load(Relaxed) >= self.limit {
            self.dropped
                .get_or_create(&FamilyLabels { family: self.name })
                .inc();
            return;
        }
        self.created.fetch_add(1, Relaxed);
        self.family
            .get_or_create(labels)
            .observe_with(value, exemplar);
    }
}

/// Labels of `db_{client,server}_operation_duration_seconds` (OpenTelemetry database
/// semantic conventions, Prometheus-style names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub db_system_name: &'static str,
    pub db_operation_name: &'static str,
    /// Empty on success.
    pub error_type: Option<String>,
    pub server_address: Name,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub peer: PeerZone,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// Labels of the `http_{client,server}_request_*` families (OpenTelemetry HTTP semantic
/// conventions, Prometheus-style names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    pub http_route: String,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub peer: PeerZone,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// Labels of `rpc_{client,server}_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_system: &'static str,
    pub rpc_service: String,
    pub rpc_method: String,
    pub rpc_grpc_status_code: u32,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub peer: PeerZone,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpBytesLabels {
    pub direction: &'static str,
    pub role: &'static str,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpSyscallLabels {
    pub direction: &'static str,
    pub role: &'static str,
    pub syscall: &'static str,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub role: &'static str,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// `nodetap_network_{bytes,packets}_total`: who, which way, between which zones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    pub direction: &'static str,
    pub src_zone: Name,
    pub dst_zone: Name,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolReasonLabels {
    pub protocol: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeRunLabels {
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
    pub required: &'static str,
}

/// Every family the agent serves (node collectors add theirs at encode time).
pub struct Metrics {
    registry: Registry,
    pub tcp_bytes: Family<TcpBytesLabels, Counter>,
    pub tcp_syscalls: Family<TcpSyscallLabels, Counter>,
    pub tcp_opened: Family<ConnectionLabels, Counter>,
    pub tcp_closed: Family<ConnectionLabels, Counter>,
    pub events: Family<KindLabels, Counter>,
    pub events_lost: Family<ReasonLabels, Counter>,
    pub events_undecodable: Counter,
    pub connections_tracked: Gauge,
    pub connections_expired: Counter,
    pub connections_untracked: Counter,
    pub capture_degraded: Gauge,
    pub capture_degraded_connections: Counter,
    pub ringbuf_waiting: Gauge,
    pub ringbuf_size: Gauge,
    pub probe_attached: Family<ProbeLabels, Gauge>,
    pub probe_runs_missed: Family<ProbeRunLabels, Counter>,
    pub capture_info: Family<TierLabels, Gauge>,
    pub capture_states: Counter,
    pub capture_non_tcp: Counter,
    pub db_client_duration: LimitedHistograms<DbLabels, DurationHistogram>,
    pub db_server_duration: LimitedHistograms<DbLabels, DurationHistogram>,
    pub http_client_duration: LimitedHistograms<HttpLabels, DurationHistogram>,
    pub http_server_duration: LimitedHistograms<HttpLabels, DurationHistogram>,
    pub http_client_request_size: LimitedHistograms<HttpLabels>,
    pub http_client_response_size: LimitedHistograms<HttpLabels>,
    pub http_server_request_size: LimitedHistograms<HttpLabels>,
    pub http_server_response_size: LimitedHistograms<HttpLabels>,
    pub rpc_client_duration: LimitedHistograms<RpcLabels, DurationHistogram>,
    pub rpc_server_duration: LimitedHistograms<RpcLabels, DurationHistogram>,
    pub series_dropped: Family<FamilyLabels, Counter>,
    /// Learned route bounds per service (side, server port, workload); see
    /// [`crate::protocols::route`].
    pub http_routes: std::sync::Mutex<RouteBudget<(bool, u16, WorkloadLabels)>>,
    pub http_route_collapses: Family<ReasonLabels, Counter>,
    pub protocol_connections: Family<ProtocolLabels, Counter>,
    pub protocol_parse_errors: Family<ProtocolLabels, Counter>,
    pub protocol_stopped: Family<ProtocolReasonLabels, Counter>,
    pub protocol_requests_lost: Family<ProtocolReasonLabels, Counter>,
    pub protocol_timed_out: Family<ProtocolLabels, Counter>,
    pub network_bytes: Family<NetworkLabels, Counter>,
    pub network_packets: Family<NetworkLabels, Counter>,
    pub network_overflow_bytes: Family<DirectionLabels, Counter>,
    pub network_overflow_packets: Family<DirectionLabels, Counter>,
    pub network_flows: Gauge,
    pub network_flow_capacity: Gauge,
    pub kubernetes_pods: Gauge,
    pub kubernetes_nodes: Gauge,
    pub kubernetes_watch_errors: Counter,
    pub zone_info: Family<ZoneInfoLabels, Gauge>,
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabels, Counter>,
    pub spans_not_sampled: Counter,
    pub spans_export_failures: Counter,
    pub metrics_export_failures: Counter,
}

/// Registers each family as it is made, so a family's name, help and handle are written
/// once, side by side.
struct Registrar<'a> {
    registry: &'a mut Registry,
    series_limit: usize,
    series_dropped: Family<FamilyLabels, Counter>,
}

impl Registrar<'_> {
    fn add<M: prometheus_client::registry::Metric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        metric: M,
    ) -> M {
        self.registry.register(name, help, metric.clone());
        metric
    }

    /// A histogram family under the series limit. `name` is the exposed name, unit suffix
    /// included (prometheus-client appends it to what it is given).
    fn histograms<L, M>(
        &mut self,
        name: &'static str,
        unit: Unit,
        help: &str,
        buckets: fn() -> M,
    ) -> LimitedHistograms<L, M>
    where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
        M: Observe
            + prometheus_client::encoding::EncodeMetric
            + prometheus_client::metrics::TypedMetric
            + fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let suffix = format!("_{}", unit.as_str());
        let base = name
            .strip_suffix(suffix.as_str())
            .expect("a histogram's name ends in its unit");
        let h = LimitedHistograms::new(
            name,
            self.series_limit,
            self.series_dropped.clone(),
            buckets,
        );
        self.registry
            .register_with_unit(base, help, unit, h.family.clone());
        h
    }
}

/// The HTTP histograms of one side of the conversation.
pub struct HttpFamilies<'a> {
    pub duration: &'a LimitedHistograms<HttpLabels, DurationHistogram>,
    pub request_size: &'a LimitedHistograms<HttpLabels>,
    pub response_size: &'a LimitedHistograms<HttpLabels>,
}

/// The client family of a pair for a client's observation, the server one otherwise.
fn by_role<'a, T>(role: agent_common::Role, client: &'a T, server: &'a T) -> &'a T {
    match role {
        agent_common::Role::Client => client,
        agent_common::Role::Server | agent_common::Role::Unknown => server,
    }
}

impl Metrics {
    /// `db_{client,server}_operation_duration_seconds` by the observing side's role.
    pub fn db_duration(
        &self,
        role: agent_common::Role,
    ) -> &LimitedHistograms<DbLabels, DurationHistogram> {
        by_role(role, &self.db_client_duration, &self.db_server_duration)
    }

    /// `rpc_{client,server}_call_duration_seconds` by the observing side's role.
    pub fn rpc_duration(
        &self,
        role: agent_common::Role,
    ) -> &LimitedHistograms<RpcLabels, DurationHistogram> {
        by_role(role, &self.rpc_client_duration, &self.rpc_server_duration)
    }

    /// The `http_{client,server}_*` histograms by the observing side's role.
    pub fn http(&self, role: agent_common::Role) -> HttpFamilies<'_> {
        HttpFamilies {
            duration: by_role(role, &self.http_client_duration, &self.http_server_duration),
            request_size: by_role(
                role,
                &self.http_client_request_size,
                &self.http_server_request_size,
            ),
            response_size: by_role(
                role,
                &self.http_client_response_size,
                &self.http_server_response_size,
            ),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneInfoLabels {
    pub zone: String,
    pub source: &'static str,
}

impl Metrics {
    /// Routes bounded per service at `limit`, the user's `patterns` passing unchanged.
    pub fn with_route_limit(self, limit: usize, patterns: std::sync::Arc<RoutePatterns>) -> Self {
        *self.http_routes.lock().unwrap_or_else(|p| p.into_inner()) =
            RouteBudget::new(limit, patterns);
        self
    }

    /// `labels` with its route bounded by the learned per-service budget; a collapse is
    /// counted, and its counter returned. A route once bounded is bounded the same way
    /// ever after (the budget only learns), so a caller may keep the result and count
    /// the collapse again itself.
    pub fn bound_http_route(
        &self,
        client_side: bool,
        labels: &HttpLabels,
    ) -> (HttpLabels, Option<Counter>) {
        let service = (client_side, labels.server_port, labels.workload.clone());
        let mut routes = self.http_routes.lock().unwrap_or_else(|p| p.into_inner());
        let (route, collapse) = routes.bound(service, &labels.http_route);
        let counter = collapse.map(|c| {
            let counter = self
                .http_route_collapses
                .get_or_create(&ReasonLabels { reason: c.label() })
                .clone();
            counter.inc();
            counter
        });
        let labels = HttpLabels {
            http_route: route.into_owned(),
            ..labels.clone()
        };
        (labels, counter)
    }

    pub fn new(version: &str) -> Self {
        Self::with_series_limit(version, DEFAULT_SERIES_LIMIT)
    }

    /// With exemplars on the duration histograms (see [`Self::with_options`]).
    pub fn with_series_limit(version: &str, series_limit: usize) -> Self {
        Self::with_options(version, series_limit, true)
    }

    /// `exemplars`: whether the duration histograms keep the kept spans' exemplars (the
    /// agent keeps spans); without, they take no lock per observation.
    pub fn with_options(version: &str, series_limit: usize, exemplars: bool) -> Self {
        let latency: fn() -> DurationHistogram = if exemplars {
            latency_histogram_with_exemplars
        } else {
            latency_histogram
        };
        let mut registry = Registry::default();
        let series_dropped = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "nodetap_build",
            "nodetap build information",
            Info::new(vec![("version", version.to_owned())]),
        );
        // Each family is registered where it is made, in exposition order.
        let mut reg = Registrar {
            registry: &mut registry,
            series_limit,
            series_dropped: series_dropped.clone(),
        };
        let m = Metrics {
            tcp_bytes: reg.add(
                "nodetap_tcp_bytes",
                "Bytes moved by TCP socket syscalls (their return values), by the process that made them",
                Family::default(),
            ),
            tcp_syscalls: reg.add(
                "nodetap_tcp_syscalls",
                "TCP socket data syscalls that moved at least one byte",
                Family::default(),
            ),
            tcp_opened: reg.add(
                "nodetap_tcp_connections_opened",
                "TCP connections opened by connect (client) or accept (server)",
                Family::default(),
            ),
            tcp_closed: reg.add(
                "nodetap_tcp_connections_closed",
                "Tracked TCP connections that reached TCP_CLOSE",
                Family::default(),
            ),
            events: reg.add(
                "nodetap_events",
                "Events received from the kernel, by kind",
                Family::default(),
            ),
            events_lost: reg.add(
                "nodetap_events_lost",
                "Kernel events lost (ringbuf_full, pending_map_full, socket_unreadable) or sent without payload (payload_unreadable), by reason",
                Family::default(),
            ),
            events_undecodable: reg.add(
                "nodetap_events_undecodable",
                "Ring buffer records that did not decode as events",
                Counter::default(),
            ),
            connections_tracked: reg.add(
                "nodetap_connections_tracked",
                "TCP connections in the agent's connection table",
                Gauge::default(),
            ),
            connections_expired: reg.add(
                "nodetap_connections_expired",
                "Connections removed from the table after being idle (their close was not seen)",
                Counter::default(),
            ),
            connections_untracked: reg.add(
                "nodetap_connections_untracked",
                "Connections not added to the table because it was full (their bytes are still counted)",
                Counter::default(),
            ),
            capture_degraded: reg.add(
                "nodetap_capture_degraded",
                "1 while the agent is over its CPU budget and new connections are counted, not parsed",
                Gauge::default(),
            ),
            capture_degraded_connections: reg.add(
                "nodetap_capture_degraded_connections",
                "Connections counted but not parsed because the agent was over its CPU budget (their bytes are still counted)",
                Counter::default(),
            ),
            ringbuf_waiting: reg.add(
                "nodetap_ringbuf_waiting_bytes",
                "Bytes waiting in the event ring buffers (all CPUs), read every second",
                Gauge::default(),
            ),
            ringbuf_size: reg.add(
                "nodetap_ringbuf_size_bytes",
                "Size of the event ring buffers (all CPUs) together",
                Gauge::default(),
            ),
            probe_attached: reg.add(
                "nodetap_probe_attached",
                "1 if the kernel hook attached at start-up, 0 if not",
                Family::default(),
            ),
            probe_runs_missed: reg.add(
                "nodetap_probe_runs_missed",
                "Runs of the kernel hook's program that the kernel skipped because another tracing program was running on that CPU (a skipped syscall exit loses that call's bytes; a skipped inet_sock_set_state a role or a close)",
                Family::default(),
            ),
            db_client_duration: reg.histograms(
                "db_client_operation_duration_seconds",
                Unit::Seconds,
                "Duration of database operations seen from the client: first request byte written to last response byte read",
                latency,
            ),
            db_server_duration: reg.histograms(
                "db_server_operation_duration_seconds",
                Unit::Seconds,
                "Duration of database operations seen from the server: first request byte read to last response byte written",
                latency,
            ),
            http_client_duration: reg.histograms(
                "http_client_request_duration_seconds",
                Unit::Seconds,
                "Duration of HTTP requests seen from the client: first request byte written to last response byte read",
                latency,
            ),
            http_server_duration: reg.histograms(
                "http_server_request_duration_seconds",
                Unit::Seconds,
                "Duration of HTTP requests seen from the server: first request byte read to last response byte written",
                latency,
            ),
            http_client_request_size: reg.histograms(
                "http_client_request_body_size_bytes",
                Unit::Bytes,
                "Size of HTTP request bodies sent by clients",
                size_histogram,
            ),
            http_client_response_size: reg.histograms(
                "http_client_response_body_size_bytes",
                Unit::Bytes,
                "Size of HTTP response bodies received by clients",
                size_histogram,
            ),
            http_server_request_size: reg.histograms(
                "http_server_request_body_size_bytes",
                Unit::Bytes,
                "Size of HTTP request bodies received by servers",
                size_histogram,
            ),
            http_server_response_size: reg.histograms(
                "http_server_response_body_size_bytes",
                Unit::Bytes,
                "Size of HTTP response bodies sent by servers",
                size_histogram,
            ),
            rpc_client_duration: reg.histograms(
                "rpc_client_call_duration_seconds",
                Unit::Seconds,
                "Duration of gRPC calls seen from the client: stream open to stream end",
                latency,
            ),
            rpc_server_duration: reg.histograms(
                "rpc_server_call_duration_seconds",
                Unit::Seconds,
                "Duration of gRPC calls seen from the server: stream open to stream end",
                latency,
            ),
            capture_info: reg.add(
                "nodetap_capture_info",
                "The capture tier in force: socket (sock_send/recv_length tracepoints) or syscall (syscall tracepoints); always 1",
                Family::default(),
            ),
            capture_states: reg.add(
                "nodetap_capture_connection_states",
                "TCP connections the kernel side started keeping exact counters for",
                Counter::default(),
            ),
            capture_non_tcp: reg.add(
                "nodetap_capture_non_tcp_sockets",
                "Non-TCP sockets (Unix, UDP) the kernel side marked once so that their calls cost one lookup",
                Counter::default(),
            ),
            series_dropped: reg.add(
                "nodetap_series_dropped",
                "Observations dropped because their series would pass the family's series limit",
                series_dropped.clone(),
            ),
            http_routes: std::sync::Mutex::new(RouteBudget::new(
                crate::protocols::route::DEFAULT_ROUTE_LIMIT,
                Default::default(),
            )),
            http_route_collapses: reg.add(
                "nodetap_http_route_collapses",
                "HTTP requests recorded under a learned route instead of their own, by reason: placeholder (a path segment with many values under one prefix became {param}), limit (the service had its limit of routes: _OTHER)",
                Family::default(),
            ),
            protocol_connections: reg.add(
                "nodetap_protocol_connections",
                "Connections recognised per protocol from their first client bytes (tls and unknown are not parsed)",
                Family::default(),
            ),
            protocol_parse_errors: reg.add(
                "nodetap_protocol_parse_errors",
                "Times a protocol parser lost the message framing of a connection",
                Family::default(),
            ),
            protocol_stopped: reg.add(
                "nodetap_protocol_connections_stopped",
                "Connections whose parsing stopped for good, by reason: replication (Redis SYNC), upgrade (HTTP 101 or CONNECT), hpack_desync (HTTP/2 bytes lost)",
                Family::default(),
            ),
            protocol_requests_lost: reg.add(
                "nodetap_protocol_requests_lost",
                "Requests that happened but no operation reports, by reason: capture_gap (bytes the parser needed were not copied), unparsable, queue_full, stopped",
                Family::default(),
            ),
            protocol_timed_out: reg.add(
                "nodetap_protocol_requests_timed_out",
                "Requests that never got a response (expired, dropped on lost framing, or open at close)",
                Family::default(),
            ),
            network_bytes: reg.add(
                "nodetap_network_bytes",
                "IP bytes on the wire (headers included, each segment of a GSO/GRO packet counted) sent or received by a workload's sockets, by zone pair",
                Family::default(),
            ),
            network_packets: reg.add(
                "nodetap_network_packets",
                "IP packets on the wire sent or received by a workload's sockets, by zone pair",
                Family::default(),
            ),
            network_overflow_bytes: reg.add(
                "nodetap_network_overflow_bytes",
                "IP bytes counted while the kernel flow table was full, so without workload or zone",
                Family::default(),
            ),
            network_overflow_packets: reg.add(
                "nodetap_network_overflow_packets",
                "IP packets counted while the kernel flow table was full, so without workload or zone",
                Family::default(),
            ),
            network_flows: reg.add(
                "nodetap_network_flows",
                "Distinct flows (cgroup, local and remote address, direction) in the last drain of the kernel flow table",
                Gauge::default(),
            ),
            network_flow_capacity: reg.add(
                "nodetap_network_flow_capacity",
                "Entries each kernel flow table holds",
                Gauge::default(),
            ),
            kubernetes_pods: reg.add(
                "nodetap_kubernetes_pods",
                "Pods of this node known from the Kubernetes API",
                Gauge::default(),
            ),
            kubernetes_nodes: reg.add(
                "nodetap_kubernetes_nodes",
                "Nodes known from the Kubernetes API",
                Gauge::default(),
            ),
            kubernetes_watch_errors: reg.add(
                "nodetap_kubernetes_watch_errors",
                "Errors of the Kubernetes pod and node watches (each followed by a retry)",
                Counter::default(),
            ),
            zone_info: reg.add(
                "nodetap_zone_info",
                "This node's availability zone and where it came from (config, node_label, imds, unknown)",
                Family::default(),
            ),
            spans_exported: reg.add(
                "nodetap_spans_exported",
                "Spans the OTLP endpoint accepted",
                Counter::default(),
            ),
            spans_dropped: reg.add(
                "nodetap_spans_dropped",
                "Sampled spans that were never exported, by reason: queue_full (the export queue was full; capture never waits), export_failed (retries gave up or the endpoint refused them for good), rejected (the endpoint reported them rejected)",
                Family::default(),
            ),
            spans_not_sampled: reg.add(
                "nodetap_spans_not_sampled",
                "Spans the sampler left out (neither an error, nor slow, nor picked by the sampler)",
                Counter::default(),
            ),
            spans_export_failures: reg.add(
                "nodetap_spans_export_failures",
                "Export attempts to the OTLP endpoint that failed (each retry counts)",
                Counter::default(),
            ),
            metrics_export_failures: reg.add(
                "nodetap_metrics_export_failures",
                "Metric pushes to the OTLP endpoint that failed (each retry counts)",
                Counter::default(),
            ),
            registry: Registry::default(),
        };
        Metrics { registry, ..m }
    }

    /// The whole exposition in Prometheus text format 0.0.4 (no exemplars: the format
    /// has none).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        let mut writer = PrometheusTextWriter::new(&mut text);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut writer, &self.registry);
        writer.finish();
        text
    }

    /// The agent's families in OpenMetrics text 1.0.0, exemplars included, without the
    /// closing `# EOF` (the endpoint adds the node collectors' families first).
    pub fn encode_open_metrics(&self) -> String {
        let mut open_metrics = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut open_metrics, &self.registry);
        if let Some(body) = open_metrics.strip_suffix("# EOF\n") {
            open_metrics.truncate(body.len());
        }
        open_metrics
    }
}

/// Converts prometheus-client's OpenMetrics text to the Prometheus text format 0.0.4:
/// counters' HELP/TYPE lines name the `_total` series, `info` becomes a gauge named
/// `_info`, `unknown` becomes `untyped`, and UNIT/EOF lines go.
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut writer = PrometheusTextWriter::new(&mut out);
    // Writing to a String cannot fail.
    let _ = fmt::Write::write_str(&mut writer, open_metrics);
    writer.finish();
    out
}

/// [`to_prometheus_text`] as the OpenMetrics text is written, line by line: a scrape then
/// holds its text once, not in both formats at once (at the series limits each is
/// about 170 MB, and a scrape held 400 MB at its peak).
pub struct PrometheusTextWriter<'a> {
    out: &'a mut String,
    /// The start of a line whose end has not been written yet.
    partial: String,
    /// A HELP line's name and text, written once its TYPE line says the series' name.
    pending_help: Option<(String, String)>,
}

impl<'a> PrometheusTextWriter<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Self {
            out,
            partial: String::new(),
            pending_help: None,
        }
    }

    /// Converts a last line that had no newline.
    pub fn finish(mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        // As `str::lines` splits: a line's own trailing carriage return goes.
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            self.pending_help = Some((name.to_owned(), text.to_owned()));
            return;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (series, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((help_name, text)) = self.pending_help.take() {
                if help_name == name {
                    self.out.push_str(&format!("# HELP {series} {text}\n"));
                }
            }
            self.out.push_str(&format!("# TYPE {series} {kind}\n"));
            return;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            return;
        }
        self.out.push_str(without_exemplar(line));
        self.out.push('\n');
    }
}

impl fmt::Write for PrometheusTextWriter<'_> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while let Some(end) = s.find('\n') {
            if self.partial.is_empty() {
                self.line(&s[..end]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.push_str(&s[..end]);
                self.line(&line);
                // Keep the allocation for the next partial line.
                line.clear();
                self.partial = line;
            }
            s = &s[end + 1..];
        }
        self.partial.push_str(s);
        Ok(())
    }
}

/// A bucket line without its OpenMetrics exemplar (` # {trace_id="..",span_id=".."} value
/// timestamp`): only the agent's own exemplars are recognised, so a label value that
/// happens to hold ` # {` is left alone.
fn without_exemplar(line: &str) -> &str {
    match line.rfind(" # {trace_id=\"") {
        Some(at) if line[..at].contains("_bucket{") => &line[..at],
        _ => line,
    }
}

/// The node collectors' Prometheus text 0.0.4 as OpenMetrics 1.0.0 lines: a counter's
/// HELP/TYPE name loses its `_total` (OpenMetrics names the family, the sample keeps the
/// suffix), a counter whose samples lack `_total` becomes `unknown` (OpenMetrics would
/// otherwise rename its samples), `untyped` becomes `unknown`.
pub fn prometheus_text_to_open_metrics(text: &str, out: &mut String) {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    for line in text.lines() {
        let (prefix, rest) = if let Some(rest) = line.strip_prefix("# HELP ") {
            ("# HELP ", rest)
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            ("# TYPE ", rest)
        } else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let counter = counters.contains(name);
        let (name, tail) = match (counter, name.strip_suffix("_total")) {
            (true, Some(family)) => (family, tail),
            (true, None) if prefix == "# TYPE " => (name, "unknown"),
            _ if prefix == "# TYPE " && tail == "untyped" => (name, "unknown"),
            _ => (name, tail),
        };
        out.push_str(prefix);
        out.push_str(name);
        out.push(' ');
        out.push_str(tail);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_converter_gives_the_same_text_however_its_input_is_cut() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\n\
                  a_bytes_total{x=\"1\"} 5\n# HELP b Info.\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                  # HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1 # {trace_id=\"ab\",span_id=\"cd\"} 0.1 1.0\n\
                  h_sum 0.5\r\nh_count 1\n# EOF\nlast";
        let whole = to_prometheus_text(om);
        proptest::proptest!(|(mut cuts in proptest::collection::vec(0..om.len(), 0..12))| {
            cuts.sort_unstable();
            let mut out = String::new();
            let mut writer = PrometheusTextWriter::new(&mut out);
            let mut from = 0;
            for cut in cuts.into_iter().chain([om.len()]) {
                fmt::Write::write_str(&mut writer, &om[from..cut]).unwrap();
                from = cut;
            }
            writer.finish();
            proptest::prop_assert_eq!(&out, &whole);
        });
        // And the agent's own families, encoded straight into the converter.
        let m = Metrics::new("test");
        let labels = HttpLabels {
            http_request_method: "GET",
            http_response_status_code: 200,
            http_route: "/a".into(),
            server_port: 80,
            peer: PeerZone::default(),
            workload: WorkloadLabels::service(Name::new("s")),
        };
        m.http(agent_common::Role::Server)
            .duration
            .observe_with(&labels, 0.01, None);
        assert_eq!(m.encode(), to_prometheus_text(&m.encode_open_metrics()));
    }

    #[test]
    fn converts_open_metrics_to_prometheus_text() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\n\
                  a_bytes_total{x=\"1\"} 5\n# HELP b Info.\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                  # HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 5\n\
             # HELP b_info Info.\n# TYPE b_info gauge\nb_info{version=\"1\"} 1\n\
             # HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n"
        );
    }

    #[test]
    fn exemplars_only_in_open_metrics() {
        let m = Metrics::new("t");
        let labels = DbLabels {
            db_system_name: "redis",
            db_operation_name: "GET",
            error_type: None,
            server_address: Name::new("127.0.0.1"),
            server_port: 6379,
            peer: PeerZone::default(),
            workload: WorkloadLabels::service(Name::new("app")),
        };
        let plain = |m: &Metrics| {
            m.db_client_duration.observe(&labels, 0.0003);
            m.encode()
        };
        let without = plain(&m);
        let exemplar = SpanExemplar {
            trace_id: [0xab; 16],
            span_id: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            end_unix_ns: 1_700_000_000_500_000_000,
        };
        m.db_client_duration
            .observe_with(&labels, 0.0004, Some(&exemplar));
        let om = m.encode_open_metrics();
        let line = "db_client_operation_duration_seconds_bucket{le=\"0.0005\",db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"127.0.0.1\",server_port=\"6379\",service_name=\"app\"} 2 # {trace_id=\"abababababababababababababababab\",span_id=\"0123456789abcdef\"} 0.0004 1700000000.5\n";
        assert!(om.contains(line), "{om}");
        assert_eq!(om.matches(" # {").count(), 1, "{om}");
        // The text format is what it was, but for the counts.
        let with = m.encode();
        assert!(!with.contains("trace_id"), "{with}");
        assert_eq!(
            with.replace("} 2\n", "} 1\n")
                .lines()
                .filter(|l| !l.contains("_sum") && !l.contains("_count"))
                .collect::<Vec<_>>(),
            without
                .lines()
                .filter(|l| !l.contains("_sum") && !l.contains("_count"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn node_text_becomes_open_metrics() {
        let text = "# HELP node_a_total A.\n# TYPE node_a_total counter\nnode_a_total 1\n\
                    # HELP node_b B.\n# TYPE node_b counter\nnode_b 2\n\
                    # HELP node_c C.\n# TYPE node_c untyped\nnode_c 3\n\
                    # HELP node_d D.\n# TYPE node_d gauge\nnode_d 4\n";
        let mut out = String::new();
        prometheus_text_to_open_metrics(text, &mut out);
        assert_eq!(
            out,
            "# HELP node_a A.\n# TYPE node_a counter\nnode_a_total 1\n\
             # HELP node_b B.\n# TYPE node_b unknown\nnode_b 2\n\
             # HELP node_c C.\n# TYPE node_c unknown\nnode_c 3\n\
             # HELP node_d D.\n# TYPE node_d gauge\nnode_d 4\n"
        );
    }

    #[test]
    fn series_past_the_limit_are_dropped_and_counted() {
        let m = Metrics::with_series_limit("t", 2);
        let labels = |op: &'static str| DbLabels {
            db_system_name: "redis",
            db_operation_name: op,
            error_type: None,
            server_address: Name::new("127.0.0.1"),
            server_port: 6379,
            peer: PeerZone::default(),
            workload: WorkloadLabels::service(Name::new("app")),
        };
        for op in ["GET", "SET", "GET", "DEL", "HSET", "SET"] {
            m.db_client_duration.observe(&labels(op), 0.001);
        }
        let text = m.encode();
        assert!(text.contains("db_operation_name=\"GET\",error_type=\"\",server_address=\"127.0.0.1\",server_port=\"6379\",service_name=\"app\"} 2\n"), "{text}");
        assert!(!text.contains("\"DEL\""), "{text}");
        assert!(
            text.contains(
                "nodetap_series_dropped_total{family=\"db_client_operation_duration_seconds\"} 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn exposes_build_info_and_tcp_bytes() {
        let m = Metrics::new("9.9.9");
        m.tcp_bytes
            .get_or_create(&TcpBytesLabels {
                direction: "transmit",
                role: "client",
                workload: WorkloadLabels::service(Name::new("curl")),
            })
            .inc_by(1234);
        let text = m.encode();
        assert!(
            text.contains("nodetap_build_info{version=\"9.9.9\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "nodetap_tcp_bytes_total{direction=\"transmit\",role=\"client\",service_name=\"curl\"} 1234\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE nodetap_tcp_bytes_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
