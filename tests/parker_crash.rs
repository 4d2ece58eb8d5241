//! Crash safety of the embedded IPAM for real: `exitd broker` allocates for several
//! concurrent clients, is killed with SIGKILL mid-run (allocations in flight), restarted, and
//! every allocation it had acknowledged must come back unchanged, none twice, and new nodes
//! must not receive an acknowledged prefix.

#[path = "parker_common.rs"]
mod common;

use common::*;
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

type Acked = Arc<Mutex<HashMap<String, String>>>;

/// Clients allocating fresh keys until the broker disappears.
fn hammer(
    url: &str,
    next: &Arc<AtomicU64>,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (url, next, acked, stop) =
                (url.to_string(), next.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    let key = node_key(next.fetch_add(1, Ordering::Relaxed));
                    let url = format!(
                        "{url}/config?pubkey={}&nonce=1&v6mtu=1400",
                        encode_key(&key)
                    );
                    let Ok(resp) = http.get(url).send() else {
                        break;
                    };
                    let Ok(body) = resp.text() else { break };
                    let range6 = config_json(&body)["range6"]
                        .as_str()
                        .expect("range6")
                        .to_string();
                    acked.lock().expect("lock").insert(key, range6);
                }
            })
        })
        .collect()
}

#[test]
fn kill_9_mid_allocation_loses_and_duplicates_nothing() {
    let dir = TempDir::new("crash");
    let (sec, _) = keygen(dir.path());
    let config = write_config(dir.path(), &sec, "", "");
    let args = ["--config", config.to_str().expect("utf-8")];
    let acked: Acked = Arc::default();
    let next = Arc::new(AtomicU64::new(1));

    for round in 1..=3 {
        let broker = Broker::start(&args);
        let stop = Arc::new(AtomicBool::new(false));
        let target = round * 300;
        let threads = hammer(&broker.url, &next, &acked, &stop);
        let reached = exitd_testkit::poll_until(Duration::from_secs(120), || {
            (acked.lock().expect("lock").len() >= target).then_some(())
        });
        assert!(reached.is_some(), "round {round}: allocations too slow");
        broker.crash(); // SIGKILL while the clients keep allocating
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("client thread");
        }

        let broker = Broker::start(&args);
        let http = client();
        let acked_now = acked.lock().expect("lock").clone();
        for (key, range6) in &acked_now {
            let (status, body) = get_config(&http, &broker.url, key, "1", 1400);
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                config_json(&body)["range6"].as_str(),
                Some(range6.as_str()),
                "round {round}: {key} lost its prefix"
            );
        }
        let distinct: HashSet<&String> = acked_now.values().collect();
        assert_eq!(
            distinct.len(),
            acked_now.len(),
            "round {round}: a prefix was handed out twice"
        );
        for _ in 0..20 {
            let key = node_key(next.fetch_add(1, Ordering::Relaxed));
            let (status, body) = get_config(&http, &broker.url, &key, "1", 1400);
            assert_eq!(status, 200);
            let range6 = config_json(&body)["range6"]
                .as_str()
                .expect("range6")
                .to_string();
            assert!(
                !distinct.contains(&range6),
                "new node got acknowledged prefix {range6}"
            );
            acked.lock().expect("lock").insert(key, range6);
        }
        broker.stop();
    }
}
