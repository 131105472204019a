//! The agent's CPU budget: above it, new connections are counted but not parsed until
//! the agent has been back under the budget for a while. Parsing is what costs CPU per
//! byte; counting stays exact (the kernel keeps the counters), so a hot node loses
//! request metrics of new connections, never bytes, and the loss is counted.
//!
//! Checked on a timer from the process's own CPU time (user + system, all threads), never
//! per record.

/// Fraction of one core the agent may use by default.
pub const DEFAULT_CPU_BUDGET: f64 = 0.5;

/// Windows in a row under the budget (with margin) before parsing resumes: a load that
/// hovers around the budget does not flip the agent back and forth every second.
const CALM_WINDOWS: u32 = 5;

/// Fraction of the budget a window must stay under to count as calm.
const CALM_MARGIN: f64 = 0.8;

/// Whether the agent is over its CPU budget, from one window of CPU time at a time.
#[derive(Debug)]
pub struct CpuBudget {
    /// Fraction of one core.
    budget: f64,
    degraded: bool,
    calm: u32,
}

impl CpuBudget {
    pub fn new(budget: f64) -> Self {
        Self {
            budget,
            degraded: false,
            calm: 0,
        }
    }

    /// Whether the agent is over its budget now.
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Takes one window (`cpu_s` of CPU time over `wall_s` seconds) and returns whether
    /// the agent is degraded from now on.
    pub fn update(&mut self, cpu_s: f64, wall_s: f64) -> bool {
        if wall_s <= 0.0 {
            return self.degraded;
        }
        let used = cpu_s / wall_s;
        if used > self.budget {
            self.degraded = true;
            self.calm = 0;
        } else if self.degraded && used < self.budget * CALM_MARGIN {
            self.calm += 1;
            if self.calm >= CALM_WINDOWS {
                self.degraded = false;
                self.calm = 0;
            }
        } else {
            self.calm = 0;
        }
        self.degraded
    }
}

/// CPU time this process has used so far (user + system, all threads), in seconds.
pub fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrades_above_the_budget_and_recovers_after_calm_windows() {
        let mut b = CpuBudget::new(0.5);
        assert!(!b.update(0.4, 1.0), "under the budget");
        assert!(b.update(0.6, 1.0), "over it");
        // Under the budget but not by the margin: still degraded, not calm.
        for _ in 0..10 {
            assert!(b.update(0.45, 1.0));
        }
        for _ in 0..CALM_WINDOWS - 1 {
            assert!(b.update(0.1, 1.0), "calm, but not long enough");
        }
        // One hot window starts the calm count again.
        assert!(b.update(0.9, 1.0));
        for _ in 0..CALM_WINDOWS - 1 {
            assert!(b.update(0.1, 1.0));
        }
        assert!(
            !b.update(0.1, 1.0),
            "parsing resumes after the calm windows"
        );
        assert!(!b.update(0.0, 0.0), "an empty window changes nothing");
    }

    #[test]
    fn own_cpu_time_grows() {
        let before = process_cpu_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds() > before);
    }
}
