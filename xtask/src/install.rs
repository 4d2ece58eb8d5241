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

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

    fn unit() -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join("packaging/exitd.service")).unwrap()
    }

    /// `systemd-analyze verify` accepts the unit as `cargo xtask install --prefix` writes it
    /// (verify checks that the binary is executable; /bin/true stands in for exitd).
    #[test]
    fn the_installed_unit_verifies() {
        let prefix = std::env::temp_dir().join(format!("exitd-unit-{}", std::process::id()));
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        let binary = prefix.join("bin/exitd");
        std::fs::copy("/bin/true", &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let unit_path = prefix.join("exitd.service");
        let text = unit().replace("/usr/local/", &format!("{}/", prefix.display()));
        std::fs::write(&unit_path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit_path)
            .output()
            .expect("systemd-analyze (cargo xtask setup installs systemd)");
        let _ = std::fs::remove_dir_all(&prefix);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Options that give the service its own mount namespace hide the namespaces exitd
    /// bind-mounts under /run/netns from the host (see the unit's comment).
    #[test]
    fn the_unit_keeps_the_host_mount_namespace() {
        let unit = unit();
        for option in [
            "ProtectSystem=",
            "ProtectHome=",
            "PrivateTmp=",
            "PrivateDevices=",
            "PrivateMounts=",
            "ReadWritePaths=",
            "ReadOnlyPaths=",
            "InaccessiblePaths=",
            "BindPaths=",
            "ProtectKernelModules=",
            "ProtectKernelTunables=",
            "ProtectKernelLogs=",
            "ProtectControlGroups=",
            "ProtectProc=",
            "TemporaryFileSystem=",
        ] {
            assert!(
                !unit.lines().any(|l| l.starts_with(option)),
                "{option} would detach the unit's mount namespace"
            );
        }
    }
}
