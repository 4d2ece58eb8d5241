//! Reads an existing `wgkex.yaml` so an operator can switch brokers without rewriting the
//! configuration. Keys exitd understands are translated into a [`BrokerConfig`]; every key it
//! does not know, or knows but does not support, is reported (the broker still starts).
//!
//! wgkex learns concentrator endpoints over MQTT; standalone exitd has no MQTT, so a worker
//! entry may carry three extra keys: `endpoint`, `public_key`, `link_address`.

use super::config::{BrokerConfig, ConcentratorConfig, IpamBackend, NetboxConfig};
use anyhow::{Context, Result, bail};
use serde_yaml::{Mapping, Value};
use std::{net::SocketAddr, path::Path};

/// The translated configuration and what was not (fully) taken over.
pub struct Imported {
    pub config: BrokerConfig,
    pub findings: Vec<String>,
}

/// Reads and translates a wgkex.yaml file.
pub fn load(path: &Path) -> Result<Imported> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    import(&text).with_context(|| format!("in {}", path.display()))
}

struct Importer {
    config: BrokerConfig,
    findings: Vec<String>,
}

/// Translates wgkex.yaml text.
pub fn import(text: &str) -> Result<Imported> {
    let root: Value = serde_yaml::from_str(text).context("not valid YAML")?;
    let Value::Mapping(root) = root else {
        bail!("the top level must be a mapping");
    };
    let mut im = Importer {
        config: BrokerConfig::with_defaults(),
        findings: Vec::new(),
    };
    // wgkex has no embedded store of its own worth keeping; the JSON IPAM file is not imported.
    for (key, value) in &root {
        let key = key_name(key);
        match key.as_str() {
            "workers" => im.workers(value)?,
            "sticky_worker_tolerance" => im.config.sticky_worker_tolerance = number(value, &key)?,
            "broker_signing_key" => im.config.signing_key = Some(string(value, &key)?),
            "parker" => im.parker(value)?,
            "netbox" => im.netbox(value)?,
            "broker_listen" => im.listen(value)?,
            "domains" => im.config.domains = string_list(value, &key)?,
            "cleanup" => im.report(&key, "unsupported: exitd keeps node prefixes until removed"),
            "mqtt" => im.report(
                &key,
                "unsupported: exitd does not use MQTT (concentrators come from the worker \
                 entries or the cluster)",
            ),
            "domain_prefixes" | "externalName" | "logging_config" | "metrics" => {
                im.report(&key, "ignored: not used by the broker")
            }
            _ => im.report(&key, "unknown key"),
        }
    }
    im.config
        .validate()
        .context("the translated configuration is invalid")?;
    im.config.signer().context("broker_signing_key")?;
    Ok(Imported {
        config: im.config,
        findings: im.findings,
    })
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn mapping<'a>(value: &'a Value, what: &str) -> Result<&'a Mapping> {
    match value {
        Value::Mapping(m) => Ok(m),
        Value::Null => {
            static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
            Ok(EMPTY.get_or_init(Mapping::new))
        }
        _ => bail!("{what} must be a mapping"),
    }
}

fn string(value: &Value, what: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{what} must be a string"),
    }
}

fn number(value: &Value, what: &str) -> Result<f64> {
    value
        .as_f64()
        .with_context(|| format!("{what} must be a number"))
}

fn uint(value: &Value, what: &str) -> Result<u32> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .with_context(|| format!("{what} must be a non-negative integer"))
}

fn string_list(value: &Value, what: &str) -> Result<Vec<String>> {
    match value {
        Value::Sequence(items) => items.iter().map(|v| string(v, what)).collect(),
        _ => bail!("{what} must be a list"),
    }
}

impl Importer {
    fn report(&mut self, key: &str, why: &str) {
        self.findings.push(format!("{key}: {why}"));
    }

