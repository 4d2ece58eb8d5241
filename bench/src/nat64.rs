//! `cargo xtask bench nat64`: the eBPF NAT64 of a Parker gateway against Tayga, in one run.
//!
//! The baseline is what Parker gateways deploy today: Tayga (Debian's package, a userspace
//! translator on a tun device) with a dynamic IPv4 pool, followed by nftables masquerade of
//! that pool to the gateway's public IPv4 (stateful NAT64 = stateless Tayga + NAT44). Ours is
//! `tc_nat64_eth` on the node-facing link's ingress (translates and redirects to the uplink)
//! and `xdp_fwd6` on the uplink (translates replies back and hands them to the kernel).
//!
//! 1. BPF_PROG_TEST_RUN cost of an established flow, outbound (`tc_nat64_eth` on the node's
//!    IPv6 UDP and TCP packets) and inbound (`xdp_fwd6` on the IPv4 reply), each above an
//!    empty program of the same type measured the same way. A translated packet is no longer
//!    the packet the flow's state matches, so each call runs once (repeat = 1);
//! 2. packets/s of one established UDP flow, node → IPv4 internet, gen → gateway → sink over
//!    veths, frames from the XDP live-frames generator (`xdp_gen`), Tayga and eBPF interleaved,
//!    plus the offered load (drop at the gateway's ingress);
//! 3. the same with a new connection in every frame (`xdp_gen_flows6`: new UDP ports per
//!    frame, checksum adjusted): new connections per second.
//!
//! Both translators are checked with a real UDP datagram (it must arrive from the public
//! IPv4) before anything is measured.

use crate::{
    dataplane::{attach_in, counted, detach, generate_frames, load_xdp},
    nat::configure,
    stats::{median_of, summary},
};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf, TestRunResult,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, tc::SchedClassifierLinkId,
        xdp::XdpMode,
    },
};
use exitd::dataplane::{OBJECT, nat4::Nat4Table};
use exitd_common::{
    Counters, ROUTE_NEIGH_KNOWN,
    nat4::{CtEntry, NAT4_ENABLED, Nat4Config, Route4, TIMEOUT_COUNT},
    nat64::{
        CT6_MAP, Ct6Key, NAT64_CONFIG_MAP, NAT64_STATS_MAP, Nat64Config, Nat64Verdict,
        TC_NAT64_ETH, WELL_KNOWN_PREFIX, XLAT6_MAP, XlatSource,
    },
};
use exitd_testkit::{NetNs, packet, poll_until, testrun::xdp_md, unique_name, veth_pair};
use serde_json::{Value, json};
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::{Child, Stdio},
    time::Duration,
};

const CALLS: usize = 20_000;
const RATE_ROUNDS: usize = 3;
const RATE_SECONDS: f64 = 2.0;

