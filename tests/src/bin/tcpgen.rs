//! Traffic generator for the capture tests: one process, a server thread and a client,
//! moving an exact number of bytes in an exact number of calls over one TCP connection,
//! with the syscall family chosen on the command line. It renames itself first so the
//! agent reports its traffic under a name no other test uses.
//!
//! usage: tcpgen NAME v4|v6 rw|sendrecv|vectored|msg CALLS SIZE REPLY
//! prints: one JSON line with what each side did.

use std::{
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

#[derive(Clone, Copy)]
enum Api {
    /// read(2) / write(2)
    ReadWrite,
    /// recvfrom(2) / sendto(2) (what std's TcpStream uses)
    SendRecv,
    /// readv(2) / writev(2), two iovecs per call
    Vectored,
    /// recvmsg(2) / sendmsg(2), two iovecs per call
    Msg,
}

fn set_process_name(name: &str) {
    let c = std::ffi::CString::new(name).expect("name without NUL");
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

fn check(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// One send call; returns bytes sent.
fn send_once(s: &mut TcpStream, buf: &[u8], api: Api) -> io::Result<usize> {
    let fd = s.as_raw_fd();
    let half = buf.len() / 2;
    let iov = [
        libc::iovec {
            iov_base: buf.as_ptr() as *mut _,
            iov_len: half,
        },
        libc::iovec {
            iov_base: buf[half..].as_ptr() as *mut _,
            iov_len: buf.len() - half,
        },
    ];
    match api {
        Api::ReadWrite => check(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }),
        Api::SendRecv => s.write(buf),
        Api::Vectored => check(unsafe { libc::writev(fd, iov.as_ptr(), 2) }),
        Api::Msg => {
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_ptr() as *mut _;
            msg.msg_iovlen = 2;
            check(unsafe { libc::sendmsg(fd, &msg, 0) })
        }
    }
}

/// One receive call; returns bytes received (0 at end of stream).
fn recv_once(s: &mut TcpStream, buf: &mut [u8], api: Api) -> io::Result<usize> {
    let fd = s.as_raw_fd();
    let half = buf.len() / 2;
    let (a, b) = buf.split_at_mut(half);
    let iov = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        },
    ];
    match api {
        Api::ReadWrite => check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }),
        Api::SendRecv => s.read(buf),
        Api::Vectored => check(unsafe { libc::readv(fd, iov.as_ptr(), 2) }),
        Api::Msg => {
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_ptr() as *mut _;
            msg.msg_iovlen = 2;
            check(unsafe { libc::recvmsg(fd, &mut msg, 0) })
        }
    }
}

#[derive(Default)]
struct Side {
    sent: usize,
    send_calls: usize,
    received: usize,
    recv_calls: usize,
}

/// Sends exactly `total` bytes in pieces of at most `size`.
fn send_all(
    s: &mut TcpStream,
    total: usize,
    size: usize,
    api: Api,
    side: &mut Side,
) -> io::Result<()> {
    let buf = vec![b'n'; size.max(2)];
    while side.sent < total {
        let n = (total - side.sent).min(size);
        let sent = send_once(s, &buf[..n], api)?;
        side.sent += sent;
        side.send_calls += 1;
    }
    Ok(())
}

/// Receives exactly `total` bytes.
fn recv_all(s: &mut TcpStream, total: usize, api: Api, side: &mut Side) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    while side.received < total {
        let n = recv_once(s, &mut buf, api)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed early",
            ));
        }
        side.received += n;
        side.recv_calls += 1;
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, family, api, calls, size, reply] = &args[..] else {
        eprintln!("usage: tcpgen NAME v4|v6 rw|sendrecv|vectored|msg CALLS SIZE REPLY");
        std::process::exit(2);
    };
    set_process_name(name);
    let api = match api.as_str() {
        "rw" => Api::ReadWrite,
        "sendrecv" => Api::SendRecv,
        "vectored" => Api::Vectored,
        "msg" => Api::Msg,
        other => panic!("unknown api {other}"),
    };
    let calls: usize = calls.parse().expect("CALLS");
    let size: usize = size.parse().expect("SIZE");
    let reply: usize = reply.parse().expect("REPLY");
    let request_total = calls * size;
    let listener = TcpListener::bind(if family == "v6" {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    })?;
    let addr = listener.local_addr()?;

    let server = std::thread::spawn(move || -> io::Result<Side> {
        let (mut s, _) = listener.accept()?;
        let mut side = Side::default();
        recv_all(&mut s, request_total, api, &mut side)?;
        send_all(&mut s, reply, 65536, api, &mut side)?;
        Ok(side)
    });
    let mut client = TcpStream::connect(addr)?;
    let mut c = Side::default();
    send_all(&mut client, request_total, size, api, &mut c)?;
    recv_all(&mut client, reply, api, &mut c)?;
    drop(client);
    let s = server.join().expect("server thread")?;
    println!(
        "{{\"client\":{{\"sent\":{},\"send_calls\":{},\"received\":{},\"recv_calls\":{}}},\
         \"server\":{{\"sent\":{},\"send_calls\":{},\"received\":{},\"recv_calls\":{}}}}}",
        c.sent,
        c.send_calls,
        c.received,
        c.recv_calls,
        s.sent,
        s.send_calls,
        s.received,
        s.recv_calls
    );
    Ok(())
}
