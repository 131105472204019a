//! `textfile`: metrics that other programs write as `*.prom` files (text exposition
//! format) into `--collector.textfile.directory`, served as node_exporter serves them
//! (`collector/textfile.go`): each file parsed whole, a file that does not parse or
//! carries client-side timestamps skipped and reported through
//! `node_textfile_scrape_error 1` (never failing the scrape),
//! `node_textfile_mtime_seconds{file}` for every file read, and a family without HELP
//! given `Metric read from <files>`.
//!
//! Label names come from files, so they are interned (the exposition model keeps them
//! as `&'static str`); at most [`MAX_LABEL_NAMES`] distinct names over the agent's life
//! bound that memory, and a file that would exceed it counts as a bad file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::render::{Family, MetricType};
use super::{CollectError, Ctx, ParseError};

pub(crate) const MAX_LABEL_NAMES: usize = 4096;

fn intern(name: &str) -> Option<&'static str> {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(n) = set.get(name) {
        return Some(n);
    }
    if set.len() >= MAX_LABEL_NAMES {
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(leaked);
    Some(leaked)
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed family: HELP (if given), TYPE (untyped if not given), samples in file order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawFamily {
    pub name: String,
    pub help: Option<String>,
    pub kind: MetricType,
    pub samples: Vec<RawSample>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn unescape(s: &str, line: usize, label_value: bool) -> Result<String, ParseError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label_value => out.push('"'),
            other => {
                return Err(ParseError::new(
                    line,
                    format!(
                        "invalid escape \\{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

type RawLabels = Vec<(String, String)>;

/// `{a="b",c="d"}` starting at the `{`: the pairs and the rest after `}`.
fn parse_labels(s: &str, line: usize) -> Result<(RawLabels, &str), ParseError> {
    let mut rest = &s[1..];
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| ParseError::new(line, "label without '='"))?;
        let name = rest[..eq].trim();
        if !is_name(name) || name.contains(':') {
            return Err(ParseError::new(
                line,
                format!("invalid label name {name:?}"),
            ));
        }
        rest = rest[eq + 1..].trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| ParseError::new(line, "label value not quoted"))?;
        // The closing quote is the first one not escaped.
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if i >= bytes.len() {
            return Err(ParseError::new(line, "unterminated label value"));
        }
        let value = unescape(&rest[..i], line, true)?;
        if labels.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(ParseError::new(line, format!("duplicate label {name:?}")));
        }
        labels.push((name.to_string(), value));
        rest = rest[i + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(ParseError::new(line, "expected ',' or '}' after a label"));
        }
    }
}

/// The value as Prometheus' text format spells it (Go's ParseFloat plus `+Inf`/`-Inf`/`NaN`).
fn parse_value(s: &str, line: usize) -> Result<f64, ParseError> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse()
            .map_err(|_| ParseError::new(line, format!("{s:?} is not a number"))),
    }
}

