//! The IPv4 translator (inside `xdp_fwd6`) under BPF_PROG_TEST_RUN: translations both ways
//! with every checksum recomputed from scratch, port allocation and exhaustion, expiry,
//! port forwards, ICMP errors with their quoted packets, tenant isolation and every case it
//! must leave to the kernel, including every truncation of valid frames. Needs root.
//!
//! The program checks the ingress interface (anti-spoofing), so each run passes an xdp_md
//! naming a veth of the test's namespace; redirects return XDP_REDIRECT with the rewritten
//! frame and go nowhere.

use aya::{Ebpf, programs::Xdp};
use exitd::dataplane::{
    fwd6::{Fwd6Maps, Fwd6Table},
    nat4::{Nat4Maps, Nat4Table},
};
use exitd_common::{
    ROUTE_NEIGH_KNOWN, Verdict,
    nat4::{
        CT_IN, CT_OUT, CT_PORT_FORWARD, CtEntry, CtKey, NAT4_ENABLED, Nat4Config, Nat4Verdict,
        PortFwdKey, PortFwdTarget, Route4, TIMEOUT_COUNT, Timeout,
    },
};
use exitd_testkit::{
    NetNs, XdpRun, monotonic_ns, packet,
    packet4::{self, *},
    require_root, run_xdp_on,
    testrun::verdict,
    veth_pair,
};
use std::net::Ipv4Addr;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(185, 69, 166, 123);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const TENANT_A: Ipv4Addr = Ipv4Addr::new(10, 26, 188, 2);
const TENANT_B: Ipv4Addr = Ipv4Addr::new(10, 17, 35, 2);
const GATEWAY_A: Ipv4Addr = Ipv4Addr::new(10, 26, 188, 1);
const FORWARDED_PORT: u16 = 8443;
const FORWARD_TARGET_PORT: u16 = 443;

const IN_DST: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const IN_SRC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const UP_NEXT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];
const UP_OWN_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x02];
const A_NEXT_MAC: [u8; 6] = [0x02, 0xa0, 0, 0, 0, 0x01];
const A_OWN_MAC: [u8; 6] = [0x02, 0xa0, 0, 0, 0, 0x02];
const B_NEXT_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x01];
const B_OWN_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x02];

/// ifindexes of the three links the gateway's translator works on.
#[derive(Clone, Copy)]
struct Links {
    tenant_a: u32,
    tenant_b: u32,
    uplink: u32,
}

/// The loaded program with fresh (unpinned) maps: two tenants, an uplink, one port forward.
struct Nat {
    ebpf: Ebpf,
    maps: Nat4Maps,
    fwd: Fwd6Maps,
    links: Links,
}

