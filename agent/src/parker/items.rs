//! The broker's registry items and the per-node lookup table the HTTP handler reads.
//!
//! `parker.node` (mtu cap, retry, keepalive) and `parker.concentrator` (multiple: the PoPs a
//! node gets, in preference order, optionally a preferred concentrator per PoP: the location
//! preference wgkex users asked for). The `[parker]` section gives the base values, so a
//! configuration without `[registry]` answers exactly as before. Resolution happens once per
//! (re)load into a [`NodeTable`]; a request costs one hash lookup.

use super::BrokerConfig;
use crate::registry::{
    Field, FieldType, Item, Registry, RegistryConfig, Resolver, SubjectKind, SubjectState,
    eval::Base,
};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

pub fn register(registry: &mut Registry) {
    registry.register::<ParkerNode>();
    registry.register::<ParkerConcentrator>();
}

/// `parker.node`: what the broker's answer to one node contains besides addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParkerNode {
    /// Upper bound of the tunnel MTU (`mtu = min(v6mtu, this)`).
    pub mtu: u32,
    /// Seconds until the node asks again.
    pub retry: u32,
    pub wg_keepalive: u32,
}

impl Default for ParkerNode {
    fn default() -> Self {
        use super::config::{default_keepalive, default_max_mtu, default_retry};
        ParkerNode {
            mtu: default_max_mtu(),
            retry: default_retry(),
            wg_keepalive: default_keepalive(),
        }
    }
}

impl Item for ParkerNode {
    const ID: &'static str = "parker.node";
    const MULTIPLE: bool = false;
    const KINDS: &'static [SubjectKind] = &[SubjectKind::Node];
    fn fields() -> &'static [Field] {
        const FIELDS: &[Field] = &[
            Field::new("mtu", FieldType::Integer, "tunnel MTU cap").range(1280.0, 65535.0),
            Field::new("retry", FieldType::Integer, "seconds between requests").range(1.0, 86400.0),
            Field::new("wg_keepalive", FieldType::Integer, "seconds").range(0.0, 65535.0),
        ];
        FIELDS
    }
}

/// `parker.concentrator` (multiple): one PoP the node gets a concentrator from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ParkerConcentrator {
    pub pop: String,
    /// A concentrator name in that PoP to use while it is online; empty: the broker chooses.
    pub prefer: String,
}

impl Item for ParkerConcentrator {
    const ID: &'static str = "parker.concentrator";
    const MULTIPLE: bool = true;
    const KINDS: &'static [SubjectKind] = &[SubjectKind::Node];
    fn fields() -> &'static [Field] {
        const FIELDS: &[Field] = &[
            Field::new("pop", FieldType::String, "PoP name"),
            Field::new(
                "prefer",
                FieldType::String,
                "preferred concentrator in the PoP",
            ),
        ];
        FIELDS
    }
}

/// The resolved answer parameters of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    pub max_mtu: u32,
    pub retry: u32,
    pub wg_keepalive: u32,
    /// Empty: one concentrator from every PoP (the default).
    pub prefs: Vec<ParkerConcentrator>,
}

/// Settings per listed node plus the settings of every other node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTable {
    pub default: NodeSettings,
    pub nodes: HashMap<String, NodeSettings>,
}

impl NodeTable {
    pub fn get(&self, pubkey: &str) -> &NodeSettings {
        self.nodes.get(pubkey).unwrap_or(&self.default)
    }
}

/// Rule state per node between reloads (`""`: unlisted nodes).
pub type NodeStates = HashMap<String, SubjectState>;

/// The `[parker]` values the layers start from.
pub fn base(config: &BrokerConfig) -> Base {
    vec![
        (
            ParkerNode::ID,
            "mtu",
            config.max_mtu.into(),
            "[parker] max_mtu".into(),
        ),
        (
            ParkerNode::ID,
            "retry",
            config.retry_interval.into(),
            "[parker] retry_interval".into(),
        ),
        (
            ParkerNode::ID,
            "wg_keepalive",
            config.wg_keepalive.into(),
            "[parker] wg_keepalive".into(),
        ),
    ]
}

