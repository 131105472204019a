//! The EC2 instance metadata service (IMDSv2): this instance's availability zone, asked
//! at start-up when nothing else says the node's zone (see [`super::local_zone`]). A
//! small HTTP/1.1 client of its own, bounded in time and response size. Why a pod
//! reaches it only with host networking: [`super::zones`], "IMDS from a pod".

use std::{fmt, io, net::Ipv6Addr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

/// The two requests of an IMDSv2 exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImdsStep {
    /// `PUT /latest/api/token`
    Token,
    /// `GET /latest/meta-data/placement/availability-zone`
    AvailabilityZone,
}

impl ImdsStep {
    fn method(self) -> &'static str {
        match self {
            Self::Token => "PUT",
            Self::AvailabilityZone => "GET",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Token => "/latest/api/token",
            Self::AvailabilityZone => "/latest/meta-data/placement/availability-zone",
        }
    }
}

impl fmt::Display for ImdsStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::Token => "token request",
            Self::AvailabilityZone => "availability zone request",
        };
        write!(f, "{what} ({} {})", self.method(), self.path())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("bad imds endpoint {endpoint:?}: {problem}")]
    Endpoint {
        endpoint: String,
        problem: &'static str,
    },
    #[error("imds {step}: cannot connect to {address}")]
    Connect {
        step: ImdsStep,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("imds {step}: connection failed")]
    Io {
        step: ImdsStep,
        #[source]
        source: io::Error,
    },
    #[error("imds {step}: no answer within {timeout_ms} ms")]
    Timeout { step: ImdsStep, timeout_ms: u128 },
    #[error("imds {step}: bad http response: {problem}")]
    Response { step: ImdsStep, problem: String },
    #[error("imds {step}: http status {status}")]
    Status { step: ImdsStep, status: u16 },
    #[error("imds {step}: answer {answer:?} is not {expected}")]
    Answer {
        step: ImdsStep,
        answer: String,
        expected: &'static str,
    },
}

impl ImdsError {
    /// What an operator can do about it, where something is known.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Timeout {
                step: ImdsStep::Token,
                ..
            } => Some(
                "outside EC2 set zones.zone or zones.imds_endpoint = \"\"; in a pod use hostNetwork or an instance metadata hop limit of 2",
            ),
            Self::Status { status: 403, .. } => {
                Some("the instance metadata service is switched off for this instance")
            }
            Self::Connect { .. } => Some(
                "outside EC2 set zones.zone or zones.imds_endpoint = \"\"; on IPv6-only instances use http://[fd00:ec2::254]",
            ),
            _ => None,
        }
    }
}

/// Largest IMDS response read (headers and body).
const MAX_RESPONSE: usize = 16 * 1024;
/// What IMDSv2 calls the token's lifetime, seconds (6 h, its maximum); the token is used
/// once and dropped.
const TOKEN_TTL_SECONDS: &str = "21600";

/// This instance's availability zone from IMDSv2 at `endpoint` (e.g.
/// `http://169.254.169.254`), everything within `timeout`.
pub async fn imds_availability_zone(
    endpoint: &str,
    timeout: Duration,
) -> Result<String, ImdsError> {
    let target = Endpoint::parse(endpoint)?;
    let deadline = Instant::now() + timeout;
    let token = exchange(
        &target,
        ImdsStep::Token,
        &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)],
        deadline,
        timeout,
    )
    .await?;
    // The token goes back in a header: it must not be able to end the header.
    if token.is_empty() || token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ImdsError::Answer {
            step: ImdsStep::Token,
            answer: token,
            expected: "a token",
        });
    }
    let zone = exchange(
        &target,
        ImdsStep::AvailabilityZone,
        &[("X-aws-ec2-metadata-token", &token)],
        deadline,
        timeout,
    )
    .await?;
    let valid = !zone.is_empty()
        && zone.len() <= 64
        && zone.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(ImdsError::Answer {
            step: ImdsStep::AvailabilityZone,
            answer: zone,
            expected: "a zone name",
        });
    }
    Ok(zone)
}

