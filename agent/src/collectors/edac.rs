//! `edac`: memory error counters of each EDAC memory controller and chip-select row
//! (/sys/devices/system/edac/mc/mc<N>, Documentation/admin-guide/ras.rst). No
//! controllers (virtual machines): success with no families, as in node_exporter; a
//! controller missing a counter fails the collector, as there.

use std::path::{Path, PathBuf};

use super::render::Family;
use super::util::read_u64 as uint;
use super::{CollectError, Ctx};

/// One controller: its number, (ce, ce_noinfo, ue, ue_noinfo), and (csrow, ce, ue) rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Controller {
    pub number: String,
    pub counts: [u64; 4],
    pub rows: Vec<(String, u64, u64)>,
}

pub(crate) fn render(controllers: &[Controller]) -> Vec<Family> {
    let mut ce = Family::counter(
        "node_edac_correctable_errors_total",
        "Total correctable memory errors.",
    );
    let mut ue = Family::counter(
        "node_edac_uncorrectable_errors_total",
        "Total uncorrectable memory errors.",
    );
    let mut row_ce = Family::counter(
        "node_edac_csrow_correctable_errors_total",
        "Total correctable memory errors for this csrow.",
    );
    let mut row_ue = Family::counter(
        "node_edac_csrow_uncorrectable_errors_total",
        "Total uncorrectable memory errors for this csrow.",
    );
    for c in controllers {
        let l = |row: &str| vec![("controller", c.number.clone()), ("csrow", row.to_string())];
        ce.push(
            super::label("controller", c.number.clone()),
            c.counts[0] as f64,
        );
        row_ce.push(l("unknown"), c.counts[1] as f64);
        ue.push(
            super::label("controller", c.number.clone()),
            c.counts[2] as f64,
        );
        row_ue.push(l("unknown"), c.counts[3] as f64);
        for (row, rce, rue) in &c.rows {
            row_ce.push(l(row), *rce as f64);
            row_ue.push(l(row), *rue as f64);
        }
    }
    vec![ce, ue, row_ce, row_ue]
}

/// `<prefix><digits>...` entries of `dir`, with their leading digits (the glob
/// `<prefix>[0-9]*` and node_exporter's `<prefix>([0-9]*)` capture).
fn numbered(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(prefix)?;
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            (!digits.is_empty()).then(|| (digits, e.path()))
        })
        .collect();
    out.sort();
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let mut controllers = Vec::new();
    for (number, path) in numbered(&ctx.sys("devices/system/edac/mc"), "mc") {
        let counts = [
            uint(&path.join("ce_count"))?,
            uint(&path.join("ce_noinfo_count"))?,
            uint(&path.join("ue_count"))?,
            uint(&path.join("ue_noinfo_count"))?,
        ];
        let mut rows = Vec::new();
        for (row, rpath) in numbered(&path, "csrow") {
            rows.push((
                row,
                uint(&rpath.join("ce_count"))?,
                uint(&rpath.join("ue_count"))?,
            ));
        }
        controllers.push(Controller {
            number,
            counts,
            rows,
        });
    }
    Ok(render(&controllers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn fixture_and_absent() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(
            out.contains(
                "node_edac_csrow_correctable_errors_total{controller=\"0\",csrow=\"1\"} 3\n"
            ),
            "{out}"
        );
        assert!(out.contains("node_edac_csrow_uncorrectable_errors_total{controller=\"0\",csrow=\"unknown\"} 0\n"), "{out}");
        assert!(testutil::render(collect(&testutil::ctx("real")).unwrap()).is_empty());
    }
}
