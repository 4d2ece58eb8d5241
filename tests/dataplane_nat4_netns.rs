//! The eBPF IPv4 translator on a real exit-node topology built by `exitd apply`, with the
//! gateway's kernel IPv4 forwarding switched off (`net.ipv4.ip_forward=0`): whatever crosses
//! the gateway can only have been translated and forwarded by XDP. Real clients: curl,
//! ping, traceroute, UDP and TCP sockets. Userspace WireGuard (boringtun-cli) stands in for
//! the kernel's, which this machine lacks. Needs root.
//!
//! ```text
//!  internet ── eth0 ═ port1 ── upstream ── port0 ═ pub-1-A ── [gateway: xdp_fwd6+nat4]
//!  198.51.100.10        185.69.166.1 (router)    185.69.166.123   ├─ to-1abc-A ═ net-1abc-A (alice, 10.26.188.1)
//!                                                                 └─ to-1123-A ═ net-1123-A (bob, 10.17.35.1)
//! ```

mod common;

use common::{assert_success, clean_run, collect_logs};
use exitd_testkit::{NetNs, TestPins, poll_until, require_root};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");
const PUBLIC: &str = "185.69.166.123";
const ROUTER: &str = "185.69.166.1";
const INTERNET: &str = "198.51.100.10";
const ALICE: &str = "10.26.188.1";
const BOB: &str = "10.17.35.1";

/// One exit node (exit node 1) with two tenants (ExitPoints only), an upstream router and
/// an "internet" host behind it.
struct Site {
    host: NetNs,
    upstream: NetNs,
    internet: NetNs,
    pins: TestPins,
    upstream_pins: TestPins,
    dir: PathBuf,
    prefix: String,
    alloc_nr: u32,
}

impl Site {
    /// Builds the site with `[dataplane.nat]` settings `nat` (TOML lines) and applies it.
    fn new(nat: &str) -> Site {
        require_root();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("exitd-nat4-test-{pid}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let site = Site {
            host: NetNs::new("nthost").unwrap(),
            upstream: NetNs::new("ntup").unwrap(),
            internet: NetNs::new("ntinet").unwrap(),
            pins: TestPins::new().unwrap(),
            upstream_pins: TestPins::new().unwrap(),
            dir,
            prefix: format!("xn{pid}n{n}-"),
            // Unique per test: WireGuard control sockets are shared machine-wide.
            alloc_nr: 60_000 + (pid % 1_000) * 10 + n,
        };
        site.write_config(nat);
        site.wire_upstream();
        site.apply();
        site
    }

    fn config(&self) -> String {
        self.dir.join("exitd.toml").to_str().unwrap().to_string()
    }

