//! Real servers from Debian packages, started on free loopback ports with private data
//! directories, stopped and removed on drop.

use crate::Checked;
use std::{
    net::TcpStream,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, ChildGuard};

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until something listens on `port` (at most 30 s); panics if `process` exits first.
pub fn wait_for_port(port: u16, what: &str, process: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("{what} exited during start-up: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// redis-server on 127.0.0.1:<free port>, no persistence.
pub struct RedisServer {
    pub port: u16,
    _process: ChildGuard,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Started with extra command-line settings (e.g. `--requirepass`, `--user`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = TempDir::new("nodetap-redis");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = ChildGuard::spawn(cmd);
        wait_for_port(port, "redis-server", &mut process);
        RedisServer {
            port,
            _process: process,
            _dir: dir,
        }
    }
}

/// The PostgreSQL server binaries of the installed major version.
pub fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("postgresql is installed by `cargo xtask setup`")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    let bin = versions
        .last()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name);
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// uid and gid of the `postgres` user the Debian package creates: initdb and postgres
/// refuse to run as root.
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "user postgres missing (installed with the postgresql package)"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// postgres on 127.0.0.1:<free port> with a fresh cluster, trust authentication.
pub struct PostgresServer {
    pub port: u16,
    _process: ChildGuard,
    _dir: TempDir,
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        PostgresServer::start_with(&[])
    }

    /// Started with extra `-c name=value` settings (e.g. `shared_preload_libraries`).
    pub fn start_with(settings: &[(&str, &str)]) -> PostgresServer {
        PostgresServer::start_with_hba(settings, &[])
    }

    /// Started with `pg_hba.conf` lines placed before the default trust rules (the
    /// first matching line wins), e.g. password methods for some roles.
    pub fn start_with_hba(settings: &[(&str, &str)], hba: &[&str]) -> PostgresServer {
        let dir = TempDir::new("nodetap-pg");
        let (uid, gid) = postgres_user();
        let chown = |p: &std::path::Path| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        };
        chown(&dir.0);
        let data = dir.0.join("data");
        Command::new(postgres_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .uid(uid)
            .gid(gid)
            .output()
            .checked("run initdb");
        if !hba.is_empty() {
            let path = data.join("pg_hba.conf");
            let defaults = std::fs::read_to_string(&path).expect("pg_hba.conf after initdb");
            std::fs::write(&path, format!("{}\n{defaults}", hba.join("\n")))
                .expect("write pg_hba.conf");
        }
        let port = free_port();
        let mut cmd = Command::new(postgres_bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(
                settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_owned(), format!("{k}={v}")]),
            )
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = ChildGuard::spawn(cmd);
        wait_for_port(port, "postgres", &mut process);
        PostgresServer {
            port,
            _process: process,
            _dir: dir,
        }
    }
}

/// nginx on 127.0.0.1: one HTTP/1.1 port and one cleartext HTTP/2 (prior knowledge) port,
/// serving a private root with files of known sizes, `return 500` at /status/500 and a
/// small text answer under /api/, and a `Set-Cookie: session=<session_cookie>` (random
/// per server) at /login.
pub struct Nginx {
    pub http1_port: u16,
    pub h2c_port: u16,
    pub root: PathBuf,
    pub session_cookie: String,
    _process: ChildGuard,
    _dir: TempDir,
}

impl Nginx {
    pub fn start() -> Nginx {
        let dir = TempDir::new("nodetap-nginx");
        let root = dir.0.join("www");
        std::fs::create_dir_all(root.join("users")).unwrap();
        std::fs::write(root.join("index.html"), "x".repeat(612)).unwrap();
        std::fs::write(root.join("big.bin"), vec![b'b'; 1_000_000]).unwrap();
        for id in ["123", "456"] {
            std::fs::write(root.join("users").join(id), format!("user {id}\n")).unwrap();
        }
        let (http1_port, h2c_port) = (free_port(), free_port());
        let session_cookie = crate::random_token(24);
        let conf = dir.0.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\ndaemon off;\nerror_log stderr;\npid {d}/nginx.pid;\n\
                 events {{}}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{http1_port};\n    listen 127.0.0.1:{h2c_port} http2;\n\
                 root {root};\n    location = /status/500 {{ return 500; }}\n\
                 location /api/ {{ return 200 \"ok\\n\"; }}\n\
                 location = /login {{ add_header Set-Cookie \"session={session_cookie}; HttpOnly\" always; return 200 \"ok\\n\"; }}\n  }}\n}}\n",
                d = dir.0.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = ChildGuard::spawn(cmd);
        wait_for_port(http1_port, "nginx", &mut process);
        wait_for_port(h2c_port, "nginx", &mut process);
        Nginx {
            http1_port,
            h2c_port,
            root,
            session_cookie,
            _process: process,
            _dir: dir,
        }
    }
}

/// The gRPC peer script (tests/peers/grpc_peer.py).
pub fn grpc_peer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/grpc_peer.py")
}

/// A real gRPC server (Python grpcio) on 127.0.0.1:<free port>.
pub struct GrpcServer {
    pub port: u16,
    _process: ChildGuard,
}

impl GrpcServer {
    pub fn start() -> GrpcServer {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(grpc_peer())
            .arg("server")
            .arg(port.to_string())
            .stdout(Stdio::null());
        let mut process = ChildGuard::spawn(cmd);
        wait_for_port(port, "grpc server", &mut process);
        GrpcServer {
            port,
            _process: process,
        }
    }
}

/// How the test proxy (tests/peers/http_proxy.py) serves its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// One thread, an asyncio event loop: every connection on the same thread.
    Loop,
    /// A thread per connection.
    Threads,
}

/// The test proxy: `GET /r/<n>` on 127.0.0.1:<port> becomes `GET /api/up/<n>` to a
/// backend (nginx); each request's truth (path in, path out, serving thread) is a JSON
/// line in its truth file.
pub struct HttpProxy {
    pub port: u16,
    truth: PathBuf,
    _process: ChildGuard,
    _dir: TempDir,
}

/// One request as the proxy served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub path_in: String,
    pub path_out: String,
    pub thread: u64,
}

impl HttpProxy {
    pub fn start(mode: ProxyMode, backend_port: u16) -> HttpProxy {
        let dir = TempDir::new("nodetap-proxy");
        let truth = dir.0.join("truth.jsonl");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/http_proxy.py"))
            .arg(match mode {
                ProxyMode::Loop => "loop",
                ProxyMode::Threads => "threads",
            })
            .arg(port.to_string())
            .arg(backend_port.to_string())
            .arg(&truth)
            .stdout(Stdio::null());
        let mut process = ChildGuard::spawn(cmd);
        wait_for_port(port, "http proxy", &mut process);
        HttpProxy {
            port,
            truth,
            _process: process,
            _dir: dir,
        }
    }

    /// What the proxy served so far, in the order it served it.
    pub fn truth(&self) -> Vec<ProxiedRequest> {
        std::fs::read_to_string(&self.truth)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("proxy truth {line:?}: {e}"));
                ProxiedRequest {
                    path_in: v["in"].as_str().expect("in").to_owned(),
                    path_out: v["out"].as_str().expect("out").to_owned(),
                    thread: v["thread"].as_u64().expect("thread"),
                }
            })
            .collect()
    }
}
