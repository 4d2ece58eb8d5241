//! The broker's HTTP API (axum): Parker `/config` (and its aliases) plus the legacy wgkex
//! key-exchange endpoints, with input limits and a per-client rate limit. Every error is
//! `{"error":{"message":"..."}}` with a 4xx/5xx status; handlers never panic on input.

use super::{
    Assigned, BrokerConfig, Concentrators, ParkerResponse, concentrators_from_config,
    ipam::Ipam,
    is_wireguard_key,
    items::{NodeStates, NodeTable, resolve_table},
    open_ipam,
    sign::ResponseSigner,
    unix_now,
};
use crate::{api::metrics, registry::RegistryConfig};
use anyhow::{Context, Result};
use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, RawQuery, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ipnet::Ipv4Net;
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

/// Longest accepted query string (nodes send ~150 bytes).
pub const MAX_QUERY: usize = 1024;
/// Largest accepted request body (legacy endpoints send ~100 bytes).
pub const MAX_BODY: usize = 4096;
/// Longest accepted nonce (nodes send 32 hex characters).
pub const MAX_NONCE: usize = 128;

/// Shared state of the running broker.
pub struct Broker {
    pub concentrators: Arc<Concentrators>,
    ipam: Arc<dyn Ipam>,
    signer: Option<ResponseSigner>,
    serve_parker: bool,
    /// Per-node answer parameters, resolved through the registry at (re)load; swapped whole.
    settings: RwLock<Arc<NodeTable>>,
    /// Edge-triggered rule state carried from one load to the next.
    node_states: Mutex<NodeStates>,
    /// The running `[parker]` section (what a reload compares against).
    config: BrokerConfig,
    range4: Ipv4Net,
    concentrator_address4: Ipv4Addr,
    domains: Vec<String>,
    limiter: Option<RateLimiter>,
    /// The shared etcd state, with `[parker.etcd]`.
    discovery: Option<super::discovery::Discovery>,
}

impl Broker {
    /// Builds the broker; fails on a bad signing key or an unusable IPAM.
    pub fn from_config(config: &BrokerConfig, standalone: bool) -> Result<Broker> {
        Self::with_registry(config, None, standalone)
    }

    /// Builds the broker with per-node settings resolved through the registry.
    pub fn with_registry(
        config: &BrokerConfig,
        registry: Option<&RegistryConfig>,
        standalone: bool,
    ) -> Result<Broker> {
        config.validate()?;
        let (table, states) = resolve_table(config, registry, &NodeStates::new())?;
        let signer = config.signer()?;
        match &signer {
            Some(s) => tracing::info!(format = s.format_name(), "signing key loaded"),
            None => tracing::warn!("no signing key configured: /config will answer 500"),
        }
        let limiter = (config.rate_limit.per_second > 0.0)
            .then(|| RateLimiter::new(config.rate_limit.per_second, config.rate_limit.burst));
        let concentrators = Arc::new(concentrators_from_config(config, standalone)?);
        let discovery = start_discovery(config, &concentrators);
        Ok(Broker {
            concentrators,
            ipam: open_ipam(config)?,
            signer,
            serve_parker: config.parker,
            settings: RwLock::new(Arc::new(table)),
            node_states: Mutex::new(states),
            config: config.clone(),
            range4: config.clat_subnet,
            concentrator_address4: config.concentrator_address4,
            domains: config.domains.clone(),
            limiter,
            discovery,
        })
    }

    /// Applies a re-read configuration file: the per-node settings are resolved anew and
    /// swapped in as a whole, or, on any error, the running ones stay. Settings outside the
    /// registry (listen address, key, IPAM, concentrators) need a restart.
    pub fn reload(&self, file: &crate::config::Config) -> Result<()> {
        let mut new = file
            .parker
            .clone()
            .context("the new file has no [parker] section")?;
        new.inherit_cluster(file.cluster.as_ref());
        new.validate().context("[parker]")?;
        let mut effective = self.config.clone();
        effective.max_mtu = new.max_mtu;
        effective.retry_interval = new.retry_interval;
        effective.wg_keepalive = new.wg_keepalive;
        if effective != new {
            tracing::warn!(
                "changes to [parker] other than max_mtu, retry_interval, wg_keepalive take \
                 effect after a restart"
            );
        }
        let mut states = self.node_states.lock().unwrap_or_else(|e| e.into_inner());
        let (table, new_states) = resolve_table(&effective, file.registry.as_ref(), &states)?;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        *states = new_states;
        Ok(())
    }

