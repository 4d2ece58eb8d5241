//! The reconciler: makes this machine match a [`Plan`] over rtnetlink — the gateway
//! namespace with its uplink, one namespace per ExitPoint, veth pairs, addresses (the
//! link-locals included), routes, WireGuard devices and peers, and the gateway's IPv4 NAT.
//!
//! Each namespace is observed, compared with the plan and changed where it differs, so
//! applying the same plan twice changes nothing, and a network resource removed from the
//! input takes exactly its routes, links, addresses and peers with it.
//!
//! What exitd owns, and the only things it ever changes or deletes:
//! - namespaces named by the plan's scheme: `{prefix}gw-{x}-{a}`, `{prefix}net-{hex}-{a}`
//!   with `hex` inside this exit node's /52;
//! - in those, links named by the scheme (`pub-`, `to-`, `veth-`, `nr-`, `wg-` + `{hex}-{a}`,
//!   `pub-{x}-{a}`), and the addresses on them (kernel link-locals are switched off there);
//! - routes with protocol [`observe::ROUTE_PROTOCOL`] in the main table;
//! - the nftables table `ip exitd` in the gateway namespace.

pub mod nat;
pub mod netns;
pub mod observe;

use crate::{
    plan::{self, LinkKind, NamespacePlan, Plan, naming::Nibble},
    wireguard::{self, BackendKind, WireguardBackend},
};
use anyhow::{Context, Result, bail};
use clap::Args;
use ipnet::IpNet;
use observe::RouteKey;
use rtnetlink::Handle;
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
};

/// How to apply a plan on this machine.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub wireguard: BackendKind,
    /// Where userspace WireGuard pid and log files go.
    pub state_dir: PathBuf,
}

/// `exitd apply`: make the machine match the configuration's network plan.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file; its `[network]` section is applied.
    #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
    pub config: PathBuf,
    /// WireGuard implementation for the ExitPoints (userspace: boringtun-cli); default:
    /// the configuration's `network.wireguard`.
    #[arg(long, value_enum, env = "EXITD_WIREGUARD")]
    pub wireguard: Option<BackendKind>,
    /// Directory for userspace WireGuard pid and log files; default: `network.state_dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

pub fn run_apply(args: ApplyArgs) -> Result<()> {
    let config = crate::config::Config::load(&args.config)?;
    let network = plan::cli::load_network(&args.config)?;
    let plan = plan::cli::plan_for(&config)?;
    let options = ApplyOptions {
        wireguard: args.wireguard.unwrap_or(network.wireguard),
        state_dir: args.state_dir.unwrap_or(network.state_dir.clone()),
    };
    let changes = apply(&plan, &options)?;
    if changes.is_empty() {
        println!("no changes");
    }
    for change in &changes {
        println!("{change}");
    }
    Ok(())
}

/// The daemon's start-up step: apply the configured network, if there is one.
pub fn reconcile_config(config: &crate::config::Config) -> Result<()> {
    let Some(network) = &config.network else {
        return Ok(());
    };
    let plan = plan::cli::plan_for(config)?;
    let options = ApplyOptions {
        wireguard: network.wireguard,
        state_dir: network.state_dir.clone(),
    };
    let changes = apply(&plan, &options)?;
    tracing::info!(changes = changes.len(), "network plan applied");
    for change in changes {
        tracing::info!("{change}");
    }
    Ok(())
}

/// Makes the machine match `plan`; returns one line per change made (empty: nothing to do).
pub fn apply(plan: &Plan, options: &ApplyOptions) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    for ns in plan.namespaces() {
        if !netns::exists(&ns.name) {
            netns::create(&ns.name)?;
            changes.push(format!("created namespace {}", ns.name));
        }
    }
    let backend: Arc<dyn WireguardBackend> =
        Arc::from(wireguard::backend(options.wireguard, &options.state_dir));
    changes.extend(remove_stale_namespaces(plan, &*backend)?);
    changes.extend(move_uplink(plan)?);
    changes.extend(reconcile_namespace(plan, &plan.gateway, None)?);
    let nat_plan = plan.dataplane.nat.clone();
    let nat_changes = netns::run_in(Some(&plan.gateway.name), move || async move {
        nat::reconcile(&nat_plan)
    })?;
    changes.extend(prefixed(&plan.gateway.name, nat_changes));
    for ep in &plan.exitpoints {
        let key = wireguard::load_or_create_key(&ep.wireguard.private_key_file)?;
        let wg = Some((ep.wireguard.clone(), key, backend.clone()));
        changes.extend(reconcile_namespace(plan, &ep.namespace, wg)?);
    }
    Ok(changes)
}

fn prefixed(ns: &str, changes: Vec<String>) -> Vec<String> {
    changes.into_iter().map(|c| format!("{ns}: {c}")).collect()
}

/// An ExitPoint namespace exitd made for this exit node and allocation (by its name).
fn owned_ep_namespace(plan: &Plan, name: &str, prefix: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("net-"))
    else {
        return false;
    };
    match parse_hex_a(rest) {
        Some((nib, a)) => a == plan.alloc_nr && nib.exit_node() == plan.exit_node,
        None => false,
    }
}

