//! The reconciler end to end, with real namespaces, veths, nftables and userspace WireGuard
//! (boringtun-cli: this kernel has no WireGuard module; production uses the kernel's).
//!
//! Topology (every namespace unique to this test process):
//! ```text
//!   remote (2a02:1802:5e:1d00::/64, wg) ── internet ── upstream ── port0/upl0 ── exitd's host
//!                                                                   │ (moved by exitd)
//!                                          gw-1-A ── to-1abc-A ── net-1abc-A (tenant alice)
//!                                                 └─ to-1123-A ── net-1123-A (tenant bob)
//! ```
//! The upstream namespace gets exactly the routes `exitd plan upstream` prints.

mod common;

use common::{assert_success, clean_run};
use exitd_testkit::{NetNs, poll_until, require_root, veth_pair};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::Duration,
};

const ALLOC: &str = "2a02:1802:5e::/48";
const EXITD: &str = env!("CARGO_BIN_EXE_exitd");

/// Namespaces, processes and files of one run, all removed on drop.
struct Fixture {
    host: NetNs,
    upstream: NetNs,
    remote: NetNs,
    dir: PathBuf,
    prefix: String,
    alloc_nr: u32,
    remote_wg: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        sweep_stale_runs();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 10, "at most 10 fixtures per test process");
        let dir = std::env::temp_dir().join(format!("exitd-plan-test-{pid}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture {
            host: NetNs::new("host").unwrap(),
            upstream: NetNs::new("up").unwrap(),
            remote: NetNs::new("far").unwrap(),
            dir,
            prefix: format!("xp{pid}-{n}-"),
            // Unique per fixture (5 digits at most, for 15-byte names): WireGuard control
            // sockets are shared machine-wide.
            alloc_nr: (pid % 10_000) * 10 + n,
            remote_wg: None,
        }
    }

    fn gw(&self) -> String {
        format!("{}gw-1-{}", self.prefix, self.alloc_nr)
    }

    fn ep(&self, hex: &str) -> String {
        format!("{}net-{hex}-{}", self.prefix, self.alloc_nr)
    }

    fn name(&self, kind: &str, hex: &str) -> String {
        format!("{kind}-{hex}-{}", self.alloc_nr)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("exitd.toml")
    }

    fn write_config(&self, remote_key: Option<&str>, with_bob: bool) {
        let mut text = format!(
            r#"[network]
allocation = "{ALLOC}"
exit_node = 1
alloc_nr = {a}
uplink = "upl0"
gateway_ipv4 = "185.69.166.123/24"
upstream_ipv4 = "185.69.166.1"
namespace_prefix = "{prefix}"
key_dir = "{keys}"
wireguard = "userspace"
state_dir = "{state}"

[[network.tenants]]
name = "alice"
[[network.tenants.port_forwards]]
protocol = "tcp"
port = 8080
to = "10.26.188.1:80"
[[network.tenants.resources]]
node = "exit"
prefix = "2a02:1802:5e:1abc::/64"
exitpoint = true
"#,
            a = self.alloc_nr,
            prefix = self.prefix,
            keys = self.dir.join("keys").display(),
            state = self.dir.join("state").display(),
        );
        if let Some(key) = remote_key {
            text.push_str(&format!(
                "[[network.tenants.resources]]\nnode = \"far\"\nprefix = \"2a02:1802:5e:1d00::/64\"\npublic_key = \"{key}\"\n"
            ));
        }
        if with_bob {
            text.push_str(
                "[[network.tenants]]\nname = \"bob\"\n[[network.tenants.resources]]\nnode = \"exit\"\nprefix = \"2a02:1802:5e:1123::/64\"\nexitpoint = true\n",
            );
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// `exitd ARGS…` run inside the host namespace; its stdout.
    fn exitd(&self, args: &[&str]) -> String {
        let out = self.host.command(EXITD).args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self) -> String {
        let config = self.config_path();
        let state = self.dir.join("state");
        self.exitd(&[
            "apply",
            "--config",
            config.to_str().unwrap(),
            "--wireguard",
            "userspace",
            "--state-dir",
            state.to_str().unwrap(),
        ])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.remote_wg.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        clean_run(&self.dir, &self.prefix);
    }
}

/// Cleans up after earlier runs that were killed before their drop ran.
fn sweep_stale_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, n)) = name
            .strip_prefix("exitd-plan-test-")
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            clean_run(&entry.path(), &format!("xp{pid}-{n}-"));
        }
    }
}

