//! The nodes' `xlat_range6`s in the NAT64 translator's XLAT6 map: the translator accepts
//! only sources of nodes this concentrator serves, each on the concentrator's interface.
//! Entries follow the peers: added with a node, removed before its route and peer go, and
//! reconciled on every check (the maps may appear later, e.g. when this node takes over the
//! gateway, or hold entries of peers removed while exitd was down).

use crate::dataplane::{
    PinDir,
    nat64::{xlat_range6, xlat_table},
    nat64_maps::Xlat6Map,
};
use exitd_common::nat64::XlatSource;
use ipnet::Ipv6Net;

pub struct XlatKeeper {
    pins: PinDir,
    /// The concentrator interface's index (in the gateway's namespace).
    ifindex: u32,
    map: Option<Xlat6Map>,
}

impl XlatKeeper {
    pub fn new(pins: PinDir, ifindex: u32) -> XlatKeeper {
        XlatKeeper {
            pins,
            ifindex,
            map: None,
        }
    }

    /// The map, opened on first use; None (logged) while the gateway's maps are not pinned.
    fn map(&mut self) -> Option<&mut Xlat6Map> {
        if self.map.is_none() {
            match Xlat6Map::open_pinned(&self.pins) {
                Ok(map) => self.map = Some(map),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "XLAT6 is not pinned yet");
                }
            }
        }
        self.map.as_mut()
    }

    pub fn add(&mut self, node_prefix: &Ipv6Net) {
        let source = XlatSource {
            ifindex: self.ifindex,
            pad: 0,
        };
        if let Some(map) = self.map()
            && let Err(e) = map.insert(xlat_range6(node_prefix), source)
        {
            tracing::error!(prefix = %node_prefix, error = %format!("{e:#}"), "cannot add the node's xlat_range6");
        }
    }

    pub fn remove(&mut self, node_prefix: &Ipv6Net) {
        if let Some(map) = self.map()
            && let Err(e) = map.remove(&xlat_range6(node_prefix))
        {
            tracing::error!(prefix = %node_prefix, error = %format!("{e:#}"), "cannot remove the node's xlat_range6");
        }
    }

    /// Makes XLAT6 hold exactly the ranges of `node_prefixes`.
    pub fn reconcile<'a>(&mut self, node_prefixes: impl IntoIterator<Item = &'a Ipv6Net>) {
        let want = xlat_table(node_prefixes, self.ifindex);
        // Reopened each time: a detach and re-attach replaces the pinned map.
        self.map = None;
        let Some(map) = self.map() else {
            return;
        };
        match map.sync(&want) {
            Ok((0, 0, 0)) => {}
            Ok((added, updated, removed)) => {
                tracing::info!(added, updated, removed, "XLAT6 reconciled")
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot reconcile XLAT6"),
        }
    }
}
