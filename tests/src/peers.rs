//! Python peers (tests/peers/*.py) that drive real client libraries, driven from Rust.
//!
//! A peer prints one JSON object per line. A staged peer prints `{"stage": ...}` after
//! each stage of its workload and waits for a line on its stdin before the next one, so
//! a test can check the agent's counts stage by stage; its last line has `"done"`.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::ChildGuard;

/// A peer script under tests/peers.
pub fn peer_script(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name);
    assert!(path.exists(), "peer script {} missing", path.display());
    path
}

/// Runs a peer to completion; returns its last JSON line (`Value::Null` if it printed
/// none). Panics with its stderr if it fails.
pub fn run_peer(script: &str, args: &[&str]) -> Value {
    run_peer_with_env(script, args, &[])
}

/// `run_peer` with extra environment variables (e.g. secrets a test must not put on a
/// command line, which every process can read).
pub fn run_peer_with_env(script: &str, args: &[&str], env: &[(String, String)]) -> Value {
    let out = Command::new("python3")
        .arg(peer_script(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{script} printed {l:?}: {e}")))
        .unwrap_or(Value::Null)
}

/// A running staged peer, killed on drop.
pub struct StagedPeer {
    script: String,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
    process: ChildGuard,
}

impl StagedPeer {
    pub fn start(script: &str, args: &[&str]) -> StagedPeer {
        let stderr = std::env::temp_dir().join(format!(
            "nodetap-peer-{}-{}.err",
            std::process::id(),
            crate::free_port()
        ));
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("peer stderr file"));
        let mut process = ChildGuard::spawn(cmd);
        let stdin = process.child.stdin.take().expect("peer stdin");
        let stdout = BufReader::new(process.child.stdout.take().expect("peer stdout"));
        StagedPeer {
            script: script.to_owned(),
            stdin,
            stdout,
            stderr,
            process,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The peer's next report (a stage, or the final one).
    pub fn next_report(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            let status = self.process.wait_timeout(Duration::from_secs(5));
            panic!(
                "{} ended without a report (exit {status:?}):\n{}",
                self.script,
                self.stderr()
            );
        }
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} printed {line:?}: {e}", self.script))
    }

    /// Lets the peer start its next stage.
    pub fn proceed(&mut self) {
        self.stdin
            .write_all(b"next\n")
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| panic!("{} stdin: {e}\n{}", self.script, self.stderr()));
    }

    /// Waits for the peer to exit successfully.
    pub fn finish(mut self) {
        let code = self.process.wait_timeout(Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "{} did not exit cleanly:\n{}",
            self.script,
            self.stderr()
        );
    }
}

impl Drop for StagedPeer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stderr);
    }
}
