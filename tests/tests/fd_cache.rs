//! The syscall tier's fd cache stays exact when an fd number changes file: a process reads
//! a pipe on fd N (the cache learns "N is not a socket"), then N becomes a TCP socket by
//! close(2), dup2, dup3, close_range and exec (a close-on-exec pipe), and moves known bytes
//! on it with read(2)/write(2). Every byte must be counted. In the socket tier the cache
//! is not used and the test checks the same counts.
//!
//! The traffic comes from `fdgen` (tests/src/bin), which renames itself and reports what
//! it really moved and which fds it got.

use std::{process::Command, time::Duration};

use nodetap_tests::{
    capture_tier, helper_bin, lines_with, serial, tcp_bytes, unique_name, Agent, Checked,
};
use serde_json::Value;

#[test]
fn fd_reused_as_socket_after_close_dup_close_range_and_exec_counts_exact_bytes() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let name = unique_name("ntfdc");
    let rounds = 200;
    let out = Command::new(helper_bin("fdgen"))
        .args([&name, &rounds.to_string()])
        .output()
        .checked("run fdgen");
    let report: Value = serde_json::from_slice(&out.stdout).expect("fdgen prints JSON");
    let reused = report["reused"].as_array().expect("reused list");
    assert_eq!(reused.len(), 5, "five ways of reusing an fd: {report}");
    for r in reused {
        assert_eq!(
            r["pipe_fd"], r["socket_fd"],
            "the socket should have taken the pipe's fd, else this proves nothing: {report}"
        );
    }
    let want = [
        ("transmit", "client", report["client"]["sent"].as_f64()),
        ("receive", "client", report["client"]["received"].as_f64()),
        ("transmit", "server", report["server"]["sent"].as_f64()),
        ("receive", "server", report["server"]["received"].as_f64()),
    ];
    let text = agent.scrape_until(Duration::from_secs(10), |text| {
        want.iter()
            .all(|(d, r, w)| Some(tcp_bytes(text, &name, d, r)) == *w)
    });
    let wrong: Vec<String> = want
        .iter()
        .filter(|(d, r, w)| Some(tcp_bytes(&text, &name, d, r)) != *w)
        .map(|(d, r, w)| {
            format!(
                "{r} {d} bytes: agent {}, moved {w:?}",
                tcp_bytes(&text, &name, d, r)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "capture tier {}: {name} read a pipe on fd N, then made N a TCP socket (close, dup2, \
         dup3, close_range, exec) and moved {rounds} requests on each ({report}):\n{}\n\
         --- scrape (this process) ---\n{}",
        capture_tier(&text),
        wrong.join("\n"),
        lines_with(&text, &name)
    );
}
