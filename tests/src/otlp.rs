//! The stand-in OTLP receiver (tests/peers/otlp_receiver.py): the real protocol, decoded
//! with the official protobuf bindings; every span it receives is one JSON line in a file
//! the test reads.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{peers::peer_script, servers::TempDir, Checked, ChildGuard};

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
    /// The CA that signed its certificate, when it serves TLS.
    pub ca: Option<PathBuf>,
    dir: TempDir,
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
            ca: None,
            dir,
        }
    }

    /// A receiver serving TLS with a certificate for 127.0.0.1 signed by a CA of its own
    /// (`ca`), made with openssl.
    pub fn start_tls(transport: Transport) -> OtlpReceiver {
        let mut receiver = OtlpReceiver::stopped(transport);
        make_certificates(&receiver.dir.0);
        receiver.ca = Some(receiver.dir.0.join("ca.crt"));
        receiver.resume();
        receiver
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
        if self.ca.is_some() {
            cmd.arg(self.dir.0.join("server.crt"))
                .arg(self.dir.0.join("server.key"));
        }
        let mut process = ChildGuard::spawn(cmd);
        crate::servers::wait_for_port(self.port, "otlp receiver", &mut process);
        self.process = Some(process);
    }

    /// The endpoint to give the agent (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Every span received so far (whole lines only: the receiver may be writing one).
    pub fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver wrote {l:?}: {e}"))
            })
            .collect()
    }

    /// Every metric data point received so far (one JSON object each; see the receiver).
    pub fn metric_points(&self) -> Vec<Value> {
        let path = format!("{}.metrics", self.out.display());
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
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

/// A CA, and a server certificate for 127.0.0.1 it signed (`ca.crt`, `server.crt`,
/// `server.key` in `dir`).
fn make_certificates(dir: &std::path::Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .checked("openssl")
    };
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            "/CN=otlp test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("san.ext"),
        "-out",
        &p("server.crt"),
    ]);
}
