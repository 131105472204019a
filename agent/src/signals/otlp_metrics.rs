//! Metrics over OTLP: every `interval`, the families `/metrics` serves (read from the
//! same exposition, so the two never disagree) pushed to an OTLP endpoint over the spans'
//! transport ([`Transport`]): counters as monotonic sums, histograms as explicit-bucket
//! histograms, gauges (and info, untyped) as gauges; summaries are left out (the agent
//! has none of its own). Names and attribute keys are the Prometheus ones (a collector's
//! Prometheus exporter gives them back unchanged).
//!
//! Temporality: cumulative (totals since the agent started) by default; delta sends the
//! difference since the previous push for counters and histograms, so the points of a
//! series sum to its total (a counter that went down, which the agent's never do, restarts
//! from its value).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use prost::Message;
use tokio::time::Instant;

use super::spans::{
    export::{ExportOptions, ExporterError, Transport},
    otlp,
};
use crate::metrics::Metrics;

/// The gRPC method OTLP metric export calls.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// The exposition text 0.0.4 `/metrics` serves (a blocking read of /proc and /sys).
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

pub struct MetricsExporter {
    transport: Transport,
    metrics: Arc<Metrics>,
    interval: Duration,
    delta: bool,
    /// When the agent started: the start of every cumulative point.
    start_unix_ns: u64,
}

/// A series' labels, in the exposition's order.
pub type Labels = Vec<(String, String)>;

/// What delta subtracts: the previous push's values by family and labels.
type PreviousPush = HashMap<(String, Labels), Previous>;

