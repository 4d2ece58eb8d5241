//! Stateful NAT64 (RFC 6146) for Parker nodes in 464XLAT mode, as a TC classifier on the
//! node-facing link (the WireGuard interface: `tc_nat64_l3`; links with an Ethernet header:
//! `tc_nat64_eth`). Replies are translated back by the forwarder's XDP program on the uplink,
//! which finds them in CT4 like any NAT44 reply and tail-calls `xdp_nat64_in`. Nodes' ICMPv6
//! errors (`tc_nat64_icmp_*`) and their own IPv4 (`tc_nat44_*`) are tail calls too: each
//! program gets its own 512-byte stack and verifier budget. Big headers being built live in
//! per-CPU scratch maps for the same reason. See exitd_common::nat64 and the README.

// Keys and values are passed to the map helpers by reference on purpose: passing them by
// value (as clippy suggests) copies 40-byte keys onto a stack that has no room for them.
#![allow(clippy::needless_borrows_for_generic_args)]

use crate::{
    firewall,
    fwd6::count,
    nat4::{self, CT4, NAT4_CONFIG, NAT4_STATS},
    net::{
        self, ptr_at, CsumDelta, EthHdr, Ipv4Hdr, Ipv6Hdr, L4Head, Packet, TCP_ACK, TCP_CSUM_OFF,
        TCP_FLAGS_OFF, TCP_HDR_LEN, TCP_RST, TCP_SYN,
    },
};
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_NET, xdp_action, BPF_ANY, TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    helpers::{bpf_redirect, bpf_skb_change_head, bpf_xdp_adjust_head},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use exitd_common::{
    nat4::{
        CtEntry, CtKey, Nat4Config, Nat4Verdict, Route4, CT_IN, CT_NAT64, CT_OUT, NAT4_ENABLED,
    },
    nat64::{
        eq16, is_non_global4, Ct6Key, FwPort, Nat64Config, Nat64Verdict, XlatSource,
        DEFAULT_CT6_ENTRIES, FW_STATS_COUNT, MAX_FW_ALLOW, MAX_FW_LINKS, MAX_FW_PORTS, MAX_XLAT6,
        NAT64_ENABLED, NAT64_VERDICT_COUNT, NAT64_WELL_KNOWN, TC_TAIL_ICMP_ETH, TC_TAIL_ICMP_L3,
        TC_TAIL_NAT44_ETH, TC_TAIL_NAT44_L3, XDP_TAIL_NAT64_IN,
    },
    Counters, Prefix64, ROUTE_NEIGH_KNOWN,
};

/// Prefix, flags.
#[btf_map]
pub(crate) static NAT64_CONFIG: Array<Nat64Config, 1> = Array::new();

/// Nodes' `xlat_range6` /64s: the only sources translated.
#[btf_map]
static XLAT6: HashMap<Prefix64, XlatSource, { MAX_XLAT6 as usize }> = HashMap::new();

/// NAT64 connections keyed by the node's packets; the reply side is in CT4.
#[btf_map]
pub(crate) static CT6: LruHashMap<Ct6Key, CtEntry, { DEFAULT_CT6_ENTRIES as usize }> =
    LruHashMap::new();

/// Packets and bytes per NAT64 verdict, per CPU.
#[btf_map]
pub(crate) static NAT64_STATS: PerCpuArray<Counters, { NAT64_VERDICT_COUNT as usize }> =
    PerCpuArray::new();

/// The gateway's control ports (protocol, port): closed to nodes and tenants.
#[btf_map]
pub(crate) static FW_PORTS: HashMap<FwPort, u32, { MAX_FW_PORTS as usize }> = HashMap::new();

/// Links whose traffic the firewall checks (node- and tenant-facing), by ifindex.
#[btf_map]
pub(crate) static FW_LINKS: HashMap<u32, u32, { MAX_FW_LINKS as usize }> = HashMap::new();

/// Sources that may reach the control ports anyway.
#[btf_map]
pub(crate) static FW_ALLOW4: LpmTrie<[u8; 4], u32, { MAX_FW_ALLOW as usize }> = LpmTrie::new();
#[btf_map]
pub(crate) static FW_ALLOW6: LpmTrie<[u8; 16], u32, { MAX_FW_ALLOW as usize }> = LpmTrie::new();

/// Dropped packets per family (FW_DROP4, FW_DROP6), per CPU.
#[btf_map]
pub(crate) static FW_STATS: PerCpuArray<Counters, { FW_STATS_COUNT as usize }> = PerCpuArray::new();

/// Headers of an ICMP error being translated: on the stack they would not fit the
/// 512-byte BPF stack beside the rest of the program.
#[repr(C)]
struct Scratch {
    ih: Ipv6Hdr,
    key: Ct6Key,
    back: CtEntry,
    inner4: Ipv4Hdr,
    outer4: Ipv4Hdr,
}

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Headers the XDP side builds when it translates to IPv6.
#[repr(C)]
struct XdpScratch {
    outer: Ipv6Hdr,
    inner: Ipv6Hdr,
    ih: Ipv4Hdr,
}

#[btf_map]
static XDP_SCRATCH: PerCpuArray<XdpScratch, 1> = PerCpuArray::new();

/// Fills `hdr` with everything but the addresses.
#[inline(always)]
fn set_ipv6_header(hdr: &mut Ipv6Hdr, payload_len: u16, tclass: u8, hop: u8, nh: u8) {
    hdr.version_tc_flow = [0x60 | (tclass >> 4), tclass << 4, 0, 0];
    hdr.payload_len = payload_len.to_be_bytes();
    hdr.next_header = nh;
    hdr.hop_limit = hop;
}

/// The CT6 key `partner_alive` looks up (it runs below frames that hold SCRATCH).
#[btf_map]
static PARTNER_KEY: PerCpuArray<Ct6Key, 1> = PerCpuArray::new();

#[classifier]
pub fn tc_nat64_l3(ctx: TcContext) -> i32 {
    tc_nat64::<0>(&ctx)
}

#[classifier]
pub fn tc_nat64_eth(ctx: TcContext) -> i32 {
    tc_nat64::<ETH>(&ctx)
}

/// ICMPv6 errors from nodes (tail-called from `tc_nat64_*`).
#[classifier]
pub fn tc_nat64_icmp_l3(ctx: TcContext) -> i32 {
    tc_nat64_icmp::<0>(&ctx)
}

#[classifier]
pub fn tc_nat64_icmp_eth(ctx: TcContext) -> i32 {
    tc_nat64_icmp::<ETH>(&ctx)
}

/// Replies and ICMPv4 errors of NAT64 connections (tail-called from `xdp_fwd6`, which
/// found the connection in CT4 and left its key in TAIL_STATE).
#[xdp]
pub fn xdp_nat64_in(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match nat64_in(&ctx) {
        Ok(action) => action,
        Err(verdict) => {
            count(&NAT64_STATS, verdict as u32, len);
            xdp_action::XDP_DROP
        }
    }
}

/// Program arrays for the tail calls (see exitd_common::nat64::XDP_TAILS_MAP).
#[btf_map]
static XDP_TAILS: ProgramArray<1> = ProgramArray::new();
#[btf_map]
static TC_TAILS: ProgramArray<4> = ProgramArray::new();

/// What `xdp_fwd6` hands to `xdp_nat64_in`: the CT4 key of the connection and what the
/// packet is.
#[repr(C)]
struct TailState {
    key: CtKey,
    icmp_error: u8,
    quotes_tcp_check: u8,
}

