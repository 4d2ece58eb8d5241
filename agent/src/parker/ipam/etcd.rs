//! The etcd IPAM: several brokers share one pool of node prefixes.
//!
//! A node's record (`ipam/nodes/<pubkey>`) and the claim on its /63 (`ipam/prefixes/<addr>`)
//! are created together in one transaction that succeeds only if neither key exists yet, so
//! two brokers can never hand out the same prefix, and a key that some broker already
//! allocated is answered with its existing prefix. Each broker follows the prefix claims in
//! a watch to pick a free /63 (lowest first) without asking etcd; a claim it has not seen yet
//! only makes its transaction fail, and it tries the next slot.

use super::super::{
    etcd::{self, EtcdSpace, Update},
    unix_now,
};
use super::{Description, Ipam, NODE_PREFIX_LEN, NodeRecord, iso8601, validate_parent};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashSet,
    net::Ipv6Addr,
    sync::{Arc, Mutex},
};
use tokio::sync::OnceCell;

/// Transactions one allocation may lose to other brokers before it gives up.
const MAX_ATTEMPTS: usize = 64;

/// A node's record in etcd: the prefix and what the reference broker keeps in NetBox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNode {
    pub prefix: Ipv6Net,
    #[serde(flatten)]
    pub description: Description,
}

impl StoredNode {
    fn record(&self) -> NodeRecord {
        NodeRecord {
            prefix: self.prefix,
            selected: self.description.selected_concentrators.clone(),
        }
    }
}

/// Which /63 slots are claimed (as far as the watch has seen) or being claimed here.
struct Slots {
    parent: Ipv6Net,
    count: u128,
    claimed: HashSet<u128>,
    reserved: HashSet<u128>,
    /// No free slot below this one.
    lowest_free: u128,
}

impl Slots {
    fn new(parent: Ipv6Net) -> Slots {
        Slots {
            parent,
            count: 1u128 << (NODE_PREFIX_LEN - parent.prefix_len()),
            claimed: HashSet::new(),
            reserved: HashSet::new(),
            // Slot 0 stays reserved, as in the reference broker's store.
            lowest_free: 1,
        }
    }

    fn prefix(&self, slot: u128) -> Ipv6Net {
        let addr = u128::from(self.parent.network()) | (slot << (128 - NODE_PREFIX_LEN));
        Ipv6Net::new(Ipv6Addr::from(addr), NODE_PREFIX_LEN).unwrap_or(self.parent)
    }

    fn slot_of_key(&self, key: &str) -> Option<u128> {
        let addr: Ipv6Addr = key.parse().ok()?;
        let prefix = Ipv6Net::new(addr, NODE_PREFIX_LEN).ok()?;
        (self.parent.contains(&prefix) && prefix.network() == addr)
            .then(|| (u128::from(addr) - u128::from(self.parent.network())) >> 65)
    }

    /// The lowest slot neither claimed nor reserved, now reserved.
    fn reserve(&mut self) -> Option<u128> {
        let mut slot = self.lowest_free;
        while slot < self.count && (self.claimed.contains(&slot) || self.reserved.contains(&slot)) {
            slot += 1;
        }
        self.lowest_free = slot;
        (slot < self.count).then(|| {
            self.reserved.insert(slot);
            slot
        })
    }

    /// Ends a reservation; `claimed` says whether the slot is now taken in etcd.
    fn settle(&mut self, slot: u128, claimed: bool) {
        self.reserved.remove(&slot);
        if claimed {
            self.claimed.insert(slot);
        } else {
            self.lowest_free = self.lowest_free.min(slot);
        }
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Snapshot(entries) => {
                self.claimed = entries
                    .iter()
                    .filter_map(|(key, _)| self.slot_of_key(key))
                    .collect();
                self.lowest_free = 1;
            }
            Update::Put(key, _) => {
                if let Some(slot) = self.slot_of_key(&key) {
                    self.claimed.insert(slot);
                }
            }
            Update::Delete(key) => {
                if let Some(slot) = self.slot_of_key(&key) {
                    self.claimed.remove(&slot);
                    self.lowest_free = self.lowest_free.min(slot);
                }
            }
        }
    }
}

/// The etcd backend (`[parker.ipam] backend = "etcd"`).
pub struct EtcdIpam {
    space: EtcdSpace,
    created_by: String,
    slots: Arc<Mutex<Slots>>,
    /// Connected on first use: opening the IPAM never blocks on etcd.
    client: OnceCell<Client>,
}

enum Claim {
    Won(StoredNode),
    /// Another request (here or on another broker) allocated this key first.
    KeyExists(StoredNode),
    PrefixTaken,
}

impl EtcdIpam {
    pub fn new(space: EtcdSpace, parent: Ipv6Net, created_by: &str) -> Result<EtcdIpam> {
        validate_parent(parent)?;
        space.validate("parker.etcd")?;
        Ok(EtcdIpam {
            space,
            created_by: created_by.to_string(),
            slots: Arc::new(Mutex::new(Slots::new(parent))),
            client: OnceCell::new(),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client, connecting and starting the claim watch on first use.
    async fn client(&self) -> Result<Client> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let client = self.space.connect().await?;
                let slots = Arc::clone(&self.slots);
                let follow = etcd::follow(
                    client.clone(),
                    self.space.clone(),
                    self.space.ipam_prefixes(),
                    move |update| {
                        slots
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .apply(update)
                    },
                );
                tokio::spawn(follow);
                Ok::<_, anyhow::Error>(client)
            })
            .await?;
        Ok(client.clone())
    }

