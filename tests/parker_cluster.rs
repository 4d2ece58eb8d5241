//! Parker with shared state in a real etcd (`/usr/bin/etcd`, started here on loopback): two
//! real `exitd broker` processes sharing the etcd IPAM, hammered by real HTTP clients, their
//! answers verified with `signify-openbsd`.

#[path = "parker_common.rs"]
mod common;

use common::*;
use exitd_testkit::Etcd;
use ipnet::Ipv6Net;
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Barrier,
};

const NONCE: &str = "00112233445566778899aabbccddeeff";
const PARENT: &str = "2001:db8:ed0::/48";

/// A broker configuration using the etcd IPAM (and, with `discovery`, `[parker.etcd]`).
fn etcd_broker_config(dir: &Path, name: &str, etcd: &Etcd, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[parker]\nlisten = \"127.0.0.1:0\"\nsigning_key_file = {:?}\n\
         rate_limit = {{ per_second = 0.0 }}\n{extra}\n\
         [parker.ipam]\nbackend = \"etcd\"\nparent = \"{PARENT}\"\n\
         [parker.ipam.etcd]\nendpoints = [\"{}\"]\nprefix = \"/exitd/t/parker/\"\n{CONCENTRATORS}\n",
        dir.join("broker.sec"),
        etcd.endpoint(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_broker(config: &Path) -> Broker {
    Broker::start(&["--config", config.to_str().expect("utf-8 path")])
}

/// range6 of a successful answer (None for anything else).
fn range6(status: u16, body: &str) -> Option<Ipv6Net> {
    (status == 200).then_some(())?;
    config_json(body)["range6"].as_str()?.parse().ok()
}

/// Every key fetched once, all at the same moment, key i from `urls[i % urls.len()]`.
fn fetch_all(urls: &[String], keys: &[String], threads: usize) -> BTreeMap<String, (u16, String)> {
    let barrier = Barrier::new(threads);
    let chunks: Vec<&[String]> = keys.chunks(keys.len().div_ceil(threads)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(t, chunk)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let http = client();
                    barrier.wait();
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, key)| {
                            let url = &urls[(t + i) % urls.len()];
                            (key.clone(), get_config(&http, url, key, NONCE, 1400))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    })
}

#[test]
fn two_brokers_share_the_etcd_ipam_without_duplicates() {
    let etcd = Etcd::start().expect("etcd");
    let dir = TempDir::new("pcluster");
    keygen(dir.path());
    let a = start_broker(&etcd_broker_config(dir.path(), "a", &etcd, ""));
    let b = start_broker(&etcd_broker_config(dir.path(), "b", &etcd, ""));
    let urls = vec![a.url.clone(), b.url.clone()];
    let keys: Vec<String> = (0..500).map(|n| node_key(7_000 + n)).collect();

    let first = fetch_all(&urls, &keys, 50);
    let mut prefixes = HashSet::new();
    let parent: Ipv6Net = PARENT.parse().expect("parent");
    for (key, (status, body)) in &first {
        let range = range6(*status, body).unwrap_or_else(|| panic!("{key}: {status} {body}"));
        assert!(parent.contains(&range), "{range} outside {parent}");
        assert!(prefixes.insert(range), "{range} handed out twice");
    }
    assert_eq!(prefixes.len(), 500);
    for (i, url) in urls.iter().enumerate() {
        let (_, body) = get_config(&client(), url, &keys[i], NONCE, 1400);
        verify_with_signify(&dir, &body).expect("signify verifies both brokers' answers");
    }

    // Again, each key from the other broker than the first time, concurrently.
    let swapped = vec![b.url.clone(), a.url.clone()];
    let again = fetch_all(&swapped, &keys, 50);
    for (key, (status, body)) in &again {
        let (s0, b0) = &first[key];
        assert_eq!(
            range6(*status, body),
            range6(*s0, b0),
            "{key} got another prefix from the other broker"
        );
    }
}

/// A running `exitd run`, its log lines collected; killed on drop.
struct Daemon {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(EXITD)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn exitd run");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("log").push(line);
            }
        });
        Daemon { child, log }
    }

    /// Index of the first log line containing all of `needles`.
    fn logged(&self, needles: &[&str]) -> Option<usize> {
        let log = self.log.lock().expect("log");
        log.iter()
            .position(|line| needles.iter().all(|n| line.contains(n)))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait until it exits.
    fn terminate(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops the boringtun-cli the concentrator started (it outlives a killed exitd by design:
/// the nodes' tunnels survive an agent restart).
struct StopBoringtun(PathBuf);

impl Drop for StopBoringtun {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: a pid the concentrator recorded for the process it started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

fn concentrator_config(dir: &Path, etcd: &Etcd, ns: &str, wg: &str, lease_ttl: u64) -> PathBuf {
    let path = dir.join("concentrator.toml");
    let text = format!(
        "[admin]\nenabled = false\n\
         [concentrator]\nname = \"c7\"\nid = 7\npop = \"vie01\"\n\
         endpoint = \"[2001:db8:ffff::7]:40007\"\ninterface = \"{wg}\"\nnamespace = \"{ns}\"\n\
         wireguard = \"userspace\"\nprivate_key_file = {:?}\nstate_dir = {:?}\n\
         stale_timeout = 60\ninitial_handshake_grace = 5\ncheck_interval = 1\n\
         [concentrator.etcd]\nendpoints = [\"{}\"]\nprefix = \"/exitd/t/parker/\"\nlease_ttl = {lease_ttl}\n",
        dir.join("concentrator.key"),
        dir.join("state"),
        etcd.endpoint(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The concentrator's public key, from the private key file it created.
fn public_key_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("key file");
    wireguard_control::Key::from_base64(text.trim())
        .expect("base64 key")
        .get_public()
        .to_base64()
}

/// The node's peer on the concentrator's interface: its allowed IPs, if present.
fn peer_allowed_ips(state_dir: &Path, wg: &str, node: &str) -> Option<Vec<String>> {
    use exitd::wireguard::WireguardBackend;
    let backend = exitd::wireguard::UserspaceBackend {
        state_dir: state_dir.to_path_buf(),
    };
    let peers = backend.handshakes(wg).expect("UAPI get");
    peers
        .into_iter()
        .find(|p| p.public_key.to_base64() == node)
        .map(|p| {
            p.allowed_ips
                .iter()
                .map(|a| format!("{}/{}", a.address, a.cidr))
                .collect()
        })
}

fn has_route(ns: &exitd_testkit::NetNs, prefix: &str, wg: &str) -> bool {
    let out = ns
        .exec("ip", &["-6", "route", "show", prefix])
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout).contains(&format!("dev {wg}"))
}

/// etcd, a broker following it (no seed concentrators) and a concentrator whose userspace
/// WireGuard interface lives in its own namespace.
struct Lab {
    // Dropped in this order: processes first, then the namespace and etcd.
    broker: Broker,
    concentrator: Daemon,
    _boringtun: StopBoringtun,
    ns: exitd_testkit::NetNs,
    wg: String,
    state: PathBuf,
    etcd: Etcd,
    dir: TempDir,
}

impl Lab {
    /// `lease_ttl`: the concentrator's, in seconds.
    fn start(lease_ttl: u64) -> Lab {
        exitd_testkit::require_root();
        let etcd = Etcd::start().expect("etcd");
        let dir = TempDir::new("pconc");
        keygen(dir.path());
        let ns = exitd_testkit::NetNs::new("pc").expect("netns");
        let wg = exitd_testkit::unique_name("wgc");
        let state = dir.path().join("state");
        let boringtun = StopBoringtun(state.join(format!("{wg}.pid")));
        let concentrator = Daemon::start(&concentrator_config(
            dir.path(),
            &etcd,
            ns.name(),
            &wg,
            lease_ttl,
        ));
        let config = etcd_broker_config(dir.path(), "b", &etcd, "");
        // The broker follows the concentrators in the same key space, with no seed.
        let text = std::fs::read_to_string(&config).expect("config");
        let text = text.replace(
            "[parker.ipam]",
            &format!(
                "[parker.etcd]\nlease_ttl = 2\nendpoints = [\"{}\"]\nprefix = \"/exitd/t/parker/\"\n\
                 [parker.ipam]",
                etcd.endpoint()
            ),
        );
        let text = text.split("[[parker.concentrators]]").next().expect("head");
        std::fs::write(&config, text).expect("write");
        let broker = start_broker(&config);
        Lab {
            broker,
            concentrator,
            _boringtun: boringtun,
            ns,
            wg,
            state,
            etcd,
            dir,
        }
    }
}

/// Broker, concentrator and node through a real etcd: the node's `/config` lists the
/// concentrator with the data it published; the concentrator adds the node as a peer with its
/// /63 and routes the /63 to its interface; the node never shakes hands, so after the grace
/// time the route goes, then the peer; after an etcd restart the watches resume and the next
/// node is added; a killed concentrator's lease runs out and the broker stops offering it.
#[test]
fn concentrator_follows_the_broker_through_etcd() {
    let mut lab = Lab::start(2);
    let (ns, wg, state, dir, broker) = (&lab.ns, &lab.wg, &lab.state, &lab.dir, &lab.broker);
    let http = client();
    let node = node_key(42);

    let body = exitd_testkit::poll_until(std::time::Duration::from_secs(30), || {
        let (status, body) = get_config(&http, &broker.url, &node, NONCE, 1400);
        (status == 200).then_some(body)
    })
    .unwrap_or_else(|| {
        panic!(
            "the broker never offered the concentrator: {:?}",
            lab.concentrator.log
        )
    });
    verify_with_signify(dir, &body).expect("signify verifies");
    let json = config_json(&body);
    let offered = &json["concentrators"][0];
    assert_eq!(offered["id"], 7);
    assert_eq!(offered["endpoint"], "[2001:db8:ffff::7]:40007");
    assert_eq!(offered["address6"], "fe80::1");
    let concentrator_key = public_key_of(&dir.path().join("concentrator.key"));
    assert_eq!(offered["pubkey"], concentrator_key.as_str());
    let range6: Ipv6Net = json["range6"]
        .as_str()
        .expect("range6")
        .parse()
        .expect("net");
    let node63 = Ipv6Net::new(range6.network(), 63).expect("/63").to_string();

    let added = exitd_testkit::poll_until(std::time::Duration::from_secs(20), || {
        let ips = peer_allowed_ips(state, wg, &node)?;
        has_route(ns, &node63, wg).then_some(ips)
    });
    assert_eq!(
        added,
        Some(vec![node63.clone()]),
        "peer with the node's /63, routed"
    );

    // Never a route into a peer that is gone: the route goes first.
    let removed = exitd_testkit::poll_until(std::time::Duration::from_secs(20), || {
        let peer = peer_allowed_ips(state, wg, &node).is_some();
        let route = has_route(ns, &node63, wg);
        assert!(peer || !route, "route to {node63} without its peer");
        (!peer && !route).then_some(())
    });
    assert!(removed.is_some(), "the stale peer was not removed");
    let route_gone = lab
        .concentrator
        .logged(&["removed the route to the node", &node]);
    let peer_gone = lab.concentrator.logged(&["removed the node's peer", &node]);
    assert!(
        matches!((route_gone, peer_gone), (Some(r), Some(p)) if r < p),
        "route first, then peer: {route_gone:?} {peer_gone:?}"
    );

    // etcd crashes and comes back: the concentrator's watch resumes and sees the next node.
    lab.etcd.restart().expect("etcd restarts");
    let second = node_key(43);
    let answered = exitd_testkit::poll_until(std::time::Duration::from_secs(30), || {
        let (status, _) = get_config(&http, &broker.url, &second, NONCE, 1400);
        (status == 200).then_some(())
    });
    assert!(
        answered.is_some(),
        "the broker did not recover from the etcd restart"
    );
    let added = exitd_testkit::poll_until(std::time::Duration::from_secs(30), || {
        peer_allowed_ips(state, wg, &second)
    });
    assert!(
        added.is_some(),
        "the concentrator's watch did not resume after etcd restarted"
    );

    lab.concentrator.kill();
    let gone = exitd_testkit::poll_until(std::time::Duration::from_secs(20), || {
        let (status, body) = get_config(&http, &broker.url, &node, NONCE, 1400);
        (status == 400 && body.contains("no gateway online")).then_some(())
    });
    assert!(
        gone.is_some(),
        "the broker still offers a dead concentrator"
    );
}

/// A key's value in etcd, read with a fresh client.
fn etcd_value(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint], None).await.ok()?;
        let reply = client.get(key, None).await.ok()?;
        reply.kvs().first().map(|kv| kv.value().to_vec())
    })
}

/// The concentrator's published `connected_peers`.
fn connected_peers(etcd: &Etcd) -> Option<i64> {
    let value = etcd_value(&etcd.endpoint(), "/exitd/t/parker/concentrators/c7")?;
    let report: serde_json::Value = serde_json::from_slice(&value).ok()?;
    report["connected_peers"].as_i64()
}

/// A real node: its own boringtun in its own namespace, reaching the concentrator's endpoint
/// over a veth, with the key it asked the broker about. It shakes hands, the concentrator
/// publishes `connected_peers` = 1 in etcd and keeps the peer well past the handshake grace
/// (5 s here) that removes nodes which never shake hands.
#[test]
fn a_node_that_shakes_hands_is_counted_and_kept() {
    use wireguard_control::{DeviceUpdate, Key, PeerConfigBuilder};
    let mut lab = Lab::start(30);
    let node_ns = exitd_testkit::NetNs::new("pn").expect("netns");
    exitd_testkit::veth_pair(&lab.ns, "vc", &node_ns, "vn").expect("veth");
    lab.ns
        .ip(&["addr", "add", "2001:db8:ffff::7/64", "dev", "vc", "nodad"])
        .expect("address");
    node_ns
        .ip(&["addr", "add", "2001:db8:ffff::42/64", "dev", "vn", "nodad"])
        .expect("address");
    let private = Key::generate_private();
    let node = private.get_public().to_base64();
    let http = client();
    let body = exitd_testkit::poll_until(std::time::Duration::from_secs(30), || {
        let (status, body) = get_config(&http, &lab.broker.url, &node, NONCE, 1400);
        (status == 200).then_some(body)
    })
    .expect("the broker offers the concentrator");
    let json = config_json(&body);
    let offered = &json["concentrators"][0];
    let concentrator_key =
        Key::from_base64(offered["pubkey"].as_str().expect("pubkey")).expect("concentrator key");
    let endpoint: std::net::SocketAddr = offered["endpoint"]
        .as_str()
        .expect("endpoint")
        .parse()
        .expect("an address endpoint");

    let wg = exitd_testkit::unique_name("wgn");
    let log = lab.dir.path().join("node-wg.log");
    let mut node_wg = node_ns
        .command("boringtun-cli")
        .args(["-f", "--disable-drop-privileges", "--log"])
        .arg(&log)
        .arg(&wg)
        .env("WG_SUDO", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("boringtun-cli (cargo xtask setup installs it)");
    let state = lab.dir.path().join("node-state");
    let name = wg.clone();
    let configured = node_ns
        .run(move || {
            use exitd::wireguard::WireguardBackend;
            let backend = exitd::wireguard::UserspaceBackend { state_dir: state };
            exitd_testkit::poll_until(std::time::Duration::from_secs(10), || {
                let peer = PeerConfigBuilder::new(&concentrator_key)
                    .set_endpoint(endpoint)
                    .add_allowed_ip("::".parse().expect("addr"), 0)
                    .set_persistent_keepalive_interval(1);
                let update = DeviceUpdate::new()
                    .set_private_key(private.clone())
                    .add_peer(peer);
                backend.apply(&name, update).ok()
            })
        })
        .expect("enters the node namespace");
    assert!(configured.is_some(), "the node's boringtun did not start");
    node_ns.ip(&["link", "set", &wg, "up"]).expect("link up");

    let counted = exitd_testkit::poll_until(std::time::Duration::from_secs(30), || {
        (connected_peers(&lab.etcd) == Some(1)).then_some(())
    });
    assert!(
        counted.is_some(),
        "connected_peers never reached 1: {:?}",
        lab.concentrator.log
    );
    // Past the grace (5 s) and a few checks: a node that shook hands stays.
    let since = std::time::Instant::now();
    let kept = exitd_testkit::poll_until(std::time::Duration::from_secs(30), || {
        let present = peer_allowed_ips(&lab.state, &lab.wg, &node).is_some();
        assert!(present, "the connected node's peer was removed");
        (since.elapsed() > std::time::Duration::from_secs(8)).then_some(())
    });
    let _ = node_wg.kill();
    let _ = node_wg.wait();
    assert!(kept.is_some());

    // SIGTERM: the concentrator leaves etcd at once instead of after its 30 s lease.
    lab.concentrator.terminate();
    let left = exitd_testkit::poll_until(std::time::Duration::from_secs(10), || {
        let key = "/exitd/t/parker/concentrators/c7";
        etcd_value(&lab.etcd.endpoint(), key)
            .is_none()
            .then_some(())
    });
    assert!(left.is_some(), "a stopped concentrator stayed in etcd");
}
