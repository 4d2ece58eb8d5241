//! `cargo xtask bench broker`: signed `/config` responses per second and latency of the
//! standalone Parker broker with 100,000 known nodes in its embedded IPAM, driven over
//! loopback by a load generator in this process (blocking keep-alive HTTP/1.1 connections,
//! one thread each, requests prebuilt so the generator spends little CPU).
//!
//! Baseline: what an operator runs today, the reference broker (wgkex, parker branch) with
//! its JSON IPAM, measured at about 11 requests/s with 100k nodes (reference/parker.md); it
//! cannot run here (no wgkex checkout, needs MQTT), so the recorded figure is used.

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const NODES: u64 = 100_000;
const BASELINE_REQ_PER_S: f64 = 11.0;
const TARGET_REQ_PER_S: f64 = 10_000.0;
const FIXED_RATE: u64 = 2_000;
const TARGET_P99_MS: f64 = 10.0;

pub fn run(root: &Path) -> Result<serde_json::Value> {
    let exitd = build_release(root)?;
    let dir = std::env::temp_dir().join(format!("exitd-bench-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&exitd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(exitd: &Path, dir: &Path) -> Result<serde_json::Value> {
    let config = write_config(exitd, dir)?;
    let mut broker = Broker::start(exitd, &config)?;
    let addr = broker.addr.clone();

    println!("broker: populating the embedded IPAM with {NODES} nodes ...");
    let started = Instant::now();
    let populate = drive_all(&addr, 32, NODES)?;
    let populate_s = started.elapsed().as_secs_f64();
    ensure!(
        populate.errors == 0,
        "{} errors while populating",
        populate.errors
    );
    println!(
        "broker: {NODES} allocations in {populate_s:.1} s ({:.0}/s)",
        NODES as f64 / populate_s
    );

    println!("broker: closed loop, 32 connections, 10 s ...");
    let closed = closed_loop(&addr, 32, Duration::from_secs(10))?;
    println!(
        "broker: {:.0} signed /config responses/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        closed.rate, closed.p50_ms, closed.p99_ms, closed.errors
    );
    println!("broker: fixed rate {FIXED_RATE} req/s, 10 s ...");
    let fixed = fixed_rate(&addr, 16, FIXED_RATE, Duration::from_secs(10))?;
    println!(
        "broker: achieved {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        fixed.rate, fixed.p50_ms, fixed.p99_ms, fixed.max_ms, fixed.errors
    );
    broker.stop();

    let ratio = closed.rate / BASELINE_REQ_PER_S;
    println!(
        "broker: {ratio:.0}x the reference broker's ~{BASELINE_REQ_PER_S} req/s at 100k nodes \
         (JSON IPAM); targets: >= {TARGET_REQ_PER_S} req/s {}, p99 < {TARGET_P99_MS} ms at \
         {FIXED_RATE} req/s {}",
        verdict(closed.rate >= TARGET_REQ_PER_S),
        verdict(fixed.p99_ms < TARGET_P99_MS)
    );
    Ok(json!({
        "nodes_in_ipam": NODES,
        "ipam": "embedded (in-memory index + fsync'd append-only log)",
        "populate": { "seconds": populate_s, "allocations_per_s": NODES as f64 / populate_s },
        "closed_loop": closed.to_json(),
        "fixed_rate": fixed.to_json(),
        "baseline": {
            "what": "reference broker (wgkex parker branch) with JSON IPAM at 100k nodes",
            "req_per_s": BASELINE_REQ_PER_S,
            "source": "recorded, reference/parker.md (cannot run here)",
        },
        "ratio_vs_baseline": ratio,
        "targets": {
            "req_per_s": TARGET_REQ_PER_S,
            "req_per_s_met": closed.rate >= TARGET_REQ_PER_S,
            "p99_ms_at_2000_req_per_s": TARGET_P99_MS,
            "p99_met": fixed.p99_ms < TARGET_P99_MS,
        },
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
    }))
}

fn verdict(met: bool) -> &'static str {
    if met { "(met)" } else { "(NOT met)" }
}

fn build_release(root: &Path) -> Result<PathBuf> {
    crate::run_step(
        "building exitd (release)",
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--package", "exitd"]),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let exitd = target.join("release/exitd");
    ensure!(exitd.exists(), "{} was not built", exitd.display());
    Ok(exitd)
}

fn write_config(exitd: &Path, dir: &Path) -> Result<PathBuf> {
    let sec = dir.join("broker.sec");
    let out = Command::new(exitd)
        .args(["keygen", "--secret"])
        .arg(&sec)
        .arg("--public")
        .arg(dir.join("broker.pub"))
        .output()?;
    ensure!(
        out.status.success(),
        "exitd keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = format!(
        "[parker]\nlisten = \"127.0.0.1:0\"\nsigning_key_file = {sec:?}\n\
         rate_limit = {{ per_second = 0.0 }}\n[parker.ipam]\npath = {:?}\n\
         parent = \"2001:db8:e00::/40\"\n",
        dir.join("ipam")
    );
    for i in 1..=4 {
        let pop = if i <= 2 { "vie01" } else { "muc01" };
        text.push_str(&format!(
            "[[parker.concentrators]]\nname = \"gw{i:02}\"\nid = {i}\npop = \"{pop}\"\n\
             endpoint = \"gw{i:02}.example.net:4000{i}\"\n\
             public_key = \"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=\"\n\
             link_address = \"fe80::{i}\"\n"
        ));
    }
    let path = dir.join("exitd.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    fn start(exitd: &Path, config: &Path) -> Result<Broker> {
        let mut child = Command::new(exitd)
            .arg("broker")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start exitd broker")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("listening on http://") {
                        break url.to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    bail!("exitd broker exited before listening");
                }
            }
        };
        Ok(Broker { child, addr })
    }

    /// SIGTERM, then wait: the broker shuts down gracefully.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node key for index `n`: base64 of 32 bytes, always a valid WireGuard key shape.
