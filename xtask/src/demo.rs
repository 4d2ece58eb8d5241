//! `cargo xtask demo`: a two-node exitd cluster in network namespaces, end to end.
//!
//! It starts a local etcd, builds an upstream router whose bridge is the shared upstream
//! segment of two exit nodes (each with its own gateway and ExitPoint namespaces, see
//! `exitd_testkit::cluster_lab`), runs `exitd run` for both with `[cluster]` (lease TTL 2 s)
//! so one of them owns the gateway, pings the ExitPoint from upstream while it shows the
//! owner's XDP per-route counters, lets a Parker node namespace fetch its signed `/config`
//! from the broker in exit node n0 and verify it with `signify-openbsd`, then SIGKILLs the
//! owner and measures how long until the ping answers again through the other node.
//! Everything (processes, namespaces, pins, temp dirs) is removed at the end and on Ctrl-C.

use crate::run_step;
use anyhow::{Context, Result, bail};
use exitd_testkit::{
    Etcd, NetNs,
    cluster_lab::{EXITPOINT, Lab},
    poll_until,
};
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const TTL: u64 = 2;
/// How long any one step may take before the demo gives up on it.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The broker's address on the link to the Parker node namespace.
const BROKER_IP: &str = "fd00:de::1";
const PARKER_IP: &str = "fd00:de::2";
/// The Parker node's WireGuard public key (any 32 bytes in base64).
const PARKER_KEY: &str = "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E=";

