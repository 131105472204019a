//! Traffic for the fd cache test (tests/tests/fd_cache.rs): a process that reads a pipe on
//! fd N (so the syscall tier caches "fd N is not a socket"), then makes fd N a TCP socket
//! by each way that replaces an fd, and moves known bytes on it with read(2)/write(2).
//! Prints one JSON line: what each side moved, and whether every socket got the fd the
//! pipe had (the test proves nothing otherwise).
//!
//! usage: fdgen NAME ROUNDS
//! (it re-executes itself as `fdgen NAME ROUNDS after-exec FD CLIENT_SENT ...`)

use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener},
    thread,
};

use serde_json::json;

const REQUEST: usize = 100;
const REPLY: usize = 37;

fn set_process_name(name: &str) {
    let c = std::ffi::CString::new(name).expect("name without NUL");
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

fn ok(ret: libc::c_int, what: &str) -> libc::c_int {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret
}

/// A pipe, read through `fd` a few times so the cache holds it.
fn pipe_used(flags: libc::c_int) -> (libc::c_int, libc::c_int) {
    let mut fds = [0; 2];
    ok(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) }, "pipe2");
    let mut buf = [0u8; 16];
    for _ in 0..4 {
        let n = unsafe { libc::write(fds[1], buf.as_ptr().cast(), buf.len()) };
        assert_eq!(n, 16);
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 16);
    }
    (fds[0], fds[1])
}

fn tcp_socket() -> libc::c_int {
    ok(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) },
        "socket",
    )
}

fn connect(fd: libc::c_int, port: u16) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    ok(
        unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        },
        "connect",
    );
}

/// [client sent, client received, server sent, server received].
type Moved = [u64; 4];

/// A server thread answering `rounds` requests on one connection.
fn server(rounds: usize) -> (u16, thread::JoinHandle<[u64; 2]>) {
    let listener = TcpListener::bind(SocketAddrV4::new([127, 0, 0, 1].into(), 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let (mut sent, mut received) = (0, 0);
        let mut buf = [0u8; REQUEST];
        for _ in 0..rounds {
            conn.read_exact(&mut buf).expect("server read");
            received += REQUEST as u64;
            conn.write_all(&[b'r'; REPLY]).expect("server write");
            sent += REPLY as u64;
        }
        [sent, received]
    });
    (port, handle)
}

/// `rounds` requests from the client's `fd` with write(2) and read(2).
fn talk(fd: libc::c_int, rounds: usize, server: thread::JoinHandle<[u64; 2]>) -> Moved {
    let (mut sent, mut received) = (0u64, 0u64);
    let request = [b'q'; REQUEST];
    let mut reply = [0u8; REPLY];
    for _ in 0..rounds {
        let n = unsafe { libc::write(fd, request.as_ptr().cast(), REQUEST) };
        assert_eq!(n, REQUEST as isize, "client write");
        sent += n as u64;
        let mut got = 0;
        while got < REPLY {
            let n = unsafe { libc::read(fd, reply[got..].as_mut_ptr().cast(), REPLY - got) };
            assert!(n > 0, "client read");
            got += n as usize;
        }
        received += got as u64;
    }
    let [s_sent, s_received] = server.join().expect("server thread");
    unsafe { libc::close(fd) };
    [sent, received, s_sent, s_received]
}

fn add(total: &mut Moved, m: Moved) {
    for (t, m) in total.iter_mut().zip(m) {
        *t += m;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = &args[1];
    let rounds: usize = args[2].parse().expect("ROUNDS");
    set_process_name(name);
    let mut total: Moved = [0; 4];
    let mut reused = Vec::new();

    if args.get(3).map(String::as_str) == Some("after-exec") {
        // The pipe on `fd` vanished at exec (close-on-exec, no close(2)).
        let fd: libc::c_int = args[4].parse().expect("FD");
        for (t, a) in total.iter_mut().zip(&args[5..9]) {
            *t = a.parse().expect("moved");
        }
        let mut reused: Vec<serde_json::Value> =
            serde_json::from_str(&args[9]).expect("reused so far");
        let s = tcp_socket();
        reused.push(json!({"how": "exec", "pipe_fd": fd, "socket_fd": s}));
        let (port, handle) = server(rounds);
        connect(s, port);
        add(&mut total, talk(s, rounds, handle));
        println!(
            "{}",
            json!({
                "client": {"sent": total[0], "received": total[1]},
                "server": {"sent": total[2], "received": total[3]},
                "reused": reused,
            })
        );
        return;
    }

    // close(2), then the next socket takes the pipe's fd.
    {
        let (r, w) = pipe_used(0);
        unsafe { libc::close(r) };
        let s = tcp_socket();
        reused.push(json!({"how": "close", "pipe_fd": r, "socket_fd": s}));
        let (port, handle) = server(rounds);
        connect(s, port);
        add(&mut total, talk(s, rounds, handle));
        unsafe { libc::close(w) };
    }
    // dup2 and dup3 of a connected socket over the pipe's fd.
    for how in ["dup2", "dup3"] {
        let (r, w) = pipe_used(0);
        let s = tcp_socket();
        let (port, handle) = server(rounds);
        connect(s, port);
        let fd = if how == "dup2" {
            ok(unsafe { libc::dup2(s, r) }, "dup2")
        } else {
            ok(unsafe { libc::dup3(s, r, 0) }, "dup3")
        };
        unsafe { libc::close(s) };
        reused.push(json!({"how": how, "pipe_fd": r, "socket_fd": fd}));
        add(&mut total, talk(fd, rounds, handle));
        unsafe { libc::close(w) };
    }
    // close_range(2) over the pipe's fd.
    {
        let (r, w) = pipe_used(0);
        ok(
            unsafe { libc::syscall(libc::SYS_close_range, r, r, 0) } as libc::c_int,
            "close_range",
        );
        let s = tcp_socket();
        reused.push(json!({"how": "close_range", "pipe_fd": r, "socket_fd": s}));
        let (port, handle) = server(rounds);
        connect(s, port);
        add(&mut total, talk(s, rounds, handle));
        unsafe { libc::close(w) };
    }
    // exec: a close-on-exec pipe is read, then the process execs itself; its first socket
    // after exec takes the pipe's fd.
    let (r, _w) = pipe_used(libc::O_CLOEXEC);
    let exe = std::env::current_exe().expect("current exe");
    let mut args = vec![
        name.clone(),
        rounds.to_string(),
        "after-exec".into(),
        r.to_string(),
    ];
    args.extend(total.iter().map(u64::to_string));
    args.push(serde_json::Value::from(reused).to_string());
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(exe).args(&args));
    panic!("exec: {err}");
}
