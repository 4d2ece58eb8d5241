//! `cargo xtask setup`: installs what building and testing exitd need on Debian 12.
//! Idempotent: every step checks first and skips what is already there.

use crate::{ebpf, run_step};
use anyhow::{Context, Result, bail};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Debian packages and why the project needs each.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip netns/veth for tests and the demo"),
    (
        "util-linux",
        "nsenter for running exitd inside test namespaces",
    ),
    ("bpftool", "inspecting programs and maps"),
    ("iputils-ping", "ping in tests and the demo"),
    (
        "nftables",
        "the kernel NAT baseline in tests and benchmarks",
    ),
    ("ethtool", "interface offload settings in tests"),
    (
        "tayga",
        "the userspace NAT64 baseline of `cargo xtask bench nat64`",
    ),
    ("curl", "a real HTTP client through the NAT in tests"),
    ("traceroute", "traceroute through the NAT in tests"),
    (
        "signify-openbsd",
        "verifying broker signatures like Parker nodes do",
    ),
    (
        "etcd-server",
        "the cluster's state store in tests and the demo",
    ),
    ("protobuf-compiler", "building the etcd client"),
    ("libprotobuf-dev", "building the etcd client"),
    (
        "systemd",
        "systemd-analyze verify checks the unit in xtask's tests",
    ),
];

/// Tools installed with `cargo install`: (crate, version, binary, why).
const CARGO_TOOLS: &[(&str, &str, &str, &str)] = &[(
    "boringtun-cli",
    "0.7.1",
    "boringtun-cli",
    "userspace WireGuard for tests (this kernel has no WireGuard module)",
)];

pub fn run(root: &Path, check_only: bool) -> Result<()> {
    let mut missing = Vec::new();
    apt_packages(check_only, &mut missing)?;
    rust_src(root, check_only, &mut missing)?;
    bpf_linker(check_only, &mut missing)?;
    cargo_tools(check_only, &mut missing)?;
    if check_only && !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    println!("setup: everything is in place");
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let absent: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(p, _)| !apt_installed(p))
        .map(|(p, _)| *p)
        .collect();
    if absent.is_empty() {
        println!("setup: apt packages present");
        return Ok(());
    }
    if check_only {
        missing.extend(absent.iter().map(|p| format!("apt package {p}")));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt packages missing: {} — run `cargo xtask setup` as root to install them",
            absent.join(" ")
        );
    }
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&absent);
    run_step(&format!("apt-get install {}", absent.join(" ")), &mut cmd).with_context(|| {
        let why: Vec<String> = APT_PACKAGES
            .iter()
            .filter(|(p, _)| absent.contains(p))
            .map(|(p, why)| format!("{p} ({why})"))
            .collect();
        format!("could not install: {}", why.join(", "))
    })?;
    // etcd-server's package starts a system etcd on 127.0.0.1:2379; tests start their own
    // on other ports, and the system one is not needed.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "etcd"])
        .output();
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("cannot run rustc")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing; the eBPF crate needs it \
             (`rustup toolchain install nightly --profile minimal`)"
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src(root: &Path, check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let library = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if library.is_file() {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    if check_only {
        missing.push("nightly rust-src".into());
        return Ok(());
    }
    let added = run_step(
        "rustup component add rust-src --toolchain nightly",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    );
    if added.is_ok() && library.is_file() {
        return Ok(());
    }
    eprintln!("setup: rustup could not add rust-src; trying the copy in ../shared/toolchain");
    install_rust_src_from_copy(root, &sysroot)?;
    if !library.is_file() {
        bail!(
            "rust-src for nightly is still missing at {}",
            library.display()
        );
    }
    Ok(())
}

/// Unpacks the project's fallback copy of this exact nightly's rust-src after checking its
/// checksum and that it belongs to the installed nightly.
fn install_rust_src_from_copy(root: &Path, sysroot: &Path) -> Result<()> {
    let dir = root.join("../shared/toolchain");
    let commit = ebpf::nightly_commit().map_err(anyhow::Error::msg)?;
    let tarball = std::fs::read_dir(&dir)
        .with_context(|| format!("no fallback rust-src: cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rust-src-") && n.contains(&commit))
        })
        .with_context(|| format!("no rust-src copy for nightly {commit} in {}", dir.display()))?;
    let mut check = Command::new("sha256sum");
    check
        .current_dir(&dir)
        .args(["--check", "--ignore-missing", "SHA256SUMS"]);
    run_step("checking the rust-src copy", &mut check)?;
    let target = sysroot.join("lib/rustlib");
    run_step(
        "unpacking rust-src",
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&target),
    )
}

fn bpf_linker(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let commit = ebpf::nightly_commit().map_err(anyhow::Error::msg)?;
    let root = ebpf::bpf_linker_root(&commit);
    let binary = root.join("bin/bpf-linker");
    let works = Command::new(&binary)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        println!("setup: bpf-linker present ({})", binary.display());
        return Ok(());
    }
    if check_only {
        missing.push(format!("bpf-linker at {}", binary.display()));
        return Ok(());
    }
    // bpf-linker needs an LLVM matching rustc's; Debian has none new enough, so it is
    // linked against the nightly's own libLLVM (a shared object in its sysroot).
    let sysroot = nightly_sysroot()?;
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .context("the nightly toolchain ships no libLLVM.so to build bpf-linker against")?;
    let lib_dir = root.join("lib");
    std::fs::create_dir_all(&lib_dir)?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib_dir.join("libLLVM.so"), lib_dir.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    let llvm_major = file_name
        .to_string_lossy()
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", &root)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["install", "bpf-linker", "--version", "0.13.0", "--locked"])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .arg("--root")
        .arg(&root);
    run_step(
        "building bpf-linker against the nightly's libLLVM",
        &mut cmd,
    )
    .context("could not install bpf-linker")
}

fn cargo_tools(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    for (krate, version, binary, why) in CARGO_TOOLS {
        let present = Command::new(binary)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if present {
            println!("setup: {binary} present");
            continue;
        }
        if check_only {
            missing.push(format!("{binary} ({why})"));
            continue;
        }
        let mut cmd = Command::new("cargo");
        cmd.env_remove("CARGO_TARGET_DIR").args([
            "install",
            krate,
            "--version",
            version,
            "--locked",
        ]);
        run_step(&format!("cargo install {krate} ({why})"), &mut cmd)
            .with_context(|| format!("could not install {krate}, needed for {why}"))?;
    }
    Ok(())
}
