//! The concentrator role (what a wgkex worker does), for `exitd run` with `[concentrator]`:
//! - publishes itself under a lease in etcd (`concentrators/<name>`: endpoint, public key,
//!   link address, id, PoP, weight and the connected-peer count), so brokers offer it while it
//!   lives and stop within a lease TTL after it dies;
//! - follows the nodes the brokers announce (`peers/<pubkey>`) and adds each as a WireGuard
//!   peer with its /63 as allowed IPs plus a route to that /63 on its interface;
//! - every `check_interval` counts peers with a handshake in the last 3 minutes (the
//!   `connected_peers` metric) and removes stale ones, route first, then peer: a peer whose
//!   last handshake (or announcement, if later) is older than `stale_timeout`, or that never
//!   shook hands within `initial_handshake_grace` of its announcement.
//!
//! ```toml
//! [concentrator]
//! id = 1                              # the node's tunnel is wg_c<id>; unique per network
//! endpoint = "gw01.example.net:40001" # what nodes connect to
//! pop = "vie01"
//! # name = "gw01.in.example.net"      # default: [cluster].node, else the host name
//! # weight = 1.0
//! # interface = "wg-parker"
//! # namespace = "..."                 # network namespace of the interface (default: exitd's)
//! # wireguard = "kernel"              # or "userspace" (boringtun-cli)
//! # private_key_file = "/var/lib/exitd/concentrator.key"  # created on first start
//! # listen_port = 40001               # default: the endpoint's port
//! # link_address = "fe80::1"          # address6 the nodes see
//! # stale_timeout = 300               # seconds
//! # initial_handshake_grace = 600
//! # check_interval = 10
//! # only_selected = false             # true: only nodes whose broker chose this concentrator
//! # [concentrator.etcd]               # default: the [cluster] endpoints
//! # endpoints = ["http://127.0.0.1:2379"]
//! ```

pub mod device;
mod xlat;

use super::{
    config::split_endpoint,
    etcd::{self, Announcement, ConcentratorReport, EtcdSpace, Update},
    ipam::NODE_PREFIX_LEN,
    is_wireguard_key, unix_now,
};
use crate::dataplane::PinDir;
use crate::wireguard::{BackendKind, PeerHandshake};
use anyhow::{Context, Result, ensure};
use device::{Device, DeviceSettings};
use ipnet::Ipv6Net;
use serde::Deserialize;
use std::{
    collections::HashMap,
    net::Ipv6Addr,
    path::PathBuf,
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use wireguard_control::Key;
use xlat::XlatKeeper;

/// A node's tunnel counts as connected while its last handshake is younger than this.
pub const CONNECTED_WINDOW: Duration = Duration::from_secs(180);

/// The `[concentrator]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcentratorSection {
    /// Unique name; default `[cluster].node`, else the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Tunnel id on the nodes (`wg_c<id>`), unique among the network's concentrators.
    pub id: u32,
    /// `host:port` or `[v6]:port` the nodes connect to.
    pub endpoint: String,
    #[serde(default)]
    pub pop: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default = "default_interface")]
    pub interface: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub wireguard: BackendKind,
    #[serde(default = "default_key_file")]
    pub private_key_file: PathBuf,
    /// Default: the endpoint's port.
    #[serde(default)]
    pub listen_port: Option<u16>,
    #[serde(default = "default_link_address")]
    pub link_address: Ipv6Addr,
    /// Where userspace WireGuard keeps its pid file and log.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_stale_timeout")]
    pub stale_timeout: u64,
    #[serde(default = "default_grace")]
    pub initial_handshake_grace: u64,
    #[serde(default = "default_check_interval")]
    pub check_interval: u64,
    #[serde(default)]
    pub only_selected: bool,
    #[serde(default)]
    pub etcd: EtcdSpace,
}

fn default_weight() -> f64 {
    1.0
}
fn default_interface() -> String {
    "wg-parker".into()
}
fn default_key_file() -> PathBuf {
    PathBuf::from("/var/lib/exitd/concentrator.key")
}
fn default_link_address() -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/exitd/concentrator")
}
fn default_stale_timeout() -> u64 {
    300
}
fn default_grace() -> u64 {
    600
}
fn default_check_interval() -> u64 {
    10
}

