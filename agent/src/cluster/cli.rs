//! `exitd cluster status`: what etcd says about the cluster.

use super::{ClusterConfig, ownership::read_owners};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Print the live members and every gateway's owner, as etcd has them.
    Status {
        /// The configuration file (TOML) with the `[cluster]` section.
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
}

pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { config } => {
            let config = crate::config::Config::load(&config)?
                .cluster
                .context("the configuration has no [cluster] section")?;
            tokio::runtime::Runtime::new()?.block_on(print_status(&config))
        }
    }
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
    let owners = read_owners(&mut client, config).await?;
    for gateway in super::ring::GATEWAYS {
        match owners.get(&gateway) {
            Some((node, _)) => println!("  {gateway} {node}"),
            None => println!("  {gateway} -"),
        }
    }
    Ok(())
}
