//! The concentrator's node-facing WireGuard interface and the routes to the nodes' prefixes.
//!
//! WireGuard and netlink calls act on the calling thread's network namespace, so one thread
//! enters the configured namespace once and runs every operation; async callers hand it jobs
//! and await the answers.

use crate::{
    netlink::observe,
    wireguard::{self, BackendKind, PeerHandshake, WireguardBackend},
};
use anyhow::{Context, Result, anyhow};
use ipnet::{IpNet, Ipv6Net};
use rtnetlink::{Handle, RouteMessageBuilder, packet_route::route::RouteProtocol};
use std::{net::Ipv6Addr, os::fd::AsRawFd, path::PathBuf, sync::mpsc};
use tokio::sync::oneshot;
use wireguard_control::{DeviceUpdate, Key, PeerConfigBuilder};

/// What the device is made of.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub interface: String,
    pub namespace: Option<String>,
    pub backend: BackendKind,
    pub state_dir: PathBuf,
    pub private_key: Key,
    pub listen_port: u16,
    pub link_address: Ipv6Addr,
}

/// The interface as the device thread holds it.
struct Ctx {
    backend: Box<dyn WireguardBackend>,
    interface: String,
    index: u32,
    runtime: tokio::runtime::Runtime,
    netlink: Handle,
}

type Job = Box<dyn FnOnce(&mut Ctx) + Send>;

/// Handle to the device thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Device {
    jobs: mpsc::Sender<Job>,
}

impl Device {
    /// Starts the thread and brings the interface up (created if missing, key, port, link
    /// address); fails if any of that fails.
    pub async fn start(settings: DeviceSettings) -> Result<Device> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = oneshot::channel();
        let ns = open_namespace(settings.namespace.as_deref())?;
        std::thread::Builder::new()
            .name("concentrator-wg".into())
            .spawn(move || {
                let ctx = enter(ns.as_ref()).and_then(|()| set_up(&settings));
                match ctx {
                    Ok(mut ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        for job in queue {
                            job(&mut ctx);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        ready.await.context("the WireGuard thread ended")??;
        Ok(Device { jobs })
    }

    async fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Ctx) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |ctx| {
                let _ = tx.send(job(ctx));
            }))
            .map_err(|_| anyhow!("the WireGuard thread is gone"))?;
        rx.await.context("the WireGuard thread dropped a job")?
    }

    /// Adds (or updates) the node's peer with its prefix as allowed IPs, then the route.
    pub async fn add_peer(&self, key: Key, prefix: Ipv6Net) -> Result<()> {
        self.call(move |ctx| {
            let peer = PeerConfigBuilder::new(&key)
                .replace_allowed_ips()
                .add_allowed_ip(prefix.addr().into(), prefix.prefix_len());
            ctx.backend
                .apply(&ctx.interface, DeviceUpdate::new().add_peer(peer))?;
            ctx.replace_route(prefix)
        })
        .await
    }

    /// Removes the route first, so nothing is routed into a peer that no longer exists,
    /// then the peer.
    pub async fn remove_peer(&self, key: Key, prefix: Ipv6Net) -> Result<()> {
        self.call(move |ctx| {
            ctx.delete_route(prefix)?;
            tracing::info!(peer = %key.to_base64(), %prefix, "removed the route to the node");
            ctx.backend
                .apply(&ctx.interface, DeviceUpdate::new().remove_peer_by_key(&key))?;
            tracing::info!(peer = %key.to_base64(), "removed the node's peer");
            Ok(())
        })
        .await
    }

    /// The interface's index in its namespace.
    pub async fn ifindex(&self) -> Result<u32> {
        self.call(|ctx| Ok(ctx.index)).await
    }

    /// Every peer with its allowed IPs and last handshake.
    pub async fn peers(&self) -> Result<Vec<PeerHandshake>> {
        self.call(|ctx| ctx.backend.handshakes(&ctx.interface))
            .await
    }
}

fn open_namespace(name: Option<&str>) -> Result<Option<std::fs::File>> {
    name.map(|name| {
        let path = crate::netlink::netns::path(name);
        std::fs::File::open(&path)
            .with_context(|| format!("network namespace {name} does not exist"))
    })
    .transpose()
}

fn enter(ns: Option<&std::fs::File>) -> Result<()> {
    if let Some(file) = ns {
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot enter the namespace");
        }
    }
    Ok(())
}

fn set_up(settings: &DeviceSettings) -> Result<Ctx> {
    let backend = wireguard::backend(settings.backend, &settings.state_dir);
    let name = &settings.interface;
    if backend.ensure_device(name)? {
        tracing::info!(
            interface = name,
            "created the concentrator's WireGuard device"
        );
    }
    backend.apply(
        name,
        DeviceUpdate::new()
            .set_private_key(settings.private_key.clone())
            .set_listen_port(settings.listen_port),
    )?;
    let index = crate::iface::index_of(name)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let netlink = runtime.block_on(async {
        let handle = crate::netlink::netns::connect()?;
        observe::set_up(&handle, index).await?;
        let link = IpNet::new(settings.link_address.into(), 64)?;
        let present = observe::addresses(&handle)
            .await?
            .iter()
            .any(|(i, net, _)| *i == index && net.addr() == link.addr());
        if !present {
            observe::add_address(&handle, index, link).await?;
        }
        Ok::<_, anyhow::Error>(handle)
    })?;
    Ok(Ctx {
        backend,
        interface: name.clone(),
        index,
        runtime,
        netlink,
    })
}

impl Ctx {
    fn route(&self, prefix: Ipv6Net) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .output_interface(self.index)
            .protocol(RouteProtocol::Static)
            .build()
    }

    /// `ip -6 route replace <prefix> dev <interface>`.
    fn replace_route(&self, prefix: Ipv6Net) -> Result<()> {
        let request = self.netlink.route().add(self.route(prefix)).replace();
        self.runtime
            .block_on(request.execute())
            .with_context(|| format!("cannot route {prefix} to {}", self.interface))
    }

    /// Deletes the route; one that is already gone is fine.
    fn delete_route(&self, prefix: Ipv6Net) -> Result<()> {
        let request = self.netlink.route().del(self.route(prefix));
        match self.runtime.block_on(request.execute()) {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            other => other.with_context(|| format!("cannot delete the route to {prefix}")),
        }
    }
}
