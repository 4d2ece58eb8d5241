//! Input → plan. Pure: no I/O, and the same input always gives the same plan (lists are
//! sorted by nibble, so the order of tenants in the file does not matter either).

use super::{
    input::{NetworkConfig, ResourceConfig, TenantConfig},
    model::*,
    naming::{self as n, Nibble},
    validate::{self, PlanError},
};
use ipnet::{IpNet, Ipv6Net};
use std::net::{IpAddr, SocketAddrV4};

/// Validates `config` and derives the whole plan from it.
pub fn derive(config: &NetworkConfig) -> Result<Plan, PlanError> {
    validate::validate(config)?;
    let mut tenants: Vec<&TenantConfig> = config.tenants.iter().collect();
    tenants.sort_by_key(|t| exitpoint_of(t).map(|ep| Nibble::of(&ep.prefix)));
    let exitpoints: Vec<ExitPointPlan> = tenants
        .iter()
        .filter_map(|t| exitpoint_plan(config, t))
        .collect();
    let gateway = gateway_plan(config, &tenants);
    let route_count = tenants.iter().map(|t| t.resources.len()).sum();
    Ok(Plan {
        allocation: config.allocation,
        exit_node: config.exit_node,
        alloc_nr: config.alloc_nr,
        exit_node_net: n::exit_node_net(&config.allocation, config.exit_node),
        upstream: upstream_plan(config),
        dataplane: dataplane_plan(config, &tenants, &gateway),
        gateway,
        exitpoints,
        warnings: validate::route_warning(route_count).into_iter().collect(),
    })
}

fn exitpoint_of(tenant: &TenantConfig) -> Option<&ResourceConfig> {
    tenant.resources.iter().find(|r| r.exitpoint)
}

/// Remote resources of a tenant, sorted by nibble.
fn remotes_of(tenant: &TenantConfig) -> Vec<&ResourceConfig> {
    let mut remotes: Vec<&ResourceConfig> =
        tenant.resources.iter().filter(|r| !r.exitpoint).collect();
    remotes.sort_by_key(|r| Nibble::of(&r.prefix));
    remotes
}

fn upstream_plan(config: &NetworkConfig) -> UpstreamPlan {
    let mut nodes = config.enabled_exit_nodes.clone();
    nodes.push(config.exit_node);
    nodes.sort_unstable();
    nodes.dedup();
    UpstreamPlan {
        addresses: vec![
            IpNet::V6(ll64(n::upstream_ll())),
            IpNet::V6(n::upstream_ip6(&config.allocation)),
        ],
        routes: nodes
            .into_iter()
            .map(|x| UpstreamRoute {
                exit_node: x,
                dest: n::exit_node_net(&config.allocation, x),
                via: n::gw_pub_ll(x).addr(),
                via_global: n::gw_pub_ip6(&config.allocation, x).addr(),
            })
            .collect(),
    }
}

fn ll64(addr: std::net::Ipv6Addr) -> Ipv6Net {
    Ipv6Net::new(addr, 64).unwrap_or_else(|_| Ipv6Net::from(addr))
}

fn gw_netns(config: &NetworkConfig) -> String {
    n::gw_netns_name(&config.namespace_prefix, config.exit_node, config.alloc_nr)
}

fn gateway_plan(config: &NetworkConfig, tenants: &[&TenantConfig]) -> NamespacePlan {
    let (x, a) = (config.exit_node, config.alloc_nr);
    let uplink = n::gw_pub_name(x, a);
    let mut uplink_addrs = vec![
        IpNet::V6(n::gw_pub_ll(x)),
        IpNet::V6(n::gw_pub_ip6(&config.allocation, x)),
    ];
    uplink_addrs.extend(config.gateway_ipv4.map(IpNet::V4));
    let mut links = vec![LinkPlan {
        name: uplink.clone(),
        kind: LinkKind::Uplink {
            source: config.uplink.clone(),
        },
        addresses: uplink_addrs,
    }];
    let mut routes = vec![RoutePlan {
        dest: "::/0".parse().unwrap_or(IpNet::V6(Ipv6Net::default())),
        via: Some(IpAddr::V6(n::upstream_ll())),
        dev: uplink.clone(),
        onlink: false,
    }];
    if let Some(gw4) = config.upstream_ipv4 {
        routes.push(route("0.0.0.0/0", Some(IpAddr::V4(gw4)), &uplink, false));
    }
    for tenant in tenants {
        if let Some(ep) = exitpoint_of(tenant) {
            gateway_tenant(config, tenant, ep, &mut links, &mut routes);
        }
    }
    NamespacePlan {
        name: gw_netns(config),
        links,
        routes,
    }
}

