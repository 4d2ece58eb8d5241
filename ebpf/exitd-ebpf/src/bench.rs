//! Programs for measuring the data plane (`cargo xtask bench dataplane`) and for the far
//! ends of veths, which only accept redirected frames when they run an XDP program.

use crate::counter::count_frame;
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::Array,
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// Size of the frame the generator writes.
pub const GEN_FRAME_LEN: usize = 64;

/// The generator's frame template (index 0).
#[btf_map]
static GEN_TEMPLATE: Array<[u8; GEN_FRAME_LEN], 1> = Array::new();

/// Passes everything: the cheapest program, for a veth peer and as the measuring baseline.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Counts and drops: a traffic sink that measures what arrives.
#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    count_frame(&ctx);
    xdp_action::XDP_DROP
}

/// Frames `xdp_gen_flows` has sent (index 0); the generator runs on one thread at a time.
#[btf_map]
static GEN_SEQ: Array<u32, 1> = Array::new();

/// Traffic generator for BPF_PROG_RUN in live-frames mode: rewrites the frame from the
/// template (live-frame pages are recycled without being reset) and transmits it.
#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    match write_template(&ctx) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// Like `xdp_gen` for an IPv4/UDP template, but every frame is a new flow (for connection
/// rates): the UDP ports (bytes 34..38) carry a running number and the UDP checksum, optional
/// in IPv4, is cleared.
#[xdp]
pub fn xdp_gen_flows(ctx: XdpContext) -> u32 {
    let (Some(start), Some(seq)) = (write_template(&ctx), GEN_SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: write_template checked GEN_FRAME_LEN (64) bytes from `start`; `seq` points
    // into the map's value.
    unsafe {
        let n = (*seq).wrapping_add(1);
        *seq = n;
        core::ptr::write_unaligned((start + 34) as *mut [u8; 4], n.to_be_bytes());
        core::ptr::write_unaligned((start + 40) as *mut [u8; 2], [0, 0]);
    }
    xdp_action::XDP_TX
}

/// Copies the template over the frame; returns where the frame starts.
#[inline(always)]
fn write_template(ctx: &XdpContext) -> Option<usize> {
    let start = ctx.data();
    if start + GEN_FRAME_LEN > ctx.data_end() {
        return None;
    }
    let template = GEN_TEMPLATE.get(0)?;
    // SAFETY: the bounds check above covers GEN_FRAME_LEN bytes from `start`.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; GEN_FRAME_LEN], *template) };
    Some(start)
}
