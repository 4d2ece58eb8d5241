//! The broker's configuration: the `[parker]` section of exitd's TOML file.

use super::{etcd::EtcdSpace, ipam::validate_parent, sign::ResponseSigner};
use anyhow::{Context, Result, bail, ensure};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Start the broker inside `exitd run`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Serve the Parker endpoints; when false `/config` answers 400 (legacy endpoints only).
    #[serde(default = "yes")]
    pub parker: bool,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `broker_signing_key`: 64 hex characters (raw seed) or base64 signify secret key.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// A file with the key in either format (e.g. the `.sec` from `exitd keygen`).
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Percent over target a node's previous concentrator may be before it is moved.
    #[serde(default = "default_tolerance")]
    pub sticky_worker_tolerance: f64,
    #[serde(default = "default_retry")]
    pub retry_interval: u32,
    #[serde(default = "default_keepalive")]
    pub wg_keepalive: u32,
    /// Upper bound of the tunnel MTU handed out (`mtu = min(v6mtu, max_mtu)`).
    #[serde(default = "default_max_mtu")]
    pub max_mtu: u32,
    /// Shared CLAT subnet (`range4`); every node gets its first host as `address4`.
    #[serde(default = "default_clat_subnet")]
    pub clat_subnet: Ipv4Net,
    /// The IPv4 address concentrators use inside the tunnels (`concentrators[].address4`).
    #[serde(default = "default_concentrator_address4")]
    pub concentrator_address4: Ipv4Addr,
    /// Brokers answering for the same network (interpolation step).
    #[serde(default = "default_live_brokers")]
    pub live_brokers: u32,
    /// Domains accepted by the legacy endpoints; empty accepts any.
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub ipam: IpamConfig,
    /// Concentrators (standalone mode takes them as online). With `[parker.etcd]` they are
    /// the seed: online until the first read of etcd, which then decides.
    #[serde(default)]
    pub concentrators: Vec<ConcentratorConfig>,
    /// Shared state in etcd (`[parker.etcd]`, may be empty to take the `[cluster]` endpoints):
    /// concentrators' liveness, data and peer counts, node announcements, live brokers.
    #[serde(default)]
    pub etcd: Option<EtcdSpace>,
    /// Seconds between two announcements of the same node to the concentrators (an
    /// announcement is also made whenever its prefix or selection changed).
    #[serde(default = "default_announce_interval")]
    pub announce_interval: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcentratorConfig {
    /// Host name, as concentrators report themselves.
    pub name: String,
    /// Tunnel id (`wg_c<id>` on the node); defaults to the 1-based position.
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub pop: String,
    /// `host:port` or `[v6]:port` nodes connect to.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The concentrator's WireGuard public key.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Its link-local address on the node tunnels (`address6`).
    #[serde(default)]
    pub link_address: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client address; 0 disables the limit.
    #[serde(default = "default_rate")]
    pub per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: default_rate(),
            burst: default_burst(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IpamBackend {
    #[default]
    Local,
    Netbox,
    /// Shared by several brokers through etcd transactions.
    Etcd,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    #[serde(default)]
    pub backend: IpamBackend,
    /// Directory of the embedded store.
    #[serde(default = "default_ipam_path")]
    pub path: PathBuf,
    /// Parent prefix the embedded store allocates /63s from.
    #[serde(default = "default_parent")]
    pub parent: Ipv6Net,
    #[serde(default)]
    pub netbox: Option<NetboxConfig>,
    /// The etcd backend's space (`[parker.ipam.etcd]`); default `[parker.etcd]`, then the
    /// `[cluster]` endpoints.
    #[serde(default)]
    pub etcd: Option<EtcdSpace>,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            backend: IpamBackend::Local,
            path: default_ipam_path(),
            parent: default_parent(),
            netbox: None,
            etcd: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetboxConfig {
    pub url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Query parameters selecting the one parent prefix (`netbox_filter`).
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
    /// Extra fields for created prefixes (`netbox_additional_data`).
    #[serde(default)]
    pub additional_data: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 0], 8080))
}
fn default_tolerance() -> f64 {
    10.0
}
pub(crate) fn default_retry() -> u32 {
    120
}
pub(crate) fn default_keepalive() -> u32 {
    25
}
pub(crate) fn default_max_mtu() -> u32 {
    1375
}
fn default_clat_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 80, 96, 0), 22).unwrap_or_default()
}
fn default_concentrator_address4() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1)
}
fn default_live_brokers() -> u32 {
    1
}
fn default_announce_interval() -> u64 {
    60
}
fn default_rate() -> f64 {
    5.0
}
fn default_burst() -> u32 {
    20
}
fn default_ipam_path() -> PathBuf {
    PathBuf::from("/var/lib/exitd/ipam")
}
fn default_parent() -> Ipv6Net {
    // The reference broker's JSON store default.
    Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0xed0, 0, 0, 0, 0, 0), 56).unwrap_or_default()
}

