//! The first data-plane program end to end: `exitd dataplane attach/stats/detach` on veth
//! pairs between real network namespaces, and the program itself under BPF_PROG_TEST_RUN.
//! Needs root (CI runs as root).

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::Xdp,
};
use exitd_common::Counters;
use exitd_testkit::{
    NetNs, TempFile, TestPins, packet, poll_until,
    process::{http_get, logged_addr, wait_for_logs},
    require_root, run_xdp,
    testrun::verdict,
    veth_pair,
};
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::{Command, Output},
    time::Duration,
};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");

/// Runs `exitd ARGS… --pin-dir PINS` inside `ns`.
fn exitd(ns: &NetNs, pins: &TestPins, args: &[&str]) -> Output {
    ns.command(EXITD)
        .args(args)
        .arg("--pin-dir")
        .arg(pins.path())
        .output()
        .expect("exitd runs")
}

/// Runs `command`; fails with its stderr unless it succeeded; its stdout parsed as JSON.
fn json_of(command: &mut Command) -> serde_json::Value {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn stats(ns: &NetNs, pins: &TestPins) -> serde_json::Value {
    let out = exitd(ns, pins, &["dataplane", "stats", "--json"]);
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --json prints JSON")
}

fn counted(ns: &NetNs, pins: &TestPins, ifname: &str) -> (u64, u64) {
    let doc = stats(ns, pins);
    doc["interfaces"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["ifname"] == ifname))
        .map_or((0, 0), |i| {
            (
                i["packets"].as_u64().unwrap_or(0),
                i["bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// Two namespaces joined by a veth pair carrying only what the test sends: IPv6 is off (no
/// router solicitations, MLD or ND) and neighbours are static (no ARP).
struct QuietPair {
    sender: NetNs,
    receiver: NetNs,
}

const SENDER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

impl QuietPair {
    fn new() -> QuietPair {
        let sender = NetNs::new("cnt-s").unwrap();
        let receiver = NetNs::new("cnt-r").unwrap();
        for ns in [&sender, &receiver] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                .unwrap();
        }
        veth_pair(&sender, "snd0", &receiver, "rcv0").unwrap();
        sender
            .ip(&["link", "set", "snd0", "address", "02:00:00:00:00:01"])
            .unwrap();
        receiver
            .ip(&["link", "set", "rcv0", "address", "02:00:00:00:00:02"])
            .unwrap();
        sender
            .ip(&["addr", "add", "192.0.2.1/24", "dev", "snd0"])
            .unwrap();
        receiver
            .ip(&["addr", "add", "192.0.2.2/24", "dev", "rcv0"])
            .unwrap();
        let permanent = ["nud", "permanent"];
        sender
            .ip(&[
                &[
                    "neigh",
                    "add",
                    "192.0.2.2",
                    "lladdr",
                    "02:00:00:00:00:02",
                    "dev",
                    "snd0",
                ][..],
                &permanent,
            ]
            .concat())
            .unwrap();
        receiver
            .ip(&[
                &[
                    "neigh",
                    "add",
                    "192.0.2.1",
                    "lladdr",
                    "02:00:00:00:00:01",
                    "dev",
                    "rcv0",
                ][..],
                &permanent,
            ]
            .concat())
            .unwrap();
        QuietPair { sender, receiver }
    }

    /// Sends `count` UDP datagrams of `payload` bytes from the sender to the receiver.
    fn send_udp(&self, count: usize, payload: usize) {
        self.sender
            .run(move || {
                let socket = UdpSocket::bind(SocketAddr::from((SENDER_IP, 0))).unwrap();
                let data = vec![0xab; payload];
                for _ in 0..count {
                    socket
                        .send_to(&data, SocketAddr::from((RECEIVER_IP, 9)))
                        .unwrap();
                }
            })
            .unwrap();
    }
}

/// A quiet pair with `xdp_count` attached to the receiver's end.
fn attached_pair() -> (QuietPair, TestPins) {
    require_root();
    let pair = QuietPair::new();
    let pins = TestPins::new().unwrap();
    let out = exitd(
        &pair.receiver,
        &pins,
        &["dataplane", "attach", "--iface", "rcv0"],
    );
    assert!(
        out.status.success(),
        "attach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pair, pins)
}

#[test]
fn counter_sees_exactly_the_packets_sent_across_a_veth_pair() {
    let (pair, pins) = attached_pair();

    const SENT: u64 = 50;
    const PAYLOAD: usize = 100;
    pair.send_udp(SENT as usize, PAYLOAD);

    let frame_len = (14 + 20 + 8 + PAYLOAD) as u64;
    let seen = poll_until(Duration::from_secs(5), || {
        let c = counted(&pair.receiver, &pins, "rcv0");
        (c.0 >= SENT).then_some(c)
    });
    assert_eq!(
        seen,
        Some((SENT, SENT * frame_len)),
        "exactly the sent frames are counted"
    );

    // A second batch adds exactly its own frames: nothing else crosses the link.
    pair.send_udp(7, PAYLOAD);
    let seen = poll_until(Duration::from_secs(5), || {
        let c = counted(&pair.receiver, &pins, "rcv0");
        (c.0 >= SENT + 7).then_some(c)
    });
    assert_eq!(seen, Some((SENT + 7, (SENT + 7) * frame_len)));
}

#[test]
fn pinned_counters_are_btf_typed_for_bpftool() {
    let (pair, pins) = attached_pair();
    pair.send_udp(3, 10);
    poll_until(Duration::from_secs(5), || {
        (counted(&pair.receiver, &pins, "rcv0").0 >= 3).then_some(())
    })
    .expect("the frames are counted");

    let map = pins.path().join("IFACE_COUNTERS");
    let dump = json_of(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&map),
    );
    // With BTF, bpftool prints field names ("formatted" values), not raw hex.
    let entry = &dump[0];
    let per_cpu = entry["formatted"]["values"]
        .as_array()
        .or(entry["values"].as_array());
    let total: u64 = per_cpu
        .expect("per-CPU values")
        .iter()
        .map(|v| {
            v["value"]["packets"]
                .as_u64()
                .expect("a named `packets` field")
        })
        .sum();
    assert_eq!(total, 3);
}

#[test]
fn detach_removes_the_program_and_its_pin() {
    let (pair, pins) = attached_pair();
    let attached = |ns: &NetNs| {
        let out = ns.exec("ip", &["link", "show", "dev", "rcv0"]).unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    assert!(attached(&pair.receiver));

    // Attaching again (an agent restart) keeps the existing attachment.
    let again = exitd(
        &pair.receiver,
        &pins,
        &["dataplane", "attach", "--iface", "rcv0"],
    );
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already"));

    let out = exitd(
        &pair.receiver,
        &pins,
        &["dataplane", "detach", "--iface", "rcv0"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!attached(&pair.receiver));
    let links: Vec<_> = std::fs::read_dir(pins.path().join("links"))
        .unwrap()
        .collect();
    assert!(links.is_empty(), "no link pin left: {links:?}");

    let out = exitd(
        &pair.receiver,
        &pins,
        &["dataplane", "detach", "--iface", "rcv0"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no exitd XDP program is attached"));
}

#[test]
fn attaching_to_a_missing_interface_is_a_clear_error() {
    require_root();
    let ns = NetNs::new("cnt-m").unwrap();
    let pins = TestPins::new().unwrap();
    let out = exitd(&ns, &pins, &["dataplane", "attach", "--iface", "nosuch0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interface \"nosuch0\" does not exist in this network namespace"),
        "{stderr}"
    );
    assert!(
        !pins.path().join("links").exists(),
        "nothing pinned for a failed attach"
    );
}

#[test]
fn daemon_attaches_at_startup_and_leaves_forwarding_up_on_sigterm() {
    require_root();
    let pair = QuietPair::new();
    let pins = TestPins::new().unwrap();
    let config = TempFile::with_text(
        "toml",
        &format!(
            "[dataplane]\npin_dir = {:?}\ninterfaces = [\"rcv0\"]\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
            pins.path()
        ),
    );
    let mut daemon = pair
        .receiver
        .command(EXITD)
        .args(["run", "--config"])
        .arg(config.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let logs = wait_for_logs(
        &mut daemon,
        &["exitd running", "admin API listening"],
        Duration::from_secs(10),
    );
    let links = std::fs::read_dir(pins.path().join("links"))
        .unwrap()
        .count();
    assert_eq!(links, 1, "attached at start-up");

    // The admin API wants its token; with it, the counters are there as metrics.
    let admin = logged_addr(&logs[1]);
    assert_eq!(http_get(&pair.receiver, &admin, "/metrics", &[]).0, 401);
    let wrong = ["Authorization: Bearer wrong"];
    assert_eq!(http_get(&pair.receiver, &admin, "/metrics", &wrong).0, 401);
    pair.send_udp(2, 10);
    let right = ["Authorization: Bearer s3cret"];
    let series = "exitd_xdp_interface_packets_total{namespace=\"\",interface=\"rcv0\"} 2\n";
    let exported = poll_until(Duration::from_secs(5), || {
        let (status, metrics) = http_get(&pair.receiver, &admin, "/metrics", &right);
        (status == 200 && metrics.contains(series)).then_some(())
    });
    assert!(exported.is_some(), "{series} is served");

    // `exitd status` shows the attachment with the mode the kernel reports (veth: native).
    let status = json_of(
        pair.receiver
            .command(EXITD)
            .args(["status", "--json", "--admin", &admin, "--config"])
            .arg(config.path()),
    );
    let attachment = &status["dataplane"]["namespaces"][0]["attachments"][0];
    assert_eq!(attachment["ifname"], "rcv0", "{status}");
    assert_eq!(attachment["program"], "xdp_count", "{status}");
    assert_eq!(attachment["mode"], "native", "{status}");

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    pair.send_udp(4, 10);
    let seen = poll_until(Duration::from_secs(5), || {
        (counted(&pair.receiver, &pins, "rcv0").0 >= 6).then_some(())
    });
    assert!(
        seen.is_some(),
        "the program keeps running after the daemon exited"
    );
}

#[test]
fn test_run_passes_the_frame_and_bumps_the_counter() {
    require_root();
    let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).expect("the embedded object loads");
    let program: &mut Xdp = ebpf.program_mut("xdp_count").unwrap().try_into().unwrap();
    program.load().expect("the verifier accepts xdp_count");
    let ip = packet::ipv4_udp(SENDER_IP, RECEIVER_IP, 1000, 9, 64, &[1, 2, 3]);
    let frame = packet::ethernet(
        [2, 0, 0, 0, 0, 2],
        [2, 0, 0, 0, 0, 1],
        packet::ETH_P_IP,
        &ip,
    );

    for _ in 0..2 {
        let run = run_xdp(program, &frame).unwrap();
        assert_eq!(run.verdict, verdict::PASS);
        assert_eq!(run.packet, frame, "the frame passes unchanged");
    }

    let map: PerCpuHashMap<&MapData, u32, Counters> =
        PerCpuHashMap::try_from(ebpf.map("IFACE_COUNTERS").unwrap()).unwrap();
    let totals: Vec<Counters> = map
        .iter()
        .map(|entry| {
            entry
                .unwrap()
                .1
                .iter()
                .fold(Counters::default(), |s, c| s + *c)
        })
        .collect();
    assert_eq!(
        totals,
        vec![Counters {
            packets: 2,
            bytes: 2 * frame.len() as u64
        }]
    );
}
