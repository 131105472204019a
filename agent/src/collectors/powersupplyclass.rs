//! `powersupplyclass`: batteries, mains adapters and UPSes in /sys/class/power_supply
//! (Documentation/ABI/testing/sysfs-class-power), one gauge per attribute as node_exporter
//! 1.5 names and scales them (µA, µV, µWh, µW to base units; tenths of a degree to
//! degrees) plus `node_power_supply_info` with the text attributes. No such directory:
//! no data, as in node_exporter; an empty one (most servers): success, no families.

use std::collections::BTreeMap;

use super::render::Family;
use super::util::parse_go_int;
use super::{CollectError, Ctx, ParseError};

/// (file, metric name after `node_power_supply_`, divisor).
const NUMBERS: [(&str, &str, f64); 40] = [
    ("authentic", "authentic", 1.0),
    ("calibrate", "calibrate", 1.0),
    ("capacity", "capacity", 1.0),
    ("capacity_alert_max", "capacity_alert_max", 1.0),
    ("capacity_alert_min", "capacity_alert_min", 1.0),
    ("cycle_count", "cyclecount", 1.0),
    ("online", "online", 1.0),
    ("present", "present", 1.0),
    ("time_to_empty_now", "time_to_empty_seconds", 1.0),
    ("time_to_full_now", "time_to_full_seconds", 1.0),
    ("current_boot", "current_boot", 1e6),
    ("current_max", "current_max", 1e6),
    ("current_now", "current_ampere", 1e6),
    ("energy_empty", "energy_empty", 1e6),
    ("energy_empty_design", "energy_empty_design", 1e6),
    ("energy_full", "energy_full", 1e6),
    ("energy_full_design", "energy_full_design", 1e6),
    ("energy_now", "energy_watthour", 1e6),
    ("voltage_boot", "voltage_boot", 1e6),
    ("voltage_max", "voltage_max", 1e6),
    ("voltage_max_design", "voltage_max_design", 1e6),
    ("voltage_min", "voltage_min", 1e6),
    ("voltage_min_design", "voltage_min_design", 1e6),
    ("voltage_now", "voltage_volt", 1e6),
    ("voltage_ocv", "voltage_ocv", 1e6),
    ("charge_control_limit", "charge_control_limit", 1e6),
    ("charge_control_limit_max", "charge_control_limit_max", 1e6),
    ("charge_counter", "charge_counter", 1e6),
    ("charge_empty", "charge_empty", 1e6),
    ("charge_empty_design", "charge_empty_design", 1e6),
    ("charge_full", "charge_full", 1e6),
    ("charge_full_design", "charge_full_design", 1e6),
    ("charge_now", "charge_ampere", 1e6),
    ("charge_term_current", "charge_term_current", 1e6),
    ("constant_charge_current", "constant_charge_current", 1e6),
    (
        "constant_charge_current_max",
        "constant_charge_current_max",
        1e6,
    ),
    ("constant_charge_voltage", "constant_charge_voltage", 1e6),
    (
        "constant_charge_voltage_max",
        "constant_charge_voltage_max",
        1e6,
    ),
    ("precharge_current", "precharge_current", 1e6),
    ("input_current_limit", "input_current_limit", 1e6),
];

/// Numbers beyond [`NUMBERS`]: power and temperatures.
const MORE_NUMBERS: [(&str, &str, f64); 9] = [
    ("power_now", "power_watt", 1e6),
    ("temp", "temp_celsius", 10.0),
    ("temp_alert_max", "temp_alert_max_celsius", 10.0),
    ("temp_alert_min", "temp_alert_min_celsius", 10.0),
    ("temp_ambient", "temp_ambient_celsius", 10.0),
    ("temp_ambient_max", "temp_ambient_max_celsius", 10.0),
    ("temp_ambient_min", "temp_ambient_min_celsius", 10.0),
    ("temp_max", "temp_max_celsius", 10.0),
    ("temp_min", "temp_min_celsius", 10.0),
];

/// Text attributes that become `node_power_supply_info` labels (file = label name).
const TEXTS: [&str; 11] = [
    "capacity_level",
    "charge_type",
    "health",
    "manufacturer",
    "model_name",
    "serial_number",
    "status",
    "technology",
    "type",
    "usb_type",
    "scope",
];

/// Numeric attributes procfs parses (so a bad value fails) but node_exporter serves not.
const PARSED_NOT_SERVED: [&str; 6] = [
    "charge_avg",
    "current_avg",
    "energy_avg",
    "power_avg",
    "time_to_empty_avg",
    "time_to_full_avg",
];

/// One supply: its name and its attribute files (file name -> trimmed contents).
pub(crate) type Supply = (String, BTreeMap<String, String>);

pub(crate) fn render(supplies: &[Supply]) -> Result<Vec<Family>, ParseError> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut info = Family::gauge(
        "node_power_supply_info",
        "info of /sys/class/power_supply/<power_supply>.",
    );
    for (name, attrs) in supplies {
        for file in PARSED_NOT_SERVED {
            if let Some(v) = attrs.get(file) {
                parse_go_int(v).ok_or_else(|| {
                    ParseError::new(1, format!("{file}: {v:?} is not an integer"))
                })?;
            }
        }
        for (file, metric, divisor) in NUMBERS.iter().chain(MORE_NUMBERS.iter()) {
            let Some(text) = attrs.get(*file) else {
                continue;
            };
            let v = parse_go_int(text)
                .ok_or_else(|| ParseError::new(1, format!("{file}: {text:?} is not an integer")))?;
            families
                .entry(metric.to_string())
                .or_insert_with(|| {
                    Family::gauge(
                        format!("node_power_supply_{metric}"),
                        format!("{metric} value of /sys/class/power_supply/<power_supply>."),
                    )
                })
                .push(
                    super::label("power_supply", name.clone()),
                    v as f64 / divisor,
                );
        }
        let mut labels = vec![("power_supply", name.clone())];
        for t in TEXTS {
            if let Some(v) = attrs.get(t).filter(|v| !v.is_empty()) {
                labels.push((t, v.clone()));
            }
        }
        info.push(labels, 1.0);
    }
    let mut out: Vec<Family> = families.into_values().collect();
    out.push(info);
    Ok(out)
}

fn read_supply(dir: &std::path::Path) -> Result<BTreeMap<String, String>, CollectError> {
    let mut attrs = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|source| CollectError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        // Regular files only: `device`, `subsystem` and `power` are links or directories.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                attrs.insert(entry.file_name().to_string_lossy().into_owned(), text);
            }
            // Attributes a driver does not support answer these (procfs skips them).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                    ) => {}
            Err(source) => return Err(CollectError::Read { path, source }),
        }
    }
    Ok(attrs)
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("class/power_supply");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CollectError::NoData {
                reason: "no /sys/class/power_supply",
            })
        }
        Err(source) => return Err(CollectError::Read { path: dir, source }),
    };
    let mut supplies = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        supplies.push((name, read_supply(&entry.path())?));
    }
    render(&supplies).map_err(|source| CollectError::Parse {
        path: ctx.sys("class/power_supply"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn fixture_and_absent() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(
            out.contains("node_power_supply_temp_celsius{power_supply=\"BAT0\"} 25.5\n"),
            "{out}"
        );
        assert!(
            out.contains("node_power_supply_voltage_volt{power_supply=\"BAT0\"} 12.6\n"),
            "{out}"
        );
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
        let bad = vec![(
            "X".to_string(),
            BTreeMap::from([("power_avg".to_string(), "x".to_string())]),
        )];
        assert!(render(&bad).is_err());
    }
}
