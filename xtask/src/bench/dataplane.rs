//! `cargo xtask bench dataplane`: builds the `exitd-bench` binary in release mode and runs its
//! data-plane benchmark (needs root: network namespaces and BPF).

use crate::run_step;
use anyhow::{Context, Result};
use std::{path::Path, process::Command};

pub fn run(root: &Path) -> Result<serde_json::Value> {
    run_step(
        "building exitd-bench (release)",
        Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "--package",
            "exitd-bench",
        ]),
    )?;
    let out = root.join("target/dataplane-bench.json");
    run_step(
        "running the data-plane benchmark",
        Command::new(root.join("target/release/exitd-bench"))
            .arg("dataplane")
            .arg("--out")
            .arg(&out),
    )?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    Ok(serde_json::from_str(&text)?)
}