fn route(ifindex: u32, tenant: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Route4 {
    Route4 {
        ifindex,
        tenant,
        dst_mac,
        src_mac,
        flags: ROUTE_NEIGH_KNOWN,
    }
}

fn table(links: Links) -> Nat4Table {
    let mut timeouts = [0u32; TIMEOUT_COUNT];
    timeouts[Timeout::TcpEstablished as usize] = 7440;
    timeouts[Timeout::TcpTransitory as usize] = 240;
    timeouts[Timeout::Udp as usize] = 300;
    timeouts[Timeout::Icmp as usize] = 30;
    let mut table = Nat4Table {
        config: Nat4Config {
            public: PUBLIC.octets(),
            port_min: 1024,
            port_max: 60999,
            flags: NAT4_ENABLED,
            upstream: route(links.uplink, 0, UP_NEXT_MAC, UP_OWN_MAC),
            timeouts,
        },
        ..Nat4Table::default()
    };
    let net = |a: Ipv4Addr| {
        let o = a.octets();
        [o[0], o[1], o[2], 0]
    };
    table.routes.insert(
        net(TENANT_A),
        route(links.tenant_a, 1, A_NEXT_MAC, A_OWN_MAC),
    );
    table.routes.insert(
        net(TENANT_B),
        route(links.tenant_b, 2, B_NEXT_MAC, B_OWN_MAC),
    );
    table.local.insert(PUBLIC.octets());
    table.local.insert(GATEWAY_A.octets());
    table.forwards.insert(
        PortFwdKey {
            proto: IPPROTO_TCP,
            pad: 0,
            port: FORWARDED_PORT.to_be(),
        },
        PortFwdTarget {
            addr: TENANT_A.octets(),
            port: FORWARD_TARGET_PORT.to_be(),
            pad: 0,
        },
    );
    table
}

impl Nat {
    fn new(links: Links, adjust: impl FnOnce(&mut Nat4Table)) -> Nat {
        let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).unwrap();
        let program: &mut Xdp = ebpf.program_mut("xdp_fwd6").unwrap().try_into().unwrap();
        program
            .load()
            .expect("the verifier accepts xdp_fwd6 with the translator");
        let mut fwd = Fwd6Maps::take_from(&mut ebpf).unwrap();
        let mut maps = Nat4Maps::take_from(&mut ebpf).unwrap();
        let mut want = table(links);
        adjust(&mut want);
        let mut ports = Fwd6Table::default();
        ports.ports.extend(want.ports());
        fwd.sync(&ports).unwrap();
        maps.sync(&want).unwrap();
        assert_eq!(maps.read().unwrap(), want);
        assert_eq!(
            maps.sync(&want).unwrap(),
            (0, 0, 0),
            "a second sync is a no-op"
        );
        Nat {
            ebpf,
            maps,
            fwd,
            links,
        }
    }

    fn program(&self) -> &Xdp {
        self.ebpf.program("xdp_fwd6").unwrap().try_into().unwrap()
    }

    fn run(&self, frame: &[u8], ingress: u32) -> XdpRun {
        run_xdp_on(self.program(), frame, ingress).unwrap()
    }

    fn count(&self, which: Nat4Verdict) -> u64 {
        let all = self.maps.verdict_counters().unwrap();
        all.iter().find(|(v, _)| *v == which).unwrap().1.packets
    }

    /// Packets counted under any verdict (expiry is counted besides a packet's verdict).
    fn total(&self) -> u64 {
        let all = self.maps.verdict_counters().unwrap();
        all.iter()
            .filter(|(v, _)| *v != Nat4Verdict::Expired)
            .map(|(_, c)| c.packets)
            .sum()
    }

    /// Sends a tenant's packet out: it must leave translated, checksums right.
    fn out(&self, ip: &[u8], ingress: u32) -> Vec<u8> {
        let sent = self.run(&eth4(ip), ingress);
        assert_eq!(sent.verdict, verdict::REDIRECT, "translated and redirected");
        assert_eq!(&sent.packet[..12], [UP_NEXT_MAC, UP_OWN_MAC].concat());
        let out = sent.packet[14..].to_vec();
        assert_eq!(src(&out), PUBLIC);
        assert_eq!(dst(&out), dst(ip), "the destination is not translated");
        assert_eq!(out[8], ip[8] - 1, "TTL decremented");
        verify_checksums(&out).expect("checksums of the translated packet");
        assert_eq!(out[20..].len(), ip[20..].len());
        out
    }

    /// Sends a packet from upstream in: it must reach `tenant_mac`'s network translated.
    fn back(&self, ip: &[u8], tenant_mac: [u8; 6]) -> Vec<u8> {
        let got = self.run(&eth4(ip), self.links.uplink);
        assert_eq!(
            got.verdict,
            verdict::REDIRECT,
            "translated back and redirected"
        );
        let own = if tenant_mac == A_NEXT_MAC {
            A_OWN_MAC
        } else {
            B_OWN_MAC
        };
        assert_eq!(&got.packet[..12], [tenant_mac, own].concat());
        let back = got.packet[14..].to_vec();
        assert_eq!(src(&back), src(ip), "the source is not translated");
        assert_eq!(back[8], ip[8] - 1, "TTL decremented");
        verify_checksums(&back).expect("checksums of the translated-back packet");
        back
    }

    /// Asserts the frame went to the kernel untouched, counted under `reason`.
    fn assert_passed(&self, ip: &[u8], ingress: u32, reason: Nat4Verdict) {
        let frame = eth4(ip);
        let before = self.count(reason);
        let run = self.run(&frame, ingress);
        assert_eq!(run.verdict, verdict::PASS, "{reason:?}: verdict");
        assert_eq!(
            run.packet, frame,
            "{reason:?}: a passed frame is not modified"
        );
        assert_eq!(self.count(reason), before + 1, "{reason:?}: counted");
    }
}