#[btf_map]
static TAIL_STATE: PerCpuArray<TailState, 1> = PerCpuArray::new();

/// Hands a reply or ICMP error of the NAT64 connection `key` to `xdp_nat64_in`. Returns
/// only when the tail call failed (no program in the array): the packet is dropped.
#[inline(always)]
pub(crate) fn to_nat64_in(
    ctx: &XdpContext,
    key: &CtKey,
    icmp_error: bool,
    quotes_tcp_check: bool,
) -> u32 {
    if let Some(state) = TAIL_STATE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; read by the tail-called program in this same run.
        unsafe {
            (*state).key = *key;
            (*state).icmp_error = icmp_error as u8;
            (*state).quotes_tcp_check = quotes_tcp_check as u8;
        }
        count(&NAT4_STATS, Nat4Verdict::Nat64 as u32, 0);
        // SAFETY: the program array holds only XDP programs of this object.
        unsafe { XDP_TAILS.tail_call(ctx, XDP_TAIL_NAT64_IN) };
    }
    count(&NAT64_STATS, Nat64Verdict::DropResize as u32, 0);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn nat64_in(ctx: &XdpContext) -> Result<u32, Nat64Verdict> {
    let state = TAIL_STATE.get_ptr(0).ok_or(Nat64Verdict::DropNoState)?;
    // SAFETY: this CPU's slot, written just before the tail call.
    let (key, icmp_error, quotes) = unsafe {
        (
            (*state).key,
            (*state).icmp_error != 0,
            (*state).quotes_tcp_check != 0,
        )
    };
    let pkt = nat4::parse::<_, ETH>(ctx, ctx.data_end() - ctx.data())
        .map_err(|_| Nat64Verdict::DropMalformed)?;
    let head = nat4::l4_head::<_, ETH>(ctx).map_err(|_| Nat64Verdict::DropMalformed)?;
    // SAFETY: read in place during this run.
    let entry = unsafe { CT4.get(key) }.ok_or(Nat64Verdict::DropNoState)?;
    if entry.flags & CT_NAT64 == 0 {
        return Err(Nat64Verdict::DropNoState);
    }
    Ok(if icmp_error {
        xdp_icmp_error(ctx, &pkt, head, entry, quotes)
    } else {
        xdp_reply(ctx, &pkt, head, entry)
    })
}

/// Hands a node's ICMPv6 error to `tc_nat64_icmp_*`; returns only if that failed.
#[inline(always)]
fn tail_call_icmp<const L3: usize>(ctx: &TcContext) -> Nat64Verdict {
    tail_call(
        ctx,
        if L3 == 0 {
            TC_TAIL_ICMP_L3
        } else {
            TC_TAIL_ICMP_ETH
        },
    )
}

/// Continues in the TC_TAILS program `slot`; returns only if that failed.
#[inline(always)]
fn tail_call(ctx: &TcContext, slot: u32) -> Nat64Verdict {
    // SAFETY: the program array holds only classifiers of this object.
    unsafe { TC_TAILS.tail_call(ctx, slot) };
    Nat64Verdict::DropResize
}

/// IPv4 from nodes (tail-called from `tc_nat64_*`).
#[classifier]
pub fn tc_nat44_l3(ctx: TcContext) -> i32 {
    tc_nat44::<0>(&ctx)
}

#[classifier]
pub fn tc_nat44_eth(ctx: TcContext) -> i32 {
    tc_nat44::<ETH>(&ctx)
}

#[inline(always)]
fn tc_nat44<const L3: usize>(ctx: &TcContext) -> i32 {
    let ingress = ingress_ifindex(ctx);
    let Some(n4) = NAT4_CONFIG.get(0) else {
        return to_kernel::<L3>(ctx, ingress);
    };
    let len = ctx.len() as u64;
    let (verdict, action) = match nat44_out::<L3>(ctx, n4, ingress) {
        Ok(done) => done,
        Err(verdict) => (verdict, tc_action_for(verdict)),
    };
    if action == TC_ACT_OK && verdict == Nat64Verdict::PassNotNat64 {
        return to_kernel::<L3>(ctx, ingress);
    }
    count(&NAT64_STATS, verdict as u32, len);
    action
}

#[inline(always)]
fn tc_nat64_icmp<const L3: usize>(ctx: &TcContext) -> i32 {
    let (Some(n64), Some(n4)) = (NAT64_CONFIG.get(0), NAT4_CONFIG.get(0)) else {
        return TC_ACT_SHOT;
    };
    let ingress = ingress_ifindex(ctx);
    let len = ctx.len() as u64;
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let result = match parse6(ctx, L3, ctx.len() as usize, unsafe { &mut (*sc).key }) {
        Ok(ip) => icmp6_error::<L3>(ctx, n64, n4, &ip, ingress),
        Err(verdict) => Err(verdict),
    };
    let (verdict, action) = match result {
        Ok(done) => done,
        Err(verdict) => (verdict, tc_action_for(verdict)),
    };
    count(&NAT64_STATS, verdict as u32, len);
    action
}

const ETH: usize = EthHdr::LEN;
const ICMP_HDR: usize = 8;
/// The most header bytes the program reads: two IPv6 headers, an ICMPv6 header and the
/// first 20 bytes of a quoted TCP header.
const HEADERS: usize = 2 * Ipv6Hdr::LEN + ICMP_HDR + 20;
/// Protocol number of ICMP in the IPv4 header.
const ICMP4: u8 = net::IPPROTO_ICMP;
const ICMPV6_ECHO_REQUEST: u8 = net::ICMPV6_ECHO_REQUEST;

/// Translates a packet from a node (IPv6 to the NAT64 prefix) or leaves it to the kernel;
/// everything the kernel gets passes the gateway firewall first.
#[inline(always)]
fn tc_nat64<const L3: usize>(ctx: &TcContext) -> i32 {
    let ingress = ingress_ifindex(ctx);
    let (Some(n64), Some(n4)) = (NAT64_CONFIG.get(0), NAT4_CONFIG.get(0)) else {
        return to_kernel::<L3>(ctx, ingress);
    };
    if n4.flags & NAT4_ENABLED == 0 {
        return to_kernel::<L3>(ctx, ingress);
    }
    make_headers_direct(ctx, L3 + HEADERS);
    let len = ctx.len() as u64;
    let result = match ip_version::<L3>(ctx) {
        Some(6) if n64.flags & NAT64_ENABLED != 0 => out6::<L3>(ctx, n64, n4, ingress),
        Some(4) => Err(tail_call(
            ctx,
            if L3 == 0 {
                TC_TAIL_NAT44_L3
            } else {
                TC_TAIL_NAT44_ETH
            },
        )),
        _ => return to_kernel::<L3>(ctx, ingress),
    };
    let (verdict, action) = match result {
        Ok(done) => done,
        Err(verdict) => (verdict, tc_action_for(verdict)),
    };
    if action == TC_ACT_OK
        && verdict != Nat64Verdict::PassNoNeighbour
        && firewall::blocks(ctx, L3, ingress, true)
    {
        return TC_ACT_SHOT;
    }
    count(&NAT64_STATS, verdict as u32, len);
    action
}

