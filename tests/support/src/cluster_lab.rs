//! A small failover cluster of real `exitd run` processes, for the takeover tests and the
//! failover benchmark. Every node's uplink is a veth into a shared "upstream" namespace,
//! where the far ends are bridged (`br0`) and the bridge carries the upstream router's
//! addresses and the routes `exitd plan upstream` prints. All nodes serve exit node 1 with
//! one tenant ExitPoint (`2a02:1802:5e:1abc::1`); etcd decides which of them forwards.
//!
//! ```text
//!   upstream: br0 ─┬─ u0 ═ xl…u → [n0: gw ns ── ExitPoint ns]
//!                  ├─ u1 ═ xl…u → [n1: gw ns ── ExitPoint ns]
//!                  └─ u2 ═ xl…u → [n2: gw ns ── ExitPoint ns]
//! ```
//!
//! The daemons run in the test's own namespace (where etcd listens on loopback); each moves
//! its uplink into its own gateway namespace, as on a real machine. Each node has its own
//! allocation number and namespace prefix (names are machine-wide), the same addresses.
//! Needs root and `/usr/bin/etcd` (the caller starts etcd).

use crate::{NetNs, TestPins, netns::run};
use anyhow::{Context, Result, bail};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The ExitPoint address the upstream namespace pings.
pub const EXITPOINT: &str = "2a02:1802:5e:1abc::1";
/// The gateway's public IPv4 (GWPubIP4), announced with gratuitous ARP on takeover.
pub const GATEWAY_IP4: &str = "192.0.2.10";
/// GWPubLL of exit node 1, the upstream routes' next hop.
pub const GATEWAY_LL: &str = "fe80::1000:0:0:1";
/// GWPubIP6 of exit node 1: present on exactly the forwarding node's uplink.
pub const GATEWAY_IP6: &str = "2a02:1802:5e:0:1000::1";

/// One exit node of the lab.
pub struct LabNode {
    pub name: String,
    pub alloc_nr: u32,
    /// The uplink's name before exitd moves it into the gateway namespace.
    uplink: String,
    prefix: String,
    pins: TestPins,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The shared upstream segment and the nodes on it.
pub struct Lab {
    exitd: PathBuf,
    pub upstream: NetNs,
    pub nodes: Vec<LabNode>,
    dir: PathBuf,
    upstream_pins: Vec<TestPins>,
}

impl LabNode {
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The gateway namespace and the uplink's name in it.
    pub fn gateway(&self) -> (String, String) {
        (
            format!("{}gw-1-{}", self.prefix, self.alloc_nr),
            format!("pub-1-{}", self.alloc_nr),
        )
    }

    /// Whether this node forwards for the gateway, as its own kernel shows it: the uplink of
    /// its gateway namespace carries GWPubIP6 (a fenced uplink has no addresses).
    pub fn forwarding(&self) -> bool {
        let (ns, uplink) = self.gateway();
        Command::new("ip")
            .args(["-n", &ns, "-6", "-o", "addr", "show", "dev", &uplink])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(GATEWAY_IP6))
    }

