//! The NAT64 translator under BPF_PROG_TEST_RUN: `tc_nat64_eth` (the node-facing side;
//! the WireGuard variant `tc_nat64_l3` is the same code without an Ethernet header, which
//! a test run cannot feed it — the netns end-to-end test covers it) and `xdp_fwd6` with its
//! tail call `xdp_nat64_in` (replies on the uplink). Every translated packet's checksums
//! are recomputed from scratch. Covers TCP, UDP, ICMP echo, ICMP errors both ways with
//! their quoted packets (Time Exceeded, Fragmentation Needed <-> Packet Too Big), the
//! source check against the nodes' xlat /64s, the well-known prefix's non-global rule, the
//! port space shared with NAT44, the gateway firewall and truncated packets. Needs root.

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, Xdp},
};
use exitd_common::{
    Counters, ROUTE_NEIGH_KNOWN,
    nat4::{
        NAT4_ENABLED, Nat4Config, Nat4Verdict, ROUTE4_VIA_KERNEL, Route4, TIMEOUT_COUNT, Timeout,
    },
    nat64::{FW_DROP4, FW_DROP6, FwPort, Nat64Config, Nat64Verdict, WELL_KNOWN_PREFIX, XlatSource},
};
use exitd_testkit::{
    XdpRun,
    packet::{self, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_UDP, ipv6_icmp, ipv6_udp},
    packet4::{self, IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK, TCP_SYN},
    packet6::{ipv6_tcp, verify_checksums6},
    require_root, run_tc, run_xdp,
    testrun::{tc_action, verdict},
};
use std::net::{Ipv4Addr, Ipv6Addr};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(185, 69, 166, 123);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// A node's xlat /64 (the second /64 of its /63) and its CLAT address.
const NODE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xed0, 0x3, 0, 0, 0, 0x1);
const OTHER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xed0, 0x4, 0, 0, 0, 0x1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xed0, 0, 0, 0, 0, 0x1);
const UP_NEXT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];
const UP_OWN_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x02];
const IN_DST: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const IN_SRC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const UPLINK: u32 = 7;

/// `64:ff9b::<v4>`.
fn nat64(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    let mut a = WELL_KNOWN_PREFIX;
    a[12..].copy_from_slice(&o);
    Ipv6Addr::from(a)
}

fn frame6(ip: &[u8]) -> Vec<u8> {
    packet::ethernet(IN_DST, IN_SRC, ETH_P_IPV6, ip)
}

fn frame4(ip: &[u8]) -> Vec<u8> {
    packet::ethernet(IN_DST, IN_SRC, ETH_P_IP, ip)
}

/// The object with both sides loaded, its maps configured: NAT44 on (public address,
/// upstream next hop known), NAT64 with the well-known prefix, one node's xlat /64.
struct Nat64 {
    ebpf: Ebpf,
}

