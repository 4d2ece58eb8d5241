//! NAT64 on real veths: a node (IPv6 only) reaches an IPv4 host through `tc_nat64_eth` on
//! the gateway's node-facing link and `xdp_fwd6` (with its tail call `xdp_nat64_in`) on the
//! uplink, with the gateway's IPv4 forwarding off — what crosses was translated in eBPF.
//! The node's veth keeps its checksum and segmentation offloads on, so the translator sees
//! what a busy node link delivers: TCP segments with partial checksums (CHECKSUM_PARTIAL)
//! and GSO super-packets. Real sockets move data both ways and compare every byte; ping6
//! checks ICMP. (The WireGuard variant and the daemon's attachment are covered by the
//! Parker end-to-end test.) Needs root.
//!
//! ```text
//!  node ── n0 ═ g0 [tc_nat64_eth] ── gateway ── g1 [xdp_fwd6] ═ i1 ── internet
//!  2001:db8:ed0:3::1   2001:db8:ed0:3::fffe   198.51.100.2 (public)   198.51.100.9
//! ```

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{SchedClassifier, TcAttachType, Xdp, tc, xdp::XdpMode},
};
use exitd::{dataplane::nat4::translator_config, plan::NatSettings};
use exitd_common::{
    ROUTE_NEIGH_KNOWN,
    nat4::{Nat4Config, Route4},
    nat64::{Nat64Config, WELL_KNOWN_PREFIX, XlatSource},
};
use exitd_testkit::{NetNs, require_root, veth_pair};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    time::Duration,
};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const NODE: &str = "2001:db8:ed0:3::1";

/// `64:ff9b::198.51.100.9`.
fn remote6() -> Ipv6Addr {
    let mut a = WELL_KNOWN_PREFIX;
    a[12..].copy_from_slice(&REMOTE.octets());
    Ipv6Addr::from(a)
}

struct Lab {
    node: NetNs,
    gw: NetNs,
    inet: NetNs,
    /// Keeps the programs attached.
    _ebpf: Ebpf,
}

/// `ip -o link show` of `dev` in `ns` (/sys in a test namespace shows the host's links).
fn link(ns: &NetNs, dev: &str) -> String {
    let out = ns.exec("ip", &["-o", "link", "show", "dev", dev]).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn mac(ns: &NetNs, dev: &str) -> [u8; 6] {
    let text = link(ns, dev);
    let ether = text.split("link/ether ").nth(1).unwrap();
    let bytes: Vec<u8> = ether[..17]
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn ifindex(ns: &NetNs, dev: &str) -> u32 {
    link(ns, dev)
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let node = NetNs::new("n64node").unwrap();
        let gw = NetNs::new("n64gw").unwrap();
        let inet = NetNs::new("n64inet").unwrap();
        veth_pair(&node, "n0", &gw, "g0").unwrap();
        veth_pair(&gw, "g1", &inet, "i1").unwrap();
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE}/64"),
            "dev",
            "n0",
            "nodad",
        ])
        .unwrap();
        node.ip(&[
            "-6",
            "route",
            "add",
            "64:ff9b::/96",
            "via",
            "2001:db8:ed0:3::fffe",
        ])
        .unwrap();
        gw.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:ed0:3::fffe/64",
            "dev",
            "g0",
            "nodad",
        ])
        .unwrap();
        gw.ip(&["addr", "add", "198.51.100.2/24", "dev", "g1"])
            .unwrap();
        inet.ip(&["addr", "add", "198.51.100.9/24", "dev", "i1"])
            .unwrap();
        gw.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        gw.sysctl("net.ipv4.ip_forward", "0").unwrap();
        // The internet's frames reach XDP with complete checksums, as off a wire. The
        // uplink completes partial checksums in software, as a NIC would in hardware: a
        // translator that mangles a partial checksum is caught by the receiver.
        inet.exec("ethtool", &["-K", "i1", "tx", "off"]).unwrap();
        gw.exec("ethtool", &["-K", "g1", "tx", "off"]).unwrap();
        let up = Route4 {
            ifindex: ifindex(&gw, "g1"),
            tenant: 0,
            dst_mac: mac(&inet, "i1"),
            src_mac: mac(&gw, "g1"),
            flags: ROUTE_NEIGH_KNOWN,
        };
        let node_link = ifindex(&gw, "g0");
        let ebpf = gw.run(|| attach(up, node_link)).unwrap();
        Lab {
            node,
            gw,
            inet,
            _ebpf: ebpf,
        }
    }
}

