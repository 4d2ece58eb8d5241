//! Shared by the `parker_*` integration tests: runs the real `exitd broker` binary and talks
//! to it over loopback HTTP.
#![allow(dead_code)] // each test file uses a different subset

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub const EXITD: &str = env!("CARGO_BIN_EXE_exitd");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(exitd_testkit::unique_name(&format!("exitd-{tag}-")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A signify key pair made by `exitd keygen`: (secret file, public file).
pub fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let (sec, public) = (dir.join("broker.sec"), dir.join("broker.pub"));
    let out = Command::new(EXITD)
        .args(["keygen", "--secret"])
        .arg(&sec)
        .arg("--public")
        .arg(&public)
        .output()
        .expect("run exitd keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (sec, public)
}

/// Two concentrators in two PoPs, as standalone mode takes them from the config.
pub const CONCENTRATORS: &str = r#"
[[parker.concentrators]]
name = "gw01.in.example.net"
id = 1
pop = "vie01"
endpoint = "gw01.ext.example.net:40001"
public_key = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
link_address = "fe80::1"

[[parker.concentrators]]
name = "gw04.in.example.net"
id = 4
pop = "muc01"
endpoint = "[2001:db8:ffff::4]:40004"
public_key = "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs="
link_address = "fe80::4"
"#;

/// Writes an exitd.toml with a `[parker]` section; `extra` is appended inside it (before the
/// concentrators) and `tail` after them.
pub fn write_config(dir: &Path, signing_key_file: &Path, extra: &str, tail: &str) -> PathBuf {
    let path = dir.join("exitd.toml");
    // Tests hammer from one address; only the rate-limit test wants the limit.
    let extra = if extra.contains("rate_limit") {
        extra.to_string()
    } else {
        format!("{extra}\nrate_limit = {{ per_second = 0.0 }}")
    };
    let text = format!(
        "[parker]\nlisten = \"127.0.0.1:0\"\nsigning_key_file = {:?}\n{extra}\n\
         [parker.ipam]\npath = {:?}\nparent = \"2001:db8:ed0::/48\"\n{CONCENTRATORS}\n{tail}\n",
        signing_key_file,
        dir.join("ipam"),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `exitd broker`; killed on drop.
pub struct Broker {
    pub child: Child,
    pub url: String,
    pub stderr: mpsc::Receiver<String>,
}

impl Broker {
    /// Starts `exitd broker ARGS` and waits until it prints its address.
    pub fn start(args: &[&str]) -> Broker {
        Self::try_start(args).unwrap_or_else(|e| panic!("broker did not start: {e}"))
    }

    pub fn try_start(args: &[&str]) -> Result<Broker, String> {
        let mut child = Command::new(EXITD)
            .arg("broker")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exitd broker");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Ok(Broker {
                child,
                url,
                stderr: err_rx,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The child is gone, so the reader thread reaches EOF: read everything it saw.
                let lines: Vec<String> = err_rx.iter().collect();
                Err(lines.join("\n"))
            }
        }
    }

    /// Stops the broker with SIGTERM and waits for it.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// `kill -9`.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes like the node script (`+` → `%2B`, `/` → `%2F`, `=` → `%3D`).
pub fn encode_key(key: &str) -> String {
    key.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A valid WireGuard-shaped public key derived from `n` (base64 of 32 bytes).
pub fn node_key(n: u64) -> String {
    use base64::Engine;
    let mut raw = [0u8; 32];
    raw[..8].copy_from_slice(&n.to_be_bytes());
    raw[8..16].copy_from_slice(&(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET /config for `key` as a node does; returns (status, body).
pub fn get_config(
    client: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    nonce: &str,
    v6mtu: u32,
) -> (u16, String) {
    let resp = client
        .get(format!(
            "{url}/config?pubkey={}&nonce={nonce}&v6mtu={v6mtu}&version=1",
            encode_key(key)
        ))
        .send()
        .expect("request");
    (resp.status().as_u16(), resp.text().expect("body"))
}

/// The JSON line of a `/config` body, parsed.
pub fn config_json(body: &str) -> serde_json::Value {
    let (json, _sig) = body.rsplit_once('\n').expect("signature line");
    serde_json::from_str(json).expect("JSON line")
}

/// A bare `GET /config?pubkey=KEY` (no nonce, default MTU), for error answers.
pub fn get_bare(
    client: &reqwest::blocking::Client,
    url: &str,
    key: &str,
) -> reqwest::blocking::Response {
    client
        .get(format!("{url}/config?pubkey={}", encode_key(key)))
        .send()
        .expect("request")
}

/// Splits off the signature line and verifies it with `signify-openbsd -V`, like the node.
pub fn verify_with_signify(dir: &TempDir, body: &str) -> Result<(), String> {
    let (json, signature) = body.rsplit_once('\n').ok_or("no signature line")?;
    let msg = dir.path().join("config.json");
    let sig = dir.path().join("config.json.sig");
    std::fs::write(&msg, format!("{json}\n")).map_err(|e| e.to_string())?;
    std::fs::write(
        &sig,
        format!("untrusted comment: signed by exitd\n{signature}\n"),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("signify-openbsd")
        .arg("-V")
        .arg("-p")
        .arg(dir.path().join("broker.pub"))
        .arg("-x")
        .arg(&sig)
        .arg("-m")
        .arg(&msg)
        .output()
        .map_err(|e| format!("cannot run signify-openbsd (apt install signify-openbsd): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
