//! `exitd run` with `[dataplane.nat64]` on a real exit-node gateway built by `exitd apply`:
//! the NAT64 classifier is attached to TC ingress of the node-facing link once that link
//! appears (as the concentrator's interface does, after the forwarder started), shares
//! every pinned map with `xdp_fwd6` on the uplink, gets its prefix and the firewall's
//! entries, and stays attached — same program — across a restart of exitd. Checked with
//! `bpftool`, the kernel's own view. Needs root.
//!
//! A veth stands in for the concentrator's WireGuard interface (no kernel WireGuard here);
//! no traffic crosses it, so its Ethernet header does not matter. XLAT6 is filled by the
//! concentrator role, which needs etcd: here the pinned map is written through the same
//! `Xlat6Map` the role uses; the role's bookkeeping is covered by unit tests.
//!
//! ```text
//!  upstream ── port0 ═ pub-1-A ── [gateway: xdp_fwd6] ── n64 (tc_nat64_l3) ═ n64p ── node
//! ```

mod common;

use aya::programs::{SchedClassifier, TcAttachType};
use common::{assert_success, clean_run, collect_logs};
use exitd::dataplane::{PinDir, nat64::xlat_table, nat64_maps::Xlat6Map};
use exitd_testkit::{NetNs, TestPins, poll_until, require_root, veth_pair};
use serde_json::Value;
use std::{
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");
/// A network-specific prefix, so the test sees the configured one (not the default).
const PREFIX: &str = "2001:db8:6400::/48";
const NODE_LINK: &str = "n64";

struct Gateway {
    host: NetNs,
    _upstream: NetNs,
    node: NetNs,
    pins: TestPins,
    dir: PathBuf,
    prefix: String,
    alloc_nr: u32,
}

impl Gateway {
    fn new() -> Gateway {
        require_root();
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("exitd-nat64-test-{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let gw = Gateway {
            host: NetNs::new("n6host").unwrap(),
            _upstream: NetNs::new("n6up").unwrap(),
            node: NetNs::new("n6node").unwrap(),
            pins: TestPins::new().unwrap(),
            dir,
            prefix: format!("x6n{pid}-"),
            alloc_nr: 61_000 + pid % 1_000,
        };
        veth_pair(&gw._upstream, "port0", &gw.host, "upl0").unwrap();
        gw.write_config();
        gw.apply();
        gw
    }

    fn config(&self) -> String {
        self.dir.join("exitd.toml").to_str().unwrap().to_string()
    }

    fn write_config(&self) {
        let text = format!(
            "[dataplane]\npin_dir = {pins:?}\n\n\
             [dataplane.nat64]\nprefix = \"{PREFIX}\"\ninterfaces = [\"{NODE_LINK}\"]\n\n\
             [dataplane.firewall]\ncontrol_ports = [\"tcp/2379\", \"udp/5353\"]\n\
             allow = [\"192.0.2.0/24\"]\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [network]\nallocation = \"2a02:1802:5e::/48\"\nexit_node = 1\nalloc_nr = {a}\nuplink = \"upl0\"\n\
             gateway_ipv4 = \"185.69.166.123/24\"\nupstream_ipv4 = \"185.69.166.1\"\n\
             namespace_prefix = \"{prefix}\"\nkey_dir = \"{keys}\"\nwireguard = \"userspace\"\n\
             state_dir = \"{state}\"\n\n\
             [[network.tenants]]\nname = \"alice\"\n[[network.tenants.resources]]\n\
             node = \"exit\"\nprefix = \"2a02:1802:5e:1abc::/64\"\nexitpoint = true\n",
            pins = self.pins.path(),
            a = self.alloc_nr,
            prefix = self.prefix,
            keys = self.dir.join("keys").display(),
            state = self.dir.join("state").display(),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn exitd(&self, args: &[&str]) -> String {
        let out = self.host.command(EXITD).args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self) {
        let state = self.dir.join("state");
        self.exitd(&[
            "apply",
            "--config",
            &self.config(),
            "--wireguard",
            "userspace",
            "--state-dir",
            state.to_str().unwrap(),
        ]);
    }

    fn gateway(&self) -> String {
        format!("{}gw-1-{}", self.prefix, self.alloc_nr)
    }

    fn gateway_pins(&self) -> PathBuf {
        self.pins.path().join(self.gateway())
    }

    fn uplink(&self) -> String {
        format!("pub-1-{}", self.alloc_nr)
    }

    /// A command in the gateway's namespace (nsenter keeps /sys/fs/bpf visible).
    fn in_gateway(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--net={}",
            exitd::netlink::netns::path(&self.gateway()).display()
        ))
        .args(["--", program]);
        cmd
    }

    /// `bpftool -j ARGS` in the gateway's namespace, parsed.
    fn bpftool(&self, args: &[&str]) -> Value {
        let out = self
            .in_gateway("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        assert_success(&out, args);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The XDP program attached to `dev`, per `bpftool net show`: (id, name).
    fn xdp_prog(&self, dev: &str) -> Option<(u64, String)> {
        let net = self.bpftool(&["net", "show", "dev", dev]);
        let xdp = net
            .as_array()?
            .iter()
            .find_map(|e| e["xdp"].as_array().cloned())?;
        let id = xdp.iter().find(|p| p["devname"] == dev)?["id"].as_u64()?;
        let show = self.bpftool(&["prog", "show", "id", &id.to_string()]);
        Some((id, show["name"].as_str()?.to_string()))
    }

    /// The kernel's list of TCX ingress programs of the node-facing link (bpftool 7.1 here
    /// predates TCX in `net show`): the link's revision (it changes with every attach and
    /// detach), its ifindex and the programs' (id, name).
    fn tcx_ingress(&self) -> Option<Tcx> {
        let ns = std::fs::File::open(exitd::netlink::netns::path(&self.gateway())).ok()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                let ifindex = exitd::iface::index_of(NODE_LINK).ok()?;
                let (revision, progs) =
                    SchedClassifier::query_tcx(NODE_LINK, TcAttachType::Ingress).ok()?;
                let progs = progs
                    .iter()
                    .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
                    .collect();
                Some(Tcx {
                    revision,
                    ifindex,
                    progs,
                })
            })
            .join()
            .unwrap()
        })
    }

    /// The id of `tc_nat64_l3` on TCX ingress of the node-facing link, and the revision.
    fn nat64_prog(&self) -> Option<(u64, u32)> {
        let tcx = self.tcx_ingress()?;
        let (id, _) = tcx
            .progs
            .into_iter()
            .find(|(_, name)| name == "tc_nat64_l3")?;
        Some((tcx.revision, id))
    }

    fn map_ids_of(&self, prog: u64) -> Vec<u64> {
        let show = self.bpftool(&["prog", "show", "id", &prog.to_string()]);
        let ids = show["map_ids"].as_array().expect("map_ids");
        ids.iter().filter_map(Value::as_u64).collect()
    }

    fn pinned_map_id(&self, map: &str) -> u64 {
        let path = self.gateway_pins().join(map);
        let show = self.bpftool(&["map", "show", "pinned", path.to_str().unwrap()]);
        show["id"].as_u64().expect("map id")
    }

    /// A map's entries as BTF formats them (`{"key": …, "value": …}`).
    fn dump(&self, map: &str) -> Vec<Value> {
        let path = self.gateway_pins().join(map);
        let dump = self.bpftool(&["map", "dump", "pinned", path.to_str().unwrap()]);
        let entries = dump.as_array().cloned().unwrap_or_default();
        // bpftool -j prints raw bytes plus, with BTF, the "formatted" entry.
        entries
            .into_iter()
            .map(|e| e.get("formatted").cloned().unwrap_or(e))
            .collect()
    }

    /// `exitd run`, once its forwarder runs.
    fn start(&self) -> Daemon {
        let mut child = self
            .host
            .command(EXITD)
            .args(["run", "--config", &self.config()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = collect_logs(&mut child);
        let daemon = Daemon { child, logs };
        assert!(
            daemon.logged("XDP forwarder running"),
            "exitd run did not start: {:?}",
            daemon.logs.lock().unwrap()
        );
        daemon
    }
}

/// What the kernel reports for TCX ingress of a link.
#[derive(Debug)]
struct Tcx {
    /// Changes with every attach and detach.
    revision: u64,
    ifindex: u32,
    /// (id, name) of each program.
    progs: Vec<(u32, String)>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        clean_run(&self.dir, &self.prefix);
    }
}

