//! Availability zones: this node's, and the zone of any peer address.
//!
//! Cross-AZ traffic is billed, so byte counters carry `src_zone` and `dst_zone`. This
//! node's zone comes from, in order: the `zone` setting, the node's
//! `topology.kubernetes.io/zone` label, the EC2 instance metadata service (IMDSv2), else
//! `unknown` ([`local_zone`]). A peer's zone ([`ZoneMap::zone_of`]) is this node's zone
//! for this node's own addresses, the zone of the Kubernetes node that owns the address
//! or the pod CIDR it is in, the zone of the subnet it is in (`[[zones.subnets]]`),
//! `external` for globally routable addresses, and `unknown` for every other private or
//! reserved address.
//!
//! # Configuration
//!
//! ```toml
//! [zones]
//! # zone = "us-east-1a"                      # this node's zone, when nothing else says it
//! # imds_endpoint = "http://169.254.169.254"  # "" switches IMDS off (hosts outside EC2)
//! # imds_timeout_ms = 1000
//!
//! [[zones.subnets]]
//! cidr = "10.0.0.0/19"
//! zone = "us-east-1a"
//!
//! [[zones.subnets]]
//! cidr = "2600:1f18:1234:5600::/64"
//! zone = "us-east-1a"
//! ```
//!
//! # Generating the subnet table
//!
//! Every subnet of the VPC (those of secondary CIDR blocks too, such as the 100.64.0.0/10
//! subnets of EKS custom networking), as TOML:
//!
//! ```sh
//! VPC=vpc-0123456789abcdef0
//! aws ec2 describe-subnets --filters Name=vpc-id,Values=$VPC \
//!     --query 'Subnets[].[CidrBlock,AvailabilityZone]' --output text |
//!   awk '{ printf "[[zones.subnets]]\ncidr = \"%s\"\nzone = \"%s\"\n\n", $1, $2 }'
//! ```
//!
//! and their IPv6 blocks, from `Ipv6CidrBlockAssociationSet` (a subnet has at most one;
//! the text output prints `None` for subnets without):
//!
//! ```sh
//! aws ec2 describe-subnets --filters Name=vpc-id,Values=$VPC \
//!     --query 'Subnets[].[Ipv6CidrBlockAssociationSet[0].Ipv6CidrBlock,AvailabilityZone]' \
//!     --output text |
//!   awk '$1 != "None" { printf "[[zones.subnets]]\ncidr = \"%s\"\nzone = \"%s\"\n\n", $1, $2 }'
//! ```
//!
//! Peered VPCs can be appended the same way. Zone names (`us-east-1a`) map to physical
//! zones differently in each AWS account; within one account, which is what the node
//! label and IMDS report, they are consistent. To compare across accounts use zone ids
//! (`AvailabilityZoneId`, `use1-az1`) in the table and in `zone` alike.
//!
//! # IMDS from a pod
//!
//! IMDSv2 answers the token request with an IP TTL of the instance's hop limit, 1 unless
//! changed, so a process in a pod's network namespace never gets the token: the agent's
//! DaemonSet uses `hostNetwork: true` (it needs the host's view anyway), or the launch
//! template sets `HttpPutResponseHopLimit` to 2. On EKS the node label makes IMDS
//! unnecessary.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::Deserialize;

use super::{
    cidr::{unmap, Cidr, CidrError, CidrTable},
    imds::{check_endpoint, ImdsError},
};

/// Zone of globally routable addresses outside every known subnet.
pub const EXTERNAL: &str = "external";
/// Zone of addresses nothing says anything about.
pub const UNKNOWN: &str = "unknown";
/// The node label that carries a Kubernetes node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_IMDS_TIMEOUT_MS: u64 = 1000;

/// The `[zones]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneConfig {
    /// This node's zone; wins over the node label and IMDS. Default: none.
    pub zone: Option<String>,
    /// Base URL of the EC2 instance metadata service (plain http); empty switches IMDS
    /// off. Default `http://169.254.169.254` (`http://[fd00:ec2::254]` on IPv6-only
    /// instances).
    pub imds_endpoint: String,
    /// Time for the whole IMDS exchange. Default 1000 ms.
    pub imds_timeout_ms: u64,
    /// Zone of each VPC subnet. Default: none.
    pub subnets: Vec<SubnetZone>,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            zone: None,
            imds_endpoint: DEFAULT_IMDS_ENDPOINT.to_owned(),
            imds_timeout_ms: DEFAULT_IMDS_TIMEOUT_MS,
            subnets: Vec::new(),
        }
    }
}

