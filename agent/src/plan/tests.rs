//! The plan against the seed's drawing, the validation rules, and properties.

use super::{input::*, render, validate::*, *};
use ipnet::Ipv6Net;
use proptest::prelude::*;
use std::collections::HashSet;

const ALLOC: &str = "2a02:1802:5e::/48";
/// A valid WireGuard public key (32 zero bytes would do too; this one is a real key shape).
const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn p(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn seed_example() -> NetworkConfig {
    let mut config = NetworkConfig::quick(
        p(ALLOC),
        1,
        1,
        &[p("2a02:1802:5e:1abc::/64"), p("2a02:1802:5e:1123::/64")],
    );
    config.gateway_ipv4 = Some("185.69.166.123/24".parse().unwrap());
    config
}

fn remote(prefix: &str) -> ResourceConfig {
    ResourceConfig {
        node: "remote".into(),
        prefix: p(prefix),
        exitpoint: false,
        public_key: Some(KEY.into()),
        endpoint: None,
    }
}

fn lines(ns: &NamespacePlan) -> Vec<String> {
    ns.routes.iter().map(render::route_line).collect()
}

fn link<'a>(ns: &'a NamespacePlan, name: &str) -> &'a LinkPlan {
    ns.links.iter().find(|l| l.name == name).unwrap()
}

fn addrs(link: &LinkPlan) -> Vec<String> {
    link.addresses.iter().map(|a| a.to_string()).collect()
}

/// The drawing of seed 001: gateway `pub-1-1`, `to-1abc-1`, `to-1123-1` and their
/// addresses and routes. Where we follow the zos code instead of the drawing (WGIP4RT /16
/// instead of /24) the assertion says so. The drawing's upstream route `$prefix:1::/52` is a
/// typo for `$prefix:1000::/52` (the text: "ExitNode1 -> 1000").
#[test]
fn seed_example_matches_the_drawing() {
    let plan = derive(&seed_example()).unwrap();
    assert_eq!(plan.upstream.routes.len(), 1);
    let up = &plan.upstream.routes[0];
    assert_eq!(up.dest.to_string(), "2a02:1802:5e:1000::/52");
    assert_eq!(up.via.to_string(), "fe80::1000:0:0:1");
    assert_eq!(up.via_global.to_string(), "2a02:1802:5e:0:1000::1");

    let gw = &plan.gateway;
    assert_eq!(
        addrs(link(gw, "pub-1-1")),
        [
            "fe80::1000:0:0:1/64",
            "2a02:1802:5e:0:1000::1/64",
            "185.69.166.123/24"
        ]
    );
    assert_eq!(
        addrs(link(gw, "to-1abc-1")),
        ["fe80::1:1abc/64", "10.1.0.1/32"]
    );
    assert_eq!(
        addrs(link(gw, "to-1123-1")),
        ["fe80::1:1123/64", "10.1.0.1/32"]
    );
    let routes = lines(gw);
    for expected in [
        "default via fe80::1 dev pub-1-1",
        "2a02:1802:5e:1abc::/64 via fe80::1abc:1 dev to-1abc-1",
        "2a02:1802:5e:1123::/64 via fe80::1123:1 dev to-1123-1",
        "10.26.188.0/24 via 10.255.26.188 dev to-1abc-1",
    ] {
        assert!(
            routes.contains(&expected.to_string()),
            "{expected} in {routes:?}"
        );
    }

    let ep = plan.exitpoints.iter().find(|e| e.hex == "1abc").unwrap();
    let ns = &ep.namespace;
    assert_eq!(ns.name, "net-1abc-1");
    assert_eq!(
        addrs(link(ns, "pub-1abc-1")),
        ["fe80::1abc:1/64", "10.255.26.188/32"]
    );
    // Drawing: 10.255.26.188/24 on wg-1abc-1; zos code (and we): /16.
    assert_eq!(
        addrs(link(ns, "wg-1abc-1")),
        ["fe80::1abc/64", "10.255.26.188/16"]
    );
    assert_eq!(
        addrs(link(ns, "veth-1abc-1")),
        ["2a02:1802:5e:1abc::1/64", "10.26.188.1/24"]
    );
    assert_eq!(lines(ns)[0], "default via fe80::1:1abc dev pub-1abc-1");
    assert_eq!(ep.wireguard.listen_port, 6844);
    let ep2 = plan.exitpoints.iter().find(|e| e.hex == "1123").unwrap();
    assert_eq!(
        addrs(link(&ep2.namespace, "pub-1123-1")),
        ["fe80::1123:1/64", "10.255.17.35/32"]
    );
}

