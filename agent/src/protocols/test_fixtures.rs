//! Recorded connections for the protocol parsers' tests: both directions' bytes and the
//! order of the recording proxy's reads, from tests/fixtures/<protocol>/ (each folder's
//! README.md says how they were captured).

use std::path::PathBuf;

/// A connection between a real client and a real server.
pub struct Fixture {
    pub req: Vec<u8>,
    pub resp: Vec<u8>,
    /// The recv() calls of the recording proxy, in order: (client-to-server?, bytes).
    pub order: Vec<(bool, usize)>,
}

/// One syscall's worth of a fixture: its direction, its bytes, and how many it moved.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub req: bool,
    pub data: &'a [u8],
    pub len: usize,
}

/// Loads `<name>.req`, `<name>.resp` and `<name>.order` from tests/fixtures/<protocol>.
pub fn load(protocol: &str, name: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(protocol);
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    let order: Vec<(bool, usize)> = String::from_utf8(read("order"))
        .expect("order file is text")
        .lines()
        .map(|l| {
            let (dir, n) = l.split_once(' ').expect("order line is '> N' or '< N'");
            (dir == ">", n.parse().expect("order line has a byte count"))
        })
        .collect();
    let f = Fixture {
        req: read("req"),
        resp: read("resp"),
        order,
    };
    let sum = |d: bool| {
        f.order
            .iter()
            .filter(|o| o.0 == d)
            .map(|o| o.1)
            .sum::<usize>()
    };
    assert_eq!(
        sum(true),
        f.req.len(),
        "{name}: order file does not add up to .req"
    );
    assert_eq!(
        sum(false),
        f.resp.len(),
        "{name}: order file does not add up to .resp"
    );
    f
}

/// The fixture's recv() calls, as syscalls.
pub fn logged(f: &Fixture) -> Vec<Piece<'_>> {
    let (mut q, mut r) = (0, 0);
    f.order
        .iter()
        .map(|&(req, n)| {
            let (buf, at) = if req {
                (&f.req, &mut q)
            } else {
                (&f.resp, &mut r)
            };
            let data = &buf[*at..*at + n];
            *at += n;
            Piece { req, data, len: n }
        })
        .collect()
}

/// All client bytes, then all server bytes, one syscall each.
pub fn whole(f: &Fixture) -> Vec<Piece<'_>> {
    vec![
        Piece {
            req: true,
            data: &f.req,
            len: f.req.len(),
        },
        Piece {
            req: false,
            data: &f.resp,
            len: f.resp.len(),
        },
    ]
}