impl BrokerConfig {
    /// A configuration with every default, for tests and the wgkex importer.
    pub fn with_defaults() -> BrokerConfig {
        // An empty table only takes defaults, which cannot fail to deserialize.
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults deserialize"))
    }

    /// Fills the etcd settings left out from the `[cluster]` section (endpoints, key prefix).
    /// Call before [`BrokerConfig::validate`].
    pub fn inherit_cluster(&mut self, cluster: Option<&crate::cluster::ClusterConfig>) {
        if let Some(space) = self.etcd.as_mut() {
            space.inherit(cluster);
        }
        if self.ipam.backend == IpamBackend::Etcd && self.ipam.etcd.is_none() {
            let mut space = self.etcd.clone().unwrap_or_default();
            space.inherit(cluster);
            self.ipam.etcd = Some(space);
        }
        if let Some(space) = self.ipam.etcd.as_mut() {
            space.inherit(cluster);
        }
    }

    /// Checks what serde cannot: ids, keys, endpoints, ranges.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..=10_000.0).contains(&self.sticky_worker_tolerance),
            "sticky_worker_tolerance must be a percentage between 0 and 10000"
        );
        ensure!(self.retry_interval > 0, "retry_interval must be positive");
        ensure!(
            (1280..=65_535).contains(&self.max_mtu),
            "max_mtu must be between 1280 and 65535"
        );
        ensure!(
            self.rate_limit.per_second >= 0.0 && self.rate_limit.per_second.is_finite(),
            "rate_limit.per_second must be 0 (off) or positive"
        );
        validate_parent(self.ipam.parent).context("ipam.parent")?;
        if self.ipam.backend == IpamBackend::Netbox {
            let netbox = self
                .ipam
                .netbox
                .as_ref()
                .context("ipam.backend is netbox but [parker.ipam.netbox] is missing")?;
            ensure!(
                netbox.api_key.is_some() != netbox.api_key_file.is_some(),
                "ipam.netbox needs exactly one of api_key and api_key_file"
            );
        }
        if self.ipam.backend == IpamBackend::Etcd {
            let space = self.ipam.etcd.as_ref().context(
                "ipam.backend is etcd but no etcd is configured ([parker.ipam.etcd], \
                 [parker.etcd] or [cluster])",
            )?;
            space.validate("parker.ipam.etcd")?;
        }
        if let Some(space) = &self.etcd {
            space.validate("parker.etcd")?;
        }
        ensure!(
            !(self.signing_key.is_some() && self.signing_key_file.is_some()),
            "set signing_key or signing_key_file, not both"
        );
        self.validate_concentrators()
    }

    fn validate_concentrators(&self) -> Result<()> {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for (i, c) in self.concentrators.iter().enumerate() {
            let what = || format!("concentrator {:?}", c.name);
            ensure!(!c.name.is_empty(), "concentrator #{} has no name", i + 1);
            ensure!(names.insert(c.name.as_str()), "{} is listed twice", what());
            let id = c.id.unwrap_or(i as u32 + 1);
            ensure!(ids.insert(id), "{}: id {id} is used twice", what());
            if let Some(w) = c.weight {
                ensure!(w >= 0.0 && w.is_finite(), "{}: weight must be >= 0", what());
            }
            if let Some(key) = &c.public_key {
                ensure!(
                    super::is_wireguard_key(key),
                    "{}: public_key is not a WireGuard key",
                    what()
                );
            }
            if let Some(endpoint) = &c.endpoint {
                split_endpoint(endpoint).with_context(what)?;
            }
        }
        Ok(())
    }

    /// Loads the signing key; a broker without one cannot answer `/config`.
    pub fn signer(&self) -> Result<Option<ResponseSigner>> {
        if let Some(path) = &self.signing_key_file {
            return ResponseSigner::load(path).map(Some);
        }
        self.signing_key
            .as_deref()
            .map(|k| ResponseSigner::parse(k).context("parker.signing_key"))
            .transpose()
    }
}