#[test]
fn dataplane_entries_follow_the_gateway_routes() {
    let plan = derive(&seed_example()).unwrap();
    let dp = &plan.dataplane;
    assert_eq!(dp.namespace, "gw-1-1");
    assert_eq!(dp.default_route.link, "pub-1-1");
    assert_eq!(dp.default_route.next_hop.to_string(), "fe80::1");
    let entry = dp.prefixes.iter().find(|e| e.link == "to-1abc-1").unwrap();
    assert_eq!(entry.prefix.to_string(), "2a02:1802:5e:1abc::/64");
    assert_eq!(entry.next_hop.to_string(), "fe80::1abc:1");
    let snat: Vec<String> = dp
        .nat
        .snat
        .iter()
        .map(|s| format!("{}>{}", s.source, s.to))
        .collect();
    assert_eq!(
        snat,
        [
            "10.17.35.0/24>185.69.166.123",
            "10.26.188.0/24>185.69.166.123"
        ]
    );
}

#[test]
fn remote_resources_route_through_their_exitpoint() {
    let mut config = seed_example();
    config.tenants[0]
        .resources
        .push(remote("2a02:1802:5e:1d00::/64"));
    let plan = derive(&config).unwrap();
    assert!(
        lines(&plan.gateway)
            .contains(&"2a02:1802:5e:1d00::/64 via fe80::1abc:1 dev to-1abc-1".to_string())
    );
    let ep = plan.exitpoints.iter().find(|e| e.hex == "1abc").unwrap();
    assert!(lines(&ep.namespace).contains(&"2a02:1802:5e:1d00::/64 dev wg-1abc-1".to_string()));
    let peer = &ep.wireguard.peers[0];
    let allowed: Vec<String> = peer.allowed_ips.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        allowed,
        [
            "2a02:1802:5e:1d00::/64",
            "10.29.0.0/24",
            "10.255.29.0/32",
            "fe80::1d00/128"
        ]
    );
}

#[test]
fn json_has_addresses_as_strings() {
    let plan = derive(&seed_example()).unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["allocation"], "2a02:1802:5e::/48");
    assert_eq!(json["gateway"]["links"][0]["name"], "pub-1-1");
    assert_eq!(
        json["gateway"]["links"][0]["addresses"][0],
        "fe80::1000:0:0:1/64"
    );
    assert_eq!(json["gateway"]["routes"][0]["via"], "fe80::1");
}

#[test]
fn diff_shows_exactly_the_removed_resource() {
    let mut old = seed_example();
    old.tenants[0]
        .resources
        .push(remote("2a02:1802:5e:1d00::/64"));
    let new = seed_example();
    let d = render::diff(&derive(&old).unwrap(), &derive(&new).unwrap());
    assert!(d.added.is_empty(), "{:?}", d.added);
    assert!(
        d.removed
            .iter()
            .all(|l| l.contains("1d00") || l.contains("10.29.0.0")),
        "{d:?}"
    );
    assert!(
        d.removed
            .iter()
            .any(|l| l.starts_with("gw-1-1: route 2a02:1802:5e:1d00::/64"))
    );
    assert!(
        d.removed
            .iter()
            .any(|l| l.contains("wireguard wg-1abc-1 peer"))
    );
    assert!(render::diff(&derive(&new).unwrap(), &derive(&new).unwrap()).is_empty());
}

fn err(config: &NetworkConfig) -> String {
    derive(config).unwrap_err().to_string()
}

#[test]
fn allocation_must_be_a_48() {
    let mut config = seed_example();
    config.allocation = p("2a02:1802:5e::/56");
    assert_eq!(
        err(&config),
        "allocation 2a02:1802:5e::/56: must be a /48, got /56"
    );
}

#[test]
fn exit_node_must_be_1_to_15() {
    for x in [0, 16] {
        let mut config = seed_example();
        config.exit_node = x;
        assert!(err(&config).starts_with(&format!("exit_node {x}: must be in 1..=15")));
    }
}