    fn workers(&mut self, value: &Value) -> Result<()> {
        for (name, spec) in mapping(value, "workers")? {
            let name = key_name(name);
            let mut c = ConcentratorConfig {
                name: name.clone(),
                id: None,
                weight: None,
                pop: String::new(),
                endpoint: None,
                public_key: None,
                link_address: None,
            };
            for (key, v) in mapping(spec, &name)? {
                let key = key_name(key);
                let path = format!("workers.{name}.{key}");
                match key.as_str() {
                    "id" => c.id = Some(uint(v, &path)?),
                    "weight" if v.is_null() => {}
                    "weight" => c.weight = Some(number(v, &path)?),
                    "pop" => c.pop = string(v, &path)?,
                    "endpoint" => c.endpoint = Some(string(v, &path)?),
                    "public_key" => c.public_key = Some(string(v, &path)?),
                    "link_address" => {
                        c.link_address = Some(
                            string(v, &path)?
                                .parse()
                                .with_context(|| format!("{path}: not an IPv6 address"))?,
                        )
                    }
                    _ => self.report(&path, "unknown key"),
                }
            }
            self.config.concentrators.push(c);
        }
        Ok(())
    }

    fn parker(&mut self, value: &Value) -> Result<()> {
        for (key, v) in mapping(value, "parker")? {
            let key = key_name(key);
            let path = format!("parker.{key}");
            match key.as_str() {
                "enabled" => {
                    self.config.parker = v
                        .as_bool()
                        .with_context(|| format!("{path} must be a boolean"))?
                }
                "464xlat" => {
                    if v.as_bool() != Some(true) {
                        self.report(&path, "unsupported: only 464XLAT mode exists (as in wgkex)");
                    }
                }
                "retry_interval" => self.config.retry_interval = uint(v, &path)?,
                "wg_keepalive" => self.config.wg_keepalive = uint(v, &path)?,
                "ipam" => match string(v, &path)?.as_str() {
                    "netbox" => self.config.ipam.backend = IpamBackend::Netbox,
                    "json" => {
                        self.config.ipam.backend = IpamBackend::Local;
                        self.report(&path, "json: replaced by exitd's embedded store; the JSON file is not imported");
                    }
                    other => bail!("{path}: unknown IPAM {other:?} (json or netbox)"),
                },
                "prefixes" => self.prefixes(v)?,
                _ => self.report(&path, "unknown key"),
            }
        }
        Ok(())
    }

    fn netbox_mut(&mut self) -> &mut NetboxConfig {
        self.config.ipam.netbox.get_or_insert_with(|| NetboxConfig {
            url: String::new(),
            api_key: None,
            api_key_file: None,
            filter: Default::default(),
            additional_data: Default::default(),
        })
    }

    fn prefixes(&mut self, value: &Value) -> Result<()> {
        for (family, spec) in mapping(value, "parker.prefixes")? {
            let family = key_name(family);
            for (key, v) in mapping(spec, &family)? {
                let key = key_name(key);
                let path = format!("parker.prefixes.{family}.{key}");
                match (family.as_str(), key.as_str()) {
                    ("ipv4", "clat_subnet") => {
                        self.config.clat_subnet = string(v, &path)?
                            .parse()
                            .with_context(|| format!("{path}: not an IPv4 prefix"))?
                    }
                    ("ipv6", "length") => {
                        if uint(v, &path)? != 63 {
                            self.report(&path, "unsupported: nodes always get a /63");
                        }
                    }
                    ("ipv6", "netbox_filter") => {
                        let filter = mapping(v, &path)?
                            .iter()
                            .map(|(k, v)| Ok((key_name(k), string(v, &path)?)))
                            .collect::<Result<_>>()?;
                        self.netbox_mut().filter = filter;
                    }
                    ("ipv6", "netbox_additional_data") => {
                        let json = serde_json::to_value(v).context("netbox_additional_data")?;
                        let serde_json::Value::Object(map) = json else {
                            bail!("{path} must be a mapping");
                        };
                        self.netbox_mut().additional_data = map;
                    }
                    ("ipv4", "netbox_filter" | "netbox_additional_data") => self.report(
                        &path,
                        "ignored: IPv4 is the shared clat_subnet, not allocated",
                    ),
                    _ => self.report(&path, "unknown key"),
                }
            }
        }
        Ok(())
    }

