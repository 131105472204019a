//! `timex`: the kernel clock discipline state from adjtimex(2) with no modes set (a
//! read), converted exactly as node_exporter does (`collector/timex.go`).

use super::render::{Family, MetricType};
use super::{CollectError, Ctx};

/// adjtimex's return value when the clock is not synchronised (`TIME_ERROR`).
const TIME_ERROR: i32 = 5;
/// `STA_NANO`: offsets and jitter are in nanoseconds rather than microseconds.
const STA_NANO: i32 = 0x2000;
/// Frequencies are in ppm with a 16-bit fraction.
const PPM16FRAC: f64 = 1_000_000.0 * 65536.0;

/// The adjtimex fields node_exporter reads, as plain numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Timex {
    pub state: i32,
    pub offset: i64,
    pub freq: i64,
    pub maxerror: i64,
    pub esterror: i64,
    pub status: i32,
    pub constant: i64,
    pub tick: i64,
    pub ppsfreq: i64,
    pub jitter: i64,
    pub shift: i32,
    pub stabil: i64,
    pub jitcnt: i64,
    pub calcnt: i64,
    pub errcnt: i64,
    pub stbcnt: i64,
    pub tai: i32,
}

pub(crate) fn render(t: &Timex) -> Vec<Family> {
    let divisor = if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    let g = |name: &str, help: &str, v: f64| {
        Family::single(format!("node_timex_{name}"), help, MetricType::Gauge, v)
    };
    let c = |name: &str, help: &str, v: f64| {
        Family::single(format!("node_timex_{name}"), help, MetricType::Counter, v)
    };
    vec![
        g(
            "sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            if t.state == TIME_ERROR { 0.0 } else { 1.0 },
        ),
        g(
            "offset_seconds",
            "Time offset in between local system and reference clock.",
            t.offset as f64 / divisor,
        ),
        g(
            "frequency_adjustment_ratio",
            "Local clock frequency adjustment.",
            1.0 + t.freq as f64 / PPM16FRAC,
        ),
        g(
            "maxerror_seconds",
            "Maximum error in seconds.",
            t.maxerror as f64 / 1e6,
        ),
        g(
            "estimated_error_seconds",
            "Estimated error in seconds.",
            t.esterror as f64 / 1e6,
        ),
        g(
            "status",
            "Value of the status array bits.",
            f64::from(t.status),
        ),
        g(
            "loop_time_constant",
            "Phase-locked loop time constant.",
            t.constant as f64,
        ),
        g(
            "tick_seconds",
            "Seconds between clock ticks.",
            t.tick as f64 / 1e6,
        ),
        g(
            "pps_frequency_hertz",
            "Pulse per second frequency.",
            t.ppsfreq as f64 / PPM16FRAC,
        ),
        g(
            "pps_jitter_seconds",
            "Pulse per second jitter.",
            t.jitter as f64 / divisor,
        ),
        g(
            "pps_shift_seconds",
            "Pulse per second interval duration.",
            f64::from(t.shift),
        ),
        g(
            "pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            t.stabil as f64 / PPM16FRAC,
        ),
        c(
            "pps_jitter_total",
            "Pulse per second count of jitter limit exceeded events.",
            t.jitcnt as f64,
        ),
        c(
            "pps_calibration_total",
            "Pulse per second count of calibration intervals.",
            t.calcnt as f64,
        ),
        c(
            "pps_error_total",
            "Pulse per second count of calibration errors.",
            t.errcnt as f64,
        ),
        c(
            "pps_stability_exceeded_total",
            "Pulse per second count of stability limit exceeded events.",
            t.stbcnt as f64,
        ),
        g(
            "tai_offset_seconds",
            "International Atomic Time (TAI) offset.",
            f64::from(t.tai),
        ),
    ]
}

fn adjtimex() -> std::io::Result<Timex> {
    // SAFETY: a zeroed timex with modes 0 only reads; the kernel writes into `buf`.
    let mut buf: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut buf) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Timex {
        state,
        offset: buf.offset as i64,
        freq: buf.freq as i64,
        maxerror: buf.maxerror as i64,
        esterror: buf.esterror as i64,
        status: buf.status,
        constant: buf.constant as i64,
        tick: buf.tick as i64,
        ppsfreq: buf.ppsfreq as i64,
        jitter: buf.jitter as i64,
        shift: buf.shift,
        stabil: buf.stabil as i64,
        jitcnt: buf.jitcnt as i64,
        calcnt: buf.calcnt as i64,
        errcnt: buf.errcnt as i64,
        stbcnt: buf.stbcnt as i64,
        tai: buf.tai,
    })
}

pub(crate) fn collect(_ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    match adjtimex() {
        Ok(t) => Ok(render(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(CollectError::NoData {
            reason: "adjtimex is not permitted",
        }),
        Err(source) => Err(CollectError::Read {
            path: "adjtimex(2)".into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    /// What node_exporter printed on the development VM (unsynchronised clock, status
    /// STA_UNSYNC) for these adjtimex values.
    #[test]
    fn converts_like_node_exporter() {
        let t = Timex {
            state: 5,
            maxerror: 16_000_000,
            esterror: 16_000_000,
            status: 64,
            constant: 2,
            tick: 10_000,
            ..Timex::default()
        };
        let out = testutil::render(render(&t));
        for line in [
            "node_timex_sync_status 0\n",
            "node_timex_maxerror_seconds 16\n",
            "node_timex_estimated_error_seconds 16\n",
            "node_timex_status 64\n",
            "node_timex_loop_time_constant 2\n",
            "node_timex_tick_seconds 0.01\n",
            "node_timex_frequency_adjustment_ratio 1\n",
            "# TYPE node_timex_pps_error_total counter\n",
        ] {
            assert!(out.contains(line), "{line:?} missing in\n{out}");
        }
        // Nanosecond mode divides the offset by 1e9, and a synchronised state reads 1.
        let t = Timex {
            state: 0,
            offset: 1_500_000_000,
            status: STA_NANO,
            freq: 65536,
            ..Timex::default()
        };
        let out = testutil::render(render(&t));
        assert!(out.contains("node_timex_offset_seconds 1.5\n"), "{out}");
        assert!(out.contains("node_timex_sync_status 1\n"), "{out}");
        assert!(
            out.contains("node_timex_frequency_adjustment_ratio 1.000001\n"),
            "{out}"
        );
    }

    #[test]
    fn live_read_works() {
        assert_eq!(collect(&testutil::ctx("real")).unwrap().len(), 17);
    }
}
