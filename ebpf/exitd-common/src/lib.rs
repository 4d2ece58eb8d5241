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
    // SAFETY: as above: #[repr(C)] plain data without padding (24 bytes, 4-aligned).
    unsafe impl aya::Pod for super::Route6 {}
    // SAFETY: the NAT types below are #[repr(C)] plain data with explicit padding fields.
    unsafe impl aya::Pod for super::nat4::Route4 {}
    unsafe impl aya::Pod for super::nat4::Nat4Config {}
    unsafe impl aya::Pod for super::nat4::CtKey {}
    unsafe impl aya::Pod for super::nat4::CtEntry {}
    unsafe impl aya::Pod for super::nat4::PortFwdKey {}
    unsafe impl aya::Pod for super::nat4::PortFwdTarget {}
    unsafe impl aya::Pod for super::nat64::Nat64Config {}
    unsafe impl aya::Pod for super::nat64::XlatSource {}
    unsafe impl aya::Pod for super::nat64::Ct6Key {}
    unsafe impl aya::Pod for super::nat64::FwPort {}
}

pub mod nat4;
pub mod nat64;

/// Map names of the IPv6 forwarder (also their pin file names).
pub const ROUTES6_MAP: &str = "ROUTES6";
pub const ROUTES6_LPM_MAP: &str = "ROUTES6_LPM";
pub const LOCAL6_MAP: &str = "LOCAL6";
pub const TX_PORTS_MAP: &str = "TX_PORTS";
pub const VERDICT_STATS_MAP: &str = "VERDICT_STATS";
pub const ROUTE_STATS_MAP: &str = "ROUTE_STATS";

/// Exact /64 routes the forwarder holds. The seed budgets 4,096 per exit node; the map has
/// room for a whole /48 (65,536) plus headroom so a takeover of another node's /52 fits.
pub const MAX_ROUTES6: u32 = 131_072;
/// Shorter routes (the default route toward the upstream router and a few others).
pub const MAX_ROUTES6_LPM: u32 = 256;
/// Addresses of the exit node itself, which the kernel must receive.
pub const MAX_LOCAL6: u32 = 1024;
/// Egress interfaces the forwarder may redirect to.
pub const MAX_TX_PORTS: u32 = 4096;
/// Per-route counter slots (route ids are indexes into ROUTE_STATS).
pub const MAX_ROUTE_IDS: u32 = MAX_ROUTES6 + MAX_ROUTES6_LPM;

/// The first 64 bits of an IPv6 address, in network byte order: the key of a /64 route.
pub type Prefix64 = [u8; 8];

/// Where a route sends packets: the egress interface, the Ethernet addresses to write and
/// the route's counter slot. `flags` says whether the next hop's MAC is known yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route6 {
    /// Egress ifindex (also the TX_PORTS key to redirect through).
    pub ifindex: u32,
    /// Index into ROUTE_STATS.
    pub route_id: u32,
    /// Next hop's MAC (destination of the rewritten frame).
    pub dst_mac: [u8; 6],
    /// Egress interface's MAC (source of the rewritten frame).
    pub src_mac: [u8; 6],
    /// `ROUTE_NEIGH_KNOWN` when `dst_mac` is valid.
    pub flags: u32,
}

/// `Route6::flags`: the next hop's MAC is resolved; without it packets go to the kernel,
/// which resolves the neighbour, after which the agent fills the MAC in.
pub const ROUTE_NEIGH_KNOWN: u32 = 1;

/// Why the forwarder returned what it did: indexes into VERDICT_STATS.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Redirected to the egress interface by XDP.
    Forwarded = 0,
    /// Not IPv6 (IPv4, ARP, …): the kernel handles it.
    PassNotIpv6 = 1,
    /// VLAN-tagged frame: the kernel's VLAN device handles it.
    PassVlan = 2,
    /// Truncated or invalid headers.
    PassMalformed = 3,
    /// Multicast destination.
    PassMulticast = 4,
    /// Link-local destination.
    PassLinkLocal = 5,
    /// Neighbour discovery or other ICMPv6 control messages.
    PassIcmpControl = 6,
    /// Hop-by-hop options, which every router on the path must process.
    PassHopByHop = 7,
    /// Hop limit ≤ 1: the kernel sends Time Exceeded.
    PassHopLimit = 8,
    /// Addressed to the exit node itself.
    PassLocal = 9,
    /// No route in the maps.
    PassNoRoute = 10,
    /// Route known, next hop's MAC not yet.
    PassNoNeighbour = 11,
    /// Route points back out the ingress interface.
    PassHairpin = 12,
    /// The redirect was refused (egress missing from TX_PORTS).
    PassRedirectFailed = 13,
}

/// Number of `Verdict` values (size of VERDICT_STATS).
pub const VERDICT_COUNT: u32 = 14;

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Forwarded,
        Verdict::PassNotIpv6,
        Verdict::PassVlan,
        Verdict::PassMalformed,
        Verdict::PassMulticast,
        Verdict::PassLinkLocal,
        Verdict::PassIcmpControl,
        Verdict::PassHopByHop,
        Verdict::PassHopLimit,
        Verdict::PassLocal,
        Verdict::PassNoRoute,
        Verdict::PassNoNeighbour,
        Verdict::PassHairpin,
        Verdict::PassRedirectFailed,
    ];

    /// Short name for metrics and `exitd dataplane stats`.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::PassNotIpv6 => "pass_not_ipv6",
            Verdict::PassVlan => "pass_vlan",
            Verdict::PassMalformed => "pass_malformed",
            Verdict::PassMulticast => "pass_multicast",
            Verdict::PassLinkLocal => "pass_link_local",
            Verdict::PassIcmpControl => "pass_icmp_control",
            Verdict::PassHopByHop => "pass_hop_by_hop",
            Verdict::PassHopLimit => "pass_hop_limit",
            Verdict::PassLocal => "pass_local",
            Verdict::PassNoRoute => "pass_no_route",
            Verdict::PassNoNeighbour => "pass_no_neighbour",
            Verdict::PassHairpin => "pass_hairpin",
            Verdict::PassRedirectFailed => "pass_redirect_failed",
        }
    }
}
