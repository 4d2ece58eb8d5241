//! `exitd run` under systemd's notify protocol: READY=1 once running, WATCHDOG=1 at half the
//! watchdog interval, STOPPING=1 on SIGTERM. The test plays systemd's side of the socket.

use exitd_testkit::TempFile;
use std::{os::unix::net::UnixDatagram, process::Command, time::Duration};

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_daemon_reports_ready_feeds_the_watchdog_and_reports_stopping() {
    let path = std::env::temp_dir().join(exitd_testkit::unique_name("exitd-notify-"));
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = TempFile::with_text("toml", "[admin]\nenabled = false\n");
    let mut daemon = Command::new(EXITD)
        .args(["run", "--config"])
        .arg(config.path())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .unwrap();
    assert_eq!(receive(&socket), "READY=1");
    assert_eq!(receive(&socket), "WATCHDOG=1");
    assert_eq!(
        receive(&socket),
        "WATCHDOG=1",
        "fed again within the interval"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let mut last = receive(&socket);
    while last == "WATCHDOG=1" {
        last = receive(&socket);
    }
    assert_eq!(last, "STOPPING=1");
    assert!(daemon.wait().unwrap().success());
    let _ = std::fs::remove_file(&path);
}
