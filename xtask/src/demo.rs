//! `cargo xtask demo`: sets up, builds exitd and runs an exit node on an embedded default
//! network in namespaces: an upstream router, exitd's host with the gateway and two tenant
//! ExitPoints (userspace WireGuard, as this kernel has none). The gateway's kernel forwarding
//! is switched off, so the pings that arrive were forwarded by XDP; the demo shows the
//! forwarder's per-route counters live. Cleans up on exit and on Ctrl-C.

use crate::run_step;
use anyhow::{Context, Result, bail};
use exitd_testkit::{NetNs, veth_pair};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const PREFIX: &str = "exitd-demo-";
const ALLOC_NR: u32 = 7;
const EXITPOINTS: [(&str, &str); 2] = [
    ("alice", "2a02:1802:5e:1abc::1"),
    ("bob", "2a02:1802:5e:1123::1"),
];

/// The embedded default: the seed's example, exit node 1 of 2a02:1802:5e::/48 with the
/// network resources 1abc (tenant alice) and 1123 (tenant bob).
fn default_config(dir: &Path) -> String {
    format!(
        r#"[dataplane]
pin_dir = "{pins}"

[network]
allocation = "2a02:1802:5e::/48"
exit_node = 1
alloc_nr = {ALLOC_NR}
uplink = "upl0"
namespace_prefix = "{PREFIX}"
key_dir = "{keys}"
wireguard = "userspace"
state_dir = "{state}"

[[network.tenants]]
name = "alice"
[[network.tenants.resources]]
node = "exit"
prefix = "2a02:1802:5e:1abc::/64"
exitpoint = true

[[network.tenants]]
name = "bob"
[[network.tenants.resources]]
node = "exit"
prefix = "2a02:1802:5e:1123::/64"
exitpoint = true
"#,
        pins = pin_dir().display(),
        keys = dir.join("keys").display(),
        state = dir.join("state").display(),
    )
}

fn pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/exitd-demo")
}

fn gateway() -> String {
    format!("{PREFIX}gw-1-{ALLOC_NR}")
}

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
    let mut demo = Demo::new(root.join("target/debug/exitd"))?;
    let result = demo.build().and_then(|()| demo.show(seconds, &stop));
    demo.teardown();
    result
}

/// Everything the demo made; `teardown` (also after errors) removes it.
struct Demo {
    exitd: PathBuf,
    dir: PathBuf,
    host: NetNs,
    upstream: NetNs,
    traffic: Vec<Child>,
}

