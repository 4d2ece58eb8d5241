//! The `exitd` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
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
    Dataplane(exitd::dataplane::cli::DataplaneCommand),
    /// The gateway's IPv4 translator: live translations and counters.
    #[command(subcommand)]
    Nat(exitd::dataplane::nat_cli::NatCommand),
    /// Show the network derived from the configuration: links, addresses, routes, peers, NAT.
    Plan(exitd::plan::cli::PlanArgs),
    /// Make this machine match the configuration's network plan (namespaces, links, routes).
    Apply(exitd::netlink::ApplyArgs),
    /// Run only the Parker broker (unprivileged; no eBPF, no etcd).
    Broker(exitd::parker::cli::BrokerArgs),
    /// Create a signify key pair for signing broker responses.
    Keygen(exitd::parker::cli::KeygenArgs),
    /// Explain and check the configuration registry (layers, rules, origins).
    #[command(subcommand)]
    Config(exitd::registry::cli::ConfigCommand),
    /// Gateway failover cluster (etcd): members and gateway owners.
    #[command(subcommand)]
    Cluster(exitd::cluster::cli::ClusterCommand),
    /// Summarise the running node (roles, data plane, broker, cluster) from its admin API.
    Status(exitd::api::cli::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exitd::logging::init(&cli.log);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => {
            tokio::runtime::Runtime::new()?.block_on(exitd::daemon::run_file(&config))
        }
        Command::Dataplane(cmd) => exitd::dataplane::cli::run(cmd),
        Command::Nat(cmd) => exitd::dataplane::nat_cli::run(cmd),
        Command::Broker(args) => exitd::parker::cli::run_broker(args),
        Command::Keygen(args) => exitd::parker::cli::keygen(args),
        Command::Plan(args) => exitd::plan::cli::run(args),
        Command::Apply(args) => exitd::netlink::run_apply(args),
        Command::Config(cmd) => exitd::registry::cli::run(cmd),
        Command::Cluster(cmd) => exitd::cluster::cli::run(cmd),
        Command::Status(args) => exitd::api::cli::run(args),
    }
}
