//! IP bytes per workload and zone pair: [`tables`] drains the kernel's flow tables
//! (filled by the cgroup_skb programs, see agent-ebpf/src/network.rs), [`record`] turns
//! the flows into `nodetap_network_{bytes,packets}_total`.

pub mod record;
pub mod tables;

pub use record::record;
pub use tables::{FlowTables, NetworkError, DRAIN_INTERVAL};
