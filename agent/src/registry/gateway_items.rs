//! The exit gateway's items, `gateway` and `dataplane.nat`. They describe settings of the
//! plan/data-plane modules; they live here (not in `plan`/`dataplane`) only because those
//! modules are being reworked in parallel: moving this file there is a one-line change in
//! [`super::standard`].

use super::{Field, FieldType, Item, Registry, SubjectKind};
use serde::{Deserialize, Serialize};

/// The resolved settings of the exit gateway named `gateway` (its namespace name; an
/// unlisted gateway gets the shared layers), defaults without a `[registry]`.
pub fn resolve(
    config: &crate::config::Config,
    gateway: &str,
) -> anyhow::Result<(Gateway, Vec<NatForward>)> {
    let Some(registry) = &config.registry else {
        return Ok((Gateway::default(), Vec::new()));
    };
    let resolver = super::Resolver::new(super::standard(), registry.clone())?;
    let listed = resolver.kind_of(gateway) == Some(SubjectKind::Gateway);
    let name = if listed { gateway } else { "" };
    let resolution = resolver.resolve(SubjectKind::Gateway, name, &Vec::new(), None)?;
    Ok((
        resolution.get::<Gateway>().unwrap_or_default(),
        resolution.list::<NatForward>(),
    ))
}

pub fn register(registry: &mut Registry) {
    registry.register::<Gateway>();
    registry.register::<NatForward>();
}

/// `gateway`: one exit node's tunnel settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// MTU of the ExitPoint tunnels.
    pub mtu: u32,
    /// WireGuard persistent keepalive towards remote resources, seconds (0: off).
    pub wg_keepalive: u32,
    /// Forward IPv6 in XDP instead of the kernel.
    pub xdp_forward: bool,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            mtu: crate::plan::settings::DEFAULT_WG_MTU,
            wg_keepalive: u32::from(crate::plan::settings::DEFAULT_WG_KEEPALIVE),
            xdp_forward: true,
        }
    }
}

impl Item for Gateway {
    const ID: &'static str = "gateway";
    const MULTIPLE: bool = false;
    const KINDS: &'static [SubjectKind] = &[SubjectKind::Gateway];
    fn fields() -> &'static [Field] {
        const FIELDS: &[Field] = &[
            Field::new("mtu", FieldType::Integer, "ExitPoint tunnel MTU").range(1280.0, 9000.0),
            Field::new("wg_keepalive", FieldType::Integer, "seconds, 0: off").range(0.0, 3600.0),
            Field::new("xdp_forward", FieldType::Bool, "forward IPv6 in XDP"),
        ];
        FIELDS
    }
}

/// `dataplane.nat` (multiple): a port forward on the gateway's public IPv4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatForward {
    pub protocol: String,
    pub port: u32,
    /// `10.x.y.z:port` inside a tenant network.
    pub to: String,
}

impl Default for NatForward {
    fn default() -> Self {
        NatForward {
            protocol: "tcp".into(),
            port: 1,
            to: String::new(),
        }
    }
}

impl Item for NatForward {
    const ID: &'static str = "dataplane.nat";
    const MULTIPLE: bool = true;
    const KINDS: &'static [SubjectKind] = &[SubjectKind::Gateway];
    fn fields() -> &'static [Field] {
        const FIELDS: &[Field] = &[
            Field::new("protocol", FieldType::String, "tcp or udp").one_of(&["tcp", "udp"]),
            Field::new("port", FieldType::Integer, "public port").range(1.0, 65535.0),
            Field::new("to", FieldType::String, "destination ipv4:port"),
        ];
        FIELDS
    }

    fn check(&self) -> Result<(), String> {
        self.to
            .parse::<std::net::SocketAddrV4>()
            .map(|_| ())
            .map_err(|_| format!("field to: {:?} is not ipv4:port", self.to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_match_structs() {
        super::super::assert_schema_matches::<Gateway>();
        let def = super::super::ItemDef::of::<NatForward>();
        assert_eq!(def.fields.len(), def.default_fields().len());
    }
}
