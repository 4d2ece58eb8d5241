//! `xdp_fwd6`: per-/64 IPv6 forwarding on the exit node.
//!
//! For a packet to a tenant /64 (or, failing that, a shorter route such as the default route
//! toward the upstream router) whose next hop's MAC is known: rewrite the Ethernet addresses,
//! decrement the hop limit and redirect to the egress interface. Everything else goes to the
//! kernel with XDP_PASS, each case counted under its own reason, so the kernel stays the
//! fallback for all that the fast path must not decide (ND, Time Exceeded, the host's own
//! traffic, unresolved neighbours, anything malformed).

use crate::net::{self, ptr_at, EthHdr, Ipv6Hdr};
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{lpm_trie::Key, DevMapHash, HashMap, LpmTrie, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use exitd_common::{
    Counters, Prefix64, Route6, Verdict, MAX_LOCAL6, MAX_ROUTES6, MAX_ROUTES6_LPM, MAX_ROUTE_IDS,
    MAX_TX_PORTS, ROUTE_NEIGH_KNOWN, VERDICT_COUNT,
};

/// Exact tenant /64 routes, keyed by the first 8 bytes of the destination.
#[btf_map]
static ROUTES6: HashMap<Prefix64, Route6, { MAX_ROUTES6 as usize }> = HashMap::new();

/// The few shorter routes (default route toward upstream), longest prefix first.
#[btf_map]
static ROUTES6_LPM: LpmTrie<[u8; 16], Route6, { MAX_ROUTES6_LPM as usize }> = LpmTrie::new();

/// The exit node's own addresses: their packets belong to the kernel.
#[btf_map]
pub(crate) static LOCAL6: HashMap<[u8; 16], u32, { MAX_LOCAL6 as usize }> = HashMap::new();

/// Egress interfaces, keyed by ifindex, for bpf_redirect_map.
#[btf_map]
pub(crate) static TX_PORTS: DevMapHash<{ MAX_TX_PORTS as usize }> = DevMapHash::new();

/// Packets and bytes per verdict reason, per CPU.
#[btf_map]
static VERDICT_STATS: PerCpuArray<Counters, { VERDICT_COUNT as usize }> = PerCpuArray::new();

/// Packets and bytes forwarded per route (Route6::route_id), per CPU.
#[btf_map]
static ROUTE_STATS: PerCpuArray<Counters, { MAX_ROUTE_IDS as usize }> = PerCpuArray::new();

#[xdp]
pub fn xdp_fwd6(ctx: XdpContext) -> u32 {
    // IPv4 belongs to the translator when one is configured.
    if net::ether_type(&ctx) == Some(net::ETH_P_IP) {
        if let Some(action) = crate::nat4::xdp_nat4(&ctx) {
            return firewall(&ctx, action);
        }
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, action) = match try_fwd6(&ctx) {
        Ok(forwarded) => forwarded,
        Err(reason) => (reason, xdp_action::XDP_PASS),
    };
    if firewall(&ctx, action) == xdp_action::XDP_DROP && action == xdp_action::XDP_PASS {
        return xdp_action::XDP_DROP;
    }
    count(&VERDICT_STATS, verdict as u32, len);
    action
}

/// What the kernel would get passes the gateway firewall first (the only way to the
/// gateway's own ports); forwarded frames never reach it.
#[inline(always)]
fn firewall(ctx: &XdpContext, action: u32) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    if action == xdp_action::XDP_PASS && crate::firewall::blocks(ctx, EthHdr::LEN, ingress, false) {
        xdp_action::XDP_DROP
    } else {
        action
    }
}

