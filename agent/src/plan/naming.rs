//! The naming and addressing formulas of exitnode-derivation.md (zos `nibble.go`), one
//! function per derived thing. Everything here is pure: same input, same output.
//!
//! Where the seed's drawing and the zos code disagree, the choice is written next to the
//! formula and pinned by a test.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The two bytes that tell network resources apart: bytes 6..8 of the resource's /64 (its
/// fourth hextet). Every name, address and port of a resource is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nibble {
    pub n0: u8,
    pub n1: u8,
}

impl Nibble {
    /// The nibble of a network resource prefix (its fourth hextet).
    pub fn of(prefix: &Ipv6Net) -> Nibble {
        let octets = prefix.network().octets();
        Nibble {
            n0: octets[6],
            n1: octets[7],
        }
    }

    pub fn value(self) -> u16 {
        u16::from_be_bytes([self.n0, self.n1])
    }

    /// Four lowercase hex digits, zero padded (`0x0a0b` → `0a0b`).
    pub fn hex(self) -> String {
        format!("{:04x}", self.value())
    }

    /// The exit node whose /52 holds this nibble (its top four bits).
    pub fn exit_node(self) -> u8 {
        self.n0 >> 4
    }
}

/// `{kind}-{hex}-{a}`: the shape of every per-resource interface name.
fn resource_name(kind: &str, nib: Nibble, alloc_nr: u32) -> String {
    format!("{kind}-{}-{alloc_nr}", nib.hex())
}

/// WGName: the ExitPoint's WireGuard interface.
pub fn wg_name(nib: Nibble, alloc_nr: u32) -> String {
    resource_name("wg", nib, alloc_nr)
}

/// NRLocalName: the network resource's own segment inside the ExitPoint.
pub fn nr_local_name(nib: Nibble, alloc_nr: u32) -> String {
    resource_name("veth", nib, alloc_nr)
}

/// The peer of NRLocalName, left in the ExitPoint namespace as the attachment point for the
/// resource's workloads. Not a seed name: the seed's zos code attaches workloads to a bridge
/// (BridgeName, `br-…`); a veth peer gives the segment carrier without a bridge.
pub fn nr_attach_name(nib: Nibble, alloc_nr: u32) -> String {
    resource_name("nr", nib, alloc_nr)
}

/// EPPubName: the ExitPoint's end of the veth pair to the gateway.
pub fn ep_pub_name(nib: Nibble, alloc_nr: u32) -> String {
    resource_name("pub", nib, alloc_nr)
}

/// GWtoEPName (= EPToGWName): the gateway's end of the veth pair to the ExitPoint.
pub fn gw_to_ep_name(nib: Nibble, alloc_nr: u32) -> String {
    resource_name("to", nib, alloc_nr)
}

/// NamespaceName: the ExitPoint's network namespace (`net-{hex}-{a}`), behind an optional
/// operator prefix so several exitd instances (or tests) can share one machine.
pub fn ep_netns_name(prefix: &str, nib: Nibble, alloc_nr: u32) -> String {
    format!("{prefix}{}", resource_name("net", nib, alloc_nr))
}

/// The gateway's network namespace. The seed names no gateway namespace; `gw-{x}-{a}`
/// follows the shape of GWPubName.
pub fn gw_netns_name(prefix: &str, exit_node: u8, alloc_nr: u32) -> String {
    format!("{prefix}gw-{exit_node}-{alloc_nr}")
}

/// GWPubName(x, a): the gateway's uplink toward the upstream router; x in decimal.
pub fn gw_pub_name(exit_node: u8, alloc_nr: u32) -> String {
    format!("pub-{exit_node}-{alloc_nr}")
}

/// WireguardPort: the nibble as a big-endian u16.
pub fn wireguard_port(nib: Nibble) -> u16 {
    nib.value()
}

/// fe80:: with the given hextets 4..8 (the interface identifier).
fn link_local(h4: u16, h5: u16, h6: u16, h7: u16) -> Ipv6Net {
    net6(Ipv6Addr::new(0xfe80, 0, 0, 0, h4, h5, h6, h7), 64)
}

/// EPPubLL: `fe80::{hex}:1/64`.
pub fn ep_pub_ll(nib: Nibble) -> Ipv6Net {
    link_local(0, 0, nib.value(), 1)
}

/// GWtoEPLL: `fe80::1:{hex}/64`.
pub fn gw_to_ep_ll(nib: Nibble) -> Ipv6Net {
    link_local(0, 0, 1, nib.value())
}

/// WGLL: fe80:: with the last two bytes the nibble, /64 on the interface.
pub fn wg_ll(nib: Nibble) -> Ipv6Net {
    link_local(0, 0, 0, nib.value())
}

/// WGLL as a WireGuard allowed IP: /128.
pub fn wg_ll_allowed(nib: Nibble) -> Ipv6Net {
    net6(wg_ll(nib).addr(), 128)
}

