//! A Parker gateway end to end, in namespaces modelled on a Freifunk lab: one real `exitd run`
//! is broker, concentrator (userspace WireGuard, boringtun-cli) and eBPF gateway (XDP on the
//! uplink, NAT64 on the concentrator's WireGuard interface) at once, with a real etcd. A
//! Parker node (the "AP") sits behind a home router doing NAT44, fetches its signed
//! configuration with curl exactly as the node firmware does, verifies it with
//! `signify-openbsd`, brings up its tunnel `wg_c<id>` with boringtun-cli and then reaches the
//! internet over IPv6 (routed) and over NAT64 (a CLAT's source from `xlat_range6` to
//! `64:ff9b::<IPv4>`). Nothing is mocked. Needs root.
//!
//! ```text
//!                           ┌──────────── internet (router + hosts) ────────────┐
//!  ap ── cpe (nft NAT44) ══ home0 192.0.2.1   gw0 203.0.113.1   far0 198.51.100.1 ══ far
//!  192.168.1.2  192.0.2.2                     fe80::1           2001:db8:ffff::1     198.51.100.9
//!                                                ║
//!                       [gateway ns: exitd run] pub-1-a 203.0.113.10 (public IPv4), XDP
//!                        broker :80, etcd on loopback, concentrator wgc… :51820 (+ NAT64 TC)
//! ```
//! The AP's tunnel runs from 192.168.1.2 through the CPE's masquerade to 203.0.113.10:51820;
//! the internet routes the nodes' prefixes (2001:db8:ed0::/48) to the gateway.
//!
//! The gateway is a `[network]` without tenants: the test creates its namespace (named as
//! exitd's plan names it) with the uplink `pub-1-{a}` already inside and runs `exitd run`
//! there with nsenter, so the broker listens on the public address, etcd runs on that
//! namespace's loopback and the concentrator's interface (`concentrator.namespace`) is where
//! `[dataplane.nat64]` attaches by default.

#[path = "parker_common.rs"]
mod parker;

use exitd::wireguard::{UserspaceBackend, WireguardBackend};
use exitd_testkit::{
    Etcd, NetNs, TestPins,
    cluster_lab::stop_recorded_processes,
    poll_until,
    process::{Daemon, FileServer, http_get},
    require_root, veth_pair,
};
use parker::{EXITD, TempDir, encode_key, keygen, verify_with_signify};
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};
use wireguard_control::{DeviceUpdate, Key, PeerConfigBuilder};

/// The gateway's public IPv4 (GWPubIP4): NAT44 and NAT64 leave from it.
const PUBLIC4: &str = "203.0.113.10";
/// The internet router's address on the gateway's segment (the gateway's upstream).
const UPSTREAM4: &str = "203.0.113.1";
/// The internet host: HTTP server, ping target.
const INTERNET4: &str = "198.51.100.1";
const INTERNET6: &str = "2001:db8:ffff::1";
/// A host one hop behind the internet router (traceroute's target).
const FAR4: &str = "198.51.100.9";
const CPE_WAN4: &str = "192.0.2.2";
const HOME_GW4: &str = "192.0.2.1";
const CPE_LAN4: &str = "192.168.1.1";
const AP4: &str = "192.168.1.2";
/// The parent the broker hands the nodes' /63s out of.
const NODES6: &str = "2001:db8:ed0::/48";
/// GWPubLL of exit node 1: the internet's next hop to the nodes' prefixes.
const GATEWAY_LL: &str = "fe80::1000:0:0:1";
const CONCENTRATOR_PORT: u16 = 51820;
const ADMIN: &str = "127.0.0.1:9580";
const FILE_SIZE: usize = 4 << 20;

/// The RFC 6052 well-known-prefix address of an IPv4 address: `64:ff9b::a.b.c.d`.
fn nat64(v4: &str) -> String {
    let v4: Ipv4Addr = v4.parse().expect("IPv4");
    let mut addr = [0u8; 16];
    addr[1..4].copy_from_slice(&[0x64, 0xff, 0x9b]);
    addr[12..].copy_from_slice(&v4.octets());
    Ipv6Addr::from(addr).to_string()
}

