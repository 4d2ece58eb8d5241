//! The per-gateway state machine in etcd (after wmgwd's per-network states and dynvpn's
//! Online/Replica/Offline), under `/exitd/<cluster>/gateways/<n>/`:
//!
//! - `owner`: the owning node, on its lease (see [`super::ownership`]);
//! - `state`: [`GatewayState`] as JSON `{"state": "...", "node": "..."}`, written by the owner
//!   on its lease, so it vanishes with the owner: no key means `offline`;
//! - `admin`: `"offline"` when an administrator took the gateway out of service (no lease:
//!   it survives restarts until set `"online"` again, which deletes it).
//!
//! Transitions: (none) → `taking-over` (the claim transaction) → `online` (plan applied,
//! forwarder synced, addresses announced) → `draining` (SIGTERM, planned migration or admin
//! offline; forwarding stops before the key is deleted) → (none). A crash skips `draining`:
//! the lease runs out and both keys go with it.

use super::ClusterConfig;
use anyhow::{Context, Result, bail};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayState {
    /// Claimed; the new owner is switching its prepared plan on.
    TakingOver,
    /// Forwarding through its owner.
    Online,
    /// Its owner is stopping forwarding and will release it.
    Draining,
    /// No owner (derived from a missing key, never stored by an owner).
    Offline,
}

impl GatewayState {
    pub fn name(self) -> &'static str {
        match self {
            GatewayState::TakingOver => "taking-over",
            GatewayState::Online => "online",
            GatewayState::Draining => "draining",
            GatewayState::Offline => "offline",
        }
    }

    /// The stored value: the state and the node that wrote it.
    pub fn record(self, node: &str) -> String {
        serde_json::json!({ "state": self, "node": node }).to_string()
    }
}

#[derive(Deserialize)]
struct Record {
    state: GatewayState,
}

impl ClusterConfig {
    pub fn state_key(&self, gateway: u8) -> String {
        format!("{}{gateway}/state", self.gateways_prefix())
    }

    pub fn admin_key(&self, gateway: u8) -> String {
        format!("{}{gateway}/admin", self.gateways_prefix())
    }
}

/// Everything etcd holds about the gateways, from one read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GatewayView {
    /// gateway → (owner node, its lease)
    pub owners: BTreeMap<u8, (String, i64)>,
    pub states: BTreeMap<u8, GatewayState>,
    pub admin_offline: BTreeSet<u8>,
}

impl GatewayView {
    /// The state shown to operators: stored by the owner, or offline without one.
    pub fn state_of(&self, gateway: u8) -> GatewayState {
        match (self.owners.get(&gateway), self.states.get(&gateway)) {
            (Some(_), Some(state)) => *state,
            (Some(_), None) => GatewayState::TakingOver,
            (None, _) => GatewayState::Offline,
        }
    }
}

/// Splits `/exitd/<c>/gateways/<n>/<leaf>` into (n, leaf).
fn parse_key<'a>(config: &ClusterConfig, key: &'a str) -> Option<(u8, &'a str)> {
    let rest = key.strip_prefix(&config.gateways_prefix())?;
    let (gateway, leaf) = rest.split_once('/')?;
    Some((gateway.parse().ok()?, leaf))
}

/// Reads the owner, state and admin keys of every gateway; unreadable values are skipped.
pub async fn read_gateways(client: &mut Client, config: &ClusterConfig) -> Result<GatewayView> {
    let reply = super::read_prefix(client, config, config.gateways_prefix()).await?;
    let mut view = GatewayView::default();
    for kv in reply.kvs() {
        let Some((gateway, leaf)) = kv.key_str().ok().and_then(|k| parse_key(config, k)) else {
            continue;
        };
        let Ok(value) = kv.value_str() else { continue };
        match leaf {
            "owner" => {
                view.owners.insert(gateway, (value.to_string(), kv.lease()));
            }
            "state" => {
                if let Ok(record) = serde_json::from_str::<Record>(value) {
                    view.states.insert(gateway, record.state);
                }
            }
            "admin" if value == "offline" => {
                view.admin_offline.insert(gateway);
            }
            _ => {}
        }
    }
    Ok(view)
}

/// Writes `state` under `lease` if `config.node` still owns `gateway`; false if it does not.
pub async fn write_owned(
    client: &mut Client,
    config: &ClusterConfig,
    gateway: u8,
    lease: i64,
    state: GatewayState,
) -> Result<bool> {
    let owner = config.owner_key(gateway);
    let txn = Txn::new()
        .when([Compare::value(
            owner.as_str(),
            CompareOp::Equal,
            config.node.as_str(),
        )])
        .and_then([TxnOp::put(
            config.state_key(gateway),
            state.record(&config.node),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let reply = tokio::time::timeout(config.ttl(), client.txn(txn))
        .await
        .context("writing the gateway state timed out")??;
    Ok(reply.succeeded())
}

/// An administrator's online/offline for `gateway`: offline makes every node release it and
/// none claim it; online lets the ring assign it again.
pub async fn set_admin(
    client: &mut Client,
    config: &ClusterConfig,
    gateway: u8,
    online: bool,
) -> Result<()> {
    if !super::ring::GATEWAYS.contains(&gateway) {
        bail!("{gateway} is not a gateway (1..=15)");
    }
    let key = config.admin_key(gateway);
    let request = async {
        if online {
            client.delete(key, None).await.map(drop)
        } else {
            client.put(key, "offline", None).await.map(drop)
        }
    };
    tokio::time::timeout(config.ttl(), request)
        .await
        .context("setting the gateway's admin state timed out")?
        .context("cannot set the gateway's admin state")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        toml::from_str("endpoints = [\"http://e\"]\nnode = \"a\"\nname = \"c\"\n").unwrap()
    }

    #[test]
    fn keys_parse_back_into_gateway_and_leaf() {
        let c = config();
        assert_eq!(c.state_key(4), "/exitd/c/gateways/4/state");
        assert_eq!(parse_key(&c, &c.admin_key(12)), Some((12, "admin")));
        assert_eq!(parse_key(&c, "/exitd/c/gateways/x/owner"), None);
        assert_eq!(parse_key(&c, "/exitd/other/gateways/1/owner"), None);
    }

    #[test]
    fn records_round_trip_and_missing_owner_means_offline() {
        let record = GatewayState::TakingOver.record("a");
        assert_eq!(record, r#"{"node":"a","state":"taking-over"}"#);
        let parsed: Record = serde_json::from_str(&record).unwrap();
        assert_eq!(parsed.state, GatewayState::TakingOver);
        let mut view = GatewayView::default();
        view.states.insert(3, GatewayState::Online);
        assert_eq!(
            view.state_of(3),
            GatewayState::Offline,
            "state without owner"
        );
        view.owners.insert(3, ("a".into(), 7));
        assert_eq!(view.state_of(3), GatewayState::Online);
        view.owners.insert(5, ("b".into(), 8));
        assert_eq!(view.state_of(5), GatewayState::TakingOver);
    }
}
