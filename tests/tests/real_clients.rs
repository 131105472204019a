//! Real client libraries (redis-py, psycopg 3, installed by `cargo xtask setup`) against
//! real servers, the real agent: what applications actually put on the wire (pipelines
//! of thousands, transactions, large replies, pipeline mode, prepared statements, COPY,
//! errors) counted exactly on both sides, stage by stage.
//!
//! Truth: what the client library put on the wire (recorded inside it by the peer),
//! cross-checked with the server's own counts (Redis `INFO commandstats`/`errorstats`,
//! PostgreSQL's `pg_stat_statements` and `pg_stat_database`). The two tests run one at a
//! time: each stage waits for the agent, and the other's load would only blur that.

use std::{collections::BTreeMap, time::Duration};

use nodetap_tests::{
    lines_with,
    ops::OpCounts,
    peers::{run_peer, StagedPeer},
    resp::{Reply, RespClient},
    serial,
    servers::{PostgresServer, RedisServer},
    unique_name, Agent,
};
use serde_json::Value;

/// How long a stage's counts may trail the stage (the agent drains on a timer).
const STAGE_WAIT: Duration = Duration::from_secs(5);

/// The agent's counts on both sides of one server, compared stage by stage with what
/// the client did.
struct Stages<'a> {
    agent: &'a Agent,
    client: Vec<(&'static str, String)>,
    server: Vec<(&'static str, String)>,
    /// Operations other clients of the server (the test's own statistics queries) make.
    server_ignores: &'a [&'a str],
    base: (OpCounts, OpCounts),
    total: OpCounts,
    wrong: Vec<String>,
}

impl<'a> Stages<'a> {
    fn new(
        agent: &'a Agent,
        client: Vec<(&'static str, String)>,
        server: Vec<(&'static str, String)>,
        server_ignores: &'a [&'a str],
    ) -> Stages<'a> {
        let mut stages = Stages {
            agent,
            client,
            server,
            server_ignores,
            base: Default::default(),
            total: OpCounts::default(),
            wrong: Vec::new(),
        };
        stages.base = stages.counts(&agent.scrape());
        stages
    }

