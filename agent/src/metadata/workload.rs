//! Who a series is about: the workload labels every RED, TCP and network series carries,
//! and the peer's zone. They belong to the metadata that names workloads; the metric
//! families only encode them.

use std::{fmt, sync::Arc};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A label value shared between many series without copying (service names, mostly).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub Arc<str>);

impl Default for Name {
    fn default() -> Self {
        Name::new("")
    }
}

impl Name {
    pub fn new(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, &self.0)
    }
}

/// Who a series is about: `k8s_namespace_name`, `k8s_pod_name`, `k8s_container_name`
/// and `k8s_owner_name` for a pod the Kubernetes API told the agent about, and always
/// `service_name` (a pod's owner, a systemd unit, else the process name). Labels
/// without a value are left out rather than written empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadLabels(Arc<WorkloadFields>);

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadFields {
    pub k8s: Option<PodLabels>,
    pub service_name: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodLabels {
    pub namespace: Name,
    pub pod: Name,
    /// Empty when the cgroup is the pod's own (no container) or the container is not
    /// in the pod's status yet.
    pub container: Name,
    pub owner: Name,
}

impl WorkloadLabels {
    /// The address of the shared label values: equal for clones of one value (a cache
    /// key that holds a clone keeps the address from being reused).
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// A workload known only by its service name.
    pub fn service(name: Name) -> Self {
        Self(Arc::new(WorkloadFields {
            k8s: None,
            service_name: name,
        }))
    }

    pub fn new(fields: WorkloadFields) -> Self {
        Self(Arc::new(fields))
    }

    pub fn fields(&self) -> &WorkloadFields {
        &self.0
    }

    pub fn service_name(&self) -> &Name {
        &self.0.service_name
    }
}

fn encode_label(
    encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    name: &str,
    value: &str,
) -> Result<(), fmt::Error> {
    prometheus_client::encoding::EncodeLabel::encode(&(name, value), encoder.encode_label())
}

impl EncodeLabelSet for WorkloadLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        if let Some(k8s) = &self.0.k8s {
            for (name, value) in [
                ("k8s_namespace_name", &k8s.namespace),
                ("k8s_pod_name", &k8s.pod),
                ("k8s_container_name", &k8s.container),
                ("k8s_owner_name", &k8s.owner),
            ] {
                if !value.0.is_empty() {
                    encode_label(encoder, name, &value.0)?;
                }
            }
        }
        encode_label(encoder, "service_name", &self.0.service_name.0)
    }
}

/// `peer_zone` on request metrics: the zone of the other end, left out when unknown.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct PeerZone(pub Option<Name>);

impl EncodeLabelSet for PeerZone {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        match &self.0 {
            Some(zone) => encode_label(encoder, "peer_zone", &zone.0),
            None => Ok(()),
        }
    }
}
