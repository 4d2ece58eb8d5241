//! Data-plane counters in the Prometheus text exposition format.

use super::IfaceCounters;
use exitd_common::{Counters, Verdict};
use std::fmt::Write as _;

/// Renders interface and verdict counters as Prometheus metrics.
pub fn render(interfaces: &[IfaceCounters], verdicts: &[(Verdict, Counters)]) -> String {
    let mut out = String::new();
    let name_of = |c: &IfaceCounters| c.ifname.clone().unwrap_or_else(|| c.ifindex.to_string());
    family(
        &mut out,
        "exitd_xdp_interface_packets_total",
        "Packets seen by exitd's XDP programs per ingress interface.",
    );
    for c in interfaces {
        let _ = writeln!(
            out,
            "exitd_xdp_interface_packets_total{{interface=\"{}\"}} {}",
            name_of(c),
            c.packets
        );
    }
    family(
        &mut out,
        "exitd_xdp_interface_bytes_total",
        "Bytes seen by exitd's XDP programs per ingress interface.",
    );
    for c in interfaces {
        let _ = writeln!(
            out,
            "exitd_xdp_interface_bytes_total{{interface=\"{}\"}} {}",
            name_of(c),
            c.bytes
        );
    }
    if verdicts.is_empty() {
        return out;
    }
    family(
        &mut out,
        "exitd_fwd6_packets_total",
        "IPv6 forwarder packets by verdict (forwarded, or why passed to the kernel).",
    );
    for (v, c) in verdicts {
        let _ = writeln!(
            out,
            "exitd_fwd6_packets_total{{verdict=\"{}\"}} {}",
            v.name(),
            c.packets
        );
    }
    family(
        &mut out,
        "exitd_fwd6_bytes_total",
        "IPv6 forwarder bytes by verdict.",
    );
    for (v, c) in verdicts {
        let _ = writeln!(
            out,
            "exitd_fwd6_bytes_total{{verdict=\"{}\"}} {}",
            v.name(),
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
    fn renders_counter_families_with_labels() {
        let iface = IfaceCounters {
            ifindex: 3,
            ifname: Some("to-1abc-1".into()),
            packets: 5,
            bytes: 500,
            per_cpu: vec![],
        };
        let text = render(
            &[iface],
            &[(
                Verdict::Forwarded,
                Counters {
                    packets: 4,
                    bytes: 400,
                },
            )],
        );
        assert!(text.contains("# TYPE exitd_fwd6_packets_total counter"));
        assert!(text.contains("exitd_xdp_interface_packets_total{interface=\"to-1abc-1\"} 5\n"));
        assert!(text.contains("exitd_fwd6_packets_total{verdict=\"forwarded\"} 4\n"));
    }
}
