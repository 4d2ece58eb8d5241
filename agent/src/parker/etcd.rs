//! The key space brokers and concentrators share in etcd, and the two etcd patterns they use:
//! following a key prefix (a full read, then a watch that resumes from the last revision seen
//! after an etcd hiccup, because etcd-client's streams do not reconnect by themselves) and
//! publishing a key under a lease that is kept alive and re-granted when etcd forgets it.
//!
//! Keys under the space's prefix `P` (default `/exitd/<cluster name>/parker/`):
//! - `P ipam/nodes/<pubkey>`: a node's IPAM record (JSON, etcd IPAM backend), no lease;
//! - `P ipam/prefixes/<network address of the /63>`: the pubkey owning that prefix, no lease;
//! - `P peers/<pubkey>`: a node as announced by a broker for the concentrators (JSON
//!   [`Announcement`]), no lease; rewritten at most every `announce_interval` per broker;
//! - `P concentrators/<name>`: a concentrator's data and peer count (JSON
//!   [`ConcentratorReport`]) on the concentrator's lease: it vanishes when the concentrator dies;
//! - `P brokers/<name>`: a live broker (empty value) on the broker's lease, so every broker
//!   knows how many answer for the network (the interpolation step).

use anyhow::{Context, Result, anyhow};
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::{net::Ipv6Addr, time::Duration};
use tokio::sync::watch;

/// Where the Parker state lives in etcd (`[parker.etcd]`, `[concentrator.etcd]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpace {
    /// etcd client URLs; empty: the `[cluster]` endpoints.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Key prefix; default `/exitd/<cluster name>/parker/` (`default` without `[cluster]`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Lease time to live (seconds) of this process's keys; also the etcd request timeout.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: u64,
}

fn default_lease_ttl() -> u64 {
    5
}

impl EtcdSpace {
    /// Fills what is not set from the `[cluster]` section.
    pub fn inherit(&mut self, cluster: Option<&crate::cluster::ClusterConfig>) {
        if self.endpoints.is_empty()
            && let Some(cluster) = cluster
        {
            self.endpoints = cluster.endpoints.clone();
        }
        if self.prefix.is_none() {
            let name = cluster.map_or("default", |c| c.name.as_str());
            self.prefix = Some(format!("/exitd/{name}/parker/"));
        }
    }

    pub fn validate(&self, what: &str) -> Result<()> {
        anyhow::ensure!(
            !self.endpoints.is_empty(),
            "{what} needs etcd endpoints (set {what}.endpoints or a [cluster] section)"
        );
        anyhow::ensure!(
            (1..=3600).contains(&self.lease_ttl),
            "{what}.lease_ttl must be 1..=3600 seconds"
        );
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    fn root(&self) -> String {
        let root = self
            .prefix
            .clone()
            .unwrap_or_else(|| "/exitd/default/parker/".into());
        if root.ends_with('/') {
            root
        } else {
            format!("{root}/")
        }
    }

    pub fn ipam_nodes(&self) -> String {
        format!("{}ipam/nodes/", self.root())
    }

    pub fn ipam_prefixes(&self) -> String {
        format!("{}ipam/prefixes/", self.root())
    }

    pub fn peers(&self) -> String {
        format!("{}peers/", self.root())
    }

    pub fn concentrators(&self) -> String {
        format!("{}concentrators/", self.root())
    }

    pub fn brokers(&self) -> String {
        format!("{}brokers/", self.root())
    }

    /// Connects; requests fail after a lease TTL so a hung etcd is noticed.
    pub async fn connect(&self) -> Result<Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.ttl())
            .with_keep_alive(self.ttl() / 2, self.ttl());
        Client::connect(&self.endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {:?}", self.endpoints))
    }
}

