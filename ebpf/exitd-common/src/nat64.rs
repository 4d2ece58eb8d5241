//! Stateful NAT64 of a Parker gateway (RFC 6146 behaviour, RFC 6052 addresses): nodes in
//! 464XLAT mode send their clients' IPv4 as IPv6 from their `xlat_range6` to
//! `<prefix>::<IPv4>`; the gateway translates it to its public IPv4 and back.
//!
//! The translator shares the IPv4 NAT's public address, port range and connection tracking:
//! every NAT64 connection claims its public port with the same CT4 "reply" entry a NAT44
//! connection does, so one public IPv4 serves both without collisions. The IPv6 side of a
//! connection lives in CT6 (keyed by the packet from the node), the IPv4 side in CT4 (keyed
//! by the reply, `CtEntry::flags` has `CT_NAT64` and `CtEntry::addr6` holds the node's address).
//!
//! Also here: the gateway firewall (nodes and tenants may not reach the gateway's control
//! ports) shared by the forwarder, the IPv4 NAT and the NAT64 program.

/// Map names (also their pin file names).
pub const NAT64_CONFIG_MAP: &str = "NAT64_CONFIG";
pub const XLAT6_MAP: &str = "XLAT6";
pub const CT6_MAP: &str = "CT6";
pub const NAT64_STATS_MAP: &str = "NAT64_STATS";
pub const FW_PORTS_MAP: &str = "FW_PORTS";
pub const FW_LINKS_MAP: &str = "FW_LINKS";
pub const FW_ALLOW4_MAP: &str = "FW_ALLOW4";
pub const FW_ALLOW6_MAP: &str = "FW_ALLOW6";
pub const FW_STATS_MAP: &str = "FW_STATS";

/// Tail-call program arrays: the ICMP error translations run as programs of their own
/// (each program has 512 bytes of stack; inlined they would not fit beside the rest).
pub const XDP_TAILS_MAP: &str = "XDP_TAILS";
pub const TC_TAILS_MAP: &str = "TC_TAILS";
/// XDP_TAILS slot of `xdp_nat64_in` (replies and ICMPv4 errors of NAT64 connections).
pub const XDP_TAIL_NAT64_IN: u32 = 0;
/// TC_TAILS slots of the ICMPv6 error translators.
pub const TC_TAIL_ICMP_L3: u32 = 0;
pub const TC_TAIL_ICMP_ETH: u32 = 1;
/// TC_TAILS slots of the NAT44 for nodes' IPv4 ranges.
pub const TC_TAIL_NAT44_L3: u32 = 2;
pub const TC_TAIL_NAT44_ETH: u32 = 3;
pub const TC_NAT44_L3: &str = "tc_nat44_l3";
pub const TC_NAT44_ETH: &str = "tc_nat44_eth";
pub const XDP_NAT64_IN: &str = "xdp_nat64_in";
pub const TC_NAT64_ICMP_L3: &str = "tc_nat64_icmp_l3";
pub const TC_NAT64_ICMP_ETH: &str = "tc_nat64_icmp_eth";

/// Program names: TC classifiers for node-facing links without (`_l3`, WireGuard) and with
/// (`_eth`) an Ethernet header.
pub const TC_NAT64_L3: &str = "tc_nat64_l3";
pub const TC_NAT64_ETH: &str = "tc_nat64_eth";

/// `xlat_range6` /64s of the nodes (broker-handed prefixes; the second /64 of each /63).
pub const MAX_XLAT6: u32 = 131_072;
/// Default CT6 entries in the object (one per NAT64 connection); the agent sizes it like CT4.
pub const DEFAULT_CT6_ENTRIES: u32 = 32_768;
pub const MAX_FW_PORTS: u32 = 256;
pub const MAX_FW_LINKS: u32 = 4096;
pub const MAX_FW_ALLOW: u32 = 256;

