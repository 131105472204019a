//! Decoding ring buffer records into events. Pure: bytes in, an event or an error out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{
    Direction, EventHeader, EventKind, Role, SockTuple, Summary, Syscall, Totals, AF_INET,
    AF_INET6, FLAG_LAST_SEGMENT, HEADER_LEN, SUMMARY_RECORD_LEN,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than an event header")]
    Short { len: usize },
    #[error("{kind} record of {len} bytes is shorter than its counters")]
    ShortSummary { kind: &'static str, len: usize },
    #[error("unknown event kind {kind}")]
    Kind { kind: u8 },
    #[error("data event with unknown syscall {syscall}")]
    Syscall { syscall: u8 },
    #[error("event says {captured} payload bytes but the record holds {available}")]
    Payload { captured: usize, available: usize },
    #[error("segment of {len} bytes at stream offset {offset} lies outside its call")]
    Segment { offset: u64, len: usize },
}

/// A TCP connection's two ends, seen from the socket's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Endpoints {
    pub fn from_tuple(t: &SockTuple) -> Option<Self> {
        let (local, remote): (IpAddr, IpAddr) = match t.family {
            AF_INET => {
                let l: [u8; 4] = t.local_addr[..4].try_into().ok()?;
                let r: [u8; 4] = t.remote_addr[..4].try_into().ok()?;
                (Ipv4Addr::from(l).into(), Ipv4Addr::from(r).into())
            }
            // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d: show them as IPv4.
            AF_INET6 => (
                Ipv6Addr::from(t.local_addr).to_canonical(),
                Ipv6Addr::from(t.remote_addr).to_canonical(),
            ),
            _ => return None,
        };
        Some(Self {
            local: SocketAddr::new(local, t.local_port),
            remote: SocketAddr::new(remote, t.remote_port),
        })
    }
}

/// Fields every record has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// The connection's id (unique for the kernel's life).
    pub conn_id: u64,
    pub cgroup_id: u64,
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub comm: [u8; 16],
    /// The addresses as the kernel sent them ([`Common::endpoints`] decodes them: only
    /// a new connection needs that).
    pub tuple: SockTuple,
    pub role: Role,
    /// What the record says of the connection's exact counters.
    pub counted: Counted,
}

/// What a record says of its connection's exact counters (the kernel's, which never
/// miss a call). Each value is a total as of some call, so taking the largest seen is
/// exact whatever order records arrive in and whichever were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// All of them (open, counts and close records).
    All(Totals),
    /// A data record's call: its direction's bytes and its kind's calls up to and
    /// including it.
    Call {
        direction: Direction,
        syscall: Syscall,
        stream_end: u64,
        kind_calls: u32,
    },
}

impl Common {
    pub fn endpoints(&self) -> Option<Endpoints> {
        Endpoints::from_tuple(&self.tuple)
    }

    /// The process name, as the kernel's NUL-padded comm.
    pub fn comm(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// One segment of a call's bytes (possibly none of them: `payload` empty).
    Data {
        common: Common,
        syscall: Syscall,
        direction: Direction,
        /// Bytes the call moved.
        bytes: u64,
        /// Stream offset of the call's first byte.
        call_offset: u64,
        /// Stream offset of `payload`'s first byte.
        payload_offset: u64,
        /// The call's last segment.
        last: bool,
        payload: &'a [u8],
    },
    Open {
        common: Common,
    },
    Close {
        common: Common,
    },
    Counts {
        common: Common,
    },
}

impl Event<'_> {
    pub fn kind_label(&self) -> &'static str {
        match self {
            Event::Data { .. } => "data",
            Event::Open { .. } => "open",
            Event::Close { .. } => "close",
            Event::Counts { .. } => "counts",
        }
    }

    /// Index of [`Event::kind_label`] in [`EVENT_KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Event::Data { .. } => 0,
            Event::Open { .. } => 1,
            Event::Close { .. } => 2,
            Event::Counts { .. } => 3,
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Event::Data { common, .. }
            | Event::Open { common }
            | Event::Close { common }
            | Event::Counts { common } => common,
        }
    }
}

