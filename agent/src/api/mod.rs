//! The admin HTTP API of `exitd run`.
//!
//! Two kinds of endpoints, registered by the roles through [`AdminRoutes`]:
//! - *read* endpoints (`GET /metrics`, `GET /status`, …) change nothing. On a loopback
//!   address they are open to local users unless a token is set; any other listen address
//!   requires a token, and then every read needs it.
//! - *write* endpoints live under `/admin/…` and ALWAYS need the token, on loopback too: any
//!   local user can reach a loopback port, and a write (taking a node offline, …) must not be
//!   that cheap. Without `admin.token` the write endpoints answer 403 and say how to enable
//!   them.
//!
//! A missing or wrong token is 401 with `WWW-Authenticate: Bearer`.

pub mod cli;
pub mod metrics;
pub mod status;

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    extract::{Request, State},
    handler::Handler,
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
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
    /// Bearer token: required for every request when set, for reads on a non-loopback
    /// `listen`, and for writes (`/admin/…`) always — without it writes are disabled.
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
        if self.enabled && !self.listen.ip().is_loopback() && self.token().is_none() {
            bail!(
                "admin.listen = {} is not a loopback address: set admin.token, or listen on 127.0.0.1",
                self.listen
            );
        }
        Ok(())
    }

    /// The token, if a non-empty one is configured.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }
}

/// The endpoints the roles contribute; [`start`] serves them. Read routes answer `GET` at
/// their path; write routes are mounted under `/admin` (`write("/cluster/offline", post(h))`
/// serves `POST /admin/cluster/offline`) behind the write-token check.
pub struct AdminRoutes {
    read: Router,
    write: Router,
    status: status::Sections,
}

impl Default for AdminRoutes {
    fn default() -> Self {
        AdminRoutes {
            read: Router::new(),
            write: Router::new(),
            status: status::Sections::default(),
        }
    }
}

impl AdminRoutes {
    /// A read-only endpoint: `GET path`.
    pub fn read<H, T>(&mut self, path: &str, handler: H) -> &mut Self
    where
        H: Handler<T, ()>,
        T: 'static,
    {
        self.read = std::mem::take(&mut self.read).route(path, get(handler));
        self
    }

    /// A write endpoint at `/admin{path}`, any methods the router gives it.
    pub fn write(&mut self, path: &str, route: MethodRouter) -> &mut Self {
        self.write = std::mem::take(&mut self.write).route(path, route);
        self
    }

