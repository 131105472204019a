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

/// Each syscall keeps only its first `keep` bytes; `len` stays true.
pub fn truncated<'a>(pieces: &[Piece<'a>], keep: usize) -> Vec<Piece<'a>> {
    pieces
        .iter()
        .map(|p| Piece {
            data: &p.data[..p.data.len().min(keep)],
            ..*p
        })
        .collect()
}

/// xorshift64*: reproducible random splits without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Each piece cut into random parts of 1 to `max` bytes, in order.
pub fn random_split<'a>(pieces: &[Piece<'a>], rng: &mut Rng, max: usize) -> Vec<Piece<'a>> {
    let mut v = Vec::new();
    for p in pieces {
        let mut at = 0;
        while at < p.len {
            let n = (1 + rng.below(max)).min(p.len - at);
            v.push(Piece {
                data: &p.data[at..at + n],
                len: n,
                ..*p
            });
            at += n;
        }
    }
    v
}
