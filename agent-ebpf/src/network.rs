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
//! real peer (after DNAT), so it remembers, per socket, the address the socket thinks
//! it talks to and the one its packets really went to, and the ingress program puts the
//! real one back.
//!
//! Counts are wire packets: TCP hands the device one GSO skb standing for many segments
//! and GRO hands the socket one skb for many received segments; each segment carries
//! its own IP and TCP/UDP headers on the wire, so a skb of `len` bytes and `segs`
//! segments stands for `len + (segs - 1) * headers` bytes.

use agent_common::{Direction, FlowCounters, FlowKey, FAMILY_IPV4, FAMILY_IPV6, NET_FLOW_ENTRIES};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_socket_cookie, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};

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

/// Sockets whose packets go to another address than their own peer address (a Service
/// address translated by DNAT), by socket cookie. LRU: entries of closed sockets age out.
#[map(name = "NET_NAT")]
static NET_NAT: LruHashMap<u64, NatPeer> = LruHashMap::with_max_entries(NAT_ENTRIES, 0);

const NAT_ENTRIES: u32 = 65536;

/// What a socket calls its peer, and where its packets really went.
#[repr(C)]
#[derive(Clone, Copy)]
struct NatPeer {
    socket_peer: [u8; 16],
    real_peer: [u8; 16],
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
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

#[inline(always)]
fn account(ctx: &SkBuffContext, direction: Direction) {
    let skb = ctx.skb.skb;
    let Some((mut key, headers)) = parse(skb, direction) else {
        return;
    };
    match direction {
        Direction::Transmit => remember_nat(ctx, &key),
        Direction::Receive => undo_nat(ctx, &mut key),
    }
    key.cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let (len, gso_segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    let segs = if gso_segs == 0 { 1 } else { gso_segs };
    let add = FlowCounters {
        bytes: len + (segs - 1) * headers,
        packets: segs,
    };
    let active = NET_ACTIVE.get(0).copied().unwrap_or(0);
    let stored = if active == 0 {
        add_to(&NET_FLOWS_0, &key, &add)
    } else {
        add_to(&NET_FLOWS_1, &key, &add)
    };
    if !stored {
        if let Some(slot) = NET_OVERFLOW.get_ptr_mut(direction as u32) {
            unsafe {
                (*slot).bytes += add.bytes;
                (*slot).packets += add.packets;
            }
        }
    }
}

/// The socket's own idea of its peer (`sk->sk_daddr`, or the IPv6 one), in the layout of
/// a flow key's address for the packet's family. IPv4 packets of an IPv6 socket carry
/// the address mapped into its last four bytes.
#[inline(always)]
fn socket_peer(skb: *mut __sk_buff, family: u8) -> [u8; 16] {
    // The verifier accepts context reads only at constant offsets from the context
    // pointer: one volatile read per field, no loop or index arithmetic.
    let mut out = [0u8; 16];
    unsafe {
        let ctx = &*skb;
        let word3 = core::ptr::read_volatile(&ctx.remote_ip6[3]);
        if family == FAMILY_IPV4 {
            let v4 = if core::ptr::read_volatile(&ctx.family) == AF_INET {
                core::ptr::read_volatile(&ctx.remote_ip4)
            } else {
                word3
            };
            out[..4].copy_from_slice(&v4.to_ne_bytes());
        } else {
            let words = [
                core::ptr::read_volatile(&ctx.remote_ip6[0]),
                core::ptr::read_volatile(&ctx.remote_ip6[1]),
                core::ptr::read_volatile(&ctx.remote_ip6[2]),
                word3,
            ];
            out[..4].copy_from_slice(&words[0].to_ne_bytes());
            out[4..8].copy_from_slice(&words[1].to_ne_bytes());
            out[8..12].copy_from_slice(&words[2].to_ne_bytes());
            out[12..].copy_from_slice(&words[3].to_ne_bytes());
        }
    }
    out
}

const AF_INET: u32 = 2;

/// Egress: when the packet goes elsewhere than the socket's peer, remember both.
#[inline(always)]
fn remember_nat(ctx: &SkBuffContext, key: &FlowKey) {
    let skb = ctx.skb.skb;
    let peer = socket_peer(skb, key.family);
    // Unconnected sockets have no peer; translated or not, nothing to undo.
    if peer == [0u8; 16] || peer == key.remote {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    if let Some(known) = unsafe { NET_NAT.get(&cookie) } {
        if known.real_peer == key.remote && known.socket_peer == peer {
            return;
        }
    }
    let entry = NatPeer {
        socket_peer: peer,
        real_peer: key.remote,
    };
    let _ = NET_NAT.insert(&cookie, &entry, BPF_ANY as u64);
}

/// Ingress: a reply from the address the socket thinks it talks to came from the real
/// peer its packets went to.
#[inline(always)]
fn undo_nat(ctx: &SkBuffContext, key: &mut FlowKey) {
    let skb = ctx.skb.skb;
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    if let Some(known) = unsafe { NET_NAT.get(&cookie) } {
        if known.socket_peer == key.remote {
            key.remote = known.real_peer;
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

/// The flow key without its cgroup, and the bytes of headers each segment carries (IP
/// plus TCP or UDP). `skb->data` is at the IP header in cgroup_skb programs, on both
/// paths. `None` for what is not IP.
#[inline(always)]
fn parse(skb: *mut __sk_buff, direction: Direction) -> Option<(FlowKey, u64)> {
    let mut key = FlowKey {
        cgroup_id: 0,
        local: [0; 16],
        remote: [0; 16],
        family: 0,
        direction: direction as u8,
        _pad: [0; 6],
    };
    // __sk_buff.protocol is the ethertype in network order.
    let ethertype = u16::from_be(unsafe { (*skb).protocol } as u16) as u32;
    let (src, dst, ip_len, l4) = if ethertype == ETH_P_IP {
        let mut ip = [0u8; 20];
        load(skb, 0, &mut ip)?;
        key.family = FAMILY_IPV4;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&ip[12..16]);
        dst[..4].copy_from_slice(&ip[16..20]);
        (src, dst, ((ip[0] & 0x0f) as u32) * 4, ip[9])
    } else if ethertype == ETH_P_IPV6 {
        let mut ip = [0u8; 40];
        load(skb, 0, &mut ip)?;
        key.family = FAMILY_IPV6;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        // Extension headers are rare on TCP and UDP; with one, the transport header is
        // not counted per segment (GSO over extension headers is rarer still).
        (src, dst, 40, ip[6])
    } else {
        return None;
    };
    let l4_len = match l4 {
        IPPROTO_TCP => {
            let mut off = [0u8; 1];
            // The data offset: the high nibble of byte 12, in 32-bit words.
            match load(skb, (ip_len + 12) & 0xff, &mut off) {
                Some(()) => ((off[0] >> 4) as u64) * 4,
                None => 0,
            }
        }
        IPPROTO_UDP => 8,
        _ => 0,
    };
    match direction {
        Direction::Transmit => {
            key.local = src;
            key.remote = dst;
        }
        Direction::Receive => {
            key.local = dst;
            key.remote = src;
        }
    }
    Some((key, ip_len as u64 + l4_len))
}

#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, offset: u32, buf: &mut [u8; N]) -> Option<()> {
    let ret = unsafe { bpf_skb_load_bytes(skb.cast(), offset, buf.as_mut_ptr().cast(), N as u32) };
    (ret == 0).then_some(())
}
