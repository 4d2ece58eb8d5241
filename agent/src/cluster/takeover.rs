//! The gateway controller of `exitd run` in a cluster: it forwards for the node's gateway
//! only while [`super::Cluster::owned`] says the node owns it.
//!
//! Which gateway a node serves: the one its `[network]` section describes (`exit_node`). Nodes
//! that back each other up carry the same `[network]` section (same allocation, exit node,
//! tenants and WireGuard keys) except for what is local to the machine: `uplink` (the NIC
//! toward the shared upstream segment), `namespace_prefix`, `state_dir`. `[cluster].gateways`
//! must then include that exit node; the node announces only that one.
//!
//! States of the gateway on a node:
//! - *standby* (prepared, make-before-break): every namespace, link, route toward the
//!   ExitPoints, WireGuard device and XDP program exists, but the uplink is down and has none
//!   of the gateway's addresses, so nothing reaches or leaves it;
//! - *active*: the whole plan applied (uplink up with GWPubLL, GWPubIP6 and GWPubIP4), the
//!   forwarder synced, the addresses announced (unsolicited NA, gratuitous ARP);
//! - *fenced* = standby again: uplink addresses removed, uplink down. Idempotent.
//!
//! Sequence of a planned migration (node B joins, the ring moves gateway x from A to B):
//! 1. B prepares x (standby) *before* it registers in etcd;
//! 2. B registers; A's ownership round sees the ring give x to B;
//! 3. A writes `draining`, stops counting x as owned, its controller fences x, reports it
//!    inactive, and only then A deletes the owner key;
//! 4. B claims x (`taking-over`), switches the prepared plan on, announces, writes `online`.
//!
//! The traffic gap is B's switch-on after A's fence (tens of milliseconds), never an overlap.
//! SIGTERM drains the same way for every gateway, then revokes the lease.

use super::{Cluster, announce, ownership::GatewayState};
use crate::{
    config::Config,
    dataplane::{self, XdpModeArg},
    netlink::{self, ApplyOptions, netns, observe},
    plan::{LinkKind, Plan},
};
use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};
use tokio::sync::watch;

/// How long activation waits for the forwarder's next hops to resolve.
const RESOLVE_WAIT: Duration = Duration::from_millis(500);
/// Announcements are repeated after these delays (a lost frame, a slow bridge).
const REPEATS: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// One gateway this node can serve, and how to switch it on and off.
pub struct GatewayController {
    gateway: u8,
    plan: Plan,
    options: ApplyOptions,
    pin_root: PathBuf,
    xdp: Option<XdpModeArg>,
}

impl GatewayController {
    /// The controller for the configuration's `[network]`; None without one.
    pub fn for_config(config: &Config) -> Result<Option<GatewayController>> {
        let Some(network) = &config.network else {
            return Ok(None);
        };
        let plan = crate::plan::cli::plan_for(config)?;
        let xdp = (config.dataplane.forward && plan.dataplane.xdp_forward)
            .then_some(config.dataplane.xdp_mode);
        Ok(Some(GatewayController {
            gateway: network.exit_node,
            options: ApplyOptions {
                wireguard: network.wireguard,
                state_dir: network.state_dir.clone(),
            },
            pin_root: config.dataplane.pin_dir.clone(),
            plan,
            xdp,
        }))
    }

    pub fn gateway(&self) -> u8 {
        self.gateway
    }

    fn uplink(&self) -> Result<&str> {
        match self.plan.gateway.links.first() {
            Some(link) if matches!(link.kind, LinkKind::Uplink { .. }) => Ok(&link.name),
            _ => bail!("the plan has no uplink"),
        }
    }

    /// The plan without what makes the gateway reachable: no addresses on the uplink and no
    /// routes through it.
    fn standby_plan(&self) -> Result<Plan> {
        let uplink = self.uplink()?.to_string();
        let mut plan = self.plan.clone();
        plan.gateway.links[0].addresses.clear();
        plan.gateway.routes.retain(|r| r.dev != uplink);
        Ok(plan)
    }