/// `{4 hex}-{a}` → (nibble, a).
fn parse_hex_a(text: &str) -> Option<(Nibble, u32)> {
    let (hex, a) = text.split_once('-')?;
    if hex.len() != 4
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let value = u16::from_str_radix(hex, 16).ok()?;
    let a: u32 = a.parse().ok().filter(|_| !a.starts_with('+'))?;
    let [n0, n1] = value.to_be_bytes();
    Some((Nibble { n0, n1 }, a))
}

/// Whether `name` is an interface name exitd's scheme produces for allocation `alloc_nr`.
pub fn owned_link_name(name: &str, alloc_nr: u32) -> bool {
    let Some((kind, rest)) = name.split_once('-') else {
        return false;
    };
    if let Some((_, a)) = parse_hex_a(rest) {
        return a == alloc_nr && matches!(kind, "to" | "pub" | "veth" | "nr" | "wg");
    }
    match rest.split_once('-') {
        Some((x, a)) => {
            kind == "pub"
                && x.parse::<u8>().is_ok_and(|x| (1..=15).contains(&x))
                && a.parse::<u32>().ok() == Some(alloc_nr)
        }
        None => false,
    }
}

fn remove_stale_namespaces(plan: &Plan, backend: &dyn WireguardBackend) -> Result<Vec<String>> {
    let prefix = plan
        .gateway
        .name
        .strip_suffix(&format!("gw-{}-{}", plan.exit_node, plan.alloc_nr))
        .unwrap_or("")
        .to_string();
    let wanted: BTreeSet<&str> = plan.namespaces().map(|ns| ns.name.as_str()).collect();
    let mut changes = Vec::new();
    for name in netns::list() {
        if wanted.contains(name.as_str()) || !owned_ep_namespace(plan, &name, &prefix) {
            continue;
        }
        if let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_prefix("net-"))
        {
            backend.remove(&format!("wg-{rest}"))?;
        }
        netns::delete(&name)?;
        changes.push(format!("removed namespace {name}"));
    }
    Ok(changes)
}

/// Moves the configured uplink from exitd's own namespace into the gateway, renamed.
fn move_uplink(plan: &Plan) -> Result<Vec<String>> {
    let Some(uplink) = plan.gateway.links.first() else {
        return Ok(Vec::new());
    };
    let LinkKind::Uplink {
        source: Some(source),
    } = &uplink.kind
    else {
        return Ok(Vec::new());
    };
    let gw = File::open(netns::path(&plan.gateway.name))?;
    let (source, target) = (source.clone(), uplink.name.clone());
    netns::run_in(None, move || async move {
        let handle = netns::connect()?;
        let links = observe::links(&handle).await?;
        let Some(link) = links.get(&source) else {
            return Ok(Vec::new());
        };
        observe::move_link(&handle, link.index, &target, gw.as_raw_fd()).await?;
        Ok(vec![format!(
            "moved uplink {source} into the gateway as {target}"
        )])
    })
}

type WgSpec = (
    plan::WireguardPlan,
    wireguard_control::Key,
    Arc<dyn WireguardBackend>,
);

/// Reconciles one namespace on its own thread: links, WireGuard, sysctls, addresses, routes.
fn reconcile_namespace(plan: &Plan, ns: &NamespacePlan, wg: Option<WgSpec>) -> Result<Vec<String>> {
    let ns = ns.clone();
    let alloc_nr = plan.alloc_nr;
    let name = ns.name.clone();
    let changes = netns::run_in(Some(&name), move || async move {
        let handle = netns::connect()?;
        let mut changes = reconcile_links(&handle, &ns, alloc_nr).await?;
        if let Some((wg_plan, key, backend)) = &wg {
            changes.extend(wireguard::reconcile(&**backend, wg_plan, key)?);
            changes.extend(tunnel_mtu(&handle, wg_plan).await?);
        }
        changes.extend(forwarding()?);
        let links = observe::links(&handle).await?;
        changes.extend(bring_up(&handle, &ns, &links).await?);
        changes.extend(reconcile_addresses(&handle, &ns, &links).await?);
        changes.extend(reconcile_routes(&handle, &ns, &links).await?);
        Ok(changes)
    })?;
    Ok(prefixed(&name, changes))
}

/// Gives the WireGuard device the plan's MTU.
async fn tunnel_mtu(handle: &Handle, wg: &plan::WireguardPlan) -> Result<Vec<String>> {
    let links = observe::links(handle).await?;
    let Some(link) = links.get(&wg.link) else {
        return Ok(Vec::new());
    };
    if link.mtu == Some(wg.mtu) {
        return Ok(Vec::new());
    }
    observe::set_mtu(handle, link.index, wg.mtu).await?;
    Ok(vec![format!("{}: mtu {}", wg.link, wg.mtu)])
}

fn forwarding() -> Result<Vec<String>> {
    let mut changes = Vec::new();
    for key in ["net.ipv6.conf.all.forwarding", "net.ipv4.ip_forward"] {
        if netns::set_sysctl(key, "1")? {
            changes.push(format!("{key} = 1"));
        }
    }
    // Links created later get no kernel link-local: the plan sets each one's own.
    netns::set_sysctl("net.ipv6.conf.default.addr_gen_mode", "1")?;
    Ok(changes)
}