/// The gateway's veth to one tenant's ExitPoint, and the routes of all the tenant's
/// resources through it (the ExitPoint routes for the remote ones over WireGuard).
fn gateway_tenant(
    config: &NetworkConfig,
    tenant: &TenantConfig,
    ep: &ResourceConfig,
    links: &mut Vec<LinkPlan>,
    routes: &mut Vec<RoutePlan>,
) {
    let a = config.alloc_nr;
    let nib = Nibble::of(&ep.prefix);
    let dev = n::gw_to_ep_name(nib, a);
    links.push(LinkPlan {
        name: dev.clone(),
        kind: LinkKind::Veth {
            peer: n::ep_pub_name(nib, a),
            peer_namespace: n::ep_netns_name(&config.namespace_prefix, nib, a),
        },
        addresses: vec![IpNet::V6(n::gw_to_ep_ll(nib)), IpNet::V4(n::gw_to_ep_ip4())],
    });
    let ep_ll = IpAddr::V6(n::ep_pub_ll(nib).addr());
    let ep_ip4 = n::ep_pub_ip4(nib);
    routes.push(route_net(IpNet::V4(ep_ip4), None, &dev, false));
    for resource in std::iter::once(ep).chain(remotes_of(tenant)) {
        let rnib = Nibble::of(&resource.prefix);
        routes.push(route_net(
            IpNet::V6(resource.prefix.trunc()),
            Some(ep_ll),
            &dev,
            false,
        ));
        routes.push(route_net(
            IpNet::V4(n::nr_ip4_net(rnib)),
            Some(IpAddr::V4(ep_ip4.addr())),
            &dev,
            false,
        ));
    }
}

fn route(dest: &str, via: Option<IpAddr>, dev: &str, onlink: bool) -> RoutePlan {
    let dest = dest.parse().unwrap_or(IpNet::V6(Ipv6Net::default()));
    route_net(dest, via, dev, onlink)
}

fn route_net(dest: IpNet, via: Option<IpAddr>, dev: &str, onlink: bool) -> RoutePlan {
    RoutePlan {
        dest,
        via,
        dev: dev.to_string(),
        onlink,
    }
}

fn exitpoint_plan(config: &NetworkConfig, tenant: &TenantConfig) -> Option<ExitPointPlan> {
    let ep = exitpoint_of(tenant)?;
    let a = config.alloc_nr;
    let nib = Nibble::of(&ep.prefix);
    let pub_name = n::ep_pub_name(nib, a);
    let wg = n::wg_name(nib, a);
    let local = n::nr_local_name(nib, a);
    let netns = n::ep_netns_name(&config.namespace_prefix, nib, a);
    let links = vec![
        LinkPlan {
            name: pub_name.clone(),
            kind: LinkKind::VethPeer {
                peer: n::gw_to_ep_name(nib, a),
                peer_namespace: gw_netns(config),
            },
            addresses: vec![IpNet::V6(n::ep_pub_ll(nib)), IpNet::V4(n::ep_pub_ip4(nib))],
        },
        LinkPlan {
            name: local.clone(),
            kind: LinkKind::Veth {
                peer: n::nr_attach_name(nib, a),
                peer_namespace: netns.clone(),
            },
            addresses: vec![
                IpNet::V6(n::nr_local_ip6(&ep.prefix)),
                IpNet::V4(n::nr_local_ip4(nib)),
            ],
        },
        LinkPlan {
            name: n::nr_attach_name(nib, a),
            kind: LinkKind::VethPeer {
                peer: local,
                peer_namespace: netns.clone(),
            },
            addresses: Vec::new(),
        },
        LinkPlan {
            name: wg.clone(),
            kind: LinkKind::Wireguard,
            addresses: vec![IpNet::V6(n::wg_ll(nib)), IpNet::V4(n::wg_ip4_rt(nib))],
        },
    ];
    let mut routes = vec![
        route(
            "::/0",
            Some(IpAddr::V6(n::gw_to_ep_ll(nib).addr())),
            &pub_name,
            false,
        ),
        route(
            "0.0.0.0/0",
            Some(IpAddr::V4(n::gw_to_ep_ip4().addr())),
            &pub_name,
            true,
        ),
    ];
    let remotes = remotes_of(tenant);
    for remote in &remotes {
        let rnib = Nibble::of(&remote.prefix);
        routes.push(route_net(
            IpNet::V6(remote.prefix.trunc()),
            None,
            &wg,
            false,
        ));
        routes.push(route_net(IpNet::V4(n::nr_ip4_net(rnib)), None, &wg, false));
    }
    Some(ExitPointPlan {
        tenant: tenant.name.clone(),
        node: ep.node.clone(),
        prefix: ep.prefix.trunc(),
        hex: nib.hex(),
        namespace: NamespacePlan {
            name: netns,
            links,
            routes,
        },
        wireguard: WireguardPlan {
            private_key_file: config.key_dir.join(format!("{wg}.key")),
            link: wg,
            listen_port: n::wireguard_port(nib),
            mtu: super::settings::DEFAULT_WG_MTU,
            keepalive: super::settings::DEFAULT_WG_KEEPALIVE,
            peers: remotes.iter().filter_map(|r| peer_plan(r)).collect(),
        },
    })
}

