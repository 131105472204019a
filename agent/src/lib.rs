//! nodetap: an eBPF node telemetry agent.
//!
//! kernel events -> [`capture`] (connections, TCP bytes) -> [`metrics`] -> [`server`].
//! See ARCHITECTURE.md for the whole picture.

pub mod agent;
pub mod capture;
pub mod config;
pub mod metrics;
pub mod preflight;
pub mod probes;
pub mod protocols;
pub mod server;
