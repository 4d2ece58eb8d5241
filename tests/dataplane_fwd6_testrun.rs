//! The IPv6 forwarder under BPF_PROG_TEST_RUN: every case the fast path must forward, and
//! every case it must leave to the kernel, on hand-built frames. Needs root.

use aya::{Ebpf, programs::Xdp};
use exitd::dataplane::fwd6::{Fwd6Maps, Fwd6Table, prefix64};
use exitd_common::{Counters, ROUTE_NEIGH_KNOWN, Route6, Verdict};
use exitd_testkit::{NetNs, packet, require_root, run_xdp, testrun::verdict, veth_pair};
use std::net::{Ipv4Addr, Ipv6Addr};

const TENANT: &str = "2a02:1802:5e:1abc::1";
const UPSTREAM_HOST: &str = "2001:db8:ffff::1";
const GATEWAY_SELF: &str = "2a02:1802:5e:0:1000::1";
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];
const EGRESS_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x02];
const IN_DST: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const IN_SRC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const TENANT_ROUTE_ID: u32 = 7;
const DEFAULT_ROUTE_ID: u32 = 8;

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The loaded forwarder with fresh (unpinned) maps holding one tenant /64, a default route
/// and the gateway's own address, all via `egress` in the namespace the test runs in.
struct Forwarder {
    ebpf: Ebpf,
    maps: Fwd6Maps,
}

impl Forwarder {
    fn new(egress_ifindex: u32, neigh_known: bool) -> Forwarder {
        let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).unwrap();
        let program: &mut Xdp = ebpf.program_mut("xdp_fwd6").unwrap().try_into().unwrap();
        program.load().expect("the verifier accepts xdp_fwd6");
        let mut maps = Fwd6Maps::take_from(&mut ebpf).unwrap();
        let route = |route_id| Route6 {
            ifindex: egress_ifindex,
            route_id,
            dst_mac: NEXT_HOP_MAC,
            src_mac: EGRESS_MAC,
            flags: if neigh_known { ROUTE_NEIGH_KNOWN } else { 0 },
        };
        let mut table = Fwd6Table::default();
        table.ports.insert(egress_ifindex);
        table
            .routes64
            .insert(prefix64(ip6(TENANT)), route(TENANT_ROUTE_ID));
        table.lpm.insert((0, [0; 16]), route(DEFAULT_ROUTE_ID));
        table.local.insert(ip6(GATEWAY_SELF).octets());
        let report = maps.sync(&table).unwrap();
        assert_eq!(report.added, 4);
        assert!(
            !maps.sync(&table).unwrap().changed(),
            "a second sync changes nothing"
        );
        Forwarder { ebpf, maps }
    }

    fn program(&self) -> &Xdp {
        self.ebpf.program("xdp_fwd6").unwrap().try_into().unwrap()
    }

    fn run(&self, frame: &[u8]) -> exitd_testkit::XdpRun {
        run_xdp(self.program(), frame).unwrap()
    }

    fn verdict_count(&self, which: Verdict) -> u64 {
        let all = self.maps.verdict_counters().unwrap();
        all.iter().find(|(v, _)| *v == which).unwrap().1.packets
    }
}

fn eth6(ip: &[u8]) -> Vec<u8> {
    packet::ethernet(IN_DST, IN_SRC, packet::ETH_P_IPV6, ip)
}

fn udp_to(dst: &str, hop_limit: u8) -> Vec<u8> {
    eth6(&packet::ipv6_udp(
        ip6(UPSTREAM_HOST),
        ip6(dst),
        4000,
        5000,
        hop_limit,
        &[0x5a; 38],
    ))
}

/// Runs `f` with a forwarder in a fresh namespace whose veth `eg0` is the egress.
fn with_forwarder(neigh_known: bool, f: impl FnOnce(&Forwarder) + Send + 'static) {
    require_root();
    let ns = NetNs::new("fwd6").unwrap();
    veth_pair(&ns, "eg0", &ns, "eg1").unwrap();
    ns.run(move || {
        let egress = exitd::iface::index_of("eg0").unwrap();
        f(&Forwarder::new(egress, neigh_known));
    })
    .unwrap();
}

