//! The Parker broker: hands Freifunk "Parker" nodes their signed configuration (a /63 from
//! the IPAM, one concentrator per PoP) and serves the legacy wgkex key-exchange endpoints,
//! wire-compatible with deployed nodes (see `reference/parker.md`).
//!
//! Layout: [`http`] (axum routes, limits), [`sign`] (Ed25519, signify), [`select`] (pure
//! concentrator choice), [`ipam`] (embedded store, NetBox, etcd), [`config`] (TOML section),
//! [`wgkex`] (reading an existing `wgkex.yaml`), [`cli`] (`exitd broker`, `exitd keygen`),
//! [`etcd`] (the key space shared with other brokers and the concentrators), [`discovery`]
//! (the broker's view of it) and [`concentrator`] (the worker role, `[concentrator]`).
//!
//! A standalone broker (`exitd keygen`, then `exitd broker --config exitd.toml`):
//!
//! ```toml
//! [parker]
//! listen = "[::]:8080"
//! signing_key_file = "/etc/exitd/broker.sec"   # or signing_key = "<64 hex | base64 signify>"
//! sticky_worker_tolerance = 10                 # percent
//! clat_subnet = "10.80.96.0/22"
//! rate_limit = { per_second = 5.0, burst = 20 } # per client address; 0 = off
//!
//! [parker.ipam]                                # backend = "local" (default), "netbox", "etcd"
//! path = "/var/lib/exitd/ipam"
//! parent = "2001:db8:ed0::/46"
//! # [parker.ipam.netbox]
//! # url = "https://netbox.example.net", api_key_file = "...", filter = { tag = "parker" }
//! # [parker.ipam.etcd]                         # default [parker.etcd], then [cluster]
//!
//! # [parker.etcd]                              # concentrators, brokers and nodes in etcd
//! # endpoints = ["http://127.0.0.1:2379"]      # default: the [cluster] endpoints
//!
//! [[parker.concentrators]]
//! name = "gw01.in.example.net"
//! id = 1
//! weight = 1
//! pop = "vie01"
//! endpoint = "gw01.example.net:40001"
//! public_key = "<WireGuard public key>"
//! link_address = "fe80::1"
//! ```
//!
//! Per-node answers (mtu cap, retry, keepalive, which PoPs in which order, a preferred
//! concentrator per PoP) come from the configuration registry ([`items`], `[registry]`,
//! `exitd config explain <key>`); the `[parker]` values above are their base. `SIGHUP`
//! re-reads the file and swaps the per-node settings whole, or keeps them and logs why.

pub mod cli;
pub mod concentrator;
pub mod config;
pub mod discovery;
pub mod etcd;
pub mod http;
pub mod ipam;
pub mod items;
pub mod json;
pub mod select;
pub mod sign;
pub mod wgkex;

pub use config::BrokerConfig;

use anyhow::{Context, Result};
use config::{IpamBackend, join_endpoint, split_endpoint};
use ipam::{Ipam, NodeRecord};
use ipnet::Ipv4Net;
use select::{Choice, Policy, WorkerMetric, WorkerSpec};
use sign::ResponseSigner;
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

/// `^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$`: the base64 of 32 bytes, as nodes send it.
pub fn is_wireguard_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 44
        && b[..42]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        && b"AEIMQUYcgkosw480".contains(&b[42])
        && b[43] == b'='
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How nodes reach a concentrator (what the concentrator publishes about itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerData {
    /// Host name or address without brackets.
    pub external_address: String,
    pub port: u16,
    pub public_key: String,
    pub link_address: Ipv6Addr,
}

/// A concentrator as the broker currently sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcentratorState {
    pub name: String,
    pub id: u32,
    pub pop: String,
    pub online: bool,
    /// The last reported count plus this broker's interpolation; None before any report.
    pub connected_peers: Option<i64>,
}

/// The broker at a glance (see [`http::Broker::summary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSummary {
    pub ipam_nodes: Option<usize>,
    pub concentrators: Vec<ConcentratorState>,
}

/// One concentrator in a node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub name: String,
    pub id: u32,
    pub data: WorkerData,
}

/// Run-time view of the concentrators: configured specs plus what they report. The cluster
/// feeds it from etcd; standalone mode fills it from the configuration.
pub struct Concentrators {
    policy: Policy,
    live_brokers: AtomicI64,
    state: Mutex<Reported>,
}

#[derive(Default)]
struct Reported {
    /// Configured (seed) and discovered concentrators.
    specs: Vec<WorkerSpec>,
    /// In first-seen order, which breaks selection ties.
    metrics: Vec<WorkerMetric>,
    data: HashMap<String, WorkerData>,
}

