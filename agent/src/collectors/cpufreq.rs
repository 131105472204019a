//! `cpufreq`: CPU frequencies from /sys/devices/system/cpu/cpu<N>/cpufreq, in hertz
//! (the files hold kHz, Documentation/admin-guide/pm/cpufreq.rst). CPUs without a
//! cpufreq directory (most virtual machines) add nothing, and the collector succeeds.
//! As procfs does for node_exporter, an unreadable or absent frequency file is skipped,
//! but a cpufreq directory without its driver and governor files fails the collector.

use super::render::Family;
use super::util::{parse_u64, read};
use super::{CollectError, Ctx};

/// (file, metric suffix, HELP) of each frequency node_exporter serves.
const FREQUENCIES: [(&str, &str, &str); 6] = [
    (
        "cpuinfo_cur_freq",
        "frequency_hertz",
        "Current cpu thread frequency in hertz.",
    ),
    (
        "cpuinfo_min_freq",
        "frequency_min_hertz",
        "Minimum cpu thread frequency in hertz.",
    ),
    (
        "cpuinfo_max_freq",
        "frequency_max_hertz",
        "Maximum cpu thread frequency in hertz.",
    ),
    (
        "scaling_cur_freq",
        "scaling_frequency_hertz",
        "Current scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_min_freq",
        "scaling_frequency_min_hertz",
        "Minimum scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_max_freq",
        "scaling_frequency_max_hertz",
        "Maximum scaled CPU thread frequency in hertz.",
    ),
];

/// Files procfs requires in every cpufreq directory.
const REQUIRED: [&str; 5] = [
    "scaling_available_governors",
    "scaling_driver",
    "scaling_governor",
    "related_cpus",
    "scaling_setspeed",
];

/// One CPU's frequencies in kHz, `None` where the file is absent or unreadable.
pub(crate) type CpuFreqs = (String, [Option<u64>; 6]);

pub(crate) fn render(cpus: &[CpuFreqs]) -> Vec<Family> {
    FREQUENCIES
        .iter()
        .enumerate()
        .map(|(i, (_, suffix, help))| {
            let mut f = Family::gauge(format!("node_cpu_{suffix}"), *help);
            for (cpu, freqs) in cpus {
                if let Some(khz) = freqs[i] {
                    f.push(super::label("cpu", cpu.clone()), khz as f64 * 1000.0);
                }
            }
            f
        })
        .collect()
}

/// `cpu<N>` directory names, as the glob `cpu[0-9]*` matches them.
fn is_cpu_dir(name: &str) -> bool {
    name.strip_prefix("cpu")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let dir = ctx.sys("devices/system/cpu");
    // procfs globs for the CPU directories: no directory is no CPUs, not an error.
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(render(&[])),
        Err(source) => return Err(CollectError::Read { path: dir, source }),
    };
    let mut cpus = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_cpu_dir(&name) {
            continue;
        }
        let freq_dir = dir.join(&name).join("cpufreq");
        if !freq_dir.exists() {
            continue;
        }
        let mut freqs = [None; 6];
        for (slot, (file, _, _)) in freqs.iter_mut().zip(FREQUENCIES) {
            let path = freq_dir.join(file);
            match read(&path) {
                Ok(text) => {
                    *slot = Some(
                        parse_u64(text.trim(), 1, file)
                            .map_err(|source| CollectError::Parse { path, source })?,
                    )
                }
                Err(CollectError::Read { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        for file in REQUIRED {
            read(&freq_dir.join(file))?;
        }
        cpus.push((name["cpu".len()..].to_string(), freqs));
    }
    Ok(render(&cpus))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    #[test]
    fn cpu_dirs() {
        assert!(is_cpu_dir("cpu0") && is_cpu_dir("cpu12"));
        assert!(!is_cpu_dir("cpufreq") && !is_cpu_dir("cpuidle") && !is_cpu_dir("cpu"));
    }

    #[test]
    fn ec2_fixture() {
        let out = testutil::render(collect(&testutil::ctx("ec2")).unwrap());
        assert!(
            out.contains("node_cpu_scaling_frequency_hertz{cpu=\"0\"} 3.1e+09\n"),
            "{out}"
        );
        // cpuinfo_cur_freq is root-only on many drivers: the fixture lacks it for cpu1.
        assert!(out.contains("node_cpu_frequency_hertz{cpu=\"0\"}"), "{out}");
        assert!(
            !out.contains("node_cpu_frequency_hertz{cpu=\"1\"}"),
            "{out}"
        );
        // The VM has no cpufreq: nothing, and success.
        assert!(testutil::render(collect(&testutil::ctx("real")).unwrap()).is_empty());
    }
}