async fn reconcile_links(
    handle: &Handle,
    ns: &NamespacePlan,
    alloc_nr: u32,
) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    let links = observe::links(handle).await?;
    let wanted: BTreeSet<&str> = ns.links.iter().map(|l| l.name.as_str()).collect();
    for (name, link) in &links {
        if owned_link_name(name, alloc_nr) && !wanted.contains(name.as_str()) {
            observe::delete_link(handle, link.index).await?;
            changes.push(format!("removed link {name}"));
        }
    }
    let links = observe::links(handle).await?;
    for link in &ns.links {
        if links.contains_key(&link.name) {
            continue;
        }
        match &link.kind {
            LinkKind::Veth {
                peer,
                peer_namespace,
            } => {
                let peer_ns = (peer_namespace != &ns.name)
                    .then(|| File::open(netns::path(peer_namespace)))
                    .transpose()
                    .with_context(|| format!("namespace {peer_namespace} is missing"))?;
                observe::add_veth(
                    handle,
                    &link.name,
                    peer,
                    peer_ns.as_ref().map(|f| f.as_raw_fd()),
                )
                .await?;
                changes.push(format!(
                    "created veth {} <-> {peer}@{peer_namespace}",
                    link.name
                ));
            }
            LinkKind::Uplink { source } => bail!(
                "uplink {} is not in namespace {} (source {:?} not found either)",
                link.name,
                ns.name,
                source
            ),
            // Created with its peer, or by the WireGuard backend.
            LinkKind::VethPeer { .. } | LinkKind::Wireguard => {}
        }
    }
    Ok(changes)
}

fn link_index(links: &BTreeMap<String, observe::Link>, name: &str) -> Result<u32> {
    links
        .get(name)
        .map(|l| l.index)
        .with_context(|| format!("link {name} is missing"))
}

async fn bring_up(
    handle: &Handle,
    ns: &NamespacePlan,
    links: &BTreeMap<String, observe::Link>,
) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    // Loopback of a namespace exitd made: local traffic (a service talking to itself, a
    // ping of the namespace's own address) needs it.
    if let Some(lo) = links.get("lo").filter(|lo| !lo.up) {
        observe::set_up(handle, lo.index).await?;
        changes.push("set lo up".to_string());
    }
    for link in &ns.links {
        let index = link_index(links, &link.name)?;
        // No kernel-made link-local on exitd's links: their addresses are all in the plan.
        let gen_mode = format!("net.ipv6.conf.{}.addr_gen_mode", link.name);
        if std::path::Path::new("/proc/sys")
            .join(gen_mode.replace('.', "/"))
            .exists()
        {
            netns::set_sysctl(&gen_mode, "1")?;
        }
        if !links.get(&link.name).is_some_and(|l| l.up) {
            observe::set_up(handle, index).await?;
            changes.push(format!("set {} up", link.name));
        }
    }
    Ok(changes)
}

async fn reconcile_addresses(
    handle: &Handle,
    ns: &NamespacePlan,
    links: &BTreeMap<String, observe::Link>,
) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    let current = observe::addresses(handle).await?;
    for link in &ns.links {
        let index = link_index(links, &link.name)?;
        let wanted: BTreeSet<IpNet> = link.addresses.iter().copied().collect();
        let mut have = BTreeSet::new();
        for (i, net, msg) in &current {
            if *i != index {
                continue;
            }
            if wanted.contains(net) {
                have.insert(*net);
            } else {
                observe::delete_address(handle, msg.clone()).await?;
                changes.push(format!("removed address {net} from {}", link.name));
            }
        }
        for net in wanted.difference(&have) {
            observe::add_address(handle, index, *net).await?;
            changes.push(format!("added address {net} to {}", link.name));
        }
    }
    Ok(changes)
}

async fn reconcile_routes(
    handle: &Handle,
    ns: &NamespacePlan,
    links: &BTreeMap<String, observe::Link>,
) -> Result<Vec<String>> {
    let mut wanted = Vec::new();
    for route in &ns.routes {
        let key = RouteKey {
            dest: route.dest.trunc(),
            via: route.via,
            oif: link_index(links, &route.dev)?,
        };
        wanted.push((key, route));
    }
    let mut changes = Vec::new();
    let current = observe::owned_routes(handle).await?;
    let wanted_keys: BTreeSet<&RouteKey> = wanted.iter().map(|(k, _)| k).collect();
    for (key, msg) in &current {
        if !wanted_keys.contains(key) {
            observe::delete_route(handle, msg.clone()).await?;
            changes.push(format!("removed route {} via {:?}", key.dest, key.via));
        }
    }
    let have: BTreeSet<&RouteKey> = current.iter().map(|(k, _)| k).collect();
    for (key, route) in &wanted {
        if !have.contains(key) {
            observe::add_route(handle, key, route.onlink).await?;
            changes.push(format!("added route {}", plan::render::route_line(route)));
        }
    }
    Ok(changes)
}