/// `Nat64Config::flags`: translation on.
pub const NAT64_ENABLED: u32 = 1;
/// `Nat64Config::flags`: the prefix is the well-known 64:ff9b::/96, which RFC 6052 §3.1
/// forbids for non-global IPv4: such destinations are dropped.
pub const NAT64_WELL_KNOWN: u32 = 2;

/// The single entry of NAT64_CONFIG.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat64Config {
    /// The NAT64 prefix, bytes past its length zero.
    pub prefix: [u8; 16],
    /// Where the four IPv4 bytes sit in an address of the prefix (RFC 6052 §2.2: the u-octet,
    /// byte 8, is skipped): e.g. `[12, 13, 14, 15]` for a /96.
    pub v4_at: [u8; 4],
    pub prefix_len: u32,
    pub flags: u32,
    pub pad: u32,
}

impl Nat64Config {
    /// A configuration for `prefix/len`; `len` must be one of RFC 6052's 32, 40, 48, 56, 64
    /// or 96, else None.
    pub fn new(prefix: [u8; 16], len: u32) -> Option<Nat64Config> {
        let v4_at = match len {
            32 => [4, 5, 6, 7],
            40 => [5, 6, 7, 9],
            48 => [6, 7, 9, 10],
            56 => [7, 9, 10, 11],
            64 => [9, 10, 11, 12],
            96 => [12, 13, 14, 15],
            _ => return None,
        };
        let mut masked = [0u8; 16];
        let whole = (len / 8) as usize;
        masked[..whole].copy_from_slice(&prefix[..whole]);
        let mut flags = NAT64_ENABLED;
        if len == 96 && masked == WELL_KNOWN_PREFIX {
            flags |= NAT64_WELL_KNOWN;
        }
        Some(Nat64Config {
            prefix: masked,
            v4_at,
            prefix_len: len,
            flags,
            pad: 0,
        })
    }

    /// The IPv6 address representing `v4`.
    #[inline(always)]
    pub fn embed(&self, v4: [u8; 4]) -> [u8; 16] {
        let mut addr = self.prefix;
        addr[(self.v4_at[0] & 15) as usize] = v4[0];
        addr[(self.v4_at[1] & 15) as usize] = v4[1];
        addr[(self.v4_at[2] & 15) as usize] = v4[2];
        addr[(self.v4_at[3] & 15) as usize] = v4[3];
        addr
    }

    /// The IPv4 address `addr` represents, if it is an address of the prefix (with zero
    /// u-octet and suffix, as RFC 6052 requires).
    #[inline(always)]
    pub fn extract(&self, addr: &[u8; 16]) -> Option<[u8; 4]> {
        let v4 = [
            addr[(self.v4_at[0] & 15) as usize],
            addr[(self.v4_at[1] & 15) as usize],
            addr[(self.v4_at[2] & 15) as usize],
            addr[(self.v4_at[3] & 15) as usize],
        ];
        if eq16(&self.embed(v4), addr) {
            Some(v4)
        } else {
            None
        }
    }
}

/// Compares two addresses as two 64-bit words (the eBPF target has no memcmp).
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let half = |x: &[u8; 16], at: usize| {
        u64::from_ne_bytes([
            x[at],
            x[at + 1],
            x[at + 2],
            x[at + 3],
            x[at + 4],
            x[at + 5],
            x[at + 6],
            x[at + 7],
        ])
    };
    half(a, 0) == half(b, 0) && half(a, 8) == half(b, 8)
}

/// 64:ff9b::/96 (RFC 6052 §2.1).
pub const WELL_KNOWN_PREFIX: [u8; 16] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// True for IPv4 addresses the well-known prefix must not represent: RFC 1918, loopback,
/// link-local, "this network", shared address space (RFC 6598), multicast and reserved.
#[inline(always)]
pub fn is_non_global4(a: [u8; 4]) -> bool {
    a[0] == 0
        || a[0] == 10
        || a[0] == 127
        || a[0] >= 224
        || (a[0] == 100 && a[1] & 0xc0 == 64)
        || (a[0] == 169 && a[1] == 254)
        || (a[0] == 172 && a[1] & 0xf0 == 16)
        || (a[0] == 192 && a[1] == 168)
}

