//! A small parser for the Prometheus text exposition format 0.0.4, for tests.
//!
//! Format: <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>.
//! It is strict where a real scraper would reject or silently mangle what an exporter
//! wrote: bad escapes, unterminated label values, duplicate label names, a `# TYPE`
//! after the family's samples, a family whose samples are not contiguous, and the same
//! series twice are errors, each naming the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The `# TYPE` of a family (`untyped` when there is no `# TYPE` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            "untyped" => MetricType::Untyped,
            _ => return None,
        })
    }

    /// Sample name suffixes that belong to a family of this type.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Histogram => &["_bucket", "_sum", "_count"],
            MetricType::Summary => &["_sum", "_count"],
            _ => &[],
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's own name (`x_bucket` for a bucket of histogram `x`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// Whether the sample's labels include all of `labels` (it may have others too): the
    /// one label match every series query in the tests and benches uses.
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|x| x == v))
    }
}

/// The samples named `name`, in any family, whose labels include all of `labels`.
pub fn select<'a>(
    families: &'a [Family],
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    families
        .iter()
        .flat_map(|f| f.samples.iter())
        .filter(move |s| s.name == name && s.has_labels(labels))
}

/// A metric family: its `# HELP` (unescaped), `# TYPE` and samples in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: MetricType,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// Label names used by any sample of the family (`le`/`quantile` included).
    pub fn label_names(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }

    /// The samples named like the family whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == self.name && s.has_labels(labels))
    }

    /// The value of the one sample named like the family whose labels include all of
    /// `labels`; `None` if there is none or more than one.
    pub fn value(&self, labels: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.matching(labels);
        let first = it.next()?;
        if it.next().is_some() {
            return None;
        }
        Some(first.value)
    }

    /// The sum over samples named like the family whose labels include all of `labels`.
    pub fn sum(&self, labels: &[(&str, &str)]) -> f64 {
        self.matching(labels).map(|s| s.value).sum()
    }
}

/// Where and why the text is not valid exposition format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole exposition into its families, in order.
pub fn parse(text: &str) -> Result<Vec<Family>, ParseError> {
    let mut families: Vec<Open> = Vec::new();
    // Names of families already closed (another family came after them).
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();

    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let err = |message: String| ParseError { line: n, message };
        let line = raw.trim_start_matches([' ', '\t']);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start_matches([' ', '\t']);
            let (keyword, rest) = split_token(comment);
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let (name, rest) = split_token(rest);
            if !valid_metric_name(name) {
                return Err(err(format!("invalid metric name {name:?} in # {keyword}")));
            }
            let fam = open_family(&mut families, &mut closed, name).map_err(err)?;
            if keyword == "HELP" {
                if fam.help.is_some() {
                    return Err(err(format!("second # HELP for {name}")));
                }
                fam.help = Some(unescape_help(rest).map_err(err)?);
            } else {
                let kind = MetricType::parse(rest.trim_end_matches([' ', '\t']))
                    .ok_or_else(|| err(format!("unknown type {rest:?} for {name}")))?;
                if !fam.samples.is_empty() {
                    return Err(err(format!("# TYPE for {name} after its samples")));
                }
                if fam.typed {
                    return Err(err(format!("second # TYPE for {name}")));
                }
                fam.kind = kind;
                fam.typed = true;
            }
            continue;
        }
        let sample = parse_sample(line).map_err(err)?;
        // Which family does the sample belong to?
        let family_name = match families.last() {
            Some(f)
                if sample.name == f.fam.name
                    || f.fam
                        .kind
                        .suffixes()
                        .iter()
                        .any(|s| sample.name.strip_suffix(s) == Some(f.fam.name.as_str())) =>
            {
                f.fam.name.clone()
            }
            _ => sample.name.clone(),
        };
        let fam = open_family(&mut families, &mut closed, &family_name).map_err(err)?;
        let key = (
            sample.name.clone(),
            sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>(),
        );
        if !series.insert(key) {
            return Err(err(format!("duplicate series {line:?}")));
        }
        fam.samples.push(sample);
    }
    Ok(families.into_iter().map(|f| f.fam).collect())
}

/// [`parse`], keyed by family name.
pub fn parse_map(text: &str) -> Result<BTreeMap<String, Family>, ParseError> {
    Ok(parse(text)?
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect())
}

struct Open {
    fam: Family,
    typed: bool,
}

impl std::ops::Deref for Open {
    type Target = Family;
    fn deref(&self) -> &Family {
        &self.fam
    }
}

impl std::ops::DerefMut for Open {
    fn deref_mut(&mut self) -> &mut Family {
        &mut self.fam
    }
}

/// The family `name`, which must be the current one or new.
fn open_family<'a>(
    families: &'a mut Vec<Open>,
    closed: &mut BTreeSet<String>,
    name: &str,
) -> Result<&'a mut Open, String> {
    let is_current = families.last().is_some_and(|f| f.fam.name == name);
    if !is_current {
        if closed.contains(name) {
            return Err(format!("family {name} is not contiguous"));
        }
        if let Some(prev) = families.last() {
            closed.insert(prev.fam.name.clone());
        }
        families.push(Open {
            fam: Family {
                name: name.to_string(),
                kind: MetricType::Untyped,
                help: None,
                samples: Vec::new(),
            },
            typed: false,
        });
    }
    Ok(families.last_mut().expect("just pushed"))
}

fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                // The format only defines \\ and \n in HELP; Prometheus keeps others as is.
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => {
            // Only digits, signs, a dot and an exponent: Rust would also take "inf", "nan".
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'));
            if ok {
                s.parse().ok()
            } else {
                None
            }
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut fields = rest.split([' ', '\t']).filter(|t| !t.is_empty());
    let value = fields
        .next()
        .ok_or_else(|| format!("no value for {name}"))?;
    let value = parse_value(value).ok_or_else(|| format!("invalid value {value:?}"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {t:?}"))?,
        ),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `name="value",...}` (the opening brace already consumed); returns the labels
/// and what follows the closing brace.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| "label without '='".to_string())?;
        let lname = rest[..eq].trim_end_matches([' ', '\t']);
        if !valid_label_name(lname) {
            return Err(format!("invalid label name {lname:?}"));
        }
        rest = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let body = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("label value of {lname} is not quoted"))?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value of {lname}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "invalid escape {:?} in label value of {lname}",
                            other.map(|(_, c)| c)
                        ))
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(lname.to_string(), value).is_some() {
            return Err(format!("duplicate label name {lname}"));
        }
        rest = body[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {lname}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 355.02
node_cpu_seconds_total{cpu="0",mode="user"} 49.68
node_cpu_seconds_total{cpu="1",mode="idle"} 322.86
# HELP node_boot_time_seconds Node boot time, in unixtime.
# TYPE node_boot_time_seconds gauge
node_boot_time_seconds 1.795314435e+09
# HELP node_vmstat_pgfault /proc/vmstat information field pgfault.
# TYPE node_vmstat_pgfault untyped
node_vmstat_pgfault 4.266143e+06
"#;

    #[test]
    fn node_exporter_text() {
        let fams = parse(NODE).unwrap();
        assert_eq!(fams.len(), 3);
        let cpu = &fams[0];
        assert_eq!(cpu.name, "node_cpu_seconds_total");
        assert_eq!(cpu.kind, MetricType::Counter);
        assert_eq!(
            cpu.help.as_deref(),
            Some("Seconds the CPUs spent in each mode.")
        );
        assert_eq!(cpu.samples.len(), 3);
        assert_eq!(
            cpu.label_names(),
            ["cpu", "mode"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(cpu.value(&[("cpu", "0"), ("mode", "idle")]), Some(355.02));
        assert_eq!(cpu.value(&[("mode", "idle")]), None, "two samples match");
        assert_eq!(cpu.sum(&[("mode", "idle")]), 355.02 + 322.86);
        assert_eq!(fams[1].samples[0].value, 1.795314435e9);
        assert!(fams[1].samples[0].labels.is_empty());
        assert_eq!(fams[2].kind, MetricType::Untyped);
        let map = parse_map(NODE).unwrap();
        assert_eq!(map["node_vmstat_pgfault"].samples[0].value, 4266143.0);
    }

    #[test]
    fn escapes_and_special_values() {
        let text = "# HELP x a \\\\ b\\nc \\q\n# TYPE x gauge\n\
                    x{a=\"q\\\"uote\",b=\"back\\\\slash\",c=\"new\\nline\",d=\"\"} NaN\n\
                    x{a=\"2\"} +Inf 1700000000000\n\
                    x{a=\"3\",} -Inf\n\
                    x{ a = \"4\" } -1.5e-07\n";
        let f = &parse(text).unwrap()[0];
        assert_eq!(f.help.as_deref(), Some("a \\ b\nc \\q"));
        let s = &f.samples[0];
        assert_eq!(s.labels["a"], "q\"uote");
        assert_eq!(s.labels["b"], "back\\slash");
        assert_eq!(s.labels["c"], "new\nline");
        assert_eq!(s.labels["d"], "");
        assert!(s.value.is_nan());
        assert_eq!(f.samples[1].value, f64::INFINITY);
        assert_eq!(f.samples[1].timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(f.samples[2].value, f64::NEG_INFINITY);
        assert_eq!(f.samples[3].value, -1.5e-7);
    }

    #[test]
    fn histograms_group_their_samples() {
        let text = "# TYPE rpc_seconds histogram\n\
                    rpc_seconds_bucket{le=\"0.1\"} 1\n\
                    rpc_seconds_bucket{le=\"+Inf\"} 2\n\
                    rpc_seconds_sum 0.3\n\
                    rpc_seconds_count 2\n\
                    other_total 5\n";
        let fams = parse(text).unwrap();
        assert_eq!(fams.len(), 2);
        assert_eq!(fams[0].kind, MetricType::Histogram);
        assert_eq!(fams[0].samples.len(), 4);
        assert_eq!(fams[0].samples[3].name, "rpc_seconds_count");
        assert_eq!(fams[0].value(&[]), None, "no sample named like the family");
        assert_eq!(fams[1].name, "other_total");
        assert_eq!(fams[1].kind, MetricType::Untyped);
    }

    #[test]
    fn rejects_what_prometheus_rejects() {
        let bad = [
            ("x{a=\"b} 1\n", 1),
            ("x{a=b} 1\n", 1),
            ("x{a=\"\\t\"} 1\n", 1),
            ("x{a=\"1\",a=\"2\"} 1\n", 1),
            ("x{1a=\"1\"} 1\n", 1),
            ("x 1 2 3\n", 1),
            ("x one\n", 1),
            ("x\n", 1),
            ("x inf\n", 1),
            ("1x 1\n", 1),
            ("# TYPE x gauge\n# TYPE x counter\nx 1\n", 2),
            ("# TYPE x bogus\n", 1),
            ("x 1\n# TYPE x gauge\n", 2),
            ("x 1\ny 1\nx 2\n", 3),
            ("x{a=\"1\"} 1\nx{a=\"1\"} 2\n", 2),
            ("# HELP x a\n# HELP x b\n", 2),
        ];
        for (text, line) in bad {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    #[test]
    fn comments_and_blank_lines() {
        let fams = parse("# just a comment\n\n  # another\nx 1\n\n").unwrap();
        assert_eq!(fams.len(), 1);
        assert!(parse("").unwrap().is_empty());
    }
}
