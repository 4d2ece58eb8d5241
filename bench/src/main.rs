//! Data-plane benchmarks. `cargo xtask bench dataplane` builds this in release mode and runs
//! it as root; it prints a summary and writes JSON to the path given with `--out`.

mod dataplane;
mod failover;
mod nat;
mod nat64;
mod stats;

use anyhow::{Result, bail};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, out) = match args.as_slice() {
        [name, flag, out] if flag == "--out" => (name.as_str(), PathBuf::from(out)),
        _ => bail!("usage: exitd-bench <dataplane|failover|nat|nat64> --out RESULT.json"),
    };
    exitd_testkit::require_root();
    let result = match name {
        "dataplane" => dataplane::run()?,
        "failover" => failover::run()?,
        "nat" => nat::run()?,
        "nat64" => nat64::run()?,
        other => bail!("unknown benchmark {other:?}"),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    Ok(())
}
