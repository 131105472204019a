//! Connection load for the memory test: many TCP connections on loopback, both ends in
//! this process, each moving a few bytes. It renames itself first so the agent reports
//! its traffic under the test's name. A process may hold only so many descriptors (the
//! test machines' hard limit is 20,000), so the test runs several of these at once.
//!
//! usage: connload NAME hold N PAYLOAD
//!   opens N connections, the client of each sends PAYLOAD bytes and the server reads
//!   them; prints one JSON line when all are open, holds them until stdin has a line (or
//!   ends), closes them all (the clients with a reset) and exits.
//! usage: connload NAME churn N PAYLOAD
//!   opens and closes N connections one after another: the client sends PAYLOAD bytes,
//!   the server answers as many and closes, the client closes with a reset (no TIME_WAIT
//!   left on either side); prints one JSON line at the end.
//! usage: connload NAME http PORTS STATUSES
//!   an HTTP/1.1 server on each of PORTS ports, and a client on one keep-alive
//!   connection to each that sends STATUSES requests, answered with the statuses 200,
//!   201, ... in turn: PORTS x STATUSES distinct series of each `http_*` family.
//! usage: connload NAME redis PORT CONNECTIONS
//!   CONNECTIONS connections to the Redis server on PORT one after another, each sending
//!   10 SETs one at a time; `server_sent` is what the server answered.
//!
//! The JSON line: {"connections":N,"client_sent":BYTES,"server_sent":BYTES}.

use std::{
    io::{BufRead, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

fn set_process_name(name: &str) {
    let c = std::ffi::CString::new(name).expect("name without NUL");
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// A loopback listener with a deep accept queue: std's backlog of 128 would make a
/// connect wait for a SYN retransmission (a second) whenever the accepting thread falls
/// behind. listen(2) again on a listening socket resizes its queue.
fn listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let rc = unsafe { libc::listen(l.as_raw_fd(), 4096) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    l
}

fn report(connections: usize, client_sent: usize, server_sent: usize) {
    println!(
        "{{\"connections\":{connections},\"client_sent\":{client_sent},\"server_sent\":{server_sent}}}"
    );
    std::io::stdout().flush().expect("stdout");
}

fn hold(n: usize, payload: usize) {
    let l = listener();
    let port = l.local_addr().expect("address").port();
    let (servers, clients) = std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let mut buf = vec![0u8; payload];
            (0..n)
                .map(|_| {
                    let (mut s, _) = l.accept().expect("accept");
                    s.read_exact(&mut buf).expect("read the payload");
                    s
                })
                .collect::<Vec<_>>()
        });
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.write_all(&vec![b'c'; payload]).expect("send");
                s
            })
            .collect();
        (server.join().expect("server thread"), clients)
    });
    report(n, n * payload, 0);
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    // Closed with a reset (SO_LINGER 0): a client that closes first otherwise waits in
    // TIME_WAIT for a minute, and the socket tier counts its close only when that ends
    // (when the system's TIME_WAIT table is full the kernel skips the wait: so it
    // depended on what else the machine had closed lately).
    clients.iter().for_each(close_with_reset);
    drop(clients);
    drop(servers);
}

/// SO_LINGER 0: the close sends a reset, and neither end waits in TIME_WAIT.
fn close_with_reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

fn churn(n: usize, payload: usize) {
    let l = listener();
    let port = l.local_addr().expect("address").port();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut buf = vec![0u8; payload];
            let answer = vec![b's'; payload];
            for _ in 0..n {
                let (mut s, _) = l.accept().expect("accept");
                s.read_exact(&mut buf).expect("read the request");
                s.write_all(&answer).expect("answer");
            }
        });
        let request = vec![b'c'; payload];
        let mut buf = vec![0u8; payload];
        for _ in 0..n {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(&request).expect("send");
            s.read_exact(&mut buf).expect("read the answer");
            // A reset ends both sides at once: a million connections leave no TIME_WAIT
            // behind (the table holds 131,072 here), nothing that later tests' agents
            // would see expire for a minute after this one.
            close_with_reset(&s);
        }
    });
    report(n, n * payload, n * payload);
}

fn http(ports: usize, statuses: u16) {
    let listeners: Vec<TcpListener> = (0..ports).map(|_| listener()).collect();
    let sent: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let servers: Vec<_> = listeners
            .iter()
            .map(|l| {
                scope.spawn(move || {
                    let (mut s, _) = l.accept().expect("accept");
                    let mut buf = [0u8; 1024];
                    let mut sent = 0;
                    for status in 200..200 + statuses {
                        read_head(&mut s, &mut buf);
                        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                        s.write_all(response.as_bytes()).expect("respond");
                        sent += response.len();
                    }
                    // The client closes first; wait for it so both sides are done.
                    let _ = s.read(&mut buf);
                    sent
                })
            })
            .collect();
        // One client at a time: the point is the series, not a burst that outruns the
        // agent's ring buffer.
        let clients: Vec<usize> = listeners
            .iter()
            .map(|l| {
                let port = l.local_addr().expect("address").port();
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
                let mut buf = [0u8; 1024];
                for _ in 0..statuses {
                    s.write_all(request.as_bytes()).expect("request");
                    read_head(&mut s, &mut buf);
                }
                request.len() * statuses as usize
            })
            .collect();
        let servers: Vec<usize> = servers.into_iter().map(|h| h.join().unwrap()).collect();
        clients.into_iter().zip(servers).collect()
    });
    report(
        ports,
        sent.iter().map(|s| s.0).sum(),
        sent.iter().map(|s| s.1).sum(),
    );
}

/// Commands per connection of the `redis` mode.
const REDIS_SETS: usize = 10;

fn redis(port: u16, connections: usize) {
    let (mut client_sent, mut server_sent) = (0, 0);
    for c in 0..connections {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to Redis");
        for i in 0..REDIS_SETS {
            let key = format!("connload:{c}:{i}");
            let command = format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$5\r\nvalue\r\n",
                key.len()
            );
            s.write_all(command.as_bytes()).expect("send SET");
            client_sent += command.len();
            let mut reply = [0u8; 5];
            s.read_exact(&mut reply).expect("read the reply");
            assert_eq!(&reply, b"+OK\r\n", "Redis answered");
            server_sent += reply.len();
        }
    }
    report(connections, client_sent, server_sent);
}

/// Reads one request or response head (none here has a body), which the peer wrote with
/// one call.
fn read_head(s: &mut TcpStream, buf: &mut [u8]) {
    let mut have = 0;
    while !buf[..have].ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf[have..]).expect("read a head");
        assert!(n > 0, "peer closed mid-conversation");
        have += n;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: connload NAME hold|churn N PAYLOAD, connload NAME http PORTS STATUSES, or connload NAME redis PORT CONNECTIONS";
    let [_, name, mode, n, payload] = args.as_slice() else {
        panic!("{usage}");
    };
    set_process_name(name);
    let n: usize = n.parse().expect(usage);
    let payload: usize = payload.parse().expect(usage);
    match mode.as_str() {
        "hold" => hold(n, payload),
        "churn" => churn(n, payload),
        "http" => http(n, payload.try_into().expect("STATUSES fits u16")),
        "redis" => redis(n.try_into().expect("PORT fits u16"), payload),
        _ => panic!("{usage}"),
    }
}
