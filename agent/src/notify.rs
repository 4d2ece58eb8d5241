//! systemd's notify protocol (`Type=notify`): readiness, watchdog keep-alives and stopping,
//! as datagrams to `$NOTIFY_SOCKET`. Without that variable (not started by systemd) every
//! call does nothing.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// Sends `state` (e.g. `READY=1`) to systemd, if it is listening; errors are logged, never
/// fatal: the agent must run the same with or without systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let path = path.to_string_lossy();
        match path.strip_prefix('@') {
            // An abstract socket: its name starts with a NUL byte instead of '@'.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), path.as_ref()),
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if systemd asked for it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Keeps systemd's watchdog fed for as long as the runtime runs.
pub fn spawn_watchdog() {
    if let Some(every) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        });
    }
}
