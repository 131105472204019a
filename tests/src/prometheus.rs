//! A real Prometheus (Debian's `prometheus` package) for tests: started on a free port
//! with the scrape configuration a test gives, asked with the HTTP query API, stopped
//! and its data removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, servers::TempDir, try_http_get, ChildGuard};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

pub struct Prometheus {
    _process: ChildGuard,
    pub url: String,
    pub dir: TempDir,
}

/// `s` for a URL query component.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (YAML list items, indented by two spaces)
    /// under a 1 s scrape interval, and waits until it is ready.
    pub fn start(scrape_configs: &str) -> Prometheus {
        Prometheus::start_with_rules(scrape_configs, &[])
    }

    /// As [`Prometheus::start`], with rule files (evaluated every second).
    pub fn start_with_rules(scrape_configs: &str, rule_files: &[PathBuf]) -> Prometheus {
        Prometheus::start_with_flags(scrape_configs, rule_files, &[])
    }

    /// As [`Prometheus::start`], with exemplar storage on (`--enable-feature=exemplar-storage`).
    pub fn start_with_exemplars(scrape_configs: &str) -> Prometheus {
        Prometheus::start_with_flags(scrape_configs, &[], &["--enable-feature=exemplar-storage"])
    }

    /// As [`Prometheus::start_with_rules`], with more command-line flags.
    pub fn start_with_flags(
        scrape_configs: &str,
        rule_files: &[PathBuf],
        flags: &[&str],
    ) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: apt-get install -y prometheus (or cargo xtask setup)"
        );
        let dir = TempDir::new("nodetap-prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: {rules}\n\
                 scrape_configs:\n{scrape_configs}",
                rules = serde_json::to_string(&rule_files).expect("paths as JSON")
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("prometheus log");
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log);
        let process = ChildGuard::spawn(cmd);
        let url = format!("http://127.0.0.1:{port}");
        let prometheus = Prometheus {
            _process: process,
            url,
            dir,
        };
        let start = Instant::now();
        while try_http_get(&format!("{}/-/ready", prometheus.url)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus did not become ready within 30 s; its log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's `data.result`; panics if Prometheus rejects the query.
    pub fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(query));
        let body = try_http_get(&url).unwrap_or_else(|e| panic!("query {query}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {body:?} to {query}: {e}"));
        assert_eq!(v["status"], "success", "query {query}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// `/api/v1/query_exemplars` for `query` over the last 10 minutes: each exemplar as
    /// (its series' labels, its labels, value, timestamp in seconds).
    pub fn query_exemplars(
        &self,
        query: &str,
    ) -> Vec<(
        serde_json::Value,
        std::collections::BTreeMap<String, String>,
        f64,
        f64,
    )> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let url = format!(
            "{}/api/v1/query_exemplars?query={}&start={}&end={}",
            self.url,
            percent_encode(query),
            now - 600.0,
            now + 600.0
        );
        let body = try_http_get(&url).unwrap_or_else(|e| panic!("exemplars {query}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {body:?} to {query}: {e}"));
        assert_eq!(v["status"], "success", "exemplars {query}: {body}");
        let mut out = Vec::new();
        for series in v["data"].as_array().cloned().unwrap_or_default() {
            for e in series["exemplars"].as_array().cloned().unwrap_or_default() {
                let labels = e["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = e["value"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("exemplar value in {e}"));
                let ts = e["timestamp"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("exemplar timestamp in {e}"));
                out.push((series["seriesLabels"].clone(), labels, value, ts));
            }
        }
        out
    }

    /// The scrape targets' health and last error (`/api/v1/targets`), by job.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let body = try_http_get(&format!("{}/api/v1/targets", self.url))
            .unwrap_or_else(|e| panic!("targets: {e}"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {body:?} to targets: {e}"));
        v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                    t["lastError"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Runs an instant query until it returns at least one sample; returns the values.
    pub fn query_until_non_empty(&self, query: &str, deadline: Instant) -> Vec<f64> {
        loop {
            let result = self.query(query);
            if !result.is_empty() {
                return result
                    .iter()
                    .map(|r| {
                        r["value"][1]
                            .as_str()
                            .and_then(|s| s.parse::<f64>().ok())
                            .unwrap_or_else(|| panic!("query {query}: bad sample {r}"))
                    })
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "query {query} still empty after the deadline; Prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
