//! Parker with shared state in a real etcd (`/usr/bin/etcd`, started here on loopback): two
//! real `exitd broker` processes sharing the etcd IPAM, hammered by real HTTP clients, their
//! answers verified with `signify-openbsd`.

#[path = "parker_common.rs"]
mod common;

use common::*;
use exitd_testkit::Etcd;
use ipnet::Ipv6Net;
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Barrier,
};

const NONCE: &str = "00112233445566778899aabbccddeeff";
const PARENT: &str = "2001:db8:ed0::/48";

/// A broker configuration using the etcd IPAM (and, with `discovery`, `[parker.etcd]`).
fn etcd_broker_config(dir: &Path, name: &str, etcd: &Etcd, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[parker]\nlisten = \"127.0.0.1:0\"\nsigning_key_file = {:?}\n\
         rate_limit = {{ per_second = 0.0 }}\n{extra}\n\
         [parker.ipam]\nbackend = \"etcd\"\nparent = \"{PARENT}\"\n\
         [parker.ipam.etcd]\nendpoints = [\"{}\"]\nprefix = \"/exitd/t/parker/\"\n{CONCENTRATORS}\n",
        dir.join("broker.sec"),
        etcd.endpoint(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_broker(config: &Path) -> Broker {
    Broker::start(&["--config", config.to_str().expect("utf-8 path")])
}

/// range6 of a successful answer (None for anything else).
fn range6(status: u16, body: &str) -> Option<Ipv6Net> {
    (status == 200).then_some(())?;
    config_json(body)["range6"].as_str()?.parse().ok()
}

/// Every key fetched once, all at the same moment, key i from `urls[i % urls.len()]`.
fn fetch_all(urls: &[String], keys: &[String], threads: usize) -> BTreeMap<String, (u16, String)> {
    let barrier = Barrier::new(threads);
    let chunks: Vec<&[String]> = keys.chunks(keys.len().div_ceil(threads)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(t, chunk)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let http = client();
                    barrier.wait();
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, key)| {
                            let url = &urls[(t + i) % urls.len()];
                            (key.clone(), get_config(&http, url, key, NONCE, 1400))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    })
}

#[test]
fn two_brokers_share_the_etcd_ipam_without_duplicates() {
    let etcd = Etcd::start().expect("etcd");
    let dir = TempDir::new("pcluster");
    keygen(dir.path());
    let a = start_broker(&etcd_broker_config(dir.path(), "a", &etcd, ""));
    let b = start_broker(&etcd_broker_config(dir.path(), "b", &etcd, ""));
    let urls = vec![a.url.clone(), b.url.clone()];
    let keys: Vec<String> = (0..500).map(|n| node_key(7_000 + n)).collect();

    let first = fetch_all(&urls, &keys, 50);
    let mut prefixes = HashSet::new();
    let parent: Ipv6Net = PARENT.parse().expect("parent");
    for (key, (status, body)) in &first {
        let range = range6(*status, body).unwrap_or_else(|| panic!("{key}: {status} {body}"));
        assert!(parent.contains(&range), "{range} outside {parent}");
        assert!(prefixes.insert(range), "{range} handed out twice");
    }
    assert_eq!(prefixes.len(), 500);
    for (i, url) in urls.iter().enumerate() {
        let (_, body) = get_config(&client(), url, &keys[i], NONCE, 1400);
        verify_with_signify(&dir, &body).expect("signify verifies both brokers' answers");
    }

    // Again, each key from the other broker than the first time, concurrently.
    let swapped = vec![b.url.clone(), a.url.clone()];
    let again = fetch_all(&swapped, &keys, 50);
    for (key, (status, body)) in &again {
        let (s0, b0) = &first[key];
        assert_eq!(
            range6(*status, body),
            range6(*s0, b0),
            "{key} got another prefix from the other broker"
        );
    }
}
