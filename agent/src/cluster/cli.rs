//! `exitd cluster status`: what etcd says about the cluster.

use super::ClusterConfig;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Print the live members and every gateway's owner, as etcd has them.
    Status {
        /// The configuration file (TOML) with the `[cluster]` section.
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
    /// Stop forwarding for this node's gateway (uplink down, its addresses removed) without
    /// the daemon: systemd's ExecStopPost after `exitd run` crashed or was killed.
    Fence {
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
    /// Take a gateway out of service (no node claims it; its owner releases it).
    SetOffline {
        gateway: u8,
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
    /// Put a gateway back into service (the ring assigns it again).
    SetOnline {
        gateway: u8,
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
}

pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { config } => {
            let config = cluster_section(&config)?;
            tokio::runtime::Runtime::new()?.block_on(print_status(&config))
        }
        ClusterCommand::Fence { config } => {
            super::takeover::fence_config(&crate::config::Config::load(&config)?)
        }
        ClusterCommand::SetOffline { gateway, config } => set_admin(&config, gateway, false),
        ClusterCommand::SetOnline { gateway, config } => set_admin(&config, gateway, true),
    }
}

fn cluster_section(path: &Path) -> Result<ClusterConfig> {
    crate::config::Config::load(path)?
        .cluster
        .context("the configuration has no [cluster] section")
}

fn set_admin(path: &Path, gateway: u8, online: bool) -> Result<()> {
    let config = cluster_section(path)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut client = config.connect().await?;
        super::state::set_admin(&mut client, &config, gateway, online).await
    })?;
    println!(
        "gateway {gateway} {}",
        if online { "online" } else { "offline" }
    );
    Ok(())
}

async fn print_status(config: &ClusterConfig) -> Result<()> {
    let mut client = config.connect().await?;
    let members = super::read_prefix(&mut client, config, config.members_prefix()).await?;
    println!("cluster {}", config.name);
    println!("members:");
    for kv in members.kvs() {
        let key = kv.key_str().unwrap_or("?");
        let name = key.strip_prefix(&config.members_prefix()).unwrap_or(key);
        println!("  {name} {}", kv.value_str().unwrap_or("?"));
    }
    println!("gateways:");
    let view = super::state::read_gateways(&mut client, config).await?;
    for gateway in super::ring::GATEWAYS {
        let owner = view.owners.get(&gateway).map_or("-", |(node, _)| node);
        let admin = if view.admin_offline.contains(&gateway) {
            " (admin offline)"
        } else {
            ""
        };
        let state = view.state_of(gateway).name();
        println!("  {gateway} {owner} {state}{admin}");
    }
    Ok(())
}
