//! The cluster's admin API (dynvpn style, JSON; success `{}`, failure `{"error": "..."}`):
//!
//! - `GET /cluster`: this node, its replica mode and owned gateways, the live members and every
//!   gateway's owner, state and admin flag as etcd has them (a read endpoint);
//! - `POST /admin/cluster/gateways/{n}/offline` | `/online`: take a gateway out of service
//!   (every node releases it, none claims it) or put it back;
//! - `POST /admin/cluster/replica-mode/{Auto|Manual|Disabled}`: what this node announces.
//!
//! Writes sit under `/admin`, so they always need the admin token (see [`crate::api`]).

use super::{ClusterConfig, Membership, ReplicaMode, state};
use crate::api::AdminRoutes;
use axum::{
    Json,
    extract::Path,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use std::{collections::BTreeSet, sync::Arc};
use tokio::sync::watch;

/// What the handlers need of a running cluster node.
#[derive(Clone)]
pub struct ClusterApi {
    pub(super) config: ClusterConfig,
    pub(super) client: etcd_client::Client,
    pub(super) membership: Arc<Membership>,
    pub(super) owned: watch::Receiver<BTreeSet<u8>>,
}

/// Mounts the cluster's read and write endpoints.
pub fn mount(admin: &mut AdminRoutes, api: ClusterApi) {
    let read = api.clone();
    admin.read("/cluster", move || show(read.clone()));
    let (offline, online, mode) = (api.clone(), api.clone(), api);
    admin.write(
        "/cluster/gateways/{gateway}/offline",
        post(move |Path(g): Path<u8>| set_admin(offline.clone(), g, false)),
    );
    admin.write(
        "/cluster/gateways/{gateway}/online",
        post(move |Path(g): Path<u8>| set_admin(online.clone(), g, true)),
    );
    admin.write(
        "/cluster/replica-mode/{mode}",
        post(move |Path(m): Path<String>| set_mode(mode.clone(), m)),
    );
}

fn error(status: StatusCode, err: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": format!("{err:#}") }))).into_response()
}

async fn show(api: ClusterApi) -> Response {
    let mut client = api.client.clone();
    let view = match state::read_gateways(&mut client, &api.config).await {
        Ok(view) => view,
        Err(err) => return error(StatusCode::SERVICE_UNAVAILABLE, err),
    };
    let gateways: Vec<Value> = super::ring::GATEWAYS
        .map(|g| {
            json!({
                "gateway": g,
                "owner": view.owners.get(&g).map(|(node, _)| node),
                "state": view.state_of(g),
                "admin_offline": view.admin_offline.contains(&g),
            })
        })
        .collect();
    let members = api.membership.members();
    let mode = members.get(&api.config.node).map(|m| m.mode);
    Json(json!({
        "node": api.config.node,
        "replica_mode": mode,
        "owned": *api.owned.borrow(),
        "members": members,
        "gateways": gateways,
    }))
    .into_response()
}

async fn set_admin(api: ClusterApi, gateway: u8, online: bool) -> Response {
    let mut client = api.client.clone();
    match state::set_admin(&mut client, &api.config, gateway, online).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(err) => error(StatusCode::BAD_REQUEST, err),
    }
}

async fn set_mode(api: ClusterApi, mode: String) -> Response {
    let mode = match mode.as_str() {
        "Auto" => ReplicaMode::Auto,
        "Manual" => ReplicaMode::Manual,
        "Disabled" => ReplicaMode::Disabled,
        other => {
            let msg = format!("unknown replica mode {other:?}: Auto, Manual or Disabled");
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    match api
        .membership
        .set_mode(api.client.clone(), &api.config, mode)
        .await
    {
        Ok(()) => Json(json!({})).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err),
    }
}
