//! `nfs`: NFS client RPC statistics from /proc/net/rpc/nfs (net/sunrpc/stats.c,
//! fs/nfs/nfs{2,3,4}xdr.c for the procedure order), parsed as procfs does for
//! node_exporter 1.5: network and RPC counts, and one `requests_total` series per
//! NFSv2, v3 and v4 procedure, zero for a version the kernel does not report. No file
//! (no NFS client module, e.g. a node without EFS or NFS mounts): no data.

use super::render::Family;
use super::util::read_source;
use super::{CollectError, Ctx, ParseError};

/// NFSv2 procedures, in the kernel's order, named as procfs names them.
pub(super) const V2: [&str; 18] = [
    "Null", "GetAttr", "SetAttr", "Root", "Lookup", "ReadLink", "Read", "WrCache", "Write",
    "Create", "Remove", "Rename", "Link", "SymLink", "MkDir", "RmDir", "ReadDir", "FsStat",
];

/// NFSv3 procedures.
pub(super) const V3: [&str; 22] = [
    "Null",
    "GetAttr",
    "SetAttr",
    "Lookup",
    "Access",
    "ReadLink",
    "Read",
    "Write",
    "Create",
    "MkDir",
    "SymLink",
    "MkNod",
    "Remove",
    "RmDir",
    "Rename",
    "Link",
    "ReadDir",
    "ReadDirPlus",
    "FsStat",
    "FsInfo",
    "PathConf",
    "Commit",
];

/// NFSv4 client operations procfs maps (older kernels report fewer: the rest read 0).
const V4: [&str; 59] = [
    "Null",
    "Read",
    "Write",
    "Commit",
    "Open",
    "OpenConfirm",
    "OpenNoattr",
    "OpenDowngrade",
    "Close",
    "Setattr",
    "FsInfo",
    "Renew",
    "SetClientID",
    "SetClientIDConfirm",
    "Lock",
    "Lockt",
    "Locku",
    "Access",
    "Getattr",
    "Lookup",
    "LookupRoot",
    "Remove",
    "Rename",
    "Link",
    "Symlink",
    "Create",
    "Pathconf",
    "StatFs",
    "ReadLink",
    "ReadDir",
    "ServerCaps",
    "DelegReturn",
    "GetACL",
    "SetACL",
    "FsLocations",
    "ReleaseLockowner",
    "Secinfo",
    "FsidPresent",
    "ExchangeID",
    "CreateSession",
    "DestroySession",
    "Sequence",
    "GetLeaseTime",
    "ReclaimComplete",
    "LayoutGet",
    "GetDeviceInfo",
    "LayoutCommit",
    "LayoutReturn",
    "SecinfoNoName",
    "TestStateID",
    "FreeStateID",
    "GetDeviceList",
    "BindConnToSession",
    "DestroyClientID",
    "Seek",
    "Allocate",
    "DeAllocate",
    "LayoutStats",
    "Clone",
];

/// What the file says; counts absent from it are zero, as in procfs' structures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientStats {
    /// udp, tcp, tcp connections.
    pub net: [u64; 3],
    /// rpcs, retransmissions, authentication refreshes.
    pub rpc: [u64; 3],
    pub v2: [u64; 18],
    pub v3: [u64; 22],
    pub v4: [u64; 59],
}

impl Default for ClientStats {
    fn default() -> Self {
        Self {
            net: [0; 3],
            rpc: [0; 3],
            v2: [0; 18],
            v3: [0; 22],
            v4: [0; 59],
        }
    }
}

/// A `procN <count> <values...>` line's values, which must number `count` (at least
/// `min`); values beyond what procfs maps are dropped, missing ones read 0.
fn procedures<const N: usize>(v: &[u64], min: usize, n: usize) -> Result<[u64; N], ParseError> {
    let count = v[0] as usize;
    let values = &v[1..];
    if values.len() != count || count < min {
        return Err(ParseError::new(
            n,
            format!("{count} procedures announced, {} given", values.len()),
        ));
    }
    let mut out = [0u64; N];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = *value;
    }
    Ok(out)
}

pub(crate) fn parse(text: &str) -> Result<ClientStats, ParseError> {
    let mut s = ClientStats::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 2 {
            return Err(ParseError::new(
                n,
                format!("invalid NFS metric line {line:?}"),
            ));
        }
        let v: Vec<u64> = parts[1..]
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|_| ParseError::new(n, format!("{p:?} is not a count")))
            })
            .collect::<Result<_, _>>()?;
        match parts[0] {
            "net" if v.len() == 4 => s.net = [v[1], v[2], v[3]],
            "rpc" if v.len() == 3 => s.rpc = [v[0], v[1], v[2]],
            "net" | "rpc" => return Err(ParseError::new(n, format!("invalid {} line", parts[0]))),
            "proc2" => s.v2 = procedures(&v, 18, n)?,
            "proc3" => s.v3 = procedures(&v, 22, n)?,
            "proc4" => s.v4 = procedures(&v, 0, n)?,
            other => {
                return Err(ParseError::new(
                    n,
                    format!("unknown NFS metric line {other:?}"),
                ))
            }
        }
    }
    Ok(s)
}

pub(crate) fn render(s: &ClientStats) -> Vec<Family> {
    let counter = |name: &str, help: &str| Family::counter(format!("node_nfs_{name}"), help);
    let mut packets = counter(
        "packets_total",
        "Total NFSd network packets (sent+received) by protocol type.",
    );
    packets.push(super::label("protocol", "udp"), s.net[0] as f64);
    packets.push(super::label("protocol", "tcp"), s.net[1] as f64);
    let mut requests = counter("requests_total", "Number of NFS procedures invoked.");
    for (proto, names, values) in [
        ("2", &V2[..], &s.v2[..]),
        ("3", &V3[..], &s.v3[..]),
        ("4", &V4[..], &s.v4[..]),
    ] {
        for (method, v) in names.iter().zip(values) {
            requests.push(
                vec![("proto", proto.to_string()), ("method", method.to_string())],
                *v as f64,
            );
        }
    }
    vec![
        packets,
        counter("connections_total", "Total number of NFSd TCP connections.")
            .with(Vec::new(), s.net[2] as f64),
        counter("rpcs_total", "Total number of RPCs performed.").with(Vec::new(), s.rpc[0] as f64),
        counter(
            "rpc_retransmissions_total",
            "Number of RPC transmissions performed.",
        )
        .with(Vec::new(), s.rpc[1] as f64),
        counter(
            "rpc_authentication_refreshes_total",
            "Number of RPC authentication refreshes performed.",
        )
        .with(Vec::new(), s.rpc[2] as f64),
        requests,
    ]
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let path = ctx.proc("net/rpc/nfs");
    let text = read_source(&path, "no /proc/net/rpc/nfs (no NFS client)")?;
    let stats = parse(&text).map_err(|source| CollectError::Parse { path, source })?;
    Ok(render(&stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_a_kernel_without_proc2() {
        let s = parse(&testutil::read("ec2", "proc/net/rpc/nfs")).unwrap();
        assert_eq!(s.net, [0, 4281, 3]);
        assert_eq!(s.v2, [0; 18]);
        assert_eq!(s.v3[1], 12);
        assert!(parse("proc3 2 1\n").is_err());
        assert!(parse("nfs 1 2\n").is_err());
        assert!(matches!(
            collect(&testutil::ctx("real")),
            Err(CollectError::NoData { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*|((net|rpc|proc[234]) [0-9]{1,2}( [0-9]{1,3}){0,30}\n){1,5}") {
            if let Ok(st) = parse(&s) { let _ = render(&st); }
        }
    }
}