/// Asserts the frame went to the kernel untouched, counted under `reason`.
fn assert_passed(fwd: &Forwarder, frame: &[u8], reason: Verdict) {
    let before = fwd.verdict_count(reason);
    let run = fwd.run(frame);
    assert_eq!(run.verdict, verdict::PASS, "{reason:?}: verdict");
    assert_eq!(
        run.packet, frame,
        "{reason:?}: a passed frame is not modified"
    );
    assert_eq!(fwd.verdict_count(reason), before + 1, "{reason:?}: counted");
}

/// Asserts the frame was redirected with MACs rewritten and the hop limit decremented.
fn assert_forwarded(fwd: &Forwarder, frame: &[u8]) {
    let run = fwd.run(frame);
    assert_eq!(run.verdict, verdict::REDIRECT);
    let mut want = frame.to_vec();
    want[..6].copy_from_slice(&NEXT_HOP_MAC);
    want[6..12].copy_from_slice(&EGRESS_MAC);
    want[14 + 7] = frame[14 + 7] - 1;
    assert_eq!(run.packet, want);
}

#[test]
fn a_tenant_prefix_is_forwarded_and_counted_per_route() {
    with_forwarder(true, |fwd| {
        let frame = udp_to("2a02:1802:5e:1abc:dead:beef:0:42", 64);
        assert_forwarded(fwd, &frame);
        assert_forwarded(fwd, &frame);
        assert_eq!(fwd.verdict_count(Verdict::Forwarded), 2);
        let per_route = fwd.maps.route_counters(TENANT_ROUTE_ID).unwrap();
        assert_eq!(
            per_route,
            Counters {
                packets: 2,
                bytes: 2 * frame.len() as u64
            }
        );
        assert_eq!(
            fwd.maps.route_counters(DEFAULT_ROUTE_ID).unwrap().packets,
            0
        );
    });
}

#[test]
fn other_destinations_take_the_default_route() {
    with_forwarder(true, |fwd| {
        assert_forwarded(fwd, &udp_to("2001:db8:1234::9", 64));
        assert_eq!(
            fwd.maps.route_counters(DEFAULT_ROUTE_ID).unwrap().packets,
            1
        );
    });
}

#[test]
fn hop_limit_one_goes_to_the_kernel_and_two_is_forwarded_as_one() {
    with_forwarder(true, |fwd| {
        assert_passed(fwd, &udp_to(TENANT, 1), Verdict::PassHopLimit);
        assert_passed(fwd, &udp_to(TENANT, 0), Verdict::PassHopLimit);
        let run = fwd.run(&udp_to(TENANT, 2));
        assert_eq!(run.verdict, verdict::REDIRECT);
        assert_eq!(run.packet[14 + 7], 1);
    });
}

#[test]
fn without_a_route_or_a_neighbour_the_kernel_decides() {
    with_forwarder(false, |fwd| {
        assert_passed(fwd, &udp_to(TENANT, 64), Verdict::PassNoNeighbour);
    });
    with_forwarder(true, |fwd| {
        assert_passed(fwd, &udp_to(GATEWAY_SELF, 64), Verdict::PassLocal);
    });
}

#[test]
fn a_missing_route_passes() {
    require_root();
    let ns = NetNs::new("fwd6m").unwrap();
    ns.run(|| {
        let mut ebpf = Ebpf::load(exitd::dataplane::OBJECT).unwrap();
        let program: &mut Xdp = ebpf.program_mut("xdp_fwd6").unwrap().try_into().unwrap();
        program.load().unwrap();
        let frame = udp_to(TENANT, 64);
        let run = run_xdp(program, &frame).unwrap();
        assert_eq!(run.verdict, verdict::PASS);
        assert_eq!(run.packet, frame);
        let maps = Fwd6Maps::take_from(&mut ebpf).unwrap();
        let counts = maps.verdict_counters().unwrap();
        assert_eq!(
            counts
                .iter()
                .find(|(v, _)| *v == Verdict::PassNoRoute)
                .unwrap()
                .1
                .packets,
            1
        );
    })
    .unwrap();
}

