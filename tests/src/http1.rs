//! A minimal keep-alive HTTP/1.1 client: the tests decide exactly which requests go on
//! one connection (pipelined or not). Responses are read by Content-Length.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

pub struct HttpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

/// Status and body length of one response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body_len: usize,
}

impl HttpClient {
    pub fn connect(port: u16) -> HttpClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        HttpClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            host: format!("127.0.0.1:{port}"),
        }
    }

    pub fn request_bytes(&self, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: nodetap-test\r\n",
            self.host
        );
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// The client end's port.
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().expect("local address").port()
    }

    /// A GET with extra header fields (one write), one response.
    pub fn get_with_headers(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut bytes = self.request_bytes("GET", path, b"");
        // Before the empty line that ends the head.
        bytes.truncate(bytes.len() - 2);
        for (name, value) in headers {
            bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        self.writer.write_all(&bytes).expect("write request");
        self.read_response(false)
    }

    /// One request (one write), one response.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Response {
        let bytes = self.request_bytes(method, path, body);
        self.writer.write_all(&bytes).expect("write request");
        self.read_response(method == "HEAD")
    }

    /// Several GETs in one write, then their responses in order.
    pub fn pipeline(&mut self, paths: &[&str]) -> Vec<Response> {
        let mut bytes = Vec::new();
        for p in paths {
            bytes.extend(self.request_bytes("GET", p, b""));
        }
        self.writer.write_all(&bytes).expect("write pipeline");
        paths.iter().map(|_| self.read_response(false)).collect()
    }

    fn read_response(&mut self, head: bool) -> Response {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("content-length");
                }
            }
        }
        if head {
            return Response {
                status,
                body_len: 0,
            };
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).expect("body");
        Response {
            status,
            body_len: length,
        }
    }
}
