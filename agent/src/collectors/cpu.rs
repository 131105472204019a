//! `cpu`: time per CPU and mode from /proc/stat, guest time, thermal throttle counts and
//! isolated CPUs from /sys/devices/system/cpu.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use super::render::Family;
use super::util::{parse_cpu_list, parse_u64, read_attr, read_parse};
use super::{label, CollectError, Ctx, ParseError};

/// /proc/stat counts in USER_HZ, which the kernel fixes at 100 for userspace on every
/// architecture (include/asm-generic/param.h); node_exporter divides by the same.
const USER_HZ: f64 = 100.0;

/// If idle goes back by this much, the CPU was probably hot-plugged: node_exporter then
/// forgets what it had for that CPU.
const JUMP_BACK_SECONDS: f64 = 3.0;

/// Seconds per mode for one CPU, in /proc/stat's column order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CpuTimes {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
    pub guest: f64,
    pub guest_nice: f64,
}

impl CpuTimes {
    fn from_columns(c: &[f64; 10]) -> Self {
        Self {
            user: c[0],
            nice: c[1],
            system: c[2],
            idle: c[3],
            iowait: c[4],
            irq: c[5],
            softirq: c[6],
            steal: c[7],
            guest: c[8],
            guest_nice: c[9],
        }
    }

    fn fields_mut(&mut self) -> [&mut f64; 10] {
        [
            &mut self.user,
            &mut self.nice,
            &mut self.system,
            &mut self.idle,
            &mut self.iowait,
            &mut self.irq,
            &mut self.softirq,
            &mut self.steal,
            &mut self.guest,
            &mut self.guest_nice,
        ]
    }
}

/// Parses the per-CPU `cpuN` lines of /proc/stat (the `cpu` total line is skipped).
/// Missing trailing columns (older kernels) count as zero, as in procfs.
pub(crate) fn parse(text: &str) -> Result<Vec<(u32, CpuTimes)>, ParseError> {
    let mut cpus = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut it = line.split_whitespace();
        let Some(key) = it.next() else { continue };
        let Some(id) = key.strip_prefix("cpu") else {
            continue;
        };
        if id.is_empty() {
            continue;
        }
        let id: u32 = id
            .parse()
            .map_err(|_| ParseError::new(n, format!("bad cpu id in {key:?}")))?;
        let mut cols = [0f64; 10];
        let mut count = 0;
        for (slot, tok) in cols.iter_mut().zip(&mut it) {
            *slot = parse_u64(tok, n, key)? as f64 / USER_HZ;
            count += 1;
        }
        if count == 0 {
            return Err(ParseError::new(n, format!("no values for {key}")));
        }
        cpus.push((id, CpuTimes::from_columns(&cols)));
    }
    Ok(cpus)
}

/// What the last scrape exposed per CPU, so counters never go backwards (idle and
/// iowait can, on some kernels: see the NO_HZ notes in Documentation/filesystems/proc.rst).
#[derive(Debug, Default)]
pub(crate) struct State {
    last: Mutex<HashMap<u32, CpuTimes>>,
}

impl State {
    /// Applies node_exporter's rules: a value lower than the last one keeps the last one,
    /// unless idle dropped by [`JUMP_BACK_SECONDS`] or more, which resets the CPU.
    pub(crate) fn update(&self, fresh: &[(u32, CpuTimes)]) -> Vec<(u32, CpuTimes)> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        fresh
            .iter()
            .map(|(id, new)| {
                let mut cur = last.get(id).copied().unwrap_or_default();
                if cur.idle - new.idle >= JUMP_BACK_SECONDS {
                    log::debug!(
                        "cpu{id} idle jumped back from {} to {}: resetting",
                        cur.idle,
                        new.idle
                    );
                    cur = CpuTimes::default();
                }
                let mut new = *new;
                for (c, n) in cur.fields_mut().into_iter().zip(new.fields_mut()) {
                    if *n >= *c {
                        *c = *n;
                    }
                }
                last.insert(*id, cur);
                (*id, cur)
            })
            .collect()
    }
}

