//! The agent's configuration file (TOML). Each role has its own section; unknown keys are
//! errors so a typo never silently falls back to a default.

use crate::dataplane::XdpModeArg;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// The admin HTTP API (`[admin]`): metrics; localhost unless a token is set.
    #[serde(default)]
    pub admin: crate::api::AdminConfig,
    /// The exit node's network (`exitd plan`, the reconciler); absent: no network is managed.
    #[serde(default)]
    pub network: Option<crate::plan::NetworkConfig>,
    /// The Parker broker (`[parker]`); absent: no broker.
    #[serde(default)]
    pub parker: Option<crate::parker::BrokerConfig>,
    /// Configuration registry: default layers and rules (`[registry]`); absent: none.
    #[serde(default)]
    pub registry: Option<crate::registry::RegistryConfig>,
    /// Gateway failover through etcd (`[cluster]`); absent: a standalone node.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Parker concentrator role (`[concentrator]`); absent: none.
    #[serde(default)]
    pub concentrator: Option<crate::parker::concentrator::ConcentratorSection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Directory on the BPF filesystem for pinned maps and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Interfaces the XDP program is attached to at start-up.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpModeArg,
    /// Forward the network's IPv6 in XDP on the gateway (`[network]` must be set). Off: the
    /// kernel forwards everything.
    #[serde(default = "default_true")]
    pub forward: bool,
    /// Detach the programs when the daemon stops. Off by default: forwarding stays up across
    /// agent restarts and upgrades.
    #[serde(default)]
    pub detach_on_exit: bool,
    /// The eBPF IPv4 translator (`[dataplane.nat]`): port ranges, size, timeouts.
    #[serde(default)]
    pub nat: crate::plan::NatSettings,
    /// NAT64 for 464XLAT Parker nodes (`[dataplane.nat64]`); absent: off.
    #[serde(default)]
    pub nat64: Option<crate::dataplane::nat64::Nat64Section>,
    /// The gateway's own firewall (`[dataplane.firewall]`); absent: on with defaults
    /// when NAT64 is on, off otherwise.
    #[serde(default)]
    pub firewall: Option<crate::dataplane::nat64::FirewallSection>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            pin_dir: default_pin_dir(),
            interfaces: Vec::new(),
            xdp_mode: XdpModeArg::Auto,
            forward: true,
            detach_on_exit: false,
            nat: crate::plan::NatSettings::default(),
            nat64: None,
            firewall: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(exitd_common::PIN_ROOT)
}

impl Config {
    /// Parses a configuration from TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config =
            toml::from_str(text).with_context(|| format!("invalid configuration in {origin}"))?;
        config
            .validate()
            .with_context(|| format!("invalid configuration in {origin}"))?;
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<()> {
        self.admin.validate()?;
        self.dataplane.nat.validate()?;
        crate::dataplane::nat64::validate(self)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for name in &self.dataplane.interfaces {
            crate::iface::validate_name(name).context("dataplane.interfaces")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_example_configuration_is_valid() {
        let text = include_str!("../../packaging/exitd.toml");
        let config = Config::parse(text, "packaging/exitd.toml").unwrap();
        let network = config.network.expect("the example has a network");
        assert_eq!(network.tenants.len(), 1);
        assert!(config.parker.is_some());
        crate::plan::derive(&network).expect("the example network derives a plan");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("", "test").unwrap();
        assert_eq!(config.dataplane.pin_dir, PathBuf::from("/sys/fs/bpf/exitd"));
        assert!(config.dataplane.interfaces.is_empty());
        assert!(!config.dataplane.detach_on_exit);
    }

    #[test]
    fn dataplane_section_is_read() {
        let config = Config::parse(
            "[dataplane]\ninterfaces = [\"eth1\"]\nxdp_mode = \"generic\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(config.dataplane.interfaces, vec!["eth1".to_string()]);
        assert_eq!(config.dataplane.xdp_mode, XdpModeArg::Generic);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = Config::parse("[dataplane]\ninterface = [\"eth1\"]\n", "exitd.toml").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("exitd.toml") && text.contains("interface"),
            "{text}"
        );
    }

    #[test]
    fn nat_settings_are_read_and_checked() {
        let config = Config::parse(
            "[dataplane.nat]\nports = \"40000-40003\"\nudp = 2\n",
            "test",
        )
        .unwrap();
        assert_eq!(
            config.dataplane.nat.ports,
            crate::plan::PortRange(40000, 40003)
        );
        assert_eq!(config.dataplane.nat.udp, 2);
        assert_eq!(config.dataplane.nat.tcp_established, 7440, "defaults stay");
        let overlap = Config::parse("[dataplane.nat]\nports = \"60000-62000\"\n", "t");
        assert!(format!("{:#}", overlap.unwrap_err()).contains("overlap"));
        let backwards = Config::parse("[dataplane.nat]\nports = \"9-3\"\n", "t");
        assert!(format!("{:#}", backwards.unwrap_err()).contains("backwards"));
    }

    #[test]
    fn bad_interface_names_are_errors() {
        let err =
            Config::parse("[dataplane]\ninterfaces = [\"much-too-long-name\"]\n", "t").unwrap_err();
        assert!(format!("{err:#}").contains("at most 15"), "{err:#}");
    }
}
