//! `cargo xtask install`: builds exitd in release mode and installs the binary, the systemd
//! unit and the example configuration (never overwriting an existing configuration).

use crate::run_step;
use anyhow::{Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Where files go below `dest_dir` (a staging root, `/` for the real system).
struct Layout {
    binary: PathBuf,
    unit: PathBuf,
    config: PathBuf,
    doc: PathBuf,
}

impl Layout {
    fn under(dest_dir: &Path, prefix: &Path) -> Layout {
        let rel = |p: &Path| dest_dir.join(p.strip_prefix("/").unwrap_or(p));
        Layout {
            binary: rel(&prefix.join("bin/exitd")),
            unit: rel(Path::new("/etc/systemd/system/exitd.service")),
            config: rel(Path::new("/etc/exitd/exitd.toml")),
            doc: rel(&prefix.join("share/doc/exitd/README.md")),
        }
    }
}

pub fn run(root: &Path, dest_dir: &Path, prefix: &Path, skip_build: bool) -> Result<()> {
    if !skip_build {
        run_step(
            "building exitd (release)",
            Command::new("cargo").current_dir(root).args([
                "build",
                "--release",
                "--package",
                "exitd",
            ]),
        )?;
    }
    let layout = Layout::under(dest_dir, prefix);
    let binary = root.join("target/release/exitd");
    copy(&binary, &layout.binary, 0o755)?;
    let unit = std::fs::read_to_string(root.join("packaging/exitd.service"))?
        .replace("/usr/local/", &format!("{}/", prefix.display()));
    write(&layout.unit, &unit, 0o644)?;
    copy(&root.join("README.md"), &layout.doc, 0o644)?;
    if layout.config.exists() {
        println!("kept the existing {}", layout.config.display());
    } else {
        copy(&root.join("packaging/exitd.toml"), &layout.config, 0o640)?;
    }
    println!(
        "installed; next: edit {}, then `systemctl daemon-reload && systemctl enable --now exitd`",
        layout.config.display()
    );
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(from)
        .with_context(|| format!("cannot read {} (build it first)", from.display()))?;
    write_bytes(to, &bytes, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

/// Writes through a temporary file and a rename, so a running binary is replaced, not
/// rewritten in place.
fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = to.parent().context("install path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = to.with_extension("exitd-new");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot install {}", to.display()))?;
    println!("installed {}", to.display());
    Ok(())
}
