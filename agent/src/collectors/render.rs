//! The in-memory shape of what collectors produce, and its rendering to the Prometheus
//! text exposition format 0.0.4.
//!
//! Format reference: <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>.
//! Values are written the way node_exporter's Go client writes them (`strconv` `'g'`
//! with the shortest representation), so a diff against node_exporter's output only
//! shows real differences.

use std::fmt::Write as _;

/// The `# TYPE` of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    Untyped,
    /// Only from the textfile collector: `_bucket`, `_sum` and `_count` samples.
    Histogram,
    /// Only from the textfile collector: quantile, `_sum` and `_count` samples.
    Summary,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Untyped => "untyped",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
        }
    }
}

/// One sample: label pairs (names are always static in node_exporter's families) and a value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
    /// Appended to the family name: `_bucket`, `_sum`, `_count` for histograms and
    /// summaries, empty otherwise.
    pub suffix: &'static str,
}

/// A metric family: name, help, type and its samples.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Family {
    pub name: String,
    pub help: String,
    pub kind: MetricType,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: MetricType) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    pub fn gauge(name: impl Into<String>, help: impl Into<String>) -> Self {
        Self::new(name, help, MetricType::Gauge)
    }

    pub fn counter(name: impl Into<String>, help: impl Into<String>) -> Self {
        Self::new(name, help, MetricType::Counter)
    }

    /// A family with a single unlabelled sample.
    pub fn single(
        name: impl Into<String>,
        help: impl Into<String>,
        kind: MetricType,
        value: f64,
    ) -> Self {
        let mut f = Self::new(name, help, kind);
        f.push(Vec::new(), value);
        f
    }

    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.push_suffixed("", labels, value);
    }

    /// Adds a sample written as `<name><suffix>` (histogram and summary parts).
    pub fn push_suffixed(
        &mut self,
        suffix: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.samples.push(Sample {
            labels,
            value,
            suffix,
        });
    }

    /// Adds a sample with the given labels and value (builder style).
    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        self.push(labels, value);
        self
    }
}

/// Appends `families` to `out`, sorted by family name and, within a family, by label
/// values (the order Go's client library produces). Families with the same name are
/// merged; a family without samples is skipped, as the Go client does.
pub(crate) fn write_families(out: &mut String, mut families: Vec<Family>) {
    families.sort_by(|a, b| a.name.cmp(&b.name));
    let mut merged: Vec<Family> = Vec::with_capacity(families.len());
    for f in families {
        match merged.last_mut() {
            Some(last) if last.name == f.name => last.samples.extend(f.samples),
            _ => merged.push(f),
        }
    }
    for mut f in merged {
        if f.samples.is_empty() {
            continue;
        }
        for s in &mut f.samples {
            s.labels.sort_by(|a, b| a.0.cmp(b.0));
        }
        if matches!(f.kind, MetricType::Histogram | MetricType::Summary) {
            // A histogram's or summary's samples of one series stay in the order they
            // were pushed (buckets by bound, then _sum, _count): the sort is stable and
            // ignores `le` and `quantile`.
            f.samples.sort_by(|a, b| {
                let key = |s: &Sample| {
                    s.labels
                        .iter()
                        .filter(|(n, _)| !matches!(*n, "le" | "quantile"))
                        .map(|(_, v)| v.clone())
                        .collect::<Vec<String>>()
                };
                key(a).cmp(&key(b))
            });
        } else {
            f.samples.sort_by(|a, b| {
                a.labels
                    .iter()
                    .map(|(_, v)| v.as_str())
                    .cmp(b.labels.iter().map(|(_, v)| v.as_str()))
            });
        }
        write_family(out, &f);
    }
}

fn write_family(out: &mut String, f: &Family) {
    out.push_str("# HELP ");
    out.push_str(&f.name);
    out.push(' ');
    escape_help(out, &f.help);
    out.push('\n');
    out.push_str("# TYPE ");
    out.push_str(&f.name);
    out.push(' ');
    out.push_str(f.kind.as_str());
    out.push('\n');
    for s in &f.samples {
        out.push_str(&f.name);
        out.push_str(s.suffix);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                escape_label_value(out, value);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        write_float(out, s.value);
        out.push('\n');
    }
}