/// IPv4 from a node's own IPv4 range (Parker nodes not in 464XLAT mode): NAT44 by the
/// same engine the tenants' IPv4 uses (ROUTES4 lists the ranges with this link and
/// ROUTE4_VIA_KERNEL), then straight out of the uplink. Everything else is the kernel's.
#[inline(always)]
fn nat44_out<const L3: usize>(
    ctx: &TcContext,
    n4: &Nat4Config,
    ingress: u32,
) -> Result<(Nat64Verdict, i32), Nat64Verdict> {
    let pkt =
        nat4::parse::<_, L3>(ctx, ctx.len() as usize).map_err(|_| Nat64Verdict::PassNotNat64)?;
    if pkt.dst == n4.public {
        return Err(Nat64Verdict::PassNotNat64);
    }
    match nat4::translate_out::<_, L3>(ctx, n4, &pkt, ingress) {
        Ok(verdict) => {
            count(&NAT4_STATS, verdict as u32, ctx.len() as u64);
            forward::<L3>(ctx, &n4.upstream, Nat64Verdict::Nat44Out)
        }
        Err(Nat4Verdict::DropExhausted) => Err(Nat64Verdict::DropExhausted),
        Err(Nat4Verdict::DropIsolation) => Err(Nat64Verdict::DropProtocol),
        Err(_) => Err(Nat64Verdict::PassNotNat64),
    }
}

/// An untranslated packet for the kernel, after the firewall.
#[inline(always)]
fn to_kernel<const L3: usize>(ctx: &TcContext, ingress: u32) -> i32 {
    if firewall::blocks(ctx, L3, ingress, true) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

#[inline(always)]
fn tc_action_for(verdict: Nat64Verdict) -> i32 {
    match verdict {
        Nat64Verdict::PassNotNat64 | Nat64Verdict::PassHopLimit | Nat64Verdict::PassNoNeighbour => {
            TC_ACT_OK
        }
        _ => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

/// Direct packet access only sees the linear part of an skb: pull the headers into it.
#[inline(always)]
fn make_headers_direct(ctx: &TcContext, want: usize) {
    let want = core::cmp::min(ctx.len() as usize, want);
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
}

/// The IP version of the packet at `L3` (for Ethernet frames: IPv4 or IPv6 EtherTypes only).
#[inline(always)]
fn ip_version<const L3: usize>(ctx: &TcContext) -> Option<u8> {
    if L3 == ETH {
        match net::ether_type(ctx)? {
            net::ETH_P_IP | net::ETH_P_IPV6 => {}
            _ => return None,
        }
    }
    // At least an IPv4 header's worth of bytes (a one-byte check at offset 0 is one the
    // verifier cannot follow).
    let first: *const Ipv4Hdr = ptr_at(ctx, L3)?;
    // SAFETY: ptr_at checked the header is inside the packet.
    Some(unsafe { (*first).version_ihl } >> 4)
}

/// The fields of a checked IPv6 header but its addresses (those go into the scratch
/// key: the stack has no room for more copies of them).
#[derive(Clone, Copy)]
struct Ip6 {
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    tclass: u8,
}

/// Reads the IPv6 header at `l3` of a packet of `total` bytes; its addresses into `key`.
#[inline(always)]
fn parse6<C: Packet>(
    ctx: &C,
    l3: usize,
    total: usize,
    key: &mut Ct6Key,
) -> Result<Ip6, Nat64Verdict> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Nat64Verdict::DropMalformed)?;
    // SAFETY: ptr_at checked the header is inside the packet.
    let ip6 = unsafe {
        let v = (*ip).version_tc_flow;
        if v[0] >> 4 != 6 {
            return Err(Nat64Verdict::DropMalformed);
        }
        key.src = (*ip).src;
        key.dst = (*ip).dst;
        Ip6 {
            payload_len: u16::from_be_bytes((*ip).payload_len),
            next_header: (*ip).next_header,
            hop_limit: (*ip).hop_limit,
            tclass: (v[0] << 4) | (v[1] >> 4),
        }
    };
    if l3 + Ipv6Hdr::LEN + ip6.payload_len as usize > total {
        return Err(Nat64Verdict::DropMalformed);
    }
    Ok(ip6)
}

/// A node's IPv6 packet: translate it if it is for the NAT64 prefix.
#[inline(always)]
fn out6<const L3: usize>(
    ctx: &TcContext,
    n64: &Nat64Config,
    n4: &Nat4Config,
    ingress: u32,
) -> Result<(Nat64Verdict, i32), Nat64Verdict> {
    let sc = SCRATCH.get_ptr_mut(0).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let sc = unsafe { &mut *sc };
    let ip = parse6(ctx, L3, ctx.len() as usize, &mut sc.key)?;
    let Some(remote) = n64.extract(&sc.key.dst) else {
        return Err(Nat64Verdict::PassNotNat64);
    };
    check_source(&sc.key.src, ingress)?;
    if n64.flags & NAT64_WELL_KNOWN != 0 && is_non_global4(remote) {
        return Err(Nat64Verdict::DropNonGlobal);
    }
    let l4 = L3 + Ipv6Hdr::LEN;
    if ip.payload_len < 8 {
        return Err(Nat64Verdict::DropMalformed);
    }
    let head: *mut L4Head = ptr_at(ctx, l4).ok_or(Nat64Verdict::DropMalformed)?;
    // SAFETY: ptr_at checked the 8 bytes are inside the packet.
    let (w0, w1, w2, w3) = unsafe { ((*head).word0, (*head).word1, (*head).word2, (*head).word3) };
    if ip.hop_limit <= 1 {
        return Err(Nat64Verdict::PassHopLimit);
    }
    let (sport, dport, tcp) = match ip.next_header {
        net::IPPROTO_TCP => (w0, w1, tcp_flags(ctx, l4, ip.payload_len)?),
        // IPv6 requires UDP checksums; a packet without one is invalid.
        net::IPPROTO_UDP if w3 != 0 => (w0, w1, 0),
        net::IPPROTO_UDP => return Err(Nat64Verdict::DropMalformed),
        net::IPPROTO_ICMPV6 => match w0.to_ne_bytes()[0] {
            ICMPV6_ECHO_REQUEST => (w2, 0, 0),
            1..=4 => return Err(tail_call_icmp::<L3>(ctx)),
            _ => return Err(Nat64Verdict::DropProtocol),
        },
        _ => return Err(Nat64Verdict::DropUnsupported),
    };
    sc.key.proto = ip.next_header;
    sc.key.pad = [0; 3];
    sc.key.sport = sport;
    sc.key.dport = dport;
    let now = nat4::now();
    let (port, verdict) = match lookup_live6(n4, &sc.key, remote, now) {
        Some(entry) => {
            nat4::touch(entry, ip.next_header, tcp, now);
            // SAFETY: a pointer into the map's value, valid during this program run.
            (unsafe { (*entry).port }, Nat64Verdict::Out)
        }
        None => (
            new_out6(n4, sc, remote, tcp, ingress, now)?,
            Nat64Verdict::NewOut,
        ),
    };
    translate_out::<L3>(ctx, n4, &ip, &sc.key, remote, (w0, w1, w2, w3), port)?;
    forward::<L3>(ctx, &n4.upstream, verdict)
}

/// Only a node's own `xlat_range6`, arriving on its link, is translated.
#[inline(always)]
fn check_source(src: &[u8; 16], ingress: u32) -> Result<(), Nat64Verdict> {
    let prefix: Prefix64 = [
        src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
    ];
    // SAFETY: copied out at once.
    let allowed = unsafe { XLAT6.get(prefix) }.copied();
    match allowed {
        Some(x) if x.ifindex == 0 || x.ifindex == ingress => Ok(()),
        _ => Err(Nat64Verdict::DropNotXlat),
    }
}

/// The TCP flags byte (the header must be complete).
#[inline(always)]
fn tcp_flags(ctx: &TcContext, l4: usize, payload_len: u16) -> Result<u8, Nat64Verdict> {
    if (payload_len as usize) < TCP_HDR_LEN {
        return Err(Nat64Verdict::DropMalformed);
    }
    let flags: *const u8 = ptr_at(ctx, l4 + TCP_FLAGS_OFF).ok_or(Nat64Verdict::DropMalformed)?;
    // SAFETY: ptr_at checked the byte is inside the packet.
    Ok(unsafe { *flags })
}

/// The IPv4 protocol number of an IPv6 next header.
#[inline(always)]
fn proto4(next_header: u8) -> u8 {
    if next_header == net::IPPROTO_ICMPV6 {
        ICMP4
    } else {
        next_header
    }
}

/// The CT4 key replies to the NAT64 connection `key` carry once it uses `public:port`.
#[inline(always)]
fn reply_key(key: &Ct6Key, remote: [u8; 4], public: [u8; 4], port: u16) -> CtKey {
    CtKey {
        proto: proto4(key.proto),
        dir: CT_IN,
        pad: [0; 2],
        src: remote,
        dst: public,
        sport: key.dport,
        dport: port,
    }
}

/// The CT6 entry of `key` if the connection is alive (either direction fresh); a dead
/// connection's entries are deleted here.
#[inline(never)]
fn lookup_live6(n4: &Nat4Config, key: &Ct6Key, remote: [u8; 4], now: u64) -> Option<*mut CtEntry> {
    let entry = CT6.get_ptr_mut(key)?;
    // SAFETY: pointer into the map value, valid during this run; read in place.
    let e = unsafe { &*entry };
    if nat4::fresh(n4, key.proto, e, now) {
        return Some(entry);
    }
    let back = reply_key(key, remote, e.addr, e.port);
    // SAFETY: as above.
    if let Some(p) = CT4.get_ptr(back).map(|p| unsafe { &*p }) {
        if p.flags & CT_NAT64 != 0 && p.port == key.sport && eq16(&p.addr6, &key.src) {
            if nat4::fresh(n4, key.proto, p, now) {
                return Some(entry);
            }
            let _ = CT4.remove(back);
        }
    }
    let _ = CT6.remove(key);
    count(&NAT4_STATS, Nat4Verdict::Expired as u32, 0);
    None
}

/// Whether the CT6 side of the NAT64 connection whose CT4 reply entry is `key` → `entry`
/// saw a packet within the timeout. A stale CT6 entry is deleted.
#[inline(always)]
pub(crate) fn partner_alive(n4: &Nat4Config, key: &CtKey, entry: &CtEntry, now: u64) -> bool {
    let Some(n64) = NAT64_CONFIG.get(0) else {
        return false;
    };
    let Some(k6) = PARTNER_KEY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let k6 = unsafe { &mut *k6 };
    k6.proto = if key.proto == ICMP4 {
        net::IPPROTO_ICMPV6
    } else {
        key.proto
    };
    k6.pad = [0; 3];
    k6.src = entry.addr6;
    k6.dst = n64.embed(key.src);
    k6.sport = entry.port;
    k6.dport = key.sport;
    // SAFETY: read in place during this run.
    let Some(p) = CT6.get_ptr(&*k6).map(|p| unsafe { &*p }) else {
        return false;
    };
    if p.addr != key.dst || p.port != key.dport {
        return false;
    }
    if nat4::fresh(n4, key.proto, p, now) {
        return true;
    }
    let _ = CT6.remove(&*k6);
    false
}

/// The first packet of a NAT64 connection: claim a public port (shared with NAT44 through
/// CT4) and record both sides. TCP must start with a SYN.
#[inline(always)]
fn new_out6(
    n4: &Nat4Config,
    sc: &mut Scratch,
    remote: [u8; 4],
    tcp: u8,
    ingress: u32,
    now: u64,
) -> Result<u16, Nat64Verdict> {
    let key = &sc.key;
    if key.proto == net::IPPROTO_TCP && tcp & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return Err(Nat64Verdict::DropNoState);
    }
    let as_v4 = CtKey {
        proto: proto4(key.proto),
        dir: CT_OUT,
        pad: [0; 2],
        src: [0; 4],
        dst: remote,
        sport: key.sport,
        dport: key.dport,
    };
    sc.back = CtEntry {
        addr: [0; 4],
        port: key.sport,
        state: 0,
        flags: CT_NAT64,
        last_seen: now,
        ifindex: ingress,
        pad: 0,
        addr6: key.src,
    };
    let port = nat4::claimed(nat4::claim_port(n4, &as_v4, &sc.back, now))
        .ok_or(Nat64Verdict::DropExhausted)?;
    // The CT4 side is in; the scratch entry becomes the CT6 side.
    sc.back.addr = n4.public;
    sc.back.port = port;
    sc.back.addr6 = [0; 16];
    // Cannot fail for lack of room: an LRU map evicts instead.
    let _ = CT6.insert(&sc.key, &sc.back, BPF_ANY as u64);
    Ok(port)
}

