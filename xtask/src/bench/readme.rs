//! The README's benchmark table, generated from `bench/results/*.json` between the markers
//! `<!-- bench:begin -->` and `<!-- bench:end -->` (`cargo xtask bench --readme`; every
//! benchmark run rewrites it too). A unit test compares the README with the committed results.
//!
//! Every result file gets rows. A benchmark states them best with a top-level `summary`:
//!
//! ```json
//! "summary": [{ "what": "IPv6 forwarding", "value": 2330000, "unit": "packets/s",
//!               "baseline": 1030000, "baseline_what": "kernel forwarding",
//!               "ratio": 2.3, "target": "≥ 2× kernel", "met": true }]
//! ```
//!
//! (only `what` and `value` are required). Without one, the `dataplane` and `broker` shapes
//! are read as they are, and any other file by convention: its `what` (or file name), every
//! top-level object with a `median`, a top-level `baseline`, the first top-level number whose
//! key starts with `ratio`, and the first `target…` value.

use anyhow::{Context, Result};
use serde_json::Value;
use std::{fmt::Write as _, path::Path};

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// One row of the table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metric {
    pub what: String,
    pub value: Option<f64>,
    pub unit: String,
    pub baseline: Option<f64>,
    pub baseline_what: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

/// Rewrites the README's table from the results; says whether it changed.
pub fn update(root: &Path) -> Result<bool> {
    let path = root.join("README.md");
    let readme = std::fs::read_to_string(&path).context("reading README.md")?;
    let updated = replace_section(&readme, &table(&load_results(root)?))?;
    if updated == readme {
        return Ok(false);
    }
    std::fs::write(&path, updated).context("writing README.md")?;
    Ok(true)
}

/// Every `bench/results/*.json`, by file name.
pub fn load_results(root: &Path) -> Result<Vec<(String, Value)>> {
    let dir = root.join("bench/results");
    let mut results = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let json = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            results.push((name.into_owned(), json));
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(results)
}

/// `readme` with the text between the markers replaced by `table`.
pub fn replace_section(readme: &str, table: &str) -> Result<String> {
    let start = readme
        .find(BEGIN)
        .with_context(|| format!("README.md has no {BEGIN} marker"))?;
    let end = readme
        .find(END)
        .filter(|end| *end > start)
        .with_context(|| format!("README.md has no {END} marker after {BEGIN}"))?;
    Ok(format!(
        "{}{BEGIN}\n{table}{}",
        &readme[..start],
        &readme[end..]
    ))
}

