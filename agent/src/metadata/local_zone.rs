//! Deciding this node's zone at start-up: configuration, else the Kubernetes node's
//! zone label, else EC2 instance metadata (only on EC2), else `unknown`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    identity::SharedZones,
    imds::imds_availability_zone,
    zones::{local_zone, ZoneConfig, ZoneSource},
};

/// What deciding this node's zone needs to know (from the configuration).
#[derive(Clone, Debug)]
pub struct LocalZoneSettings {
    /// The `[zones]` table: a configured zone, the IMDS endpoint and timeout.
    pub zones: ZoneConfig,
    /// Whether the user set the IMDS endpoint (else it is asked only on EC2).
    pub imds_endpoint_set: bool,
    /// Where the host's sysfs is (DMI says whether this is EC2).
    pub sysfs: PathBuf,
}

/// Where the decided zone and its source are reported (the agent's `nodetap_zone_info`).
pub type ZoneReport = Arc<dyn Fn(&str, ZoneSource) + Send + Sync>;

/// Whether DMI (or the Xen hypervisor id on older instance types) says this machine is
/// an EC2 instance. The default IMDS address is link-local: asking it anywhere else
/// would send a request to whatever answers there, so the agent asks only on EC2 unless
/// the user set the endpoint.
pub fn on_ec2(sysfs: &Path) -> bool {
    let read = |p: &str| {
        std::fs::read_to_string(sysfs.join(p))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    read("class/dmi/id/sys_vendor") == "Amazon EC2"
        || read("class/dmi/id/board_vendor") == "Amazon EC2"
        || read("hypervisor/uuid")
            .to_ascii_lowercase()
            .starts_with("ec2")
}

/// Decides the zone, puts it in the zone map and reports it. `node_label` is the
/// Kubernetes node's zone label when the agent runs on Kubernetes.
pub async fn resolve_with_label(
    config: &LocalZoneSettings,
    node_label: Option<String>,
    zones: &SharedZones,
    report: &ZoneReport,
) {
    let configured = config
        .zones
        .zone
        .as_deref()
        .filter(|z| !z.trim().is_empty());
    let label = node_label.filter(|z| !z.trim().is_empty());
    let mut imds = None;
    if configured.is_none() && label.is_none() && config.zones.imds_enabled() {
        if config.imds_endpoint_set || on_ec2(&config.sysfs) {
            match imds_availability_zone(&config.zones.imds_endpoint, config.zones.imds_timeout())
                .await
            {
                Ok(zone) => imds = Some(zone),
                Err(e) => {
                    let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
                    log::warn!(
                        "availability zone from instance metadata: {}{hint}",
                        crate::error_chain(&e)
                    );
                }
            }
        } else {
            log::info!(
                "not an EC2 instance (DMI): instance metadata not asked; set zones.zone or NODETAP_ZONE for zone labels"
            );
        }
    }
    let (zone, source) = local_zone(configured, label.as_deref(), imds.as_deref());
    zones.update(|s| s.map.set_local_zone(zone.clone()));
    report(&zone, source);
    if source == ZoneSource::Unknown {
        log::info!("availability zone unknown: peers are labelled by the subnet table only");
    } else {
        log::info!("availability zone {zone} (from {source})");
    }
}

/// [`resolve_with_label`] without Kubernetes.
pub async fn resolve(config: LocalZoneSettings, zones: SharedZones, report: ZoneReport) {
    resolve_with_label(&config, None, &zones, &report).await;
}