    /// Fences, then builds everything but the uplink's reachability and attaches the
    /// forwarder; returns the follower thread that keeps the forwarder's maps current.
    pub fn prepare(&self) -> Result<Option<std::thread::JoinHandle<Result<()>>>> {
        self.fence()?;
        let changes = netlink::apply(&self.standby_plan()?, &self.options)?;
        tracing::info!(
            gateway = self.gateway,
            changes = changes.len(),
            "gateway prepared (standby)"
        );
        self.fence()?;
        let Some(mode) = self.xdp else {
            return Ok(None);
        };
        dataplane::gateway::attach(&self.plan, &self.pin_root, mode)?;
        dataplane::gateway::sync(&self.plan, &self.pin_root, Duration::ZERO)?;
        Ok(Some(dataplane::gateway::follow(
            self.plan.clone(),
            &self.pin_root,
        )))
    }

    /// Switches the prepared gateway on: the whole plan, the forwarder's maps, announcements.
    pub fn activate(&self) -> Result<()> {
        let changes = netlink::apply(&self.plan, &self.options)?;
        tracing::info!(
            gateway = self.gateway,
            changes = changes.len(),
            "gateway plan applied"
        );
        if self.xdp.is_some() {
            dataplane::gateway::sync(&self.plan, &self.pin_root, RESOLVE_WAIT)?;
        }
        self.announce()
    }

    /// Unsolicited NAs for the uplink's IPv6 addresses, gratuitous ARP for its IPv4.
    pub fn announce(&self) -> Result<()> {
        let mut v6 = Vec::new();
        let mut v4 = Vec::new();
        for address in &self.plan.gateway.links[0].addresses {
            match address {
                IpNet::V6(net) => v6.push(net.addr()),
                IpNet::V4(net) => v4.push(net.addr()),
            }
        }
        announce::announce(&self.plan.gateway.name, self.uplink()?, &v6, &v4)
    }

    /// Stops forwarding for the gateway: removes the uplink's addresses and sets it down.
    /// Nothing to do when the namespace or the uplink does not exist.
    pub fn fence(&self) -> Result<()> {
        fence_plan(&self.plan)
    }
}

/// Fences the gateway of `plan` (see [`GatewayController::fence`]).
pub fn fence_plan(plan: &Plan) -> Result<()> {
    let namespace = plan.gateway.name.clone();
    if !netns::exists(&namespace) {
        return Ok(());
    }
    let Some(uplink) = plan.gateway.links.first().map(|l| l.name.clone()) else {
        return Ok(());
    };
    let fenced = netns::run_in(Some(&namespace), move || async move {
        let handle = netns::connect()?;
        let Some(link) = observe::links(&handle).await?.remove(&uplink) else {
            return Ok(false);
        };
        for (index, _, msg) in observe::addresses(&handle).await? {
            if index == link.index {
                observe::delete_address(&handle, msg).await?;
            }
        }
        if link.up {
            observe::set_down(&handle, link.index).await?;
        }
        Ok(true)
    })
    .with_context(|| format!("cannot fence gateway {namespace}"))?;
    if fenced {
        tracing::info!(gateway = %plan.gateway.name, "gateway fenced (uplink down, no addresses)");
    }
    Ok(())
}

