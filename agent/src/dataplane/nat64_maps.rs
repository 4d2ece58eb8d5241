//! The NAT64 translator's and the firewall's kernel maps: making them equal to a
//! `Nat64Table`, the nodes' `xlat_range6`s (XLAT6, kept by the concentrator), counters and
//! the live NAT64 connections (`exitd nat list`).

use super::{
    PinDir,
    nat4::{Activity, protocol_name, sync_map},
    nat64::Nat64Table,
};
use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use exitd_common::{
    Counters, Prefix64,
    nat4::{CT_NAT64, CT_OUT, CT4_MAP, CtEntry, CtKey, NAT4_CONFIG_MAP, Nat4Config},
    nat64::{
        CT6_MAP, Ct6Key, FW_ALLOW4_MAP, FW_ALLOW6_MAP, FW_DROP4, FW_DROP6, FW_LINKS_MAP,
        FW_PORTS_MAP, FW_STATS_MAP, FwPort, NAT64_CONFIG_MAP, NAT64_STATS_MAP, Nat64Config,
        Nat64Verdict, XLAT6_MAP, XlatSource,
    },
};
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4, SocketAddrV6},
};

/// Handles on the translator's and the firewall's maps.
pub struct Nat64Maps {
    config: Array<MapData, Nat64Config>,
    connections: HashMap<MapData, Ct6Key, CtEntry>,
    stats: PerCpuArray<MapData, Counters>,
    fw_ports: HashMap<MapData, FwPort, u32>,
    fw_links: HashMap<MapData, u32, u32>,
    allow4: LpmTrie<MapData, [u8; 4], u32>,
    allow6: LpmTrie<MapData, [u8; 16], u32>,
    fw_stats: PerCpuArray<MapData, Counters>,
}

