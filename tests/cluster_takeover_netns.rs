//! Gateway takeover with real `exitd run` processes, each in its own network namespace with
//! an uplink into a shared upstream bridge (see `exitd_testkit::cluster_lab`), a real etcd and
//! real traffic: ping6 from the upstream namespace to the ExitPoint. Needs root.
//!
//! At every poll the tests check the nodes' own view — which gateway namespaces carry the
//! gateway's address — and fail at once if two nodes forward for the gateway.

use exitd::cluster::{ClusterConfig, ownership::read_owners};
use exitd_testkit::{Etcd, cluster_lab::Lab, poll_until, require_root};
use std::{collections::BTreeMap, sync::Mutex, time::Duration};

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

/// Gateway 1's owner as etcd has it.
fn etcd_owner(endpoint: &str) -> Option<String> {
    let config = observer(endpoint);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let owners: BTreeMap<u8, (String, i64)> = runtime.block_on(async {
        let mut client = config.connect().await.ok()?;
        read_owners(&mut client, &config).await.ok()
    })?;
    owners.get(&1).map(|(node, _)| node.clone())
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
    let owner = poll_until(BOUND, || {
        let forwarder = single_forwarder(lab)?;
        (etcd_owner(endpoint).as_deref() == Some(&forwarder)).then_some(forwarder)
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
