//! Tail-called programs. The translations to IPv6 (replies and ICMPv4 errors of NAT64
//! connections, `xdp_nat64_in`) and of nodes' ICMPv6 errors (`tc_nat64_icmp_*`) run as
//! programs of their own, reached by a tail call from `xdp_fwd6` and `tc_nat64_*`: the
//! BPF stack (512 bytes per call chain) has no room for them inside the callers.
//!
//! The program arrays are pinned with the other maps: the kernel empties a program array
//! when its last user reference goes away, and the attached programs must keep reaching
//! their tails after exitd exits.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{ProgramFd, SchedClassifier, Xdp},
};
use exitd_common::nat64::{
    TC_NAT44_ETH, TC_NAT44_L3, TC_NAT64_ICMP_ETH, TC_NAT64_ICMP_L3, TC_TAIL_ICMP_ETH,
    TC_TAIL_ICMP_L3, TC_TAIL_NAT44_ETH, TC_TAIL_NAT44_L3, TC_TAILS_MAP, XDP_NAT64_IN,
    XDP_TAIL_NAT64_IN, XDP_TAILS_MAP,
};

/// The program arrays (pinned with the other maps).
pub const TAIL_MAPS: [&str; 2] = [XDP_TAILS_MAP, TC_TAILS_MAP];

/// Loads the tail-called programs of `ebpf` (the object the callers were loaded from) and
/// puts them into their program arrays. Idempotent: programs already loaded are reused,
/// slots are overwritten.
pub fn fill(ebpf: &mut Ebpf) -> Result<()> {
    let xdp_in = load_xdp(ebpf, XDP_NAT64_IN)?;
    let icmp_l3 = load_classifier(ebpf, TC_NAT64_ICMP_L3)?;
    let icmp_eth = load_classifier(ebpf, TC_NAT64_ICMP_ETH)?;
    let nat44_l3 = load_classifier(ebpf, TC_NAT44_L3)?;
    let nat44_eth = load_classifier(ebpf, TC_NAT44_ETH)?;
    set(ebpf, XDP_TAILS_MAP, &[(XDP_TAIL_NAT64_IN, &xdp_in)])?;
    set(
        ebpf,
        TC_TAILS_MAP,
        &[
            (TC_TAIL_ICMP_L3, &icmp_l3),
            (TC_TAIL_ICMP_ETH, &icmp_eth),
            (TC_TAIL_NAT44_L3, &nat44_l3),
            (TC_TAIL_NAT44_ETH, &nat44_eth),
        ],
    )
}

fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<ProgramFd> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .with_context(|| format!("the kernel refused to load {name}"))?;
    }
    Ok(program.fd()?.try_clone()?)
}

fn load_classifier(ebpf: &mut Ebpf, name: &str) -> Result<ProgramFd> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .with_context(|| format!("the kernel refused to load {name}"))?;
    }
    Ok(program.fd()?.try_clone()?)
}

fn set(ebpf: &mut Ebpf, map: &str, slots: &[(u32, &ProgramFd)]) -> Result<()> {
    let mut array: ProgramArray<_> = ebpf
        .map_mut(map)
        .with_context(|| format!("the eBPF object has no map {map}"))?
        .try_into()?;
    for (index, fd) in slots {
        array
            .set(*index, fd, 0)
            .with_context(|| format!("cannot set slot {index} of {map}"))?;
    }
    Ok(())
}
