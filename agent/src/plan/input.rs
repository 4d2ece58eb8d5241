//! The `[network]` section of the configuration: the only inputs of the plan.

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

/// Everything the plan is derived from (`[network]` in exitd.toml).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The farm's IPv6 allocation; always a /48.
    pub allocation: Ipv6Net,
    /// This exit node's number, 1..=15: it owns `P:{x}000::/52`.
    pub exit_node: u8,
    /// The allocation number, part of every derived name.
    pub alloc_nr: u32,
    /// The interface (in exitd's own namespace) that becomes the gateway's uplink: it is
    /// moved into the gateway namespace and renamed `pub-{x}-{a}`. Without it, the uplink
    /// must already be in the gateway namespace under that name.
    #[serde(default)]
    pub uplink: Option<String>,
    /// The gateway's public IPv4 with its prefix length (GWPubIP4): tenant IPv4 is SNATed to
    /// it and port forwards arrive on it.
    #[serde(default)]
    pub gateway_ipv4: Option<Ipv4Net>,
    /// The upstream router's IPv4 address, the gateway's IPv4 default next hop.
    #[serde(default)]
    pub upstream_ipv4: Option<Ipv4Addr>,
    /// Prefix for the namespaces exitd creates (`{prefix}gw-1-1`, `{prefix}net-1abc-1`).
    #[serde(default)]
    pub namespace_prefix: String,
    /// Every exit node enabled on this allocation, for `exitd plan upstream`; this node's own
    /// number is always included.
    #[serde(default)]
    pub enabled_exit_nodes: Vec<u8>,
    /// Where the ExitPoints' WireGuard private keys are kept (`{dir}/{wg name}.key`).
    #[serde(default = "default_key_dir")]
    pub key_dir: PathBuf,
    /// WireGuard implementation for the ExitPoints (`exitd apply --wireguard` overrides it).
    #[serde(default)]
    pub wireguard: crate::wireguard::BackendKind,
    /// Where a userspace WireGuard's pid and log files go.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/exitd")
}

fn default_key_dir() -> PathBuf {
    PathBuf::from("/var/lib/exitd/wireguard")
}

/// A tenant network: its network resources, one of which is the ExitPoint on this node.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub resources: Vec<ResourceConfig>,
    #[serde(default)]
    pub port_forwards: Vec<PortForwardConfig>,
}

/// One network resource: a node and the /64 it got.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub node: String,
    pub prefix: Ipv6Net,
    /// The resource on this exit node that routes for the tenant network.
    #[serde(default)]
    pub exitpoint: bool,
    /// The resource's WireGuard public key (base64); required for remote resources.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Where the remote resource's WireGuard listens, if it is reachable; otherwise it
    /// connects to the ExitPoint and the ExitPoint answers.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port on the gateway's public IPv4 forwarded into the tenant network.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortForwardConfig {
    pub protocol: Protocol,
    /// Port on GWPubIP4.
    pub port: u16,
    /// Destination inside one of the tenant's `10.n0.n1.0/24` networks.
    pub to: SocketAddrV4,
}

impl NetworkConfig {
    /// A config for a quick look (`exitd plan --resource …`): each resource is the ExitPoint
    /// of its own tenant network, as in the seed's drawing.
    pub fn quick(allocation: Ipv6Net, exit_node: u8, alloc_nr: u32, resources: &[Ipv6Net]) -> Self {
        let tenants = resources
            .iter()
            .map(|prefix| TenantConfig {
                name: format!("{prefix}"),
                resources: vec![ResourceConfig {
                    node: "this".to_string(),
                    prefix: *prefix,
                    exitpoint: true,
                    public_key: None,
                    endpoint: None,
                }],
                port_forwards: Vec::new(),
            })
            .collect();
        NetworkConfig {
            allocation,
            exit_node,
            alloc_nr,
            uplink: None,
            gateway_ipv4: None,
            upstream_ipv4: None,
            namespace_prefix: String::new(),
            enabled_exit_nodes: Vec::new(),
            key_dir: default_key_dir(),
            wireguard: Default::default(),
            state_dir: default_state_dir(),
            tenants,
        }
    }
}
