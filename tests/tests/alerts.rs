//! deploy/prometheus/alerts.yml (issue 13): Prometheus's own tools accept the rules,
//! every alert fires on its bad series and on nothing else in `alerts_test.yml` (promtool
//! compares the exact set of firing alerts, so a good series beside the bad one that
//! fired too would fail), and every alert has a severity, a summary, a description and a
//! runbook that exists.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde_yaml_ng::Value;

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str]) {
    nodetap_tests::run_ok(
        Command::new(nodetap_tests::prometheus::PROMTOOL)
            .args(args)
            .current_dir(prometheus_dir()),
    );
}

fn yaml(name: &str) -> Value {
    let path = prometheus_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every alerting rule in alerts.yml.
fn alerts() -> Vec<Value> {
    let file = yaml("alerts.yml");
    file["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    promtool(&["check", "rules", "alerts.yml", "rules.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn every_alert_fires_in_the_unit_tests() {
    let tests = yaml("alerts_test.yml");
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for group in tests["tests"].as_sequence().expect("tests") {
        for case in group["alert_rule_test"]
            .as_sequence()
            .expect("alert_rule_test")
        {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let expected = case["exp_alerts"].as_sequence().map_or(0, |a| a.len());
            if expected > 0 {
                fired.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    let names: BTreeSet<String> = alerts()
        .iter()
        .map(|a| a["alert"].as_str().unwrap().to_owned())
        .collect();
    let never_fired: Vec<&String> = names.difference(&fired).collect();
    assert!(
        never_fired.is_empty(),
        "alerts never shown firing in alerts_test.yml: {never_fired:?}"
    );
    let unknown: Vec<&String> = fired
        .union(&silent)
        .filter(|n| !names.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts_test.yml tests unknown alerts: {unknown:?}"
    );
}

#[test]
fn every_alert_has_severity_text_and_a_runbook() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "only {} alerts", alerts.len());
    let mut problems = Vec::new();
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        let severity = alert["labels"]["severity"].as_str().unwrap_or("");
        if !["critical", "warning"].contains(&severity) {
            problems.push(format!("{name}: severity {severity:?}"));
        }
        for key in ["summary", "description", "runbook_url"] {
            if alert["annotations"][key].as_str().unwrap_or("").is_empty() {
                problems.push(format!("{name}: no {key}"));
            }
        }
        let url = alert["annotations"]["runbook_url"].as_str().unwrap_or("");
        let expected = format!("docs/runbooks/{name}.md");
        if url != expected {
            problems.push(format!(
                "{name}: runbook_url {url:?}, expected {expected:?}"
            ));
            continue;
        }
        match std::fs::read_to_string(repository().join(url)) {
            Err(e) => problems.push(format!("{name}: {url}: {e}")),
            Ok(text) => {
                if !text.starts_with(&format!("# {name}\n")) {
                    problems.push(format!("{name}: {url} is not titled {name}"));
                }
                for section in [
                    "**What it means.**",
                    "**How to confirm.**",
                    "**How to fix.**",
                ] {
                    if !text.contains(section) {
                        problems.push(format!("{name}: {url} lacks {section}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `nodetap_*` metric (and recording rule input) an alert reads is one the agent
/// registers (a `"nodetap_..."` name in agent/src, `_total` added to counters) and README
/// documents: an alert on a misspelt or renamed metric would never fire.
#[test]
fn alerts_read_metrics_the_agent_exports() {
    let mut registered = BTreeSet::new();
    let mut stack = vec![repository().join("agent/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split('"').skip(1).step_by(2) {
                    if piece.starts_with("nodetap_")
                        && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        registered.insert(piece.to_owned());
                    }
                }
            }
        }
    }
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let mut used = BTreeSet::new();
    for alert in alerts() {
        let expr = alert["expr"].as_str().expect("expr");
        let mut rest = expr;
        while let Some(at) = rest.find("nodetap_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Recording rules (nodetap:...) are not metric names; "nodetap_" after a colon is.
            let recorded = at > 0 && rest.as_bytes()[at - 1] == b':';
            if !recorded {
                used.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
    }
    assert!(
        used.len() >= 10,
        "only {} agent metrics in alerts: {used:?}",
        used.len()
    );
    let mut problems = Vec::new();
    for name in &used {
        let base = name.strip_suffix("_total").unwrap_or(name);
        if !registered.contains(base) {
            problems.push(format!("{name}: the agent registers no {base}"));
        }
        if !readme.contains(&format!("`{name}`")) {
            problems.push(format!("{name}: not in README's metric reference"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