/// A fresh IPv4 header (no options, DF set, checksum computed).
#[inline(always)]
fn ipv4_header(tot_len: u16, tos: u8, ttl: u8, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Ipv4Hdr {
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        // DF: path-MTU discovery keeps working end to end (RFC 7915 §5.1 allows it; the
        // packet-too-big answer comes back translated).
        frag_off: 0x4000u16.to_be_bytes(),
        ttl,
        protocol: proto,
        check: 0,
        src,
        dst,
    };
    hdr.check = net::fold(header_sum4(&hdr));
    hdr
}

/// Sum of the ten 16-bit words of an IPv4 header, as stored.
#[inline(always)]
fn header_sum4(hdr: &Ipv4Hdr) -> u32 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data, 2-aligned.
    let words: &[u16; 10] = unsafe { &*(hdr as *const Ipv4Hdr as *const [u16; 10]) };
    net::sum_words(words)
}

/// Sum of the twenty 16-bit words of an IPv6 header, as stored.
#[inline(always)]
fn header_sum6(hdr: &Ipv6Hdr) -> u32 {
    let at = hdr as *const Ipv6Hdr as *const u16;
    let mut sum = 0u32;
    for i in 0..Ipv6Hdr::LEN / 2 {
        // SAFETY: i < 20 words of the 40-byte header; Ipv6Hdr has alignment 1.
        sum += unsafe { core::ptr::read_unaligned(at.add(i)) } as u32;
    }
    sum
}

/// The words an ICMPv6 pseudo-header adds to the checksum (RFC 8200 §8.1).
#[inline(always)]
fn pseudo6_icmp(src: [u8; 16], dst: [u8; 16], len: u16) -> CsumDelta {
    CsumDelta::new()
        .addr16([0; 16], src)
        .addr16([0; 16], dst)
        .word(0, u16::from_ne_bytes(len.to_be_bytes()))
        .word(0, u16::from_ne_bytes([0, net::IPPROTO_ICMPV6]))
}