impl Nat64Maps {
    /// Takes the maps out of a loaded object (tests).
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<Nat64Maps> {
        Nat64Maps::from(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        })
    }

    /// Opens the pinned maps of a gateway.
    pub fn open_pinned(pins: &PinDir) -> Result<Nat64Maps> {
        Nat64Maps::from(|name| pins.open_map(name))
    }

    fn from(mut open: impl FnMut(&str) -> Result<Map>) -> Result<Nat64Maps> {
        Ok(Nat64Maps {
            config: open(NAT64_CONFIG_MAP)?
                .try_into()
                .context(NAT64_CONFIG_MAP)?,
            connections: open(CT6_MAP)?.try_into().context(CT6_MAP)?,
            stats: open(NAT64_STATS_MAP)?.try_into().context(NAT64_STATS_MAP)?,
            fw_ports: open(FW_PORTS_MAP)?.try_into().context(FW_PORTS_MAP)?,
            fw_links: open(FW_LINKS_MAP)?.try_into().context(FW_LINKS_MAP)?,
            allow4: open(FW_ALLOW4_MAP)?.try_into().context(FW_ALLOW4_MAP)?,
            allow6: open(FW_ALLOW6_MAP)?.try_into().context(FW_ALLOW6_MAP)?,
            fw_stats: open(FW_STATS_MAP)?.try_into().context(FW_STATS_MAP)?,
        })
    }

    /// What the maps hold now (without connections and counters).
    pub fn read(&self) -> Result<Nat64Table> {
        let mut table = Nat64Table {
            config: self.config.get(&0, 0).context("reading NAT64_CONFIG")?,
            ..Nat64Table::default()
        };
        for key in self.fw_ports.keys() {
            table.fw_ports.insert(key.context("reading FW_PORTS")?);
        }
        for key in self.fw_links.keys() {
            table.fw_links.insert(key.context("reading FW_LINKS")?);
        }
        for key in self.allow4.keys() {
            let key = key.context("reading FW_ALLOW4")?;
            table.allow4.insert((key.prefix_len(), key.data()));
        }
        for key in self.allow6.keys() {
            let key = key.context("reading FW_ALLOW6")?;
            table.allow6.insert((key.prefix_len(), key.data()));
        }
        Ok(table)
    }

    /// Makes the maps equal to `want`; returns (added, updated, removed). Turning on, the
    /// configuration goes last (allow lists and ports first); turning off, first.
    pub fn sync(&mut self, want: &Nat64Table) -> Result<(usize, usize, usize)> {
        let have = self.read()?;
        let mut counts = (0, 0, 0);
        let config_changed = have.config != want.config;
        let turning_off = want.config.flags == 0;
        if config_changed && turning_off {
            self.write_config(want, &mut counts)?;
        }
        sync_allow(&mut self.allow4, &have.allow4, &want.allow4, &mut counts)
            .context(FW_ALLOW4_MAP)?;
        sync_allow(&mut self.allow6, &have.allow6, &want.allow6, &mut counts)
            .context(FW_ALLOW6_MAP)?;
        sync_map(
            &mut self.fw_links,
            &as_map(&have.fw_links),
            &as_map(&want.fw_links),
            &mut counts,
        )
        .context(FW_LINKS_MAP)?;
        sync_map(
            &mut self.fw_ports,
            &as_map(&have.fw_ports),
            &as_map(&want.fw_ports),
            &mut counts,
        )
        .context(FW_PORTS_MAP)?;
        if config_changed && !turning_off {
            self.write_config(want, &mut counts)?;
        }
        Ok(counts)
    }

    fn write_config(
        &mut self,
        want: &Nat64Table,
        counts: &mut (usize, usize, usize),
    ) -> Result<()> {
        self.config
            .set(0, want.config, 0)
            .context(NAT64_CONFIG_MAP)?;
        counts.1 += 1;
        Ok(())
    }

    /// Packets and bytes per NAT64 verdict, summed over CPUs.
    pub fn verdict_counters(&self) -> Result<Vec<(Nat64Verdict, Counters)>> {
        Nat64Verdict::ALL
            .iter()
            .map(|v| Ok((*v, sum(&self.stats, *v as u32).context(v.name())?)))
            .collect()
    }

    /// Firewall drops: (IPv4, IPv6).
    pub fn firewall_drops(&self) -> Result<(Counters, Counters)> {
        Ok((
            sum(&self.fw_stats, FW_DROP4).context("FW_STATS ipv4")?,
            sum(&self.fw_stats, FW_DROP6).context("FW_STATS ipv6")?,
        ))
    }

    /// Verdicts, connections and firewall drops, for metrics and `exitd nat stats`.
    pub fn counters(&self) -> Result<Nat64Counters> {
        Ok(Nat64Counters {
            verdicts: self.verdict_counters()?,
            connections: self.connection_count(),
            dropped: self.firewall_drops()?,
        })
    }

    /// Number of NAT64 connections (one CT6 entry each, expired ones until reclaimed).
    pub fn connection_count(&self) -> usize {
        self.connections.keys().count()
    }

    /// The NAT64 connections, newest activity first; `pins` has the IPv4 translator's CT4
    /// (the reply side) and configuration (the timeouts).
    pub fn connections(&self, pins: &PinDir) -> Result<Vec<Nat64Connection>> {
        let config = self.config.get(&0, 0).context("reading NAT64_CONFIG")?;
        let nat4: Array<MapData, Nat4Config> = pins.open_map(NAT4_CONFIG_MAP)?.try_into()?;
        let nat4 = nat4.get(&0, 0).context("reading NAT4_CONFIG")?;
        let replies: HashMap<MapData, CtKey, CtEntry> = pins.open_map(CT4_MAP)?.try_into()?;
        let now = super::nat4::monotonic_ns();
        let mut list = Vec::new();
        for entry in self.connections.iter() {
            let (key, out) = entry.context("reading CT6")?;
            let back = reply_key(&key, &out, &config).and_then(|k| replies.get(&k, 0).ok());
            let back = back.filter(|b| b.flags & CT_NAT64 != 0);
            list.push(Nat64Connection::of(
                &key,
                &out,
                back.as_ref(),
                &config,
                &nat4,
                now,
            ));
        }
        list.sort_by_key(|c| c.idle_ms);
        Ok(list)
    }
}