/// Loads the object in the gateway's namespace: xdp_fwd6 on the uplink (and the dummy
/// receiver XDP needs on the veth peer is not needed: replies leave through the kernel),
/// tc_nat64_eth on the node link's ingress, maps filled.
fn attach(up: Route4, node_link: u32) -> Ebpf {
    let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).unwrap();
    let xdp: &mut Xdp = ebpf.program_mut("xdp_fwd6").unwrap().try_into().unwrap();
    xdp.load().unwrap();
    xdp.attach("g1", XdpMode::Default).unwrap();
    let _ = tc::qdisc_add_clsact("g0");
    let cls: &mut SchedClassifier = ebpf
        .program_mut("tc_nat64_eth")
        .unwrap()
        .try_into()
        .unwrap();
    cls.load().unwrap();
    cls.attach("g0", TcAttachType::Ingress).unwrap();
    exitd::dataplane::tails::fill(&mut ebpf).unwrap();
    let n4 = translator_config(&NatSettings::default(), PUBLIC, up);
    let mut cfg4: Array<_, Nat4Config> =
        Array::try_from(ebpf.map_mut("NAT4_CONFIG").unwrap()).unwrap();
    cfg4.set(0, n4, 0).unwrap();
    let mut cfg64: Array<_, Nat64Config> =
        Array::try_from(ebpf.map_mut("NAT64_CONFIG").unwrap()).unwrap();
    cfg64
        .set(0, Nat64Config::new(WELL_KNOWN_PREFIX, 96).unwrap(), 0)
        .unwrap();
    let mut xlat: HashMap<_, [u8; 8], XlatSource> =
        HashMap::try_from(ebpf.map_mut("XLAT6").unwrap()).unwrap();
    let node: Ipv6Addr = NODE.parse().unwrap();
    let source = XlatSource {
        ifindex: node_link,
        pad: 0,
    };
    xlat.insert(<[u8; 8]>::try_from(&node.octets()[..8]).unwrap(), source, 0)
        .unwrap();
    ebpf
}

/// Bytes with a pattern that shows misplaced or corrupted data.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn tcp_both_ways_and_ping_through_the_ebpf_nat64_with_offloads_on() {
    let lab = Lab::new();
    let listener = lab
        .inet
        .run(|| TcpListener::bind((REMOTE, 8080)))
        .unwrap()
        .unwrap();
    let upload = pattern(3 << 20);
    let download = pattern(5 << 20);
    let server = {
        let download = download.clone();
        std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().unwrap();
            let mut got = vec![0u8; 3 << 20];
            conn.read_exact(&mut got).unwrap();
            conn.write_all(&download).unwrap();
            (peer, got)
        })
    };
    let target = (remote6(), 8080);
    let mut conn = lab
        .node
        .run(|| TcpStream::connect_timeout(&target.into(), Duration::from_secs(5)))
        .unwrap()
        .expect("the node connects to 64:ff9b::198.51.100.9 through the NAT64");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(&upload).unwrap();
    let mut got = vec![0u8; 5 << 20];
    conn.read_exact(&mut got)
        .expect("the whole download arrives");
    let (peer, uploaded) = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        PUBLIC,
        "the internet sees the gateway's public IPv4"
    );
    assert!(
        uploaded == upload,
        "the upload arrived intact (GSO, partial checksums)"
    );
    assert!(got == download, "the download arrived intact");

    let ping = lab
        .node
        .exec(
            "ping",
            &[
                "-6",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &remote6().to_string(),
            ],
        )
        .expect("ping6 64:ff9b::198.51.100.9 is answered");
    assert!(String::from_utf8_lossy(&ping.stdout).contains("3 received"));
    let forwarded = lab.gw.exec("cat", &["/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&forwarded.stdout).to_string();
    let ip_line = text
        .lines()
        .filter(|l| l.starts_with("Ip:"))
        .nth(1)
        .unwrap_or("");
    let forw: u64 = ip_line
        .split_whitespace()
        .nth(6)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert_eq!(
        forw, 0,
        "the gateway's kernel forwarded no IPv4 (ip_forward=0)"
    );
}
