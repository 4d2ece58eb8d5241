//! `exitd config explain <node-or-gateway>` and `exitd config check FILE`.

use super::{Resolution, Resolver, SubjectKind, eval::Base, standard};
use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Inspect and validate the configuration registry (`[registry]`).
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every resolved value of a node (WireGuard key) or gateway and what set it.
    Explain {
        /// A node's public key, a gateway's name, or `default` for unlisted nodes.
        subject: String,
        /// The configuration file (TOML).
        #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
        config: PathBuf,
    },
    /// Validate a file: syntax, items, fields, rules, every listed subject; non-zero on error.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
    },
}

pub fn run(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Explain { subject, config } => {
            print!("{}", explain(&config, &subject)?.explain());
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let summary = check(&file)?;
            println!("{}: ok ({summary})", file.display());
            Ok(())
        }
    }
}

/// Loads a file and builds its resolver with the base values the modules give.
fn load(path: &Path) -> Result<(Config, Resolver, Base)> {
    let config = Config::load(path)?;
    let registry = config.registry.clone().unwrap_or_default();
    let resolver = Resolver::new(standard(), registry)
        .with_context(|| format!("invalid [registry] in {}", path.display()))?;
    let base = config
        .parker
        .as_ref()
        .map(crate::parker::items::base)
        .unwrap_or_default();
    Ok((config, resolver, base))
}

/// Resolves one subject of a file, as a first evaluation.
pub fn explain(path: &Path, subject: &str) -> Result<Resolution> {
    let (_, resolver, base) = load(path)?;
    let (kind, name) = match (resolver.kind_of(subject), subject) {
        (Some(kind), _) => (kind, subject),
        (None, "default") => (SubjectKind::Node, ""),
        (None, key) if crate::parker::is_wireguard_key(key) => (SubjectKind::Node, ""),
        (None, _) => bail!(
            "{subject:?} is neither a node nor a gateway in [registry] (unlisted nodes: give \
             their key or `default`)"
        ),
    };
    resolver.resolve(kind, name, &base, None)
}

/// Validates everything a file configures; returns a one-line summary.
pub fn check(path: &Path) -> Result<String> {
    let (config, resolver, base) = load(path)?;
    let in_file = |e: anyhow::Error| e.context(format!("in {}", path.display()));
    if let Some(parker) = &config.parker {
        parker.validate().context("[parker]").map_err(in_file)?;
        crate::parker::items::resolve_table(parker, config.registry.as_ref(), &Default::default())
            .map_err(in_file)?;
    }
    resolver
        .resolve(SubjectKind::Node, "", &base, None)
        .map_err(in_file)?;
    let subjects = resolver.subjects();
    for (kind, name) in &subjects {
        resolver
            .resolve(*kind, name, &base, None)
            .map_err(in_file)?;
    }
    let rules = config.registry.as_ref().map_or(0, |r| r.rules.len());
    Ok(format!(
        "{} subjects, {rules} top-level rules",
        subjects.len()
    ))
}
