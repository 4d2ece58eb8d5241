//! Gateway ownership. A node claims a gateway only with a transaction that puts the owner key
//! on its own lease, and only if nobody holds the key (or it already holds it): etcd decides,
//! so two nodes never both hold a key. Fencing by time keeps the *belief* safe too: a node
//! counts a gateway as its own only while its own monotonic clock says its lease must still be
//! alive at etcd (see [`super::member::Lease::valid_until`]), which ends before etcd can expire
//! the lease and let another node claim.

use super::{ClusterConfig, Members, Membership, member, ring};
use anyhow::{Context, Result};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::watch, task::JoinHandle};

pub use super::state::GatewayState;

/// Gateways held, with the lease they were claimed under.
#[derive(Debug, Default)]
struct Held {
    lease: i64,
    gateways: BTreeSet<u8>,
}

/// A running cluster node: membership plus the ownership loop.
pub struct Cluster {
    config: ClusterConfig,
    client: Client,
    membership: Arc<Membership>,
    held: Arc<Mutex<Held>>,
    /// Gateways this node forwards for right now, as its gateway controller reports them;
    /// a release waits until its gateway is gone from here (stays empty without controller).
    active: Arc<watch::Sender<BTreeSet<u8>>>,
    owned: watch::Receiver<BTreeSet<u8>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How often ownership is re-evaluated for change notification: far below the fencing
/// margin (a quarter of the TTL), so a lease that runs out is noticed in time.
const OWNED_POLL: Duration = Duration::from_millis(10);

impl Cluster {
    /// Connects to etcd and starts registering, watching and claiming.
    pub async fn start(config: ClusterConfig) -> Result<Cluster> {
        config.validate()?;
        let client = config.connect().await?;
        let membership = Arc::new(Membership::start(client.clone(), &config));
        let held = Arc::new(Mutex::new(Held::default()));
        let active = Arc::new(watch::channel(BTreeSet::new()).0);
        let (owned_tx, owned) = watch::channel(BTreeSet::new());
        let round = Round {
            client: client.clone(),
            config: config.clone(),
            membership: membership.clone(),
            held: held.clone(),
            active: active.clone(),
        };
        let tasks = vec![
            tokio::spawn(reconcile_forever(round)),
            tokio::spawn(publish_owned(membership.clone(), held.clone(), owned_tx)),
        ];
        Ok(Cluster {
            config,
            client,
            membership,
            held,
            active,
            owned,
            tasks,
        })
    }

    /// Change notification of [`Cluster::owned`]: the receiver sees every change within
    /// [`OWNED_POLL`], including a lease running out on this node's clock.
    pub fn owned_changes(&self) -> watch::Receiver<BTreeSet<u8>> {
        self.owned.clone()
    }

    /// Where the gateway controller reports what it forwards for.
    pub fn active_reporter(&self) -> Arc<watch::Sender<BTreeSet<u8>>> {
        self.active.clone()
    }

    /// Writes `state` for `gateway` under this node's lease, if this node still owns it.
    pub async fn set_state(&self, gateway: u8, state: GatewayState) -> Result<bool> {
        self.state_writer().write(gateway, state).await
    }

    /// A handle the gateway controller writes its gateway's state with.
    pub fn state_writer(&self) -> StateWriter {
        StateWriter {
            client: self.client.clone(),
            config: self.config.clone(),
            held: self.held.clone(),
        }
    }

