//! `cargo xtask bench dataplane`: builds the `exitd-bench` binary in release mode and runs its
//! data-plane benchmark (needs root: network namespaces and BPF).

use crate::run_step;
use anyhow::{Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub fn run(root: &Path) -> Result<serde_json::Value> {
    run_exitd_bench(root, "dataplane")
}

/// Builds `exitd-bench` (release) and runs its benchmark `name`; returns its JSON result.
pub fn run_exitd_bench(root: &Path, name: &str) -> Result<serde_json::Value> {
    run_step(
        "building exitd-bench (release)",
        Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "--package",
            "exitd-bench",
        ]),
    )?;
    // Where cargo put the binary: CARGO_TARGET_DIR when set, as cargo itself does.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join(format!("{name}-bench.json"));
    run_step(
        &format!("running the {name} benchmark"),
        Command::new(target.join("release/exitd-bench"))
            .arg(name)
            .arg("--out")
            .arg(&out),
    )?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    Ok(serde_json::from_str(&text)?)
}