/// `ip -n NS ARGS…` output lines.
fn ip(ns: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert_success(&out, args);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Everything observable of a namespace that the reconciler could change.
fn snapshot(ns: &str) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for args in [
        &["-br", "link"][..],
        &["-br", "addr"][..],
        &["route"][..],
        &["-6", "route"][..],
    ] {
        lines.extend(
            ip(ns, args)
                .into_iter()
                .map(|l| format!("{ns} {args:?}: {l}")),
        );
    }
    lines
}

fn ping(ns: &Path, args: &[&str]) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["--", "ping", "-c1", "-W1"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn eventually_pings(ns: &Path, args: &[&str]) {
    eprintln!("ping {args:?}");
    let ok = poll_until(Duration::from_secs(20), || ping(ns, args).then_some(()));
    assert!(
        ok.is_some(),
        "ping {args:?} from {} never answered",
        ns.display()
    );
}

fn netns_path(name: &str) -> PathBuf {
    exitd::netlink::netns::path(name)
}

fn setup_upstream(fx: &Fixture) {
    veth_pair(&fx.upstream, "port0", &fx.host, "upl0").unwrap();
    veth_pair(&fx.upstream, "inet0", &fx.remote, "inet1").unwrap();
    let up = &fx.upstream;
    up.ip(&["addr", "add", "fe80::1/64", "dev", "port0", "nodad"])
        .unwrap();
    up.ip(&["addr", "add", "2a02:1802:5e::1/64", "dev", "port0", "nodad"])
        .unwrap();
    up.ip(&["addr", "add", "185.69.166.1/24", "dev", "port0"])
        .unwrap();
    up.ip(&[
        "addr",
        "add",
        "2001:db8:ffff::1/64",
        "dev",
        "inet0",
        "nodad",
    ])
    .unwrap();
    up.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let r = &fx.remote;
    r.ip(&[
        "addr",
        "add",
        "2001:db8:ffff::2/64",
        "dev",
        "inet1",
        "nodad",
    ])
    .unwrap();
    r.ip(&["-6", "route", "add", "default", "via", "2001:db8:ffff::1"])
        .unwrap();
    // The operator's part: exactly what `exitd plan upstream` prints.
    let config = fx.config_path();
    let routes = fx.exitd(&[
        "plan",
        "upstream",
        "--config",
        config.to_str().unwrap(),
        "--port",
        "port0",
    ]);
    let count = up.add_upstream_routes(&routes).unwrap().len();
    assert_eq!(count, 1, "one exit node, one upstream route: {routes}");
}

/// The remote network resource: its own boringtun, configured through exitd's WireGuard
/// module, peering with the ExitPoint at its NRLocalIP6.
fn start_remote(fx: &mut Fixture, remote_key: &wireguard_control::Key, ep_public: &str) {
    let wg = fx.name("wg", "1d00");
    let log = fx.dir.join("remote-wg.log");
    let child = fx
        .remote
        .command("boringtun-cli")
        .args([
            "-f",
            "--disable-drop-privileges",
            "--log",
            log.to_str().unwrap(),
            &wg,
        ])
        .env("WG_SUDO", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("boringtun-cli (cargo xtask setup installs it)");
    fx.remote_wg = Some(child);
    let plan = exitd::plan::WireguardPlan {
        link: wg.clone(),
        listen_port: 0x1d00,
        mtu: 1420,
        keepalive: 0,
        private_key_file: PathBuf::new(),
        peers: vec![exitd::plan::PeerPlan {
            node: "exit".into(),
            prefix: "2a02:1802:5e:1abc::/64".parse().unwrap(),
            public_key: ep_public.to_string(),
            endpoint: Some("[2a02:1802:5e:1abc::1]:6844".parse().unwrap()),
            allowed_ips: ["2a02:1802:5e::/48", "0.0.0.0/0", "fe80::1abc/128"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        }],
    };
    let key = remote_key.clone();
    let state = fx.dir.join("remote-state");
    let wg_name = wg.clone();
    fx.remote
        .run(move || {
            let ok = poll_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(format!(
                    "/var/run/wireguard/{wg_name}.sock"
                ))
                .ok()
                // boringtun serves one control connection at a time: do not hold this one.
                .map(drop)
            });
            assert!(ok.is_some(), "remote boringtun did not start");
            let backend = exitd::wireguard::UserspaceBackend { state_dir: state };
            exitd::wireguard::reconcile(&backend, &plan, &key).unwrap();
        })
        .unwrap();
    let r = &fx.remote;
    r.ip(&["link", "set", &wg, "up"]).unwrap();
    r.ip(&[
        "addr",
        "add",
        "2a02:1802:5e:1d00::1/64",
        "dev",
        &wg,
        "nodad",
    ])
    .unwrap();
    r.ip(&["addr", "add", "fe80::1d00/64", "dev", &wg, "nodad"])
        .unwrap();
    r.ip(&["addr", "add", "10.29.0.1/24", "dev", &wg]).unwrap();
    r.ip(&["-6", "route", "add", ALLOC, "dev", &wg]).unwrap();
    r.ip(&["route", "add", "default", "dev", &wg]).unwrap();
    // The tunnel's endpoint (the ExitPoint's NRLocalIP6) lies inside the /48 the tunnel
    // carries: reach it over the underlay, not through the tunnel itself.
    let endpoint = [
        "-6",
        "route",
        "add",
        "2a02:1802:5e:1abc::1/128",
        "via",
        "2001:db8:ffff::1",
    ];
    r.ip(&endpoint).unwrap();
}

fn public_key_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    wireguard_control::Key::from_base64(text.trim())
        .unwrap()
        .get_public()
        .to_base64()
}

