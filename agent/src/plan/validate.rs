//! Input rules, each with an error that names the input and the rule it breaks.

use super::{
    input::{NetworkConfig, Protocol},
    naming::{self, Nibble},
};
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::HashMap;

/// The seed's per-gateway budget: one exit node's /52 holds 4096 /64s.
pub const ROUTE_BUDGET: usize = 4096;
/// The seed advises adding an exit node from 2,000 routes on.
pub const ROUTE_WARNING: usize = 2000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("allocation {allocation}: must be a /48, got /{len}")]
    AllocationNotSlash48 { allocation: Ipv6Net, len: u8 },
    #[error("exit_node {0}: must be in 1..=15 (the /52 of 0 is PrefixZero, reserved)")]
    ExitNodeOutOfRange(u8),
    #[error("enabled_exit_nodes: {0} is not in 1..=15")]
    EnabledExitNodeOutOfRange(u8),
    #[error("tenant {tenant:?}: resource {prefix} must be a /64")]
    ResourceNotSlash64 { tenant: String, prefix: Ipv6Net },
    #[error("tenant {tenant:?}: resource {prefix} is outside exit node {exit_node}'s {net}")]
    ResourceOutsideExitNode {
        tenant: String,
        prefix: Ipv6Net,
        exit_node: u8,
        net: Ipv6Net,
    },
    #[error("resource {prefix} appears twice: in tenant {first:?} and in tenant {second:?}")]
    DuplicateResource {
        prefix: Ipv6Net,
        first: String,
        second: String,
    },
    #[error("tenant name {0:?} appears twice")]
    DuplicateTenant(String),
    #[error("tenant {tenant:?}: no resource has exitpoint = true; a tenant network needs one")]
    NoExitPoint { tenant: String },
    #[error("tenant {tenant:?}: {first} and {second} both have exitpoint = true; only one may")]
    SeveralExitPoints {
        tenant: String,
        first: Ipv6Net,
        second: Ipv6Net,
    },
    #[error(
        "{what} {name:?} is {} bytes; Linux allows at most 15 (alloc_nr {alloc_nr} is too long)",
        name.len()
    )]
    NameTooLong {
        what: &'static str,
        name: String,
        alloc_nr: u32,
    },
    #[error(
        "the gateway would carry {count} /64 routes; the budget is {ROUTE_BUDGET} per exit node"
    )]
    RouteBudgetExceeded { count: usize },
    #[error(
        "tenant {tenant:?}: resource {prefix}'s IPv4 network {net} overlaps the routing range \
         10.255.0.0/16 (nibbles ff00..ffff cannot be given out)"
    )]
    Ipv4Overlap {
        tenant: String,
        prefix: Ipv6Net,
        net: Ipv4Net,
    },
    #[error("tenant {tenant:?}: remote resource {prefix} needs public_key (its WireGuard key)")]
    MissingPublicKey { tenant: String, prefix: Ipv6Net },
    #[error(
        "tenant {tenant:?}: resource {prefix}: public_key {key:?} is not a base64 WireGuard key"
    )]
    BadPublicKey {
        tenant: String,
        prefix: Ipv6Net,
        key: String,
    },
    #[error("tenant {tenant:?}: port forwards need gateway_ipv4 (the public IPv4 they arrive on)")]
    PortForwardWithoutIpv4 { tenant: String },
    #[error(
        "tenant {tenant:?}: port forward {protocol}/{port} goes to {target}, outside the tenant's IPv4 networks"
    )]
    PortForwardOutsideTenant {
        tenant: String,
        protocol: Protocol,
        port: u16,
        target: std::net::Ipv4Addr,
    },
    #[error("port forward {protocol}/{port} is given to tenant {first:?} and to tenant {second:?}")]
    DuplicatePortForward {
        protocol: Protocol,
        port: u16,
        first: String,
        second: String,
    },
}

/// Checks everything that does not need the derived plan; the first broken rule wins.
pub fn validate(config: &NetworkConfig) -> Result<(), PlanError> {
    check_allocation(config)?;
    check_names(config)?;
    check_tenants(config)?;
    check_route_budget(resource_count(config))?;
    check_port_forwards(config)
}

fn check_allocation(config: &NetworkConfig) -> Result<(), PlanError> {
    if config.allocation.prefix_len() != 48 {
        return Err(PlanError::AllocationNotSlash48 {
            allocation: config.allocation,
            len: config.allocation.prefix_len(),
        });
    }
    if !(1..=15).contains(&config.exit_node) {
        return Err(PlanError::ExitNodeOutOfRange(config.exit_node));
    }
    match config
        .enabled_exit_nodes
        .iter()
        .find(|x| !(1..=15).contains(*x))
    {
        Some(x) => Err(PlanError::EnabledExitNodeOutOfRange(*x)),
        None => Ok(()),
    }
}

/// The longest names: `veth-{hex}-{a}` (per resource) is the longest for any nibble, and
/// `pub-{x}-{a}` for the gateway; both grow only with the allocation number.
fn check_names(config: &NetworkConfig) -> Result<(), PlanError> {
    let a = config.alloc_nr;
    let longest = naming::nr_local_name(Nibble { n0: 0, n1: 0 }, a);
    check_name("interface", &longest, a)?;
    check_name(
        "gateway uplink",
        &naming::gw_pub_name(config.exit_node, a),
        a,
    )
}