/// One family of the exposition.
#[derive(Debug, Default, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: String,
    /// Series by label set; a histogram's under its labels without `le`.
    pub series: BTreeMap<Labels, Series>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Series {
    /// A counter's or gauge's value.
    pub value: f64,
    /// A histogram's cumulative buckets (upper bound, count), `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// What the previous push sent of a counter or histogram series (for delta).
#[derive(Clone, Debug, Default)]
struct Previous {
    value: f64,
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl MetricsExporter {
    pub fn new(
        options: ExportOptions,
        interval: Duration,
        delta: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ExporterError> {
        Ok(Self {
            transport: Transport::new(options, GRPC_EXPORT_PATH)?,
            metrics,
            interval,
            delta,
            start_unix_ns: unix_ns(),
        })
    }

    /// Pushes every `interval`, and a last time when `stop` is notified (at shutdown),
    /// then returns.
    pub async fn run(self, scrape: Scrape, stop: Arc<tokio::sync::Notify>) {
        let mut previous = PreviousPush::new();
        let mut last_push_ns = self.start_unix_ns;
        let mut ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = false;
        while !last {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.notified() => last = true,
            }
            let scrape = scrape.clone();
            let Ok(text) = tokio::task::spawn_blocking(move || scrape()).await else {
                continue;
            };
            let now = unix_ns();
            let families = parse(&text);
            let start = if self.delta {
                last_push_ns
            } else {
                self.start_unix_ns
            };
            let request = self.build(&families, start, now, &mut previous);
            last_push_ns = now;
            self.push(request.encode_to_vec()).await;
        }
    }

    /// One push, retried while the next one is not due.
    async fn push(&self, message: Vec<u8>) {
        let body = self.transport.frame(message);
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self.transport.send(body.clone()).await.and_then(|m| {
                otlp::ExportMetricsServiceResponse::decode(m.as_ref())
                    .map_err(|_| super::spans::export::ExportError::Decode)
            });
            match result {
                Ok(response) => {
                    if let Some(p) = response
                        .partial_success
                        .filter(|p| p.rejected_data_points > 0)
                    {
                        log::warn!(
                            "the OTLP endpoint rejected {} metric points: {}",
                            p.rejected_data_points,
                            p.error_message
                        );
                    }
                    return;
                }
                Err(e) => {
                    self.metrics.metrics_export_failures.inc();
                    let give_up = !e.retryable() || started.elapsed() + backoff >= self.interval;
                    log::warn!(
                        "OTLP metrics push to {} failed: {}{}",
                        self.transport.url(),
                        crate::error_chain(&e),
                        if give_up {
                            "; the next push sends them again"
                        } else {
                            "; retrying"
                        }
                    );
                    if give_up {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The export request for one push; `previous` is what delta subtracts (and is
    /// updated).
    fn build(
        &self,
        families: &[Family],
        start: u64,
        now: u64,
        previous: &mut PreviousPush,
    ) -> otlp::ExportMetricsServiceRequest {
        let temporality = if self.delta {
            otlp::AGGREGATION_TEMPORALITY_DELTA
        } else {
            otlp::AGGREGATION_TEMPORALITY_CUMULATIVE
        };
        let mut metrics = Vec::with_capacity(families.len());
        for family in families {
            let attributes = |labels: &[(String, String)]| -> Vec<otlp::KeyValue> {
                labels
                    .iter()
                    .map(|(k, v)| otlp::KeyValue::string(k, v.as_str()))
                    .collect()
            };
            let data = match family.kind.as_str() {
                "counter" => {
                    let data_points = family
                        .series
                        .iter()
                        .map(|(labels, series)| {
                            let mut value = series.value;
                            if self.delta {
                                let key = (family.name.clone(), labels.clone());
                                let prev = previous.entry(key).or_default();
                                if value >= prev.value {
                                    value -= prev.value;
                                }
                                prev.value = series.value;
                            }
                            otlp::NumberDataPoint {
                                attributes: attributes(labels),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                as_double: Some(value),
                            }
                        })
                        .collect();
                    otlp::MetricData::Sum(otlp::Sum {
                        data_points,
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    })
                }
                "histogram" => {
                    let data_points = family
                        .series
                        .iter()
                        .map(|(labels, series)| {
                            // OTLP counts per bucket, Prometheus cumulatively.
                            let per_bucket: Vec<u64> = series
                                .buckets
                                .iter()
                                .scan(0u64, |below, (_, c)| {
                                    let n = c.saturating_sub(*below);
                                    *below = *c;
                                    Some(n)
                                })
                                .collect();
                            let mut counts = per_bucket.clone();
                            let (mut count, mut sum) = (series.count, series.sum);
                            if self.delta {
                                let key = (family.name.clone(), labels.clone());
                                let prev = previous.entry(key).or_default();
                                if count >= prev.count && prev.buckets.len() == counts.len() {
                                    for (c, p) in counts.iter_mut().zip(&prev.buckets) {
                                        *c = c.saturating_sub(*p);
                                    }
                                    count -= prev.count;
                                    sum -= prev.sum;
                                }
                                prev.count = series.count;
                                prev.sum = series.sum;
                                prev.buckets = per_bucket;
                            }
                            otlp::HistogramDataPoint {
                                attributes: attributes(labels),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count,
                                sum: Some(sum),
                                bucket_counts: counts,
                                explicit_bounds: series
                                    .buckets
                                    .iter()
                                    .map(|(le, _)| *le)
                                    .filter(|le| le.is_finite())
                                    .collect(),
                            }
                        })
                        .collect();
                    otlp::MetricData::Histogram(otlp::Histogram {
                        data_points,
                        aggregation_temporality: temporality,
                    })
                }
                "summary" => continue,
                // gauge, untyped (an info is a gauge of 1 in the text format).
                _ => otlp::MetricData::Gauge(otlp::Gauge {
                    data_points: family
                        .series
                        .iter()
                        .map(|(labels, series)| otlp::NumberDataPoint {
                            attributes: attributes(labels),
                            start_time_unix_nano: 0,
                            time_unix_nano: now,
                            as_double: Some(series.value),
                        })
                        .collect(),
                }),
            };
            metrics.push(otlp::Metric {
                name: family.name.clone(),
                description: family.help.clone(),
                unit: unit(&family.name).to_owned(),
                data: Some(data),
            });
        }
        let options = self.transport.options();
        let mut resource = vec![otlp::KeyValue::string("service.name", "nodetap")];
        if let Some(zone) = (options.local_zone)() {
            resource.push(otlp::KeyValue::string("cloud.availability_zone", zone));
        }
        for (key, value) in &options.resource {
            if !resource.iter().any(|kv| kv.key == *key) {
                resource.push(otlp::KeyValue::string(key, value.as_str()));
            }
        }
        otlp::ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::ResourceMetrics {
                resource: Some(otlp::Resource {
                    attributes: resource,
                }),
                scope_metrics: vec![otlp::ScopeMetrics {
                    scope: Some(otlp::InstrumentationScope {
                        name: "nodetap".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// The UCUM unit a Prometheus name's suffix states.
fn unit(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The families of a Prometheus text 0.0.4 exposition, in order. Lines that do not parse
/// are skipped (the agent wrote them; a test checks they all parse).
pub fn parse(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    let mut help: Option<(&str, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\n", "\n").replace("\\\\", "\\")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            families.push(Family {
                name: name.to_owned(),
                help: help
                    .take()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, h)| h)
                    .unwrap_or_default(),
                kind: kind.to_owned(),
                series: BTreeMap::new(),
            });
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((name, mut labels, value)) = sample(line) else {
            continue;
        };
        let Some(family) = families.last_mut() else {
            continue;
        };
        if family.kind == "histogram" {
            let Some(part) = name.strip_prefix(family.name.as_str()) else {
                continue;
            };
            let le = labels
                .iter()
                .position(|(k, _)| k == "le")
                .map(|i| labels.remove(i).1);
            let series = family.series.entry(labels).or_default();
            match (part, le) {
                ("_bucket", Some(le)) => {
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::NAN)
                    };
                    series.buckets.push((bound, value as u64));
                }
                ("_sum", _) => series.sum = value,
                ("_count", _) => series.count = value as u64,
                _ => {}
            }
        } else if name == family.name {
            family.series.entry(labels).or_default().value = value;
        }
    }
    families
}

/// `name{k="v",...} value`: the name, labels (unescaped) and value.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start_matches(',');
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            s = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_endpoint_serves() {
        let text = "# HELP a_total Things \\\\ done.\n# TYPE a_total counter\n\
                    a_total{x=\"1\",y=\"q\\\"uo\\\\te\"} 5\n\
                    # HELP h Latency.\n# TYPE h histogram\n\
                    h_bucket{op=\"GET\",le=\"0.5\"} 1\nh_bucket{op=\"GET\",le=\"+Inf\"} 3\n\
                    h_sum{op=\"GET\"} 2.5\nh_count{op=\"GET\"} 3\n\
                    # HELP g A gauge.\n# TYPE g gauge\ng 7\n";
        let families = parse(text);
        assert_eq!(families.len(), 3);
        assert_eq!(
            (families[0].name.as_str(), families[0].help.as_str()),
            ("a_total", "Things \\ done.")
        );
        let labels = vec![
            ("x".to_owned(), "1".to_owned()),
            ("y".to_owned(), "q\"uo\\te".to_owned()),
        ];
        assert_eq!(families[0].series[&labels].value, 5.0);
        let h = &families[1].series[&vec![("op".to_owned(), "GET".to_owned())]];
        assert_eq!(h.buckets, vec![(0.5, 1), (f64::INFINITY, 3)]);
        assert_eq!((h.sum, h.count), (2.5, 3));
        assert_eq!(families[2].series[&Vec::new()].value, 7.0);
    }
}