/// Foreign objects in exitd's gateway namespace that it must never touch.
fn add_foreign_objects(gw: &str) {
    let cmd = |args: &[&str]| {
        let out = Command::new("ip")
            .arg("-n")
            .arg(gw)
            .args(args)
            .output()
            .unwrap();
        assert_success(&out, args);
    };
    cmd(&[
        "link", "add", "keep0", "type", "veth", "peer", "name", "keep1",
    ]);
    cmd(&[
        "-6",
        "route",
        "add",
        "2001:db8:f00::/64",
        "via",
        "fe80::1",
        "dev",
        &format!("pub-1-{}", gw.rsplit('-').next().unwrap()),
        "proto",
        "static",
    ]);
}

fn without(lines: &BTreeSet<String>, needles: &[&str]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| !needles.iter().any(|n| l.contains(n)))
        .cloned()
        .collect()
}

#[test]
fn reconciler_builds_the_seed_network_and_removes_exactly_what_is_gone() {
    require_root();
    let mut fx = Fixture::new();
    let remote_key = wireguard_control::Key::generate_private();
    let remote_public = remote_key.get_public().to_base64();
    fx.write_config(Some(&remote_public), true);
    setup_upstream(&fx);

    let first = fx.apply();
    assert!(
        first.contains(&format!("created namespace {}", fx.gw())),
        "{first}"
    );
    let (gw, alice, bob) = (fx.gw(), fx.ep("1abc"), fx.ep("1123"));
    let ep_public = public_key_of(
        &fx.dir
            .join("keys")
            .join(format!("{}.key", fx.name("wg", "1abc"))),
    );
    start_remote(&mut fx, &remote_key, &ep_public);

    let up = fx.upstream.path();
    eventually_pings(&up, &["2a02:1802:5e:1abc::1"]);
    eventually_pings(&up, &["2a02:1802:5e:1123::1"]);
    // IPv4 out of a tenant network only works through the gateway's SNAT.
    eventually_pings(&netns_path(&alice), &["-I", "10.26.188.1", "185.69.166.1"]);
    assert!(
        ping(&netns_path(&alice), &["2a02:1802:5e:1abc::1"]),
        "lo of the ExitPoint is down"
    );
    eventually_pings(&fx.remote.path(), &["-I", "10.29.0.1", "185.69.166.1"]);
    eventually_pings(&up, &["2a02:1802:5e:1d00::1"]);

    port_forward_reaches_the_tenant(&fx.upstream, &alice);
    add_foreign_objects(&gw);
    // Namespaces that look like exitd's but are not this exit node's or allocation's.
    let foreign_ns = [
        format!("{}net-2abc-{}", fx.prefix, fx.alloc_nr),
        format!("{}net-1abc-{}", fx.prefix, fx.alloc_nr + 1),
        format!("{}other", fx.prefix),
    ];
    for name in &foreign_ns {
        exitd::netlink::netns::create(name).unwrap();
    }
    assert_eq!(
        fx.apply().trim(),
        "no changes",
        "second apply must change nothing"
    );

    let namespaces = [gw.clone(), alice.clone(), bob.clone()];
    let before: BTreeSet<String> = namespaces.iter().flat_map(|ns| snapshot(ns)).collect();
    fx.write_config(None, true);
    let removal = fx.apply();
    for line in removal.lines() {
        assert!(
            line.contains("1d00")
                || line.contains("10.29.0")
                || line.contains("peer")
                || line.contains("nftables"),
            "removing the remote resource changed something else: {line}\n{removal}"
        );
    }
    let after: BTreeSet<String> = namespaces.iter().flat_map(|ns| snapshot(ns)).collect();
    let gone = ["1d00", "10.29.0."];
    assert!(before.len() > after.len(), "nothing was removed");
    assert_eq!(
        without(&before, &gone),
        after,
        "only the remote resource's state may go"
    );
    assert!(after.iter().all(|l| !l.contains("1d00")), "{after:#?}");
    assert!(
        after.iter().any(|l| l.contains("keep0")),
        "foreign link removed"
    );
    assert!(
        after.iter().any(|l| l.contains("2001:db8:f00::/64")),
        "foreign route removed"
    );
    let nat = nft_rules(&gw);
    assert!(
        nat.contains("10.26.188.0/24") && !nat.contains("10.29.0.0/24"),
        "{nat}"
    );
    let peers = peer_count(&alice, &fx.name("wg", "1abc"), fx.dir.join("state"));
    assert_eq!(
        peers, 0,
        "the removed resource's WireGuard peer is still there"
    );
    eventually_pings(&up, &["2a02:1802:5e:1abc::1"]);
    assert!(!ping(&up, &["2a02:1802:5e:1d00::1"]));

    // A whole tenant network goes: its namespace, veth and gateway routes with it.
    fx.write_config(None, false);
    let removal = fx.apply();
    assert!(
        removal.contains(&format!("removed namespace {bob}")),
        "{removal}"
    );
    assert!(!exitd::netlink::netns::exists(&bob));
    for name in &foreign_ns {
        assert!(
            exitd::netlink::netns::exists(name),
            "foreign namespace {name} removed"
        );
    }
    let gw_state = snapshot(&gw);
    assert!(
        gw_state
            .iter()
            .all(|l| !l.contains("1123") && !l.contains("10.17.35")),
        "{gw_state:#?}"
    );
    assert!(!nft_rules(&gw).contains("10.17.35.0/24"));
    eventually_pings(&up, &["2a02:1802:5e:1abc::1"]);
    assert_eq!(fx.apply().trim(), "no changes");
}