/// Keeps the gateway's forwarding equal to its ownership until the task is aborted.
/// `active` reports what may be forwarding: set before switching on, cleared after fencing.
pub async fn run(
    controller: Arc<GatewayController>,
    mut owned: watch::Receiver<BTreeSet<u8>>,
    active: Arc<watch::Sender<BTreeSet<u8>>>,
    states: super::ownership::StateWriter,
) {
    let gateway = controller.gateway();
    loop {
        let wanted = owned.borrow_and_update().contains(&gateway);
        let is_active = active.borrow().contains(&gateway);
        match (wanted, is_active) {
            (true, false) => {
                active.send_modify(|a| {
                    a.insert(gateway);
                });
                switch_on(&controller, &owned, &states).await;
            }
            (false, true) if blocking(&controller, GatewayController::fence).await => {
                active.send_modify(|a| {
                    a.remove(&gateway);
                });
            }
            _ => {}
        }
        // A failed fence or switch-on is retried on the next change or tick.
        tokio::select! {
            _ = owned.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Activates, marks the gateway online and repeats the announcements while it stays owned.
/// A failed activation fences again, so a half-applied gateway never forwards.
async fn switch_on(
    controller: &Arc<GatewayController>,
    owned: &watch::Receiver<BTreeSet<u8>>,
    states: &super::ownership::StateWriter,
) {
    let gateway = controller.gateway();
    if !blocking(controller, GatewayController::activate).await {
        blocking(controller, GatewayController::fence).await;
        return;
    }
    tracing::info!(gateway, "gateway active");
    match states.write(gateway, GatewayState::Online).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(gateway, "gateway lost while switching on"),
        Err(err) => {
            tracing::warn!(gateway, error = %format!("{err:#}"), "cannot mark the gateway online")
        }
    }
    let (controller, owned) = (controller.clone(), owned.clone());
    tokio::spawn(async move {
        for delay in REPEATS {
            tokio::time::sleep(delay).await;
            if !owned.borrow().contains(&gateway) {
                return;
            }
            blocking(&controller, GatewayController::announce).await;
        }
    });
}

/// Runs a controller step on a blocking thread; logs and returns false on failure.
async fn blocking(
    controller: &Arc<GatewayController>,
    step: fn(&GatewayController) -> Result<()>,
) -> bool {
    let controller = controller.clone();
    let gateway = controller.gateway();
    match tokio::task::spawn_blocking(move || step(&controller)).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::error!(gateway, error = %format!("{err:#}"), "gateway step failed");
            false
        }
        Err(err) => {
            tracing::error!(gateway, error = %err, "gateway step panicked");
            false
        }
    }
}

/// A node in the cluster with its gateway: what `exitd run` holds.
pub struct Node {
    pub cluster: Cluster,
    controller: Option<tokio::task::JoinHandle<()>>,
    _follower: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Node {
    /// Prepares the gateway (standby) *before* joining, then joins and starts following
    /// ownership.
    pub async fn start(config: &Config, mut cluster_config: super::ClusterConfig) -> Result<Node> {
        let controller = GatewayController::for_config(config)?.map(Arc::new);
        let mut follower = None;
        if let Some(controller) = &controller {
            let gateway = controller.gateway();
            if !cluster_config.gateways.contains(&gateway) {
                bail!("cluster.gateways does not include network.exit_node = {gateway}");
            }
            cluster_config.gateways = BTreeSet::from([gateway]);
            let prepared = controller.clone();
            follower = tokio::task::spawn_blocking(move || prepared.prepare()).await??;
        }
        let cluster = Cluster::start(cluster_config).await?;
        let task = controller.map(|controller| {
            tokio::spawn(run(
                controller,
                cluster.owned_changes(),
                cluster.active_reporter(),
                cluster.state_writer(),
            ))
        });
        Ok(Node {
            cluster,
            controller: task,
            _follower: follower,
        })
    }

    /// Drain: release every gateway (forwarding stops first), leave, and wait until another
    /// node owns what this one had, or two lease TTLs pass (nobody may be left to take it).
    pub async fn drain(self) -> Result<()> {
        let config = self.cluster.config().clone();
        let had = self.cluster.owned();
        let result = self.cluster.shutdown().await;
        if let Some(task) = &self.controller {
            task.abort();
        }
        result?;
        if had.is_empty() {
            return Ok(());
        }
        let mut client = config.connect().await?;
        let deadline = tokio::time::Instant::now() + 2 * config.ttl();
        while tokio::time::Instant::now() < deadline {
            let view = super::state::read_gateways(&mut client, &config).await?;
            if had.iter().all(|g| view.owners.contains_key(g)) {
                tracing::info!(gateways = ?had, "the next owners hold this node's gateways");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(gateways = ?had, "nobody took this node's gateways over before exiting");
        Ok(())
    }
}

/// `exitd cluster fence`: stops forwarding for the configuration's gateway without the
/// daemon (systemd's ExecStopPost, after a crash or SIGKILL of `exitd run`).
pub fn fence_config(config: &Config) -> Result<()> {
    if config.cluster.is_none() || config.network.is_none() {
        println!("no [cluster] with a [network]: nothing to fence");
        return Ok(());
    }
    fence_plan(&crate::plan::cli::plan_for(config)?)?;
    println!("gateway fenced");
    Ok(())
}
