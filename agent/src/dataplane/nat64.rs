//! NAT64 for 464XLAT Parker nodes and the gateway firewall, the agent's side: the
//! `[dataplane.nat64]` and `[dataplane.firewall]` sections, what they become on a gateway
//! (`Nat64Plan`, resolved with the plan), and what the maps should hold (`Nat64Table`,
//! `xlat_table`). The maps themselves are in `nat64_maps`.
//!
//! ```toml
//! [dataplane.nat64]
//! # enabled = true                  # default when the section exists; no section: off
//! # prefix = "64:ff9b::/96"         # RFC 6052: /32, /40, /48, /56, /64 or /96
//! # interfaces = ["wg-parker"]      # node-facing links; default: the [concentrator] interface
//! # node_ipv4 = ["10.64.0.0/16"]    # nodes' own IPv4 ranges (non-464XLAT): NAT44 them
//!
//! [dataplane.firewall]              # default: on with these values when NAT64 is on
//! # control_ports = ["tcp/2379", "tcp/2380", "tcp/9580"]  # default: etcd + [admin] port
//! # allow = ["10.0.0.0/8", "2001:db8::/48"]             # sources that may reach them
//! ```

use super::gateway::LinkFacts;
use crate::{config::Config, plan::Plan};
use anyhow::{Context, Result, bail, ensure};
use exitd_common::{
    Prefix64,
    nat4::{MAX_ROUTES4, ROUTE4_VIA_KERNEL, Route4},
    nat64::{
        CT6_MAP, FW_ALLOW4_MAP, FW_ALLOW6_MAP, FW_LINKS_MAP, FW_PORTS_MAP, FW_STATS_MAP, FwPort,
        MAX_FW_ALLOW, MAX_FW_PORTS, NAT64_CONFIG_MAP, NAT64_STATS_MAP, Nat64Config, XLAT6_MAP,
        XlatSource,
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

/// Every map of the translator and the firewall, by name; pinned with the others so the
/// TC program on the node-facing links and `xdp_fwd6` on the uplink share them.
pub const NAT64_MAPS: [&str; 9] = [
    NAT64_CONFIG_MAP,
    XLAT6_MAP,
    CT6_MAP,
    NAT64_STATS_MAP,
    FW_PORTS_MAP,
    FW_LINKS_MAP,
    FW_ALLOW4_MAP,
    FW_ALLOW6_MAP,
    FW_STATS_MAP,
];

/// etcd's client and peer ports: closed to nodes and tenants by default.
const ETCD_PORTS: [u16; 2] = [2379, 2380];
const TCP: u8 = 6;
const UDP: u8 = 17;

/// `[dataplane.nat64]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Nat64Section {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The NAT64 prefix (RFC 6052).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Node-facing links (in the gateway's namespace); default: the concentrator's.
    #[serde(default)]
    pub interfaces: Option<Vec<String>>,
    /// Nodes' own IPv4 ranges (Parker nodes not in 464XLAT mode), NAT44-translated by the
    /// same engine: each /24 goes into ROUTES4 behind the first node-facing link.
    #[serde(default)]
    pub node_ipv4: Vec<String>,
}

/// `[dataplane.firewall]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirewallSection {
    /// `"tcp/<port>"` or `"udp/<port>"`; default: etcd (2379, 2380) and the admin API.
    #[serde(default)]
    pub control_ports: Option<Vec<String>>,
    /// Source networks (IPv4 or IPv6) that may still reach the control ports.
    #[serde(default)]
    pub allow: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_prefix() -> String {
    "64:ff9b::/96".into()
}

impl Nat64Section {
    /// The prefix, checked against RFC 6052's lengths.
    pub fn prefix(&self) -> Result<Ipv6Net> {
        let net: Ipv6Net = self.prefix.parse().with_context(|| {
            format!(
                "dataplane.nat64.prefix {:?} is not an IPv6 prefix",
                self.prefix
            )
        })?;
        ensure!(
            Nat64Config::new(net.network().octets(), u32::from(net.prefix_len())).is_some(),
            "dataplane.nat64.prefix {net}: RFC 6052 allows only /32, /40, /48, /56, /64 and /96"
        );
        ensure!(
            net.trunc() == net,
            "dataplane.nat64.prefix {net} has bits set past its length (did you mean {}?)",
            net.trunc()
        );
        Ok(net)
    }

    /// The nodes' IPv4 ranges: networks of /24 or wider (the translator routes per /24),
    /// at most `MAX_NODE_NETS4` /24s in all.
    pub fn node_ipv4(&self) -> Result<Vec<Ipv4Net>> {
        let mut nets = Vec::new();
        let mut count = 0u64;
        for text in &self.node_ipv4 {
            let net: Ipv4Net = text.parse().with_context(|| {
                format!("dataplane.nat64.node_ipv4: {text:?} is not an IPv4 network")
            })?;
            ensure!(
                net.prefix_len() <= 24 && net.trunc() == net,
                "dataplane.nat64.node_ipv4: {net} must be a network of /24 or wider \
                 (the translator routes per /24)"
            );
            count += 1u64 << (24 - net.prefix_len());
            nets.push(net);
        }
        ensure!(
            count <= u64::from(MAX_NODE_NETS4),
            "dataplane.nat64.node_ipv4 spans {count} /24s; at most {MAX_NODE_NETS4}"
        );
        Ok(nets)
    }
}

/// /24s of nodes' IPv4 ranges the translator may route (half of ROUTES4; tenants have the
/// rest).
const MAX_NODE_NETS4: u32 = MAX_ROUTES4 / 2;
/// The tenant number of nodes' IPv4 ranges: above every ExitPoint's (16-bit) number, so
/// nodes and tenants stay apart.
pub const NODE_TENANT: u32 = 0x1_0000;

/// A closed control port as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ControlPort {
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub port: u16,
}

