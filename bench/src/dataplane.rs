//! `cargo xtask bench dataplane`:
//! 1. BPF_PROG_TEST_RUN cost of the forwarder's hit path with 1, 4,096 and 65,536 routes,
//!    reported raw and above an empty XDP_PASS program measured the same way;
//! 2. packets/s forwarded by XDP and by the kernel on the same veth topology
//!    (gen → fwd → sink), frames from a live-frames XDP generator, runs interleaved, plus a
//!    baseline that drops at the forwarder's ingress (the offered load);
//! 3. time to install 65,536 routes into the maps against `ip -batch` kernel routes.

use crate::stats::{median_of, summary};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::TestRunAttrs,
    programs::{TestRun, TestRunOptions, Xdp, xdp::XdpMode},
};
use exitd::dataplane::{
    OBJECT,
    fwd6::{Fwd6Maps, Fwd6Table, prefix64},
};
use exitd_common::{Counters, ROUTE_NEIGH_KNOWN, Route6};
use exitd_testkit::{NetNs, packet, veth_pair};
use serde_json::{Value, json};
use std::{
    net::Ipv6Addr,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

const ROUTE_COUNTS: [u32; 3] = [1, 4096, 65_536];
/// Repeats per test-run call: the packet is not reset between repeats, so the hop limit
/// (255 at the start) must stay above 1 for every repeat to take the forwarding path.
const REPEATS: u32 = 200;
const CALLS: usize = 300;
const RATE_ROUNDS: usize = 3;
const RATE_SECONDS: f64 = 3.0;

const GEN_MAC: [u8; 6] = [2, 0xb0, 0, 0, 0, 1];
const FWD_IN_MAC: [u8; 6] = [2, 0xb0, 0, 0, 0, 2];
const FWD_OUT_MAC: [u8; 6] = [2, 0xb0, 0, 0, 0, 3];
const SINK_MAC: [u8; 6] = [2, 0xb0, 0, 0, 0, 4];

pub fn run() -> Result<Value> {
    // EXITD_BENCH_PARTS=testrun,install,rates picks parts (all by default).
    let parts =
        std::env::var("EXITD_BENCH_PARTS").unwrap_or_else(|_| "testrun,install,rates".into());
    let wanted = |part: &str| parts.split(',').any(|p| p == part);
    let testrun = if wanted("testrun") {
        testrun_costs().context("test-run cost")?
    } else {
        Value::Null
    };
    let install = if wanted("install") {
        install_times().context("route installation")?
    } else {
        Value::Null
    };
    let rates = if wanted("rates") {
        forwarding_rates().context("packets per second")?
    } else {
        Value::Null
    };
    Ok(json!({
        "benchmark": "dataplane",
        "frames": "64-byte IPv6/UDP frames; pps measured with XDP live frames (not socket-fed)",
        "test_run": testrun,
        "route_install": install,
        "forwarding": rates,
    }))
}

fn route_prefix(i: u32) -> Ipv6Addr {
    let mut o = Ipv6Addr::new(0x2a02, 0x1802, 0x5e, 0, 0, 0, 0, 0).octets();
    o[6..8].copy_from_slice(&(i as u16).to_be_bytes());
    Ipv6Addr::from(o)
}

fn table_with(routes: u32, ifindex: u32) -> Fwd6Table {
    let mut table = Fwd6Table::default();
    table.ports.insert(ifindex);
    for i in 0..routes {
        let route = Route6 {
            ifindex,
            route_id: i,
            dst_mac: SINK_MAC,
            src_mac: FWD_OUT_MAC,
            flags: ROUTE_NEIGH_KNOWN,
        };
        table.routes64.insert(prefix64(route_prefix(i)), route);
    }
    table
}

fn udp_frame(dst: Ipv6Addr, dst_mac: [u8; 6], hop_limit: u8) -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8:4::2".parse().expect("literal");
    // 14 + 40 + 8 + 2 = 64 bytes.
    let ip = packet::ipv6_udp(src, dst, 4000, 5000, hop_limit, &[0, 0]);
    packet::ethernet(dst_mac, GEN_MAC, packet::ETH_P_IPV6, &ip)
}

pub(crate) fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    Ok(program)
}

/// ns per packet of each of `CALLS` test-run calls of `REPEATS` repeats.
fn per_packet_ns(program: &Xdp, frame: &[u8]) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = REPEATS;
        let result = program.test_run(opts)?;
        samples.push(result.duration.as_nanos() as f64);
    }
    Ok(samples)
}