impl ConcentratorSection {
    /// Fills name and etcd settings from `[cluster]` and checks the values.
    pub fn resolve(&mut self, cluster: Option<&crate::cluster::ClusterConfig>) -> Result<()> {
        self.etcd.inherit(cluster);
        if self.name.is_none() {
            self.name = Some(match cluster {
                Some(c) => c.node.clone(),
                None => super::hostname(),
            });
        }
        self.validate()
    }

    fn validate(&self) -> Result<()> {
        self.etcd.validate("concentrator.etcd")?;
        let name = self.name();
        ensure!(
            !name.is_empty() && !name.contains('/'),
            "concentrator.name must be non-empty and without '/'"
        );
        split_endpoint(&self.endpoint).context("concentrator.endpoint")?;
        crate::iface::validate_name(&self.interface).context("concentrator.interface")?;
        ensure!(
            self.weight >= 0.0 && self.weight.is_finite(),
            "concentrator.weight must be >= 0"
        );
        ensure!(
            self.stale_timeout > 0 && self.initial_handshake_grace > 0 && self.check_interval > 0,
            "concentrator timeouts and check_interval must be positive"
        );
        Ok(())
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// The running role; dropping it stops the loops and revokes the lease (brokers stop
/// offering this concentrator at once). The WireGuard interface and its peers stay: nodes
/// keep their tunnels across a restart.
pub struct Concentrator {
    publish: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    report: Option<watch::Sender<Vec<u8>>>,
    lease_ttl: Duration,
}

impl Concentrator {
    /// Graceful stop: leaves etcd at once (the lease is revoked), so brokers stop offering
    /// this concentrator now rather than when the lease would run out.
    pub async fn stop(mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        // Dropping the sender makes the publisher revoke its lease and end.
        self.report = None;
        let publish = &mut self.publish;
        if tokio::time::timeout(self.lease_ttl, publish).await.is_err() {
            tracing::warn!("could not leave etcd; the concentrator's lease will run out");
        }
    }
}

impl Drop for Concentrator {
    fn drop(&mut self) {
        self.publish.abort();
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// `exitd run`'s graceful stop of the role.
pub async fn stop_for_daemon(concentrator: Option<Concentrator>) {
    if let Some(concentrator) = concentrator {
        concentrator.stop().await;
    }
}

/// `exitd run`'s hook: starts the role when `[concentrator]` is configured.
pub async fn start_for_daemon(config: &crate::config::Config) -> Result<Option<Concentrator>> {
    let Some(section) = &config.concentrator else {
        return Ok(None);
    };
    let mut section = section.clone();
    section.resolve(config.cluster.as_ref())?;
    let xlat_pins = crate::dataplane::nat64::concentrator_pins(config)?;
    start(section, xlat_pins).await.map(Some)
}

/// Brings the interface up, then publishes and follows etcd. With `xlat_pins` (the
/// gateway's pin directory, when NAT64 serves this interface) the nodes' `xlat_range6`s are
/// kept in its XLAT6 map.
pub async fn start(
    section: ConcentratorSection,
    xlat_pins: Option<PinDir>,
) -> Result<Concentrator> {
    let (external_address, endpoint_port) = split_endpoint(&section.endpoint)?;
    let private_key = crate::wireguard::load_or_create_key(&section.private_key_file)?;
    let public_key = private_key.get_public();
    let device = Device::start(DeviceSettings {
        interface: section.interface.clone(),
        namespace: section.namespace.clone(),
        backend: section.wireguard,
        state_dir: section.state_dir.clone(),
        private_key,
        listen_port: section.listen_port.unwrap_or(endpoint_port),
        link_address: section.link_address,
    })
    .await?;
    let report = ConcentratorReport {
        id: section.id,
        pop: section.pop.clone(),
        weight: section.weight,
        external_address,
        port: endpoint_port,
        public_key: public_key.to_base64(),
        link_address: section.link_address,
        connected_peers: -1,
    };
    let client = section.etcd.connect().await?;
    let (report_tx, report_rx) = watch::channel(serde_json::to_vec(&report)?);
    let key = format!("{}{}", section.etcd.concentrators(), section.name());
    let publish = tokio::spawn(etcd::publish_under_lease(
        client.clone(),
        section.etcd.clone(),
        key,
        report_rx,
    ));
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let follow = tokio::spawn(etcd::follow(
        client,
        section.etcd.clone(),
        section.etcd.peers(),
        move |update| {
            let _ = updates_tx.send(update);
        },
    ));
    tracing::info!(name = section.name(), interface = section.interface, public_key = %public_key.to_base64(), "concentrator running");
    let lease_ttl = section.etcd.ttl();
    let xlat = match xlat_pins {
        Some(pins) => Some(XlatKeeper::new(pins, device.ifindex().await?)),
        None => None,
    };
    let role = Role::new(section, device, report, report_tx.clone(), xlat).await?;
    let main = tokio::spawn(role.run(updates));
    Ok(Concentrator {
        publish,
        tasks: vec![follow, main],
        report: Some(report_tx),
        lease_ttl,
    })
}

/// A peer this concentrator installed (or found on its interface at start).
#[derive(Debug, Clone)]
struct Managed {
    key: Key,
    prefix: Ipv6Net,
    /// When it was added or last announced.
    since: Instant,
}

struct Role {
    section: ConcentratorSection,
    device: Device,
    report: ConcentratorReport,
    report_tx: watch::Sender<Vec<u8>>,
    peers: HashMap<String, Managed>,
    /// The NAT64 translator's source list, when NAT64 serves this interface.
    xlat: Option<XlatKeeper>,
}

impl Role {
    /// Adopts the peers already on the interface (a restart keeps the nodes' tunnels).
    async fn new(
        section: ConcentratorSection,
        device: Device,
        report: ConcentratorReport,
        report_tx: watch::Sender<Vec<u8>>,
        xlat: Option<XlatKeeper>,
    ) -> Result<Role> {
        let now = Instant::now();
        let peers = device
            .peers()
            .await?
            .into_iter()
            .filter_map(|p| {
                let prefix = p.allowed_ips.iter().find_map(|a| {
                    let std::net::IpAddr::V6(v6) = a.address else {
                        return None;
                    };
                    Ipv6Net::new(v6, a.cidr).ok()
                })?;
                let managed = Managed {
                    key: p.public_key.clone(),
                    prefix,
                    since: now,
                };
                Some((p.public_key.to_base64(), managed))
            })
            .collect();
        let mut role = Role {
            section,
            device,
            report,
            report_tx,
            peers,
            xlat,
        };
        role.reconcile_xlat();
        Ok(role)
    }

    /// XLAT6 holds exactly the ranges of the current peers.
    fn reconcile_xlat(&mut self) {
        if let Some(xlat) = &mut self.xlat {
            xlat.reconcile(self.peers.values().map(|p| &p.prefix));
        }
    }

    async fn run(mut self, mut updates: mpsc::UnboundedReceiver<Update>) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.section.check_interval));
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(update) => self.apply(update).await,
                    None => return,
                },
                _ = tick.tick() => self.check().await,
            }
        }
    }

    async fn apply(&mut self, update: Update) {
        match update {
            Update::Snapshot(entries) => {
                for (pubkey, value) in entries {
                    self.announced(&pubkey, &value).await;
                }
            }
            Update::Put(pubkey, value) => self.announced(&pubkey, &value).await,
            Update::Delete(pubkey) => {
                if let Some(peer) = self.peers.remove(&pubkey) {
                    self.remove(&pubkey, peer).await;
                }
            }
        }
    }

    /// A node announced by a broker: add it (or refresh it) when it is meant for us.
    async fn announced(&mut self, pubkey: &str, value: &[u8]) {
        let announcement = match parse_announcement(pubkey, value) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pubkey, error = %format!("{e:#}"), "ignoring node announcement");
                return;
            }
        };
        if !self.wanted(&announcement) {
            return;
        }
        let Ok(key) = Key::from_base64(pubkey) else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(pubkey) {
            if peer.prefix == announcement.prefix {
                peer.since = Instant::now();
                return;
            }
            // A changed prefix: the old route must go.
            let old = peer.clone();
            self.remove(pubkey, old).await;
        }
        match self.device.add_peer(key.clone(), announcement.prefix).await {
            Ok(()) => {
                tracing::info!(pubkey, prefix = %announcement.prefix, "added the node as a peer");
                if let Some(xlat) = &mut self.xlat {
                    xlat.add(&announcement.prefix);
                }
                let managed = Managed {
                    key,
                    prefix: announcement.prefix,
                    since: Instant::now(),
                };
                self.peers.insert(pubkey.to_string(), managed);
            }
            Err(e) => tracing::error!(pubkey, error = %format!("{e:#}"), "cannot add the node"),
        }
    }

    fn wanted(&self, announcement: &Announcement) -> bool {
        is_wanted(&self.section, announcement, unix_now())
    }

    async fn remove(&mut self, pubkey: &str, peer: Managed) {
        self.peers.remove(pubkey);
        // Translation stops first, then the route goes, then the peer.
        if let Some(xlat) = &mut self.xlat {
            xlat.remove(&peer.prefix);
        }
        if let Err(e) = self.device.remove_peer(peer.key, peer.prefix).await {
            tracing::error!(pubkey, error = %format!("{e:#}"), "cannot remove the node");
        }
    }

    /// Publishes the connected-peer count and removes stale peers.
    async fn check(&mut self) {
        let handshakes = match self.device.peers().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the WireGuard peers");
                return;
            }
        };
        let now = SystemTime::now();
        let connected = handshakes.iter().filter(|p| is_connected(p, now)).count();
        self.report.connected_peers = i64::try_from(connected).unwrap_or(i64::MAX);
        if let Ok(value) = serde_json::to_vec(&self.report) {
            self.report_tx.send_if_modified(|current| {
                let changed = *current != value;
                *current = value;
                changed
            });
        }
        let stale: Vec<(String, Managed)> = self
            .peers
            .iter()
            .filter(|(_, peer)| self.is_stale(peer, &handshakes, now))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (pubkey, peer) in stale {
            tracing::info!(pubkey, prefix = %peer.prefix, "removing a stale peer");
            self.remove(&pubkey, peer).await;
        }
        self.reconcile_xlat();
    }

    fn is_stale(&self, peer: &Managed, handshakes: &[PeerHandshake], now: SystemTime) -> bool {
        let since_announced = peer.since.elapsed();
        let handshake = handshakes
            .iter()
            .find(|h| h.public_key == peer.key)
            .and_then(|h| h.last_handshake)
            .map(|t| now.duration_since(t).unwrap_or_default());
        stale(
            handshake,
            since_announced,
            Duration::from_secs(self.section.stale_timeout),
            Duration::from_secs(self.section.initial_handshake_grace),
        )
    }
}

