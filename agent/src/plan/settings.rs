//! The exit gateway's settings from the configuration registry (items `gateway` and
//! `dataplane.nat`) applied to a derived plan. Derivation itself stays a pure function of
//! `[network]`; these settings refine what it derived.

use super::{Plan, PortForwardEntry, input::Protocol};
use crate::registry::gateway_items::{Gateway, NatForward};
use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Tunnel MTU when nothing else is set (WireGuard's usual 1420 on a 1500-byte underlay).
pub const DEFAULT_WG_MTU: u32 = 1420;
/// WireGuard persistent keepalive when nothing else is set, seconds.
pub const DEFAULT_WG_KEEPALIVE: u16 = 25;

/// Applies the gateway's resolved settings: tunnel MTU and keepalive of every ExitPoint,
/// XDP forwarding on or off, and extra port forwards on the gateway's public IPv4.
pub fn apply(mut plan: Plan, gateway: &Gateway, nat: &[NatForward]) -> Result<Plan> {
    let keepalive = u16::try_from(gateway.wg_keepalive).with_context(|| {
        format!(
            "gateway.wg_keepalive {} is out of range",
            gateway.wg_keepalive
        )
    })?;
    for ep in &mut plan.exitpoints {
        ep.wireguard.mtu = gateway.mtu;
        ep.wireguard.keepalive = keepalive;
    }
    plan.dataplane.xdp_forward = gateway.xdp_forward;
    for (i, forward) in nat.iter().enumerate() {
        let entry = port_forward(&plan, forward).with_context(|| format!("dataplane.nat[{i}]"))?;
        let taken = plan
            .dataplane
            .nat
            .port_forwards
            .iter()
            .any(|f| f.protocol == entry.protocol && f.public == entry.public);
        if taken {
            bail!(
                "dataplane.nat[{i}]: {} {} is forwarded already",
                entry.protocol,
                entry.public
            );
        }
        plan.dataplane.nat.port_forwards.push(entry);
    }
    Ok(plan)
}

fn port_forward(plan: &Plan, forward: &NatForward) -> Result<PortForwardEntry> {
    let Some(public) = plan.dataplane.nat.public_ipv4 else {
        bail!("a port forward needs the gateway's public IPv4 (network.gateway_ipv4)");
    };
    let protocol = match forward.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => bail!("protocol {other:?} is neither tcp nor udp"),
    };
    let port = u16::try_from(forward.port)
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("port {} is not a port", forward.port))?;
    let target: SocketAddrV4 = forward
        .to
        .parse()
        .with_context(|| format!("to = {:?} is not ipv4:port", forward.to))?;
    let tenant = tenant_of(plan, *target.ip())
        .with_context(|| format!("{target} is in no tenant network of this exit node"))?;
    Ok(PortForwardEntry {
        tenant,
        protocol,
        public: SocketAddrV4::new(public, port),
        target,
    })
}

/// The tenant whose IPv4 range (a resource's 10.n0.n1.0/24) holds `addr`.
fn tenant_of(plan: &Plan, addr: Ipv4Addr) -> Option<String> {
    plan.dataplane
        .nat
        .snat
        .iter()
        .find(|s| s.source.contains(&addr))
        .map(|s| s.tenant.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetworkConfig, derive};

    fn plan() -> Plan {
        let resources = ["2a02:1802:5e:1abc::/64".parse().unwrap()];
        let mut config =
            NetworkConfig::quick("2a02:1802:5e::/48".parse().unwrap(), 1, 1, &resources);
        config.gateway_ipv4 = Some("185.69.166.123/24".parse().unwrap());
        derive(&config).unwrap()
    }

    #[test]
    fn defaults_change_nothing() {
        let before = plan();
        let after = apply(before.clone(), &Gateway::default(), &[]).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn settings_reach_the_tunnels_the_forwarder_and_the_nat() {
        let gateway = Gateway {
            mtu: 1380,
            wg_keepalive: 0,
            xdp_forward: false,
        };
        let nat = [NatForward {
            protocol: "udp".into(),
            port: 51820,
            to: "10.26.188.2:51820".into(),
        }];
        let plan = apply(plan(), &gateway, &nat).unwrap();
        assert_eq!(plan.exitpoints[0].wireguard.mtu, 1380);
        assert_eq!(plan.exitpoints[0].wireguard.keepalive, 0);
        assert!(!plan.dataplane.xdp_forward);
        let forward = plan.dataplane.nat.port_forwards.last().unwrap();
        assert_eq!(forward.public.to_string(), "185.69.166.123:51820");
        assert_eq!(forward.tenant, plan.exitpoints[0].tenant);
        let rules = crate::netlink::nat::ruleset(&plan.dataplane.nat).expect("NAT rules");
        assert!(
            rules.contains("51820") && rules.contains("10.26.188.2"),
            "{rules}"
        );
    }

    #[test]
    fn a_forward_outside_every_tenant_is_refused_with_its_index() {
        let nat = [NatForward {
            protocol: "tcp".into(),
            port: 80,
            to: "10.99.0.2:80".into(),
        }];
        let err = format!(
            "{:#}",
            apply(plan(), &Gateway::default(), &nat).unwrap_err()
        );
        assert!(
            err.contains("dataplane.nat[0]") && err.contains("no tenant"),
            "{err}"
        );
    }
}
