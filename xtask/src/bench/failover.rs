//! `cargo xtask bench failover`: builds `exitd` and `exitd-bench` in release mode and runs the
//! failover benchmark (needs root and /usr/bin/etcd): owner SIGKILL → traffic restored.

use crate::run_step;
use anyhow::{Context, Result};
use std::{path::Path, process::Command};

pub fn run(root: &Path) -> Result<serde_json::Value> {
    run_step(
        "building exitd and exitd-bench (release)",
        Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "--package",
            "exitd",
            "--package",
            "exitd-bench",
        ]),
    )?;
    let out = root.join("target/failover-bench.json");
    run_step(
        "running the failover benchmark",
        Command::new(root.join("target/release/exitd-bench"))
            .arg("failover")
            .arg("--out")
            .arg(&out),
    )?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    Ok(serde_json::from_str(&text)?)
}
