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
