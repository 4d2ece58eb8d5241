//! `GET /status`: a JSON summary of the node. The roles contribute named sections (see
//! [`super::AdminRoutes::status`]); the data plane's section is read from the pinned maps,
//! which `exitd status` can also read without a running daemon.

use super::{AdminRoutes, metrics};
use crate::{
    config::Config,
    dataplane::{self, fwd6::Fwd6Maps, metrics::pin_dirs},
};
use exitd_common::{ROUTES6_MAP, Verdict};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::{collections::BTreeMap, path::Path, sync::Arc};

type Section = Box<dyn Fn() -> Value + Send + Sync>;

/// The registered sections, by name.
#[derive(Default)]
pub struct Sections(Vec<(String, Section)>);

impl Sections {
    pub fn add(&mut self, name: &str, section: impl Fn() -> Value + Send + Sync + 'static) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_string(), Box::new(section)));
    }

    fn collect(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(name, section)| (name.clone(), section()))
            .collect()
    }
}

/// The sections `exitd run` shows for its roles: `daemon` always, `broker` and `cluster` when
/// they run (from the same counters `/metrics` exports). `dataplane` is added by [`serve`].
pub fn add_role_sections(admin: &mut AdminRoutes, config: &Config, path: Option<&Path>) {
    admin.status("daemon", daemon_section(config, path));
    if let Some(parker) = config.parker.as_ref().filter(|p| p.enabled) {
        admin.status("broker", broker_section(parker.listen));
    }
    if let Some(cluster) = &config.cluster {
        admin.status("cluster", cluster_section(&cluster.name, &cluster.node));
    }
}

/// Where the configuration came from, which roles run, since when.
fn daemon_section(
    config: &Config,
    path: Option<&Path>,
) -> impl Fn() -> Value + Send + Sync + use<> {
    let forwarding = config.network.is_some() && config.dataplane.forward;
    let roles: Vec<&str> = [
        ("dataplane", true),
        ("reconciler", config.network.is_some()),
        ("forwarder", forwarding),
        ("broker", config.parker.as_ref().is_some_and(|p| p.enabled)),
        ("cluster", config.cluster.is_some()),
    ]
    .into_iter()
    .filter_map(|(role, on)| on.then_some(role))
    .collect();
    let fixed = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "config": path,
        "roles": roles,
        "xdp_mode": format!("{:?}", config.dataplane.xdp_mode).to_lowercase(),
        "interfaces": config.dataplane.interfaces,
    });
    let started = std::time::Instant::now();
    move || {
        let mut status = fixed.clone();
        status["uptime_seconds"] = started.elapsed().as_secs().into();
        status
    }
}

fn broker_section(listen: std::net::SocketAddr) -> impl Fn() -> Value + Send + Sync + use<> {
    move || {
        metrics::refresh();
        let config_answers = metrics::BROKER_REQUESTS.sum_where(|labels| {
            labels[0] != "/api/v1/wg/key/exchange"
                && labels[0] != "/api/v2/wg/key/exchange"
                && labels[1] == "200"
        });
        json!({
            "listen": listen,
            "requests": metrics::BROKER_REQUESTS.total(),
            "signed_config_answers": config_answers,
            "errors": metrics::BROKER_ERRORS.total(),
            "signing_failures": metrics::BROKER_SIGNING_FAILURES.total(),
            "nodes_served": metrics::IPAM_ALLOCATED.get(&[]),
        })
    }
}

fn cluster_section(cluster: &str, node: &str) -> impl Fn() -> Value + Send + Sync + use<> {
    let (cluster, node) = (cluster.to_string(), node.to_string());
    move || {
        metrics::refresh();
        let labelled = |gauge: &metrics::GaugeVec| -> Vec<String> {
            gauge
                .all()
                .into_iter()
                .map(|(mut l, _)| l.remove(0))
                .collect()
        };
        let last_ok = metrics::ETCD_LAST_SUCCESS.get(&[]);
        json!({
            "cluster": cluster,
            "node": node,
            "lease_valid": metrics::CLUSTER_LEASE_VALID.get(&[]) == Some(1.0),
            "members": labelled(&metrics::CLUSTER_MEMBER),
            "owned_gateways": labelled(&metrics::CLUSTER_GATEWAY_OWNED),
            "etcd": {
                "last_success_unix": last_ok,
                "seconds_since_success": last_ok.map(|t| crate::parker::unix_now() as f64 - t),
                "round_trips_ok": metrics::ETCD_REQUESTS.sum_where(|l| l[1] == "ok"),
                "errors": metrics::ETCD_REQUESTS.sum_where(|l| l[1] == "error"),
            },
        })
    }
}

/// `GET /status`.
pub async fn serve(sections: Arc<Sections>, pin_root: std::path::PathBuf) -> axum::Json<Value> {
    let mut status = sections.collect();
    let dataplane = tokio::task::spawn_blocking(move || dataplane_status(&pin_root))
        .await
        .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    status.insert("dataplane".into(), dataplane);
    axum::Json(Value::Object(status))
}

