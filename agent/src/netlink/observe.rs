//! Reading a namespace's links, addresses and exitd's routes over rtnetlink, and the
//! individual changes the reconciler makes.

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol},
    },
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

/// Routes exitd installs carry this protocol number (`ip route ... proto 78`): that is how
/// the reconciler tells its own routes from everyone else's, which it never touches.
pub const ROUTE_PROTOCOL: u8 = 78;

#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// Links of the namespace by name.
pub async fn links(handle: &Handle) -> Result<BTreeMap<String, Link>> {
    let mut stream = handle.link().get().execute();
    let mut out = BTreeMap::new();
    while let Some(msg) = stream.try_next().await.context("cannot list links")? {
        if let Some(name) = link_name(&msg) {
            let up = msg.header.flags.contains(LinkFlags::Up);
            let mtu = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            });
            out.insert(
                name,
                Link {
                    index: msg.header.index,
                    up,
                    mtu,
                },
            );
        }
    }
    Ok(out)
}

fn link_name(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// Creates a veth pair; the peer goes into the namespace `peer_ns_fd` when given.
pub async fn add_veth(
    handle: &Handle,
    name: &str,
    peer: &str,
    peer_ns_fd: Option<RawFd>,
) -> Result<()> {
    let mut peer_msg = LinkUnspec::new_with_name(peer);
    if let Some(fd) = peer_ns_fd {
        peer_msg = peer_msg.setns_by_fd(fd);
    }
    let msg = LinkVeth::new(name, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("cannot create veth {name} <-> {peer}"))
}

/// Moves link `index` into the namespace `ns_fd`, renaming it to `new_name` on the way.
pub async fn move_link(handle: &Handle, index: u32, new_name: &str, ns_fd: RawFd) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index)
        .name(new_name.to_string())
        .setns_by_fd(ns_fd)
        .build();
    handle.link().set(msg).execute().await.with_context(|| {
        format!("cannot move link {index} into the gateway namespace as {new_name}")
    })
}

/// Sets the MTU of link `index`.
pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("cannot set the MTU of link {index}"))
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .context("cannot set link up")
}

/// Sets link `index` down (a gateway handed to another node stops forwarding).
pub async fn set_down(handle: &Handle, index: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).down().build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .context("cannot set link down")
}

pub async fn delete_link(handle: &Handle, index: u32) -> Result<()> {
    handle
        .link()
        .del(index)
        .execute()
        .await
        .context("cannot delete link")
}

/// Addresses by link index, with the messages needed to delete them.
pub async fn addresses(handle: &Handle) -> Result<Vec<(u32, IpNet, AddressMessage)>> {
    let mut stream = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.context("cannot list addresses")? {
        if let Some(net) = address_of(&msg) {
            out.push((msg.header.index, net, msg));
        }
    }
    Ok(out)
}

fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    // For IPv4 IFA_LOCAL is the interface's address (IFA_ADDRESS may be a peer's).
    let wanted_local = msg.header.family == AddressFamily::Inet;
    let addr = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) if wanted_local => Some(*ip),
        AddressAttribute::Address(ip) if !wanted_local => Some(*ip),
        _ => None,
    })?;
    IpNet::new(addr, msg.header.prefix_len).ok()
}

/// Adds an address without duplicate address detection: the plan's addresses are unique by
/// construction, and a tentative address would not answer for a second or two.
pub async fn add_address(handle: &Handle, index: u32, net: IpNet) -> Result<()> {
    let mut request = handle.address().add(index, net.addr(), net.prefix_len());
    let msg = request.message_mut();
    msg.header.flags |= AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request
        .execute()
        .await
        .with_context(|| format!("cannot add address {net}"))
}

pub async fn delete_address(handle: &Handle, msg: AddressMessage) -> Result<()> {
    handle
        .address()
        .del(msg)
        .execute()
        .await
        .context("cannot delete address")
}

/// A route as the reconciler compares it: destination, next hop, output link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteKey {
    pub dest: IpNet,
    pub via: Option<IpAddr>,
    pub oif: u32,
}

/// exitd's routes in the main table (both families), with their messages.
pub async fn owned_routes(handle: &Handle) -> Result<Vec<(RouteKey, RouteMessage)>> {
    let mut out = Vec::new();
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for request in dumps {
        let mut stream = handle.route().get(request).execute();
        while let Some(msg) = stream.try_next().await.context("cannot list routes")? {
            let ours = msg.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                && table_of(&msg)
                    == u32::from(rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN);
            if let Some(key) = ours.then(|| route_key(&msg)).flatten() {
                out.push((key, msg));
            }
        }
    }
    Ok(out)
}

fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_key(msg: &RouteMessage) -> Option<RouteKey> {
    let mut dest = None;
    let mut via = None;
    let mut oif = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dest = ip_of(a),
            RouteAttribute::Gateway(a) => via = ip_of(a),
            RouteAttribute::Oif(i) => oif = *i,
            _ => {}
        }
    }
    let dest = dest.unwrap_or(match msg.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let dest = IpNet::new(dest, msg.header.destination_prefix_length).ok()?;
    Some(RouteKey { dest, via, oif })
}

pub async fn add_route(handle: &Handle, key: &RouteKey, onlink: bool) -> Result<()> {
    let protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    let mut msg = match (key.dest, key.via) {
        (IpNet::V4(dest), via) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dest.addr(), dest.prefix_len())
                .output_interface(key.oif)
                .protocol(protocol);
            if let Some(IpAddr::V4(gw)) = via {
                b = b.gateway(gw);
            }
            b.build()
        }
        (IpNet::V6(dest), via) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dest.addr(), dest.prefix_len())
                .output_interface(key.oif)
                .protocol(protocol);
            if let Some(IpAddr::V6(gw)) = via {
                b = b.gateway(gw);
            }
            b.build()
        }
    };
    if key.via.is_none() {
        msg.header.scope = rtnetlink::packet_route::route::RouteScope::Link;
    }
    if onlink {
        msg.header.flags |= RouteFlags::Onlink;
    }
    handle
        .route()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("cannot add route {key:?}"))
}

pub async fn delete_route(handle: &Handle, msg: RouteMessage) -> Result<()> {
    handle
        .route()
        .del(msg)
        .execute()
        .await
        .context("cannot delete route")
}
