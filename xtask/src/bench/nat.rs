//! `cargo xtask bench nat`: the IPv4 translator against kernel forwarding with nftables
//! masquerade, run by the `exitd-bench` binary (needs root: network namespaces and BPF).

use anyhow::Result;
use std::path::Path;

pub fn run(root: &Path) -> Result<serde_json::Value> {
    super::dataplane::run_exitd_bench(root, "nat")
}
