//! `cargo xtask bench nat`:
//! 1. BPF_PROG_TEST_RUN cost of an established flow through the IPv4 translator, outbound
//!    and inbound, above an empty XDP_PASS program measured the same way. A translated
//!    packet is no longer the packet the flow's state matches, so each call runs once
//!    (repeat = 1) and the medians of many calls are compared;
//! 2. packets/s of one established flow through the eBPF NAT against kernel forwarding
//!    with nftables masquerade, same veth topology (gen → gateway → sink), frames from the
//!    live-frames generator, runs interleaved, plus the offered load (drop at ingress);
//! 3. the same with a new flow in every frame (`xdp_gen_flows`): new connections per second;
//! 4. capacity: the connection map created with 2,000,000 entries holds 1,000,000
//!    connections (two entries each); its memory as bpftool reports it, and the
//!    established-flow cost with the map full.

use crate::{
    dataplane::{attach_in, counted, detach, generate_frames, load_xdp},
    stats::{median_of, summary},
};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::Map,
    programs::{TestRun, TestRunOptions, Xdp, xdp::XdpMode},
};
use exitd::dataplane::{
    OBJECT,
    fwd6::{Fwd6Maps, Fwd6Table},
    nat4::{Nat4Maps, Nat4Table},
};
use exitd_common::{
    ROUTE_NEIGH_KNOWN,
    nat4::{
        CT_IN, CT_OUT, CT4_MAP, CtEntry, CtKey, NAT4_ENABLED, Nat4Config, Nat4Verdict, Route4,
        TIMEOUT_COUNT,
    },
};
use exitd_testkit::{NetNs, monotonic_ns, packet, testrun::xdp_md, veth_pair};
use serde_json::{Value, json};
use std::{net::Ipv4Addr, time::Instant};

const CALLS: usize = 20_000;
const RATE_ROUNDS: usize = 3;
const RATE_SECONDS: f64 = 2.0;
const CONNECTIONS: u32 = 1_000_000;
const CT4_ENTRIES: u32 = 2_000_000;

const TENANT: Ipv4Addr = Ipv4Addr::new(10, 26, 188, 2);
const TENANT_GW: &str = "10.26.188.1/24";
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const SPORT: u16 = 4000;
const DPORT: u16 = 53;

const GEN_MAC: [u8; 6] = [2, 0xc0, 0, 0, 0, 1];
const GW_IN_MAC: [u8; 6] = [2, 0xc0, 0, 0, 0, 2];
const GW_OUT_MAC: [u8; 6] = [2, 0xc0, 0, 0, 0, 3];
const SINK_MAC: [u8; 6] = [2, 0xc0, 0, 0, 0, 4];

pub fn run() -> Result<Value> {
    // EXITD_BENCH_PARTS=testrun,rates,capacity picks parts (all by default).
    let parts =
        std::env::var("EXITD_BENCH_PARTS").unwrap_or_else(|_| "testrun,rates,capacity".into());
    let wanted = |part: &str| parts.split(',').any(|p| p == part);
    let testrun = if wanted("testrun") {
        testrun_costs().context("test-run cost")?
    } else {
        Value::Null
    };
    let rates = if wanted("rates") {
        rates().context("packets per second")?
    } else {
        Value::Null
    };
    let capacity = if wanted("capacity") {
        capacity().context("capacity")?
    } else {
        Value::Null
    };
    let mut result = json!({
        "benchmark": "nat",
        "frames": "64-byte IPv4/UDP frames; pps measured with XDP live frames (not socket-fed)",
        "test_run": testrun,
        "rates": rates,
        "capacity": capacity,
    });
    result["summary"] = readme_rows(&result);
    Ok(result)
}