impl ZoneConfig {
    pub fn imds_enabled(&self) -> bool {
        !self.imds_endpoint.trim().is_empty()
    }

    pub fn imds_timeout(&self) -> Duration {
        Duration::from_millis(self.imds_timeout_ms)
    }

    /// Checks what the configuration can check by itself, so that a bad entry stops the
    /// agent at start-up with the entry named.
    pub fn validate(&self) -> Result<(), ZoneError> {
        if self.imds_enabled() {
            check_endpoint(&self.imds_endpoint)
                .map_err(|source| ZoneError::ImdsEndpoint { source })?;
        }
        SubnetTable::build(&self.subnets).map(drop)
    }
}

/// One `[[zones.subnets]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetZone {
    /// `10.0.0.0/19` or `2600:1f18:1234:5600::/64`.
    pub cidr: String,
    /// `us-east-1a`.
    pub zone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("zones.subnets[{index}]: bad cidr")]
    SubnetCidr {
        index: usize,
        #[source]
        source: CidrError,
    },
    #[error("zones.subnets[{index}] ({cidr}): zone is empty")]
    SubnetZone { index: usize, cidr: String },
    #[error("zones.subnets[{index}]: {cidr} is already in zone {first:?} (zones.subnets[{first_index}]), not {second:?}")]
    Conflict {
        index: usize,
        first_index: usize,
        cidr: Cidr,
        first: String,
        second: String,
    },
    #[error("zones.imds_endpoint")]
    ImdsEndpoint {
        #[source]
        source: ImdsError,
    },
    #[error("node in zone {zone:?}: bad pod cidr")]
    NodePodCidr {
        zone: String,
        #[source]
        source: CidrError,
    },
    #[error("node with addresses {ips:?}: zone is empty")]
    NodeZone { ips: Vec<IpAddr> },
}

/// Where this node's zone came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneSource {
    Config,
    NodeLabel,
    Imds,
    Unknown,
}

impl ZoneSource {
    /// As a label value or log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::NodeLabel => "node_label",
            Self::Imds => "imds",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ZoneSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This node's zone: the configured one, else the node label, else IMDS's answer, else
/// `unknown`. Empty or blank values count as absent.
pub fn local_zone(
    config: Option<&str>,
    node_label: Option<&str>,
    imds: Option<&str>,
) -> (String, ZoneSource) {
    [
        (config, ZoneSource::Config),
        (node_label, ZoneSource::NodeLabel),
        (imds, ZoneSource::Imds),
    ]
    .into_iter()
    .find_map(|(zone, source)| {
        let zone = zone?.trim();
        (!zone.is_empty()).then(|| (zone.to_owned(), source))
    })
    .unwrap_or_else(|| (UNKNOWN.to_owned(), ZoneSource::Unknown))
}

/// Whether `ip` is globally routable unicast, i.e. on the internet: not private, shared
/// (CGNAT), loopback, link-local, documentation, benchmarking, multicast or reserved
/// space (IANA IPv4 and IPv6 special-purpose address registries, RFC 6890 and updates).
/// NAT64 addresses (`64:ff9b::/96`, RFC 6052, what IPv6-only EKS pods use to reach IPv4
/// services) are judged by the IPv4 address they carry.
pub fn is_external(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(a) => is_global_v4(a),
        IpAddr::V6(a) => is_global_v6(a),
    }
}

fn in_v4(a: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    Cidr::new(IpAddr::V4(Ipv4Addr::from(net)), len).contains(IpAddr::V4(a))
}