    /// A section of `GET /status`: `name` → what `section` returns when asked.
    pub fn status(
        &mut self,
        name: &str,
        section: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> &mut Self {
        self.status.add(name, section);
        self
    }
}

/// What `exitd run` itself serves: the status sections of its roles and
/// `POST /admin/reload`, which re-reads the configuration like `systemctl reload` (SIGHUP).
pub fn daemon_routes(
    admin: &mut AdminRoutes,
    config: &crate::config::Config,
    path: Option<&std::path::Path>,
) {
    status::add_role_sections(admin, config, path);
    admin.write("/reload", axum::routing::post(reload));
}

/// Sends this process SIGHUP; `exitd run` handles it (never ends on it).
async fn reload() -> Response {
    // SAFETY: kill(2) on our own pid; only registered by `exitd run`, which handles SIGHUP.
    if unsafe { libc::kill(libc::getpid(), libc::SIGHUP) } != 0 {
        let error = std::io::Error::last_os_error();
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response();
    }
    tracing::info!("reload requested over the admin API");
    (
        StatusCode::ACCEPTED,
        "reload requested; the log says what changed\n",
    )
        .into_response()
}

struct Auth {
    token: Option<String>,
}

/// Binds the admin API and serves `routes` (plus `/metrics` and `/status`) in the
/// background; returns the bound address.
pub async fn start(
    config: &AdminConfig,
    pin_root: PathBuf,
    routes: AdminRoutes,
) -> Result<Option<SocketAddr>> {
    if !config.enabled {
        return Ok(None);
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", config.listen))?;
    let addr = listener.local_addr()?;
    let auth = Arc::new(Auth {
        token: config.token().map(str::to_string),
    });
    let app = router(auth, pin_root, routes);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(Some(addr))
}

fn router(auth: Arc<Auth>, pin_root: PathBuf, mut routes: AdminRoutes) -> Router {
    let sections = Arc::new(std::mem::take(&mut routes.status));
    let metrics_root = pin_root.clone();
    routes
        .read("/metrics", move || metrics::serve(metrics_root.clone()))
        .read("/status", move || {
            status::serve(sections.clone(), pin_root.clone())
        });
    let write = routes.write.layer(middleware::from_fn_with_state(
        auth.clone(),
        require_write_token,
    ));
    routes
        .read
        .layer(middleware::from_fn_with_state(auth, require_read_token))
        .nest("/admin", write)
}

async fn require_read_token(
    State(auth): State<Arc<Auth>>,
    request: Request,
    next: Next,
) -> Response {
    match &auth.token {
        Some(token) if !presents(&request, token) => unauthorized(),
        _ => next.run(request).await,
    }
}

async fn require_write_token(
    State(auth): State<Arc<Auth>>,
    request: Request,
    next: Next,
) -> Response {
    match &auth.token {
        None => (
            StatusCode::FORBIDDEN,
            "write endpoints are disabled: set admin.token in the configuration to enable them\n",
        )
            .into_response(),
        Some(token) if !presents(&request, token) => unauthorized(),
        Some(_) => next.run(request).await,
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token\n",
    )
        .into_response()
}

/// Whether the request carries `Authorization: Bearer <token>`; compared in constant time
/// so the answer's timing does not reveal how much of a guess was right.
fn presents(request: &Request, token: &str) -> bool {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    #[test]
    fn a_public_listen_address_needs_a_token() {
        let mut config = AdminConfig {
            listen: "0.0.0.0:9580".parse().unwrap(),
            ..AdminConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("admin.token"), "{err}");
        config.token = Some(String::new());
        assert!(config.validate().is_err(), "an empty token is no token");
        config.token = Some("s3cret".into());
        assert!(config.validate().is_ok());
        assert!(
            AdminConfig::default().validate().is_ok(),
            "localhost needs none"
        );
    }

    /// Serves a read and a write route on 127.0.0.1 with `token` and returns the base URL.
    async fn serve(token: Option<&str>) -> String {
        let mut routes = AdminRoutes::default();
        routes
            .read("/hello", || async { "hello" })
            .write("/poke", post(|| async { "poked" }))
            .status("test", || serde_json::json!({ "up": true }));
        let config = AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            enabled: true,
            token: token.map(str::to_string),
        };
        let pins = std::env::temp_dir().join("exitd-api-test-no-pins");
        let addr = start(&config, pins, routes).await.unwrap().unwrap();
        format!("http://{addr}")
    }

    async fn status_of(request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn without_a_token_reads_are_open_on_loopback_and_writes_are_disabled() {
        let base = serve(None).await;
        let http = reqwest::Client::new();
        assert_eq!(
            status_of(http.get(format!("{base}/hello"))).await,
            (200, "hello".into())
        );
        let (code, body) = status_of(http.get(format!("{base}/status"))).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"test\":{\"up\":true}"), "{body}");
        let (code, body) = status_of(http.post(format!("{base}/admin/poke"))).await;
        assert_eq!(code, 403);
        assert!(body.contains("set admin.token"), "{body}");
        let (code, _) =
            status_of(http.post(format!("{base}/admin/poke")).bearer_auth("guess")).await;
        assert_eq!(code, 403, "no token configured: no token opens writes");
    }

    #[tokio::test]
    async fn with_a_token_every_request_needs_it() {
        let base = serve(Some("s3cret")).await;
        let http = reqwest::Client::new();
        for request in [
            http.get(format!("{base}/hello")),
            http.get(format!("{base}/metrics")),
            http.post(format!("{base}/admin/poke")),
            http.post(format!("{base}/admin/poke")).bearer_auth("s3cre"),
            http.post(format!("{base}/admin/poke"))
                .bearer_auth("s3cret!"),
            http.post(format!("{base}/admin/poke"))
                .basic_auth("s3cret", Some("s3cret")),
        ] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 401);
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        let authorized = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");
        assert_eq!(
            status_of(authorized(http.get(format!("{base}/hello")))).await,
            (200, "hello".into())
        );
        assert_eq!(
            status_of(authorized(http.post(format!("{base}/admin/poke")))).await,
            (200, "poked".into())
        );
        let (code, _) = status_of(authorized(http.get(format!("{base}/admin/poke")))).await;
        assert_eq!(code, 405, "a write route answers only its methods");
        let (code, _) = status_of(authorized(http.post(format!("{base}/hello")))).await;
        assert_eq!(code, 405, "read routes answer GET only");
    }
}
