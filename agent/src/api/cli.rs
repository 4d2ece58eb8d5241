//! `exitd status [--json]`: the running daemon's `GET /status`, or, when no daemon answers,
//! what the pinned data plane shows by itself.

use super::status::dataplane_status;
use crate::config::Config;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The daemon's configuration file (admin address, token, pin directory).
    #[arg(long, short, default_value = "/etc/exitd/exitd.toml")]
    pub config: PathBuf,
    /// Ask the admin API at this address instead of the configured `admin.listen`.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Print the JSON document instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Prints the node's status; fails (after printing what the pins show) when the daemon does
/// not answer.
pub fn run(args: StatusArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let (status, not_running) = match ask_daemon(&config, args.admin)? {
        Asked::Status(status) => (status, None),
        Asked::Unreachable(why) => {
            let local = json!({ "dataplane": dataplane_status(&config.dataplane.pin_dir) });
            (local, Some(why))
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", summary(&status));
    }
    match not_running {
        None => Ok(()),
        Some(why) => bail!("exitd is not running ({why}); shown: the pinned data plane only"),
    }
}

/// What asking the daemon gave; a daemon that answers with an error (a wrong token) is an
/// error, not "not running".
enum Asked {
    Status(Value),
    Unreachable(String),
}

fn ask_daemon(config: &Config, admin: Option<SocketAddr>) -> Result<Asked> {
    if !config.admin.enabled && admin.is_none() {
        let why = "its admin API is disabled (admin.enabled = false)";
        return Ok(Asked::Unreachable(why.into()));
    }
    let addr = connectable(admin.unwrap_or(config.admin.listen));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(get_status(addr, config.admin.token()))
}

/// A wildcard listen address is reached on the loopback address of its family.
fn connectable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

async fn get_status(addr: SocketAddr, token: Option<&str>) -> Result<Asked> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut request = client.get(format!("http://{addr}/status"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let why = format!("no admin API answers on {addr}: {e}");
            return Ok(Asked::Unreachable(why));
        }
    };
    let code = response.status();
    let body = response.text().await.context("reading /status")?;
    if !code.is_success() {
        return Err(anyhow!("{addr} answered {code}: {}", body.trim()));
    }
    let status = serde_json::from_str(&body).context("the daemon's /status is not JSON")?;
    Ok(Asked::Status(status))
}

/// The human-readable summary of a status document; missing parts are left out.
pub fn summary(status: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let list = |v: &Value| -> String {
        let items: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
        if items.is_empty() {
            "none".into()
        } else {
            items.join(", ")
        }
    };
    if let Some(d) = status.get("daemon") {
        let _ = writeln!(
            out,
            "exitd {} running: pid {}, up {} s, config {}\nroles: {}",
            text(&d["version"]),
            text(&d["pid"]),
            text(&d["uptime_seconds"]),
            text(&d["config"]),
            list(&d["roles"])
        );
    }
    if let Some(dp) = status.get("dataplane") {
        dataplane_summary(&mut out, dp, status.pointer("/daemon/xdp_mode"));
    }
    if let Some(b) = status.get("broker") {
        let _ = writeln!(
            out,
            "broker: listening on {}; {} requests, {} signed config answers, {} errors \
             ({} signing failures); {} nodes with a prefix",
            text(&b["listen"]),
            text(&b["requests"]),
            text(&b["signed_config_answers"]),
            text(&b["errors"]),
            text(&b["signing_failures"]),
            text(&b["nodes_served"])
        );
    }
    if let Some(c) = status.get("cluster") {
        let lease = if c["lease_valid"] == Value::Bool(true) {
            "valid"
        } else {
            "NOT valid"
        };
        let _ = writeln!(
            out,
            "cluster {} as {}: lease {lease}; members {}; owns gateways {}\n\
             etcd: last success {} s ago, {} round trips ok, {} errors",
            text(&c["cluster"]),
            text(&c["node"]),
            list(&c["members"]),
            list(&c["owned_gateways"]),
            text(&c["etcd"]["seconds_since_success"]),
            text(&c["etcd"]["round_trips_ok"]),
            text(&c["etcd"]["errors"])
        );
    }
    out
}

fn dataplane_summary(out: &mut String, dp: &Value, mode: Option<&Value>) {
    let mode = mode.and_then(Value::as_str).unwrap_or("-");
    let pins = dp["pin_dir"].as_str().unwrap_or("-");
    let _ = writeln!(out, "data plane: pins {pins}, XDP mode {mode}");
    let namespaces = dp["namespaces"].as_array().cloned().unwrap_or_default();
    if namespaces.is_empty() {
        let _ = writeln!(out, "  nothing attached");
    }
    for ns in &namespaces {
        let name = ns["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("(host)");
        let _ = write!(out, "  {name}:");
        for a in ns["attachments"].as_array().into_iter().flatten() {
            let state = if a["live"] == Value::Bool(false) {
                " (interface gone)".to_string()
            } else {
                a["mode"]
                    .as_str()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            };
            let _ = write!(
                out,
                " {}@{}{state}",
                a["program"].as_str().unwrap_or("?"),
                a["ifname"].as_str().unwrap_or("?")
            );
        }
        if let (Some(routes), Some(fwd)) = (ns["routes"].as_u64(), ns["forwarded_packets"].as_u64())
        {
            let _ = write!(out, "; {routes} routes, {fwd} packets forwarded");
        }
        if let Some(err) = ns["error"].as_str() {
            let _ = write!(out, "; error: {err}");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_full_status() {
        let status = json!({
            "daemon": { "version": "0.1.0", "pid": 7, "uptime_seconds": 3,
                        "config": "/etc/exitd/exitd.toml", "roles": ["dataplane", "broker"],
                        "xdp_mode": "auto" },
            "dataplane": { "pin_dir": "/sys/fs/bpf/exitd", "namespaces": [
                { "namespace": "gw-1-1", "routes": 3, "forwarded_packets": 42,
                  "attachments": [{ "program": "xdp_fwd6", "ifname": "up0", "ifindex": 2, "live": true, "mode": "native" }] }
            ]},
            "broker": { "listen": "[::]:8080", "requests": 5, "signed_config_answers": 4,
                        "errors": 1, "signing_failures": 0, "nodes_served": 4.0 },
            "cluster": { "cluster": "c", "node": "a", "lease_valid": true, "members": ["a", "b"],
                         "owned_gateways": [], "etcd": { "seconds_since_success": 1.0,
                         "round_trips_ok": 9, "errors": 0 } },
        });
        let text = summary(&status);
        for needle in [
            "exitd 0.1.0 running: pid 7",
            "roles: dataplane, broker",
            "data plane: pins /sys/fs/bpf/exitd, XDP mode auto",
            "  gw-1-1: xdp_fwd6@up0 (native); 3 routes, 42 packets forwarded",
            "broker: listening on [::]:8080; 5 requests, 4 signed config answers, 1 errors",
            "cluster c as a: lease valid; members a, b; owns gateways none",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
    }

    #[test]
    fn summary_of_garbage_does_not_panic() {
        for status in [
            json!(null),
            json!([1]),
            json!({"daemon": 5, "dataplane": "x"}),
        ] {
            let _ = summary(&status);
        }
    }

    #[test]
    fn wildcard_listen_addresses_are_asked_on_loopback() {
        assert_eq!(
            connectable("0.0.0.0:9580".parse().unwrap()),
            "127.0.0.1:9580".parse().unwrap()
        );
        assert_eq!(
            connectable("[::]:9580".parse().unwrap()),
            "[::1]:9580".parse().unwrap()
        );
    }
}
