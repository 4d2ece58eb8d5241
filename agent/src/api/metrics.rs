//! exitd's own metrics (beyond the data plane's eBPF counters) in the Prometheus text format.
//!
//! Every metric is a `static` defined here, so this file is the list of what exitd exports;
//! the roles update them with one call where things happen (`BROKER_ERRORS.inc(&[reason])`).
//! Values that are state rather than events (IPAM size, owned gateways) are gauges that a
//! role refreshes from a hook registered with [`on_scrape`], run before every scrape.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, MutexGuard},
};

pub static BROKER_REQUESTS: CounterVec = CounterVec::new(
    "exitd_broker_requests_total",
    "Parker broker HTTP requests by endpoint and status code.",
    &["endpoint", "status"],
);
pub static BROKER_LATENCY: Histogram = Histogram::new(
    "exitd_broker_request_duration_seconds",
    "Parker broker request latency by endpoint (including rate limiting and IPAM).",
    &["endpoint"],
);
pub static BROKER_ERRORS: CounterVec = CounterVec::new(
    "exitd_broker_errors_total",
    "Parker broker error answers by reason.",
    &["reason"],
);
pub static BROKER_SIGNING_FAILURES: CounterVec = CounterVec::new(
    "exitd_broker_signing_failures_total",
    "Parker /config answers that could not be signed (no usable signing key).",
    &[],
);
pub static IPAM_ALLOCATED: GaugeVec = GaugeVec::new(
    "exitd_ipam_allocated_prefixes",
    "Node prefixes (/63) allocated in the broker's IPAM.",
    &[],
);
pub static CLUSTER_OWNED_GATEWAYS: GaugeVec = GaugeVec::new(
    "exitd_cluster_owned_gateways",
    "Gateways this node owns (and may forward for) right now.",
    &[],
);
pub static CLUSTER_MEMBERS: GaugeVec = GaugeVec::new(
    "exitd_cluster_members",
    "Cluster members this node sees in etcd.",
    &[],
);
pub static CLUSTER_MEMBER: GaugeVec = GaugeVec::new(
    "exitd_cluster_member",
    "1 for each cluster member this node sees in etcd.",
    &["node"],
);
pub static CLUSTER_GATEWAY_OWNED: GaugeVec = GaugeVec::new(
    "exitd_cluster_gateway_owned",
    "1 for each gateway this node owns right now.",
    &["gateway"],
);
pub static CLUSTER_LEASE_VALID: GaugeVec = GaugeVec::new(
    "exitd_cluster_lease_valid",
    "1 while this node's own clock vouches for its etcd lease, else 0.",
    &[],
);
pub static ETCD_REQUESTS: CounterVec = CounterVec::new(
    "exitd_etcd_requests_total",
    "Round trips to etcd by operation and result (ok, error).",
    &["operation", "result"],
);
pub static ETCD_LAST_SUCCESS: GaugeVec = GaugeVec::new(
    "exitd_etcd_last_success_timestamp_seconds",
    "Unix time of the last successful round trip to etcd.",
    &[],
);

/// Every family, in the order they are rendered.
fn families() -> [&'static dyn Family; 13] {
    [
        &BROKER_REQUESTS,
        &BROKER_LATENCY,
        &BROKER_ERRORS,
        &BROKER_SIGNING_FAILURES,
        &IPAM_ALLOCATED,
        &CLUSTER_OWNED_GATEWAYS,
        &CLUSTER_MEMBERS,
        &CLUSTER_MEMBER,
        &CLUSTER_GATEWAY_OWNED,
        &CLUSTER_LEASE_VALID,
        &ETCD_REQUESTS,
        &ETCD_LAST_SUCCESS,
        &BUILD_INFO,
    ]
}

static BUILD_INFO: GaugeVec = GaugeVec::new(
    "exitd_build_info",
    "Always 1; the running exitd's version.",
    &["version"],
);

type ScrapeHook = Box<dyn Fn() -> bool + Send>;
static HOOKS: Mutex<Vec<ScrapeHook>> = Mutex::new(Vec::new());

/// Runs `refresh` before every scrape, as long as it returns true (a role's hook returns false
/// once the role is gone, e.g. its `Weak` no longer upgrades, and is then dropped).
pub fn on_scrape(refresh: impl Fn() -> bool + Send + 'static) {
    lock(&HOOKS).push(Box::new(refresh));
}

