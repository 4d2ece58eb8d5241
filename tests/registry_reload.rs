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
fn answer(broker: &Broker, key: &str) -> (u64, Vec<u64>) {
    let (status, body) = get_config(&client(), &broker.url, key, NONCE, 1400);
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

fn sighup(broker: &Broker) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(broker.child.id() as i32, libc::SIGHUP) };
}

#[test]
fn sighup_applies_a_new_file_and_keeps_the_old_one_when_broken() {
    let dir = TempDir::new("reload");
    let (sec, _) = keygen(dir.path());
    let path = write_config(dir.path(), &sec, "", &registry(1300, "vie01"));
    let broker = Broker::start(&["--config", path.to_str().expect("utf-8")]);
    assert_eq!(answer(&broker, KEY), (1300, vec![1]), "node's own settings");
    let other = node_key(7);
    assert_eq!(
        answer(&broker, &other),
        (1375, vec![4, 1]),
        "other nodes: [parker] max_mtu, every PoP"
    );

    write_config(dir.path(), &sec, "", &registry(1350, "muc01"));
    sighup(&broker);
    exitd_testkit::poll_until(Duration::from_secs(20), || {
        (answer(&broker, KEY) == (1350, vec![4])).then_some(())
    })
    .expect("the new file applies after SIGHUP");

    // A value outside the item's schema: refused, the running settings stay.
    write_config(dir.path(), &sec, "", &registry(99, "vie01"));
    sighup(&broker);
    let why = exitd_testkit::poll_until(Duration::from_secs(20), || {
        broker
            .stderr
            .try_iter()
            .find(|l| l.contains("keeping the running configuration"))
    })
    .expect("the log says the reload failed");
    assert!(
        why.contains("parker.node, field mtu") && why.contains("below the minimum"),
        "{why}"
    );
    assert_eq!(answer(&broker, KEY), (1350, vec![4]));

    // Not even TOML.
    std::fs::write(&path, "[registry\n").expect("write");
    sighup(&broker);
    let why = exitd_testkit::poll_until(Duration::from_secs(20), || {
        broker
            .stderr
            .try_iter()
            .find(|l| l.contains("keeping the running configuration"))
    })
    .expect("the log says the reload failed");
    assert!(why.contains("invalid configuration"), "{why}");
    assert_eq!(answer(&broker, KEY), (1350, vec![4]));
    assert_eq!(answer(&broker, &other).0, 1375);
    broker.stop();
}
