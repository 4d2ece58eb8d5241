//! IPv4 NAT of the gateway as an nftables table `ip exitd`, replaced atomically when the
//! plan's NAT changes. Kernel nftables stands in until the eBPF SNAT lands; the plan's
//! `dataplane.nat` entries are the same ones the data plane will use.

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
    let mut body = String::new();
    let _ = writeln!(
        body,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
    );
    for s in &nat.snat {
        let _ = writeln!(
            body,
            "    oifname \"{out}\" ip saddr {} snat to {}",
            s.source, s.to
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
    let hash = fnv1a(&body);
    Some(format!(
        "table ip {TABLE} {{\n  comment \"exitd plan {hash:016x}\"\n{body}}}\n"
    ))
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