/// Runs the scrape hooks: the gauges are current afterwards.
pub fn refresh() {
    lock(&HOOKS).retain(|refresh| refresh());
}

/// Every exitd metric in the text exposition format.
pub fn render() -> String {
    refresh();
    BUILD_INFO.set(&[env!("CARGO_PKG_VERSION")], 1.0);
    let mut out = String::new();
    for family in families() {
        family.render(&mut out);
    }
    out
}

/// Records a successful or failed etcd round trip.
pub fn etcd_round_trip(operation: &str, ok: bool) {
    ETCD_REQUESTS.inc(&[operation, if ok { "ok" } else { "error" }]);
    if ok {
        ETCD_LAST_SUCCESS.set(&[], crate::parker::unix_now() as f64);
    }
}

/// Records what the membership sees: whether the lease is valid, and the members.
pub fn cluster_membership<'a>(lease_valid: bool, members: impl Iterator<Item = &'a String>) {
    CLUSTER_LEASE_VALID.set(&[], f64::from(u8::from(lease_valid)));
    let members: Vec<Vec<String>> = members.map(|m| vec![m.clone()]).collect();
    CLUSTER_MEMBERS.set(&[], members.len() as f64);
    CLUSTER_MEMBER.replace(members.into_iter().map(|m| (m, 1.0)));
}

/// Records the gateways this node owns now.
pub fn cluster_owned(owned: &std::collections::BTreeSet<u8>) {
    CLUSTER_OWNED_GATEWAYS.set(&[], owned.len() as f64);
    CLUSTER_GATEWAY_OWNED.replace(owned.iter().map(|g| (vec![g.to_string()], 1.0)));
}

/// `GET /metrics`: the data plane's counters read from the pinned maps, then these.
pub async fn serve(pin_root: std::path::PathBuf) -> axum::response::Response {
    use axum::{
        http::{StatusCode, header},
        response::IntoResponse,
    };
    let gathered =
        tokio::task::spawn_blocking(move || crate::dataplane::metrics::gather(&pin_root)).await;
    match gathered {
        Ok(Ok(mut text)) => {
            text.push_str(&render());
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

trait Family: Sync {
    fn render(&self, out: &mut String);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `{a="x",b="y"}` (empty without labels), values escaped as the format requires.
fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, v.as_str()))
        .chain(extra)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Label values as map keys; a call with the wrong number of values is padded or cut, never a
/// panic (a metrics call must not take a request down).
fn key(names: &[&str], values: &[&str]) -> Vec<String> {
    (0..names.len())
        .map(|i| values.get(i).copied().unwrap_or("").to_string())
        .collect()
}

/// A counter family with labels (`&[]` for a single counter).
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        CounterVec {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        *lock(&self.values)
            .entry(key(self.labels, labels))
            .or_default() += 1;
    }

    /// The current value (0 for a label set never counted).
    pub fn get(&self, labels: &[&str]) -> u64 {
        let values = lock(&self.values);
        values.get(&key(self.labels, labels)).copied().unwrap_or(0)
    }

    /// The sum over all label sets.
    pub fn total(&self) -> u64 {
        self.sum_where(|_| true)
    }

    /// The sum over the label sets (values in declaration order) that `filter` accepts.
    pub fn sum_where(&self, filter: impl Fn(&[String]) -> bool) -> u64 {
        let values = lock(&self.values);
        values
            .iter()
            .filter(|(l, _)| filter(l))
            .map(|(_, v)| v)
            .sum()
    }
}

impl Family for CounterVec {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let values = lock(&self.values);
        if self.labels.is_empty() && values.is_empty() {
            let _ = writeln!(out, "{} 0", self.name);
        }
        for (labels, value) in values.iter() {
            let set = label_set(self.labels, labels, None);
            let _ = writeln!(out, "{}{set} {value}", self.name);
        }
    }
}

/// A gauge family with labels (`&[]` for a single gauge).
pub struct GaugeVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl GaugeVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        GaugeVec {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn set(&self, labels: &[&str], value: f64) {
        lock(&self.values).insert(key(self.labels, labels), value);
    }

    pub fn get(&self, labels: &[&str]) -> Option<f64> {
        lock(&self.values).get(&key(self.labels, labels)).copied()
    }