pub const EVENT_KINDS: [&str; 4] = ["data", "open", "close", "counts"];

/// Decodes one ring buffer record (or a `CLOSED` table entry, a close record).
pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Short { len: record.len() });
    }
    // SAFETY: EventHeader is repr(C) plain data of HEADER_LEN bytes; read_unaligned
    // copes with any alignment of the record.
    let h: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let kind = EventKind::from_u8(h.kind).ok_or(DecodeError::Kind { kind: h.kind })?;
    let summary = match kind {
        EventKind::Data => None,
        _ => {
            if record.len() < SUMMARY_RECORD_LEN {
                return Err(DecodeError::ShortSummary {
                    kind: kind_label(kind),
                    len: record.len(),
                });
            }
            // SAFETY: as above; the summary follows the header.
            Some(unsafe {
                std::ptr::read_unaligned::<Summary>(record[HEADER_LEN..].as_ptr().cast())
            })
        }
    };
    let syscall = match kind {
        EventKind::Data => {
            Syscall::from_u8(h.syscall).ok_or(DecodeError::Syscall { syscall: h.syscall })?
        }
        _ => Syscall::Other,
    };
    let direction = Direction::from_u8(h.direction);
    let common = Common {
        pid: h.pid,
        tid: h.tid,
        fd: h.fd,
        conn_id: h.conn_id,
        cgroup_id: h.cgroup_id,
        enter_ns: h.enter_ns,
        exit_ns: h.exit_ns,
        comm: summary.map_or([0; 16], |s| s.comm),
        tuple: h.tuple,
        role: match h.role {
            1 => Role::Client,
            2 => Role::Server,
            _ => Role::Unknown,
        },
        counted: match summary {
            Some(s) => Counted::All(s.totals),
            None => Counted::Call {
                direction,
                syscall,
                stream_end: h.call_offset.saturating_add(h.bytes),
                kind_calls: h.kind_calls,
            },
        },
    };
    match kind {
        EventKind::Data => {
            let captured = h.captured as usize;
            let payload =
                record
                    .get(HEADER_LEN..HEADER_LEN + captured)
                    .ok_or(DecodeError::Payload {
                        captured,
                        available: record.len() - HEADER_LEN,
                    })?;
            // A segment must lie within its call.
            let call_end = h.call_offset.saturating_add(h.bytes);
            if h.payload_offset < h.call_offset
                || h.payload_offset.saturating_add(captured as u64) > call_end
            {
                return Err(DecodeError::Segment {
                    offset: h.payload_offset,
                    len: captured,
                });
            }
            Ok(Event::Data {
                common,
                syscall,
                direction,
                bytes: h.bytes,
                call_offset: h.call_offset,
                payload_offset: h.payload_offset,
                last: h.flags & FLAG_LAST_SEGMENT != 0,
                payload,
            })
        }
        EventKind::Open => Ok(Event::Open { common }),
        EventKind::Close => Ok(Event::Close { common }),
        EventKind::Counts => Ok(Event::Counts { common }),
    }
}

