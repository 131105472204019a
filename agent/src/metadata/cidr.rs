//! CIDR blocks to values, with longest-prefix match, for IPv4 and IPv6.
//!
//! One hash map per prefix length in use: a lookup masks the address to each length in
//! use, longest first, and stops at the first hit. A VPC's subnet table has a handful of
//! distinct lengths (/16 to /28 for IPv4, /56 and /64 for IPv6) however many subnets it
//! has, so a lookup costs a handful of hash probes and no allocation.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, RFC 4291 section 2.5.5.2, what a dual-stack
//! socket reports for an IPv4 peer) are looked up as the IPv4 address they carry, and a
//! block written in that form (`::ffff:10.0.0.0/104`) is stored as the IPv4 block.

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    net::{AddrParseError, IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// A CIDR entry that could not be parsed; each names the entry as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("bad cidr {entry:?}: no /prefix-length")]
    NoPrefix { entry: String },
    #[error("bad cidr {entry:?}: not an ip address")]
    Address {
        entry: String,
        #[source]
        source: AddrParseError,
    },
    #[error("bad cidr {entry:?}: prefix length {len:?} is not a number from 0 to {max}")]
    PrefixLength { entry: String, len: String, max: u8 },
    #[error("bad cidr {entry:?}: bits are set after the prefix (the block is {network})")]
    HostBits { entry: String, network: Cidr },
}

