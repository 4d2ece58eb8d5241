//! The forwarder on an exit node's gateway: attaching it to the gateway's links, turning the
//! plan's data-plane entries plus the namespace's links and neighbours into map contents,
//! and keeping the maps current as neighbours come and go.
//!
//! Everything runs on a thread inside the gateway's network namespace: ifindexes, the
//! devmap's interfaces and netlink sockets all belong to the namespace of the caller.

use super::{
    AttachOutcome, PinDir, XdpModeArg, XdpProgram, attach_xdp, attach_xdp_all_sized,
    fwd6::{Fwd6Maps, Fwd6Table, SyncReport, prefix64},
    nat4::{self, Nat4Maps, Nat4Table},
    nat64::{self, Nat64Table},
    nat64_maps::Nat64Maps,
};
use crate::{
    netlink::netns,
    plan::{LinkKind, Plan},
};
use anyhow::{Context, Result, bail};
use exitd_common::{MAX_ROUTES6, ROUTE_NEIGH_KNOWN, Route6, nat4::NAT4_ENABLED};
use futures::{StreamExt, TryStreamExt};
use ipnet::{IpNet, Ipv6Net};
use rtnetlink::{
    Handle,
    packet_route::{
        link::LinkAttribute,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
            NeighbourState,
        },
    },
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

/// Counter slot of the default route (LPM routes use the slots after the /64s).
pub const DEFAULT_ROUTE_ID: u32 = MAX_ROUTES6;

/// The route id of a tenant /64: its nibble (bytes 6..8). Tenant prefixes lie in one /48,
/// so the nibble is unique, and it stays the same however the route table changes.
pub fn route_id(prefix: &Ipv6Net) -> u32 {
    let o = prefix.addr().octets();
    u32::from(u16::from_be_bytes([o[6], o[7]]))
}

/// A link of the namespace as the forwarder needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFact {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The namespace's links by name and its resolved neighbours by (ifindex, address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub links: BTreeMap<String, LinkFact>,
    pub neighbours: BTreeMap<(u32, Ipv6Addr), [u8; 6]>,
    pub neighbours4: BTreeMap<(u32, Ipv4Addr), [u8; 6]>,
}

/// Everything the gateway's programs need in their maps: the IPv6 forwarder's entries,
/// the IPv4 translator's, NAT64's and the firewall's. The translator's egress links are
/// among the forwarder's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayTable {
    pub fwd6: Fwd6Table,
    pub nat4: Nat4Table,
    pub nat64: Nat64Table,
}

impl GatewayTable {
    pub fn of(plan: &Plan, facts: &LinkFacts) -> Result<GatewayTable> {
        let mut fwd6 = table_for(plan, facts)?;
        let mut nat4 = nat4::table_for(plan, facts)?;
        let nat4_on = nat4.config.flags & NAT4_ENABLED != 0;
        if nat4_on {
            nat4.routes.extend(nat64::node_routes(plan, facts));
        }
        fwd6.ports.extend(nat4.ports());
        // The gateway's addresses on node-facing links are local: the firewall guards them.
        let local6 = plan.dataplane.nat64.local6.iter().map(|a| a.octets());
        fwd6.local.extend(local6);
        let nat64 = nat64::table_for(plan, facts, nat4_on);
        Ok(GatewayTable { fwd6, nat4, nat64 })
    }

    fn all_resolved(&self) -> bool {
        all_resolved(&self.fwd6) && self.nat4.all_resolved()
    }
}

/// Handles on all of the gateway's maps.
pub struct GatewayMaps {
    pub fwd6: Fwd6Maps,
    pub nat4: Nat4Maps,
    /// None while a forwarder loaded by an exitd without NAT64 runs (its pins lack the maps;
    /// the next load of the object creates them).
    pub nat64: Option<Nat64Maps>,
    pins: PinDir,
}

