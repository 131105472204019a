//! The stand-in OTLP receiver (tests/peers/otlp_receiver.py): the real protocol, decoded
//! with the official protobuf bindings; every span it receives is one JSON line in a file
//! the test reads.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{peers::peer_script, servers::TempDir, ChildGuard};

/// The receiver's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    Grpc,
}

/// A running receiver, killed on drop; what it received stays readable in `out`.
pub struct OtlpReceiver {
    pub port: u16,
    pub transport: Transport,
    out: PathBuf,
    process: Option<ChildGuard>,
    _dir: TempDir,
}

impl OtlpReceiver {
    pub fn start(transport: Transport) -> OtlpReceiver {
        let mut receiver = OtlpReceiver::stopped(transport);
        receiver.resume();
        receiver
    }

    /// A receiver that does not listen yet (its port chosen): [`OtlpReceiver::resume`]
    /// starts it.
    pub fn stopped(transport: Transport) -> OtlpReceiver {
        let dir = TempDir::new("nodetap-otlp");
        OtlpReceiver {
            port: crate::free_port(),
            transport,
            out: dir.0.join("spans.jsonl"),
            process: None,
            _dir: dir,
        }
    }

    /// Starts listening (again) on the same port, appending to the same file.
    pub fn resume(&mut self) {
        let mode = match self.transport {
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        };
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script("otlp_receiver.py"))
            .args([mode, &self.port.to_string()])
            .arg(&self.out)
            .stdout(Stdio::null());
        let mut process = ChildGuard::spawn(cmd);
        crate::servers::wait_for_port(self.port, "otlp receiver", &mut process);
        self.process = Some(process);
    }

    /// The endpoint to give the agent (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote {l:?}: {e}"))
            })
            .collect()
    }

    /// The spans `pick` selects, once there are at least `n` of them (or `timeout` passed);
    /// then waits a little longer so that a span too many would show.
    pub fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        pick: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let picked: Vec<Value> = self.spans().into_iter().filter(&pick).collect();
            if picked.len() >= n || Instant::now() >= deadline {
                std::thread::sleep(Duration::from_millis(1500));
                return self.spans().into_iter().filter(&pick).collect();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A span's attribute as a string (integers as their decimal text), for comparisons.
pub fn attribute(span: &Value, key: &str) -> Option<String> {
    match &span["attributes"][key] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `SpanKind` values.
pub const KIND_SERVER: u64 = 2;
pub const KIND_CLIENT: u64 = 3;