#[test]
fn control_traffic_link_local_and_multicast_go_to_the_kernel() {
    with_forwarder(true, |fwd| {
        let src = ip6(UPSTREAM_HOST);
        // Neighbour solicitation to a tenant address (unicast NUD probe).
        let ns = packet::ipv6_icmp(src, ip6(TENANT), 255, 135, 0, &[0; 20]);
        assert_passed(fwd, &eth6(&ns), Verdict::PassIcmpControl);
        // Router advertisement, packet too big: control, not data.
        let ptb = packet::ipv6_icmp(src, ip6(TENANT), 64, 2, 0, &[0, 0, 5, 0x28]);
        assert_passed(fwd, &eth6(&ptb), Verdict::PassIcmpControl);
        // Echo is data: forwarded.
        let echo = packet::ipv6_icmp(src, ip6(TENANT), 64, 128, 0, &[0, 1, 0, 1]);
        assert_forwarded(fwd, &eth6(&echo));
        assert_passed(fwd, &udp_to("fe80::1abc:1", 64), Verdict::PassLinkLocal);
        assert_passed(fwd, &udp_to("febf::1", 64), Verdict::PassLinkLocal);
        assert_passed(fwd, &udp_to("ff02::1", 64), Verdict::PassMulticast);
        assert_passed(fwd, &udp_to("ff0e::1:3", 64), Verdict::PassMulticast);
    });
}

#[test]
fn extension_headers_only_hop_by_hop_is_left_to_the_kernel() {
    with_forwarder(true, |fwd| {
        let src = ip6(UPSTREAM_HOST);
        let dst = ip6(TENANT);
        // Hop-by-hop options (next: UDP), 8 bytes, then a UDP header.
        let mut hbh = vec![packet::IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0];
        hbh.extend_from_slice(&[0x0f, 0xa0, 0x13, 0x88, 0, 8, 0, 0]);
        assert_passed(
            fwd,
            &eth6(&packet::ipv6(src, dst, 0, 64, &hbh)),
            Verdict::PassHopByHop,
        );
        // Destination options (60) and a fragment header (44) are for the destination.
        let mut dstopts = hbh.clone();
        dstopts[0] = packet::IPPROTO_UDP;
        assert_forwarded(fwd, &eth6(&packet::ipv6(src, dst, 60, 64, &dstopts)));
        let mut frag = vec![packet::IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 7];
        frag.extend_from_slice(&[0x0f, 0xa0, 0x13, 0x88, 0, 8, 0, 0]);
        assert_forwarded(fwd, &eth6(&packet::ipv6(src, dst, 44, 64, &frag)));
    });
}

#[test]
fn vlan_ipv4_and_wrong_versions_are_not_forwarded() {
    with_forwarder(true, |fwd| {
        let frame = udp_to(TENANT, 64);
        assert_passed(fwd, &packet::vlan_tagged(&frame, 42), Verdict::PassVlan);
        let v4 = packet::ipv4_udp(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(10, 26, 188, 2),
            1,
            2,
            64,
            b"x",
        );
        assert_passed(
            fwd,
            &packet::ethernet(IN_DST, IN_SRC, packet::ETH_P_IP, &v4),
            Verdict::PassNotIpv6,
        );
        let mut v4_in_v6 = frame.clone();
        v4_in_v6[14] = 0x45;
        assert_passed(fwd, &v4_in_v6, Verdict::PassMalformed);
    });
}

#[test]
fn truncated_headers_are_never_forwarded() {
    with_forwarder(true, |fwd| {
        // ICMPv6 without its type byte.
        let icmp = packet::ipv6(
            ip6(UPSTREAM_HOST),
            ip6(TENANT),
            packet::IPPROTO_ICMPV6,
            64,
            &[],
        );
        assert_passed(fwd, &eth6(&icmp), Verdict::PassMalformed);
        // The IPv6 header claims more payload than the frame holds.
        let mut short = udp_to(TENANT, 64);
        short.truncate(short.len() - 1);
        assert_passed(fwd, &short, Verdict::PassMalformed);
    });
}