impl Nat64 {
    fn new(port_min: u16, port_max: u16) -> Nat64 {
        let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).unwrap();
        let fwd: &mut Xdp = ebpf.program_mut("xdp_fwd6").unwrap().try_into().unwrap();
        fwd.load().expect("the verifier accepts xdp_fwd6");
        let tc: &mut SchedClassifier = ebpf
            .program_mut("tc_nat64_eth")
            .unwrap()
            .try_into()
            .unwrap();
        tc.load().expect("the verifier accepts tc_nat64_eth");
        exitd::dataplane::tails::fill(&mut ebpf).expect("tail programs load");
        let mut timeouts = [0u32; TIMEOUT_COUNT];
        timeouts[Timeout::TcpEstablished as usize] = 7440;
        timeouts[Timeout::TcpTransitory as usize] = 240;
        timeouts[Timeout::Udp as usize] = 300;
        timeouts[Timeout::Icmp as usize] = 30;
        let n4 = Nat4Config {
            public: PUBLIC.octets(),
            port_min,
            port_max,
            flags: NAT4_ENABLED,
            upstream: Route4 {
                ifindex: UPLINK,
                tenant: 0,
                dst_mac: UP_NEXT_MAC,
                src_mac: UP_OWN_MAC,
                flags: ROUTE_NEIGH_KNOWN,
            },
            timeouts,
        };
        let mut nat = Nat64 { ebpf };
        nat.array("NAT4_CONFIG").set(0, n4, 0).unwrap();
        let n64 = Nat64Config::new(WELL_KNOWN_PREFIX, 96).unwrap();
        let mut cfg: Array<_, Nat64Config> =
            Array::try_from(nat.ebpf.map_mut("NAT64_CONFIG").unwrap()).unwrap();
        cfg.set(0, n64, 0).unwrap();
        nat.allow_xlat(NODE);
        let mut local4: HashMap<_, [u8; 4], u32> =
            HashMap::try_from(nat.ebpf.map_mut("LOCAL4").unwrap()).unwrap();
        local4.insert(PUBLIC.octets(), 1, 0).unwrap();
        let mut local6: HashMap<_, [u8; 16], u32> =
            HashMap::try_from(nat.ebpf.map_mut("LOCAL6").unwrap()).unwrap();
        local6.insert(GATEWAY6.octets(), 1, 0).unwrap();
        nat
    }

    fn array(&mut self, name: &str) -> Array<&mut aya::maps::MapData, Nat4Config> {
        Array::try_from(self.ebpf.map_mut(name).unwrap()).unwrap()
    }

    fn allow_xlat(&mut self, addr: Ipv6Addr) {
        let mut xlat: HashMap<_, [u8; 8], XlatSource> =
            HashMap::try_from(self.ebpf.map_mut("XLAT6").unwrap()).unwrap();
        let prefix: [u8; 8] = addr.octets()[..8].try_into().unwrap();
        xlat.insert(prefix, XlatSource::default(), 0).unwrap();
    }

    fn tc(&self, frame: &[u8]) -> XdpRun {
        let p: &SchedClassifier = self
            .ebpf
            .program("tc_nat64_eth")
            .unwrap()
            .try_into()
            .unwrap();
        run_tc(p, frame).unwrap()
    }

    fn xdp(&self, frame: &[u8]) -> XdpRun {
        let p: &Xdp = self.ebpf.program("xdp_fwd6").unwrap().try_into().unwrap();
        run_xdp(p, frame).unwrap()
    }

    fn nat64_count(&self, v: Nat64Verdict) -> u64 {
        self.counter("NAT64_STATS", v as u32)
    }

    fn nat4_count(&self, v: Nat4Verdict) -> u64 {
        self.counter("NAT4_STATS", v as u32)
    }

    fn counter(&self, map: &str, index: u32) -> u64 {
        let stats: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map(map).unwrap()).unwrap();
        stats
            .get(&index, 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// Sends `ip6` from the node and returns the translated IPv4 packet (asserting the
    /// redirect upstream with the upstream MACs and correct checksums).
    fn out(&self, ip6: &[u8]) -> Vec<u8> {
        let run = self.tc(&frame6(ip6));
        assert_eq!(
            run.verdict,
            tc_action::REDIRECT,
            "translated and redirected"
        );
        assert_eq!(&run.packet[0..6], &UP_NEXT_MAC);
        assert_eq!(&run.packet[6..12], &UP_OWN_MAC);
        assert_eq!(&run.packet[12..14], &ETH_P_IP.to_be_bytes());
        let ip = run.packet[14..].to_vec();
        packet4::verify_checksums(&ip).unwrap();
        ip
    }

    /// Delivers `ip4` on the uplink and returns the IPv6 packet handed to the kernel.
    fn back(&self, ip4: &[u8]) -> Vec<u8> {
        let run = self.xdp(&frame4(ip4));
        assert_eq!(
            run.verdict,
            verdict::PASS,
            "translated and passed to the kernel"
        );
        assert_eq!(&run.packet[0..6], &IN_DST, "the frame keeps its addresses");
        assert_eq!(&run.packet[12..14], &ETH_P_IPV6.to_be_bytes());
        let ip = run.packet[14..].to_vec();
        verify_checksums6(&ip).unwrap();
        ip
    }
}

