//! Summaries of repeated measurements: min, median, max.

use serde_json::{Value, json};

/// min / median / max of `samples` as JSON (empty input gives nulls).
pub fn summary(samples: &[f64]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "min": sorted.first(),
        "median": median(&sorted),
        "max": sorted.last(),
        "samples": samples,
    })
}

/// The median of already sorted samples.
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The median of unsorted samples (0 for none).
pub fn median_of(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    median(&sorted).unwrap_or(0.0)
}
