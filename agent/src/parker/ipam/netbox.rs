//! NetBox as IPAM, the way the reference broker uses it:
//! - the parent is the one prefix matching `filter` (query parameters for
//!   `GET /api/ipam/prefixes/`); zero or several matches are a configuration error;
//! - a node is found with `within=<parent>&description__ic=<pubkey>`; the description holds
//!   the node record as JSON (`pubkey`, `last_allocated_on`, `created_by`,
//!   `selected_concentrators`);
//! - a new node gets `POST /api/ipam/prefixes/<parent id>/available-prefixes/` with
//!   `prefix_length` 63, the description, `mark_utilized` and `additional_data`;
//! - duplicates (two brokers allocating at once) are resolved by keeping the lowest id and
//!   deleting the others;
//! - a changed selection is written back with `PATCH /api/ipam/prefixes/<id>/`.

use super::super::unix_now;
use super::{Description, Ipam, NODE_PREFIX_LEN, NodeRecord, iso8601};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use ipnet::Ipv6Net;
use serde::Deserialize;
use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Connection and allocation settings.
#[derive(Debug, Clone)]
pub struct NetboxSettings {
    /// Base URL, e.g. `https://netbox.example.net`.
    pub url: String,
    pub api_key: String,
    /// Query parameters selecting the parent prefix.
    pub filter: Vec<(String, String)>,
    /// Extra fields for created prefixes (tenant, role, tags, ...).
    pub additional_data: serde_json::Map<String, serde_json::Value>,
    pub created_by: String,
}

#[derive(Debug, Deserialize)]
struct Page {
    results: Vec<PrefixObject>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct PrefixObject {
    id: u64,
    prefix: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Clone, Copy)]
struct Parent {
    id: u64,
    prefix: Ipv6Net,
}

/// The NetBox backend.
pub struct NetboxIpam {
    http: reqwest::Client,
    settings: NetboxSettings,
    parent: tokio::sync::OnceCell<Parent>,
    /// Prefix object id per node, to update descriptions without another lookup.
    ids: Mutex<HashMap<String, u64>>,
}

impl NetboxIpam {
    pub fn new(settings: NetboxSettings) -> Result<NetboxIpam> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the NetBox HTTP client")?;
        Ok(NetboxIpam {
            http,
            settings: NetboxSettings {
                url: settings.url.trim_end_matches('/').to_string(),
                ..settings
            },
            parent: tokio::sync::OnceCell::new(),
            ids: Mutex::new(HashMap::new()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.url)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.request(method, self.url(path)))
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header("Authorization", format!("Token {}", self.settings.api_key))
            .header("Accept", "application/json")
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = req.send().await.context("NetBox request failed")?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!(
                "NetBox answered {status}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        resp.json()
            .await
            .context("NetBox sent an unexpected response")
    }

    /// The parent prefix; resolved once, retried on the next request after a failure.
    async fn parent(&self) -> Result<Parent> {
        self.parent
            .get_or_try_init(|| async {
                let req = self
                    .request(reqwest::Method::GET, "/api/ipam/prefixes/")
                    .query(&self.settings.filter);
                let page: Page = self.send(req).await?;
                let [only] = page.results.as_slice() else {
                    bail!(
                        "the NetBox prefix filter {:?} must match exactly one parent prefix, it \
                         matches {}",
                        self.settings.filter,
                        page.results.len()
                    );
                };
                let prefix: Ipv6Net = only
                    .prefix
                    .parse()
                    .with_context(|| format!("parent {} is not an IPv6 prefix", only.prefix))?;
                Ok(Parent {
                    id: only.id,
                    prefix,
                })
            })
            .await
            .copied()
    }

    /// All prefixes in the parent whose description is this node's record, lowest id first.
    async fn find(&self, parent: Parent, pubkey: &str) -> Result<Vec<(PrefixObject, Description)>> {
        let mut found = Vec::new();
        let query = [
            ("within", parent.prefix.to_string()),
            ("description__ic", pubkey.to_string()),
            ("limit", "1000".to_string()),
        ];
        let mut req = self
            .request(reqwest::Method::GET, "/api/ipam/prefixes/")
            .query(&query);
        loop {
            let page: Page = self.send(req).await?;
            for object in page.results {
                // description__ic is a case-insensitive substring match: check exactly.
                if let Ok(desc) = serde_json::from_str::<Description>(&object.description)
                    && desc.pubkey == pubkey
                {
                    found.push((object, desc));
                }
            }
            match page.next {
                // `next` is an absolute URL carrying the query and offset.
                Some(next) => req = self.authorized(self.http.get(next)),
                None => break,
            }
        }
        found.sort_by_key(|(o, _)| o.id);
        Ok(found)
    }

    /// Keeps the lowest id, deletes the rest.
    async fn dedupe(
        &self,
        mut found: Vec<(PrefixObject, Description)>,
    ) -> Result<Option<(PrefixObject, Description)>> {
        if found.is_empty() {
            return Ok(None);
        }
        for (dup, _) in found.drain(1..) {
            tracing::warn!(id = dup.id, prefix = %dup.prefix, "deleting duplicate node prefix in NetBox");
            let path = format!("/api/ipam/prefixes/{}/", dup.id);
            let resp = self.request(reqwest::Method::DELETE, &path).send().await?;
            if !resp.status().is_success() && resp.status() != reqwest::StatusCode::NOT_FOUND {
                bail!(
                    "deleting duplicate prefix {} failed: {}",
                    dup.id,
                    resp.status()
                );
            }
        }
        Ok(found.pop())
    }

    async fn allocate(&self, parent: Parent, pubkey: &str) -> Result<()> {
        let desc = Description {
            pubkey: pubkey.to_string(),
            last_allocated_on: Some(iso8601(unix_now())),
            created_by: Some(self.settings.created_by.clone()),
            selected_concentrators: Vec::new(),
        };
        let mut body = self.settings.additional_data.clone();
        body.insert("prefix_length".into(), NODE_PREFIX_LEN.into());
        body.insert("description".into(), serde_json::to_string(&desc)?.into());
        body.insert("mark_utilized".into(), true.into());
        let path = format!("/api/ipam/prefixes/{}/available-prefixes/", parent.id);
        let req = self.request(reqwest::Method::POST, &path).json(&body);
        let _: serde_json::Value = self.send(req).await.context("allocating a /63")?;
        Ok(())
    }

    fn remember(&self, pubkey: &str, id: u64) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pubkey.to_string(), id);
    }
}