#[test]
fn resource_must_be_a_64_inside_the_exit_nodes_52() {
    let mut config = seed_example();
    config.tenants[0].resources[0].prefix = p("2a02:1802:5e:1abc::/56");
    assert!(err(&config).contains("resource 2a02:1802:5e:1abc::/56 must be a /64"));
    let mut config = seed_example();
    config.tenants[0].resources[0].prefix = p("2a02:1802:5e:2abc::/64");
    assert!(
        err(&config)
            .contains("2a02:1802:5e:2abc::/64 is outside exit node 1's 2a02:1802:5e:1000::/52"),
        "{}",
        err(&config)
    );
}

#[test]
fn duplicate_resources_are_refused_naming_both_tenants() {
    let mut config = seed_example();
    config.tenants[1]
        .resources
        .push(remote("2a02:1802:5e:1abc::/64"));
    let text = err(&config);
    assert!(
        text.contains("2a02:1802:5e:1abc::/64 appears twice"),
        "{text}"
    );
}

#[test]
fn long_alloc_numbers_are_refused() {
    let mut config = seed_example();
    config.alloc_nr = 99_999;
    assert!(derive(&config).is_ok());
    config.alloc_nr = 100_000;
    assert!(
        err(&config).contains("\"veth-0000-100000\" is 16 bytes"),
        "{}",
        err(&config)
    );
}

#[test]
fn route_budget_is_the_seeds_4096_with_a_warning_from_2000() {
    assert!(check_route_budget(4096).is_ok());
    assert_eq!(
        check_route_budget(4097).unwrap_err().to_string(),
        "the gateway would carry 4097 /64 routes; the budget is 4096 per exit node"
    );
    assert!(route_warning(1999).is_none());
    let mut config = seed_example();
    let taken = [0x1abc, 0x1123];
    let free = (0x1000u16..0x2000).filter(|n| !taken.contains(n));
    config.tenants[0].resources.extend(
        free.take(1998)
            .map(|n| remote(&format!("2a02:1802:5e:{n:x}::/64"))),
    );
    let plan = derive(&config).unwrap();
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("2000 /64 routes"));
}

#[test]
fn tenant_needs_exactly_one_exitpoint() {
    let mut config = seed_example();
    config.tenants[0].resources[0].exitpoint = false;
    config.tenants[0].resources[0].public_key = Some(KEY.into());
    assert!(err(&config).contains("no resource has exitpoint = true"));
    let mut config = seed_example();
    let mut second = remote("2a02:1802:5e:1d00::/64");
    second.exitpoint = true;
    config.tenants[0].resources.push(second);
    assert!(err(&config).contains("both have exitpoint = true"));
}

#[test]
fn remote_resources_need_a_valid_key() {
    let mut config = seed_example();
    let mut r = remote("2a02:1802:5e:1d00::/64");
    r.public_key = None;
    config.tenants[0].resources.push(r.clone());
    assert!(err(&config).contains("needs public_key"));
    config.tenants[0].resources.pop();
    r.public_key = Some("not-a-key".into());
    config.tenants[0].resources.push(r);
    assert!(err(&config).contains("\"not-a-key\" is not a base64 WireGuard key"));
}

#[test]
fn nibbles_ff00_to_ffff_are_refused_for_their_ipv4_overlap() {
    let mut config = seed_example();
    config.exit_node = 15;
    config.tenants.truncate(1);
    config.tenants[0].resources[0].prefix = p("2a02:1802:5e:ffff::/64");
    assert!(
        err(&config).contains("overlaps the routing range"),
        "{}",
        err(&config)
    );
    config.tenants[0].resources[0].prefix = p("2a02:1802:5e:feff::/64");
    let plan = derive(&config).unwrap();
    assert_eq!(plan.exitpoints[0].wireguard.link, "wg-feff-1");
    assert_eq!(plan.gateway.links[0].name, "pub-15-1");
}

#[test]
fn port_forwards_must_target_the_tenant_and_be_unique() {
    let mut config = seed_example();
    let forward = PortForwardConfig {
        protocol: Protocol::Tcp,
        port: 443,
        to: "10.26.188.10:8443".parse().unwrap(),
    };
    config.tenants[0].port_forwards.push(forward.clone());
    let plan = derive(&config).unwrap();
    let f = &plan.dataplane.nat.port_forwards[0];
    assert_eq!(
        (f.public.to_string(), f.target.to_string()),
        ("185.69.166.123:443".into(), "10.26.188.10:8443".into())
    );
    config.tenants[1].port_forwards.push(forward);
    assert!(
        err(&config).contains("outside the tenant's IPv4 networks"),
        "{}",
        err(&config)
    );
    config.tenants[1].port_forwards[0].to = "10.17.35.9:80".parse().unwrap();
    assert!(err(&config).contains("port forward tcp/443 is given to tenant"));
}

