//! Fuzz targets: every parser and decoder that takes outside input, by name, with the
//! seeds each starts from. `cargo xtask fuzz TARGET` runs one under AFL++ (the `fuzz/`
//! crate is the thin binary); the unit tests below run every target on its seeds and on
//! the inputs that once crashed or hung it (tests/fixtures/fuzz/<target>/), so a fixed
//! bug stays fixed without AFL.
//!
//! A target must not panic, hang, or grow memory without bound on any input.
//!
//! Connection-shaped targets read their input as a script of syscalls, so the fuzzer can
//! reach states that need both directions and lost bytes: records of
//! `[flags][n][n bytes]` (the last record takes what is left), where flag bit 0 says the
//! client sent it and bit 1 that the call moved `(flags >> 2) * 512` more bytes than
//! were copied (a gap).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::protocols::{
    self, http1, http2, postgres, redis,
    route::{normalize_route, RouteBudget, RoutePatterns},
    Chunk, ConnectionProtocol, NewSession, Request, SessionOptions,
};

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Seed inputs made from the repository's fixtures (`fixtures` is tests/fixtures).
    pub seeds: fn(fixtures: &Path) -> Vec<Vec<u8>>,
}

/// Every target; `cargo xtask fuzz` and CI's smoke run go through this table.
pub const TARGETS: &[Target] = &[
    Target {
        name: "detect",
        run: detect,
        seeds: |f| client_prefixes(f, 64),
    },
    Target {
        name: "connection",
        run: connection,
        seeds: |f| {
            let mut v = Vec::new();
            for (dir, client, server) in SESSION_FIXTURES {
                v.extend(conversations(&f.join(dir), client, server));
            }
            v
        },
    },
    Target {
        name: "redis",
        run: |d| session(d, redis::new_session),
        seeds: |f| conversations(&f.join("redis"), "req", "resp"),
    },
    Target {
        name: "postgres",
        run: |d| session(d, postgres::new_session),
        seeds: |f| conversations(&f.join("postgres"), "fe", "be"),
    },
    Target {
        name: "http1",
        run: |d| session(d, http1::new_session),
        seeds: |f| conversations(&f.join("http1"), "req", "resp"),
    },
    Target {
        name: "http2",
        run: |d| session(d, http2::new_session),
        seeds: |f| conversations(&f.join("http2"), "req", "resp"),
    },
    Target {
        name: "hpack",
        run: hpack,
        seeds: |_| HPACK_SEEDS.iter().map(|s| s.to_vec()).collect(),
    },
    Target {
        name: "event",
        run: |d| {
            let _ = crate::capture::event::decode(d);
        },
        seeds: |_| vec![vec![0; 16], vec![0; 64], vec![1; 256]],
    },
    Target {
        name: "btf",
        run: |d| {
            if let Ok(btf) = crate::probes::btf::Btf::parse(d) {
                let _ = btf.kernel_offsets();
            }
        },
        seeds: |_| vec![MINIMAL_BTF.to_vec()],
    },
    Target {
        name: "cgroup",
        run: |d| {
            let text = String::from_utf8_lossy(d);
            let _ = crate::metadata::cgroup::parse_cgroup_path(&text);
            let _ = crate::metadata::cgroup::path_from_proc_cgroup(&text);
        },
        seeds: |f| files_in(&f.join("cgroup/proc"), "cgroup"),
    },
    Target {
        name: "node",
        run: node,
        seeds: node_seeds,
    },
    Target {
        name: "config",
        run: |d| {
            let text = String::from_utf8_lossy(d);
            if let Ok(file) = toml::from_str::<crate::config::Settings>(&text) {
                let _ = crate::config::Config::merge(crate::config::Cli::default(), file);
            }
        },
        seeds: |_| CONFIG_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
    },
    Target {
        name: "route",
        run: route,
        seeds: |_| {
            let seeds = [
                "/api/users/42?x=1\n/users/{id}",
                "/a/b/c\n/static/*\n/x/{y}",
            ];
            seeds.iter().map(|s| s.as_bytes().to_vec()).collect()
        },
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Fixture folders of recorded connections: (folder, client file, server file).
const SESSION_FIXTURES: [(&str, &str, &str); 4] = [
    ("redis", "req", "resp"),
    ("postgres", "fe", "be"),
    ("http1", "req", "resp"),
    ("http2", "req", "resp"),
];

/// Largest part of a fixture a seed keeps per direction: AFL works best on small seeds.
const SEED_BYTES: usize = 2048;

/// One record of a script (see the module documentation).
fn record(out: &mut Vec<u8>, from_client: bool, data: &[u8]) {
    for piece in data.chunks(255) {
        out.push(u8::from(from_client));
        out.push(piece.len() as u8);
        out.extend_from_slice(piece);
    }
}

/// Parses a script into (from_client, copied bytes, bytes moved).
fn script(data: &[u8]) -> Vec<(bool, &[u8], usize)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [flags, n, tail @ ..] = rest {
        let n = usize::from(*n).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        let gap = if flags & 2 != 0 {
            usize::from(flags >> 2) * 512
        } else {
            0
        };
        out.push((flags & 1 != 0, bytes, n + gap));
        rest = next;
    }
    out
}

fn chunks(data: &[u8]) -> impl Iterator<Item = (bool, Chunk<'_>)> {
    script(data)
        .into_iter()
        .enumerate()
        .map(|(i, (from_client, bytes, len))| {
            let t = i as u64 * 1000;
            let chunk = Chunk {
                data: bytes,
                len,
                start_ns: t,
                end_ns: t + 500,
            };
            (from_client, chunk)
        })
}

fn detect(data: &[u8]) {
    let _ = protocols::detect(data);
    let _ = protocols::looks_like_tls(data);
    let _ = protocols::looks_like_h2_server_settings(data);
}

/// Detection and whichever session it picks, as the capture layer drives them.
fn connection(data: &[u8]) {
    let options = SessionOptions {
        http_routes: Arc::new(RoutePatterns::default()),
    };
    let mut conn = ConnectionProtocol::default();
    let mut out: Vec<Request> = Vec::new();
    for (from_client, chunk) in chunks(data) {
        conn.feed(from_client, &chunk, &options, &mut out);
        let _ = conn.skip_hint(from_client);
        out.clear();
    }
    if let Some((_, s)) = conn.session_mut() {
        s.finish(&mut out);
    }
}

/// One protocol's session, fed a script, then expired and finished.
fn session(data: &[u8], new: NewSession) {
    let mut s = new(&SessionOptions {
        http_routes: Arc::new(RoutePatterns::default()),
    });
    let mut out: Vec<Request> = Vec::new();
    for (from_client, chunk) in chunks(data) {
        if from_client {
            s.client_bytes(&chunk, &mut out);
        } else {
            s.server_bytes(&chunk, &mut out);
        }
        let _ = s.take_health();
        let _ = s.skip_hint(from_client);
        out.clear();
    }
    let _ = s.pending();
    s.expire(u64::MAX / 2, 1);
    s.finish(&mut out);
}

/// Header blocks separated by a 0xff 0xfe pair, decoded in order on one table (HPACK's
/// state carries over between blocks); the first byte, if below 0x80, sets the table
/// limit in units of 64 bytes.
fn hpack(data: &[u8]) {
    let mut decoder = protocols::hpack::Decoder::new();
    let data = match data.split_first() {
        Some((&limit, rest)) if limit < 0x80 => {
            decoder.set_limit(usize::from(limit) * 64);
            rest
        }
        _ => data,
    };
    let mut start = 0;
    for i in 0..=data.len() {
        if i == data.len() || (data[i] == 0xfe && i > 0 && data[i - 1] == 0xff) {
            let end = if i == data.len() { i } else { i - 1 };
            if decoder.decode(&data[start..end], |_, _| {}).is_err() {
                return;
            }
            start = i + 1;
        }
    }
}

/// The first byte picks one of the collectors' text parsers; the rest is its file.
fn node(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let parsers = crate::collectors::TEXT_PARSERS;
    let (_, parse) = parsers[usize::from(which) % parsers.len()];
    parse(&String::from_utf8_lossy(rest));
}

/// Which fixture file seeds each of the collectors' parsers (under tests/fixtures/node).
const NODE_SEED_FILES: [(&str, &str); 13] = [
    ("cpu", "real/proc/stat"),
    ("diskstats", "real/proc/diskstats"),
    ("filesystem", "real/proc/1/mounts"),
    ("loadavg", "real/proc/loadavg"),
    ("meminfo", "real/proc/meminfo"),
    ("netdev", "real/proc/net/dev"),
    ("pressure", "real/proc/pressure/cpu"),
    ("vmstat", "real/proc/vmstat"),
    ("nfsd", "storage/proc/net/rpc/nfsd"),
    ("xfs", "storage/sys/fs/xfs/sda1/stats/stats"),
    ("zfs_kstat", "storage/proc/spl/kstat/zfs/arcstats"),
    ("zfs_pool_io", "storage/proc/spl/kstat/zfs/backup/io"),
    ("zfs_objset", "storage/proc/spl/kstat/zfs/tank/objset-0x36"),
];

fn node_seeds(fixtures: &Path) -> Vec<Vec<u8>> {
    let parsers = crate::collectors::TEXT_PARSERS;
    let mut seeds = Vec::new();
    for (i, (name, _)) in parsers.iter().enumerate() {
        let file = NODE_SEED_FILES.iter().find(|(n, _)| n == name);
        let mut seed = vec![i as u8];
        match file {
            Some((_, path)) => {
                let text = std::fs::read(fixtures.join("node").join(path)).unwrap_or_default();
                seed.extend_from_slice(&text[..text.len().min(SEED_BYTES)]);
            }
            None => seed.extend_from_slice(match *name {
                "netclass" => b"operstate=up\nmtu=1500\ncarrier=1\nspeed=1000\n".as_slice(),
                "clocksource" => b"tsc hpet acpi_pm\ntsc".as_slice(),
                "cpu_list" => b"0-3,8,10-11".as_slice(),
                "octal_escapes" => b"/mnt/a\\040b".as_slice(),
                "btrfs" => b"a-b/devices/sda/size=8\na-b/label=x\na-b/allocation/data/raid5/used_bytes=1\na-b/allocation/system/bytes_reserved=2\n".as_slice(),
                "infiniband" => b"mlx5_0/board_id=MT_1\nmlx5_0/fw_ver=1\nmlx5_0/ports/1/state=4: ACTIVE\nmlx5_0/ports/1/phys_state=5: LinkUp\nmlx5_0/ports/1/rate=100 Gb/sec (4X EDR)\nmlx5_0/ports/1/counters/port_rcv_data=9\n".as_slice(),
                "fibrechannel" => b"host0/speed=16 Gbit\nhost0/port_state=Online\nhost0/port_type=NPort\nhost0/node_name=0x20\nhost0/port_id=0x02\nhost0/port_name=0x10\nhost0/fabric_name=0x0\nhost0/dev_loss_tmo=30\nhost0/symbolic_name=x\nhost0/supported_classes=Class 3\nhost0/supported_speeds=16 Gbit\nhost0/statistics/rx_frames=0x30\n".as_slice(),
                "tapestats" => b"st0/stats/io_ns=9331400\nst0/stats/read_cnt=0x10\nnst0/stats/io_ns=1\n".as_slice(),
                "bcache" => b"u-1/btree_cache_size=1.1Mx\nu-1/bdev0/dirty_data=20.4Gx\nu-1/bdev0/writeback_rate_debug=rate: 1.1M/sec\nu-1/cache0/priority_stats=Unused: 99%\n".as_slice(),
                _ => b"-0x7fffffff".as_slice(),
            }),
        }
        seeds.push(seed);
    }
    seeds
}

/// Lines of text: the first half are user route patterns, every line is also a path
/// that is routed (patterns, normalisation and a small learned budget).
fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    let patterns = RoutePatterns::new(&lines[..lines.len() / 2]).unwrap_or_default();
    let mut budget = RouteBudget::new(8, Arc::new(patterns.clone()));
    for line in &lines {
        let route = patterns.route(line);
        assert!(route.len() <= crate::protocols::route::MAX_ROUTE);
        let (bounded, _) = budget.bound(line.len() % 2, &route);
        assert!(!bounded.is_empty() || route.is_empty());
        let _ = normalize_route(line);
    }
}