    fn counts(&self, text: &str) -> (OpCounts, OpCounts) {
        fn labels<'l>(l: &'l [(&'static str, String)]) -> Vec<(&'static str, &'l str)> {
            l.iter().map(|(k, v)| (*k, v.as_str())).collect()
        }
        let client = OpCounts::from_scrape(
            text,
            "db_client_operation_duration_seconds",
            &labels(&self.client),
        );
        let server = OpCounts::from_scrape(
            text,
            "db_server_operation_duration_seconds",
            &labels(&self.server),
        )
        .without(self.server_ignores);
        (client, server)
    }

    /// Waits until the stage's operations show on both sides (or `STAGE_WAIT` passes)
    /// and records what differs.
    fn check(&mut self, label: &str, truth: &OpCounts) {
        self.total = self.total.plus(truth);
        let (base_client, base_server) = self.base.clone();
        let text = self.agent.scrape_until(STAGE_WAIT, |text| {
            let (client, server) = self.counts(text);
            client.minus(&base_client) == truth.minus(&OpCounts::default())
                && server.minus(&base_server) == truth.minus(&OpCounts::default())
        });
        let (client, server) = self.counts(&text);
        for (side, now, base) in [
            ("client", &client, &base_client),
            ("server", &server, &base_server),
        ] {
            for d in now.minus(base).differences(truth) {
                self.wrong
                    .push(format!("stage {label:?}, {side} side: {d}"));
            }
        }
        self.base = (client, server);
    }

    /// Every difference: per stage, then the totals since the agent started.
    fn report(&self) -> Vec<String> {
        let mut wrong = self.wrong.clone();
        let (client, server) = self.base.clone();
        for (side, counts) in [("client", client), ("server", server)] {
            for d in counts.differences(&self.total) {
                wrong.push(format!("all stages, {side} side: {d}"));
            }
        }
        wrong
    }
}

/// Runs a staged peer to the end, checking each stage; returns its final report.
fn run_stages(
    peer: &mut StagedPeer,
    stages: &mut Stages,
    key: &str,
    rename: fn(&str) -> String,
) -> Value {
    loop {
        let report = peer.next_report();
        if report.get("done").is_some() {
            return report;
        }
        let label = report["stage"].as_str().unwrap_or("?").to_owned();
        stages.check(&label, &OpCounts::from_json(&report[key], rename));
        peer.proceed();
    }
}

/// Redis's `INFO commandstats` (calls, failed, rejected per command) and
/// `INFO errorstats` (count per error code).
#[derive(Default)]
struct RedisStats {
    commands: BTreeMap<String, [f64; 3]>,
    errors: BTreeMap<String, f64>,
}

impl RedisStats {
    fn read(port: u16) -> RedisStats {
        let mut client = RespClient::connect(port);
        let mut info = |section: &str| match client.command(&["INFO", section]).0 {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("INFO {section}: {other:?}"),
        };
        let field = |fields: &str, name: &str| -> f64 {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let mut stats = RedisStats::default();
        for line in info("commandstats").lines() {
            if let Some((cmd, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            {
                stats.commands.insert(
                    cmd.to_owned(),
                    [
                        field(fields, "calls"),
                        field(fields, "failed_calls"),
                        field(fields, "rejected_calls"),
                    ],
                );
            }
        }
        for line in info("errorstats").lines() {
            if let Some((code, fields)) = line
                .strip_prefix("errorstat_")
                .and_then(|l| l.split_once(':'))
            {
                stats.errors.insert(code.to_owned(), field(fields, "count"));
            }
        }
        stats
    }

    /// `self - before`, without the test's own INFO calls.
    fn since(&self, before: &RedisStats) -> RedisStats {
        let mut delta = RedisStats::default();
        for (cmd, now) in &self.commands {
            let was = before.commands.get(cmd).copied().unwrap_or_default();
            let d = [now[0] - was[0], now[1] - was[1], now[2] - was[2]];
            if cmd != "info" && d != [0.0; 3] {
                delta.commands.insert(cmd.clone(), d);
            }
        }
        for (code, now) in &self.errors {
            let d = now - before.errors.get(code).copied().unwrap_or_default();
            if d != 0.0 {
                delta.errors.insert(code.clone(), d);
            }
        }
        delta
    }
}

/// Where the server's own counts and the client's wire log disagree: a test problem
/// (the wire log missed something), not the agent's.
fn redis_truth_disagreements(wire: &OpCounts, server: &RedisStats) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    for (cmd, [calls, failed, rejected]) in &server.commands {
        let op = cmd.split('|').next().unwrap_or(cmd).to_uppercase();
        let total = wire.op_total(&op);
        let errors = total - wire.get(&op, "");
        // A rejected call never runs (calls counts executed ones, failed included).
        if calls + rejected != total || failed + rejected != errors {
            wrong.push(format!(
                "{op}: server calls {calls} failed {failed} rejected {rejected}, wire {total} of which {errors} errors"
            ));
        }
        seen.push(op);
    }
    for ((op, error), n) in &wire.0 {
        // Unknown commands and subcommands are rejected before lookup: only errorstats.
        if !seen.contains(op) && error.is_empty() {
            wrong.push(format!(
                "{op}: {n} successes on the wire, none in commandstats"
            ));
        }
    }
    let mut codes: BTreeMap<String, f64> = BTreeMap::new();
    for ((_, error), n) in &wire.0 {
        if !error.is_empty() {
            *codes.entry(error.clone()).or_default() += n;
        }
    }
    if codes != server.errors {
        wrong.push(format!(
            "error replies: errorstats {:?}, wire {codes:?}",
            server.errors
        ));
    }
    wrong
}

/// The agent's `db_operation_name` for a command redis-py sent: the test's unknown
/// command is outside the closed set.
fn redis_op(name: &str) -> String {
    if name == "NOSUCHCMD" {
        "_OTHER".to_owned()
    } else {
        name.to_owned()
    }
}

#[test]
fn redis_py_pipelines_transactions_large_replies_errors_exact() {
    let _serial = serial();
    let redis = RedisServer::start();
    let agent = Agent::start(&[]);
    let port = redis.port.to_string();
    let name = unique_name("rpy");
    let before = RedisStats::read(redis.port);

    let mut stages = Stages::new(
        &agent,
        vec![
            ("db_system_name", "redis".into()),
            ("server_port", port.clone()),
            ("service_name", name.clone()),
        ],
        vec![
            ("db_system_name", "redis".into()),
            ("server_port", port.clone()),
            ("service_name", "redis-server".into()),
        ],
        &["INFO"],
    );
    let mut peer = StagedPeer::start("redis_client.py", &[&name, &port]);
    let done = run_stages(&mut peer, &mut stages, "wire", redis_op);
    peer.finish();

    assert_eq!(
        done["connections"].as_u64(),
        Some(1),
        "redis-py should use one pooled connection: {done}"
    );
    let wire = OpCounts::from_json(&done["wire"], |op| op.to_owned());
    let server = RedisStats::read(redis.port).since(&before);
    let disagree = redis_truth_disagreements(&wire, &server);
    assert!(
        disagree.is_empty(),
        "redis-py's wire log and the server's INFO disagree (the test's truth is wrong):\n{}\n\
         commandstats delta: {:?}\nerrorstats delta: {:?}\nwire: {:?}",
        disagree.join("\n"),
        server.commands,
        server.errors,
        wire.0
    );

    let wrong = stages.report();
    let text = agent.scrape();
    assert!(
        wrong.is_empty(),
        "capture tier {}: redis-py ({name}, one connection, local port {}) against \
         redis-server :{port}, agent vs wire (= INFO commandstats):\n{}\n--- protocol health ---\n{}",
        nodetap_tests::capture_tier(&text),
        done["local_ports"],
        wrong.join("\n"),
        lines_with(&text, "nodetap_protocol_")
    );
}

#[test]
fn psycopg_pipeline_mode_prepared_transaction_copy_errors_exact() {
    let _serial = serial();
    let pg = PostgresServer::start_with(&[("shared_preload_libraries", "pg_stat_statements")]);
    let port = pg.port.to_string();
    // Database and extension before the agent starts: not part of what it must count.
    run_peer("pg_client.py", &["setup", &port]);
    let agent = Agent::start(&[]);
    let name = unique_name("psy");

    let mut stages = Stages::new(
        &agent,
        vec![
            ("db_system_name", "postgresql".into()),
            ("server_port", port.clone()),
            ("service_name", name.clone()),
        ],
        vec![
            ("db_system_name", "postgresql".into()),
            ("server_port", port.clone()),
            ("service_name", "postgres".into()),
        ],
        &[],
    );
    let mut peer = StagedPeer::start("pg_client.py", &["work", &name, &port]);
    let done = run_stages(&mut peer, &mut stages, "ops", |op| op.to_owned());
    peer.finish();
    let wrong = stages.report();
    let text = agent.scrape();

    // The server's own counts agree with what the client says it executed.
    let stats = run_peer("pg_client.py", &["stats", &unique_name("pgst"), &port]);
    let executed = OpCounts::from_json(&done["ops"], |op| op.to_owned());
    let mut disagree = Vec::new();
    let calls = stats["calls"].as_object().expect("calls");
    let mut verbs: Vec<String> = calls.keys().cloned().collect();
    verbs.extend(executed.0.keys().map(|(op, _)| op.clone()));
    verbs.sort();
    verbs.dedup();
    for verb in verbs {
        // pg_stat_statements keeps successful statements only.
        let server = calls.get(&verb).and_then(Value::as_f64).unwrap_or(0.0);
        let client = executed.get(&verb, "");
        if server != client {
            disagree.push(format!(
                "{verb}: pg_stat_statements calls {server}, client executed {client}"
            ));
        }
    }
    let copied = done["copy_rows"]["in"].as_f64().unwrap_or(0.0)
        + done["copy_rows"]["out"].as_f64().unwrap_or(0.0);
    if stats["rows"]["COPY"].as_f64() != Some(copied) {
        disagree.push(format!(
            "COPY rows: pg_stat_statements {}, client {copied}",
            stats["rows"]["COPY"]
        ));
    }
    let errors: f64 = executed
        .0
        .iter()
        .filter(|((_, e), _)| !e.is_empty())
        .map(|(_, n)| n)
        .sum();
    if stats["xact_rollback"].as_f64() != Some(errors) {
        disagree.push(format!(
            "failed statements: pg_stat_database xact_rollback {}, client {errors}",
            stats["xact_rollback"]
        ));
    }
    assert!(
        disagree.is_empty(),
        "psycopg's report and PostgreSQL's statistics disagree (the test's truth is wrong):\n{}\n{stats}",
        disagree.join("\n")
    );

    assert!(
        wrong.is_empty(),
        "capture tier {}: psycopg ({name}, one connection) against postgres :{port}, agent vs \
         statements executed (= pg_stat_statements):\n{}\n--- protocol health ---\n{}",
        nodetap_tests::capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, "nodetap_protocol_")
    );
}
