//! The eBPF data plane: loading the embedded object, attaching programs, pinning, counters.
//!
//! Maps and program links are pinned under a directory of the BPF filesystem
//! (`/sys/fs/bpf/exitd` by default). A pinned link keeps its program attached after exitd
//! exits, so restarting the agent never interrupts forwarding; `detach` removes the pin and
//! with it the attachment.

mod attach;
pub mod cli;
mod counters;
pub mod fwd6;
pub mod gateway;
pub mod metrics;
pub mod nat4;
pub mod nat_cli;
mod pins;
pub mod tails;

pub use attach::{
    AttachOutcome, Attachment, XdpModeArg, XdpProgram, attach_xdp, attach_xdp_all,
    attach_xdp_all_sized, attachments, detach_all, detach_xdp,
};
pub use counters::{IfaceCounters, read_iface_counters};
pub use pins::PinDir;

/// The eBPF object built from `ebpf/exitd-ebpf`, embedded so the binary is self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exitd-ebpf.o"));

/// Name of the XDP program that counts and passes every frame.
pub const XDP_COUNT: &str = "xdp_count";
/// Name of the XDP program that forwards IPv6 per /64.
pub const XDP_FWD6: &str = "xdp_fwd6";
