//! `xdp_count`: passes every frame and counts packets and bytes per ingress interface and CPU.
//!
//! It is the first program an operator can attach to see that the data path is wired; the
//! forwarding programs keep using the same counter map.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    btf_maps::PerCpuHashMap,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use exitd_common::{Counters, MAX_IFACES};

/// Per-CPU packet and byte counters keyed by ingress ifindex.
#[btf_map]
static IFACE_COUNTERS: PerCpuHashMap<u32, Counters, { MAX_IFACES as usize }> = PerCpuHashMap::new();

#[xdp]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    count_frame(&ctx);
    xdp_action::XDP_PASS
}

/// Adds one frame of this context's length to its interface's counter on this CPU.
#[inline(always)]
pub fn count_frame(ctx: &XdpContext) {
    let ifindex = ctx.ingress_ifindex() as u32;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    if let Some(counters) = IFACE_COUNTERS.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value of this CPU: no other program run writes it concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
        return;
    }
    let first = Counters { packets: 1, bytes };
    // NOEXIST: when another CPU created the entry in the meantime, add to it instead of
    // overwriting it. The map being full is not an error worth failing the packet for.
    if IFACE_COUNTERS
        .insert(ifindex, first, BPF_NOEXIST as u64)
        .is_err()
    {
        if let Some(counters) = IFACE_COUNTERS.get_ptr_mut(ifindex) {
            // SAFETY: as above.
            unsafe {
                (*counters).packets += 1;
                (*counters).bytes += bytes;
            }
        }
    }
}
