//! Gateway failover through etcd: membership under a lease, gateway ownership claimed by
//! lease-bound transactions and fenced by the owner's own monotonic clock. etcd is the
//! consensus; nothing here votes.
//!
//! Keys: `/exitd/<cluster>/members/<node>` (JSON [`ring::MemberInfo`], on the node's lease) and
//! `/exitd/<cluster>/gateways/<n>/owner` (the owner's name, on the owner's lease).

pub mod announce;
pub mod api;
pub mod cli;
pub mod member;
pub mod ownership;
pub mod ring;
pub mod state;
pub mod takeover;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

pub use member::Membership;
pub use ownership::Cluster;
pub use ring::{MemberInfo, Members, ReplicaMode};
pub use state::GatewayState;
pub use takeover::Node;

/// The `[cluster]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs, e.g. `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Cluster name: the etcd key prefix `/exitd/<name>/`.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Lease time to live in seconds: a dead node's gateways move after about this long.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: u64,
    /// Gateways (the /52 slices 1..=15) this node can serve; default all.
    #[serde(default = "all_gateways")]
    pub gateways: BTreeSet<u8>,
    #[serde(default)]
    pub replica_mode: ReplicaMode,
    /// Per-gateway priority lists (`"3" = ["a", "b"]`), the same on every node.
    #[serde(default)]
    pub priorities: BTreeMap<String, Vec<String>>,
}

fn default_cluster_name() -> String {
    "default".into()
}

fn default_lease_ttl() -> u64 {
    2
}

fn all_gateways() -> BTreeSet<u8> {
    ring::GATEWAYS.collect()
}

impl ClusterConfig {
    /// Checks names, TTL and gateway numbers.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            bail!("cluster.endpoints must name at least one etcd endpoint");
        }
        for (what, name) in [("cluster.name", &self.name), ("cluster.node", &self.node)] {
            if name.is_empty() || name.contains('/') {
                bail!("{what} must be non-empty and without '/': {name:?}");
            }
        }
        if !(1..=3600).contains(&self.lease_ttl) {
            bail!("cluster.lease_ttl must be 1..=3600 seconds");
        }
        if let Some(bad) = self.gateways.iter().find(|g| !ring::GATEWAYS.contains(g)) {
            bail!("cluster.gateways: {bad} is not a gateway (1..=15)");
        }
        self.priority_lists().map(|_| ())
    }

    /// The priority lists keyed by gateway number.
    pub fn priority_lists(&self) -> Result<ring::Priorities> {
        self.priorities
            .iter()
            .map(|(key, nodes)| {
                let gateway: u8 = key
                    .parse()
                    .ok()
                    .filter(|g| ring::GATEWAYS.contains(g))
                    .with_context(|| format!("cluster.priorities: {key:?} is not 1..=15"))?;
                Ok((gateway, nodes.clone()))
            })
            .collect()
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    /// What this node announces in its membership key.
    pub fn member_info(&self) -> MemberInfo {
        MemberInfo {
            gateways: self.gateways.clone(),
            mode: self.replica_mode,
        }
    }

    pub fn members_prefix(&self) -> String {
        format!("/exitd/{}/members/", self.name)
    }

    pub fn member_key(&self) -> String {
        format!("{}{}", self.members_prefix(), self.node)
    }

    pub fn gateways_prefix(&self) -> String {
        format!("/exitd/{}/gateways/", self.name)
    }

    pub fn owner_key(&self, gateway: u8) -> String {
        format!("{}{gateway}/owner", self.gateways_prefix())
    }

    /// The gateway number in an owner key, if it is one.
    pub fn gateway_of_key(&self, key: &str) -> Option<u8> {
        let rest = key.strip_prefix(&self.gateways_prefix())?;
        rest.strip_suffix("/owner")?.parse().ok()
    }

    /// Connects to etcd; requests time out after a lease TTL so a hung etcd is noticed.
    pub async fn connect(&self) -> Result<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.ttl())
            .with_keep_alive(self.ttl() / 2, self.ttl());
        etcd_client::Client::connect(&self.endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {:?}", self.endpoints))
    }
}

/// Starts the cluster role for `exitd run`; None without a `[cluster]` section (a standalone
/// node, as before). With a `[network]`, the node's gateway is prepared before it joins and
/// forwards only while the node owns it (see [`takeover`]).
pub async fn start_for_daemon(
    config: &crate::config::Config,
    admin: &mut crate::api::AdminRoutes,
) -> Result<Option<Node>> {
    let Some(cluster) = &config.cluster else {
        return Ok(None);
    };
    let node = Node::start(config, cluster.clone()).await?;
    api::mount(admin, node.cluster.api());
    tracing::info!(node = %cluster.node, cluster = %cluster.name, "cluster member started");
    Ok(Some(node))
}

/// Graceful stop for `exitd run` (drain): give every gateway up at once instead of letting
/// the lease run out. A failure only delays the hand-over until the lease expires, so it is
/// logged.
pub async fn stop_for_daemon(node: Option<Node>) {
    if let Some(node) = node
        && let Err(err) = node.drain().await
    {
        tracing::warn!(error = %format!("{err:#}"), "leaving the cluster failed; the lease will run out");
    }
}

/// Reads every key under `prefix`, timing out after a lease TTL.
pub async fn read_prefix(
    client: &mut etcd_client::Client,
    config: &ClusterConfig,
    prefix: String,
) -> Result<etcd_client::GetResponse> {
    let get = client.get(
        prefix.as_str(),
        Some(etcd_client::GetOptions::new().with_prefix()),
    );
    tokio::time::timeout(config.ttl(), get)
        .await
        .with_context(|| format!("reading {prefix} from etcd timed out"))?
        .with_context(|| format!("cannot read {prefix} from etcd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig> {
        let config: ClusterConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn minimal_section_gets_defaults() {
        let c = parse("endpoints = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\n").unwrap();
        assert_eq!(c.lease_ttl, 2);
        assert_eq!(c.gateways.len(), 15);
        assert_eq!(c.replica_mode, ReplicaMode::Auto);
        assert_eq!(c.owner_key(3), "/exitd/default/gateways/3/owner");
        assert_eq!(
            c.gateway_of_key("/exitd/default/gateways/12/owner"),
            Some(12)
        );
        assert_eq!(c.gateway_of_key("/exitd/default/gateways/x/owner"), None);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let base = "endpoints = [\"http://e\"]\nnode = \"a\"\n";
        for (extra, needle) in [
            ("gateways = [0]", "not a gateway"),
            ("lease_ttl = 0", "lease_ttl"),
            ("[priorities]\n\"16\" = [\"a\"]", "not 1..=15"),
            ("replica_mode = \"Sometimes\"", "Sometimes"),
        ] {
            let err = parse(&format!("{base}{extra}\n")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{extra}: {err:#}");
        }
        let err = parse("endpoints = []\nnode = \"a\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("endpoints"));
        let err = parse("endpoints = [\"http://e\"]\nnode = \"a/b\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("cluster.node"));
    }
}