pub(crate) fn render(cpus: &[(u32, CpuTimes)]) -> Vec<Family> {
    let mut seconds = Family::counter(
        "node_cpu_seconds_total",
        "Seconds the CPUs spent in each mode.",
    );
    let mut guest = Family::counter(
        "node_cpu_guest_seconds_total",
        "Seconds the CPUs spent in guests (VMs) for each mode.",
    );
    for (id, t) in cpus {
        let cpu = id.to_string();
        for (mode, v) in [
            ("user", t.user),
            ("nice", t.nice),
            ("system", t.system),
            ("idle", t.idle),
            ("iowait", t.iowait),
            ("irq", t.irq),
            ("softirq", t.softirq),
            ("steal", t.steal),
        ] {
            seconds.push(vec![("cpu", cpu.clone()), ("mode", mode.into())], v);
        }
        // Guest time is also counted in user and nice; node_exporter exposes it apart.
        guest.push(vec![("cpu", cpu.clone()), ("mode", "user".into())], t.guest);
        guest.push(
            vec![("cpu", cpu.clone()), ("mode", "nice".into())],
            t.guest_nice,
        );
    }
    vec![seconds, guest]
}

/// Thermal throttle counts of one CPU directory, as read from sysfs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Throttle {
    pub package: u64,
    pub core: u64,
    pub core_count: Option<u64>,
    pub package_count: Option<u64>,
}

/// node_cpu_core_throttles_total and node_cpu_package_throttles_total; as node_exporter,
/// the first CPU seen for a core (or package) provides its count.
pub(crate) fn render_throttles(cpus: &[Throttle]) -> Vec<Family> {
    let mut cores: BTreeMap<(u64, u64), Option<u64>> = BTreeMap::new();
    let mut packages: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for t in cpus {
        cores.entry((t.package, t.core)).or_insert(t.core_count);
        packages.entry(t.package).or_insert(t.package_count);
    }
    let mut core = Family::counter(
        "node_cpu_core_throttles_total",
        "Number of times this CPU core has been throttled.",
    );
    for ((package, c), count) in cores {
        if let Some(count) = count {
            core.push(
                vec![("package", package.to_string()), ("core", c.to_string())],
                count as f64,
            );
        }
    }
    let mut package = Family::counter(
        "node_cpu_package_throttles_total",
        "Number of times this CPU package has been throttled.",
    );
    for (p, count) in packages {
        if let Some(count) = count {
            package.push(label("package", p.to_string()), count as f64);
        }
    }
    vec![core, package]
}

pub(crate) fn render_isolated(cpus: &[u32]) -> Family {
    let mut f = Family::gauge(
        "node_cpu_isolated",
        "Whether each core is isolated, information from /sys/devices/system/cpu/isolated.",
    );
    for c in cpus {
        f.push(label("cpu", c.to_string()), 1.0);
    }
    f
}