pub fn run(root: &Path, seconds: u64) -> Result<()> {
    crate::setup::run(root, false)?;
    if !crate::setup::is_root() {
        bail!("the demo builds network namespaces and loads eBPF: run it as root");
    }
    run_step(
        "building exitd",
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--package", "exitd"]),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    // `cargo build` above honours CARGO_TARGET_DIR, so the binary is looked up there too.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    let exitd = target.join("debug/exitd");
    let dir = std::env::temp_dir().join(format!("exitd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = Demo::run(&exitd, &dir, seconds, &stop);
    // The Demo's parts (etcd, daemons, namespaces, pins) were dropped, i.e. removed, above.
    let _ = std::fs::remove_dir_all(&dir);
    let result = match result {
        Err(_) if stop.load(Ordering::SeqCst) => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
        other => other.map(|summary| summary.print()),
    };
    println!(
        "==> cleaned up: exitd daemons, WireGuard processes, etcd, namespaces, pins, temp files"
    );
    result
}

/// What the demo measured, printed at the end.
struct Summary {
    owner: String,
    forwarded: u64,
    verified: String,
    failover: Duration,
    new_owner: String,
    forwarded_after: u64,
}

impl Summary {
    fn print(&self) {
        println!("==> summary");
        println!(
            "    forwarded by XDP in {} (first gateway owner): {} packets",
            self.owner, self.forwarded
        );
        println!("    Parker node config: {}", self.verified);
        println!(
            "    failover: {} killed (SIGKILL), {} took over, ping answered again after {:.2} s (lease TTL {TTL} s)",
            self.owner,
            self.new_owner,
            self.failover.as_secs_f64()
        );
        println!(
            "    forwarded by XDP in {} since: {} packets",
            self.new_owner, self.forwarded_after
        );
    }
}

/// Everything the demo started; dropping it stops and removes all of it.
struct Demo<'a> {
    exitd: &'a Path,
    dir: &'a Path,
    stop: &'a AtomicBool,
    step: u32,
    broker_port: u16,
    traffic: Option<Child>,
    // Field order is drop order: the daemons go before etcd.
    lab: Lab,
    parker: NetNs,
    _etcd: Etcd,
}

impl Drop for Demo<'_> {
    fn drop(&mut self) {
        if let Some(mut ping) = self.traffic.take() {
            let _ = ping.kill();
            let _ = ping.wait();
        }
    }
}

impl<'a> Demo<'a> {
    fn run(exitd: &'a Path, dir: &'a Path, seconds: u64, stop: &'a AtomicBool) -> Result<Summary> {
        println!("==> 1. starting a local etcd (loopback, temporary data directory)");
        let etcd = Etcd::start().context("step 1: starting etcd")?;
        println!("    etcd healthy at {}", etcd.endpoint());
        println!(
            "==> 2. building the topology: upstream router with a bridge, two exit nodes (n0, n1) with uplinks into it"
        );
        let lab = Lab::new(exitd, &etcd.endpoint(), "demo", 2, TTL)
            .context("step 2: building the upstream router and the exit nodes' uplinks")?;
        let parker = NetNs::new("parker").context("step 2: the Parker node namespace")?;
        let mut demo = Demo {
            exitd,
            dir,
            stop,
            step: 2,
            broker_port: 0,
            traffic: None,
            lab,
            parker,
            _etcd: etcd,
        };
        demo.connect_parker_node()
            .context("step 2: linking the Parker node to exit node n0")?;
        println!(
            "    upstream router {} (bridge br0, routes from `exitd plan upstream`)",
            demo.lab.upstream.name()
        );
        println!(
            "    Parker node {} ({PARKER_IP}) linked to n0's broker at [{BROKER_IP}]:{}",
            demo.parker.name(),
            demo.broker_port
        );
        demo.run_steps(seconds)
    }

    /// Prints the next numbered step and fails if Ctrl-C was pressed meanwhile.
    fn step(&mut self, what: &str) -> Result<String> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted (Ctrl-C)");
        }
        self.step += 1;
        println!("==> {}. {what}", self.step);
        Ok(format!("step {} ({what})", self.step))
    }

    fn run_steps(&mut self, seconds: u64) -> Result<Summary> {
        let what = self.step(
            "starting `exitd run` on n0 (with the Parker broker) and n1, [cluster] lease_ttl = 2",
        )?;
        self.start_nodes().context(what)?;
        let what = self.step("waiting until one node owns the gateway and ping6 gets through")?;
        let owner = self.settled().context(what)?;
        let what = self.step(&format!(
            "ping6 from upstream to the ExitPoint {EXITPOINT} for {seconds} s, XDP counters of {}",
            self.lab.nodes[owner].name
        ))?;
        let forwarded = self.show_traffic(owner, seconds).context(what)?;
        let what = self.step(
            "the Parker node fetches its signed /config and verifies it with signify-openbsd",
        )?;
        let verified = self.parker_fetch().context(what)?;
        let what = self.step(&format!(
            "killing the owner {} (SIGKILL), then waiting for the ping to answer again",
            self.lab.nodes[owner].name
        ))?;
        let (failover, new_owner) = self.failover(owner).context(what)?;
        let what = self.step(&format!(
            "ping6 through the new owner {} for {seconds} s",
            self.lab.nodes[new_owner].name
        ))?;
        let forwarded_after = self.show_traffic(new_owner, seconds).context(what)?;
        Ok(Summary {
            owner: self.lab.nodes[owner].name.clone(),
            forwarded,
            verified,
            failover,
            new_owner: self.lab.nodes[new_owner].name.clone(),
            forwarded_after,
        })
    }

    /// A veth from this namespace (where n0's broker listens) to the Parker node namespace,
    /// and n0's config gets a `[parker]` section with a key pair from `exitd keygen`.
    fn connect_parker_node(&mut self) -> Result<()> {
        let host_end = format!("exdpk{}", std::process::id() % 100_000);
        checked(
            Command::new("ip")
                .args([
                    "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                ])
                .args(["netns", self.parker.name()]),
            "ip link add (Parker veth)",
        )?;
        checked(
            Command::new("ip").args([
                "addr",
                "add",
                &format!("{BROKER_IP}/64"),
                "dev",
                &host_end,
                "nodad",
            ]),
            "ip addr add (broker side)",
        )?;
        checked(
            Command::new("ip").args(["link", "set", &host_end, "up"]),
            "ip link set up (broker side)",
        )?;
        self.parker.ip(&[
            "addr",
            "add",
            &format!("{PARKER_IP}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        self.parker.ip(&["link", "set", "eth0", "up"])?;
        // A port that was free a moment ago (the kernel picks it; the broker binds it soon).
        let probe = std::net::TcpListener::bind(format!("[{BROKER_IP}]:0"))
            .context("cannot bind the broker's address")?;
        self.broker_port = probe.local_addr()?.port();
        let (secret, public) = (self.dir.join("broker.sec"), self.dir.join("broker.pub"));
        checked(
            Command::new(self.exitd)
                .args(["keygen", "--secret"])
                .arg(&secret)
                .arg("--public")
                .arg(&public),
            "exitd keygen",
        )?;
        let parker = format!(
            "[parker]\nlisten = \"[{BROKER_IP}]:{port}\"\nsigning_key_file = {secret:?}\n\
             [parker.ipam]\npath = {ipam:?}\nparent = \"2001:db8:ed0::/48\"\n\
             [[parker.concentrators]]\nname = \"gw01.in.example.net\"\nid = 1\npop = \"vie01\"\n\
             endpoint = \"gw01.example.net:40001\"\n\
             public_key = \"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=\"\nlink_address = \"fe80::1\"\n",
            ipam = self.dir.join("ipam"),
            port = self.broker_port,
        );
        let config = self.lab.nodes[0].config_path();
        let mut file = std::fs::OpenOptions::new().append(true).open(config)?;
        file.write_all(parker.as_bytes())?;
        Ok(())
    }

    fn start_nodes(&mut self) -> Result<()> {
        for i in 0..self.lab.nodes.len() {
            self.lab.start(i)?;
            let node = &self.lab.nodes[i];
            println!(
                "    {} running (pid {}, config {})",
                node.name,
                node.pid().unwrap_or_default(),
                node.config_path().display()
            );
        }
        Ok(())
    }

    /// Waits for exactly one forwarding node and a ping through it; returns its index.
    fn settled(&self) -> Result<usize> {
        let begin = Instant::now();
        let owner = poll_until(STEP_TIMEOUT, || {
            let forwarding = self.lab.forwarding();
            (forwarding.len() == 1 || self.stop.load(Ordering::SeqCst)).then_some(forwarding)
        })
        .context("no node took the gateway within 30 s")?;
        let [owner] = owner.as_slice() else {
            bail!("interrupted (Ctrl-C)");
        };
        let index = self.node_index(owner)?;
        println!(
            "    {owner} owns the gateway ({:.1} s after both ran): GWPubIP6 is on its uplink only; the other node stands by",
            begin.elapsed().as_secs_f64()
        );
        let took = self
            .until_ping(STEP_TIMEOUT)
            .context("the ExitPoint did not answer within 30 s")?;
        println!("    first echo reply after {:.2} s", took.as_secs_f64());
        Ok(index)
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        self.lab
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("unknown node {name}"))
    }

    /// Pings until one answers, `timeout` passes or Ctrl-C; the time it took.
    fn until_ping(&self, timeout: Duration) -> Option<Duration> {
        let begin = Instant::now();
        while begin.elapsed() < timeout && !self.stop.load(Ordering::SeqCst) {
            if self.lab.ping(Duration::from_millis(200)) {
                return Some(begin.elapsed());
            }
        }
        None
    }

    /// Pings the ExitPoint 5 times a second for `seconds`, printing node `i`'s XDP route
    /// counters every second; returns how many packets its forwarder counted meanwhile.
    fn show_traffic(&mut self, i: usize, seconds: u64) -> Result<u64> {
        let total = |counters: &[(String, u64)]| counters.iter().map(|(_, n)| n).sum::<u64>();
        let before = total(&self.route_counters(i)?);
        let ping = self
            .lab
            .upstream
            .command("ping")
            .args(["-q", "-i", "0.2", EXITPOINT])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ping")?;
        self.traffic = Some(ping);
        let begin = Instant::now();
        let mut shown = 0;
        while begin.elapsed() < Duration::from_secs(seconds) {
            if self.stop.load(Ordering::SeqCst) {
                bail!("interrupted (Ctrl-C)");
            }
            // Pacing the display only: the counters are read fresh each time.
            std::thread::sleep(Duration::from_secs(1));
            let counters = self.route_counters(i)?;
            shown = total(&counters).saturating_sub(before);
            let routes: Vec<String> = counters
                .iter()
                .map(|(p, n)| format!("{p} {n:>4}"))
                .collect();
            println!(
                "    t={:>2}s  {} forwarded by XDP, packets per route: {}",
                begin.elapsed().as_secs(),
                self.lab.nodes[i].name,
                routes.join("  ")
            );
        }
        if let Some(mut ping) = self.traffic.take() {
            let _ = ping.kill();
            let _ = ping.wait();
        }
        if shown == 0 {
            bail!("the forwarder counted no packets");
        }
        Ok(shown)
    }

    /// Node `i`'s forwarder routes and their packet counters.
    fn route_counters(&self, i: usize) -> Result<Vec<(String, u64)>> {
        let pins = self.gateway_pins(i)?;
        let out = checked(
            Command::new(self.exitd)
                .args(["dataplane", "routes", "--json", "--pin-dir"])
                .arg(&pins),
            "exitd dataplane routes",
        )?;
        let rows: serde_json::Value =
            serde_json::from_str(&out).context("exitd dataplane routes --json printed no JSON")?;
        let row = |r: &serde_json::Value| {
            let prefix = r["prefix"].as_str().unwrap_or("?").to_string();
            (prefix, r["packets"].as_u64().unwrap_or(0))
        };
        Ok(rows
            .as_array()
            .map_or(Vec::new(), |rows| rows.iter().map(row).collect()))
    }

    /// Node `i`'s pins for its gateway: `<dataplane.pin_dir>/<gateway namespace>`.
    fn gateway_pins(&self, i: usize) -> Result<PathBuf> {
        let node = &self.lab.nodes[i];
        let config = std::fs::read_to_string(node.config_path())?;
        let pin_dir = config
            .lines()
            .find_map(|l| l.strip_prefix("pin_dir = "))
            .context("no pin_dir in the node's config")?
            .trim_matches('"');
        Ok(Path::new(pin_dir).join(node.gateway().0))
    }

    /// What a Parker node does: GET /config with its key and a fresh nonce, split off the
    /// signature line and check it with the broker's public key.
    fn parker_fetch(&self) -> Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let nonce = format!(
            "{:032x}",
            now.as_nanos() ^ (u128::from(std::process::id()) << 64)
        );
        let path = format!(
            "/config?pubkey={}&nonce={nonce}&v6mtu=1400&version=v2.0",
            PARKER_KEY
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        );
        let addr = format!("[{BROKER_IP}]:{}", self.broker_port);
        println!("    parker# GET http://{addr}{path}");
        let body = poll_until(STEP_TIMEOUT, || {
            match self.parker.run(|| http_get(&addr, &path)) {
                Ok(Ok((200, body))) => Some(Ok(body)),
                Ok(Ok((status, body))) if status != 0 => {
                    Some(Err(anyhow::anyhow!("HTTP {status}: {body}")))
                }
                _ if self.stop.load(Ordering::SeqCst) => {
                    Some(Err(anyhow::anyhow!("interrupted (Ctrl-C)")))
                }
                _ => None,
            }
        })
        .context("the broker did not answer within 30 s")??;
        let (json, signature) = body
            .rsplit_once('\n')
            .context("no signature line in the answer")?;
        let config: serde_json::Value =
            serde_json::from_str(json).context("the signed line is no JSON")?;
        if config["nonce"] != nonce {
            bail!("the answer carries another nonce: {}", config["nonce"]);
        }
        println!(
            "    answer: range6 {}, address6 {}, mtu {}, {} concentrator(s), signature {}…",
            config["range6"].as_str().unwrap_or("?"),
            config["address6"].as_str().unwrap_or("?"),
            config["mtu"],
            config["concentrators"].as_array().map_or(0, Vec::len),
            signature.chars().take(16).collect::<String>()
        );
        self.signify(json, signature)
            .context("signify-openbsd rejected the signed config")?;
        println!(
            "    parker# signify-openbsd -V -p broker.pub -x config.sig -m config.json: Signature Verified"
        );
        let tampered = json.replacen("\"mtu\": ", "\"mtu\": 1", 1);
        if self.signify(&tampered, signature).is_ok() {
            bail!("signify-openbsd also accepted a tampered config");
        }
        println!("    a tampered copy (mtu changed) is rejected: the signature check is real");
        Ok(format!(
            "range6 {} fetched and verified with signify-openbsd (tampered copy rejected)",
            config["range6"].as_str().unwrap_or("?")
        ))
    }

    fn signify(&self, json: &str, signature: &str) -> Result<()> {
        let msg = self.dir.join("config.json");
        let sig = self.dir.join("config.sig");
        std::fs::write(&msg, format!("{json}\n"))?;
        std::fs::write(
            &sig,
            format!("untrusted comment: signed by exitd\n{signature}\n"),
        )?;
        checked(
            Command::new("signify-openbsd")
                .arg("-V")
                .arg("-p")
                .arg(self.dir.join("broker.pub"))
                .arg("-x")
                .arg(&sig)
                .arg("-m")
                .arg(&msg),
            "signify-openbsd -V",
        )
        .map(drop)
    }

    /// SIGKILLs node `owner` (and fences it, as the unit's ExecStopPost does), then pings
    /// until the ExitPoint answers again; returns that time and the new owner.
    fn failover(&mut self, owner: usize) -> Result<(Duration, usize)> {
        let begin = Instant::now();
        self.lab.kill(owner)?;
        println!(
            "    {} killed and fenced (`exitd cluster fence`, as the unit's ExecStopPost); the survivor takes the gateway when the lease (TTL {TTL} s) expires",
            self.lab.nodes[owner].name
        );
        let took = self
            .until_ping(Duration::from_secs(30))
            .map(|_| begin.elapsed())
            .context("traffic did not come back within 30 s")?;
        let forwarding = self.lab.forwarding();
        let [new_owner] = forwarding.as_slice() else {
            bail!("after the failover the forwarding nodes are {forwarding:?}");
        };
        let new_index = self.node_index(new_owner)?;
        println!(
            "    {new_owner} took over; ping answers again {:.2} s after the kill",
            took.as_secs_f64()
        );
        let mac = self.lab.nodes[new_index].uplink_mac().unwrap_or_default();
        if !mac.is_empty() && self.lab.upstream_neighbour().contains(&mac) {
            println!(
                "    upstream's neighbour entry for the gateway (GWPubLL) now points at {new_owner}'s uplink {mac}"
            );
        }
        Ok((took, new_index))
    }
}

/// GET `path` from `addr` with HTTP/1.0; (status, body). Status 0: no answer yet.
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return Ok((0, String::new()));
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: exitd\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// Runs `cmd`; its stdout, or an error naming `what` with its output.
fn checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
