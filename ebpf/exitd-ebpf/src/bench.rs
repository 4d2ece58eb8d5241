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

/// Traffic generator for BPF_PROG_RUN in live-frames mode: rewrites the frame from the
/// template (live-frame pages are recycled without being reset) and transmits it.
#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + GEN_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(template) = GEN_TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the bounds check above covers GEN_FRAME_LEN bytes from `start`.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; GEN_FRAME_LEN], *template) };
    xdp_action::XDP_TX
}
