//! `mdadm`: Linux software RAID arrays from /proc/mdstat (drivers/md/md.c,
//! `md_seq_show`), parsed as procfs does for node_exporter 1.5: disks required, active,
//! failed and spare, the array's activity state, and blocks (synced). No /proc/mdstat
//! (md driver not loaded): no data, as in node_exporter. node-mixin's NodeRAIDDegraded
//! and NodeRAIDDiskFailure alerts read these.

use std::sync::OnceLock;

use regex::Regex;

use super::render::Family;
use super::util::read_source;
use super::{CollectError, Ctx, ParseError};

/// One array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Array {
    pub name: String,
    /// `active`, `inactive`, `recovering`, `resyncing` or `checking` (or what the
    /// device line says, e.g. `active(auto-read-only)`).
    pub state: String,
    pub disks_active: i64,
    pub disks_total: i64,
    pub disks_failed: i64,
    pub disks_spare: i64,
    pub blocks_total: i64,
    pub blocks_synced: i64,
}

fn status_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(\d+) blocks .*\[(\d+)/(\d+)\] \[([U_]+)\]").expect("valid"))
}

fn recovery_res() -> &'static [Regex; 4] {
    static RE: OnceLock<[Regex; 4]> = OnceLock::new();
    RE.get_or_init(|| {
        [
            r"\((\d+)/\d+\)",
            r"= (.+)%",
            r"finish=(.+)min",
            r"speed=(.+)[A-Z]",
        ]
        .map(|p| Regex::new(p).expect("valid"))
    })
}

/// (active, total, size) from an array's device and status lines.
fn eval_status(
    device_line: &str,
    status_line: &str,
    n: usize,
) -> Result<(i64, i64, i64), ParseError> {
    let size: i64 = status_line
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ParseError::new(n + 1, format!("unexpected status line {status_line:?}")))?;
    if device_line.contains("raid0") || device_line.contains("linear") {
        let total = device_line.matches('[').count() as i64;
        return Ok((total, total, size));
    }
    if device_line.contains("inactive") {
        return Ok((0, 0, size));
    }
    let c = status_re()
        .captures(status_line)
        .ok_or_else(|| ParseError::new(n + 1, format!("no [total/active] in {status_line:?}")))?;
    let num = |i: usize| {
        c[i].parse::<i64>()
            .map_err(|_| ParseError::new(n + 1, "number out of range"))
    };
    Ok((num(3)?, num(2)?, size))
}

/// Blocks synced from a recovery/resync/check line; procfs also requires its
/// percentage, finish time and speed to parse.
fn eval_recovery(line: &str, n: usize) -> Result<i64, ParseError> {
    let [blocks, pct, finish, speed] = recovery_res();
    let bad = || ParseError::new(n, format!("unexpected recovery line {line:?}"));
    let synced = blocks.captures(line).ok_or_else(bad)?[1]
        .parse::<i64>()
        .map_err(|_| bad())?;
    for re in [pct, finish, speed] {
        re.captures(line).ok_or_else(bad)?[1]
            .trim()
            .parse::<f64>()
            .map_err(|_| bad())?;
    }
    Ok(synced)
}

pub(crate) fn parse(text: &str) -> Result<Vec<Array>, ParseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty()
            || line.starts_with(' ')
            || line.starts_with("Personalities")
            || line.starts_with("unused")
        {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(ParseError::new(
                i + 1,
                format!("not enough fields in {line:?}"),
            ));
        }
        if lines.len() <= i + 3 {
            return Err(ParseError::new(
                i + 1,
                format!("too few lines for {}", fields[0]),
            ));
        }
        let (active, total, size) = eval_status(line, lines[i + 1], i + 1)?;
        let mut sync_idx = i + 2;
        if lines[sync_idx].contains("bitmap") {
            sync_idx += 1;
        }
        let sync_line = lines.get(sync_idx).copied().unwrap_or("");
        let mut state = fields[2].to_string();
        let mut synced = size;
        let (recovering, resyncing, checking) = (
            sync_line.contains("recovery"),
            sync_line.contains("resync"),
            sync_line.contains("check"),
        );
        if recovering || resyncing || checking {
            state = if recovering {
                "recovering"
            } else if checking {
                "checking"
            } else {
                "resyncing"
            }
            .to_string();
            synced = if sync_line.contains("PENDING") || sync_line.contains("DELAYED") {
                0
            } else {
                eval_recovery(sync_line, sync_idx + 1)?
            };
        }
        out.push(Array {
            name: fields[0].to_string(),
            state,
            disks_active: active,
            disks_total: total,
            disks_failed: line.matches("(F)").count() as i64,
            disks_spare: line.matches("(S)").count() as i64,
            blocks_total: size,
            blocks_synced: synced,
        });
    }
    Ok(out)
}

pub(crate) fn render(arrays: &[Array]) -> Vec<Family> {
    let mut required = Family::gauge("node_md_disks_required", "Total number of disks of device.");
    let mut disks = Family::gauge(
        "node_md_disks",
        "Number of active/failed/spare disks of device.",
    );
    let mut state = Family::gauge("node_md_state", "Indicates the state of md-device.");
    let mut blocks = Family::gauge("node_md_blocks", "Total number of blocks on device.");
    let mut synced = Family::gauge(
        "node_md_blocks_synced",
        "Number of blocks synced on device.",
    );
    for a in arrays {
        let dev = || super::label("device", a.name.clone());
        let two = |s: &str| vec![("device", a.name.clone()), ("state", s.to_string())];
        required.push(dev(), a.disks_total as f64);
        disks.push(two("active"), a.disks_active as f64);
        disks.push(two("failed"), a.disks_failed as f64);
        disks.push(two("spare"), a.disks_spare as f64);
        // node_exporter's state label says `resync` and `check` for the states
        // procfs calls resyncing and checking.
        for (label, activity) in [
            ("active", "active"),
            ("inactive", "inactive"),
            ("recovering", "recovering"),
            ("resync", "resyncing"),
            ("check", "checking"),
        ] {
            state.push(two(label), if a.state == activity { 1.0 } else { 0.0 });
        }
        blocks.push(dev(), a.blocks_total as f64);
        synced.push(dev(), a.blocks_synced as f64);
    }
    vec![required, disks, state, blocks, synced]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let path = ctx.proc("mdstat");
    let text = read_source(&path, "no /proc/mdstat (md driver not loaded)")?;
    let arrays = parse(&text).map_err(|source| CollectError::Parse { path, source })?;
    Ok(render(&arrays))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn fixture_arrays() {
        let a = parse(&testutil::read("ec2", "proc/mdstat")).unwrap();
        let by_name = |n: &str| a.iter().find(|x| x.name == n).unwrap().clone();
        let md0 = by_name("md0");
        assert_eq!(
            (
                md0.disks_total,
                md0.disks_active,
                md0.disks_failed,
                md0.state.as_str()
            ),
            (2, 1, 1, "recovering")
        );
        assert_eq!(md0.blocks_synced, 1_048_576);
        assert_eq!(by_name("md2").state, "inactive");
        assert!(parse("md9 : active raid1 sda1[0]\n").is_err());
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(md[0-9] : (in)?active raid[0-9] [a-z]{3}[0-9]\\[[0-9]\\](\\(F\\))?\n  [0-9]{1,4} blocks .{0,20}\n.{0,40}\n\n){1,3}") {
            if let Ok(a) = parse(&s) { let _ = render(&a); }
        }
    }
}
