//! Pin directories for tests, removed (and with them their links) on drop.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A unique directory under /sys/fs/bpf; dropping it unpins everything inside, which
/// detaches the programs whose links were pinned there.
#[derive(Debug)]
pub struct TestPins {
    dir: PathBuf,
}

impl TestPins {
    pub fn new() -> Result<TestPins> {
        ensure_bpffs()?;
        let dir =
            PathBuf::from("/sys/fs/bpf").join(format!("exitd-test-{}", crate::unique_name("p")));
        Ok(TestPins { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Mounts the BPF filesystem on /sys/fs/bpf unless it is mounted already.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    crate::netns::run(std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .map(drop)
}
