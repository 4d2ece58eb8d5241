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
};
use tokio::task::JoinHandle;

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
    reconciler: JoinHandle<()>,
}

impl Cluster {
    /// Connects to etcd and starts registering, watching and claiming.
    pub async fn start(config: ClusterConfig) -> Result<Cluster> {
        config.validate()?;
        let client = config.connect().await?;
        let membership = Arc::new(Membership::start(client.clone(), &config));
        let held = Arc::new(Mutex::new(Held::default()));
        let reconciler = tokio::spawn(reconcile_forever(
            client.clone(),
            config.clone(),
            membership.clone(),
            held.clone(),
        ));
        Ok(Cluster {
            config,
            client,
            membership,
            held,
            reconciler,
        })
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

    /// Graceful stop: forget every gateway first (stop forwarding), then revoke the lease,
    /// which deletes the membership and owner keys in one step so others take over at once.
    pub async fn shutdown(self) -> Result<()> {
        self.reconciler.abort();
        self.membership.abort();
        let lease = {
            let mut held = lock(&self.held);
            held.gateways.clear();
            held.lease
        };
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

impl Drop for Cluster {
    /// Dropping without [`Cluster::shutdown`] is a crash as far as the cluster can tell: the
    /// lease runs out and the others take over.
    fn drop(&mut self) {
        self.reconciler.abort();
        self.membership.abort();
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

/// Reconciles on every membership or lease change and every tick.
async fn reconcile_forever(
    client: Client,
    config: ClusterConfig,
    membership: Arc<Membership>,
    held: Arc<Mutex<Held>>,
) {
    let priorities = config.priority_lists().unwrap_or_default();
    let mut members_changed = membership.member_changes();
    let mut lease_changed = membership.lease_changes();
    loop {
        if let Err(err) = reconcile(client.clone(), &config, &priorities, &membership, &held).await
        {
            tracing::warn!(error = %format!("{err:#}"), "gateway ownership round failed");
        }
        tokio::select! {
            _ = members_changed.changed() => {}
            _ = lease_changed.changed() => {}
            _ = tokio::time::sleep(member::tick(&config)) => {}
        }
    }
}

/// One round: drop what etcd no longer shows as ours, release what the ring gives to someone
/// else, claim what the ring gives to us.
async fn reconcile(
    mut client: Client,
    config: &ClusterConfig,
    priorities: &ring::Priorities,
    membership: &Membership,
    held: &Mutex<Held>,
) -> Result<()> {
    let Some(lease) = membership.valid_lease() else {
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
    let owners = read_owners(&mut client, config).await?;
    let members = membership.members();
    for gateway in config.gateways.iter().copied() {
        let mine = owners.get(&gateway) == Some(&(config.node.clone(), lease.id));
        let wanted = ring::owner_of(gateway, &members, priorities).as_deref() == Some(&config.node)
            && members.contains_key(&config.node);
        match (mine, wanted) {
            (true, true) => {
                lock(held).gateways.insert(gateway);
            }
            (true, false) => release(&mut client, config, gateway, held).await?,
            (false, true) if !owners.contains_key(&gateway) => {
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
    let reply = super::read_prefix(client, config, config.gateways_prefix()).await?;
    Ok(reply
        .kvs()
        .iter()
        .filter_map(|kv| {
            let gateway = config.gateway_of_key(kv.key_str().ok()?)?;
            Some((gateway, (kv.value_str().ok()?.to_string(), kv.lease())))
        })
        .collect())
}

/// Claims `gateway` if nobody holds its key, bound to `lease`.
async fn claim(
    client: &mut Client,
    config: &ClusterConfig,
    gateway: u8,
    lease: i64,
    held: &Mutex<Held>,
) -> Result<()> {
    let key = config.owner_key(gateway);
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            config.node.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
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

/// Gives `gateway` up: stop counting it as ours first, then delete the key if still ours.
async fn release(
    client: &mut Client,
    config: &ClusterConfig,
    gateway: u8,
    held: &Mutex<Held>,
) -> Result<()> {
    lock(held).gateways.remove(&gateway);
    let key = config.owner_key(gateway);
    let txn = Txn::new()
        .when([Compare::value(
            key.as_str(),
            CompareOp::Equal,
            config.node.as_str(),
        )])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    tokio::time::timeout(config.ttl(), client.txn(txn))
        .await
        .context("release timed out")??;
    tracing::info!(gateway, node = %config.node, "gateway released");
    Ok(())
}