fn src4(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
}
fn dst4(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])
}
fn src6(ip: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap())
}
fn dst6(ip: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap())
}
fn port(ip: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([ip[at], ip[at + 1]])
}

#[test]
fn udp_goes_out_from_the_public_address_and_replies_come_back_to_the_node() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let ip = nat.out(&ipv6_udp(NODE, nat64(REMOTE), 5353, 53, 64, b"query"));
    assert_eq!((src4(&ip), dst4(&ip)), (PUBLIC, REMOTE));
    assert_eq!(ip[8], 63, "TTL = hop limit - 1");
    assert_eq!(ip[9], IPPROTO_UDP);
    assert_eq!(port(&ip, 20), 5353, "the source port is kept when free");
    assert_eq!(port(&ip, 22), 53);
    assert_eq!(&ip[28..], b"query");
    assert_eq!(nat.nat64_count(Nat64Verdict::NewOut), 1);

    let reply = packet::ipv4_udp(REMOTE, PUBLIC, 53, 5353, 57, b"answer");
    let back = nat.back(&reply);
    assert_eq!((src6(&back), dst6(&back)), (nat64(REMOTE), NODE));
    assert_eq!(
        back[7], 57,
        "hop limit = TTL (the kernel decrements it when forwarding)"
    );
    assert_eq!(port(&back, 42), 5353);
    assert_eq!(&back[48..], b"answer");
    assert_eq!(nat.nat64_count(Nat64Verdict::In), 1);
    assert_eq!(nat.nat4_count(Nat4Verdict::Nat64), 1);

    // Established: the next packet uses the same binding.
    let again = nat.out(&ipv6_udp(NODE, nat64(REMOTE), 5353, 53, 64, b"q2"));
    assert_eq!(port(&again, 20), 5353);
    assert_eq!(nat.nat64_count(Nat64Verdict::Out), 1);
}

#[test]
fn tcp_needs_a_syn_and_is_translated_both_ways() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let stray = nat.tc(&frame6(&ipv6_tcp(
        NODE,
        nat64(REMOTE),
        40000,
        80,
        TCP_ACK,
        64,
        b"",
    )));
    assert_eq!(stray.verdict, tc_action::SHOT, "no state without a SYN");
    assert_eq!(nat.nat64_count(Nat64Verdict::DropNoState), 1);

    let syn = nat.out(&ipv6_tcp(NODE, nat64(REMOTE), 40000, 80, TCP_SYN, 64, b""));
    assert_eq!(syn[9], IPPROTO_TCP);
    let public_port = port(&syn, 20);
    let synack = packet4::ipv4_tcp(REMOTE, PUBLIC, 80, public_port, TCP_SYN | TCP_ACK, 60, b"");
    let back = nat.back(&synack);
    assert_eq!(port(&back, 42), 40000);
    let data = nat.out(&ipv6_tcp(
        NODE,
        nat64(REMOTE),
        40000,
        80,
        TCP_ACK,
        64,
        b"GET /",
    ));
    assert_eq!(port(&data, 20), public_port);
    assert_eq!(&data[40..], b"GET /");
}

#[test]
fn icmp_echo_maps_to_icmpv6_echo_with_the_identifier_as_port() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let echo = ipv6_icmp(
        NODE,
        nat64(REMOTE),
        64,
        128,
        0,
        &[0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'],
    );
    let ip = nat.out(&echo);
    assert_eq!(ip[9], IPPROTO_ICMP);
    assert_eq!(ip[20], 8, "echo request");
    let id = port(&ip, 24);
    let reply = packet4::ipv4_icmp(
        REMOTE,
        PUBLIC,
        50,
        0,
        0,
        [(id >> 8) as u8, id as u8, 0, 1],
        b"ping",
    );
    let back = nat.back(&reply);
    assert_eq!(back[6], IPPROTO_ICMPV6);
    assert_eq!(back[40], 129, "echo reply");
    assert_eq!(port(&back, 44), 0x1234, "the node's identifier");
}