/// An IP block: a network address and a prefix length, the bits after it zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The block of `len` bits containing `addr` (host bits are cleared; `len` is capped
    /// at the family's width). IPv4-mapped blocks become IPv4 blocks.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from(mask_u32(a.into(), len))),
                    len,
                }
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Self::new(IpAddr::V4(v4), len - 96),
                _ => {
                    let len = len.min(128);
                    Self {
                        addr: IpAddr::V6(Ipv6Addr::from(mask_u128(a.into(), len))),
                        len,
                    }
                }
            },
        }
    }

    /// The single-address block of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self::new(addr, 128)
    }

    /// Parses `10.0.0.0/16` or `2600:1f14::/56` (surrounding spaces allowed). Bits after
    /// the prefix must be zero: `10.0.0.1/16` is more likely a typo than a block.
    pub fn parse(entry: &str) -> Result<Self, CidrError> {
        let owned = || entry.to_owned();
        let (addr, len) = entry
            .trim()
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix { entry: owned() })?;
        let addr: IpAddr = addr.parse().map_err(|source| CidrError::Address {
            entry: owned(),
            source,
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = len
            .parse::<u8>()
            .ok()
            // "+8" parses as a u8; a prefix length is digits only.
            .filter(|n| *n <= max && len.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| CidrError::PrefixLength {
                entry: owned(),
                len: len.to_owned(),
                max,
            })?;
        let cidr = Self::new(addr, prefix);
        let written = match (addr, cidr.addr) {
            (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().map(IpAddr::V4),
            _ => Some(addr),
        };
        if written != Some(cidr.addr) {
            return Err(CidrError::HostBits {
                entry: owned(),
                network: cidr,
            });
        }
        Ok(cidr)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in this block (IPv4-mapped addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask_u32(a.into(), self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => mask_u128(a.into(), self.len) == u128::from(net),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `ip`, with an IPv4-mapped IPv6 address turned into its IPv4 address.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask_u32(bits: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => bits,
        l => bits & (u32::MAX << (32 - l)),
    }
}

fn mask_u128(bits: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => bits,
        l => bits & (u128::MAX << (128 - l)),
    }
}

/// The blocks of one address family: a map per prefix length.
#[derive(Clone, Debug)]
struct Family<K, V> {
    /// Indexed by prefix length.
    by_len: Vec<HashMap<K, V>>,
    /// Prefix lengths with at least one block, longest first.
    lens: Vec<u8>,
}

impl<K: Copy + Eq + Hash, V> Family<K, V> {
    fn new(width: u8) -> Self {
        Self {
            by_len: (0..=width).map(|_| HashMap::new()).collect(),
            lens: Vec::new(),
        }
    }

    fn insert(&mut self, key: K, len: u8, value: V) -> Option<V> {
        let old = self.by_len[usize::from(len)].insert(key, value);
        if old.is_none() && !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        old
    }

    fn remove(&mut self, key: K, len: u8) -> Option<V> {
        let map = &mut self.by_len[usize::from(len)];
        let old = map.remove(&key);
        if map.is_empty() {
            self.lens.retain(|l| *l != len);
        }
        old
    }

    fn lookup(&self, bits: K, mask: impl Fn(K, u8) -> K) -> Option<(u8, &V)> {
        self.lens.iter().find_map(|&len| {
            self.by_len[usize::from(len)]
                .get(&mask(bits, len))
                .map(|v| (len, v))
        })
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(HashMap::len).sum()
    }
}

/// CIDR blocks to values; [`lookup`](Self::lookup) finds the longest block containing an
/// address.
#[derive(Clone, Debug)]
pub struct CidrTable<V> {
    v4: Family<u32, V>,
    v6: Family<u128, V>,
}

impl<V> Default for CidrTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> CidrTable<V> {
    pub fn new() -> Self {
        Self {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }

    /// Adds a block written as `10.0.0.0/16` or `2600:1f14::/56`; returns the value it
    /// replaces if the same block was already there.
    pub fn insert(&mut self, cidr: &str, value: V) -> Result<Option<V>, CidrError> {
        Ok(self.insert_cidr(Cidr::parse(cidr)?, value))
    }

    /// Adds a parsed block; returns the value it replaces.
    pub fn insert_cidr(&mut self, cidr: Cidr, value: V) -> Option<V> {
        match cidr.addr {
            IpAddr::V4(a) => self.v4.insert(a.into(), cidr.len, value),
            IpAddr::V6(a) => self.v6.insert(a.into(), cidr.len, value),
        }
    }

    /// Removes exactly this block (not the blocks inside it).
    pub fn remove_cidr(&mut self, cidr: Cidr) -> Option<V> {
        match cidr.addr {
            IpAddr::V4(a) => self.v4.remove(a.into(), cidr.len),
            IpAddr::V6(a) => self.v6.remove(a.into(), cidr.len),
        }
    }

    /// The value of the longest block containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        self.lookup_cidr(ip).map(|(_, v)| v)
    }

    /// The longest block containing `ip`, and its value.
    pub fn lookup_cidr(&self, ip: IpAddr) -> Option<(Cidr, &V)> {
        match unmap(ip) {
            IpAddr::V4(a) => self.v4.lookup(a.into(), mask_u32).map(|(len, v)| {
                let net = Ipv4Addr::from(mask_u32(a.into(), len));
                (Cidr::new(IpAddr::V4(net), len), v)
            }),
            IpAddr::V6(a) => self.v6.lookup(a.into(), mask_u128).map(|(len, v)| {
                let net = Ipv6Addr::from(mask_u128(a.into(), len));
                (Cidr::new(IpAddr::V6(net), len), v)
            }),
        }
    }

    /// Blocks in the table.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = CidrTable::new();
        t.insert("10.0.0.0/8", "eight").unwrap();
        t.insert("10.1.0.0/16", "sixteen").unwrap();
        t.insert("10.1.2.0/24", "twenty-four").unwrap();
        t.insert("0.0.0.0/0", "default").unwrap();
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&"twenty-four"));
        assert_eq!(t.lookup(ip("10.1.3.3")), Some(&"sixteen"));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&"eight"));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&"default"));
        assert_eq!(t.lookup(ip("2001:db8::1")), None, "v4 default is not v6's");
        assert_eq!(
            t.lookup_cidr(ip("10.1.3.3")).map(|(c, _)| c.to_string()),
            Some("10.1.0.0/16".into())
        );
        assert_eq!(t.len(), 4);
        assert_eq!(
            t.remove_cidr("10.1.0.0/16".parse().unwrap()),
            Some("sixteen")
        );
        assert_eq!(t.lookup(ip("10.1.3.3")), Some(&"eight"));
        assert_eq!(t.insert("10.0.0.0/8", "again").unwrap(), Some("eight"));
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(&"again"));
    }

    #[test]
    fn ipv6_and_mapped() {
        let mut t = CidrTable::new();
        t.insert("2600:1f14:abc:de00::/56", "a").unwrap();
        t.insert("2600:1f14:abc:de12::/64", "b").unwrap();
        t.insert("2600:1f14:abc:de12::7/128", "host").unwrap();
        t.insert("192.168.0.0/16", "v4").unwrap();
        assert_eq!(t.lookup(ip("2600:1f14:abc:de34::1")), Some(&"a"));
        assert_eq!(t.lookup(ip("2600:1f14:abc:de12::1")), Some(&"b"));
        assert_eq!(t.lookup(ip("2600:1f14:abc:de12::7")), Some(&"host"));
        assert_eq!(t.lookup(ip("2600:1f14:abc:df00::1")), None);
        assert_eq!(t.lookup(ip("::ffff:192.168.4.5")), Some(&"v4"));
        assert_eq!(
            t.lookup(ip("::192.168.4.5")),
            None,
            "compatible is not mapped"
        );

        // A mapped block is the IPv4 block.
        t.insert("::ffff:172.16.0.0/108", "mapped").unwrap();
        assert_eq!(t.lookup(ip("172.16.9.9")), Some(&"mapped"));
        assert_eq!(
            Cidr::parse("::ffff:172.16.0.0/108").unwrap().to_string(),
            "172.16.0.0/12"
        );
    }

    #[test]
    fn edge_lengths() {
        let mut t = CidrTable::new();
        t.insert("::/0", "all6").unwrap();
        t.insert("203.0.113.9/32", "host").unwrap();
        assert_eq!(t.lookup(ip("ffff::1")), Some(&"all6"));
        assert_eq!(t.lookup(ip("203.0.113.9")), Some(&"host"));
        assert_eq!(t.lookup(ip("203.0.113.8")), None);
        assert_eq!(Cidr::host(ip("::ffff:1.2.3.4")).to_string(), "1.2.3.4/32");
        assert_eq!(Cidr::new(ip("10.1.2.3"), 40).to_string(), "10.1.2.3/32");
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, want) in [
            ("10.0.0.0", "bad cidr \"10.0.0.0\": no /prefix-length"),
            ("10.0.0/16", "bad cidr \"10.0.0/16\": not an ip address"),
            ("", "bad cidr \"\": no /prefix-length"),
            (
                "10.0.0.0/33",
                "bad cidr \"10.0.0.0/33\": prefix length \"33\" is not a number from 0 to 32",
            ),
            (
                "10.0.0.0/+8",
                "bad cidr \"10.0.0.0/+8\": prefix length \"+8\" is not a number from 0 to 32",
            ),
            (
                "2600::/129",
                "bad cidr \"2600::/129\": prefix length \"129\" is not a number from 0 to 128",
            ),
            ("10.0.0.0/", "bad cidr \"10.0.0.0/\": prefix length \"\" is not a number from 0 to 32"),
            (
                "10.0.5.1/16",
                "bad cidr \"10.0.5.1/16\": bits are set after the prefix (the block is 10.0.0.0/16)",
            ),
            (
                "2600:1f14::1/56",
                "bad cidr \"2600:1f14::1/56\": bits are set after the prefix (the block is 2600:1f14::/56)",
            ),
            ("fe80::1%eth0/64", "bad cidr \"fe80::1%eth0/64\": not an ip address"),
        ] {
            let err = CidrTable::new().insert(entry, ()).unwrap_err();
            assert_eq!(err.to_string(), want, "{entry:?}");
        }
        assert!(std::error::Error::source(&Cidr::parse("x/8").unwrap_err()).is_some());
        assert_eq!(
            Cidr::parse(" 10.0.0.0/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn thousands_of_subnets() {
        let mut t = CidrTable::new();
        for i in 0..4096u32 {
            let net = Ipv4Addr::from(0x0a00_0000 | (i << 8));
            t.insert_cidr(Cidr::new(IpAddr::V4(net), 24), i);
            let net6 = Ipv6Addr::from(
                0x2600_1f14_0000_0000_0000_0000_0000_0000u128 | (u128::from(i) << 72),
            );
            t.insert_cidr(Cidr::new(IpAddr::V6(net6), 56), i);
        }
        assert_eq!(t.len(), 8192);
        for i in (0..4096u32).step_by(97) {
            assert_eq!(
                t.lookup(IpAddr::V4(Ipv4Addr::from(0x0a00_0007 | (i << 8)))),
                Some(&i)
            );
            let a6 = Ipv6Addr::from(
                0x2600_1f14_0000_0000_0000_0000_0000_0042u128 | (u128::from(i) << 72),
            );
            assert_eq!(t.lookup(IpAddr::V6(a6)), Some(&i));
        }
    }

    /// Whether `ip` is in `cidr`, bit by bit, sharing no code with the table.
    fn naive_contains(cidr: &Cidr, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (bool, u128) {
            match a {
                IpAddr::V4(a) => (true, u128::from(u32::from(a)) << 96),
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(v4) => (true, u128::from(u32::from(v4)) << 96),
                    None => (false, u128::from(a)),
                },
            }
        };
        let (net_v4, net) = bits(cidr.addr());
        let (ip_v4, ip) = bits(ip);
        net_v4 == ip_v4
            && (0..u32::from(cidr.prefix_len()))
                .all(|i| (net >> (127 - i)) & 1 == (ip >> (127 - i)) & 1)
    }

    /// The obvious implementation: every block, the longest that contains the address.
    fn naive(entries: &[(Cidr, usize)], ip: IpAddr) -> Option<usize> {
        entries
            .iter()
            .filter(|(c, _)| naive_contains(c, ip))
            .max_by_key(|(c, _)| c.len)
            .map(|(_, v)| *v)
    }

    /// Addresses drawn from a few bases so that blocks nest and lookups hit them.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..4, any::<u32>()).prop_map(|(base, low)| {
                let bases = [0x0a00_0000u32, 0x0a01_0000, 0xc0a8_0000, 0x6440_0000];
                IpAddr::V4(Ipv4Addr::from(
                    bases[usize::from(base)] ^ (low >> (low % 32)),
                ))
            }),
            (0u8..3, any::<u128>()).prop_map(|(base, low)| {
                let bases = [
                    0x2600_1f14_0abc_de00u128 << 64,
                    0x2600_1f14_0abc_de12u128 << 64,
                    0xfd00_0000_0000_0000u128 << 64,
                ];
                let shift = (low % 128) as u32;
                IpAddr::V6(Ipv6Addr::from(bases[usize::from(base)] ^ (low >> shift)))
            }),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
            any::<IpAddr>(),
        ]
    }

    proptest! {
        #[test]
        fn matches_linear_scan(
            blocks in prop::collection::vec((address(), 0u8..=128), 0..64),
            probes in prop::collection::vec(address(), 1..64),
        ) {
            let mut table = CidrTable::new();
            let mut entries: Vec<(Cidr, usize)> = Vec::new();
            for (i, (addr, len)) in blocks.into_iter().enumerate() {
                let cidr = Cidr::new(addr, len);
                let old = table.insert_cidr(cidr, i);
                let naive_old = entries.iter().position(|(c, _)| *c == cidr).map(|p| entries.remove(p).1);
                prop_assert_eq!(old, naive_old);
                entries.push((cidr, i));
            }
            prop_assert_eq!(table.len(), entries.len());
            for probe in probes.iter().copied().chain(entries.iter().map(|(c, _)| c.addr)) {
                prop_assert_eq!(table.lookup(probe).copied(), naive(&entries, probe), "probe {}", probe);
            }
        }

        #[test]
        fn parse_never_panics_and_round_trips(s in "[0-9a-f:./ ]{0,48}") {
            if let Ok(cidr) = Cidr::parse(&s) {
                prop_assert_eq!(Cidr::parse(&cidr.to_string()), Ok(cidr));
            }
        }

        #[test]
        fn parse_any_string(s in any::<String>()) {
            let _ = Cidr::parse(&s);
        }
    }
}
