//! Gateway takeover with real `exitd run` processes, each in its own network namespace with
//! an uplink into a shared upstream bridge (see `exitd_testkit::cluster_lab`), a real etcd and
//! real traffic: ping6 from the upstream namespace to the ExitPoint. Needs root.
//!
//! At every poll the tests check the nodes' own view — which gateway namespaces carry the
//! gateway's address — and fail at once if two nodes forward for the gateway.

use exitd::cluster::{ClusterConfig, GatewayState, state::read_gateways};
use exitd_testkit::{Etcd, cluster_lab::Lab, poll_until, require_root};
use std::{sync::Mutex, time::Duration};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");
const TTL: u64 = 2;
/// Correctness bound for a takeover in a test on a loaded machine (the benchmark measures).
const BOUND: Duration = Duration::from_secs(5 * TTL);

/// The labs are heavy (three daemons each, two cores): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn observer(endpoint: &str) -> ClusterConfig {
    toml::from_str(&format!(
        "endpoints = [\"{endpoint}\"]\nname = \"lab\"\nnode = \"observer\"\n"
    ))
    .unwrap()
}

/// Gateway 1's owner and state as etcd has them.
fn etcd_gateway(endpoint: &str) -> (Option<String>, GatewayState) {
    let config = observer(endpoint);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let view = runtime.block_on(async {
        let mut client = config.connect().await.ok()?;
        read_gateways(&mut client, &config).await.ok()
    });
    let Some(view) = view else {
        return (None, GatewayState::Offline);
    };
    (
        view.owners.get(&1).map(|(n, _)| n.clone()),
        view.state_of(1),
    )
}

/// Gateway 1's owner as etcd has it.
fn etcd_owner(endpoint: &str) -> Option<String> {
    etcd_gateway(endpoint).0
}

/// Fails if two nodes forward at once; returns the one forwarding, if any.
fn single_forwarder(lab: &Lab) -> Option<String> {
    let forwarding = lab.forwarding();
    assert!(
        forwarding.len() <= 1,
        "two nodes forward at once: {forwarding:?}"
    );
    forwarding.into_iter().next()
}

/// Waits until one node forwards, etcd agrees, and traffic flows; returns that node's index.
fn settled(lab: &Lab, endpoint: &str) -> usize {
    // Settled means: one node forwards, etcd names it and its state is "online".
    let owner = poll_until(BOUND, || {
        let forwarder = single_forwarder(lab)?;
        let online = (Some(forwarder.clone()), GatewayState::Online);
        (etcd_gateway(endpoint) == online).then_some(forwarder)
    })
    .unwrap_or_else(|| {
        let logs: Vec<String> = lab.nodes.iter().map(|n| n.log()).collect();
        panic!(
            "no single owner; etcd: {:?}\n{}",
            etcd_owner(endpoint),
            logs.join("\n")
        )
    });
    let took = lab.until_ping(BOUND, |lab| {
        single_forwarder(lab);
    });
    assert!(took.is_some(), "no traffic through {owner}");
    lab.nodes.iter().position(|n| n.name == owner).unwrap()
}

fn lab(etcd: &Etcd, count: usize) -> Lab {
    let mut lab = Lab::new(EXITD.as_ref(), &etcd.endpoint(), "lab", count, TTL).unwrap();
    for i in 0..count {
        lab.start(i).unwrap();
    }
    lab
}

#[test]
fn killing_the_owner_moves_the_gateway_and_traffic_flows_again() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let mut lab = lab(&etcd, 3);
    let owner = settled(&lab, &endpoint);

    let announcements = lab.capture_announcements(Duration::from_secs(20));
    lab.kill(owner).unwrap();
    let took = lab.until_ping(Duration::from_secs(30), |lab| {
        single_forwarder(lab);
    });
    let took = took.unwrap_or_else(|| {
        panic!(
            "traffic never came back:\n{}",
            lab.nodes[(owner + 1) % 3].log()
        )
    });
    eprintln!("traffic restored {took:?} after kill -9 of the owner (TTL {TTL} s)");
    // The new owner announced GWPubLL with an unsolicited NA and GWPubIP4 with gratuitous
    // ARP from its uplink, and the
    // upstream router's neighbour entry now points at that uplink.
    let forwarder = lab.forwarding();
    let new_mac = lab
        .nodes
        .iter()
        .find(|n| forwarder.contains(&n.name))
        .and_then(|n| n.uplink_mac());
    assert!(new_mac.is_some(), "no forwarder after the takeover");
    let (na, arp) = announcements.join().unwrap();
    assert_eq!(na, new_mac, "the unsolicited NA came from the new owner");
    assert_eq!(arp, new_mac, "the gratuitous ARP came from the new owner");
    let neighbour = lab.upstream_neighbour();
    assert!(
        new_mac
            .as_ref()
            .is_some_and(|mac| neighbour.contains(mac.as_str())),
        "upstream neighbour {neighbour:?} is not the new owner's {new_mac:?}"
    );
    let next = settled(&lab, &endpoint);
    assert_ne!(next, owner, "a living node took over");
    assert!(!lab.nodes[owner].forwarding(), "the dead node is fenced");
}

#[test]
fn sigterm_drains_to_the_next_owner_without_two_owners() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let mut lab = lab(&etcd, 2);
    let owner = settled(&lab, &endpoint);

    lab.send_term(owner).unwrap();
    // Poll through the whole drain: the old owner stops before the new one starts.
    while lab.nodes[owner].running() {
        single_forwarder(&lab);
    }
    assert!(
        lab.wait(owner).unwrap(),
        "clean exit after draining:\n{}",
        lab.nodes[owner].log()
    );
    assert!(
        lab.nodes[owner]
            .log()
            .contains("the next owners hold this node's gateways"),
        "the drain waited for the successor:\n{}",
        lab.nodes[owner].log()
    );
    let next = settled(&lab, &endpoint);
    assert_eq!(next, 1 - owner);
}

