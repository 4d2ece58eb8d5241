//! The gateway's own firewall: packets from nodes and tenants to the gateway's control
//! ports (etcd, the admin API, …) are dropped unless their source is allowed.
//!
//! It is checked only on the slow path — for packets the programs hand to the kernel — so
//! forwarding and translation pay nothing for it: only the kernel delivers packets to the
//! gateway itself, so only those can reach a control port.

use crate::{
    fwd6::{count, LOCAL6},
    nat4::LOCAL4,
    nat64::{FW_ALLOW4, FW_ALLOW6, FW_LINKS, FW_PORTS, FW_STATS},
    net::{self, ptr_at, Ipv4Hdr, Ipv6Hdr, Packet},
};
use aya_ebpf::btf_maps::lpm_trie::Key;
use exitd_common::nat64::{FwPort, FW_DROP4, FW_DROP6};

/// True when the packet at `l3` must be dropped (and counts it). `node_link`: the caller
/// runs on a node-facing link, where every packet is checked; elsewhere only packets from
/// links listed in FW_LINKS are.
#[inline(never)]
pub fn blocks<C: Packet>(ctx: &C, l3: usize, ingress: u32, node_link: bool) -> bool {
    // SAFETY: only presence matters.
    if !node_link && unsafe { FW_LINKS.get(ingress) }.is_none() {
        return false;
    }
    // Any IP packet has at least an IPv4 header's worth of bytes; checking 20 bytes (not
    // one) keeps the bounds check in a form the verifier follows.
    let Some(first) = ptr_at::<Ipv4Hdr, C>(ctx, l3) else {
        return false;
    };
    // SAFETY: ptr_at checked the header is inside the packet.
    let (blocked, slot) = match unsafe { (*first).version_ihl } >> 4 {
        4 => (blocks4(ctx, l3), FW_DROP4),
        6 => (blocks6(ctx, l3), FW_DROP6),
        _ => (false, 0),
    };
    if blocked {
        count(&FW_STATS, slot, (ctx.data_end() - ctx.data()) as u64);
    }
    blocked
}

#[inline(always)]
fn blocks4<C: Packet>(ctx: &C, l3: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv4Hdr, C>(ctx, l3) else {
        return false;
    };
    // SAFETY: ptr_at checked the header.
    let (vihl, proto, frag, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).protocol,
            u16::from_be_bytes((*ip).frag_off),
            (*ip).src,
            (*ip).dst,
        )
    };
    // SAFETY: only presence matters.
    if unsafe { LOCAL4.get(dst) }.is_none() {
        return false;
    }
    // Later fragments carry no ports; without the first one they never reassemble.
    if frag & 0x1fff != 0 || (proto != net::IPPROTO_TCP && proto != net::IPPROTO_UDP) {
        return false;
    }
    let l4 = l3 + ((vihl & 0x0f) as usize) * 4;
    let Some(dport) = dport_at(ctx, l4) else {
        return false;
    };
    closed(proto, dport) && FW_ALLOW4.get(&Key::new(32, src)).is_none()
}

#[inline(always)]
fn blocks6<C: Packet>(ctx: &C, l3: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv6Hdr, C>(ctx, l3) else {
        return false;
    };
    // SAFETY: ptr_at checked the header.
    let (nh, src, dst) = unsafe { ((*ip).next_header, (*ip).src, (*ip).dst) };
    let link_local = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
    // SAFETY: only presence matters.
    if !link_local && unsafe { LOCAL6.get(dst) }.is_none() {
        return false;
    }
    let allowed = FW_ALLOW6.get(&Key::new(128, src)).is_some();
    match nh {
        net::IPPROTO_TCP | net::IPPROTO_UDP => match dport_at(ctx, l3 + Ipv6Hdr::LEN) {
            Some(dport) => closed(nh, dport) && !allowed,
            None => false,
        },
        // Extension headers could hide a control port behind them: when any port is
        // closed, local packets with them from nodes and tenants are dropped.
        net::IPPROTO_HOPOPTS | 43 | net::IPPROTO_FRAGMENT | 60 => any_closed() && !allowed,
        _ => false,
    }
}

/// The destination port of a TCP or UDP header at `l4`.
#[inline(always)]
fn dport_at<C: Packet>(ctx: &C, l4: usize) -> Option<u16> {
    let ports = ptr_at::<[u16; 2], C>(ctx, l4)?;
    // SAFETY: ptr_at checked both ports are inside the packet.
    Some(unsafe { (*ports)[1] })
}

#[inline(always)]
fn closed(proto: u8, port: u16) -> bool {
    let key = FwPort {
        proto,
        pad: 0,
        port,
    };
    // SAFETY: only presence matters.
    unsafe { FW_PORTS.get(key) }.is_some()
}

/// Whether the firewall is on: the agent writes the marker key (protocol 0, port 0) into
/// FW_PORTS whenever it closes any port, so one lookup answers it.
#[inline(always)]
fn any_closed() -> bool {
    closed(0, 0)
}
