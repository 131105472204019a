//! Head sampling as `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` define it, decided at
//! the edge where the outcome is already known: the caller keeps errors and slow requests
//! whatever the sampler says (see [`super::Spans`]).
//!
//! The ratio decision depends on the trace id alone (its low 64 bits against the ratio),
//! so every span this agent emits for a trace gets the same answer, and so do other
//! agents and SDKs that decide the same way (the OpenTelemetry SDKs' `TraceIdRatioBased`).

use std::fmt;

/// The baseline sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps a trace when the low 64 bits of its id are below `ratio * 2^64`.
    TraceIdRatio(f64),
    /// A request that carries a parent (a `traceparent`) follows the parent's sampled
    /// flag; a root follows the inner sampler.
    ParentBased(Root),
}

/// The root sampler of a parent-based one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// The specification's default: `parentbased_always_on`.
impl Default for Sampler {
    fn default() -> Self {
        Sampler::ParentBased(Root::AlwaysOn)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("unknown sampler {name:?} (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")]
    Unknown { name: String },
    #[error("sampler argument {arg:?} is not a ratio from 0 to 1")]
    Ratio { arg: String },
}

impl Sampler {
    /// From the sampler's name and optional argument (a ratio for the ratio samplers,
    /// 1.0 when absent, as the specification says).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            let Some(arg) = arg else { return Ok(1.0) };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(SamplerError::Ratio {
                    arg: arg.to_owned(),
                }),
            }
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(ratio()?)),
            other => {
                return Err(SamplerError::Unknown {
                    name: other.to_owned(),
                })
            }
        })
    }

    /// Whether the baseline keeps a span of `trace_id` whose parent, if it has one, said
    /// `parent_sampled`.
    pub fn keeps(&self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => ratio_keeps(trace_id, r),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::TraceIdRatio(r)) => ratio_keeps(trace_id, r),
            },
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::AlwaysOn => write!(f, "always_on"),
            Sampler::AlwaysOff => write!(f, "always_off"),
            Sampler::TraceIdRatio(r) => write!(f, "traceidratio {r}"),
            Sampler::ParentBased(Root::AlwaysOn) => write!(f, "parentbased_always_on"),
            Sampler::ParentBased(Root::AlwaysOff) => write!(f, "parentbased_always_off"),
            Sampler::ParentBased(Root::TraceIdRatio(r)) => {
                write!(f, "parentbased_traceidratio {r}")
            }
        }
    }
}

/// The low 64 bits of the trace id (big-endian, as W3C writes them) below `ratio * 2^64`.
fn ratio_keeps(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    // The bound as an integer, compared exactly: 2^64 as f64 is exact, and the product
    // rounds by at most 2^11 out of 2^64.
    let bound = (ratio * 18_446_744_073_709_551_616.0) as u128;
    u128::from(low) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> [u8; 16] {
        let mut id = [0xab; 16];
        id[8..].copy_from_slice(&low.to_be_bytes());
        id
    }

    #[test]
    fn names_and_arguments() {
        assert_eq!(Sampler::parse("always_on", None), Ok(Sampler::AlwaysOn));
        assert_eq!(
            Sampler::parse("traceidratio", Some("0.25")),
            Ok(Sampler::TraceIdRatio(0.25))
        );
        assert_eq!(
            Sampler::parse("parentbased_traceidratio", None),
            Ok(Sampler::ParentBased(Root::TraceIdRatio(1.0)))
        );
        assert_eq!(
            Sampler::parse("traceidratio", Some("1.5")),
            Err(SamplerError::Ratio { arg: "1.5".into() })
        );
        assert_eq!(
            Sampler::parse("jaeger_remote", None),
            Err(SamplerError::Unknown {
                name: "jaeger_remote".into()
            })
        );
        assert_eq!(Sampler::default().to_string(), "parentbased_always_on");
    }

    #[test]
    fn ratio_decides_by_the_low_bits_of_the_trace_id() {
        let s = Sampler::TraceIdRatio(0.5);
        assert!(s.keeps(&id(0), None));
        assert!(s.keeps(&id((1 << 63) - 1), None));
        assert!(!s.keeps(&id(1 << 63), None));
        assert!(!s.keeps(&id(u64::MAX), None));
        // A parent's flag does not matter to a plain ratio sampler.
        assert!(!s.keeps(&id(u64::MAX), Some(true)));
        assert!(!Sampler::TraceIdRatio(0.0).keeps(&id(0), None));
        assert!(Sampler::TraceIdRatio(1.0).keeps(&id(u64::MAX), None));
    }

    #[test]
    fn ratio_keeps_its_share_of_spread_ids() {
        // Ids at the middle of 10,000 equal slices of the 64-bit space: exactly the
        // ratio's share is kept.
        let s = Sampler::TraceIdRatio(0.1);
        let step = u64::MAX / 10_000;
        let kept = (0..10_000u64)
            .filter(|i| s.keeps(&id(i * step + step / 2), None))
            .count();
        assert_eq!(kept, 1_000);
    }

    #[test]
    fn parent_based_follows_the_parent_and_the_root_sampler_otherwise() {
        let s = Sampler::ParentBased(Root::AlwaysOff);
        assert!(s.keeps(&id(5), Some(true)));
        assert!(!s.keeps(&id(5), None));
        let s = Sampler::ParentBased(Root::AlwaysOn);
        assert!(!s.keeps(&id(5), Some(false)));
        assert!(s.keeps(&id(5), None));
        let s = Sampler::ParentBased(Root::TraceIdRatio(0.5));
        assert!(s.keeps(&id(1), None) && !s.keeps(&id(u64::MAX), None));
        assert!(s.keeps(&id(u64::MAX), Some(true)));
    }
}
