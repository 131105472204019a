//! `diskstats`: block device I/O statistics from /proc/diskstats
//! (Documentation/admin-guide/iostats.rst) and device info from udev's database
//! (`<rootfs>/run/udev/data/b<major>:<minor>`, see udevadm(8)).
//!
//! Sectors are always 512 bytes here, whatever the device's sector size
//! (Documentation/block/stat.rst); times are milliseconds.

use std::collections::BTreeMap;

use super::filters::Filters;
use super::render::{Family, MetricType};
use super::util::{parse_f64, parse_u64, read_parse};
use super::{label, CollectError, Ctx, ParseError};

const SECTOR_BYTES: f64 = 512.0;
const SECONDS_PER_TICK: f64 = 1.0 / 1000.0;

/// One /proc/diskstats line. `stats` holds the 11 to 17 counters after the name that the
/// kernel prints (14 fields before 4.18, 18 before 5.5, 20 since).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Disk {
    pub major: u64,
    pub minor: u64,
    pub name: String,
    pub stats: Vec<u64>,
}

/// node_exporter's default `--collector.diskstats.device-exclude`,
/// `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`: RAM disks, loop devices, floppies
/// and partitions. Written out because the agent has no regexp engine.
pub(crate) fn excluded(name: &str) -> bool {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for p in ["ram", "loop", "fd"] {
        if name.strip_prefix(p).is_some_and(all_digits) {
            return true;
        }
    }
    for p in ["hd", "sd", "vd", "xvd"] {
        if let Some(rest) = name.strip_prefix(p) {
            let mut chars = rest.chars();
            if chars.next().is_some_and(|c| c.is_ascii_lowercase()) && all_digits(chars.as_str()) {
                return true;
            }
        }
    }
    if let Some(rest) = name.strip_prefix("nvme") {
        // \d+ n \d+ p \d+
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let d1 = digits(rest);
        if d1 > 0 {
            if let Some(rest) = rest[d1..].strip_prefix('n') {
                let d2 = digits(rest);
                if d2 > 0 {
                    if let Some(rest) = rest[d2..].strip_prefix('p') {
                        return all_digits(rest);
                    }
                }
            }
        }
    }
    false
}

/// Parses /proc/diskstats. Lines with fewer than 14 fields (partitions on kernels before
/// 2.6.25) are skipped, as procfs does; a field that is not a number fails the file.
pub(crate) fn parse(text: &str) -> Result<Vec<Disk>, ParseError> {
    let mut disks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 3 {
            return Err(ParseError::new(n, format!("short line {line:?}")));
        }
        let major = parse_u64(fields[0], n, "major")?;
        let minor = parse_u64(fields[1], n, "minor")?;
        let stats = fields[3..fields.len().min(20)]
            .iter()
            .map(|f| parse_u64(f, n, fields[2]))
            .collect::<Result<Vec<_>, _>>()?;
        if fields.len() < 14 {
            continue;
        }
        disks.push(Disk {
            major,
            minor,
            name: fields[2].to_string(),
            stats,
        });
    }
    Ok(disks)
}