fn testrun_costs() -> Result<Value> {
    let ns = NetNs::new("bench-tr")?;
    veth_pair(&ns, "eg0", &ns, "eg1")?;
    ns.run(|| -> Result<Value> {
        let egress = exitd::iface::index_of("eg0")?;
        let mut ebpf = Ebpf::load(OBJECT)?;
        load_xdp(&mut ebpf, "xdp_pass")?;
        load_xdp(&mut ebpf, "xdp_fwd6")?;
        let mut maps = Fwd6Maps::take_from(&mut ebpf)?;
        let frame = udp_frame(route_prefix(0), FWD_IN_MAC, 255);
        let pass: &Xdp = ebpf.program("xdp_pass").context("xdp_pass")?.try_into()?;
        let baseline = per_packet_ns(pass, &frame)?;
        let fwd: &Xdp = ebpf.program("xdp_fwd6").context("xdp_fwd6")?.try_into()?;
        let mut by_routes = serde_json::Map::new();
        let mut medians = Vec::new();
        for routes in ROUTE_COUNTS {
            maps.sync(&table_with(routes, egress))?;
            let hit = udp_frame(route_prefix(routes - 1), FWD_IN_MAC, 255);
            let before = maps.route_counters(routes - 1)?.packets;
            let samples = per_packet_ns(fwd, &hit)?;
            let took = maps.route_counters(routes - 1)?.packets - before;
            ensure!(took == (CALLS as u64) * u64::from(REPEATS), "only {took} runs took the hit path");
            let median = median_of(&samples);
            medians.push(median);
            by_routes.insert(routes.to_string(), json!({
                "ns_per_packet": summary(&samples),
                "ns_above_empty_program": median - median_of(&baseline),
            }));
            println!("test run, {routes:>6} routes: {median:6.1} ns/packet ({:5.1} ns above an empty program)", median - median_of(&baseline));
        }
        let slowdown = medians[2] / medians[0] - 1.0;
        println!("empty XDP_PASS program: {:.1} ns/packet; 65,536 vs 1 route: {:+.1} %", median_of(&baseline), slowdown * 100.0);
        Ok(json!({
            "repeats_per_call": REPEATS, "calls": CALLS,
            "empty_program_ns": summary(&baseline),
            "hit_path": by_routes,
            "slowdown_65536_vs_1": slowdown,
            "target": "<= 60 ns at 65,536 routes, <= 10 % slower than at 1 route",
        }))
    })?
}