/// Decides one frame. `Err(reason)` means "give it to the kernel", counted under `reason`.
#[inline(always)]
fn try_fwd6(ctx: &XdpContext) -> Result<(Verdict, u32), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Verdict::PassMalformed)?;
    // SAFETY: ptr_at checked that the whole header lies inside the packet.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        net::ETH_P_IPV6 => {}
        net::ETH_P_8021Q | net::ETH_P_8021AD => return Err(Verdict::PassVlan),
        _ => return Err(Verdict::PassNotIpv6),
    }
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Verdict::PassMalformed)?;
    // SAFETY: as above, for the IPv6 header.
    let (version, payload_len, next_header, hop_limit, dst) = unsafe {
        (
            (*ip).version_tc_flow[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_header,
            (*ip).hop_limit,
            (*ip).dst,
        )
    };
    // A frame shorter than its IPv6 header says is truncated: never forward it. (Longer is
    // fine: Ethernet pads short frames.)
    let frame_len = ctx.data_end() - ctx.data();
    if version != 6 || EthHdr::LEN + Ipv6Hdr::LEN + payload_len > frame_len {
        return Err(Verdict::PassMalformed);
    }
    check_destination(&dst)?;
    check_next_header(ctx, next_header)?;
    if hop_limit <= 1 {
        return Err(Verdict::PassHopLimit);
    }
    let route = lookup(&dst)?;
    if route.flags & ROUTE_NEIGH_KNOWN == 0 {
        return Err(Verdict::PassNoNeighbour);
    }
    if route.ifindex == ctx.ingress_ifindex() as u32 {
        return Err(Verdict::PassHairpin);
    }
    // SAFETY: both headers were bounds-checked above.
    unsafe {
        (*eth).dst = route.dst_mac;
        (*eth).src = route.src_mac;
        (*ip).hop_limit = hop_limit - 1;
    }
    match TX_PORTS.redirect(route.ifindex, 0) {
        Ok(action) => {
            count(
                &ROUTE_STATS,
                route.route_id,
                (ctx.data_end() - ctx.data()) as u64,
            );
            Ok((Verdict::Forwarded, action))
        }
        // The agent adds an egress port before any route through it, so this is a race with
        // a removal; the frame is already rewritten, so the kernel would not accept it.
        Err(_) => Ok((Verdict::PassRedirectFailed, xdp_action::XDP_DROP)),
    }
}

/// Destinations the fast path never forwards.
#[inline(always)]
fn check_destination(dst: &[u8; 16]) -> Result<(), Verdict> {
    if dst[0] == 0xff {
        return Err(Verdict::PassMulticast);
    }
    if dst[0] == 0xfe && dst[1] & 0xc0 == 0x80 {
        return Err(Verdict::PassLinkLocal);
    }
    Ok(())
}

/// Hop-by-hop options must be seen by the kernel; so must ICMPv6 other than echo.
#[inline(always)]
fn check_next_header(ctx: &XdpContext, next_header: u8) -> Result<(), Verdict> {
    match next_header {
        net::IPPROTO_HOPOPTS => Err(Verdict::PassHopByHop),
        net::IPPROTO_ICMPV6 => {
            let icmp_type: *const u8 =
                ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Verdict::PassMalformed)?;
            // SAFETY: ptr_at checked the byte is inside the packet.
            match unsafe { *icmp_type } {
                net::ICMPV6_ECHO_REQUEST | net::ICMPV6_ECHO_REPLY => Ok(()),
                _ => Err(Verdict::PassIcmpControl),
            }
        }
        _ => Ok(()),
    }
}

/// Exact /64 first (one hash lookup: the common case), then the host's own addresses, then
/// the short LPM routes.
#[inline(always)]
fn lookup(dst: &[u8; 16]) -> Result<Route6, Verdict> {
    let prefix: Prefix64 = [
        dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], dst[6], dst[7],
    ];
    // SAFETY: the value is copied out at once; no reference outlives the lookup.
    if let Some(route) = unsafe { ROUTES6.get(prefix) } {
        return Ok(*route);
    }
    // SAFETY: as above; only presence matters.
    if unsafe { LOCAL6.get(dst) }.is_some() {
        return Err(Verdict::PassLocal);
    }
    match ROUTES6_LPM.get(&Key::new(128, *dst)) {
        Some(route) => Ok(*route),
        None => Err(Verdict::PassNoRoute),
    }
}

/// Adds one packet of `len` bytes to slot `index` of a per-CPU counter array.
#[inline(always)]
pub(crate) fn count<const N: usize>(map: &PerCpuArray<Counters, N>, index: u32, len: u64) {
    if let Some(counters) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; programs on one CPU do not run concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += len;
        }
    }
}
