//! The broker against data recorded from the reference broker (wgkex, parker branch d3d82aa),
//! copied from `reference/wgkex-vectors` into `tests/data/wgkex-vectors`:
//! - every selection case and the 12-request interpolation sequence through the pure
//!   selection function;
//! - the three recorded `/config` bodies reproduced byte for byte from their inputs (same
//!   time, nonce, concentrators, prefix), and their signatures verified with the recorded
//!   public key.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use exitd::parker::{
    Assigned, ParkerResponse, WorkerData,
    config::split_endpoint,
    ipam::NodeRecord,
    select::{self, Choice, Policy, WorkerMetric, WorkerSpec},
    sign::ResponseSigner,
};
use serde_json::Value;
use std::path::PathBuf;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/wgkex-vectors")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(vectors().join(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn workers(config: &Value) -> Vec<WorkerSpec> {
    let map = config["workers"].as_object().expect("workers");
    // serde_json keeps insertion order only with preserve_order; the selection does not depend
    // on the order of configured workers (only on metrics order), so any order is fine.
    map.iter()
        .map(|(name, w)| WorkerSpec {
            name: name.clone(),
            id: w["id"].as_u64().expect("id") as u32,
            weight: w.get("weight").and_then(Value::as_f64).unwrap_or(1.0),
            pop: w
                .get("pop")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
        .collect()
}

fn metrics(list: &Value) -> Vec<WorkerMetric> {
    list.as_array()
        .expect("metrics")
        .iter()
        .map(|m| WorkerMetric {
            name: m["worker"].as_str().expect("worker").to_string(),
            online: m["online"].as_bool().expect("online"),
            connected_peers: m.get("connected_peers").and_then(Value::as_i64),
        })
        .collect()
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

/// (name, id, diff, peers, target) of each choice, as the vectors record them.
fn summary(choices: &[Choice]) -> Vec<(String, u64, i64, i64, i64)> {
    choices
        .iter()
        .map(|c| (c.name.clone(), u64::from(c.id), c.diff, c.peers, c.target))
        .collect()
}

fn expected(list: &Value) -> Vec<(String, u64, i64, i64, i64)> {
    list.as_array()
        .expect("expected")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["id"].as_u64().expect("id"),
                e["diff"].as_i64().expect("diff"),
                e["peers"].as_i64().expect("peers"),
                e["target"].as_i64().expect("target"),
            )
        })
        .collect()
}

fn policy(case: &Value) -> Policy {
    Policy {
        tolerance_percent: case["config"]["sticky_worker_tolerance"]
            .as_f64()
            .expect("tolerance"),
        require_configured: case["require_configured"]
            .as_bool()
            .expect("require_configured"),
    }
}

#[test]
fn every_recorded_selection_case() {
    let doc = load("selection-cases.json");
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 22);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let chosen = select::select(
            &workers(&case["config"]),
            &metrics(&case["metrics"]),
            &strings(&case["previous"]),
            policy(case),
        );
        // Both the vectors and select() order the result by PoP name.
        assert_eq!(summary(&chosen), expected(&case["expected"]), "case {name}");
        for choice in &chosen {
            let by_pop = &case["expected_by_pop"][choice.pop.as_str()];
            assert_eq!(
                by_pop["name"].as_str(),
                Some(choice.name.as_str()),
                "case {name}"
            );
        }
    }
}

#[test]
fn recorded_twelve_request_sequence_with_interpolation() {
    let doc = load("selection-cases.json");
    let seq = &doc["sequence"];
    let specs = workers(&seq["config"]);
    let mut state = metrics(&seq["metrics"]);
    let increment = seq["interpolation_increment"].as_i64().expect("increment");
    let previous = strings(&seq["previous"]);
    let steps = seq["expected_steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 12);
    for (i, step) in steps.iter().enumerate() {
        let chosen = select::select(&specs, &state, &previous, policy(seq));
        assert_eq!(summary(&chosen), expected(step), "request {i}");
        select::interpolate(&mut state, &chosen, &previous, increment);
    }
}

fn assigned(sample: &Value) -> Vec<Assigned> {
    sample["json"]["concentrators"]
        .as_array()
        .expect("concentrators")
        .iter()
        .map(|c| {
            let (host, port) =
                split_endpoint(c["endpoint"].as_str().expect("endpoint")).expect("endpoint");
            Assigned {
                name: format!("gw{}", c["id"]),
                id: c["id"].as_u64().expect("id") as u32,
                data: WorkerData {
                    external_address: host,
                    port,
                    public_key: c["pubkey"].as_str().expect("pubkey").to_string(),
                    link_address: c["address6"]
                        .as_str()
                        .expect("address6")
                        .parse()
                        .expect("v6"),
                },
            }
        })
        .collect()
}

#[test]
fn recorded_bodies_are_reproduced_byte_for_byte_and_verify() {
    let index = load("index.json");
    let signer =
        ResponseSigner::parse(index["signing_key_raw_hex"].as_str().expect("key")).expect("signer");
    let public = B64
        .decode(index["verify_pubkey_b64"].as_str().expect("pub"))
        .expect("b64");
    assert_eq!(signer.public_key().as_slice(), public.as_slice());
    let verifier = VerifyingKey::from_bytes(&public.try_into().expect("32 bytes")).expect("key");

    for sample in index["samples"].as_array().expect("samples") {
        let name = sample["name"].as_str().expect("name");
        let recorded = std::fs::read(vectors().join(sample["body_file"].as_str().expect("file")))
            .expect("body");
        let json = &sample["json"];
        let range6: ipnet::Ipv6Net = json["range6"]
            .as_str()
            .expect("range6")
            .parse()
            .expect("net");
        let node = NodeRecord {
            prefix: ipnet::Ipv6Net::new(range6.network(), 63).expect("/63"),
            selected: vec![],
        };
        let concentrators = assigned(sample);
        let v6mtu: u32 = sample["v6mtu"]
            .as_str()
            .expect("v6mtu")
            .parse()
            .expect("int");
        let response = ParkerResponse {
            nonce: sample["nonce"].as_str().expect("nonce"),
            time: json["time"].as_u64().expect("time"),
            id: sample["pubkey"].as_str().expect("pubkey"),
            mtu: v6mtu.min(1375),
            concentrators: &concentrators,
            concentrator_address4: "10.0.0.1".parse().expect("v4"),
            node: &node,
            range4: json["range4"]
                .as_str()
                .expect("range4")
                .parse()
                .expect("net"),
            wg_keepalive: 25,
            retry: 120,
        };
        let body = response.signed_body(&signer);
        assert_eq!(body.as_bytes(), recorded.as_slice(), "sample {name}");
        assert_eq!(body.len() as u64, sample["body_len"].as_u64().expect("len"));

        let split = recorded.iter().position(|&b| b == b'\n').expect("newline") + 1;
        let signature = B64.decode(&recorded[split..]).expect("signature b64");
        let signature = Signature::from_slice(&signature).expect("64 bytes");
        verifier
            .verify(&recorded[..split], &signature)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
