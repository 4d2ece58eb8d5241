//! Concentrator ("worker") selection per PoP, the way deployed Parker brokers choose.
//!
//! Pure: the caller passes the configured workers, the metrics in the order they were first
//! seen (that order breaks ties) and the node's previous selection. The semantics (Python
//! float arithmetic, round half to even, strict `>` for leaving a sticky worker, stable
//! tie-breaking) reproduce wgkex's `get_best_workers`, checked against its recorded vectors.

use std::collections::BTreeSet;

/// A configured concentrator.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub name: String,
    pub id: u32,
    pub weight: f64,
    pub pop: String,
}

/// What is known about a concentrator at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerMetric {
    pub name: String,
    pub online: bool,
    /// `None` when the worker never reported (counts like -1: not a candidate).
    pub connected_peers: Option<i64>,
}

/// One chosen concentrator with the numbers that chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub name: String,
    pub id: u32,
    pub pop: String,
    pub diff: i64,
    pub peers: i64,
    pub target: i64,
}

/// Selection parameters.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `sticky_worker_tolerance` in percent.
    pub tolerance_percent: f64,
    /// Skip workers missing from the configuration (the Parker endpoint does).
    pub require_configured: bool,
}

struct Candidate<'a> {
    name: &'a str,
    id: u32,
    pop: &'a str,
    peers: i64,
    target: i64,
}

impl Candidate<'_> {
    fn diff(&self) -> i64 {
        self.peers - self.target
    }

    fn choice(&self) -> Choice {
        Choice {
            name: self.name.to_string(),
            id: self.id,
            pop: self.pop.to_string(),
            diff: self.diff(),
            peers: self.peers,
            target: self.target,
        }
    }
}

/// Chooses at most one concentrator per PoP; the result is ordered by PoP name.
/// Empty when no worker is a candidate (the caller then falls back, see
/// [`fallback_candidates`]).
pub fn select(
    workers: &[WorkerSpec],
    metrics: &[WorkerMetric],
    previous: &[impl AsRef<str>],
    policy: Policy,
) -> Vec<Choice> {
    let candidates = candidates(workers, metrics, policy.require_configured);
    let tolerance = policy.tolerance_percent / 100.0;
    let mut pops: BTreeSet<&str> = workers.iter().map(|w| w.pop.as_str()).collect();
    pops.insert("");
    pops.into_iter()
        .filter_map(|pop| select_in_pop(&candidates, pop, previous, tolerance))
        .collect()
}

fn select_in_pop(
    candidates: &[Candidate<'_>],
    pop: &str,
    previous: &[impl AsRef<str>],
    tolerance: f64,
) -> Option<Choice> {
    let in_pop = || candidates.iter().filter(move |c| c.pop == pop);
    let sticky = previous.iter().find_map(|name| {
        in_pop().find(|c| {
            c.name == name.as_ref()
                && (c.diff() as f64) <= f64::max(1.0, tolerance * c.target as f64)
        })
    });
    // `min_by_key` keeps the first of equal minima: ties go to the earliest-seen worker.
    sticky
        .or_else(|| in_pop().min_by_key(|c| c.diff()))
        .map(Candidate::choice)
}

/// Online workers with a peer count, with their targets; in metrics order.
fn candidates<'a>(
    workers: &'a [WorkerSpec],
    metrics: &'a [WorkerMetric],
    require_configured: bool,
) -> Vec<Candidate<'a>> {
    let total_peers: i64 = metrics
        .iter()
        .map(|m| m.connected_peers.unwrap_or(-1).max(0))
        .sum();
    let total_weight = workers.iter().map(|w| w.weight).sum::<f64>().max(1.0);
    metrics
        .iter()
        .filter(|m| m.online && m.connected_peers.unwrap_or(-1) >= 0)
        .filter_map(|m| {
            let spec = workers.iter().find(|w| w.name == m.name);
            let (id, weight, pop) = match spec {
                Some(w) => (w.id, w.weight, w.pop.as_str()),
                None if require_configured => return None,
                None => (0, 1.0, ""),
            };
            // Same operation order as the reference: (weight / total_weight) * total_peers.
            let target = ((weight / total_weight) * total_peers as f64).round_ties_even() as i64;
            Some(Candidate {
                name: &m.name,
                id,
                pop,
                peers: m.connected_peers.unwrap_or(-1),
                target,
            })
        })
        .collect()
}

/// Configured, online workers, for the random fallback when [`select`] finds nothing.
pub fn fallback_candidates<'a>(
    workers: &'a [WorkerSpec],
    metrics: &[WorkerMetric],
) -> Vec<&'a WorkerSpec> {
    workers
        .iter()
        .filter(|w| metrics.iter().any(|m| m.name == w.name && m.online))
        .collect()
}

/// Until the next metric update, counts the node as a new peer of every newly chosen
/// concentrator (`increment` = number of live brokers, at least 1), so that a burst of
/// requests spreads over concentrators instead of piling onto the one that looked emptiest.
pub fn interpolate(
    metrics: &mut [WorkerMetric],
    chosen: &[Choice],
    previous: &[impl AsRef<str>],
    increment: i64,
) {
    for choice in chosen {
        if previous.iter().any(|p| p.as_ref() == choice.name) {
            continue;
        }
        if let Some(m) = metrics.iter_mut().find(|m| m.name == choice.name) {
            m.connected_peers = Some(choice.peers + increment.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, id: u32, weight: f64, pop: &str) -> WorkerSpec {
        WorkerSpec {
            name: name.into(),
            id,
            weight,
            pop: pop.into(),
        }
    }

    fn metric(name: &str, peers: i64) -> WorkerMetric {
        WorkerMetric {
            name: name.into(),
            online: true,
            connected_peers: Some(peers),
        }
    }

    const POLICY: Policy = Policy {
        tolerance_percent: 10.0,
        require_configured: true,
    };

    #[test]
    fn half_to_even_rounding_decides_targets() {
        // 0.25 * 10 = 2.5 rounds to 2, so a1's diff is 2 > max(1, 0) and it loses stickiness.
        let workers = [spec("a1", 1, 1.0, "A"), spec("a2", 2, 3.0, "A")];
        let metrics = [metric("a1", 4), metric("a2", 6)];
        let policy = Policy {
            tolerance_percent: 0.0,
            ..POLICY
        };
        let chosen = select(&workers, &metrics, &["a1"], policy);
        assert_eq!(chosen.len(), 1);
        assert_eq!((chosen[0].name.as_str(), chosen[0].target), ("a2", 8));
    }

    #[test]
    fn interpolation_only_counts_new_choices() {
        let workers = [spec("a", 1, 1.0, ""), spec("b", 2, 1.0, "")];
        let mut metrics = [metric("a", 0), metric("b", 0)];
        let chosen = select(&workers, &metrics, &["a"], POLICY);
        interpolate(&mut metrics, &chosen, &["a"], 1);
        assert_eq!(
            metrics[0].connected_peers,
            Some(0),
            "kept worker not inflated"
        );
        let chosen = select(&workers, &metrics, &[] as &[&str], POLICY);
        interpolate(&mut metrics, &chosen, &[] as &[&str], 3);
        assert_eq!(metrics[0].connected_peers, Some(3));
    }

    #[test]
    fn fallback_lists_configured_online_workers_only() {
        let workers = [spec("a", 1, 1.0, ""), spec("b", 2, 1.0, "")];
        let mut metrics = vec![metric("a", -1), metric("b", -1), metric("x", 0)];
        metrics[1].online = false;
        let names: Vec<&str> = fallback_candidates(&workers, &metrics)
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        assert_eq!(names, ["a"]);
    }
}