#[test]
fn only_the_nodes_xlat_prefixes_and_global_destinations_are_translated() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let stranger = nat.tc(&frame6(&ipv6_udp(OTHER, nat64(REMOTE), 1, 2, 64, b"x")));
    assert_eq!(stranger.verdict, tc_action::SHOT);
    assert_eq!(nat.nat64_count(Nat64Verdict::DropNotXlat), 1);
    let private = nat.tc(&frame6(&ipv6_udp(
        NODE,
        nat64(Ipv4Addr::new(10, 1, 2, 3)),
        1,
        2,
        64,
        b"x",
    )));
    assert_eq!(
        private.verdict,
        tc_action::SHOT,
        "RFC 6052: no non-global IPv4 with 64:ff9b::/96"
    );
    assert_eq!(nat.nat64_count(Nat64Verdict::DropNonGlobal), 1);
    let native = frame6(&ipv6_udp(NODE, OTHER, 1, 2, 64, b"x"));
    let run = nat.tc(&native);
    assert_eq!(
        (run.verdict, run.packet),
        (tc_action::OK, native),
        "native IPv6 untouched"
    );
    assert_eq!(nat.nat64_count(Nat64Verdict::PassNotNat64), 1);
    let last_hop = frame6(&ipv6_udp(NODE, nat64(REMOTE), 1, 2, 1, b"x"));
    let run = nat.tc(&last_hop);
    assert_eq!(
        (run.verdict, run.packet),
        (tc_action::OK, last_hop),
        "the kernel sends Time Exceeded"
    );
    assert_eq!(nat.nat64_count(Nat64Verdict::PassHopLimit), 1);
}

#[test]
fn nat44_and_nat64_share_the_public_ports() {
    require_root();
    // One public port: the NAT64 connection takes it, so a NAT44 connection to the same
    // remote endpoint finds none (and the other way round would be the same claim).
    let nat = Nat64::new(40000, 40000);
    let ip = nat.out(&ipv6_udp(NODE, nat64(REMOTE), 5353, 53, 64, b"a"));
    assert_eq!(port(&ip, 20), 40000);
    let second = nat.tc(&frame6(&ipv6_udp(NODE, nat64(REMOTE), 5354, 53, 64, b"b")));
    assert_eq!(second.verdict, tc_action::SHOT, "the only port is taken");
    assert_eq!(nat.nat64_count(Nat64Verdict::DropExhausted), 1);
}

#[test]
fn time_exceeded_from_a_router_reaches_the_node_as_icmpv6_quoting_its_packet() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let sent = nat.out(&ipv6_udp(
        NODE,
        nat64(REMOTE),
        33434,
        33435,
        64,
        b"probe-data",
    ));
    // The router quotes the translated packet as it saw it (TTL 1 there).
    let mut quoted = sent.clone();
    quoted[8] = 1;
    quoted[10..12].copy_from_slice(&[0, 0]);
    let csum = packet::internet_checksum(&quoted[..20]);
    quoted[10..12].copy_from_slice(&csum.to_be_bytes());
    let error = packet4::ipv4_icmp(ROUTER, PUBLIC, 250, 11, 0, [0; 4], &quoted);
    let back = nat.back(&error);
    assert_eq!((src6(&back), dst6(&back)), (nat64(ROUTER), NODE));
    assert_eq!((back[40], back[41]), (3, 0), "ICMPv6 Time Exceeded");
    let inner = &back[48..];
    assert_eq!(
        (src6(inner), dst6(inner)),
        (NODE, nat64(REMOTE)),
        "the node's own packet"
    );
    assert_eq!(port(inner, 40), 33434, "its own source port");
    assert_eq!(inner[7], 1);
    assert_eq!(nat.nat64_count(Nat64Verdict::IcmpErrorIn), 1);
}