/// Each fixture pair in `dir` as one script: client bytes, then server bytes (each cut
/// at [`SEED_BYTES`]).
fn conversations(dir: &Path, client: &str, server: &str) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for client_path in list(dir, client) {
        let server_path = client_path.with_extension(server);
        let (Ok(c), Ok(s)) = (std::fs::read(&client_path), std::fs::read(&server_path)) else {
            continue;
        };
        let mut seed = Vec::new();
        record(&mut seed, true, &c[..c.len().min(SEED_BYTES)]);
        record(&mut seed, false, &s[..s.len().min(SEED_BYTES)]);
        seeds.push(seed);
    }
    seeds
}

fn client_prefixes(fixtures: &Path, n: usize) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (dir, client, _) in SESSION_FIXTURES {
        for mut f in files_in(&fixtures.join(dir), client) {
            f.truncate(n);
            seeds.push(f);
        }
    }
    seeds
}

/// Files in `dir` with extension `ext`, sorted by name.
fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    paths
}

fn files_in(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    list(dir, ext)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// RFC 7541 C.3.1 to C.3.3 (requests without Huffman, one table) and C.4.1 (Huffman).
const HPACK_SEEDS: [&[u8]; 2] = [
    b"\x82\x86\x84\x41\x0fwww.example.com\xff\xfe\x82\x86\x84\xbe\x58\x08no-cache\xff\xfe\x82\x87\x85\xbf\x40\x0acustom-key\x0ccustom-value",
    b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff",
];

/// A BTF blob with a header and one empty string (magic 0xeb9f, version 1).
const MINIMAL_BTF: [u8; 25] = [
    0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
];

const CONFIG_SEEDS: [&str; 2] = [
    "listen = \"127.0.0.1:9464\"\nmax_series = 100\nhttp_routes = [\"/users/{id}\"]\n",
    "[node]\nprocfs = \"/host/proc\"\ndisable = [\"cpu\"]\n[zones]\nzone = \"use1-az1\"\n",
];

/// The repository's tests/fixtures (beside the agent crate).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_and_survives_them_and_its_regressions() {
        let fixtures = fixtures_dir();
        for t in TARGETS {
            let seeds = (t.seeds)(&fixtures);
            assert!(!seeds.is_empty(), "target {} has no seeds", t.name);
            for s in &seeds {
                (t.run)(s);
            }
            for r in files_in_any(&fixtures.join("fuzz").join(t.name)) {
                (t.run)(&r);
            }
        }
    }

    fn files_in_any(dir: &Path) -> Vec<Vec<u8>> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .collect()
    }

    #[test]
    fn session_seeds_round_trip_through_the_script_format() {
        let mut s = Vec::new();
        record(&mut s, true, &[7; 300]);
        record(&mut s, false, b"ok");
        let parsed = script(&s);
        let dirs: Vec<(bool, usize)> = parsed.iter().map(|(c, d, _)| (*c, d.len())).collect();
        assert_eq!(dirs, [(true, 255), (true, 45), (false, 2)]);
        // A gap flag adds bytes moved but not copied.
        assert_eq!(
            script(&[0b0000_1011, 1, b'x']),
            [(true, &b"x"[..], 1 + 2 * 512)]
        );
    }

    #[test]
    fn target_names_are_unique() {
        let mut names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len());
    }
}