impl ControlPort {
    fn parse(text: &str) -> Result<ControlPort> {
        let bad = || {
            format!(
                "dataplane.firewall.control_ports: {text:?} is not \"tcp/<port>\" or \"udp/<port>\""
            )
        };
        let (proto, port) = text.split_once('/').with_context(bad)?;
        let protocol = match proto {
            "tcp" => TCP,
            "udp" => UDP,
            _ => bail!(bad()),
        };
        let port: u16 = port.parse().with_context(bad)?;
        ensure!(port != 0, "{}: port 0", bad());
        Ok(ControlPort { protocol, port })
    }

    fn key(self) -> FwPort {
        FwPort {
            proto: self.protocol,
            pad: 0,
            port: self.port.to_be(),
        }
    }
}

impl FirewallSection {
    fn ports(&self, config: &Config) -> Result<Vec<ControlPort>> {
        let Some(ports) = &self.control_ports else {
            let mut ports: Vec<ControlPort> = ETCD_PORTS
                .iter()
                .map(|&port| ControlPort {
                    protocol: TCP,
                    port,
                })
                .collect();
            if config.admin.enabled {
                ports.push(ControlPort {
                    protocol: TCP,
                    port: config.admin.listen.port(),
                });
            }
            return Ok(ports);
        };
        // One FW_PORTS entry is the "firewall on" marker.
        ensure!(
            ports.len() < MAX_FW_PORTS as usize,
            "dataplane.firewall.control_ports: at most {} ports",
            MAX_FW_PORTS - 1
        );
        ports.iter().map(|p| ControlPort::parse(p)).collect()
    }

    fn allow(&self) -> Result<Vec<IpNet>> {
        let nets = self
            .allow
            .iter()
            .map(|a| {
                a.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .with_context(|| format!("dataplane.firewall.allow: {a:?} is not a CIDR"))
            })
            .collect::<Result<Vec<IpNet>>>()?;
        let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
        let most = MAX_FW_ALLOW as usize;
        ensure!(
            v4 <= most && nets.len() - v4 <= most,
            "dataplane.firewall.allow: at most {most} IPv4 and {most} IPv6 networks"
        );
        Ok(nets)
    }
}

/// Checks both sections (what can be checked without the plan).
pub fn validate(config: &Config) -> Result<()> {
    let dataplane = &config.dataplane;
    if let Some(nat64) = &dataplane.nat64 {
        nat64.prefix()?;
        nat64.node_ipv4()?;
        for name in nat64.interfaces.iter().flatten() {
            crate::iface::validate_name(name).context("dataplane.nat64.interfaces")?;
        }
    }
    if let Some(firewall) = &dataplane.firewall {
        firewall.ports(config)?;
        firewall.allow()?;
    }
    Ok(())
}