impl Concentrators {
    pub fn new(specs: Vec<WorkerSpec>, tolerance_percent: f64, live_brokers: u32) -> Self {
        Concentrators {
            policy: Policy {
                tolerance_percent,
                require_configured: true,
            },
            live_brokers: AtomicI64::new(i64::from(live_brokers.max(1))),
            state: Mutex::new(Reported {
                specs,
                ..Reported::default()
            }),
        }
    }

    fn reported(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn metric_mut<'a>(reported: &'a mut Reported, name: &str) -> &'a mut WorkerMetric {
        if let Some(i) = reported.metrics.iter().position(|m| m.name == name) {
            return &mut reported.metrics[i];
        }
        reported.metrics.push(WorkerMetric {
            name: name.to_string(),
            online: false,
            connected_peers: None,
        });
        let last = reported.metrics.len() - 1;
        &mut reported.metrics[last]
    }

    pub fn set_online(&self, name: &str, online: bool) {
        Self::metric_mut(&mut self.reported(), name).online = online;
    }

    /// A fresh peer count (replaces any interpolated estimate).
    pub fn set_connected_peers(&self, name: &str, peers: i64) {
        Self::metric_mut(&mut self.reported(), name).connected_peers = Some(peers);
    }

    pub fn set_data(&self, name: &str, data: WorkerData) {
        self.reported().data.insert(name.to_string(), data);
    }

    /// Adds a concentrator or replaces its id, weight and PoP (a configured one is
    /// overridden by what it publishes). Refused when another concentrator has that id: a
    /// node's tunnel is named after it.
    pub fn upsert_spec(&self, spec: WorkerSpec) -> Result<()> {
        let mut reported = self.reported();
        if let Some(other) = reported
            .specs
            .iter()
            .find(|s| s.id == spec.id && s.name != spec.name)
        {
            anyhow::bail!(
                "concentrator {} has id {}, which {} already uses",
                spec.name,
                spec.id,
                other.name
            );
        }
        match reported.specs.iter_mut().find(|s| s.name == spec.name) {
            Some(existing) => *existing = spec,
            None => reported.specs.push(spec),
        }
        Ok(())
    }

    /// Brokers answering for the network (the interpolation step), at least 1.
    pub fn set_live_brokers(&self, brokers: usize) {
        let brokers = i64::try_from(brokers).unwrap_or(i64::MAX).max(1);
        self.live_brokers.store(brokers, Ordering::Relaxed);
    }

    fn brokers(&self) -> i64 {
        self.live_brokers.load(Ordering::Relaxed)
    }

    /// Every known concentrator with its state (for status output and metrics).
    pub fn states(&self) -> Vec<ConcentratorState> {
        let reported = self.reported();
        reported
            .specs
            .iter()
            .map(|spec| {
                let metric = reported.metrics.iter().find(|m| m.name == spec.name);
                ConcentratorState {
                    name: spec.name.clone(),
                    id: spec.id,
                    pop: spec.pop.clone(),
                    online: metric.is_some_and(|m| m.online),
                    connected_peers: metric.and_then(|m| m.connected_peers),
                }
            })
            .collect()
    }

    /// Chooses the node's concentrators (one per PoP), updating the peer estimates.
    /// Empty when none is online.
    pub fn assign(&self, previous: &[String]) -> Vec<Assigned> {
        let mut reported = self.reported();
        let chosen = select::select(&reported.specs, &reported.metrics, previous, self.policy);
        select::interpolate(&mut reported.metrics, &chosen, previous, self.brokers());
        let mut assigned = self.with_data(&reported, &chosen);
        if assigned.is_empty() {
            assigned.extend(self.random_fallback(&reported));
        }
        assigned
    }

    /// Like [`Concentrators::assign`], restricted to the node's preferred PoPs in their
    /// order, taking a PoP's preferred concentrator while it is a candidate. When none of
    /// those PoPs has a concentrator online, the node gets the ordinary choice: a node is
    /// never left without a gateway by its preferences.
    pub fn assign_preferring(
        &self,
        previous: &[String],
        prefs: &[items::ParkerConcentrator],
    ) -> Vec<Assigned> {
        if prefs.is_empty() {
            return self.assign(previous);
        }
        let mut reported = self.reported();
        let chosen = select::select(&reported.specs, &reported.metrics, previous, self.policy);
        let mut picked: Vec<Choice> = Vec::with_capacity(prefs.len());
        for pref in prefs {
            if picked.iter().any(|c| c.pop == pref.pop) {
                continue;
            }
            let choice = self
                .preferred(&reported, pref)
                .or_else(|| chosen.iter().find(|c| c.pop == pref.pop).cloned());
            picked.extend(choice);
        }
        select::interpolate(&mut reported.metrics, &picked, previous, self.brokers());
        let assigned = self.with_data(&reported, &picked);
        drop(reported);
        if assigned.is_empty() {
            return self.assign(previous);
        }
        assigned
    }

    /// The PoP's preferred concentrator when it is online and reports peers.
    fn preferred(&self, reported: &Reported, pref: &items::ParkerConcentrator) -> Option<Choice> {
        if pref.prefer.is_empty() {
            return None;
        }
        let spec = reported
            .specs
            .iter()
            .find(|s| s.name == pref.prefer && s.pop == pref.pop)?;
        let peers = reported
            .metrics
            .iter()
            .find(|m| m.name == spec.name && m.online)?
            .connected_peers
            .filter(|p| *p >= 0)?;
        Some(Choice {
            name: spec.name.clone(),
            id: spec.id,
            pop: spec.pop.clone(),
            diff: 0,
            peers,
            target: peers,
        })
    }

    fn with_data(&self, reported: &Reported, chosen: &[Choice]) -> Vec<Assigned> {
        chosen
            .iter()
            .filter_map(|c| {
                let data = reported.data.get(&c.name)?;
                Some(Assigned {
                    name: c.name.clone(),
                    id: c.id,
                    data: data.clone(),
                })
            })
            .collect()
    }

    /// A random configured, online worker that has published its data.
    fn random_fallback(&self, reported: &Reported) -> Option<Assigned> {
        let pool: Vec<&WorkerSpec> =
            select::fallback_candidates(&reported.specs, &reported.metrics)
                .into_iter()
                .filter(|w| reported.data.contains_key(&w.name))
                .collect();
        if pool.is_empty() {
            return None;
        }
        let mut random = [0u8; 8];
        sign::fill_random(&mut random).ok()?;
        let spec = pool[(u64::from_le_bytes(random) % pool.len() as u64) as usize];
        Some(Assigned {
            name: spec.name.clone(),
            id: spec.id,
            data: reported.data.get(&spec.name)?.clone(),
        })
    }

    /// The single best concentrator over all PoPs (smallest diff), for the legacy v2
    /// endpoint; falls back like [`Concentrators::assign`].
    pub fn best_overall(&self) -> Option<Assigned> {
        let none: &[&str] = &[];
        let mut reported = self.reported();
        let chosen = select::select(&reported.specs, &reported.metrics, none, self.policy);
        let Some(best) = chosen.into_iter().min_by_key(|c| c.diff) else {
            return self.random_fallback(&reported);
        };
        let best = std::slice::from_ref(&best);
        select::interpolate(&mut reported.metrics, best, none, self.brokers());
        self.with_data(&reported, best).pop()
    }
}

