//! Pieces shared by the integration tests that build an exit node with `exitd apply`
//! (included with `mod common;`; not every test uses every piece).
#![allow(dead_code)]

use std::{
    path::Path,
    process::{Child, Output},
    sync::{Arc, Mutex},
};

/// Fails with the command's stderr and stdout unless it succeeded.
pub fn assert_success(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "{what:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Stops the boringtun processes exitd started in a run (the pids it recorded in the run's
/// `state*` directories), deletes the run's namespaces (named with `prefix`) and its files.
pub fn clean_run(dir: &Path, prefix: &str) {
    for state in ["state", "remote-state"] {
        exitd_testkit::cluster_lab::stop_recorded_processes(&dir.join(state));
    }
    for name in exitd::netlink::netns::list() {
        if name.starts_with(prefix) {
            let _ = exitd::netlink::netns::delete(&name);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every line `child` logs to stderr (which must be piped), collected as it comes.
pub fn collect_logs(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The upstream router of an exit node (185.69.166.1 on `port0`, toward the host's `upl0`)
/// and an internet host at `internet_addr`/24 behind it (`port1` ═ `eth0`). Both send
/// without checksum offload, as a real router's forwarded traffic arrives (a veth would
/// otherwise hand XDP partial checksums).
pub fn wire_upstream(
    upstream: &exitd_testkit::NetNs,
    host: &exitd_testkit::NetNs,
    internet: &exitd_testkit::NetNs,
    internet_addr: &str,
) {
    use exitd_testkit::veth_pair;
    veth_pair(upstream, "port0", host, "upl0").unwrap();
    veth_pair(upstream, "port1", internet, "eth0").unwrap();
    upstream
        .ip(&["addr", "add", "185.69.166.1/24", "dev", "port0"])
        .unwrap();
    upstream
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "port1"])
        .unwrap();
    upstream.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let with_prefix = format!("{internet_addr}/24");
    internet
        .ip(&["addr", "add", &with_prefix, "dev", "eth0"])
        .unwrap();
    internet
        .ip(&["route", "add", "default", "via", "198.51.100.1"])
        .unwrap();
    for (ns, dev) in [(upstream, "port0"), (upstream, "port1"), (internet, "eth0")] {
        ns.exec("ethtool", &["-K", dev, "tx", "off"]).unwrap();
    }
}
