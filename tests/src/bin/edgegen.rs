//! Traffic for the capture edge-case tests. One process that renames itself first (so the
//! agent reports it under a name no other test uses), does one kind of traffic, and
//! prints one JSON line with what each side really moved (the syscalls' return values).
//!
//! usage:
//!   edgegen NAME peek N             N Redis GETs to an in-process RESP server; both
//!                                   sides MSG_PEEK each message before reading it
//!   edgegen NAME rst REDIS_PORT N   N times: a GET to redis-server on a connection
//!                                   this side resets (SO_LINGER 0), then a GET to an
//!                                   in-process RESP server that resets its side
//!   edgegen NAME mmsg ROUNDS        ROUNDS of sendmmsg/recvmmsg of 32 messages each way
//!   edgegen NAME bystander OPS      OPS pipe writes and reads, and file I/O; no sockets
//!   edgegen NAME load CONNS ROUNDS  CONNS connections of RESP PINGs, 16 writes per round
//!   edgegen NAME relisten CONNS CHURN LISTENERS
//!                                   CONNS connections that each carry 16 bytes to a
//!                                   server that answers nothing, reset by the client;
//!                                   then LISTENERS listeners, which take the freed
//!                                   sockets' addresses, closed after CHURN more such
//!                                   connections one after another

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::mpsc,
    thread,
};

use serde_json::json;

const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
const VALUE: &[u8] = b"$5\r\nvalue\r\n";
const NIL: &[u8] = b"$-1\r\n";
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const PONG: &[u8] = b"+PONG\r\n";

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

/// Bytes each side moved.
#[derive(Default, Clone, Copy)]
struct Moved {
    sent: usize,
    received: usize,
}

impl Moved {
    fn json(&self) -> serde_json::Value {
        json!({"sent": self.sent, "received": self.received})
    }

    fn add(&mut self, other: Moved) {
        self.sent += other.sent;
        self.received += other.received;
    }
}

fn write_all(s: &mut TcpStream, buf: &[u8], moved: &mut Moved) -> io::Result<()> {
    s.write_all(buf)?;
    moved.sent += buf.len();
    Ok(())
}

fn read_exact(s: &mut TcpStream, n: usize, moved: &mut Moved) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    moved.received += n;
    Ok(buf)
}

/// recv(MSG_PEEK) until `n` bytes are waiting (they stay in the socket).
fn peek(s: &TcpStream, n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; n];
    loop {
        let got = check(unsafe {
            libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), n, libc::MSG_PEEK)
        })?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if got >= n {
            return Ok(());
        }
        thread::sleep(std::time::Duration::from_micros(200));
    }
}

fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let ret = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(ret, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

fn peek_run(n: usize) -> io::Result<serde_json::Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = thread::spawn(move || -> io::Result<Moved> {
        let (mut s, _) = listener.accept()?;
        let mut m = Moved::default();
        for _ in 0..n {
            peek(&s, GET.len())?;
            assert_eq!(read_exact(&mut s, GET.len(), &mut m)?, GET);
            write_all(&mut s, VALUE, &mut m)?;
        }
        Ok(m)
    });
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_nodelay(true)?;
    let mut m = Moved::default();
    for _ in 0..n {
        write_all(&mut c, GET, &mut m)?;
        peek(&c, VALUE.len())?;
        assert_eq!(read_exact(&mut c, VALUE.len(), &mut m)?, VALUE);
    }
    drop(c);
    let s = server.join().expect("server thread")?;
    Ok(json!({"client": m.json(), "server": s.json(), "server_port": port, "requests": n}))
}

fn rst_run(redis_port: u16, n: usize) -> io::Result<serde_json::Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || -> io::Result<Moved> {
        let mut m = Moved::default();
        for _ in 0..n {
            let (mut s, _) = listener.accept()?;
            assert_eq!(read_exact(&mut s, GET.len(), &mut m)?, GET);
            write_all(&mut s, VALUE, &mut m)?;
            // Reset only once the client has the reply (an RST discards what it has not
            // read yet), while the client still holds its descriptor.
            read_rx.recv().expect("client went away");
            linger_zero(&s);
        }
        Ok(m)
    });
    let mut m = Moved::default();
    let mut resets_seen = 0;
    for _ in 0..n {
        // This side resets.
        let mut r = TcpStream::connect(("127.0.0.1", redis_port))?;
        write_all(&mut r, GET, &mut m)?;
        assert_eq!(read_exact(&mut r, NIL.len(), &mut m)?, NIL);
        linger_zero(&r);
        drop(r);
        // The peer resets; this side reads (and sees it) before closing.
        let mut f = TcpStream::connect(("127.0.0.1", port))?;
        write_all(&mut f, GET, &mut m)?;
        assert_eq!(read_exact(&mut f, VALUE.len(), &mut m)?, VALUE);
        read_tx.send(()).expect("server thread went away");
        let mut buf = [0u8; 16];
        match f.read(&mut buf) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => resets_seen += 1,
            Ok(0) => {}
            other => panic!("expected a reset, got {other:?}"),
        }
        drop(f);
    }
    let s = server.join().expect("server thread")?;
    Ok(json!({
        "client": m.json(), "server": s.json(), "fake_port": port,
        "resets_seen": resets_seen, "requests": n,
    }))
}

