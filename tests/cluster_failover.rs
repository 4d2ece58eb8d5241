//! Gateway failover against a real etcd (`/usr/bin/etcd`): members are in-process
//! [`exitd::cluster::Cluster`]s, each with its own etcd connection. A partition is a real TCP
//! proxy between one member and etcd that the test cuts.

use exitd::cluster::{Cluster, ClusterConfig, Members, ring};
use exitd_testkit::Etcd;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};

const TTL: Duration = Duration::from_secs(2);
/// How long a takeover may take in a test: a few lease TTLs (correctness, not speed).
const FAILOVER_BOUND: Duration = Duration::from_secs(3 * 2);

fn config(endpoint: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        endpoints: vec![endpoint.to_string()],
        name: "test".into(),
        node: node.into(),
        lease_ttl: TTL.as_secs(),
        gateways: ring::GATEWAYS.collect(),
        replica_mode: Default::default(),
        priorities: BTreeMap::new(),
    }
}

async fn start(endpoint: &str, names: &[&str]) -> Vec<Cluster> {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(Cluster::start(config(endpoint, name)).await.unwrap());
    }
    nodes
}

/// Starts members and waits until they own exactly what the ring gives them.
async fn start_settled(endpoint: &str, names: &[&str]) -> Vec<Cluster> {
    let nodes = start(endpoint, names).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    settle(&refs, &expected(names), Duration::from_secs(20)).await;
    nodes
}

/// The assignment the ring gives for these node names (all Auto, all gateways).
fn expected(names: &[&str]) -> BTreeMap<u8, String> {
    let members: Members = names
        .iter()
        .map(|n| (n.to_string(), config("x", n).member_info()))
        .collect();
    ring::assignment(&members, &ring::Priorities::new())
}

/// Every gateway → the nodes that currently believe they own it.
fn beliefs(nodes: &[&Cluster]) -> BTreeMap<u8, Vec<String>> {
    let mut owners: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for node in nodes {
        for gateway in node.owned() {
            owners
                .entry(gateway)
                .or_default()
                .push(node.node().to_string());
        }
    }
    owners
}