    /// The MAC of the node's uplink (in its gateway namespace), lowercase `aa:bb:…`.
    pub fn uplink_mac(&self) -> Option<String> {
        let (ns, uplink) = self.gateway();
        let out = Command::new("ip")
            .args(["-n", &ns, "-o", "link", "show", "dev", &uplink])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|w| *w == "link/ether")?;
        words.next().map(str::to_string)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Lab {
    /// Builds the topology for `count` nodes registered in the etcd at `endpoint` under
    /// cluster `cluster` with lease TTL `ttl` seconds. Starts nothing yet.
    pub fn new(exitd: &Path, endpoint: &str, cluster: &str, count: usize, ttl: u64) -> Result<Lab> {
        Lab::with_endpoints(exitd, &vec![endpoint.to_string(); count], cluster, ttl)
    }

    /// As [`Lab::new`], node `i` reaching etcd at `endpoints[i]` (e.g. through a proxy).
    pub fn with_endpoints(
        exitd: &Path,
        endpoints: &[String],
        cluster: &str,
        ttl: u64,
    ) -> Result<Lab> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let upstream = NetNs::new("lup")?;
        upstream.ip(&["link", "add", "br0", "type", "bridge"])?;
        upstream.ip(&["link", "set", "br0", "up"])?;
        for addr in ["fe80::1/64", "2a02:1802:5e::1/64"] {
            upstream.ip(&["addr", "add", addr, "dev", "br0", "nodad"])?;
        }
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(crate::unique_name("exitd-lab-"));
        std::fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            exitd: exitd.to_path_buf(),
            upstream,
            nodes: Vec::new(),
            dir,
            upstream_pins: Vec::new(),
        };
        for (i, endpoint) in endpoints.iter().enumerate() {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 30;
            let alloc_nr = 60_000 + (pid % 300) * 30 + n;
            lab.add_node(i, alloc_nr, endpoint, cluster, ttl)?;
        }
        let routes = lab.exitd(
            &["plan", "upstream", "--port", "br0", "--config"],
            &lab.nodes[0].config,
        )?;
        lab.upstream.add_upstream_routes(&routes)?;
        Ok(lab)
    }

    fn add_node(
        &mut self,
        i: usize,
        alloc_nr: u32,
        endpoint: &str,
        cluster: &str,
        ttl: u64,
    ) -> Result<()> {
        let name = format!("n{i}");
        let port = format!("u{i}");
        let uplink = format!("xl{alloc_nr}u");
        run(Command::new("ip")
            .args(["link", "add", &uplink, "type", "veth", "peer", "name"])
            .args([&port, "netns", self.upstream.name()]))?;
        self.upstream.ip(&["link", "set", &port, "master", "br0"])?;
        self.upstream.ip(&["link", "set", &port, "up"])?;
        // Frames the gateway's XDP redirects into its uplink veth are only taken by the peer
        // when the peer runs XDP too.
        let port_pins = TestPins::new()?;
        let mut attach = self.upstream.command(&self.exitd);
        attach.args(["dataplane", "attach", "--iface", &port, "--pin-dir"]);
        run(attach.arg(port_pins.path()))?;
        self.upstream_pins.push(port_pins);
        let node_dir = self.dir.join(&name);
        std::fs::create_dir_all(&node_dir)?;
        let pins = TestPins::new()?;
        let prefix = format!("xl{alloc_nr}-");
        let config = node_dir.join("exitd.toml");
        let text = format!(
            "[dataplane]\npin_dir = {pins:?}\n[admin]\nenabled = false\n\
             [network]\nallocation = \"2a02:1802:5e::/48\"\nexit_node = 1\nalloc_nr = {alloc_nr}\n\
             uplink = \"{uplink}\"\ngateway_ipv4 = \"{GATEWAY_IP4}/24\"\nnamespace_prefix = \"{prefix}\"\nkey_dir = {keys:?}\n\
             wireguard = \"userspace\"\nstate_dir = {state:?}\n\
             [[network.tenants]]\nname = \"alice\"\n[[network.tenants.resources]]\n\
             node = \"exit\"\nprefix = \"2a02:1802:5e:1abc::/64\"\nexitpoint = true\n\
             [cluster]\nendpoints = [\"{endpoint}\"]\nname = \"{cluster}\"\nnode = \"{name}\"\n\
             lease_ttl = {ttl}\ngateways = [1]\n",
            pins = pins.path(),
            keys = node_dir.join("keys"),
            state = node_dir.join("state"),
        );
        std::fs::write(&config, text)?;
        self.nodes.push(LabNode {
            log: node_dir.join("exitd.log"),
            name,
            uplink,
            alloc_nr,
            prefix,
            pins,
            config,
            child: None,
        });
        Ok(())
    }

    fn exitd(&self, args: &[&str], config: &Path) -> Result<String> {
        let out = run(Command::new(&self.exitd).args(args).arg(config))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `exitd run` on node `i` and waits until it reports "exitd running".
    pub fn start(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(&node.log)?;
        let child = Command::new(&self.exitd)
            .args(["run", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start exitd run")?;
        node.child = Some(child);
        let ready = crate::poll_until(Duration::from_secs(30), || {
            let node = &mut self.nodes[i];
            if !node.running() {
                return Some(false);
            }
            node.log().contains("exitd running").then_some(true)
        });
        if ready != Some(true) {
            bail!("node {i} did not start:\n{}", self.nodes[i].log());
        }
        Ok(())
    }

    /// SIGKILL (a crash), then what systemd's ExecStopPost does: `exitd cluster fence`.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.exitd(&["cluster", "fence", "--config"], &self.nodes[i].config)
            .map(drop)
    }

    /// SIGTERM (drain); returns once the process exited, with its success.
    pub fn terminate(&mut self, i: usize) -> Result<bool> {
        let Some(mut child) = self.nodes[i].child.take() else {
            bail!("node {i} is not running");
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        Ok(child.wait()?.success())
    }

    /// SIGTERM without waiting (the caller polls while the node drains).
    pub fn send_term(&mut self, i: usize) -> Result<()> {
        let pid = self.nodes[i].pid().context("node is not running")?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        Ok(())
    }

    /// Waits for node `i`'s process to end; true if it exited successfully.
    pub fn wait(&mut self, i: usize) -> Result<bool> {
        let mut child = self.nodes[i].child.take().context("node is not running")?;
        Ok(child.wait()?.success())
    }

    /// Names of the nodes whose kernel forwards for the gateway.
    pub fn forwarding(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.forwarding())
            .map(|n| n.name.clone())
            .collect()
    }

    /// The upstream router's neighbour entry for the gateway's link-local (GWPubLL of exit
    /// node 1), as `ip -6 neigh` prints it.
    pub fn upstream_neighbour(&self) -> String {
        self.upstream
            .command("ip")
            .args(["-6", "neigh", "show", GATEWAY_LL, "dev", "br0"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Captures on the upstream bridge, in the background, until `timeout` passes or both
    /// announcements of a takeover arrived: an unsolicited neighbour advertisement (ICMPv6
    /// 136, override set, solicited clear, to ff02::1) for GWPubLL and a gratuitous ARP for
    /// GWPubIP4; returns the MACs that sent them (NA, ARP).
    pub fn capture_announcements(
        &self,
        timeout: Duration,
    ) -> std::thread::JoinHandle<(Option<String>, Option<String>)> {
        let ns = std::fs::File::open(self.upstream.path());
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let (mut na, mut arp) = (None, None);
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let entered =
                ns.is_ok_and(|ns| unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 });
            let (Some(socket), true) = (RawCapture::open(), entered) else {
                return (na, arp);
            };
            let ll: std::net::Ipv6Addr = GATEWAY_LL
                .parse()
                .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            let ip4: std::net::Ipv4Addr = GATEWAY_IP4
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline && (na.is_none() || arp.is_none()) {
                let Some(frame) = socket.next() else { continue };
                let sender = || {
                    frame[6..12]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                };
                if is_unsolicited_na(&frame, &ll) {
                    na = Some(sender());
                } else if is_gratuitous_arp(&frame, &ip4) {
                    arp = Some(sender());
                }
            }
            (na, arp)
        })
    }

    /// One echo request from upstream to the ExitPoint, answered within `wait`.
    pub fn ping(&self, wait: Duration) -> bool {
        let wait = format!("{:.2}", wait.as_secs_f64());
        self.upstream
            .command("ping")
            .args(["-n", "-q", "-c", "1", "-W", &wait, EXITPOINT])
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// Polls every few milliseconds until a ping answers or `timeout` passes, calling `check`
    /// before each ping (e.g. the "never two forwarders" assertion); the time it took.
    pub fn until_ping(&self, timeout: Duration, mut check: impl FnMut(&Lab)) -> Option<Duration> {
        let begin = Instant::now();
        while begin.elapsed() < timeout {
            check(self);
            if self.ping(Duration::from_millis(200)) {
                return Some(begin.elapsed());
            }
        }
        None
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for node in &self.nodes {
            stop_recorded_processes(&self.dir.join(&node.name).join("state"));
            delete_namespaces(&node.prefix);
            // Still here only if exitd never moved it into its gateway namespace.
            let _ = Command::new("ip")
                .args(["link", "del", &node.uplink])
                .output();
            let _ = &node.pins;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the userspace WireGuard processes exitd recorded (`*.pid` files in its state dir).
pub fn stop_recorded_processes(state: &Path) {
    let Ok(entries) = std::fs::read_dir(state) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "pid")
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            // SAFETY: a pid exitd recorded for a process it started in this lab.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// Deletes the namespaces exitd made for a node (named with its prefix).
fn delete_namespaces(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// An unsolicited NA for `target`: to 33:33:00:00:00:01, ICMPv6 type 136, S clear, O set.
fn is_unsolicited_na(frame: &[u8], target: &std::net::Ipv6Addr) -> bool {
    frame.len() >= 14 + 40 + 24
        && frame[..6] == [0x33, 0x33, 0, 0, 0, 1]
        && frame[12..14] == [0x86, 0xdd]
        && frame[14 + 6] == 58
        && frame[54] == 136
        && frame[58] & 0x60 == 0x20
        && frame[62..78] == target.octets()
}

/// A gratuitous ARP for `ip`: broadcast, sender and target protocol address both `ip`.
fn is_gratuitous_arp(frame: &[u8], ip: &std::net::Ipv4Addr) -> bool {
    frame.len() >= 14 + 28
        && frame[..6] == [0xff; 6]
        && frame[12..14] == [0x08, 0x06]
        && frame[28..32] == ip.octets()
        && frame[38..42] == ip.octets()
}

/// A packet socket receiving every frame of the namespace, with a short read timeout.
struct RawCapture(std::os::fd::OwnedFd);

impl RawCapture {
    fn open() -> Option<RawCapture> {
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just opened and is ours.
        let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid fd and option value of the stated size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Some(RawCapture(fd))
    }

    /// The next frame, or None after the read timeout.
    fn next(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}
