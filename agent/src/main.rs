//! The `exitd` command line.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use exitd::{
    config::Config,
    dataplane::{self, AttachOutcome, IfaceCounters, PinDir, XdpModeArg},
};
use std::{path::PathBuf, process::ExitCode};

/// exitd turns a Linux box with a routed IPv6 /48 into an exit node: it derives the network,
/// forwards in eBPF, serves the Parker broker API and fails gateways over through etcd.
#[derive(Parser)]
#[command(name = "exitd", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info` or `exitd=debug`); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with a configuration file (what the systemd unit starts).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
    /// Attach, detach and inspect the eBPF data plane.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Run only the Parker broker (unprivileged; no eBPF, no etcd).
    Broker(exitd::parker::cli::BrokerArgs),
    /// Create a signify key pair for signing broker responses.
    Keygen(exitd::parker::cli::KeygenArgs),
    /// Show the network derived from the configuration: links, addresses, routes, peers, NAT.
    Plan(exitd::plan::cli::PlanArgs),
    /// Make this machine match the configuration's network plan (namespaces, links, routes).
    Apply(exitd::netlink::ApplyArgs),
}

#[derive(Args)]
struct PinArgs {
    /// Directory on the BPF filesystem for exitd's pinned maps and links.
    #[arg(long, env = "EXITD_PIN_DIR", default_value = exitd_common::PIN_ROOT)]
    pin_dir: PathBuf,
}

#[derive(Subcommand)]
enum DataplaneCommand {
    /// Attach the XDP program to an interface and pin it (it stays attached after exit).
    Attach {
        /// Interface in the current network namespace.
        #[arg(long)]
        iface: String,
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
    /// Show where the program is attached and the packet/byte counters per interface.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also show each CPU's counters.
        #[arg(long)]
        per_cpu: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(exitd::daemon::run(config))
        }
        Command::Dataplane(cmd) => dataplane_command(cmd),
        Command::Broker(args) => exitd::parker::cli::run_broker(args),
        Command::Keygen(args) => exitd::parker::cli::keygen(args),
        Command::Plan(args) => exitd::plan::cli::run(args),
        Command::Apply(args) => exitd::netlink::run_apply(args),
    }
}

fn dataplane_command(cmd: DataplaneCommand) -> Result<()> {
    match cmd {
        DataplaneCommand::Attach { iface, mode, pins } => {
            let pins = PinDir::new(pins.pin_dir);
            match dataplane::attach_xdp(&pins, &iface, mode)? {
                AttachOutcome::Attached { ifindex } => {
                    println!(
                        "attached {} to {iface} (ifindex {ifindex})",
                        dataplane::XDP_COUNT
                    )
                }
                AttachOutcome::AlreadyAttached { ifindex } => {
                    println!("{iface} (ifindex {ifindex}) already has exitd's program attached")
                }
            }
            Ok(())
        }
        DataplaneCommand::Detach { iface, all, pins } => {
            let pins = PinDir::new(pins.pin_dir);
            if all {
                let detached = dataplane::detach_all(&pins)?;
                println!(
                    "detached from {} interface(s); pinned maps removed",
                    detached.len()
                );
            } else if let Some(iface) = iface {
                dataplane::detach_xdp(&pins, &iface)?;
                println!("detached from {iface}");
            }
            Ok(())
        }
        DataplaneCommand::Stats {
            json,
            per_cpu,
            pins,
        } => {
            let pins = PinDir::new(pins.pin_dir);
            let attachments = dataplane::attachments(&pins)?;
            let counters = dataplane::read_iface_counters(&pins)?;
            if json {
                let doc = serde_json::json!({ "attachments": attachments, "interfaces": counters });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print_stats(&attachments, &counters, per_cpu);
            }
            Ok(())
        }
    }
}

fn print_stats(attachments: &[dataplane::Attachment], counters: &[IfaceCounters], per_cpu: bool) {
    println!(
        "{:<16} {:>8} {:>10} {:>14} {:>16}",
        "INTERFACE", "IFINDEX", "ATTACHED", "PACKETS", "BYTES"
    );
    for c in counters {
        let name = c.ifname.clone().unwrap_or_else(|| "(gone)".to_string());
        let attached = attachments.iter().any(|a| a.ifindex == c.ifindex && a.live);
        let attached = if attached { "yes" } else { "no" };
        println!(
            "{:<16} {:>8} {:>10} {:>14} {:>16}",
            name, c.ifindex, attached, c.packets, c.bytes
        );
        if per_cpu {
            for (cpu, v) in c.per_cpu.iter().enumerate() {
                println!(
                    "{:<16} {:>8} {:>10} {:>14} {:>16}",
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
        let state = if a.live { "yes" } else { "stale" };
        println!(
            "{:<16} {:>8} {:>10} {:>14} {:>16}",
            a.ifname, a.ifindex, state, 0, 0
        );
    }
}
