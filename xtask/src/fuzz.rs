//! `cargo xtask fuzz TARGET [--seconds N]`: AFL++ through cargo-afl on stable Rust.
//!
//! The harness is the `fuzz/` crate (outside the workspace, its own target directory
//! `target/fuzz`): one binary for every target of `nodetap::fuzzing::TARGETS`, chosen by
//! `NODETAP_FUZZ_TARGET`. Seeds come from the binary itself (`seeds TARGET DIR`), made from
//! tests/fixtures; findings land in target/fuzz/out/<target>/default/{crashes,hangs}.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::run_cmd;

/// cargo-afl's version; the `afl` crate in fuzz/Cargo.toml is pinned to the same.
const CARGO_AFL_VERSION: &str = "0.18.2";
/// Seconds per target in CI's smoke run.
pub const SMOKE_SECONDS: u64 = 10;
/// Installs cargo-afl and builds its AFL++ (afl-fuzz and the LLVM runtime) once.
pub fn setup() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["afl", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_AFL_VERSION));
    if !installed {
        run_cmd(Command::new("cargo").args([
            "install",
            "cargo-afl",
            "--locked",
            "--version",
            CARGO_AFL_VERSION,
        ]))?;
    }
    if afl_runtime().is_none() {
        run_cmd(Command::new("cargo").args(["afl", "config", "--build"]))?;
    }
    Ok(())
}

/// cargo-afl's built runtime for this rustc, if `cargo afl config --build` ran.
fn afl_runtime() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".local/share"))
        .join("afl.rs");
    std::fs::read_dir(base).ok()?.flatten().find_map(|rustc| {
        let rt = rustc.path().join(format!(
            "afl.rs-{CARGO_AFL_VERSION}/afl-llvm/afl-compiler-rt.o"
        ));
        rt.exists().then_some(rt)
    })
}

/// One target's run.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    pub execs: u64,
    pub execs_per_sec: f64,
    pub corpus: u64,
    pub crashes: u64,
    pub hangs: u64,
}

/// How long each target runs: `seconds`, or until `executions` (AFL++'s `-E`), capped by
/// `seconds` when both are given.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub seconds: Option<u64>,
    pub executions: Option<u64>,
}

impl Budget {
    /// The command-line words that give this budget, for the record.
    fn words(&self) -> String {
        let mut w = Vec::new();
        if let Some(e) = self.executions {
            w.push(format!("--executions {e}"));
        }
        if let Some(s) = self.seconds {
            w.push(format!("--seconds {s}"));
        }
        w.join(" ")
    }
}

/// Fuzzes `target` (or `all`), `jobs` targets at a time, each for its `budget`;
/// [`check`] tells whether any crashed.
pub fn run(root: &Path, target: &str, budget: Budget, jobs: usize) -> Result<Vec<Outcome>> {
    let target_dir = root.join("target/fuzz");
    run_cmd(
        Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .args(["afl", "build", "--release", "--locked"])
            .env("CARGO_TARGET_DIR", &target_dir),
    )?;
    let bin = target_dir.join("release/nodetap-fuzz");
    // The harness knows its targets (`nodetap::fuzzing::TARGETS`).
    let listed = Command::new(&bin)
        .arg("list")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // `all`, one target, or several separated by commas.
    let targets: Vec<String> = if target == "all" {
        names
    } else {
        let wanted: Vec<String> = target.split(',').map(str::to_owned).collect();
        if let Some(unknown) = wanted.iter().find(|t| !names.contains(t)) {
            bail!(
                "no fuzz target {unknown:?}; targets: all, {}",
                names.join(", ")
            );
        }
        wanted
    };
    std::fs::create_dir_all(target_dir.join("out"))?;
    // `jobs` workers take targets in order; each afl-fuzz is one process on one core.
    let queue = std::sync::Mutex::new(targets.iter().enumerate());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let Some((i, t)) = queue.lock().expect("queue").next() else {
                    return;
                };
                let outcome = fuzz_one(&bin, &target_dir, t, budget);
                results.lock().expect("results").push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, outcome)| outcome).collect()
}

/// One target's run, from fresh seeds into a fresh output directory.
fn fuzz_one(bin: &Path, target_dir: &Path, t: &str, budget: Budget) -> Result<Outcome> {
    let seeds = target_dir.join("seeds").join(t);
    let out = target_dir.join("out").join(t);
    for d in [&seeds, &out] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("cannot empty {}", d.display()))?;
        }
    }
    // AFL++ without its UI prints a line per test case: keep that out of CI's log.
    let log_path = target_dir.join("out").join(format!("{t}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    run_cmd(Command::new(bin).arg("seeds").arg(t).arg(&seeds))?;
    let mut limits = Vec::new();
    if let Some(seconds) = budget.seconds {
        limits.extend(["-V".to_owned(), seconds.to_string()]);
    }
    if let Some(executions) = budget.executions {
        limits.extend(["-E".to_owned(), executions.to_string()]);
    }
    run_cmd(
        Command::new("cargo")
            .args(["afl", "fuzz", "-i"])
            .arg(&seeds)
            .arg("-o")
            .arg(&out)
            // A hang is an input that takes over 5 s: far above any parser's time,
            // far below what a loaded shared machine can add to a normal run.
            .args(["-t", "5000"])
            .args(&limits)
            .arg("--")
            .arg(bin)
            .env("NODETAP_FUZZ_TARGET", t)
            .env("AFL_NO_UI", "1")
            // Shared machines: no core pinning, no CPU governor or core_pattern checks.
            .env("AFL_NO_AFFINITY", "1")
            .env("AFL_SKIP_CPUFREQ", "1")
            .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
            .stdout(log),
    )?;
    let outcome = read_stats(t, &out.join("default"))?;
    eprintln!(
        "xtask: fuzz {t}: {} execs ({:.0}/s), corpus {}, crashes {}, hangs {}",
        outcome.execs, outcome.execs_per_sec, outcome.corpus, outcome.crashes, outcome.hangs
    );
    Ok(outcome)
}

/// Fails if a run saved a crash or a hang, naming where they are.
pub fn check(root: &Path, outcomes: &[Outcome]) -> Result<()> {
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| o.crashes > 0 || o.hangs > 0)
        .map(|o| {
            format!(
                "{}: {} crash(es), {} hang(s) in {}",
                o.target,
                o.crashes,
                o.hangs,
                root.join("target/fuzz/out")
                    .join(&o.target)
                    .join("default")
                    .display()
            )
        })
        .collect();
    if !bad.is_empty() {
        bail!(
            "fuzzing found inputs that crash or hang: fix each, and add the input to tests/fixtures/fuzz/<target>/\n{}",
            bad.join("\n")
        );
    }
    Ok(())
}

