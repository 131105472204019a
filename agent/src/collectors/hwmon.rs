//! `hwmon`: hardware sensors (temperatures, voltages, fans, power, ...) of every chip
//! in /sys/class/hwmon (Documentation/hwmon/sysfs-interface.rst), named, scaled and
//! labelled exactly as node_exporter 1.5's `hwmon_linux.go` does: `chip` from the
//! device's bus and name (or the chip's `name`), `sensor` such as `temp1`, one family
//! per sensor type and attribute. No /sys/class/hwmon: no data, as in node_exporter.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;

use super::render::Family;
use super::{CollectError, Ctx};

/// Sensor types node_exporter reads; other files (`name`, `uevent`, ...) are skipped.
const SENSOR_TYPES: [&str; 13] = [
    "vrm",
    "beep_enable",
    "update_interval",
    "in",
    "cpu",
    "fan",
    "pwm",
    "temp",
    "curr",
    "power",
    "energy",
    "humidity",
    "intrusion",
];

/// `temp1_crit_alarm` -> (`temp`, 1, `crit_alarm`); `None` when it is not a sensor
/// file name.
pub(crate) fn explode(file: &str) -> Option<(String, u64, String)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^(?P<type>[^0-9]+)(?P<id>[0-9]*)?(_(?P<property>.+))?$").expect("valid")
    });
    let c = re.captures(file)?;
    let id = match c.name("id").map(|m| m.as_str()).unwrap_or("") {
        "" => 0,
        digits => digits.parse().ok()?,
    };
    Some((
        c["type"].to_string(),
        id,
        c.name("property")
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
    ))
}

/// node_exporter's `cleanMetricName`: lower case, `[^a-z0-9:_]` to `_`, trimmed of `_`.
pub(crate) fn clean(name: &str) -> String {
    let replaced: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    replaced.trim_matches('_').to_string()
}

/// sensor (`temp1`) -> property (`input`, `` for a bare `temp1` file) -> raw value.
pub(crate) type Sensors = BTreeMap<String, BTreeMap<String, String>>;

/// Reads a sensor file as node_exporter does: one read of at most 128 bytes, line feeds
/// trimmed. Unreadable files (a sensor that is not wired) are skipped.
fn read_value(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 128];
    let n = f.read(&mut buf).ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .trim_matches('\n')
            .to_string(),
    )
}

fn collect_sensor_data(dir: &Path, data: &mut Sensors) -> Result<(), CollectError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CollectError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, id, property)) = explode(&file) else {
            continue;
        };
        if !SENSOR_TYPES.contains(&kind.as_str()) {
            continue;
        }
        if let Some(value) = read_value(&dir.join(&file)) {
            data.entry(format!("{kind}{id}"))
                .or_default()
                .insert(property, value);
        }
    }
    Ok(())
}

/// The `chip` label: `<bus>_<device>` of the resolved `device` link, else the cleaned
/// `name`, else the directory's own name.
fn chip_name(dir: &Path) -> Option<String> {
    if let Ok(device) = std::fs::canonicalize(dir.join("device")) {
        let dev_name = device
            .file_name()
            .map(|n| clean(&n.to_string_lossy()))
            .unwrap_or_default();
        let dev_type = device
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| clean(&n.to_string_lossy()))
            .unwrap_or_default();
        if !dev_type.is_empty() && !dev_name.is_empty() {
            return Some(format!("{dev_type}_{dev_name}"));
        }
        if !dev_name.is_empty() {
            return Some(dev_name);
        }
    }
    if let Some(name) = std::fs::read_to_string(dir.join("name"))
        .ok()
        .map(|n| clean(&n))
        .filter(|n| !n.is_empty())
    {
        return Some(name);
    }
    let real = std::fs::canonicalize(dir).ok()?;
    Some(clean(&real.file_name()?.to_string_lossy())).filter(|n| !n.is_empty())
}

/// Families of one chip, keyed by name so that sensors of every chip land in one family.
#[derive(Default)]
pub(crate) struct Out {
    families: BTreeMap<String, Family>,
}