fn is_global_v4(a: Ipv4Addr) -> bool {
    // 192.0.0.9 (PCP anycast) and 192.0.0.10 (TURN anycast) are the globally reachable
    // exceptions inside 192.0.0.0/24 (RFC 7723, RFC 8155).
    if a == Ipv4Addr::new(192, 0, 0, 9) || a == Ipv4Addr::new(192, 0, 0, 10) {
        return true;
    }
    const NOT_GLOBAL: [([u8; 4], u8); 14] = [
        ([0, 0, 0, 0], 8),       // "this network" (RFC 791)
        ([10, 0, 0, 0], 8),      // private (RFC 1918)
        ([100, 64, 0, 0], 10),   // shared address space, CGNAT and EKS custom networking (RFC 6598)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local (RFC 3927), IMDS among them
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments (RFC 6890)
        ([192, 0, 2, 0], 24),    // TEST-NET-1 (RFC 5737)
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking (RFC 2544)
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and broadcast 255.255.255.255
    ];
    !NOT_GLOBAL.iter().any(|(net, len)| in_v4(a, *net, *len))
}

fn in_v6(a: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    Cidr::new(IpAddr::V6(net), len).contains(IpAddr::V6(a))
}

const fn v6(segments: [u16; 8], len: u8) -> (Ipv6Addr, u8) {
    let [a, b, c, d, e, f, g, h] = segments;
    (Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

const NAT64: (Ipv6Addr, u8) = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const GLOBAL_UNICAST: (Ipv6Addr, u8) = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);
const IETF_ASSIGNMENTS: (Ipv6Addr, u8) = v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23);
/// Inside 2001::/23 only these are globally reachable.
const GLOBAL_IN_IETF: [(Ipv6Addr, u8); 6] = [
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128),    // PCP anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128),    // TURN anycast
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),     // AMT
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48), // AS112-v6
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),  // ORCHIDv2
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28),  // drone remote id
];
/// Documentation (RFC 3849, RFC 9637).
const DOCUMENTATION: [(Ipv6Addr, u8); 2] = [
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
];

fn is_global_v6(a: Ipv6Addr) -> bool {
    if in_v6(a, NAT64) {
        let [.., w6, w7] = a.segments();
        return is_global_v4(Ipv4Addr::from((u32::from(w6) << 16) | u32::from(w7)));
    }
    // Only 2000::/3 is allocated as global unicast; everything else (loopback, ULA
    // fc00::/7, link-local fe80::/10, multicast ff00::/8, local-use NAT64
    // 64:ff9b:1::/48, discard 100::/64, SRv6 5f00::/16, ...) is not on the internet.
    if !in_v6(a, GLOBAL_UNICAST) {
        return false;
    }
    if in_v6(a, IETF_ASSIGNMENTS) {
        return GLOBAL_IN_IETF.iter().any(|net| in_v6(a, *net));
    }
    !DOCUMENTATION.iter().any(|net| in_v6(a, *net))
}

/// `[[zones.subnets]]` as a table, each entry checked.
struct SubnetTable;

impl SubnetTable {
    fn build(subnets: &[SubnetZone]) -> Result<CidrTable<(usize, String)>, ZoneError> {
        let mut table = CidrTable::new();
        for (index, subnet) in subnets.iter().enumerate() {
            let cidr = Cidr::parse(&subnet.cidr)
                .map_err(|source| ZoneError::SubnetCidr { index, source })?;
            let zone = subnet.zone.trim();
            if zone.is_empty() {
                return Err(ZoneError::SubnetZone {
                    index,
                    cidr: subnet.cidr.clone(),
                });
            }
            if let Some((first_index, first)) = table.insert_cidr(cidr, (index, zone.to_owned())) {
                if first != zone {
                    return Err(ZoneError::Conflict {
                        index,
                        first_index,
                        cidr,
                        first,
                        second: zone.to_owned(),
                    });
                }
            }
        }
        Ok(table)
    }
}

/// Addresses to zones.
#[derive(Clone, Debug)]
pub struct ZoneMap {
    local_zone: String,
    /// From `[[zones.subnets]]`: (entry index, zone).
    subnets: CidrTable<(usize, String)>,
    /// Kubernetes nodes' addresses (/32, /128) and pod CIDRs.
    nodes: CidrTable<String>,
}

impl ZoneMap {
    /// A map for a node in `local_zone`, with the configured subnets.
    pub fn new(local_zone: impl Into<String>, subnets: &[SubnetZone]) -> Result<Self, ZoneError> {
        Ok(Self {
            local_zone: local_zone.into(),
            subnets: SubnetTable::build(subnets)?,
            nodes: CidrTable::new(),
        })
    }

