//! Benchmarks: each measures exitd against the baseline an operator would otherwise use, in
//! the same run, prints ratios and writes JSON to `bench/results/<name>.json`.

mod broker;
mod dataplane;
mod failover;
mod nat;
mod nat64;
pub mod readme;

use anyhow::{Result, bail};
use std::path::Path;

type Bench = fn(&Path) -> Result<serde_json::Value>;

/// Registered benchmarks, in the order `cargo xtask bench` runs them.
const BENCHES: &[(&str, Bench)] = &[
    ("dataplane", dataplane::run),
    ("broker", broker::run),
    ("failover", failover::run),
    ("nat", nat::run),
    ("nat64", nat64::run),
];

pub fn run(root: &Path, names: &[String]) -> Result<()> {
    for name in names {
        if !BENCHES.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
            bail!("unknown benchmark {name:?}; known: {known:?}");
        }
    }
    if BENCHES.is_empty() {
        println!("no benchmarks are registered yet");
        return Ok(());
    }
    for (name, bench) in BENCHES {
        if names.is_empty() || names.iter().any(|n| n == name) {
            let result = bench(root)?;
            write_result(root, name, &result)?;
        }
    }
    update_readme(root)
}

/// Rewrites the README's benchmark table from bench/results/ (`cargo xtask bench --readme`).
pub fn update_readme(root: &Path) -> Result<()> {
    if readme::update(root)? {
        println!("README.md: benchmark table updated from bench/results/");
    } else {
        println!("README.md: benchmark table already up to date");
    }
    Ok(())
}

#[allow(dead_code)] // used once the first benchmark is registered
fn write_result(root: &Path, name: &str, result: &serde_json::Value) -> Result<()> {
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(result)?)?;
    println!("results written to {}", path.display());
    Ok(())
}
