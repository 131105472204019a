//! `dmi`: `node_dmi_info`, the firmware's description of the machine from
//! /sys/class/dmi/id (on EC2: the instance type as `product_name`, `Amazon EC2` as
//! vendor). Files only root may read (serials, UUID) are left out for other users, as in
//! node_exporter; no DMI at all (most ARM boards, containers without /sys/class/dmi):
//! no data.

use super::render::Family;
use super::{CollectError, Ctx};

/// The label names in node_exporter's set; each is also its file's name except
/// `system_vendor`, read from `sys_vendor`.
pub(crate) const FIELDS: [&str; 20] = [
    "bios_date",
    "bios_release",
    "bios_vendor",
    "bios_version",
    "board_asset_tag",
    "board_name",
    "board_serial",
    "board_vendor",
    "board_version",
    "chassis_asset_tag",
    "chassis_serial",
    "chassis_vendor",
    "chassis_version",
    "product_family",
    "product_name",
    "product_serial",
    "product_sku",
    "product_uuid",
    "product_version",
    "system_vendor",
];

fn file_of(label: &str) -> &str {
    if label == "system_vendor" {
        "sys_vendor"
    } else {
        label
    }
}

/// The labels from `(file name, contents)` pairs: known fields only, values trimmed.
pub(crate) fn labels(files: &[(String, String)]) -> Vec<(&'static str, String)> {
    FIELDS
        .iter()
        .filter_map(|f| {
            files
                .iter()
                .find(|(name, _)| name == file_of(f))
                .map(|(_, v)| (*f, v.trim().to_string()))
        })
        .collect()
}

pub(crate) fn render(labels: Vec<(&'static str, String)>) -> Vec<Family> {
    vec![Family::gauge(
        "node_dmi_info",
        "A metric with a constant '1' value labeled by bios_date, bios_release, bios_vendor, bios_version, board_asset_tag, board_name, board_serial, board_vendor, board_version, chassis_asset_tag, chassis_serial, chassis_vendor, chassis_version, product_family, product_name, product_serial, product_sku, product_uuid, product_version, system_vendor if provided by DMI.",
    )
    .with(labels, 1.0)]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/dmi/id");
    let mut files = Vec::new();
    for f in FIELDS {
        // Invalid UTF-8 is replaced, as node_exporter's ToValidUTF8 does.
        let name = file_of(f);
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => files.push((
                name.to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) => {}
            Err(source) => {
                return Err(CollectError::Read {
                    path: dir.join(name),
                    source,
                })
            }
        }
    }
    let labels = labels(&files);
    if labels.is_empty() {
        return Err(CollectError::NoData {
            reason: "no DMI information",
        });
    }
    Ok(render(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn labels_from_files() {
        let l = labels(&[
            ("product_name".into(), "m5.large\n".into()),
            ("modalias".into(), "dmi:x".into()),
            ("sys_vendor".into(), "Amazon EC2\n".into()),
            ("system_vendor".into(), "not a file the kernel has".into()),
        ]);
        assert_eq!(
            l,
            vec![
                ("product_name", "m5.large".to_string()),
                ("system_vendor", "Amazon EC2".to_string())
            ]
        );
        let out = testutil::render(render(l));
        assert!(
            out.ends_with(
                "node_dmi_info{product_name=\"m5.large\",system_vendor=\"Amazon EC2\"} 1\n"
            ),
            "{out}"
        );
    }
}