/// Runs `f` with a translator in a fresh namespace holding the three links.
fn with_nat(
    adjust: impl FnOnce(&mut Nat4Table) + Send + 'static,
    f: impl FnOnce(&mut Nat) + Send + 'static,
) {
    require_root();
    let ns = NetNs::new("nat4").unwrap();
    for (a, b) in [("ta0", "ta1"), ("tb0", "tb1"), ("up0", "up1")] {
        veth_pair(&ns, a, &ns, b).unwrap();
    }
    ns.run(move || {
        let index = |name| exitd::iface::index_of(name).unwrap();
        let links = Links {
            tenant_a: index("ta0"),
            tenant_b: index("tb0"),
            uplink: index("up0"),
        };
        f(&mut Nat::new(links, adjust));
    })
    .unwrap();
}

fn eth4(ip: &[u8]) -> Vec<u8> {
    packet::ethernet(IN_DST, IN_SRC, packet::ETH_P_IP, ip)
}

fn src(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
}

fn dst(ip: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])
}

/// Big-endian u16 at `at`.
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Source port, or an echo's identifier.
fn sport(ip: &[u8]) -> u16 {
    be16(ip, if ip[9] == IPPROTO_ICMP { 24 } else { 20 })
}

/// Destination port, or an echo's identifier.
fn dport(ip: &[u8]) -> u16 {
    be16(ip, if ip[9] == IPPROTO_ICMP { 24 } else { 22 })
}

fn udp(from: Ipv4Addr, to: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    packet::ipv4_udp(from, to, sport, dport, 64, b"udp request")
}

fn tcp(from: Ipv4Addr, to: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4_tcp(from, to, sport, dport, flags, 64, b"GET / HTTP/1.1\r\n")
}

fn echo(from: Ipv4Addr, to: Ipv4Addr, kind: u8, id: u16) -> Vec<u8> {
    ipv4_echo(from, to, kind, id, 1, 64)
}

/// The reply a remote host sends to the translated packet `out`.
fn reply_to(out: &[u8]) -> Vec<u8> {
    match out[9] {
        IPPROTO_TCP => tcp(
            dst(out),
            src(out),
            dport(out),
            sport(out),
            TCP_SYN | TCP_ACK,
        ),
        IPPROTO_UDP => udp(dst(out), src(out), dport(out), sport(out)),
        _ => echo(dst(out), src(out), ICMP_ECHO_REPLY, sport(out)),
    }
}

fn out_key(ip: &[u8]) -> CtKey {
    let icmp = ip[9] == IPPROTO_ICMP;
    CtKey {
        proto: ip[9],
        dir: CT_OUT,
        pad: [0; 2],
        src: src(ip).octets(),
        dst: dst(ip).octets(),
        sport: sport(ip).to_be(),
        dport: if icmp { 0 } else { dport(ip).to_be() },
    }
}

fn in_key(ip: &[u8]) -> CtKey {
    let icmp = ip[9] == IPPROTO_ICMP;
    CtKey {
        dir: CT_IN,
        sport: if icmp { 0 } else { sport(ip).to_be() },
        dport: dport(ip).to_be(),
        ..out_key(ip)
    }
}

#[test]
fn outgoing_tcp_udp_and_echo_keep_their_source_port_and_replies_come_back() {
    with_nat(
        |_| {},
        |nat| {
            let a = nat.links.tenant_a;
            let packets = [
                tcp(TENANT_A, REMOTE, 40000, 80, TCP_SYN),
                udp(TENANT_A, REMOTE, 5353, 53),
                echo(TENANT_A, REMOTE, ICMP_ECHO_REQUEST, 4242),
            ];
            for (i, ip) in packets.iter().enumerate() {
                let out = nat.out(ip, a);
                assert_eq!(
                    sport(&out),
                    sport(ip),
                    "packet {i}: the source port is kept"
                );
                assert_eq!(dport(&out), dport(ip));
                assert_eq!(nat.count(Nat4Verdict::NewOut), i as u64 + 1);
                let back = nat.back(&reply_to(&out), A_NEXT_MAC);
                assert_eq!(
                    dst(&back),
                    TENANT_A,
                    "packet {i}: destination translated back"
                );
                assert_eq!(dport(&back), sport(ip), "packet {i}: port translated back");
                assert_eq!(nat.count(Nat4Verdict::In), i as u64 + 1);
            }
            // The connection now exists: the same packets are translated without new state.
            for ip in &packets[1..] {
                nat.out(ip, a);
            }
            assert_eq!(nat.count(Nat4Verdict::NewOut), 3);
            assert_eq!(nat.count(Nat4Verdict::Out), 2);
            assert_eq!(nat.maps.entry_count(), 6, "two entries per connection");
            let listed = nat.maps.connections().unwrap();
            assert_eq!(listed.len(), 3);
            assert!(listed.iter().all(|c| c.live && c.public.ip() == &PUBLIC));
            // The tenant's ACK establishes the TCP connection (the longer timeout applies).
            nat.out(&tcp(TENANT_A, REMOTE, 40000, 80, TCP_ACK), a);
            let entry = nat.maps.entry(&out_key(&packets[0])).unwrap();
            assert_eq!(entry.state, exitd_common::nat4::TCP_ESTABLISHED);
            assert_eq!(entry.ifindex, a);
        },
    );
}

