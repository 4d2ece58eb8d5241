//! Child processes and plain HTTP for tests.

use crate::NetNs;
use std::{
    io::{BufRead, Read, Write},
    net::TcpStream,
    process::Child,
    time::Duration,
};

/// Waits until the child's stderr (tracing logs) shows each of `needles`, in any order, and
/// returns the matching lines in the order of `needles`. Keeps draining stderr afterwards so
/// the child never blocks on a full pipe. The child must have been spawned with
/// `stderr(Stdio::piped())`.
pub fn wait_for_logs(child: &mut Child, needles: &[&str], timeout: Duration) -> Vec<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            for (i, needle) in wanted.iter().enumerate() {
                if line.contains(needle.as_str()) {
                    let _ = tx.send((i, line.clone()));
                }
            }
        }
    });
    let mut found = vec![None; needles.len()];
    while found.iter().any(Option::is_none) {
        let (i, line) = rx
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("the child never logged all of {needles:?}"));
        found[i] = Some(line);
    }
    found.into_iter().flatten().collect()
}

/// The value after `addr=` in a tracing log line.
pub fn logged_addr(line: &str) -> String {
    line.split("addr=")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// GET `path` from `addr` inside `ns` with HTTP/1.0 and extra header lines; returns the
/// status code and the body.
pub fn http_get(ns: &NetNs, addr: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: exitd\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let addr = addr.to_string();
    ns.run(move || {
        let mut stream = TcpStream::connect(&addr).expect("connects");
        stream.write_all(request.as_bytes()).expect("sends");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reads");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    })
    .expect("enters the namespace")
}

/// A long-running child under test (e.g. `exitd run`): its stderr lines are collected as
/// they come; on drop it gets SIGTERM, and SIGKILL if it has not ended 10 s later, so it
/// is gone also when a test fails halfway.
pub struct Daemon {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Spawns `command` with stderr piped (stdout discarded).
    pub fn spawn(command: &mut std::process::Command) -> std::io::Result<Daemon> {
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        Ok(Daemon { child, log })
    }

    /// Everything it logged so far, one line each.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Whether a logged line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until it logs `needle` (true), ends, or `timeout` passes (false).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        crate::poll_until(timeout, || {
            if self.logged(needle) {
                Some(true)
            } else if !self.running() {
                Some(false)
            } else {
                None
            }
        }) == Some(true)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let ended = crate::poll_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
        });
        if ended.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP server in a namespace: answers every request with `size` bytes and keeps
/// the peer address of each connection, as an access log would. Stops when dropped.
pub struct FileServer {
    addr: std::net::SocketAddr,
    peers: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    /// Listens on `addr` (e.g. `198.51.100.1:80`, `[2001:db8::1]:80`) inside `ns`.
    pub fn start(ns: &NetNs, addr: &str, size: usize) -> anyhow::Result<FileServer> {
        let listener = ns.run(|| std::net::TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let server = FileServer {
            addr: listener.local_addr()?,
            peers: Default::default(),
            stop: Default::default(),
        };
        let (peers, stop) = (server.peers.clone(), server.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        peers.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
                        let _ = serve_file(conn, size);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(server)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The peer address of every connection accepted so far.
    pub fn peers(&self) -> Vec<std::net::SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads the request head and answers with `size` bytes of body.
fn serve_file(mut conn: TcpStream, size: usize) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(header.as_bytes())?;
    let chunk = [b'x'; 65_536];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}
