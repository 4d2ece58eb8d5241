//! `exitd nat …`: the live translations and the translator's counters.

use super::{
    PinDir,
    nat4::{Connection, Nat4Maps},
    nat64_maps::{Nat64Connection, Nat64Counters, Nat64Maps},
};
use crate::config::Config;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::{fmt::Write as _, path::PathBuf};

#[derive(Subcommand)]
pub enum NatCommand {
    /// List the tracked connections: tenant address, public address, remote, state, idle.
    List {
        #[command(flatten)]
        source: NatSource,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list connections whose timeout passed (reclaimed on their next packet).
        #[arg(long)]
        all: bool,
    },
    /// Packets per translator verdict and the number of tracked connections.
    Stats {
        #[command(flatten)]
        source: NatSource,
        #[arg(long)]
        json: bool,
    },
}

/// Which gateway's maps: the one of a configuration's [network], or a pin directory.
#[derive(Args)]
pub struct NatSource {
    /// The configuration file; its gateway's maps are read.
    #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
    config: PathBuf,
    /// The gateway's pin directory (e.g. /sys/fs/bpf/exitd/gw-1-1) instead of --config.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

/// The gateway's translator maps: NAT44, and NAT64 with the firewall when pinned.
struct GatewayNat {
    pins: PinDir,
    nat4: Nat4Maps,
    nat64: Option<Nat64Maps>,
}

impl NatSource {
    fn maps(&self) -> Result<GatewayNat> {
        let dir = match &self.pin_dir {
            Some(dir) => dir.clone(),
            None => {
                let config = Config::load(&self.config)?;
                let plan = crate::plan::cli::plan_for(&config)?;
                config.dataplane.pin_dir.join(&plan.dataplane.namespace)
            }
        };
        let pins = PinDir::new(&dir);
        let nat4 = Nat4Maps::open_pinned(&pins)
            .with_context(|| format!("no translator pinned in {}", dir.display()))?;
        let nat64 = Nat64Maps::open_pinned(&pins).ok();
        Ok(GatewayNat { pins, nat4, nat64 })
    }
}

/// One line of `exitd nat list --json`.
#[derive(serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Listed {
    Nat44(Connection),
    Nat64(Nat64Connection),
}

pub fn run(cmd: NatCommand) -> Result<()> {
    match cmd {
        NatCommand::List { source, json, all } => list(&source.maps()?, json, all),
        NatCommand::Stats { source, json } => stats(&source.maps()?, json),
    }
}

fn list(maps: &GatewayNat, json: bool, all: bool) -> Result<()> {
    let connections: Vec<_> = maps
        .nat4
        .connections()?
        .into_iter()
        .filter(|c| all || c.live)
        .collect();
    let nat64: Vec<_> = match &maps.nat64 {
        Some(m) => m.connections(&maps.pins)?,
        None => Vec::new(),
    };
    let nat64: Vec<_> = nat64.into_iter().filter(|c| all || c.live).collect();
    if json {
        let listed: Vec<Listed> = connections
            .into_iter()
            .map(Listed::Nat44)
            .chain(nat64.into_iter().map(Listed::Nat64))
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    let mut out = String::new();
    writeln!(
        out,
        "{:<5} {:<21} {:<21} {:<21} {:<12} {:<12} {:>9}",
        "PROTO", "INSIDE", "PUBLIC", "REMOTE", "ORIGIN", "STATE", "IDLE"
    )?;
    for c in &connections {
        writeln!(
            out,
            "{:<5} {:<21} {:<21} {:<21} {:<12} {:<12} {:>9}",
            c.protocol,
            c.inside.to_string(),
            c.public.to_string(),
            c.remote.to_string(),
            c.origin,
            shown_state(c.state, c.live),
            idle(c.idle_ms),
        )?;
    }
    writeln!(out, "{} connections", connections.len())?;
    if !nat64.is_empty() {
        write_nat64(&mut out, &nat64)?;
    }
    print!("{out}");
    Ok(())
}

fn write_nat64(out: &mut String, connections: &[Nat64Connection]) -> Result<()> {
    writeln!(
        out,
        "\nNAT64\n{:<5} {:<47} {:<21} {:<21} {:<12} {:>9}",
        "PROTO", "NODE", "PUBLIC", "REMOTE", "STATE", "IDLE"
    )?;
    for c in connections {
        writeln!(
            out,
            "{:<5} {:<47} {:<21} {:<21} {:<12} {:>9}",
            c.protocol,
            c.node.to_string(),
            c.public.to_string(),
            c.remote.to_string(),
            shown_state(c.state, c.live),
            idle(c.idle_ms),
        )?;
    }
    writeln!(out, "{} NAT64 connections", connections.len())?;
    Ok(())
}

fn shown_state(state: &'static str, live: bool) -> &'static str {
    match (live, state) {
        (false, _) => "expired",
        (true, "") => "-",
        (true, s) => s,
    }
}

fn idle(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn stats(maps: &GatewayNat, json: bool) -> Result<()> {
    let verdicts = maps.nat4.verdict_counters()?;
    let entries = maps.nat4.entry_count();
    let nat64 = maps.nat64.as_ref().map(Nat64Maps::counters).transpose()?;
    if json {
        let doc = serde_json::json!({
            "ct_entries": entries,
            "verdicts": verdict_list(verdicts.iter().map(|(v, c)| (v.name(), c))),
            "nat64": nat64.as_ref().map(nat64_json),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("connection-tracking entries: {entries} (two per connection)");
    print_verdicts(verdicts.iter().map(|(v, c)| (v.name(), c)));
    if let Some(nat64) = nat64 {
        println!("\nNAT64 connections: {}", nat64.connections);
        print_verdicts(nat64.verdicts.iter().map(|(v, c)| (v.name(), c)));
        let (v4, v6) = nat64.dropped;
        println!(
            "\nfirewall drops (control ports): ipv4 {} packets, ipv6 {} packets",
            v4.packets, v6.packets
        );
    }
    Ok(())
}

fn nat64_json(n: &Nat64Counters) -> serde_json::Value {
    let (v4, v6) = n.dropped;
    serde_json::json!({
        "connections": n.connections,
        "verdicts": verdict_list(n.verdicts.iter().map(|(v, c)| (v.name(), c))),
        "firewall_dropped": {
            "ipv4": { "packets": v4.packets, "bytes": v4.bytes },
            "ipv6": { "packets": v6.packets, "bytes": v6.bytes },
        },
    })
}

fn verdict_list<'a>(
    verdicts: impl Iterator<Item = (&'static str, &'a exitd_common::Counters)>,
) -> Vec<serde_json::Value> {
    verdicts
        .map(|(name, c)| serde_json::json!({"verdict": name, "packets": c.packets, "bytes": c.bytes}))
        .collect()
}

fn print_verdicts<'a>(verdicts: impl Iterator<Item = (&'static str, &'a exitd_common::Counters)>) {
    for (name, c) in verdicts {
        println!("{name:<20} {:>12} packets {:>14} bytes", c.packets, c.bytes);
    }
}
