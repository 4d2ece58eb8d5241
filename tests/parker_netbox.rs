//! The NetBox IPAM backend of `exitd broker`.
//!
//! NetBox itself cannot run on these machines (it needs Python >= 3.12), so this test runs an
//! in-process HTTP emulator of exactly the NetBox endpoints the backend uses:
//! `GET /api/ipam/prefixes/` (filters: arbitrary equality like `tag`, `within`,
//! `description__ic`), `GET|PATCH|DELETE /api/ipam/prefixes/{id}/` and
//! `POST /api/ipam/prefixes/{id}/available-prefixes/` (lowest free child of the requested
//! length, NetBox's behaviour). It checks the token header like NetBox does. The broker is the
//! real binary talking HTTP to it.

#[path = "parker_common.rs"]
mod common;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use common::*;
use ipnet::Ipv6Net;
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
    sync::{Arc, Mutex},
};

const TOKEN: &str = "0123456789abcdef";

#[derive(Clone)]
struct Prefix {
    prefix: Ipv6Net,
    description: String,
    tag: String,
    extra: serde_json::Map<String, Value>,
}

#[derive(Default)]
struct NetBox {
    prefixes: BTreeMap<u64, Prefix>,
    next_id: u64,
    posts: u64,
}

type Db = Arc<Mutex<NetBox>>;

fn object(id: u64, p: &Prefix) -> Value {
    let mut o = json!({"id": id, "prefix": p.prefix.to_string(), "description": p.description, "tags": [p.tag]});
    for (k, v) in &p.extra {
        o[k] = v.clone();
    }
    o
}

fn authorized(headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == format!("Token {TOKEN}") => Ok(()),
        _ => Err((
            StatusCode::FORBIDDEN,
            Json(json!({"detail": "Invalid token"})),
        )),
    }
}

async fn list(
    State(db): State<Db>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorized(&headers)?;
    let db = db.lock().expect("lock");
    let within: Option<Ipv6Net> = q.get("within").and_then(|w| w.parse().ok());
    let results: Vec<Value> = db
        .prefixes
        .iter()
        .filter(|(_, p)| q.get("tag").is_none_or(|t| *t == p.tag))
        .filter(|(_, p)| within.is_none_or(|w| w.contains(&p.prefix) && w != p.prefix))
        .filter(|(_, p)| {
            q.get("description__ic")
                .is_none_or(|s| p.description.to_lowercase().contains(&s.to_lowercase()))
        })
        .map(|(id, p)| object(*id, p))
        .collect();
    Ok(Json(
        json!({"count": results.len(), "next": null, "previous": null, "results": results}),
    ))
}

async fn one(
    State(db): State<Db>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorized(&headers)?;
    let db = db.lock().expect("lock");
    let p = db
        .prefixes
        .get(&id)
        .ok_or((StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))))?;
    Ok(Json(object(id, p)))
}

async fn patch(
    State(db): State<Db>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorized(&headers)?;
    let mut db = db.lock().expect("lock");
    let p = db
        .prefixes
        .get_mut(&id)
        .ok_or((StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))))?;
    if let Some(d) = body["description"].as_str() {
        p.description = d.to_string();
    }
    Ok(Json(object(id, p)))
}