    /// What the admin API's cluster endpoints need.
    pub fn api(&self) -> super::api::ClusterApi {
        super::api::ClusterApi {
            config: self.config.clone(),
            client: self.client.clone(),
            membership: self.membership.clone(),
            owned: self.owned.clone(),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The gateways this node may forward for now: claimed under a lease its clock still
    /// vouches for. Empty as soon as the lease may have run out.
    pub fn owned(&self) -> BTreeSet<u8> {
        owned_now(&self.membership, &self.held)
    }

    pub fn members(&self) -> Members {
        self.membership.members()
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Graceful stop: mark the gateways draining, forget them (the controller stops
    /// forwarding, which is waited for), then revoke the lease, which deletes the membership
    /// and owner keys in one step so others take over at once.
    pub async fn shutdown(self) -> Result<()> {
        // The ownership loop stops; the publisher keeps telling the controller.
        self.tasks[0].abort();
        let draining = lock(&self.held).gateways.clone();
        for gateway in &draining {
            if let Err(err) = self.set_state(*gateway, GatewayState::Draining).await {
                tracing::warn!(gateway, error = %format!("{err:#}"), "cannot mark the gateway draining");
            }
        }
        let lease = {
            let mut held = lock(&self.held);
            held.gateways.clear();
            held.lease
        };
        self.wait_inactive(|active| active.is_empty()).await?;
        self.membership.abort();
        let mut client = self.client.clone();
        if lease != 0 {
            tokio::time::timeout(self.config.ttl(), client.lease_revoke(lease))
                .await
                .context("lease revoke timed out")?
                .context("cannot revoke the lease")?;
        }
        tracing::info!(node = %self.config.node, "left the cluster");
        Ok(())
    }
}

impl Cluster {
    /// Waits (up to a lease TTL) until the controller's active set satisfies `done`.
    async fn wait_inactive(&self, done: impl Fn(&BTreeSet<u8>) -> bool) -> Result<()> {
        wait_inactive(&self.active, &self.config, done).await
    }
}

async fn wait_inactive(
    active: &watch::Sender<BTreeSet<u8>>,
    config: &ClusterConfig,
    done: impl Fn(&BTreeSet<u8>) -> bool,
) -> Result<()> {
    let mut rx = active.subscribe();
    tokio::time::timeout(config.ttl(), rx.wait_for(|a| done(a)))
        .await
        .context("the gateway controller did not stop forwarding in time")?
        .context("the gateway controller is gone")?;
    Ok(())
}

impl Drop for Cluster {
    /// Dropping without [`Cluster::shutdown`] is a crash as far as the cluster can tell: the
    /// lease runs out and the others take over.
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        self.membership.abort();
    }
}

/// Publishes [`owned_now`] whenever it changes: claims, releases, lease changes and the
/// lease's fence passing on this node's clock all show up within [`OWNED_POLL`].
async fn publish_owned(
    membership: Arc<Membership>,
    held: Arc<Mutex<Held>>,
    tx: watch::Sender<BTreeSet<u8>>,
) {
    crate::api::metrics::cluster_owned(&BTreeSet::new());
    loop {
        let now = owned_now(&membership, &held);
        tx.send_if_modified(|current| {
            let changed = *current != now;
            if changed {
                crate::api::metrics::cluster_owned(&now);
            }
            *current = now;
            changed
        });
        tokio::time::sleep(OWNED_POLL).await;
    }
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn owned_now(membership: &Membership, held: &Mutex<Held>) -> BTreeSet<u8> {
    let held = lock(held);
    match membership.valid_lease() {
        Some(lease) if lease.id == held.lease => held.gateways.clone(),
        _ => BTreeSet::new(),
    }
}

/// Writes gateway states under the lease the gateways were claimed with.
#[derive(Clone)]
pub struct StateWriter {
    client: Client,
    config: ClusterConfig,
    held: Arc<Mutex<Held>>,
}

impl StateWriter {
    /// Writes `state` for `gateway` if this node still owns it (false if not).
    pub async fn write(&self, gateway: u8, state: GatewayState) -> Result<bool> {
        let lease = lock(&self.held).lease;
        let mut client = self.client.clone();
        super::state::write_owned(&mut client, &self.config, gateway, lease, state).await
    }
}

/// What one ownership round works with.
struct Round {
    client: Client,
    config: ClusterConfig,
    membership: Arc<Membership>,
    held: Arc<Mutex<Held>>,
    active: Arc<watch::Sender<BTreeSet<u8>>>,
}

/// Reconciles on every membership or lease change and every tick.
async fn reconcile_forever(round: Round) {
    let priorities = round.config.priority_lists().unwrap_or_default();
    let mut members_changed = round.membership.member_changes();
    let mut lease_changed = round.membership.lease_changes();
    loop {
        if let Err(err) = reconcile(&round, &priorities).await {
            tracing::warn!(error = %format!("{err:#}"), "gateway ownership round failed");
        }
        tokio::select! {
            _ = members_changed.changed() => {}
            _ = lease_changed.changed() => {}
            _ = tokio::time::sleep(member::tick(&round.config)) => {}
        }
    }
}

/// One round: drop what etcd no longer shows as ours, release what the ring (or an
/// administrator's "offline") gives to someone else, claim what the ring gives to us.
async fn reconcile(round: &Round, priorities: &ring::Priorities) -> Result<()> {
    let (config, held) = (&round.config, &*round.held);
    let Some(lease) = round.membership.valid_lease() else {
        lock(held).gateways.clear();
        return Ok(());
    };
    {
        let mut held = lock(held);
        if held.lease != lease.id {
            *held = Held {
                lease: lease.id,
                gateways: BTreeSet::new(),
            };
        }
    }
    let mut client = round.client.clone();
    let view = super::state::read_gateways(&mut client, config).await?;
    let members = round.membership.members();
    for gateway in config.gateways.iter().copied() {
        let owner = view.owners.get(&gateway);
        let mine = owner == Some(&(config.node.clone(), lease.id));
        let wanted = ring::owner_of(gateway, &members, priorities).as_deref() == Some(&config.node)
            && members.contains_key(&config.node)
            && !view.admin_offline.contains(&gateway);
        match (mine, wanted) {
            (true, true) => {
                lock(held).gateways.insert(gateway);
            }
            (true, false) => release(round, &mut client, gateway).await?,
            (false, true) if owner.is_none() => {
                claim(&mut client, config, gateway, lease.id, held).await?
            }
            _ => {
                lock(held).gateways.remove(&gateway);
            }
        }
    }
    Ok(())
}

/// Current owner keys: gateway → (node, lease).
pub async fn read_owners(
    client: &mut Client,
    config: &ClusterConfig,
) -> Result<BTreeMap<u8, (String, i64)>> {
    Ok(super::state::read_gateways(client, config).await?.owners)
}

/// Claims `gateway` if nobody holds its key, bound to `lease`; its state becomes
/// "taking-over" in the same transaction.
async fn claim(
    client: &mut Client,
    config: &ClusterConfig,
    gateway: u8,
    lease: i64,
    held: &Mutex<Held>,
) -> Result<()> {
    let key = config.owner_key(gateway);
    let on_lease = || Some(PutOptions::new().with_lease(lease));
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(key.as_str(), config.node.as_str(), on_lease()),
            TxnOp::put(
                config.state_key(gateway),
                GatewayState::TakingOver.record(&config.node),
                on_lease(),
            ),
        ]);
    let reply = tokio::time::timeout(config.ttl(), client.txn(txn))
        .await
        .context("claim timed out")??;
    if reply.succeeded() {
        let mut held = lock(held);
        if held.lease == lease {
            held.gateways.insert(gateway);
            tracing::info!(gateway, node = %config.node, "gateway claimed");
        }
    }
    Ok(())
}

/// Gives `gateway` up, break-after-make: mark it draining, stop counting it as ours, wait
/// until the controller stopped forwarding for it, and only then delete the key (the next
/// owner has prepared its plan in advance and only has to switch it on).
async fn release(round: &Round, client: &mut Client, gateway: u8) -> Result<()> {
    let config = &round.config;
    let lease = lock(&round.held).lease;
    super::state::write_owned(client, config, gateway, lease, GatewayState::Draining).await?;
    lock(&round.held).gateways.remove(&gateway);
    wait_inactive(&round.active, config, |active| !active.contains(&gateway)).await?;
    let key = config.owner_key(gateway);
    let txn = Txn::new()
        .when([Compare::value(
            key.as_str(),
            CompareOp::Equal,
            config.node.as_str(),
        )])
        .and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(config.state_key(gateway), None),
        ]);
    tokio::time::timeout(config.ttl(), client.txn(txn))
        .await
        .context("release timed out")??;
    tracing::info!(gateway, node = %config.node, "gateway released");
    Ok(())
}
