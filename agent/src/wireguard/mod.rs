//! WireGuard devices of the ExitPoints, behind a small trait: the kernel module in
//! production, userspace boringtun where the kernel has no WireGuard (tests, CI).
//!
//! Every call acts on the calling thread's network namespace, so the reconciler calls these
//! from the namespace's own thread.

use crate::plan::WireguardPlan;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};
use wireguard_control::{
    AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder,
};

/// Which WireGuard implementation runs the ExitPoints' interfaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Kernel,
    /// boringtun-cli (or `$WG_USERSPACE_IMPLEMENTATION`), started by exitd.
    Userspace,
}

/// Creates, configures and removes one WireGuard device in the current namespace.
pub trait WireguardBackend: Send + Sync {
    /// Makes sure the device exists; true if it had to be created.
    fn ensure_device(&self, name: &str) -> Result<bool>;
    /// The device's current configuration, if it exists.
    fn state(&self, name: &str) -> Result<Option<DeviceState>>;
    fn apply(&self, name: &str, update: DeviceUpdate) -> Result<()>;
    /// Stops whatever exitd started for the device (the kernel's goes with its namespace).
    fn remove(&self, name: &str) -> Result<()>;
    /// Every peer's key, allowed IPs and last handshake (None: never).
    fn handshakes(&self, name: &str) -> Result<Vec<PeerHandshake>>;
}

/// A peer's last handshake, for liveness (Parker concentrators count and expire peers by it).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHandshake {
    pub public_key: Key,
    pub allowed_ips: Vec<AllowedIp>,
    pub last_handshake: Option<std::time::SystemTime>,
}

/// What the reconciler compares: the device's key, port and peers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    /// The public key of the device's private key, if one is set.
    pub own_public_key: Option<Key>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    pub public_key: Key,
    pub endpoint: Option<std::net::SocketAddr>,
    pub allowed_ips: Vec<AllowedIp>,
}

impl From<Device> for DeviceState {
    fn from(device: Device) -> Self {
        DeviceState {
            own_public_key: device
                .public_key
                .or(device.private_key.map(|k| k.get_public())),
            listen_port: device.listen_port,
            peers: device
                .peers
                .into_iter()
                .map(|p| PeerState {
                    public_key: p.config.public_key,
                    endpoint: p.config.endpoint,
                    allowed_ips: p.config.allowed_ips,
                })
                .collect(),
        }
    }
}

pub fn backend(kind: BackendKind, state_dir: &Path) -> Box<dyn WireguardBackend> {
    match kind {
        BackendKind::Kernel => Box::new(KernelBackend),
        BackendKind::Userspace => Box::new(UserspaceBackend {
            state_dir: state_dir.to_path_buf(),
        }),
    }
}

fn iface(name: &str) -> Result<InterfaceName> {
    InterfaceName::from_str(name).map_err(|e| anyhow::anyhow!("interface name {name:?}: {e}"))
}

pub struct KernelBackend;

impl WireguardBackend for KernelBackend {
    fn ensure_device(&self, name: &str) -> Result<bool> {
        if crate::iface::index_of(name).is_ok() {
            return Ok(false);
        }
        // The kernel backend creates the link when applying to a missing device.
        DeviceUpdate::new()
            .apply(&iface(name)?, Backend::Kernel)
            .with_context(|| format!("cannot create WireGuard device {name} (kernel)"))?;
        Ok(true)
    }

    fn state(&self, name: &str) -> Result<Option<DeviceState>> {
        if crate::iface::index_of(name).is_err() {
            return Ok(None);
        }
        let device = Device::get(&iface(name)?, Backend::Kernel)
            .with_context(|| format!("cannot read WireGuard device {name}"))?;
        Ok(Some(device.into()))
    }

    fn apply(&self, name: &str, update: DeviceUpdate) -> Result<()> {
        update
            .apply(&iface(name)?, Backend::Kernel)
            .with_context(|| format!("cannot configure WireGuard device {name}"))
    }

    fn remove(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    fn handshakes(&self, name: &str) -> Result<Vec<PeerHandshake>> {
        let device = Device::get(&iface(name)?, Backend::Kernel)
            .with_context(|| format!("cannot read WireGuard device {name}"))?;
        Ok(device
            .peers
            .into_iter()
            .map(|p| PeerHandshake {
                public_key: p.config.public_key,
                allowed_ips: p.config.allowed_ips,
                last_handshake: p.stats.last_handshake_time,
            })
            .collect())
    }
}

/// boringtun-cli in the foreground, one process per device, its pid kept in
/// `{state_dir}/{name}.pid` so exitd stops exactly the process it started.
pub struct UserspaceBackend {
    pub state_dir: PathBuf,
}

const SOCKET_DIR: &str = "/var/run/wireguard";

impl UserspaceBackend {
    fn pid_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.pid"))
    }

    fn program() -> String {
        std::env::var("WG_USERSPACE_IMPLEMENTATION").unwrap_or_else(|_| "boringtun-cli".into())
    }