    pub fn local_zone(&self) -> &str {
        &self.local_zone
    }

    /// This node's zone learnt late (IMDS answered after start-up).
    pub fn set_local_zone(&mut self, zone: impl Into<String>) {
        self.local_zone = zone.into();
    }

    /// A Kubernetes node: its addresses (`status.addresses`) and pod CIDRs
    /// (`spec.podCIDRs`) are in `zone` (its `topology.kubernetes.io/zone` label). Node
    /// entries win over the subnet table: they are live, the table is typed in. Nothing
    /// is added if a pod CIDR is bad.
    pub fn add_node<S: AsRef<str>>(
        &mut self,
        ips: &[IpAddr],
        pod_cidrs: &[S],
        zone: &str,
    ) -> Result<(), ZoneError> {
        let zone = zone.trim();
        if zone.is_empty() {
            return Err(ZoneError::NodeZone { ips: ips.to_vec() });
        }
        let cidrs = Self::parse_pod_cidrs(pod_cidrs, zone)?;
        for ip in ips {
            self.nodes.insert_cidr(Cidr::host(*ip), zone.to_owned());
        }
        for cidr in cidrs {
            self.nodes.insert_cidr(cidr, zone.to_owned());
        }
        Ok(())
    }

    /// Forgets a node added with [`add_node`](Self::add_node) (same addresses and CIDRs).
    pub fn remove_node<S: AsRef<str>>(&mut self, ips: &[IpAddr], pod_cidrs: &[S]) {
        for ip in ips {
            self.nodes.remove_cidr(Cidr::host(*ip));
        }
        for cidr in pod_cidrs {
            if let Ok(cidr) = Cidr::parse(cidr.as_ref()) {
                self.nodes.remove_cidr(cidr);
            }
        }
    }

    /// Forgets every node (before loading a fresh node list).
    pub fn clear_nodes(&mut self) {
        self.nodes = CidrTable::new();
    }

    fn parse_pod_cidrs<S: AsRef<str>>(pod_cidrs: &[S], zone: &str) -> Result<Vec<Cidr>, ZoneError> {
        pod_cidrs
            .iter()
            .map(|c| {
                Cidr::parse(c.as_ref()).map_err(|source| ZoneError::NodePodCidr {
                    zone: zone.to_owned(),
                    source,
                })
            })
            .collect()
    }

