//! Faults on the scrape endpoint, against the real agent: slow clients that never finish
//! a request, oversized requests, and 100 concurrent scrapes. Other scrapes must be
//! unaffected: each answers completely, within a deadline, and parses.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use nodetap_tests::{exposition, try_http_get, Agent};

/// What a scrape may take while the endpoint is under the fault (the agent's own scrape
/// takes milliseconds; the machine is shared).
const DEADLINE: Duration = Duration::from_secs(5);

/// One scrape that must succeed, parse, and carry the agent's build info, within DEADLINE.
fn good_scrape(agent: &Agent, what: &str) {
    let t = Instant::now();
    let text =
        try_http_get(&agent.metrics_url()).unwrap_or_else(|e| panic!("scrape {what} failed: {e}"));
    let took = t.elapsed();
    assert!(took < DEADLINE, "scrape {what} took {took:?}");
    let families = exposition::parse(&text).unwrap_or_else(|e| panic!("scrape {what}: {e}"));
    assert!(
        families.iter().any(|f| f.name == "nodetap_build_info"),
        "scrape {what} lacks nodetap_build_info"
    );
}

#[test]
fn slow_and_oversized_requests_leave_other_scrapes_unaffected() {
    let agent = Agent::start(&[]);
    let addr = format!("127.0.0.1:{}", agent.port);

    // 50 clients that send half a request line and then nothing.
    let slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(b"GET /metr").expect("write");
            s
        })
        .collect();
    good_scrape(&agent, "with 50 slow clients connected");

    // A request with a 1 MiB header: refused (or cut off), never served, never fatal.
    let mut big = TcpStream::connect(&addr).expect("connect");
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend(b"\r\n\r\n");
    // The agent may close the connection before it has read everything.
    let _ = big.write_all(&request);
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a 1 MiB header was served: {}",
        answer.lines().next().unwrap_or("")
    );
    good_scrape(&agent, "after a 1 MiB header");

    // A request line of 1 MiB.
    let mut long = TcpStream::connect(&addr).expect("connect");
    long.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'm', 1 << 20));
    line.extend(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = long.write_all(&line);
    let mut answer = Vec::new();
    let _ = long.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "a 1 MiB request line was served"
    );
    good_scrape(&agent, "after a 1 MiB request line");
    drop(slow);
    good_scrape(&agent, "after the slow clients left");
}

#[test]
fn a_hundred_concurrent_scrapes_all_answer_completely() {
    let agent = Agent::start(&[]);
    let url = agent.metrics_url();
    let t = Instant::now();
    // Complete means both halves of the exposition: the agent's families (first) and
    // the node collectors' (last).
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                scope.spawn(|| {
                    let text = try_http_get(&url)?;
                    let families = exposition::parse(&text).map_err(|e| e.to_string())?;
                    for name in ["nodetap_build_info", "node_scrape_collector_success"] {
                        if !families.iter().any(|f| f.name == name) {
                            return Err(format!("no {name} in a scrape of {} bytes", text.len()));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 100 scrapes failed: {failed:?}",
        failed.len()
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "100 concurrent scrapes took {:?}",
        t.elapsed()
    );
    good_scrape(&agent, "after 100 concurrent scrapes");
}

/// Files under `--path.procfs` that vanish (a process exiting, a container's /proc going
/// away) fail their collector only, for as long as they are gone: the scrape still
/// answers, the other collectors still report, and the collector recovers when the file
/// is back.
#[test]
fn vanishing_proc_files_fail_their_collector_only_and_recover() {
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/node/real/proc");
    let dir = nodetap_tests::servers::TempDir::new("nodetap-vanish");
    let proc_dir = dir.0.join("proc");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(&fixture)
        .arg(&proc_dir)
        .status()
        .expect("cp");
    assert!(copied.success(), "copying {}", fixture.display());
    let agent = Agent::start(&["--path.procfs", proc_dir.to_str().unwrap()]);
    let success = |text: &str, collector: &str| {
        nodetap_tests::metric_value(
            text,
            "node_scrape_collector_success",
            &[("collector", collector)],
        )
    };
    let text = agent.scrape();
    for c in ["meminfo", "loadavg", "stat"] {
        assert_eq!(success(&text, c), Some(1.0), "{c} before the files vanish");
    }

    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = ["meminfo", "loadavg"]
        .iter()
        .map(|f| {
            let p = proc_dir.join(f);
            let bytes = std::fs::read(&p).expect("fixture file");
            std::fs::remove_file(&p).expect("remove");
            (p, bytes)
        })
        .collect();
    let text = agent.scrape();
    assert_eq!(
        success(&text, "meminfo"),
        Some(0.0),
        "meminfo while its file is gone"
    );
    assert_eq!(
        success(&text, "loadavg"),
        Some(0.0),
        "loadavg while its file is gone"
    );
    assert_eq!(success(&text, "stat"), Some(1.0), "stat is unaffected");
    assert!(
        !text.contains("node_memory_MemTotal_bytes "),
        "no stale meminfo values while the file is gone"
    );
    good_scrape(&agent, "while /proc files are gone");

    for (p, bytes) in saved {
        std::fs::write(p, bytes).expect("restore");
    }
    let text = agent.scrape();
    assert_eq!(
        success(&text, "meminfo"),
        Some(1.0),
        "meminfo after its file is back"
    );
    assert_eq!(
        success(&text, "loadavg"),
        Some(1.0),
        "loadavg after its file is back"
    );
}