/// Polls every 10 ms until the nodes' beliefs equal `want`, failing at once if two nodes
/// ever believe they own the same gateway.
async fn settle(nodes: &[&Cluster], want: &BTreeMap<u8, String>, timeout: Duration) -> Duration {
    let begin = Instant::now();
    loop {
        let seen = beliefs(nodes);
        let doubles: Vec<_> = seen.iter().filter(|(_, o)| o.len() > 1).collect();
        assert!(doubles.is_empty(), "two owners at once: {doubles:?}");
        let single: BTreeMap<u8, String> = seen
            .into_iter()
            .map(|(g, mut o)| (g, o.remove(0)))
            .collect();
        if &single == want {
            return begin.elapsed();
        }
        assert!(
            begin.elapsed() < timeout,
            "ownership did not settle: have {single:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Gateway → owner name as etcd has it.
async fn etcd_owners(endpoint: &str) -> BTreeMap<u8, String> {
    let config = config(endpoint, "observer");
    let mut client = config.connect().await.unwrap();
    exitd::cluster::ownership::read_owners(&mut client, &config)
        .await
        .unwrap()
        .into_iter()
        .map(|(g, (node, _))| (g, node))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_own_every_gateway_once_as_the_ring_says() {
    let etcd = Etcd::start().unwrap();
    let names = ["n1", "n2", "n3"];
    let nodes = start(&etcd.endpoint(), &names).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let want = expected(&names);
    assert_eq!(want.len(), 15);
    settle(&refs, &want, Duration::from_secs(20)).await;
    assert_eq!(etcd_owners(&etcd.endpoint()).await, want);
    let members = nodes[0].members();
    assert_eq!(members.keys().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
}

/// A TCP proxy to etcd that the test can cut: a network partition for one member.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut2, tasks2) = (cut.clone(), tasks.clone());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: the partition refuses new connections too
                }
                let upstream = upstream.clone();
                tasks2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            cut,
            tasks,
            accept,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.tasks
            .lock()
            .unwrap()
            .iter()
            .for_each(JoinHandle::abort);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_member_stops_owning_before_its_gateways_move() {
    let etcd = Etcd::start().unwrap();
    let proxy = Proxy::start(etcd.endpoint()).await;
    let mut nodes = start(&etcd.endpoint(), &["n1", "n2"]).await;
    nodes.push(
        Cluster::start(config(&proxy.endpoint(), "n3"))
            .await
            .unwrap(),
    );
    let refs: Vec<&Cluster> = nodes.iter().collect();
    settle(
        &refs,
        &expected(&["n1", "n2", "n3"]),
        Duration::from_secs(20),
    )
    .await;
    assert!(!nodes[2].owned().is_empty(), "the ring gives n3 something");

    proxy.cut();
    // n3 still runs and is polled throughout: it must give up before n1/n2 take over.
    let took = settle(&refs, &expected(&["n1", "n2"]), Duration::from_secs(20)).await;
    // Failover follows the lease's expiry. The TTL + 1 s target is measured by the failover
    // benchmark; here a loaded CI machine only has to stay within a few TTLs.
    eprintln!("failover after a partition took {took:?}");
    assert!(took <= FAILOVER_BOUND, "failover took {took:?}");
    assert!(nodes[2].owned().is_empty());
    assert_eq!(etcd_owners(&etcd.endpoint()).await, expected(&["n1", "n2"]));

    // Healed: n3's old lease is gone, so it registers under a new one and gets its share back.
    proxy.heal();
    settle(
        &refs,
        &expected(&["n1", "n2", "n3"]),
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_is_replaced_once_its_lease_expires() {
    let etcd = Etcd::start().unwrap();
    let mut nodes = start_settled(&etcd.endpoint(), &["n1", "n2", "n3"]).await;
    drop(nodes.remove(1)); // a crash: no release, the lease runs out
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let took = settle(&refs, &expected(&["n1", "n3"]), Duration::from_secs(20)).await;
    eprintln!("failover after a crash took {took:?}");
    assert!(took <= FAILOVER_BOUND, "failover took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_over_without_waiting_for_the_lease() {
    let etcd = Etcd::start().unwrap();
    let mut nodes = start_settled(&etcd.endpoint(), &["n1", "n2", "n3"]).await;
    nodes.remove(0).shutdown().await.unwrap();
    // The lease was revoked: n1's keys are gone at once, not after the TTL.
    let owners = etcd_owners(&etcd.endpoint()).await;
    assert!(owners.values().all(|o| o != "n1"), "{owners:?}");
    let refs: Vec<&Cluster> = nodes.iter().collect();
    settle(&refs, &expected(&["n2", "n3"]), Duration::from_secs(20)).await;
    assert!(!nodes[0].members().contains_key("n1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_keeps_owners_and_watches_resume() {
    let mut etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let mut nodes = start(&endpoint, &["n1", "n2", "n3"]).await;
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let before = expected(&["n1", "n2", "n3"]);
    settle(&refs, &before, Duration::from_secs(20)).await;

    etcd.restart().unwrap();
    // Leases survive an etcd restart, so the owners do too: no gateway changes hands.
    settle(&refs, &before, Duration::from_secs(20)).await;
    assert_eq!(etcd_owners(&endpoint).await, before);

    // The watches work again: a newcomer is seen by everybody and gets its share.
    nodes.extend(start(&endpoint, &["n4"]).await);
    let refs: Vec<&Cluster> = nodes.iter().collect();
    settle(
        &refs,
        &expected(&["n1", "n2", "n3", "n4"]),
        Duration::from_secs(20),
    )
    .await;
    for node in &nodes {
        assert_eq!(
            node.members().len(),
            4,
            "{} sees {:?}",
            node.node(),
            node.members()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_prints_members_and_owners_from_etcd() {
    let etcd = Etcd::start().unwrap();
    let nodes = start_settled(&etcd.endpoint(), &["n1", "n2"]).await;
    let file = exitd_testkit::TempFile::with_text(
        "toml",
        &format!(
            "[cluster]\nendpoints = [\"{}\"]\nname = \"test\"\nnode = \"cli\"\n",
            etcd.endpoint()
        ),
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_exitd"))
        .args(["cluster", "status", "--config"])
        .arg(file.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("  n1 {") && text.contains("  n2 {"), "{text}");
    for (gateway, owner) in expected(&["n1", "n2"]) {
        // No gateway controller runs in-process, so a claimed gateway stays "taking-over".
        let line = format!("\n  {gateway} {owner} taking-over\n");
        assert!(text.contains(&line), "{text}");
    }
    drop(nodes);
}

#[test]
fn cluster_status_without_a_cluster_section_is_a_clear_error() {
    let file = exitd_testkit::TempFile::with_text("toml", "");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_exitd"))
        .args(["cluster", "status", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("no [cluster] section"), "{text}");
}

/// `exitd run` with a `[cluster]` section, logging to a piped stderr.
fn spawn_daemon(endpoint: &str, node: &str) -> (std::process::Child, exitd_testkit::TempFile) {
    let (child, file, _) = spawn_daemon_with(endpoint, node, "enabled = false");
    (child, file)
}

/// As [`spawn_daemon`] with `admin` as the `[admin]` section; the log lines waited for
/// ("exitd running", and "admin API listening" when it is enabled).
fn spawn_daemon_with(
    endpoint: &str,
    node: &str,
    admin: &str,
) -> (std::process::Child, exitd_testkit::TempFile, Vec<String>) {
    let file = exitd_testkit::TempFile::with_text(
        "toml",
        &format!(
            "[admin]\n{admin}\n[cluster]\nendpoints = [\"{endpoint}\"]\n\
             name = \"test\"\nnode = \"{node}\"\nlease_ttl = {}\n",
            TTL.as_secs()
        ),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_exitd"))
        .args(["run", "--config"])
        .arg(file.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut wanted = vec!["exitd running"];
    if !admin.contains("enabled = false") {
        wanted.push("admin API listening");
    }
    let logs = exitd_testkit::process::wait_for_logs(&mut child, &wanted, Duration::from_secs(20));
    (child, file, logs)
}

/// Polls etcd until its owner keys equal `want`.
async fn etcd_settles(endpoint: &str, want: &BTreeMap<u8, String>) {
    let begin = Instant::now();
    while &etcd_owners(endpoint).await != want {
        assert!(
            begin.elapsed() < Duration::from_secs(20),
            "etcd never showed {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exitd_run_processes_share_gateways_fail_over_on_kill_and_leave_on_sigterm() {
    let etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let (mut n1, _c1) = spawn_daemon(&endpoint, "n1");
    let (mut n2, _c2) = spawn_daemon(&endpoint, "n2");
    etcd_settles(&endpoint, &expected(&["n1", "n2"])).await;

    n1.kill().unwrap(); // SIGKILL: no release, n1's lease runs out
    n1.wait().unwrap();
    etcd_settles(&endpoint, &expected(&["n2"])).await;

    // SIGTERM: n2 revokes its lease before it exits, so nothing is left to expire.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(n2.id() as i32, libc::SIGTERM) }, 0);
    assert!(n2.wait().unwrap().success());
    assert!(etcd_owners(&endpoint).await.is_empty());
}

/// The cluster's admin endpoints on two `exitd run` processes: the read endpoint shows
/// owners and states; writes need the token; an administrator's "offline" empties a gateway
/// and "online" brings it back; replica mode Disabled moves everything to the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_the_cluster_and_sets_gateways_and_replica_mode() {
    let etcd = Etcd::start().unwrap();
    let endpoint = etcd.endpoint();
    let admin = "listen = \"127.0.0.1:0\"\ntoken = \"s3cret\"";
    let (mut n1, _c1, logs) = spawn_daemon_with(&endpoint, "n1", admin);
    let (mut n2, _c2) = spawn_daemon(&endpoint, "n2");
    let api = format!("http://{}", exitd_testkit::process::logged_addr(&logs[1]));
    etcd_settles(&endpoint, &expected(&["n1", "n2"])).await;
    let http = reqwest::Client::new();
    let bearer = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");

    let shown: serde_json::Value = bearer(http.get(format!("{api}/cluster")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["node"], "n1");
    assert_eq!(shown["replica_mode"], "Auto");
    let owned = shown["owned"].as_array().unwrap().len();
    assert_eq!(
        owned,
        expected(&["n1", "n2"])
            .values()
            .filter(|o| *o == "n1")
            .count()
    );
    assert_eq!(shown["gateways"].as_array().unwrap().len(), 15);

    let offline = format!("{api}/admin/cluster/gateways/3/offline");
    let refused = http.post(&offline).send().await.unwrap();
    assert_eq!(refused.status(), 401, "writes need the token");
    let done = bearer(http.post(&offline)).send().await.unwrap();
    assert_eq!(done.status(), 200);
    let mut without_3 = expected(&["n1", "n2"]);
    without_3.remove(&3);
    etcd_settles(&endpoint, &without_3).await;
    let back = bearer(http.post(format!("{api}/admin/cluster/gateways/3/online")));
    assert_eq!(back.send().await.unwrap().status(), 200);
    etcd_settles(&endpoint, &expected(&["n1", "n2"])).await;

    let bad = bearer(http.post(format!("{api}/admin/cluster/replica-mode/Sometimes")));
    assert_eq!(bad.send().await.unwrap().status(), 400);
    let disabled = bearer(http.post(format!("{api}/admin/cluster/replica-mode/Disabled")));
    assert_eq!(disabled.send().await.unwrap().status(), 200);
    etcd_settles(&endpoint, &expected(&["n2"])).await;
    for child in [&mut n1, &mut n2] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
