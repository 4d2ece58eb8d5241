//! The broker's side of the shared etcd state (`[parker.etcd]`): it follows the concentrators'
//! keys (data, PoP, id, weight and peer count on each concentrator's lease, so a dead
//! concentrator disappears when its lease expires), counts the live brokers for the
//! interpolation step, registers itself among them, and announces nodes to the
//! concentrators when it answers their `/config`.
//!
//! The configured `[[parker.concentrators]]` are the seed: they are offered (as standalone
//! mode does) until the first successful read of etcd; from then on etcd decides. While etcd
//! is unreachable the broker keeps the last state it saw.

use super::{
    Concentrators, WorkerData,
    etcd::{self, Announcement, ConcentratorReport, EtcdSpace, Update},
    select::WorkerSpec,
    unix_now,
};
use anyhow::Result;
use etcd_client::Client;
use ipnet::Ipv6Net;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{OnceCell, watch};

/// Started with the broker when `[parker.etcd]` is configured.
pub struct Discovery {
    space: EtcdSpace,
    client: Arc<OnceCell<Client>>,
    announcer: Announcer,
    /// Keeps the broker's own registration alive (its lease is revoked when dropped).
    _registration: watch::Sender<Vec<u8>>,
}

impl Discovery {
    /// Connects in the background (retrying) and starts following etcd; needs a runtime.
    pub fn start(
        space: EtcdSpace,
        concentrators: Arc<Concentrators>,
        announce_interval: Duration,
        broker_name: String,
    ) -> Discovery {
        let client = Arc::new(OnceCell::new());
        let (registration, value) = watch::channel(Vec::new());
        tokio::spawn(run(
            space.clone(),
            Arc::clone(&client),
            concentrators,
            broker_name,
            value,
        ));
        Discovery {
            announcer: Announcer::new(announce_interval),
            space,
            client,
            _registration: registration,
        }
    }

    /// Tells the concentrators about a node that just got its configuration (rate-limited
    /// per node; never delays the answer, a failure is logged).
    pub fn announce(&self, pubkey: &str, prefix: Ipv6Net, selected: &[String]) {
        let Some(client) = self.client.get().cloned() else {
            tracing::debug!(pubkey, "etcd not connected yet; node not announced");
            return;
        };
        if !self.announcer.due(pubkey, prefix, selected) {
            return;
        }
        let announcement = Announcement {
            prefix,
            selected: selected.to_vec(),
            announced: unix_now(),
        };
        let key = format!("{}{pubkey}", self.space.peers());
        let space = self.space.clone();
        tokio::spawn(async move {
            let mut client = client;
            let Ok(value) = serde_json::to_vec(&announcement) else {
                return;
            };
            if let Err(e) = etcd::within(&space, client.put(key.as_str(), value, None)).await {
                tracing::warn!(key, error = %format!("{e:#}"), "cannot announce the node");
            }
        });
    }
}

async fn run(
    space: EtcdSpace,
    cell: Arc<OnceCell<Client>>,
    concentrators: Arc<Concentrators>,
    broker_name: String,
    registration: watch::Receiver<Vec<u8>>,
) {
    let client = connect_until_done(&space).await;
    let _ = cell.set(client.clone());
    let key = format!("{}{broker_name}", space.brokers());
    tokio::spawn(etcd::publish_under_lease(
        client.clone(),
        space.clone(),
        key,
        registration,
    ));
    let brokers = Arc::clone(&concentrators);
    let mut live: HashSet<String> = HashSet::new();
    tokio::spawn(etcd::follow(
        client.clone(),
        space.clone(),
        space.brokers(),
        move |update| {
            count_brokers(&mut live, update);
            brokers.set_live_brokers(live.len());
        },
    ));
    let mut seen = HashSet::new();
    etcd::follow(client, space.clone(), space.concentrators(), |update| {
        apply(&concentrators, &mut seen, update)
    })
    .await;
}

async fn connect_until_done(space: &EtcdSpace) -> Client {
    loop {
        match space.connect().await {
            Ok(client) => return client,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "broker cannot reach etcd; retrying");
                tokio::time::sleep(space.ttl() / 4).await;
            }
        }
    }
}

fn count_brokers(live: &mut HashSet<String>, update: Update) {
    match update {
        Update::Snapshot(entries) => *live = entries.into_iter().map(|(k, _)| k).collect(),
        Update::Put(key, _) => {
            live.insert(key);
        }
        Update::Delete(key) => {
            live.remove(&key);
        }
    }
}