/// Connections whose sockets are freed, then listening sockets that take their addresses,
/// closed only after so many other connections that the agent no longer remembers the
/// first ones. The kernel's TCP socket cache hands back the memory it freed last, so the
/// listeners opened right after land where the first connections' server sockets were.
/// A listener is not a connection: its close must not be taken for the close of the
/// socket that had its address before.
fn relisten_run(conns: usize, churn: usize, listeners: usize) -> io::Result<serde_json::Value> {
    let first = TcpListener::bind("127.0.0.1:0")?;
    let port = first.local_addr()?.port();
    let (mut client, mut server) = (Moved::default(), Moved::default());
    let mut pairs = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        let (mut s, _) = first.accept()?;
        write_all(&mut c, &[b'c'; 16], &mut client)?;
        read_exact(&mut s, 16, &mut server)?;
        pairs.push((c, s));
    }
    drop(first);
    let mut servers = Vec::with_capacity(conns);
    for (c, mut s) in pairs {
        linger_zero(&c);
        drop(c);
        // The server's end sees the reset (its TCP_CLOSE) while it holds its descriptor.
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
            Ok(0) => {}
            other => panic!("expected a reset, got {other:?}"),
        }
        servers.push(s);
    }
    // Freed last: theirs are the addresses the listeners take.
    drop(servers);
    let held = (0..listeners)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    // One after another, so they reuse a handful of addresses, and each closed at both
    // ends with a reset (nothing left in TIME_WAIT).
    let churn_port = held[0].local_addr()?.port();
    for _ in 0..churn {
        let mut c = TcpStream::connect(("127.0.0.1", churn_port))?;
        let (mut s, _) = held[0].accept()?;
        write_all(&mut c, &[b'c'; 16], &mut client)?;
        read_exact(&mut s, 16, &mut server)?;
        linger_zero(&c);
        drop(c);
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
        drop(s);
    }
    drop(held);
    Ok(json!({
        "client": client.json(), "server": server.json(),
        "connections": conns + churn, "listeners": listeners,
    }))
}

/// Sizes of the 32 messages of one call, per direction.
fn sizes(base: usize, step: usize) -> Vec<usize> {
    (0..32).map(|i| base + step * i).collect()
}

/// One sendmmsg of messages of `sizes`; returns (bytes, messages).
fn sendmmsg(s: &TcpStream, sizes: &[usize]) -> io::Result<(usize, usize)> {
    let bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![b'm'; n]).collect();
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let sent = check(unsafe {
        libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) as isize
    })?;
    let bytes = msgs[..sent].iter().map(|h| h.msg_len as usize).sum();
    Ok((bytes, sent))
}

/// recvmmsg (MSG_WAITFORONE) into 32 buffers of `sizes` until `total` bytes arrived;
/// returns the calls made.
fn recvmmsg_total(
    s: &TcpStream,
    sizes: &[usize],
    total: usize,
    m: &mut Moved,
) -> io::Result<usize> {
    let mut calls = 0;
    let start = m.received;
    while m.received - start < total {
        let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let got = check(unsafe {
            libc::recvmmsg(
                s.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            ) as isize
        })?;
        let bytes: usize = msgs[..got].iter().map(|h| h.msg_len as usize).sum();
        if bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        m.received += bytes;
        calls += 1;
    }
    Ok(calls)
}