impl GatewayMaps {
    pub fn open_pinned(pins: &PinDir) -> Result<GatewayMaps> {
        Ok(GatewayMaps {
            fwd6: Fwd6Maps::open_pinned(pins)?,
            nat4: Nat4Maps::open_pinned(pins)?,
            nat64: Nat64Maps::open_pinned(pins).ok(),
            pins: pins.clone(),
        })
    }

    /// Syncs all; the forwarder first, so the translator's egress ports exist before the
    /// translator may redirect to them, NAT64 last, as it translates to NAT44's address.
    pub fn sync(&mut self, want: &GatewayTable) -> Result<SyncReport> {
        let mut report = self.fwd6.sync(&want.fwd6)?;
        let mut add = |(added, updated, removed): (usize, usize, usize)| {
            report.added += added;
            report.updated += updated;
            report.removed += removed;
        };
        add(self.nat4.sync(&want.nat4)?);
        if self.nat64.is_none() {
            self.nat64 = Nat64Maps::open_pinned(&self.pins).ok();
        }
        match &mut self.nat64 {
            Some(maps) => add(maps.sync(&want.nat64)?),
            None if want.nat64 != Nat64Table::default() => tracing::warn!(
                pins = %self.pins.root().display(),
                "the NAT64 and firewall maps are not pinned yet (a forwarder of an older \
                 exitd runs); they are filled once the NAT64 program is loaded"
            ),
            None => {}
        }
        Ok(report)
    }
}

/// The forwarder's map contents for `plan` given the namespace's links and neighbours.
/// A route whose next hop is not resolved yet is installed without a MAC: the program then
/// leaves its packets to the kernel until the neighbour is known.
pub fn table_for(plan: &Plan, facts: &LinkFacts) -> Result<Fwd6Table> {
    let dp = &plan.dataplane;
    let mut table = Fwd6Table::default();
    let mut route_via = |link: &str, next_hop: Ipv6Addr, route_id: u32| -> Result<Route6> {
        let Some(fact) = facts.links.get(link) else {
            bail!(
                "link {link} of the plan does not exist in namespace {} (apply the plan first)",
                dp.namespace
            );
        };
        table.ports.insert(fact.ifindex);
        let neighbour = facts.neighbours.get(&(fact.ifindex, next_hop));
        Ok(Route6 {
            ifindex: fact.ifindex,
            route_id,
            dst_mac: neighbour.copied().unwrap_or_default(),
            src_mac: fact.mac,
            flags: if neighbour.is_some() {
                ROUTE_NEIGH_KNOWN
            } else {
                0
            },
        })
    };
    let default = route_via(
        &dp.default_route.link,
        dp.default_route.next_hop,
        DEFAULT_ROUTE_ID,
    )?;
    let mut routes64 = BTreeMap::new();
    for p in &dp.prefixes {
        let route = route_via(&p.link, p.next_hop, route_id(&p.prefix))?;
        routes64.insert(prefix64(p.prefix.addr()), route);
    }
    table.routes64 = routes64;
    table.lpm.insert((0, [0; 16]), default);
    for link in &plan.gateway.links {
        for addr in &link.addresses {
            if let IpNet::V6(net) = addr
                && !is_link_local(net.addr())
            {
                table.local.insert(net.addr().octets());
            }
        }
    }
    Ok(table)
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// Next hops of the plan: (link, address) pairs whose MACs the forwarder needs.
fn next_hops(plan: &Plan) -> Vec<(String, Ipv6Addr)> {
    let dp = &plan.dataplane;
    let mut hops = vec![(dp.default_route.link.clone(), dp.default_route.next_hop)];
    hops.extend(dp.prefixes.iter().map(|p| (p.link.clone(), p.next_hop)));
    hops.sort();
    hops.dedup();
    hops
}

/// IPv4 next hops of the translator: the upstream router and each ExitPoint.
fn next_hops4(plan: &Plan) -> Vec<(String, Ipv4Addr)> {
    let nat = &plan.dataplane.nat;
    if !nat.ebpf || nat.public_ipv4.is_none() {
        return Vec::new();
    }
    let mut hops: Vec<(String, Ipv4Addr)> = nat
        .upstream_ipv4
        .map(|up| (nat.out_link.clone(), up))
        .into_iter()
        .chain(nat.snat.iter().map(|s| (s.link.clone(), s.next_hop)))
        .collect();
    hops.sort();
    hops.dedup();
    hops
}

/// Reads the namespace's links (ifindex, MAC) and resolved IPv6 neighbours.
pub async fn observe(handle: &Handle) -> Result<LinkFacts> {
    let mut facts = LinkFacts::default();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("cannot list links")? {
        let mut name = None;
        let mut mac = [0u8; 6];
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(a) if a.len() == 6 => mac.copy_from_slice(a),
                _ => {}
            }
        }
        if let Some(name) = name {
            facts.links.insert(
                name,
                LinkFact {
                    ifindex: msg.header.index,
                    mac,
                },
            );
        }
    }
    for family in [
        rtnetlink::packet_route::AddressFamily::Inet6,
        rtnetlink::packet_route::AddressFamily::Inet,
    ] {
        let mut neighbours = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(msg) = neighbours
            .try_next()
            .await
            .context("cannot list neighbours")?
        {
            match resolved_neighbour(&msg) {
                Some(((ifindex, IpAddr::V6(a)), mac)) => {
                    facts.neighbours.insert((ifindex, a), mac);
                }
                Some(((ifindex, IpAddr::V4(a)), mac)) => {
                    facts.neighbours4.insert((ifindex, a), mac);
                }
                None => {}
            }
        }
    }
    Ok(facts)
}