/// Rewrites the node's IPv6 packet into IPv4 from `public:port` to `remote`.
#[inline(always)]
fn translate_out<const L3: usize>(
    ctx: &TcContext,
    n4: &Nat4Config,
    ip: &Ip6,
    key: &Ct6Key,
    remote: [u8; 4],
    (w0, _w1, w2, _w3): (u16, u16, u16, u16),
    port: u16,
) -> Result<(), Nat64Verdict> {
    let proto = proto4(ip.next_header);
    let pseudo = CsumDelta::new()
        .addr16_to_4(key.src, n4.public)
        .addr16_to_4(key.dst, remote);
    let l4_old = L3 + Ipv6Hdr::LEN;
    // ICMP's checksum (no pseudo-header in ICMPv4, never offloaded) is computed here,
    // before the header moves; TCP's and UDP's go through the kernel's helper after it.
    let icmp_check = if proto == ICMP4 {
        let echo = u16::from_ne_bytes([net::ICMP_ECHO_REQUEST, w0.to_ne_bytes()[1]]);
        let delta = minus_delta(
            CsumDelta::new().word(w0, echo).word(w2, port),
            pseudo6_icmp(key.src, key.dst, ip.payload_len),
        );
        // SAFETY: ptr_at checked the head; read before the move.
        let old = unsafe {
            (*ptr_at::<L4Head, _>(ctx, l4_old).ok_or(Nat64Verdict::DropMalformed)?).word1
        };
        Some((echo, delta.apply(old)))
    } else {
        None
    };
    ctx.change_proto(net::ETH_P_IP.to_be(), 0)
        .map_err(|_| Nat64Verdict::DropResize)?;
    let hdr = ipv4_header(
        ip.payload_len + Ipv4Hdr::LEN as u16,
        ip.tclass,
        ip.hop_limit - 1,
        proto,
        n4.public,
        remote,
    );
    let l4 = L3 + Ipv4Hdr::LEN;
    let ip4: *mut Ipv4Hdr = ptr_at(ctx, L3).ok_or(Nat64Verdict::DropResize)?;
    let head: *mut L4Head = ptr_at(ctx, l4).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: ptr_at checked both pointers after the resize.
    unsafe {
        *ip4 = hdr;
        match icmp_check {
            Some((echo, check)) => {
                (*head).word0 = echo;
                (*head).word1 = check;
                (*head).word2 = port;
            }
            None => (*head).word0 = port,
        }
    }
    if icmp_check.is_none() {
        let (off, udp) = if proto == net::IPPROTO_TCP {
            (TCP_CSUM_OFF, false)
        } else {
            (6, true)
        };
        if !ctx.l4_checksum(l4 + off, pseudo, w0, port, udp) {
            return Err(Nat64Verdict::DropResize);
        }
    }
    Ok(())
}

/// `delta` with the words of `sub` removed instead of added (for pseudo-headers that go
/// away).
#[inline(always)]
fn minus_delta(delta: CsumDelta, sub: CsumDelta) -> CsumDelta {
    // apply(0xffff) turns a recorded sum into its folded complement; subtracting that
    // folded sum is the same as adding its complement.
    let folded = !sub.apply(0xffff);
    delta.word(folded, 0)
}

/// Sends the translated IPv4 packet to the upstream router: with its MAC known, straight
/// out of the uplink (WireGuard frames first get an Ethernet header); otherwise the kernel
/// routes it and resolves the neighbour.
#[inline(always)]
fn forward<const L3: usize>(
    ctx: &TcContext,
    up: &Route4,
    verdict: Nat64Verdict,
) -> Result<(Nat64Verdict, i32), Nat64Verdict> {
    if up.flags & ROUTE_NEIGH_KNOWN == 0 {
        if L3 == ETH {
            let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Nat64Verdict::DropResize)?;
            // SAFETY: ptr_at checked the header.
            unsafe { (*eth).ether_type = net::ETH_P_IP.to_be() };
        }
        return Ok((Nat64Verdict::PassNoNeighbour, TC_ACT_OK));
    }
    if L3 == 0 {
        // SAFETY: the helper only needs the context.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, ETH as u32, 0) } != 0 {
            return Err(Nat64Verdict::DropResize);
        }
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: ptr_at checked the header (written in place: no helper call).
    unsafe {
        (*eth).dst = up.dst_mac;
        (*eth).src = up.src_mac;
        (*eth).ether_type = net::ETH_P_IP.to_be();
    }
    // SAFETY: helper without memory arguments.
    let action = unsafe { bpf_redirect(up.ifindex, 0) } as i32;
    Ok((verdict, action))
}

/// RFC 7915 §5.2: an ICMPv6 error's type, code and the 4 bytes after the checksum (as
/// words 2 and 3) in ICMPv4; None for what is not translated.
#[inline(always)]
fn icmp6_to_4(w0: u16, w2: u16, w3: u16) -> Option<(u16, u16, u16)> {
    let [t, code] = w0.to_ne_bytes();
    let word = |t: u8, c: u8| u16::from_ne_bytes([t, c]);
    match (t, code) {
        (net::ICMPV6_DEST_UNREACH, 0 | 2 | 3) => Some((word(3, 1), 0, 0)),
        (net::ICMPV6_DEST_UNREACH, 1) => Some((word(3, 10), 0, 0)),
        (net::ICMPV6_DEST_UNREACH, 4) => Some((word(3, 3), 0, 0)),
        (net::ICMPV6_PACKET_TOO_BIG, _) => {
            let mtu6 = u32::from_be_bytes([
                w2.to_ne_bytes()[0],
                w2.to_ne_bytes()[1],
                w3.to_ne_bytes()[0],
                w3.to_ne_bytes()[1],
            ]);
            // The IPv4 header is 20 bytes shorter than the IPv6 one.
            let mtu4 = core::cmp::min(mtu6.saturating_sub(20), 0xffff) as u16;
            Some((word(3, 4), 0, mtu4.to_be()))
        }
        (net::ICMPV6_TIME_EXCEEDED, _) => Some((word(11, code), 0, 0)),
        (net::ICMPV6_PARAM_PROBLEM, 0) => {
            let ptr6 = u16::from_be(w3);
            let ptr4 = match ptr6 {
                0 | 1 => ptr6 as u8,
                4 | 5 => 2,
                6 => 9,
                7 => 8,
                8..=23 => 12,
                24..=39 => 16,
                _ => return None,
            };
            Some((word(12, 0), u16::from_ne_bytes([ptr4, 0]), 0))
        }
        (net::ICMPV6_PARAM_PROBLEM, 1) => Some((word(3, 2), 0, 0)),
        _ => None,
    }
}

