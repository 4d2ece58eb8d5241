//! `exitd run`: the long-running agent. For now it brings up the data plane from the
//! configuration and waits for a signal; later roles (reconciler, broker, cluster) start here.

use crate::{
    config::Config,
    dataplane::{self, AttachOutcome, PinDir, XdpProgram},
};
use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};

/// Runs the daemon from a configuration file until SIGTERM or SIGINT; SIGHUP re-reads the
/// file (the broker's per-node settings, resolved through the registry).
pub async fn run_file(path: &std::path::Path) -> Result<()> {
    run_with(Config::load(path)?, Some(path)).await
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    run_with(config, None).await
}

async fn run_with(config: Config, reload_from: Option<&std::path::Path>) -> Result<()> {
    // Handlers first: a SIGTERM during start-up must take the graceful path, not kill us.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGHUP (systemd's ExecReload) must never end the daemon; the roles that can reload
    // (the broker's settings) listen for it themselves.
    let mut hup = signal(SignalKind::hangup())?;
    // In a cluster the gateway is applied and forwarded only while this node owns it.
    let standalone = config.cluster.is_none();
    let network = config.clone();
    if standalone {
        tokio::task::spawn_blocking(move || crate::netlink::reconcile_config(&network)).await??;
    }
    let _follower = if standalone {
        start_forwarder(&config)?
    } else {
        None
    };
    let pins = PinDir::new(&config.dataplane.pin_dir);
    for ifname in &config.dataplane.interfaces {
        match dataplane::attach_xdp(&pins, ifname, XdpProgram::Count, config.dataplane.xdp_mode)? {
            AttachOutcome::Attached { ifindex } => {
                tracing::info!(ifname, ifindex, "data plane attached")
            }
            AttachOutcome::AlreadyAttached { ifindex } => {
                tracing::info!(ifname, ifindex, "data plane already attached; reusing it")
            }
        }
    }
    let mut admin = crate::api::AdminRoutes::default();
    crate::api::daemon_routes(&mut admin, &config, reload_from);
    let _broker = crate::parker::start_for_daemon(&config, reload_from).await?;
    let concentrator = crate::parker::concentrator::start_for_daemon(&config).await?;
    let cluster = crate::cluster::start_for_daemon(&config, &mut admin).await?;
    // Last: the roles above have registered their admin endpoints and status sections.
    crate::api::start(&config.admin, config.dataplane.pin_dir.clone(), admin).await?;
    tracing::info!(
        interfaces = config.dataplane.interfaces.len(),
        "exitd running"
    );
    crate::notify::notify("READY=1");
    crate::notify::spawn_watchdog();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break }
            _ = int.recv() => { tracing::info!("SIGINT received"); break }
            _ = hup.recv() => tracing::info!("SIGHUP received"),
        }
    }
    crate::notify::notify("STOPPING=1");
    crate::cluster::stop_for_daemon(cluster).await;
    crate::parker::concentrator::stop_for_daemon(concentrator).await;
    if config.dataplane.detach_on_exit {
        for ifname in &config.dataplane.interfaces {
            dataplane::detach_xdp(&pins, ifname)?;
        }
        if config.network.is_some() && config.dataplane.forward {
            let plan = crate::plan::cli::plan_for(&config)?;
            dataplane::gateway::detach(&plan, &config.dataplane.pin_dir)?;
        }
        tracing::info!("data plane detached");
    } else {
        tracing::info!("leaving the data plane attached; forwarding continues");
    }
    Ok(())
}

/// Attaches the XDP forwarder to the gateway of the configured network and starts following
/// neighbour changes; None when there is no network or forwarding is off.
fn start_forwarder(config: &Config) -> Result<Option<std::thread::JoinHandle<Result<()>>>> {
    if config.network.is_none() || !config.dataplane.forward {
        return Ok(None);
    }
    let plan = crate::plan::cli::plan_for(config)?;
    if !plan.dataplane.xdp_forward {
        tracing::info!(gateway = %plan.dataplane.namespace, "XDP forwarding is off (registry: gateway.xdp_forward)");
        return Ok(None);
    }
    let pin_root = &config.dataplane.pin_dir;
    dataplane::gateway::attach(&plan, pin_root, config.dataplane.xdp_mode)?;
    let report = dataplane::gateway::sync(&plan, pin_root, std::time::Duration::from_secs(2))?;
    tracing::info!(?report, gateway = %plan.dataplane.namespace, "XDP forwarder running");
    Ok(Some(dataplane::gateway::follow(plan, pin_root)))
}