/// The node's address in its `xlat_range6` /64, and the gateway's address on that link.
const NODE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 1, 0, 0, 0, 2);
const GW_NODE_SIDE: &str = "2001:db8:4:1::1";
/// The gateway's public IPv4 and the "internet" host. Not from the documentation ranges:
/// Tayga refuses to translate those with the well-known prefix (it treats them as private).
const PUBLIC: Ipv4Addr = Ipv4Addr::new(100, 128, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(100, 128, 0, 2);
const SPORT: u16 = 4000;
const DPORT: u16 = 5001;
/// Tayga's own addresses and its dynamic pool (masqueraded to PUBLIC by nftables).
const TAYGA4: &str = "192.168.255.1";
const TAYGA6: &str = "2001:db8:4:ffff::1";
const TAYGA_POOL: &str = "192.168.255.0/24";

const GEN_MAC: [u8; 6] = [2, 0xd6, 0, 0, 0, 1];
const GW_IN_MAC: [u8; 6] = [2, 0xd6, 0, 0, 0, 2];
const GW_OUT_MAC: [u8; 6] = [2, 0xd6, 0, 0, 0, 3];
const SINK_MAC: [u8; 6] = [2, 0xd6, 0, 0, 0, 4];

const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;

pub fn run() -> Result<Value> {
    // EXITD_BENCH_PARTS=testrun,rates picks parts (all by default).
    let parts = std::env::var("EXITD_BENCH_PARTS").unwrap_or_else(|_| "testrun,rates".into());
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
    let mut result = json!({
        "benchmark": "nat64",
        "baseline": format!("{} (tun device, dynamic pool {TAYGA_POOL}) + nftables masquerade to the public IPv4", tayga_version()),
        "frames": "64-byte IPv6/UDP frames from the node; pps measured with XDP live frames (not socket-fed)",
        "test_run": testrun,
        "rates": rates,
    });
    result["summary"] = readme_rows(&result);
    Ok(result)
}

/// The rows of the README's benchmark table (see xtask/src/bench/readme.rs).
fn readme_rows(r: &Value) -> Value {
    let mut rows = Vec::new();
    for (flow, what) in [
        ("established_flow", "NAT64, established UDP flow, packets/s"),
        (
            "new_connections",
            "NAT64, a new connection per packet, packets/s",
        ),
    ] {
        let pps = &r["rates"][flow]["pps"];
        if let (Some(ours), Some(base)) = (
            pps["ebpf_nat64"]["median"].as_f64(),
            pps["tayga_nft_masquerade"]["median"].as_f64(),
        ) {
            rows.push(json!({
                "what": what, "value": ours, "unit": "pps",
                "baseline": base, "baseline_what": "Tayga + nftables masquerade",
                "ratio": ours / base, "target": "faster than Tayga", "met": ours > base,
            }));
        }
    }
    for (dir, what) in [
        ("outbound_udp", "outbound UDP"),
        ("outbound_tcp", "outbound TCP"),
        ("inbound_udp", "inbound UDP"),
    ] {
        if let Some(ns) = r["test_run"]["costs"][dir]["ns_above_empty_program"].as_f64() {
            rows.push(json!({
                "what": format!("NAT64 established flow, {what}, ns/packet above an empty program (BPF_PROG_TEST_RUN)"),
                "value": ns, "unit": "ns", "target": "<= 150 ns", "met": ns <= 150.0,
            }));
        }
    }
    Value::Array(rows)
}

/// `tayga --version`'s first line ("TAYGA 0.9.2"), or a note that it is missing.
fn tayga_version() -> String {
    std::process::Command::new("tayga")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "tayga (not installed)".into())
}

/// The IPv4 NAT's table the NAT64 shares: public address, ports, the uplink's next hop.
fn nat4_table(uplink: u32) -> Nat4Table {
    let mut timeouts = [0u32; TIMEOUT_COUNT];
    timeouts.copy_from_slice(&[7440, 240, 300, 30]);
    let mut table = Nat4Table {
        config: Nat4Config {
            public: PUBLIC.octets(),
            port_min: 1024,
            port_max: 60999,
            flags: NAT4_ENABLED,
            upstream: Route4 {
                ifindex: uplink,
                tenant: 0,
                dst_mac: SINK_MAC,
                src_mac: GW_OUT_MAC,
                flags: ROUTE_NEIGH_KNOWN,
            },
            timeouts,
        },
        ..Nat4Table::default()
    };
    table.local.insert(PUBLIC.octets());
    table
}

/// Fills the NAT44 maps, NAT64_CONFIG (well-known prefix) and XLAT6 (the node's /64 on
/// `node_link`) of a loaded object.
fn configure_nat64(ebpf: &mut Ebpf, node_link: u32, uplink: u32) -> Result<()> {
    configure(ebpf, &nat4_table(uplink))?;
    let config = Nat64Config::new(WELL_KNOWN_PREFIX, 96).context("the /96 is valid")?;
    let mut configs: Array<&mut MapData, Nat64Config> =
        Array::try_from(ebpf.map_mut(NAT64_CONFIG_MAP).context(NAT64_CONFIG_MAP)?)?;
    configs.set(0, config, 0)?;
    let mut xlat: HashMap<&mut MapData, [u8; 8], XlatSource> =
        HashMap::try_from(ebpf.map_mut(XLAT6_MAP).context(XLAT6_MAP)?)?;
    let mut node64 = [0u8; 8];
    node64.copy_from_slice(&NODE.octets()[..8]);
    let source = XlatSource {
        ifindex: node_link,
        pad: 0,
    };
    xlat.insert(node64, source, 0)?;
    Ok(())
}