/// One request on its own connection, by the deadline; the trimmed body of a 200.
async fn exchange(
    target: &Endpoint,
    step: ImdsStep,
    headers: &[(&str, &str)],
    deadline: Instant,
    timeout: Duration,
) -> Result<String, ImdsError> {
    let work = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| ImdsError::Connect {
                step,
                address: target.authority.clone(),
                source,
            })?;
        let io_err = |source| ImdsError::Io { step, source };
        let mut request = format!(
            "{} {}{} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nContent-Length: 0\r\nConnection: close\r\n",
            step.method(),
            target.base_path,
            step.path(),
            target.authority
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io_err)?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        let response = loop {
            let n = stream.read(&mut chunk).await.map_err(io_err)?;
            buf.extend_from_slice(&chunk[..n]);
            let parsed = parse_response(&buf, n == 0)
                .map_err(|problem| ImdsError::Response { step, problem })?;
            if let Some(response) = parsed {
                break response;
            }
        };
        if response.status != 200 {
            return Err(ImdsError::Status {
                step,
                status: response.status,
            });
        }
        match String::from_utf8(response.body) {
            Ok(body) => Ok(body.trim().to_owned()),
            Err(_) => Err(ImdsError::Response {
                step,
                problem: "body is not utf-8".to_owned(),
            }),
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(ImdsError::Timeout {
            step,
            timeout_ms: timeout.as_millis(),
        }))
}

/// Checks that `endpoint` is one the client can ask (`http://host[:port][/base]`), so
/// that a bad setting stops the agent at start-up.
pub fn check_endpoint(endpoint: &str) -> Result<(), ImdsError> {
    Endpoint::parse(endpoint).map(drop)
}

/// Where IMDS is: `http://host[:port][/base]`.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    /// Host name or address, IPv6 without brackets, for connecting.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    /// Path before `/latest/...`, without a trailing slash; usually empty.
    base_path: String,
}

