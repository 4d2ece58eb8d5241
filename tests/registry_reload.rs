//! SIGHUP reload of the real `exitd broker`: the per-node answer (mtu cap, PoPs) comes from
//! the registry; a rewritten file takes effect after SIGHUP, a broken one leaves the running
//! configuration in place and the log says why.

#[path = "parker_common.rs"]
mod common;

use common::*;
use std::time::Duration;

const NONCE: &str = "00112233445566778899aabbccddeeff";
const KEY: &str = "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E=";

fn registry(mtu: u32, pop: &str) -> String {
    format!(
        "[registry.nodes.\"{KEY}\"]\n\"parker.node\" = {{ mtu = {mtu} }}\n\
         \"parker.concentrator\" = [{{ pop = \"{pop}\" }}]\n"
    )
}

/// (mtu, concentrator ids) of the answer for `key`.
fn answer(url: &str, key: &str) -> (u64, Vec<u64>) {
    let (status, body) = get_config(&client(), url, key, NONCE, 1400);
    assert_eq!(status, 200, "{body}");
    let json = config_json(&body);
    let ids = json["concentrators"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .collect();
    (json["mtu"].as_u64().expect("mtu"), ids)
}

fn sighup(child: &std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
}

/// The next log line saying a reload was refused.
fn refused_reload(log: &std::sync::mpsc::Receiver<String>) -> String {
    exitd_testkit::poll_until(Duration::from_secs(20), || {
        log.try_iter()
            .find(|l| l.contains("keeping the running configuration"))
    })
    .expect("the log says the reload failed")
}

/// Rewrites the file, sends SIGHUP and waits until `KEY`'s answer is `expected`.
fn reload_to(
    child: &std::process::Child,
    url: &str,
    write: impl FnOnce(),
    expected: (u64, Vec<u64>),
) {
    write();
    sighup(child);
    exitd_testkit::poll_until(Duration::from_secs(20), || {
        (answer(url, KEY) == expected).then_some(())
    })
    .unwrap_or_else(|| panic!("after SIGHUP the answer becomes {expected:?}"));
}

#[test]
fn sighup_applies_a_new_file_and_keeps_the_old_one_when_broken() {
    let dir = TempDir::new("reload");
    let (sec, _) = keygen(dir.path());
    let path = write_config(dir.path(), &sec, "", &registry(1300, "vie01"));
    let broker = Broker::start(&["--config", path.to_str().expect("utf-8")]);
    let url = broker.url.as_str();
    assert_eq!(answer(url, KEY), (1300, vec![1]), "node's own settings");
    let other = node_key(7);
    assert_eq!(
        answer(url, &other),
        (1375, vec![4, 1]),
        "other nodes: [parker] max_mtu, every PoP"
    );
    let new_file = || {
        write_config(dir.path(), &sec, "", &registry(1350, "muc01"));
    };
    reload_to(&broker.child, url, new_file, (1350, vec![4]));

    // A value outside the item's schema: refused, the running settings stay.
    write_config(dir.path(), &sec, "", &registry(99, "vie01"));
    sighup(&broker.child);
    let why = refused_reload(&broker.stderr);
    assert!(
        why.contains("parker.node, field mtu") && why.contains("below the minimum"),
        "{why}"
    );
    assert_eq!(answer(url, KEY), (1350, vec![4]));

    // Not even TOML.
    std::fs::write(&path, "[registry\n").expect("write");
    sighup(&broker.child);
    let why = refused_reload(&broker.stderr);
    assert!(why.contains("invalid configuration"), "{why}");
    assert_eq!(answer(url, KEY), (1350, vec![4]));
    assert_eq!(answer(url, &other).0, 1375);
    broker.stop();
}

/// The same inside `exitd run` (root: the daemon manages the data plane).
#[test]
fn exitd_run_reloads_the_broker_on_sighup() {
    exitd_testkit::require_root();
    let dir = TempDir::new("run-reload");
    let (sec, _) = keygen(dir.path());
    let path = write_config(dir.path(), &sec, "", &registry(1300, "vie01"));
    let mut child = std::process::Command::new(EXITD)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn exitd run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let addr = exitd_testkit::poll_until(Duration::from_secs(30), || {
        log.try_iter().find_map(|l| {
            l.contains("Parker broker listening")
                .then(|| l.split("addr=").nth(1).map(|a| a.trim().to_string()))
                .flatten()
        })
    });
    let url = format!("http://{}", addr.expect("the daemon announced the broker"));
    assert_eq!(answer(&url, KEY), (1300, vec![1]));
    let new_file = || {
        write_config(dir.path(), &sec, "", &registry(1350, "muc01"));
    };
    reload_to(&child, &url, new_file, (1350, vec![4]));
    std::fs::write(&path, "[parker]\nmax_mtu = 1\n").expect("write");
    sighup(&child);
    let why = refused_reload(&log);
    assert!(why.contains("max_mtu"), "{why}");
    assert_eq!(
        answer(&url, KEY),
        (1350, vec![4]),
        "still running, old settings"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
