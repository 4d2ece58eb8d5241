//! Builds the eBPF object and hands its path to the crate, which embeds it: the `exitd`
//! binary is self-contained. `EXITD_EBPF_OBJ` may point at a prebuilt object instead.

#[path = "../xtask/src/ebpf.rs"]
#[allow(dead_code)]
mod ebpf;

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=EXITD_EBPF_OBJ");
    println!("cargo:rerun-if-env-changed=BPF_LINKER");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("agent/ is inside the workspace");
    for dir in ["ebpf/exitd-ebpf", "ebpf/exitd-common", "xtask/src/ebpf.rs"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let object = match env::var_os("EXITD_EBPF_OBJ") {
        Some(path) => PathBuf::from(path),
        None => match ebpf::build(root) {
            Ok(path) => path,
            Err(why) => {
                eprintln!(
                    "error: the eBPF object could not be built: {why}\n\
                     Run `cargo xtask setup` (nightly rust-src, bpf-linker) and then \
                     `cargo xtask build-ebpf`, or set EXITD_EBPF_OBJ to a prebuilt object."
                );
                std::process::exit(1);
            }
        },
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("exitd-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        eprintln!(
            "error: cannot copy the eBPF object {}: {e}; run `cargo xtask build-ebpf`",
            object.display()
        );
        std::process::exit(1);
    }
}
