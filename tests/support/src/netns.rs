//! Network namespaces that delete themselves.

use anyhow::{Context, Result, bail};
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
};

/// A named network namespace (`ip netns add`), deleted on drop, also during a panic's
/// unwinding. Deleting it removes every interface inside, so veth peers go with it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named from `prefix` plus a unique suffix, with `lo` up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        sweep_stale();
        let name = netns_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with exactly `name` (for names a program under test derives
    /// itself, e.g. exitd's gateway namespace); fails if it exists already.
    pub fn named(name: &str) -> Result<NetNs> {
        if PathBuf::from("/run/netns").join(name).exists() {
            bail!("network namespace {name} exists already");
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, usable with `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME ARGS…` and fails with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// A command that runs `program` inside this namespace. It uses `nsenter --net` rather
    /// than `ip netns exec` on purpose: only the network namespace changes, so the program
    /// sees the host's /sys/fs/bpf and its pins.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program ARGS…` in the namespace; fails with its output if it exits non-zero.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program).args(args))
    }

    /// Runs `f` on a new thread that has entered this namespace, so sockets it opens and
    /// ifindexes it resolves belong there; returns what `f` returns. `f` may borrow.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in(&self.path(), f)
    }

    /// Adds the routes `exitd plan upstream` printed (one per line, `#` comments) as an
    /// operator would type them into the upstream router; returns them without comments.
    pub fn add_upstream_routes(&self, printed: &str) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for line in printed.lines() {
            let route: Vec<&str> = line
                .split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if !route.is_empty() {
                self.ip(&[&["-6", "route", "replace"][..], &route].concat())?;
                added.push(route.join(" "));
            }
        }
        Ok(added)
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv6.conf.all.forwarding`, `0`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair: `a_name` in `a`, `b_name` in `b`, both up.
pub fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]))?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Runs `f` on a new thread that has entered the network namespace at `path`
/// (`/run/netns/NAME`); returns what `f` returns. `f` may borrow.
pub fn run_in<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns_file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result.context("setns into the test namespace"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs a command, returning its output, or an error with its stderr if it failed.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// Deletes namespaces left behind by test processes that were killed before they could
/// clean up (their names end in `{pid}x{n}` of a process that no longer exists).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            let ours = pid == std::process::id();
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !ours && !alive {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    }
}

/// Namespace names are `xt-{prefix}-{pid}-{n}` so stale ones can be recognised.
fn netns_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("xt-{prefix}-{}-{n}", std::process::id())
}

/// The pid part of a name made by `netns_name`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("xt-")?;
    let mut parts = rest.rsplitn(3, '-');
    parts.next()?.parse::<u32>().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_is_parsed_only_from_test_names() {
        assert_eq!(owner_pid("xt-gw1-1234-7"), Some(1234));
        assert_eq!(owner_pid("xt-a-b-1234-7"), Some(1234));
        assert_eq!(owner_pid("production"), None);
        assert_eq!(owner_pid("xt-gw-7"), None);
    }
}