/// A neighbour entry with a usable link-layer address.
fn resolved_neighbour(msg: &NeighbourMessage) -> Option<((u32, IpAddr), [u8; 6])> {
    let usable = matches!(
        msg.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some(((msg.header.ifindex, addr?), mac?))
}

/// Asks the kernel to resolve every next hop and keep it resolved (a "managed" neighbour,
/// Linux ≥ 5.16): the fast path never sends through the kernel, so nothing else would.
async fn ensure_managed_neighbours(handle: &Handle, plan: &Plan, facts: &LinkFacts) -> Result<()> {
    let v6 = next_hops(plan)
        .into_iter()
        .map(|(link, a)| (link, IpAddr::V6(a)));
    let v4 = next_hops4(plan)
        .into_iter()
        .map(|(link, a)| (link, IpAddr::V4(a)));
    for (link, addr) in v6.chain(v4) {
        let Some(fact) = facts.links.get(&link) else {
            continue;
        };
        let known = match addr {
            IpAddr::V6(a) => facts.neighbours.contains_key(&(fact.ifindex, a)),
            IpAddr::V4(a) => facts.neighbours4.contains_key(&(fact.ifindex, a)),
        };
        if known {
            continue;
        }
        let mut request = handle.neighbours().add(fact.ifindex, addr).replace();
        let msg = request.message_mut();
        msg.header.state = NeighbourState::None;
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        if let Err(e) = request.execute().await {
            // An existing resolved entry of another kind is fine; anything else is logged,
            // and the kernel still resolves the neighbour when it forwards.
            tracing::debug!(%addr, link, error = %e, "cannot add a managed neighbour");
        }
    }
    Ok(())
}

/// Attaches the forwarder to the gateway's links and a pass program to the far ends of the
/// gateway's veths (a frame redirected into a veth is dropped unless its peer runs XDP).
/// Each namespace pins into its own subdirectory of `pin_root`.
pub fn attach(plan: &Plan, pin_root: &Path, mode: XdpModeArg) -> Result<()> {
    prune_stale_namespaces(pin_root)?;
    let gw = plan.dataplane.namespace.clone();
    let pins = PinDir::new(pin_root.join(&gw));
    let mut fwd_links: Vec<String> = next_hops(plan).into_iter().map(|(link, _)| link).collect();
    fwd_links.dedup();
    let max_connections = plan.dataplane.nat.settings.max_connections;
    let node_links = plan.dataplane.nat64.interfaces.clone();
    warn_without_public_ipv4(plan);
    netns::run_in(Some(&gw), move || async move {
        let outcomes = attach_xdp_all_sized(
            &pins,
            &fwd_links,
            XdpProgram::Fwd6,
            mode,
            Some(max_connections),
        )?;
        for (link, outcome) in fwd_links.iter().zip(outcomes) {
            log_attach(link, outcome);
        }
        attach_nat64(&pins, &node_links, max_connections)
    })?;
    for link in &plan.gateway.links {
        if let LinkKind::Veth {
            peer,
            peer_namespace,
        } = &link.kind
        {
            let pins = PinDir::new(pin_root.join(peer_namespace));
            let peer = peer.clone();
            netns::run_in(Some(peer_namespace), move || async move {
                log_attach(&peer, attach_xdp(&pins, &peer, XdpProgram::Count, mode)?);
                crate::iface::set_tx_checksum(&peer, false)?;
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Detaches the forwarder and the peers' programs of `plan` and removes their pins and maps.
pub fn detach(plan: &Plan, pin_root: &Path) -> Result<()> {
    let mut namespaces = vec![plan.dataplane.namespace.clone()];
    for link in &plan.gateway.links {
        if let LinkKind::Veth { peer_namespace, .. } = &link.kind {
            namespaces.push(peer_namespace.clone());
        }
    }
    for ns in namespaces {
        let dir = pin_root.join(&ns);
        super::detach_all(&PinDir::new(&dir))?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Removes the pin directories of namespaces that no longer exist (a removed ExitPoint, a
/// gateway handed to another node): their links are defunct and their maps unused.
pub fn prune_stale_namespaces(pin_root: &Path) -> Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(pin_root) else {
        return Ok(Vec::new());
    };
    let mut pruned = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Namespace directories hold a `links` directory; the root's own files are maps.
        let is_namespace_dir = name != "links" && entry.path().join("links").is_dir();
        if is_namespace_dir && !netns::exists(&name) {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove stale pins {}", entry.path().display()))?;
            tracing::info!(
                namespace = name,
                "removed the pins of a namespace that is gone"
            );
            pruned.push(name);
        }
    }
    Ok(pruned)
}

/// Attaches the NAT64 classifier to those of the node-facing links `links` that exist in
/// the calling thread's namespace (the concentrator creates its interface later; the
/// follower attaches it then), and detaches it from links no longer configured.
/// Idempotent.
fn attach_nat64(pins: &PinDir, links: &[String], max_connections: u32) -> Result<()> {
    for gone in super::tc::detach_nat64_except(pins, links)? {
        tracing::info!(
            link = gone,
            "detached NAT64 from a link no longer configured"
        );
    }
    let present: Vec<String> = links
        .iter()
        .filter(|l| crate::iface::index_of(l).is_ok())
        .cloned()
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let outcomes = super::tc::attach_nat64_all(pins, &present, Some(max_connections))?;
    for (link, outcome) in present.iter().zip(outcomes) {
        log_attach(link, outcome);
    }
    Ok(())
}

/// NAT64 translates to the IPv4 translator's public address: without one it stays off.
fn warn_without_public_ipv4(plan: &Plan) {
    let nat = &plan.dataplane.nat;
    let nat4_on = nat.ebpf && nat.public_ipv4.is_some() && nat.upstream_ipv4.is_some();
    if plan.dataplane.nat64.enabled() && !nat4_on {
        tracing::warn!(
            gateway = %plan.dataplane.namespace,
            "[dataplane.nat64] is set but the gateway has no eBPF IPv4 NAT (network.gateway_ipv4 \
             and network.upstream_ipv4, XDP forwarding on): NAT64 stays off"
        );
    }
}

fn log_attach(link: &str, outcome: AttachOutcome) {
    match outcome {
        AttachOutcome::Attached { ifindex } => tracing::info!(link, ifindex, "attached"),
        AttachOutcome::AlreadyAttached { ifindex } => {
            tracing::debug!(link, ifindex, "already attached")
        }
    }
}

/// Makes the forwarder's maps match the plan once, waiting up to `wait` for next hops to
/// resolve. Returns what changed.
pub fn sync(plan: &Plan, pin_root: &Path, wait: Duration) -> Result<SyncReport> {
    let gw = plan.dataplane.namespace.clone();
    let pins = PinDir::new(pin_root.join(&gw));
    let plan = plan.clone();
    netns::run_in(Some(&gw), move || async move {
        let handle = netns::connect()?;
        let mut maps = GatewayMaps::open_pinned(&pins)?;
        let facts = observe(&handle).await?;
        ensure_managed_neighbours(&handle, &plan, &facts).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut table = GatewayTable::of(&plan, &observe(&handle).await?)?;
        while !table.all_resolved() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            table = GatewayTable::of(&plan, &observe(&handle).await?)?;
        }
        maps.sync(&table)
    })
}

fn all_resolved(table: &Fwd6Table) -> bool {
    table
        .routes64
        .values()
        .chain(table.lpm.values())
        .all(|r| r.flags & ROUTE_NEIGH_KNOWN != 0)
}

/// Follows neighbour and link changes in the gateway namespace and re-syncs the maps after
/// each burst of changes, until the process ends. Runs on its own thread.
pub fn follow(plan: Plan, pin_root: &Path) -> std::thread::JoinHandle<Result<()>> {
    let gw = plan.dataplane.namespace.clone();
    let pins = PinDir::new(pin_root.join(&gw));
    std::thread::spawn(move || {
        netns::run_in(Some(&gw.clone()), move || async move {
            let (mut connection, handle, mut events) = rtnetlink::new_connection()?;
            use rtnetlink::sys::{AsyncSocket, SocketAddr};
            // Legacy group bitmask: bit (group - 1) for RTNLGRP_LINK (1) and RTNLGRP_NEIGH (3).
            const RTMGRP_LINK: u32 = 1;
            const RTMGRP_NEIGH: u32 = 1 << 2;
            let groups = RTMGRP_LINK | RTMGRP_NEIGH;
            connection
                .socket_mut()
                .socket_mut()
                .bind(&SocketAddr::new(0, groups))
                .context("cannot subscribe to neighbour events")?;
            tokio::spawn(connection);
            let mut maps = GatewayMaps::open_pinned(&pins)?;
            let mut exhausted = ExhaustionLog::new(&maps.nat4);
            let node_links = &plan.dataplane.nat64.interfaces;
            let max_connections = plan.dataplane.nat.settings.max_connections;
            loop {
                let facts = observe(&handle).await?;
                ensure_managed_neighbours(&handle, &plan, &facts).await?;
                // A node-facing link that appeared (the concentrator's) gets its program.
                if let Err(e) = attach_nat64(&pins, node_links, max_connections) {
                    tracing::error!(error = %format!("{e:#}"), "cannot attach NAT64");
                }
                let report = maps.sync(&GatewayTable::of(&plan, &facts)?)?;
                if report.changed() {
                    tracing::info!(?report, "forwarder maps updated");
                }
                loop {
                    tokio::select! {
                        event = events.next() => {
                            if event.is_none() {
                                bail!("the netlink event stream of {gw} ended");
                            }
                            break;
                        }
                        _ = tokio::time::sleep(ExhaustionLog::EVERY) => {
                            exhausted.check(&maps.nat4, &gw);
                        }
                    }
                }
                // Let a burst of events settle, then take them all at once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
            }
        })
    })
}

/// Logs new connections the translator dropped for lack of public ports (the program
/// can only count them).
struct ExhaustionLog {
    seen: u64,
}

impl ExhaustionLog {
    const EVERY: Duration = Duration::from_secs(2);

    fn new(maps: &Nat4Maps) -> ExhaustionLog {
        ExhaustionLog {
            seen: Self::count(maps),
        }
    }

    fn count(maps: &Nat4Maps) -> u64 {
        maps.verdict_counters()
            .ok()
            .and_then(|all| {
                all.into_iter()
                    .find(|(v, _)| *v == exitd_common::nat4::Nat4Verdict::DropExhausted)
            })
            .map_or(0, |(_, c)| c.packets)
    }

    fn check(&mut self, maps: &Nat4Maps, gateway: &str) {
        let now = Self::count(maps);
        if now > self.seen {
            tracing::warn!(
                gateway,
                dropped = now - self.seen,
                total = now,
                "NAT port exhaustion: new IPv4 connections dropped (no free public port; \
                 widen [dataplane.nat] ports or add a public address)"
            );
        }
        self.seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetworkConfig, derive};

    fn seed_plan() -> Plan {
        let resources: Vec<Ipv6Net> = ["2a02:1802:5e:1abc::/64", "2a02:1802:5e:1123::/64"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let config = NetworkConfig::quick("2a02:1802:5e::/48".parse().unwrap(), 1, 1, &resources);
        derive(&config).expect("the seed example is valid")
    }

    fn facts_for(plan: &Plan, resolved: bool) -> LinkFacts {
        let mut facts = LinkFacts::default();
        for (i, link) in plan.gateway.links.iter().enumerate() {
            let ifindex = i as u32 + 2;
            facts.links.insert(
                link.name.clone(),
                LinkFact {
                    ifindex,
                    mac: [2, 0, 0, 0, 0, ifindex as u8],
                },
            );
        }
        if resolved {
            for (link, addr) in next_hops(plan) {
                let ifindex = facts.links[&link].ifindex;
                facts
                    .neighbours
                    .insert((ifindex, addr), [2, 0xee, 0, 0, 0, ifindex as u8]);
            }
        }
        facts
    }

    #[test]
    fn the_seed_example_becomes_two_routes_a_default_route_and_the_gateway_address() {
        let plan = seed_plan();
        let table = table_for(&plan, &facts_for(&plan, true)).unwrap();
        let to_1abc = &plan
            .dataplane
            .prefixes
            .iter()
            .find(|p| p.link.contains("1abc"))
            .unwrap()
            .link;
        let route = table.routes64[&prefix64("2a02:1802:5e:1abc::".parse().unwrap())];
        assert_eq!(route.route_id, 0x1abc);
        assert_eq!(route.flags, ROUTE_NEIGH_KNOWN);
        assert_eq!(route.ifindex, facts_for(&plan, true).links[to_1abc].ifindex);
        assert_eq!(table.routes64.len(), 2);
        let default = table.lpm[&(0, [0; 16])];
        assert_eq!(default.route_id, DEFAULT_ROUTE_ID);
        let gw_pub: Ipv6Addr = "2a02:1802:5e:0:1000::1".parse().unwrap();
        assert!(
            table.local.contains(&gw_pub.octets()),
            "the gateway's GWPubIP6 is local"
        );
        assert!(
            table
                .local
                .iter()
                .all(|a| !is_link_local(Ipv6Addr::from(*a)))
        );
        assert_eq!(table.ports.len(), 3, "uplink and two ExitPoint links");
    }

    #[test]
    fn unresolved_next_hops_are_installed_without_a_mac() {
        let plan = seed_plan();
        let table = table_for(&plan, &facts_for(&plan, false)).unwrap();
        assert!(
            table
                .routes64
                .values()
                .all(|r| r.flags == 0 && r.dst_mac == [0; 6])
        );
        assert!(!all_resolved(&table));
    }

    #[test]
    fn a_missing_link_names_the_link_and_the_remedy() {
        let plan = seed_plan();
        let mut facts = facts_for(&plan, true);
        let uplink = plan.dataplane.default_route.link.clone();
        facts.links.remove(&uplink);
        let err = table_for(&plan, &facts).unwrap_err().to_string();
        assert!(
            err.contains(&uplink) && err.contains("apply the plan"),
            "{err}"
        );
    }
}