    fn running(name: &str) -> bool {
        let socket = Path::new(SOCKET_DIR).join(format!("{name}.sock"));
        std::os::unix::net::UnixStream::connect(socket).is_ok()
            && crate::iface::index_of(name).is_ok()
    }
}

impl WireguardBackend for UserspaceBackend {
    fn ensure_device(&self, name: &str) -> Result<bool> {
        if Self::running(name) {
            return Ok(false);
        }
        tracing::info!(name, "starting userspace WireGuard");
        std::fs::create_dir_all(&self.state_dir)?;
        let program = Self::program();
        let log = self.state_dir.join(format!("{name}.log"));
        let child = Command::new(&program)
            .args(["-f", "--disable-drop-privileges", "--log"])
            .arg(&log)
            .arg(name)
            .env("WG_SUDO", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program} for {name}"))?;
        std::fs::write(self.pid_file(name), child.id().to_string())?;
        // Reap the child when it ends, so a long-running daemon keeps no zombies.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Self::running(name) {
            if Instant::now() > deadline {
                bail!(
                    "{program} did not bring up {name} within 10 s (log: {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    fn apply(&self, name: &str, update: DeviceUpdate) -> Result<()> {
        update
            .apply(&iface(name)?, Backend::Userspace)
            .with_context(|| format!("cannot configure WireGuard device {name}"))
    }

    /// Read over the UAPI socket directly: boringtun answers `get` with `own_public_key=`
    /// instead of the private key, which wireguard-control reports on stdout and drops.
    fn state(&self, name: &str) -> Result<Option<DeviceState>> {
        if !Self::running(name) {
            return Ok(None);
        }
        Ok(Some(parse_uapi(&uapi_get(name)?)))
    }

    fn handshakes(&self, name: &str) -> Result<Vec<PeerHandshake>> {
        let lines = uapi_get(name)?;
        let mut peers: Vec<PeerHandshake> = parse_uapi(&lines)
            .peers
            .into_iter()
            .map(|p| PeerHandshake {
                public_key: p.public_key,
                allowed_ips: p.allowed_ips,
                last_handshake: None,
            })
            .collect();
        let mut index = None;
        for (key, value) in lines.iter().filter_map(|l| l.split_once('=')) {
            match key {
                "public_key" => index = Some(index.map_or(0, |i| i + 1)),
                "last_handshake_time_sec" => {
                    let secs: u64 = value.parse().unwrap_or(0);
                    if let Some(peer) = index.and_then(|i| peers.get_mut(i))
                        && secs > 0
                    {
                        peer.last_handshake = Some(handshake_time(secs));
                    }
                }
                _ => {}
            }
        }
        Ok(peers)
    }

    fn remove(&self, name: &str) -> Result<()> {
        let pid_file = self.pid_file(name);
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: kill with a pid exitd recorded when it started the process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_file(Path::new(SOCKET_DIR).join(format!("{name}.sock")));
        std::fs::remove_file(&pid_file).with_context(|| format!("{}", pid_file.display()))
    }
}

/// A UAPI `last_handshake_time_sec` as a point in time. The protocol says seconds since the
/// epoch; boringtun answers with the seconds *since the handshake* instead. A value before
/// 2001 cannot be a real handshake time, so it is taken as such an age.
fn handshake_time(secs: u64) -> std::time::SystemTime {
    const EPOCH_2001: u64 = 978_307_200;
    if secs >= EPOCH_2001 {
        return std::time::UNIX_EPOCH + Duration::from_secs(secs);
    }
    let now = std::time::SystemTime::now();
    now.checked_sub(Duration::from_secs(secs)).unwrap_or(now)
}

/// The lines of a UAPI `get` answer from a userspace device.
fn uapi_get(name: &str) -> Result<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    let socket = Path::new(SOCKET_DIR).join(format!("{name}.sock"));
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"get=1\n\n")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.with_context(|| format!("reading {}", socket.display()))?;
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    Ok(lines)
}

/// The answer to a UAPI `get` (wireguard.com/xplatform), as far as the reconciler needs it.
fn parse_uapi(lines: &[String]) -> DeviceState {
    let mut state = DeviceState::default();
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let peer = state.peers.last_mut();
        match (key, peer) {
            ("own_public_key", _) => state.own_public_key = Key::from_hex(value).ok(),
            ("private_key", _) => {
                state.own_public_key = Key::from_hex(value).ok().map(|k| k.get_public())
            }
            ("listen_port", _) => state.listen_port = value.parse().ok(),
            ("public_key", _) => {
                if let Ok(public_key) = Key::from_hex(value) {
                    state.peers.push(PeerState {
                        public_key,
                        endpoint: None,
                        allowed_ips: Vec::new(),
                    });
                }
            }
            ("endpoint", Some(peer)) => peer.endpoint = value.parse().ok(),
            ("allowed_ip", Some(peer)) => {
                if let Ok(net) = value.parse::<ipnet::IpNet>() {
                    peer.allowed_ips.push(AllowedIp {
                        address: net.addr(),
                        cidr: net.prefix_len(),
                    });
                }
            }
            _ => {}
        }
    }
    state
}