/// The rows of the README's benchmark table (see xtask/src/bench/readme.rs).
fn readme_rows(r: &Value) -> Value {
    let mut rows = Vec::new();
    for (flow, what) in [
        ("established_flow", "NAT44, established flow, packets/s"),
        (
            "new_connections",
            "NAT44, a new connection per packet, packets/s",
        ),
    ] {
        let pps = &r["rates"][flow]["pps"];
        if let (Some(ours), Some(base)) = (
            pps["ebpf_nat"]["median"].as_f64(),
            pps["kernel_nft_masquerade"]["median"].as_f64(),
        ) {
            rows.push(json!({
                "what": what, "value": ours, "unit": "pps",
                "baseline": base, "baseline_what": "kernel forwarding + nftables masquerade",
                "ratio": ours / base, "target": ">= 1.5x", "met": ours / base >= 1.5,
            }));
        }
    }
    for dir in ["outbound", "inbound"] {
        if let Some(ns) = r["test_run"]["costs"][dir]["ns_above_empty_program"].as_f64() {
            rows.push(json!({
                "what": format!("NAT44 established flow, {dir}, ns/packet above an empty program (BPF_PROG_TEST_RUN)"),
                "value": ns, "unit": "ns", "target": "<= 100 ns", "met": ns <= 100.0,
            }));
        }
    }
    if let Some(n) = r["capacity"]["connections"].as_f64() {
        let bytes = r["capacity"]["memlock_bytes"].as_f64().unwrap_or(0.0);
        rows.push(json!({
            "what": format!("tracked connections in a 2M-entry CT4 map ({:.0} MiB)", bytes / 1048576.0),
            "value": n, "unit": "", "target": "1,000,000 fit", "met": n >= 1_000_000.0,
        }));
    }
    Value::Array(rows)
}

/// The translator's table: one tenant /24 behind `tenant_if`, the uplink `up_if`.
fn nat_table(tenant_if: u32, up_if: u32) -> Nat4Table {
    let route = |ifindex, dst_mac, src_mac| Route4 {
        ifindex,
        tenant: 1,
        dst_mac,
        src_mac,
        flags: ROUTE_NEIGH_KNOWN,
    };
    let mut timeouts = [0u32; TIMEOUT_COUNT];
    timeouts.copy_from_slice(&[7440, 240, 300, 30]);
    let mut table = Nat4Table {
        config: Nat4Config {
            public: PUBLIC.octets(),
            port_min: 1024,
            port_max: 60999,
            flags: NAT4_ENABLED,
            upstream: route(up_if, SINK_MAC, GW_OUT_MAC),
            timeouts,
        },
        ..Nat4Table::default()
    };
    table
        .routes
        .insert([10, 26, 188, 0], route(tenant_if, GEN_MAC, GW_IN_MAC));
    table.local.insert(PUBLIC.octets());
    table
}

/// Writes `table` and its egress ports into a loaded object's maps.
pub(crate) fn configure(ebpf: &mut Ebpf, table: &Nat4Table) -> Result<Nat4Maps> {
    let mut fwd = Fwd6Maps::take_from(ebpf)?;
    let mut ports = Fwd6Table::default();
    ports.ports.extend(table.ports());
    fwd.sync(&ports)?;
    let mut maps = Nat4Maps::take_from(ebpf)?;
    maps.sync(table)?;
    Ok(maps)
}

/// 64-byte frames (14 + 20 + 8 + 22) of the benchmark's flow: out from the tenant, and the
/// reply to the public address.
fn outbound_frame() -> Vec<u8> {
    let ip = packet::ipv4_udp(TENANT, REMOTE, SPORT, DPORT, 64, &[0; 22]);
    packet::ethernet(GW_IN_MAC, GEN_MAC, packet::ETH_P_IP, &ip)
}

fn inbound_frame() -> Vec<u8> {
    let ip = packet::ipv4_udp(REMOTE, PUBLIC, DPORT, SPORT, 64, &[0; 22]);
    packet::ethernet(GW_OUT_MAC, SINK_MAC, packet::ETH_P_IP, &ip)
}

/// ns of each of `CALLS` single runs of `program` on `frame` arriving on `ingress`.
fn single_run_ns(program: &Xdp, frame: &[u8], ingress: u32) -> Result<Vec<f64>> {
    let ctx = xdp_md(frame.len(), ingress);
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        let result = program.test_run(opts)?;
        samples.push(result.duration.as_nanos() as f64);
    }
    Ok(samples)
}

/// Counted packets of one translator verdict.
fn verdict_count(maps: &Nat4Maps, which: Nat4Verdict) -> Result<u64> {
    let all = maps.verdict_counters()?;
    Ok(all
        .iter()
        .find(|(v, _)| *v == which)
        .map_or(0, |(_, c)| c.packets))
}

