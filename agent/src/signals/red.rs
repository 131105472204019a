//! RED metrics: each request record observed in its family's duration histogram (and,
//! for HTTP, the body size histograms), client or server by the record's role.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use agent_common::Role;

use super::{RequestRecord, Signal};
use crate::{
    metadata::workload::Name,
    metrics::{DbLabels, HttpLabels, Metrics, RpcLabels},
    protocols::request::{Attributes, DbRequest, HttpRequest, RpcRequest},
};

pub struct RedMetrics {
    metrics: Arc<Metrics>,
    /// `server.address` label values by address: formatting and allocating one per
    /// request was a tenth of the agent's CPU under pipelined load.
    addresses: Mutex<HashMap<IpAddr, Name>>,
}

/// Most addresses kept in the label cache (it starts over when full).
const ADDRESS_CACHE: usize = 4096;

impl RedMetrics {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            addresses: Mutex::default(),
        }
    }

    fn address(&self, ip: IpAddr) -> Name {
        let mut cache = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= ADDRESS_CACHE && !cache.contains_key(&ip) {
            cache.clear();
        }
        cache
            .entry(ip)
            .or_insert_with(|| Name::new(&ip.to_string()))
            .clone()
    }

    fn db(&self, r: &RequestRecord<'_>, db: &DbRequest) {
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
        family.observe(&labels, r.request.seconds());
    }

    fn http(&self, r: &RequestRecord<'_>, http: &HttpRequest) {
        let labels = HttpLabels {
            http_request_method: http.method,
            http_response_status_code: http.status,
            http_route: http.route.clone(),
            server_port: r.server.port(),
            peer: r.peer_zone.clone(),
            workload: r.workload.clone(),
        };
        // The route bounded by the service's learned budget (a collapse is counted).
        let labels = self
            .metrics
            .bound_http_route(r.role == Role::Client, &labels);
        let families = self.metrics.http(r.role);
        families.duration.observe(&labels, r.request.seconds());
        families
            .request_size
            .observe(&labels, http.request_body_bytes as f64);
        families
            .response_size
            .observe(&labels, http.response_body_bytes as f64);
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
        family.observe(&labels, r.request.seconds());
    }
}

impl Signal for RedMetrics {
    fn record(&self, r: &RequestRecord<'_>) {
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