/// The ExitPoint's private key, created (mode 0600) on first use.
pub fn load_or_create_key(file: &Path) -> Result<Key> {
    if let Ok(text) = std::fs::read_to_string(file) {
        return Key::from_base64(text.trim()).map_err(|_| {
            anyhow::anyhow!("{} does not hold a base64 WireGuard key", file.display())
        });
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = Key::generate_private();
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    writeln!(out, "{}", key.to_base64())?;
    Ok(key)
}

fn allowed(plan_ips: &[ipnet::IpNet]) -> Vec<AllowedIp> {
    plan_ips
        .iter()
        .map(|net| AllowedIp {
            address: net.addr(),
            cidr: net.prefix_len(),
        })
        .collect()
}

/// A peer as comparable text: key, sorted allowed IPs, and the endpoint if the plan has one.
fn peer_fingerprint(
    key: &Key,
    ips: &[AllowedIp],
    endpoint: Option<std::net::SocketAddr>,
) -> String {
    let mut ips: Vec<String> = ips
        .iter()
        .map(|a| format!("{}/{}", a.address, a.cidr))
        .collect();
    ips.sort();
    let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_default();
    format!("{} {} {endpoint}", key.to_base64(), ips.join(","))
}

/// Makes the device match the plan, touching only what differs: a removed network
/// resource removes its peer and leaves the other peers' sessions alone. Returns what
/// changed.
pub fn reconcile(
    backend: &dyn WireguardBackend,
    plan: &WireguardPlan,
    private_key: &Key,
) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    if backend.ensure_device(&plan.link)? {
        changes.push(format!("created WireGuard device {}", plan.link));
    }
    let Some(device) = backend.state(&plan.link)? else {
        bail!("WireGuard device {} vanished", plan.link);
    };
    let mut update = DeviceUpdate::new();
    let mut dirty = false;
    if device.own_public_key != Some(private_key.get_public())
        || device.listen_port != Some(plan.listen_port)
    {
        update = update
            .set_private_key(private_key.clone())
            .set_listen_port(plan.listen_port);
        changes.push(format!(
            "{}: key and listen port {}",
            plan.link, plan.listen_port
        ));
        dirty = true;
    }
    let current: BTreeSet<String> = device
        .peers
        .iter()
        .map(|p| {
            let planned_endpoint = plan
                .peers
                .iter()
                .find(|pp| Key::from_base64(&pp.public_key).ok().as_ref() == Some(&p.public_key))
                .and_then(|pp| pp.endpoint);
            peer_fingerprint(
                &p.public_key,
                &p.allowed_ips,
                planned_endpoint.and(p.endpoint),
            )
        })
        .collect();
    for peer in &device.peers {
        let wanted = plan
            .peers
            .iter()
            .any(|pp| Key::from_base64(&pp.public_key).ok().as_ref() == Some(&peer.public_key));
        if !wanted {
            update = update.remove_peer_by_key(&peer.public_key);
            changes.push(format!(
                "{}: removed peer {}",
                plan.link,
                peer.public_key.to_base64()
            ));
            dirty = true;
        }
    }
    for peer in &plan.peers {
        let key = Key::from_base64(&peer.public_key)
            .map_err(|_| anyhow::anyhow!("peer key {:?} is not base64", peer.public_key))?;
        let ips = allowed(&peer.allowed_ips);
        if current.contains(&peer_fingerprint(&key, &ips, peer.endpoint)) {
            continue;
        }
        let mut builder = PeerConfigBuilder::new(&key)
            .replace_allowed_ips()
            .add_allowed_ips(&ips);
        if let Some(endpoint) = peer.endpoint {
            builder = builder.set_endpoint(endpoint);
        }
        if plan.keepalive > 0 {
            builder = builder.set_persistent_keepalive_interval(plan.keepalive);
        }
        update = update.add_peer(builder);
        changes.push(format!(
            "{}: peer {} ({})",
            plan.link, peer.public_key, peer.prefix
        ));
        dirty = true;
    }
    if dirty {
        backend.apply(&plan.link, update)?;
    }
    Ok(changes)
}

#[cfg(test)]
mod handshake_tests {
    use super::*;

    #[test]
    fn boringtun_ages_and_epoch_times_both_read_as_points_in_time() {
        let epoch = handshake_time(1_795_314_324);
        assert_eq!(
            epoch,
            std::time::UNIX_EPOCH + Duration::from_secs(1_795_314_324)
        );
        let age = std::time::SystemTime::now()
            .duration_since(handshake_time(30))
            .unwrap();
        // The wall clock is not monotonic: allow it a step back.
        assert!(
            age > Duration::from_secs(29) && age < Duration::from_secs(60),
            "{age:?}"
        );
    }
}
