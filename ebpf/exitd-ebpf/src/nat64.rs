//! Stateful NAT64 (RFC 6146) for Parker nodes in 464XLAT mode, as a TC classifier on the
//! node-facing link (the WireGuard interface: `tc_nat64_l3`; links with an Ethernet header:
//! `tc_nat64_eth`). Replies are translated back by the forwarder's XDP program on the uplink,
//! which finds them in CT4 like any NAT44 reply. See exitd_common::nat64.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use exitd_common::{
    nat4::CtEntry,
    nat64::{
        Ct6Key, FwPort, Nat64Config, XlatSource, DEFAULT_CT6_ENTRIES, FW_STATS_COUNT, MAX_FW_ALLOW,
        MAX_FW_LINKS, MAX_FW_PORTS, MAX_XLAT6, NAT64_VERDICT_COUNT,
    },
    Counters, Prefix64,
};

/// Prefix, flags.
#[btf_map]
pub(crate) static NAT64_CONFIG: Array<Nat64Config, 1> = Array::new();

/// Nodes' `xlat_range6` /64s: the only sources translated.
#[btf_map]
static XLAT6: HashMap<Prefix64, XlatSource, { MAX_XLAT6 as usize }> = HashMap::new();

/// NAT64 connections keyed by the node's packets; the reply side is in CT4.
#[btf_map]
pub(crate) static CT6: LruHashMap<Ct6Key, CtEntry, { DEFAULT_CT6_ENTRIES as usize }> =
    LruHashMap::new();

/// Packets and bytes per NAT64 verdict, per CPU.
#[btf_map]
pub(crate) static NAT64_STATS: PerCpuArray<Counters, { NAT64_VERDICT_COUNT as usize }> =
    PerCpuArray::new();

/// The gateway's control ports (protocol, port): closed to nodes and tenants.
#[btf_map]
pub(crate) static FW_PORTS: HashMap<FwPort, u32, { MAX_FW_PORTS as usize }> = HashMap::new();

/// Links whose traffic the firewall checks (node- and tenant-facing), by ifindex.
#[btf_map]
pub(crate) static FW_LINKS: HashMap<u32, u32, { MAX_FW_LINKS as usize }> = HashMap::new();

/// Sources that may reach the control ports anyway.
#[btf_map]
pub(crate) static FW_ALLOW4: LpmTrie<[u8; 4], u32, { MAX_FW_ALLOW as usize }> = LpmTrie::new();
#[btf_map]
pub(crate) static FW_ALLOW6: LpmTrie<[u8; 16], u32, { MAX_FW_ALLOW as usize }> = LpmTrie::new();

/// Dropped packets per family (FW_DROP4, FW_DROP6), per CPU.
#[btf_map]
pub(crate) static FW_STATS: PerCpuArray<Counters, { FW_STATS_COUNT as usize }> = PerCpuArray::new();

#[classifier]
pub fn tc_nat64_l3(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[classifier]
pub fn tc_nat64_eth(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}