#[test]
fn config_toml_is_read() {
    let text = r#"
[network]
allocation = "2a02:1802:5e::/48"
exit_node = 1
alloc_nr = 1
uplink = "eth1"
gateway_ipv4 = "185.69.166.123/24"
[[network.tenants]]
name = "alice"
[[network.tenants.resources]]
node = "node7"
prefix = "2a02:1802:5e:1abc::/64"
exitpoint = true
[[network.tenants.port_forwards]]
protocol = "udp"
port = 53
to = "10.26.188.2:53"
"#;
    let config = crate::config::Config::parse(text, "t").unwrap();
    let network = config.network.unwrap();
    assert_eq!(network.uplink.as_deref(), Some("eth1"));
    let plan = derive(&network).unwrap();
    assert_eq!(plan.exitpoints[0].tenant, "alice");
}

/// Random valid inputs: one exit node, tenants of 1–3 resources with distinct nibbles
/// inside its /52 (excluding the refused ff00..ffff).
fn arb_config() -> impl Strategy<Value = NetworkConfig> {
    (
        1u8..=15,
        0u32..1_000_000,
        prop::collection::hash_set(0u16..0x0fff, 1..12),
    )
        .prop_map(|(x, a, lows)| {
            let lows: Vec<u16> = lows.into_iter().collect();
            let mut config = NetworkConfig::quick(p(ALLOC), x, a, &[]);
            config.gateway_ipv4 = Some("192.0.2.1/24".parse().unwrap());
            for (i, chunk) in lows.chunks(3).enumerate() {
                let mut resources: Vec<ResourceConfig> = chunk
                    .iter()
                    .map(|low| {
                        let nibble =
                            (u16::from(x) << 12) | (low & if x == 15 { 0x0eff } else { 0x0fff });
                        remote(&format!("2a02:1802:5e:{nibble:x}::/64"))
                    })
                    .collect();
                resources[0].exitpoint = true;
                config.tenants.push(TenantConfig {
                    name: format!("t{i}"),
                    resources,
                    port_forwards: Vec::new(),
                });
            }
            config
        })
}

proptest! {
    #[test]
    fn same_input_same_plan(config in arb_config()) {
        let first = derive(&config);
        prop_assert_eq!(first, derive(&config.clone()));
    }

    #[test]
    fn every_derived_name_fits_in_15_bytes(config in arb_config()) {
        if let Ok(plan) = derive(&config) {
            for name in plan.link_names() {
                prop_assert!(name.len() <= 15, "{}", name);
            }
        } else {
            prop_assert!(config.alloc_nr >= 100_000);
        }
    }

    #[test]
    fn no_two_resources_collide(config in arb_config()) {
        let Ok(plan) = derive(&config) else { return Ok(()) };
        let mut names = HashSet::new();
        for ns in plan.namespaces() {
            for l in &ns.links {
                prop_assert!(names.insert(l.name.clone()), "interface {} twice", l.name);
            }
        }
        let mut ports = HashSet::new();
        let mut v4: Vec<ipnet::Ipv4Net> = Vec::new();
        for ep in &plan.exitpoints {
            prop_assert!(ports.insert(ep.wireguard.listen_port));
        }
        for s in &plan.dataplane.nat.snat {
            prop_assert!(!v4.iter().any(|o| o.contains(&s.source) || s.source.contains(o)), "{} overlaps", s.source);
            v4.push(s.source);
        }
        let routing: ipnet::Ipv4Net = "10.255.0.0/16".parse().unwrap();
        for net in &v4 {
            prop_assert!(!routing.contains(net) && !net.contains(&routing), "{} in 10.255/16", net);
        }
        let mut prefixes = HashSet::new();
        for e in &plan.dataplane.prefixes {
            prop_assert!(prefixes.insert(e.prefix));
            prop_assert!(plan.exit_node_net.contains(&e.prefix));
        }
    }
}
