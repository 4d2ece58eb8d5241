//! The IPv4 translator's maps: what they should hold (`Nat4Table`, from the plan and the
//! gateway's links and neighbours), making the kernel's maps equal to it, and reading the
//! live connections back (`exitd nat list`).

use super::{PinDir, gateway::LinkFacts};
use crate::plan::{NatPlan, NatSettings, Plan, input::Protocol};
use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use exitd_common::{
    Counters, ROUTE_NEIGH_KNOWN,
    nat4::{
        CT_OUT, CT_PORT_FORWARD, CT4_MAP, CtEntry, CtKey, LOCAL4_MAP, NAT4_CONFIG_MAP,
        NAT4_ENABLED, NAT4_STATS_MAP, Nat4Config, Nat4Verdict, PORT_FWD4_MAP, PortFwdKey,
        PortFwdTarget, ROUTES4_MAP, Route4, TCP_CLOSING, TCP_ESTABLISHED, TIMEOUT_COUNT, Timeout,
    },
};
use ipnet::IpNet;
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

/// Every map of the translator, by name; all pinned like the forwarder's.
pub const NAT4_MAPS: [&str; 6] = [
    ROUTES4_MAP,
    LOCAL4_MAP,
    NAT4_CONFIG_MAP,
    CT4_MAP,
    PORT_FWD4_MAP,
    NAT4_STATS_MAP,
];

/// What the translator's maps (all but the connections) should contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nat4Table {
    pub config: Nat4Config,
    /// Tenant /24 network address → route.
    pub routes: BTreeMap<[u8; 4], Route4>,
    pub local: BTreeSet<[u8; 4]>,
    pub forwards: BTreeMap<PortFwdKey, PortFwdTarget>,
}

impl Nat4Table {
    /// Egress links the translator redirects to (they must be in TX_PORTS).
    pub fn ports(&self) -> impl Iterator<Item = u32> + '_ {
        let upstream = (self.config.flags & NAT4_ENABLED != 0).then_some(self.config.upstream);
        self.routes
            .values()
            .chain(upstream.iter())
            .map(|r| r.ifindex)
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// True when every next hop's MAC is known.
    pub fn all_resolved(&self) -> bool {
        let upstream_ok = self.config.flags & NAT4_ENABLED == 0
            || self.config.upstream.flags & ROUTE_NEIGH_KNOWN != 0;
        upstream_ok
            && self
                .routes
                .values()
                .all(|r| r.flags & ROUTE_NEIGH_KNOWN != 0)
    }
}

/// The translator's table for `plan`. Without a public IPv4 and an upstream next hop the
/// translator is off (IPv4 goes to the kernel); so it is when the plan says the kernel NATs.
pub fn table_for(plan: &Plan, facts: &LinkFacts) -> Result<Nat4Table> {
    let nat = &plan.dataplane.nat;
    let mut table = Nat4Table::default();
    let (Some(public), Some(upstream), true) = (nat.public_ipv4, nat.upstream_ipv4, nat.ebpf)
    else {
        return Ok(table);
    };
    let route_via = |link: &str, next_hop: Ipv4Addr, tenant: u32| -> Result<Route4> {
        let Some(fact) = facts.links.get(link) else {
            bail!(
                "link {link} of the plan does not exist in namespace {} (apply the plan first)",
                plan.dataplane.namespace
            );
        };
        let neighbour = facts.neighbours4.get(&(fact.ifindex, next_hop));
        Ok(Route4 {
            ifindex: fact.ifindex,
            tenant,
            dst_mac: neighbour.copied().unwrap_or_default(),
            src_mac: fact.mac,
            flags: if neighbour.is_some() {
                ROUTE_NEIGH_KNOWN
            } else {
                0
            },
        })
    };
    table.config = config_of(nat, public, route_via(&nat.out_link, upstream, 0)?);
    for s in &nat.snat {
        let route = route_via(&s.link, s.next_hop, s.tenant_id)?;
        table.routes.insert(s.source.network().octets(), route);
    }
    for link in &plan.gateway.links {
        for addr in &link.addresses {
            if let IpNet::V4(net) = addr {
                table.local.insert(net.addr().octets());
            }
        }
    }
    for f in &nat.port_forwards {
        table.forwards.insert(
            PortFwdKey {
                proto: protocol_number(f.protocol),
                pad: 0,
                port: f.public.port().to_be(),
            },
            PortFwdTarget {
                addr: f.target.ip().octets(),
                port: f.target.port().to_be(),
                pad: 0,
            },
        );
    }
    Ok(table)
}

