//! Bounded best-k selection with the index's result order: higher score
//! first, ties broken by ascending key so results are deterministic.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

/// A scored point. `Ord` sorts better candidates first (so the max of a
/// `BinaryHeap` is the worst one kept, the one to evict).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored<'a> {
    pub(crate) score: f32,
    pub(crate) key: &'a str,
    pub(crate) id: usize,
}

impl Ord for Scored<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.key.cmp(other.key))
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Scored<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scored<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored<'_> {}

/// Keeps the best `k` candidates pushed so far.
#[derive(Debug)]
pub(crate) struct TopK<'a> {
    k: usize,
    heap: BinaryHeap<Scored<'a>>,
}

impl<'a> TopK<'a> {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(4096)),
        }
    }

    pub(crate) fn push(&mut self, candidate: Scored<'a>) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && candidate < *worst
        {
            *worst = candidate;
        }
    }

    pub(crate) fn merge(mut self, other: Self) -> Self {
        for c in other.heap {
            self.push(c);
        }
        self
    }

    /// Best first.
    pub(crate) fn into_sorted(self) -> Vec<Scored<'a>> {
        self.heap.into_sorted_vec()
    }
}

/// Sorts best first, keeps the first (best) entry per key, truncates to `k`.
///
/// Two points of one key can both look live to a search that overlaps a
/// replace (the new point is published before the old one is tombstoned, so
/// the key never disappears), hence the dedup.
pub(crate) fn finish<'a>(mut candidates: Vec<Scored<'a>>, k: usize) -> Vec<Scored<'a>> {
    candidates.sort_unstable();
    let mut seen = HashSet::with_capacity(candidates.len().min(k.saturating_mul(2)));
    candidates.retain(|c| seen.len() < k && seen.insert(c.key));
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(score: f32, key: &str, id: usize) -> Scored<'_> {
        Scored { score, key, id }
    }

    #[test]
    fn topk_keeps_best_with_key_tie_break() {
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let mut top = TopK::new(3);
        for (i, key) in keys.iter().enumerate() {
            // Scores 0.0, 0.5, 0.0, 0.5, ... so ties must be decided by key.
            top.push(s(if i % 2 == 1 { 0.5 } else { 0.0 }, key, i));
        }
        let got: Vec<&str> = top.into_sorted().iter().map(|c| c.key).collect();
        assert_eq!(got, ["k1", "k3", "k5"]);
    }

    #[test]
    fn finish_dedups_keys_keeping_best() {
        let out = finish(vec![s(0.1, "a", 0), s(0.9, "a", 1), s(0.5, "b", 2)], 5);
        let got: Vec<(f32, &str)> = out.iter().map(|c| (c.score, c.key)).collect();
        assert_eq!(got, [(0.9, "a"), (0.5, "b")]);
        assert_eq!(finish(vec![s(0.1, "a", 0), s(0.2, "b", 1)], 1).len(), 1);
    }

    #[test]
    fn merge_equals_single_pass() {
        let keys: Vec<String> = (0..50).map(|i| format!("{i:02}")).collect();
        let score = |i: usize| ((i * 37) % 11) as f32;
        let mut all = TopK::new(7);
        let (mut left, mut right) = (TopK::new(7), TopK::new(7));
        for (i, key) in keys.iter().enumerate() {
            all.push(s(score(i), key, i));
            if i % 3 == 0 {
                left.push(s(score(i), key, i));
            } else {
                right.push(s(score(i), key, i));
            }
        }
        let a: Vec<usize> = all.into_sorted().iter().map(|c| c.id).collect();
        let b: Vec<usize> = left
            .merge(right)
            .into_sorted()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(a, b);
    }
}
