//! The admin HTTP API of `exitd run`: Prometheus metrics for now. It listens on localhost by
//! default; listening anywhere else requires a bearer token, which is then checked on every
//! request.

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens; `enabled = false` turns it off.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Bearer token; required when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_listen(),
            enabled: true,
            token: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9580))
}

fn default_enabled() -> bool {
    true
}

impl AdminConfig {
    /// Refuses an admin API reachable from other hosts without a token.
    pub fn validate(&self) -> Result<()> {
        if self.enabled
            && !self.listen.ip().is_loopback()
            && self.token.as_deref().is_none_or(str::is_empty)
        {
            bail!(
                "admin.listen = {} is not a loopback address: set admin.token, or listen on 127.0.0.1",
                self.listen
            );
        }
        Ok(())
    }
}

struct ApiState {
    pin_root: PathBuf,
    token: Option<String>,
}

/// Binds the admin API and serves it in the background; returns the bound address.
pub async fn start(config: &AdminConfig, pin_root: PathBuf) -> Result<Option<SocketAddr>> {
    if !config.enabled {
        return Ok(None);
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(ApiState {
        pin_root,
        token: config.token.clone(),
    });
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(Some(addr))
}

fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
        }
    }
    next.run(request).await
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let root = state.pin_root.clone();
    match tokio::task::spawn_blocking(move || crate::dataplane::metrics::gather(&root)).await {
        Ok(Ok(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_listen_address_needs_a_token() {
        let mut config = AdminConfig {
            listen: "0.0.0.0:9580".parse().unwrap(),
            ..AdminConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("admin.token"), "{err}");
        config.token = Some("s3cret".into());
        assert!(config.validate().is_ok());
        assert!(
            AdminConfig::default().validate().is_ok(),
            "localhost needs none"
        );
    }
}