fn install_times() -> Result<Value> {
    let ns = NetNs::new("bench-in")?;
    veth_pair(&ns, "eg0", &ns, "eg1")?;
    let maps_secs = ns.run(|| -> Result<f64> {
        let egress = exitd::iface::index_of("eg0")?;
        let mut ebpf = Ebpf::load(OBJECT)?;
        let mut maps = Fwd6Maps::take_from(&mut ebpf)?;
        let table = table_with(65_536, egress);
        let start = Instant::now();
        let report = maps.sync(&table)?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(report.added == 65_537, "added {}", report.added);
        Ok(secs)
    })??;
    let mut batch = String::new();
    for i in 0..65_536u32 {
        batch.push_str(&format!(
            "route add {}/64 via fe80::1 dev eg0\n",
            route_prefix(i)
        ));
    }
    let start = Instant::now();
    let mut child = ns
        .command("ip")
        .args(["-6", "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, batch.as_bytes())?;
    drop(child.stdin.take());
    let status = child.wait()?;
    let kernel_secs = start.elapsed().as_secs_f64();
    ensure!(status.success(), "ip -batch failed");
    println!(
        "installing 65,536 routes: maps {maps_secs:.3} s, kernel (ip -batch over netlink) {kernel_secs:.3} s ({:.1}x)",
        kernel_secs / maps_secs
    );
    Ok(json!({
        "routes": 65_536,
        "maps_seconds": maps_secs,
        "kernel_netlink_seconds": kernel_secs,
        "ratio_kernel_over_maps": kernel_secs / maps_secs,
        "target": "< 1 s",
    }))
}

/// gen —veth— fwd —veth— sink, with static neighbours and fixed MACs.
struct RateTopology {
    gen_ns: NetNs,
    fwd_ns: NetNs,
    sink_ns: NetNs,
}

impl RateTopology {
    fn new() -> Result<RateTopology> {
        let t = RateTopology {
            gen_ns: NetNs::new("bench-gen")?,
            fwd_ns: NetNs::new("bench-fwd")?,
            sink_ns: NetNs::new("bench-sink")?,
        };
        veth_pair(&t.gen_ns, "g0", &t.fwd_ns, "f0")?;
        veth_pair(&t.fwd_ns, "f1", &t.sink_ns, "s0")?;
        let mac = |ns: &NetNs, dev: &str, m: [u8; 6]| {
            ns.ip(&[
                "link",
                "set",
                dev,
                "address",
                &exitd::dataplane::cli::mac(&m),
            ])
        };
        mac(&t.gen_ns, "g0", GEN_MAC)?;
        mac(&t.fwd_ns, "f0", FWD_IN_MAC)?;
        mac(&t.fwd_ns, "f1", FWD_OUT_MAC)?;
        mac(&t.sink_ns, "s0", SINK_MAC)?;
        let f = &t.fwd_ns;
        f.ip(&["addr", "add", "2001:db8:4::1/64", "dev", "f0", "nodad"])?;
        f.ip(&["addr", "add", "2001:db8:5::1/64", "dev", "f1", "nodad"])?;
        f.ip(&[
            "-6",
            "neigh",
            "add",
            "2001:db8:5::2",
            "lladdr",
            &exitd::dataplane::cli::mac(&SINK_MAC),
            "dev",
            "f1",
            "nud",
            "permanent",
        ])?;
        f.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(t)
    }
}

fn forwarding_rates() -> Result<Value> {
    let topo = RateTopology::new()?;
    // The sink: counts and drops on s0, for the whole run.
    let sink = topo.sink_ns.run(|| -> Result<Ebpf> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        let ifindex = exitd::iface::index_of("s0")?;
        load_xdp(&mut ebpf, "xdp_sink")?.attach_to_if_index(ifindex, XdpMode::Driver)?;
        Ok(ebpf)
    })??;
    // The forwarder: three programs, one attached to f0 at a time.
    let (mut fwd, f0) = topo.fwd_ns.run(|| -> Result<(Ebpf, u32)> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        for name in ["xdp_pass", "xdp_sink", "xdp_fwd6"] {
            load_xdp(&mut ebpf, name)?;
        }
        let f1 = exitd::iface::index_of("f1")?;
        let mut maps = Fwd6Maps::take_from(&mut ebpf)?;
        let mut table = table_with(0, f1);
        let sink_route = Route6 {
            ifindex: f1,
            route_id: 1,
            dst_mac: SINK_MAC,
            src_mac: FWD_OUT_MAC,
            flags: ROUTE_NEIGH_KNOWN,
        };
        table
            .routes64
            .insert(prefix64("2001:db8:5::".parse()?), sink_route);
        maps.sync(&table)?;
        // Dropping the handles is fine: the loaded programs keep the maps alive.
        drop(maps);
        Ok((ebpf, exitd::iface::index_of("f0")?))
    })??;
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("baseline_drop_at_ingress", vec![]),
        ("kernel", vec![]),
        ("xdp", vec![]),
    ];
    for _round in 0..RATE_ROUNDS {
        for (scenario, samples) in results.iter_mut() {
            let program = match *scenario {
                "baseline_drop_at_ingress" => "xdp_sink",
                "kernel" => "xdp_pass",
                _ => "xdp_fwd6",
            };
            let attached = attach_in(&topo.fwd_ns, &mut fwd, program, f0)?;
            let counter = if *scenario == "baseline_drop_at_ingress" {
                (&fwd, f0)
            } else {
                (&sink, 0)
            };
            let before = counted(counter.0, counter.1)?;
            let elapsed = generate(&topo.gen_ns, RATE_SECONDS)?;
            let after = counted(counter.0, counter.1)?;
            detach(&mut fwd, program, attached)?;
            samples.push((after - before) as f64 / elapsed);
        }
    }
    let med = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, s)| median_of(s))
    };
    let (base, kernel, xdp) = (med("baseline_drop_at_ingress"), med("kernel"), med("xdp"));
    println!(
        "packets/s (median of {RATE_ROUNDS} x {RATE_SECONDS} s): offered {:.2} M, kernel forwarding {:.2} M, XDP {:.2} M = {:.2}x the kernel",
        base / 1e6,
        kernel / 1e6,
        xdp / 1e6,
        xdp / kernel
    );
    let per_packet = |pps: f64| {
        if pps > 0.0 && base > 0.0 {
            1e9 / pps - 1e9 / base
        } else {
            0.0
        }
    };
    if xdp == 0.0 || kernel == 0.0 {
        bail!("no packets arrived at the sink (kernel {kernel}, xdp {xdp})");
    }
    Ok(json!({
        "rounds": RATE_ROUNDS, "seconds_per_run": RATE_SECONDS,
        "pps": results.iter().map(|(n, s)| (n.to_string(), summary(s))).collect::<serde_json::Map<_, _>>(),
        "ratio_xdp_over_kernel": xdp / kernel,
        "ns_per_packet_above_baseline": {"kernel": per_packet(kernel), "xdp": per_packet(xdp)},
        "target": "XDP >= 2x kernel forwarding packets/s",
    }))
}