/// WGIP4RT: `10.255.n0.n1/16` on the WireGuard interface. The drawing shows /24
/// (`10.255.26.188/24`), the zos code /16; we take /16 so every resource's routing address
/// (10.255.0.0/16) is on-link over WireGuard, which /24 would not give.
pub fn wg_ip4_rt(nib: Nibble) -> Ipv4Net {
    net4(Ipv4Addr::new(10, 255, nib.n0, nib.n1), 16)
}

/// WGAllowedIP4: `10.255.n0.n1/32`. The zos test expected /16, its code returned /32: a /16
/// allowed IP would claim every resource's routing address for one peer, so /32.
pub fn wg_allowed_ip4(nib: Nibble) -> Ipv4Net {
    net4(Ipv4Addr::new(10, 255, nib.n0, nib.n1), 32)
}

/// EPPubIP4R: the ExitPoint's IPv4 routing address on its gateway link. We follow the
/// drawing (`10.255.n0.n1/32`), not the zos code (`10.1.n0.n1/16`, WGIP4): the gateway
/// routes each tenant's /24 via this address, and 10.1.0.0/16 would overlap the gateway
/// side's 10.1.0.1.
pub fn ep_pub_ip4(nib: Nibble) -> Ipv4Net {
    net4(Ipv4Addr::new(10, 255, nib.n0, nib.n1), 32)
}

/// The gateway's IPv4 on every `to-…` link (drawing: `10.1.0.1/32`); the ExitPoints' IPv4
/// default route points at it, on-link.
pub fn gw_to_ep_ip4() -> Ipv4Net {
    net4(Ipv4Addr::new(10, 1, 0, 1), 32)
}

/// NRLocalIP4: `10.n0.n1.1/24`.
pub fn nr_local_ip4(nib: Nibble) -> Ipv4Net {
    net4(Ipv4Addr::new(10, nib.n0, nib.n1, 1), 24)
}

/// The network resource's IPv4 network `10.n0.n1.0/24`.
pub fn nr_ip4_net(nib: Nibble) -> Ipv4Net {
    nr_local_ip4(nib).trunc()
}

/// NRLocalIP6: the resource's /64 with interface id ::1.
pub fn nr_local_ip6(prefix: &Ipv6Net) -> Ipv6Net {
    let mut octets = prefix.network().octets();
    octets[15] = 1;
    net6(Ipv6Addr::from(octets), 64)
}

/// GWPubLL(x): fe80::, bytes 8..10 = x << 12, last byte 1, /64 (`fe80::1000:0:0:1/64`).
pub fn gw_pub_ll(exit_node: u8) -> Ipv6Net {
    link_local(u16::from(exit_node) << 12, 0, 0, 1)
}

/// GWPubIP6(P, x): the allocation with bytes 8..10 = x << 12 and last byte 1, /64 — inside
/// PrefixZero's first /64, the segment shared with the upstream router.
pub fn gw_pub_ip6(allocation: &Ipv6Net, exit_node: u8) -> Ipv6Net {
    let mut octets = allocation.network().octets();
    octets[8..10].copy_from_slice(&(u16::from(exit_node) << 12).to_be_bytes());
    octets[15] = 1;
    net6(Ipv6Addr::from(octets), 64)
}

/// The exit node's /52: `P:{x}000::/52`.
pub fn exit_node_net(allocation: &Ipv6Net, exit_node: u8) -> Ipv6Net {
    let mut octets = allocation.network().octets();
    octets[6] = exit_node << 4;
    net6(Ipv6Addr::from(octets), 52)
}

/// PrefixZero's first /64 (`P:0::/64`), shared by the upstream router and the gateways.
pub fn prefix_zero_segment(allocation: &Ipv6Net) -> Ipv6Net {
    net6(allocation.network(), 64)
}

/// The upstream router's link-local on PrefixZero, the gateways' IPv6 default next hop.
pub fn upstream_ll() -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)
}

/// The upstream router's global address on PrefixZero (`P::1/64`).
pub fn upstream_ip6(allocation: &Ipv6Net) -> Ipv6Net {
    let mut octets = allocation.network().octets();
    octets[15] = 1;
    net6(Ipv6Addr::from(octets), 64)
}

fn net6(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    // Every caller passes a literal length ≤ 128.
    Ipv6Net::new(addr, len).unwrap_or_else(|_| Ipv6Net::from(addr))
}

