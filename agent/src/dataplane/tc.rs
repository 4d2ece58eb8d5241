//! Attaching the NAT64 classifier to TC ingress of node-facing links (the concentrator's
//! WireGuard interface). The program comes from the same object as the XDP programs and
//! loads with the same pinned maps: the translator writes a connection into CT4/CT6 on the
//! node side and `xdp_fwd6` finds its replies there on the uplink.
//!
//! The attachment is a TCX link (kernel ≥ 6.6) pinned next to the XDP links, so a restarted
//! exitd finds it in place and translation never stops; removing the pin detaches it.

use super::{
    AttachOutcome, Attachment, PinDir,
    attach::{attach_pinned, load_object, pinned_links, unpin},
};
use anyhow::{Context, Result};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};
use exitd_common::nat64::{TC_NAT64_ETH, TC_NAT64_L3};

/// The TC attachments pinned in `pins`, sorted by interface name.
pub fn tc_attachments(pins: &PinDir) -> Result<Vec<Attachment>> {
    pinned_links(pins, "tc_")
}

/// Attaches the NAT64 classifier to TC ingress of each of `ifnames` in the calling thread's
/// network namespace and pins the links: `tc_nat64_l3` where packets start with the IP
/// header (WireGuard, TUN), `tc_nat64_eth` where they start with an Ethernet header.
/// Interfaces that have their program already are left alone. `max_connections` sizes the
/// connection tracking when this call creates the maps.
pub fn attach_nat64_all(
    pins: &PinDir,
    ifnames: &[String],
    max_connections: Option<u32>,
) -> Result<Vec<AttachOutcome>> {
    let mut ebpf = None;
    let mut outcomes = Vec::with_capacity(ifnames.len());
    for ifname in ifnames {
        let name = program_for(ifname)?;
        let one = std::slice::from_ref(ifname);
        outcomes.extend(attach_pinned(pins, one, "tc_", name, |ifname, ifindex| {
            if ebpf.is_none() {
                ebpf = Some(load_with_tails(pins, max_connections)?);
            }
            let ebpf = ebpf.as_mut().context("loaded above")?;
            super::tails::load(ebpf, name)?;
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()?;
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            let link_id = program
                .attach_with_options(ifname, TcAttachType::Ingress, options)
                .with_context(|| {
                    format!(
                        "cannot attach {name} to TC ingress of {ifname} (TCX needs Linux ≥ 6.6)"
                    )
                })?;
            tracing::info!(ifname, ifindex, "attached {name} on TC ingress");
            FdLink::try_from(program.take_link(link_id)?)
                .context("the kernel attached TC without a bpf_link: it cannot be pinned")
        })?);
    }
    Ok(outcomes)
}

/// Removes the NAT64 links of interfaces not in `keep` and those of interfaces that are
/// gone; returns their interface names.
pub fn detach_nat64_except(pins: &PinDir, keep: &[String]) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for link in tc_attachments(pins)? {
        if !link.live || !keep.contains(&link.ifname) {
            unpin(&link)?;
            gone.push(link.ifname);
        }
    }
    Ok(gone)
}

/// The classifier for `ifname`: the two differ only in where the IP header starts.
fn program_for(ifname: &str) -> Result<&'static str> {
    Ok(if crate::iface::has_ethernet_header(ifname)? {
        TC_NAT64_ETH
    } else {
        TC_NAT64_L3
    })
}

/// The object with the pinned maps, its tail-called programs loaded and in their arrays
/// (the ICMPv6 error translations are tail calls of the classifiers).
fn load_with_tails(pins: &PinDir, max_connections: Option<u32>) -> Result<aya::Ebpf> {
    let mut ebpf = load_object(pins, max_connections)?;
    super::tails::fill(&mut ebpf)?;
    Ok(ebpf)
}
