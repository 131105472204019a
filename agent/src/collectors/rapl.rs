//! `rapl`: energy counters of the Intel/AMD RAPL power capping zones in
//! /sys/class/powercap (Documentation/power/powercap/powercap.rst), one family per zone
//! name as node_exporter 1.5 names them by default (`node_rapl_<name>_joules_total`,
//! labels `index` and `path`). No powercap directory, or counters only root may read
//! (kernels since 5.10 restrict `energy_uj`): no data, as in node_exporter.

use std::collections::HashMap;

use super::render::{Family, MetricType};
use super::util::read_u64 as uint;
use super::{CollectError, Ctx};

/// One zone: name without its `-<index>` suffix, index, directory, microjoules.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Zone {
    pub name: String,
    pub index: u64,
    pub path: String,
    pub microjoules: u64,
}

/// procfs' `getIndexAndName`: `package-1` is index 1 of `package`; a name without an
/// index gets the count of earlier zones of that name.
pub(crate) fn index_and_name(counts: &mut HashMap<String, u64>, raw: &str) -> (u64, String) {
    let (index, name) = match raw.split('-').collect::<Vec<_>>()[..] {
        [name, idx] => match idx.parse::<i64>() {
            Ok(i) if i >= 0 => (i as u64, name.to_string()),
            _ => (counts.get(raw).copied().unwrap_or(0), raw.to_string()),
        },
        _ => (counts.get(raw).copied().unwrap_or(0), raw.to_string()),
    };
    counts.insert(name.clone(), index + 1);
    (index, name)
}

/// Prometheus metric names allow `[a-zA-Z0-9_:]`; node_exporter replaces the rest.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) fn render(zones: &[Zone]) -> Vec<Family> {
    zones
        .iter()
        .map(|z| {
            Family::new(
                format!("node_rapl_{}_joules_total", sanitize(&z.name)),
                format!("Current RAPL {} value in joules", z.name),
                MetricType::Counter,
            )
            .with(
                vec![("index", z.index.to_string()), ("path", z.path.clone())],
                z.microjoules as f64 / 1e6,
            )
        })
        .collect()
}

fn no_data_if_absent_or_denied(e: CollectError) -> CollectError {
    match e {
        CollectError::Read { ref source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            CollectError::NoData {
                reason: "no readable powercap zones",
            }
        }
        e => e,
    }
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/powercap");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|source| {
            no_data_if_absent_or_denied(CollectError::Read {
                path: dir.clone(),
                source,
            })
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    // Go's ReadDir is sorted by name; the index of unnumbered duplicates depends on it.
    entries.sort();
    let mut counts = HashMap::new();
    let mut zones = Vec::new();
    for entry in entries {
        let zone_dir = dir.join(&entry);
        let Ok(raw) = std::fs::read_to_string(zone_dir.join("name")) else {
            continue; // not a zone (the control type directory has no name)
        };
        let (index, name) = index_and_name(&mut counts, raw.trim());
        uint(&zone_dir.join("max_energy_range_uj"))?;
        let microjoules = uint(&zone_dir.join("energy_uj")).map_err(no_data_if_absent_or_denied)?;
        zones.push(Zone {
            name,
            index,
            path: zone_dir.display().to_string(),
            microjoules,
        });
    }
    Ok(render(&zones))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn names_and_indexes() {
        let mut c = HashMap::new();
        assert_eq!(
            index_and_name(&mut c, "package-0"),
            (0, "package".to_string())
        );
        assert_eq!(index_and_name(&mut c, "dram"), (0, "dram".to_string()));
        assert_eq!(index_and_name(&mut c, "dram"), (1, "dram".to_string()));
        assert_eq!(
            index_and_name(&mut c, "package-1"),
            (1, "package".to_string())
        );
        assert_eq!(index_and_name(&mut c, "psys-x"), (0, "psys-x".to_string()));
        assert_eq!(sanitize("psys-x"), "psys_x");
    }

    #[test]
    fn fixture_and_absent() {
        let ctx = testutil::ctx("ec2");
        let out = testutil::render(collect(&ctx).unwrap());
        let path = ctx.sys("class/powercap/intel-rapl:0").display().to_string();
        assert!(
            out.contains(&format!(
                "node_rapl_package_joules_total{{index=\"0\",path=\"{path}\"}} 1234.567891\n"
            )),
            "{out}"
        );
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }
}