/// AFL++'s fuzzer_stats (`key : value` lines).
fn read_stats(target: &str, dir: &Path) -> Result<Outcome> {
    let path = dir.join("fuzzer_stats");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("AFL++ left no {}", path.display()))?;
    let field = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().parse::<f64>().ok())?
            })
            .with_context(|| format!("{} has no {key}", path.display()))
    };
    Ok(Outcome {
        target: target.to_owned(),
        execs: field("execs_done")? as u64,
        execs_per_sec: field("execs_per_sec")?,
        corpus: field("corpus_count")? as u64,
        crashes: field("saved_crashes")? as u64,
        hangs: field("saved_hangs")? as u64,
    })
}

/// The goal of a long run, per target.
const GOAL_EXECUTIONS: u64 = 10_000_000;

/// Writes a run into BENCHMARKS.md (section `fuzz`): one row per target, its latest
/// recorded run with its command and date, so targets fuzzed in separate long runs add
/// up to one table.
pub fn record(
    root: &Path,
    target: &str,
    budget: Budget,
    jobs: usize,
    outcomes: &[Outcome],
) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut rows = recorded_rows(&text);
    let date = Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let jobs = if jobs > 1 {
        format!(" --jobs {jobs}")
    } else {
        String::new()
    };
    let command = format!(
        "`cargo xtask fuzz {target} {}{jobs} --record`",
        budget.words()
    );
    for o in outcomes {
        let row = format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {command} | {date} |",
            o.target,
            o.execs,
            o.execs_per_sec,
            o.corpus,
            o.crashes,
            o.hangs,
            if o.execs >= GOAL_EXECUTIONS {
                "yes"
            } else {
                "no"
            },
        );
        match rows.iter_mut().find(|(t, _)| *t == o.target) {
            Some(r) => r.1 = row,
            None => rows.push((o.target.clone(), row)),
        }
    }
    let reached = rows.iter().filter(|(_, r)| r.contains("| yes |")).count();
    let mut section = format!(
        "## fuzz: AFL++ (cargo-afl {CARGO_AFL_VERSION}) on every parser of outside input\n\n\
         Commands: in each row, as root. Machine: {}, shared with other builds (exec rates \
         are not comparable between runs). Each row is the latest recorded run of its target \
         (`--record` replaces the rows of the targets it ran).\n\n\
         Each target starts from its seeds (tests/fixtures, via `nodetap::fuzzing`), one \
         afl-fuzz instance per target, no dictionary. A crash or hang fails the run. The \
         goal is {GOAL_EXECUTIONS} executions per target: `cargo xtask fuzz all --executions \
         {GOAL_EXECUTIONS} --jobs 2 --record` (about 4.4 hours of one core for all targets \
         at the rates of the 60 s runs), or one target at a time with `TARGET` for `all`. \
         Targets at the goal: **{reached} of {}**.\n\n\
         | target | executions | execs/s | corpus | crashes | hangs | 10^7 reached | command | date |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        crate::bench::machine(),
        rows.len(),
    );
    for (_, row) in &rows {
        section.push_str(row);
        section.push('\n');
    }
    println!("{section}");
    crate::bench::write_section(&path, "fuzz", &section)
}

/// The rows of the recorded `fuzz` section, by target. Rows written before rows carried
/// their command (6 columns) were all from one 60 s run of every target on 2026-11-30.
fn recorded_rows(text: &str) -> Vec<(String, String)> {
    let (Some(a), Some(b)) = (
        text.find("<!-- bench:fuzz -->"),
        text.find("<!-- /bench:fuzz -->"),
    ) else {
        return Vec::new();
    };
    let Some(section) = text.get(a..b) else {
        return Vec::new();
    };
    section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| target"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let target = cells.first()?.to_string();
            let row = match cells.len() {
                6 => {
                    let execs: u64 = cells[1].parse().ok()?;
                    let reached = if execs >= GOAL_EXECUTIONS { "yes" } else { "no" };
                    format!(
                        "| {} | {reached} | `cargo xtask fuzz all --seconds 60 --record` | 2026-11-30 |",
                        cells.join(" | "),
                    )
                }
                9 => l.to_owned(),
                _ => return None,
            };
            Some((target, row))
        })
        .collect()
}
