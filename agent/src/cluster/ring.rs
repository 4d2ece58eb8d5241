//! Which live node owns which gateway: a consistent-hash ring (MurmurHash3's fmix64 finaliser,
//! many virtual ids per node, as wmgwd does), overridden by per-gateway priority lists and
//! per-node replica modes (as dynvpn does). Pure functions: every node computes the same answer
//! from the same member set, so nobody has to agree on anything but membership.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Virtual ids per node: enough that gateways spread evenly and few move on join/leave.
pub const VIRTUAL_IDS: u64 = 100;

/// Gateways are the exit-node roles, the /52 slices 1..=15.
pub const GATEWAYS: std::ops::RangeInclusive<u8> = 1..=15;

/// How a node takes part in ownership (dynvpn's replica modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMode {
    /// Owns any gateway it serves when the ring or a priority list picks it.
    #[default]
    Auto,
    /// Owns only gateways whose priority list names it; the ring never picks it.
    Manual,
    /// Never owns anything (maintenance, draining).
    Disabled,
}

/// What a live member announces about itself (the value of its membership key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Gateways this node can serve.
    pub gateways: BTreeSet<u8>,
    pub mode: ReplicaMode,
}

/// Live members by node name.
pub type Members = BTreeMap<String, MemberInfo>;

/// Per-gateway priority lists: the first live, eligible node listed owns the gateway.
pub type Priorities = BTreeMap<u8, Vec<String>>;

/// MurmurHash3's 64-bit finaliser: a cheap, well-mixing bijection on u64.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// FNV-1a of the node name: a stable seed so every node derives the same virtual ids
/// without storing them in etcd.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The node's virtual ids on the ring.
pub fn virtual_ids(name: &str) -> impl Iterator<Item = u64> {
    let seed = name_seed(name);
    (0..VIRTUAL_IDS).map(move |i| fmix64(seed.wrapping_add(fmix64(i))))
}

/// The gateway's position on the ring.
pub fn position(gateway: u8) -> u64 {
    fmix64(u64::from(gateway))
}

fn eligible(info: &MemberInfo, gateway: u8) -> bool {
    info.gateways.contains(&gateway) && info.mode != ReplicaMode::Disabled
}

/// The node that should own `gateway` among `members`, or None when nobody can.
pub fn owner_of(gateway: u8, members: &Members, priorities: &Priorities) -> Option<String> {
    if let Some(owner) = priority_owner(gateway, members, priorities) {
        return Some(owner);
    }
    ring_owner(gateway, members)
}

fn priority_owner(gateway: u8, members: &Members, priorities: &Priorities) -> Option<String> {
    priorities.get(&gateway)?.iter().find_map(|name| {
        let info = members.get(name)?;
        eligible(info, gateway).then(|| name.clone())
    })
}

/// First virtual id at or after the gateway's position (wrapping) among Auto nodes serving it.
fn ring_owner(gateway: u8, members: &Members) -> Option<String> {
    let pos = position(gateway);
    let ring: BTreeMap<(u64, &str), ()> = members
        .iter()
        .filter(|(_, info)| info.mode == ReplicaMode::Auto && eligible(info, gateway))
        .flat_map(|(name, _)| virtual_ids(name).map(move |id| ((id, name.as_str()), ())))
        .collect();
    ring.range((pos, "")..)
        .chain(ring.iter())
        .next()
        .map(|((_, name), _)| (*name).to_string())
}

/// The owner of every gateway that has one.
pub fn assignment(members: &Members, priorities: &Priorities) -> BTreeMap<u8, String> {
    GATEWAYS
        .filter_map(|g| owner_of(g, members, priorities).map(|owner| (g, owner)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auto(gateways: impl IntoIterator<Item = u8>) -> MemberInfo {
        MemberInfo {
            gateways: gateways.into_iter().collect(),
            mode: ReplicaMode::Auto,
        }
    }

    fn members(names: &[&str]) -> Members {
        names
            .iter()
            .map(|n| (n.to_string(), auto(GATEWAYS)))
            .collect()
    }

    #[test]
    fn fmix64_matches_murmur3_reference_values() {
        assert_eq!(fmix64(0), 0);
        // Reference value of MurmurHash3's fmix64(1).
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
    }

    #[test]
    fn every_gateway_has_an_owner_and_load_is_spread() {
        let plan = assignment(&members(&["a", "b", "c"]), &Priorities::new());
        assert_eq!(plan.len(), 15);
        let owners: BTreeSet<_> = plan.values().collect();
        assert!(owners.len() >= 2, "{plan:?}");
    }

    #[test]
    fn nobody_owns_with_no_members() {
        assert_eq!(owner_of(3, &Members::new(), &Priorities::new()), None);
    }

    #[test]
    fn only_nodes_serving_a_gateway_own_it() {
        let mut m = members(&["a"]);
        m.insert("b".into(), auto([7]));
        for g in GATEWAYS {
            let owner = owner_of(g, &m, &Priorities::new()).unwrap();
            assert!(owner == "a" || g == 7, "{g} -> {owner}");
        }
    }

    #[test]
    fn priority_list_wins_and_skips_dead_or_disabled_nodes() {
        let mut m = members(&["a", "b", "c"]);
        let prio = Priorities::from([(4, vec!["x".into(), "c".into(), "a".into()])]);
        assert_eq!(owner_of(4, &m, &prio).as_deref(), Some("c"));
        m.get_mut("c").unwrap().mode = ReplicaMode::Disabled;
        assert_eq!(owner_of(4, &m, &prio).as_deref(), Some("a"));
    }

    #[test]
    fn manual_nodes_own_only_through_priority_lists() {
        let mut m = members(&["a"]);
        m.insert(
            "m".into(),
            MemberInfo {
                gateways: GATEWAYS.collect(),
                mode: ReplicaMode::Manual,
            },
        );
        let prio = Priorities::from([(2, vec!["m".into()])]);
        let plan = assignment(&m, &prio);
        assert_eq!(plan[&2], "m");
        assert!(plan.iter().all(|(g, o)| *g == 2 || o == "a"), "{plan:?}");
    }

    #[test]
    fn disabled_only_cluster_owns_nothing() {
        let mut m = members(&["a"]);
        m.get_mut("a").unwrap().mode = ReplicaMode::Disabled;
        assert!(assignment(&m, &Priorities::new()).is_empty());
    }

    proptest! {
        /// A joining node only takes gateways (moves are all towards it); a leaving node's
        /// gateways are the only ones that move.
        #[test]
        fn join_and_leave_move_only_what_they_must(
            names in prop::collection::btree_set("[a-z]{1,6}", 1..6),
            newcomer in "[A-Z]{1,6}",
        ) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let before = assignment(&members(&names), &Priorities::new());
            let mut joined = names.clone();
            joined.push(&newcomer);
            let after = assignment(&members(&joined), &Priorities::new());
            for (g, owner) in &after {
                prop_assert!(owner == &before[g] || owner == &newcomer);
            }
            // Leaving is the same comparison read backwards.
            for (g, owner) in &before {
                prop_assert!(after[g] == *owner || after[g] == newcomer);
            }
        }
    }
}
