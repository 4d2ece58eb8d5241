//! A real single-member etcd (`/usr/bin/etcd`, Debian's `etcd-server`) on 127.0.0.1 with free
//! ports and a temporary data directory; killed and removed on drop. Needs no root, except
//! [`Etcd::start_in`], which runs it inside a network namespace (on that namespace's loopback).

use anyhow::{Context, Result, bail};
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A running etcd for one test.
pub struct Etcd {
    child: Option<Child>,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// The network namespace etcd runs in (None: the caller's).
    netns: Option<PathBuf>,
}

impl Etcd {
    /// Starts etcd and waits until it reports itself healthy.
    pub fn start() -> Result<Etcd> {
        Etcd::start_with(None)
    }

    /// Starts etcd inside `ns` (for a daemon under test that runs there and reaches etcd on
    /// its loopback), and waits until it reports itself healthy.
    pub fn start_in(ns: &crate::NetNs) -> Result<Etcd> {
        Etcd::start_with(Some(ns.path()))
    }

    fn start_with(netns: Option<PathBuf>) -> Result<Etcd> {
        let data_dir = std::env::temp_dir().join(crate::unique_name("exitd-etcd-"));
        let mut etcd = Etcd {
            child: None,
            data_dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            netns,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL, a crash) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory (after [`Etcd::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        // nsenter enters the namespace and execs etcd: the child is etcd itself.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .args(["--", "/usr/bin/etcd"]);
                c
            }
            None => Command::new("/usr/bin/etcd"),
        };
        let child = command
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start /usr/bin/etcd (apt install etcd-server)")?;
        self.child = Some(child);
        let healthy = crate::poll_until(Duration::from_secs(20), || self.healthy().then_some(()));
        if healthy.is_none() {
            bail!("etcd at {} did not become healthy", self.endpoint());
        }
        Ok(())
    }

    /// Whether `GET /health` answers `"health":"true"` (asked inside etcd's namespace).
    fn healthy(&self) -> bool {
        match &self.netns {
            Some(ns) => crate::netns::run_in(ns, || self.healthy_here()).unwrap_or(false),
            None => self.healthy_here(),
        }
    }

    fn healthy_here(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut reply = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut reply).is_ok()
            && reply.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A port that was free a moment ago (the kernel picks it; etcd binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