pub(crate) fn check_name(what: &'static str, name: &str, alloc_nr: u32) -> Result<(), PlanError> {
    if name.len() > crate::iface::MAX_IFNAME_LEN {
        return Err(PlanError::NameTooLong {
            what,
            name: name.to_string(),
            alloc_nr,
        });
    }
    Ok(())
}

fn check_tenants(config: &NetworkConfig) -> Result<(), PlanError> {
    let mut tenants: HashMap<&str, ()> = HashMap::new();
    let mut seen: HashMap<Ipv6Net, &str> = HashMap::new();
    for tenant in &config.tenants {
        if tenants.insert(&tenant.name, ()).is_some() {
            return Err(PlanError::DuplicateTenant(tenant.name.clone()));
        }
        for resource in &tenant.resources {
            check_resource(config, &tenant.name, &resource.prefix)?;
            let prefix = resource.prefix.trunc();
            if let Some(first) = seen.insert(prefix, &tenant.name) {
                return Err(PlanError::DuplicateResource {
                    prefix,
                    first: first.to_string(),
                    second: tenant.name.clone(),
                });
            }
            check_key(&tenant.name, resource)?;
        }
        check_exitpoint(tenant)?;
    }
    Ok(())
}

fn check_resource(config: &NetworkConfig, tenant: &str, prefix: &Ipv6Net) -> Result<(), PlanError> {
    if prefix.prefix_len() != 64 {
        return Err(PlanError::ResourceNotSlash64 {
            tenant: tenant.to_string(),
            prefix: *prefix,
        });
    }
    let net = naming::exit_node_net(&config.allocation, config.exit_node);
    if !net.contains(prefix) {
        return Err(PlanError::ResourceOutsideExitNode {
            tenant: tenant.to_string(),
            prefix: *prefix,
            exit_node: config.exit_node,
            net,
        });
    }
    let nib = Nibble::of(prefix);
    if nib.n0 == 0xff {
        return Err(PlanError::Ipv4Overlap {
            tenant: tenant.to_string(),
            prefix: *prefix,
            net: naming::nr_ip4_net(nib),
        });
    }
    Ok(())
}

fn check_key(tenant: &str, resource: &super::input::ResourceConfig) -> Result<(), PlanError> {
    match &resource.public_key {
        None if !resource.exitpoint => Err(PlanError::MissingPublicKey {
            tenant: tenant.to_string(),
            prefix: resource.prefix,
        }),
        Some(key) if wireguard_control::Key::from_base64(key).is_err() => {
            Err(PlanError::BadPublicKey {
                tenant: tenant.to_string(),
                prefix: resource.prefix,
                key: key.clone(),
            })
        }
        _ => Ok(()),
    }
}

fn check_exitpoint(tenant: &super::input::TenantConfig) -> Result<(), PlanError> {
    let mut exitpoints = tenant.resources.iter().filter(|r| r.exitpoint);
    let Some(first) = exitpoints.next() else {
        return Err(PlanError::NoExitPoint {
            tenant: tenant.name.clone(),
        });
    };
    match exitpoints.next() {
        Some(second) => Err(PlanError::SeveralExitPoints {
            tenant: tenant.name.clone(),
            first: first.prefix,
            second: second.prefix,
        }),
        None => Ok(()),
    }
}

fn resource_count(config: &NetworkConfig) -> usize {
    config.tenants.iter().map(|t| t.resources.len()).sum()
}

/// The gateway carries one /64 route per network resource behind this exit node.
pub fn check_route_budget(count: usize) -> Result<(), PlanError> {
    if count > ROUTE_BUDGET {
        return Err(PlanError::RouteBudgetExceeded { count });
    }
    Ok(())
}

/// The seed's advice, as a warning for the plan.
pub fn route_warning(count: usize) -> Option<String> {
    (count >= ROUTE_WARNING).then(|| {
        format!(
            "the gateway carries {count} /64 routes; from {ROUTE_WARNING} on the seed advises \
             adding an exit node (budget {ROUTE_BUDGET})"
        )
    })
}

fn check_port_forwards(config: &NetworkConfig) -> Result<(), PlanError> {
    let mut used: HashMap<(Protocol, u16), &str> = HashMap::new();
    for tenant in &config.tenants {
        if !tenant.port_forwards.is_empty() && config.gateway_ipv4.is_none() {
            return Err(PlanError::PortForwardWithoutIpv4 {
                tenant: tenant.name.clone(),
            });
        }
        for forward in &tenant.port_forwards {
            let inside = tenant
                .resources
                .iter()
                .any(|r| naming::nr_ip4_net(Nibble::of(&r.prefix)).contains(forward.to.ip()));
            if !inside {
                return Err(PlanError::PortForwardOutsideTenant {
                    tenant: tenant.name.clone(),
                    protocol: forward.protocol,
                    port: forward.port,
                    target: *forward.to.ip(),
                });
            }
            if let Some(first) = used.insert((forward.protocol, forward.port), &tenant.name) {
                return Err(PlanError::DuplicatePortForward {
                    protocol: forward.protocol,
                    port: forward.port,
                    first: first.to_string(),
                    second: tenant.name.clone(),
                });
            }
        }
    }
    Ok(())
}
