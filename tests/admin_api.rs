//! The admin API of a real `exitd run` with the broker and the cluster role (a real etcd):
//! `/metrics` counts real broker requests and etcd round trips, `/status` and `exitd status`
//! summarise the node, and the token is enforced. Needs root (the daemon manages the data
//! plane; CI is root).

#[path = "parker_common.rs"]
mod common;

use common::*;
use exitd_testkit::{
    Etcd, TestPins, poll_until,
    process::{logged_addr, wait_for_logs},
};
use std::{
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

const NONCE: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "s3cret-admin-token";

/// A running `exitd run`; SIGKILLed on drop if the test did not stop it.
struct Daemon {
    child: Child,
    admin: String,
    broker: String,
}

impl Daemon {
    fn start(config: &std::path::Path) -> Daemon {
        let mut child = Command::new(EXITD)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exitd run");
        let logs = wait_for_logs(
            &mut child,
            &["admin API listening", "Parker broker listening"],
            Duration::from_secs(30),
        );
        Daemon {
            child,
            admin: logged_addr(&logs[0]),
            broker: logged_addr(&logs[1]),
        }
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "clean exit on SIGTERM: {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exitd_status(config: &std::path::Path, admin: &str, json: bool) -> Output {
    let mut command = Command::new(EXITD);
    command
        .args(["status", "--config"])
        .arg(config)
        .args(["--admin", admin]);
    if json {
        command.arg("--json");
    }
    command.output().expect("run exitd status")
}

fn scrape(http: &reqwest::blocking::Client, admin: &str) -> String {
    let response = http
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    response.text().expect("metrics body")
}

/// The value of the series `line_start` (name and labels exactly as exported), if present.
fn series(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_and_status_of_a_running_node() {
    exitd_testkit::require_root();
    let dir = TempDir::new("admin");
    let pins = TestPins::new().expect("pin dir");
    let etcd = Etcd::start().expect("start etcd");
    let (sec, _) = keygen(dir.path());
    let tail = format!(
        "[dataplane]\npin_dir = {:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [cluster]\nendpoints = [\"{}\"]\nname = \"admintest\"\nnode = \"n1\"\ngateways = [5]\n",
        pins.path(),
        etcd.endpoint()
    );
    let config = write_config(dir.path(), &sec, "", &tail);
    let daemon = Daemon::start(&config);
    let http = client();

    // The token is enforced on reads (it is set) and on writes.
    let refused = http
        .get(format!("http://{}/metrics", daemon.admin))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let refused = http
        .get(format!("http://{}/status", daemon.admin))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // Real broker traffic: three nodes, one malformed request.
    let broker = format!("http://{}", daemon.broker);
    for n in 1..=3 {
        let (code, body) = get_config(&http, &broker, &node_key(n), NONCE, 1400);
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(get_bare(&http, &broker, "not-a-key").status().as_u16(), 400);

    let metrics = scrape(&http, &daemon.admin);
    let answered = "exitd_broker_requests_total{endpoint=\"/config\",status=\"200\"}";
    assert_eq!(series(&metrics, answered), Some(3.0), "{metrics}");
    let refused = "exitd_broker_requests_total{endpoint=\"/config\",status=\"400\"}";
    assert_eq!(series(&metrics, refused), Some(1.0), "{metrics}");
    let latency = "exitd_broker_request_duration_seconds_count{endpoint=\"/config\"}";
    assert_eq!(series(&metrics, latency), Some(4.0), "{metrics}");
    assert!(
        metrics.contains("exitd_broker_errors_total{reason="),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "exitd_broker_signing_failures_total"),
        Some(0.0)
    );
    assert_eq!(series(&metrics, "exitd_ipam_allocated_prefixes"), Some(3.0));

    // The cluster role registers with etcd: the lease becomes valid and etcd answers.
    let joined = poll_until(Duration::from_secs(20), || {
        let m = scrape(&http, &daemon.admin);
        let member = series(&m, "exitd_cluster_member{node=\"n1\"}");
        let owns = series(&m, "exitd_cluster_gateway_owned{gateway=\"5\"}");
        let valid = series(&m, "exitd_cluster_lease_valid");
        (valid == Some(1.0) && member == Some(1.0) && owns == Some(1.0)).then_some(m)
    })
    .expect("the lease becomes valid, the node sees itself and owns its gateway");
    assert_eq!(series(&joined, "exitd_cluster_owned_gateways"), Some(1.0));
    let ok = "exitd_etcd_requests_total{operation=\"register\",result=\"ok\"}";
    assert!(series(&joined, ok).is_some_and(|n| n >= 1.0), "{joined}");
    assert!(series(&joined, "exitd_etcd_last_success_timestamp_seconds").is_some());

    // `exitd status` asks the daemon.
    let out = exitd_status(&config, &daemon.admin, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["daemon"]["pid"], daemon.child.id());
    assert_eq!(status["daemon"]["config"], config.to_str().unwrap());
    assert_eq!(
        status["daemon"]["roles"],
        serde_json::json!(["dataplane", "broker", "cluster"])
    );
    assert_eq!(status["broker"]["signed_config_answers"], 3);
    assert_eq!(status["broker"]["nodes_served"], 3.0);
    assert_eq!(status["cluster"]["members"], serde_json::json!(["n1"]));
    assert_eq!(
        status["cluster"]["owned_gateways"],
        serde_json::json!(["5"])
    );
    assert_eq!(status["cluster"]["lease_valid"], true);
    assert_eq!(
        status["dataplane"]["pin_dir"],
        pins.path().to_str().unwrap()
    );
    let out = exitd_status(&config, &daemon.admin, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("roles: dataplane, broker, cluster"), "{text}");
    assert!(text.contains("3 signed config answers"), "{text}");
    assert!(
        text.contains("cluster admintest as n1: lease valid; members n1; owns gateways 5"),
        "{text}"
    );

    // Stopped: `exitd status` says so, shows the pins, and fails.
    let admin = daemon.admin.clone();
    daemon.stop();
    let out = exitd_status(&config, &admin, false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exitd is not running"), "{stderr}");
    assert!(
        stderr.contains(&admin),
        "names the address it asked: {stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data plane: pins"), "{text}");
}

/// A broker configuration (`parker_extra` inside `[parker]`) with the admin API on loopback
/// behind [`TOKEN`]; the directory and pins live as long as the returned guards.
fn broker_with_admin(tag: &str, parker_extra: &str) -> (TempDir, TestPins, std::path::PathBuf) {
    exitd_testkit::require_root();
    let dir = TempDir::new(tag);
    let pins = TestPins::new().expect("pin dir");
    let (sec, _) = keygen(dir.path());
    let tail = format!(
        "[dataplane]\npin_dir = {:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        pins.path()
    );
    let config = write_config(dir.path(), &sec, parker_extra, &tail);
    (dir, pins, config)
}

/// A wrong token in the configuration `exitd status` reads is an error, not "not running".
#[test]
fn status_with_a_wrong_token_is_refused() {
    let (dir, _pins, config) = broker_with_admin("admin-token", "");
    let daemon = Daemon::start(&config);
    let other = dir.path().join("other.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&other, text.replace(TOKEN, "not-the-token")).unwrap();
    let out = exitd_status(&other, &daemon.admin, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("not running"), "{stderr}");
    daemon.stop();
}

/// `POST /admin/reload` re-reads the file like SIGHUP, and only with the token.
#[test]
fn reload_over_the_admin_api_needs_the_token() {
    let (_dir, _pins, config) = broker_with_admin("admin-reload", "max_mtu = 1400");
    let daemon = Daemon::start(&config);
    let (http, broker) = (client(), format!("http://{}", daemon.broker));
    let mtu = || {
        let (code, body) = get_config(&http, &broker, &node_key(1), NONCE, 1500);
        assert_eq!(code, 200, "{body}");
        config_json(&body)["mtu"].as_u64()
    };
    assert_eq!(mtu(), Some(1400));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("max_mtu = 1400", "max_mtu = 1300")).unwrap();

    let reload = format!("http://{}/admin/reload", daemon.admin);
    let refused = http.post(&reload).send().unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let refused = http.post(&reload).bearer_auth("wrong").send().unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(mtu(), Some(1400), "nothing reloaded without the token");

    let accepted = http.post(&reload).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let applied = poll_until(Duration::from_secs(20), || {
        (mtu() == Some(1300)).then_some(())
    });
    assert!(
        applied.is_some(),
        "the new max_mtu applies after the reload"
    );
    daemon.stop();
}