#[test]
fn every_frame_length_from_0_to_100_is_handled_safely() {
    with_forwarder(true, |fwd| {
        let full = udp_to(TENANT, 64);
        assert_eq!(full.len(), 100);
        for len in 0..=100 {
            let frame = &full[..len];
            match run_xdp(fwd.program(), frame) {
                // The kernel refuses test runs shorter than an Ethernet header: such a
                // frame can never reach the program.
                Err(_) => assert!(len < 14, "length {len}: test run refused"),
                Ok(run) if len < 100 => {
                    assert_eq!(run.verdict, verdict::PASS, "length {len}");
                    assert_eq!(run.packet, frame, "length {len}: untouched");
                }
                Ok(run) => assert_eq!(
                    run.verdict,
                    verdict::REDIRECT,
                    "the whole frame is forwarded"
                ),
            }
        }
        assert_eq!(fwd.verdict_count(Verdict::Forwarded), 1);
    });
}

#[test]
fn sync_updates_and_removes_exactly_what_changed() {
    require_root();
    let ns = NetNs::new("fwd6s").unwrap();
    veth_pair(&ns, "eg0", &ns, "eg1").unwrap();
    ns.run(|| {
        let eg0 = exitd::iface::index_of("eg0").unwrap();
        let eg1 = exitd::iface::index_of("eg1").unwrap();
        let mut fwd = Forwarder::new(eg0, true);
        let mut table = fwd.maps.read().unwrap();
        let moved = Route6 {
            ifindex: eg1,
            route_id: 9,
            ..table.routes64[&prefix64(ip6(TENANT))]
        };
        table.ports.insert(eg1);
        table.routes64.insert(prefix64(ip6(TENANT)), moved);
        table.local.clear();
        let report = fwd.maps.sync(&table).unwrap();
        assert_eq!((report.added, report.updated, report.removed), (1, 1, 1));
        assert_eq!(fwd.maps.read().unwrap(), table);
        table.routes64.clear();
        table.ports.remove(&eg1);
        let report = fwd.maps.sync(&table).unwrap();
        assert_eq!((report.added, report.updated, report.removed), (0, 0, 2));
        assert_eq!(fwd.maps.read().unwrap(), table);
        let frame = udp_to(TENANT, 64);
        // Without the /64 the tenant address now follows the default route.
        assert_forwarded(&fwd, &frame);
        fwd.maps.sync(&Fwd6Table::default()).unwrap();
        assert_eq!(fwd.maps.read().unwrap(), Fwd6Table::default());
    })
    .unwrap();
}

#[test]
fn a_route_back_out_of_the_ingress_interface_goes_to_the_kernel() {
    // BPF_PROG_TEST_RUN delivers on the namespace's loopback (ifindex 1).
    with_forwarder_via(1, |fwd| {
        assert_passed(fwd, &udp_to(TENANT, 64), Verdict::PassHairpin);
    });
}

#[test]
fn an_egress_missing_from_the_devmap_is_dropped_and_counted_not_misdelivered() {
    require_root();
    let ns = NetNs::new("fwd6r").unwrap();
    veth_pair(&ns, "eg0", &ns, "eg1").unwrap();
    ns.run(|| {
        let egress = exitd::iface::index_of("eg0").unwrap();
        let mut fwd = Forwarder::new(egress, true);
        let mut table = fwd.maps.read().unwrap();
        table.ports.clear(); // the race the program guards against: port gone, route not yet
        fwd.maps.sync(&table).unwrap();
        let run = fwd.run(&udp_to(TENANT, 64));
        assert_eq!(
            run.verdict,
            verdict::DROP,
            "a rewritten frame cannot go back to the kernel"
        );
        assert_eq!(fwd.verdict_count(Verdict::PassRedirectFailed), 1);
        assert_eq!(fwd.verdict_count(Verdict::Forwarded), 0);
    })
    .unwrap();
}

/// Like `with_forwarder`, with the routes pointing at `ifindex`.
fn with_forwarder_via(ifindex: u32, f: impl FnOnce(&Forwarder) + Send) {
    require_root();
    let ns = NetNs::new("fwd6h").unwrap();
    ns.run(move || f(&Forwarder::new(ifindex, true))).unwrap();
}
