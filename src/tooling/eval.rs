//! Offline retrieval quality: precision@k of "same articleType" and HNSW
//! recall@10 against exact search.
//!
//! The protocol follows the original design's evaluation: every product of
//! an articleType with at least [`MIN_CLASS_SIZE`] images is a query, its
//! nearest neighbours (itself excluded) are judged relevant when they share
//! its articleType. Used by `lookbook eval` and by the end-to-end test,
//! which runs the same protocol through the gRPC service.

use std::{collections::HashMap, sync::Arc};

use crate::index::VectorIndex;

/// Classes smaller than this are too small to have 10 relevant neighbours.
pub const MIN_CLASS_SIZE: usize = 20;
/// The cut-offs reported.
pub const CUTOFFS: [usize; 3] = [1, 5, 10];

#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub products: usize,
    pub queries: usize,
    pub classes: usize,
    /// (k, precision@k), for k in [`CUTOFFS`].
    pub precision: Vec<(usize, f64)>,
    pub recall_at_10: f64,
}

/// Which labels are used as queries.
pub fn query_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in labels {
        *counts.entry(l).or_default() += 1;
    }
    counts.retain(|_, n| *n >= MIN_CLASS_SIZE);
    counts
}

/// Share of the first `k` neighbours whose label equals `label`; missing
/// neighbours count as misses.
pub fn precision_at(label: &str, neighbours: &[&str], k: usize) -> f64 {
    let hits = neighbours.iter().take(k).filter(|l| **l == label).count();
    hits as f64 / k as f64
}

/// One evaluated product: id, unit vector, label.
pub type LabelledVector = (Arc<str>, Arc<[f32]>, String);

/// Runs the protocol over `items` already indexed in `index`.
pub fn evaluate(items: &[LabelledVector], index: &VectorIndex) -> EvalReport {
    let labels: HashMap<&str, &str> = items.iter().map(|(id, _, l)| (&**id, l.as_str())).collect();
    let classes = query_labels(items.iter().map(|(_, _, l)| l.as_str()));
    let k_max = CUTOFFS[CUTOFFS.len() - 1];
    let mut sums = [0.0f64; CUTOFFS.len()];
    let mut recall_sum = 0.0;
    let mut queries = 0usize;
    for (id, vector, label) in items {
        if !classes.contains_key(label.as_str()) {
            continue;
        }
        let not_self = |key: &str| key != &**id;
        let approx = index.search(vector, k_max, &not_self);
        let exact = index.search_exact(vector, k_max, &not_self);
        let neighbour_labels: Vec<&str> = approx
            .iter()
            .map(|h| labels.get(&*h.key).copied().unwrap_or_default())
            .collect();
        for (sum, k) in sums.iter_mut().zip(CUTOFFS) {
            *sum += precision_at(label, &neighbour_labels, k);
        }
        let found = approx
            .iter()
            .filter(|h| exact.iter().any(|e| e.key == h.key))
            .count();
        recall_sum += found as f64 / exact.len().max(1) as f64;
        queries += 1;
    }
    let q = queries.max(1) as f64;
    EvalReport {
        products: items.len(),
        queries,
        classes: classes.len(),
        precision: CUTOFFS.iter().zip(sums).map(|(k, s)| (*k, s / q)).collect(),
        recall_at_10: recall_sum / q,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_counts_missing_neighbours_as_misses() {
        assert_eq!(precision_at("a", &["a", "b", "a"], 2), 0.5);
        assert_eq!(precision_at("a", &["a"], 5), 0.2);
    }

    #[test]
    fn small_classes_are_not_queries() {
        let mut labels = vec!["big"; MIN_CLASS_SIZE];
        labels.extend(["small"; 3]);
        let q = query_labels(labels);
        assert_eq!(q.len(), 1);
        assert_eq!(q["big"], MIN_CLASS_SIZE);
    }
}
