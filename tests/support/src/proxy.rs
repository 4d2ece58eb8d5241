//! A TCP proxy the test can cut: a network partition between one client (an exitd node) and
//! its server (etcd). Cutting closes every open connection and refuses new ones until healed.
//! Plain threads, so tests and benchmarks without an async runtime can use it.

use anyhow::Result;
use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (cut2, open2, upstream) = (cut.clone(), open.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: a partition refuses new connections too
                }
                let Ok(outbound) = TcpStream::connect(&upstream) else {
                    continue;
                };
                splice(inbound, outbound, &open2);
            }
        });
        Ok(TcpProxy { addr, cut, open })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies both directions on two threads; remembers both sockets so a cut can close them.
fn splice(inbound: TcpStream, outbound: TcpStream, open: &Mutex<Vec<TcpStream>>) {
    let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
        open.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([a, b]);
    }
    for (mut from, mut to) in [(inbound, out2), (outbound, in2)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}
