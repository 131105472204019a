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

/// One scrape (a blocking read of /proc and /sys): the exposition text 0.0.4 `/metrics`
/// serves, and the agent's own families in OpenMetrics text, for their exemplars.
pub type Scrape = Arc<dyn Fn() -> Exposition + Send + Sync>;

/// What a push reads.
pub struct Exposition {
    /// Text 0.0.4: every family.
    pub text: String,
    /// OpenMetrics 1.0.0 of the agent's own families: the histograms' exemplars.
    pub open_metrics: String,
}

/// One exemplar of a histogram bucket, as OpenMetrics writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketExemplar {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub value: f64,
    pub time_unix_nano: u64,
}

/// Exemplars by histogram family and series (labels without `le`).
pub type Exemplars = HashMap<(String, Labels), Vec<BucketExemplar>>;

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
            let Ok(exposition) = tokio::task::spawn_blocking(move || scrape()).await else {
                continue;
            };
            let now = unix_ns();
            let families = parse(&exposition.text);
            let exemplars = exemplars(&exposition.open_metrics);
            let start = if self.delta {
                last_push_ns
            } else {
                self.start_unix_ns
            };
            let request = self.build(&families, &exemplars, start, now, &mut previous);
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
        exemplars: &Exemplars,
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
                                // The kept spans' exemplars; with delta, those of this
                                // interval only (a bucket's slot keeps its last one).
                                exemplars: exemplars
                                    .get(&(family.name.clone(), labels.clone()))
                                    .into_iter()
                                    .flatten()
                                    .filter(|e| !self.delta || e.time_unix_nano > start)
                                    .map(|e| otlp::Exemplar {
                                        time_unix_nano: e.time_unix_nano,
                                        as_double: Some(e.value),
                                        span_id: e.span_id.clone(),
                                        trace_id: e.trace_id.clone(),
                                    })
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

/// The exemplars of an OpenMetrics exposition's histogram buckets:
/// `name_bucket{k="v",...,le="0.5"} 3 # {trace_id="...",span_id="..."} 0.31 1764510000.123`.
/// Lines that do not parse are skipped.
pub fn exemplars(open_metrics: &str) -> Exemplars {
    let mut out = Exemplars::new();
    for line in open_metrics.lines() {
        let Some((sample_part, exemplar)) = line.split_once(" # ") else {
            continue;
        };
        if sample_part.starts_with('#') {
            continue;
        }
        let Some((name, mut labels, _)) = sample(sample_part) else {
            continue;
        };
        let Some(family) = name.strip_suffix("_bucket") else {
            continue;
        };
        labels.retain(|(k, _)| k != "le");
        let Some((ids, rest)) = sample(&format!("e{exemplar}")).and_then(|(_, ids, _)| {
            let rest = exemplar.split_once("} ")?.1;
            Some((ids, rest.to_owned()))
        }) else {
            continue;
        };
        let id = |key: &str| -> Option<Vec<u8>> {
            let hex = &ids.iter().find(|(k, _)| k == key)?.1;
            (hex.len() % 2 == 0)
                .then(|| {
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .flatten()
        };
        let mut numbers = rest.split_whitespace();
        let (Some(trace_id), Some(span_id), Some(Ok(value))) = (
            id("trace_id"),
            id("span_id"),
            numbers.next().map(str::parse::<f64>),
        ) else {
            continue;
        };
        let time_unix_nano = numbers.next().and_then(seconds_to_ns).unwrap_or(0);
        out.entry((family.to_owned(), labels))
            .or_default()
            .push(BucketExemplar {
                trace_id,
                span_id,
                value,
                time_unix_nano,
            });
    }
    out
}

/// A timestamp in decimal seconds (`1764510000.123`) as ns, digit for digit (through a
/// double it would move by up to a microsecond).
fn seconds_to_ns(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction_ns = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u64>().ok()? * 10u64.pow(9 - fraction.len() as u32)
    };
    whole
        .parse::<u64>()
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(fraction_ns)
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
    fn exemplars_come_from_the_buckets_of_the_open_metrics_text() {
        let text = "# TYPE db_client_operation_duration_seconds histogram\n\
            db_client_operation_duration_seconds_sum{db_system_name=\"redis\",service_name=\"a\"} 0.5\n\
            db_client_operation_duration_seconds_bucket{db_system_name=\"redis\",service_name=\"a\",le=\"0.0005\"} 42 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 0.000312 1764510000.125\n\
            db_client_operation_duration_seconds_bucket{db_system_name=\"redis\",service_name=\"a\",le=\"0.001\"} 43\n\
            db_client_operation_duration_seconds_bucket{db_system_name=\"redis\",service_name=\"a\",le=\"+Inf\"} 44 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 2.5 1764510001.5\n\
            db_client_operation_duration_seconds_bucket{db_system_name=\"redis\",service_name=\"b\",le=\"0.001\"} 1 # {trace_id=\"xyz\",span_id=\"00f067aa0ba902b7\"} 0.0001 1764510000\n\
            # EOF\n";
        let got = exemplars(text);
        let labels: Labels = vec![
            ("db_system_name".into(), "redis".into()),
            ("service_name".into(), "a".into()),
        ];
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[&("db_client_operation_duration_seconds".to_owned(), labels)],
            vec![
                BucketExemplar {
                    trace_id: vec![
                        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d,
                        0x0e, 0x0e, 0x47, 0x36
                    ],
                    span_id: vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
                    value: 0.000312,
                    time_unix_nano: 1_764_510_000_125_000_000,
                },
                BucketExemplar {
                    trace_id: vec![
                        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21,
                        0x1c, 0x80, 0x31, 0x9c
                    ],
                    span_id: vec![0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
                    value: 2.5,
                    time_unix_nano: 1_764_510_001_500_000_000,
                },
            ]
        );
    }

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
