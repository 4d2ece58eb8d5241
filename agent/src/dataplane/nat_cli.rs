//! `exitd nat …`: the live translations and the translator's counters.

use super::{PinDir, nat4::Nat4Maps};
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

impl NatSource {
    fn maps(&self) -> Result<Nat4Maps> {
        let dir = match &self.pin_dir {
            Some(dir) => dir.clone(),
            None => {
                let config = Config::load(&self.config)?;
                let plan = crate::plan::cli::plan_for(&config)?;
                config.dataplane.pin_dir.join(&plan.dataplane.namespace)
            }
        };
        Nat4Maps::open_pinned(&PinDir::new(&dir))
            .with_context(|| format!("no translator pinned in {}", dir.display()))
    }
}

pub fn run(cmd: NatCommand) -> Result<()> {
    match cmd {
        NatCommand::List { source, json, all } => list(&source.maps()?, json, all),
        NatCommand::Stats { source, json } => stats(&source.maps()?, json),
    }
}

fn list(maps: &Nat4Maps, json: bool, all: bool) -> Result<()> {
    let connections: Vec<_> = maps
        .connections()?
        .into_iter()
        .filter(|c| all || c.live)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&connections)?);
        return Ok(());
    }
    let mut out = String::new();
    writeln!(
        out,
        "{:<5} {:<21} {:<21} {:<21} {:<12} {:<12} {:>9}",
        "PROTO", "INSIDE", "PUBLIC", "REMOTE", "ORIGIN", "STATE", "IDLE"
    )?;
    for c in &connections {
        let idle = format!("{:.1}s", c.idle_ms as f64 / 1000.0);
        let state = if c.live { c.state } else { "expired" };
        writeln!(
            out,
            "{:<5} {:<21} {:<21} {:<21} {:<12} {:<12} {idle:>9}",
            c.protocol,
            c.inside.to_string(),
            c.public.to_string(),
            c.remote.to_string(),
            c.origin,
            if state.is_empty() { "-" } else { state },
        )?;
    }
    writeln!(out, "{} connections", connections.len())?;
    print!("{out}");
    Ok(())
}

fn stats(maps: &Nat4Maps, json: bool) -> Result<()> {
    let verdicts = maps.verdict_counters()?;
    let entries = maps.entry_count();
    if json {
        let doc = serde_json::json!({
            "ct_entries": entries,
            "verdicts": verdicts.iter().map(|(v, c)| serde_json::json!({
                "verdict": v.name(), "packets": c.packets, "bytes": c.bytes,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("connection-tracking entries: {entries} (two per connection)");
    for (v, c) in verdicts {
        println!(
            "{:<20} {:>12} packets {:>14} bytes",
            v.name(),
            c.packets,
            c.bytes
        );
    }
    Ok(())
}