/// What the NAT64 translator and the firewall counted.
#[derive(Debug, Default)]
pub struct Nat64Counters {
    pub verdicts: Vec<(Nat64Verdict, Counters)>,
    /// CT6 entries (one per connection, expired ones until reclaimed).
    pub connections: usize,
    /// Firewall drops: IPv4, IPv6.
    pub dropped: (Counters, Counters),
}

/// The CT4 key of the replies of the NAT64 connection `key` (translated to `out.addr` and
/// `out.port`): its remote is the IPv4 address embedded in the IPv6 destination.
fn reply_key(key: &Ct6Key, out: &CtEntry, config: &Nat64Config) -> Option<CtKey> {
    let remote = config.extract(&key.dst)?;
    let outgoing = CtKey {
        proto: key.proto,
        dir: CT_OUT,
        pad: [0; 2],
        src: out.addr,
        dst: remote,
        sport: key.sport,
        dport: key.dport,
    };
    Some(outgoing.reply(out.addr, out.port))
}

fn sum(stats: &PerCpuArray<MapData, Counters>, slot: u32) -> Result<Counters> {
    let values = stats.get(&slot, 0)?;
    Ok(values.iter().fold(Counters::default(), |s, c| s + *c))
}

fn as_map<K: Copy + Ord>(keys: &BTreeSet<K>) -> BTreeMap<K, u32> {
    keys.iter().map(|k| (*k, 1)).collect()
}

/// Adds and removes entries of an allow list so that it equals `want`.
fn sync_allow<K: aya::Pod + Ord>(
    map: &mut LpmTrie<MapData, K, u32>,
    have: &BTreeSet<(u32, K)>,
    want: &BTreeSet<(u32, K)>,
    counts: &mut (usize, usize, usize),
) -> Result<()> {
    for (len, net) in want.difference(have) {
        map.insert(&Key::new(*len, *net), 1, 0)
            .context("cannot write an entry")?;
        counts.0 += 1;
    }
    for (len, net) in have.difference(want) {
        map.remove(&Key::new(*len, *net))
            .context("cannot remove an entry")?;
        counts.2 += 1;
    }
    Ok(())
}

/// XLAT6: the nodes' `xlat_range6`s, the only sources the translator accepts. The
/// concentrator keeps it as it adds and removes nodes.
pub struct Xlat6Map {
    map: HashMap<MapData, Prefix64, XlatSource>,
}

impl Xlat6Map {
    pub fn open_pinned(pins: &PinDir) -> Result<Xlat6Map> {
        Ok(Xlat6Map {
            map: pins.open_map(XLAT6_MAP)?.try_into().context(XLAT6_MAP)?,
        })
    }

    pub fn read(&self) -> Result<BTreeMap<Prefix64, XlatSource>> {
        self.map
            .iter()
            .map(|e| e.context("reading XLAT6"))
            .collect()
    }

    /// Makes XLAT6 equal to `want`; returns (added, updated, removed).
    pub fn sync(&mut self, want: &BTreeMap<Prefix64, XlatSource>) -> Result<(usize, usize, usize)> {
        let have = self.read()?;
        let mut counts = (0, 0, 0);
        sync_map(&mut self.map, &have, want, &mut counts).context(XLAT6_MAP)?;
        Ok(counts)
    }

    pub fn insert(&mut self, range: Prefix64, source: XlatSource) -> Result<()> {
        self.map
            .insert(range, source, 0)
            .context("cannot write XLAT6")
    }

    /// Removes `range`; one that is not there is fine.
    pub fn remove(&mut self, range: &Prefix64) -> Result<()> {
        match self.map.remove(range) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            other => other.context("cannot remove from XLAT6"),
        }
    }
}