#[test]
fn two_tenants_with_the_same_source_port_get_different_public_ports() {
    with_nat(
        |_| {},
        |nat| {
            let out_a = nat.out(&udp(TENANT_A, REMOTE, 4000, 53), nat.links.tenant_a);
            let out_b = nat.out(&udp(TENANT_B, REMOTE, 4000, 53), nat.links.tenant_b);
            assert_eq!(sport(&out_a), 4000);
            assert_ne!(
                sport(&out_b),
                4000,
                "no collision on the shared public address"
            );
            assert!((1024..=60999).contains(&sport(&out_b)));
            let back_a = nat.back(&reply_to(&out_a), A_NEXT_MAC);
            let back_b = nat.back(&reply_to(&out_b), B_NEXT_MAC);
            assert_eq!((dst(&back_a), dport(&back_a)), (TENANT_A, 4000));
            assert_eq!((dst(&back_b), dport(&back_b)), (TENANT_B, 4000));
        },
    );
}

#[test]
fn a_tiny_port_range_runs_out_and_the_drop_is_counted() {
    with_nat(
        |t| (t.config.port_min, t.config.port_max) = (40000, 40001),
        |nat| {
            let a = nat.links.tenant_a;
            let p1 = sport(&nat.out(&udp(TENANT_A, REMOTE, 1000, 53), a));
            let p2 = sport(&nat.out(&udp(TENANT_A, REMOTE, 1001, 53), a));
            let mut ports = [p1, p2];
            ports.sort();
            assert_eq!(ports, [40000, 40001], "both ports of the range used once");
            let third = eth4(&udp(TENANT_A, REMOTE, 1002, 53));
            let run = nat.run(&third, a);
            assert_eq!(run.verdict, verdict::DROP);
            assert_eq!(nat.count(Nat4Verdict::DropExhausted), 1);
            assert_eq!(
                nat.maps.entry_count(),
                4,
                "no state for the dropped connection"
            );
            // Ports are per remote endpoint: another remote still gets one.
            let other = Ipv4Addr::new(198, 51, 100, 10);
            let p3 = sport(&nat.out(&udp(TENANT_A, other, 1002, 53), a));
            assert!((40000..=40001).contains(&p3));
        },
    );
}

/// Writes both entries of the UDP connection `ip` (translated to the same port) with the
/// given last-seen times, as if its packets had passed then.
fn insert_connection(nat: &mut Nat, ip: &[u8], out_seen: u64, in_seen: u64) {
    let key = out_key(ip);
    let out = CtEntry {
        addr: PUBLIC.octets(),
        port: key.sport,
        last_seen: out_seen,
        ifindex: nat.links.tenant_a,
        ..CtEntry::default()
    };
    nat.maps.insert_entry(&key, &out).unwrap();
    let mut translated = ip.to_vec();
    translated[12..16].copy_from_slice(&PUBLIC.octets());
    let back = CtEntry {
        addr: key.src,
        port: key.sport,
        last_seen: in_seen,
        ..CtEntry::default()
    };
    nat.maps
        .insert_entry(&in_key(&reply_to(&translated)), &back)
        .unwrap();
}

