//! `exitd run` with `[dataplane.nat64]` on a real exit-node gateway built by `exitd apply`:
//! the NAT64 classifier is attached to TC ingress of the node-facing link once that link
//! appears (as the concentrator's interface does, after the forwarder started), shares
//! every pinned map with `xdp_fwd6` on the uplink, gets its prefix and the firewall's
//! entries, translates a node's UDP to the gateway's public IPv4 and back, drops what the
//! node sends to a closed control port of the gateway, NAT44s the node's own IPv4
//! (`node_ipv4`) through the same engine, and stays
//! attached — same program, untouched — across a restart of exitd. Checked with `bpftool`
//! and the kernel's TCX query. Needs root.
//!
//! In the first test a veth stands in for the node-facing WireGuard link (so the agent
//! picks `tc_nat64_eth`), and the test writes the node's `xlat_range6` into XLAT6 through
//! the same `Xlat6Map` the concentrator uses. The second test runs the concentrator role
//! itself (real etcd, userspace WireGuard: a TUN device, so `tc_nat64_l3`).
//!
//! ```text
//!  internet ── upstream ── pub-1-A [gateway: xdp_fwd6] n64 (tc_nat64_eth) ═ n64p ── node
//!  198.51.100.10           185.69.166.123                                  2001:db8:ed0:3::1
//! ```

mod common;

