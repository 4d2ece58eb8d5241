//! The derived plan: every link, address, route, WireGuard peer, NAT rule and data-plane
//! entry of one exit node. Serialises to JSON with addresses and prefixes as strings.

use super::input::Protocol;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub allocation: Ipv6Net,
    pub exit_node: u8,
    pub alloc_nr: u32,
    /// The /52 this exit node routes: `P:{x}000::/52`.
    pub exit_node_net: Ipv6Net,
    pub upstream: UpstreamPlan,
    pub gateway: NamespacePlan,
    /// One per tenant network, sorted by the ExitPoint's nibble.
    pub exitpoints: Vec<ExitPointPlan>,
    pub dataplane: DataplanePlan,
    /// Not errors, but worth an operator's attention (the seed's 2,000-route advice).
    pub warnings: Vec<String>,
}

/// What the operator configures on the upstream router: its addresses on PrefixZero and one
/// static route per enabled exit node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamPlan {
    pub addresses: Vec<IpNet>,
    pub routes: Vec<UpstreamRoute>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamRoute {
    pub exit_node: u8,
    pub dest: Ipv6Net,
    /// GWPubLL of that exit node's gateway.
    pub via: Ipv6Addr,
    /// Its GWPubIP6, for routers that want a global next hop.
    pub via_global: Ipv6Addr,
}

/// A network namespace exitd owns, with everything that belongs in it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NamespacePlan {
    pub name: String,
    pub links: Vec<LinkPlan>,
    pub routes: Vec<RoutePlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkPlan {
    pub name: String,
    pub kind: LinkKind,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkKind {
    /// The physical uplink; `source` is its name in exitd's own namespace before it moves.
    Uplink {
        source: Option<String>,
    },
    /// A veth created from this side; its peer lives in `peer_namespace`.
    Veth {
        peer: String,
        peer_namespace: String,
    },
    /// The far end of a veth created by the namespace `peer_namespace`.
    VethPeer {
        peer: String,
        peer_namespace: String,
    },
    Wireguard,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutePlan {
    pub dest: IpNet,
    pub via: Option<IpAddr>,
    pub dev: String,
    /// The next hop is not inside any prefix of `dev` (IPv4 via a /32 neighbour).
    pub onlink: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExitPointPlan {
    pub tenant: String,
    pub node: String,
    pub prefix: Ipv6Net,
    /// The nibble as 4 hex digits.
    pub hex: String,
    pub namespace: NamespacePlan,
    pub wireguard: WireguardPlan,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WireguardPlan {
    pub link: String,
    pub listen_port: u16,
    /// MTU of the tunnel device (registry item `gateway`, field `mtu`).
    pub mtu: u32,
    /// Persistent keepalive toward every peer, seconds; 0 is off (`gateway.wg_keepalive`).
    pub keepalive: u16,
    pub private_key_file: PathBuf,
    pub peers: Vec<PeerPlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerPlan {
    pub node: String,
    pub prefix: Ipv6Net,
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
}

/// What the eBPF data plane needs, in plain values it turns into map entries.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataplanePlan {
    /// Gateway namespace these entries apply in.
    pub namespace: String,
    /// Forward IPv6 in XDP (registry item `gateway`, field `xdp_forward`).
    pub xdp_forward: bool,
    /// Toward the upstream router.
    pub default_route: NextHop,
    /// Per /64 behind this exit node: the gateway link and the ExitPoint's link-local.
    pub prefixes: Vec<PrefixRoute>,
    pub nat: NatPlan,
    /// NAT64 and the gateway firewall (`[dataplane.nat64]`, `[dataplane.firewall]`).
    pub nat64: crate::dataplane::nat64::Nat64Plan,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NextHop {
    pub link: String,
    pub next_hop: Ipv6Addr,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrefixRoute {
    pub prefix: Ipv6Net,
    pub link: String,
    pub next_hop: Ipv6Addr,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NatPlan {
    /// GWPubIP4; without it there is no IPv4 NAT at all.
    pub public_ipv4: Option<Ipv4Addr>,
    /// The gateway link SNAT happens on.
    pub out_link: String,
    pub snat: Vec<SnatEntry>,
    pub port_forwards: Vec<PortForwardEntry>,
    /// The upstream router's IPv4: where translated packets go.
    pub upstream_ipv4: Option<Ipv4Addr>,
    /// Translate in eBPF (XDP on the gateway's links). The kernel's NAT then only carries
    /// what XDP hands to it (fragments, IP options, …) with `settings.kernel_ports`.
    pub ebpf: bool,
    pub settings: NatSettings,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnatEntry {
    pub tenant: String,
    /// The tenant's number on this gateway (its ExitPoint's nibble): the translator drops
    /// packets between networks of different tenants.
    pub tenant_id: u32,
    pub source: Ipv4Net,
    pub to: Ipv4Addr,
    /// The gateway link the network is behind and the next hop on it (the ExitPoint).
    pub link: String,
    pub next_hop: Ipv4Addr,
}

/// The translator's settings (`[dataplane.nat]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatSettings {
    /// Public ports the eBPF translator hands out, `"first-last"`.
    pub ports: PortRange,
    /// Public ports the kernel's fallback NAT uses; must not overlap `ports`.
    pub kernel_ports: PortRange,
    /// Connections the translator tracks (two map entries each); the least recently used
    /// is evicted beyond that. Takes effect when the maps are created.
    pub max_connections: u32,
    /// Idle timeouts, seconds (RFC 5382: established TCP ≥ 2 h 4 min; RFC 4787: UDP ≥ 2 min).
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl Default for NatSettings {
    fn default() -> NatSettings {
        NatSettings {
            ports: PortRange(1024, 60999),
            kernel_ports: PortRange(61000, 65535),
            max_connections: 1_000_000,
            tcp_established: 7440,
            tcp_transitory: 240,
            udp: 300,
            icmp: 60,
        }
    }
}

impl NatSettings {
    /// Checks ranges, sizes and timeouts.
    pub fn validate(&self) -> anyhow::Result<()> {
        let (p, k) = (self.ports, self.kernel_ports);
        if p.0 > k.1 || k.0 > p.1 {
            // disjoint
        } else {
            anyhow::bail!("dataplane.nat: ports {p} and kernel_ports {k} overlap");
        }
        if !(1..=16_000_000).contains(&self.max_connections) {
            anyhow::bail!("dataplane.nat.max_connections must be 1..=16000000");
        }
        for (name, secs) in [
            ("tcp_established", self.tcp_established),
            ("tcp_transitory", self.tcp_transitory),
            ("udp", self.udp),
            ("icmp", self.icmp),
        ] {
            if secs == 0 {
                anyhow::bail!("dataplane.nat.{name} must be at least 1 second");
            }
        }
        Ok(())
    }
}

/// An inclusive port range, written `"1024-60999"` (or a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<PortRange, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{x:?} is not a port (1-65535)"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("port range {s:?} runs backwards"));
        }
        Ok(PortRange(first, last))
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PortForwardEntry {
    pub tenant: String,
    pub protocol: Protocol,
    pub public: SocketAddrV4,
    pub target: SocketAddrV4,
}

impl Plan {
    /// Every namespace exitd owns under this plan, gateway first.
    pub fn namespaces(&self) -> impl Iterator<Item = &NamespacePlan> {
        std::iter::once(&self.gateway).chain(self.exitpoints.iter().map(|ep| &ep.namespace))
    }

    /// Every interface name the plan derives.
    pub fn link_names(&self) -> impl Iterator<Item = &str> {
        self.namespaces()
            .flat_map(|ns| ns.links.iter().map(|l| l.name.as_str()))
    }
}