/// A TCP connection from upstream to GWPubIP4:8080 lands on 10.26.188.1:80 in the tenant
/// network (the port forward of alice's configuration).
fn port_forward_reaches_the_tenant(upstream: &NetNs, alice: &str) {
    let listener = in_netns(alice, || {
        std::net::TcpListener::bind("10.26.188.1:80").unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        std::io::Write::write_all(&mut conn, b"hello from alice").unwrap();
        peer
    });
    let text = upstream
        .run(|| {
            let addr = "185.69.166.123:8080".parse().unwrap();
            let mut conn =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut conn, &mut text).unwrap();
            text
        })
        .unwrap();
    assert_eq!(text, "hello from alice");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        "185.69.166.1",
        "the client's address is kept"
    );
}

/// Runs `f` on a thread inside the named namespace (sockets it opens live there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns_path(ns)).unwrap();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this new thread only, with a valid namespace fd.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

fn nft_rules(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "ip", "exitd"])
        .output()
        .unwrap();
    assert_success(&out, &["nft list table"]);
    String::from_utf8(out.stdout).unwrap()
}

fn peer_count(ns: &str, wg: &str, state_dir: PathBuf) -> usize {
    use exitd::wireguard::WireguardBackend;
    let wg = wg.to_string();
    in_netns(ns, move || {
        let backend = exitd::wireguard::UserspaceBackend { state_dir };
        backend
            .state(&wg)
            .unwrap()
            .expect("device exists")
            .peers
            .len()
    })
}