/// RFC 7915 §4.2: an ICMPv4 error's type, code and words 2 and 3 in ICMPv6.
#[inline(always)]
fn icmp4_to_6(w0: u16, w2: u16, w3: u16) -> Option<(u16, u16, u16)> {
    let [t, code] = w0.to_ne_bytes();
    let word = |t: u8, c: u8| u16::from_ne_bytes([t, c]);
    let unreach = net::ICMPV6_DEST_UNREACH;
    match (t, code) {
        (net::ICMP_DEST_UNREACH, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => Some((word(unreach, 0), 0, 0)),
        (net::ICMP_DEST_UNREACH, 9 | 10 | 13 | 15) => Some((word(unreach, 1), 0, 0)),
        (net::ICMP_DEST_UNREACH, 3) => Some((word(unreach, 4), 0, 0)),
        // Protocol unreachable: parameter problem pointing at the next header field.
        (net::ICMP_DEST_UNREACH, 2) => Some((word(net::ICMPV6_PARAM_PROBLEM, 1), 0, 6u16.to_be())),
        (net::ICMP_DEST_UNREACH, 4) => {
            // Fragmentation needed: packet too big, 20 bytes more room in IPv6 terms; at
            // least the IPv6 minimum (RFC 8021: no atomic fragments below it).
            let mtu4 = u16::from_be(w3) as u32;
            let mtu6 = core::cmp::max(mtu4 + 20, 1280);
            let [a, b, c, d] = mtu6.to_be_bytes();
            Some((
                word(net::ICMPV6_PACKET_TOO_BIG, 0),
                u16::from_ne_bytes([a, b]),
                u16::from_ne_bytes([c, d]),
            ))
        }
        (net::ICMP_TIME_EXCEEDED, 0 | 1) => Some((word(net::ICMPV6_TIME_EXCEEDED, code), 0, 0)),
        (net::ICMP_PARAMETER_PROBLEM, 0 | 2) => {
            let ptr6: u16 = match w2.to_ne_bytes()[0] {
                0 => 0,
                1 => 1,
                2 | 3 => 4,
                8 => 7,
                9 => 6,
                12..=15 => 8,
                16..=19 => 24,
                _ => return None,
            };
            Some((word(net::ICMPV6_PARAM_PROBLEM, 0), 0, ptr6.to_be()))
        }
        _ => None,
    }
}

/// An ICMPv6 error from a node about a packet the translator delivered to it (so it
/// quotes that packet as IPv6 from `<prefix>::<remote>`): translated to ICMPv4 from the
/// public address to the remote host, quoted packet included, so path-MTU discovery and
/// unreachables work through the NAT64.
#[inline(always)]
fn icmp6_error<const L3: usize>(
    ctx: &TcContext,
    n64: &Nat64Config,
    n4: &Nat4Config,
    ip: &Ip6,
    ingress: u32,
) -> Result<(Nat64Verdict, i32), Nat64Verdict> {
    let l4 = L3 + Ipv6Hdr::LEN;
    let inner_l3 = l4 + ICMP_HDR;
    let inner_l4 = inner_l3 + Ipv6Hdr::LEN;
    if (ip.payload_len as usize) < ICMP_HDR + Ipv6Hdr::LEN + 8 {
        return Err(Nat64Verdict::DropMalformed);
    }
    let head: *mut L4Head = ptr_at(ctx, l4).ok_or(Nat64Verdict::DropMalformed)?;
    let inner: *const Ipv6Hdr = ptr_at(ctx, inner_l3).ok_or(Nat64Verdict::DropMalformed)?;
    let il4: *mut L4Head = ptr_at(ctx, inner_l4).ok_or(Nat64Verdict::DropMalformed)?;
    let sc = SCRATCH.get_ptr_mut(0).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let sc = unsafe { &mut *sc };
    // The outer addresses are in the scratch key until the quoted connection's key
    // replaces them.
    let outer_pseudo = pseudo6_icmp(sc.key.src, sc.key.dst, ip.payload_len);
    // SAFETY: ptr_at checked all three.
    let ((w0, w1, w2, w3), (iw0, iw1, iw2, iw3)) = unsafe {
        core::ptr::copy_nonoverlapping(
            inner as *const u8,
            &mut sc.ih as *mut Ipv6Hdr as *mut u8,
            Ipv6Hdr::LEN,
        );
        (
            ((*head).word0, (*head).word1, (*head).word2, (*head).word3),
            ((*il4).word0, (*il4).word1, (*il4).word2, (*il4).word3),
        )
    };
    let ih = &sc.ih;
    let remote = n64.extract(&ih.src).ok_or(Nat64Verdict::DropNoState)?;
    check_source(&ih.dst, ingress)?;
    let (sport, dport) = match ih.next_header {
        net::IPPROTO_TCP | net::IPPROTO_UDP => (iw1, iw0),
        net::IPPROTO_ICMPV6 if iw0.to_ne_bytes()[0] == net::ICMPV6_ECHO_REPLY => (iw2, 0),
        _ => return Err(Nat64Verdict::DropProtocol),
    };
    sc.key = Ct6Key {
        proto: ih.next_header,
        pad: [0; 3],
        src: ih.dst,
        dst: ih.src,
        sport,
        dport,
    };
    // SAFETY: the public address and port are copied out at once.
    let (public, port) = unsafe { CT6.get(&sc.key) }
        .map(|e| (e.addr, e.port))
        .ok_or(Nat64Verdict::DropNoState)?;
    let ih = &sc.ih;
    let (nw0, nw2, nw3) = icmp6_to_4(w0, w2, w3).ok_or(Nat64Verdict::DropProtocol)?;
    let ih_len = u16::from_be_bytes(ih.payload_len);
    let proto = proto4(ih.next_header);
    sc.inner4 = ipv4_header(
        ih_len.saturating_add(Ipv4Hdr::LEN as u16),
        (ih.version_tc_flow[0] << 4) | (ih.version_tc_flow[1] >> 4),
        ih.hop_limit,
        proto,
        remote,
        public,
    );
    // The quoted L4 header: its destination (the node) becomes the public port.
    let quotes_tcp_check = ctx.len() as usize >= inner_l4 + TCP_CSUM_OFF + 2;
    let pseudo = CsumDelta::new()
        .addr16_to_4(ih.src, remote)
        .addr16_to_4(ih.dst, public);
    let mut outer = CsumDelta::new()
        .word(w0, nw0)
        .word(w2, nw2)
        .word(w3, nw3)
        .minus(header_sum6(ih))
        .plus(header_sum4(&sc.inner4));
    outer = minus_delta(outer, outer_pseudo);
    let (new_iw0, new_iw1, new_iw2, new_iw3, tcp_check) = match proto {
        net::IPPROTO_TCP => {
            let mut tcp_check = None;
            if quotes_tcp_check {
                let check: *const u16 =
                    ptr_at(ctx, inner_l4 + TCP_CSUM_OFF).ok_or(Nat64Verdict::DropMalformed)?;
                // SAFETY: ptr_at checked the field.
                let old = unsafe { *check };
                let new = pseudo.word(iw1, port).apply(old);
                outer = outer.word(old, new);
                tcp_check = Some(new);
            }
            outer = outer.word(iw1, port);
            (iw0, port, iw2, iw3, tcp_check)
        }
        net::IPPROTO_UDP => {
            let check = if iw3 == 0 {
                0
            } else {
                nat4::udp_check(pseudo.word(iw1, port).apply(iw3))
            };
            outer = outer.word(iw1, port).word(iw3, check);
            (iw0, port, iw2, check, None)
        }
        _ => {
            let echo = u16::from_ne_bytes([net::ICMP_ECHO_REPLY, iw0.to_ne_bytes()[1]]);
            let delta = minus_delta(
                CsumDelta::new().word(iw0, echo).word(iw2, port),
                pseudo6_icmp(ih.src, ih.dst, ih_len),
            );
            let check = delta.apply(iw1);
            outer = outer.word(iw0, echo).word(iw1, check).word(iw2, port);
            (echo, check, port, iw3, None)
        }
    };
    sc.outer4 = ipv4_header(
        ip.payload_len,
        ip.tclass,
        ip.hop_limit - 1,
        ICMP4,
        n4.public,
        remote,
    );
    let new_w1 = outer.apply(w1);
    ctx.change_proto(net::ETH_P_IP.to_be(), 0)
        .map_err(|_| Nat64Verdict::DropResize)?;
    ctx.adjust_room(-(Ipv4Hdr::LEN as i32), BPF_ADJ_ROOM_NET, 0)
        .map_err(|_| Nat64Verdict::DropResize)?;
    let l4 = L3 + Ipv4Hdr::LEN;
    let inner_l3 = l4 + ICMP_HDR;
    let inner_l4 = inner_l3 + Ipv4Hdr::LEN;
    let ip4: *mut Ipv4Hdr = ptr_at(ctx, L3).ok_or(Nat64Verdict::DropResize)?;
    let head: *mut L4Head = ptr_at(ctx, l4).ok_or(Nat64Verdict::DropResize)?;
    let in4: *mut Ipv4Hdr = ptr_at(ctx, inner_l3).ok_or(Nat64Verdict::DropResize)?;
    let il4: *mut L4Head = ptr_at(ctx, inner_l4).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: ptr_at checked every pointer after the resize.
    unsafe {
        core::ptr::copy_nonoverlapping(&sc.outer4, ip4, 1);
        *head = L4Head {
            word0: nw0,
            word1: new_w1,
            word2: nw2,
            word3: nw3,
        };
        core::ptr::copy_nonoverlapping(
            &sc.inner4 as *const Ipv4Hdr as *const u8,
            in4 as *mut u8,
            Ipv4Hdr::LEN,
        );
        *il4 = L4Head {
            word0: new_iw0,
            word1: new_iw1,
            word2: new_iw2,
            word3: new_iw3,
        };
    }
    if let Some(check) = tcp_check {
        let at: *mut u16 = ptr_at(ctx, inner_l4 + TCP_CSUM_OFF).ok_or(Nat64Verdict::DropResize)?;
        // SAFETY: ptr_at checked the field.
        unsafe { *at = check };
    }
    forward::<L3>(ctx, &n4.upstream, Nat64Verdict::IcmpErrorOut)
}

/// A reply on the uplink to a NAT64 connection (found in CT4 by the IPv4 translator):
/// translated to IPv6 for the node and handed to the kernel, which routes it into the
/// node's tunnel (WireGuard takes no XDP redirects). The hop limit keeps the TTL: the
/// kernel decrements it when it forwards.
#[inline(always)]
pub(crate) fn xdp_reply(
    ctx: &XdpContext,
    pkt: &nat4::Packet,
    head: *mut L4Head,
    entry: &CtEntry,
) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    to_kernel_or_drop(try_reply(ctx, pkt, head, entry), Nat64Verdict::In, len)
}