impl Demo {
    fn new(exitd: PathBuf) -> Result<Demo> {
        let dir = std::env::temp_dir().join(format!("exitd-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("exitd.toml"), default_config(&dir))?;
        Ok(Demo {
            exitd,
            dir,
            host: NetNs::new("demo-host")?,
            upstream: NetNs::new("demo-up")?,
            traffic: Vec::new(),
        })
    }

    fn config(&self) -> String {
        self.dir.join("exitd.toml").display().to_string()
    }

    /// Runs exitd inside the host namespace (nsenter: /sys/fs/bpf stays the host's).
    fn exitd(&self, args: &[&str]) -> Result<String> {
        let out = self
            .host
            .command(&self.exitd)
            .args(args)
            .output()
            .context("cannot run exitd")?;
        checked(out, &format!("exitd {}", args.join(" ")))
    }

    fn build(&mut self) -> Result<()> {
        println!(
            "==> the embedded network: exit node 1 of 2a02:1802:5e::/48, tenants alice (1abc) and bob (1123)"
        );
        print!(
            "{}",
            indent(&self.exitd(&["plan", "--config", &self.config()])?)
        );
        println!("==> the upstream router, connected to exitd's uplink");
        veth_pair(&self.upstream, "port0", &self.host, "upl0")?;
        let up = &self.upstream;
        up.ip(&["addr", "add", "fe80::1/64", "dev", "port0", "nodad"])?;
        up.ip(&["addr", "add", "2a02:1802:5e::1/64", "dev", "port0", "nodad"])?;
        let routes = self.exitd(&[
            "plan",
            "upstream",
            "--config",
            &self.config(),
            "--port",
            "port0",
        ])?;
        for route in up.add_upstream_routes(&routes)? {
            println!("    upstream# ip -6 route add {route}");
        }
        // A veth only takes frames redirected by XDP when its own side runs XDP, and a veth
        // sending its own TCP must compute checksums (real routers' NICs do).
        up.exec("ethtool", &["-K", "port0", "tx", "off"])?;
        let up_pins = pin_dir().join("upstream");
        let out = up
            .command(&self.exitd)
            .args(["dataplane", "attach", "--iface", "port0", "--pin-dir"])
            .arg(&up_pins)
            .output()?;
        checked(out, "exitd dataplane attach (upstream)")?;
        println!(
            "==> exitd apply: gateway and ExitPoint namespaces, veths, addresses, routes, WireGuard"
        );
        print!(
            "{}",
            indent(&self.exitd(&["apply", "--config", &self.config()])?)
        );
        println!(
            "==> switching the gateway's kernel forwarding off: from here on only XDP forwards"
        );
        let gw = PathBuf::from("/run/netns").join(gateway());
        checked(
            Command::new("nsenter")
                .arg(format!("--net={}", gw.display()))
                .args(["--", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])
                .output()?,
            "sysctl in the gateway",
        )?;
        println!("==> exitd dataplane sync: xdp_fwd6 on the gateway's links, maps from the plan");
        print!(
            "{}",
            indent(&self.exitd(&["dataplane", "sync", "--config", &self.config()])?)
        );
        Ok(())
    }

    fn route_counters(&self) -> Result<Vec<(String, u64)>> {
        let pins = pin_dir().join(gateway());
        let json = self.exitd(&[
            "dataplane",
            "routes",
            "--json",
            "--pin-dir",
            pins.to_str().unwrap_or_default(),
        ])?;
        let rows: serde_json::Value = serde_json::from_str(&json)?;
        Ok(rows
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r["prefix"].as_str().unwrap_or("?").to_string(),
                            r["packets"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn show(&mut self, seconds: u64, stop: &AtomicBool) -> Result<()> {
        println!(
            "==> ping6 from the upstream router to both ExitPoints, 5 per second each, for {seconds} s"
        );
        for (_, target) in EXITPOINTS {
            let child = self
                .upstream
                .command("ping")
                .args(["-q", "-i", "0.2", target])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start ping")?;
            self.traffic.push(child);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds) && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(1));
            let counters = self.route_counters()?;
            let line: Vec<String> = counters
                .iter()
                .map(|(p, n)| format!("{p} {n:>4}"))
                .collect();
            println!(
                "    t={:>2}s  forwarded by XDP: {}",
                start.elapsed().as_secs(),
                line.join("  ")
            );
        }
        let pins = pin_dir().join(gateway());
        println!(
            "==> the forwarder's routes (exitd dataplane routes --pin-dir {}):",
            pins.display()
        );
        print!(
            "{}",
            indent(&self.exitd(&[
                "dataplane",
                "routes",
                "--pin-dir",
                pins.to_str().unwrap_or_default()
            ])?)
        );
        println!(
            "==> attachments and verdicts (exitd dataplane stats, inside the gateway namespace):"
        );
        let gw = PathBuf::from("/run/netns").join(gateway());
        let stats = Command::new("nsenter")
            .arg(format!("--net={}", gw.display()))
            .arg("--")
            .arg(&self.exitd)
            .args([
                "dataplane",
                "stats",
                "--pin-dir",
                pins.to_str().unwrap_or_default(),
            ])
            .output()?;
        print!("{}", indent(&checked(stats, "exitd dataplane stats")?));
        println!(
            "==> summary: with kernel forwarding off in the gateway, every echo request that reached an"
        );
        println!(
            "    ExitPoint (and every reply that reached upstream) was forwarded by xdp_fwd6."
        );
        println!(
            "    Inspect it yourself: bpftool prog show name xdp_fwd6; bpftool map dump pinned {}/ROUTES6",
            pins.display()
        );
        Ok(())
    }

    fn teardown(&mut self) {
        for child in &mut self.traffic {
            let _ = child.kill();
            let _ = child.wait();
        }
        // exitd's userspace WireGuard processes recorded their pids in the state directory.
        if let Ok(entries) = std::fs::read_dir(self.dir.join("state")) {
            for entry in entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            {
                if let Ok(pid) = std::fs::read_to_string(entry.path()) {
                    let _ = Command::new("kill").arg(pid.trim()).output();
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(PREFIX) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(pin_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
        println!(
            "==> cleaned up: namespaces, WireGuard processes, pinned programs and maps removed"
        );
    }
}

fn checked(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
