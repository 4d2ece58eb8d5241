//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and running code
//! inside one. A netlink socket belongs to the namespace of the thread that opened it, so
//! every namespace gets its own thread, runtime and connection.

use anyhow::{Context, Result, bail};
use std::{
    ffi::CString,
    fs::File,
    future::Future,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of all named namespaces.
pub fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).context("path contains NUL")
}

/// mount(2) without a file system type or data; true on success.
fn mount(source: &CString, target: &CString, flags: libc::c_ulong) -> bool {
    let none = c"none";
    // SAFETY: valid NUL-terminated strings that outlive the call; no data argument.
    unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        ) == 0
    }
}

/// Like iproute2: /run/netns is a shared mount, so namespaces mounted there are visible in
/// mount namespaces created later.
fn prepare_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("cannot create {NETNS_DIR}"))?;
    let dir = cstr(Path::new(NETNS_DIR))?;
    let none = CString::new("none")?;
    let shared = libc::MS_SHARED | libc::MS_REC;
    if mount(&none, &dir, shared) {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself, then make it shared. Best effort: without
    // it namespaces still work in this mount namespace.
    mount(&dir, &dir, libc::MS_BIND | libc::MS_REC);
    mount(&none, &dir, shared);
    Ok(())
}

/// Creates the namespace `name` (a new network namespace bind-mounted at /run/netns/NAME).
pub fn create(name: &str) -> Result<()> {
    crate::iface::validate_name(name).or_else(|_| check_file_name(name))?;
    prepare_dir()?;
    let target = path(name);
    File::create(&target).with_context(|| format!("cannot create {}", target.display()))?;
    let target_c = cstr(&target)?;
    let result = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare affects this thread only; it is not reused afterwards.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let source = CString::new(format!("/proc/self/task/{tid}/ns/net"))?;
        if !mount(&source, &target_c, libc::MS_BIND) {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
    .join();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            let _ = std::fs::remove_file(&target);
            Err(err).with_context(|| format!("cannot create network namespace {name}"))
        }
        Err(_) => bail!("namespace creation thread panicked"),
    }
}

fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{name:?} cannot be a namespace name");
    }
    Ok(())
}

/// Deletes the namespace `name`; its interfaces go with it once nothing else holds it.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    let c = cstr(&target)?;
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_file(&target).with_context(|| format!("cannot remove {}", target.display()))
}

/// Runs `f` on a new thread inside namespace `name` (or exitd's own namespace for `None`),
/// with a single-threaded tokio runtime, and returns its result.
pub fn run_in<T, F, Fut>(name: Option<&str>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let ns_file = match name {
        Some(name) => Some(
            File::open(path(name))
                .with_context(|| format!("network namespace {name} does not exist"))?,
        ),
        None => None,
    };
    let label = name.unwrap_or("(own)").to_string();
    let handle = std::thread::spawn(move || -> Result<T> {
        if let Some(file) = ns_file {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot enter network namespace {label}"));
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(f())
    });
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Opens a netlink connection in the calling thread's namespace and drives it on the
/// current runtime.
pub fn connect() -> Result<rtnetlink::Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Writes a sysctl of the calling thread's namespace (`/proc/sys/net/...` follows the
/// opener's namespace) if it differs; true if it changed.
pub fn set_sysctl(key: &str, value: &str) -> Result<bool> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    let current = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&file, value).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(true)
}