/// One NAT64 connection as `exitd nat list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nat64Connection {
    pub protocol: &'static str,
    /// The node's side (an address of its `xlat_range6`).
    pub node: SocketAddrV6,
    /// What it is translated to.
    pub public: SocketAddrV4,
    /// The IPv4 destination (embedded in the node's destination address).
    pub remote: SocketAddrV4,
    /// TCP state (syn, established, closing); empty for others.
    pub state: &'static str,
    pub idle_ms: u64,
    pub live: bool,
}

impl Nat64Connection {
    fn of(
        key: &Ct6Key,
        out: &CtEntry,
        back: Option<&CtEntry>,
        config: &Nat64Config,
        nat4: &Nat4Config,
        now: u64,
    ) -> Nat64Connection {
        let activity = Activity::of(key.proto, out, back, nat4, now);
        let port = u16::from_be;
        let remote = config.extract(&key.dst).unwrap_or_default();
        Nat64Connection {
            protocol: protocol_name(key.proto),
            node: SocketAddrV6::new(key.src.into(), port(key.sport), 0, 0),
            public: SocketAddrV4::new(out.addr.into(), port(out.port)),
            remote: SocketAddrV4::new(Ipv4Addr::from(remote), port(key.dport)),
            state: activity.state,
            idle_ms: activity.idle_ms,
            live: activity.live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exitd_common::nat4::{CT_IN, TCP_ESTABLISHED, Timeout};
    use std::net::Ipv6Addr;

    /// A node's TCP connection to 192.0.2.7:443 through 64:ff9b::/96, translated to
    /// 185.69.166.123:40001.
    fn connection() -> (Ct6Key, CtEntry, Nat64Config) {
        let config = Nat64Config::new(exitd_common::nat64::WELL_KNOWN_PREFIX, 96).unwrap();
        let node: Ipv6Addr = "2001:db8:ed0:3::1".parse().unwrap();
        let key = Ct6Key {
            proto: 6,
            pad: [0; 3],
            src: node.octets(),
            dst: config.embed([192, 0, 2, 7]),
            sport: 50000u16.to_be(),
            dport: 443u16.to_be(),
        };
        let out = CtEntry {
            addr: [185, 69, 166, 123],
            port: 40001u16.to_be(),
            state: TCP_ESTABLISHED,
            last_seen: 1_000_000_000,
            ..CtEntry::default()
        };
        (key, out, config)
    }

    #[test]
    fn the_reply_key_is_the_ct4_entry_claiming_the_public_port() {
        let (key, out, config) = connection();
        let reply = reply_key(&key, &out, &config).unwrap();
        assert_eq!(reply.dir, CT_IN);
        assert_eq!(
            (reply.src, reply.dst),
            ([192, 0, 2, 7], [185, 69, 166, 123])
        );
        assert_eq!(
            (u16::from_be(reply.sport), u16::from_be(reply.dport)),
            (443, 40001)
        );
        let mut foreign = key;
        foreign.dst[0] = 0x20;
        assert_eq!(
            reply_key(&foreign, &out, &config),
            None,
            "not of the prefix"
        );
    }

    #[test]
    fn a_connection_shows_the_node_the_public_address_and_the_remote_ipv4() {
        let (key, out, config) = connection();
        let back = CtEntry {
            last_seen: 2_000_000_000,
            flags: CT_NAT64,
            ..CtEntry::default()
        };
        let mut nat4 = Nat4Config::default();
        nat4.timeouts[Timeout::TcpEstablished as usize] = 10;
        let c = Nat64Connection::of(&key, &out, Some(&back), &config, &nat4, 3_000_000_000);
        assert_eq!(c.protocol, "tcp");
        assert_eq!(c.node.to_string(), "[2001:db8:ed0:3::1]:50000");
        assert_eq!(c.public.to_string(), "185.69.166.123:40001");
        assert_eq!(c.remote.to_string(), "192.0.2.7:443");
        assert_eq!((c.state, c.idle_ms, c.live), ("established", 1000, true));
    }
}