impl Endpoint {
    fn parse(endpoint: &str) -> Result<Self, ImdsError> {
        let bad = |problem| ImdsError::Endpoint {
            endpoint: endpoint.to_owned(),
            problem,
        };
        let trimmed = endpoint.trim();
        let rest = match trimmed.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &trimmed[7..],
            _ if trimmed.starts_with("https://") => {
                return Err(bad("https is not supported (IMDS speaks plain http)"))
            }
            _ => return Err(bad("does not start with http://")),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if path.contains(['?', '#', ' ']) {
            return Err(bad("query, fragment or space in the path"));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad("bad ipv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        if host.is_empty() || (host.contains([' ', ':']) && !authority.starts_with('[')) {
            return Err(bad("bad host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// An HTTP/1.x response from the bytes read so far: `Ok(None)` while more are needed.
/// `eof` says the peer closed: a body without Content-Length ends there (RFC 9112
/// section 6.3). Chunked bodies are refused (IMDS does not send them).
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE {
            return Err(format!("no end of headers in {MAX_RESPONSE} bytes"));
        }
        if eof {
            return Err(format!(
                "closed after {} bytes, before the end of headers",
                buf.len()
            ));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "headers are not utf-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;

    let mut content_length: Option<usize> = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("bad content-length {value:?}"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err("conflicting content-length headers".to_owned());
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("transfer-encoding {value:?} is not supported"));
        }
    }

    let body = &buf[head_end + 4..];
    // Responses that never have a body (RFC 9112 section 6.3).
    if status / 100 == 1 || status == 204 || status == 304 {
        return Ok(Some(Response {
            status,
            body: Vec::new(),
        }));
    }
    match content_length {
        Some(n) if n > MAX_RESPONSE => Err(format!("content-length {n} is over {MAX_RESPONSE}")),
        Some(n) if body.len() >= n => Ok(Some(Response {
            status,
            body: body[..n].to_vec(),
        })),
        Some(n) if eof => Err(format!("closed after {} of {n} body bytes", body.len())),
        Some(_) => Ok(None),
        None if body.len() > MAX_RESPONSE => Err(format!("body over {MAX_RESPONSE} bytes")),
        None if eof => Ok(Some(Response {
            status,
            body: body.to_vec(),
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;

    #[test]
    fn endpoints() {
        let ok = |s: &str| Endpoint::parse(s).unwrap();
        let e = ok("http://169.254.169.254");
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.base_path.as_str()
            ),
            ("169.254.169.254", 80, "169.254.169.254", "")
        );
        let e = ok("http://[fd00:ec2::254]/");
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("fd00:ec2::254", 80, "[fd00:ec2::254]")
        );
        let e = ok("HTTP://127.0.0.1:8080/proxy/");
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("127.0.0.1", 8080, "/proxy")
        );
        let e = ok("http://[::1]:9");
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        for bad in [
            "",
            "169.254.169.254",
            "https://169.254.169.254",
            "http://",
            "http:///x",
            "http://h:port",
            "http://h:70000",
            "http://[::1",
            "http://[nope]",
            "http://[::1]x",
            "http://u@h",
            "http://h/x?y",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(ImdsError::Endpoint { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn responses() {
        let ok = |s: &str, eof| parse_response(s.as_bytes(), eof);
        assert_eq!(
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nus-east-1a",
                false
            ),
            Ok(Some(Response {
                status: 200,
                body: b"us-east-1a".to_vec()
            }))
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nus-ea", false),
            Ok(None)
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\nContent-Len", false), Ok(None));
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabc", true),
            Ok(Some(Response {
                status: 200,
                body: b"abc".to_vec()
            }))
        );
        assert_eq!(ok("HTTP/1.0 200 OK\r\n\r\nabc", false), Ok(None));
        assert_eq!(
            ok(
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
                false
            ),
            Ok(Some(Response {
                status: 401,
                body: vec![]
            }))
        );
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Some(Response {
                status: 204,
                body: vec![]
            }))
        );
        for (bad, eof) in [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                false,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
                false,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", false),
            ("HTTP/1.1 2000 OK\r\n\r\n", true),
            ("SSH-2.0-OpenSSH\r\n\r\n", true),
            ("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", true),
            ("HTTP/1.1 200", true),
            ("", true),
        ] {
            assert!(
                parse_response(bad.as_bytes(), eof).is_err(),
                "{bad:?} should be refused"
            );
        }
        let huge = vec![b'a'; MAX_RESPONSE + 1];
        assert!(parse_response(&huge, false).is_err());
    }

    proptest! {
        #[test]
        fn response_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), eof in any::<bool>()) {
            let _ = parse_response(&bytes, eof);
        }

        #[test]
        fn response_parser_never_panics_on_http_like(
            status in "[0-9]{1,4}",
            headers in prop::collection::vec("(Content-Length|Transfer-Encoding|X)[:]? ?[0-9a-z+-]{0,6}", 0..4),
            body in "[ -~]{0,32}",
            eof in any::<bool>(),
        ) {
            let text = format!("HTTP/1.1 {status} X\r\n{}\r\n\r\n{body}", headers.join("\r\n"));
            let _ = parse_response(text.as_bytes(), eof);
        }

        #[test]
        fn endpoint_parser_never_panics(s in any::<String>()) {
            let _ = Endpoint::parse(&s);
            let _ = Endpoint::parse(&format!("http://{s}"));
        }
    }

    // -- IMDS against a stand-in ----------------------------------------------------------

    const TOKEN: &str = "AQAEAHq3-test-token_Z9==";

    #[derive(Clone, Copy)]
    enum Body {
        ContentLength,
        CloseDelimited,
    }

    /// A stand-in IMDSv2 on 127.0.0.1: answers the token request only with the TTL
    /// header, the zone request only with the token, everything else 401/404. Returns
    /// its endpoint and the requests it saw (request line and headers).
    async fn fake_imds(zone: &'static str, body: Body) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&buf).into_owned();
                log.lock().unwrap().push(request.clone());
                let lines: Vec<&str> = request.split("\r\n").collect();
                let header = |name: &str| {
                    lines.iter().find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let (status, answer) = match lines[0] {
                    "PUT /latest/api/token HTTP/1.1" => {
                        match header("X-aws-ec2-metadata-token-ttl-seconds").as_deref() {
                            Some("21600") => ("200 OK", TOKEN),
                            _ => ("400 Bad Request", ""),
                        }
                    }
                    "GET /latest/meta-data/placement/availability-zone HTTP/1.1" => {
                        match header("X-aws-ec2-metadata-token").as_deref() {
                            Some(TOKEN) => ("200 OK", zone),
                            _ => ("401 Unauthorized", ""),
                        }
                    }
                    _ => ("404 Not Found", ""),
                };
                let response = match body {
                    Body::ContentLength => format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\n\r\n{answer}",
                        answer.len()
                    ),
                    Body::CloseDelimited => format!("HTTP/1.0 {status}\r\n\r\n{answer}"),
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (endpoint, seen)
    }

    #[tokio::test]
    async fn imds_token_then_zone() {
        for body in [Body::ContentLength, Body::CloseDelimited] {
            let (endpoint, seen) = fake_imds("eu-west-1b", body).await;
            let zone = imds_availability_zone(&endpoint, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)));
            assert_eq!(zone, "eu-west-1b");
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert!(
                seen[0].starts_with("PUT /latest/api/token HTTP/1.1\r\n"),
                "{}",
                seen[0]
            );
            assert!(seen[0].contains("X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"));
            assert!(
                seen[1].contains(&format!("X-aws-ec2-metadata-token: {TOKEN}\r\n")),
                "{}",
                seen[1]
            );
            let host = endpoint.strip_prefix("http://").unwrap();
            assert!(seen[1].contains(&format!("Host: {host}\r\n")));
        }
    }

    #[tokio::test]
    async fn imds_refuses_a_bad_zone_answer() {
        let (endpoint, _) = fake_imds("<html>captive portal</html>", Body::ContentLength).await;
        let err = imds_availability_zone(&endpoint, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ImdsError::Answer {
                    step: ImdsStep::AvailabilityZone,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn imds_status_names_the_step() {
        // A path prefix the stand-in does not know: the first request gets a 404.
        let (endpoint, _) = fake_imds("eu-west-1b", Body::ContentLength).await;
        let err = imds_availability_zone(&format!("{endpoint}/elsewhere"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "imds token request (PUT /latest/api/token): http status 404"
        );
    }

    #[tokio::test]
    async fn imds_timeout_when_nobody_answers() {
        // Bound but never accepted: the kernel completes the handshake and takes the
        // request, and no answer ever comes.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let started = std::time::Instant::now();
        let err = imds_availability_zone(&endpoint, Duration::from_millis(300))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                ImdsError::Timeout {
                    step: ImdsStep::Token,
                    timeout_ms: 300
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "imds token request (PUT /latest/api/token): no answer within 300 ms"
        );
        assert!(err.hint().is_some());
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(3),
            "took {took:?}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn imds_timeout_is_total_and_names_the_second_step() {
        // Answers the token at once, then holds the zone request open.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if buf[..n].starts_with(b"PUT ") {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{TOKEN}",
                        TOKEN.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                } else {
                    held.push(stream);
                }
            }
        });
        let err = imds_availability_zone(&endpoint, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ImdsError::Timeout {
                    step: ImdsStep::AvailabilityZone,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn imds_connection_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err =
            imds_availability_zone(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
                .await
                .unwrap_err();
        assert!(
            matches!(
                err,
                ImdsError::Connect {
                    step: ImdsStep::Token,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
