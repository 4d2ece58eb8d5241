//! `cargo xtask demo`: sets up, builds exitd, builds a namespace topology, attaches the data
//! plane and shows live counters while traffic flows. Cleans up on exit and on Ctrl-C.

use crate::run_step;
use anyhow::{Context, Result, bail};
use exitd_testkit::{NetNs, veth_pair};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const PIN_DIR: &str = "/sys/fs/bpf/exitd-demo";

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
    let exitd = root.join("target/debug/exitd");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let mut demo = Demo::build(&exitd)?;
    let result = demo.show(seconds, &stop);
    demo.teardown();
    result
}

/// The demo topology: a client namespace and an exit-node namespace joined by a veth pair,
/// with exitd's XDP program on the exit node's side. Dropping it removes everything.
struct Demo {
    exitd: PathBuf,
    client: NetNs,
    node: NetNs,
    traffic: Vec<Child>,
}

impl Demo {
    fn build(exitd: &Path) -> Result<Demo> {
        println!("==> building the topology: [client] cl0 <--veth--> ex0 [exit node]");
        let client = NetNs::new("demo-client")?;
        let node = NetNs::new("demo-exit")?;
        veth_pair(&client, "cl0", &node, "ex0")?;
        client.ip(&["addr", "add", "198.51.100.1/24", "dev", "cl0"])?;
        node.ip(&["addr", "add", "198.51.100.2/24", "dev", "ex0"])?;
        client.ip(&["addr", "add", "2001:db8:d::1/64", "dev", "cl0", "nodad"])?;
        node.ip(&["addr", "add", "2001:db8:d::2/64", "dev", "ex0", "nodad"])?;
        let demo = Demo {
            exitd: exitd.to_path_buf(),
            client,
            node,
            traffic: Vec::new(),
        };
        println!("==> attaching exitd's XDP program to ex0 (pins in {PIN_DIR})");
        let out = demo.exitd_in_node(&["dataplane", "attach", "--iface", "ex0"])?;
        print!("    {out}");
        Ok(demo)
    }

    fn exitd_in_node(&self, args: &[&str]) -> Result<String> {
        let out = self
            .node
            .command(&self.exitd)
            .args(args)
            .args(["--pin-dir", PIN_DIR])
            .output()
            .context("cannot run exitd")?;
        if !out.status.success() {
            bail!(
                "exitd {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn counted_packets(&self) -> Result<(u64, u64)> {
        let json = self.exitd_in_node(&["dataplane", "stats", "--json"])?;
        let doc: serde_json::Value = serde_json::from_str(&json)?;
        let ex0 = doc["interfaces"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["ifname"] == "ex0"));
        Ok(ex0.map_or((0, 0), |i| {
            (
                i["packets"].as_u64().unwrap_or(0),
                i["bytes"].as_u64().unwrap_or(0),
            )
        }))
    }

    fn show(&mut self, seconds: u64, stop: &AtomicBool) -> Result<()> {
        println!("==> sending ping and ping6 from the client, 5 per second each, for {seconds} s");
        for target in ["198.51.100.2", "2001:db8:d::2"] {
            let child = self
                .client
                .command("ping")
                .args(["-q", "-i", "0.2", target])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start ping")?;
            self.traffic.push(child);
        }
        let start = Instant::now();
        let mut last = (0, 0);
        while start.elapsed() < Duration::from_secs(seconds) && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.counted_packets()?;
            println!(
                "    t={:>2}s  ex0: {:>5} packets {:>8} bytes   (+{} packets in the last second)",
                start.elapsed().as_secs(),
                now.0,
                now.1,
                now.0 - last.0
            );
            last = now;
        }
        println!("==> the same counters, as the kernel holds them (BTF-typed):");
        println!("    $ bpftool map dump pinned {PIN_DIR}/IFACE_COUNTERS");
        let dump = Command::new("bpftool")
            .args([
                "map",
                "dump",
                "pinned",
                &format!("{PIN_DIR}/IFACE_COUNTERS"),
            ])
            .output()
            .context("cannot run bpftool")?;
        print!("{}", String::from_utf8_lossy(&dump.stdout));
        println!(
            "==> summary: exitd counted {} packets ({} bytes) arriving on ex0",
            last.0, last.1
        );
        println!("    inspect it yourself next time with: bpftool prog show name xdp_count");
        Ok(())
    }

    fn teardown(mut self) {
        for child in &mut self.traffic {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.exitd_in_node(&["dataplane", "detach", "--all"]);
        let _ = std::fs::remove_dir_all(PIN_DIR);
        println!("==> cleaned up: program detached, namespaces removed");
        // The namespaces are deleted when `self` is dropped here.
    }
}