/// The family a sample named `name` belongs to, given the TYPEs declared so far.
fn family_of(name: &str, types: &BTreeMap<String, MetricType>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            let grouped = match types.get(base) {
                Some(MetricType::Histogram) => true,
                Some(MetricType::Summary) => suffix != "_bucket",
                _ => false,
            };
            if grouped {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Parses one file in the text exposition format 0.0.4. Any error, and any sample with
/// a timestamp, rejects the whole file (as node_exporter does).
pub(crate) fn parse(text: &str) -> Result<Vec<RawFamily>, ParseError> {
    let mut families: Vec<RawFamily> = Vec::new();
    let mut types: BTreeMap<String, MetricType> = BTreeMap::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut get = |families: &mut Vec<RawFamily>, name: &str| -> usize {
        *index.entry(name.to_string()).or_insert_with(|| {
            families.push(RawFamily {
                name: name.to_string(),
                help: None,
                kind: MetricType::Untyped,
                samples: Vec::new(),
            });
            families.len() - 1
        })
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, [' ', '\t']);
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let name = parts.next().unwrap_or("");
            if !is_name(name) {
                return Err(ParseError::new(
                    n,
                    format!("invalid metric name {name:?} in {keyword}"),
                ));
            }
            let rest = parts.next().unwrap_or("").trim_start();
            let f = get(&mut families, name);
            if keyword == "HELP" {
                if families[f].help.is_some() {
                    return Err(ParseError::new(n, format!("second HELP line for {name}")));
                }
                families[f].help = Some(unescape(rest, n, false)?);
            } else {
                if types.contains_key(name) {
                    return Err(ParseError::new(n, format!("second TYPE line for {name}")));
                }
                if !families[f].samples.is_empty() {
                    return Err(ParseError::new(
                        n,
                        format!("TYPE line for {name} after its samples"),
                    ));
                }
                let kind = match rest.trim() {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "untyped" => MetricType::Untyped,
                    "histogram" => MetricType::Histogram,
                    "summary" => MetricType::Summary,
                    other => return Err(ParseError::new(n, format!("unknown type {other:?}"))),
                };
                families[f].kind = kind;
                types.insert(name.to_string(), kind);
            }
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(ParseError::new(n, format!("invalid metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..], n)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(
            fields
                .next()
                .ok_or_else(|| ParseError::new(n, "sample without a value"))?,
            n,
        )?;
        if fields.next().is_some() {
            return Err(ParseError::new(
                n,
                "client-side timestamps are not supported",
            ));
        }
        let fam = family_of(name, &types);
        let f = get(&mut families, &fam);
        families[f].samples.push(RawSample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    families.retain(|f| !f.samples.is_empty());
    Ok(families)
}

/// One histogram or summary series being assembled: labels, (bound or quantile,
/// value) parts, sum, count.
type Parts = (Vec<(&'static str, String)>, Vec<(f64, f64)>, f64, f64);

/// Converts parsed families to the exposition model, as node_exporter's
/// `convertMetricFamily`: every series gets every label name used in its family (empty
/// when it lacks one); histogram buckets sorted by bound with `+Inf` = the count.
fn convert(f: &RawFamily, help: String) -> Result<Family, ParseError> {
    let mut label_names: Vec<&str> = Vec::new();
    for s in &f.samples {
        for (n, _) in &s.labels {
            if !matches!(
                (f.kind, n.as_str()),
                (MetricType::Histogram, "le") | (MetricType::Summary, "quantile")
            ) && !label_names.contains(&n.as_str())
            {
                label_names.push(n);
            }
        }
    }
    let mut interned = Vec::new();
    for n in &label_names {
        interned.push(
            intern(n).ok_or_else(|| {
                ParseError::new(0, "too many distinct label names across textfiles")
            })?,
        );
    }
    let series_labels = |s: &RawSample| -> Vec<(&'static str, String)> {
        label_names
            .iter()
            .zip(&interned)
            .map(|(n, i)| {
                (
                    *i,
                    s.labels
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                )
            })
            .collect()
    };
    let mut out = Family::new(f.name.clone(), help, f.kind);
    match f.kind {
        MetricType::Counter | MetricType::Gauge | MetricType::Untyped => {
            for s in &f.samples {
                out.push(series_labels(s), s.value);
            }
        }
        MetricType::Histogram | MetricType::Summary => {
            let (part_label, part_suffix) = if f.kind == MetricType::Histogram {
                ("le", "_bucket")
            } else {
                ("quantile", "")
            };
            // Series by their labels (without le/quantile), in first-seen order.
            let mut series: Vec<Parts> = Vec::new();
            for s in &f.samples {
                let key = series_labels(s);
                let idx = match series.iter().position(|(k, ..)| *k == key) {
                    Some(i) => i,
                    None => {
                        series.push((key, Vec::new(), 0.0, 0.0));
                        series.len() - 1
                    }
                };
                let entry = &mut series[idx];
                if s.name == format!("{}_sum", f.name) {
                    entry.2 = s.value;
                } else if s.name == format!("{}_count", f.name) {
                    entry.3 = s.value;
                } else if s.name == format!("{}{part_suffix}", f.name) {
                    let bound = s
                        .labels
                        .iter()
                        .find(|(k, _)| k == part_label)
                        .ok_or_else(|| {
                            ParseError::new(0, format!("{} sample without {part_label}", f.name))
                        })
                        .and_then(|(_, v)| parse_value(v, 0))?;
                    entry.1.push((bound, s.value));
                } else {
                    return Err(ParseError::new(
                        0,
                        format!("unexpected sample {} in {}", s.name, f.name),
                    ));
                }
            }
            for (labels, mut parts, sum, count) in series {
                parts.sort_by(|a, b| a.0.total_cmp(&b.0));
                for (bound, v) in parts {
                    if f.kind == MetricType::Histogram && bound == f64::INFINITY {
                        continue; // written below from the count, as client_golang does
                    }
                    let mut l = labels.clone();
                    let mut b = String::new();
                    super::render::write_float(&mut b, bound);
                    l.push((part_label, b));
                    out.push_suffixed(part_suffix, l, v);
                }
                if f.kind == MetricType::Histogram {
                    let mut l = labels.clone();
                    l.push(("le", "+Inf".into()));
                    out.push_suffixed("_bucket", l, count);
                }
                out.push_suffixed("_sum", labels.clone(), sum);
                out.push_suffixed("_count", labels, count);
            }
        }
    }
    Ok(out)
}

/// What one scrape of a directory found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub families: Vec<Family>,
    /// `(path, mtime seconds)` of every file read, sorted by path.
    pub mtimes: Vec<(String, f64)>,
    /// Files (or the directory) that could not be read or parsed, with why.
    pub errors: Vec<String>,
}

pub(crate) fn scan(dir: &Path) -> Scan {
    let mut scan = Scan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            scan.errors.push(format!("{}: {e}", dir.display()));
            return scan;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".prom"))
        })
        .collect();
    files.sort();
    let mut parsed: Vec<(String, RawFamily)> = Vec::new();
    for path in files {
        let shown = path.display().to_string();
        let result = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8".to_string()))
            .and_then(|t| parse(&t).map_err(|e| e.to_string()))
            .and_then(|f| {
                let mtime = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map_err(|e| e.to_string())?;
                Ok((f, mtime))
            });
        match result {
            Ok((fams, mtime)) => {
                let secs = mtime
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as f64)
                    .unwrap_or(0.0);
                scan.mtimes.push((shown.clone(), secs));
                parsed.extend(fams.into_iter().map(|f| (shown.clone(), f)));
            }
            Err(e) => scan.errors.push(format!("{shown}: {e}")),
        }
    }
    for (_, f) in &parsed {
        let help = f.help.clone().unwrap_or_else(|| {
            let files: Vec<&str> = parsed
                .iter()
                .filter(|(_, g)| g.name == f.name)
                .map(|(p, _)| p.as_str())
                .collect();
            format!("Metric read from {}", files.join(", "))
        });
        match convert(f, help) {
            Ok(fam) => scan.families.push(fam),
            Err(e) => scan.errors.push(format!("{}: {e}", f.name)),
        }
    }
    scan
}

pub(crate) fn render(scan: Scan) -> Vec<Family> {
    let mut out = scan.families;
    let mut mtime = Family::gauge(
        "node_textfile_mtime_seconds",
        "Unixtime mtime of textfiles successfully read.",
    );
    for (path, secs) in scan.mtimes {
        mtime.push(super::label("file", path), secs);
    }
    out.push(mtime);
    out.push(
        Family::gauge(
            "node_textfile_scrape_error",
            "1 if there was an error opening or reading a file, 0 otherwise",
        )
        .with(Vec::new(), if scan.errors.is_empty() { 0.0 } else { 1.0 }),
    );
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    // No directory configured: node_exporter serves only `scrape_error 0`.
    let scan = match &ctx.textfile_directory {
        Some(dir) => scan(dir),
        None => Scan::default(),
    };
    // node_exporter logs a bad file on every scrape too: it stays bad until fixed, and
    // the gauge alone does not say which file it is.
    for e in &scan.errors {
        log::warn!("textfile collector: {e}");
    }
    Ok(render(scan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_every_type() {
        let fams = parse(&testutil::read("textfile/good", "app.prom")).unwrap();
        let names: Vec<(&str, MetricType, usize)> = fams
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.samples.len()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "backup_last_success_timestamp_seconds",
                    MetricType::Gauge,
                    2
                ),
                ("jobs_total", MetricType::Counter, 1),
                ("no_type_or_help", MetricType::Untyped, 1),
                ("request_seconds", MetricType::Histogram, 5),
                ("rpc_seconds", MetricType::Summary, 4),
            ]
        );
        assert_eq!(
            fams[0].samples[1].labels,
            vec![("db".to_string(), "a \"b\"\\c\nd".to_string())]
        );
    }

    #[test]
    fn rejects_bad_files() {
        for bad in [
            "metric 1 1700000000000\n",
            "metric{a=\"b\" 1\n",
            "metric{a=b} 1\n",
            "metric{a=\"1\",a=\"2\"} 1\n",
            "metric one\n",
            "# TYPE m counter\n# TYPE m gauge\nm 1\n",
            "# TYPE m sometype\nm 1\n",
            "1metric 1\n",
            "m\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    /// The expected output was what node_exporter 1.5.0 printed for the same directory
    /// (`--collector.textfile.directory=tests/fixtures/node/textfile/good`), minus its
    /// own families and the mtime sample (the checkout's mtime is not the capture's),
    /// with the directory replaced by `@DIR@`.
    #[test]
    fn good_directory_matches_node_exporter() {
        let dir = testutil::fixture("textfile/good");
        let s = scan(&dir);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.mtimes.len(), 1);
        let mut got = testutil::render(render(s));
        got = got
            .lines()
            .filter(|l| !l.starts_with("node_textfile_mtime_seconds{"))
            .map(|l| format!("{l}\n"))
            .collect();
        // HELP of a family without one names the file by its path, here the checkout's.
        let want = std::fs::read_to_string(dir.join("../good.expected"))
            .unwrap()
            .replace("@DIR@", &dir.display().to_string());
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_file_is_reported_not_fatal() {
        let dir = testutil::fixture("textfile/mixed");
        let s = scan(&dir);
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].contains("bad.prom"), "{:?}", s.errors);
        let out = testutil::render(render(s));
        assert!(out.contains("node_textfile_scrape_error 1\n"), "{out}");
        assert!(out.contains("\nok_value 7\n"), "{out}");
        assert!(
            !out.contains("half_written"),
            "a bad file's families must be skipped:\n{out}"
        );
        assert!(!out.contains("ignored_not_prom"), "{out}");
        assert!(out.contains("node_textfile_mtime_seconds{file=\""), "{out}");
    }

    #[test]
    fn missing_directory_is_an_error_and_no_directory_is_none() {
        let out = testutil::render(render(scan(Path::new("/nonexistent/textfiles"))));
        assert!(out.contains("node_textfile_scrape_error 1\n"), "{out}");
        let out = testutil::render(render(Scan::default()));
        assert_eq!(
            out,
            "# HELP node_textfile_scrape_error 1 if there was an error opening or reading a file, 0 otherwise\n\
             # TYPE node_textfile_scrape_error gauge\nnode_textfile_scrape_error 0\n"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|(# (HELP|TYPE) [a-z_]{1,3} .{0,10}\n|[a-z_]{1,3}(\\{[a-z]{1,2}=\"[^\"]{0,3}\"\\})? [0-9.+-eInfNa]{1,4}\n){0,6}") {
            if let Ok(fams) = parse(&s) {
                for f in &fams {
                    let _ = convert(f, String::new());
                }
            }
        }
    }
}
