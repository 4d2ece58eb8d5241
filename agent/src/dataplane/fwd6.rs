//! The IPv6 forwarder's maps: what they should hold (`Fwd6Table`, derived from the plan and
//! the neighbour table) and making the kernel's maps equal to it (`Fwd6Maps::sync`).

use super::PinDir;
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{
        DevMapHash, HashMap, Map, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use exitd_common::{
    Counters, LOCAL6_MAP, Prefix64, ROUTE_STATS_MAP, ROUTES6_LPM_MAP, ROUTES6_MAP, Route6,
    TX_PORTS_MAP, VERDICT_STATS_MAP, Verdict,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

/// Every map the forwarder uses, by name; all are pinned so a restarted agent and the
/// running program share them.
pub const FWD6_MAPS: [&str; 6] = [
    ROUTES6_MAP,
    ROUTES6_LPM_MAP,
    LOCAL6_MAP,
    TX_PORTS_MAP,
    VERDICT_STATS_MAP,
    ROUTE_STATS_MAP,
];

/// What the forwarder's maps should contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fwd6Table {
    /// Exact /64 routes.
    pub routes64: BTreeMap<Prefix64, Route6>,
    /// Shorter routes: (prefix length, address) → route.
    pub lpm: BTreeMap<(u8, [u8; 16]), Route6>,
    /// The exit node's own addresses.
    pub local: BTreeSet<[u8; 16]>,
    /// Egress ifindexes.
    pub ports: BTreeSet<u32>,
}

/// The /64 key of `addr`.
pub fn prefix64(addr: Ipv6Addr) -> Prefix64 {
    let o = addr.octets();
    [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
}

/// How many entries a sync added, changed and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

/// Handles on the forwarder's kernel maps.
pub struct Fwd6Maps {
    routes64: HashMap<MapData, Prefix64, Route6>,
    lpm: LpmTrie<MapData, [u8; 16], Route6>,
    local: HashMap<MapData, [u8; 16], u32>,
    ports: DevMapHash<MapData>,
    verdicts: PerCpuArray<MapData, Counters>,
    route_stats: PerCpuArray<MapData, Counters>,
}

impl Fwd6Maps {
    /// Takes the maps out of a loaded object (tests, and the loader right after loading).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Fwd6Maps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Fwd6Maps::from_maps(
            take(ROUTES6_MAP)?,
            take(ROUTES6_LPM_MAP)?,
            take(LOCAL6_MAP)?,
            take(TX_PORTS_MAP)?,
            take(VERDICT_STATS_MAP)?,
            take(ROUTE_STATS_MAP)?,
        )
    }

    /// Opens the pinned maps of a running forwarder.
    pub fn open_pinned(pins: &PinDir) -> Result<Fwd6Maps> {
        let open = |name: &str| pins.open_map(name);
        Fwd6Maps::from_maps(
            open(ROUTES6_MAP)?,
            open(ROUTES6_LPM_MAP)?,
            open(LOCAL6_MAP)?,
            open(TX_PORTS_MAP)?,
            open(VERDICT_STATS_MAP)?,
            open(ROUTE_STATS_MAP)?,
        )
    }

    fn from_maps(
        routes64: Map,
        lpm: Map,
        local: Map,
        ports: Map,
        verdicts: Map,
        route_stats: Map,
    ) -> Result<Fwd6Maps> {
        Ok(Fwd6Maps {
            routes64: routes64.try_into().context(ROUTES6_MAP)?,
            lpm: lpm.try_into().context(ROUTES6_LPM_MAP)?,
            local: local.try_into().context(LOCAL6_MAP)?,
            ports: ports.try_into().context(TX_PORTS_MAP)?,
            verdicts: verdicts.try_into().context(VERDICT_STATS_MAP)?,
            route_stats: route_stats.try_into().context(ROUTE_STATS_MAP)?,
        })
    }

    /// What the maps hold now.
    pub fn read(&self) -> Result<Fwd6Table> {
        let mut table = Fwd6Table::default();
        for entry in self.routes64.iter() {
            let (prefix, route) = entry.context("reading ROUTES6")?;
            table.routes64.insert(prefix, route);
        }
        for entry in self.lpm.iter() {
            let (key, route) = entry.context("reading ROUTES6_LPM")?;
            table
                .lpm
                .insert((key.prefix_len() as u8, key.data()), route);
        }
        for key in self.local.keys() {
            table.local.insert(key.context("reading LOCAL6")?);
        }
        for key in self.ports.keys() {
            table.ports.insert(key.context("reading TX_PORTS")?);
        }
        Ok(table)
    }

    /// Makes the maps equal to `want`: adds what is missing, rewrites what differs, removes
    /// what is stale. Egress ports are added before the routes that use them and removed
    /// after, so the program never holds a route whose redirect would fail.
    pub fn sync(&mut self, want: &Fwd6Table) -> Result<SyncReport> {
        let have = self.read()?;
        let mut report = SyncReport::default();
        for port in want.ports.difference(&have.ports) {
            self.ports
                .insert(*port, *port, None, 0)
                .with_context(|| format!("cannot add ifindex {port} to TX_PORTS"))?;
            report.added += 1;
        }
        for (prefix, route) in &want.routes64 {
            match have.routes64.get(prefix) {
                Some(old) if old == route => continue,
                Some(_) => report.updated += 1,
                None => report.added += 1,
            }
            self.reset_route_stats(route.route_id, have.routes64.get(prefix))?;
            self.routes64
                .insert(prefix, route, 0)
                .with_context(|| format!("cannot write the route {}", show_prefix(prefix)))?;
        }
        for ((len, addr), route) in &want.lpm {
            match have.lpm.get(&(*len, *addr)) {
                Some(old) if old == route => continue,
                Some(_) => report.updated += 1,
                None => report.added += 1,
            }
            self.reset_route_stats(route.route_id, have.lpm.get(&(*len, *addr)))?;
            self.lpm
                .insert(&Key::new(u32::from(*len), *addr), route, 0)
                .with_context(|| {
                    format!("cannot write the route {}/{len}", Ipv6Addr::from(*addr))
                })?;
        }
        for addr in want.local.difference(&have.local) {
            self.local
                .insert(addr, 1, 0)
                .context("cannot write LOCAL6")?;
            report.added += 1;
        }
        for prefix in have
            .routes64
            .keys()
            .filter(|p| !want.routes64.contains_key(*p))
        {
            self.routes64
                .remove(prefix)
                .context("cannot remove from ROUTES6")?;
            report.removed += 1;
        }
        for (len, addr) in have.lpm.keys().filter(|k| !want.lpm.contains_key(*k)) {
            self.lpm
                .remove(&Key::new(u32::from(*len), *addr))
                .context("cannot remove from ROUTES6_LPM")?;
            report.removed += 1;
        }
        for addr in have.local.difference(&want.local) {
            self.local
                .remove(addr)
                .context("cannot remove from LOCAL6")?;
            report.removed += 1;
        }
        for port in have.ports.difference(&want.ports) {
            self.ports
                .remove(*port)
                .context("cannot remove from TX_PORTS")?;
            report.removed += 1;
        }
        Ok(report)
    }

    /// A route id handed to a different route starts counting from zero.
    fn reset_route_stats(&mut self, route_id: u32, old: Option<&Route6>) -> Result<()> {
        if old.is_some_and(|o| o.route_id == route_id) {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let zero = aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus])?;
        self.route_stats
            .set(route_id, zero, 0)
            .with_context(|| format!("cannot reset counters of route id {route_id}"))
    }

    /// Packets and bytes per verdict, summed over CPUs.
    pub fn verdict_counters(&self) -> Result<Vec<(Verdict, Counters)>> {
        Verdict::ALL
            .iter()
            .map(|v| Ok((*v, sum(&self.verdicts, *v as u32)?)))
            .collect()
    }

    /// Packets and bytes forwarded by the route with this id, summed over CPUs.
    pub fn route_counters(&self, route_id: u32) -> Result<Counters> {
        sum(&self.route_stats, route_id)
    }
}

fn sum(map: &PerCpuArray<MapData, Counters>, index: u32) -> Result<Counters> {
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading counter {index}"))?;
    Ok(values.iter().fold(Counters::default(), |s, c| s + *c))
}

/// A /64 key in the usual notation, e.g. `2a02:1802:5e:1abc::/64`.
pub fn show_prefix(prefix: &Prefix64) -> String {
    let mut octets = [0u8; 16];
    octets[..8].copy_from_slice(prefix);
    format!("{}/64", Ipv6Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix64_takes_the_first_eight_bytes() {
        let addr: Ipv6Addr = "2a02:1802:5e:1abc::1".parse().unwrap();
        assert_eq!(
            prefix64(addr),
            [0x2a, 0x02, 0x18, 0x02, 0x00, 0x5e, 0x1a, 0xbc]
        );
        assert_eq!(show_prefix(&prefix64(addr)), "2a02:1802:5e:1abc::/64");
    }
}