fn config_of(nat: &NatPlan, public: Ipv4Addr, upstream: Route4) -> Nat4Config {
    translator_config(&nat.settings, public, upstream)
}

/// The translator's configuration entry for `settings`, translating to `public` and
/// sending to `upstream`.
pub fn translator_config(s: &NatSettings, public: Ipv4Addr, upstream: Route4) -> Nat4Config {
    let mut timeouts = [0u32; TIMEOUT_COUNT];
    timeouts[Timeout::TcpEstablished as usize] = s.tcp_established;
    timeouts[Timeout::TcpTransitory as usize] = s.tcp_transitory;
    timeouts[Timeout::Udp as usize] = s.udp;
    timeouts[Timeout::Icmp as usize] = s.icmp;
    Nat4Config {
        public: public.octets(),
        port_min: s.ports.0,
        port_max: s.ports.1,
        flags: NAT4_ENABLED,
        upstream,
        timeouts,
    }
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

fn protocol_name(number: u8) -> &'static str {
    match number {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

/// Handles on the translator's kernel maps.
pub struct Nat4Maps {
    routes: HashMap<MapData, [u8; 4], Route4>,
    local: HashMap<MapData, [u8; 4], u32>,
    config: Array<MapData, Nat4Config>,
    connections: HashMap<MapData, CtKey, CtEntry>,
    forwards: HashMap<MapData, PortFwdKey, PortFwdTarget>,
    stats: PerCpuArray<MapData, Counters>,
}

impl Nat4Maps {
    /// Takes the maps out of a loaded object (tests and benchmarks).
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<Nat4Maps> {
        Nat4Maps::from(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        })
    }

    /// Opens the pinned maps of a running translator.
    pub fn open_pinned(pins: &PinDir) -> Result<Nat4Maps> {
        Nat4Maps::from(|name| pins.open_map(name))
    }

    fn from(mut open: impl FnMut(&str) -> Result<Map>) -> Result<Nat4Maps> {
        Ok(Nat4Maps {
            routes: open(ROUTES4_MAP)?.try_into().context(ROUTES4_MAP)?,
            local: open(LOCAL4_MAP)?.try_into().context(LOCAL4_MAP)?,
            config: open(NAT4_CONFIG_MAP)?.try_into().context(NAT4_CONFIG_MAP)?,
            connections: open(CT4_MAP)?.try_into().context(CT4_MAP)?,
            forwards: open(PORT_FWD4_MAP)?.try_into().context(PORT_FWD4_MAP)?,
            stats: open(NAT4_STATS_MAP)?.try_into().context(NAT4_STATS_MAP)?,
        })
    }

    /// What the maps hold now (without the connections).
    pub fn read(&self) -> Result<Nat4Table> {
        let mut table = Nat4Table {
            config: self.config.get(&0, 0).context("reading NAT4_CONFIG")?,
            ..Nat4Table::default()
        };
        for entry in self.routes.iter() {
            let (net, route) = entry.context("reading ROUTES4")?;
            table.routes.insert(net, route);
        }
        for key in self.local.keys() {
            table.local.insert(key.context("reading LOCAL4")?);
        }
        for entry in self.forwards.iter() {
            let (key, target) = entry.context("reading PORT_FWD4")?;
            table.forwards.insert(key, target);
        }
        Ok(table)
    }

    /// Makes the maps equal to `want`; returns (added, updated, removed). The configuration
    /// is written last when turning on (routes first) and first when turning off.
    pub fn sync(&mut self, want: &Nat4Table) -> Result<(usize, usize, usize)> {
        let have = self.read()?;
        let mut counts = (0, 0, 0);
        let turning_off = want.config.flags & NAT4_ENABLED == 0;
        if turning_off && have.config != want.config {
            self.config.set(0, want.config, 0).context("NAT4_CONFIG")?;
            counts.1 += 1;
        }
        sync_map(&mut self.routes, &have.routes, &want.routes, &mut counts).context(ROUTES4_MAP)?;
        sync_map(
            &mut self.forwards,
            &have.forwards,
            &want.forwards,
            &mut counts,
        )
        .context(PORT_FWD4_MAP)?;
        let want_local: BTreeMap<[u8; 4], u32> = want.local.iter().map(|a| (*a, 1)).collect();
        let have_local: BTreeMap<[u8; 4], u32> = have.local.iter().map(|a| (*a, 1)).collect();
        sync_map(&mut self.local, &have_local, &want_local, &mut counts).context(LOCAL4_MAP)?;
        if !turning_off && have.config != want.config {
            self.config.set(0, want.config, 0).context("NAT4_CONFIG")?;
            counts.1 += 1;
        }
        Ok(counts)
    }

    /// Packets and bytes per translator verdict, summed over CPUs.
    pub fn verdict_counters(&self) -> Result<Vec<(Nat4Verdict, Counters)>> {
        Nat4Verdict::ALL
            .iter()
            .map(|v| {
                let values = self
                    .stats
                    .get(&(*v as u32), 0)
                    .with_context(|| format!("reading NAT4_STATS {}", v.name()))?;
                Ok((*v, values.iter().fold(Counters::default(), |s, c| s + *c)))
            })
            .collect()
    }

    /// The tracked connections, one per outgoing entry, newest activity first.
    pub fn connections(&self) -> Result<Vec<Connection>> {
        let now = monotonic_ns();
        let config = self.config.get(&0, 0).context("reading NAT4_CONFIG")?;
        let mut entries = BTreeMap::new();
        for entry in self.connections.iter() {
            let (key, value) = entry.context("reading CT4")?;
            entries.insert(key, value);
        }
        let mut list: Vec<Connection> = entries
            .iter()
            .filter(|(k, _)| k.dir == CT_OUT)
            .map(|(k, v)| Connection::of(k, v, &entries, &config, now))
            .collect();
        list.sort_by_key(|c| c.idle_ms);
        Ok(list)
    }

    /// Number of connection-tracking entries (two per connection).
    pub fn entry_count(&self) -> usize {
        self.connections.keys().count()
    }

    /// Connections and public ports in use, from one walk over the table (one syscall per
    /// entry: fine for a scrape at tens of thousands of connections, slow at a million).
    pub fn usage(&self) -> Result<Usage> {
        let config = self.config.get(&0, 0).context("reading NAT4_CONFIG")?;
        let mut connections = 0;
        let mut ports = BTreeSet::new();
        for entry in self.connections.iter() {
            let (key, value) = entry.context("reading CT4")?;
            if key.dir == CT_OUT {
                connections += 1;
                ports.insert((key.proto, value.port));
            }
        }
        let enabled = config.flags & NAT4_ENABLED != 0;
        Ok(Usage {
            connections,
            ports_in_use: ports.len() as u64,
            ports_total: if enabled {
                u64::from(config.port_max.saturating_sub(config.port_min)) + 1
            } else {
                0
            },
        })
    }

    /// Reads one connection-tracking entry (tests).
    pub fn entry(&self, key: &CtKey) -> Option<CtEntry> {
        self.connections.get(key, 0).ok()
    }

    /// Writes one connection-tracking entry (tests and benchmarks: a flow established
    /// without sending its first packet).
    pub fn insert_entry(&mut self, key: &CtKey, entry: &CtEntry) -> Result<()> {
        self.connections
            .insert(key, entry, 0)
            .context("cannot write CT4")
    }
}

/// Adds, rewrites and removes entries of one hash map so that it equals `want`.
fn sync_map<K, V>(
    map: &mut HashMap<MapData, K, V>,
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    counts: &mut (usize, usize, usize),
) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    for (key, value) in want {
        match have.get(key) {
            Some(old) if old == value => continue,
            Some(_) => counts.1 += 1,
            None => counts.0 += 1,
        }
        map.insert(key, value, 0).context("cannot write an entry")?;
    }
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        map.remove(key).context("cannot remove an entry")?;
        counts.2 += 1;
    }
    Ok(())
}