    fn node_key(&self, pubkey: &str) -> String {
        format!("{}{pubkey}", self.space.ipam_nodes())
    }

    async fn lookup(&self, client: &mut Client, pubkey: &str) -> Result<Option<(StoredNode, i64)>> {
        let reply = etcd::within(&self.space, client.get(self.node_key(pubkey), None)).await?;
        reply
            .kvs()
            .first()
            .map(|kv| Ok((parse_node(kv.value())?, kv.mod_revision())))
            .transpose()
    }

    async fn allocate(&self, client: &mut Client, pubkey: &str) -> Result<StoredNode> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(slot) = self.slots().reserve() else {
                bail!("the IPAM parent prefix is full");
            };
            let prefix = self.slots().prefix(slot);
            let claim = self.claim(client, pubkey, prefix).await;
            self.slots().settle(
                slot,
                matches!(claim, Ok(Claim::Won(_) | Claim::PrefixTaken)),
            );
            match claim? {
                Claim::Won(node) => {
                    tracing::info!(pubkey, prefix = %node.prefix, "allocated a node prefix");
                    return Ok(node);
                }
                Claim::KeyExists(node) => return Ok(node),
                Claim::PrefixTaken => continue,
            }
        }
        bail!("could not claim a free prefix after {MAX_ATTEMPTS} attempts")
    }

    /// One transaction: create the node's record and the prefix claim if neither exists.
    async fn claim(&self, client: &mut Client, pubkey: &str, prefix: Ipv6Net) -> Result<Claim> {
        let node = StoredNode {
            prefix,
            description: Description {
                pubkey: pubkey.to_string(),
                last_allocated_on: Some(iso8601(unix_now())),
                created_by: Some(self.created_by.clone()),
                selected_concentrators: Vec::new(),
            },
        };
        let node_key = self.node_key(pubkey);
        let prefix_key = format!("{}{}", self.space.ipam_prefixes(), prefix.network());
        let txn = Txn::new()
            .when([
                Compare::create_revision(node_key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(prefix_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(node_key.as_str(), serde_json::to_vec(&node)?, None),
                TxnOp::put(prefix_key.as_str(), pubkey, None),
            ])
            .or_else([TxnOp::get(node_key.as_str(), None)]);
        let reply = etcd::within(&self.space, client.txn(txn)).await?;
        if reply.succeeded() {
            return Ok(Claim::Won(node));
        }
        let existing = reply.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        match existing {
            Some(value) => Ok(Claim::KeyExists(parse_node(&value)?)),
            None => Ok(Claim::PrefixTaken),
        }
    }

    /// Number of claimed prefixes as far as this broker's watch has seen.
    pub fn claimed(&self) -> usize {
        self.slots().claimed.len()
    }
}

fn parse_node(value: &[u8]) -> Result<StoredNode> {
    serde_json::from_slice(value).context("unreadable IPAM record in etcd")
}

#[async_trait]
impl Ipam for EtcdIpam {
    async fn node(&self, pubkey: &str) -> Result<NodeRecord> {
        let mut client = self.client().await?;
        if let Some((node, _)) = self.lookup(&mut client, pubkey).await? {
            return Ok(node.record());
        }
        Ok(self.allocate(&mut client, pubkey).await?.record())
    }

    /// Compare-and-swap on the record's revision; a lost race is retried a few times (the
    /// selection only matters for stickiness).
    async fn store_selection(&self, pubkey: &str, selected: &[String]) -> Result<()> {
        let mut client = self.client().await?;
        for _ in 0..3 {
            let Some((mut node, revision)) = self.lookup(&mut client, pubkey).await? else {
                bail!("node {pubkey} has no IPAM record");
            };
            node.description.selected_concentrators = selected.to_vec();
            let key = self.node_key(pubkey);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&node)?, None)]);
            if etcd::within(&self.space, client.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(());
            }
        }
        bail!("the record of {pubkey} kept changing; selection not stored")
    }

    fn node_count(&self) -> Option<usize> {
        self.client.initialized().then(|| self.claimed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_skip_claims_and_reservations() {
        let mut slots = Slots::new("2001:db8::/60".parse().unwrap());
        assert_eq!(slots.count, 8);
        slots.apply(Update::Put("2001:db8:0:2::".into(), vec![]));
        slots.apply(Update::Put("2001:db8:0:3::".into(), vec![]));
        slots.apply(Update::Put("not an address".into(), vec![]));
        slots.apply(Update::Put("2001:db8:0:3::1".into(), vec![]));
        assert_eq!(slots.claimed.len(), 1, "only /63 network addresses count");
        let a = slots.reserve().unwrap();
        let b = slots.reserve().unwrap();
        assert_eq!((a, b), (2, 3), "slot 1 is 2001:db8:0:2::, claimed");
        assert_eq!(slots.prefix(a).to_string(), "2001:db8:0:4::/63");
        slots.settle(a, false);
        assert_eq!(slots.reserve(), Some(2), "a released slot is reused first");
        slots.apply(Update::Delete("2001:db8:0:2::".into()));
        assert_eq!(slots.reserve(), Some(1));
        slots.settle(b, true);
        assert_eq!(slots.reserve(), Some(4));
        assert_eq!(slots.reserve(), Some(5));
        assert_eq!(slots.reserve(), Some(6));
        assert_eq!(slots.reserve(), Some(7));
        assert_eq!(slots.reserve(), None, "full");
    }
}
