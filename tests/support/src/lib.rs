//! Test harness for exitd: RAII network namespaces and veth links that are removed even when
//! a test panics, pin directories on the BPF filesystem, a BPF_PROG_TEST_RUN helper and
//! hand-built packets. Names are unique per process and call, so tests run in parallel.
//!
//! Everything here needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF), as CI has.

pub mod cluster_lab;
pub mod etcd;
pub mod netns;
pub mod packet;
pub mod packet4;
pub mod packet6;
pub mod pins;
pub mod process;
pub mod proxy;
pub mod tempfile;
pub mod testrun;

pub use etcd::Etcd;
pub use netns::{NetNs, veth_pair};
pub use pins::TestPins;
pub use tempfile::TempFile;
pub use testrun::{XdpRun, run_tc, run_xdp, run_xdp_on};

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique to this process and call: `{prefix}{pid % 100000}x{n}`.
///
/// Kept short because interface names derived from it must fit in 15 bytes.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Fails with a clear message when not running as root, which every netns/BPF test needs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, BPF); run it as root, as CI does"
    );
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, for writing map
/// entries with timestamps as a program would.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