/// What the translator holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub connections: u64,
    /// Distinct (protocol, public port) pairs.
    pub ports_in_use: u64,
    pub ports_total: u64,
}

/// One translated connection as `exitd nat list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Connection {
    pub protocol: &'static str,
    /// The tenant's side.
    pub inside: SocketAddrV4,
    /// What the tenant's address and port become.
    pub public: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// "port-forward" or "outgoing".
    pub origin: &'static str,
    /// TCP state (syn, established, closing); empty for others.
    pub state: &'static str,
    /// Milliseconds since the last packet in either direction.
    pub idle_ms: u64,
    /// False once the timeout passed (the entries are reclaimed on the next packet or by
    /// the LRU when the map is full).
    pub live: bool,
}

impl Connection {
    fn of(
        key: &CtKey,
        out: &CtEntry,
        all: &BTreeMap<CtKey, CtEntry>,
        config: &Nat4Config,
        now: u64,
    ) -> Connection {
        let back = all.get(&key.reply(out.addr, out.port));
        let last = back.map_or(out.last_seen, |b| b.last_seen.max(out.last_seen));
        let idle_ns = now.saturating_sub(last);
        let tcp_state = out.state.max(back.map_or(0, |b| b.state));
        let state = match (key.proto, tcp_state) {
            (6, TCP_ESTABLISHED) => "established",
            (6, TCP_CLOSING) => "closing",
            (6, _) => "syn",
            _ => "",
        };
        let port = |p: u16| u16::from_be(p);
        Connection {
            protocol: protocol_name(key.proto),
            inside: SocketAddrV4::new(key.src.into(), port(key.sport)),
            public: SocketAddrV4::new(out.addr.into(), port(out.port)),
            remote: SocketAddrV4::new(key.dst.into(), port(key.dport)),
            origin: if out.flags & CT_PORT_FORWARD != 0 {
                "port-forward"
            } else {
                "outgoing"
            },
            state,
            idle_ms: idle_ns / 1_000_000,
            live: idle_ns <= config.timeout_ns(key.proto, tcp_state),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock bpf_ktime_get_ns reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::gateway::LinkFact,
        plan::{NetworkConfig, derive, input::PortForwardConfig},
    };
    use exitd_common::nat4::CT_IN;

    fn plan() -> Plan {
        let resources: Vec<ipnet::Ipv6Net> = ["2a02:1802:5e:1abc::/64", "2a02:1802:5e:1123::/64"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let mut config =
            NetworkConfig::quick("2a02:1802:5e::/48".parse().unwrap(), 1, 1, &resources);
        config.gateway_ipv4 = Some("185.69.166.123/24".parse().unwrap());
        config.upstream_ipv4 = Some("185.69.166.1".parse().unwrap());
        config.tenants[0].port_forwards.push(PortForwardConfig {
            protocol: Protocol::Tcp,
            port: 8443,
            to: "10.26.188.2:443".parse().unwrap(),
        });
        derive(&config).unwrap()
    }

    fn facts(plan: &Plan) -> LinkFacts {
        let mut facts = LinkFacts::default();
        for (i, link) in plan.gateway.links.iter().enumerate() {
            let ifindex = i as u32 + 2;
            facts.links.insert(
                link.name.clone(),
                LinkFact {
                    ifindex,
                    mac: [2, 0, 0, 0, 0, ifindex as u8],
                },
            );
        }
        let up = facts.links[&plan.dataplane.nat.out_link].ifindex;
        facts
            .neighbours4
            .insert((up, "185.69.166.1".parse().unwrap()), [2, 0xee, 0, 0, 0, 1]);
        facts
    }

    #[test]
    fn the_seed_gateway_translates_both_tenants_to_its_public_address() {
        let plan = plan();
        let table = table_for(&plan, &facts(&plan)).unwrap();
        assert_eq!(table.config.public, [185, 69, 166, 123]);
        assert_eq!(
            (table.config.port_min, table.config.port_max),
            (1024, 60999)
        );
        assert_eq!(table.config.flags, NAT4_ENABLED);
        assert_eq!(table.config.upstream.flags, ROUTE_NEIGH_KNOWN);
        assert_eq!(table.config.upstream.dst_mac, [2, 0xee, 0, 0, 0, 1]);
        let tenant_a = table.routes[&[10, 26, 188, 0]];
        let tenant_b = table.routes[&[10, 17, 35, 0]];
        assert_ne!(tenant_a.tenant, tenant_b.tenant, "two tenants, two ids");
        assert_ne!(tenant_a.ifindex, tenant_b.ifindex);
        assert_eq!(tenant_a.flags, 0, "the ExitPoint's MAC is not known yet");
        assert!(!table.all_resolved());
        assert!(table.local.contains(&[185, 69, 166, 123]));
        let forward = table.forwards[&PortFwdKey {
            proto: 6,
            pad: 0,
            port: 8443u16.to_be(),
        }];
        assert_eq!(forward.addr, [10, 26, 188, 2]);
        assert_eq!(u16::from_be(forward.port), 443);
    }

    #[test]
    fn without_the_ebpf_translator_the_table_is_off() {
        let mut plan = plan();
        plan.dataplane.nat.ebpf = false;
        let table = table_for(&plan, &facts(&plan)).unwrap();
        assert_eq!(table, Nat4Table::default());
        assert_eq!(table.ports().count(), 0);
    }

    #[test]
    fn a_connection_pairs_both_directions_and_reports_its_idle_time() {
        let out_key = CtKey {
            proto: 17,
            dir: CT_OUT,
            pad: [0; 2],
            src: [10, 26, 188, 2],
            dst: [192, 0, 2, 7],
            sport: 5353u16.to_be(),
            dport: 53u16.to_be(),
        };
        let out = CtEntry {
            addr: [185, 69, 166, 123],
            port: 5353u16.to_be(),
            last_seen: 1_000_000_000,
            ..CtEntry::default()
        };
        let reply = CtKey {
            dir: CT_IN,
            src: out_key.dst,
            dst: out.addr,
            sport: out_key.dport,
            dport: out.port,
            ..out_key
        };
        let back = CtEntry {
            addr: out_key.src,
            port: out_key.sport,
            last_seen: 3_000_000_000,
            ..CtEntry::default()
        };
        let all = BTreeMap::from([(out_key, out), (reply, back)]);
        let mut config = Nat4Config::default();
        config.timeouts[Timeout::Udp as usize] = 2;
        let c = Connection::of(&out_key, &out, &all, &config, 4_000_000_000);
        assert_eq!(c.protocol, "udp");
        assert_eq!(c.inside.to_string(), "10.26.188.2:5353");
        assert_eq!(c.public.to_string(), "185.69.166.123:5353");
        assert_eq!(c.remote.to_string(), "192.0.2.7:53");
        assert_eq!(c.idle_ms, 1000, "the reply was the last packet");
        assert!(c.live);
        let later = Connection::of(&out_key, &out, &all, &config, 6_000_000_000);
        assert!(!later.live);
    }
}