#[test]
fn entries_older_than_the_timeout_are_reclaimed_on_the_next_lookup() {
    with_nat(
        |t| t.config.timeouts[Timeout::Udp as usize] = 1,
        |nat| {
            let a = nat.links.tenant_a;
            let long_ago = monotonic_ns() - 10_000_000_000;
            // Both directions stale: the outgoing packet reclaims them and starts anew.
            let first = udp(TENANT_A, REMOTE, 5000, 53);
            insert_connection(nat, &first, long_ago, long_ago);
            nat.out(&first, a);
            assert_eq!(nat.count(Nat4Verdict::Expired), 1);
            assert_eq!(nat.count(Nat4Verdict::NewOut), 1);
            let renewed = nat.maps.entry(&out_key(&first)).unwrap();
            assert!(renewed.last_seen > long_ago + 9_000_000_000);
            // A reply to a dead connection reclaims both entries and goes to the kernel.
            let second = udp(TENANT_A, REMOTE, 5001, 53);
            insert_connection(nat, &second, long_ago, long_ago);
            let mut translated = second.clone();
            translated[12..16].copy_from_slice(&PUBLIC.octets());
            let reply = reply_to(&translated);
            nat.assert_passed(&reply, nat.links.uplink, Nat4Verdict::PassNoState);
            assert_eq!(nat.count(Nat4Verdict::Expired), 2);
            assert_eq!(nat.maps.entry(&out_key(&second)), None);
            assert_eq!(nat.maps.entry(&in_key(&reply)), None);
            // One direction fresh keeps the connection alive (replies keep a flow open).
            let third = udp(TENANT_A, REMOTE, 5002, 53);
            insert_connection(nat, &third, long_ago, monotonic_ns());
            nat.out(&third, a);
            assert_eq!(nat.count(Nat4Verdict::Expired), 2);
            assert_eq!(nat.count(Nat4Verdict::Out), 1);
        },
    );
}

#[test]
fn tcp_without_syn_and_without_state_is_the_kernels() {
    with_nat(
        |_| {},
        |nat| {
            let a = nat.links.tenant_a;
            for flags in [TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK] {
                let ip = tcp(TENANT_A, REMOTE, 40001, 80, flags);
                nat.assert_passed(&ip, a, Nat4Verdict::PassNoState);
            }
            // Inbound to a port nobody holds.
            let stray = tcp(REMOTE, PUBLIC, 80, 40001, TCP_SYN);
            nat.assert_passed(&stray, nat.links.uplink, Nat4Verdict::PassNoState);
            assert_eq!(nat.maps.entry_count(), 0);
        },
    );
}

#[test]
fn a_port_forward_reaches_the_tenant_and_its_reply_leaves_from_the_public_port() {
    with_nat(
        |_| {},
        |nat| {
            let syn = tcp(REMOTE, PUBLIC, 5555, FORWARDED_PORT, TCP_SYN);
            let inside = nat.back(&syn, A_NEXT_MAC);
            assert_eq!(
                (dst(&inside), dport(&inside)),
                (TENANT_A, FORWARD_TARGET_PORT)
            );
            assert_eq!(nat.count(Nat4Verdict::NewForward), 1);
            let stored = nat.maps.entry(&in_key(&syn)).unwrap();
            assert_eq!(stored.flags, CT_PORT_FORWARD);
            let answer = tcp(
                TENANT_A,
                REMOTE,
                FORWARD_TARGET_PORT,
                5555,
                TCP_SYN | TCP_ACK,
            );
            assert!(
                nat.maps.entry(&out_key(&answer)).is_some(),
                "both entries exist"
            );
            let out = nat.out(&answer, nat.links.tenant_a);
            assert_eq!(sport(&out), FORWARDED_PORT);
            assert_eq!(nat.count(Nat4Verdict::Out), 1);
            // A tenant's own connection from the forwarded port number gets another port.
            let own = nat.out(
                &tcp(TENANT_B, REMOTE, FORWARDED_PORT, 80, TCP_SYN),
                nat.links.tenant_b,
            );
            assert_ne!(sport(&own), FORWARDED_PORT);
            // A forward is for TCP only: UDP to that port finds nothing.
            let udp_in = udp(REMOTE, PUBLIC, 5555, FORWARDED_PORT);
            nat.assert_passed(&udp_in, nat.links.uplink, Nat4Verdict::PassNoState);
        },
    );
}

/// An ICMP error from `from` to the public address quoting `quoted`.
fn icmp_error(from: Ipv4Addr, icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    ipv4_icmp(from, PUBLIC, 64, icmp_type, code, rest, quoted)
}