/// The Markdown table for all results.
pub fn table(results: &[(String, Value)]) -> String {
    let mut out = String::from(
        "| bench | what | exitd | baseline | ratio | target |\n|---|---|---|---|---|---|\n",
    );
    for (name, json) in results {
        for m in metrics(name, json) {
            let value = m.value.map(|v| quantity(v, &m.unit)).unwrap_or_default();
            let baseline = match m.baseline {
                Some(b) if !m.baseline_what.is_empty() => {
                    format!("{}: {}", m.baseline_what, quantity(b, &m.unit))
                }
                Some(b) => quantity(b, &m.unit),
                None => m.baseline_what.clone(),
            };
            let ratio = m
                .ratio
                .map(|r| format!("{}×", number(r)))
                .unwrap_or_default();
            let met = match m.met {
                Some(true) => " (met)",
                Some(false) => " (missed)",
                None => "",
            };
            let cells = [
                name.as_str(),
                &m.what,
                &value,
                baseline.trim(),
                &ratio,
                &format!("{}{met}", m.target),
            ];
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out
}

/// The rows of one result file (see the module documentation).
pub fn metrics(name: &str, json: &Value) -> Vec<Metric> {
    if let Some(summary) = json.get("summary").and_then(Value::as_array) {
        return summary.iter().filter_map(from_summary).collect();
    }
    match name {
        "dataplane" => dataplane(json),
        "broker" => broker(json),
        _ => by_convention(name, json),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn num(json: &Value, pointer: &str) -> Option<f64> {
    json.pointer(pointer).and_then(Value::as_f64)
}

fn from_summary(entry: &Value) -> Option<Metric> {
    Some(Metric {
        what: entry.get("what")?.as_str()?.to_string(),
        value: entry.get("value").and_then(Value::as_f64),
        unit: text(entry.get("unit")),
        baseline: entry.get("baseline").and_then(Value::as_f64),
        baseline_what: text(entry.get("baseline_what")),
        ratio: entry.get("ratio").and_then(Value::as_f64),
        target: text(entry.get("target")),
        met: entry.get("met").and_then(Value::as_bool),
    })
}

fn dataplane(json: &Value) -> Vec<Metric> {
    let forwarding = Metric {
        what: "IPv6 forwarding, 64-byte frames (XDP live frames over veth)".into(),
        value: num(json, "/forwarding/pps/xdp/median"),
        unit: "packets/s".into(),
        baseline: num(json, "/forwarding/pps/kernel/median"),
        baseline_what: "kernel forwarding".into(),
        ratio: num(json, "/forwarding/ratio_xdp_over_kernel"),
        target: text(json.pointer("/forwarding/target")),
        met: None,
    };
    let hit_path = Metric {
        what: "hit path at 65,536 routes (BPF_PROG_TEST_RUN)".into(),
        value: num(json, "/test_run/hit_path/65536/ns_per_packet/median"),
        unit: "ns/packet".into(),
        baseline: num(json, "/test_run/empty_program_ns/median"),
        baseline_what: "empty XDP program".into(),
        ratio: None,
        target: text(json.pointer("/test_run/target")),
        met: None,
    };
    let slowdown = Metric {
        what: "hit path, 65,536 vs 1 route".into(),
        value: num(json, "/test_run/slowdown_65536_vs_1").map(|s| s * 100.0),
        unit: "% slower".into(),
        ..Metric::default()
    };
    let install = Metric {
        what: "installing 65,536 routes".into(),
        value: num(json, "/route_install/maps_seconds"),
        unit: "s".into(),
        baseline: num(json, "/route_install/kernel_netlink_seconds"),
        baseline_what: "kernel routes over netlink".into(),
        ratio: num(json, "/route_install/ratio_kernel_over_maps"),
        target: text(json.pointer("/route_install/target")),
        met: None,
    };
    [forwarding, hit_path, slowdown, install]
        .into_iter()
        .filter(|m| m.value.is_some())
        .collect()
}

fn broker(json: &Value) -> Vec<Metric> {
    let nodes = num(json, "/nodes_in_ipam").map(number).unwrap_or_default();
    let throughput = Metric {
        what: format!("signed Parker /config answers, {nodes} nodes in the IPAM"),
        value: num(json, "/closed_loop/req_per_s"),
        unit: "req/s".into(),
        baseline: num(json, "/baseline/req_per_s"),
        baseline_what: text(json.pointer("/baseline/what")),
        ratio: num(json, "/ratio_vs_baseline"),
        target: num(json, "/targets/req_per_s")
            .map(|t| format!("≥ {} req/s", number(t)))
            .unwrap_or_default(),
        met: json
            .pointer("/targets/req_per_s_met")
            .and_then(Value::as_bool),
    };
    let latency = Metric {
        what: "p99 latency at 2,000 req/s".into(),
        value: num(json, "/fixed_rate/p99_ms"),
        unit: "ms".into(),
        target: num(json, "/targets/p99_ms_at_2000_req_per_s")
            .map(|t| format!("≤ {} ms", number(t)))
            .unwrap_or_default(),
        met: json.pointer("/targets/p99_met").and_then(Value::as_bool),
        ..Metric::default()
    };
    [throughput, latency]
        .into_iter()
        .filter(|m| m.value.is_some())
        .collect()
}

/// Rows for a result file without `summary` of a shape this module does not know.
fn by_convention(name: &str, json: &Value) -> Vec<Metric> {
    let Some(object) = json.as_object() else {
        return vec![Metric {
            what: format!("(bench/results/{name}.json is not an object)"),
            ..Metric::default()
        }];
    };
    let medians: Vec<String> = object
        .iter()
        .filter_map(|(key, v)| {
            Some(format!(
                "{key} median {}",
                number(v.get("median")?.as_f64()?)
            ))
        })
        .collect();
    let first = |prefix: &str| {
        object
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    };
    let baseline = object.get("baseline");
    vec![Metric {
        what: object
            .get("what")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string(),
        value: None,
        unit: medians.join(", "),
        baseline: baseline.and_then(Value::as_f64),
        baseline_what: match baseline {
            Some(Value::Object(b)) => text(b.get("what")),
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        ratio: object
            .iter()
            .find(|(k, v)| k.starts_with("ratio") && v.is_number())
            .and_then(|(_, v)| v.as_f64()),
        target: first("target").map(|t| text(Some(t))).unwrap_or_default(),
        met: None,
    }]
}

/// A value with its unit; the unit alone stands in when a convention row has no value.
fn quantity(value: f64, unit: &str) -> String {
    format!("{} {unit}", number(value)).trim().to_string()
}

/// Human-sized numbers: 2.33 M, 18,274, 0.918, 3.15.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 1e4 {
        let n = v.round() as i64;
        let digits = n.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if n < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The committed README must show the committed results: regenerate with
    /// `cargo xtask bench --readme` after changing bench/results/.
    #[test]
    fn readme_table_matches_the_committed_results() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let results = load_results(&root()).unwrap();
        assert!(!results.is_empty());
        let expected = replace_section(&readme, &table(&results)).unwrap();
        assert!(
            expected == readme,
            "README.md's benchmark table is stale: run `cargo xtask bench --readme`"
        );
        for (name, json) in &results {
            assert!(!metrics(name, json).is_empty(), "{name} gets rows");
        }
    }

    #[test]
    fn a_summary_is_rendered_as_given() {
        let json = json!({ "summary": [
            { "what": "failover", "value": 2.5, "unit": "s", "target": "≤ 3 s", "met": true,
              "ratio": 0.83 },
            { "no": "what: skipped" }
        ]});
        let rows = table(&[("failover".into(), json)]);
        assert!(
            rows.ends_with("| failover | failover | 2.5 s |  | 0.83× | ≤ 3 s (met) |\n"),
            "{rows}"
        );
        assert_eq!(rows.lines().count(), 3);
    }

    #[test]
    fn unknown_shapes_still_get_a_row() {
        let json = json!({
            "what": "owner SIGKILL to ping6 | new owner",
            "restored_s": { "median": 2.345, "min": 2.0 },
            "ratio_to_target": 0.78,
            "target_median_s": 3.0,
        });
        let rows = metrics("failover", &json);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].unit, "restored_s median 2.35");
        assert_eq!(rows[0].ratio, Some(0.78));
        assert_eq!(rows[0].target, "3.0");
        assert!(table(&[("failover".into(), json)]).contains("ping6 \\| new owner"));
        assert_eq!(metrics("x", &json!([1])).len(), 1, "even a non-object");
    }

    #[test]
    fn numbers_are_human_sized() {
        assert_eq!(number(2_327_733.4), "2.33 M");
        assert_eq!(number(18_274.26), "18,274");
        assert_eq!(number(1661.3), "1661");
        assert_eq!(number(3.148), "3.15");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.1377), "0.138");
    }

    #[test]
    fn missing_markers_are_an_error() {
        assert!(replace_section("no markers", "t").is_err());
        let swapped = format!("{END}\n{BEGIN}\n");
        assert!(replace_section(&swapped, "t").is_err());
        let fine = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        assert_eq!(
            replace_section(&fine, "new\n").unwrap(),
            format!("a\n{BEGIN}\nnew\n{END}\nb\n")
        );
    }
}