/// A running `exitd run`, stopped with SIGTERM when dropped — also when the test fails.
struct Daemon {
    child: std::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn logged(&self, needle: &str) -> bool {
        poll_until(Duration::from_secs(20), || {
            let logs = self.logs.lock().unwrap();
            logs.iter().any(|l| l.contains(needle)).then_some(())
        })
        .is_some()
    }

    /// SIGTERM, then waits for the exit.
    fn stop(mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exitd run exited with {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: our own child (already reaped after `stop`: then kill fails harmlessly).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The first value of a one-entry array map dump (BTF-formatted).
fn only_value(dump: &[Value]) -> &Value {
    assert_eq!(dump.len(), 1, "{dump:?}");
    &dump[0]["value"]
}

#[test]
fn the_nat64_classifier_shares_the_forwarders_maps_and_survives_a_restart() {
    let gw = Gateway::new();
    let daemon = gw.start();

    // The node-facing link appears after the forwarder started, as the concentrator's does.
    let gateway_path = exitd::netlink::netns::path(&gw.gateway());
    let out = gw
        .node
        .command("ip")
        .args([
            "link", "add", "n64p", "type", "veth", "peer", "name", NODE_LINK, "netns",
        ])
        .arg(&gateway_path)
        .output()
        .unwrap();
    assert_success(&out, &["ip link add n64"]);
    let up = gw
        .in_gateway("ip")
        .args(["link", "set", NODE_LINK, "up"])
        .output();
    assert_success(&up.unwrap(), &["ip link set n64 up"]);

    let prog = poll_until(Duration::from_secs(20), || gw.nat64_prog()).unwrap_or_else(|| {
        let logs = daemon.logs.lock().unwrap().join("\n");
        let tcx = gw.tcx_ingress();
        panic!("tc_nat64_l3 is not attached to {NODE_LINK}: {tcx:?}\nexitd's log:\n{logs}")
    });
    let (revision, prog) = prog;
    let links = std::fs::read_dir(gw.gateway_pins().join("links")).unwrap();
    let pinned: Vec<String> = links
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        pinned.iter().any(|f| f.starts_with("tc_nat64_l3@n64@")),
        "the TC link is pinned: {pinned:?}"
    );

    // One set of maps: the classifier and xdp_fwd6 use the pinned maps, not copies.
    let (fwd6, name) = gw.xdp_prog(&gw.uplink()).expect("XDP on the uplink");
    assert_eq!(name, "xdp_fwd6");
    let (tc_maps, xdp_maps) = (gw.map_ids_of(u64::from(prog)), gw.map_ids_of(fwd6));
    for map in [
        "CT4",
        "NAT4_CONFIG",
        "NAT64_CONFIG",
        "CT6",
        "XLAT6",
        "FW_PORTS",
    ] {
        let id = gw.pinned_map_id(map);
        assert!(tc_maps.contains(&id), "tc_nat64_l3 uses the pinned {map}");
    }
    for map in ["CT4", "NAT4_CONFIG", "FW_PORTS", "FW_LINKS", "XDP_TAILS"] {
        let id = gw.pinned_map_id(map);
        assert!(xdp_maps.contains(&id), "xdp_fwd6 uses the pinned {map}");
    }

    // The configuration reached the maps.
    let config = poll_until(Duration::from_secs(10), || {
        let dump = gw.dump("NAT64_CONFIG");
        let value = only_value(&dump).clone();
        (value["prefix_len"] == 48).then_some(value)
    })
    .unwrap_or_else(|| panic!("NAT64_CONFIG: {:?}", gw.dump("NAT64_CONFIG")));
    let prefix: Vec<u64> = config["prefix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(prefix[..6], [0x20, 0x01, 0x0d, 0xb8, 0x64, 0x00]);
    assert_eq!(config["flags"], 1, "enabled; not the well-known prefix");
    let ports = gw.dump("FW_PORTS");
    assert_eq!(
        ports.len(),
        3,
        "tcp/2379, udp/5353 and the on-marker: {ports:?}"
    );
    let n64_index = gw.tcx_ingress().unwrap().ifindex;
    let fw_links = gw.dump("FW_LINKS");
    assert!(
        fw_links.iter().any(|e| e["key"] == n64_index),
        "the node-facing link is firewalled: {fw_links:?}"
    );
    assert_eq!(gw.dump("FW_ALLOW4").len(), 1);

    // XLAT6 through the map handle the concentrator uses: add two nodes, then remove one.
    let pins = PinDir::new(gw.gateway_pins());
    let mut xlat = Xlat6Map::open_pinned(&pins).unwrap();
    let nodes: Vec<ipnet::Ipv6Net> = ["2001:db8:ed0:2::/63", "2001:db8:ed0:4::/63"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(xlat.sync(&xlat_table(&nodes, 9)).unwrap(), (2, 0, 0));
    assert_eq!(gw.dump("XLAT6").len(), 2);
    assert_eq!(xlat.sync(&xlat_table(&nodes[..1], 9)).unwrap(), (0, 0, 1));
    assert_eq!(gw.dump("XLAT6").len(), 1);

    // Visible in the CLI and the metrics.
    let stats: Value =
        serde_json::from_str(&gw.exitd(&["nat", "stats", "--json", "--config", &gw.config()]))
            .unwrap();
    assert!(
        stats["nat64"]["verdicts"]
            .as_array()
            .is_some_and(|v| v.len() == 18),
        "{stats}"
    );
    let metrics = gw.exitd(&[
        "dataplane",
        "stats",
        "--prometheus",
        "--pin-dir",
        gw.pins.path().to_str().unwrap(),
    ]);
    assert!(metrics.contains("exitd_nat64_packets_total{"), "{metrics}");
    assert!(
        metrics.contains("exitd_firewall_dropped_packets_total{"),
        "{metrics}"
    );

    // A restart keeps the attachment: same program, and the same revision of the link's
    // program list (any detach or re-attach in between would have changed it).
    daemon.stop();
    let attached = Some((revision, prog));
    assert_eq!(
        gw.nat64_prog(),
        attached,
        "still attached while exitd is down"
    );
    let daemon = gw.start();
    assert!(daemon.logged("exitd running"));
    assert_eq!(gw.nat64_prog(), attached, "untouched by the restart");
    assert_eq!(gw.dump("XLAT6").len(), 1, "XLAT6 survives the restart");
    drop(daemon);

    // `exitd dataplane detach` takes the TC link with it.
    let pin_dir = gw.gateway_pins();
    let out = gw
        .in_gateway(EXITD)
        .args(["dataplane", "detach", "--iface", NODE_LINK, "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    assert_success(&out, &["dataplane detach"]);
    assert_eq!(gw.nat64_prog(), None, "detached");
}
