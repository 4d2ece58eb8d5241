//! `cargo xtask bench nat64`: the eBPF NAT64 against Tayga + nftables masquerade, run by the
//! `exitd-bench` binary (needs root: network namespaces, BPF and the `tayga` package).

use anyhow::Result;
use std::path::Path;

pub fn run(root: &Path) -> Result<serde_json::Value> {
    super::dataplane::run_exitd_bench(root, "nat64")
}