/// Applies one step of the concentrators' keys; `seen` is the set etcd currently lists.
fn apply(concentrators: &Concentrators, seen: &mut HashSet<String>, update: Update) {
    match update {
        Update::Snapshot(entries) => {
            let listed: HashSet<String> = entries.iter().map(|(name, _)| name.clone()).collect();
            // Seeds and concentrators that died while we were not watching.
            for state in concentrators.states() {
                if !listed.contains(&state.name) {
                    concentrators.set_online(&state.name, false);
                }
            }
            seen.clear();
            for (name, value) in entries {
                if report(concentrators, &name, &value) {
                    seen.insert(name);
                }
            }
        }
        Update::Put(name, value) => {
            if report(concentrators, &name, &value) {
                seen.insert(name);
            }
        }
        Update::Delete(name) => {
            tracing::info!(
                concentrator = name,
                "concentrator gone (lease expired or left)"
            );
            seen.remove(&name);
            concentrators.set_online(&name, false);
        }
    }
}

/// Takes a concentrator's report; false (logged) when it is unusable.
fn report(concentrators: &Concentrators, name: &str, value: &[u8]) -> bool {
    let parsed: Result<ConcentratorReport> = serde_json::from_slice(value).map_err(Into::into);
    let result = parsed.and_then(|report| {
        anyhow::ensure!(
            super::is_wireguard_key(&report.public_key),
            "public_key is not a WireGuard key"
        );
        concentrators.upsert_spec(WorkerSpec {
            name: name.to_string(),
            id: report.id,
            weight: report.weight,
            pop: report.pop.clone(),
        })?;
        concentrators.set_data(
            name,
            WorkerData {
                external_address: report.external_address,
                port: report.port,
                public_key: report.public_key,
                link_address: report.link_address,
            },
        );
        concentrators.set_connected_peers(name, report.connected_peers);
        concentrators.set_online(name, true);
        Ok(())
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(concentrator = name, error = %format!("{e:#}"), "ignoring concentrator report");
            concentrators.set_online(name, false);
            false
        }
    }
}

/// Remembers what was announced for each node, to write again only when it changed or the
/// interval passed.
struct Announcer {
    interval: Duration,
    last: Mutex<HashMap<Box<str>, Announced>>,
}

/// What was announced for a node, and when.
type Announced = (Ipv6Net, Vec<String>, Instant);

impl Announcer {
    fn new(interval: Duration) -> Announcer {
        Announcer {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True (and recorded) when the node should be announced now.
    fn due(&self, pubkey: &str, prefix: Ipv6Net, selected: &[String]) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((p, s, at)) = last.get(pubkey)
            && *p == prefix
            && s == selected
            && now.duration_since(*at) < self.interval
        {
            return false;
        }
        last.insert(pubkey.into(), (prefix, selected.to_vec(), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn report_json(id: u32, peers: i64) -> Vec<u8> {
        serde_json::to_vec(&ConcentratorReport {
            id,
            pop: "vie".into(),
            weight: 1.0,
            external_address: "gw.example".into(),
            port: 40001,
            public_key: "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs=".into(),
            link_address: Ipv6Addr::LOCALHOST,
            connected_peers: peers,
        })
        .unwrap()
    }

    #[test]
    fn etcd_decides_after_the_seed() {
        let seed = WorkerSpec {
            name: "seed".into(),
            id: 9,
            weight: 1.0,
            pop: "vie".into(),
        };
        let concentrators = Concentrators::new(vec![seed], 10.0, 1);
        concentrators.set_online("seed", true);
        let mut seen = HashSet::new();
        let snapshot = vec![("gw1".to_string(), report_json(1, 5))];
        apply(&concentrators, &mut seen, Update::Snapshot(snapshot));
        let states = concentrators.states();
        assert!(!states[0].online, "the seed is not in etcd: offline");
        assert_eq!(
            (states[1].online, states[1].connected_peers),
            (true, Some(5))
        );
        apply(
            &concentrators,
            &mut seen,
            Update::Put("gw2".into(), report_json(1, 0)),
        );
        assert_eq!(
            concentrators.states().len(),
            2,
            "gw2 reuses gw1's id: refused"
        );
        apply(
            &concentrators,
            &mut seen,
            Update::Put("gw2".into(), b"{".to_vec()),
        );
        apply(&concentrators, &mut seen, Update::Delete("gw1".into()));
        assert!(concentrators.states().iter().all(|s| !s.online));
        assert!(concentrators.assign(&[]).is_empty(), "nothing online");
    }

    #[test]
    fn announcements_are_rate_limited_per_node() {
        let announcer = Announcer::new(Duration::from_secs(3600));
        let prefix: Ipv6Net = "2001:db8::/63".parse().unwrap();
        assert!(announcer.due("k", prefix, &["a".into()]));
        assert!(!announcer.due("k", prefix, &["a".into()]));
        assert!(
            announcer.due("k", prefix, &["b".into()]),
            "selection changed"
        );
        assert!(announcer.due("k2", prefix, &["b".into()]));
    }
}
