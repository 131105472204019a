//! Who and where: workload identity from cgroups, and availability zones of addresses.
//!
//! [`identity`] puts them together into the labels of every series; [`cgroup`] turns the cgroup id the
//! kernel stamps on events into a path and the path into a pod, container or systemd
//! unit; [`cidr`] is a longest-prefix-match table; [`zones`] decides this node's zone and
//! the zone of any peer address; [`imds`] asks the EC2 instance metadata service when
//! nothing else says; [`workload`] holds the label types that name a workload and a peer zone.

pub mod cgroup;
pub mod cidr;
pub mod identity;
pub mod imds;
pub mod kubernetes;
pub mod local_zone;
pub mod workload;
pub mod zones;
