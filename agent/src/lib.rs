//! nodetap: an eBPF node telemetry agent.
//!
//! kernel events -> [`capture`] (connections, TCP bytes, [`protocols`]) -> request records
//! -> [`signals`] (RED [`metrics`]) -> [`server`], which also serves the
//! node_exporter-compatible [`collectors`].
//! See ARCHITECTURE.md for the whole picture.

pub mod agent;
pub mod capture;
pub mod collectors;
pub mod config;
pub mod fuzzing;
pub mod heap;
pub mod metadata;
pub mod metrics;
pub mod network;
pub mod preflight;
pub mod probes;
pub mod protocols;
pub mod server;
pub mod signals;

/// An error and its causes, as one line: "what failed: because: because".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