/// Established-flow cost outbound and inbound, measured on `ebpf` (loaded, configured).
fn established_costs(
    ebpf: &Ebpf,
    maps: &Nat4Maps,
    out: (&[u8], u32),
    back: (&[u8], u32),
) -> Result<Value> {
    let pass: &Xdp = ebpf.program("xdp_pass").context("xdp_pass")?.try_into()?;
    let nat: &Xdp = ebpf.program("xdp_fwd6").context("xdp_fwd6")?.try_into()?;
    let baseline = median_of(&single_run_ns(pass, out.0, out.1)?);
    let mut result = serde_json::Map::new();
    for (name, (frame, ingress), verdict) in [
        ("outbound", out, Nat4Verdict::Out),
        ("inbound", back, Nat4Verdict::In),
    ] {
        let before = verdict_count(maps, verdict)?;
        let samples = single_run_ns(nat, frame, ingress)?;
        let took = verdict_count(maps, verdict)? - before;
        ensure!(
            took == CALLS as u64,
            "{name}: only {took} of {CALLS} runs took the established path"
        );
        let median = median_of(&samples);
        result.insert(
            name.into(),
            json!({
                "ns_per_packet": summary(&samples),
                "ns_above_empty_program": median - baseline,
            }),
        );
    }
    result.insert("empty_program_ns".into(), json!(baseline));
    Ok(Value::Object(result))
}

fn testrun_costs() -> Result<Value> {
    with_translator(
        "bench-nt",
        || Ebpf::load(OBJECT),
        |mut ebpf, ta0, up0| {
            let maps = configure(&mut ebpf, &nat_table(ta0, up0))?;
            // The first packet creates the connection; the measured ones find it.
            let nat: &Xdp = ebpf.program("xdp_fwd6").context("xdp_fwd6")?.try_into()?;
            single_run_once(nat, &outbound_frame(), ta0)?;
            ensure!(
                verdict_count(&maps, Nat4Verdict::NewOut)? == 1,
                "no connection created"
            );
            let costs = established_costs(
                &ebpf,
                &maps,
                (&outbound_frame(), ta0),
                (&inbound_frame(), up0),
            )?;
            print_costs("established flow, 1 connection", &costs);
            let new_ns = new_connection_ns(nat, ta0)?;
            let new_above = median_of(&new_ns) - costs["empty_program_ns"].as_f64().unwrap_or(0.0);
            ensure!(
                verdict_count(&maps, Nat4Verdict::NewOut)? == 1 + CALLS as u64,
                "not every run created a connection"
            );
            println!(
                "test run, new connection (distinct source ports): {:.0} ns/packet ({new_above:.0} above an empty program)",
                median_of(&new_ns)
            );
            Ok(json!({
                "calls": CALLS, "repeat_per_call": 1,
                "costs": costs,
                "new_connection": {"ns_per_packet": summary(&new_ns), "ns_above_empty_program": new_above},
                "target": "<= 100 ns per packet for an established flow",
            }))
        },
    )
}

/// ns of `CALLS` single runs, each the first packet of a new connection (its own source
/// port, so the translator keeps it as the public port).
fn new_connection_ns(program: &Xdp, ingress: u32) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let ip = packet::ipv4_udp(TENANT, REMOTE, 10_000 + i as u16, DPORT, 64, &[0; 22]);
        let frame = packet::ethernet(GW_IN_MAC, GEN_MAC, packet::ETH_P_IP, &ip);
        let ctx = xdp_md(frame.len(), ingress);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.ctx_in = Some(&ctx);
        samples.push(program.test_run(opts)?.duration.as_nanos() as f64);
    }
    Ok(samples)
}

fn single_run_once(program: &Xdp, frame: &[u8], ingress: u32) -> Result<()> {
    let ctx = xdp_md(frame.len(), ingress);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&ctx);
    program.test_run(opts)?;
    Ok(())
}

