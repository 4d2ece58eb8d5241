//! Membership: this node's key under a lease that is kept alive, and a watch on everybody's
//! keys. The etcd-client streams do not reconnect by themselves, so both loops re-create their
//! stream after an error: the keep-alive on the same lease (etcd keeps leases across its own
//! restarts), the watch from the last revision it saw.

use super::{ClusterConfig, MemberInfo, Members, ReplicaMode};
use anyhow::{Context, Result, anyhow};
use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

/// The lease this node holds, as far as its own clock can vouch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Until when this node may act as a lease holder: the send time of the last acknowledged
    /// keep-alive (or grant) plus the TTL, minus a margin. etcd cannot expire the lease before
    /// then, because it restarted the TTL no earlier than we sent the request.
    pub valid_until: Instant,
}

impl Lease {
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// Running membership: the lease keeper and the member watcher.
pub struct Membership {
    lease: watch::Receiver<Option<Lease>>,
    members: watch::Receiver<Members>,
    /// The replica mode this node announces (the configuration's, until an admin changes it).
    mode: Arc<Mutex<ReplicaMode>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Membership {
    /// Starts both loops; they retry until the membership is dropped.
    pub fn start(client: Client, config: &ClusterConfig) -> Membership {
        let (lease_tx, lease) = watch::channel(None);
        let (members_tx, members) = watch::channel(Members::new());
        crate::api::metrics::on_scrape(export_gauges(lease.clone(), members.clone()));
        let mode = Arc::new(Mutex::new(config.replica_mode));
        let tasks = vec![
            tokio::spawn(keep_registered(
                client.clone(),
                config.clone(),
                mode.clone(),
                lease_tx,
            )),
            tokio::spawn(watch_members(client, config.clone(), members_tx)),
        ];
        Membership {
            lease,
            members,
            mode,
            tasks,
        }
    }

    /// Announces `mode` from now on (dynvpn's replica mode, set by an administrator): the
    /// member key is rewritten on the current lease, and every re-registration uses it.
    pub async fn set_mode(
        &self,
        mut client: Client,
        config: &ClusterConfig,
        mode: ReplicaMode,
    ) -> Result<()> {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
        let lease = self
            .valid_lease()
            .context("not registered in the cluster")?;
        let value = serde_json::to_vec(&member_info(config, &self.mode))?;
        let put = client.put(
            config.member_key(),
            value,
            Some(PutOptions::new().with_lease(lease.id)),
        );
        tokio::time::timeout(config.ttl(), put)
            .await
            .context("announcing the replica mode timed out")??;
        Ok(())
    }

    /// The current lease if this node's clock still vouches for it.
    pub fn valid_lease(&self) -> Option<Lease> {
        (*self.lease.borrow()).filter(Lease::is_valid)
    }

    pub fn lease_changes(&self) -> watch::Receiver<Option<Lease>> {
        self.lease.clone()
    }

    pub fn members(&self) -> Members {
        self.members.borrow().clone()
    }

    pub fn member_changes(&self) -> watch::Receiver<Members> {
        self.members.clone()
    }

    /// Stops the loops without touching etcd (the lease then runs out by itself).
    pub fn abort(&self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Exports lease validity and the member set at every scrape, until the loops are gone.
fn export_gauges(
    lease: watch::Receiver<Option<Lease>>,
    members: watch::Receiver<Members>,
) -> impl Fn() -> bool + Send + 'static {
    move || {
        if lease.has_changed().is_err() {
            return false; // the lease keeper stopped: this membership is over
        }
        let valid = (*lease.borrow()).is_some_and(|l| l.is_valid());
        crate::api::metrics::cluster_membership(valid, members.borrow().keys());
        true
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.abort();
    }
}

/// How long to wait between keep-alives and before retrying after an error.
pub fn tick(config: &ClusterConfig) -> Duration {
    config.ttl() / 4
}

/// The safety margin taken off the TTL (clock rate differences, scheduling delays).
fn margin(config: &ClusterConfig) -> Duration {
    config.ttl() / 4
}

/// The end of the time this node may rely on a lease etcd renewed for `ttl` seconds after
/// `sent`.
fn fence(sent: Instant, ttl: i64, config: &ClusterConfig) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
    (sent + ttl)
        .checked_sub(margin(config))
        .unwrap_or(sent)
        .max(sent)
}

/// Grants a lease, registers under it and keeps it alive, forever. A new lease is granted only
/// when etcd says the old one is gone.
async fn keep_registered(
    client: Client,
    config: ClusterConfig,
    mode: Arc<Mutex<ReplicaMode>>,
    tx: watch::Sender<Option<Lease>>,
) {
    loop {
        let registered = register(client.clone(), &config, &mode).await;
        crate::api::metrics::etcd_round_trip("register", registered.is_ok());
        let lease = match registered {
            Ok(lease) => lease,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "cluster registration failed; retrying");
                tokio::time::sleep(tick(&config)).await;
                continue;
            }
        };
        tracing::info!(node = %config.node, lease = lease.id, "registered in the cluster");
        tx.send_replace(Some(lease));
        keep_alive(client.clone(), &config, lease, &tx).await;
        tracing::warn!(lease = lease.id, "lease expired; registering again");
        tx.send_replace(None);
    }
}

