//! Data-plane counters in the Prometheus text exposition format.

use super::{IfaceCounters, PinDir, fwd6::Fwd6Maps, fwd6::show_prefix};
use anyhow::Result;
use exitd_common::{Counters, IFACE_COUNTERS_MAP, ROUTES6_MAP, Verdict};
use std::{collections::BTreeMap, fmt::Write as _, net::Ipv6Addr, path::Path};

/// Every data-plane counter under `pin_root` (its own maps and each namespace's directory),
/// labelled by namespace, in the Prometheus text format. Interface names come from the link
/// pins, which record them: the scraping process may live in another network namespace.
pub fn gather(pin_root: &Path) -> Result<String> {
    let mut ifaces = Vec::new();
    let mut verdicts = Vec::new();
    let mut routes = Vec::new();
    for (namespace, pins) in &pin_dirs(pin_root) {
        let names: BTreeMap<u32, String> = super::attachments(pins)?
            .into_iter()
            .map(|a| (a.ifindex, a.ifname))
            .collect();
        if pins.map(IFACE_COUNTERS_MAP).exists() {
            for mut c in super::read_iface_counters(pins)? {
                c.ifname = names.get(&c.ifindex).cloned();
                ifaces.push((namespace.clone(), c));
            }
        }
        if pins.map(ROUTES6_MAP).exists() {
            let maps = Fwd6Maps::open_pinned(pins)?;
            for (v, c) in maps.verdict_counters()? {
                verdicts.push((namespace.clone(), v, c));
            }
            let table = maps.read()?;
            let lpm = table
                .lpm
                .iter()
                .map(|((len, addr), r)| (format!("{}/{len}", Ipv6Addr::from(*addr)), *r));
            for (prefix, route) in table
                .routes64
                .iter()
                .map(|(p, r)| (show_prefix(p), *r))
                .chain(lpm)
            {
                routes.push((
                    namespace.clone(),
                    prefix,
                    maps.route_counters(route.route_id)?,
                ));
            }
        }
    }
    let mut text = render_labelled(&ifaces, &verdicts, &routes);
    for (namespace, pins) in &pin_dirs(pin_root) {
        if pins.map(exitd_common::nat4::CT4_MAP).exists() {
            let maps = super::nat4::Nat4Maps::open_pinned(pins)?;
            text.push_str(&render_nat(
                namespace,
                &maps.verdict_counters()?,
                &maps.usage()?,
            ));
        }
        if pins.map(exitd_common::nat64::NAT64_CONFIG_MAP).exists() {
            let maps = super::nat64_maps::Nat64Maps::open_pinned(pins)?;
            text.push_str(&render_nat64(namespace, &maps.counters()?));
        }
    }
    Ok(text)
}

fn render_nat64(ns: &str, counters: &super::nat64_maps::Nat64Counters) -> String {
    let mut out = String::new();
    for (name, help, bytes) in [
        (
            "exitd_nat64_packets_total",
            "NAT64 packets by verdict (translated, dropped, or why passed to the kernel).",
            false,
        ),
        ("exitd_nat64_bytes_total", "NAT64 bytes by verdict.", true),
    ] {
        family(&mut out, name, help);
        for (v, c) in &counters.verdicts {
            let value = if bytes { c.bytes } else { c.packets };
            let verdict = v.name();
            let _ = writeln!(
                out,
                "{name}{{namespace=\"{ns}\",verdict=\"{verdict}\"}} {value}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP exitd_nat64_connections NAT64 connections tracked (expired ones included until \
         reclaimed).\n# TYPE exitd_nat64_connections gauge\n\
         exitd_nat64_connections{{namespace=\"{ns}\"}} {}",
        counters.connections
    );
    let name = "exitd_firewall_dropped_packets_total";
    family(
        &mut out,
        name,
        "Packets from nodes and tenants to the gateway's control ports, dropped.",
    );
    let (v4, v6) = counters.dropped;
    for (family, c) in [("ipv4", v4), ("ipv6", v6)] {
        let _ = writeln!(
            out,
            "{name}{{namespace=\"{ns}\",family=\"{family}\"}} {}",
            c.packets
        );
    }
    out
}

/// The translator's counters and port usage of one gateway namespace.
fn render_nat(
    ns: &str,
    verdicts: &[(exitd_common::nat4::Nat4Verdict, Counters)],
    usage: &super::nat4::Usage,
) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "exitd_nat_packets_total",
        "IPv4 translator packets by verdict (translated, dropped, or why passed to the kernel).",
    );
    for (v, c) in verdicts {
        let _ = writeln!(
            out,
            "exitd_nat_packets_total{{namespace=\"{ns}\",verdict=\"{}\"}} {}",
            v.name(),
            c.packets
        );
    }
    for (name, help, value) in [
        (
            "exitd_nat_connections",
            "Connections the translator tracks (expired ones included until reclaimed).",
            usage.connections,
        ),
        (
            "exitd_nat_ports_in_use",
            "Distinct public ports held by tracked connections.",
            usage.ports_in_use,
        ),
        (
            "exitd_nat_ports",
            "Public ports the translator may hand out.",
            usage.ports_total,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{namespace=\"{ns}\"}} {value}"
        );
    }
    out
}

/// The pin directories under `pin_root`: its own (namespace "") and one per namespace that
/// has attachments, by namespace name.
pub fn pin_dirs(pin_root: &Path) -> Vec<(String, PinDir)> {
    let mut dirs = vec![(String::new(), PinDir::new(pin_root))];
    if let Ok(entries) = std::fs::read_dir(pin_root) {
        let mut subdirs: Vec<_> = entries
            .flatten()
            .filter(|e| e.path().join("links").is_dir())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    PinDir::new(e.path()),
                )
            })
            .collect();
        subdirs.sort_by(|a, b| a.0.cmp(&b.0));
        dirs.extend(subdirs);
    }
    dirs
}

