//! The agent's own `process_*` families, as the Prometheus client libraries define them
//! (<https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics>), so
//! the agent's CPU and memory can be watched and alerted on like any exporter's.

use procfs::process::{LimitValue, Process};

use crate::collectors::render::{write_families, Family};

/// Appends the families to a scrape; a /proc read that fails leaves its family out.
pub fn encode(out: &mut String) {
    let Ok(me) = Process::myself() else {
        return;
    };
    let mut families = Vec::new();
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        families.push(
            Family::counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .with(vec![], (stat.utime + stat.stime) as f64 / ticks),
        );
        families.push(
            Family::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )
            .with(vec![], (stat.rss * procfs::page_size()) as f64),
        );
        families.push(
            Family::gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )
            .with(vec![], stat.vsize as f64),
        );
        if let Ok(boot) = procfs::boot_time_secs() {
            families.push(
                Family::gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                )
                .with(vec![], boot as f64 + stat.starttime as f64 / ticks),
            );
        }
    }
    if let Ok(fds) = me.fd_count() {
        families.push(
            Family::gauge("process_open_fds", "Number of open file descriptors.")
                .with(vec![], fds as f64),
        );
    }
    if let Ok(limits) = me.limits() {
        if let LimitValue::Value(max) = limits.max_open_files.soft_limit {
            families.push(
                Family::gauge(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                )
                .with(vec![], max as f64),
            );
        }
    }
    write_families(out, families);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_agents_own_process() {
        // Some CPU time to see (the kernel counts it in ticks): 30 ms of this thread's
        // CPU, however loaded the machine is.
        let cpu_ns = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let start = cpu_ns();
        let mut spin = 0u64;
        while cpu_ns() - start < 30_000_000 {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let mut text = String::new();
        super::encode(&mut text);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
                .parse()
                .unwrap()
        };
        // The truth from the kernel's other accounting of this process.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        let rss = value("process_resident_memory_bytes");
        assert!(
            (rss - rss_kib * 1024.0).abs() < 8.0 * 1024.0 * 1024.0,
            "rss {rss} vs VmRSS {rss_kib} KiB"
        );
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
        assert!((value("process_open_fds") - fds).abs() <= 2.0);
        assert!(value("process_cpu_seconds_total") > 0.0);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    }
}