#[test]
fn icmp_errors_about_translated_packets_are_translated_inside_and_out() {
    with_nat(
        |_| {},
        |nat| {
            let a = nat.links.tenant_a;
            // Ports below the range are translated to another port, so the quoted port
            // really changes.
            let originals = [
                udp(TENANT_A, REMOTE, 53, 33434),
                tcp(TENANT_A, REMOTE, 80, 443, TCP_SYN),
                echo(TENANT_A, REMOTE, ICMP_ECHO_REQUEST, 7),
            ];
            let mut expected = 0;
            for original in &originals {
                let out = nat.out(original, a);
                assert_ne!(sport(&out), sport(original));
                let errors = [
                    (ROUTER, ICMP_TIME_EXCEEDED, 0, [0; 4], out.clone()),
                    (
                        REMOTE,
                        ICMP_DEST_UNREACH,
                        ICMP_FRAG_NEEDED,
                        [0, 0, 5, 0x78],
                        out.clone(),
                    ),
                    // Routers may quote only the header and 8 bytes (RFC 792).
                    (ROUTER, ICMP_TIME_EXCEEDED, 0, [0; 4], out[..28].to_vec()),
                ];
                for (from, kind, code, rest, quoted) in errors {
                    let error = icmp_error(from, kind, code, rest, &quoted);
                    let back = nat.back(&error, A_NEXT_MAC);
                    expected += 1;
                    assert_eq!(nat.count(Nat4Verdict::IcmpError), expected);
                    assert_eq!(dst(&back), TENANT_A, "outer destination");
                    assert_eq!((back[20], back[21]), (kind, code));
                    assert_eq!(&back[24..28], &rest, "the MTU is kept");
                    let inner = &back[28..];
                    assert_eq!(src(inner), TENANT_A, "quoted source");
                    assert_eq!(dst(inner), REMOTE);
                    assert_eq!(sport(inner), sport(original), "quoted port / identifier");
                    assert_eq!(inner[8], out[8], "the quoted TTL is as it was sent");
                    if quoted.len() == out.len() {
                        // The whole original is quoted: it reads as the tenant sent it but
                        // for the TTL, every checksum included.
                        let mut want = original.clone();
                        want[8] -= 1;
                        want[10..12].copy_from_slice(&inner[10..12]);
                        assert_eq!(inner, &want[..]);
                    }
                }
            }
            // An error about a connection nobody has is the kernel's.
            let unknown = udp(PUBLIC, REMOTE, 2999, 53);
            let error = icmp_error(ROUTER, ICMP_TIME_EXCEEDED, 0, [0; 4], &unknown);
            nat.assert_passed(&error, nat.links.uplink, Nat4Verdict::PassNoState);
        },
    );
}

#[test]
fn tenants_cannot_reach_each_others_networks() {
    with_nat(
        |_| {},
        |nat| {
            let across = eth4(&udp(TENANT_A, TENANT_B, 4000, 53));
            let run = nat.run(&across, nat.links.tenant_a);
            assert_eq!(run.verdict, verdict::DROP);
            assert_eq!(nat.count(Nat4Verdict::DropIsolation), 1);
            // Within one tenant and to the gateway: the kernel's.
            let inside = udp(TENANT_A, Ipv4Addr::new(10, 26, 188, 9), 4000, 53);
            nat.assert_passed(&inside, nat.links.tenant_a, Nat4Verdict::PassLocal);
            let to_gateway = udp(TENANT_A, GATEWAY_A, 4000, 53);
            nat.assert_passed(&to_gateway, nat.links.tenant_a, Nat4Verdict::PassLocal);
            assert_eq!(nat.maps.entry_count(), 0);
        },
    );
}

#[test]
fn a_tenant_source_on_the_wrong_link_is_not_translated() {
    with_nat(
        |_| {},
        |nat| {
            let ip = udp(TENANT_A, REMOTE, 4000, 53);
            nat.assert_passed(&ip, nat.links.tenant_b, Nat4Verdict::PassSpoofed);
            nat.assert_passed(&ip, nat.links.uplink, Nat4Verdict::PassSpoofed);
            assert_eq!(nat.maps.entry_count(), 0);
            // Not even once the real tenant opened the connection.
            nat.out(&ip, nat.links.tenant_a);
            nat.assert_passed(&ip, nat.links.tenant_b, Nat4Verdict::PassSpoofed);
            // Not from a tenant network at all.
            let stranger = udp(Ipv4Addr::new(192, 0, 2, 1), REMOTE, 4000, 53);
            nat.assert_passed(&stranger, nat.links.tenant_a, Nat4Verdict::PassNotNat);
        },
    );
}

