//! The kernel's part of the gateway's IPv4 NAT, as an nftables table `ip exitd` replaced
//! atomically when the plan's NAT changes.
//!
//! With the eBPF translator on (`NatPlan::ebpf`), the kernel only sees what XDP hands to it
//! (fragments, IP options, connections XDP has no state for) and translates those with its
//! own port range (`kernel_ports`), disjoint from the translator's, so the two never pick
//! the same public port. With it off, the kernel does all of it. Either way the forward
//! chain keeps tenants apart: nothing is routed into a tenant's network except from that
//! tenant's own link, as a port forward or as the reply of a connection that got past this
//! rule when it started.

use crate::plan::NatPlan;
use anyhow::{Context, Result, bail};
use std::{
    fmt::Write as _,
    io::Write,
    process::{Command, Stdio},
};

pub const TABLE: &str = "exitd";

/// The nftables table for `nat`, or None when there is nothing to NAT.
pub fn ruleset(nat: &NatPlan) -> Option<String> {
    let public = nat.public_ipv4?;
    if nat.snat.is_empty() && nat.port_forwards.is_empty() {
        return None;
    }
    let out = &nat.out_link;
    // Ports only exist for TCP and UDP; other protocols keep the plain rule.
    let ports = nat.ebpf.then(|| {
        format!(
            "meta l4proto {{ tcp, udp }} snat to {public}:{}",
            nat.settings.kernel_ports
        )
    });
    let mut body = String::new();
    body.push_str(&isolation_sets(nat));
    let _ = writeln!(
        body,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
    );
    for s in &nat.snat {
        if let Some(ports) = &ports {
            let _ = writeln!(body, "    oifname \"{out}\" ip saddr {} {ports}", s.source);
        }
        let _ = writeln!(
            body,
            "    oifname \"{out}\" ip saddr {} snat to {public}",
            s.source
        );
    }
    let _ = writeln!(
        body,
        "  }}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    for f in &nat.port_forwards {
        let _ = writeln!(
            body,
            "    iifname \"{out}\" ip daddr {public} {} dport {} dnat to {}",
            f.protocol,
            f.public.port(),
            f.target
        );
    }
    body.push_str("  }\n");
    if !nat.snat.is_empty() {
        body.push_str(
            "  chain forward {\n    type filter hook forward priority filter; policy accept;\n    \
             ct state established,related accept\n    ct status dnat accept\n    \
             ip daddr @tenant_nets iifname . ip daddr != @tenant_links counter drop comment \"tenant isolation\"\n  }\n",
        );
    }
    let hash = fnv1a(&body);
    Some(format!(
        "table ip {TABLE} {{\n  comment \"exitd plan {hash:016x}\"\n{body}}}\n"
    ))
}

/// Every tenant network, and each one with the link it lies behind.
fn isolation_sets(nat: &NatPlan) -> String {
    if nat.snat.is_empty() {
        return String::new();
    }
    let nets: Vec<String> = nat.snat.iter().map(|s| s.source.to_string()).collect();
    let links: Vec<String> = nat
        .snat
        .iter()
        .map(|s| format!("\"{}\" . {}", s.link, s.source))
        .collect();
    format!(
        "  set tenant_nets {{\n    type ipv4_addr; flags interval;\n    elements = {{ {} }}\n  }}\n  \
         set tenant_links {{\n    type ifname . ipv4_addr; flags interval;\n    elements = {{ {} }}\n  }}\n",
        nets.join(", "),
        links.join(", ")
    )
}

/// A stable hash of the rules, kept in the table's comment to see whether it is current.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn nft(input: &str) -> Result<String> {
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn current_comment() -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("comment ")
                .map(|c| c.trim_end_matches(';').to_string())
        })
        .or(Some(String::new()))
}

/// Makes the calling thread's namespace have exactly the plan's NAT; returns what changed.
/// Only the table `ip exitd` is touched.
pub fn reconcile(nat: &NatPlan) -> Result<Vec<String>> {
    let current = current_comment();
    match (ruleset(nat), current) {
        (None, None) => Ok(Vec::new()),
        (None, Some(_)) => {
            nft(&format!("delete table ip {TABLE}\n"))?;
            Ok(vec![format!("removed nftables table ip {TABLE}")])
        }
        (Some(rules), current) => {
            let wanted = rules
                .lines()
                .find_map(|l| l.trim().strip_prefix("comment ").map(str::to_string));
            if current.is_some() && current == wanted {
                return Ok(Vec::new());
            }
            let script = format!("table ip {TABLE}\ndelete table ip {TABLE}\n{rules}");
            nft(&script)?;
            Ok(vec![format!(
                "nftables table ip {TABLE}: {} snat, {} port forwards",
                nat.snat.len(),
                nat.port_forwards.len()
            )])
        }
    }
}