fn read_throttles(cpu_dir: &Path) -> Vec<Throttle> {
    let Ok(entries) = std::fs::read_dir(cpu_dir) else {
        return Vec::new();
    };
    // cpu[0-9]*, in name order like Go's filepath.Glob.
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("cpu")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let num = |p: std::path::PathBuf| read_attr(&p).and_then(|s| s.parse::<u64>().ok());
    dirs.into_iter()
        .filter_map(|d| {
            let package = num(d.join("topology/physical_package_id"))?;
            let core = num(d.join("topology/core_id"))?;
            Some(Throttle {
                package,
                core,
                core_count: num(d.join("thermal_throttle/core_throttle_count")),
                package_count: num(d.join("thermal_throttle/package_throttle_count")),
            })
        })
        .collect()
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let fresh = read_parse(&ctx.proc("stat"), parse)?;
    let cpus = ctx.cpu.update(&fresh);
    let mut families = render(&cpus);

    let isolated_path = ctx.sys("devices/system/cpu/isolated");
    match std::fs::read_to_string(&isolated_path) {
        Ok(text) => {
            let isolated = parse_cpu_list(&text).map_err(|source| CollectError::Parse {
                path: isolated_path.clone(),
                source,
            })?;
            families.push(render_isolated(&isolated));
        }
        // Older kernels have no such file; node_exporter then exposes nothing.
        Err(e) => log::debug!("cannot read {}: {e}", isolated_path.display()),
    }

    families.extend(render_throttles(&read_throttles(
        &ctx.sys("devices/system/cpu"),
    )));
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_real_proc_stat() {
        let cpus = parse(&testutil::read("real", "proc/stat")).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].0, 0);
        assert_eq!(cpus[1].0, 1);
        // cpu0 line of the fixture: "cpu0 9115 0 2489 71586 137 0 13 30 0 0".
        let t = cpus[0].1;
        assert_eq!(t.user, 91.15);
        assert_eq!(t.system, 24.89);
        assert_eq!(t.idle, 715.86);
        assert_eq!(t.iowait, 1.37);
        assert_eq!(t.softirq, 0.13);
        assert_eq!(t.steal, 0.3);
        assert_eq!(t.guest, 0.0);
    }

    #[test]
    fn short_lines_and_gaps() {
        let cpus = parse("cpu  1 2 3 4\ncpu3 100 200 300 400\nintr 5\n").unwrap();
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0].0, 3);
        assert_eq!(cpus[0].1.idle, 4.0);
        assert_eq!(cpus[0].1.steal, 0.0);
        assert!(parse("cpu0\n").is_err());
        assert!(parse("cpu0 x 1\n").is_err());
        assert!(parse("cpux 1 2\n").is_err());
    }

    #[test]
    fn counters_never_go_back() {
        let state = State::default();
        let t = |idle: f64, iowait: f64| CpuTimes {
            idle,
            iowait,
            ..CpuTimes::default()
        };
        assert_eq!(state.update(&[(0, t(100.0, 5.0))])[0].1, t(100.0, 5.0));
        // iowait went back a little: keep the old value.
        assert_eq!(state.update(&[(0, t(101.0, 4.5))])[0].1, t(101.0, 5.0));
        // idle went back a little: keep it too.
        assert_eq!(state.update(&[(0, t(100.5, 6.0))])[0].1, t(101.0, 6.0));
        // idle went back by 3 s or more: hot-plug, start over.
        assert_eq!(state.update(&[(0, t(10.0, 1.0))])[0].1, t(10.0, 1.0));
    }

    #[test]
    fn renders_like_node_exporter() {
        let cpus = parse("cpu0 4968 0 1438 35502 80 0 7 22 0 0\n").unwrap();
        let out = testutil::render(render(&cpus));
        assert!(out.starts_with(
            "# HELP node_cpu_guest_seconds_total Seconds the CPUs spent in guests (VMs) for each mode.\n\
             # TYPE node_cpu_guest_seconds_total counter\n\
             node_cpu_guest_seconds_total{cpu=\"0\",mode=\"nice\"} 0\n\
             node_cpu_guest_seconds_total{cpu=\"0\",mode=\"user\"} 0\n\
             # HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n\
             # TYPE node_cpu_seconds_total counter\n\
             node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 355.02\n\
             node_cpu_seconds_total{cpu=\"0\",mode=\"iowait\"} 0.8\n"
        ), "{out}");
        assert!(out.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 49.68\n"));
    }

    #[test]
    fn throttles_once_per_core_and_package() {
        let t = |package, core, c, p| Throttle {
            package,
            core,
            core_count: c,
            package_count: p,
        };
        let out = testutil::render(render_throttles(&[
            t(0, 0, Some(5), Some(9)),
            t(0, 0, Some(6), Some(10)), // hyper-thread sibling: ignored
            t(0, 1, Some(7), None),
            t(1, 0, None, None),
        ]));
        assert!(out.contains("node_cpu_core_throttles_total{core=\"0\",package=\"0\"} 5\n"));
        assert!(out.contains("node_cpu_core_throttles_total{core=\"1\",package=\"0\"} 7\n"));
        assert!(!out.contains("package=\"1\""));
        assert!(out.contains("node_cpu_package_throttles_total{package=\"0\"} 9\n"));
    }

    #[test]
    fn isolated() {
        let out = testutil::render(vec![render_isolated(&parse_cpu_list("1,3").unwrap())]);
        assert!(out.contains("node_cpu_isolated{cpu=\"1\"} 1\nnode_cpu_isolated{cpu=\"3\"} 1\n"));
        // The fixture machine isolates nothing: the family is empty and not written.
        assert_eq!(testutil::render(vec![render_isolated(&[])]), "");
    }

    #[test]
    fn collect_from_fixture() {
        let fams = collect(&testutil::ctx("real")).unwrap();
        let out = testutil::render(fams);
        assert_eq!(out.matches("node_cpu_seconds_total{").count(), 16);
        assert_eq!(out.matches("node_cpu_guest_seconds_total{").count(), 4);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_stat_like(s in "(cpu[0-9]{0,3}( [0-9x]{1,22}){0,12}\n){0,5}") {
            let _ = parse(&s);
        }
    }
}
