//! `--web.config.file` (node_exporter's format): TLS and basic auth on the real agent,
//! checked with curl, with node_exporter reading the very same file, and with a real
//! Prometheus scraping through `tls_config` and `basic_auth` (issue 13).
//!
//! Needs root, openssl, curl, htpasswd (apache2-utils), prometheus and
//! prometheus-node-exporter (all installed by `cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nodetap_tests::{
    free_port, prometheus::Prometheus, run_ok, servers::TempDir, Agent, ChildGuard,
};

const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret-scrape";

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, by openssl.
fn make_certificates(dir: &Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=nodetap test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
    ]));
    run_ok(Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]));
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
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
    ]));
}

/// A bcrypt hash made by Apache's htpasswd, as a user following node_exporter's docs would.
fn bcrypt_hash(password: &str) -> String {
    let line = run_ok(Command::new("htpasswd").args(["-nbBC", "10", USER, password]));
    line.trim()
        .split_once(':')
        .map(|(_, hash)| hash.to_owned())
        .expect("htpasswd prints user:hash")
}

/// The web config, with relative file names (resolved against its own directory).
fn write_web_config(dir: &Path) -> PathBuf {
    let path = dir.join("web.yml");
    std::fs::write(
        &path,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  {USER}: '{}'\n",
            bcrypt_hash(PASSWORD)
        ),
    )
    .unwrap();
    path
}

/// curl's answer: (HTTP status, body). Status 0 when no HTTP answer came.
fn curl(url: &str, ca: &Path, user: Option<(&str, &str)>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(ca);
    if let Some((u, p)) = user {
        cmd.arg("-u").arg(format!("{u}:{p}"));
    }
    let out = cmd.arg(url).stderr(Stdio::null()).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn tls_and_basic_auth_in_node_exporter_format() {
    let dir = TempDir::new("nodetap-web-config");
    make_certificates(&dir.0);
    let web_config = write_web_config(&dir.0);
    let ca = dir.0.join("ca.crt");
    let web_arg = format!("--web.config.file={}", web_config.display());
    let agent = Agent::start_until(&[&web_arg], |agent| {
        curl(
            &format!("https://127.0.0.1:{}/healthz", agent.port),
            &ca,
            None,
        )
        .0 == 200
    });
    let https = |path: &str| format!("https://127.0.0.1:{}{path}", agent.port);

    // The right password scrapes, over a certificate chain curl verifies with the CA.
    let (status, body) = curl(&https("/metrics"), &ca, Some((USER, PASSWORD)));
    assert_eq!(status, 200, "right password: {body}");
    assert!(
        body.contains("nodetap_build_info{"),
        "a scrape with the right password has no nodetap_build_info:\n{body}"
    );
    // A wrong password, an unknown user, no credentials: 401 and nothing else.
    for (who, user) in [
        ("wrong password", Some((USER, "s3cret-scrapE"))),
        ("unknown user", Some(("admin", PASSWORD))),
        ("no credentials", None),
    ] {
        let (status, body) = curl(&https("/metrics"), &ca, user);
        assert_eq!(status, 401, "{who}: {body}");
        assert!(!body.contains("nodetap_"), "{who} got metrics:\n{body}");
    }
    // Probes need no password (a kubelet has none), but still TLS.
    let (status, body) = curl(&https("/readyz"), &ca, None);
    assert_eq!(status, 200, "/readyz: {body}");
    assert!(body.starts_with("ready"), "/readyz: {body}");

    // Plain HTTP on the TLS port is refused with Go's (so node_exporter's) answer.
    let (status, body) = curl(
        &format!("http://127.0.0.1:{}/metrics", agent.port),
        &ca,
        Some((USER, PASSWORD)),
    );
    assert_eq!(status, 400, "plain HTTP: {body}");
    assert!(
        !body.contains("nodetap_"),
        "plain HTTP got metrics:\n{body}"
    );
    // A client that does not trust the CA gets no connection.
    let (status, _) = curl(
        &https("/metrics"),
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        Some((USER, PASSWORD)),
    );
    assert_eq!(status, 0, "a client without the CA must fail the handshake");

    // The same file works in node_exporter: the format is node_exporter's, not a lookalike.
    let ne_port = free_port();
    let mut cmd = Command::new("/usr/bin/prometheus-node-exporter");
    cmd.arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
        .arg(&web_arg)
        .args(["--collector.disable-defaults", "--collector.loadavg"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _node_exporter = ChildGuard::spawn(cmd);
    let ne = format!("https://127.0.0.1:{ne_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let answer = curl(&ne, &ca, Some((USER, PASSWORD)));
        if answer.0 == 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        status, 200,
        "node_exporter with nodetap's web config: {body}"
    );
    assert_eq!(curl(&ne, &ca, Some((USER, "wrong"))).0, 401);

    // A real Prometheus scrapes with tls_config and basic_auth; the same job with a
    // wrong password is down.
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    basic_auth:\n      username: {USER}\n      password: {password}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            ca.display(),
            agent.port
        )
    };
    let prometheus = Prometheus::start(&format!(
        "{}{}",
        job("nodetap-tls", PASSWORD),
        job("nodetap-wrong-password", "not-it")
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let up = prometheus.query_until_non_empty("up{job=\"nodetap-tls\"} == 1", deadline);
    assert_eq!(up, vec![1.0]);
    let build =
        prometheus.query_until_non_empty("nodetap_build_info{job=\"nodetap-tls\"}", deadline);
    assert_eq!(build, vec![1.0]);
    let down = prometheus.query_until_non_empty("up{job=\"nodetap-wrong-password\"}", deadline);
    assert_eq!(down, vec![0.0], "a wrong password must not scrape");
    assert!(
        agent.output().lines().all(|l| !l.contains(PASSWORD)),
        "the agent logged the password"
    );
}