fn kind_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Data => "data",
        EventKind::Open => "open",
        EventKind::Close => "close",
        EventKind::Counts => "counts",
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A record as the kernel writes it: the header, and for open, counts and close
    /// records the summary (ignored for data records).
    #[derive(Clone, Copy, Debug)]
    pub struct TestRecord {
        pub header: EventHeader,
        pub summary: Summary,
    }

    impl std::ops::Deref for TestRecord {
        type Target = EventHeader;
        fn deref(&self) -> &EventHeader {
            &self.header
        }
    }

    impl std::ops::DerefMut for TestRecord {
        fn deref_mut(&mut self) -> &mut EventHeader {
            &mut self.header
        }
    }

    /// Encodes a record (and a data record's payload) as the kernel lays it out.
    pub fn record(r: &TestRecord, payload: &[u8]) -> Vec<u8> {
        if r.header.kind == EventKind::Data as u8 {
            let mut v = vec![0u8; HEADER_LEN];
            unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast(), r.header) };
            v.extend_from_slice(payload);
            v
        } else {
            let mut v = vec![0u8; SUMMARY_RECORD_LEN];
            let full = agent_common::SummaryRecord {
                header: r.header,
                summary: r.summary,
            };
            unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast(), full) };
            v
        }
    }

    pub fn header(kind: EventKind) -> TestRecord {
        let mut tuple = SockTuple {
            family: AF_INET,
            local_port: 40000,
            remote_port: 6379,
            ..Default::default()
        };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"redis");
        TestRecord {
            header: EventHeader {
                kind: kind as u8,
                fd: 7,
                pid: 100,
                tid: 101,
                conn_id: 0x1001,
                cgroup_id: 1,
                enter_ns: 10,
                exit_ns: 20,
                flags: FLAG_LAST_SEGMENT,
                tuple,
                ..Default::default()
            },
            summary: Summary {
                totals: Totals::default(),
                comm,
            },
        }
    }

    #[test]
    fn decodes_a_data_event_with_its_payload() {
        let mut h = header(EventKind::Data);
        h.syscall = Syscall::Write as u8;
        h.bytes = 1000;
        h.call_offset = 500;
        h.payload_offset = 500;
        h.captured = 3;
        h.kind_calls = 7;
        let rec = record(&h, b"SET");
        let Event::Data {
            common,
            syscall,
            direction,
            bytes,
            call_offset,
            payload,
            last,
            ..
        } = decode(&rec).unwrap()
        else {
            panic!("not a data event");
        };
        assert_eq!(
            (syscall, direction, bytes, call_offset, payload, last),
            (
                Syscall::Write,
                Direction::Transmit,
                1000,
                500,
                &b"SET"[..],
                true
            )
        );
        // Data records carry no process name; open records do.
        assert_eq!(common.comm(), "");
        assert_eq!(
            common.counted,
            Counted::Call {
                direction: Direction::Transmit,
                syscall: Syscall::Write,
                stream_end: 1500,
                kind_calls: 7
            }
        );
        assert_eq!(
            common.endpoints().unwrap().remote,
            "127.0.0.2:6379".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short { len: 10 }));
        let mut h = header(EventKind::Data);
        h.syscall = Syscall::Read as u8;
        h.bytes = 100;
        h.captured = 50;
        assert!(matches!(
            decode(&record(&h, b"abc")),
            Err(DecodeError::Payload { .. })
        ));
        // A segment past its call's end.
        h.captured = 3;
        h.payload_offset = 99;
        assert_eq!(
            decode(&record(&h, b"abc")),
            Err(DecodeError::Segment { offset: 99, len: 3 })
        );
        // An open record cut before its counters.
        let open = record(&header(EventKind::Open), b"");
        assert_eq!(
            decode(&open[..HEADER_LEN + 8]),
            Err(DecodeError::ShortSummary {
                kind: "open",
                len: HEADER_LEN + 8
            })
        );
        let mut bad = header(EventKind::Data);
        bad.kind = 99;
        assert_eq!(
            decode(&record(&bad, b"")),
            Err(DecodeError::Kind { kind: 99 })
        );
    }

    #[test]
    fn ipv6_endpoints() {
        let mut h = header(EventKind::Open);
        h.role = Role::Server as u8;
        h.tuple.family = AF_INET6;
        h.tuple.local_addr = Ipv6Addr::LOCALHOST.octets();
        h.tuple.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let Event::Open { common } = decode(&record(&h, b"")).unwrap() else {
            panic!("not an open event");
        };
        assert_eq!(common.comm(), "redis");
        assert_eq!(common.role, Role::Server);
        assert_eq!(
            common.endpoints().unwrap().local,
            "[::1]:40000".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn kind_index_points_at_the_kind_label() {
        for kind in [
            EventKind::Data,
            EventKind::Open,
            EventKind::Close,
            EventKind::Counts,
        ] {
            let mut h = header(kind);
            h.syscall = Syscall::Read as u8;
            let rec = record(&h, b"");
            let event = decode(&rec).unwrap();
            assert_eq!(EVENT_KINDS[event.kind_index()], event.kind_label());
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode(&data);
        }
    }
}
