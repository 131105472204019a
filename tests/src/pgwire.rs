//! A minimal PostgreSQL frontend (protocol 3.0, trust authentication): simple queries,
//! extended queries with named and unnamed statements, and pipelines, so the tests know
//! exactly which operations went on the wire.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

pub struct PgClient {
    stream: TcpStream,
}

/// The SQLSTATE of an ErrorResponse.
#[derive(Debug, PartialEq, Eq)]
pub struct SqlError(pub String);

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &body)
}

/// Bind with text parameters to the unnamed portal.
pub fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(statement));
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as u32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'B', &body)
}

pub fn execute() -> Vec<u8> {
    let mut body = cstr("");
    body.extend_from_slice(&0u32.to_be_bytes());
    message(b'E', &body)
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

impl PgClient {
    pub fn connect(port: u16) -> PgClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to postgres");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = PgClient { stream };
        let mut body = 196608u32.to_be_bytes().to_vec();
        for s in ["user", "postgres", "database", "postgres", ""] {
            body.extend(cstr(s));
        }
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend(body);
        client.stream.write_all(&startup).unwrap();
        client.until_ready().expect("startup");
        client
    }

    fn read_message(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).expect("message header");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).expect("message body");
        (head[0], body)
    }

    /// Reads until ReadyForQuery; returns the first error's SQLSTATE, if any.
    fn until_ready(&mut self) -> Result<(), SqlError> {
        let mut error = None;
        loop {
            let (tag, body) = self.read_message();
            match tag {
                b'Z' => return error.map_or(Ok(()), Err),
                b'E' if error.is_none() => {
                    let code = body
                        .split(|&b| b == 0)
                        .find(|f| f.first() == Some(&b'C'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                        .unwrap_or_default();
                    error = Some(SqlError(code));
                }
                _ => {}
            }
        }
    }

    /// Sends raw frontend messages in one write and waits for ReadyForQuery.
    pub fn send(&mut self, wire: &[u8]) -> (Result<(), SqlError>, Duration) {
        let start = Instant::now();
        self.stream.write_all(wire).expect("write");
        let result = self.until_ready();
        (result, start.elapsed())
    }

    pub fn simple(&mut self, sql: &str) -> (Result<(), SqlError>, Duration) {
        self.send(&message(b'Q', &cstr(sql)))
    }

    /// Parse (unnamed), Bind, Execute, Sync in one write.
    pub fn extended(&mut self, sql: &str, params: &[&str]) -> (Result<(), SqlError>, Duration) {
        let mut wire = parse("", sql);
        wire.extend(bind("", params));
        wire.extend(execute());
        wire.extend(sync());
        self.send(&wire)
    }

    /// Prepares a named statement (Parse + Sync).
    pub fn prepare(&mut self, name: &str, sql: &str) {
        let mut wire = parse(name, sql);
        wire.extend(sync());
        self.send(&wire).0.expect("prepare");
    }

    /// Bind + Execute + Sync of a named statement.
    pub fn execute_prepared(
        &mut self,
        name: &str,
        params: &[&str],
    ) -> (Result<(), SqlError>, Duration) {
        let mut wire = bind(name, params);
        wire.extend(execute());
        wire.extend(sync());
        self.send(&wire)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        let _ = self.stream.write_all(&message(b'X', &[]));
    }
}