/// Everything a `/config` response contains besides the signature.
pub struct ParkerResponse<'a> {
    pub nonce: &'a str,
    pub time: u64,
    pub id: &'a str,
    pub mtu: u32,
    pub concentrators: &'a [Assigned],
    pub concentrator_address4: Ipv4Addr,
    pub node: &'a NodeRecord,
    pub range4: Ipv4Net,
    pub wg_keepalive: u32,
    pub retry: u32,
}

impl ParkerResponse<'_> {
    /// The JSON line exactly as the reference broker writes it (without the `\n`).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(800);
        let mut obj = json::Object::begin(&mut out);
        obj.str("nonce", self.nonce)
            .int("time", self.time as i64)
            .str("id", self.id)
            .int("mtu", i64::from(self.mtu))
            .raw("concentrators", |o| {
                json::push_array(o, self.concentrators, |o, c| {
                    let mut item = json::Object::begin(o);
                    item.str("address4", &self.concentrator_address4.to_string())
                        .str("address6", &c.data.link_address.to_string())
                        .str(
                            "endpoint",
                            &join_endpoint(&c.data.external_address, c.data.port),
                        )
                        .str("pubkey", &c.data.public_key)
                        .int("id", i64::from(c.id));
                    item.end();
                })
            });
        let range6 = self.node.range6();
        let address6 = Ipv6Addr::from(u128::from(range6.network()) + 1);
        let address4 = Ipv4Addr::from(u32::from(self.range4.network()).wrapping_add(1));
        obj.str("range6", &range6.to_string())
            .str("address6", &address6.to_string())
            .str("xlat_range6", &self.node.xlat_range6().to_string())
            .str("range4", &self.range4.to_string())
            .str("address4", &address4.to_string())
            .int("wg_keepalive", i64::from(self.wg_keepalive))
            .int("retry", i64::from(self.retry));
        obj.end();
        out
    }

    /// The full body: JSON line, `\n`, signature over both (no trailing newline).
    pub fn signed_body(&self, signer: &ResponseSigner) -> String {
        let mut body = self.to_json();
        body.push('\n');
        let signature = signer.signature_line(body.as_bytes());
        body.push_str(&signature);
        body
    }
}