/// What this node announces: its gateways and its current replica mode.
fn member_info(config: &ClusterConfig, mode: &Mutex<ReplicaMode>) -> MemberInfo {
    MemberInfo {
        mode: *mode.lock().unwrap_or_else(PoisonError::into_inner),
        ..config.member_info()
    }
}

async fn register(
    mut client: Client,
    config: &ClusterConfig,
    mode: &Mutex<ReplicaMode>,
) -> Result<Lease> {
    let sent = Instant::now();
    let ttl = i64::try_from(config.lease_ttl)?;
    let grant = tokio::time::timeout(config.ttl(), client.lease_grant(ttl, None))
        .await
        .context("lease grant timed out")??;
    let value = serde_json::to_vec(&member_info(config, mode))?;
    let put = client.put(
        config.member_key(),
        value,
        Some(PutOptions::new().with_lease(grant.id())),
    );
    tokio::time::timeout(config.ttl(), put)
        .await
        .context("registration timed out")??;
    Ok(Lease {
        id: grant.id(),
        valid_until: fence(sent, grant.ttl(), config),
    })
}

/// Keeps `lease` alive until etcd reports it gone; stream errors re-open the stream.
async fn keep_alive(
    client: Client,
    config: &ClusterConfig,
    mut lease: Lease,
    tx: &watch::Sender<Option<Lease>>,
) {
    loop {
        match keep_alive_stream(client.clone(), config, &mut lease, tx).await {
            Ok(()) => return,
            Err(err) => {
                crate::api::metrics::etcd_round_trip("keep_alive", false);
                tracing::warn!(lease = lease.id, error = %format!("{err:#}"), "lease keep-alive failed; retrying");
                tokio::time::sleep(tick(config)).await;
            }
        }
    }
}

/// One keep-alive stream: Ok when etcd says the lease is gone, Err on a stream failure.
async fn keep_alive_stream(
    mut client: Client,
    config: &ClusterConfig,
    lease: &mut Lease,
    tx: &watch::Sender<Option<Lease>>,
) -> Result<()> {
    let opened = tokio::time::timeout(config.ttl(), client.lease_keep_alive(lease.id))
        .await
        .context("keep-alive stream timed out")?;
    let (mut keeper, mut stream) = match opened {
        // etcd-client reports a lease etcd no longer knows as an error when opening the stream.
        Err(etcd_client::Error::LeaseKeepAliveError(reason)) if reason == "lease not found" => {
            return Ok(());
        }
        other => other?,
    };
    loop {
        let sent = Instant::now();
        keeper.keep_alive().await?;
        let reply = tokio::time::timeout(config.ttl(), stream.message())
            .await
            .context("keep-alive reply timed out")??
            .ok_or_else(|| anyhow!("keep-alive stream closed"))?;
        crate::api::metrics::etcd_round_trip("keep_alive", true);
        if reply.ttl() <= 0 {
            return Ok(());
        }
        lease.valid_until = fence(sent, reply.ttl(), config);
        tx.send_replace(Some(*lease));
        tokio::time::sleep(tick(config)).await;
    }
}

