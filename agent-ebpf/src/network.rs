//! IP-layer byte accounting per socket owner: cgroup_skb programs on the cgroup v2 root.
//!
//! Why cgroup_skb: it runs for every packet a local socket sends (`ip_finish_output`,
//! after netfilter's OUTPUT and POSTROUTING, so after a Service's DNAT) and every packet
//! delivered to a local socket (`sk_filter` on receive), whatever moved the bytes
//! (write, sendfile, splice, a retransmission by the kernel), and it knows the socket's
//! cgroup. Packets a node only forwards (a pod's packet crossing the node's veth and eth)
//! have no local socket and are never seen, so nothing is counted twice; and the kernel
//! itself skips the egress program when a tunnel's socket wraps a packet of another
//! socket (`BPF_CGROUP_RUN_PROG_INET_EGRESS` compares `skb->sk`). TC on each device would
//! see packets twice on a node (veth and eth) and has no socket owner; sock_ops sees no
//! packets, only TCP events.
//!
//! Replies on a connection made to a Kubernetes Service address reach the socket after
//! netfilter restored the Service address as their source; the egress program saw the
//! real peer (after DNAT), so when a packet leaves for another address than the socket's
//! own peer it remembers both in the socket's storage (freed with the socket), and the
//! ingress program puts the real one back. A socket whose packets go where it thinks
//! they go stores nothing, and its replies cost one storage lookup that finds nothing.
//!
//! Cost per packet (every packet of every local socket pays it): the IP header is read in
//! place, the TCP header only for GSO/GRO packets; a hot flow adds to its CPU's own cache
//! slot (no hash lookup, no atomic); the one helper call on the common path is
//! `bpf_skb_cgroup_id`. Helper calls and hash lookups are what cost here (each call and
//! return is expensive on kernels with return-stack mitigations).
//!
//! Counts are wire packets: TCP hands the device one GSO skb standing for many segments
//! and GRO hands the socket one skb for many received segments; each segment carries
//! its own IP and TCP/UDP headers on the wire, so a skb of `len` bytes and `segs`
//! segments stands for `len + (segs - 1) * headers` bytes.

use agent_common::{
    Direction, FlowCache, FlowCounters, FlowKey, FAMILY_IPV4, FAMILY_IPV6, NET_CACHE_SLOTS,
    NET_FLOW_ENTRIES,
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::{bpf_skb_cgroup_id, bpf_skb_load_bytes, generated::bpf_sk_storage_get},
    macros::{btf_map, cgroup_skb, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::SkBuffContext,
};
use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering::Relaxed},
};

/// Which of the two flow tables the programs write (set by userspace).
#[map(name = "NET_ACTIVE")]
static NET_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "NET_FLOWS_0")]
static NET_FLOWS_0: HashMap<FlowKey, FlowCounters> = HashMap::with_max_entries(NET_FLOW_ENTRIES, 0);

#[map(name = "NET_FLOWS_1")]
static NET_FLOWS_1: HashMap<FlowKey, FlowCounters> = HashMap::with_max_entries(NET_FLOW_ENTRIES, 0);

/// What did not fit in a full table, by direction: counted, never silently lost.
#[map(name = "NET_OVERFLOW")]
static NET_OVERFLOW: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(2, 0);

/// Each CPU's cache of hot flows, one per table: a packet of a cached flow adds to its
/// CPU's own slot, no hash-table lookup, no atomic. Drained with its table.
#[map(name = "NET_CACHE")]
static NET_CACHE: PerCpuArray<FlowCache> = PerCpuArray::with_max_entries(2, 0);