/// `exitd run` applies the configured network at start-up (WireGuard backend and state
/// directory from the configuration), then runs until SIGTERM.
#[test]
fn daemon_applies_the_network_at_start() {
    require_root();
    let fx = Fixture::new();
    fx.write_config(None, true);
    // Only the reconciler here: the XDP forwarder (dataplane.forward) has its own tests.
    let mut text = std::fs::read_to_string(fx.config_path()).unwrap();
    text.insert_str(0, "[dataplane]\nforward = false\n\n");
    std::fs::write(fx.config_path(), text).unwrap();
    setup_upstream(&fx);
    let config = fx.config_path();
    let mut daemon = fx
        .host
        .command(EXITD)
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (gw, bob) = (fx.gw(), fx.ep("1123"));
    let applied = poll_until(Duration::from_secs(30), || {
        let ready = exitd::netlink::netns::exists(&bob)
            && ip(&bob, &["-6", "route"])
                .iter()
                .any(|l| l.starts_with("default via fe80::1:1123"));
        ready.then_some(())
    });
    // SAFETY: the pid of the daemon this test started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(applied.is_some(), "the daemon did not apply the network");
    assert!(status.success(), "daemon exited with {status}");
    assert!(
        ip(&gw, &["-6", "route"])
            .iter()
            .any(|l| l.starts_with("default via fe80::1 dev pub-1-"))
    );
    eventually_pings(&fx.upstream.path(), &["2a02:1802:5e:1123::1"]);
    assert_eq!(fx.apply().trim(), "no changes");
}

fn exitd_plan(args: &[&str]) -> Output {
    Command::new(EXITD).arg("plan").args(args).output().unwrap()
}

const SEED_FLAGS: &[&str] = &[
    "--allocation",
    ALLOC,
    "--exit-node",
    "1",
    "--alloc-nr",
    "1",
    "--resource",
    "2a02:1802:5e:1abc::/64",
    "--resource",
    "2a02:1802:5e:1123::/64",
    "--gateway-ipv4",
    "185.69.166.123/24",
];

