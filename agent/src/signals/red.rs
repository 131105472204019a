//! RED metrics: each request record observed in its family's duration histogram (and,
//! for HTTP, the body size histograms), client or server by the record's role.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use agent_common::Role;
use prometheus_client::metrics::counter::Counter;

use super::{RequestRecord, Signal};
use crate::{
    capture::id_hash::IdMap,
    metadata::workload::{Name, PeerZone, WorkloadLabels},
    metrics::{
        AtomicHistogram, DbLabels, DurationHistogram, HttpLabels, Metrics, Observe, RpcLabels,
    },
    protocols::request::{Attributes, DbRequest, HttpRequest, RpcRequest},
};

pub struct RedMetrics {
    metrics: Arc<Metrics>,
    /// `server.address` label values by address: formatting and allocating one per
    /// request was a tenth of the agent's CPU under pipelined load.
    addresses: HashMap<IpAddr, Name>,
    /// Database series by a key that is cheap to hash (shared label values by address):
    /// building the label set and hashing its strings per request was a quarter of the
    /// agent's CPU under pipelined Redis load.
    db_series: IdMap<u64, Vec<(DbSeriesKey, DurationHistogram)>>,
    /// HTTP series the same way: the label set, the route budget's lock and three family
    /// lookups, each hashing every label's text, were a quarter of the agent's CPU per
    /// HTTP request.
    http_series: IdMap<u64, Vec<(HttpSeriesKey, HttpHandles)>>,
}

/// What names an HTTP series before its route is bounded: the request's own route,
/// shared values compared by address as in [`DbSeriesKey`].
struct HttpSeriesKey {
    role: Role,
    method: &'static str,
    status: u16,
    route: String,
    server_port: u16,
    peer: PeerZone,
    workload: WorkloadLabels,
}

/// An HTTP series' histograms, and the collapse counter its route counts in when the
/// route budget relabelled it (the budget bounds a route the same way every time).
struct HttpHandles {
    duration: DurationHistogram,
    request_size: AtomicHistogram,
    response_size: AtomicHistogram,
    collapse: Option<Counter>,
}

/// Most addresses kept in the label cache (it starts over when full).
const ADDRESS_CACHE: usize = 4096;

/// Most database series kept in the handle cache (it starts over when full).
const SERIES_CACHE: usize = 16_384;

/// What names a database series, compared by the addresses of its shared values. The
/// key holds clones of them, so an address stays theirs while the key is cached. Two
/// keys of equal labels at different addresses are two entries for one series: harmless.
struct DbSeriesKey {
    role: Role,
    protocol: &'static str,
    operation: &'static str,
    error_type: Option<String>,
    server: SocketAddr,
    peer: PeerZone,
    workload: WorkloadLabels,
}

/// The address of a peer zone's shared value (0 for none).
fn peer_address(peer: &PeerZone) -> usize {
    peer.0
        .as_ref()
        .map_or(0, |n| Arc::as_ptr(&n.0) as *const u8 as usize)
}

/// A request's series, borrowed from the record: what a cached key is compared with,
/// without cloning anything.
struct DbSeries<'a> {
    role: Role,
    protocol: &'static str,
    operation: &'static str,
    error_type: Option<&'a str>,
    server: SocketAddr,
    peer: &'a PeerZone,
    workload: &'a WorkloadLabels,
}

impl DbSeries<'_> {
    fn fingerprint(&self) -> u64 {
        let mut h = crate::capture::id_hash::IdHasher::default();
        (self.role as u8).hash(&mut h);
        (self.protocol.as_ptr() as usize).hash(&mut h);
        (self.operation.as_ptr() as usize).hash(&mut h);
        self.error_type.hash(&mut h);
        self.server.hash(&mut h);
        peer_address(self.peer).hash(&mut h);
        self.workload.identity().hash(&mut h);
        h.finish()
    }

    fn is(&self, key: &DbSeriesKey) -> bool {
        self.role == key.role
            && std::ptr::eq(self.protocol, key.protocol)
            && std::ptr::eq(self.operation, key.operation)
            && self.server == key.server
            && peer_address(self.peer) == peer_address(&key.peer)
            && self.workload.identity() == key.workload.identity()
            && self.error_type == key.error_type.as_deref()
    }

    fn key(&self) -> DbSeriesKey {
        DbSeriesKey {
            role: self.role,
            protocol: self.protocol,
            operation: self.operation,
            error_type: self.error_type.map(str::to_owned),
            server: self.server,
            peer: self.peer.clone(),
            workload: self.workload.clone(),
        }
    }
}

/// An HTTP request's series, borrowed from the record (see [`DbSeries`]).
struct HttpSeries<'a> {
    role: Role,
    method: &'static str,
    status: u16,
    route: &'a str,
    server_port: u16,
    peer: &'a PeerZone,
    workload: &'a WorkloadLabels,
}

impl HttpSeries<'_> {
    fn fingerprint(&self) -> u64 {
        let mut h = crate::capture::id_hash::IdHasher::default();
        (self.role as u8).hash(&mut h);
        (self.method.as_ptr() as usize).hash(&mut h);
        self.status.hash(&mut h);
        self.route.hash(&mut h);
        self.server_port.hash(&mut h);
        peer_address(self.peer).hash(&mut h);
        self.workload.identity().hash(&mut h);
        h.finish()
    }

    fn is(&self, key: &HttpSeriesKey) -> bool {
        self.role == key.role
            && std::ptr::eq(self.method, key.method)
            && self.status == key.status
            && self.server_port == key.server_port
            && peer_address(self.peer) == peer_address(&key.peer)
            && self.workload.identity() == key.workload.identity()
            && self.route == key.route
    }

    fn key(&self) -> HttpSeriesKey {
        HttpSeriesKey {
            role: self.role,
            method: self.method,
            status: self.status,
            route: self.route.to_owned(),
            server_port: self.server_port,
            peer: self.peer.clone(),
            workload: self.workload.clone(),
        }
    }
}