    /// For status output and metrics: the IPAM's size (None while unknown, e.g. before the
    /// etcd IPAM first connected) and every concentrator with its liveness and peer count.
    pub fn summary(&self) -> super::BrokerSummary {
        super::BrokerSummary {
            ipam_nodes: self.ipam.node_count(),
            concentrators: self.concentrators.states(),
        }
    }

    /// The settings in force (one `Arc` clone; the table is replaced, never mutated).
    pub fn settings(&self) -> Arc<NodeTable> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }

    async fn parker_config(&self, query: &str) -> Result<String, ApiError> {
        let query = ParkerQuery::parse(query)?;
        if !self.serve_parker {
            return Err(ApiError::bad_request("Parker is disabled on this broker"));
        }
        let signer = self.signer.as_ref().ok_or_else(|| {
            metrics::BROKER_SIGNING_FAILURES.inc(&[]);
            ApiError::internal("the broker has no signing key")
        })?;
        let node = self.ipam.node(&query.pubkey).await.map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "IPAM lookup failed");
            ApiError::internal("IPAM error")
        })?;
        let table = self.settings();
        let settings = table.get(&query.pubkey);
        let assigned = self
            .concentrators
            .assign_preferring(&node.selected, &settings.prefs);
        if assigned.is_empty() {
            return Err(ApiError::bad_request("no gateway online"));
        }
        self.remember_selection(&query.pubkey, &node.selected, &assigned)
            .await;
        if let Some(discovery) = &self.discovery {
            let names: Vec<String> = assigned.iter().map(|a| a.name.clone()).collect();
            discovery.announce(&query.pubkey, node.prefix, &names);
        }
        let response = ParkerResponse {
            nonce: &query.nonce,
            time: unix_now(),
            id: &query.pubkey,
            mtu: query.v6mtu.min(settings.max_mtu),
            concentrators: &assigned,
            concentrator_address4: self.concentrator_address4,
            node: &node,
            range4: self.range4,
            wg_keepalive: settings.wg_keepalive,
            retry: settings.retry,
        };
        Ok(response.signed_body(signer))
    }

    async fn remember_selection(&self, pubkey: &str, previous: &[String], assigned: &[Assigned]) {
        if assigned.len() == previous.len()
            && assigned.iter().zip(previous).all(|(a, p)| a.name == *p)
        {
            return;
        }
        let names: Vec<String> = assigned.iter().map(|a| a.name.clone()).collect();
        if let Err(e) = self.ipam.store_selection(pubkey, &names).await {
            // Only stickiness suffers; the node still gets a valid answer.
            tracing::warn!(error = %format!("{e:#}"), "could not store the selection");
        }
    }

    fn legacy_request(&self, body: &[u8]) -> Result<LegacyRequest, ApiError> {
        let request: LegacyRequest = serde_json::from_slice(body).map_err(|_| {
            ApiError::bad_request("expected JSON {\"domain\": ..., \"public_key\": ...}")
        })?;
        if !is_wireguard_key(&request.public_key) {
            return Err(ApiError::bad_request(
                "public_key is not a WireGuard public key",
            ));
        }
        if !self.domains.is_empty() && !self.domains.contains(&request.domain) {
            return Err(ApiError::bad_request("unknown domain"));
        }
        Ok(request)
    }
}

/// Follows the concentrators in etcd when `[parker.etcd]` is set (needs a Tokio runtime).
fn start_discovery(
    config: &BrokerConfig,
    concentrators: &Arc<Concentrators>,
) -> Option<super::discovery::Discovery> {
    let space = config.etcd.clone()?;
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!("no runtime: the broker does not follow etcd");
        return None;
    }
    let name = format!("{}-{}", super::hostname(), std::process::id());
    let interval = std::time::Duration::from_secs(config.announce_interval);
    Some(super::discovery::Discovery::start(
        space,
        Arc::clone(concentrators),
        interval,
        name,
    ))
}

/// A validated `/config` query.
#[derive(Debug, PartialEq, Eq)]
pub struct ParkerQuery {
    pub pubkey: String,
    pub nonce: String,
    pub v6mtu: u32,
}

