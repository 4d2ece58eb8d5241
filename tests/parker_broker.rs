//! `exitd broker` end to end: the real binary on loopback, a real HTTP client doing what the
//! Parker node script does, and Debian's `signify-openbsd` verifying the signature with the
//! public key from `exitd keygen` (the same format `usign -V` checks on the nodes).

#[path = "parker_common.rs"]
mod common;

use common::*;
use ipnet::Ipv6Net;
use std::{collections::HashSet, process::Command, sync::Barrier};

const NONCE: &str = "0123456789abcdef0123456789abcdef";

fn standalone(dir: &TempDir, extra: &str) -> Broker {
    let (sec, _) = keygen(dir.path());
    let config = write_config(dir.path(), &sec, extra, "");
    Broker::start(&["--config", config.to_str().expect("utf-8 path")])
}

#[test]
fn node_script_flow_verifies_with_signify() {
    let dir = TempDir::new("flow");
    let broker = standalone(&dir, "");
    let http = client();
    let key = "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E=";
    let resp = http
        .get(format!(
            "{}/config?pubkey={}&nonce={NONCE}&v6mtu=1400&version=v2.0",
            broker.url,
            encode_key(key)
        ))
        .send()
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let body = resp.text().expect("body");
    assert!(
        !body.ends_with('\n'),
        "no trailing newline after the signature"
    );
    verify_with_signify(&dir, &body).expect("signify verifies the response");

    let json = config_json(&body);
    assert_eq!(json["nonce"], NONCE);
    assert_eq!(json["id"], key);
    assert_eq!(json["mtu"], 1375, "min(v6mtu, 1375)");
    let range6: Ipv6Net = json["range6"]
        .as_str()
        .expect("range6")
        .parse()
        .expect("prefix");
    let xlat: Ipv6Net = json["xlat_range6"]
        .as_str()
        .expect("xlat")
        .parse()
        .expect("prefix");
    assert_eq!((range6.prefix_len(), xlat.prefix_len()), (64, 64));
    let node63 = Ipv6Net::new(range6.network(), 63).expect("/63").trunc();
    assert_eq!(
        node63.network(),
        range6.network(),
        "range6 is the first half of the /63"
    );
    assert!(
        node63.contains(&xlat) && xlat != range6,
        "xlat_range6 is the second half"
    );
    let parent: Ipv6Net = "2001:db8:ed0::/48".parse().expect("parent");
    assert!(parent.contains(&node63));
    assert_eq!(json["address6"], format!("{}1", range6.network()));
    assert_eq!(json["range4"], "10.80.96.0/22");
    assert_eq!(json["address4"], "10.80.96.1");
    assert_eq!(
        (json["wg_keepalive"].as_u64(), json["retry"].as_u64()),
        (Some(25), Some(120))
    );
    let concentrators = json["concentrators"].as_array().expect("list");
    let ids: Vec<u64> = concentrators
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .collect();
    assert_eq!(
        ids,
        [4, 1],
        "one per PoP, ordered by PoP name (muc01, vie01)"
    );
    assert_eq!(concentrators[0]["endpoint"], "[2001:db8:ffff::4]:40004");
    assert_eq!(concentrators[1]["endpoint"], "gw01.ext.example.net:40001");
    assert_eq!(concentrators[0]["address6"], "fe80::4");
    // The signed line is exactly Python's json.dumps layout.
    let line = body.split('\n').next().expect("line");
    assert!(
        line.starts_with(&format!("{{\"nonce\": \"{NONCE}\", \"time\": ")),
        "{line}"
    );

    // A tampered body must not verify (the check above can fail).
    let tampered = body.replacen("\"mtu\": 1375", "\"mtu\": 1374", 1);
    assert!(verify_with_signify(&dir, &tampered).is_err());

    let (status, body) = get_config(&http, &broker.url, key, NONCE, 1280);
    assert_eq!(status, 200);
    assert_eq!(config_json(&body)["mtu"], 1280);
}