async fn delete(
    State(db): State<Db>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<StatusCode, (StatusCode, Json<Value>)> {
    authorized(&headers)?;
    let mut db = db.lock().expect("lock");
    db.prefixes
        .remove(&id)
        .ok_or((StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lowest free child prefix of the requested length, like NetBox.
async fn available(
    State(db): State<Db>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), (StatusCode, Json<Value>)> {
    authorized(&headers)?;
    let mut db = db.lock().expect("lock");
    db.posts += 1;
    let parent = db
        .prefixes
        .get(&id)
        .ok_or((StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))))?
        .clone();
    let len = body["prefix_length"].as_u64().unwrap_or(0) as u8;
    let step = 1u128 << (128 - len);
    let count = 1u128 << (len - parent.prefix.prefix_len());
    let used: Vec<Ipv6Net> = db
        .prefixes
        .values()
        .map(|p| p.prefix)
        .filter(|p| parent.prefix.contains(p) && *p != parent.prefix)
        .collect();
    let free = (0..count)
        .map(|i| {
            Ipv6Net::new(
                Ipv6Addr::from(u128::from(parent.prefix.network()) + i * step),
                len,
            )
            .expect("net")
        })
        .find(|c| !used.iter().any(|u| u.contains(c) || c.contains(u)))
        .ok_or((StatusCode::CONFLICT, Json(json!({"detail": "no space"}))))?;
    let mut extra = serde_json::Map::new();
    for (k, v) in body.as_object().expect("object") {
        if !["prefix_length", "description"].contains(&k.as_str()) {
            extra.insert(k.clone(), v.clone());
        }
    }
    let p = Prefix {
        prefix: free,
        description: body["description"].as_str().unwrap_or("").to_string(),
        tag: "node".into(),
        extra,
    };
    db.next_id += 1;
    let new_id = db.next_id;
    db.prefixes.insert(new_id, p.clone());
    Ok((StatusCode::CREATED, Json(object(new_id, &p))))
}

/// Starts the emulator on a loopback port in a background runtime; returns its URL.
fn start_emulator(db: Db) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let app = Router::new()
                .route("/api/ipam/prefixes/", get(list))
                .route(
                    "/api/ipam/prefixes/{id}/",
                    get(one).patch(patch).delete(delete),
                )
                .route(
                    "/api/ipam/prefixes/{id}/available-prefixes/",
                    post(available),
                )
                .with_state(db);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    format!("http://{}", rx.recv().expect("emulator address"))
}

fn seed(db: &Db, prefix: &str, tag: &str, description: &str) -> u64 {
    let mut db = db.lock().expect("lock");
    db.next_id += 1;
    let id = db.next_id;
    db.prefixes.insert(
        id,
        Prefix {
            prefix: prefix.parse().expect("prefix"),
            description: description.into(),
            tag: tag.into(),
            extra: Default::default(),
        },
    );
    id
}

fn netbox_broker(dir: &TempDir, url: &str, tag: &str) -> Result<Broker, String> {
    let (sec, _) = keygen(dir.path());
    let netbox = format!(
        "[parker.ipam.netbox]\nurl = \"{url}\"\napi_key = \"{TOKEN}\"\nfilter = {{ tag = \"{tag}\" }}\n\
         additional_data = {{ tenant = 7 }}\n"
    );
    let config = write_config(dir.path(), &sec, "", &netbox);
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("[parker.ipam]\n", "[parker.ipam]\nbackend = \"netbox\"\n");
    std::fs::write(&config, text).expect("write");
    Broker::try_start(&["--config", config.to_str().expect("utf-8")])
}

#[test]
fn allocates_finds_dedupes_and_records_selection_in_netbox() {
    let db: Db = Arc::default();
    let parent_id = seed(&db, "2001:db8:77::/48", "parker", "node prefixes");
    seed(&db, "2001:db8:99::/48", "other", "unrelated");
    let url = start_emulator(db.clone());
    let dir = TempDir::new("netbox");
    let broker = netbox_broker(&dir, &url, "parker").expect("broker starts");
    let http = client();

    // A new node: allocated from the parent via available-prefixes, description holds the record.
    let key = node_key(1);
    let (status, body) = get_config(&http, &broker.url, &key, "n", 1400);
    assert_eq!(status, 200, "{body}");
    assert_eq!(config_json(&body)["range6"], "2001:db8:77::/64");
    let (status, body) = get_config(&http, &broker.url, &key, "n", 1400);
    assert_eq!(status, 200);
    assert_eq!(
        config_json(&body)["range6"],
        "2001:db8:77::/64",
        "found again, not reallocated"
    );
    {
        let db = db.lock().expect("lock");
        assert_eq!(db.posts, 1);
        let (_, p) = db
            .prefixes
            .iter()
            .find(|(id, _)| **id > 2)
            .expect("allocated");
        assert_eq!(p.prefix.to_string(), "2001:db8:77::/63");
        assert_eq!(
            p.extra.get("tenant"),
            Some(&json!(7)),
            "additional data sent"
        );
        assert_eq!(p.extra.get("mark_utilized"), Some(&json!(true)));
        let desc: Value = serde_json::from_str(&p.description).expect("description JSON");
        assert_eq!(desc["pubkey"], key.as_str());
        let selected = desc["selected_concentrators"]
            .as_array()
            .expect("selection stored");
        assert_eq!(selected.len(), 2, "{desc}");
    }

    // Duplicates from two brokers racing: the lowest id wins, the other is deleted.
    let key2 = node_key(2);
    let desc = json!({"pubkey": key2, "selected_concentrators": []}).to_string();
    let low = seed(&db, "2001:db8:77:10::/63", "node", &desc);
    let high = seed(&db, "2001:db8:77:20::/63", "node", &desc);
    // A different key that merely contains key2 case-insensitively must not match.
    seed(
        &db,
        "2001:db8:77:30::/63",
        "node",
        &json!({"pubkey": key2.to_lowercase()}).to_string(),
    );
    let (status, body) = get_config(&http, &broker.url, &key2, "n", 1400);
    assert_eq!(status, 200, "{body}");
    assert_eq!(config_json(&body)["range6"], "2001:db8:77:10::/64");
    let db_now = db.lock().expect("lock");
    assert!(db_now.prefixes.contains_key(&low) && !db_now.prefixes.contains_key(&high));
    assert!(db_now.prefixes.contains_key(&parent_id));
}

#[test]
fn ambiguous_parent_filter_is_an_ipam_error() {
    let db: Db = Arc::default();
    seed(&db, "2001:db8:1::/48", "parker", "a");
    seed(&db, "2001:db8:2::/48", "parker", "b");
    let url = start_emulator(db);
    let dir = TempDir::new("netbox2");
    let broker = netbox_broker(&dir, &url, "parker").expect("broker starts");
    let resp = get_bare(&client(), &broker.url, &node_key(1));
    assert_eq!(resp.status().as_u16(), 500);
    let body: Value = resp.json().expect("json");
    assert_eq!(body["error"]["message"], "IPAM error");
}
