//! `nvme`: `node_nvme_info` for each NVMe controller in /sys/class/nvme (on EC2 the
//! EBS volumes and instance-store disks). No such directory: no data, as in
//! node_exporter; a controller missing one of its attributes fails the collector, as
//! there too.

use super::render::Family;
use super::util::read_attr;
use super::{CollectError, Ctx};

/// One controller: name, firmware_rev, model, serial, state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Device {
    pub name: String,
    pub firmware_revision: String,
    pub model: String,
    pub serial: String,
    pub state: String,
}

pub(crate) fn render(devices: &[Device]) -> Vec<Family> {
    let mut f = Family::gauge(
        "node_nvme_info",
        "Non-numeric data from /sys/class/nvme/<device>, value is always 1.",
    );
    for d in devices {
        f.push(
            vec![
                ("device", d.name.clone()),
                ("firmware_revision", d.firmware_revision.clone()),
                ("model", d.model.clone()),
                ("serial", d.serial.clone()),
                ("state", d.state.clone()),
            ],
            1.0,
        );
    }
    vec![f]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/nvme");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CollectError::NoData {
                reason: "no /sys/class/nvme",
            })
        }
        Err(source) => return Err(CollectError::Read { path: dir, source }),
    };
    let mut devices = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = dir.join(&name);
        let attr = |file: &str| {
            read_attr(&path.join(file)).ok_or_else(|| CollectError::Read {
                path: path.join(file),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "unreadable attribute"),
            })
        };
        devices.push(Device {
            firmware_revision: attr("firmware_rev")?,
            model: attr("model")?,
            serial: attr("serial")?,
            state: attr("state")?,
            name,
        });
    }
    Ok(render(&devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn ec2_fixture_and_a_broken_controller() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(out.contains(
            "node_nvme_info{device=\"nvme0\",firmware_revision=\"2.0\",model=\"Amazon Elastic Block Store\",serial=\"vol0123456789abcdef0\",state=\"live\"} 1\n"
        ), "{out}");
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }
}