fn mmsg_run(rounds: usize) -> io::Result<serde_json::Value> {
    let (up, down) = (sizes(100, 13), sizes(200, 7));
    let (up_total, down_total) = (up.iter().sum::<usize>(), down.iter().sum::<usize>());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (up2, down2) = (up.clone(), down.clone());
    let server = thread::spawn(move || -> io::Result<(Moved, usize, usize)> {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let (mut m, mut recv_calls, mut full_sends) = (Moved::default(), 0, 0);
        for _ in 0..rounds {
            recv_calls += recvmmsg_total(&s, &up2, up_total, &mut m)?;
            let (bytes, msgs) = sendmmsg(&s, &down2)?;
            m.sent += bytes;
            full_sends += usize::from(msgs == 32 && bytes == down_total);
        }
        Ok((m, recv_calls, full_sends))
    });
    let c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let (mut m, mut recv_calls, mut full_sends) = (Moved::default(), 0, 0);
    for _ in 0..rounds {
        let (bytes, msgs) = sendmmsg(&c, &up)?;
        m.sent += bytes;
        full_sends += usize::from(msgs == 32 && bytes == up_total);
        recv_calls += recvmmsg_total(&c, &down, down_total, &mut m)?;
    }
    c.shutdown(Shutdown::Both)?;
    drop(c);
    let (s, s_recv_calls, s_full_sends) = server.join().expect("server thread")?;
    Ok(json!({
        "client": m.json(), "server": s.json(),
        "client_sendmmsg_of_32": full_sends, "server_sendmmsg_of_32": s_full_sends,
        "client_recvmmsg_calls": recv_calls, "server_recvmmsg_calls": s_recv_calls,
    }))
}

fn bystander_run(ops: usize) -> io::Result<serde_json::Value> {
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (r, w) = (fds[0], fds[1]);
    let mut buf = [7u8; 8];
    for _ in 0..ops {
        check(unsafe { libc::write(w, buf.as_ptr().cast(), buf.len()) })?;
        check(unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) })?;
    }
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    let path = std::env::temp_dir().join(format!("edgegen-bystander-{}", std::process::id()));
    let file_ops = ops / 10;
    {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..file_ops {
            f.write_all(&[b'f'; 64])?;
        }
    }
    {
        let mut f = std::fs::File::open(&path)?;
        let mut chunk = [0u8; 64];
        for _ in 0..file_ops {
            f.read_exact(&mut chunk)?;
        }
    }
    std::fs::remove_file(&path)?;
    Ok(
        json!({"pipe_writes": ops, "pipe_reads": ops, "file_writes": file_ops, "file_reads": file_ops}),
    )
}

fn load_run(conns: usize, rounds: usize) -> io::Result<serde_json::Value> {
    const BURST: usize = 16;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> io::Result<Moved> {
        let mut handlers = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = listener.accept()?;
            handlers.push(thread::spawn(move || -> io::Result<Moved> {
                s.set_nodelay(true)?;
                let mut m = Moved::default();
                let mut buf = vec![0u8; 65536];
                let mut pending = 0;
                loop {
                    let n = s.read(&mut buf)?;
                    if n == 0 {
                        return Ok(m);
                    }
                    m.received += n;
                    pending += n;
                    // One write per PING: many small events.
                    while pending >= PING.len() {
                        write_all(&mut s, PONG, &mut m)?;
                        pending -= PING.len();
                    }
                }
            }));
        }
        let mut total = Moved::default();
        for h in handlers {
            total.add(h.join().expect("server connection thread")?);
        }
        Ok(total)
    });
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            thread::spawn(move || -> io::Result<Moved> {
                let mut c = TcpStream::connect(addr)?;
                c.set_nodelay(true)?;
                let mut m = Moved::default();
                for _ in 0..rounds {
                    for _ in 0..BURST {
                        write_all(&mut c, PING, &mut m)?;
                    }
                    read_exact(&mut c, BURST * PONG.len(), &mut m)?;
                }
                c.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                c.read_to_end(&mut rest)?;
                m.received += rest.len();
                Ok(m)
            })
        })
        .collect();
    let mut client = Moved::default();
    for c in clients {
        client.add(c.join().expect("client thread")?);
    }
    let server = server.join().expect("server thread")?;
    Ok(
        json!({"client": client.json(), "server": server.json(), "requests": conns * rounds * BURST}),
    )
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: edgegen NAME peek N | rst REDIS_PORT N | mmsg ROUNDS | bystander OPS | load CONNS ROUNDS | relisten CONNS CHURN LISTENERS");
        std::process::exit(2)
    };
    if args.len() < 4 {
        usage();
    }
    set_process_name(&args[1]);
    let num = |i: usize| -> usize { args[i].parse().unwrap_or_else(|_| usage()) };
    let report = match (args[2].as_str(), args.len()) {
        ("peek", 4) => peek_run(num(3))?,
        ("rst", 5) => rst_run(num(3) as u16, num(4))?,
        ("mmsg", 4) => mmsg_run(num(3))?,
        ("bystander", 4) => bystander_run(num(3))?,
        ("load", 5) => load_run(num(3), num(4))?,
        ("relisten", 6) => relisten_run(num(3), num(4), num(5))?,
        _ => usage(),
    };
    println!("{report}");
    Ok(())
}