/// `ip` with its header changed by `edit` and the header checksum made right again (when
/// the IHL still allows one).
fn with_header(ip: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut changed = ip.to_vec();
    edit(&mut changed);
    if let Some(csum) = header_checksum(&changed) {
        changed[10..12].copy_from_slice(&csum.to_be_bytes());
    }
    changed
}

#[test]
fn fragments_options_and_expiring_ttls_go_to_the_kernel_without_state() {
    with_nat(
        |_| {},
        |nat| {
            let a = nat.links.tenant_a;
            let ip = udp(TENANT_A, REMOTE, 4000, 53);
            let more_fragments = with_header(&ip, |p| p[6] |= 0x20);
            nat.assert_passed(&more_fragments, a, Nat4Verdict::PassFragment);
            let later_fragment = with_header(&ip, |p| p[7] = 3);
            nat.assert_passed(&later_fragment, a, Nat4Verdict::PassFragment);
            let options = with_header(&ip, |p| {
                p[0] = 0x46;
                p.splice(20..20, [1, 1, 1, 0]); // NOPs and end of options
                let len = p.len() as u16;
                p[2..4].copy_from_slice(&len.to_be_bytes());
            });
            nat.assert_passed(&options, a, Nat4Verdict::PassOptions);
            for ttl in [0, 1] {
                let expiring = with_header(&ip, |p| p[8] = ttl);
                nat.assert_passed(&expiring, a, Nat4Verdict::PassTtl);
                let probe = with_header(&tcp(TENANT_A, REMOTE, 4000, 80, TCP_SYN), |p| p[8] = ttl);
                nat.assert_passed(&probe, a, Nat4Verdict::PassTtl);
            }
            assert_eq!(
                nat.maps.entry_count(),
                0,
                "TTL-expiring probes take no port"
            );
            let gre = packet4::ipv4(TENANT_A, REMOTE, 47, 64, &[0; 16]);
            nat.assert_passed(&gre, a, Nat4Verdict::PassProtocol);
            // An established flow's reply with TTL 1 is the kernel's too.
            let out = nat.out(&ip, a);
            let dying = with_header(&reply_to(&out), |p| p[8] = 1);
            nat.assert_passed(&dying, nat.links.uplink, Nat4Verdict::PassTtl);
        },
    );
}

/// Runs every prefix of `frame` (shorter than the whole) and checks it is passed untouched,
/// counted, never translated or aborted.
fn every_truncation_passes(nat: &Nat, frame: &[u8], ingress: u32) {
    for len in 0..frame.len() {
        let short = &frame[..len];
        let before = nat.total();
        match run_xdp_on(nat.program(), short, ingress) {
            // The kernel refuses test runs shorter than an Ethernet header: such a frame
            // can never reach the program.
            Err(_) => assert!(len < 14, "length {len}: test run refused"),
            Ok(run) => {
                assert_eq!(run.verdict, verdict::PASS, "length {len}");
                assert_eq!(run.packet, short, "length {len}: untouched");
                if len >= 14 {
                    assert_eq!(nat.total(), before + 1, "length {len}: counted");
                }
            }
        }
    }
}

#[test]
fn every_truncation_of_valid_frames_is_passed_untouched_and_counted() {
    with_nat(
        |_| {},
        |nat| {
            let a = nat.links.tenant_a;
            let up = nat.links.uplink;
            let outgoing = [
                tcp(TENANT_A, REMOTE, 40000, 80, TCP_SYN),
                udp(TENANT_A, REMOTE, 5353, 53),
                echo(TENANT_A, REMOTE, ICMP_ECHO_REQUEST, 4242),
            ];
            let mut incoming = Vec::new();
            for ip in &outgoing {
                let out = nat.out(ip, a);
                incoming.push(reply_to(&out));
                incoming.push(icmp_error(ROUTER, ICMP_TIME_EXCEEDED, 0, [0; 4], &out));
            }
            let malformed_before = nat.count(Nat4Verdict::PassMalformed);
            let translated_before = nat.count(Nat4Verdict::Out) + nat.count(Nat4Verdict::In);
            let mut runs = 0;
            for ip in &outgoing {
                every_truncation_passes(nat, &eth4(ip), a);
                runs += eth4(ip).len() - 14;
            }
            for ip in &incoming {
                every_truncation_passes(nat, &eth4(ip), up);
                runs += eth4(ip).len() - 14;
            }
            assert_eq!(
                nat.count(Nat4Verdict::PassMalformed) - malformed_before,
                runs as u64,
                "every truncated frame counts as malformed"
            );
            assert_eq!(
                nat.count(Nat4Verdict::Out) + nat.count(Nat4Verdict::In),
                translated_before
            );
            // The whole frames are still translated: the state was not damaged.
            for ip in &outgoing {
                nat.out(ip, a);
            }
            nat.back(&incoming[0], A_NEXT_MAC);
        },
    );
}