/// Counts the outcome of a translation to IPv6: translated packets go to the kernel
/// (counted as `done`), the rest is dropped.
#[inline(always)]
fn to_kernel_or_drop(result: Result<(), Nat64Verdict>, done: Nat64Verdict, len: u64) -> u32 {
    let (verdict, action) = match result {
        Ok(()) => (done, xdp_action::XDP_PASS),
        Err(verdict) => (verdict, xdp_action::XDP_DROP),
    };
    count(&NAT64_STATS, verdict as u32, len);
    action
}

#[inline(always)]
fn try_reply(
    ctx: &XdpContext,
    pkt: &nat4::Packet,
    head: *mut L4Head,
    entry: &CtEntry,
) -> Result<(), Nat64Verdict> {
    let n64 = NAT64_CONFIG.get(0).ok_or(Nat64Verdict::DropNoState)?;
    // SAFETY: the IPv4 translator checked both headers (tot_len ≥ 28).
    let (tot_len, tos, (w0, w1, w2, w3)) = unsafe {
        (
            u16::from_be_bytes((*pkt.ip).tot_len),
            (*pkt.ip).tos,
            ((*head).word0, (*head).word1, (*head).word2, (*head).word3),
        )
    };
    let payload_len = tot_len - Ipv4Hdr::LEN as u16;
    let sc = XDP_SCRATCH.get_ptr_mut(0).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let sc = unsafe { &mut *sc };
    let ip6 = &mut sc.outer;
    ip6.src = n64.embed(pkt.src);
    ip6.dst = entry.addr6;
    let pseudo = CsumDelta::new()
        .addr4_to_16(pkt.src, ip6.src)
        .addr4_to_16(pkt.dst, ip6.dst);
    let (next_header, check_off, check, new_w0) = match pkt.proto {
        net::IPPROTO_TCP => {
            let at: *const u16 =
                ptr_at(ctx, nat4::L4 + TCP_CSUM_OFF).ok_or(Nat64Verdict::DropMalformed)?;
            // SAFETY: ptr_at checked the field.
            let old = unsafe { *at };
            let new = pseudo.word(w1, entry.port).apply(old);
            (net::IPPROTO_TCP, TCP_CSUM_OFF, new, w0)
        }
        net::IPPROTO_UDP if w3 == 0 => return Err(Nat64Verdict::DropUdpNoChecksum),
        net::IPPROTO_UDP => {
            let new = nat4::udp_check(pseudo.word(w1, entry.port).apply(w3));
            (net::IPPROTO_UDP, 6, new, w0)
        }
        _ => {
            let echo = u16::from_ne_bytes([net::ICMPV6_ECHO_REPLY, w0.to_ne_bytes()[1]]);
            let delta = CsumDelta::new().word(w0, echo).word(w2, entry.port);
            let delta = plus_delta(delta, pseudo6_icmp(ip6.src, ip6.dst, payload_len));
            (net::IPPROTO_ICMPV6, 2, delta.apply(w1), echo)
        }
    };
    set_ipv6_header(ip6, payload_len, tos, pkt.ttl, next_header);
    let macs: *const [u8; 12] = ptr_at(ctx, 0).ok_or(Nat64Verdict::DropMalformed)?;
    // SAFETY: ptr_at checked the Ethernet addresses.
    let macs = unsafe { *macs };
    grow_head(ctx, Ipv4Hdr::LEN)?;
    let l4 = ETH + Ipv6Hdr::LEN;
    let eth: *mut [u8; 14] = ptr_at(ctx, 0).ok_or(Nat64Verdict::DropResize)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH).ok_or(Nat64Verdict::DropResize)?;
    let head: *mut L4Head = ptr_at(ctx, l4).ok_or(Nat64Verdict::DropResize)?;
    let at: *mut u16 = ptr_at(ctx, l4 + check_off).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: ptr_at checked every pointer after the resize.
    unsafe {
        write_eth(eth, macs, net::ETH_P_IPV6);
        core::ptr::copy_nonoverlapping(&*ip6, ip, 1);
        if next_header == net::IPPROTO_ICMPV6 {
            (*head).word0 = new_w0;
            (*head).word2 = entry.port;
        } else {
            (*head).word1 = entry.port;
        }
        *at = check;
    }
    Ok(())
}

/// `delta` plus every word recorded in `add`.
#[inline(always)]
fn plus_delta(delta: CsumDelta, add: CsumDelta) -> CsumDelta {
    let folded = !add.apply(0xffff);
    delta.word(0, folded)
}

/// Makes `by` bytes of room in front of the frame (XDP).
#[inline(always)]
fn grow_head(ctx: &XdpContext, by: usize) -> Result<(), Nat64Verdict> {
    // SAFETY: the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(by as i32)) } != 0 {
        return Err(Nat64Verdict::DropResize);
    }
    Ok(())
}

/// Writes an Ethernet header: the frame's original addresses and a new EtherType.
///
/// # Safety
/// `eth` must point at 14 writable bytes inside the packet.
#[inline(always)]
unsafe fn write_eth(eth: *mut [u8; 14], macs: [u8; 12], ether_type: u16) {
    let t = ether_type.to_be_bytes();
    // SAFETY: the caller guarantees the pointer.
    unsafe {
        *eth = [
            macs[0], macs[1], macs[2], macs[3], macs[4], macs[5], macs[6], macs[7], macs[8],
            macs[9], macs[10], macs[11], t[0], t[1],
        ];
    }
}