    /// Replaces every label set (for gauges that describe a set, such as members).
    pub fn replace(&self, sets: impl Iterator<Item = (Vec<String>, f64)>) {
        *lock(&self.values) = sets.collect();
    }

    /// The label values of every set, with its value.
    pub fn all(&self) -> Vec<(Vec<String>, f64)> {
        lock(&self.values)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

impl Family for GaugeVec {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        for (labels, value) in lock(&self.values).iter() {
            let set = label_set(self.labels, labels, None);
            let _ = writeln!(out, "{}{set} {value}", self.name);
        }
    }
}

/// Upper bounds of the latency buckets, seconds: 0.5 ms (a signed answer from memory) to
/// 10 s (a hung IPAM backend).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Observed {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A latency histogram with labels.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, Observed>>,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Histogram {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: &[&str], seconds: f64) {
        let mut values = lock(&self.values);
        let observed = values.entry(key(self.labels, labels)).or_default();
        // Buckets are cumulative in the exposition; count each observation in every bucket
        // whose bound it is within.
        for (bound, bucket) in BUCKETS.iter().zip(&mut observed.buckets) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        observed.count += 1;
        observed.sum += seconds;
    }
}

impl Family for Histogram {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (labels, observed) in lock(&self.values).iter() {
            for (bound, bucket) in BUCKETS.iter().zip(observed.buckets) {
                let le = bound.to_string();
                let set = label_set(self.labels, labels, Some(("le", &le)));
                let _ = writeln!(out, "{}_bucket{set} {bucket}", self.name);
            }
            let set = label_set(self.labels, labels, Some(("le", "+Inf")));
            let _ = writeln!(out, "{}_bucket{set} {}", self.name, observed.count);
            let set = label_set(self.labels, labels, None);
            let _ = writeln!(out, "{}_sum{set} {}", self.name, observed.sum);
            let _ = writeln!(out, "{}_count{set} {}", self.name, observed.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_escaped_labels() {
        static C: CounterVec = CounterVec::new("t_total", "Test.", &["a", "b"]);
        C.inc(&["x\"y", "1"]);
        C.inc(&["x\"y", "1"]);
        C.inc(&["only-one-value"]);
        let mut out = String::new();
        C.render(&mut out);
        assert!(out.starts_with("# HELP t_total Test.\n# TYPE t_total counter\n"));
        assert!(out.contains("t_total{a=\"x\\\"y\",b=\"1\"} 2\n"), "{out}");
        assert!(out.contains("t_total{a=\"only-one-value\",b=\"\"} 1\n"));
        assert_eq!(C.get(&["x\"y", "1"]), 2);
        assert_eq!(C.total(), 3);
    }

    #[test]
    fn an_unlabelled_counter_shows_zero_before_it_counts() {
        static C: CounterVec = CounterVec::new("z_total", "Zero.", &[]);
        let mut out = String::new();
        C.render(&mut out);
        assert!(out.ends_with("z_total 0\n"), "{out}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        static H: Histogram = Histogram::new("h_seconds", "Hist.", &["e"]);
        H.observe(&["x"], 0.003);
        H.observe(&["x"], 20.0);
        let mut out = String::new();
        H.render(&mut out);
        assert!(
            out.contains("h_seconds_bucket{e=\"x\",le=\"0.0025\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("h_seconds_bucket{e=\"x\",le=\"0.005\"} 1\n"));
        assert!(out.contains("h_seconds_bucket{e=\"x\",le=\"10\"} 1\n"));
        assert!(out.contains("h_seconds_bucket{e=\"x\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("h_seconds_sum{e=\"x\"} 20.003\n"));
        assert!(out.contains("h_seconds_count{e=\"x\"} 2\n"));
    }

    #[test]
    fn hooks_refresh_gauges_until_they_say_stop() {
        static G: GaugeVec = GaugeVec::new("g", "Gauge.", &[]);
        let alive = std::sync::Arc::new(());
        let weak = std::sync::Arc::downgrade(&alive);
        on_scrape(move || {
            let Some(_) = weak.upgrade() else {
                return false;
            };
            G.set(&[], G.get(&[]).unwrap_or(0.0) + 1.0);
            true
        });
        render();
        render();
        drop(alive);
        render();
        assert_eq!(G.get(&[]), Some(2.0), "refreshed while its role lived");
        assert!(render().contains("exitd_build_info{version="));
    }
}