    fn netbox(&mut self, value: &Value) -> Result<()> {
        for (key, v) in mapping(value, "netbox")? {
            let key = key_name(key);
            let path = format!("netbox.{key}");
            match key.as_str() {
                "url" => self.netbox_mut().url = string(v, &path)?,
                "api_key" => self.netbox_mut().api_key = Some(string(v, &path)?),
                _ => self.report(&path, "unknown key"),
            }
        }
        Ok(())
    }

    fn listen(&mut self, value: &Value) -> Result<()> {
        let mut host = "::".to_string();
        let mut port = 5000u16;
        for (key, v) in mapping(value, "broker_listen")? {
            let key = key_name(key);
            match key.as_str() {
                "host" => host = string(v, "broker_listen.host")?,
                "port" => {
                    port = u16::try_from(uint(v, "broker_listen.port")?)
                        .context("broker_listen.port")?
                }
                _ => self.report(&format!("broker_listen.{key}"), "unknown key"),
            }
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host
            .parse()
            .with_context(|| format!("broker_listen.host {host:?} must be an IP address"))?;
        self.config.listen = SocketAddr::new(ip, port);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
domains: [ffmuc_parker]
workers:
  gw01.in.example.net:
    id: 1
    weight: 30
    pop: vie01
    endpoint: "gw01.example.net:40001"
    public_key: "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs="
    link_address: "fe80::1"
  gw02.in.example.net:
    weight: null
    colour: blue
sticky_worker_tolerance: 15
broker_signing_key: 8c57cfefc740ff937d92192fe3b9d240c31340642fe904e7f1b27af1e78d9ce7
broker_listen: {host: 127.0.0.1, port: 5001}
mqtt: {broker_url: mqtt.example.net}
parker:
  enabled: true
  464xlat: true
  retry_interval: 60
  wg_keepalive: 20
  ipam: netbox
  prefixes:
    ipv4: {clat_subnet: 10.80.96.0/22}
    ipv6:
      length: 63
      netbox_filter: {tag: parker}
      netbox_additional_data: {tenant: 3}
netbox: {url: "https://netbox.example.net", api_key: secret}
frobnicate: 1
"#;

    #[test]
    fn translates_known_keys_and_reports_the_rest() {
        let im = import(EXAMPLE).unwrap();
        let c = &im.config;
        assert_eq!(c.concentrators.len(), 2);
        assert_eq!(c.concentrators[0].pop, "vie01");
        assert_eq!(c.concentrators[1].weight, None);
        assert_eq!(c.sticky_worker_tolerance, 15.0);
        assert_eq!(c.listen, "127.0.0.1:5001".parse().unwrap());
        assert_eq!((c.retry_interval, c.wg_keepalive), (60, 20));
        assert_eq!(c.ipam.backend, IpamBackend::Netbox);
        let nb = c.ipam.netbox.as_ref().unwrap();
        assert_eq!(nb.filter.get("tag").map(String::as_str), Some("parker"));
        assert_eq!(
            nb.additional_data.get("tenant"),
            Some(&serde_json::json!(3))
        );
        assert!(c.signer().unwrap().is_some());
        let findings = im.findings.join("\n");
        for expected in [
            "workers.gw02.in.example.net.colour: unknown key",
            "mqtt: unsupported",
            "frobnicate: unknown key",
        ] {
            assert!(findings.contains(expected), "{findings}");
        }
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let err = import("sticky_worker_tolerance: lots\n").err().unwrap();
        assert!(
            format!("{err:#}").contains("sticky_worker_tolerance"),
            "{err:#}"
        );
        let err = import("broker_signing_key: 1234\n").err().unwrap();
        assert!(format!("{err:#}").contains("signing"), "{err:#}");
    }
}