/// Packets counted for one NAT64 verdict, over all CPUs.
fn nat64_count(ebpf: &Ebpf, verdict: Nat64Verdict) -> Result<u64> {
    let stats: PerCpuArray<&MapData, Counters> =
        PerCpuArray::try_from(ebpf.map(NAT64_STATS_MAP).context(NAT64_STATS_MAP)?)?;
    Ok(stats
        .get(&(verdict as u32), 0)?
        .iter()
        .map(|c| c.packets)
        .sum())
}

/// The benchmark flow's address on the IPv6 side.
fn nat64_remote() -> Ipv6Addr {
    let config = Nat64Config::new(WELL_KNOWN_PREFIX, 96).expect("a valid /96");
    Ipv6Addr::from(config.embed(REMOTE.octets()))
}

/// 64-byte frames (14 + 40 + 8 + 2) of the node's UDP flow as the gateway receives it.
fn outbound_udp_frame(sport: u16) -> Vec<u8> {
    let ip = packet::ipv6_udp(NODE, nat64_remote(), sport, DPORT, 64, &[0; 2]);
    packet::ethernet(GW_IN_MAC, GEN_MAC, packet::ETH_P_IPV6, &ip)
}

/// A TCP segment of the node's connection (20-byte header, `flags`) with its checksum.
fn outbound_tcp_frame(flags: u8) -> Vec<u8> {
    let (src, dst) = (NODE, nat64_remote());
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&SPORT.to_be_bytes());
    tcp.extend_from_slice(&DPORT.to_be_bytes());
    tcp.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp.extend_from_slice(&0x0506_0708u32.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 6]);
    pseudo.extend_from_slice(&tcp);
    let csum = packet::internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let ip = packet::ipv6(src, dst, 6, 64, &tcp);
    packet::ethernet(GW_IN_MAC, GEN_MAC, packet::ETH_P_IPV6, &ip)
}

/// The remote's reply to the public address and port `public_port`.
fn inbound_udp_frame(public_port: u16) -> Vec<u8> {
    let ip = packet::ipv4_udp(REMOTE, PUBLIC, DPORT, public_port, 64, &[0; 22]);
    packet::ethernet(GW_OUT_MAC, SINK_MAC, packet::ETH_P_IP, &ip)
}

/// A `struct __sk_buff` for a TC test run: the packet arrived on `ifindex` (the kernel
/// accepts only some fields; the rest up to `ifindex` must be zero).
fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut ctx = [0u32; 11];
    ctx[9] = ifindex; // ingress_ifindex
    ctx[10] = ifindex; // ifindex
    ctx.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Programs run by BPF_PROG_TEST_RUN with packet data (XDP and TC here).
trait PacketTestRun: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult> {}
impl<P> PacketTestRun for P where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>
{
}

/// One test run of `program` on `frame` with context `ctx`: (return value, ns).
fn run_once(program: &impl PacketTestRun, frame: &[u8], ctx: &[u8]) -> Result<(u32, f64)> {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(ctx);
    let result = program.test_run(opts)?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// ns of `CALLS` single runs, each required to return `want`.
fn single_runs(
    program: &impl PacketTestRun,
    frame: &[u8],
    ctx: &[u8],
    want: u32,
) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let (ret, ns) = run_once(program, frame, ctx)?;
        ensure!(ret == want, "the program returned {ret}, not {want}");
        samples.push(ns);
    }
    Ok(samples)
}

/// Median ns above `baseline` and the samples, checking that every run counted `verdict`.
fn measured(
    ebpf: &Ebpf,
    verdict: Nat64Verdict,
    baseline: f64,
    runs: impl FnOnce() -> Result<Vec<f64>>,
) -> Result<Value> {
    let before = nat64_count(ebpf, verdict)?;
    let samples = runs()?;
    let took = nat64_count(ebpf, verdict)? - before;
    ensure!(
        took == CALLS as u64,
        "only {took} of {CALLS} runs counted {}",
        verdict.name()
    );
    Ok(json!({
        "ns_per_packet": summary(&samples),
        "empty_program_ns": baseline,
        "ns_above_empty_program": median_of(&samples) - baseline,
    }))
}

/// The public port CT6 holds for the node's UDP flow.
fn public_port(ebpf: &Ebpf, proto: u8) -> Result<u16> {
    let ct6: HashMap<&MapData, Ct6Key, CtEntry> =
        HashMap::try_from(ebpf.map(CT6_MAP).context(CT6_MAP)?)?;
    let key = Ct6Key {
        proto,
        pad: [0; 3],
        src: NODE.octets(),
        dst: nat64_remote().octets(),
        sport: SPORT.to_be(),
        dport: DPORT.to_be(),
    };
    let entry = ct6
        .get(&key, 0)
        .context("no CT6 entry for the benchmark flow")?;
    Ok(u16::from_be(entry.port))
}