#[test]
fn same_key_same_prefix_across_requests_and_restarts() {
    let dir = TempDir::new("sticky");
    let (sec, _) = keygen(dir.path());
    let config = write_config(dir.path(), &sec, "", "");
    let args = ["--config", config.to_str().expect("utf-8")];
    let http = client();
    let range_of = |broker: &Broker, n: u64| {
        let (status, body) = get_config(&http, &broker.url, &node_key(n), NONCE, 1400);
        assert_eq!(status, 200, "{body}");
        let json = config_json(&body);
        (
            json["range6"].as_str().expect("range6").to_string(),
            json["concentrators"].clone(),
        )
    };
    let broker = Broker::start(&args);
    let first: Vec<_> = (0..5).map(|n| range_of(&broker, n)).collect();
    let again: Vec<_> = (0..5).map(|n| range_of(&broker, n)).collect();
    assert_eq!(
        first, again,
        "same prefix and (sticky) concentrators on repeat"
    );
    broker.stop();
    let broker = Broker::start(&args);
    let after_restart: Vec<_> = (0..5).map(|n| range_of(&broker, n).0).collect();
    let before: Vec<_> = first.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(after_restart, before, "prefixes survive a restart");
    let distinct: HashSet<_> = before.iter().collect();
    assert_eq!(distinct.len(), 5);
}

#[test]
fn five_hundred_concurrent_new_nodes_get_distinct_prefixes() {
    let dir = TempDir::new("conc");
    let broker = standalone(&dir, "");
    let url = broker.url.clone();
    let barrier = std::sync::Arc::new(Barrier::new(500));
    let threads: Vec<_> = (0..500u64)
        .map(|n| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let http = client();
                barrier.wait();
                let (status, body) = get_config(&http, &url, &node_key(1000 + n), NONCE, 1400);
                assert_eq!(status, 200, "{body}");
                config_json(&body)["range6"]
                    .as_str()
                    .expect("range6")
                    .to_string()
            })
        })
        .collect();
    let ranges: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let parent: Ipv6Net = "2001:db8:ed0::/48".parse().expect("parent");
    let distinct: HashSet<&String> = ranges.iter().collect();
    assert_eq!(distinct.len(), 500, "500 distinct /63s");
    for r in &ranges {
        let net: Ipv6Net = r.parse().expect("prefix");
        assert!(parent.contains(&net), "{r} inside the parent");
        assert_eq!(u128::from(net.network()) >> 64 & 1, 0, "{r} starts a /63");
    }
}