impl Out {
    fn push(
        &mut self,
        name: String,
        help: String,
        labels: Vec<(&'static str, String)>,
        value: f64,
        counter: bool,
    ) {
        self.families
            .entry(name.clone())
            .or_insert_with(|| {
                if counter {
                    Family::counter(name, help)
                } else {
                    Family::gauge(name, help)
                }
            })
            .push(labels, value);
    }

    pub(crate) fn into_families(self) -> Vec<Family> {
        self.families.into_values().collect()
    }
}

/// The families of one chip's sensors (node_exporter's `updateHwmon` after reading).
pub(crate) fn render_chip(out: &mut Out, chip: &str, human_name: Option<&str>, data: &Sensors) {
    if let Some(human) = human_name {
        out.push(
            "node_hwmon_chip_names".into(),
            "Annotation metric for human-readable chip names".into(),
            vec![("chip", chip.to_string()), ("chip_name", human.to_string())],
            1.0,
            false,
        );
    }
    for (sensor, props) in data {
        let Some((kind, _, _)) = explode(sensor) else {
            continue;
        };
        let labels = || vec![("chip", chip.to_string()), ("sensor", sensor.clone())];
        if let Some(label) = props.get("label") {
            out.push(
                "node_hwmon_sensor_label".into(),
                "Label for given chip and sensor".into(),
                vec![
                    ("chip", chip.to_string()),
                    ("sensor", sensor.clone()),
                    ("label", label.clone()),
                ],
                1.0,
                false,
            );
        }
        let bare = props.get("").map(|v| v.as_str());
        match kind.as_str() {
            "beep_enable" => {
                let v = if bare == Some("1") { 1.0 } else { 0.0 };
                out.push(
                    "node_hwmon_beep_enabled".into(),
                    "Hardware beep enabled".into(),
                    labels(),
                    v,
                    false,
                );
                continue;
            }
            "vrm" => {
                if let Some(v) = bare.and_then(|b| b.parse::<f64>().ok()) {
                    out.push(
                        "node_hwmon_voltage_regulator_version".into(),
                        "Hardware voltage regulator".into(),
                        labels(),
                        v,
                        false,
                    );
                }
                continue;
            }
            "update_interval" => {
                if let Some(v) = bare.and_then(|b| b.parse::<f64>().ok()) {
                    out.push(
                        "node_hwmon_update_interval_seconds".into(),
                        "Hardware monitor update interval".into(),
                        labels(),
                        v * 0.001,
                        false,
                    );
                }
                continue;
            }
            _ => {}
        }
        let prefix = format!("node_hwmon_{kind}");
        for (element, value) in props {
            if element == "label" {
                continue;
            }
            let mut name = prefix.clone();
            if element == "input" {
                if bare.is_some() {
                    name.push_str("_input");
                }
            } else if !element.is_empty() {
                name.push('_');
                name.push_str(&clean(element));
            }
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let (suffix, help, scaled, counter): (&str, String, f64, bool) = match (kind.as_str(), element.as_str()) {
                (_, "fault" | "alarm") => ("", format!("Hardware sensor {element} status ({kind})"), v, false),
                (_, "beep") => ("_enabled", "Hardware monitor sensor has beeping enabled".into(), v, false),
                ("in" | "cpu", _) => ("_volts", format!("Hardware monitor for voltage ({element})"), v * 0.001, false),
                ("temp", e) if e != "type" => {
                    let e = if e.is_empty() { "input" } else { e };
                    ("_celsius", format!("Hardware monitor for temperature ({e})"), v * 0.001, false)
                }
                ("curr", _) => ("_amps", format!("Hardware monitor for current ({element})"), v * 0.001, false),
                ("energy", _) => (
                    "_joule_total",
                    format!("Hardware monitor for joules used so far ({element})"),
                    v / 1e6,
                    true,
                ),
                ("power", "accuracy") => ("", "Hardware monitor power meter accuracy, as a ratio".into(), v / 1e6, false),
                ("power", "average_interval" | "average_interval_min" | "average_interval_max") => (
                    "_seconds",
                    format!("Hardware monitor power usage update interval ({element})"),
                    v * 0.001,
                    false,
                ),
                ("power", _) => ("_watt", format!("Hardware monitor for power usage in watts ({element})"), v / 1e6, false),
                ("humidity", _) => (
                    "",
                    format!(
                        "Hardware monitor for humidity, as a ratio (multiply with 100.0 to get the humidity as a percentage) ({element})"
                    ),
                    v / 1e6,
                    false,
                ),
                ("fan", "input" | "min" | "max" | "target") => (
                    "_rpm",
                    format!("Hardware monitor for fan revolutions per minute ({element})"),
                    v,
                    false,
                ),
                _ => ("", format!("Hardware monitor {kind} element {element}"), v, false),
            };
            out.push(format!("{name}{suffix}"), help, labels(), scaled, counter);
        }
    }
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/hwmon");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CollectError::NoData {
                reason: "no /sys/class/hwmon",
            })
        }
        Err(source) => return Err(CollectError::Read { path: dir, source }),
    };
    let mut out = Out::default();
    let mut last_err = None;
    for entry in entries.filter_map(|e| e.ok()) {
        let chip_dir = dir.join(entry.file_name());
        // Links to directories count, as in node_exporter (which stats them).
        if !chip_dir.is_dir() {
            continue;
        }
        let result = (|| -> Result<(), CollectError> {
            let chip = chip_name(&chip_dir).ok_or(CollectError::NoData {
                reason: "no name for a hwmon chip",
            })?;
            let mut data = Sensors::new();
            collect_sensor_data(&chip_dir, &mut data)?;
            if chip_dir.join("device").exists() {
                collect_sensor_data(&chip_dir.join("device"), &mut data)?;
            }
            let human = std::fs::read_to_string(chip_dir.join("name"))
                .ok()
                .map(|n| clean(&n))
                .filter(|n| !n.is_empty());
            render_chip(&mut out, &chip, human.as_deref(), &data);
            Ok(())
        })();
        // As in node_exporter: the other chips are still served, the scrape fails.
        if let Err(e) = result {
            last_err = Some(e);
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(out.into_families()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn file_names() {
        assert_eq!(
            explode("temp1_crit_alarm"),
            Some(("temp".into(), 1, "crit_alarm".into()))
        );
        assert_eq!(
            explode("update_interval"),
            Some(("update_interval".into(), 0, String::new()))
        );
        assert_eq!(explode("in0_input"), Some(("in".into(), 0, "input".into())));
        assert_eq!(explode("pwm1"), Some(("pwm".into(), 1, String::new())));
        assert_eq!(explode("1abc"), None);
        assert_eq!(clean("Package id 0"), "package_id_0");
        assert_eq!(clean("_coretemp.0_\n"), "coretemp_0");
    }

    #[test]
    fn fixture_and_absent() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(
            out.contains(
                "node_hwmon_temp_celsius{chip=\"platform_coretemp_0\",sensor=\"temp1\"} 45\n"
            ),
            "{out}"
        );
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }
}