/// Resolves every listed node and the unlisted default; `prev` continues the edge-triggered
/// evaluation of a previous load.
pub fn resolve_table(
    config: &BrokerConfig,
    registry: Option<&RegistryConfig>,
    prev: &NodeStates,
) -> Result<(NodeTable, NodeStates)> {
    let Some(registry) = registry else {
        let default = NodeSettings {
            max_mtu: config.max_mtu,
            retry: config.retry_interval,
            wg_keepalive: config.wg_keepalive,
            prefs: Vec::new(),
        };
        return Ok((
            NodeTable {
                default,
                nodes: HashMap::new(),
            },
            NodeStates::new(),
        ));
    };
    let resolver = Resolver::new(crate::registry::standard(), registry.clone())?;
    let base = base(config);
    let pops: BTreeSet<&str> = config
        .concentrators
        .iter()
        .map(|c| c.pop.as_str())
        .collect();
    let mut states = NodeStates::new();
    let mut nodes = HashMap::new();
    let names = std::iter::once(String::new()).chain(
        resolver
            .subjects()
            .into_iter()
            .filter(|(k, _)| *k == SubjectKind::Node)
            .map(|(_, n)| n),
    );
    for name in names {
        if !name.is_empty() && !super::is_wireguard_key(&name) {
            bail!("[registry.nodes.{name:?}]: a node is named by its WireGuard public key");
        }
        let resolution = resolver.resolve(SubjectKind::Node, &name, &base, prev.get(&name))?;
        let settings = settings_of(&resolution, config, &pops)?;
        states.insert(name.clone(), resolution.state().clone());
        nodes.insert(name, settings);
    }
    let default = nodes
        .remove("")
        .unwrap_or_else(|| unreachable!("resolved above"));
    Ok((NodeTable { default, nodes }, states))
}

fn settings_of(
    resolution: &crate::registry::Resolution,
    config: &BrokerConfig,
    pops: &BTreeSet<&str>,
) -> Result<NodeSettings> {
    let node = resolution.get::<ParkerNode>().unwrap_or_default();
    let prefs = resolution.list::<ParkerConcentrator>();
    let who = if resolution.name.is_empty() {
        "node (unlisted)".to_string()
    } else {
        format!("node {}", resolution.name)
    };
    for (i, p) in prefs.iter().enumerate() {
        let origin = |field: &str| {
            resolution
                .slot(&format!("parker.concentrator[{i}]#{field}"))
                .map(|s| s.origin.to_string())
                .unwrap_or_default()
        };
        if !pops.contains(p.pop.as_str()) {
            bail!(
                "{who}: item parker.concentrator[{i}], field pop: no concentrator in PoP {:?} \
                 (set by {})",
                p.pop,
                origin("pop")
            );
        }
        let known = config
            .concentrators
            .iter()
            .any(|c| c.name == p.prefer && c.pop == p.pop);
        if !p.prefer.is_empty() && !known {
            bail!(
                "{who}: item parker.concentrator[{i}], field prefer: {:?} is not a concentrator \
                 of PoP {:?} (set by {})",
                p.prefer,
                p.pop,
                origin("prefer")
            );
        }
    }
    Ok(NodeSettings {
        max_mtu: node.mtu,
        retry: node.retry,
        wg_keepalive: node.wg_keepalive,
        prefs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_match_structs() {
        crate::registry::assert_schema_matches::<ParkerNode>();
        crate::registry::assert_schema_matches::<ParkerConcentrator>();
    }

    #[test]
    fn without_registry_the_table_is_the_parker_section() {
        let mut config = BrokerConfig::with_defaults();
        config.max_mtu = 1400;
        let (table, _) = resolve_table(&config, None, &NodeStates::new()).unwrap();
        let node = table.get("anything");
        assert_eq!(
            (node.max_mtu, node.retry, node.wg_keepalive),
            (1400, 120, 25)
        );
        assert!(node.prefs.is_empty());
        let empty = RegistryConfig::default();
        let (same, _) = resolve_table(&config, Some(&empty), &NodeStates::new()).unwrap();
        assert_eq!(same, table, "an empty [registry] changes nothing");
    }
}
