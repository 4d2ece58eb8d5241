//! Pieces shared by the integration tests that build an exit node with `exitd apply`
//! (included with `mod common;`; not every test uses every piece).
#![allow(dead_code)]

use std::{
    path::Path,
    process::{Child, Output},
    sync::{Arc, Mutex},
};

/// Fails with the command's stderr and stdout unless it succeeded.
pub fn assert_success(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "{what:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Stops the boringtun processes exitd started in a run (the pids it recorded in the run's
/// `state*` directories), deletes the run's namespaces (named with `prefix`) and its files.
pub fn clean_run(dir: &Path, prefix: &str) {
    for state in ["state", "remote-state"] {
        exitd_testkit::cluster_lab::stop_recorded_processes(&dir.join(state));
    }
    for name in exitd::netlink::netns::list() {
        if name.starts_with(prefix) {
            let _ = exitd::netlink::netns::delete(&name);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every line `child` logs to stderr (which must be piped), collected as it comes.
pub fn collect_logs(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}
