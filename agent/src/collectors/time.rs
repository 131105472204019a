//! `time`: the system clock, the local time zone's offset, and the clock sources
//! (/sys/devices/system/clocksource, Documentation/ABI/testing/sysfs-devices-system-cpu).

use std::ffi::CStr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::render::{Family, MetricType};
use super::{CollectError, Ctx};

/// One clocksourceN directory: what it offers and what it uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClockSource {
    pub available: Vec<String>,
    pub current: String,
}

pub(crate) fn parse_clocksource(available: &str, current: &str) -> ClockSource {
    ClockSource {
        available: available.split_whitespace().map(str::to_string).collect(),
        current: current.trim().to_string(),
    }
}

/// `now` in seconds since the epoch; `zone` the local time zone's abbreviation and UTC
/// offset in seconds. The `device` label is the clock source's position, as in
/// node_exporter.
pub(crate) fn render(now: f64, zone: (&str, i64), sources: &[ClockSource]) -> Vec<Family> {
    let mut available = Family::gauge(
        "node_time_clocksource_available_info",
        "Available clocksources read from '/sys/devices/system/clocksource'.",
    );
    let mut current = Family::gauge(
        "node_time_clocksource_current_info",
        "Current clocksource read from '/sys/devices/system/clocksource'.",
    );
    for (i, cs) in sources.iter().enumerate() {
        for a in &cs.available {
            available.push(
                vec![("device", i.to_string()), ("clocksource", a.clone())],
                1.0,
            );
        }
        current.push(
            vec![
                ("device", i.to_string()),
                ("clocksource", cs.current.clone()),
            ],
            1.0,
        );
    }
    vec![
        Family::single(
            "node_time_seconds",
            "System time in seconds since epoch (1970).",
            MetricType::Gauge,
            now,
        ),
        Family::gauge(
            "node_time_zone_offset_seconds",
            "System time zone offset in seconds.",
        )
        .with(vec![("time_zone", zone.0.to_string())], zone.1 as f64),
        available,
        current,
    ]
}

/// The local time zone at `secs`, as localtime(3) sees it (TZ, else /etc/localtime).
fn local_zone(secs: i64) -> (String, i64) {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r only writes into `tm`, a plain C struct; tm_zone then points
    // to a static string owned by libc's time zone state, copied out at once.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() || tm.tm_zone.is_null() {
            return ("UTC".to_string(), 0);
        }
        let name = CStr::from_ptr(tm.tm_zone).to_string_lossy().into_owned();
        (name, tm.tm_gmtoff)
    }
}

fn read_clocksources(ctx: &Ctx) -> Vec<ClockSource> {
    let dir = ctx.sys("devices/system/clocksource");
    // clocksource[0-9]*, sorted like Go's filepath.Glob; no directory means none.
    let mut dirs: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("clocksource")
                        .and_then(|r| r.chars().next())
                        .is_some_and(|c| c.is_ascii_digit())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.iter()
        .map(|d| {
            let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
            parse_clocksource(&read("available_clocksource"), &read("current_clocksource"))
        })
        .collect()
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as f64 / 1e9)
        .unwrap_or(0.0);
    let (zone, offset) = local_zone(now as i64);
    Ok(render(now, (&zone, offset), &read_clocksources(ctx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn renders_like_node_exporter() {
        let cs = parse_clocksource("kvm-clock tsc \n", "tsc\n");
        let out = testutil::render(render(1.7953148574852083e9, ("UTC", 0), &[cs]));
        assert_eq!(
            out,
            "# HELP node_time_clocksource_available_info Available clocksources read from '/sys/devices/system/clocksource'.\n\
             # TYPE node_time_clocksource_available_info gauge\n\
             node_time_clocksource_available_info{clocksource=\"kvm-clock\",device=\"0\"} 1\n\
             node_time_clocksource_available_info{clocksource=\"tsc\",device=\"0\"} 1\n\
             # HELP node_time_clocksource_current_info Current clocksource read from '/sys/devices/system/clocksource'.\n\
             # TYPE node_time_clocksource_current_info gauge\n\
             node_time_clocksource_current_info{clocksource=\"tsc\",device=\"0\"} 1\n\
             # HELP node_time_seconds System time in seconds since epoch (1970).\n\
             # TYPE node_time_seconds gauge\n\
             node_time_seconds 1.7953148574852083e+09\n\
             # HELP node_time_zone_offset_seconds System time zone offset in seconds.\n\
             # TYPE node_time_zone_offset_seconds gauge\n\
             node_time_zone_offset_seconds{time_zone=\"UTC\"} 0\n"
        );
    }

    #[test]
    fn fixture_and_clock() {
        let fams = collect(&testutil::ctx("real")).unwrap();
        let out = testutil::render(fams);
        assert!(
            out.contains(
                "node_time_clocksource_current_info{clocksource=\"tsc\",device=\"0\"} 1\n"
            ),
            "{out}"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let line = out
            .lines()
            .find(|l| l.starts_with("node_time_seconds "))
            .unwrap();
        let v: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((v - now).abs() < 5.0);
        // No clock source directory: still a success, with no clock source series.
        let none = collect(&testutil::ctx("does-not-exist")).unwrap();
        assert!(!testutil::render(none).contains("clocksource"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(a in "\\PC*", c in "\\PC*") {
            let cs = parse_clocksource(&a, &c);
            let _ = testutil::render(render(0.0, ("X", 0), &[cs]));
        }
    }
}
