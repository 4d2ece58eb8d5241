//! `exitd dataplane …`: attach, detach and inspect the eBPF data plane.

use super::{
    AttachOutcome, Attachment, IfaceCounters, PinDir, XdpModeArg, XdpProgram, fwd6::Fwd6Maps,
    fwd6::show_prefix,
};
use anyhow::Result;
use clap::{Args, Subcommand};
use exitd_common::{ROUTES6_MAP, Route6};
use std::{fmt::Write as _, net::Ipv6Addr, path::PathBuf};

#[derive(Args)]
pub struct PinArgs {
    /// Directory on the BPF filesystem for exitd's pinned maps and links.
    #[arg(long, env = "EXITD_PIN_DIR", default_value = exitd_common::PIN_ROOT)]
    pub pin_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum DataplaneCommand {
    /// Attach an XDP program to an interface and pin it (it stays attached after exit).
    Attach {
        /// Interface in the current network namespace.
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = XdpProgram::Count)]
        program: XdpProgram,
        #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
        mode: XdpModeArg,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Detach exitd's XDP program from an interface, or from all with --all.
    Detach {
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        iface: Option<String>,
        /// Detach from every interface and remove the pinned maps.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Show attachments, packet/byte counters per interface and the forwarder's verdicts.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print Prometheus text exposition format.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
        /// Also show each CPU's counters.
        #[arg(long)]
        per_cpu: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Attach the forwarder to the configured network's gateway and fill its maps from the
    /// plan (what `exitd run` does at start-up, once).
    Sync {
        /// The configuration file (TOML) with a [network] section.
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
        /// How long to wait for next hops to resolve before writing the maps.
        #[arg(long, default_value_t = 2000)]
        wait_ms: u64,
    },
    /// List the forwarder's routes with their next hops and counters.
    Routes {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
}

/// Runs one `exitd dataplane` command.
pub fn run(cmd: DataplaneCommand) -> Result<()> {
    match cmd {
        DataplaneCommand::Attach {
            iface,
            program,
            mode,
            pins,
        } => {
            let pins = PinDir::new(pins.pin_dir);
            match super::attach_xdp(&pins, &iface, program, mode)? {
                AttachOutcome::Attached { ifindex } => {
                    println!("attached {} to {iface} (ifindex {ifindex})", program.name())
                }
                AttachOutcome::AlreadyAttached { ifindex } => println!(
                    "{iface} (ifindex {ifindex}) already has {} attached",
                    program.name()
                ),
            }
            Ok(())
        }
        DataplaneCommand::Detach { iface, all, pins } => {
            let pins = PinDir::new(pins.pin_dir);
            if all {
                let detached = super::detach_all(&pins)?;
                println!(
                    "detached from {} interface(s); pinned maps removed",
                    detached.len()
                );
            } else if let Some(iface) = iface {
                super::detach_xdp(&pins, &iface)?;
                println!("detached from {iface}");
            }
            Ok(())
        }
        DataplaneCommand::Stats {
            json,
            prometheus,
            per_cpu,
            pins,
        } => stats(&PinDir::new(pins.pin_dir), json, prometheus, per_cpu),
        DataplaneCommand::Routes { json, pins } => routes(&PinDir::new(pins.pin_dir), json),
        DataplaneCommand::Sync { config, wait_ms } => sync(&config, wait_ms),
    }
}

fn sync(config: &std::path::Path, wait_ms: u64) -> Result<()> {
    let config = crate::config::Config::load(config)?;
    let plan = crate::plan::cli::plan_for(&config)?;
    if !plan.dataplane.xdp_forward {
        println!(
            "gateway {}: XDP forwarding is off (gateway.xdp_forward)",
            plan.dataplane.namespace
        );
        return Ok(());
    }
    let pin_root = &config.dataplane.pin_dir;
    super::gateway::attach(&plan, pin_root, config.dataplane.xdp_mode)?;
    let wait = std::time::Duration::from_millis(wait_ms);
    let report = super::gateway::sync(&plan, pin_root, wait)?;
    println!(
        "gateway {}: {} added, {} updated, {} removed (pins in {})",
        plan.dataplane.namespace,
        report.added,
        report.updated,
        report.removed,
        pin_root.join(&plan.dataplane.namespace).display()
    );
    Ok(())
}

fn stats(pins: &PinDir, json: bool, prometheus: bool, per_cpu: bool) -> Result<()> {
    if prometheus {
        print!("{}", super::metrics::gather(pins.root())?);
        return Ok(());
    }
    let mut attachments = super::attachments(pins)?;
    // NAT64 classifiers on TC ingress of node-facing links.
    attachments.extend(super::tc::tc_attachments(pins)?);
    let counters = super::read_iface_counters(pins)?;
    let verdicts = match pins.map(ROUTES6_MAP).exists() {
        true => Fwd6Maps::open_pinned(pins)?.verdict_counters()?,
        false => Vec::new(),
    };
    if json {
        let verdicts: serde_json::Map<String, serde_json::Value> = verdicts
            .iter()
            .map(|(v, c)| {
                (
                    v.name().to_string(),
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "attachments": attachments, "interfaces": counters, "verdicts": verdicts,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_stats(&attachments, &counters, per_cpu);
        if !verdicts.is_empty() {
            println!("\n{:<24} {:>14} {:>16}", "VERDICT", "PACKETS", "BYTES");
            for (verdict, c) in &verdicts {
                println!("{:<24} {:>14} {:>16}", verdict.name(), c.packets, c.bytes);
            }
        }
    }
    Ok(())
}

fn print_stats(attachments: &[Attachment], counters: &[IfaceCounters], per_cpu: bool) {
    println!(
        "{:<16} {:>8} {:<10} {:>14} {:>16}",
        "INTERFACE", "IFINDEX", "PROGRAM", "PACKETS", "BYTES"
    );
    let program_on = |ifindex: u32| {
        attachments
            .iter()
            .find(|a| a.ifindex == ifindex && a.live)
            .map_or("-".to_string(), |a| a.program.clone())
    };
    for c in counters {
        let name = c.ifname.clone().unwrap_or_else(|| "(gone)".to_string());
        let program = program_on(c.ifindex);
        println!(
            "{name:<16} {:>8} {program:<10} {:>14} {:>16}",
            c.ifindex, c.packets, c.bytes
        );
        if per_cpu {
            for (cpu, v) in c.per_cpu.iter().enumerate() {
                println!(
                    "{:<16} {:>8} {:<10} {:>14} {:>16}",
                    format!("  cpu{cpu}"),
                    "",
                    "",
                    v.packets,
                    v.bytes
                );
            }
        }
    }
    for a in attachments
        .iter()
        .filter(|a| !counters.iter().any(|c| c.ifindex == a.ifindex))
    {
        let program = if a.live {
            a.program.clone()
        } else {
            format!("{} (stale)", a.program)
        };
        // Only xdp_count keeps per-interface counters; the forwarder counts per verdict
        // and per route (below, and `exitd dataplane routes`).
        println!(
            "{:<16} {:>8} {program:<10} {:>14} {:>16}",
            a.ifname, a.ifindex, "-", "-"
        );
    }
}

fn routes(pins: &PinDir, json: bool) -> Result<()> {
    let maps = Fwd6Maps::open_pinned(pins)?;
    let table = maps.read()?;
    let mut rows = Vec::new();
    for (prefix, route) in &table.routes64 {
        rows.push((show_prefix(prefix), *route));
    }
    for ((len, addr), route) in &table.lpm {
        rows.push((format!("{}/{len}", Ipv6Addr::from(*addr)), *route));
    }
    let mut out = String::new();
    let mut docs = Vec::new();
    if !json {
        writeln!(
            out,
            "{:<28} {:>8} {:<18} {:<18} {:>12} {:>14}",
            "PREFIX", "IFINDEX", "NEXT HOP MAC", "SOURCE MAC", "PACKETS", "BYTES"
        )?;
    }
    for (prefix, route) in rows {
        let counters = maps.route_counters(route.route_id)?;
        let next_hop = next_hop_mac(&route);
        if json {
            docs.push(serde_json::json!({
                "prefix": prefix, "ifindex": route.ifindex, "route_id": route.route_id,
                "next_hop_mac": next_hop, "source_mac": mac(&route.src_mac),
                "packets": counters.packets, "bytes": counters.bytes,
            }));
        } else {
            writeln!(
                out,
                "{prefix:<28} {:>8} {next_hop:<18} {:<18} {:>12} {:>14}",
                route.ifindex,
                mac(&route.src_mac),
                counters.packets,
                counters.bytes
            )?;
        }
    }
    if json {
        out = serde_json::to_string_pretty(&docs)? + "\n";
    }
    print!("{out}");
    Ok(())
}

fn next_hop_mac(route: &Route6) -> String {
    if route.flags & exitd_common::ROUTE_NEIGH_KNOWN == 0 {
        "(resolving)".to_string()
    } else {
        mac(&route.dst_mac)
    }
}

/// A MAC address in the usual colon notation.
pub fn mac(bytes: &[u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