/// Attaches the forwarder object's `program` to f0 from inside the forwarder's namespace.
pub(crate) fn attach_in(
    ns: &NetNs,
    ebpf: &mut Ebpf,
    program: &str,
    f0: u32,
) -> Result<aya::programs::xdp::XdpLinkId> {
    ns.run(|| -> Result<_> {
        let xdp: &mut Xdp = ebpf.program_mut(program).context("program")?.try_into()?;
        Ok(xdp.attach_to_if_index(f0, XdpMode::Driver)?)
    })?
}

pub(crate) fn detach(
    ebpf: &mut Ebpf,
    program: &str,
    link: aya::programs::xdp::XdpLinkId,
) -> Result<()> {
    let xdp: &mut Xdp = ebpf.program_mut(program).context("program")?.try_into()?;
    xdp.detach(link)?;
    Ok(())
}

/// Packets the object's counter map holds for `ifindex` (0: the only entry there is).
pub(crate) fn counted(ebpf: &Ebpf, ifindex: u32) -> Result<u64> {
    let map: aya::maps::PerCpuHashMap<&MapData, u32, Counters> =
        aya::maps::PerCpuHashMap::try_from(ebpf.map("IFACE_COUNTERS").context("IFACE_COUNTERS")?)?;
    let mut total = 0;
    for entry in map.iter() {
        let (key, values) = entry?;
        if ifindex == 0 || key == ifindex {
            total += values.iter().map(|c| c.packets).sum::<u64>();
        }
    }
    Ok(total)
}

/// Sends 64-byte frames from g0 for about `seconds` with the live-frames generator; returns
/// the time it actually ran.
fn generate(gen_ns: &NetNs, seconds: f64) -> Result<f64> {
    let frame = udp_frame("2001:db8:5::2".parse()?, FWD_IN_MAC, 64);
    generate_frames(gen_ns, "xdp_gen", &frame, seconds)
}

/// Sends copies of the 64-byte `frame` from g0 for about `seconds` with the live-frames
/// generator `program` (`xdp_gen`, or `xdp_gen_flows` for a new flow per frame); returns
/// the time it actually ran.
pub(crate) fn generate_frames(
    gen_ns: &NetNs,
    program: &str,
    frame: &[u8],
    seconds: f64,
) -> Result<f64> {
    let mut template = [0u8; 64];
    ensure!(
        frame.len() == template.len(),
        "the generator sends 64-byte frames"
    );
    template.copy_from_slice(frame);
    gen_ns.run(|| -> Result<f64> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        let g0 = exitd::iface::index_of("g0")?;
        let mut templates: Array<&mut MapData, [u8; 64]> =
            Array::try_from(ebpf.map_mut("GEN_TEMPLATE").context("GEN_TEMPLATE")?)?;
        templates.set(0, template, 0)?;
        // Each run continues the flow numbers (2^24 per run), so a later run's frames are
        // new flows too.
        static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);
        let mut seq: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("GEN_SEQ").context("GEN_SEQ")?)?;
        seq.set(0, NEXT_SEQ.fetch_add(1 << 24, Ordering::Relaxed), 0)?;
        let generator = load_xdp(&mut ebpf, program)?;
        let ctx = exitd_testkit::testrun::xdp_md(frame.len(), g0);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = 500_000;
            opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
            generator.test_run(opts).context("live-frames test run")?;
        }
        Ok(start.elapsed().as_secs_f64())
    })?
}
