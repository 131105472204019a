//! What a connection's session produced, out of the connection table: each completed
//! request to every signal, and the session's health to the protocol counters.

use std::net::SocketAddr;

use agent_common::Role;

use super::Connection;
use crate::{
    metrics::{Metrics, ProtocolLabels, ProtocolReasonLabels},
    protocols::{FeedOutcome, Protocol, Request},
    signals::{RequestRecord, Signal},
};

/// Hands each request a connection's session completed to every signal, with what the
/// connection knows of itself.
pub(super) fn record_requests(
    signals: &[Box<dyn Signal>],
    conn: &Connection,
    protocol: Option<Protocol>,
    done: &[Request],
) {
    if done.is_empty() {
        return;
    }
    let (Some(protocol), Some((server, client))) = (protocol, ends(conn)) else {
        return;
    };
    for request in done {
        let record = RequestRecord {
            protocol,
            role: conn.role,
            request,
            server,
            client,
            peer_zone: &conn.peer_zone,
            workload: &conn.workload,
        };
        for signal in signals {
            signal.record(&record);
        }
    }
}

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
