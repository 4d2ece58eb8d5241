use super::*;
use crate::dataplane::gateway::LinkFact;
use crate::plan::{NetworkConfig, derive};
use exitd_common::nat64::{NAT64_ENABLED, NAT64_WELL_KNOWN, WELL_KNOWN_PREFIX};

fn parse(text: &str) -> Result<Config> {
    Config::parse(text, "test.toml")
}

fn error_of(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

fn seed_plan() -> Plan {
    let resources: Vec<Ipv6Net> = ["2a02:1802:5e:1abc::/64", "2a02:1802:5e:1123::/64"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let mut network = NetworkConfig::quick("2a02:1802:5e::/48".parse().unwrap(), 1, 1, &resources);
    network.gateway_ipv4 = Some("185.69.166.123/24".parse().unwrap());
    network.upstream_ipv4 = Some("185.69.166.1".parse().unwrap());
    derive(&network).unwrap()
}

/// The plan with `config`'s NAT64 and firewall sections resolved into it.
fn resolved(config: &Config) -> Result<Plan> {
    let mut plan = seed_plan();
    plan.dataplane.nat64 = Nat64Plan::resolve(config, &plan)?;
    Ok(plan)
}

/// Every link of the plan plus `wg0`, with made-up indexes.
fn facts(plan: &Plan) -> LinkFacts {
    let mut facts = LinkFacts::default();
    let names = plan.gateway.links.iter().map(|l| l.name.clone());
    for (i, name) in names.chain(["wg0".to_string()]).enumerate() {
        let ifindex = i as u32 + 2;
        facts.links.insert(
            name,
            LinkFact {
                ifindex,
                mac: [2, 0, 0, 0, 0, ifindex as u8],
            },
        );
    }
    facts
}

#[test]
fn an_empty_section_means_the_well_known_prefix() {
    let config = parse("[dataplane.nat64]\ninterfaces = [\"wg0\"]\n").unwrap();
    let section = config.dataplane.nat64.unwrap();
    assert!(section.enabled);
    assert_eq!(section.prefix().unwrap().to_string(), "64:ff9b::/96");
    assert!(parse("").unwrap().dataplane.nat64.is_none(), "absent: off");
}

#[test]
fn prefixes_must_have_an_rfc6052_length_and_no_host_bits() {
    let err = error_of("[dataplane.nat64]\nprefix = \"2001:db8::/80\"\n");
    assert!(err.contains("RFC 6052") && err.contains("/96"), "{err}");
    let err = error_of("[dataplane.nat64]\nprefix = \"10.0.0.0/8\"\n");
    assert!(err.contains("not an IPv6 prefix"), "{err}");
    let err = error_of("[dataplane.nat64]\nprefix = \"2001:db8::1/64\"\n");
    assert!(
        err.contains("bits set") && err.contains("2001:db8::/64"),
        "{err}"
    );
    for len in [32, 40, 48, 56, 64, 96] {
        let text = format!("[dataplane.nat64]\nprefix = \"2001:db8::/{len}\"\n");
        assert!(parse(&text).is_ok(), "/{len}");
    }
}

#[test]
fn unknown_keys_and_bad_interface_names_are_errors() {
    let err = error_of("[dataplane.nat64]\nprefixes = \"64:ff9b::/96\"\n");
    assert!(err.contains("prefixes"), "{err}");
    let err = error_of("[dataplane.firewall]\nallowed = []\n");
    assert!(err.contains("allowed"), "{err}");
    let err = error_of("[dataplane.nat64]\ninterfaces = [\"a-name-that-is-too-long\"]\n");
    assert!(err.contains("dataplane.nat64.interfaces"), "{err}");
}

#[test]
fn control_ports_are_protocol_slash_port() {
    let ok = "[dataplane.firewall]\ncontrol_ports = [\"tcp/2379\", \"udp/53\"]\n";
    let config = parse(ok).unwrap();
    let ports = config.dataplane.firewall.unwrap().ports(&Config::default());
    let ports = ports.unwrap();
    assert_eq!(
        ports,
        [
            ControlPort {
                protocol: 6,
                port: 2379
            },
            ControlPort {
                protocol: 17,
                port: 53
            }
        ]
    );
    for bad in ["sctp/1", "tcp/0", "tcp/x", "2379", "tcp/65536"] {
        let text = format!("[dataplane.firewall]\ncontrol_ports = [\"{bad}\"]\n");
        let err = error_of(&text);
        assert!(err.contains(bad) && err.contains("tcp/<port>"), "{err}");
    }
}

#[test]
fn allow_lists_take_v4_and_v6_networks() {
    let text = "[dataplane.firewall]\nallow = [\"10.1.2.3/8\", \"2001:db8::/32\"]\n";
    let allow = parse(text).unwrap().dataplane.firewall.unwrap().allow();
    let allow: Vec<String> = allow.unwrap().iter().map(|n| n.to_string()).collect();
    assert_eq!(allow, ["10.0.0.0/8", "2001:db8::/32"]);
    let err = error_of("[dataplane.firewall]\nallow = [\"somewhere\"]\n");
    assert!(err.contains("somewhere") && err.contains("CIDR"), "{err}");
    let many: Vec<String> = (0..=256)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let err = error_of(&format!(
        "[dataplane.firewall]\nallow = [{}]\n",
        many.join(",")
    ));
    assert!(err.contains("at most 256"), "the map's size: {err}");
}

#[test]
fn nat64_turns_the_firewall_on_for_etcd_and_the_admin_port_on_node_and_tenant_links() {
    let config = parse("[admin]\nlisten = \"0.0.0.0:9600\"\ntoken = \"t\"\n[dataplane.nat64]\ninterfaces = [\"wg0\"]\n").unwrap();
    let plan = resolved(&config).unwrap();
    let n = &plan.dataplane.nat64;
    assert_eq!(n.interfaces, ["wg0"]);
    let ports: Vec<u16> = n.control_ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [2379, 2380, 9600]);
    assert!(n.firewalled_links.contains(&"wg0".to_string()));
    let tenant_links: BTreeSet<&String> = plan.dataplane.prefixes.iter().map(|p| &p.link).collect();
    assert_eq!(tenant_links.len(), 2);
    assert!(tenant_links.iter().all(|l| n.firewalled_links.contains(l)));
    assert!(
        !n.firewalled_links.contains(&plan.dataplane.nat.out_link),
        "the uplink is not firewalled"
    );
    let without = resolved(&parse("").unwrap()).unwrap();
    assert_eq!(without.dataplane.nat64, Nat64Plan::default(), "all off");
}

#[test]
fn the_default_interface_is_the_concentrators_in_the_gateway_namespace() {
    let plan = seed_plan();
    let gw = plan.dataplane.namespace.clone();
    let base = "[dataplane.nat64]\n[concentrator]\nid = 1\nendpoint = \"gw:1\"\n";
    let err = format!("{:#}", resolved(&parse(base).unwrap()).unwrap_err());
    assert!(
        err.contains("concentrator.namespace") && err.contains(&gw),
        "{err}"
    );
    let text = format!("{base}namespace = \"{gw}\"\nlink_address = \"2001:db8::1\"\n");
    let n = resolved(&parse(&text).unwrap()).unwrap().dataplane.nat64;
    assert_eq!(n.interfaces, ["wg-parker"]);
    assert_eq!(n.local6, ["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
    let err = format!(
        "{:#}",
        resolved(&parse("[dataplane.nat64]\n").unwrap()).unwrap_err()
    );
    assert!(err.contains("no [concentrator]"), "{err}");
}

#[test]
fn the_table_holds_the_prefix_closed_ports_links_and_allow_lists() {
    let text = "[dataplane.nat64]\ninterfaces = [\"wg0\", \"wg-missing\"]\n\
                [dataplane.firewall]\ncontrol_ports = [\"tcp/2379\"]\n\
                allow = [\"192.0.2.0/24\", \"2001:db8::/48\"]\n";
    let plan = resolved(&parse(text).unwrap()).unwrap();
    let facts = facts(&plan);
    let table = table_for(&plan, &facts, true);
    assert_eq!(table.config.prefix, WELL_KNOWN_PREFIX);
    assert_eq!(table.config.flags, NAT64_ENABLED | NAT64_WELL_KNOWN);
    let etcd = FwPort {
        proto: 6,
        pad: 0,
        port: 2379u16.to_be(),
    };
    assert_eq!(table.fw_ports, BTreeSet::from([FwPort::default(), etcd]));
    assert!(table.fw_links.contains(&facts.links["wg0"].ifindex));
    assert_eq!(
        table.fw_links.len(),
        3,
        "wg0 and two tenant links; wg-missing skipped"
    );
    assert_eq!(table.allow4, BTreeSet::from([(24, [192, 0, 2, 0])]));
    let v6: Ipv6Addr = "2001:db8::".parse().unwrap();
    assert_eq!(table.allow6, BTreeSet::from([(48, v6.octets())]));
    let off = table_for(&plan, &facts, false);
    assert_eq!(
        off.config,
        Nat64Config::default(),
        "no public IPv4: no NAT64"
    );
    assert_eq!(off.fw_ports, table.fw_ports, "the firewall stays on");
}

#[test]
fn without_closed_ports_the_firewall_is_off() {
    let text =
        "[dataplane.nat64]\ninterfaces = [\"wg0\"]\n[dataplane.firewall]\ncontrol_ports = []\n";
    let plan = resolved(&parse(text).unwrap()).unwrap();
    let table = table_for(&plan, &facts(&plan), true);
    assert!(table.fw_ports.is_empty() && table.fw_links.is_empty());
    assert_ne!(table.config.flags, 0);
}

#[test]
fn a_nodes_xlat_range_is_the_second_64_of_its_63() {
    let nodes: Vec<Ipv6Net> = ["2001:db8:ed0:2::/63", "2001:db8:ed0:a::/63"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let table = xlat_table(&nodes, 7);
    let ranges: Vec<String> = table
        .keys()
        .map(|k| {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(k);
            Ipv6Addr::from(a).to_string()
        })
        .collect();
    assert_eq!(ranges, ["2001:db8:ed0:3::", "2001:db8:ed0:b::"]);
    assert!(table.values().all(|s| s.ifindex == 7));
}

#[test]
fn the_packaged_example_runs_nat64_on_the_concentrator_interface() {
    let text = include_str!("../../../../packaging/exitd.toml");
    let config = parse(text).unwrap();
    let plan = crate::plan::cli::plan_for(&config).unwrap();
    let n = &plan.dataplane.nat64;
    assert_eq!(n.prefix.unwrap().to_string(), "64:ff9b::/96");
    assert_eq!(n.interfaces, ["wg-parker"]);
    assert_eq!(n.control_ports.len(), 3);
    assert!(n.firewalled_links.len() >= 2, "{:?}", n.firewalled_links);
}

#[test]
fn node_ipv4_ranges_are_networks_of_24_or_wider() {
    let ok = "[dataplane.nat64]\ninterfaces = [\"wg0\"]\nnode_ipv4 = [\"10.64.0.0/23\"]\n";
    assert!(parse(ok).is_ok());
    for (bad, says) in [
        ("10.64.0.0/25", "/24 or wider"),
        ("10.64.0.1/23", "/24 or wider"),
        ("2001:db8::/64", "not an IPv4 network"),
        ("10.0.0.0/8", "at most"),
    ] {
        let text = format!("[dataplane.nat64]\nnode_ipv4 = [\"{bad}\"]\n");
        let err = error_of(&text);
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn node_ranges_are_routed_per_24_through_the_kernel_apart_from_tenants() {
    let text = "[dataplane.nat64]\ninterfaces = [\"wg-missing\", \"wg0\"]\n\
                node_ipv4 = [\"10.64.0.0/23\"]\n";
    let plan = resolved(&parse(text).unwrap()).unwrap();
    let facts = facts(&plan);
    let routes = node_routes(&plan, &facts);
    let nets: Vec<[u8; 4]> = routes.keys().copied().collect();
    assert_eq!(nets, [[10, 64, 0, 0], [10, 64, 1, 0]]);
    let wg0 = facts.links["wg0"].ifindex;
    for route in routes.values() {
        assert_eq!(route.ifindex, wg0, "the first node-facing link that exists");
        assert_eq!(route.flags, exitd_common::nat4::ROUTE4_VIA_KERNEL);
        assert_eq!(route.tenant, NODE_TENANT);
    }
    let table = crate::dataplane::gateway::GatewayTable::of(&plan, &facts).unwrap();
    assert!(table.nat4.routes.contains_key(&[10, 64, 1, 0]));
    assert!(
        !table.fwd6.ports.contains(&wg0),
        "replies reach the tunnel through the kernel, not a redirect"
    );
    let mut no_link = facts.clone();
    no_link.links.remove("wg0");
    assert!(
        node_routes(&plan, &no_link).is_empty(),
        "no link yet: no routes"
    );
}
