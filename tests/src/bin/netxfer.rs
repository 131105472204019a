//! TCP bulk transfer for the network-counter tests: a server that counts what each
//! connection sent, and a client that sends an exact number of bytes with write(2) or
//! sendfile(2).
//!
//! usage:
//!   netxfer serve ADDR PORT CONNS
//!       accepts CONNS connections one after the other; reads each to EOF, replies with
//!       the byte count as 8 bytes little-endian and closes it.
//!       prints: {"received":[N,...]}
//!   netxfer send ADDR PORT BYTES write|sendfile
//!       sends BYTES, shuts down its write side, reads the 8-byte reply and then the
//!       server's end of stream, closes.
//!       prints: {"sent":N,"acked":M}
//!
//! Every packet of a connection is sent by its own full socket: the server reads to EOF
//! before it closes (no reset for unread data), and the client waits for the server's
//! FIN before it closes, so that FIN is acknowledged by the client socket rather than by
//! a TIME_WAIT socket (whose ACKs come from the kernel's shared control socket).
//! Exits nonzero with a message on any error.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const CHUNK: usize = 64 * 1024;

fn usage() -> ! {
    eprintln!(
        "usage: netxfer serve ADDR PORT CONNS\n       netxfer send ADDR PORT BYTES write|sendfile"
    );
    std::process::exit(2);
}

fn fail(msg: String) -> ! {
    eprintln!("netxfer: {msg}");
    std::process::exit(1);
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| fail(format!("bad {what}: {s:?}")))
}

fn check(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn serve(addr: SocketAddr, conns: usize) -> io::Result<Vec<u64>> {
    // std sets SO_REUSEADDR on Unix listeners before bind; check rather than trust.
    let listener = TcpListener::bind(addr)?;
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let ret = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    check(ret as isize)?;
    if on == 0 {
        return Err(io::Error::other("SO_REUSEADDR is not set on the listener"));
    }
    let mut received = Vec::with_capacity(conns);
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..conns {
        let (mut s, _) = listener.accept()?;
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        s.write_all(&total.to_le_bytes())?;
        drop(s);
        received.push(total);
    }
    Ok(received)
}

fn send_write(s: &TcpStream, bytes: u64) -> io::Result<u64> {
    let buf = vec![b'x'; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        match check(unsafe { libc::write(s.as_raw_fd(), buf.as_ptr().cast(), n) }) {
            Ok(done) => sent += done as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// An anonymous in-memory file of `bytes` bytes of data (not a hole).
fn memfd_of(bytes: u64) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::memfd_create(c"netxfer".as_ptr(), libc::MFD_CLOEXEC) };
    check(fd as isize)?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    let buf = vec![b'f'; CHUNK];
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(CHUNK as u64) as usize;
        file.write_all(&buf[..n])?;
        written += n as u64;
    }
    Ok(OwnedFd::from(file))
}

fn send_sendfile(s: &TcpStream, bytes: u64) -> io::Result<u64> {
    let file = memfd_of(bytes)?;
    let mut offset: libc::off_t = 0;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(1 << 30) as usize;
        let ret = unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut offset, n) };
        match check(ret) {
            Ok(0) => return Err(io::Error::other("sendfile made no progress")),
            Ok(done) => sent += done as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

fn send(addr: SocketAddr, bytes: u64, sendfile: bool) -> io::Result<(u64, u64)> {
    let mut s = TcpStream::connect(addr)?;
    let sent = if sendfile {
        send_sendfile(&s, bytes)?
    } else {
        send_write(&s, bytes)?
    };
    s.shutdown(Shutdown::Write)?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    let acked = u64::from_le_bytes(reply);
    // Wait for the server's FIN, so this socket (not a TIME_WAIT one) acknowledges it.
    let mut rest = [0u8; 64];
    let extra = s.read(&mut rest)?;
    if extra != 0 {
        return Err(io::Error::other(format!(
            "{extra} unexpected bytes after the reply"
        )));
    }
    drop(s);
    Ok((sent, acked))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(mode) = args.get(1) else { usage() };
    match (mode.as_str(), &args[2..]) {
        ("serve", [addr, port, conns]) => {
            let addr = SocketAddr::new(parse::<IpAddr>("ADDR", addr), parse("PORT", port));
            let conns: usize = parse("CONNS", conns);
            let received =
                serve(addr, conns).unwrap_or_else(|e| fail(format!("serve on {addr}: {e}")));
            println!("{}", serde_json::json!({ "received": received }));
        }
        ("send", [addr, port, bytes, api]) => {
            let addr = SocketAddr::new(parse::<IpAddr>("ADDR", addr), parse("PORT", port));
            let bytes: u64 = parse("BYTES", bytes);
            let sendfile = match api.as_str() {
                "write" => false,
                "sendfile" => true,
                other => fail(format!("unknown api {other:?} (write|sendfile)")),
            };
            let (sent, acked) = send(addr, bytes, sendfile)
                .unwrap_or_else(|e| fail(format!("send to {addr}: {e}")));
            println!("{}", serde_json::json!({ "sent": sent, "acked": acked }));
            if acked != sent {
                fail(format!("sent {sent} bytes but the server counted {acked}"));
            }
        }
        _ => usage(),
    }
}