/// Per CPU: set while a program uses that CPU's cache. Programs on one CPU nest (a
/// softirq's packet interrupts a process sending one, or a preempted program's CPU runs
/// another task's): the inner one finds it set and adds to the table instead, so a slot
/// is never changed under a program that is using it.
#[map(name = "NET_BUSY")]
static NET_BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Sockets whose packets go to another address than their own peer address (a Service
/// address translated by DNAT): in the socket's own storage, freed with it.
#[btf_map]
static NET_NAT: SkStorage<NatPeer> = SkStorage::new();

/// One flag per hash of an address some socket's packets were translated away from
/// (a Service address): a reply from an address whose flag is clear needs no socket
/// storage lookup. Flags are set, never cleared; a collision only costs a lookup.
#[map(name = "NET_NAT_PEERS")]
static NET_NAT_PEERS: Array<[u8; NAT_FLAG_BYTES]> = Array::with_max_entries(NAT_FLAG_WORDS, 0);

const NAT_FLAG_BYTES: usize = 64;
const NAT_FLAG_WORDS: u32 = 1024;

/// Where an address's flag is: (element, byte). 65536 flags.
#[inline(always)]
fn nat_flag(addr: &[u32; 4]) -> (u32, usize) {
    let folded = (addr[0] ^ addr[1].rotate_left(7) ^ addr[2].rotate_left(13) ^ addr[3]) as u64;
    let h = (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32;
    (
        (h >> 6) & (NAT_FLAG_WORDS - 1),
        h as usize & (NAT_FLAG_BYTES - 1),
    )
}

/// What a socket calls its peer, and where its packets really went.
#[repr(C)]
#[derive(Clone, Copy)]
struct NatPeer {
    socket_peer: [u32; 4],
    real_peer: [u32; 4],
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const AF_INET: u32 = 2;
/// The verdict that lets the packet through: these programs only count.
const PASS: i32 = 1;

#[cgroup_skb(egress)]
pub fn nodetap_net_egress(ctx: SkBuffContext) -> i32 {
    account(&ctx, Direction::Transmit);
    PASS
}

#[cgroup_skb(ingress)]
pub fn nodetap_net_ingress(ctx: SkBuffContext) -> i32 {
    account(&ctx, Direction::Receive);
    PASS
}

/// A packet's addresses, as 32-bit words in network order (IPv4: the first word).
struct Packet {
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
    /// IP header length (IPv6: the fixed header) and the transport protocol.
    ip_len: u32,
    l4: u8,
}

#[inline(always)]
fn account(ctx: &SkBuffContext, direction: Direction) {
    let skb = ctx.skb.skb;
    let Some(pkt) = parse(skb) else {
        return;
    };
    let (local, mut remote) = match direction {
        Direction::Transmit => (pkt.src, pkt.dst),
        Direction::Receive => (pkt.dst, pkt.src),
    };
    match direction {
        Direction::Transmit => remember_nat(skb, pkt.family, &remote),
        Direction::Receive => undo_nat(skb, &mut remote),
    }
    let (len, gso_segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    let add = if gso_segs > 1 {
        // Only a GSO/GRO packet needs its header length: each further segment repeats
        // the headers.
        FlowCounters {
            bytes: len + (gso_segs - 1) * headers(skb, &pkt),
            packets: gso_segs,
        }
    } else {
        FlowCounters {
            bytes: len,
            packets: 1,
        }
    };
    let key = flow_key(
        unsafe { bpf_skb_cgroup_id(skb) },
        &local,
        &remote,
        pkt.family,
        direction,
    );
    let active = NET_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let Some(busy) = NET_BUSY.get_ptr_mut(0) else {
        add_to_table(active, &key, &add);
        return;
    };
    // SAFETY: this CPU's own flag; a program that interrupts this one restores it
    // before this one resumes.
    unsafe {
        if *busy != 0 {
            add_to_table(active, &key, &add);
            return;
        }
        *busy = 1;
    }
    match NET_CACHE.get_ptr_mut(active) {
        Some(cache) => add_to_cache(cache, active, &key, &add),
        None => add_to_table(active, &key, &add),
    }
    unsafe { *busy = 0 };
}

/// The key as words, for a cheap compare and hash (FlowKey is 8-aligned, 48 bytes).
#[inline(always)]
fn key_words(key: &FlowKey) -> &[u64; 6] {
    unsafe { &*(key as *const FlowKey as *const [u64; 6]) }
}

/// Adds to the flow's slot in this CPU's cache; a slot held by another flow is first
/// added to the table.
#[inline(always)]
fn add_to_cache(cache: *mut FlowCache, active: u32, key: &FlowKey, add: &FlowCounters) {
    let w = key_words(key);
    let mixed = w[0] ^ w[1].rotate_left(17) ^ w[2] ^ w[3].rotate_left(41) ^ w[4] ^ w[5];
    let index = (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> SLOT_SHIFT) as usize;
    // SAFETY: index < NET_CACHE_SLOTS (the top bits of a u64); this CPU's cache, and no
    // other program uses it now (NET_BUSY).
    let slot = unsafe { &mut (*cache).slots[index & (NET_CACHE_SLOTS - 1)] };
    if same_key(&slot.key, key) {
        slot.counters.bytes += add.bytes;
        slot.counters.packets += add.packets;
        return;
    }
    if slot.counters.packets != 0 {
        let evicted = slot.key;
        let counted = slot.counters;
        add_to_table(active, &evicted, &counted);
    }
    slot.key = *key;
    slot.counters = *add;
}

/// Word by word: `==` on arrays becomes a call to a byte-by-byte `memcmp` in BPF.
#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (key_words(a), key_words(b));
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]))
        == 0
}

#[inline(always)]
fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
}

const SLOT_SHIFT: u32 = 64 - NET_CACHE_SLOTS.trailing_zeros();

