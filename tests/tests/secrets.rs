//! No credential leaves the agent: real clients (redis-py, psycopg 3, httpx) put Redis
//! AUTH / HELLO AUTH passwords, PostgreSQL SCRAM, md5 and cleartext password messages
//! (and the passwords inside CREATE ROLE), HTTP Authorization, Cookie,
//! Proxy-Authorization and nginx's Set-Cookie on the wire of real servers, with the
//! agent logging at trace level. None of the secrets, in any encoding a careless log or
//! label would use (as text, hex, a Rust byte-slice `Debug`), may appear in the agent's
//! output or in /metrics. The agent must have parsed that traffic (the requests are
//! counted), so the test cannot pass by seeing nothing.

use std::time::Duration;

use nodetap_tests::{
    metric_sum,
    peers::run_peer_with_env,
    random_token,
    servers::{Nginx, PostgresServer, RedisServer},
    unique_name, Agent,
};

/// The forms in which a secret's bytes could show up in text.
fn encodings(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    vec![
        secret.to_owned(),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        format!("{bytes:?}"),
        // A secret cut at a buffer boundary still leaks: its first half alone.
        secret[..secret.len() / 2].to_owned(),
    ]
}

#[test]
fn planted_credentials_never_reach_logs_or_metrics() {
    let secrets: Vec<(&str, String)> = [
        "REDIS_PASS",
        "REDIS_USER_PASS",
        "PG_SCRAM",
        "PG_MD5",
        "PG_PLAIN",
        "BEARER",
        "COOKIE",
        "PROXY",
    ]
    .into_iter()
    .map(|k| (k, random_token(32)))
    .collect();
    let secret = |k: &str| secrets.iter().find(|(n, _)| *n == k).unwrap().1.clone();

    let user_pass = format!(">{}", secret("REDIS_USER_PASS"));
    let redis = RedisServer::start_with(&[
        "--requirepass",
        &secret("REDIS_PASS"),
        "--user",
        "nodetap_acl",
        "on",
        &user_pass,
        "~*",
        "&*",
        "+@all",
    ]);
    let postgres = PostgresServer::start_with_hba(
        &[],
        &[
            "host all nodetap_scram 127.0.0.1/32 scram-sha-256",
            "host all nodetap_md5 127.0.0.1/32 md5",
            "host all nodetap_plain 127.0.0.1/32 password",
        ],
    );
    let nginx = Nginx::start();
    let agent = Agent::start_with_env(&[], &[("RUST_LOG", "trace")]);

    let name = unique_name("secret");
    let ports =
        [redis.port, postgres.port, nginx.http1_port, nginx.h2c_port].map(|p| p.to_string());
    let mut args = vec![name.as_str()];
    args.extend(ports.iter().map(String::as_str));
    let env: Vec<(String, String)> = secrets
        .iter()
        .map(|(k, v)| (format!("NODETAP_SECRET_{k}"), v.clone()))
        .collect();
    let report = run_peer_with_env("secrets_peer.py", &args, &env);
    assert_eq!(report["pg_logins"], 3, "peer report: {report}");

    // The agent saw and parsed the traffic that carried the secrets.
    let counts = |text: &str| {
        let db = |system: &str, op: &str| {
            metric_sum(
                text,
                "db_client_operation_duration_seconds_count",
                &[
                    ("service_name", &name),
                    ("db_system_name", system),
                    ("db_operation_name", op),
                ],
            )
        };
        let http = metric_sum(
            text,
            "http_client_request_duration_seconds_count",
            &[("service_name", &name), ("http_route", "/login")],
        );
        [
            ("redis AUTH", db("redis", "AUTH")),
            ("redis HELLO", db("redis", "HELLO")),
            ("postgresql SELECT", db("postgresql", "SELECT")),
            ("http /login", http),
        ]
    };
    let want = [1.0, 1.0, 3.0, 4.0];
    let seen = |text: &str| counts(text).iter().zip(want).all(|((_, n), w)| *n >= w);
    let metrics = agent.scrape_until(Duration::from_secs(10), seen);
    assert!(
        seen(&metrics),
        "the agent did not count the requests that carried the secrets (tier {}): {:?}, want at least {want:?}",
        agent.tier(),
        counts(&metrics),
    );

    let log = agent.output();
    assert!(
        log.lines().count() > 1,
        "the agent logged nothing at trace level:\n{log}"
    );
    let mut planted: Vec<(String, String)> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    planted.push(("SET_COOKIE".into(), nginx.session_cookie.clone()));
    let mut leaks = Vec::new();
    for (what, value) in &planted {
        for form in encodings(value) {
            for (place, text) in [("log", &log), ("/metrics", &metrics)] {
                if let Some(line) = text.lines().find(|l| l.contains(&form)) {
                    leaks.push(format!("{what} ({form}) in the {place}: {line}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