/// Builds the concentrator specs and, for standalone mode, reports the configured ones as
/// online with their data.
pub fn concentrators_from_config(config: &BrokerConfig, standalone: bool) -> Result<Concentrators> {
    let specs = config
        .concentrators
        .iter()
        .enumerate()
        .map(|(i, c)| WorkerSpec {
            name: c.name.clone(),
            id: c.id.unwrap_or(i as u32 + 1),
            weight: c.weight.unwrap_or(1.0),
            pop: c.pop.clone(),
        })
        .collect();
    let registry = Concentrators::new(specs, config.sticky_worker_tolerance, config.live_brokers);
    if standalone {
        for c in &config.concentrators {
            let (Some(endpoint), Some(public_key), Some(link_address)) =
                (&c.endpoint, &c.public_key, c.link_address)
            else {
                tracing::warn!(
                    name = c.name,
                    "concentrator lacks endpoint, public_key or link_address; standalone mode \
                     cannot offer it"
                );
                continue;
            };
            let (external_address, port) = split_endpoint(endpoint)?;
            registry.set_data(
                &c.name,
                WorkerData {
                    external_address,
                    port,
                    public_key: public_key.clone(),
                    link_address,
                },
            );
            registry.set_connected_peers(&c.name, 0);
            registry.set_online(&c.name, true);
        }
    }
    Ok(registry)
}

