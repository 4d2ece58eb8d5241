//! The pin directory on the BPF filesystem.

use anyhow::{Context, Result, bail};
use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

/// `f_type` of a mounted BPF filesystem (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the BPF filesystem is conventionally mounted.
const BPF_FS_MOUNT: &str = "/sys/fs/bpf";

/// A directory on the BPF filesystem holding exitd's pinned maps (top level) and program
/// links (`links/`).
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pin path of the map called `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Opens the pinned map called `name` of a running program.
    pub fn open_map(&self, name: &str) -> Result<aya::maps::Map> {
        let path = self.map(name);
        let data = aya::maps::MapData::from_pin(&path).with_context(|| {
            format!(
                "cannot open {} (is the forwarder attached?)",
                path.display()
            )
        })?;
        Ok(aya::maps::Map::from_map_data(data)?)
    }

    /// Directory of pinned program links.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Makes sure the directory exists on a BPF filesystem, mounting bpffs on /sys/fs/bpf
    /// when nothing is mounted there yet (as on a fresh machine).
    pub fn ensure(&self) -> Result<()> {
        let mount_point = Path::new(BPF_FS_MOUNT);
        if self.root.starts_with(mount_point) && !is_bpffs(mount_point)? {
            mount_bpffs(mount_point)?;
        }
        let existing = nearest_existing_ancestor(&self.root);
        if !is_bpffs(&existing)? {
            bail!(
                "pin directory {} is not on a BPF filesystem (mount one with \
                 `mount -t bpf bpf {}` or choose a directory under {BPF_FS_MOUNT})",
                self.root.display(),
                existing.display()
            );
        }
        fs::create_dir_all(self.links_dir())
            .with_context(|| format!("cannot create {}", self.links_dir().display()))
    }
}

fn nearest_existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))?;
    // SAFETY: statfs only writes into `stat`, which is large enough.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid out pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("statfs {}", path.display()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(mount_point: &Path) -> Result<()> {
    fs::create_dir_all(mount_point)
        .with_context(|| format!("cannot create {}", mount_point.display()))?;
    let target = CString::new(mount_point.as_os_str().as_encoded_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "the BPF filesystem is not mounted at {} and mounting it failed: {err} \
             (run as root, or mount it with `mount -t bpf bpf {}`)",
            mount_point.display(),
            mount_point.display()
        );
    }
    tracing::info!(path = %mount_point.display(), "mounted the BPF filesystem");
    Ok(())
}
