//! Request histograms the event reader observes without taking a lock.
//!
//! prometheus-client's histograms lock a mutex per observation (and the exemplar variant
//! a read-write lock around it): under pipelined Redis load the four atomic
//! read-modify-writes of those locks and their bookkeeping were a fifth of the agent's
//! CPU. [`AtomicHistogram`] keeps one counter per bucket and the sum as the bits of an
//! `f64`, and has one writer: the RED metrics signal, run by the event reader (a scrape
//! only reads). So an observation is a relaxed load and store of its bucket and of the
//! sum, no locked instruction (a locked add and a compare-and-swap were still a tenth of
//! the agent's CPU: each costs a hundred cycles here). The count is the buckets' sum, so a
//! scrape never sees a `_count` that disagrees with the `+Inf` bucket; it may see a sum
//! one observation behind the buckets.
//!
//! Exemplars: prometheus-client builds exemplar values only inside its own histogram type,
//! so when the agent keeps spans, duration histograms are that type
//! ([`DurationHistogram::WithExemplars`]); without spans there are no exemplars to keep and
//! they are atomic.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{exemplar::HistogramWithExemplars, MetricType, TypedMetric},
};

use super::{Observe, SpanExemplar};

/// Most finite bucket bounds a histogram may have (the exposition is built on the stack).
const MAX_BOUNDS: usize = 31;

/// A histogram over fixed bucket bounds, observed with relaxed atomics.
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Finite upper bounds, ascending; the `+Inf` bucket is implicit.
    bounds: &'static [f64],
    /// One per bound, then `+Inf`: observations in each bucket (not cumulative).
    buckets: Box<[AtomicU64]>,
    /// `f64::to_bits` of the sum of observations.
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram over `bounds` (finite, ascending, at most [`MAX_BOUNDS`]).
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(
            bounds.len() <= MAX_BOUNDS
                && bounds.iter().all(|b| b.is_finite())
                && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite, ascending and at most {MAX_BOUNDS}"
        );
        Self {
            inner: Arc::new(Inner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Counts `value` in the first bucket whose bound is not below it (Prometheus' `le`).
    /// One writer at a time (see the module's comment): two threads observing the same
    /// histogram at once could lose an observation.
    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        // Linear: request values sit in the first few buckets, and a NaN falls through
        // to `+Inf`, as in prometheus-client.
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len());
        let counter = &inner.buckets[bucket];
        counter.store(counter.load(Relaxed) + 1, Relaxed);
        let sum = f64::from_bits(inner.sum.load(Relaxed)) + value;
        inner.sum.store(sum.to_bits(), Relaxed);
    }

    /// The sum, the count, and each bucket's (bound, observations), `+Inf` last.
    fn snapshot(&self, buckets: &mut [(f64, u64); MAX_BOUNDS + 1]) -> (f64, u64, usize) {
        let inner = &*self.inner;
        let mut count = 0;
        let bounds = inner.bounds.iter().copied().chain([f64::INFINITY]);
        for ((slot, bound), observed) in buckets.iter_mut().zip(bounds).zip(&*inner.buckets) {
            let n = observed.load(Relaxed);
            count += n;
            *slot = (bound, n);
        }
        (
            f64::from_bits(inner.sum.load(Relaxed)),
            count,
            inner.buckets.len(),
        )
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); MAX_BOUNDS + 1];
        let (sum, count, len) = self.snapshot(&mut buckets);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets[..len], None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl Observe for AtomicHistogram {
    fn observe_with(&self, value: f64, _exemplar: Option<&SpanExemplar>) {
        self.observe(value);
    }
}