/// HELP text escaping: backslash and line feed.
pub(crate) fn escape_help(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Label value escaping: backslash, double quote and line feed.
pub(crate) fn escape_label_value(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `v` like Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits that
/// round-trip, in exponent form when the decimal exponent is < -4 or >= 6 (Go uses
/// precision 6 for that decision in shortest mode), with at least two exponent digits
/// (`1.795314435e+09`). Prometheus parses both forms.
pub(crate) fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if v == 0.0 {
        // Also turns -0 into 0, like the Go client.
        out.push('0');
        return;
    }
    // Rust's `{:e}` without precision gives the shortest round-trip digits.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        out.push_str(mantissa);
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{:02}", exp.unsigned_abs());
    } else {
        // Display also gives the shortest round-trip digits, never in exponent form.
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(v: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, v);
        s
    }

    #[test]
    fn floats_like_go() {
        // Left: what node_exporter printed on the development machine.
        assert_eq!(fmt(1.795314435e9), "1.795314435e+09");
        assert_eq!(fmt(424847.0), "424847");
        assert_eq!(fmt(4.266143e6), "4.266143e+06");
        assert_eq!(fmt(355.02), "355.02");
        assert_eq!(fmt(8.5918e-05), "8.5918e-05");
        assert_eq!(fmt(0.000174028), "0.000174028");
        assert_eq!(fmt(11.860914000000001), "11.860914000000001");
        assert_eq!(fmt(-125000.0), "-125000");
        assert_eq!(fmt(3.5184372087808e13), "3.5184372087808e+13");
        assert_eq!(fmt(1e6), "1e+06");
        assert_eq!(fmt(1.0), "1");
        assert_eq!(fmt(-0.0), "0");
        assert_eq!(fmt(1e300), "1e+300");
        assert_eq!(fmt(f64::NAN), "NaN");
        assert_eq!(fmt(f64::INFINITY), "+Inf");
        assert_eq!(fmt(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn floats_round_trip() {
        for v in [
            0.1,
            1.0 / 3.0,
            123456789.123,
            2.5276502016e10,
            u64::MAX as f64,
            f64::MIN_POSITIVE,
            -7e-10,
        ] {
            let s = fmt(v);
            assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
        }
    }

    #[test]
    fn escapes() {
        let mut s = String::new();
        escape_label_value(&mut s, "a\\b\"c\nd");
        assert_eq!(s, r#"a\\b\"c\nd"#);
        let mut s = String::new();
        escape_help(&mut s, "a\\b\"c\nd");
        assert_eq!(s, r#"a\\b"c\nd"#);
    }

    /// Undoes [`escape_label_value`].
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(c) => out.push(c),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn any_float_round_trips(bits in proptest::prelude::any::<u64>()) {
            let v = f64::from_bits(bits);
            let s = fmt(v);
            if v.is_nan() {
                proptest::prop_assert_eq!(s, "NaN");
            } else if v.is_finite() {
                proptest::prop_assert_eq!(s.parse::<f64>().unwrap(), v);
            }
        }

        #[test]
        fn any_label_value_round_trips(v in "\\PC*|[\\\\\"\n]{0,8}") {
            let mut s = String::new();
            escape_label_value(&mut s, &v);
            proptest::prop_assert!(!s.contains('\n'));
            proptest::prop_assert_eq!(unescape(&s), v);
        }
    }

    #[test]
    fn sorted_and_merged() {
        let fams = vec![
            Family::gauge("b", "B.").with(vec![("x", "2".into())], 2.0),
            Family::gauge("a", "A.").with(vec![], 1.0),
            Family::gauge("b", "B.").with(vec![("x", "1".into())], 1.0),
            Family::gauge("c", "empty is skipped"),
        ];
        let mut out = String::new();
        write_families(&mut out, fams);
        assert_eq!(
            out,
            "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb{x=\"1\"} 1\nb{x=\"2\"} 2\n"
        );
    }
}
