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
    /// this node and their request orders agree, or by its HTTP/2 stream (see
    /// `capture::record::link_key`).
    pub link: Option<LinkKey>,
    /// What the span takes from another request on this node through the thread that
    /// handled it (see `capture::threads`): a server request whose thread made client
    /// requests while it was open, one of those client requests, or a server request
    /// whose client end is one of them.
    pub thread: Option<ThreadContext>,
    /// The span made of this request, once the spans signal kept it (sampled and
    /// queued): the RED signal, registered after it, puts it on the duration histogram
    /// as an exemplar. Empty when spans are off or the span was left out.
    pub kept_span: Cell<Option<SpanExemplar>>,
}

/// Names one request on both ends of a connection whose two ends this node sees: the
/// two connections' ids (never reused) and the request's place in their order, or (top
/// bit set) its HTTP/2 stream id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub client_conn: u64,
    pub server_conn: u64,
    pub sequence: u64,
}

/// Names one request on one connection: the connection's id (never reused) and the
/// request's place in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub conn: u64,
    pub sequence: u64,
}

/// Where the trace of a request linked through a thread comes from, decided when the
/// server request at its root opened, so that every span of it agrees without waiting
/// for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceSource {
    /// The server request's W3C `traceparent`.
    Header { trace_id: [u8; 16], sampled: bool },
    /// The server request's client end on this node (the ids [`LinkKey`] derives).
    Link(LinkKey),
    /// Neither: a trace of its own, named after the server request.
    Own(RequestKey),
}

impl TraceSource {
    /// The sampled flag of the `traceparent` the trace came from, which the
    /// `parentbased_*` samplers follow.
    pub fn sampled(&self) -> Option<bool> {
        match self {
            TraceSource::Header { sampled, .. } => Some(*sampled),
            _ => None,
        }
    }
}

/// The parent of a server span whose thread made client requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentRef {
    /// The span id a `traceparent` named (in another process).
    Remote([u8; 8]),
    /// The client span of the same request on this node.
    Client(LinkKey),
}

/// A span's context through the thread that handled a server request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadContext {
    /// A server request whose handling thread made client requests while it was open:
    /// its span id derives from `key` (its children name it as parent), its trace from
    /// `trace`.
    Parent {
        key: RequestKey,
        trace: TraceSource,
        parent: Option<ParentRef>,
    },
    /// A client request the thread handling server request `parent` made while that was
    /// its only open server request.
    Child {
        parent: RequestKey,
        trace: TraceSource,
    },
    /// A server request whose client end on this node is a [`ThreadContext::Child`]: its
    /// trace is that child's.
    Downstream { trace: TraceSource },
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