fn record(object: &PrefixObject, desc: Description) -> Result<NodeRecord> {
    let prefix: Ipv6Net = object
        .prefix
        .parse()
        .with_context(|| format!("NetBox prefix {} is not IPv6", object.prefix))?;
    if prefix.prefix_len() != NODE_PREFIX_LEN {
        bail!(
            "NetBox prefix {prefix} for {} is not a /{NODE_PREFIX_LEN}",
            desc.pubkey
        );
    }
    Ok(NodeRecord {
        prefix,
        selected: desc.selected_concentrators,
    })
}

#[async_trait]
impl Ipam for NetboxIpam {
    async fn node(&self, pubkey: &str) -> Result<NodeRecord> {
        let parent = self.parent().await?;
        let existing = self.dedupe(self.find(parent, pubkey).await?).await?;
        let (object, desc) = match existing {
            Some(found) => found,
            None => {
                self.allocate(parent, pubkey).await?;
                // Look again: another broker may have allocated at the same moment.
                let found = self.find(parent, pubkey).await?;
                self.dedupe(found)
                    .await?
                    .context("the allocated prefix is not found in NetBox")?
            }
        };
        self.remember(pubkey, object.id);
        record(&object, desc)
    }

    async fn store_selection(&self, pubkey: &str, selected: &[String]) -> Result<()> {
        let id = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pubkey)
            .copied();
        let (id, mut desc) = match id {
            Some(id) => {
                let object: PrefixObject = self
                    .send(self.request(reqwest::Method::GET, &format!("/api/ipam/prefixes/{id}/")))
                    .await?;
                (
                    id,
                    serde_json::from_str::<Description>(&object.description)?,
                )
            }
            None => {
                let parent = self.parent().await?;
                let (object, desc) = self
                    .dedupe(self.find(parent, pubkey).await?)
                    .await?
                    .context("node not found in NetBox")?;
                (object.id, desc)
            }
        };
        desc.selected_concentrators = selected.to_vec();
        let body = serde_json::json!({ "description": serde_json::to_string(&desc)? });
        let req = self
            .request(reqwest::Method::PATCH, &format!("/api/ipam/prefixes/{id}/"))
            .json(&body);
        let _: serde_json::Value = self.send(req).await.context("updating the node record")?;
        Ok(())
    }

    fn node_count(&self) -> Option<usize> {
        None
    }
}
