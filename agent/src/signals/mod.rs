//! Signals: what the agent makes of each completed request. Every protocol's session
//! produces [`Request`]s; the capture layer adds what it knows of the connection and
//! hands each as a [`RequestRecord`] to every registered [`Signal`]. A new signal (spans,
//! say) is one file implementing [`Signal`] and one line in [`registered`].

pub mod otlp_metrics;
mod red;
pub mod spans;

use std::{cell::Cell, net::SocketAddr, sync::Arc};

use agent_common::Role;

use crate::{
    metadata::workload::{PeerZone, WorkloadLabels},
    metrics::{Metrics, SpanExemplar},
    protocols::{Protocol, Request},
};

/// One completed request with its connection and workload: what every signal consumes.
pub struct RequestRecord<'a> {
    /// The protocol the connection speaks (its label is `db.system.name` for databases).
    pub protocol: Protocol,
    /// Which end of the connection this node observed: [`Role::Client`] or
    /// [`Role::Server`] (a connection of unknown role is never parsed).
    pub role: Role,
    /// Timing, outcome and attributes.
    pub request: &'a Request,
    /// The server end of the connection (the remote end for a client, the local end for
    /// a server).
    pub server: SocketAddr,
    /// The client end of the connection (the local end for a client, the remote end for
    /// a server).
    pub client: SocketAddr,
    /// The other end's zone, when the agent knows it.
    pub peer_zone: &'a PeerZone,
    /// The workload on this node that owns the connection.
    pub workload: &'a WorkloadLabels,
    /// The same request's name on both ends, when both ends of the connection are on
    /// this node and their request orders agree (see `capture::record::link_key`).
    pub link: Option<LinkKey>,
    /// The span made of this request, once the spans signal kept it (sampled and
    /// queued): the RED signal, registered after it, puts it on the duration histogram
    /// as an exemplar. Empty when spans are off or the span was left out.
    pub kept_span: Cell<Option<SpanExemplar>>,
}

/// Names one request on both ends of a connection whose two ends this node sees: the
/// two connections' ids (never reused) and the request's place in their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub client_conn: u64,
    pub server_conn: u64,
    pub sequence: u64,
}

/// A consumer of request records. Records come from the one task that drains the
/// capture, so a signal owns its state outright: no lock per request (a lock and its
/// release were half the RED metrics' time under pipelined load).
pub trait Signal: Send {
    fn record(&mut self, record: &RequestRecord<'_>);
}

/// Every signal: the one place they are registered, in the order they see each record.
/// Spans are on when the agent has somewhere to send them (the exporter holds the other
/// end of their queue); they come first so that the RED histograms can carry the kept
/// span as an exemplar ([`RequestRecord::kept_span`]).
pub fn registered(metrics: &Arc<Metrics>, spans: Option<spans::Spans>) -> Vec<Box<dyn Signal>> {
    let mut signals: Vec<Box<dyn Signal>> = Vec::with_capacity(2);
    if let Some(spans) = spans {
        signals.push(Box::new(spans));
    }
    signals.push(Box::new(red::RedMetrics::new(metrics.clone())));
    signals
}