fn print_costs(what: &str, costs: &Value) {
    let above = |dir: &str| costs[dir]["ns_above_empty_program"].as_f64().unwrap_or(0.0);
    let raw = |dir: &str| {
        costs[dir]["ns_per_packet"]["median"]
            .as_f64()
            .unwrap_or(0.0)
    };
    println!(
        "test run, {what}: outbound {:.0} ns/packet ({:.0} above an empty program), inbound {:.0} ({:.0}); empty program {:.0} ns",
        raw("outbound"),
        above("outbound"),
        raw("inbound"),
        above("inbound"),
        costs["empty_program_ns"].as_f64().unwrap_or(0.0)
    );
}

/// gen —veth— gateway —veth— sink. The gateway routes the tenant /24 on f0 and the uplink
/// on f1 (public address, static neighbour for the sink) and masquerades with nftables.
struct Topology {
    gen_ns: NetNs,
    gw_ns: NetNs,
    sink_ns: NetNs,
}

impl Topology {
    fn new() -> Result<Topology> {
        let t = Topology {
            gen_ns: NetNs::new("bnat-gen")?,
            gw_ns: NetNs::new("bnat-gw")?,
            sink_ns: NetNs::new("bnat-sink")?,
        };
        veth_pair(&t.gen_ns, "g0", &t.gw_ns, "f0")?;
        veth_pair(&t.gw_ns, "f1", &t.sink_ns, "s0")?;
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
        mac(&t.gw_ns, "f0", GW_IN_MAC)?;
        mac(&t.gw_ns, "f1", GW_OUT_MAC)?;
        mac(&t.sink_ns, "s0", SINK_MAC)?;
        let gw = &t.gw_ns;
        gw.ip(&["addr", "add", TENANT_GW, "dev", "f0"])?;
        gw.ip(&["addr", "add", &format!("{PUBLIC}/24"), "dev", "f1"])?;
        gw.ip(&[
            "neigh",
            "add",
            &REMOTE.to_string(),
            "lladdr",
            &exitd::dataplane::cli::mac(&SINK_MAC),
            "dev",
            "f1",
            "nud",
            "permanent",
        ])?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        gw.sysctl("net.ipv4.conf.f0.rp_filter", "0")?;
        // The masquerade an operator would otherwise configure, on the uplink.
        gw.exec("nft", &["add", "table", "ip", "benchnat"])?;
        gw.exec(
            "nft",
            &[
                "add",
                "chain",
                "ip",
                "benchnat",
                "post",
                "{ type nat hook postrouting priority srcnat ; policy accept ; }",
            ],
        )?;
        gw.exec(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "benchnat",
                "post",
                "oifname",
                "f1",
                "masquerade",
            ],
        )?;
        Ok(t)
    }
}

/// Runs the three scenarios of `generator` interleaved; pps samples per scenario.
fn measure(
    topo: &Topology,
    gw: &mut Ebpf,
    sink: &Ebpf,
    f0: u32,
    generator: &str,
) -> Result<Vec<(&'static str, Vec<f64>)>> {
    let mut results: Vec<(&'static str, Vec<f64>)> = vec![
        ("offered_drop_at_ingress", vec![]),
        ("kernel_nft_masquerade", vec![]),
        ("ebpf_nat", vec![]),
    ];
    let frame = outbound_frame();
    for _round in 0..RATE_ROUNDS {
        for (scenario, samples) in results.iter_mut() {
            let program = match *scenario {
                "offered_drop_at_ingress" => "xdp_sink",
                "kernel_nft_masquerade" => "xdp_pass",
                _ => "xdp_fwd6",
            };
            let attached = attach_in(&topo.gw_ns, gw, program, f0)?;
            let (counter, ifindex) = if program == "xdp_sink" {
                (&*gw, f0)
            } else {
                (sink, 0)
            };
            let before = counted(counter, ifindex)?;
            let elapsed = generate_frames(&topo.gen_ns, generator, &frame, RATE_SECONDS)?;
            let after = counted(counter, ifindex)?;
            detach(gw, program, attached)?;
            samples.push((after - before) as f64 / elapsed);
        }
    }
    Ok(results)
}