/// Meant for this concentrator (any node, or with `only_selected` those whose broker chose
/// it), and recent enough (unix seconds `now`) that the node may still be there.
fn is_wanted(section: &ConcentratorSection, announcement: &Announcement, now: u64) -> bool {
    let horizon = section.stale_timeout.max(section.initial_handshake_grace);
    let fresh = now.saturating_sub(announcement.announced) <= horizon;
    let ours = !section.only_selected || announcement.selected.iter().any(|s| s == section.name());
    fresh && ours
}

/// wgkex's rule, with a fresh announcement counting like a handshake: a peer that shook hands
/// is stale when both its handshake and its announcement are older than `stale_timeout`; one
/// that never did, when its announcement is older than `grace`.
fn stale(
    handshake_age: Option<Duration>,
    announced_age: Duration,
    stale_timeout: Duration,
    grace: Duration,
) -> bool {
    match handshake_age {
        Some(age) => age.min(announced_age) > stale_timeout,
        None => announced_age > grace,
    }
}

fn is_connected(peer: &PeerHandshake, now: SystemTime) -> bool {
    peer.last_handshake
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < CONNECTED_WINDOW)
}

/// A broker's announcement, checked like wgkex's worker checks `Range6`.
fn parse_announcement(pubkey: &str, value: &[u8]) -> Result<Announcement> {
    ensure!(is_wireguard_key(pubkey), "not a WireGuard key");
    let announcement: Announcement = serde_json::from_slice(value)?;
    ensure!(
        announcement.prefix.prefix_len() == NODE_PREFIX_LEN
            && announcement.prefix.trunc() == announcement.prefix,
        "prefix {} is not a /{NODE_PREFIX_LEN} network",
        announcement.prefix
    );
    Ok(announcement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_rules() {
        let s = Duration::from_secs;
        let (timeout, grace) = (s(300), s(600));
        assert!(!stale(None, s(599), timeout, grace), "within the grace");
        assert!(stale(None, s(601), timeout, grace), "never shook hands");
        assert!(
            !stale(Some(s(10)), s(4000), timeout, grace),
            "recent handshake"
        );
        assert!(stale(Some(s(301)), s(301), timeout, grace), "old handshake");
        assert!(
            !stale(Some(s(4000)), s(5), timeout, grace),
            "announced again: the node is back"
        );
    }

    #[test]
    fn wanted_announcements_are_fresh_and_with_only_selected_ours() {
        let text = "name = \"c1\"\nid = 1\nendpoint = \"gw:1\"\n";
        let mut section: ConcentratorSection = toml::from_str(text).unwrap();
        let announcement = |selected: &[&str], announced| Announcement {
            prefix: "2001:db8::/63".parse().unwrap(),
            selected: selected.iter().map(|s| s.to_string()).collect(),
            announced,
        };
        let now = 10_000;
        assert!(is_wanted(&section, &announcement(&[], now), now));
        assert!(is_wanted(&section, &announcement(&["c2"], now - 600), now));
        assert!(
            !is_wanted(&section, &announcement(&[], now - 601), now),
            "too old"
        );
        section.only_selected = true;
        assert!(!is_wanted(&section, &announcement(&["c2"], now), now));
        assert!(is_wanted(&section, &announcement(&["c2", "c1"], now), now));
    }

    #[test]
    fn announcements_need_a_63_and_a_key() {
        let key = "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs=";
        let good = br#"{"prefix":"2001:db8:0:2::/63","announced":1}"#;
        assert!(parse_announcement(key, good).is_ok());
        let wide = br#"{"prefix":"2001:db8::/62","announced":1}"#;
        assert!(parse_announcement(key, wide).is_err());
        let host = br#"{"prefix":"2001:db8:0:3::/63","announced":1}"#;
        assert!(parse_announcement(key, host).is_err(), "host bits set");
        assert!(parse_announcement("nope", good).is_err());
        assert!(parse_announcement(key, b"{").is_err());
    }

    #[test]
    fn the_packaged_example_documents_a_valid_concentrator() {
        let text = include_str!("../../../../packaging/exitd.toml");
        let config = crate::config::Config::parse(text, "packaging/exitd.toml").unwrap();
        let mut section = config.concentrator.expect("the example has [concentrator]");
        section.resolve(config.cluster.as_ref()).unwrap();
        assert_eq!((section.id, section.stale_timeout), (1, 300));
    }

    #[test]
    fn section_defaults_and_checks() {
        let text = "id = 3\nendpoint = \"gw.example:40001\"\n[etcd]\nendpoints = [\"http://e\"]\n";
        let mut section: ConcentratorSection = toml::from_str(text).unwrap();
        section.resolve(None).unwrap();
        assert_eq!(section.interface, "wg-parker");
        assert_eq!(section.link_address, default_link_address());
        assert!(!section.name().is_empty(), "the host name");
        let mut bad = section.clone();
        bad.endpoint = "gw.example".into();
        assert!(bad.resolve(None).is_err());
        let mut no_etcd: ConcentratorSection =
            toml::from_str("id = 3\nendpoint = \"gw:1\"\n").unwrap();
        assert!(format!("{:#}", no_etcd.resolve(None).unwrap_err()).contains("etcd"));
    }
}