/// Every namespace, process and file of one run; all of it goes when dropped, also when an
/// assertion failed.
struct Lab {
    exitd: Option<Daemon>,
    etcd: Option<Etcd>,
    internet: NetNs,
    far: NetNs,
    cpe: NetNs,
    ap: NetNs,
    gateway: NetNs,
    pins: TestPins,
    internet_pins: TestPins,
    dir: TempDir,
    /// The concentrator's id (the AP's tunnel is `wg_c<id>`) and WireGuard interface.
    concentrator_id: u32,
    concentrator_wg: String,
    /// exitd's allocation number and namespace prefix: its gateway namespace is
    /// `{prefix}gw-1-{alloc_nr}` with the uplink `pub-1-{alloc_nr}`.
    alloc_nr: u32,
    prefix: String,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let pid = std::process::id();
        // Unique per process: namespace and WireGuard socket names are machine-wide.
        let alloc_nr = 60_000 + pid % 9_000;
        let prefix = format!("xe{}-", pid % 100_000);
        let lab = Lab {
            exitd: None,
            etcd: None,
            internet: NetNs::new("e2einet").expect("netns"),
            far: NetNs::new("e2efar").expect("netns"),
            cpe: NetNs::new("e2ecpe").expect("netns"),
            ap: NetNs::new("e2eap").expect("netns"),
            gateway: NetNs::named(&format!("{prefix}gw-1-{alloc_nr}")).expect("netns"),
            pins: TestPins::new().expect("pins"),
            internet_pins: TestPins::new().expect("pins"),
            dir: TempDir::new("e2e"),
            concentrator_id: 10_000 + pid % 50_000,
            concentrator_wg: exitd_testkit::unique_name("wgc"),
            alloc_nr,
            prefix,
        };
        lab.wire_internet();
        lab.wire_home();
        keygen(lab.dir.path());
        lab
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("exitd.toml")
    }

    /// The internet router with its hosts, the far host behind it and the gateway's uplink
    /// (`pub-1-{a}`, already in the gateway namespace, where exitd expects it).
    fn wire_internet(&self) {
        let (inet, far) = (&self.internet, &self.far);
        let uplink = format!("pub-1-{}", self.alloc_nr);
        veth_pair(inet, "gw0", &self.gateway, &uplink).expect("veth");
        veth_pair(inet, "far0", far, "eth0").expect("veth");
        for args in [
            &["addr", "add", &format!("{UPSTREAM4}/24"), "dev", "gw0"][..],
            &["addr", "add", "fe80::1/64", "dev", "gw0", "nodad"],
            &["addr", "add", "2a02:1802:5e::1/64", "dev", "gw0", "nodad"],
            &["addr", "add", &format!("{INTERNET4}/24"), "dev", "far0"],
            &[
                "addr",
                "add",
                &format!("{INTERNET6}/64"),
                "dev",
                "far0",
                "nodad",
            ],
            &[
                "-6", "route", "add", NODES6, "via", GATEWAY_LL, "dev", "gw0",
            ],
        ] {
            inet.ip(args).expect("internet addresses and routes");
        }
        inet.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
        far.ip(&["addr", "add", &format!("{FAR4}/24"), "dev", "eth0"])
            .expect("far address");
        far.ip(&["route", "add", "default", "via", INTERNET4])
            .expect("far route");
        // Full checksums on what reaches the gateway's XDP, as from a real router.
        for (ns, dev) in [(inet, "gw0"), (inet, "far0"), (far, "eth0")] {
            ns.exec("ethtool", &["-K", dev, "tx", "off"])
                .expect("ethtool");
        }
        // Frames the gateway's XDP redirects into its uplink are only taken by a peer that
        // runs XDP too.
        let attach = inet
            .command(EXITD)
            .args(["dataplane", "attach", "--iface", "gw0", "--pin-dir"])
            .arg(self.internet_pins.path())
            .output()
            .expect("exitd dataplane attach");
        assert_ok(&attach, "dataplane attach gw0");
    }

    /// The home: a CPE masquerading its LAN behind its one public address, the AP behind it.
    fn wire_home(&self) {
        let (cpe, ap) = (&self.cpe, &self.ap);
        veth_pair(&self.internet, "home0", cpe, "wan0").expect("veth");
        veth_pair(cpe, "lan0", ap, "eth0").expect("veth");
        self.internet
            .ip(&["addr", "add", &format!("{HOME_GW4}/24"), "dev", "home0"])
            .expect("address");
        cpe.ip(&["addr", "add", &format!("{CPE_WAN4}/24"), "dev", "wan0"])
            .expect("address");
        cpe.ip(&["addr", "add", &format!("{CPE_LAN4}/24"), "dev", "lan0"])
            .expect("address");
        cpe.ip(&["route", "add", "default", "via", HOME_GW4])
            .expect("route");
        cpe.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
        let rules = "add table ip home; \
                     add chain ip home post { type nat hook postrouting priority srcnat; }; \
                     add rule ip home post oifname \"wan0\" masquerade";
        cpe.exec("nft", &[rules]).expect("nft masquerade");
        ap.ip(&["addr", "add", &format!("{AP4}/24"), "dev", "eth0"])
            .expect("address");
        ap.ip(&["route", "add", "default", "via", CPE_LAN4])
            .expect("route");
    }

    /// Gateway (a [network] without tenants: the uplink with the public IPv4 and the eBPF
    /// forwarder/NAT), broker, concentrator and NAT64, all in one file.
    fn write_config(&self, etcd: &Etcd) {
        let dir = self.dir.path();
        let text = format!(
            "[dataplane]\npin_dir = {pins:?}\n\n\
             [dataplane.nat64]\nprefix = \"64:ff9b::/96\"\n\n\
             [admin]\nlisten = \"{ADMIN}\"\n\n\
             [network]\nallocation = \"2a02:1802:5e::/48\"\nexit_node = 1\nalloc_nr = {alloc_nr}\n\
             gateway_ipv4 = \"{PUBLIC4}/24\"\nupstream_ipv4 = \"{UPSTREAM4}\"\n\
             namespace_prefix = \"{prefix}\"\nkey_dir = {keys:?}\nwireguard = \"userspace\"\n\
             state_dir = {state:?}\n\n\
             [parker]\nlisten = \"0.0.0.0:80\"\nsigning_key_file = {sec:?}\n\
             rate_limit = {{ per_second = 0.0 }}\n\
             [parker.ipam]\npath = {ipam:?}\nparent = \"{NODES6}\"\n\
             [parker.etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"/exitd/e2e/parker/\"\n\n\
             [concentrator]\nname = \"gw1\"\nid = {id}\nendpoint = \"{PUBLIC4}:{CONCENTRATOR_PORT}\"\n\
             interface = \"{wg}\"\nnamespace = \"{gateway}\"\nwireguard = \"userspace\"\nprivate_key_file = {key:?}\n\
             state_dir = {cstate:?}\n\
             [concentrator.etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"/exitd/e2e/parker/\"\n",
            pins = self.pins.path(),
            alloc_nr = self.alloc_nr,
            prefix = self.prefix,
            etcd = etcd.endpoint(),
            keys = dir.join("keys"),
            state = dir.join("state"),
            sec = dir.join("broker.sec"),
            ipam = dir.join("ipam"),
            id = self.concentrator_id,
            wg = self.concentrator_wg,
            gateway = self.gateway.name(),
            key = dir.join("concentrator.key"),
            cstate = dir.join("concentrator"),
        );
        std::fs::write(self.config(), text).expect("write config");
    }

    /// etcd on the gateway's loopback, then `exitd run` inside the gateway namespace (with
    /// nsenter, which keeps /sys and the pins visible); waits until it runs.
    fn start_gateway(&mut self) {
        let etcd = Etcd::start_in(&self.gateway).expect("etcd in the gateway namespace");
        self.write_config(&etcd);
        self.etcd = Some(etcd);
        let mut command = self.gateway.command(EXITD);
        command
            .arg("run")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info");
        let mut daemon = Daemon::spawn(&mut command).expect("spawn exitd run");
        let up = daemon.wait_for_log("exitd running", Duration::from_secs(30));
        assert!(up, "exitd run did not start:\n{}", daemon.log());
        self.exitd = Some(daemon);
    }

    fn exitd_log(&self) -> String {
        self.exitd.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// The gateway's metrics, from its admin endpoint.
    fn metrics(&self) -> String {
        let (status, body) = http_get(&self.gateway, ADMIN, "/metrics", &[]);
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Packets the gateway's NAT64 counted under `verdict`.
    fn nat64_count(&self, verdict: &str) -> u64 {
        let label = format!("verdict=\"{verdict}\"");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("exitd_nat64_packets_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// What to show when traffic does not pass: exitd's log and the translators' and the
    /// firewall's non-zero packet counters.
    fn diagnosis(&self) -> String {
        let metrics = self.metrics();
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                [
                    "exitd_nat64_packets_total{",
                    "exitd_nat_packets_total{",
                    "exitd_firewall_",
                ]
                .iter()
                .any(|m| l.starts_with(m))
                    && !l.ends_with(" 0")
            })
            .collect();
        format!(
            "{}\n--- non-zero translator counters ---\n{}",
            self.exitd_log(),
            counters.join("\n")
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        stop_recorded_processes(&self.dir.path().join("ap-wireguard"));
        // SIGTERM to exitd; the concentrator's boringtun outlives it by design, so stop
        // that as recorded.
        self.exitd = None;
        stop_recorded_processes(&self.dir.path().join("concentrator"));
        self.etcd = None;
    }
}

/// Fails with the command's output unless it succeeded.
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn run_ok(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_ok(&out, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `count` echo requests from `source`, every one answered within the deadline.
fn ping(ns: &NetNs, source: &str, target: &str, count: u32) -> bool {
    ns.command("ping")
        .args(["-n", "-q", "-i", "0.1", "-W", "1", "-I", source, "-c"])
        .arg(count.to_string())
        .arg("-w")
        .arg((count + 2).to_string())
        .arg(target)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The Parker node on the AP: its WireGuard key, the config it fetched and its tunnel.
struct Node {
    private: Key,
    nonce: String,
    answer: serde_json::Value,
}

impl Node {
    fn new() -> Node {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        Node {
            private: Key::generate_private(),
            nonce: format!(
                "{:032x}",
                now.as_nanos() ^ (u128::from(std::process::id()) << 64)
            ),
            answer: serde_json::Value::Null,
        }
    }

    fn public(&self) -> String {
        self.private.get_public().to_base64()
    }

    /// What the node script does: GET /config from the broker with curl (until it answers
    /// 200: the concentrator registers itself in etcd first), split off the last line as the
    /// signature, verify it with the broker's public key and check the nonce and id.
    fn fetch_config(&mut self, lab: &Lab) {
        let url = format!(
            "http://{PUBLIC4}/config?pubkey={}&nonce={}&v6mtu=1280&version=v2.0.0",
            encode_key(&self.public()),
            self.nonce
        );
        let file = lab.dir.path().join("answer");
        let status = poll_until(Duration::from_secs(30), || {
            let out = lab
                .ap
                .command("curl")
                .args(["-sS", "--max-time", "5", "-o"])
                .arg(&file)
                .args(["-w", "%{http_code}", &url])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
        });
        assert!(
            status.is_some(),
            "the broker never answered the AP with 200:\n{}",
            lab.exitd_log()
        );
        let body = std::fs::read_to_string(&file).expect("answer");
        verify_with_signify(&lab.dir, &body).expect("signify-openbsd verifies the answer");
        let tampered = body.replacen("\"mtu\": ", "\"mtu\": 1", 1);
        assert!(
            verify_with_signify(&lab.dir, &tampered).is_err(),
            "signify-openbsd must reject a tampered answer"
        );
        let (json, _signature) = body.rsplit_once('\n').expect("signature line");
        self.answer = serde_json::from_str(json).expect("one line of JSON");
        assert_eq!(self.answer["nonce"], self.nonce.as_str(), "nonce echoed");
        assert_eq!(self.answer["id"], self.public().as_str(), "id present");
        assert_eq!(self.answer["mtu"], 1280);
    }

    fn str(&self, field: &str) -> &str {
        self.answer[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {}", self.answer))
    }

    fn concentrator(&self) -> &serde_json::Value {
        &self.answer["concentrators"][0]
    }

    fn tunnel(&self) -> String {
        format!("wg_c{}", self.concentrator()["id"])
    }

    /// Creates `wg_c<id>` as the node does from the answer: peer = the concentrator's key
    /// and endpoint, allowed-ips 0.0.0.0/0 and ::/0, keepalive `wg_keepalive`, MTU `mtu`,
    /// `address6/128 peer concentrator.address6`, `address4/32 peer concentrator.address4`;
    /// the default IPv6 route goes into the tunnel.
    fn bring_up_tunnel(&self, lab: &Lab) {
        let c = self.concentrator();
        let name = self.tunnel();
        let field = |f: &str| {
            c[f].as_str()
                .unwrap_or_else(|| panic!("concentrator without {f}: {c}"))
                .to_string()
        };
        let endpoint: SocketAddr = field("endpoint").parse().expect("an address endpoint");
        let peer_key = Key::from_base64(&field("pubkey")).expect("concentrator key");
        let keepalive = self.answer["wg_keepalive"].as_u64().expect("wg_keepalive") as u16;
        let backend = UserspaceBackend {
            state_dir: lab.dir.path().join("ap-wireguard"),
        };
        let private = self.private.clone();
        let configured = lab.ap.run(|| {
            backend.ensure_device(&name)?;
            let peer = PeerConfigBuilder::new(&peer_key)
                .set_endpoint(endpoint)
                .add_allowed_ip(Ipv4Addr::UNSPECIFIED.into(), 0)
                .add_allowed_ip(Ipv6Addr::UNSPECIFIED.into(), 0)
                .set_persistent_keepalive_interval(keepalive);
            let update = DeviceUpdate::new().set_private_key(private).add_peer(peer);
            backend.apply(&name, update)
        });
        configured
            .expect("enter the AP namespace")
            .expect("boringtun-cli up and configured (cargo xtask setup installs it)");
        let (address6, peer6) = (self.str("address6"), field("address6"));
        let (address4, peer4) = (self.str("address4"), field("address4"));
        let mtu = self.answer["mtu"].to_string();
        for args in [
            &["link", "set", &name, "mtu", &mtu, "up"][..],
            &[
                "-6",
                "addr",
                "add",
                address6,
                "peer",
                &format!("{peer6}/128"),
                "dev",
                &name,
                "nodad",
            ],
            &[
                "addr",
                "add",
                address4,
                "peer",
                &format!("{peer4}/32"),
                "dev",
                &name,
            ],
            &["-6", "route", "add", "default", "via", &peer6, "dev", &name],
        ] {
            lab.ap
                .ip(args)
                .expect("the node's tunnel addresses and route");
        }
    }

    /// An address of `xlat_range6`, as a CLAT uses for its clients' IPv4; added to the
    /// tunnel so the AP can send from it.
    fn clat_address(&self, lab: &Lab) -> String {
        let range: ipnet::Ipv6Net = self.str("xlat_range6").parse().expect("xlat_range6");
        let mut octets = range.network().octets();
        octets[15] = 0x64;
        let addr = Ipv6Addr::from(octets).to_string();
        lab.ap
            .ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                &self.tunnel(),
                "nodad",
            ])
            .expect("CLAT address");
        addr
    }
}

/// Downloads the internet's file with curl from `source` to `[host6]`; returns the address
/// the server saw the connection come from.
fn download(ap: &NetNs, source: &str, host6: &str, server: &FileServer) -> String {
    let size = run_ok(
        ap.command("curl")
            .args(["-6", "-sS", "--max-time", "30", "--interface", source])
            .args(["-o", "/dev/null", "-w", "%{size_download}"])
            .arg(format!("http://[{host6}]/file")),
        &format!("curl from {source} to [{host6}]"),
    );
    assert_eq!(size, FILE_SIZE.to_string(), "the whole file arrived");
    server
        .peers()
        .last()
        .map(|peer| peer.ip().to_string())
        .unwrap_or_default()
}

/// Waits until `source` reaches `target` (the first packets may wait for a handshake or a
/// neighbour), then expects 5 of 5 echo requests answered.
fn ping_works(lab: &Lab, source: &str, target: &str) {
    let answered = poll_until(Duration::from_secs(20), || {
        ping(&lab.ap, source, target, 1).then_some(())
    });
    assert!(
        answered.is_some(),
        "ping6 {target} from {source} got no answer:\n{}",
        lab.diagnosis()
    );
    assert!(
        ping(&lab.ap, source, target, 5),
        "ping6 {target} from {source}"
    );
}

/// Plain routed IPv6 from the node's address6 through the tunnel and the gateway.
fn routed_ipv6_works(lab: &Lab, node: &Node) {
    let address6 = node.str("address6");
    ping_works(lab, address6, INTERNET6);
    let server = FileServer::start(&lab.internet, &format!("[{INTERNET6}]:80"), FILE_SIZE)
        .expect("IPv6 file server");
    assert_eq!(
        download(&lab.ap, address6, INTERNET6, &server),
        address6,
        "routed IPv6 keeps the node's address"
    );
}

/// ping6 and a TCP download from the CLAT address to 64:ff9b::<internet IPv4>, counted by
/// the NAT64; the server sees the gateway's public IPv4.
fn nat64_works(lab: &Lab, clat: &str) {
    let internet64 = nat64(INTERNET4);
    // A flow's first packet counts as new_out, the rest as out.
    let sent = || lab.nat64_count("out") + lab.nat64_count("new_out");
    let (out_before, in_before) = (sent(), lab.nat64_count("in"));
    ping_works(lab, clat, &internet64);
    assert!(
        sent() - out_before >= 6,
        "the echo requests were translated by the NAT64"
    );
    assert!(
        lab.nat64_count("in") - in_before >= 6,
        "the echo replies were translated back"
    );
    let new_before = lab.nat64_count("new_out");
    let server = FileServer::start(&lab.internet, &format!("{INTERNET4}:80"), FILE_SIZE)
        .expect("IPv4 file server");
    assert_eq!(
        download(&lab.ap, clat, &internet64, &server),
        PUBLIC4,
        "the connection arrives from the gateway's public IPv4"
    );
    assert!(
        lab.nat64_count("new_out") > new_before,
        "a new NAT64 connection"
    );
}

/// traceroute through the NAT64: the internet router's Time Exceeded and the far host's
/// Port Unreachable come back as ICMPv6 from their 64:ff9b:: addresses.
fn traceroute_shows_translated_errors(lab: &Lab, clat: &str) {
    let errors_before = lab.nat64_count("icmp_error_in");
    let far64 = nat64(FAR4);
    let trace = lab
        .ap
        .command("traceroute")
        .args([
            "-6", "-n", "-q", "1", "-w", "1", "-m", "6", "-s", clat, &far64,
        ])
        .output()
        .expect("traceroute");
    let text = String::from_utf8_lossy(&trace.stdout);
    let router64 = nat64(UPSTREAM4);
    assert!(
        text.contains(&format!(" {router64} ")),
        "the internet router's hop ({router64}) is shown:\n{text}\n{}",
        lab.diagnosis()
    );
    assert!(
        text.contains(&format!(" {far64} ")),
        "the target is reached:\n{text}"
    );
    assert!(
        lab.nat64_count("icmp_error_in") - errors_before >= 2,
        "ICMP errors were translated"
    );
}

/// A source outside xlat_range6 (the node's address6) is not translated: dropped, counted.
fn other_sources_are_dropped(lab: &Lab, node: &Node) {
    let dropped_before = lab.nat64_count("drop_not_xlat");
    let target = nat64(INTERNET4);
    assert!(
        !ping(&lab.ap, node.str("address6"), &target, 3),
        "address6 is not in xlat_range6: no translation"
    );
    assert!(lab.nat64_count("drop_not_xlat") - dropped_before >= 3);
}

#[test]
fn a_parker_node_behind_nat_reaches_the_internet_over_ipv6_and_nat64() {
    let mut lab = Lab::new();
    lab.start_gateway();

    // The node's config: signed, verified, offering the concentrator exitd runs.
    let mut node = Node::new();
    node.fetch_config(&lab);
    let offered = node.concentrator();
    assert_eq!(offered["id"], lab.concentrator_id);
    assert_eq!(
        offered["endpoint"],
        format!("{PUBLIC4}:{CONCENTRATOR_PORT}").as_str()
    );
    let range6: ipnet::Ipv6Net = node.str("range6").parse().expect("range6");
    let nodes: ipnet::Ipv6Net = NODES6.parse().expect("parent");
    assert!(nodes.contains(&range6), "range6 {range6} from the parent");

    // The tunnel through the CPE's NAT, then plain IPv6 and NAT64 through the gateway.
    node.bring_up_tunnel(&lab);
    routed_ipv6_works(&lab, &node);
    let clat = node.clat_address(&lab);
    nat64_works(&lab, &clat);
    traceroute_shows_translated_errors(&lab, &clat);
    other_sources_are_dropped(&lab, &node);
}