fn rates() -> Result<Value> {
    let topo = Topology::new()?;
    let sink = topo.sink_ns.run(|| -> Result<Ebpf> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        let ifindex = exitd::iface::index_of("s0")?;
        load_xdp(&mut ebpf, "xdp_sink")?.attach_to_if_index(ifindex, XdpMode::Driver)?;
        Ok(ebpf)
    })??;
    let (mut gw, f0, maps) = topo.gw_ns.run(|| -> Result<(Ebpf, u32, Nat4Maps)> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(CT4_MAP, CT4_ENTRIES)
            .load(OBJECT)?;
        for name in ["xdp_pass", "xdp_sink", "xdp_fwd6"] {
            load_xdp(&mut ebpf, name)?;
        }
        let (f0, f1) = (exitd::iface::index_of("f0")?, exitd::iface::index_of("f1")?);
        let maps = configure(&mut ebpf, &nat_table(f0, f1))?;
        Ok((ebpf, f0, maps))
    })??;
    let mut out = serde_json::Map::new();
    for (part, generator) in [
        ("established_flow", "xdp_gen"),
        ("new_connections", "xdp_gen_flows"),
    ] {
        let results = measure(&topo, &mut gw, &sink, f0, generator)?;
        let med = |name: &str| {
            results
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, s)| median_of(s))
        };
        let (offered, kernel, ebpf) = (
            med("offered_drop_at_ingress"),
            med("kernel_nft_masquerade"),
            med("ebpf_nat"),
        );
        if kernel == 0.0 || ebpf == 0.0 {
            bail!("{part}: no packets arrived at the sink (kernel {kernel}, eBPF {ebpf})");
        }
        println!(
            "{part} packets/s (median of {RATE_ROUNDS} x {RATE_SECONDS} s): offered {:.2} M, kernel + nftables masquerade {:.2} M, eBPF NAT {:.2} M = {:.2}x",
            offered / 1e6,
            kernel / 1e6,
            ebpf / 1e6,
            ebpf / kernel
        );
        out.insert(
            part.into(),
            json!({
                "pps": results.iter().map(|(n, s)| (n.to_string(), summary(s))).collect::<serde_json::Map<_, _>>(),
                "ratio_ebpf_over_kernel": ebpf / kernel,
            }),
        );
    }
    let counters: serde_json::Map<String, Value> = maps
        .verdict_counters()?
        .into_iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(v, c)| (v.name().to_string(), json!(c.packets)))
        .collect();
    println!("eBPF NAT verdicts over the runs: {counters:?}");
    out.insert("ebpf_verdicts".into(), Value::Object(counters));
    out.insert("rounds".into(), json!(RATE_ROUNDS));
    out.insert("seconds_per_run".into(), json!(RATE_SECONDS));
    out.insert("ct4_entries".into(), json!(CT4_ENTRIES));
    out.insert(
        "target".into(),
        json!("eBPF NAT >= 1.5x the packets/s of kernel forwarding with nftables masquerade"),
    );
    Ok(Value::Object(out))
}

/// The i-th benchmark connection's outgoing key: tenant hosts .2–.251, all ports.
fn connection_key(i: u32) -> CtKey {
    CtKey {
        proto: 17,
        dir: CT_OUT,
        pad: [0; 2],
        src: [10, 26, 188, 2 + (i % 250) as u8],
        dst: REMOTE.octets(),
        sport: (1024 + (i / 250) as u16).to_be(),
        dport: DPORT.to_be(),
    }
}

/// Both entries of connection `i`, translated to its own public port.
fn connection_entries(i: u32, tenant_if: u32, now: u64) -> [(CtKey, CtEntry); 2] {
    let out = connection_key(i);
    let port = (1024 + (i % 59_000) as u16).to_be();
    let back_key = CtKey {
        dir: CT_IN,
        src: out.dst,
        dst: PUBLIC.octets(),
        sport: out.dport,
        dport: port,
        ..out
    };
    // Replies are keyed by the remote endpoint too: vary it so every key is distinct.
    let back_key = CtKey {
        src: [198, 51, 100, 2 + (i / 59_000) as u8],
        ..back_key
    };
    let out_entry = CtEntry {
        addr: PUBLIC.octets(),
        port,
        last_seen: now,
        ifindex: tenant_if,
        ..CtEntry::default()
    };
    let back_entry = CtEntry {
        addr: out.src,
        port: out.sport,
        last_seen: now,
        ..CtEntry::default()
    };
    [(out, out_entry), (back_key, back_entry)]
}