use aya::programs::{SchedClassifier, TcAttachType};
use common::{assert_success, clean_run, collect_logs};
use exitd::dataplane::{PinDir, nat64::xlat_table, nat64_maps::Xlat6Map};
use exitd_common::nat64::Nat64Config;
use exitd_testkit::{Etcd, NetNs, TestPins, poll_until, require_root};
use serde_json::Value;
use std::{
    net::{SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");
/// A network-specific prefix, so the test sees the configured one (not the default).
const PREFIX: &str = "2001:db8:6400::/48";
const NODE_LINK: &str = "n64";
const INTERNET: &str = "198.51.100.10";
/// A node's /63 (what the broker hands out) and an address of its `xlat_range6`.
const NODE_PREFIX: &str = "2001:db8:ed0:2::/63";
const NODE_XLAT: &str = "2001:db8:ed0:3::1";
/// The node's own IPv4 (in `node_ipv4` 10.64.0.0/23).
const NODE_IPV4: &str = "10.64.0.1";

struct Gateway {
    host: NetNs,
    upstream: NetNs,
    internet: NetNs,
    node: NetNs,
    pins: TestPins,
    dir: PathBuf,
    prefix: String,
    alloc_nr: u32,
}

impl Gateway {
    /// The gateway, applied, with `sections` (TOML: NAT64, firewall) in its configuration.
    fn new(sections: &str) -> Gateway {
        let gw = Gateway::create();
        gw.configure(sections);
        gw
    }

    /// The namespaces, before any configuration.
    fn create() -> Gateway {
        require_root();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("exitd-nat64-test-{pid}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let gw = Gateway {
            host: NetNs::new("n6host").unwrap(),
            upstream: NetNs::new("n6up").unwrap(),
            internet: NetNs::new("n6inet").unwrap(),
            node: NetNs::new("n6node").unwrap(),
            pins: TestPins::new().unwrap(),
            dir,
            prefix: format!("x6n{pid}n{n}-"),
            // Unique per test: WireGuard control sockets are shared machine-wide.
            alloc_nr: 61_000 + (pid % 1_000) * 10 + n,
        };
        common::wire_upstream(&gw.upstream, &gw.host, &gw.internet, INTERNET);
        gw
    }

    /// Writes the configuration with `sections` added and applies it.
    fn configure(&self, sections: &str) {
        self.write_config(sections);
        self.apply();
    }

    fn config(&self) -> String {
        self.dir.join("exitd.toml").to_str().unwrap().to_string()
    }

    fn write_config(&self, sections: &str) {
        let text = format!(
            "[dataplane]\npin_dir = {pins:?}\n\n{sections}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [network]\nallocation = \"2a02:1802:5e::/48\"\nexit_node = 1\nalloc_nr = {a}\nuplink = \"upl0\"\n\
             gateway_ipv4 = \"185.69.166.123/24\"\nupstream_ipv4 = \"185.69.166.1\"\n\
             namespace_prefix = \"{prefix}\"\nkey_dir = \"{keys}\"\nwireguard = \"userspace\"\n\
             state_dir = \"{state}\"\n\n\
             [[network.tenants]]\nname = \"alice\"\n[[network.tenants.resources]]\n\
             node = \"exit\"\nprefix = \"2a02:1802:5e:1abc::/64\"\nexitpoint = true\n",
            pins = self.pins.path(),
            a = self.alloc_nr,
            prefix = self.prefix,
            keys = self.dir.join("keys").display(),
            state = self.dir.join("state").display(),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn exitd(&self, args: &[&str]) -> String {
        let out = self.host.command(EXITD).args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self) {
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
    }

    fn gateway(&self) -> String {
        format!("{}gw-1-{}", self.prefix, self.alloc_nr)
    }

    fn gateway_pins(&self) -> PathBuf {
        self.pins.path().join(self.gateway())
    }

    fn uplink(&self) -> String {
        format!("pub-1-{}", self.alloc_nr)
    }

    /// A command in the gateway's namespace (nsenter keeps /sys/fs/bpf visible).
    fn in_gateway(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--net={}",
            exitd::netlink::netns::path(&self.gateway()).display()
        ))
        .args(["--", program]);
        cmd
    }

    /// `bpftool -j ARGS` in the gateway's namespace, parsed.
    fn bpftool(&self, args: &[&str]) -> Value {
        let out = self
            .in_gateway("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        assert_success(&out, args);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The XDP program attached to `dev`, per `bpftool net show`: (id, name).
    fn xdp_prog(&self, dev: &str) -> Option<(u64, String)> {
        let net = self.bpftool(&["net", "show", "dev", dev]);
        let xdp = net
            .as_array()?
            .iter()
            .find_map(|e| e["xdp"].as_array().cloned())?;
        let id = xdp.iter().find(|p| p["devname"] == dev)?["id"].as_u64()?;
        let show = self.bpftool(&["prog", "show", "id", &id.to_string()]);
        Some((id, show["name"].as_str()?.to_string()))
    }

    /// The kernel's list of TCX ingress programs of `dev` in the gateway (bpftool 7.1 here
    /// predates TCX in `net show`): the link's revision (it changes with every attach and
    /// detach), its ifindex and the programs' (id, name).
    fn tcx_ingress(&self, dev: &str) -> Option<Tcx> {
        let ns = std::fs::File::open(exitd::netlink::netns::path(&self.gateway())).ok()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                let ifindex = exitd::iface::index_of(dev).ok()?;
                let (revision, progs) =
                    SchedClassifier::query_tcx(dev, TcAttachType::Ingress).ok()?;
                let progs = progs
                    .iter()
                    .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
                    .collect();
                Some(Tcx {
                    revision,
                    ifindex,
                    progs,
                })
            })
            .join()
            .unwrap()
        })
    }

    /// Whether the pin directory holds a link of `program` on `dev`.
    fn link_pinned(&self, program: &str, dev: &str) -> bool {
        let Ok(links) = std::fs::read_dir(self.gateway_pins().join("links")) else {
            return false;
        };
        let pin = format!("{program}@{dev}@");
        links
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&pin))
    }

    /// The revision of TCX ingress of `dev` and the id of `program` there.
    fn nat64_prog(&self, dev: &str, program: &str) -> Option<(u64, u32)> {
        let tcx = self.tcx_ingress(dev)?;
        let (id, _) = tcx.progs.into_iter().find(|(_, name)| name == program)?;
        Some((tcx.revision, id))
    }

    fn map_ids_of(&self, prog: u64) -> Vec<u64> {
        let show = self.bpftool(&["prog", "show", "id", &prog.to_string()]);
        let ids = show["map_ids"].as_array().expect("map_ids");
        ids.iter().filter_map(Value::as_u64).collect()
    }

    fn pinned_map_id(&self, map: &str) -> u64 {
        let path = self.gateway_pins().join(map);
        let show = self.bpftool(&["map", "show", "pinned", path.to_str().unwrap()]);
        show["id"].as_u64().expect("map id")
    }

    /// A map's entries as BTF formats them (`{"key": …, "value": …}`).
    fn dump(&self, map: &str) -> Vec<Value> {
        let path = self.gateway_pins().join(map);
        let dump = self.bpftool(&["map", "dump", "pinned", path.to_str().unwrap()]);
        let entries = dump.as_array().cloned().unwrap_or_default();
        // bpftool -j prints raw bytes plus, with BTF, the "formatted" entry.
        entries
            .into_iter()
            .map(|e| e.get("formatted").cloned().unwrap_or(e))
            .collect()
    }

    /// `exitd run`, once its forwarder runs.
    fn start(&self) -> Daemon {
        let mut child = self
            .host
            .command(EXITD)
            .args(["run", "--config", &self.config()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = collect_logs(&mut child);
        let daemon = Daemon { child, logs };
        assert!(
            daemon.logged("XDP forwarder running"),
            "exitd run did not start: {:?}",
            daemon.logs.lock().unwrap()
        );
        daemon
    }
}

const PUBLIC: &str = "185.69.166.123";
/// The classifier for links with an Ethernet header (the veth standing in for WireGuard).
const ETH: &str = "tc_nat64_eth";

fn public_ip(seen: &str) -> &str {
    seen.rsplit_once(':').map_or(seen, |(ip, _)| ip)
}

impl Gateway {
    /// The node behind the node-facing link: an address of its `xlat_range6`, a default
    /// route to the gateway (fe80::1 on `n64`), which routes the node's /63 back to it as
    /// the concentrator does.
    fn wire_node(&self) {
        let node = &self.node;
        node.ip(&["link", "set", "n64p", "up"]).unwrap();
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_XLAT}/64"),
            "dev",
            "n64p",
            "nodad",
        ])
        .unwrap();
        node.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "n64p",
        ])
        .unwrap();
        // The node's own IPv4 (node_ipv4, translated by NAT44 through the same engine).
        node.ip(&["addr", "add", &format!("{NODE_IPV4}/24"), "dev", "n64p"])
            .unwrap();
        node.ip(&["route", "add", "default", "via", "10.64.0.254"])
            .unwrap();
        for args in [
            &["-6", "addr", "add", "fe80::1/64", "dev", NODE_LINK, "nodad"][..],
            &["-6", "route", "replace", NODE_PREFIX, "dev", NODE_LINK][..],
            &["addr", "add", "10.64.0.254/24", "dev", NODE_LINK][..],
        ] {
            let out = self.in_gateway("ip").args(args).output().unwrap();
            assert_success(&out, args);
        }
    }

    /// A UDP server on the internet host answering each datagram with the address it came
    /// from; returns its address.
    fn udp_reflector(&self) -> SocketAddrV4 {
        let socket = self
            .internet
            .run(|| UdpSocket::bind(format!("{INTERNET}:0")).unwrap())
            .unwrap();
        let std::net::SocketAddr::V4(addr) = socket.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(from.to_string().as_bytes(), from);
            }
        });
        addr
    }

    /// `server` as the node addresses it: embedded in the configured NAT64 prefix.
    fn nat64_address(&self, server: SocketAddrV4) -> SocketAddrV6 {
        let net: ipnet::Ipv6Net = PREFIX.parse().unwrap();
        let len = u32::from(net.prefix_len());
        let config = Nat64Config::new(net.network().octets(), len).unwrap();
        let addr = config.embed(server.ip().octets());
        SocketAddrV6::new(addr.into(), server.port(), 0, 0)
    }

    /// IPv6 packets the firewall dropped, per `exitd nat stats`.
    fn firewall_drops6(&self) -> u64 {
        let stats = self.exitd(&["nat", "stats", "--json", "--config", &self.config()]);
        let stats: Value = serde_json::from_str(&stats).unwrap();
        stats["nat64"]["firewall_dropped"]["ipv6"]["packets"]
            .as_u64()
            .expect("firewall counters")
    }

    /// One UDP datagram from the node to the gateway's fe80::1 on `port`.
    fn node_to_gateway_port(&self, port: u16) {
        self.node
            .run(move || {
                let scope = exitd::iface::index_of("n64p").unwrap();
                let gateway = SocketAddrV6::new("fe80::1".parse().unwrap(), port, 0, scope);
                let socket = UdpSocket::bind("[::]:0").unwrap();
                socket.send_to(b"let me in", gateway).unwrap();
            })
            .unwrap();
    }

    /// The translators' counters that are not zero (for failure messages).
    fn nonzero_counters(&self) -> String {
        let stats = self.exitd(&["nat", "stats", "--json", "--config", &self.config()]);
        let stats: Value = serde_json::from_str(&stats).unwrap();
        let nonzero = |list: &Value| -> Vec<String> {
            let list = list.as_array().cloned().unwrap_or_default();
            list.iter()
                .filter(|v| v["packets"] != 0)
                .map(|v| format!("{}={}", v["verdict"], v["packets"]))
                .collect()
        };
        format!(
            "nat4 {:?}, nat64 {:?}",
            nonzero(&stats["verdicts"]),
            nonzero(&stats["nat64"]["verdicts"])
        )
    }

    /// One datagram from the node's `[NODE_XLAT]:port` to `target`: what the server saw.
    fn udp_ask(&self, port: u16, target: SocketAddrV6) -> Option<String> {
        self.udp_ask_from(format!("[{NODE_XLAT}]:{port}"), target.into())
    }

    /// One datagram from the node's `source` to `target`: what the server saw.
    fn udp_ask_from(&self, source: String, target: std::net::SocketAddr) -> Option<String> {
        let socket = self
            .node
            .run(move || UdpSocket::bind(source))
            .unwrap()
            .ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket.send_to(b"who am I", target).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// What the kernel reports for TCX ingress of a link.
#[derive(Debug)]
struct Tcx {
    /// Changes with every attach and detach.
    revision: u64,
    ifindex: u32,
    /// (id, name) of each program.
    progs: Vec<(u32, String)>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        clean_run(&self.dir, &self.prefix);
    }
}