/// XLAT6 value: a node's `xlat_range6` /64 is allowed on this ingress link.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XlatSource {
    /// The link the node's packets must arrive on (0: any).
    pub ifindex: u32,
    pub pad: u32,
}

/// CT6 key: a NAT64 connection as the node's packets carry it. For ICMP echo the identifier
/// is `sport` and `dport` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct6Key {
    pub proto: u8,
    pub pad: [u8; 3],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order, as in the packet.
    pub sport: u16,
    pub dport: u16,
}

/// What the NAT64 program did: indexes into NAT64_STATS. Packets from nodes are translated
/// by the TC program, replies by the forwarder's XDP program on the uplink.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat64Verdict {
    /// A node's packet translated to IPv4 and sent upstream.
    Out = 0,
    /// A reply translated to IPv6 and handed to the kernel for the node's tunnel.
    In = 1,
    /// A new connection from a node.
    NewOut = 2,
    /// An ICMPv4 error about a NAT64 connection translated to ICMPv6 (RFC 7915 §4.2).
    IcmpErrorIn = 3,
    /// An ICMPv6 error from a node translated to ICMPv4 (RFC 7915 §5.2).
    IcmpErrorOut = 4,
    /// IPv4 from a node's IPv4 range translated (NAT44 through the same engine).
    Nat44Out = 5,
    /// Dropped: source outside every `xlat_range6`.
    DropNotXlat = 6,
    /// Dropped: the well-known prefix used for a non-global IPv4 address.
    DropNonGlobal = 7,
    /// Dropped: no free public port.
    DropExhausted = 8,
    /// Dropped: IPv6 fragments or extension headers (the kernel cannot translate them).
    DropUnsupported = 9,
    /// Dropped: a protocol or ICMP type RFC 7915 does not translate.
    DropProtocol = 10,
    /// Dropped: no connection for a packet that needs one (TCP without SYN, unknown ICMP error).
    DropNoState = 11,
    /// Dropped: IPv4 UDP without checksum (IPv6 requires one).
    DropUdpNoChecksum = 12,
    /// Dropped: truncated or invalid headers.
    DropMalformed = 13,
    /// Dropped: the redirect or a packet resize failed.
    DropResize = 14,
    /// Not for the translator (native IPv6, to the gateway itself): the kernel routes it.
    PassNotNat64 = 15,
    /// Hop limit ≤ 1: the kernel sends Time Exceeded.
    PassHopLimit = 16,
    /// The upstream next hop's MAC is unknown: the kernel forwards the translated packet.
    PassNoNeighbour = 17,
}

pub const NAT64_VERDICT_COUNT: u32 = 18;

impl Nat64Verdict {
    pub const ALL: [Nat64Verdict; NAT64_VERDICT_COUNT as usize] = [
        Nat64Verdict::Out,
        Nat64Verdict::In,
        Nat64Verdict::NewOut,
        Nat64Verdict::IcmpErrorIn,
        Nat64Verdict::IcmpErrorOut,
        Nat64Verdict::Nat44Out,
        Nat64Verdict::DropNotXlat,
        Nat64Verdict::DropNonGlobal,
        Nat64Verdict::DropExhausted,
        Nat64Verdict::DropUnsupported,
        Nat64Verdict::DropProtocol,
        Nat64Verdict::DropNoState,
        Nat64Verdict::DropUdpNoChecksum,
        Nat64Verdict::DropMalformed,
        Nat64Verdict::DropResize,
        Nat64Verdict::PassNotNat64,
        Nat64Verdict::PassHopLimit,
        Nat64Verdict::PassNoNeighbour,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Nat64Verdict::Out => "out",
            Nat64Verdict::In => "in",
            Nat64Verdict::NewOut => "new_out",
            Nat64Verdict::IcmpErrorIn => "icmp_error_in",
            Nat64Verdict::IcmpErrorOut => "icmp_error_out",
            Nat64Verdict::Nat44Out => "nat44_out",
            Nat64Verdict::DropNotXlat => "drop_not_xlat",
            Nat64Verdict::DropNonGlobal => "drop_non_global",
            Nat64Verdict::DropExhausted => "drop_exhausted",
            Nat64Verdict::DropUnsupported => "drop_unsupported",
            Nat64Verdict::DropProtocol => "drop_protocol",
            Nat64Verdict::DropNoState => "drop_no_state",
            Nat64Verdict::DropUdpNoChecksum => "drop_udp_no_checksum",
            Nat64Verdict::DropMalformed => "drop_malformed",
            Nat64Verdict::DropResize => "drop_resize",
            Nat64Verdict::PassNotNat64 => "pass_not_nat64",
            Nat64Verdict::PassHopLimit => "pass_hop_limit",
            Nat64Verdict::PassNoNeighbour => "pass_no_neighbour",
        }
    }
}