fn assert_json_error(resp: reqwest::blocking::Response, status: u16) {
    assert_eq!(resp.status().as_u16(), status);
    let body: serde_json::Value = resp.json().expect("JSON error body");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[test]
fn bad_input_gets_json_4xx_and_allocates_nothing() {
    let dir = TempDir::new("bad");
    let broker = standalone(&dir, "");
    let http = client();
    let url = &broker.url;
    let key = encode_key(&node_key(7));
    for path in [
        "/config".to_string(),
        "/config?nonce=x".to_string(),
        "/config?pubkey=not-a-key".to_string(),
        format!(
            "/config?pubkey={}",
            encode_key("+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5F=")
        ),
        format!("/config?pubkey={key}&v6mtu=abc"),
        format!("/config?pubkey={key}&v6mtu=-5"),
        format!("/config?pubkey={key}&v6mtu=100000000000000000000"),
        format!("/api/v3/config?pubkey={key}&v6mtu=12"),
        format!("/config?pubkey={key}&nonce={}", "n".repeat(300)),
    ] {
        assert_json_error(http.get(format!("{url}{path}")).send().expect("send"), 400);
    }
    let long = format!("{url}/config?pubkey={key}&pad={}", "x".repeat(5000));
    assert_json_error(http.get(long).send().expect("send"), 414);
    assert_json_error(http.get(format!("{url}/nope")).send().expect("send"), 404);
    assert_json_error(
        http.post(format!("{url}/config")).send().expect("send"),
        405,
    );
    let big =
        serde_json::json!({"domain": "x".repeat(10_000), "public_key": node_key(1)}).to_string();
    assert_json_error(
        http.post(format!("{url}/api/v2/wg/key/exchange"))
            .body(big)
            .send()
            .expect("send"),
        413,
    );
    assert_json_error(
        http.post(format!("{url}/api/v1/wg/key/exchange"))
            .body("{")
            .send()
            .expect("send"),
        400,
    );
    let bad_key = serde_json::json!({"domain": "d", "public_key": "x"}).to_string();
    assert_json_error(
        http.post(format!("{url}/api/v2/wg/key/exchange"))
            .body(bad_key)
            .send()
            .expect("send"),
        400,
    );

    // Nothing was allocated for the invalid requests: the first valid node gets slot 1.
    let (status, body) = get_config(&http, url, &node_key(7), NONCE, 1400);
    assert_eq!(status, 200);
    assert_eq!(config_json(&body)["range6"], "2001:db8:ed0:2::/64");
}

#[test]
fn legacy_endpoints_answer_like_wgkex() {
    let dir = TempDir::new("legacy");
    let broker = standalone(&dir, "domains = [\"ffbs\"]");
    let http = client();
    let body = serde_json::json!({"domain": "ffbs", "public_key": node_key(3)}).to_string();
    let v2: serde_json::Value = http
        .post(format!("{}/api/v2/wg/key/exchange", broker.url))
        .body(body.clone())
        .send()
        .expect("v2")
        .json()
        .expect("json");
    let endpoint = &v2["Endpoint"];
    assert!(endpoint["Port"].is_string(), "Port is a string: {v2}");
    assert!(["40001", "40004"].contains(&endpoint["Port"].as_str().expect("port")));
    assert_eq!(endpoint["AllowedIPs"].as_array().map(Vec::len), Some(1));
    assert!(endpoint["PublicKey"].is_string() && endpoint["Address"].is_string());
    let v1: serde_json::Value = http
        .post(format!("{}/api/v1/wg/key/exchange", broker.url))
        .body(body)
        .send()
        .expect("v1")
        .json()
        .expect("json");
    assert_eq!(v1, serde_json::json!({"Message": "OK"}));
    let other = serde_json::json!({"domain": "elsewhere", "public_key": node_key(3)}).to_string();
    let resp = http
        .post(format!("{}/api/v1/wg/key/exchange", broker.url))
        .body(other)
        .send()
        .expect("v1");
    assert_json_error(resp, 400);
}

#[test]
fn rate_limit_answers_429_per_client() {
    let dir = TempDir::new("rate");
    let broker = standalone(&dir, "rate_limit = { per_second = 0.01, burst = 3 }");
    let http = client();
    for _ in 0..3 {
        assert_eq!(
            get_config(&http, &broker.url, &node_key(1), NONCE, 1400).0,
            200
        );
    }
    let resp = get_bare(&http, &broker.url, &node_key(1));
    assert_json_error(resp, 429);
}

#[test]
fn no_concentrator_online_is_400() {
    let dir = TempDir::new("offline");
    let (sec, _) = keygen(dir.path());
    let config = dir.path().join("exitd.toml");
    // Configured, but without endpoint data nothing can be offered.
    std::fs::write(
        &config,
        format!(
            "[parker]\nlisten = \"127.0.0.1:0\"\nsigning_key_file = {sec:?}\n\
             [parker.ipam]\npath = {:?}\n[[parker.concentrators]]\nname = \"gw01\"\n",
            dir.path().join("ipam")
        ),
    )
    .expect("write");
    let broker = Broker::start(&["--config", config.to_str().expect("utf-8")]);
    let resp = get_bare(&client(), &broker.url, &node_key(1));
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().expect("json");
    assert_eq!(body["error"]["message"], "no gateway online");
}

#[test]
fn bad_signing_keys_are_refused_at_startup() {
    let dir = TempDir::new("badkey");
    let (sec, _) = keygen(dir.path());
    let text = std::fs::read_to_string(&sec).expect("read key");
    // Flip the kdfrounds field (bytes 4..8) to mimic a passphrase-protected key.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw = b64
        .decode(text.lines().nth(1).expect("key line"))
        .expect("b64");
    raw[7] = 42;
    for (key, expected) in [
        (b64.encode(&raw), "passphrase"),
        ("abcd".to_string(), "64 hex characters"),
    ] {
        let config = write_config(dir.path(), &sec, "", "");
        let text = std::fs::read_to_string(&config).expect("read").replace(
            &format!("signing_key_file = {sec:?}"),
            &format!("signing_key = {key:?}"),
        );
        std::fs::write(&config, text).expect("write");
        let err = Broker::try_start(&["--config", config.to_str().expect("utf-8")])
            .err()
            .expect("must not start");
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn wgkex_yaml_is_accepted_and_odd_keys_reported() {
    let dir = TempDir::new("wgkex");
    let yaml = dir.path().join("wgkex.yaml");
    std::fs::write(
        &yaml,
        "workers:\n  gw01.in.example.net:\n    id: 1\n    pop: vie01\n    endpoint: \"gw01.example.net:40001\"\n    \
         public_key: \"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=\"\n    link_address: \"fe80::1\"\n\
         sticky_worker_tolerance: 10\n\
         broker_signing_key: 8c57cfefc740ff937d92192fe3b9d240c31340642fe904e7f1b27af1e78d9ce7\n\
         broker_listen: {host: 127.0.0.1, port: 0}\n\
         mqtt: {broker_url: localhost}\n\
         parker: {enabled: true, 464xlat: true, ipam: json, prefixes: {ipv4: {clat_subnet: 10.99.0.0/22}}}\n\
         frobnicate: yes\n",
    )
    .expect("write");
    let ipam = dir.path().join("ipam");
    let broker = Broker::start(&[
        "--wgkex-config",
        yaml.to_str().expect("utf-8"),
        "--ipam-dir",
        ipam.to_str().expect("utf-8"),
    ]);
    let (status, body) = get_config(&client(), &broker.url, &node_key(1), NONCE, 1400);
    assert_eq!(status, 200, "{body}");
    let json = config_json(&body);
    assert_eq!(json["range4"], "10.99.0.0/22");
    assert_eq!(json["concentrators"][0]["id"], 1);
    // Warnings go to stderr, read by another thread: wait for them rather than race it.
    let mut seen = Vec::new();
    let warnings = exitd_testkit::poll_until(std::time::Duration::from_secs(10), || {
        seen.extend(broker.stderr.try_iter());
        let text = seen.join("\n");
        (text.contains("frobnicate") && text.contains("mqtt")).then_some(text)
    })
    .unwrap_or_else(|| seen.join("\n"));
    assert!(warnings.contains("frobnicate: unknown key"), "{warnings}");
    assert!(warnings.contains("mqtt: unsupported"), "{warnings}");
}

/// `exitd keygen` writes real signify files: signify-openbsd signs with the secret key and
/// verifies with the public key; and a key made by `signify-openbsd -G -n` signs broker
/// responses that verify against its own public key.
#[test]
fn keys_interoperate_with_signify_openbsd() {
    let dir = TempDir::new("keys");
    let (sec, public) = keygen(dir.path());
    let msg = dir.path().join("m");
    std::fs::write(&msg, "hello\n").expect("write");
    let signify = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("signify-openbsd")
            .args(args)
            .output()
            .expect("run signify-openbsd");
        assert!(
            out.status.success(),
            "signify {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let sig = dir.path().join("m.sig");
    signify(&[
        "-S".as_ref(),
        "-s".as_ref(),
        sec.as_os_str(),
        "-m".as_ref(),
        msg.as_os_str(),
        "-x".as_ref(),
        sig.as_os_str(),
    ]);
    signify(&[
        "-V".as_ref(),
        "-p".as_ref(),
        public.as_os_str(),
        "-x".as_ref(),
        sig.as_os_str(),
        "-m".as_ref(),
        msg.as_os_str(),
    ]);

    // The other direction: a signify-generated key drives the broker.
    let other = TempDir::new("keys2");
    let (osec, opub) = (
        other.path().join("broker.sec"),
        other.path().join("broker.pub"),
    );
    signify(&[
        "-G".as_ref(),
        "-n".as_ref(),
        "-s".as_ref(),
        osec.as_os_str(),
        "-p".as_ref(),
        opub.as_os_str(),
    ]);
    let config = write_config(other.path(), &osec, "", "");
    let broker = Broker::start(&["--config", config.to_str().expect("utf-8")]);
    let (status, body) = get_config(&client(), &broker.url, &node_key(5), NONCE, 1400);
    assert_eq!(status, 200, "{body}");
    verify_with_signify(&other, &body).expect("verifies with the signify-generated public key");
}

/// `exitd run` starts the broker when the configuration has a `[parker]` section (the daemon
/// itself wants root for its other roles, as CI has).
#[test]
fn daemon_serves_the_broker_when_configured() {
    exitd_testkit::require_root();
    let dir = TempDir::new("daemon");
    let (sec, _) = keygen(dir.path());
    let config = write_config(dir.path(), &sec, "", "");
    let mut child = Command::new(EXITD)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn exitd run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Parker broker listening")
                && let Some(addr) = line.split("addr=").nth(1)
            {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(30));
    let result = addr.map(|addr| {
        get_config(
            &client(),
            &format!("http://{addr}"),
            &node_key(9),
            NONCE,
            1400,
        )
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let (status, body) = result.expect("the daemon announced the broker");
    assert_eq!(status, 200, "{body}");
    verify_with_signify(&dir, &body).expect("signed with the configured key");
}