/// A running `exitd run`, stopped with SIGTERM when dropped — also when the test fails.
struct Daemon {
    child: std::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn logged(&self, needle: &str) -> bool {
        poll_until(Duration::from_secs(20), || {
            let logs = self.logs.lock().unwrap();
            logs.iter().any(|l| l.contains(needle)).then_some(())
        })
        .is_some()
    }

    /// SIGTERM, then waits for the exit.
    fn stop(mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exitd run exited with {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: our own child (already reaped after `stop`: then kill fails harmlessly).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The first value of a one-entry array map dump (BTF-formatted).
fn only_value(dump: &[Value]) -> &Value {
    assert_eq!(dump.len(), 1, "{dump:?}");
    &dump[0]["value"]
}

#[test]
fn the_nat64_classifier_shares_the_forwarders_maps_and_survives_a_restart() {
    let gw = Gateway::new(&format!(
        "[dataplane.nat64]\nprefix = \"{PREFIX}\"\ninterfaces = [\"{NODE_LINK}\"]\n\
         node_ipv4 = [\"10.64.0.0/23\"]\n\n\
         [dataplane.firewall]\ncontrol_ports = [\"tcp/2379\", \"udp/5353\"]\n\
         allow = [\"192.0.2.0/24\"]\n"
    ));
    let daemon = gw.start();

    // The node-facing link appears after the forwarder started, as the concentrator's does.
    let gateway_path = exitd::netlink::netns::path(&gw.gateway());
    let out = gw
        .node
        .command("ip")
        .args([
            "link", "add", "n64p", "type", "veth", "peer", "name", NODE_LINK, "netns",
        ])
        .arg(&gateway_path)
        .output()
        .unwrap();
    assert_success(&out, &["ip link add n64"]);
    let up = gw
        .in_gateway("ip")
        .args(["link", "set", NODE_LINK, "up"])
        .output();
    assert_success(&up.unwrap(), &["ip link set n64 up"]);

    // Attached in the kernel, and the link pinned (exitd pins right after attaching).
    let attached = poll_until(Duration::from_secs(20), || {
        let prog = gw.nat64_prog(NODE_LINK, ETH)?;
        gw.link_pinned(ETH, NODE_LINK).then_some(prog)
    });
    let (revision, prog) = attached.unwrap_or_else(|| {
        let logs = daemon.logs.lock().unwrap().join("\n");
        let tcx = gw.tcx_ingress(NODE_LINK);
        panic!("{ETH} is not attached and pinned on {NODE_LINK}: {tcx:?}\nexitd's log:\n{logs}")
    });

    // One set of maps: the classifier and xdp_fwd6 use the pinned maps, not copies.
    let (fwd6, name) = gw.xdp_prog(&gw.uplink()).expect("XDP on the uplink");
    assert_eq!(name, "xdp_fwd6");
    let (tc_maps, xdp_maps) = (gw.map_ids_of(u64::from(prog)), gw.map_ids_of(fwd6));
    for map in [
        "CT4",
        "NAT4_CONFIG",
        "NAT64_CONFIG",
        "CT6",
        "XLAT6",
        "FW_PORTS",
    ] {
        let id = gw.pinned_map_id(map);
        assert!(tc_maps.contains(&id), "{ETH} uses the pinned {map}");
    }
    for map in ["CT4", "NAT4_CONFIG", "FW_PORTS", "FW_LINKS", "XDP_TAILS"] {
        let id = gw.pinned_map_id(map);
        assert!(xdp_maps.contains(&id), "xdp_fwd6 uses the pinned {map}");
    }

    // The configuration reached the maps.
    let config = poll_until(Duration::from_secs(10), || {
        let dump = gw.dump("NAT64_CONFIG");
        let value = only_value(&dump).clone();
        (value["prefix_len"] == 48).then_some(value)
    })
    .unwrap_or_else(|| panic!("NAT64_CONFIG: {:?}", gw.dump("NAT64_CONFIG")));
    let prefix: Vec<u64> = config["prefix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(prefix[..6], [0x20, 0x01, 0x0d, 0xb8, 0x64, 0x00]);
    assert_eq!(config["flags"], 1, "enabled; not the well-known prefix");
    let ports = gw.dump("FW_PORTS");
    assert_eq!(
        ports.len(),
        3,
        "tcp/2379, udp/5353 and the on-marker: {ports:?}"
    );
    let n64_index = gw.tcx_ingress(NODE_LINK).unwrap().ifindex;
    let fw_links = gw.dump("FW_LINKS");
    assert!(
        fw_links.iter().any(|e| e["key"] == n64_index),
        "the node-facing link is firewalled: {fw_links:?}"
    );
    assert_eq!(gw.dump("FW_ALLOW4").len(), 1);
    // The nodes' own IPv4 range: one ROUTES4 entry per /24, replies through the kernel.
    let node_nets: Vec<Value> = gw
        .dump("ROUTES4")
        .into_iter()
        .filter(|e| e["value"]["ifindex"] == n64_index)
        .collect();
    assert_eq!(
        node_nets.len(),
        2,
        "10.64.0.0/23 is two /24s: {node_nets:?}"
    );
    assert!(
        node_nets.iter().all(|e| e["value"]["flags"] == 2),
        "ROUTE4_VIA_KERNEL"
    );

    // XLAT6 through the map handle the concentrator uses: add two nodes, then remove one.
    let pins = PinDir::new(gw.gateway_pins());
    let mut xlat = Xlat6Map::open_pinned(&pins).unwrap();
    let nodes: Vec<ipnet::Ipv6Net> = [NODE_PREFIX, "2001:db8:ed0:4::/63"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        xlat.sync(&xlat_table(&nodes, n64_index)).unwrap(),
        (2, 0, 0)
    );
    assert_eq!(gw.dump("XLAT6").len(), 2);
    let one = xlat_table(&nodes[..1], n64_index);
    assert_eq!(xlat.sync(&one).unwrap(), (0, 0, 1));
    assert_eq!(gw.dump("XLAT6").len(), 1);

    // A node's UDP through the translator: the internet host sees the public IPv4.
    let reflector = gw.udp_reflector();
    gw.wire_node();
    let target = gw.nat64_address(reflector);
    let seen = poll_until(Duration::from_secs(20), || gw.udp_ask(5001, target));
    assert_eq!(
        seen.as_deref().map(public_ip),
        Some(PUBLIC),
        "translated to the public IPv4; counters: {}",
        gw.nonzero_counters()
    );
    // The node's own IPv4 goes through NAT44 in the same engine.
    let nat44 = poll_until(Duration::from_secs(10), || {
        gw.udp_ask_from(format!("{NODE_IPV4}:5003"), reflector.into())
    });
    // The eBPF translator keeps a free source port (the kernel's fallback NAT would pick
    // one of its own range).
    assert_eq!(
        nat44,
        Some(format!("{PUBLIC}:5003")),
        "the node's IPv4 translated in eBPF; counters: {}",
        gw.nonzero_counters()
    );
    assert!(gw.nonzero_counters().contains("nat44_out"));

    // The node cannot reach a control port of the gateway (udp/5353 is closed).
    let drops_before = gw.firewall_drops6();
    gw.node_to_gateway_port(5353);
    let dropped = poll_until(Duration::from_secs(5), || {
        (gw.firewall_drops6() > drops_before).then_some(())
    });
    assert!(dropped.is_some(), "the firewall drops and counts it");
    let listed = gw.exitd(&["nat", "list", "--json", "--config", &gw.config()]);
    assert!(
        listed.contains("\"kind\": \"nat64\"") && listed.contains(NODE_XLAT),
        "exitd nat list shows the NAT64 connection: {listed}"
    );

    // Visible in the CLI and the metrics.
    let stats: Value =
        serde_json::from_str(&gw.exitd(&["nat", "stats", "--json", "--config", &gw.config()]))
            .unwrap();
    assert!(
        stats["nat64"]["verdicts"]
            .as_array()
            .is_some_and(|v| v.len() == 18),
        "{stats}"
    );
    let metrics = gw.exitd(&[
        "dataplane",
        "stats",
        "--prometheus",
        "--pin-dir",
        gw.pins.path().to_str().unwrap(),
    ]);
    assert!(metrics.contains("exitd_nat64_packets_total{"), "{metrics}");
    assert!(
        metrics.contains("exitd_firewall_dropped_packets_total{"),
        "{metrics}"
    );
    for verdict in ["new_out", "in"] {
        let sample = format!(
            "exitd_nat64_packets_total{{namespace=\"{}\",verdict=\"{verdict}\"}} ",
            gw.gateway()
        );
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix(sample.as_str()))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(
            counted.is_some_and(|n| n >= 1),
            "the datagram and its answer are counted ({verdict}): {metrics}"
        );
    }
    let pin_dir = gw.gateway_pins();
    let stats = gw.exitd(&[
        "dataplane",
        "stats",
        "--json",
        "--pin-dir",
        pin_dir.to_str().unwrap(),
    ]);
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let listed = stats["attachments"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|a| a["program"] == ETH && a["ifname"] == NODE_LINK),
        "exitd dataplane stats lists the TC attachment: {stats}"
    );

    // A restart keeps the attachment: same program, and the same revision of the link's
    // program list (any detach or re-attach in between would have changed it).
    daemon.stop();
    let attached = Some((revision, prog));
    assert_eq!(
        gw.nat64_prog(NODE_LINK, ETH),
        attached,
        "still attached while exitd is down"
    );
    let daemon = gw.start();
    assert!(daemon.logged("exitd running"));
    assert_eq!(
        gw.nat64_prog(NODE_LINK, ETH),
        attached,
        "untouched by the restart"
    );
    assert_eq!(gw.dump("XLAT6").len(), 1, "XLAT6 survives the restart");
    let again = gw.udp_ask(5002, target);
    assert_eq!(
        again.as_deref().map(public_ip),
        Some(PUBLIC),
        "translation goes on"
    );
    drop(daemon);

    // `exitd dataplane detach` takes the TC link with it.
    let pin_dir = gw.gateway_pins();
    let out = gw
        .in_gateway(EXITD)
        .args(["dataplane", "detach", "--iface", NODE_LINK, "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    assert_success(&out, &["dataplane detach"]);
    assert_eq!(gw.nat64_prog(NODE_LINK, ETH), None, "detached");

    // exitd attaches it again; without [dataplane.nat64] it removes it.
    let daemon = gw.start();
    let back = poll_until(Duration::from_secs(20), || gw.nat64_prog(NODE_LINK, ETH));
    assert!(back.is_some(), "re-attached by exitd run");
    daemon.stop();
    gw.write_config("");
    let daemon = gw.start();
    assert!(daemon.logged("exitd running"));
    assert_eq!(
        gw.nat64_prog(NODE_LINK, ETH),
        None,
        "NAT64 no longer configured"
    );
    assert!(!gw.link_pinned(ETH, NODE_LINK));
}

/// The concentrator role with NAT64 on its interface (the default of `interfaces`): its
/// userspace WireGuard device — a TUN device, without Ethernet header like the kernel's —
/// gets `tc_nat64_l3` once the role created it, and a node a broker announces through etcd
/// gets its `xlat_range6` (the second /64 of its /63) in XLAT6 on that interface, removed
/// again when the announcement goes.
#[test]
fn the_concentrator_keeps_the_nodes_xlat_ranges_on_its_interface() {
    let gw = Gateway::create();
    // exitd runs in the host namespace: etcd must listen on that namespace's loopback.
    let etcd = gw.host.run(Etcd::start).unwrap().unwrap();
    let wg = format!("wgx{}", std::process::id() % 100_000);
    gw.configure(&format!(
        "[dataplane.nat64]\n\n\
         [concentrator]\nname = \"c1\"\nid = 1\nendpoint = \"[2001:db8:ffff::1]:40001\"\n\
         interface = \"{wg}\"\nnamespace = \"{gateway}\"\nwireguard = \"userspace\"\n\
         private_key_file = {key:?}\nstate_dir = {state:?}\ncheck_interval = 1\n\
         [concentrator.etcd]\nendpoints = [\"{endpoint}\"]\nprefix = \"/exitd/t/parker/\"\n",
        gateway = gw.gateway(),
        key = gw.dir.join("concentrator.key"),
        state = gw.dir.join("state"),
        endpoint = etcd.endpoint(),
    ));
    let daemon = gw.start();
    assert!(daemon.logged("concentrator running"));
    let attached = poll_until(Duration::from_secs(20), || {
        gw.nat64_prog(&wg, "tc_nat64_l3")
            .filter(|_| gw.link_pinned("tc_nat64_l3", &wg))
    });
    assert!(
        attached.is_some(),
        "tc_nat64_l3 on the concentrator's {wg}, pinned"
    );
    let wg_index = gw.tcx_ingress(&wg).unwrap().ifindex;

    let node = wireguard_control::Key::generate_private()
        .get_public()
        .to_base64();
    let key = format!("/exitd/t/parker/peers/{node}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let announcement = format!("{{\"prefix\":\"2001:db8:ed0:2::/63\",\"announced\":{now}}}");
    etcd_write(&gw.host, &etcd, &key, Some(announcement));
    let entry = poll_until(Duration::from_secs(20), || gw.dump("XLAT6").pop());
    let entry = entry.expect("the node's xlat_range6 in XLAT6");
    let range: Vec<u64> = entry["key"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(
        range,
        [0x20, 0x01, 0x0d, 0xb8, 0x0e, 0xd0, 0, 3],
        "2001:db8:ed0:3::/64"
    );
    assert_eq!(
        entry["value"]["ifindex"], wg_index,
        "on the concentrator's interface"
    );

    etcd_write(&gw.host, &etcd, &key, None);
    let gone = poll_until(Duration::from_secs(20), || {
        gw.dump("XLAT6").is_empty().then_some(())
    });
    assert!(gone.is_some(), "removed with the node");
    drop(daemon);
}

/// Puts `key` = `value` into etcd, or deletes `key` when `value` is None, from namespace
/// `ns` (where etcd listens).
fn etcd_write(ns: &NetNs, etcd: &Etcd, key: &str, value: Option<String>) {
    let endpoint = etcd.endpoint();
    let key = key.to_string();
    let written = ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            match value {
                Some(value) => client.put(key, value, None).await.map(drop),
                None => client.delete(key, None).await.map(drop),
            }
        })
    });
    written.unwrap().expect("etcd write");
}