fn render_labelled(
    ifaces: &[(String, IfaceCounters)],
    verdicts: &[(String, Verdict, Counters)],
    routes: &[(String, String, Counters)],
) -> String {
    let mut out = String::new();
    let iface_label = |ns: &str, c: &IfaceCounters| {
        let name = c.ifname.clone().unwrap_or_else(|| c.ifindex.to_string());
        format!("namespace=\"{ns}\",interface=\"{name}\"")
    };
    family(
        &mut out,
        "exitd_xdp_interface_packets_total",
        "Packets seen by exitd's XDP programs per ingress interface.",
    );
    for (ns, c) in ifaces {
        let _ = writeln!(
            out,
            "exitd_xdp_interface_packets_total{{{}}} {}",
            iface_label(ns, c),
            c.packets
        );
    }
    family(
        &mut out,
        "exitd_xdp_interface_bytes_total",
        "Bytes seen by exitd's XDP programs per ingress interface.",
    );
    for (ns, c) in ifaces {
        let _ = writeln!(
            out,
            "exitd_xdp_interface_bytes_total{{{}}} {}",
            iface_label(ns, c),
            c.bytes
        );
    }
    family(
        &mut out,
        "exitd_fwd6_packets_total",
        "IPv6 forwarder packets by verdict (forwarded, or why passed to the kernel).",
    );
    for (ns, v, c) in verdicts {
        let _ = writeln!(
            out,
            "exitd_fwd6_packets_total{{namespace=\"{ns}\",verdict=\"{}\"}} {}",
            v.name(),
            c.packets
        );
    }
    family(
        &mut out,
        "exitd_fwd6_bytes_total",
        "IPv6 forwarder bytes by verdict.",
    );
    for (ns, v, c) in verdicts {
        let _ = writeln!(
            out,
            "exitd_fwd6_bytes_total{{namespace=\"{ns}\",verdict=\"{}\"}} {}",
            v.name(),
            c.bytes
        );
    }
    family(
        &mut out,
        "exitd_fwd6_route_packets_total",
        "Packets forwarded by XDP per route.",
    );
    for (ns, prefix, c) in routes {
        let _ = writeln!(
            out,
            "exitd_fwd6_route_packets_total{{namespace=\"{ns}\",prefix=\"{prefix}\"}} {}",
            c.packets
        );
    }
    family(
        &mut out,
        "exitd_fwd6_route_bytes_total",
        "Bytes forwarded by XDP per route.",
    );
    for (ns, prefix, c) in routes {
        let _ = writeln!(
            out,
            "exitd_fwd6_route_bytes_total{{namespace=\"{ns}\",prefix=\"{prefix}\"}} {}",
            c.bytes
        );
    }
    out
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nat64_verdicts_connections_and_firewall_drops() {
        use exitd_common::nat64::Nat64Verdict;
        let one = |packets| Counters {
            packets,
            bytes: packets * 100,
        };
        let counters = crate::dataplane::nat64_maps::Nat64Counters {
            verdicts: Nat64Verdict::ALL.iter().map(|v| (*v, one(1))).collect(),
            connections: 4,
            dropped: (one(2), one(3)),
        };
        let text = render_nat64("gw", &counters);
        assert!(
            text.contains(
                "exitd_nat64_packets_total{namespace=\"gw\",verdict=\"drop_not_xlat\"} 1\n"
            )
        );
        assert!(text.contains("exitd_nat64_bytes_total{namespace=\"gw\",verdict=\"out\"} 100\n"));
        assert!(text.contains(
            "# TYPE exitd_nat64_connections gauge\nexitd_nat64_connections{namespace=\"gw\"} 4\n"
        ));
        assert!(text.contains(
            "exitd_firewall_dropped_packets_total{namespace=\"gw\",family=\"ipv6\"} 3\n"
        ));
        let samples = text
            .lines()
            .filter(|l| l.starts_with("exitd_nat64_packets_total"))
            .count();
        assert_eq!(samples, Nat64Verdict::ALL.len());
    }

    #[test]
    fn renders_counter_families_with_labels() {
        let iface = IfaceCounters {
            ifindex: 3,
            ifname: Some("to-1abc-1".into()),
            packets: 5,
            bytes: 500,
            per_cpu: vec![],
        };
        let gw = "gw-1-1".to_string();
        let text = render_labelled(
            &[(gw.clone(), iface)],
            &[(
                gw.clone(),
                Verdict::Forwarded,
                Counters {
                    packets: 4,
                    bytes: 400,
                },
            )],
            &[(
                gw,
                "2a02:1802:5e:1abc::/64".into(),
                Counters {
                    packets: 2,
                    bytes: 200,
                },
            )],
        );
        assert!(text.contains("# TYPE exitd_fwd6_packets_total counter"));
        assert!(text.contains(
            "exitd_xdp_interface_packets_total{namespace=\"gw-1-1\",interface=\"to-1abc-1\"} 5\n"
        ));
        assert!(
            text.contains(
                "exitd_fwd6_packets_total{namespace=\"gw-1-1\",verdict=\"forwarded\"} 4\n"
            )
        );
        assert!(text.contains("exitd_fwd6_route_bytes_total{namespace=\"gw-1-1\",prefix=\"2a02:1802:5e:1abc::/64\"} 200\n"));
    }
}