impl ParkerQuery {
    /// Parses and validates; `version`, `tc_ingress`, `tc_egress` and unknown parameters are
    /// ignored like the reference does; the first of repeated parameters wins.
    pub fn parse(query: &str) -> Result<ParkerQuery, ApiError> {
        if query.len() > MAX_QUERY {
            return Err(ApiError::new(
                StatusCode::URI_TOO_LONG,
                "query string too long",
            ));
        }
        let (mut pubkey, mut nonce, mut v6mtu) = (None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "pubkey" => &mut pubkey,
                "nonce" => &mut nonce,
                "v6mtu" => &mut v6mtu,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        let pubkey = pubkey.ok_or_else(|| ApiError::bad_request("missing parameter pubkey"))?;
        // An unencoded '+' arrives as a space in form encoding; keys never contain spaces.
        let pubkey = pubkey.replace(' ', "+");
        if !is_wireguard_key(&pubkey) {
            return Err(ApiError::bad_request(
                "pubkey is not a WireGuard public key",
            ));
        }
        let nonce = nonce.map(|n| n.into_owned()).unwrap_or_default();
        if nonce.len() > MAX_NONCE {
            return Err(ApiError::bad_request("nonce too long"));
        }
        let v6mtu = match v6mtu {
            None => 1280,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|m| (1280..=65_535).contains(m))
                .ok_or_else(|| {
                    ApiError::bad_request("v6mtu must be an integer from 1280 to 65535")
                })?,
        };
        Ok(ParkerQuery {
            pubkey,
            nonce,
            v6mtu,
        })
    }
}

#[derive(Debug, serde::Deserialize)]
struct LegacyRequest {
    domain: String,
    public_key: String,
}

