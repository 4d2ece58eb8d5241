//! Running a loaded program on a hand-built packet with BPF_PROG_TEST_RUN.

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};

/// The result of one test run of an XDP program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpRun {
    /// The XDP action the program returned (`XDP_PASS` = 2, …).
    pub verdict: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// XDP verdicts, named.
pub mod verdict {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Runs a loaded XDP program once on `packet`. Map state is whatever the program's maps hold
/// afterwards: read it through the `aya::Ebpf` the program came from.
pub fn run_xdp(program: &Xdp, packet: &[u8]) -> Result<XdpRun> {
    // Room for programs that grow the packet (bpf_xdp_adjust_head/tail).
    let mut out = vec![0u8; packet.len() + 512];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let result = program.test_run(opts).context("BPF_PROG_TEST_RUN failed")?;
    out.truncate(result.data_size_out as usize);
    Ok(XdpRun {
        verdict: result.return_value,
        packet: out,
    })
}

/// Like [`run_xdp`], with the packet arriving on `ingress_ifindex` (an interface of the
/// calling thread's namespace), as programs that check where a packet came from need.
pub fn run_xdp_on(program: &Xdp, packet: &[u8], ingress_ifindex: u32) -> Result<XdpRun> {
    let mut out = vec![0u8; packet.len() + 512];
    let ctx = xdp_md(packet.len(), ingress_ifindex);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let result = program.test_run(opts).context("BPF_PROG_TEST_RUN failed")?;
    out.truncate(result.data_size_out as usize);
    Ok(XdpRun {
        verdict: result.return_value,
        packet: out,
    })
}

/// A `struct xdp_md` for a test run: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex (the kernel requires data_end = the packet's length).
pub fn xdp_md(packet_len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0u32, packet_len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// TC actions, named.
pub mod tc_action {
    pub const OK: u32 = 0;
    pub const SHOT: u32 = 2;
    pub const REDIRECT: u32 = 7;
}

/// Runs a loaded TC classifier once on the Ethernet frame `packet` (a test run always
/// hands TC programs a frame with an Ethernet header). The result's `verdict` is the TC
/// action (see [`tc_action`]).
pub fn run_tc(program: &SchedClassifier, packet: &[u8]) -> Result<XdpRun> {
    let mut out = vec![0u8; packet.len() + 512];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let result = program.test_run(opts).context("BPF_PROG_TEST_RUN failed")?;
    out.truncate(result.data_size_out as usize);
    Ok(XdpRun {
        verdict: result.return_value,
        packet: out,
    })
}