/// Adds to the flow in the active table (atomically: other CPUs add to the same flow),
/// or to the overflow counters when the table is full.
#[inline(always)]
fn add_to_table(active: u32, key: &FlowKey, add: &FlowCounters) {
    let stored = if active == 0 {
        add_to(&NET_FLOWS_0, key, add)
    } else {
        add_to(&NET_FLOWS_1, key, add)
    };
    if !stored {
        if let Some(slot) = NET_OVERFLOW.get_ptr_mut(key.direction as u32 & 1) {
            // Atomic: programs nest on a CPU.
            add_atomic(slot, add);
        }
    }
}

/// The flow key, built as the six words it is (little-endian BPF: the first address
/// word is the low half), so that no byte of it, padding included, is left unset.
#[inline(always)]
fn flow_key(
    cgroup_id: u64,
    local: &[u32; 4],
    remote: &[u32; 4],
    family: u8,
    direction: Direction,
) -> FlowKey {
    let pair = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    let words: [u64; 6] = [
        cgroup_id,
        pair(local[0], local[1]),
        pair(local[2], local[3]),
        pair(remote[0], remote[1]),
        pair(remote[2], remote[3]),
        family as u64 | (direction as u64) << 8,
    ];
    // SAFETY: FlowKey is repr(C), 48 bytes, 8-aligned, and any bytes are a valid key.
    unsafe { core::mem::transmute::<[u64; 6], FlowKey>(words) }
}

/// The socket's own idea of its peer (`sk->sk_daddr`, or the IPv6 one), in the layout of
/// a packet address of `family`. IPv4 packets of an IPv6 socket carry the address mapped
/// into its last four bytes.
#[inline(always)]
fn socket_peer(skb: *mut __sk_buff, family: u8) -> [u32; 4] {
    // The verifier accepts context reads only at constant offsets from the context
    // pointer: one volatile read per field, no loop or index arithmetic.
    unsafe {
        let ctx = &*skb;
        let word3 = core::ptr::read_volatile(&ctx.remote_ip6[3]);
        if family == FAMILY_IPV4 {
            let v4 = if core::ptr::read_volatile(&ctx.family) == AF_INET {
                core::ptr::read_volatile(&ctx.remote_ip4)
            } else {
                word3
            };
            [v4, 0, 0, 0]
        } else {
            [
                core::ptr::read_volatile(&ctx.remote_ip6[0]),
                core::ptr::read_volatile(&ctx.remote_ip6[1]),
                core::ptr::read_volatile(&ctx.remote_ip6[2]),
                word3,
            ]
        }
    }
}

/// The packet's socket, as socket storage wants it; null for none.
#[inline(always)]
fn socket_of(skb: *mut __sk_buff) -> *mut c_void {
    unsafe { (*skb).__bindgen_anon_2.sk.cast() }
}

#[inline(always)]
fn nat_storage(sk: *mut c_void, create: bool) -> *mut NatPeer {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    let map = &NET_NAT as *const SkStorage<NatPeer> as *mut c_void;
    unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), flags) }.cast()
}

/// Egress: when the packet goes elsewhere than the socket's peer, remember both. The
/// common case (no translation) compares two addresses and stores nothing.
#[inline(always)]
fn remember_nat(skb: *mut __sk_buff, family: u8, remote: &[u32; 4]) {
    let peer = socket_peer(skb, family);
    // Unconnected sockets have no peer; translated or not, nothing to undo.
    if same_addr(&peer, &[0; 4]) || same_addr(&peer, remote) {
        return;
    }
    let sk = socket_of(skb);
    if sk.is_null() {
        return;
    }
    let entry = nat_storage(sk, true);
    if entry.is_null() {
        return;
    }
    unsafe {
        if !same_addr(&(*entry).real_peer, remote) || !same_addr(&(*entry).socket_peer, &peer) {
            (*entry).socket_peer = peer;
            (*entry).real_peer = *remote;
        }
    }
    // After the storage: a reply comes after this packet left.
    let (word, byte) = nat_flag(&peer);
    if let Some(flags) = NET_NAT_PEERS.get_ptr_mut(word) {
        unsafe {
            if (*flags)[byte] == 0 {
                (*flags)[byte] = 1;
            }
        }
    }
}

/// Ingress: a reply from the address the socket thinks it talks to came from the real
/// peer its packets went to. Replies from an address no socket's packets were
/// translated away from (its flag clear) are not looked up.
#[inline(always)]
fn undo_nat(skb: *mut __sk_buff, remote: &mut [u32; 4]) {
    let (word, byte) = nat_flag(remote);
    match NET_NAT_PEERS.get(word) {
        Some(flags) if flags[byte] != 0 => {}
        _ => return,
    }
    let sk = socket_of(skb);
    if sk.is_null() {
        return;
    }
    let entry = nat_storage(sk, false);
    if entry.is_null() {
        return;
    }
    unsafe {
        if same_addr(&(*entry).socket_peer, remote) {
            *remote = (*entry).real_peer;
        }
    }
}

