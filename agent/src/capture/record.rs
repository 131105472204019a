//! What a connection's session produced, out of the connection table: each completed
//! request to every signal, and the session's health to the protocol counters.

use std::net::SocketAddr;

use agent_common::Role;

use super::{threads::Threads, Connection};
use crate::{
    metrics::{Metrics, ProtocolLabels, ProtocolReasonLabels},
    protocols::{FeedOutcome, Protocol, Request},
    signals::{LinkKey, RequestRecord, Signal, ThreadContext},
};

/// Where a connection's completed requests go: the signals, and thread-based linking
/// when spans are on (with the thread whose call completed them, `None` when the
/// connection ended, and its process).
pub(super) struct Recorder<'a> {
    pub signals: &'a mut [Box<dyn Signal>],
    pub threads: Option<&'a mut Threads>,
    pub contexts: &'a mut Vec<Option<ThreadContext>>,
    pub tid: Option<u32>,
    pub pid: u32,
}

/// Hands each request a connection's session completed to every signal, with what the
/// connection knows of itself.
pub(super) fn record_requests(
    to: &mut Recorder<'_>,
    conn: &mut Connection,
    protocol: Option<Protocol>,
    done: &[Request],
) {
    if done.is_empty() {
        return;
    }
    let (Some(protocol), Some((server, client))) = (protocol, ends(conn)) else {
        return;
    };
    to.contexts.clear();
    if let Some(threads) = to.threads.as_deref_mut() {
        let first = conn.requests_done;
        threads.completed(conn, first, done.len(), to.tid, to.pid, to.contexts);
    }
    for (i, request) in done.iter().enumerate() {
        let sequence = conn.requests_done;
        conn.requests_done += 1;
        let link = link_key(conn, protocol, sequence, request.stream);
        let record = RequestRecord {
            protocol,
            role: conn.role,
            request,
            server,
            client,
            peer_zone: &conn.peer_zone,
            workload: &conn.workload,
            link,
            thread: to.contexts.get(i).copied().flatten(),
            kept_span: Default::default(),
        };
        for signal in to.signals.iter_mut() {
            signal.record(&record);
        }
    }
}

/// What names this request on both ends, when both ends of its connection are on this
/// node: its place in the connection's order where the protocol answers in order and the
/// two ends' orders agree (both were seen from their first request, the handshake, and
/// neither lost or mis-framed one); its HTTP/2 stream id otherwise (streams complete in
/// any order, but both ends see the same ids, whatever either lost).
pub(super) fn link_key(
    conn: &Connection,
    protocol: Protocol,
    sequence: u64,
    stream: Option<u32>,
) -> Option<LinkKey> {
    let peer = conn.peer?;
    let sequence = if protocol.in_order() {
        if !conn.seen_open || conn.order_broken {
            return None;
        }
        sequence
    } else {
        // Apart from every place in an order (no connection completes 2^63 requests).
        STREAM_KEY | u64::from(stream?)
    };
    let (client_conn, server_conn) = match conn.role {
        Role::Client => (conn.id, peer),
        Role::Server => (peer, conn.id),
        Role::Unknown => return None,
    };
    Some(LinkKey {
        client_conn,
        server_conn,
        sequence,
    })
}

/// Marks a [`LinkKey`]'s sequence as an HTTP/2 stream id.
const STREAM_KEY: u64 = 1 << 63;

/// The server and client ends of a connection: (remote, local) for a client, (local,
/// remote) for a server.
fn ends(conn: &Connection) -> Option<(SocketAddr, SocketAddr)> {
    let endpoints = conn.endpoints?;
    match conn.role {
        Role::Client => Some((endpoints.remote, endpoints.local)),
        Role::Server => Some((endpoints.local, endpoints.remote)),
        Role::Unknown => None,
    }
}

pub(super) fn record_health(metrics: &Metrics, protocol: Option<Protocol>, outcome: &FeedOutcome) {
    if let Some(detected) = outcome.detected {
        metrics
            .protocol_connections
            .get_or_create(&ProtocolLabels {
                protocol: detected.label(),
            })
            .inc();
    }
    let Some(protocol) = protocol else {
        return;
    };
    let labels = ProtocolLabels {
        protocol: protocol.label(),
    };
    let h = &outcome.health;
    if h.parse_errors > 0 {
        metrics
            .protocol_parse_errors
            .get_or_create(&labels)
            .inc_by(h.parse_errors);
    }
    if h.timed_out > 0 {
        metrics
            .protocol_timed_out
            .get_or_create(&labels)
            .inc_by(h.timed_out);
    }
    if let Some(reason) = h.stopped {
        metrics
            .protocol_stopped
            .get_or_create(&ProtocolReasonLabels {
                protocol: protocol.label(),
                reason: reason.label(),
            })
            .inc();
    }
    for (reason, n) in h.lost.iter() {
        if n > 0 {
            metrics
                .protocol_requests_lost
                .get_or_create(&ProtocolReasonLabels {
                    protocol: protocol.label(),
                    reason: reason.label(),
                })
                .inc_by(n);
        }
    }
    if h.tls {
        // A PostgreSQL connection that negotiated TLS: counted as TLS too, not parsed.
        metrics
            .protocol_connections
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::TLS.label(),
            })
            .inc();
    }
}