/// Keeps `tx` equal to the live member set: a full read, then a watch from the next revision;
/// after a stream error the watch resumes from the last revision seen, and only a compaction
/// (history gone) forces a new full read.
async fn watch_members(client: Client, config: ClusterConfig, tx: watch::Sender<Members>) {
    let mut last_revision = None;
    loop {
        let result = match last_revision {
            None => read_members(client.clone(), &config, &tx).await.map(Some),
            Some(revision) => follow_members(client.clone(), &config, revision, &tx).await,
        };
        match result {
            Ok(next) => last_revision = next,
            Err((err, seen)) => {
                crate::api::metrics::etcd_round_trip("member_watch", false);
                last_revision = seen.or(last_revision);
                tracing::warn!(error = %format!("{err:#}"), "member watch failed; resuming");
                tokio::time::sleep(tick(&config)).await;
            }
        }
    }
}

type WatchError = (anyhow::Error, Option<i64>);

async fn read_members(
    mut client: Client,
    config: &ClusterConfig,
    tx: &watch::Sender<Members>,
) -> Result<i64, WatchError> {
    let reply = super::read_prefix(&mut client, config, config.members_prefix())
        .await
        .map_err(|err| (err, None))?;
    let mut members = Members::new();
    for kv in reply.kvs() {
        apply_put(config, &mut members, kv);
    }
    tx.send_replace(members);
    let revision = reply.header().map_or(0, |h| h.revision());
    Ok(revision)
}

/// Follows the watch from `revision + 1`. Ok(None) means "read everything again" (compacted).
async fn follow_members(
    mut client: Client,
    config: &ClusterConfig,
    mut revision: i64,
    tx: &watch::Sender<Members>,
) -> Result<Option<i64>, WatchError> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = tokio::time::timeout(
        config.ttl(),
        client.watch(config.members_prefix(), Some(options)),
    )
    .await
    .map_err(|_| (anyhow!("member watch timed out"), Some(revision)))?
    .map_err(|err| (err.into(), Some(revision)))?;
    loop {
        let reply = match stream.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err((anyhow!("member watch closed"), Some(revision))),
            Err(err) => return Err((err.into(), Some(revision))),
        };
        if reply.compact_revision() > 0 {
            tracing::warn!(
                revision,
                "member watch compacted; reading all members again"
            );
            return Ok(None);
        }
        if reply.canceled() {
            return Err((anyhow!("member watch cancelled"), Some(revision)));
        }
        let mut members = tx.borrow().clone();
        for event in reply.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => apply_put(config, &mut members, kv),
                EventType::Delete => {
                    if let Some(name) = member_name(config, kv) {
                        members.remove(&name);
                    }
                }
            }
            revision = revision.max(kv.mod_revision());
        }
        tx.send_if_modified(|current| std::mem::replace(current, members.clone()) != members);
    }
}

fn member_name(config: &ClusterConfig, kv: &etcd_client::KeyValue) -> Option<String> {
    let key = kv.key_str().ok()?;
    Some(key.strip_prefix(&config.members_prefix())?.to_string())
}

/// Adds a member from its key; a value that does not parse is logged and skipped.
fn apply_put(config: &ClusterConfig, members: &mut Members, kv: &etcd_client::KeyValue) {
    let Some(name) = member_name(config, kv) else {
        return;
    };
    match serde_json::from_slice::<MemberInfo>(kv.value()) {
        Ok(info) => {
            members.insert(name, info);
        }
        Err(err) => tracing::warn!(member = %name, error = %err, "ignoring unreadable member key"),
    }
}