/// An ICMPv4 error on the uplink about a NAT64 connection (it quotes the translated packet
/// as sent from the public address): translated to ICMPv6 for the node, quoted packet
/// included, so traceroute and path-MTU discovery work through the NAT64.
#[inline(always)]
pub(crate) fn xdp_icmp_error(
    ctx: &XdpContext,
    pkt: &nat4::Packet,
    head: *mut L4Head,
    entry: &CtEntry,
    quotes_tcp_check: bool,
) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let result = try_icmp_error(ctx, pkt, head, entry, quotes_tcp_check);
    to_kernel_or_drop(result, Nat64Verdict::IcmpErrorIn, len)
}

#[inline(always)]
fn try_icmp_error(
    ctx: &XdpContext,
    pkt: &nat4::Packet,
    head: *mut L4Head,
    entry: &CtEntry,
    quotes_tcp_check: bool,
) -> Result<(), Nat64Verdict> {
    let n64 = NAT64_CONFIG.get(0).ok_or(Nat64Verdict::DropNoState)?;
    let inner: *const Ipv4Hdr = ptr_at(ctx, nat4::INNER_L3).ok_or(Nat64Verdict::DropMalformed)?;
    let il4: *const L4Head = ptr_at(ctx, nat4::INNER_L4).ok_or(Nat64Verdict::DropMalformed)?;
    let sc = XDP_SCRATCH.get_ptr_mut(0).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let sc = unsafe { &mut *sc };
    // SAFETY: the IPv4 translator checked the outer headers; ptr_at the inner ones.
    let (tot_len, tos, (w0, w1, w2, w3), (iw0, iw1, iw2, iw3)) = unsafe {
        core::ptr::copy_nonoverlapping(
            inner as *const u8,
            &mut sc.ih as *mut Ipv4Hdr as *mut u8,
            Ipv4Hdr::LEN,
        );
        (
            u16::from_be_bytes((*pkt.ip).tot_len),
            (*pkt.ip).tos,
            ((*head).word0, (*head).word1, (*head).word2, (*head).word3),
            ((*il4).word0, (*il4).word1, (*il4).word2, (*il4).word3),
        )
    };
    let ih = &sc.ih;
    let (nw0, nw2, nw3) = icmp4_to_6(w0, w2, w3).ok_or(Nat64Verdict::DropProtocol)?;
    let inner_len = u16::from_be_bytes(ih.tot_len).saturating_sub(Ipv4Hdr::LEN as u16);
    let nh = if ih.protocol == ICMP4 {
        net::IPPROTO_ICMPV6
    } else {
        ih.protocol
    };
    let inner6 = &mut sc.inner;
    set_ipv6_header(inner6, inner_len, ih.tos, ih.ttl, nh);
    inner6.src = entry.addr6;
    inner6.dst = n64.embed(ih.dst);
    let pseudo = CsumDelta::new()
        .addr4_to_16(ih.src, inner6.src)
        .addr4_to_16(ih.dst, inner6.dst);
    let ip6 = &mut sc.outer;
    ip6.src = n64.embed(pkt.src);
    ip6.dst = entry.addr6;
    // ICMPv6 length: the ICMPv4 message plus 20 bytes of bigger quoted header.
    let payload_len = tot_len;
    let mut outer = CsumDelta::new()
        .word(w0, nw0)
        .word(w2, nw2)
        .word(w3, nw3)
        .minus(header_sum4(ih))
        .plus(header_sum6(inner6));
    outer = plus_delta(outer, pseudo6_icmp(ip6.src, ip6.dst, payload_len));
    let (new_i, tcp_check) = match ih.protocol {
        net::IPPROTO_TCP => {
            let mut tcp_check = None;
            if quotes_tcp_check {
                let at: *const u16 = ptr_at(ctx, nat4::INNER_L4 + TCP_CSUM_OFF)
                    .ok_or(Nat64Verdict::DropMalformed)?;
                // SAFETY: ptr_at checked the field.
                let old = unsafe { *at };
                let new = pseudo.word(iw0, entry.port).apply(old);
                outer = outer.word(old, new);
                tcp_check = Some(new);
            }
            outer = outer.word(iw0, entry.port);
            ((entry.port, iw1, iw2, iw3), tcp_check)
        }
        net::IPPROTO_UDP => {
            let check = if iw3 == 0 {
                0
            } else {
                nat4::udp_check(pseudo.word(iw0, entry.port).apply(iw3))
            };
            outer = outer.word(iw0, entry.port).word(iw3, check);
            ((entry.port, iw1, iw2, check), None)
        }
        _ => {
            let echo = u16::from_ne_bytes([ICMPV6_ECHO_REQUEST, iw0.to_ne_bytes()[1]]);
            let delta = plus_delta(
                CsumDelta::new().word(iw0, echo).word(iw2, entry.port),
                pseudo6_icmp(inner6.src, inner6.dst, inner_len),
            );
            let check = delta.apply(iw1);
            outer = outer.word(iw0, echo).word(iw1, check).word(iw2, entry.port);
            ((echo, check, entry.port, iw3), None)
        }
    };
    set_ipv6_header(ip6, payload_len, tos, pkt.ttl, net::IPPROTO_ICMPV6);
    let new_w1 = outer.apply(w1);
    let macs: *const [u8; 12] = ptr_at(ctx, 0).ok_or(Nat64Verdict::DropMalformed)?;
    // SAFETY: ptr_at checked the Ethernet addresses.
    let macs = unsafe { *macs };
    grow_head(ctx, 2 * (Ipv6Hdr::LEN - Ipv4Hdr::LEN))?;
    let l4 = ETH + Ipv6Hdr::LEN;
    let inner_l3 = l4 + ICMP_HDR;
    let inner_l4 = inner_l3 + Ipv6Hdr::LEN;
    let eth: *mut [u8; 14] = ptr_at(ctx, 0).ok_or(Nat64Verdict::DropResize)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH).ok_or(Nat64Verdict::DropResize)?;
    let icmp: *mut L4Head = ptr_at(ctx, l4).ok_or(Nat64Verdict::DropResize)?;
    let in6: *mut Ipv6Hdr = ptr_at(ctx, inner_l3).ok_or(Nat64Verdict::DropResize)?;
    let il4: *mut L4Head = ptr_at(ctx, inner_l4).ok_or(Nat64Verdict::DropResize)?;
    // SAFETY: ptr_at checked every pointer after the resize.
    unsafe {
        write_eth(eth, macs, net::ETH_P_IPV6);
        core::ptr::copy_nonoverlapping(&*ip6, ip, 1);
        *icmp = L4Head {
            word0: nw0,
            word1: new_w1,
            word2: nw2,
            word3: nw3,
        };
        core::ptr::copy_nonoverlapping(&*inner6, in6, 1);
        *il4 = L4Head {
            word0: new_i.0,
            word1: new_i.1,
            word2: new_i.2,
            word3: new_i.3,
        };
    }
    if let Some(check) = tcp_check {
        let at: *mut u16 = ptr_at(ctx, inner_l4 + TCP_CSUM_OFF).ok_or(Nat64Verdict::DropResize)?;
        // SAFETY: ptr_at checked the field.
        unsafe { *at = check };
    }
    Ok(())
}