impl RedMetrics {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            addresses: HashMap::new(),
            db_series: IdMap::default(),
            http_series: IdMap::default(),
        }
    }

    fn address(&mut self, ip: IpAddr) -> Name {
        let cache = &mut self.addresses;
        if cache.len() >= ADDRESS_CACHE && !cache.contains_key(&ip) {
            cache.clear();
        }
        cache
            .entry(ip)
            .or_insert_with(|| Name::new(&ip.to_string()))
            .clone()
    }

    fn db(&mut self, r: &RequestRecord<'_>, db: &DbRequest) {
        let series = DbSeries {
            role: r.role,
            protocol: r.protocol.label(),
            operation: db.operation,
            error_type: db.error_type.as_deref(),
            server: r.server,
            peer: r.peer_zone,
            workload: r.workload,
        };
        let fingerprint = series.fingerprint();
        if let Some((_, histogram)) = self
            .db_series
            .get(&fingerprint)
            .and_then(|entries| entries.iter().find(|(key, _)| series.is(key)))
        {
            histogram.observe_with(r.request.seconds(), r.kept_span.get().as_ref());
            return;
        }
        let labels = DbLabels {
            db_system_name: r.protocol.label(),
            db_operation_name: db.operation,
            error_type: db.error_type.clone(),
            server_address: self.address(r.server.ip()),
            server_port: r.server.port(),
            peer: r.peer_zone.clone(),
            workload: r.workload.clone(),
        };
        let family = self.metrics.db_duration(r.role);
        family.observe_with(&labels, r.request.seconds(), r.kept_span.get().as_ref());
        // Cached only once the series exists (past the series limit it does not).
        if let Some(histogram) = family.family.get(&labels) {
            if self.db_series.len() >= SERIES_CACHE {
                self.db_series.clear();
            }
            self.db_series
                .entry(fingerprint)
                .or_default()
                .push((series.key(), histogram.clone()));
        }
    }

    fn http(&mut self, r: &RequestRecord<'_>, http: &HttpRequest) {
        let series = HttpSeries {
            role: r.role,
            method: http.method,
            status: http.status,
            route: &http.route,
            server_port: r.server.port(),
            peer: r.peer_zone,
            workload: r.workload,
        };
        let fingerprint = series.fingerprint();
        let exemplar = r.kept_span.get();
        if let Some((_, handles)) = self
            .http_series
            .get(&fingerprint)
            .and_then(|entries| entries.iter().find(|(key, _)| series.is(key)))
        {
            if let Some(collapse) = &handles.collapse {
                collapse.inc();
            }
            handles
                .duration
                .observe_with(r.request.seconds(), exemplar.as_ref());
            handles.request_size.observe(http.request_body_bytes as f64);
            handles
                .response_size
                .observe(http.response_body_bytes as f64);
            return;
        }
        let labels = HttpLabels {
            http_request_method: http.method,
            http_response_status_code: http.status,
            http_route: http.route.clone(),
            server_port: r.server.port(),
            peer: r.peer_zone.clone(),
            workload: r.workload.clone(),
        };
        // The route bounded by the service's learned budget (a collapse is counted).
        let (labels, collapse) = self
            .metrics
            .bound_http_route(r.role == Role::Client, &labels);
        let families = self.metrics.http(r.role);
        families
            .duration
            .observe_with(&labels, r.request.seconds(), exemplar.as_ref());
        families
            .request_size
            .observe(&labels, http.request_body_bytes as f64);
        families
            .response_size
            .observe(&labels, http.response_body_bytes as f64);
        // Cached only once all three series exist (past a series limit one may not).
        let handles = || {
            Some(HttpHandles {
                duration: families.duration.family.get(&labels)?.clone(),
                request_size: families.request_size.family.get(&labels)?.clone(),
                response_size: families.response_size.family.get(&labels)?.clone(),
                collapse,
            })
        };
        if let Some(handles) = handles() {
            if self.http_series.len() >= SERIES_CACHE {
                self.http_series.clear();
            }
            self.http_series
                .entry(fingerprint)
                .or_default()
                .push((series.key(), handles));
        }
    }

    fn rpc(&self, r: &RequestRecord<'_>, rpc: &RpcRequest) {
        let labels = RpcLabels {
            rpc_system: rpc.system,
            rpc_service: rpc.service.clone(),
            rpc_method: rpc.method.clone(),
            rpc_grpc_status_code: rpc.status,
            server_port: r.server.port(),
            peer: r.peer_zone.clone(),
            workload: r.workload.clone(),
        };
        let family = self.metrics.rpc_duration(r.role);
        family.observe_with(&labels, r.request.seconds(), r.kept_span.get().as_ref());
    }
}

impl Signal for RedMetrics {
    fn record(&mut self, r: &RequestRecord<'_>) {
        if r.role == Role::Unknown {
            return;
        }
        match &r.request.attributes {
            Attributes::Db(db) => self.db(r, db),
            Attributes::Http(http) => self.http(r, http),
            Attributes::Rpc(rpc) => self.rpc(r, rpc),
        }
    }
}
