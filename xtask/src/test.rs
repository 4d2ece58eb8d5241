//! `cargo xtask test`: what CI runs. Format check, clippy with warnings denied on the host
//! crates and on the eBPF crate, then every test.

use crate::{ebpf, run_step};
use anyhow::Result;
use std::{path::Path, process::Command};

pub fn run(root: &Path, test_args: &[String]) -> Result<()> {
    run_step(
        "cargo fmt --check",
        cargo(root).args(["fmt", "--all", "--", "--check"]),
    )?;
    // Building anything of the agent builds the eBPF object first (build script).
    run_step(
        "clippy (host crates)",
        cargo(root).args([
            "clippy",
            "--locked",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let mut ebpf_clippy = Command::new("cargo");
    ebpf_clippy
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([&format!("+{}", ebpf::TOOLCHAIN), "clippy", "--locked"])
        .args([
            "--package",
            ebpf::CRATE,
            "--target",
            ebpf::TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(root.join("target/bpf-clippy"))
        .args(["--", "-D", "warnings"]);
    run_step("clippy (eBPF crate)", &mut ebpf_clippy)?;
    if !crate::setup::is_root() {
        eprintln!(
            "xtask: warning: not root — the namespace and BPF tests will fail; CI runs as root"
        );
    }
    run_step(
        "cargo test",
        cargo(root).args(["test", "--locked"]).args(test_args),
    )
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}
