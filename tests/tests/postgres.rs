//! Real postgres, a frontend in this process that controls every message, the real
//! agent: exact operation counts per statement kind and SQLSTATE class, on the client
//! and the server side, and durations checked against the client's own clock.

use std::time::Duration;

use nodetap_tests::{
    metric_value, own_process_name,
    pgwire::{self, PgClient, SqlError},
    servers::PostgresServer,
    Agent,
};

fn count(text: &str, side: &str, port: &str, service: &str, op: &str, error: &str) -> f64 {
    series(text, side, port, service, "count", op, error).unwrap_or(0.0)
}

fn series(
    text: &str,
    side: &str,
    port: &str,
    service: &str,
    suffix: &str,
    op: &str,
    error: &str,
) -> Option<f64> {
    metric_value(
        text,
        &format!("db_{side}_operation_duration_seconds_{suffix}"),
        &[
            ("db_system_name", "postgresql"),
            ("db_operation_name", op),
            ("error_type", error),
            ("server_address", "127.0.0.1"),
            ("server_port", port),
            ("service_name", service),
        ],
    )
}

#[test]
fn postgres_operations_exact_on_both_sides() {
    let pg = PostgresServer::start();
    let agent = Agent::start(&[]);
    let me = own_process_name();
    let mut db = PgClient::connect(pg.port);

    // Simple query protocol.
    db.simple("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .0
        .unwrap();
    for i in 0..50 {
        db.simple(&format!("INSERT INTO items VALUES ({i}, 'item {i}')"))
            .0
            .unwrap();
    }
    assert_eq!(
        db.simple("SELECT * FROM no_such_table").0,
        Err(SqlError("42P01".into()))
    );
    assert_eq!(
        db.simple("INSERT INTO items VALUES (1, 'duplicate')").0,
        Err(SqlError("23505".into()))
    );
    // A result set far larger than the copied prefix, over many reads.
    db.simple("SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
        .0
        .unwrap();

    // Extended protocol: a named prepared statement executed 100 times.
    db.prepare("by_id", "SELECT v FROM items WHERE id = $1");
    for i in 0..100 {
        db.execute_prepared("by_id", &[&(i % 50).to_string()])
            .0
            .unwrap();
    }
    // Unnamed statements, timed by this client.
    let mut update_time = Duration::ZERO;
    for i in 0..20 {
        let (result, took) = db.extended(
            "UPDATE items SET v = $1 WHERE id = $2",
            &["changed", &i.to_string()],
        );
        result.unwrap();
        update_time += took;
    }
    // A pipeline: 10 Bind/Execute of the prepared statement, one Sync.
    let mut wire = Vec::new();
    for i in 0..10 {
        wire.extend(pgwire::bind("by_id", &[&i.to_string()]));
        wire.extend(pgwire::execute());
    }
    wire.extend(pgwire::sync());
    db.send(&wire).0.unwrap();
    drop(db);

    let port = pg.port.to_string();
    let expected = [
        ("CREATE", "", 1.0),
        ("INSERT", "", 50.0),
        ("INSERT", "23", 1.0),
        ("SELECT", "42", 1.0),
        ("SELECT", "", 1.0 + 100.0 + 10.0),
        ("UPDATE", "", 20.0),
    ];
    let text = agent.scrape_until(Duration::from_secs(15), |text| {
        expected.iter().all(|(op, error, want)| {
            count(text, "client", &port, &me, op, error) == *want
                && count(text, "server", &port, "postgres", op, error) == *want
        })
    });
    let mut wrong = Vec::new();
    for (side, service) in [("client", me.as_str()), ("server", "postgres")] {
        for (op, error, want) in expected {
            let got = count(&text, side, &port, service, op, error);
            if got != want {
                wrong.push(format!(
                    "{side} {op} error_type={error:?}: agent {got}, sent {want}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n--- scrape (db series) ---\n{}",
        wrong.join("\n"),
        text.lines()
            .filter(|l| l.contains("_count{") || l.starts_with("nodetap_protocol"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Durations: each UPDATE's window in the agent (write entry to the exit of the read
    // holding its CommandComplete) lies inside this client's (before the write to after
    // ReadyForQuery), on the same monotonic clock: the sum can only be smaller, and it is
    // at least half (the client's own work outside the syscalls is microseconds).
    let agent_sum = series(&text, "client", &port, &me, "sum", "UPDATE", "").expect("UPDATE sum");
    let measured = update_time.as_secs_f64();
    assert!(
        agent_sum <= measured + 1e-6,
        "agent {agent_sum} s > client {measured} s"
    );
    assert!(
        agent_sum >= 0.5 * measured,
        "agent {agent_sum} s < half of client {measured} s"
    );
    let server_sum =
        series(&text, "server", &port, "postgres", "sum", "UPDATE", "").expect("server sum");
    assert!(
        server_sum <= agent_sum + 1e-6,
        "server-side {server_sum} s > client-side {agent_sum} s"
    );
}
