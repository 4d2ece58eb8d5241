//! `exitd plan`, `exitd plan diff`, `exitd plan upstream`.

use super::{NetworkConfig, Plan, render};
use crate::config::Config;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ipnet::{Ipv4Net, Ipv6Net};
use std::path::{Path, PathBuf};

/// Shows the network derived from the configuration (or from flags for a quick look).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub command: Option<PlanCommand>,
    #[command(flatten)]
    pub source: PlanSource,
    /// Print the whole plan as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// What going from the OLD configuration to the NEW one adds and removes.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the difference as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The static routes to type into the upstream router.
    Upstream {
        #[command(flatten)]
        source: PlanSource,
        /// The router port facing PrefixZero, for the `dev` of the routes.
        #[arg(long, default_value = "<port>")]
        port: String,
    },
}

/// Where the plan's inputs come from: a configuration file, or flags.
#[derive(Debug, Args)]
pub struct PlanSource {
    /// The configuration file; its `[network]` section is used.
    #[arg(long, short, conflicts_with = "allocation")]
    pub config: Option<PathBuf>,
    /// The farm's /48 (quick look without a configuration file).
    #[arg(long, requires_all = ["exit_node", "alloc_nr"])]
    pub allocation: Option<Ipv6Net>,
    /// Exit node number, 1..=15.
    #[arg(long)]
    pub exit_node: Option<u8>,
    /// Allocation number.
    #[arg(long)]
    pub alloc_nr: Option<u32>,
    /// A network resource /64; each one is the ExitPoint of its own tenant network.
    #[arg(long)]
    pub resource: Vec<Ipv6Net>,
    /// The gateway's public IPv4 with prefix length (GWPubIP4), for the NAT rules.
    #[arg(long)]
    pub gateway_ipv4: Option<Ipv4Net>,
    /// Other exit nodes enabled on this allocation (for the upstream routes).
    #[arg(long, value_delimiter = ',')]
    pub enabled_exit_nodes: Vec<u8>,
}

const DEFAULT_CONFIG: &str = "/etc/exitd/exitd.toml";

impl PlanSource {
    /// The network inputs these flags describe.
    pub fn network_config(&self) -> Result<NetworkConfig> {
        let (Some(allocation), Some(exit_node), Some(alloc_nr)) =
            (self.allocation, self.exit_node, self.alloc_nr)
        else {
            let path = self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG));
            return load_network(path);
        };
        let mut config = NetworkConfig::quick(allocation, exit_node, alloc_nr, &self.resource);
        config.gateway_ipv4 = self.gateway_ipv4;
        config.enabled_exit_nodes = self.enabled_exit_nodes.clone();
        Ok(config)
    }
}

/// The `[network]` section of a configuration file.
pub fn load_network(path: &Path) -> Result<NetworkConfig> {
    let config = Config::load(path)?;
    match config.network {
        Some(network) => Ok(network),
        None => bail!("{} has no [network] section", path.display()),
    }
}

/// The plan of a whole configuration: derived from `[network]`, then refined by the
/// registry's settings for this gateway (tunnel MTU and keepalive, XDP, port forwards).
pub fn plan_for(config: &Config) -> Result<Plan> {
    let Some(network) = &config.network else {
        bail!("the configuration has no [network] section");
    };
    let plan = plan_of(network)?;
    let gateway = plan.dataplane.namespace.clone();
    let (settings, nat) = crate::registry::gateway_items::resolve(config, &gateway)?;
    let mut plan = super::settings::apply(plan, &settings, &nat)
        .with_context(|| format!("registry settings of gateway {gateway}"))?;
    // The translator runs where the XDP forwarder runs; otherwise the kernel NATs alone.
    plan.dataplane.nat.ebpf = config.dataplane.forward && plan.dataplane.xdp_forward;
    plan.dataplane.nat.settings = config.dataplane.nat.clone();
    plan.dataplane.nat64 = crate::dataplane::nat64::Nat64Plan::resolve(config, &plan)?;
    Ok(plan)
}

/// Derives the plan, with the input named in the error.
pub fn plan_of(config: &NetworkConfig) -> Result<Plan> {
    super::derive(config).context("invalid network input")
}

pub fn run(args: PlanArgs) -> Result<()> {
    match args.command {
        None => show(&args.source, args.json),
        Some(PlanCommand::Diff { old, new, json }) => show_diff(&old, &new, json),
        Some(PlanCommand::Upstream { source, port }) => {
            let plan = plan_of(&source.network_config()?)?;
            print!("{}", render::upstream_routes(&plan, &port));
            Ok(())
        }
    }
}

fn show(source: &PlanSource, json: bool) -> Result<()> {
    let plan = match (&source.config, source.allocation) {
        // A whole configuration: the registry's gateway settings apply too.
        (Some(path), None) => plan_for(&Config::load(path)?)?,
        _ => plan_of(&source.network_config()?)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", render::table(&plan));
    }
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    Ok(())
}

fn show_diff(old: &Path, new: &Path, json: bool) -> Result<()> {
    let old_plan = plan_of(&load_network(old)?).with_context(|| old.display().to_string())?;
    let new_plan = plan_of(&load_network(new)?).with_context(|| new.display().to_string())?;
    let diff = render::diff(&old_plan, &new_plan);
    if json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else if diff.is_empty() {
        println!("no changes");
    } else {
        print!("{}", diff.text());
    }
    Ok(())
}