fn testrun_costs() -> Result<Value> {
    let ns = NetNs::new("bench-n64")?;
    veth_pair(&ns, "nd0", &ns, "nd1")?;
    veth_pair(&ns, "up0", &ns, "up1")?;
    ns.run(|| -> Result<Value> {
        let (nd0, up0) = (
            exitd::iface::index_of("nd0")?,
            exitd::iface::index_of("up0")?,
        );
        let mut ebpf = Ebpf::load(OBJECT)?;
        for name in ["xdp_pass", "xdp_fwd6"] {
            load_xdp(&mut ebpf, name)?;
        }
        for name in ["tc_pass", TC_NAT64_ETH] {
            load_tc(&mut ebpf, name)?;
        }
        // Replies and ICMP errors continue in tail-called programs.
        exitd::dataplane::tails::fill(&mut ebpf)?;
        configure_nat64(&mut ebpf, nd0, up0)?;
        let costs = established_costs(&ebpf, nd0, up0)?;
        print_costs(&costs);
        Ok(json!({
            "calls": CALLS, "repeat_per_call": 1,
            "costs": costs,
            "target": "<= 150 ns per packet for an established NAT64 flow",
        }))
    })?
}

fn load_tc<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    Ok(program)
}

fn tc_program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

fn xdp_program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// Outbound UDP and TCP through `tc_nat64_eth`, inbound UDP through `xdp_fwd6`, each on a
/// connection the first packet created.
fn established_costs(ebpf: &Ebpf, nd0: u32, up0: u32) -> Result<Value> {
    let nat64 = tc_program(ebpf, TC_NAT64_ETH)?;
    let fwd = xdp_program(ebpf, "xdp_fwd6")?;
    let (node_ctx, up_ctx) = (skb_ctx(nd0), xdp_md(inbound_udp_frame(0).len(), up0));
    let udp = outbound_udp_frame(SPORT);
    let (syn, ack) = (outbound_tcp_frame(0x02), outbound_tcp_frame(0x10));
    for (what, frame) in [("UDP", &udp), ("TCP SYN", &syn)] {
        let (ret, _) = run_once(nat64, frame, &node_ctx)?;
        ensure!(
            ret == TC_ACT_REDIRECT,
            "the first {what} packet was not redirected (returned {ret})"
        );
    }
    ensure!(
        nat64_count(ebpf, Nat64Verdict::NewOut)? == 2,
        "the first packets did not create two connections"
    );
    let tc_empty = median_of(&single_runs(
        tc_program(ebpf, "tc_pass")?,
        &udp,
        &node_ctx,
        0,
    )?);
    let xdp_empty = median_of(&single_runs(
        xdp_program(ebpf, "xdp_pass")?,
        &inbound_udp_frame(0),
        &up_ctx,
        XDP_PASS,
    )?);
    let reply = inbound_udp_frame(public_port(ebpf, 17)?);
    Ok(json!({
        "outbound_udp": measured(ebpf, Nat64Verdict::Out, tc_empty, || single_runs(nat64, &udp, &node_ctx, TC_ACT_REDIRECT))?,
        "outbound_tcp": measured(ebpf, Nat64Verdict::Out, tc_empty, || single_runs(nat64, &ack, &node_ctx, TC_ACT_REDIRECT))?,
        "inbound_udp": measured(ebpf, Nat64Verdict::In, xdp_empty, || single_runs(fwd, &reply, &up_ctx, XDP_PASS))?,
        "empty_tc_program_ns": tc_empty,
        "empty_xdp_program_ns": xdp_empty,
    }))
}

fn print_costs(costs: &Value) {
    for dir in ["outbound_udp", "outbound_tcp", "inbound_udp"] {
        let c = &costs[dir];
        println!(
            "test run, NAT64 established flow, {dir}: {:.0} ns/packet, {:.0} above an empty program ({:.0} ns)",
            c["ns_per_packet"]["median"].as_f64().unwrap_or(0.0),
            c["ns_above_empty_program"].as_f64().unwrap_or(0.0),
            c["empty_program_ns"].as_f64().unwrap_or(0.0),
        );
    }
}

