//! `thermal_zone`: temperatures of /sys/class/thermal/thermal_zone<N> and the throttle
//! states of /sys/class/thermal/cooling_device<N> (Documentation/driver-api/thermal/
//! sysfs-api.rst). No such devices (most virtual machines): success with no families,
//! as in node_exporter. A zone whose sensor answers ENODATA is skipped; a zone or device
//! missing a required attribute fails the collector, as procfs makes it.

use std::path::Path;

use super::render::Family;
use super::util::{read, read_i64 as int};
use super::{CollectError, Ctx};

/// (zone number, type, temperature in millidegrees Celsius).
pub(crate) type Zone = (String, String, i64);
/// (device number, type, current state, maximum state).
pub(crate) type Cooling = (String, String, i64, i64);

pub(crate) fn render(zones: &[Zone], cooling: &[Cooling]) -> Vec<Family> {
    let mut temp = Family::gauge("node_thermal_zone_temp", "Zone temperature in Celsius");
    for (zone, kind, millis) in zones {
        temp.push(
            vec![("zone", zone.clone()), ("type", kind.clone())],
            *millis as f64 / 1000.0,
        );
    }
    let mut cur = Family::gauge(
        "node_cooling_device_cur_state",
        "Current throttle state of the cooling device",
    );
    let mut max = Family::gauge(
        "node_cooling_device_max_state",
        "Maximum throttle state of the cooling device",
    );
    for (name, kind, c, m) in cooling {
        let l = || vec![("name", name.clone()), ("type", kind.clone())];
        cur.push(l(), *c as f64);
        max.push(l(), *m as f64);
    }
    vec![temp, cur, max]
}

/// Entries of `dir` named `<prefix><digit>...`, with the part after the prefix.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(String, std::path::PathBuf)>, CollectError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CollectError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(prefix)?.to_string();
            n.starts_with(|c: char| c.is_ascii_digit())
                .then(|| (n, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn trimmed(path: &Path) -> Result<String, CollectError> {
    Ok(read(path)?.trim().to_string())
}

/// ENODATA: a sensor with no reading right now.
fn is_no_data(e: &CollectError) -> bool {
    matches!(e, CollectError::Read { source, .. } if source.raw_os_error() == Some(libc::ENODATA))
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/thermal");
    let mut zones = Vec::new();
    for (n, path) in numbered(&dir, "thermal_zone")? {
        let zone = (|| -> Result<Zone, CollectError> {
            let kind = trimmed(&path.join("type"))?;
            trimmed(&path.join("policy"))?;
            Ok((n.clone(), kind, int(&path.join("temp"))?))
        })();
        match zone {
            Ok(z) => zones.push(z),
            Err(e) if is_no_data(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut cooling = Vec::new();
    for (n, path) in numbered(&dir, "cooling_device")? {
        let kind = trimmed(&path.join("type"))?;
        let max = int(&path.join("max_state"))?;
        // cur_state is -1 on some drivers (intel_powerclamp).
        let cur = int(&path.join("cur_state"))?;
        cooling.push((n, kind, cur, max));
    }
    Ok(render(&zones, &cooling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn fixture_and_absent() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(
            out.contains("node_thermal_zone_temp{type=\"x86_pkg_temp\",zone=\"0\"} 41.5\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "node_cooling_device_cur_state{name=\"0\",type=\"intel_powerclamp\"} -1\n"
            ),
            "{out}"
        );
        assert!(testutil::render(collect(&testutil::ctx("real")).unwrap()).is_empty());
    }
}