/// Opens the configured IPAM backend.
pub fn open_ipam(config: &BrokerConfig) -> Result<Arc<dyn Ipam>> {
    let created_by = format!("exitd {}", hostname());
    match config.ipam.backend {
        IpamBackend::Local => {
            let local =
                ipam::local::LocalIpam::open(&config.ipam.path, config.ipam.parent, &created_by)?;
            Ok(Arc::new(local))
        }
        IpamBackend::Netbox => {
            let nb = config
                .ipam
                .netbox
                .as_ref()
                .context("[parker.ipam.netbox] is missing")?;
            let api_key = match (&nb.api_key, &nb.api_key_file) {
                (Some(key), _) => key.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim()
                    .to_string(),
                (None, None) => anyhow::bail!("ipam.netbox needs api_key or api_key_file"),
            };
            let settings = ipam::netbox::NetboxSettings {
                url: nb.url.clone(),
                api_key,
                filter: nb
                    .filter
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                additional_data: nb.additional_data.clone(),
                created_by,
            };
            Ok(Arc::new(ipam::netbox::NetboxIpam::new(settings)?))
        }
        IpamBackend::Etcd => {
            let space = config
                .ipam
                .etcd
                .clone()
                .context("ipam.backend is etcd but no etcd is configured")?;
            let ipam = ipam::etcd::EtcdIpam::new(space, config.ipam.parent, &created_by)?;
            Ok(Arc::new(ipam))
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `exitd run`'s hook: starts the broker when the configuration has an enabled `[parker]`
/// section; it serves until the daemon's runtime ends. With `reload_from`, SIGHUP re-reads
/// that file and applies the new per-node settings (or keeps the running ones).
pub async fn start_for_daemon(
    config: &crate::config::Config,
    reload_from: Option<&std::path::Path>,
) -> Result<Option<Arc<Concentrators>>> {
    let Some(mut parker) = config.parker.clone().filter(|p| p.enabled) else {
        return Ok(None);
    };
    parker.inherit_cluster(config.cluster.as_ref());
    // Before the broker announces itself: a SIGHUP right after must not kill the daemon.
    let hup = reload_from
        .map(|_| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()))
        .transpose()?;
    let registry = config.registry.as_ref();
    let Some(broker) = start_in_daemon(&parker, registry, std::future::pending()).await? else {
        return Ok(None);
    };
    if let (Some(hup), Some(path)) = (hup, reload_from) {
        let reloader = cli::reload_on_sighup(hup, Arc::clone(&broker), path.to_path_buf(), |_| {});
        tokio::spawn(reloader);
    }
    Ok(Some(Arc::clone(&broker.concentrators)))
}

/// Starts the broker inside `exitd run` when the configuration enables it. The broker is
/// returned so that the cluster can feed its concentrators and reloads can reach it; the
/// server runs until `shutdown`.
pub async fn start_in_daemon(
    config: &BrokerConfig,
    registry: Option<&crate::registry::RegistryConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<Arc<http::Broker>>> {
    if !config.enabled {
        return Ok(None);
    }
    let broker = Arc::new(http::Broker::with_registry(config, registry, true)?);
    let server = http::bind(config.listen).await?;
    tracing::info!(addr = %server.local_addr()?, "Parker broker listening");
    let serving = Arc::clone(&broker);
    tokio::spawn(async move {
        if let Err(e) = http::serve(server, serving, shutdown).await {
            tracing::error!(error = %e, "Parker broker stopped");
        }
    });
    Ok(Some(broker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Concentrators {
        let spec = |name: &str, id| WorkerSpec {
            name: name.into(),
            id,
            weight: 1.0,
            pop: String::new(),
        };
        let registry = Concentrators::new(vec![spec("a", 1), spec("b", 2)], 10.0, 1);
        for (name, last) in [("a", 1), ("b", 2)] {
            let data = WorkerData {
                external_address: format!("{name}.example"),
                port: 1,
                public_key: "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs=".into(),
                link_address: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last),
            };
            registry.set_data(name, data);
        }
        registry
    }

    #[test]
    fn random_fallback_when_no_worker_reports_peers() {
        let registry = registry();
        assert!(
            registry.assign(&[]).is_empty(),
            "nothing online: no gateway"
        );
        registry.set_online("a", true);
        registry.set_online("b", true);
        registry.set_connected_peers("a", -1);
        registry.set_connected_peers("b", -1);
        let picked = registry.assign(&[]);
        assert_eq!(picked.len(), 1, "one random online worker");
        assert!(["a", "b"].contains(&picked[0].name.as_str()));
        registry.set_online("a", false);
        assert_eq!(registry.assign(&[])[0].name, "b", "only online workers");
    }

    #[test]
    fn legacy_best_overall_takes_the_smallest_diff() {
        let registry = registry();
        for (name, peers) in [("a", 10), ("b", 4)] {
            registry.set_online(name, true);
            registry.set_connected_peers(name, peers);
        }
        assert_eq!(
            registry.best_overall().map(|a| a.name),
            Some("b".to_string())
        );
    }

    #[test]
    fn preferences_choose_pops_in_order_and_the_preferred_concentrator() {
        let spec = |name: &str, id, pop: &str| WorkerSpec {
            name: name.into(),
            id,
            weight: 1.0,
            pop: pop.into(),
        };
        let specs = vec![
            spec("a", 1, "vie"),
            spec("b", 2, "vie"),
            spec("c", 3, "muc"),
        ];
        let registry = Concentrators::new(specs, 10.0, 1);
        for (name, peers) in [("a", 0), ("b", 50), ("c", 0)] {
            registry.set_data(
                name,
                WorkerData {
                    external_address: format!("{name}.example"),
                    port: 1,
                    public_key: "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs=".into(),
                    link_address: Ipv6Addr::LOCALHOST,
                },
            );
            registry.set_online(name, true);
            registry.set_connected_peers(name, peers);
        }
        let pref = |pop: &str, prefer: &str| items::ParkerConcentrator {
            pop: pop.into(),
            prefer: prefer.into(),
        };
        let names = |assigned: Vec<Assigned>| -> Vec<String> {
            assigned.into_iter().map(|a| a.name).collect()
        };
        assert_eq!(
            names(registry.assign_preferring(&[], &[pref("vie", ""), pref("muc", "")])),
            ["a", "c"],
            "preference order, the broker's choice inside each PoP"
        );
        assert_eq!(
            names(registry.assign_preferring(&[], &[pref("vie", "b")])),
            ["b"],
            "the preferred concentrator although it is fuller"
        );
        registry.set_online("b", false);
        assert_eq!(
            names(registry.assign_preferring(&[], &[pref("vie", "b")])),
            ["a"],
            "an offline preferred concentrator falls back to the PoP's choice"
        );
        registry.set_online("a", false);
        assert_eq!(
            names(registry.assign_preferring(&[], &[pref("vie", "b")])),
            ["c"],
            "nothing online in the preferred PoPs: the ordinary choice"
        );
    }

    #[test]
    fn wireguard_key_shape() {
        assert!(is_wireguard_key(
            "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E="
        ));
        assert!(!is_wireguard_key(
            "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5F="
        ));
        assert!(!is_wireguard_key(
            "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E"
        ));
        assert!(!is_wireguard_key(
            " Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E="
        ));
        assert!(!is_wireguard_key(
            "ü4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E="
        ));
    }
}