/// A node as a broker announces it to the concentrators (`P peers/<pubkey>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The node's /63 (`Range6` in wgkex's MQTT message).
    pub prefix: Ipv6Net,
    /// The concentrators chosen for it, by name.
    #[serde(default)]
    pub selected: Vec<String>,
    /// Unix seconds of the announcing request.
    pub announced: u64,
}

/// What a concentrator publishes about itself (`P concentrators/<name>`): wgkex's worker
/// `data` message plus its configured id, weight and PoP, and its `connected_peers` metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConcentratorReport {
    pub id: u32,
    #[serde(default)]
    pub pop: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// Host name or address nodes connect to (no brackets).
    pub external_address: String,
    pub port: u16,
    pub public_key: String,
    pub link_address: Ipv6Addr,
    /// Peers with a handshake in the last 3 minutes; -1 while unknown.
    pub connected_peers: i64,
}

fn one() -> f64 {
    1.0
}

/// One step of a followed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Everything under the prefix (after start and after a compaction): replaces all state.
    Snapshot(Vec<(String, Vec<u8>)>),
    /// A key was written (the key without the prefix).
    Put(String, Vec<u8>),
    /// A key was deleted or its lease expired.
    Delete(String),
}

/// Follows `prefix` forever: a full read, then a watch from the next revision; a broken
/// stream resumes from the last revision seen, and only a compaction forces a new full read.
pub async fn follow(
    client: Client,
    space: EtcdSpace,
    prefix: String,
    mut sink: impl FnMut(Update),
) {
    let mut revision: Option<i64> = None;
    loop {
        let step = match revision {
            None => snapshot(client.clone(), &space, &prefix, &mut sink)
                .await
                .map(Some),
            Some(seen) => watch_from(client.clone(), &space, &prefix, seen, &mut sink).await,
        };
        match step {
            Ok(next) => revision = next,
            Err((err, seen)) => {
                revision = seen.or(revision);
                tracing::warn!(prefix, error = %format!("{err:#}"), "etcd watch failed; resuming");
                tokio::time::sleep(space.ttl() / 4).await;
            }
        }
    }
}

type StepError = (anyhow::Error, Option<i64>);

async fn snapshot(
    mut client: Client,
    space: &EtcdSpace,
    prefix: &str,
    sink: &mut impl FnMut(Update),
) -> Result<i64, StepError> {
    let get = client.get(prefix, Some(GetOptions::new().with_prefix()));
    let reply = tokio::time::timeout(space.ttl(), get)
        .await
        .map_err(|_| (anyhow!("reading {prefix} timed out"), None))?
        .map_err(|e| {
            (
                anyhow::Error::from(e).context(format!("reading {prefix}")),
                None,
            )
        })?;
    let entries = reply
        .kvs()
        .iter()
        .filter_map(|kv| Some((relative(prefix, kv)?, kv.value().to_vec())))
        .collect();
    sink(Update::Snapshot(entries));
    Ok(reply.header().map_or(0, |h| h.revision()))
}

/// Ok(None): compacted, read everything again.
async fn watch_from(
    mut client: Client,
    space: &EtcdSpace,
    prefix: &str,
    mut revision: i64,
    sink: &mut impl FnMut(Update),
) -> Result<Option<i64>, StepError> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = tokio::time::timeout(space.ttl(), client.watch(prefix, Some(options)))
        .await
        .map_err(|_| (anyhow!("watch on {prefix} timed out"), Some(revision)))?
        .map_err(|e| (e.into(), Some(revision)))?;
    loop {
        let reply = match stream.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err((anyhow!("watch on {prefix} closed"), Some(revision))),
            Err(e) => return Err((e.into(), Some(revision))),
        };
        if reply.compact_revision() > 0 {
            tracing::warn!(
                prefix,
                revision,
                "watch compacted; reading everything again"
            );
            return Ok(None);
        }
        if reply.canceled() {
            return Err((anyhow!("watch on {prefix} cancelled"), Some(revision)));
        }
        for event in reply.events() {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            let Some(key) = relative(prefix, kv) else {
                continue;
            };
            sink(match event.event_type() {
                EventType::Put => Update::Put(key, kv.value().to_vec()),
                EventType::Delete => Update::Delete(key),
            });
        }
    }
}