/// Splits `host:port` / `[v6]:port` into the host (without brackets) and the port.
pub fn split_endpoint(endpoint: &str) -> Result<(String, u16)> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        bail!("endpoint {endpoint:?} must be host:port or [v6]:port");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("endpoint {endpoint:?}: bad port"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<Ipv6Addr>()
                .with_context(|| format!("endpoint {endpoint:?}: bad IPv6 address"))?;
            v6
        }
        None if host.contains(':') => bail!("endpoint {endpoint:?}: write IPv6 as [addr]:port"),
        None => host,
    };
    ensure!(!host.is_empty(), "endpoint {endpoint:?} has no host");
    Ok((host.to_string(), port))
}

/// Formats an endpoint the way the nodes expect it: `[v6]:port` or `host:port`.
pub fn join_endpoint(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            split_endpoint("[2001:db8::4]:40004").unwrap(),
            ("2001:db8::4".into(), 40004)
        );
        assert_eq!(
            split_endpoint("gw.example:1").unwrap(),
            ("gw.example".into(), 1)
        );
        assert!(split_endpoint("2001:db8::4:40004").is_err());
        assert!(split_endpoint("gw.example").is_err());
        assert!(split_endpoint("gw:99999").is_err());
        assert_eq!(join_endpoint("2001:db8::4", 5), "[2001:db8::4]:5");
        assert_eq!(join_endpoint("10.0.0.1", 5), "10.0.0.1:5");
    }

    #[test]
    fn parker_section_of_the_shared_file() {
        let text = "[parker]\nlisten = \"127.0.0.1:8081\"\nsticky_worker_tolerance = 15\n\
                    rate_limit = { per_second = 2.5, burst = 4 }\n[parker.ipam]\n\
                    parent = \"2001:db8:ed0::/46\"\n[[parker.concentrators]]\nname = \"gw01\"\n";
        let config = crate::config::Config::parse(text, "t").unwrap();
        let parker = config.parker.unwrap();
        assert_eq!(parker.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(
            parker.rate_limit,
            RateLimitConfig {
                per_second: 2.5,
                burst: 4
            }
        );
        assert_eq!(parker.ipam.backend, IpamBackend::Local);
        assert_eq!(parker.concentrators[0].name, "gw01");
        assert!(parker.validate().is_ok());
        let err = crate::config::Config::parse("[parker]\nlisten_on = 1\n", "t").unwrap_err();
        assert!(format!("{err:#}").contains("listen_on"), "{err:#}");
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let mut config = BrokerConfig::with_defaults();
        config.concentrators = toml::from_str::<BTreeMap<String, Vec<ConcentratorConfig>>>(
            "c = [{name = \"a\", id = 2}, {name = \"b\"}]",
        )
        .unwrap()
        .remove("c")
        .unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("id 2 is used twice"), "{err}");
    }
}