    /// The zone of `ip`: this node's zone for loopback, unspecified and `local_addrs` (the
    /// addresses of this node's interfaces, IPv4 ones as IPv4); else the zone of the
    /// Kubernetes node or subnet that holds it; else [`EXTERNAL`] for globally routable
    /// addresses; else [`UNKNOWN`].
    pub fn zone_of(&self, ip: IpAddr, local_addrs: &HashSet<IpAddr>) -> &str {
        let addr = unmap(ip);
        if addr.is_loopback()
            || addr.is_unspecified()
            || local_addrs.contains(&addr)
            || local_addrs.contains(&ip)
        {
            return &self.local_zone;
        }
        if let Some(zone) = self.nodes.lookup(addr) {
            return zone;
        }
        if let Some((_, zone)) = self.subnets.lookup(addr) {
            return zone;
        }
        if is_external(addr) {
            EXTERNAL
        } else {
            UNKNOWN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn subnet(cidr: &str, zone: &str) -> SubnetZone {
        SubnetZone {
            cidr: cidr.into(),
            zone: zone.into(),
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        zones: ZoneConfig,
    }

    fn parse_toml(text: &str) -> Result<ZoneConfig, toml::de::Error> {
        toml::from_str::<File>(text).map(|f| f.zones)
    }

    #[test]
    fn config_defaults_and_sample() {
        let empty = parse_toml("").unwrap();
        assert_eq!(empty, ZoneConfig::default());
        assert_eq!(empty.imds_endpoint, "http://169.254.169.254");
        assert_eq!(empty.imds_timeout(), Duration::from_secs(1));
        assert!(empty.imds_enabled());
        empty.validate().unwrap();

        let config = parse_toml(
            r#"
            [zones]
            zone = "us-east-1a"
            imds_timeout_ms = 250

            [[zones.subnets]]
            cidr = "10.0.0.0/19"
            zone = "us-east-1a"

            [[zones.subnets]]
            cidr = "2600:1f18:1234:5600::/64"
            zone = "us-east-1b"
            "#,
        )
        .unwrap();
        assert_eq!(config.zone.as_deref(), Some("us-east-1a"));
        assert_eq!(config.imds_timeout_ms, 250);
        assert_eq!(config.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
        assert_eq!(
            config.subnets,
            vec![
                subnet("10.0.0.0/19", "us-east-1a"),
                subnet("2600:1f18:1234:5600::/64", "us-east-1b")
            ]
        );
        config.validate().unwrap();

        let off = parse_toml("[zones]\nimds_endpoint = \"\"\n").unwrap();
        assert!(!off.imds_enabled());
        off.validate().unwrap();
    }

    #[test]
    fn config_rejects_unknown_and_bad_entries() {
        let err = parse_toml("[zones]\nzones = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `zones`"), "{err}");
        let err =
            parse_toml("[[zones.subnets]]\ncidr = \"10.0.0.0/8\"\nzone = \"a\"\naz = \"b\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `az`"), "{err}");

        let config = parse_toml(
            "[[zones.subnets]]\ncidr = \"10.0.0.0/8\"\nzone = \"a\"\n[[zones.subnets]]\ncidr = \"10.1.0.1/16\"\nzone = \"b\"\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "zones.subnets[1]: bad cidr: bad cidr \"10.1.0.1/16\": bits are set after the prefix (the block is 10.1.0.0/16)"
        );

        let conflict = [subnet("10.0.0.0/8", "a"), subnet("10.0.0.0/8", "b")];
        let err = ZoneMap::new("a", &conflict).unwrap_err();
        assert_eq!(
            err.to_string(),
            "zones.subnets[1]: 10.0.0.0/8 is already in zone \"a\" (zones.subnets[0]), not \"b\""
        );
        let same = [subnet("10.0.0.0/8", "a"), subnet("10.0.0.0/8", "a")];
        ZoneMap::new("a", &same).unwrap();
        let empty = [subnet("10.0.0.0/8", " ")];
        assert!(matches!(
            ZoneMap::new("a", &empty),
            Err(ZoneError::SubnetZone { index: 0, .. })
        ));

        let https = ZoneConfig {
            imds_endpoint: "https://169.254.169.254".into(),
            ..ZoneConfig::default()
        };
        assert_eq!(
            crate::error_chain(&https.validate().unwrap_err()),
            "zones.imds_endpoint: bad imds endpoint \"https://169.254.169.254\": https is not supported (IMDS speaks plain http)"
        );
    }

    #[test]
    fn local_zone_precedence() {
        use ZoneSource::*;
        let z = |c, n, i| local_zone(c, n, i);
        assert_eq!(z(Some("a"), Some("b"), Some("c")), ("a".into(), Config));
        assert_eq!(z(None, Some("b"), Some("c")), ("b".into(), NodeLabel));
        assert_eq!(z(Some(" "), Some(""), Some("c")), ("c".into(), Imds));
        assert_eq!(
            z(None, None, Some(" us-west-2b\n")),
            ("us-west-2b".into(), Imds)
        );
        assert_eq!(z(None, None, None), ("unknown".into(), Unknown));
        assert_eq!(Unknown.to_string(), "unknown");
        assert_eq!(NodeLabel.as_str(), "node_label");
    }

    #[test]
    fn external_and_not() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.7",
            "224.0.0.251",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "64:ff9b:1::a00:1",
            "64:ff9b::10.0.0.1",
            "::ffff:10.0.0.1",
            "100::1",
            "5f00::1",
        ] {
            assert!(!is_external(ip(a)), "{a} is not external");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "52.94.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.0.9",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2600:1f18::1",
            "2a00:1450::1",
            "2001:4860:4860::8888",
            "2001:3::1",
            "64:ff9b::8.8.8.8",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(is_external(ip(a)), "{a} is external");
        }
    }

