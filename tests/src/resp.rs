//! A minimal RESP2 client: the tests decide exactly which commands go on the wire, and
//! time each one themselves.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// A reply, reduced to what the tests check.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

pub struct RespClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RespClient {
    pub fn connect(port: u16) -> RespClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RespClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// The client end's port (the server sees the request come from it).
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().expect("local address").port()
    }

    /// Sends one command (one write) and reads its reply; returns the reply and the time
    /// from just before the write to just after the reply was read.
    pub fn command(&mut self, args: &[&str]) -> (Reply, Duration) {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let wire = encode(&bytes);
        let start = Instant::now();
        self.writer.write_all(&wire).expect("write command");
        let reply = self.read_reply();
        (reply, start.elapsed())
    }

    /// Sends all commands in one write, then reads one reply each.
    pub fn pipeline(&mut self, commands: &[Vec<String>]) -> Vec<Reply> {
        let mut wire = Vec::new();
        for c in commands {
            let bytes: Vec<&[u8]> = c.iter().map(|a| a.as_bytes()).collect();
            wire.extend(encode(&bytes));
        }
        self.writer.write_all(&wire).expect("write pipeline");
        commands.iter().map(|_| self.read_reply()).collect()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read reply line");
        line.trim_end_matches("\r\n").to_owned()
    }

    pub fn read_reply(&mut self) -> Reply {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Ok(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Integer(rest.parse().expect("integer")),
            "$" => {
                let n: i64 = rest.parse().expect("bulk length");
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut buf).expect("bulk body");
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
            "*" => {
                let n: i64 = rest.parse().expect("array length");
                Reply::Array((0..n.max(0)).map(|_| self.read_reply()).collect())
            }
            other => panic!("unexpected RESP type {other:?} in {line:?}"),
        }
    }
}