/// A remote resource as a WireGuard peer of the ExitPoint: allowed its /64, its IPv4 /24,
/// its routing address and its WireGuard link-local.
fn peer_plan(remote: &ResourceConfig) -> Option<PeerPlan> {
    let nib = Nibble::of(&remote.prefix);
    Some(PeerPlan {
        node: remote.node.clone(),
        prefix: remote.prefix.trunc(),
        public_key: remote.public_key.clone()?,
        endpoint: remote.endpoint,
        allowed_ips: vec![
            IpNet::V6(remote.prefix.trunc()),
            IpNet::V4(n::nr_ip4_net(nib)),
            IpNet::V4(n::wg_allowed_ip4(nib)),
            IpNet::V6(n::wg_ll_allowed(nib)),
        ],
    })
}

fn dataplane_plan(
    config: &NetworkConfig,
    tenants: &[&TenantConfig],
    gateway: &NamespacePlan,
) -> DataplanePlan {
    let uplink = n::gw_pub_name(config.exit_node, config.alloc_nr);
    let a = config.alloc_nr;
    let mut prefixes = Vec::new();
    let mut snat = Vec::new();
    let mut port_forwards = Vec::new();
    let public = config.gateway_ipv4.map(|net| net.addr());
    for tenant in tenants {
        let Some(ep) = exitpoint_of(tenant) else {
            continue;
        };
        let ep_nib = Nibble::of(&ep.prefix);
        for resource in std::iter::once(ep).chain(remotes_of(tenant)) {
            prefixes.push(PrefixRoute {
                prefix: resource.prefix.trunc(),
                link: n::gw_to_ep_name(ep_nib, a),
                next_hop: n::ep_pub_ll(ep_nib).addr(),
            });
            if let Some(to) = public {
                snat.push(SnatEntry {
                    tenant: tenant.name.clone(),
                    tenant_id: u32::from(ep_nib.value()),
                    source: n::nr_ip4_net(Nibble::of(&resource.prefix)),
                    to,
                    link: n::gw_to_ep_name(ep_nib, a),
                    next_hop: n::ep_pub_ip4(ep_nib).addr(),
                });
            }
        }
        if let Some(ip) = public {
            port_forwards.extend(tenant.port_forwards.iter().map(|f| PortForwardEntry {
                tenant: tenant.name.clone(),
                protocol: f.protocol,
                public: SocketAddrV4::new(ip, f.port),
                target: f.to,
            }));
        }
    }
    DataplanePlan {
        namespace: gateway.name.clone(),
        xdp_forward: true,
        default_route: NextHop {
            link: uplink.clone(),
            next_hop: n::upstream_ll(),
        },
        prefixes,
        nat: NatPlan {
            public_ipv4: public,
            out_link: uplink,
            snat,
            port_forwards,
            upstream_ipv4: config.upstream_ipv4,
            ebpf: true,
            settings: NatSettings::default(),
        },
        nat64: Default::default(),
    }
}
