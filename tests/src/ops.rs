//! Operation counts keyed by (`db_operation_name`, `error_type`): read from a scrape,
//! from a peer's JSON report, subtracted, and compared with a message that names every
//! difference.

use std::collections::BTreeMap;

use serde_json::Value;

/// Count per (operation, error type); an absent key is 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpCounts(pub BTreeMap<(String, String), f64>);

impl OpCounts {
    /// Sums the `_count` samples of histogram `family` whose labels include `labels`,
    /// by `db_operation_name` and `error_type`.
    pub fn from_scrape(text: &str, family: &str, labels: &[(&str, &str)]) -> OpCounts {
        let families =
            crate::exposition::parse(text).unwrap_or_else(|e| panic!("invalid exposition: {e:?}"));
        let name = format!("{family}_count");
        let mut counts = OpCounts::default();
        for s in crate::exposition::select(&families, &name, labels) {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            counts.add(&label("db_operation_name"), &label("error_type"), s.value);
        }
        counts
    }

    /// A report's `{"OP": {"ERROR": n}}`, each operation renamed by `rename` (to the
    /// agent's label value).
    pub fn from_json(value: &Value, rename: impl Fn(&str) -> String) -> OpCounts {
        let mut counts = OpCounts::default();
        let ops = value
            .as_object()
            .unwrap_or_else(|| panic!("operation counts are not an object: {value}"));
        for (op, errors) in ops {
            let errors = errors
                .as_object()
                .unwrap_or_else(|| panic!("errors of {op} are not an object: {errors}"));
            for (error, n) in errors {
                let n = n
                    .as_f64()
                    .unwrap_or_else(|| panic!("count of {op}/{error} is not a number: {n}"));
                counts.add(&rename(op), error, n);
            }
        }
        counts
    }

    pub fn add(&mut self, op: &str, error: &str, n: f64) {
        *self.0.entry((op.to_owned(), error.to_owned())).or_default() += n;
    }

    pub fn get(&self, op: &str, error: &str) -> f64 {
        self.0
            .get(&(op.to_owned(), error.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }

    /// Total over every error type of `op`.
    pub fn op_total(&self, op: &str) -> f64 {
        self.0
            .iter()
            .filter(|((o, _), _)| o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// `self - earlier`, zeros dropped.
    pub fn minus(&self, earlier: &OpCounts) -> OpCounts {
        let mut out = self.clone();
        for (k, n) in &earlier.0 {
            *out.0.entry(k.clone()).or_default() -= n;
        }
        out.0.retain(|_, n| *n != 0.0);
        out
    }

    pub fn plus(&self, other: &OpCounts) -> OpCounts {
        let mut out = self.clone();
        for ((op, error), n) in &other.0 {
            out.add(op, error, *n);
        }
        out
    }

    /// Without the operations in `ops`.
    pub fn without(&self, ops: &[&str]) -> OpCounts {
        let mut out = self.clone();
        out.0.retain(|(op, _), _| !ops.contains(&op.as_str()));
        out
    }

    /// One line per (operation, error type) where `self` (what the agent counted)
    /// differs from `truth`: `GET error_type="": agent 3000, truth 3753`.
    pub fn differences(&self, truth: &OpCounts) -> Vec<String> {
        let mut keys: Vec<&(String, String)> = self.0.keys().chain(truth.0.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|(op, error)| {
                let (got, want) = (self.get(op, error), truth.get(op, error));
                (got != want)
                    .then(|| format!("{op} error_type={error:?}: agent {got}, truth {want}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sums_and_compares() {
        let text = "# TYPE db_client_x histogram\n\
            db_client_x_count{db_operation_name=\"GET\",error_type=\"\",p=\"1\"} 3\n\
            db_client_x_count{db_operation_name=\"GET\",error_type=\"\",p=\"2\"} 4\n\
            db_client_x_count{db_operation_name=\"SET\",error_type=\"ERR\",p=\"1\"} 1\n\
            db_client_x_sum{db_operation_name=\"GET\",error_type=\"\",p=\"1\"} 9\n";
        let got = OpCounts::from_scrape(text, "db_client_x", &[]);
        assert_eq!(got.get("GET", ""), 7.0);
        let one = OpCounts::from_scrape(text, "db_client_x", &[("p", "1")]);
        assert_eq!(one.get("GET", ""), 3.0);
        let truth = OpCounts::from_json(
            &serde_json::json!({"get": {"": 7}, "set": {"ERR": 2}}),
            |op| op.to_uppercase(),
        );
        assert_eq!(
            got.differences(&truth),
            vec!["SET error_type=\"ERR\": agent 1, truth 2".to_owned()]
        );
        assert_eq!(got.minus(&one).0.len(), 1);
    }
}