    fn write_config(&self, nat: &str) {
        let text = format!(
            "[dataplane]\npin_dir = {pins:?}\n\n[dataplane.nat]\n{nat}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [network]\nallocation = \"2a02:1802:5e::/48\"\nexit_node = 1\nalloc_nr = {a}\nuplink = \"upl0\"\n\
             gateway_ipv4 = \"{PUBLIC}/24\"\nupstream_ipv4 = \"{ROUTER}\"\nnamespace_prefix = \"{prefix}\"\n\
             key_dir = \"{keys}\"\nwireguard = \"userspace\"\nstate_dir = \"{state}\"\n\n\
             [[network.tenants]]\nname = \"alice\"\n\
             port_forwards = [{{ protocol = \"tcp\", port = 8443, to = \"{ALICE}:443\" }}]\n\
             [[network.tenants.resources]]\nnode = \"exit\"\nprefix = \"2a02:1802:5e:1abc::/64\"\nexitpoint = true\n\
             [[network.tenants]]\nname = \"bob\"\n[[network.tenants.resources]]\n\
             node = \"exit\"\nprefix = \"2a02:1802:5e:1123::/64\"\nexitpoint = true\n",
            pins = self.pins.path(),
            a = self.alloc_nr,
            prefix = self.prefix,
            keys = self.dir.join("keys").display(),
            state = self.dir.join("state").display(),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// The upstream router between the gateway's uplink and the internet host. Both send
    /// their own traffic without checksum offload, as a real router's forwarded traffic
    /// arrives (a veth would otherwise hand XDP partial checksums).
    fn wire_upstream(&self) {
        common::wire_upstream(&self.upstream, &self.host, &self.internet, INTERNET);
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

    fn exitd(&self, args: &[&str]) -> String {
        let out = self.host.command(EXITD).args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// `exitd apply`, the gateway's kernel IPv4 forwarding off, `exitd dataplane sync`.
    fn apply(&self) {
        let state = self.dir.join("state");
        let config = self.config();
        self.exitd(&[
            "apply",
            "--config",
            &config,
            "--wireguard",
            "userspace",
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        let off = self
            .ns_command(&self.gateway(), "sysctl")
            .args(["-qw", "net.ipv4.ip_forward=0"])
            .output()
            .unwrap();
        assert_success(&off, &["sysctl"]);
        self.exitd(&["dataplane", "sync", "--config", &config]);
    }

    fn gateway(&self) -> String {
        format!("{}gw-1-{}", self.prefix, self.alloc_nr)
    }

    fn exitpoint(&self, hex: &str) -> String {
        format!("{}net-{hex}-{}", self.prefix, self.alloc_nr)
    }

    /// A command in one of exitd's namespaces (nsenter keeps /sys and the pins visible).
    fn ns_command(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--net={}",
            exitd::netlink::netns::path(ns).display()
        ))
        .args(["--", program]);
        cmd
    }

    /// Runs `f` in one of exitd's namespaces (sockets opened there stay there).
    fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(exitd::netlink::netns::path(ns)).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
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

    fn ping_from(&self, ns: &str, source: &str, target: &str, count: u32) -> u32 {
        let out = self
            .ns_command(ns, "ping")
            .args(["-n", "-q", "-i", "0.05", "-W", "1", "-I", source, "-c"])
            .arg(count.to_string())
            .arg(target)
            .output()
            .unwrap();
        received(&String::from_utf8_lossy(&out.stdout))
    }

    /// Packets the translator counted under `verdict`.
    fn nat_count(&self, verdict: &str) -> u64 {
        let stats = self.exitd(&["nat", "stats", "--json", "--config", &self.config()]);
        let doc: serde_json::Value = serde_json::from_str(&stats).unwrap();
        doc["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["verdict"] == verdict)
            .and_then(|v| v["packets"].as_u64())
            .unwrap()
    }

    fn nat_list(&self) -> Vec<serde_json::Value> {
        let list = self.exitd(&["nat", "list", "--json", "--config", &self.config()]);
        serde_json::from_str::<serde_json::Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until alice reaches the internet (next hops resolve in the first moments).
    fn wait_ready(&self) {
        let alice = self.exitpoint("1abc");
        let up = poll_until(Duration::from_secs(20), || {
            (self.ping_from(&alice, ALICE, INTERNET, 1) == 1).then_some(())
        });
        assert!(up.is_some(), "alice never reached the internet host");
    }

    /// A UDP server on the internet host that answers each datagram with the address it
    /// came from; returns its address.
    fn udp_reflector(&self) -> SocketAddr {
        let socket = self
            .internet
            .run(|| UdpSocket::bind(format!("{INTERNET}:0")).unwrap())
            .unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(from.to_string().as_bytes(), from);
            }
        });
        addr
    }

    /// Sends one datagram from `source` (in namespace `ns`) to `server`; returns the
    /// address the server saw, or None when no answer came.
    fn udp_ask(&self, ns: &str, source: &str, server: SocketAddr) -> Option<String> {
        let socket = self.in_ns(ns, || UdpSocket::bind(source).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        socket.send_to(b"who am I", server).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        clean_run(&self.dir, &self.prefix);
    }
}

/// Received count from ping's summary line.
fn received(text: &str) -> u32 {
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("");
    line.split(',')
        .nth(1)
        .and_then(|w| w.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn tenants_reach_the_internet_from_the_public_address_through_xdp_alone() {
    let site = Site::new("");
    site.wait_ready();
    let alice = site.exitpoint("1abc");
    let bob = site.exitpoint("1123");

    // ping, both tenants.
    let sent = || site.nat_count("out") + site.nat_count("new_out");
    let out_before = sent();
    assert_eq!(site.ping_from(&alice, ALICE, INTERNET, 10), 10);
    assert_eq!(site.ping_from(&bob, BOB, INTERNET, 10), 10);
    assert_eq!(
        sent() - out_before,
        20,
        "every echo request went through XDP"
    );

    // A real HTTP download (4 MiB) with curl; the server sees the public address.
    let listener = site
        .internet
        .run(|| TcpListener::bind(format!("{INTERNET}:8080")).unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).unwrap();
        let body = vec![b'x'; 4 << 20];
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body).unwrap();
        peer
    });
    let curl = site
        .ns_command(&alice, "curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--interface",
            ALICE,
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{size_download}"])
        .arg(format!("http://{INTERNET}:8080/file"))
        .output()
        .unwrap();
    assert_success(&curl, &["curl"]);
    assert_eq!(String::from_utf8_lossy(&curl.stdout), (4 << 20).to_string());
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        PUBLIC,
        "translated to the public address"
    );

    // UDP request/response keeps the source port when it is free.
    let reflector = site.udp_reflector();
    let seen = site.udp_ask(&alice, &format!("{ALICE}:40404"), reflector);
    assert_eq!(seen.as_deref(), Some(&*format!("{PUBLIC}:40404")));

    // Two tenants, one source port, one remote: no collision on the public side.
    let seen_bob = site
        .udp_ask(&bob, &format!("{BOB}:40404"), reflector)
        .expect("bob's datagram is answered too");
    assert!(seen_bob.starts_with(PUBLIC) && seen_bob != format!("{PUBLIC}:40404"));

    // `exitd nat list` shows the live translations.
    let list = site.nat_list();
    let has = |inside: &str, public: &str| {
        list.iter()
            .any(|c| c["inside"] == inside && c["public"] == public && c["live"] == true)
    };
    assert!(
        has(&format!("{ALICE}:40404"), &format!("{PUBLIC}:40404")),
        "{list:?}"
    );
    assert!(has(&format!("{BOB}:40404"), &seen_bob), "{list:?}");
    // … and bpftool reads the same map by its pinned name, with BTF field names.
    let dump = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(site.pins.path().join(site.gateway()).join("CT4"))
        .output()
        .unwrap();
    assert_success(&dump, &["bpftool map dump CT4"]);
    assert!(String::from_utf8_lossy(&dump.stdout).contains("\"last_seen\""));
}

#[test]
fn traceroute_and_port_forwards_work_through_the_nat_and_tenants_stay_apart() {
    let site = Site::new("");
    site.wait_ready();
    let alice = site.exitpoint("1abc");

    // traceroute (UDP probes): the upstream router's Time Exceeded and the target's Port
    // Unreachable come back to the public address and are translated, inner header too.
    let errors_before = site.nat_count("icmp_error");
    let trace = site
        .ns_command(&alice, "traceroute")
        .args(["-n", "-q", "1", "-w", "1", "-m", "5", "-s", ALICE, INTERNET])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&trace.stdout);
    assert!(text.contains(ROUTER), "the router's hop is shown:\n{text}");
    assert!(
        text.contains(&format!(" {INTERNET} ")),
        "the target is reached:\n{text}"
    );
    assert!(
        site.nat_count("icmp_error") - errors_before >= 2,
        "ICMP errors were translated by XDP"
    );

    // A port forward: the internet connects to PUBLIC:8443 and reaches alice's :443.
    let listener = site.in_ns(&alice, || {
        TcpListener::bind(format!("{ALICE}:443")).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"hello from alice").unwrap();
        peer
    });
    let reply = site
        .internet
        .run(|| {
            let mut s = TcpStream::connect(format!("{PUBLIC}:8443")).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap();
    assert_eq!(reply, "hello from alice");
    assert_eq!(server.join().unwrap().ip().to_string(), INTERNET);
    assert!(site.nat_count("new_forward") >= 1);

    // Tenant isolation: alice cannot reach bob's private network through the gateway.
    let isolated_before = site.nat_count("drop_isolation");
    assert_eq!(site.ping_from(&alice, ALICE, BOB, 3), 0);
    assert_eq!(site.nat_count("drop_isolation") - isolated_before, 3);
}

#[test]
fn a_tiny_port_range_runs_out_logs_it_and_expired_ports_come_back() {
    let site = Site::new("ports = \"40000-40001\"\nudp = 1\nicmp = 1\n");
    // The daemon follows the maps and logs exhaustion.
    let mut daemon = site
        .host
        .command(EXITD)
        .args(["run", "--config", &site.config()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = collect_logs(&mut daemon);
    let daemon = Daemon(daemon);
    let logged = |needle: &str| {
        poll_until(Duration::from_secs(20), || {
            logs.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
                .then_some(())
        })
        .is_some()
    };
    assert!(logged("XDP forwarder running"));
    site.wait_ready();
    let alice = site.exitpoint("1abc");
    let reflector = site.udp_reflector();
    // Let the readiness pings expire so both ports are free.
    let idle = poll_until(Duration::from_secs(10), || {
        site.nat_list().is_empty().then_some(())
    });
    assert!(idle.is_some(), "the ping entries expire after 1 s");

    let a = site.udp_ask(&alice, &format!("{ALICE}:5001"), reflector);
    let b = site.udp_ask(&alice, &format!("{ALICE}:5002"), reflector);
    let mut used = vec![a.expect("first flow"), b.expect("second flow")];
    used.sort();
    assert_eq!(
        used,
        [format!("{PUBLIC}:40000"), format!("{PUBLIC}:40001")],
        "both ports of the range are handed out"
    );
    let dropped_before = site.nat_count("drop_exhausted");
    assert_eq!(
        site.udp_ask(&alice, &format!("{ALICE}:5003"), reflector),
        None,
        "a third flow finds no port"
    );
    assert!(site.nat_count("drop_exhausted") > dropped_before);
    assert!(
        logged("NAT port exhaustion"),
        "the daemon logs the exhaustion"
    );

    // After the 1-second UDP timeout the ports are reclaimed by the next lookup.
    let expired = poll_until(Duration::from_secs(10), || {
        site.nat_list().is_empty().then_some(())
    });
    assert!(expired.is_some(), "the flows expire");
    assert!(
        site.udp_ask(&alice, &format!("{ALICE}:5003"), reflector)
            .is_some_and(|seen| seen.starts_with(PUBLIC)),
        "a new flow gets an expired flow's port"
    );
    assert!(site.nat_count("expired") >= 1);
    drop(daemon);
}

/// A running `exitd run`, stopped with SIGTERM when dropped — also when the test fails.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
