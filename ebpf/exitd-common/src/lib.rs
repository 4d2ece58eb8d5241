//! Types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are written by one side and
//! read by the other through BPF maps. Keep field order and padding explicit; a change here
//! changes the map layout, so pinned maps from an older agent must be recreated.
#![no_std]

/// Directory under the BPF filesystem where exitd pins its maps and program links.
pub const PIN_ROOT: &str = "/sys/fs/bpf/exitd";

/// Name of the per-interface packet counter map (also its pin file name).
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";

/// Maximum number of interfaces the counter map tracks at once.
pub const MAX_IFACES: u32 = 1024;

/// Packets and bytes seen by one program on one interface, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// Sum of two counters (used to fold the per-CPU values); wraps like the kernel's counters.
impl core::ops::Add for Counters {
    type Output = Counters;

    fn add(self, other: Counters) -> Counters {
        Counters {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Counters` is `#[repr(C)]`, has no padding and every bit pattern is valid.
    unsafe impl aya::Pod for super::Counters {}
}
