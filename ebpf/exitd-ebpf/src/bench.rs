//! Programs for measuring the data plane (`cargo xtask bench dataplane`) and for the far
//! ends of veths, which only accept redirected frames when they run an XDP program.

use crate::counter::count_frame;
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    btf_maps::Array,
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
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

/// The TC counterpart of `xdp_pass`: the measuring baseline for TC classifiers.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
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

/// Like `xdp_gen_flows` for an Ethernet + IPv6/UDP template: the running number goes into
/// the UDP ports (bytes 54..58). IPv6 requires the UDP checksum, so the checksum (bytes
/// 60..62) is adjusted for the new ports (RFC 1624) instead of cleared.
#[xdp]
pub fn xdp_gen_flows6(ctx: XdpContext) -> u32 {
    let (Some(start), Some(seq)) = (write_template(&ctx), GEN_SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: write_template checked GEN_FRAME_LEN (64) bytes from `start`; `seq` points
    // into the map's value.
    unsafe {
        let n = (*seq).wrapping_add(1);
        *seq = n;
        let ports = (start + 54) as *mut [u8; 4];
        let csum = (start + 60) as *mut [u8; 2];
        let old = core::ptr::read_unaligned(ports);
        let new = n.to_be_bytes();
        let fixed = adjust_checksum(core::ptr::read_unaligned(csum), old, new);
        core::ptr::write_unaligned(ports, new);
        core::ptr::write_unaligned(csum, fixed);
    }
    xdp_action::XDP_TX
}

/// A UDP checksum (network order) after four bytes of the covered data changed from `old`
/// to `new`: HC' = ~(~HC + ~m + m') per 16-bit word (RFC 1624, eqn. 3).
#[inline(always)]
fn adjust_checksum(csum: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let word = |b: [u8; 4], i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut sum = u32::from(!u16::from_be_bytes(csum));
    sum += (!word(old, 0) & 0xffff) + (!word(old, 2) & 0xffff) + word(new, 0) + word(new, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    match !(sum as u16) {
        // 0 means "no checksum" in UDP; its ones-complement twin stands in.
        0 => [0xff, 0xff],
        c => c.to_be_bytes(),
    }
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
