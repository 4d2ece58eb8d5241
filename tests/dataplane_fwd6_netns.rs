//! The XDP forwarder on a real exit-node topology built by `exitd apply`, with the gateway's
//! kernel forwarding switched off (`net.ipv6.conf.all.forwarding=0`): whatever reaches an
//! ExitPoint can only have been forwarded by XDP. Userspace WireGuard (boringtun-cli) stands
//! in for the kernel's, which this machine lacks. Needs root.
//!
//! ```text
//!   upstream ── port0 ═ pub-1-A ── [gateway: xdp_fwd6] ── to-1abc-A ═ pub-1abc-A ── net-1abc-A
//!                                                      └─ to-1123-A ═ pub-1123-A ── net-1123-A
//! ```

mod common;

use common::{assert_success, clean_run};
use exitd_testkit::{
    NetNs, TestPins, poll_until,
    process::{http_get, logged_addr, wait_for_logs},
    require_root, veth_pair,
};
use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");
const EP_1ABC: &str = "2a02:1802:5e:1abc::1";
const EP_1123: &str = "2a02:1802:5e:1123::1";

/// One exit node (exit node 1) with two tenants, each an ExitPoint only.
struct ExitNode {
    host: NetNs,
    upstream: NetNs,
    pins: TestPins,
    upstream_pins: TestPins,
    dir: PathBuf,
    prefix: String,
    alloc_nr: u32,
}

impl ExitNode {
    fn new() -> ExitNode {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("exitd-fwd6-test-{pid}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let node = ExitNode {
            host: NetNs::new("fwhost").unwrap(),
            upstream: NetNs::new("fwup").unwrap(),
            pins: TestPins::new().unwrap(),
            upstream_pins: TestPins::new().unwrap(),
            dir,
            prefix: format!("xf{pid}n{n}-"),
            // Unique per test: WireGuard control sockets are shared machine-wide.
            alloc_nr: 50_000 + (pid % 1_000) * 10 + n,
        };
        node.write_config(true);
        veth_pair(&node.upstream, "port0", &node.host, "upl0").unwrap();
        let up = &node.upstream;
        up.ip(&["addr", "add", "fe80::1/64", "dev", "port0", "nodad"])
            .unwrap();
        up.ip(&["addr", "add", "2a02:1802:5e::1/64", "dev", "port0", "nodad"])
            .unwrap();
        node
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("exitd.toml")
    }

    fn gateway(&self) -> String {
        format!("{}gw-1-{}", self.prefix, self.alloc_nr)
    }