#[test]
fn fragmentation_needed_becomes_packet_too_big_with_20_more_bytes() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let sent = nat.out(&ipv6_tcp(NODE, nat64(REMOTE), 40001, 443, TCP_SYN, 64, b""));
    let quoted = &sent[..28];
    let mtu: u16 = 1400;
    let error = packet4::ipv4_icmp(
        ROUTER,
        PUBLIC,
        250,
        3,
        4,
        [0, 0, (mtu >> 8) as u8, mtu as u8],
        quoted,
    );
    let back = nat.back(&error);
    assert_eq!((back[40], back[41]), (2, 0), "Packet Too Big");
    let mtu6 = u32::from_be_bytes(back[44..48].try_into().unwrap());
    assert_eq!(mtu6, 1420);
}

#[test]
fn a_nodes_packet_too_big_reaches_the_remote_as_fragmentation_needed() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let sent = nat.out(&ipv6_udp(NODE, nat64(REMOTE), 6000, 7000, 64, b"hello"));
    let public_port = port(&sent, 20);
    // The node could not deliver a reply of 1500 bytes: it quotes the (translated) reply.
    let reply = nat.back(&packet::ipv4_udp(
        REMOTE,
        PUBLIC,
        7000,
        public_port,
        60,
        &[7u8; 64],
    ));
    let mut body = 1300u32.to_be_bytes().to_vec();
    body.extend_from_slice(&reply);
    let ptb = ipv6_icmp(NODE, nat64(REMOTE), 64, 2, 0, &body);
    let ip = nat.out(&ptb);
    assert_eq!((src4(&ip), dst4(&ip)), (PUBLIC, REMOTE));
    assert_eq!((ip[20], ip[21]), (3, 4), "Fragmentation Needed");
    assert_eq!(port(&ip, 26), 1280, "MTU 20 bytes smaller");
    let inner = &ip[28..];
    assert_eq!(
        (src4(inner), dst4(inner)),
        (REMOTE, PUBLIC),
        "the remote's packet as it sent it"
    );
    assert_eq!((port(inner, 20), port(inner, 22)), (7000, public_port));
    assert_eq!(nat.nat64_count(Nat64Verdict::IcmpErrorOut), 1);
}

#[test]
fn control_ports_are_closed_to_nodes_unless_the_source_is_allowed() {
    require_root();
    let mut nat = Nat64::new(1024, 60999);
    let mut ports: HashMap<_, FwPort, u32> =
        HashMap::try_from(nat.ebpf.map_mut("FW_PORTS").unwrap()).unwrap();
    for (proto, port) in [(0u8, 0u16), (IPPROTO_TCP, 2379)] {
        let key = FwPort {
            proto,
            pad: 0,
            port: port.to_be(),
        };
        ports.insert(key, 1, 0).unwrap();
    }
    let etcd = frame6(&ipv6_tcp(NODE, GATEWAY6, 40000, 2379, TCP_SYN, 64, b""));
    assert_eq!(nat.tc(&etcd).verdict, tc_action::SHOT);
    assert_eq!(nat.counter("FW_STATS", FW_DROP6), 1);
    let ssh = frame6(&ipv6_tcp(NODE, GATEWAY6, 40000, 22, TCP_SYN, 64, b""));
    assert_eq!(nat.tc(&ssh).verdict, tc_action::OK, "other ports stay open");
    let etcd4 = frame4(&packet4::ipv4_tcp(
        Ipv4Addr::new(10, 80, 96, 1),
        PUBLIC,
        40000,
        2379,
        TCP_SYN,
        64,
        b"",
    ));
    assert_eq!(
        nat.tc(&etcd4).verdict,
        tc_action::SHOT,
        "IPv4 from nodes too"
    );
    assert_eq!(nat.counter("FW_STATS", FW_DROP4), 1);
    let mut allow: LpmTrie<_, [u8; 16], u32> =
        LpmTrie::try_from(nat.ebpf.map_mut("FW_ALLOW6").unwrap()).unwrap();
    allow.insert(&Key::new(64, NODE.octets()), 1, 0).unwrap();
    assert_eq!(
        nat.tc(&etcd).verdict,
        tc_action::OK,
        "an allowed source passes"
    );
}