/// The gateway's NAT64 and firewall settings, resolved against the plan (the
/// `[dataplane.nat64]` and `[dataplane.firewall]` sections, the concentrator's interface,
/// the gateway's tenant-facing links).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Nat64Plan {
    /// None: NAT64 is off.
    pub prefix: Option<Ipv6Net>,
    /// Node-facing links in the gateway's namespace: the TC program runs on each.
    pub interfaces: Vec<String>,
    /// Nodes' own IPv4 ranges, NAT44-translated behind the first node-facing link.
    pub node_ipv4: Vec<Ipv4Net>,
    /// Closed ports; empty: the firewall is off.
    pub control_ports: Vec<ControlPort>,
    pub allow: Vec<IpNet>,
    /// Links whose packets the firewall checks: node- and tenant-facing.
    pub firewalled_links: Vec<String>,
    /// The gateway's own addresses on node-facing links (the concentrator's link address
    /// when it is not link-local): local destinations the firewall guards.
    pub local6: Vec<Ipv6Addr>,
}

impl Nat64Plan {
    /// Resolves the sections of `config` for the gateway of `plan`.
    pub fn resolve(config: &Config, plan: &Plan) -> Result<Nat64Plan> {
        let mut resolved = Nat64Plan::default();
        let nat64 = config.dataplane.nat64.as_ref().filter(|s| s.enabled);
        if let Some(section) = nat64 {
            resolved.prefix = Some(section.prefix()?);
            resolved.interfaces = node_links(config, section, &plan.dataplane.namespace)?;
            resolved.node_ipv4 = section.node_ipv4()?;
        }
        // Nodes are not trusted: with NAT64 on the firewall is on unless configured.
        let firewall = config
            .dataplane
            .firewall
            .clone()
            .or_else(|| nat64.map(|_| FirewallSection::default()));
        if let Some(firewall) = firewall {
            resolved.control_ports = firewall.ports(config)?;
            resolved.allow = firewall.allow()?;
            resolved.firewalled_links = firewalled_links(plan, &resolved.interfaces);
        }
        if let Some(c) = config.concentrator.as_ref().filter(|_| nat64.is_some())
            && !is_link_local(c.link_address)
        {
            resolved.local6.push(c.link_address);
        }
        Ok(resolved)
    }

    pub fn enabled(&self) -> bool {
        self.prefix.is_some()
    }
}

/// The node-facing links: configured, or the concentrator's interface, which must then
/// live in the gateway's namespace (the translator shares the gateway's maps and uplink).
fn node_links(config: &Config, section: &Nat64Section, gateway: &str) -> Result<Vec<String>> {
    if let Some(interfaces) = &section.interfaces {
        return Ok(interfaces.clone());
    }
    let Some(concentrator) = &config.concentrator else {
        bail!(
            "dataplane.nat64: no interfaces given and no [concentrator] whose interface \
             would be the default"
        );
    };
    if concentrator.namespace.as_deref() != Some(gateway) {
        bail!(
            "dataplane.nat64: the concentrator's interface {} must live in the gateway's \
             namespace (set concentrator.namespace = {gateway:?}) or name the node-facing \
             links in dataplane.nat64.interfaces",
            concentrator.interface
        );
    }
    Ok(vec![concentrator.interface.clone()])
}

/// Node-facing links plus the gateway's tenant-facing links (toward the ExitPoints).
fn firewalled_links(plan: &Plan, node_links: &[String]) -> Vec<String> {
    let dp = &plan.dataplane;
    let tenant_links = dp
        .prefixes
        .iter()
        .map(|p| &p.link)
        .chain(dp.nat.snat.iter().map(|s| &s.link));
    let all: BTreeSet<String> = node_links.iter().chain(tenant_links).cloned().collect();
    all.into_iter().collect()
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// What NAT64_CONFIG and the firewall maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nat64Table {
    pub config: Nat64Config,
    pub fw_ports: BTreeSet<FwPort>,
    pub fw_links: BTreeSet<u32>,
    /// (prefix length, network) of allowed sources.
    pub allow4: BTreeSet<(u32, [u8; 4])>,
    pub allow6: BTreeSet<(u32, [u8; 16])>,
}

