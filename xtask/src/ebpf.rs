//! Building the eBPF object. Shared by `cargo xtask build-ebpf` and the agent's build script
//! (included there with `#[path]`), so both build it exactly the same way. std only.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The BPF target; little-endian like every machine exitd runs on.
pub const TARGET: &str = "bpfel-unknown-none";
/// Toolchain that builds the eBPF crate (`-Z build-std` needs nightly).
pub const TOOLCHAIN: &str = "nightly";
/// Name of the eBPF crate and of its object file.
pub const CRATE: &str = "exitd-ebpf";

/// Environment a parent cargo (or clippy) sets that must not leak into the nested nightly
/// build: it would select the wrong compiler, wrapper, flags or target directory.
const LEAKING_ENV: &[&str] = &[
    "CARGO",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
    "CARGO_PRIMARY_PACKAGE",
];

/// Where `cargo xtask setup` installs bpf-linker: it links against the nightly's own
/// libLLVM, so the install directory is keyed by that nightly's commit.
pub fn bpf_linker_root(nightly_commit: &str) -> PathBuf {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    cargo_home
        .join("exitd")
        .join(format!("bpf-linker-{nightly_commit}"))
}

/// Short commit hash of the installed nightly (`rustc +nightly -vV`), or why it is unknown.
pub fn nightly_commit() -> Result<String, String> {
    let out = Command::new("rustc")
        .args([&format!("+{TOOLCHAIN}"), "-vV"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .map_err(|e| format!("cannot run `rustc +{TOOLCHAIN}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the `{TOOLCHAIN}` toolchain is not installed (`rustc +{TOOLCHAIN} -vV` failed)"
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("commit-hash: "))
        .map(|h| h.chars().take(9).collect())
        .ok_or_else(|| "`rustc +nightly -vV` printed no commit-hash".to_string())
}

/// The bpf-linker to use: `$BPF_LINKER`, else the one `cargo xtask setup` installed.
pub fn bpf_linker() -> Result<PathBuf, String> {
    if let Some(path) = env::var_os("BPF_LINKER") {
        return Ok(PathBuf::from(path));
    }
    let linker = bpf_linker_root(&nightly_commit()?)
        .join("bin")
        .join("bpf-linker");
    if linker.is_file() {
        Ok(linker)
    } else {
        Err(format!(
            "bpf-linker is not installed at {} (it must be built against this nightly's libLLVM)",
            linker.display()
        ))
    }
}

/// Path of the built object for a workspace rooted at `root`.
pub fn object_path(root: &Path) -> PathBuf {
    root.join("target/bpf").join(TARGET).join("bpf").join(CRATE)
}

/// Builds the eBPF object with BTF and returns its path. Cargo's own fingerprinting makes a
/// rebuild of unchanged sources a no-op (about a second).
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let linker = bpf_linker()?;
    let mut cmd = Command::new("cargo");
    for var in LEAKING_ENV {
        cmd.env_remove(var);
    }
    // BTF needs debug info; `--btf` makes bpf-linker emit the .BTF section that makes maps
    // readable in `bpftool map dump`.
    cmd.current_dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", {
            let flags = [
                "-Cdebuginfo=2".to_string(),
                "-Clink-arg=--btf".to_string(),
                format!("-Clinker={}", linker.display()),
            ];
            flags.join("\x1f")
        })
        .args([
            &format!("+{TOOLCHAIN}"),
            "build",
            "--package",
            CRATE,
            "--profile",
            "bpf",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target/bpf"));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo +{TOOLCHAIN}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo +{TOOLCHAIN} build --package {CRATE} --target {TARGET}` failed ({status})"
        ));
    }
    let object = object_path(root);
    if object.is_file() {
        Ok(object)
    } else {
        Err(format!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        ))
    }
}