/// The node the ring gives gateway 1 among `names` (all Auto, serving only gateway 1).
fn ring_owner(names: &[&str]) -> String {
    use exitd::cluster::{MemberInfo, ReplicaMode, ring};
    let members = names
        .iter()
        .map(|n| {
            let info = MemberInfo {
                gateways: [1].into(),
                mode: ReplicaMode::Auto,
            };
            (n.to_string(), info)
        })
        .collect();
    ring::owner_of(1, &members, &ring::Priorities::new()).unwrap()
}

#[test]
fn an_etcd_restart_moves_nothing() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let lab = lab(&etcd, 2);
    let owner = settled(&lab, &endpoint);
    let name = lab.nodes[owner].name.clone();

    etcd.restart().unwrap();
    // Through the restart and a few TTLs after it, only the owner ever forwards and etcd
    // names nobody else: leases survive an etcd restart, so nothing flaps to the standby.
    let until = std::time::Instant::now() + Duration::from_secs(3 * TTL);
    while std::time::Instant::now() < until {
        if let Some(forwarder) = single_forwarder(&lab) {
            assert_eq!(forwarder, name, "the standby took over");
        }
        let in_etcd = etcd_owner(&endpoint);
        assert!(
            in_etcd.is_none() || in_etcd.as_deref() == Some(&*name),
            "{in_etcd:?}"
        );
    }
    assert_eq!(settled(&lab, &endpoint), owner);
}

#[test]
fn a_partitioned_owner_stops_forwarding_before_the_gateway_moves_and_gets_it_back_after() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    // The node the ring prefers reaches etcd only through a proxy the test cuts.
    let preferred: usize = ring_owner(&["n0", "n1"])[1..].parse().unwrap();
    let proxy =
        exitd_testkit::proxy::TcpProxy::start(endpoint.trim_start_matches("http://")).unwrap();
    let mut endpoints = vec![endpoint.clone(); 2];
    endpoints[preferred] = proxy.endpoint();
    let mut lab = Lab::with_endpoints(EXITD.as_ref(), &endpoints, "lab", TTL).unwrap();
    lab.start(0).unwrap();
    lab.start(1).unwrap();
    assert_eq!(settled(&lab, &endpoint), preferred);

    proxy.cut();
    // The partitioned node keeps running; polled throughout, it must have stopped before
    // the other node starts (never two forwarders), and traffic flows through the other.
    let other = 1 - preferred;
    let moved = poll_until(BOUND, || {
        (single_forwarder(&lab)? == lab.nodes[other].name).then_some(())
    });
    assert!(
        moved.is_some(),
        "the gateway never moved:\n{}",
        lab.nodes[other].log()
    );
    assert!(
        lab.nodes[preferred].running(),
        "the partitioned node is alive"
    );
    assert_eq!(settled(&lab, &endpoint), other);

    // Healed: the node registers again and the ring migrates the gateway back to it,
    // break-before-make (the old owner fences before it releases).
    proxy.heal();
    let back = poll_until(Duration::from_secs(30), || {
        (single_forwarder(&lab)? == lab.nodes[preferred].name).then_some(())
    });
    assert!(
        back.is_some(),
        "no migration back:\n{}",
        lab.nodes[preferred].log()
    );
    assert_eq!(settled(&lab, &endpoint), preferred);
}

/// A seeded pseudo-random sequence (xorshift64*), so a failing chaos run can be replayed
/// with `EXITD_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn chaos_never_two_forwarders_and_always_an_owner_after_the_faults() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("EXITD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) | 1);
    eprintln!("chaos seed {seed} (EXITD_CHAOS_SEED replays it)");
    let mut rng = Rng(seed);
    let mut etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxies: Vec<_> = (0..3)
        .map(|_| exitd_testkit::proxy::TcpProxy::start(&upstream).unwrap())
        .collect();
    let endpoints: Vec<String> = proxies.iter().map(|p| p.endpoint()).collect();
    let mut lab = Lab::with_endpoints(EXITD.as_ref(), &endpoints, "lab", TTL).unwrap();
    for i in 0..3 {
        lab.start(i).unwrap();
    }
    settled(&lab, &endpoint);
    let mut faults = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < until {
        let node = rng.below(3) as usize;
        let fault = match rng.below(6) {
            0 if lab.nodes[node].running() => {
                lab.kill(node).unwrap();
                "kill -9"
            }
            1 if lab.nodes[node].running() => {
                lab.terminate(node).unwrap();
                "SIGTERM"
            }
            2 => {
                proxies[node].cut();
                "partition"
            }
            3 => {
                proxies[node].heal();
                "heal"
            }
            4 => {
                etcd.restart().unwrap();
                "etcd restart"
            }
            _ if !lab.nodes[node].running() => {
                lab.start(node).unwrap();
                "start"
            }
            _ => "nothing",
        };
        faults.push(format!("{fault} n{node}"));
        // Check at every poll for a random while before the next fault.
        let pause = std::time::Instant::now() + Duration::from_millis(200 + rng.below(2800));
        while std::time::Instant::now() < pause {
            let forwarding = lab.forwarding();
            assert!(
                forwarding.len() <= 1,
                "two forwarders {forwarding:?} after {faults:?}"
            );
        }
    }
    // After the last fault: everything heals and restarts; one owner within the bound.
    proxies.iter().for_each(|p| p.heal());
    for i in 0..3 {
        if !lab.nodes[i].running() {
            lab.start(i).unwrap();
        }
    }
    eprintln!("faults: {faults:?}");
    settled(&lab, &endpoint);
}