/// A request-duration histogram: atomic, or, when the agent keeps spans, one whose
/// buckets each keep the last kept span observed in it as an OpenMetrics exemplar (one
/// slot per bucket, overwritten), so a dashboard panel links to the trace.
#[derive(Clone, Debug)]
pub enum DurationHistogram {
    Atomic(AtomicHistogram),
    WithExemplars(HistogramWithExemplars<SpanExemplar>),
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Atomic(h) => h.encode(encoder),
            Self::WithExemplars(h) => h.encode(encoder),
        }
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl Observe for DurationHistogram {
    fn observe_with(&self, value: f64, exemplar: Option<&SpanExemplar>) {
        match self {
            Self::Atomic(h) => h.observe(value),
            Self::WithExemplars(h) => match exemplar {
                Some(e) => h.observe(value, Some(*e), Some(e.timestamp())),
                None => h.observe(value, None, None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text::encode, metrics::histogram::Histogram};

    /// The text of one registered histogram.
    fn text<M: prometheus_client::registry::Metric>(metric: M) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "help", metric);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    const BOUNDS: [f64; 4] = [0.001, 0.01, 0.1, 1.0];

    /// Every value, bucket edges and NaN and infinities included, is exposed exactly as
    /// prometheus-client's own histogram exposes it.
    #[test]
    fn exposes_what_prometheus_clients_histogram_exposes() {
        let values = [
            0.0005,
            0.001,
            0.0010001,
            0.05,
            0.1,
            1.0,
            3.0,
            f64::INFINITY,
            -2.0,
            0.0,
        ];
        let ours = AtomicHistogram::new(&BOUNDS);
        let theirs = Histogram::new(BOUNDS);
        for v in values {
            ours.observe(v);
            theirs.observe(v);
        }
        assert_eq!(text(ours), text(theirs));
    }

    #[test]
    fn nan_counts_in_the_overflow_bucket_as_prometheus_client_does() {
        let ours = AtomicHistogram::new(&BOUNDS);
        let theirs = Histogram::new(BOUNDS);
        ours.observe(f64::NAN);
        theirs.observe(f64::NAN);
        ours.observe(0.5);
        theirs.observe(0.5);
        assert_eq!(text(ours), text(theirs));
    }

    /// A scrape while the writer observes: every exposition it reads is consistent
    /// (`_count` equals the `+Inf` bucket, buckets never decrease), and the last one has
    /// every observation, with an exact sum (integral values, exact in an f64).
    #[test]
    fn scrapes_during_observations_read_consistent_counts() {
        let h = AtomicHistogram::new(&BOUNDS);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = h.clone();
            let done = &done;
            let scraper = s.spawn(move || {
                let mut last = 0;
                let mut buckets = [(0.0, 0); MAX_BOUNDS + 1];
                while !done.load(Relaxed) {
                    let (_, count, len) = reader.snapshot(&mut buckets);
                    assert_eq!(count, buckets[..len].iter().map(|b| b.1).sum::<u64>());
                    assert!(count >= last, "count went from {last} to {count}");
                    last = count;
                }
            });
            for i in 0..30_000 {
                h.observe((i % 3) as f64);
            }
            done.store(true, Relaxed);
            scraper.join().unwrap();
        });
        let mut buckets = [(0.0, 0); MAX_BOUNDS + 1];
        let (sum, count, len) = h.snapshot(&mut buckets);
        assert_eq!(count, 30_000);
        assert_eq!(len, 5);
        // 0 in the first bucket, 1 at the 1.0 bound, 2 in +Inf.
        assert_eq!(buckets[0].1, 10_000);
        assert_eq!(buckets[3].1, 10_000);
        assert_eq!(buckets[4].1, 10_000);
        assert_eq!(sum, 30_000.0);
    }

    #[test]
    fn duration_histograms_with_exemplars_expose_them() {
        let h = DurationHistogram::WithExemplars(HistogramWithExemplars::new(BOUNDS.into_iter()));
        let exemplar = SpanExemplar {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            end_unix_ns: 1_700_000_000_000_000_000,
        };
        h.observe_with(0.05, Some(&exemplar));
        let with = text(h);
        assert!(
            with.contains(&format!("trace_id=\"{}\"", "ab".repeat(16))),
            "{with}"
        );
        let plain = DurationHistogram::Atomic(AtomicHistogram::new(&BOUNDS));
        plain.observe_with(0.05, Some(&exemplar));
        let plain = text(plain);
        assert!(!plain.contains("trace_id"), "{plain}");
        assert!(plain.contains("h_count 1"), "{plain}");
    }
}
