//! Per-node prefix management: each node (keyed by its WireGuard public key) owns a /63 of a
//! parent IPv6 prefix; its first /64 is `range6`, the second `xlat_range6`. The node's last
//! concentrator selection is stored with it so that stickiness survives restarts.
//!
//! Backends: [`local::LocalIpam`] (embedded, durable, the default) and
//! [`netbox::NetboxIpam`] (NetBox REST, like the reference broker) and [`etcd::EtcdIpam`]
//! (shared by several brokers through etcd transactions).

pub mod etcd;
pub mod local;
pub mod netbox;

use anyhow::{Result, ensure};
use async_trait::async_trait;
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;

/// Prefix length handed to every node.
pub const NODE_PREFIX_LEN: u8 = 63;

/// What the broker needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's /63.
    pub prefix: Ipv6Net,
    /// Concentrator names chosen on the previous request, in order.
    pub selected: Vec<String>,
}

impl NodeRecord {
    /// The first /64 (`range6`).
    pub fn range6(&self) -> Ipv6Net {
        half(self.prefix, 0)
    }

    /// The second /64 (`xlat_range6`).
    pub fn xlat_range6(&self) -> Ipv6Net {
        half(self.prefix, 1)
    }
}

fn half(prefix: Ipv6Net, which: u128) -> Ipv6Net {
    let base = u128::from(prefix.network()) | (which << 64);
    // A /64 is always a valid prefix length.
    Ipv6Net::new(Ipv6Addr::from(base), 64).unwrap_or(prefix)
}

/// A node's record as the reference broker stores it in NetBox prefix descriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub pubkey: String,
    #[serde(default)]
    pub last_allocated_on: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub selected_concentrators: Vec<String>,
}

/// The IPAM interface the broker talks to.
#[async_trait]
pub trait Ipam: Send + Sync + 'static {
    /// The node's record, allocating a /63 on first contact. Same key, same prefix, always.
    async fn node(&self, pubkey: &str) -> Result<NodeRecord>;
    /// Remembers the concentrators chosen for the node (only called when they changed).
    async fn store_selection(&self, pubkey: &str, selected: &[String]) -> Result<()>;
    /// Number of nodes known (for logs and metrics).
    fn node_count(&self) -> Option<usize>;
}

/// Checks that a parent prefix can hold node prefixes.
pub fn validate_parent(parent: Ipv6Net) -> Result<()> {
    ensure!(
        parent.prefix_len() < NODE_PREFIX_LEN,
        "the parent prefix {parent} must be shorter than /{NODE_PREFIX_LEN}"
    );
    ensure!(
        parent.network() == parent.addr(),
        "the parent prefix {parent} has host bits set (did you mean {}?)",
        parent.trunc()
    );
    Ok(())
}

/// Seconds since the epoch as an ISO-8601 UTC timestamp (`2026-11-22T02:25:24Z`).
pub fn iso8601(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_of_a_63() {
        let rec = NodeRecord {
            prefix: "2001:db8:ed0:7d2::/63".parse().unwrap(),
            selected: vec![],
        };
        assert_eq!(rec.range6().to_string(), "2001:db8:ed0:7d2::/64");
        assert_eq!(rec.xlat_range6().to_string(), "2001:db8:ed0:7d3::/64");
    }

    #[test]
    fn parent_must_leave_room() {
        assert!(validate_parent("2001:db8::/63".parse().unwrap()).is_err());
        assert!(validate_parent("2001:db8::1/48".parse().unwrap()).is_err());
        assert!(validate_parent("2001:db8::/48".parse().unwrap()).is_ok());
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(1_795_314_324), "2026-11-22T02:25:24Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
    }
}