fn net4(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    // Every caller passes a literal length ≤ 32.
    Ipv4Net::new(addr, len).unwrap_or_else(|_| Ipv4Net::from(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn nib(s: &str) -> Nibble {
        Nibble::of(&p(s))
    }

    const ALLOC: &str = "2a02:1802:5e::/48";

    #[test]
    fn seed_example_1abc() {
        let n = nib("2a02:1802:5e:1abc::/64");
        assert_eq!((n.n0, n.n1), (26, 188));
        assert_eq!(n.hex(), "1abc");
        assert_eq!(wg_name(n, 1), "wg-1abc-1");
        assert_eq!(nr_local_name(n, 1), "veth-1abc-1");
        assert_eq!(ep_pub_name(n, 1), "pub-1abc-1");
        assert_eq!(gw_to_ep_name(n, 1), "to-1abc-1");
        assert_eq!(ep_netns_name("", n, 1), "net-1abc-1");
        assert_eq!(wireguard_port(n), 6844);
        assert_eq!(ep_pub_ll(n).to_string(), "fe80::1abc:1/64");
        assert_eq!(gw_to_ep_ll(n).to_string(), "fe80::1:1abc/64");
        assert_eq!(wg_ll(n).to_string(), "fe80::1abc/64");
        assert_eq!(wg_ll_allowed(n).to_string(), "fe80::1abc/128");
        assert_eq!(wg_ip4_rt(n).to_string(), "10.255.26.188/16");
        assert_eq!(wg_allowed_ip4(n).to_string(), "10.255.26.188/32");
        assert_eq!(ep_pub_ip4(n).to_string(), "10.255.26.188/32");
        assert_eq!(nr_local_ip4(n).to_string(), "10.26.188.1/24");
        assert_eq!(nr_ip4_net(n).to_string(), "10.26.188.0/24");
        assert_eq!(
            nr_local_ip6(&p("2a02:1802:5e:1abc::/64")).to_string(),
            "2a02:1802:5e:1abc::1/64"
        );
    }

    #[test]
    fn seed_example_1123() {
        let n = nib("2a02:1802:5e:1123::/64");
        assert_eq!(ep_pub_ll(n).to_string(), "fe80::1123:1/64");
        assert_eq!(gw_to_ep_ll(n).to_string(), "fe80::1:1123/64");
        assert_eq!(ep_pub_ip4(n).to_string(), "10.255.17.35/32");
        assert_eq!(nr_local_ip4(n).to_string(), "10.17.35.1/24");
        assert_eq!(wireguard_port(n), 0x1123);
    }

    #[test]
    fn gateway_formulas_for_exit_node_1() {
        let a = p(ALLOC);
        assert_eq!(gw_pub_name(1, 1), "pub-1-1");
        assert_eq!(gw_pub_ll(1).to_string(), "fe80::1000:0:0:1/64");
        assert_eq!(gw_pub_ip6(&a, 1).to_string(), "2a02:1802:5e:0:1000::1/64");
        assert_eq!(exit_node_net(&a, 1).to_string(), "2a02:1802:5e:1000::/52");
        assert_eq!(prefix_zero_segment(&a).to_string(), "2a02:1802:5e::/64");
        assert_eq!(upstream_ip6(&a).to_string(), "2a02:1802:5e::1/64");
    }

    #[test]
    fn exit_node_15_uses_the_top_sixteenth() {
        let a = p(ALLOC);
        assert_eq!(gw_pub_name(15, 3), "pub-15-3");
        assert_eq!(gw_pub_ll(15).to_string(), "fe80::f000:0:0:1/64");
        assert_eq!(gw_pub_ip6(&a, 15).to_string(), "2a02:1802:5e:0:f000::1/64");
        assert_eq!(exit_node_net(&a, 15).to_string(), "2a02:1802:5e:f000::/52");
        assert_eq!(nib("2a02:1802:5e:f00d::/64").exit_node(), 15);
    }

    #[test]
    fn hex_is_zero_padded() {
        let n = nib("2a02:1802:5e:a0b::/64");
        assert_eq!(n.hex(), "0a0b");
        assert_eq!(wg_name(n, 7), "wg-0a0b-7");
        assert_eq!(ep_pub_ll(n).to_string(), "fe80::a0b:1/64");
        assert_eq!(nr_local_ip4(n).to_string(), "10.10.11.1/24");
    }

    #[test]
    fn nibble_0000_and_ffff() {
        let zero = nib("2a02:1802:5e::/64");
        assert_eq!(zero.hex(), "0000");
        assert_eq!(wg_name(zero, 1), "wg-0000-1");
        assert_eq!(wireguard_port(zero), 0);
        assert_eq!(wg_ll(zero).to_string(), "fe80::/64");
        assert_eq!(ep_pub_ll(zero).to_string(), "fe80::1/64");
        assert_eq!(nr_local_ip4(zero).to_string(), "10.0.0.1/24");
        assert_eq!(zero.exit_node(), 0);

        let ffff = nib("2a02:1802:5e:ffff::/64");
        assert_eq!(ffff.hex(), "ffff");
        assert_eq!(wg_name(ffff, 99999), "wg-ffff-99999");
        assert_eq!(wireguard_port(ffff), 65535);
        assert_eq!(gw_to_ep_ll(ffff).to_string(), "fe80::1:ffff/64");
        assert_eq!(wg_ip4_rt(ffff).to_string(), "10.255.255.255/16");
        assert_eq!(nr_local_ip4(ffff).to_string(), "10.255.255.1/24");
        assert_eq!(ffff.exit_node(), 15);
    }

    #[test]
    fn resource_prefix_host_bits_do_not_change_the_nibble() {
        assert_eq!(
            Nibble::of(&p("2a02:1802:5e:1abc::/64")),
            Nibble::of(&p("2a02:1802:5e:1abc:1:2:3:4/64"))
        );
    }
}