/// Tayga running in the gateway namespace; stopped on drop.
struct Tayga {
    child: Child,
    _config: exitd_testkit::TempFile,
    data_dir: std::path::PathBuf,
}

impl Tayga {
    /// Creates Tayga's tun device `nat64`, routes the NAT64 prefix and the pool through it
    /// and starts the daemon in the foreground.
    fn start(gw: &NetNs) -> Result<Tayga> {
        let data_dir = std::env::temp_dir().join(unique_name("exitd-bench-tayga-"));
        std::fs::create_dir_all(&data_dir)?;
        let config = exitd_testkit::TempFile::with_text(
            "conf",
            &format!(
                "tun-device nat64\nipv4-addr {TAYGA4}\nipv6-addr {TAYGA6}\nprefix 64:ff9b::/96\n\
                 dynamic-pool {TAYGA_POOL}\ndata-dir {}\n",
                data_dir.display()
            ),
        );
        let conf = config.path().to_str().context("temp path")?.to_string();
        gw.exec("tayga", &["-c", &conf, "--mktun"])?;
        gw.ip(&["link", "set", "nat64", "up"])?;
        gw.ip(&["route", "add", TAYGA_POOL, "dev", "nat64"])?;
        gw.ip(&["-6", "route", "add", "64:ff9b::/96", "dev", "nat64"])?;
        let child = gw
            .command("tayga")
            .args(["-c", &conf, "-d"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tayga (apt package tayga)")?;
        Ok(Tayga {
            child,
            _config: config,
            data_dir,
        })
    }
}

impl Drop for Tayga {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// gen (the node) —veth— gateway —veth— sink (the IPv4 internet). The gateway routes
/// 64:ff9b::/96 into Tayga and masquerades Tayga's pool on the uplink f1.
struct Topology {
    gen_ns: NetNs,
    gw_ns: NetNs,
    sink_ns: NetNs,
    tayga: Option<Tayga>,
}

impl Topology {
    fn new() -> Result<Topology> {
        let mut t = Topology {
            gen_ns: NetNs::new("bn64-gen")?,
            gw_ns: NetNs::new("bn64-gw")?,
            sink_ns: NetNs::new("bn64-sink")?,
            tayga: None,
        };
        veth_pair(&t.gen_ns, "g0", &t.gw_ns, "f0")?;
        veth_pair(&t.gw_ns, "f1", &t.sink_ns, "s0")?;
        for (ns, dev, m) in [
            (&t.gen_ns, "g0", GEN_MAC),
            (&t.gw_ns, "f0", GW_IN_MAC),
            (&t.gw_ns, "f1", GW_OUT_MAC),
            (&t.sink_ns, "s0", SINK_MAC),
        ] {
            ns.ip(&["link", "set", dev, "address", &mac(m)])?;
        }
        t.gen_ns
            .ip(&["addr", "add", &format!("{NODE}/64"), "dev", "g0", "nodad"])?;
        t.gen_ns.ip(&[
            "-6",
            "route",
            "add",
            "64:ff9b::/96",
            "via",
            GW_NODE_SIDE,
            "dev",
            "g0",
        ])?;
        t.sink_ns
            .ip(&["addr", "add", &format!("{REMOTE}/24"), "dev", "s0"])?;
        let gw = &t.gw_ns;
        gw.ip(&[
            "addr",
            "add",
            &format!("{GW_NODE_SIDE}/64"),
            "dev",
            "f0",
            "nodad",
        ])?;
        gw.ip(&["addr", "add", &format!("{PUBLIC}/24"), "dev", "f1"])?;
        for (addr, m, dev) in [
            (REMOTE.to_string(), SINK_MAC, "f1"),
            (NODE.to_string(), GEN_MAC, "f0"),
        ] {
            gw.ip(&[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        gw.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        t.tayga = Some(Tayga::start(gw)?);
        masquerade_pool(gw)?;
        Ok(t)
    }
}

fn mac(m: [u8; 6]) -> String {
    exitd::dataplane::cli::mac(&m)
}

/// The NAT44 behind Tayga: its pool leaves the uplink as the public address.
fn masquerade_pool(gw: &NetNs) -> Result<()> {
    gw.exec("nft", &["add", "table", "ip", "benchnat64"])?;
    gw.exec(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "benchnat64",
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
            "benchnat64",
            "post",
            "ip",
            "saddr",
            TAYGA_POOL,
            "oifname",
            "f1",
            "masquerade",
        ],
    )?;
    Ok(())
}

/// Sends a UDP datagram from the node to `[64:ff9b::REMOTE]` and requires it to arrive at
/// the sink from the gateway's public IPv4 (repeated until it does, for up to 5 s).
fn check_translation(topo: &Topology, what: &str) -> Result<()> {
    let port = 9000;
    let receiver = topo.sink_ns.run(|| -> Result<UdpSocket> {
        let socket = UdpSocket::bind((REMOTE, port))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(socket)
    })??;
    let sender = topo
        .gen_ns
        .run(|| UdpSocket::bind((NODE, 0)).context("binding the node's socket"))??;
    let target = SocketAddr::from((nat64_remote(), port));
    let arrived = poll_until(Duration::from_secs(5), || {
        let _ = sender.send_to(what.as_bytes(), target);
        let mut buf = [0u8; 64];
        let (n, peer) = receiver.recv_from(&mut buf).ok()?;
        (&buf[..n] == what.as_bytes()).then_some(peer)
    });
    let Some(peer) = arrived else {
        bail!("{what}: no datagram arrived at the IPv4 side");
    };
    ensure!(
        peer.ip() == std::net::IpAddr::V4(PUBLIC),
        "{what}: the datagram arrived from {peer}, not from {PUBLIC}"
    );
    println!(
        "{what}: node -> [{}]:{port} arrived from {peer}",
        target.ip()
    );
    Ok(())
}

/// The gateway's object: xdp_pass/xdp_sink for f0, xdp_fwd6 on the uplink for replies,
/// `tc_nat64_eth` loaded (attached per run), maps filled.
fn load_gateway(gw_ns: &NetNs) -> Result<(Ebpf, u32)> {
    gw_ns.run(|| -> Result<(Ebpf, u32)> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        for name in ["xdp_pass", "xdp_sink"] {
            load_xdp(&mut ebpf, name)?;
        }
        let (f0, f1) = (exitd::iface::index_of("f0")?, exitd::iface::index_of("f1")?);
        load_xdp(&mut ebpf, "xdp_fwd6")?.attach_to_if_index(f1, XdpMode::Driver)?;
        load_tc(&mut ebpf, TC_NAT64_ETH)?;
        exitd::dataplane::tails::fill(&mut ebpf)?;
        configure_nat64(&mut ebpf, f0, f1)?;
        Ok((ebpf, f0))
    })?
}

fn attach_nat64(gw_ns: &NetNs, ebpf: &mut Ebpf) -> Result<SchedClassifierLinkId> {
    gw_ns.run(|| -> Result<SchedClassifierLinkId> {
        let program: &mut SchedClassifier = ebpf
            .program_mut(TC_NAT64_ETH)
            .context(TC_NAT64_ETH)?
            .try_into()?;
        Ok(program.attach("f0", TcAttachType::Ingress)?)
    })?
}

fn detach_nat64(ebpf: &mut Ebpf, link: SchedClassifierLinkId) -> Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_NAT64_ETH)
        .context(TC_NAT64_ETH)?
        .try_into()?;
    program.detach(link)?;
    Ok(())
}

const SCENARIOS: [&str; 3] = [
    "offered_drop_at_ingress",
    "tayga_nft_masquerade",
    "ebpf_nat64",
];

/// Runs the scenarios with `generator` interleaved; pps samples per scenario.
fn measure(
    topo: &Topology,
    gw: &mut Ebpf,
    sink: &Ebpf,
    f0: u32,
    generator: &str,
    scenarios: &[&str],
) -> Result<Vec<Vec<f64>>> {
    let mut results = vec![Vec::new(); scenarios.len()];
    let frame = outbound_udp_frame(SPORT);
    for _round in 0..RATE_ROUNDS {
        for (scenario, samples) in scenarios.iter().zip(results.iter_mut()) {
            let offered = *scenario == "offered_drop_at_ingress";
            let program = if offered { "xdp_sink" } else { "xdp_pass" };
            let xdp = attach_in(&topo.gw_ns, gw, program, f0)?;
            let tc = match *scenario {
                "ebpf_nat64" => Some(attach_nat64(&topo.gw_ns, gw)?),
                _ => None,
            };
            let (counter, ifindex) = if offered { (&*gw, f0) } else { (sink, 0) };
            let before = counted(counter, ifindex)?;
            let elapsed = generate_frames(&topo.gen_ns, generator, &frame, RATE_SECONDS)?;
            let after = counted(counter, ifindex)?;
            if let Some(link) = tc {
                detach_nat64(gw, link)?;
            }
            detach(gw, program, xdp)?;
            samples.push((after - before) as f64 / elapsed);
        }
    }
    Ok(results)
}

fn rates() -> Result<Value> {
    // EXITD_BENCH_NAT64_BASELINE_ONLY=1 measures Tayga alone (while the eBPF side is unfinished).
    let with_ebpf = std::env::var_os("EXITD_BENCH_NAT64_BASELINE_ONLY").is_none();
    let scenarios = &SCENARIOS[..if with_ebpf { 3 } else { 2 }];
    let topo = Topology::new()?;
    let (mut gw, f0) = load_gateway(&topo.gw_ns)?;
    check_translation(&topo, "Tayga + nftables masquerade")?;
    if with_ebpf {
        let link = attach_nat64(&topo.gw_ns, &mut gw)?;
        // Tayga still runs: the datagram must have been translated by the eBPF program.
        // A flow's first packet counts as new_out, the rest as out.
        let translated = |gw: &Ebpf| -> Result<u64> {
            Ok(nat64_count(gw, Nat64Verdict::Out)? + nat64_count(gw, Nat64Verdict::NewOut)?)
        };
        let before = translated(&gw)?;
        check_translation(&topo, "eBPF NAT64")?;
        detach_nat64(&mut gw, link)?;
        ensure!(
            translated(&gw)? > before,
            "the eBPF check datagram was not translated by tc_nat64_eth (Tayga did it)"
        );
    }
    let sink = topo.sink_ns.run(|| -> Result<Ebpf> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        let ifindex = exitd::iface::index_of("s0")?;
        load_xdp(&mut ebpf, "xdp_sink")?.attach_to_if_index(ifindex, XdpMode::Driver)?;
        Ok(ebpf)
    })??;
    let mut out = serde_json::Map::new();
    for (part, generator) in [
        ("established_flow", "xdp_gen"),
        ("new_connections", "xdp_gen_flows6"),
    ] {
        let results = measure(&topo, &mut gw, &sink, f0, generator, scenarios)?;
        let med: Vec<f64> = results.iter().map(|s| median_of(s)).collect();
        let (offered, tayga) = (med[0], med[1]);
        let ebpf = med.get(2).copied().unwrap_or(f64::NAN);
        if tayga == 0.0 || ebpf == 0.0 {
            bail!("{part}: no packets arrived at the sink (Tayga {tayga}, eBPF {ebpf})");
        }
        println!(
            "{part} packets/s (median of {RATE_ROUNDS} x {RATE_SECONDS} s): offered {:.2} M, Tayga + nftables masquerade {:.3} M, eBPF NAT64 {:.3} M = {:.2}x",
            offered / 1e6,
            tayga / 1e6,
            ebpf / 1e6,
            ebpf / tayga
        );
        out.insert(
            part.into(),
            json!({
                "pps": scenarios.iter().zip(&results).map(|(n, s)| (n.to_string(), summary(s))).collect::<serde_json::Map<_, _>>(),
                "ratio_ebpf_over_tayga": ebpf / tayga,
            }),
        );
    }
    let verdicts: serde_json::Map<String, Value> = Nat64Verdict::ALL
        .iter()
        .filter_map(|v| {
            let n = nat64_count(&gw, *v).ok()?;
            (n > 0).then(|| (v.name().to_string(), json!(n)))
        })
        .collect();
    println!("eBPF NAT64 verdicts over the runs: {verdicts:?}");
    out.insert("ebpf_verdicts".into(), Value::Object(verdicts));
    out.insert("rounds".into(), json!(RATE_ROUNDS));
    out.insert("seconds_per_run".into(), json!(RATE_SECONDS));
    out.insert(
        "target".into(),
        json!("eBPF NAT64 faster than Tayga + nftables masquerade on the same run"),
    );
    Ok(Value::Object(out))
}