/// The table for `plan` given the namespace's links. Links that do not exist (yet: the
/// concentrator creates its interface after the forwarder starts) are left out. NAT64
/// translates to the IPv4 translator's public address, so without it (`nat4_on` false)
/// the translator stays off.
pub fn table_for(plan: &Plan, facts: &LinkFacts, nat4_on: bool) -> Nat64Table {
    let n = &plan.dataplane.nat64;
    let mut table = Nat64Table::default();
    if let (Some(prefix), true) = (n.prefix, nat4_on) {
        let len = u32::from(prefix.prefix_len());
        table.config = Nat64Config::new(prefix.network().octets(), len).unwrap_or_default();
    }
    table.fw_ports = n.control_ports.iter().map(|p| p.key()).collect();
    if !table.fw_ports.is_empty() {
        // The "firewall on" marker the programs look up first.
        table.fw_ports.insert(FwPort::default());
        table.fw_links = n
            .firewalled_links
            .iter()
            .filter_map(|l| facts.links.get(l).map(|f| f.ifindex))
            .collect();
    }
    for net in &n.allow {
        match net {
            IpNet::V4(v4) => table
                .allow4
                .insert((u32::from(v4.prefix_len()), v4.network().octets())),
            IpNet::V6(v6) => table
                .allow6
                .insert((u32::from(v6.prefix_len()), v6.network().octets())),
        };
    }
    table
}

/// ROUTES4 entries for the nodes' IPv4 ranges, one per /24, behind the first node-facing
/// link that exists: their replies are translated and handed to the kernel, which routes
/// them into the tunnel (`ROUTE4_VIA_KERNEL`: XDP cannot redirect into WireGuard).
pub fn node_routes(plan: &Plan, facts: &LinkFacts) -> BTreeMap<[u8; 4], Route4> {
    let n = &plan.dataplane.nat64;
    let Some(link) = n.interfaces.iter().find_map(|l| facts.links.get(l)) else {
        return BTreeMap::new();
    };
    let route = Route4 {
        ifindex: link.ifindex,
        tenant: NODE_TENANT,
        dst_mac: [0; 6],
        src_mac: [0; 6],
        flags: ROUTE4_VIA_KERNEL,
    };
    n.node_ipv4
        .iter()
        .flat_map(|net| net.subnets(24).into_iter().flatten())
        .map(|net24| (net24.network().octets(), route))
        .collect()
}

/// Where the concentrator keeps the nodes' `xlat_range6`s (XLAT6): the gateway's pin
/// directory, when NAT64 runs on the concentrator's interface; None otherwise.
pub fn concentrator_pins(config: &Config) -> Result<Option<super::PinDir>> {
    let (Some(concentrator), Some(_)) = (&config.concentrator, &config.dataplane.nat64) else {
        return Ok(None);
    };
    if config.network.is_none() {
        tracing::warn!(
            "[dataplane.nat64] needs the gateway of [network] (its uplink and public IPv4): \
             NAT64 stays off"
        );
        return Ok(None);
    }
    let plan = crate::plan::cli::plan_for(config)?;
    if !plan
        .dataplane
        .nat64
        .interfaces
        .contains(&concentrator.interface)
    {
        return Ok(None);
    }
    let pins = config.dataplane.pin_dir.join(&plan.dataplane.namespace);
    Ok(Some(super::PinDir::new(pins)))
}

/// A node's `xlat_range6`: the second /64 of its /63 (what the broker hands out).
pub fn xlat_range6(node_prefix: &Ipv6Net) -> Prefix64 {
    let o = node_prefix.network().octets();
    [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] | 1]
}

/// XLAT6's contents for the nodes behind the concentrator interface `ifindex`.
pub fn xlat_table<'a>(
    node_prefixes: impl IntoIterator<Item = &'a Ipv6Net>,
    ifindex: u32,
) -> BTreeMap<Prefix64, XlatSource> {
    node_prefixes
        .into_iter()
        .map(|p| (xlat_range6(p), XlatSource { ifindex, pad: 0 }))
        .collect()
}

#[cfg(test)]
mod tests;