/// An error answer: status plus `{"error":{"message":...}}`.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: &'static str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: &'static str) -> Self {
        ApiError { status, message }
    }
    pub fn bad_request(message: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn internal(message: &'static str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::BROKER_ERRORS.inc(&[self.message]);
        let body = serde_json::json!({ "error": { "message": self.message } }).to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// Per-client token buckets.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Above this many tracked clients, full buckets are forgotten.
const MAX_TRACKED_CLIENTS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`; false when it has none left.
    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn rate_limit(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &broker.limiter
        && !limiter.allow(peer.ip(), Instant::now())
    {
        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded").into_response();
    }
    next.run(request).await
}

async fn config_handler(State(broker): State<Arc<Broker>>, RawQuery(query): RawQuery) -> Response {
    match broker.parker_config(query.as_deref().unwrap_or("")).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn v2_handler(State(broker): State<Arc<Broker>>, body: Bytes) -> Response {
    let request = match broker.legacy_request(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(best) = broker.concentrators.best_overall() else {
        return ApiError::bad_request("no gateway online").into_response();
    };
    tracing::info!(
        domain = request.domain,
        key = request.public_key,
        worker = best.name,
        "v2 key exchange"
    );
    let body = serde_json::json!({
        "Endpoint": {
            "Address": best.data.external_address,
            "Port": best.data.port.to_string(),
            "AllowedIPs": [best.data.link_address.to_string()],
            "PublicKey": best.data.public_key,
        }
    });
    axum::Json(body).into_response()
}

async fn v1_handler(State(broker): State<Arc<Broker>>, body: Bytes) -> Response {
    match broker.legacy_request(&body) {
        Ok(request) => {
            tracing::info!(
                domain = request.domain,
                key = request.public_key,
                "v1 key exchange"
            );
            axum::Json(serde_json::json!({ "Message": "OK" })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not found").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response()
}

/// Axum turns its own extractor failures (e.g. an oversized body) into plain text; give them
/// the JSON error shape too.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.is_client_error() && !is_json {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large",
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed",
            _ => "bad request",
        };
        return ApiError::new(status, message).into_response();
    }
    response
}

/// The broker's endpoints; anything else is counted as `other` (bounded label values).
const ENDPOINTS: [&str; 5] = [
    "/config",
    "/api/v3/config",
    "/api/v3/wg/key/exchange",
    "/api/v2/wg/key/exchange",
    "/api/v1/wg/key/exchange",
];

/// Counts every answer by endpoint and status and observes its latency (outermost layer:
/// rate-limited and malformed requests count too).
async fn record_metrics(request: Request, next: Next) -> Response {
    let endpoint = ENDPOINTS
        .into_iter()
        .find(|e| *e == request.uri().path())
        .unwrap_or("other");
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    metrics::BROKER_REQUESTS.inc(&[endpoint, status.as_str()]);
    metrics::BROKER_LATENCY.observe(&[endpoint], started.elapsed().as_secs_f64());
    response
}

/// The routes, with limits.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route(ENDPOINTS[0], get(config_handler))
        .route(ENDPOINTS[1], get(config_handler))
        .route(ENDPOINTS[2], get(config_handler))
        .route(ENDPOINTS[3], post(v2_handler))
        .route(ENDPOINTS[4], post(v1_handler))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&broker),
            rate_limit,
        ))
        .layer(middleware::from_fn(record_metrics))
        .with_state(broker)
}

/// Keeps `exitd_ipam_allocated_prefixes` current while the broker lives.
fn export_ipam_size(broker: &Arc<Broker>) {
    let broker = Arc::downgrade(broker);
    metrics::on_scrape(move || {
        let Some(broker) = broker.upgrade() else {
            return false;
        };
        if let Some(nodes) = broker.ipam.node_count() {
            metrics::IPAM_ALLOCATED.set(&[], nodes as f64);
        }
        true
    });
}

/// Binds the listening socket.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    export_ipam_size(&broker);
    let app = router(broker).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E=";

    #[test]
    fn query_as_nodes_send_it() {
        let q = ParkerQuery::parse(
            "pubkey=%2BY4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT%2BPkZ5E%3D&nonce=00ff&v6mtu=1400&version=1",
        )
        .unwrap();
        assert_eq!(
            q,
            ParkerQuery {
                pubkey: KEY.into(),
                nonce: "00ff".into(),
                v6mtu: 1400
            }
        );
        let q = ParkerQuery::parse("pubkey=+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E=").unwrap();
        assert_eq!(
            (q.pubkey.as_str(), q.nonce.as_str(), q.v6mtu),
            (KEY, "", 1280)
        );
    }

    #[test]
    fn bad_queries_are_400() {
        for query in [
            "",
            "nonce=1",
            "pubkey=abc",
            "pubkey=%2BY4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT%2BPkZ5E%3D&v6mtu=x",
            "pubkey=%2BY4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT%2BPkZ5E%3D&v6mtu=-1",
            "pubkey=%2BY4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT%2BPkZ5E%3D&v6mtu=99999999999",
            "pubkey=%2BY4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT%2BPkZ5E%3D&v6mtu=100",
            "pubkey=%FF%FE",
        ] {
            let err = ParkerQuery::parse(query).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{query}");
        }
        let long = format!("pubkey={KEY}&nonce={}", "a".repeat(2000));
        assert_eq!(
            ParkerQuery::parse(&long).unwrap_err().status,
            StatusCode::URI_TOO_LONG
        );
    }

    #[test]
    fn token_bucket_refills() {
        let limiter = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow(ip, t0)));
        assert!(!limiter.allow(ip, t0));
        assert!(
            limiter.allow("192.0.2.2".parse().unwrap(), t0),
            "other clients unaffected"
        );
        assert!(limiter.allow(ip, t0 + std::time::Duration::from_millis(600)));
    }

    #[test]
    fn summary_shows_the_ipam_size_and_the_concentrators() {
        let dir = std::env::temp_dir().join(format!("exitd-summary-{}", std::process::id()));
        let mut config: BrokerConfig = toml::from_str(
            "[[concentrators]]\nname = \"gw1\"\nid = 3\npop = \"vie\"\n\
             endpoint = \"gw1.example:1\"\nlink_address = \"fe80::1\"\n\
             public_key = \"OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs=\"\n",
        )
        .unwrap();
        config.ipam.path = dir.clone();
        let broker = Broker::from_config(&config, true).unwrap();
        let summary = broker.summary();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(summary.ipam_nodes, Some(0));
        let gw1 = &summary.concentrators[0];
        assert_eq!((gw1.name.as_str(), gw1.id, gw1.online), ("gw1", 3, true));
        assert_eq!(gw1.connected_peers, Some(0));
    }
}