/// Device properties (`E:KEY=VALUE` lines) of one udev database file.
pub(crate) fn parse_udev(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (name, help, type, scale) of the counters, in /proc/diskstats column order.
const STATS: [(&str, &str, MetricType, f64); 17] = {
    use MetricType::{Counter as C, Gauge as G};
    [
        (
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
            C,
            1.0,
        ),
        (
            "node_disk_reads_merged_total",
            "The total number of reads merged.",
            C,
            1.0,
        ),
        (
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
            C,
            SECTOR_BYTES,
        ),
        (
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
            C,
            SECONDS_PER_TICK,
        ),
        (
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
            C,
            1.0,
        ),
        (
            "node_disk_writes_merged_total",
            "The number of writes merged.",
            C,
            1.0,
        ),
        (
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
            C,
            SECTOR_BYTES,
        ),
        (
            "node_disk_write_time_seconds_total",
            "This is the total number of seconds spent by all writes.",
            C,
            SECONDS_PER_TICK,
        ),
        (
            "node_disk_io_now",
            "The number of I/Os currently in progress.",
            G,
            1.0,
        ),
        (
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
            C,
            SECONDS_PER_TICK,
        ),
        (
            "node_disk_io_time_weighted_seconds_total",
            "The weighted # of seconds spent doing I/Os.",
            C,
            SECONDS_PER_TICK,
        ),
        (
            "node_disk_discards_completed_total",
            "The total number of discards completed successfully.",
            C,
            1.0,
        ),
        (
            "node_disk_discards_merged_total",
            "The total number of discards merged.",
            C,
            1.0,
        ),
        // Sectors, not bytes: node_exporter's name says so.
        (
            "node_disk_discarded_sectors_total",
            "The total number of sectors discarded successfully.",
            C,
            1.0,
        ),
        (
            "node_disk_discard_time_seconds_total",
            "This is the total number of seconds spent by all discards.",
            C,
            SECONDS_PER_TICK,
        ),
        (
            "node_disk_flush_requests_total",
            "The total number of flush requests completed successfully",
            C,
            1.0,
        ),
        (
            "node_disk_flush_requests_time_seconds_total",
            "This is the total number of seconds spent by all flush requests.",
            C,
            SECONDS_PER_TICK,
        ),
    ]
};

/// udev ATA properties exposed as gauges when the device is an ATA disk.
const ATA: [(&str, &str, &str); 3] = [
    (
        "ID_ATA_WRITE_CACHE",
        "node_disk_ata_write_cache",
        "ATA disk has a write cache.",
    ),
    (
        "ID_ATA_WRITE_CACHE_ENABLED",
        "node_disk_ata_write_cache_enabled",
        "ATA disk has its write cache enabled.",
    ),
    (
        "ID_ATA_ROTATION_RATE_RPM",
        "node_disk_ata_rotation_rate_rpm",
        "ATA disk rotation rate in RPMs (0 for SSDs).",
    ),
];

/// Renders the disks that are not excluded; `udev` gives a device's udev properties.
pub(crate) fn render(
    disks: &[Disk],
    filters: &Filters,
    udev: impl Fn(&Disk) -> BTreeMap<String, String>,
) -> Vec<Family> {
    let mut info = Family::gauge("node_disk_info", "Info of /sys/block/<block_device>.");
    let mut stats: Vec<Family> = STATS
        .iter()
        .map(|(name, help, kind, _)| Family::new(*name, *help, *kind))
        .collect();
    let mut fs_info = Family::gauge("node_disk_filesystem_info", "Info about disk filesystem.");
    let mut dm_info = Family::gauge(
        "node_disk_device_mapper_info",
        "Info about disk device mapper.",
    );
    let mut ata: Vec<Family> = ATA
        .iter()
        .map(|(_, name, help)| Family::gauge(*name, *help))
        .collect();

    for d in disks.iter().filter(|d| !filters.disk_excluded(&d.name)) {
        let props = udev(d);
        let prop = |k: &str| props.get(k).cloned().unwrap_or_default();
        // node_exporter 1.5.0 takes ID_SERIAL_SHORT only (later versions prefer
        // SCSI_IDENT_SERIAL); the series must be the same as the exporter it replaces.
        let serial = prop("ID_SERIAL_SHORT");
        info.push(
            vec![
                ("device", d.name.clone()),
                ("major", d.major.to_string()),
                ("minor", d.minor.to_string()),
                ("path", prop("ID_PATH")),
                ("wwn", prop("ID_WWN")),
                ("model", prop("ID_MODEL")),
                ("serial", serial),
                ("revision", prop("ID_REVISION")),
            ],
            1.0,
        );
        for ((family, (_, _, _, scale)), v) in stats.iter_mut().zip(STATS.iter()).zip(&d.stats) {
            family.push(label("device", d.name.clone()), *v as f64 * scale);
        }
        let fs_type = prop("ID_FS_TYPE");
        if !fs_type.is_empty() {
            fs_info.push(
                vec![
                    ("device", d.name.clone()),
                    ("type", fs_type),
                    ("usage", prop("ID_FS_USAGE")),
                    ("uuid", prop("ID_FS_UUID")),
                    ("version", prop("ID_FS_VERSION")),
                ],
                1.0,
            );
        }
        let dm_name = prop("DM_NAME");
        if !dm_name.is_empty() {
            dm_info.push(
                vec![
                    ("device", d.name.clone()),
                    ("name", dm_name),
                    ("uuid", prop("DM_UUID")),
                    ("vg_name", prop("DM_VG_NAME")),
                    ("lv_name", prop("DM_LV_NAME")),
                    ("lv_layer", prop("DM_LV_LAYER")),
                ],
                1.0,
            );
        }
        if !prop("ID_ATA").is_empty() {
            for (family, (key, _, _)) in ata.iter_mut().zip(ATA.iter()) {
                if let Some(v) = props.get(*key) {
                    match parse_f64(v, 0, key) {
                        Ok(v) => family.push(label("device", d.name.clone()), v),
                        Err(e) => log::debug!("udev {key} of {}: {e}", d.name),
                    }
                }
            }
        }
    }
    let mut out = vec![info, fs_info, dm_info];
    out.extend(stats);
    out.extend(ata);
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let disks = read_parse(&ctx.proc("diskstats"), parse)?;
    let udev_dir = ctx.rootfs.join("run/udev/data");
    Ok(render(&disks, &ctx.filters, |d| {
        // No udev database (containers without /run/udev, hosts without udev): the
        // labels stay empty, as in node_exporter.
        std::fs::read_to_string(udev_dir.join(format!("b{}:{}", d.major, d.minor)))
            .map(|t| parse_udev(&t))
            .unwrap_or_default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn default_exclusions() {
        for yes in [
            "ram0",
            "loop7",
            "fd0",
            "sda1",
            "hdb12",
            "vda1",
            "xvda1",
            "nvme0n1p1",
            "nvme12n3p45",
        ] {
            assert!(excluded(yes), "{yes}");
        }
        for no in [
            "vda",
            "sda",
            "xvdf",
            "nvme0n1",
            "zram0",
            "dm-0",
            "md127",
            "sr0",
            "loop",
            "sdaa1",
            "nvme0n1p",
            "nvmen1p1",
            "ram",
            "mmcblk0p1",
        ] {
            assert!(!excluded(no), "{no}");
        }
    }

    #[test]
    fn parses_all_kernel_generations() {
        let d = parse(
            "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n\
                8       1 sda1 1 2 3 4\n\
                8      16 sdb 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15\n\
              254       0 vda 31826 10974 3844978 30683 17315 17206 4989968 15016 0 21720 46520 5974 80 904864 734 1993 85\n",
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].stats.len(), 11);
        assert_eq!(d[1].stats.len(), 15);
        assert_eq!(d[2].stats.len(), 17);
        let out = testutil::render(render(&d, &Filters::default(), |_| BTreeMap::new()));
        assert!(
            out.contains("node_disk_read_bytes_total{device=\"vda\"} 1.968628736e+09\n"),
            "{out}"
        );
        assert!(out.contains("node_disk_read_time_seconds_total{device=\"vda\"} 30.683\n"));
        assert!(out.contains("node_disk_io_time_weighted_seconds_total{device=\"vda\"} 46.52\n"));
        assert!(out.contains("node_disk_discarded_sectors_total{device=\"vda\"} 904864\n"));
        assert!(out.contains("node_disk_flush_requests_time_seconds_total{device=\"vda\"} 0.085\n"));
        // An 11-counter disk has no discard or flush series.
        assert!(!out.contains("node_disk_discards_completed_total{device=\"sda\"}"));
        assert!(out.contains("node_disk_io_time_weighted_seconds_total{device=\"sda\"} 0.011\n"));
        assert!(out.contains(
            "node_disk_info{device=\"vda\",major=\"254\",minor=\"0\",model=\"\",path=\"\",revision=\"\",serial=\"\",wwn=\"\"} 1\n"
        ));
        assert!(!out.contains("sda1"));
    }

    #[test]
    fn udev_properties() {
        let props = parse_udev(
            "S:disk/by-id/ata-X\nE:ID_MODEL=Samsung_SSD\nE:ID_SERIAL_SHORT=S3Z\nE:ID_ATA=1\nE:ID_ATA_ROTATION_RATE_RPM=0\nE:ID_ATA_WRITE_CACHE=1\nE:ID_ATA_WRITE_CACHE_ENABLED=x\nE:ID_FS_TYPE=ext4\nE:ID_FS_UUID=abc\nE:WEIRD=a=b\nG:systemd\n",
        );
        assert_eq!(props["WEIRD"], "a=b");
        assert_eq!(props["ID_MODEL"], "Samsung_SSD");
        let d = parse("8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n").unwrap();
        let out = testutil::render(render(&d, &Filters::default(), |_| props.clone()));
        assert!(out.contains("model=\"Samsung_SSD\""));
        assert!(out.contains("serial=\"S3Z\""));
        assert!(out.contains("node_disk_ata_rotation_rate_rpm{device=\"sda\"} 0\n"));
        assert!(out.contains("node_disk_ata_write_cache{device=\"sda\"} 1\n"));
        assert!(!out.contains("node_disk_ata_write_cache_enabled{"));
        assert!(out.contains(
            "node_disk_filesystem_info{device=\"sda\",type=\"ext4\",usage=\"\",uuid=\"abc\",version=\"\"} 1\n"
        ));
    }

    #[test]
    fn real_fixture() {
        let out = testutil::render(collect(&testutil::ctx("real")).unwrap());
        assert!(out.contains("node_disk_reads_completed_total{device=\"vda\"}"));
        assert!(out.contains("node_disk_reads_completed_total{device=\"zram0\"} 0\n"));
        assert!(!out.contains("loop"));
    }

    #[test]
    fn errors() {
        assert!(parse("8 0\n").is_err());
        assert!(parse("8 x sda 1 2 3 4 5 6 7 8 9 10 11\n").is_err());
        assert!(parse("8 0 sda 1 2 3 4 5 6 7 8 9 10 y\n").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
            let _ = parse_udev(&s);
            let _ = excluded(&s);
        }

        #[test]
        fn parse_never_panics_on_diskstats_like(s in "( *[0-9]{1,3} +[0-9]{1,3} [a-z0-9-]{1,8}( [0-9]{1,20}){0,22}\n){0,4}") {
            if let Ok(d) = parse(&s) { let _ = render(&d, &Filters::default(), |_| BTreeMap::new()); }
        }
    }
}