/// FW_PORTS key: a control port of the gateway (etcd, admin API, …).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FwPort {
    pub proto: u8,
    pub pad: u8,
    /// Network byte order.
    pub port: u16,
}

/// FW_STATS slots: drops of IPv4 and IPv6 packets to control ports.
pub const FW_DROP4: u32 = 0;
pub const FW_DROP6: u32 = 1;
pub const FW_STATS_COUNT: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6052_examples_round_trip() {
        // RFC 6052 §2.4: 192.0.2.33 in each prefix length.
        let v4 = [192, 0, 2, 33];
        let cases: [(u32, [u8; 16]); 6] = [
            (
                32,
                [
                    0x20, 0x01, 0x0d, 0xb8, 192, 0, 2, 33, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                40,
                [
                    0x20, 0x01, 0x0d, 0xb8, 0x01, 192, 0, 2, 0, 33, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                48,
                [
                    0x20, 0x01, 0x0d, 0xb8, 0x01, 0x22, 192, 0, 0, 2, 33, 0, 0, 0, 0, 0,
                ],
            ),
            (
                56,
                [
                    0x20, 0x01, 0x0d, 0xb8, 0x01, 0x22, 0x03, 192, 0, 0, 2, 33, 0, 0, 0, 0,
                ],
            ),
            (
                64,
                [
                    0x20, 0x01, 0x0d, 0xb8, 0x01, 0x22, 0x03, 0x44, 0, 192, 0, 2, 33, 0, 0, 0,
                ],
            ),
            (
                96,
                [
                    0x20, 0x01, 0x0d, 0xb8, 0x01, 0x22, 0x03, 0x44, 0, 0, 0, 0, 192, 0, 2, 33,
                ],
            ),
        ];
        let base = [
            0x20, 0x01, 0x0d, 0xb8, 0x01, 0x22, 0x03, 0x44, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        for (len, want) in cases {
            let cfg = Nat64Config::new(base, len).unwrap();
            assert_eq!(cfg.embed(v4), want, "/{len}");
            assert_eq!(cfg.extract(&want), Some(v4), "/{len}");
            let mut bad = want;
            bad[8] = 1; // the u-octet must be zero
            assert_eq!(cfg.extract(&bad), None, "/{len}");
        }
        assert!(Nat64Config::new(base, 80).is_none());
    }

    #[test]
    fn well_known_prefix_is_flagged() {
        let cfg = Nat64Config::new(WELL_KNOWN_PREFIX, 96).unwrap();
        assert_ne!(cfg.flags & NAT64_WELL_KNOWN, 0);
        assert!(is_non_global4([10, 1, 2, 3]));
        assert!(is_non_global4([172, 31, 0, 1]));
        assert!(is_non_global4([100, 64, 0, 1]));
        assert!(!is_non_global4([100, 128, 0, 1]));
        assert!(!is_non_global4([198, 51, 100, 7]));
    }
}