/// `exitd plan` for the seed's example (1abc and 1123 behind exit node 1) shows the
/// drawing's names, addresses and routes.
#[test]
fn plan_cli_shows_the_seed_drawing() {
    let out = exitd_plan(SEED_FLAGS);
    assert_success(&out, SEED_FLAGS);
    let table = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "GATEWAY (namespace gw-1-1)",
        "fe80::1000:0:0:1/64 2a02:1802:5e:0:1000::1/64 185.69.166.123/24",
        "to-1abc-1       veth <-> pub-1abc-1@net-1abc-1       fe80::1:1abc/64 10.1.0.1/32",
        "to-1123-1       veth <-> pub-1123-1@net-1123-1       fe80::1:1123/64 10.1.0.1/32",
        "default via fe80::1 dev pub-1-1",
        "2a02:1802:5e:1abc::/64 via fe80::1abc:1 dev to-1abc-1",
        "2a02:1802:5e:1123::/64 via fe80::1123:1 dev to-1123-1",
        "pub-1abc-1      veth <-> to-1abc-1@gw-1-1            fe80::1abc:1/64 10.255.26.188/32",
        "veth-1abc-1",
        "2a02:1802:5e:1abc::1/64 10.26.188.1/24",
        "wg-1abc-1       wireguard                            fe80::1abc/64 10.255.26.188/16",
        "default via fe80::1:1abc dev pub-1abc-1",
        "pub-1123-1      veth <-> to-1123-1@gw-1-1            fe80::1123:1/64 10.255.17.35/32",
        "10.17.35.1/24",
        "wireguard wg-1abc-1 listen-port 6844",
        "snat 10.26.188.0/24 -> 185.69.166.123 out pub-1-1",
    ] {
        assert!(table.contains(expected), "missing {expected:?} in\n{table}");
    }
}

#[test]
fn plan_cli_json_and_upstream() {
    let args = [SEED_FLAGS, &["--json"]].concat();
    let out = exitd_plan(&args);
    assert_success(&out, &args);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["exit_node_net"], "2a02:1802:5e:1000::/52");
    assert_eq!(plan["dataplane"]["default_route"]["link"], "pub-1-1");
    assert_eq!(plan["dataplane"]["prefixes"][0]["next_hop"], "fe80::1123:1");
    assert_eq!(plan["exitpoints"][1]["wireguard"]["link"], "wg-1abc-1");

    let args = [
        &["upstream", "--port", "swp1"][..],
        &SEED_FLAGS[..6],
        &["--enabled-exit-nodes", "15"],
    ]
    .concat();
    let out = exitd_plan(&args);
    assert_success(&out, &args);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "2a02:1802:5e:1000::/52 via fe80::1000:0:0:1 dev swp1  # exit node 1 (or via 2a02:1802:5e:0:1000::1)\n\
         2a02:1802:5e:f000::/52 via fe80::f000:0:0:1 dev swp1  # exit node 15 (or via 2a02:1802:5e:0:f000::1)\n"
    );
}

#[test]
fn plan_cli_diff_and_errors() {
    let dir = std::env::temp_dir().join(format!("exitd-plan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |resources: &[&str]| {
        let mut text =
            format!("[network]\nallocation = \"{ALLOC}\"\nexit_node = 1\nalloc_nr = 1\n");
        for (i, r) in resources.iter().enumerate() {
            text.push_str(&format!(
                "[[network.tenants]]\nname = \"t{i}\"\n[[network.tenants.resources]]\nnode = \"n\"\nprefix = \"{r}\"\nexitpoint = true\n"
            ));
        }
        text
    };
    let (old, new) = (dir.join("old.toml"), dir.join("new.toml"));
    std::fs::write(
        &old,
        config(&["2a02:1802:5e:1abc::/64", "2a02:1802:5e:1123::/64"]),
    )
    .unwrap();
    std::fs::write(&new, config(&["2a02:1802:5e:1abc::/64"])).unwrap();
    let args = ["diff", old.to_str().unwrap(), new.to_str().unwrap()];
    let out = exitd_plan(&args);
    assert_success(&out, &args);
    let diff = String::from_utf8(out.stdout).unwrap();
    assert!(
        diff.contains("- gw-1-1: route 2a02:1802:5e:1123::/64 via fe80::1123:1 dev to-1123-1"),
        "{diff}"
    );
    assert!(diff.contains("- namespace net-1123-1"), "{diff}");
    assert!(
        diff.lines()
            .all(|l| l.starts_with("- ") && (l.contains("1123") || l.contains("10.17.35"))),
        "{diff}"
    );

    let bad = [&SEED_FLAGS[..6], &["--resource", "2a02:1802:5e:2abc::/64"]].concat();
    let out = exitd_plan(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(
            "resource 2a02:1802:5e:2abc::/64 is outside exit node 1's 2a02:1802:5e:1000::/52"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