/// Adds to the flow's counters, creating it if needed; false if the table is full.
#[inline(always)]
fn add_to(map: &HashMap<FlowKey, FlowCounters>, key: &FlowKey, add: &FlowCounters) -> bool {
    if let Some(counters) = map.get_ptr_mut(key) {
        add_atomic(counters, add);
        return true;
    }
    if map.insert(key, add, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Another CPU created it in between (else the table is full).
    match map.get_ptr_mut(key) {
        Some(counters) => {
            add_atomic(counters, add);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn add_atomic(counters: *mut FlowCounters, add: &FlowCounters) {
    // Other CPUs add to the same flow at the same time (multi-queue NICs). The BPF
    // target has no `AtomicU64::fetch_add`, but LLVM lowers the intrinsic to the BPF
    // atomic add instruction.
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*counters).bytes, add.bytes);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*counters).packets, add.packets);
    }
}

/// The packet's family, addresses and transport protocol. `skb->data` is at the IP
/// header in cgroup_skb programs, on both paths, and the IP header is in the linear
/// part: read in place (direct packet access), with a copy as the fallback for a header
/// that is not. `None` for what is not IP.
#[inline(always)]
fn parse(skb: *mut __sk_buff) -> Option<Packet> {
    // __sk_buff.protocol is the ethertype in network order.
    let ethertype = u16::from_be(unsafe { (*skb).protocol } as u16) as u32;
    let (data, data_end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if ethertype == ETH_P_IP {
        let ip: [u32; 5] = if data + 20 <= data_end {
            unsafe { read_words(data) }
        } else {
            load(skb)?
        };
        let b0 = ip[0].to_ne_bytes()[0];
        Some(Packet {
            family: FAMILY_IPV4,
            src: [ip[3], 0, 0, 0],
            dst: [ip[4], 0, 0, 0],
            ip_len: ((b0 & 0x0f) as u32) * 4,
            l4: ip[2].to_ne_bytes()[1],
        })
    } else if ethertype == ETH_P_IPV6 {
        let ip: [u32; 10] = if data + 40 <= data_end {
            unsafe { read_words(data) }
        } else {
            load(skb)?
        };
        // Extension headers are rare on TCP and UDP; with one, the transport header is
        // not counted per segment (GSO over extension headers is rarer still).
        Some(Packet {
            family: FAMILY_IPV6,
            src: [ip[2], ip[3], ip[4], ip[5]],
            dst: [ip[6], ip[7], ip[8], ip[9]],
            ip_len: 40,
            l4: ip[1].to_ne_bytes()[2],
        })
    } else {
        None
    }
}

/// The first `N` 32-bit words of the packet, in place.
///
/// # Safety
///
/// `data + 4 * N` must be within the packet's linear part (checked against `data_end`
/// for the verifier). The IP header is 4-byte aligned on transmit and at least 2-byte
/// aligned on receive; word loads are used anyway, as C programs do with `struct
/// iphdr`: the verifier checks packet alignment only on architectures without efficient
/// unaligned access (x86-64 and arm64 have it), and there it would reject the program at
/// load, never misread.
#[inline(always)]
unsafe fn read_words<const N: usize>(data: usize) -> [u32; N] {
    let p = data as *const [u32; N];
    unsafe { core::ptr::read_volatile(p) }
}

/// The bytes of headers each segment carries: IP plus TCP (its data offset) or UDP.
#[inline(always)]
fn headers(skb: *mut __sk_buff, pkt: &Packet) -> u64 {
    let l4_len = match pkt.l4 {
        IPPROTO_TCP => {
            // The data offset: the high nibble of byte 12, in 32-bit words.
            match load_at::<1>(skb, (pkt.ip_len + 12) & 0xff) {
                Some(word) => ((word[0].to_ne_bytes()[0] >> 4) as u64) * 4,
                None => 0,
            }
        }
        IPPROTO_UDP => 8,
        _ => 0,
    };
    pkt.ip_len as u64 + l4_len
}

/// The packet's first `N` words, copied (for a header outside the linear part).
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff) -> Option<[u32; N]> {
    load_at(skb, 0)
}

#[inline(always)]
fn load_at<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Option<[u32; N]> {
    let mut buf = core::mem::MaybeUninit::<[u32; N]>::uninit();
    let ret =
        unsafe { bpf_skb_load_bytes(skb.cast(), offset, buf.as_mut_ptr().cast(), 4 * N as u32) };
    // SAFETY: the helper filled all of it when it succeeded.
    (ret == 0).then(|| unsafe { buf.assume_init() })
}