#[test]
fn truncated_packets_are_never_translated_or_redirected() {
    require_root();
    let nat = Nat64::new(1024, 60999);
    let whole = frame6(&ipv6_udp(NODE, nat64(REMOTE), 5353, 53, 64, b"query-data"));
    // The kernel refuses to test-run an IPv6 frame shorter than its Ethernet and IPv6
    // headers (EINVAL), so truncation starts inside the UDP header.
    for len in 14 + 40..whole.len() {
        let run = nat.tc(&whole[..len]);
        assert_ne!(
            run.verdict,
            tc_action::REDIRECT,
            "a {len}-byte frame was redirected"
        );
    }
    let malformed = nat.nat64_count(Nat64Verdict::DropMalformed);
    assert!(
        malformed > 0,
        "truncated UDP headers are counted as malformed"
    );
    // An ICMPv6 error too short to quote an IPv6 header.
    let ptb_from_node = ipv6_icmp(NODE, nat64(REMOTE), 64, 2, 0, &[0, 0, 5, 0, 0x60, 0, 0]);
    assert_eq!(nat.tc(&frame6(&ptb_from_node)).verdict, tc_action::SHOT);
    assert_eq!(nat.nat64_count(Nat64Verdict::DropMalformed), malformed + 1);
}

#[test]
fn ipv4_from_a_nodes_own_range_is_nat44ed_by_the_same_engine() {
    require_root();
    let mut nat = Nat64::new(1024, 60999);
    let node4 = Ipv4Addr::new(10, 64, 5, 2);
    // The node's /24 behind the node-facing link; replies go through the kernel (WireGuard
    // takes no XDP redirects). A TC test run's packets have no ingress interface (0).
    let mut routes: HashMap<_, [u8; 4], Route4> =
        HashMap::try_from(nat.ebpf.map_mut("ROUTES4").unwrap()).unwrap();
    let route = Route4 {
        ifindex: 0,
        tenant: 9,
        flags: ROUTE4_VIA_KERNEL,
        ..Route4::default()
    };
    routes.insert([10, 64, 5, 0], route, 0).unwrap();
    let out = nat.tc(&frame4(&packet::ipv4_udp(
        node4, REMOTE, 4444, 53, 64, b"q",
    )));
    assert_eq!(out.verdict, tc_action::REDIRECT);
    assert_eq!(&out.packet[0..6], &UP_NEXT_MAC);
    let ip = out.packet[14..].to_vec();
    packet4::verify_checksums(&ip).unwrap();
    assert_eq!((src4(&ip), dst4(&ip)), (PUBLIC, REMOTE));
    assert_eq!(ip[8], 63);
    assert_eq!(nat.nat64_count(Nat64Verdict::Nat44Out), 1);
    assert_eq!(nat.nat4_count(Nat4Verdict::NewOut), 1);

    let reply = nat.xdp(&frame4(&packet::ipv4_udp(
        REMOTE,
        PUBLIC,
        53,
        port(&ip, 20),
        60,
        b"a",
    )));
    assert_eq!(
        reply.verdict,
        verdict::PASS,
        "the kernel routes it into the tunnel"
    );
    let back = &reply.packet[14..];
    packet4::verify_checksums(back).unwrap();
    assert_eq!((src4(back), dst4(back)), (REMOTE, node4));
    assert_eq!(port(back, 22), 4444);
    let stranger = frame4(&packet::ipv4_udp(
        Ipv4Addr::new(10, 99, 0, 1),
        REMOTE,
        1,
        2,
        64,
        b"x",
    ));
    let run = nat.tc(&stranger);
    assert_eq!(
        (run.verdict, run.packet),
        (tc_action::OK, stranger),
        "not a node range: the kernel's"
    );
}

#[test]
fn the_wireguard_variant_passes_the_verifier() {
    require_root();
    let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).unwrap();
    let p: &mut SchedClassifier = ebpf.program_mut("tc_nat64_l3").unwrap().try_into().unwrap();
    p.load().expect("the verifier accepts tc_nat64_l3");
    exitd::dataplane::tails::fill(&mut ebpf).expect("and its tail programs");
}