fn node_key_encoded(n: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 33];
    raw[..8].copy_from_slice(&n.to_be_bytes());
    raw[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    let mut out = String::with_capacity(52);
    for chunk in raw.chunks(3) {
        let v = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[(v >> shift & 63) as usize] as char);
        }
    }
    // 32 bytes = 43 characters + '='; the 33rd (zero) byte only fed the last group.
    out.truncate(43);
    out.push('=');
    out.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn request(n: u64) -> Vec<u8> {
    format!(
        "GET /config?pubkey={}&nonce=00112233445566778899aabbccddeeff&v6mtu=1400&version=bench \
         HTTP/1.1\r\nHost: broker\r\n\r\n",
        node_key_encoded(n)
    )
    .into_bytes()
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(16 * 1024, stream),
            body: Vec::with_capacity(1024),
        })
    }

    /// Sends one request and reads the response; returns the status.
    fn call(&mut self, request: &[u8]) -> Result<u16> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body)?;
        if status == 200 && !self.body.contains(&b'\n') {
            bail!("200 without a signature line");
        }
        Ok(status)
    }
}

#[derive(Default)]
struct Outcome {
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

/// Requests every node once (allocating), spread over `connections`.
fn drive_all(addr: &str, connections: u64, nodes: u64) -> Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, next) = (addr.to_string(), next.clone());
            std::thread::spawn(move || -> Result<Outcome> {
                let mut conn = Conn::open(&addr)?;
                let mut out = Outcome::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= nodes {
                        return Ok(out);
                    }
                    out.requests += 1;
                    if conn.call(&request(n))? != 200 {
                        out.errors += 1;
                    }
                }
            })
        })
        .collect();
    merge(threads)
}

fn merge(threads: Vec<std::thread::JoinHandle<Result<Outcome>>>) -> Result<Outcome> {
    let mut total = Outcome::default();
    for t in threads {
        let out = t
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        total.requests += out.requests;
        total.errors += out.errors;
        total.latencies_us.extend(out.latencies_us);
    }
    Ok(total)
}

struct Stats {
    seconds: f64,
    requests: u64,
    errors: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    connections: u64,
}

impl Stats {
    fn new(mut out: Outcome, seconds: f64, connections: u64) -> Stats {
        out.latencies_us.sort_unstable();
        let pct = |p: f64| {
            let l = &out.latencies_us;
            if l.is_empty() {
                return 0.0;
            }
            f64::from(l[((l.len() - 1) as f64 * p) as usize]) / 1000.0
        };
        Stats {
            seconds,
            requests: out.requests,
            errors: out.errors,
            rate: out.requests as f64 / seconds,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
            connections,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "connections": self.connections, "seconds": self.seconds, "requests": self.requests,
            "errors": self.errors, "req_per_s": self.rate, "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms, "max_ms": self.max_ms,
        })
    }
}

/// Pseudo-random known node per request (xorshift; cheap, deterministic per thread).
fn known_node(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % NODES
}

/// As fast as possible over `connections` for `duration`.
fn closed_loop(addr: &str, connections: u64, duration: Duration) -> Result<Stats> {
    let stop = Arc::new(AtomicBool::new(false));
    let requests: Arc<Vec<Vec<u8>>> = Arc::new((0..NODES).map(request).collect());
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let (addr, stop, requests) = (addr.to_string(), stop.clone(), requests.clone());
            std::thread::spawn(move || -> Result<Outcome> {
                let mut conn = Conn::open(&addr)?;
                let mut out = Outcome::default();
                let mut rng = 0x2545_f491_4f6c_dd1d ^ (i + 1);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let status = conn.call(&requests[known_node(&mut rng) as usize])?;
                    out.latencies_us.push(t.elapsed().as_micros() as u32);
                    out.requests += 1;
                    out.errors += u64::from(status != 200);
                }
                Ok(out)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let out = merge(threads)?;
    Ok(Stats::new(
        out,
        started.elapsed().as_secs_f64(),
        connections,
    ))
}

/// `rate` requests/s on a fixed schedule; latency counts from the scheduled send time, so a
/// stalled server cannot hide its queueing (no coordinated omission).
fn fixed_rate(addr: &str, connections: u64, rate: u64, duration: Duration) -> Result<Stats> {
    let per_conn = rate as f64 / connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let count = (per_conn * duration.as_secs_f64()) as u64;
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let addr = addr.to_string();
            std::thread::spawn(move || -> Result<Outcome> {
                let mut conn = Conn::open(&addr)?;
                let mut out = Outcome::default();
                let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (i + 1);
                // Stagger the connections across one interval.
                let start = Instant::now() + interval.mul_f64(i as f64 / connections as f64);
                for k in 0..count {
                    let due = start + interval.mul_f64(k as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let status = conn.call(&request(known_node(&mut rng)))?;
                    out.latencies_us.push(due.elapsed().as_micros() as u32);
                    out.requests += 1;
                    out.errors += u64::from(status != 200);
                }
                Ok(out)
            })
        })
        .collect();
    let out = merge(threads)?;
    Ok(Stats::new(
        out,
        started.elapsed().as_secs_f64(),
        connections,
    ))
}
