//! Reading the per-interface packet counters back from the pinned map.

use super::PinDir;
use crate::iface;
use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuHashMap};
use exitd_common::{Counters, IFACE_COUNTERS_MAP};

/// Counters of one interface: the sum and the per-CPU values they were summed from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IfaceCounters {
    pub ifindex: u32,
    /// None when the interface no longer exists in this network namespace.
    pub ifname: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub per_cpu: Vec<CpuCounters>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CpuCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads every interface's counters from the pinned counter map, sorted by ifindex.
pub fn read_iface_counters(pins: &PinDir) -> Result<Vec<IfaceCounters>> {
    let path = pins.map(IFACE_COUNTERS_MAP);
    if !path.exists() {
        anyhow::bail!(
            "no counters pinned at {}: no exitd program has been attached yet \
             (`exitd dataplane attach --iface IF`)",
            path.display()
        );
    }
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let map: PerCpuHashMap<MapData, u32, Counters> = Map::from_map_data(data)?
        .try_into()
        .with_context(|| format!("{} is not exitd's counter map", path.display()))?;
    let mut all = Vec::new();
    for entry in map.iter() {
        let (ifindex, values) = entry.context("cannot read the counter map")?;
        let per_cpu: Vec<CpuCounters> = values
            .iter()
            .map(|c| CpuCounters {
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let total = values.iter().fold(Counters::default(), |sum, c| sum + *c);
        all.push(IfaceCounters {
            ifindex,
            ifname: iface::name_of(ifindex),
            packets: total.packets,
            bytes: total.bytes,
            per_cpu,
        });
    }
    all.sort_by_key(|c| c.ifindex);
    Ok(all)
}