    #[test]
    fn zone_of_each_kind() {
        let mut map = ZoneMap::new(
            "us-east-1a",
            &[
                subnet("10.0.0.0/19", "us-east-1a"),
                subnet("10.0.32.0/19", "us-east-1b"),
                subnet("10.0.32.128/25", "us-east-1c"),
                subnet("100.64.0.0/16", "us-east-1b"),
                subnet("2600:1f18:1234:5601::/64", "us-east-1b"),
            ],
        )
        .unwrap();
        let local: HashSet<IpAddr> = [ip("10.0.5.9"), ip("2600:1f18:1234:5600::9")].into();
        assert_eq!(map.zone_of(ip("127.0.0.1"), &local), "us-east-1a");
        assert_eq!(map.zone_of(ip("::1"), &local), "us-east-1a");
        assert_eq!(map.zone_of(ip("::ffff:10.0.5.9"), &local), "us-east-1a");
        assert_eq!(
            map.zone_of(ip("2600:1f18:1234:5600::9"), &local),
            "us-east-1a"
        );
        assert_eq!(map.zone_of(ip("10.0.40.1"), &local), "us-east-1b");
        assert_eq!(map.zone_of(ip("10.0.32.200"), &local), "us-east-1c");
        assert_eq!(map.zone_of(ip("::ffff:10.0.40.1"), &local), "us-east-1b");
        assert_eq!(map.zone_of(ip("100.64.3.3"), &local), "us-east-1b");
        assert_eq!(
            map.zone_of(ip("2600:1f18:1234:5601::77"), &local),
            "us-east-1b"
        );
        assert_eq!(map.zone_of(ip("8.8.8.8"), &local), "external");
        assert_eq!(map.zone_of(ip("2a00:1450::1"), &local), "external");
        assert_eq!(map.zone_of(ip("10.9.0.1"), &local), "unknown");
        assert_eq!(map.zone_of(ip("100.65.0.1"), &local), "unknown");
        assert_eq!(map.zone_of(ip("169.254.169.254"), &local), "unknown");
        assert_eq!(map.zone_of(ip("fd00::1"), &local), "unknown");

        // Nodes: addresses and pod CIDRs (overlay CNIs), winning over the table.
        map.add_node(
            &[ip("10.0.40.5"), ip("203.0.113.50")],
            &["192.168.12.0/24", "fd00:10:244:c::/64"],
            "us-east-1c",
        )
        .unwrap();
        assert_eq!(map.zone_of(ip("10.0.40.5"), &local), "us-east-1c");
        assert_eq!(map.zone_of(ip("10.0.40.6"), &local), "us-east-1b");
        assert_eq!(map.zone_of(ip("203.0.113.50"), &local), "us-east-1c");
        assert_eq!(map.zone_of(ip("192.168.12.77"), &local), "us-east-1c");
        assert_eq!(map.zone_of(ip("fd00:10:244:c::5"), &local), "us-east-1c");
        let err = map
            .add_node(
                &[ip("10.0.1.1")],
                &["192.168.13.0/24", "nope"],
                "us-east-1b",
            )
            .unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "node in zone \"us-east-1b\": bad pod cidr: bad cidr \"nope\": no /prefix-length"
        );
        assert_eq!(
            map.zone_of(ip("10.0.1.1"), &local),
            "us-east-1a",
            "nothing added"
        );
        assert!(matches!(
            map.add_node(&[ip("10.0.1.1")], &[] as &[&str], ""),
            Err(ZoneError::NodeZone { .. })
        ));
        map.remove_node(&[ip("10.0.40.5")], &["192.168.12.0/24"]);
        assert_eq!(map.zone_of(ip("10.0.40.5"), &local), "us-east-1b");
        assert_eq!(map.zone_of(ip("192.168.12.77"), &local), "unknown");
        assert_eq!(map.zone_of(ip("203.0.113.50"), &local), "us-east-1c");
        map.clear_nodes();
        assert_eq!(map.zone_of(ip("203.0.113.50"), &local), "unknown");

        map.set_local_zone("us-east-1d");
        assert_eq!(map.zone_of(ip("127.0.0.1"), &local), "us-east-1d");
        assert_eq!(map.local_zone(), "us-east-1d");
    }

    proptest! {
        #[test]
        fn zone_of_never_panics(a in any::<IpAddr>()) {
            let map = ZoneMap::new("z", &[subnet("10.0.0.0/8", "a"), subnet("::/0", "b")]).unwrap();
            let _ = map.zone_of(a, &HashSet::new());
            let _ = is_external(a);
        }
    }
}