#[test]
fn bad_versions_lengths_and_short_l4_headers_are_malformed() {
    with_nat(
        |_| {},
        |nat| {
            let a = nat.links.tenant_a;
            let ip = tcp(TENANT_A, REMOTE, 40000, 80, TCP_SYN);
            let set_len =
                |p: &mut Vec<u8>, len: usize| p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            let cases = [
                ("version 6", with_header(&ip, |p| p[0] = 0x65)),
                ("version 0", with_header(&ip, |p| p[0] = 0x05)),
                ("IHL 4", with_header(&ip, |p| p[0] = 0x44)),
                ("IHL 0", with_header(&ip, |p| p[0] = 0x40)),
                (
                    "total length beyond the frame",
                    with_header(&ip, |p| set_len(p, ip.len() + 1)),
                ),
                (
                    "total length 0xffff",
                    with_header(&ip, |p| set_len(p, 0xffff)),
                ),
                (
                    "total length below the header",
                    with_header(&ip, |p| set_len(p, 19)),
                ),
                (
                    "no room for 8 bytes of L4",
                    with_header(&ip, |p| set_len(p, 27)),
                ),
                (
                    "TCP header cut by the total length",
                    with_header(&ip, |p| set_len(p, 39)),
                ),
            ];
            for (what, bad) in &cases {
                let before = nat.count(Nat4Verdict::PassMalformed);
                let frame = eth4(bad);
                let run = nat.run(&frame, a);
                assert_eq!(run.verdict, verdict::PASS, "{what}");
                assert_eq!(run.packet, frame, "{what}: untouched");
                assert_eq!(nat.count(Nat4Verdict::PassMalformed), before + 1, "{what}");
            }
            // An ICMP error whose total length ends before the quoted packet: the bytes
            // after it are padding, not a quote to translate.
            let out = nat.out(&udp(TENANT_A, REMOTE, 53, 33434), a);
            let error = icmp_error(ROUTER, ICMP_TIME_EXCEEDED, 0, [0; 4], &out);
            let cut = with_header(&error, |p| set_len(p, 28));
            let frame = eth4(&cut);
            let run = nat.run(&frame, nat.links.uplink);
            assert_eq!(run.verdict, verdict::PASS, "a quote outside the packet");
            assert_eq!(run.packet, frame);
            // An ICMP error quoting something that is not IPv4 without options.
            let mut odd = out.clone();
            odd[0] = 0x46;
            let error = icmp_error(ROUTER, ICMP_TIME_EXCEEDED, 0, [0; 4], &odd);
            nat.assert_passed(&error, nat.links.uplink, Nat4Verdict::PassMalformed);
            assert_eq!(nat.count(Nat4Verdict::IcmpError), 0);
        },
    );
}

#[test]
fn without_a_public_address_ipv4_is_counted_as_before() {
    with_nat(
        |t| *t = Nat4Table::default(),
        |nat| {
            let frame = eth4(&udp(TENANT_A, REMOTE, 4000, 53));
            let before = nat.fwd.verdict_counters().unwrap();
            let run = nat.run(&frame, nat.links.tenant_a);
            assert_eq!(run.verdict, verdict::PASS);
            assert_eq!(run.packet, frame);
            let after = nat.fwd.verdict_counters().unwrap();
            let not_ipv6 = |all: &[(Verdict, exitd_common::Counters)]| {
                all.iter()
                    .find(|(v, _)| *v == Verdict::PassNotIpv6)
                    .unwrap()
                    .1
                    .packets
            };
            assert_eq!(not_ipv6(&after), not_ipv6(&before) + 1);
            assert_eq!(nat.total(), 0, "the translator counted nothing");
        },
    );
}