fn capacity() -> Result<Value> {
    with_translator(
        "bench-cap",
        || {
            EbpfLoader::new()
                .map_max_entries(CT4_MAP, CT4_ENTRIES)
                .load(OBJECT)
        },
        |mut ebpf, ta0, up0| {
            let map_id = match ebpf.map(CT4_MAP) {
                Some(Map::LruHashMap(data)) => data.info()?.id(),
                _ => bail!("{CT4_MAP} is not an LRU hash map"),
            };
            let mut maps = configure(&mut ebpf, &nat_table(ta0, up0))?;
            let now = monotonic_ns();
            let start = Instant::now();
            for i in 0..CONNECTIONS {
                for (key, entry) in connection_entries(i, ta0, now) {
                    maps.insert_entry(&key, &entry)?;
                }
            }
            let insert_secs = start.elapsed().as_secs_f64();
            // Every 100th connection: are both entries still there (not evicted)?
            let sampled: Vec<u32> = (0..CONNECTIONS).step_by(100).collect();
            let present = sampled
                .iter()
                .filter(|i| {
                    connection_entries(**i, ta0, now)
                        .iter()
                        .all(|(k, _)| maps.entry(k).is_some())
                })
                .count();
            let memlock = map_memlock(map_id)?;
            // The established flow, measured with the map full.
            let nat: &Xdp = ebpf.program("xdp_fwd6").context("xdp_fwd6")?.try_into()?;
            single_run_once(nat, &outbound_frame(), ta0)?;
            let costs = established_costs(
                &ebpf,
                &maps,
                (&outbound_frame(), ta0),
                (&inbound_frame(), up0),
            )?;
            println!(
                "capacity: {CONNECTIONS} connections ({} entries) inserted in {insert_secs:.1} s into a {CT4_ENTRIES}-entry map; {present} of {} sampled connections present; map memory {:.0} MiB (bpftool memlock)",
                2 * CONNECTIONS,
                sampled.len(),
                memlock as f64 / (1 << 20) as f64
            );
            print_costs("established flow, 1M connections", &costs);
            Ok(json!({
                "ct4_max_entries": CT4_ENTRIES,
                "connections": CONNECTIONS,
                "entries_inserted": 2 * CONNECTIONS,
                "insert_seconds": insert_secs,
                "sampled_connections": sampled.len(),
                "sampled_present": present,
                "memlock_bytes": memlock,
                "established_costs_full_map": costs,
                "target": "1,000,000 tracked connections fit",
            }))
        },
    )
}

/// Runs `f` in a fresh namespace with a tenant link (ta0) and an uplink (up0), given
/// `object` (loaded there) with xdp_pass and xdp_fwd6 loaded and both ifindexes.
fn with_translator(
    prefix: &str,
    object: impl FnOnce() -> Result<Ebpf, aya::EbpfError> + Send,
    f: impl FnOnce(Ebpf, u32, u32) -> Result<Value> + Send,
) -> Result<Value> {
    let ns = NetNs::new(prefix)?;
    veth_pair(&ns, "ta0", &ns, "ta1")?;
    veth_pair(&ns, "up0", &ns, "up1")?;
    ns.run(|| -> Result<Value> {
        let (ta0, up0) = (
            exitd::iface::index_of("ta0")?,
            exitd::iface::index_of("up0")?,
        );
        let mut ebpf = object()?;
        load_xdp(&mut ebpf, "xdp_pass")?;
        load_xdp(&mut ebpf, "xdp_fwd6")?;
        f(ebpf, ta0, up0)
    })?
}

/// The map's memory as `bpftool map show` reports it (bytes_memlock).
fn map_memlock(id: u32) -> Result<u64> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "id", &id.to_string()])
        .output()
        .context("running bpftool")?;
    ensure!(output.status.success(), "bpftool map show id {id} failed");
    let info: Value = serde_json::from_slice(&output.stdout)?;
    info["bytes_memlock"]
        .as_u64()
        .context("bpftool reports no bytes_memlock")
}
