//! `exitd broker` (standalone broker) and `exitd keygen` (signify key pair for the nodes).

use super::{BrokerConfig, http, sign};
use crate::{config::Config, registry::RegistryConfig};
use anyhow::{Context, Result};
use ipnet::Ipv6Net;
use std::{
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio::signal::unix::{SignalKind, signal};

/// Run only the Parker broker: unprivileged, no eBPF; etcd only with `[parker.etcd]` or the
/// etcd IPAM.
#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// exitd's TOML configuration; its [parker] section configures the broker.
    #[arg(
        long,
        required_unless_present = "wgkex_config",
        conflicts_with = "wgkex_config"
    )]
    pub config: Option<PathBuf>,
    /// An existing wgkex.yaml instead (unknown or unsupported keys are reported).
    #[arg(long)]
    pub wgkex_config: Option<PathBuf>,
    /// Listen address, overriding the file (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded IPAM store, overriding the file.
    #[arg(long)]
    pub ipam_dir: Option<PathBuf>,
    /// Parent prefix of the embedded IPAM, overriding the file (wgkex.yaml has none).
    #[arg(long)]
    pub ipam_parent: Option<Ipv6Net>,
}

/// Create a signify key pair (no passphrase) for signing broker responses.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Secret key file (signify format, mode 0600); use it as parker.signing_key_file.
    #[arg(long, default_value = "broker.sec")]
    pub secret: PathBuf,
    /// Public key file (signify format) for the nodes' `usign -V -p`.
    #[arg(long, default_value = "broker.pub")]
    pub public: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// The broker's section and the registry section of the configuration.
fn broker_config(args: &BrokerArgs) -> Result<(BrokerConfig, Option<RegistryConfig>)> {
    let (mut config, registry) = match (&args.config, &args.wgkex_config) {
        (Some(path), _) => {
            let file = Config::load(path)?;
            let mut parker = file
                .parker
                .with_context(|| format!("{} has no [parker] section", path.display()))?;
            parker.inherit_cluster(file.cluster.as_ref());
            (parker, file.registry)
        }
        (None, Some(path)) => {
            let imported = super::wgkex::load(path)?;
            for finding in &imported.findings {
                tracing::warn!("{}: {finding}", path.display());
                eprintln!("warning: {}: {finding}", path.display());
            }
            (imported.config, None)
        }
        (None, None) => anyhow::bail!("give --config or --wgkex-config"),
    };
    apply_overrides(args, &mut config);
    Ok((config, registry))
}

fn apply_overrides(args: &BrokerArgs, config: &mut BrokerConfig) {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &args.ipam_dir {
        config.ipam.path = dir.clone();
    }
    if let Some(parent) = args.ipam_parent {
        config.ipam.parent = parent;
    }
}

/// SIGHUP: re-reads `path` (with `adjust` applied to its `[parker]`, e.g. command-line
/// overrides) and applies the new per-node settings atomically, or keeps the running ones
/// and logs why. `hup` is installed by the caller before it announces readiness.
pub(crate) async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    broker: Arc<http::Broker>,
    path: PathBuf,
    adjust: impl Fn(&mut BrokerConfig) + Send + 'static,
) {
    while hup.recv().await.is_some() {
        let result = Config::load(&path).and_then(|mut file| {
            if let Some(parker) = file.parker.as_mut() {
                adjust(parker);
            }
            broker.reload(&file)
        });
        match result {
            Ok(()) => tracing::info!(file = %path.display(), "configuration reloaded"),
            Err(e) => tracing::error!(
                file = %path.display(),
                "configuration reload failed; keeping the running configuration: {e:#}"
            ),
        }
    }
}

/// `exitd broker`: serves until SIGTERM/SIGINT. Prints `listening on http://ADDR` on stdout
/// once ready (with the real port when 0 was asked for).
pub fn run_broker(args: BrokerArgs) -> Result<()> {
    let (config, registry) = broker_config(&args)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let args = Arc::new(args);
    runtime.block_on(async {
        let broker = Arc::new(http::Broker::with_registry(
            &config,
            registry.as_ref(),
            true,
        )?);
        // Installed before "listening" is printed, so a SIGHUP right after cannot kill us.
        let reloader = match args.config.clone() {
            Some(path) => {
                let hup = signal(SignalKind::hangup())?;
                let args = Arc::clone(&args);
                let adjust = move |parker: &mut BrokerConfig| apply_overrides(&args, parker);
                Some(tokio::spawn(reload_on_sighup(
                    hup,
                    Arc::clone(&broker),
                    path,
                    adjust,
                )))
            }
            None => None,
        };
        let listener = http::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "Parker broker listening");
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on http://{addr}")?;
        stdout.flush()?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let served = http::serve(listener, broker, shutdown).await;
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        served
    })
}

/// `exitd keygen`.
pub fn keygen(args: KeygenArgs) -> Result<()> {
    let pair = sign::generate_signify("exitd broker")?;
    write_new(&args.secret, &pair.secret_file, 0o600, args.force)?;
    write_new(&args.public, &pair.public_file, 0o644, args.force)?;
    println!(
        "secret key: {} (parker.signing_key_file)",
        args.secret.display()
    );
    println!(
        "public key: {} (install on the nodes)",
        args.public.display()
    );
    Ok(())
}

fn write_new(path: &Path, contents: &str, mode: u32, force: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (exists? use --force)", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