/// What one pin directory (the root's or a namespace's) holds.
#[derive(Debug, Serialize, PartialEq)]
pub struct PinDirStatus {
    /// "" for the root's own directory, else the network namespace.
    pub namespace: String,
    pub attachments: Vec<AttachmentStatus>,
    /// Routes in the forwarder's maps (None: no forwarder pinned here).
    pub routes: Option<usize>,
    /// Packets the forwarder redirected in XDP.
    pub forwarded_packets: Option<u64>,
    /// Why the maps could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One pinned XDP link and the mode the kernel reports for its interface.
#[derive(Debug, Serialize, PartialEq)]
pub struct AttachmentStatus {
    pub program: String,
    pub ifname: String,
    pub ifindex: u32,
    /// False when the interface was deleted or recreated since.
    pub live: bool,
    /// native, generic or offload; None when the interface could not be asked.
    pub mode: Option<&'static str>,
}

/// The XDP mode of every link with a program in `namespace` ("" = exitd's own), by ifindex.
fn xdp_modes(namespace: &str) -> anyhow::Result<BTreeMap<u32, &'static str>> {
    let name = (!namespace.is_empty()).then_some(namespace);
    crate::netlink::netns::run_in(name, || async {
        let handle = crate::netlink::netns::connect()?;
        let mut links = handle.link().get().execute();
        let mut modes = BTreeMap::new();
        while let Some(link) = links.try_next().await? {
            let attached = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                    LinkXdp::Attached(mode) => mode_name(mode),
                    _ => None,
                }),
                _ => None,
            });
            if let Some(mode) = attached {
                modes.insert(link.header.index, mode);
            }
        }
        Ok(modes)
    })
}

fn mode_name(attached: &XdpAttached) -> Option<&'static str> {
    match attached {
        XdpAttached::Driver => Some("native"),
        XdpAttached::SocketBuffer => Some("generic"),
        XdpAttached::Hardware => Some("offload"),
        XdpAttached::Multiple => Some("multiple"),
        _ => None,
    }
}

/// The data plane as the pinned links and maps under `pin_root` show it; never fails (an
/// unreadable part is reported in its `error`).
pub fn dataplane_status(pin_root: &Path) -> Value {
    let dirs: Vec<PinDirStatus> = pin_dirs(pin_root)
        .into_iter()
        .map(|(namespace, pins)| pin_dir_status(namespace, &pins))
        .filter(|d| !d.attachments.is_empty() || d.routes.is_some() || d.error.is_some())
        .collect();
    json!({ "pin_dir": pin_root, "namespaces": dirs })
}

fn pin_dir_status(namespace: String, pins: &dataplane::PinDir) -> PinDirStatus {
    let mut status = PinDirStatus {
        namespace,
        attachments: Vec::new(),
        routes: None,
        forwarded_packets: None,
        error: None,
    };
    match dataplane::attachments(pins) {
        Ok(attachments) if !attachments.is_empty() => {
            // A namespace that cannot be entered only loses the modes.
            let modes = xdp_modes(&status.namespace).unwrap_or_default();
            status.attachments = attachments
                .into_iter()
                .map(|a| AttachmentStatus {
                    mode: modes.get(&a.ifindex).copied().filter(|_| a.live),
                    program: a.program,
                    ifname: a.ifname,
                    ifindex: a.ifindex,
                    live: a.live,
                })
                .collect();
        }
        Ok(_) => {}
        Err(e) => status.error = Some(format!("{e:#}")),
    }
    if pins.map(ROUTES6_MAP).exists()
        && let Err(e) = read_forwarder(pins, &mut status)
    {
        status.error = Some(format!("{e:#}"));
    }
    status
}

fn read_forwarder(pins: &dataplane::PinDir, status: &mut PinDirStatus) -> anyhow::Result<()> {
    let maps = Fwd6Maps::open_pinned(pins)?;
    let table = maps.read()?;
    status.routes = Some(table.routes64.len() + table.lpm.len());
    let forwarded = maps
        .verdict_counters()?
        .into_iter()
        .filter(|(v, _)| *v == Verdict::Forwarded)
        .map(|(_, c)| c.packets)
        .sum();
    status.forwarded_packets = Some(forwarded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_added_again_replaces_the_first() {
        let mut sections = Sections::default();
        sections.add("a", || json!(1));
        sections.add("b", || json!(2));
        sections.add("a", || json!(3));
        let collected = sections.collect();
        assert_eq!(collected.len(), 2);
        assert_eq!(collected["a"], json!(3));
    }

    #[test]
    fn an_empty_pin_dir_is_an_empty_data_plane() {
        let dir = std::env::temp_dir().join(format!("exitd-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = dataplane_status(&dir);
        assert_eq!(status["namespaces"], json!([]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