    fn write_config(&self, with_bob: bool) {
        let mut text = format!(
            "[dataplane]\npin_dir = {pins:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[network]\nallocation = \"2a02:1802:5e::/48\"\n\
             exit_node = 1\nalloc_nr = {a}\nuplink = \"upl0\"\nnamespace_prefix = \"{prefix}\"\n\
             key_dir = \"{keys}\"\nwireguard = \"userspace\"\nstate_dir = \"{state}\"\n\n[[network.tenants]]\nname = \"alice\"\n\
             [[network.tenants.resources]]\nnode = \"exit\"\nprefix = \"2a02:1802:5e:1abc::/64\"\n\
             exitpoint = true\n",
            pins = self.pins.path(),
            a = self.alloc_nr,
            prefix = self.prefix,
            keys = self.dir.join("keys").display(),
            state = self.dir.join("state").display(),
        );
        if with_bob {
            text.push_str(
                "[[network.tenants]]\nname = \"bob\"\n[[network.tenants.resources]]\n\
                 node = \"exit\"\nprefix = \"2a02:1802:5e:1123::/64\"\nexitpoint = true\n",
            );
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn exitd(&self, args: &[&str]) -> String {
        let out = self.host.command(EXITD).args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    fn config(&self) -> String {
        self.config_path().to_str().unwrap().to_string()
    }

    /// `exitd apply` then `exitd dataplane sync`, with the gateway's kernel forwarding off.
    fn apply_and_sync(&self) {
        let state = self.dir.join("state");
        self.exitd(&[
            "apply",
            "--config",
            &self.config(),
            "--wireguard",
            "userspace",
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        let gw = exitd::netlink::netns::path(&self.gateway());
        let off = Command::new("nsenter")
            .arg(format!("--net={}", gw.display()))
            .args(["--", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])
            .output()
            .unwrap();
        assert_success(&off, &["sysctl"]);
        self.exitd(&["dataplane", "sync", "--config", &self.config()]);
    }

    fn routes_upstream(&self) {
        let routes = self.exitd(&[
            "plan",
            "upstream",
            "--config",
            &self.config(),
            "--port",
            "port0",
        ]);
        assert_eq!(self.upstream.add_upstream_routes(&routes).unwrap().len(), 1);
        // The upstream router here is a veth sending its own TCP: without checksum offload,
        // as a real router's forwarded traffic would be (exitd does the same for the
        // ExitPoint ends it manages).
        self.upstream
            .exec("ethtool", &["-K", "port0", "tx", "off"])
            .unwrap();
        // Frames redirected into a veth are only taken when the peer runs XDP.
        let out = self
            .upstream
            .command(EXITD)
            .args(["dataplane", "attach", "--iface", "port0", "--pin-dir"])
            .arg(self.upstream_pins.path())
            .output()
            .unwrap();
        assert_success(&out, &["attach port0"]);
    }

    /// Starts `exitd run` in the host namespace and waits for the log lines `ready`.
    fn start_daemon(&self, ready: &[&str]) -> (std::process::Child, Vec<String>) {
        let mut daemon = self
            .host
            .command(EXITD)
            .args(["run", "--config", &self.config()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = wait_for_logs(&mut daemon, ready, Duration::from_secs(20));
        (daemon, logs)
    }

    fn gateway_pins(&self) -> PathBuf {
        self.pins.path().join(self.gateway())
    }

    /// (packets, bytes) the forwarder counted for the route to `prefix` (e.g. `…:1abc::/64`).
    fn route_packets(&self, prefix: &str) -> u64 {
        let out = Command::new(EXITD)
            .args(["dataplane", "routes", "--json", "--pin-dir"])
            .arg(self.gateway_pins())
            .output()
            .unwrap();
        assert_success(&out, &["dataplane routes"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["prefix"] == prefix)
            .map_or(0, |r| r["packets"].as_u64().unwrap())
    }

    fn has_route(&self, prefix: &str) -> bool {
        let out = Command::new(EXITD)
            .args(["dataplane", "routes", "--json", "--pin-dir"])
            .arg(self.gateway_pins())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(prefix)
    }

    fn ping(&self, target: &str, count: u32) -> (u32, u32) {
        let out = self
            .upstream
            .command("ping")
            .args([
                "-n",
                "-q",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                target,
            ])
            .output()
            .unwrap();
        parse_ping(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for ExitNode {
    fn drop(&mut self) {
        clean_run(&self.dir, &self.prefix);
    }
}

/// (transmitted, received) from ping's summary line.
fn parse_ping(text: &str) -> (u32, u32) {
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("");
    let numbers: Vec<u32> = line
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
    )
}

fn ready_node() -> ExitNode {
    require_root();
    let node = ExitNode::new();
    node.apply_and_sync();
    node.routes_upstream();
    // The first packets may still meet an unresolved neighbour; wait until ping works.
    let up = poll_until(Duration::from_secs(20), || {
        (node.ping(EP_1ABC, 1).1 == 1).then_some(())
    });
    assert!(up.is_some(), "ping6 to the ExitPoint never answered");
    node
}

#[test]
fn ping_and_tcp_reach_exitpoints_through_xdp_alone() {
    let node = ready_node();
    for (target, prefix) in [
        (EP_1ABC, "2a02:1802:5e:1abc::/64"),
        (EP_1123, "2a02:1802:5e:1123::/64"),
    ] {
        let before = node.route_packets(prefix);
        assert_eq!(node.ping(target, 20), (20, 20), "ping6 {target}");
        assert_eq!(
            node.route_packets(prefix) - before,
            20,
            "every echo request to {target} went through XDP"
        );
    }

    // A TCP stream from upstream into the ExitPoint's namespace.
    let ep_ns = NetNsPath(exitd::netlink::netns::path(&format!(
        "{}net-1abc-{}",
        node.prefix, node.alloc_nr
    )));
    let listener = ep_ns.run(|| {
        TcpListener::bind(SocketAddrV6::new(EP_1ABC.parse().unwrap(), 5001, 0, 0)).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        conn.read_to_end(&mut received).unwrap();
        received.len()
    });
    const BYTES: usize = 4 << 20;
    node.upstream
        .run(|| {
            let addr: Ipv6Addr = EP_1ABC.parse().unwrap();
            let mut stream = TcpStream::connect(SocketAddrV6::new(addr, 5001, 0, 0)).unwrap();
            stream.write_all(&vec![0x42; BYTES]).unwrap();
        })
        .unwrap();
    assert_eq!(server.join().unwrap(), BYTES, "the whole stream arrived");
}

#[test]
fn removing_a_resource_removes_its_route_and_stops_its_traffic() {
    let node = ready_node();
    assert_eq!(node.ping(EP_1123, 3), (3, 3));
    node.write_config(false);
    node.apply_and_sync();
    assert!(
        !node.has_route("2a02:1802:5e:1123::/64"),
        "the map entry is gone"
    );
    assert!(node.has_route("2a02:1802:5e:1abc::/64"));
    assert_eq!(
        node.ping(EP_1123, 3).1,
        0,
        "no path to the removed resource"
    );
    assert_eq!(
        node.ping(EP_1ABC, 3),
        (3, 3),
        "the other tenant is untouched"
    );
}

#[test]
fn restarting_the_agent_during_a_ping_flood_loses_nothing() {
    let node = ready_node();
    let prefix = "2a02:1802:5e:1abc::/64";
    let before = node.route_packets(prefix);
    let flood = node
        .upstream
        .command("ping")
        .args(["-n", "-q", "-i", "0.002", "-c", "2000", EP_1ABC])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Restart the daemon twice while packets flow: it re-applies the plan, reuses the pinned
    // maps and links and resumes following neighbours; SIGTERM leaves forwarding up.
    for _ in 0..2 {
        let (mut daemon, logs) = node.start_daemon(&["exitd running", "admin API listening"]);
        let (status, metrics) = http_get(&node.host, &logged_addr(&logs[1]), "/metrics", &[]);
        assert_eq!(status, 200);
        let series = format!(
            "exitd_fwd6_route_packets_total{{namespace=\"{}\",prefix=\"{prefix}\"}} ",
            node.gateway()
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        assert!(daemon.wait().unwrap().success(), "clean exit on SIGTERM");
    }
    let out = flood.wait_with_output().unwrap();
    let (sent, received) = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sent, 2000);
    assert!(
        sent - received <= 5,
        "lost {} of {sent} packets across agent restarts",
        sent - received
    );
    let forwarded = node.route_packets(prefix) - before;
    assert!(
        forwarded >= u64::from(received),
        "XDP forwarded them all ({forwarded} of {received})"
    );
}

/// A namespace given by path (the reconciler's namespaces are not test-kit `NetNs`).
struct NetNsPath(PathBuf);

impl NetNsPath {
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(&self.0).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on this thread only, with a valid namespace fd.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                f()
            })
            .join()
            .unwrap()
        })
    }
}

#[test]
fn detach_on_exit_takes_the_forwarder_down_with_the_daemon() {
    let node = ready_node();
    let config = std::fs::read_to_string(node.config_path()).unwrap();
    let config = config.replacen("[dataplane]\n", "[dataplane]\ndetach_on_exit = true\n", 1);
    std::fs::write(node.config_path(), config).unwrap();
    let (mut daemon, _) = node.start_daemon(&["exitd running"]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    assert!(!node.gateway_pins().exists(), "the gateway's pins are gone");
    let gw = exitd::netlink::netns::path(&node.gateway());
    let links = Command::new("nsenter")
        .arg(format!("--net={}", gw.display()))
        .args(["--", "ip", "link", "show"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("prog/xdp"),
        "no XDP program left"
    );
}

#[test]
fn registry_settings_set_the_tunnel_mtu_and_can_switch_xdp_off() {
    require_root();
    let node = ExitNode::new();
    let mut config = std::fs::read_to_string(node.config_path()).unwrap();
    config.push_str(&format!(
        "\n[registry.global]\ngateway = {{ mtu = 1380 }}\n\
         [registry.gateways.\"{}\"]\ngateway = {{ xdp_forward = false }}\n",
        node.gateway()
    ));
    std::fs::write(node.config_path(), config).unwrap();
    node.exitd(&["config", "check", &node.config()]);
    node.apply_and_sync();
    let wg = format!("wg-1abc-{}", node.alloc_nr);
    let ep = exitd::netlink::netns::path(&format!("{}net-1abc-{}", node.prefix, node.alloc_nr));
    let show = |ns: &std::path::Path, args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["--", "ip"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        show(&ep, &["link", "show", &wg]).contains("mtu 1380"),
        "the registry's tunnel MTU"
    );
    let gw = exitd::netlink::netns::path(&node.gateway());
    assert!(
        !show(&gw, &["link", "show"]).contains("prog/xdp"),
        "xdp_forward = false for this gateway"
    );
}