fn relative(prefix: &str, kv: &etcd_client::KeyValue) -> Option<String> {
    Some(kv.key_str().ok()?.strip_prefix(prefix)?.to_string())
}

/// Keeps `key` present under a lease of `space.lease_ttl` holding the latest value of
/// `value`, forever: the value is rewritten when it changes, the lease kept alive, and
/// re-granted (with the key written again) when etcd lost it.
pub async fn publish_under_lease(
    client: Client,
    space: EtcdSpace,
    key: String,
    mut value: watch::Receiver<Vec<u8>>,
) {
    // Ends when the publisher drops its sender (publish_once revoked the lease then).
    while value.has_changed().is_ok() {
        if let Err(err) = publish_once(client.clone(), &space, &key, &mut value).await {
            tracing::warn!(key, error = %format!("{err:#}"), "publishing in etcd failed; retrying");
            tokio::time::sleep(space.ttl() / 4).await;
        }
    }
}

/// One lease: Ok when etcd says the lease is gone, Err on any failure.
async fn publish_once(
    mut client: Client,
    space: &EtcdSpace,
    key: &str,
    value: &mut watch::Receiver<Vec<u8>>,
) -> Result<()> {
    let ttl = i64::try_from(space.lease_ttl)?;
    let grant = within(space, client.lease_grant(ttl, None)).await?;
    let lease = grant.id();
    let put = |client: &mut Client, bytes: Vec<u8>| {
        let mut client = client.clone();
        let key = key.to_string();
        async move {
            client
                .put(key, bytes, Some(PutOptions::new().with_lease(lease)))
                .await
        }
    };
    let current = value.borrow_and_update().clone();
    within(space, put(&mut client, current)).await?;
    tracing::info!(key, lease, "published in etcd");
    let (mut keeper, mut replies) = within(space, client.lease_keep_alive(lease)).await?;
    let mut tick = tokio::time::interval(space.ttl() / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await?;
                let reply = within(space, replies.message())
                    .await?
                    .ok_or_else(|| anyhow!("keep-alive stream closed"))?;
                if reply.ttl() <= 0 {
                    tracing::warn!(key, lease, "lease expired; publishing again");
                    return Ok(());
                }
            }
            changed = value.changed() => {
                if changed.is_err() {
                    // The publisher is gone: give the key up at once.
                    let _ = within(space, client.lease_revoke(lease)).await;
                    return Ok(());
                }
                let current = value.borrow_and_update().clone();
                within(space, put(&mut client, current)).await?;
            }
        }
    }
}

/// Runs an etcd request with the space's timeout.
pub async fn within<T>(
    space: &EtcdSpace,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    tokio::time::timeout(space.ttl(), request)
        .await
        .context("etcd request timed out")?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_default_to_the_cluster_name() {
        let mut space = EtcdSpace::default();
        space.inherit(None);
        assert_eq!(space.peers(), "/exitd/default/parker/peers/");
        assert!(space.validate("parker.etcd").is_err(), "no endpoints");
        let mut space = EtcdSpace {
            prefix: Some("/x".into()),
            endpoints: vec!["http://e".into()],
            lease_ttl: 3,
        };
        space.inherit(None);
        assert_eq!(space.concentrators(), "/x/concentrators/");
        assert!(space.validate("parker.etcd").is_ok());
    }

    #[test]
    fn reports_parse_with_defaults() {
        let report: ConcentratorReport = serde_json::from_str(
            r#"{"id":3,"external_address":"gw","port":1,"public_key":"k","link_address":"fe80::1","connected_peers":-1}"#,
        )
        .unwrap();
        assert_eq!((report.weight, report.pop.as_str()), (1.0, ""));
    }
}
