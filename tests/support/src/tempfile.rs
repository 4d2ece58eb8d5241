//! Temporary files for configurations and keys, removed on drop.

use std::path::{Path, PathBuf};

/// A file in the temp directory with a unique name, deleted on drop.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a new unique file ending in `.{ext}`.
    pub fn with_text(ext: &str, text: &str) -> TempFile {
        let name = format!("{}.{ext}", crate::unique_name("exitd-test-"));
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).expect("the temp directory is writable");
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
