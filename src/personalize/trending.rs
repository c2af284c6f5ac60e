//! Trending products: time-decayed, action-weighted interaction counts.
//!
//! A product's score is `sum(weight * 2^((t - epoch) / half_life))` over its
//! interactions, i.e. its decayed count as of `epoch`. Decay multiplies every
//! product's count by the same factor as time passes, so the *order* of
//! these epoch-relative scores is the trending order at any moment: the
//! ranking lives in a `BTreeSet` that is only touched when an interaction
//! arrives, and reading the top N is an ordered walk, not a sort of every
//! product. When new events would push scores towards `f64`'s range (after
//! ~700 half-lives) everything is rebased to a later epoch.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use crate::store::StoredTrend;

/// Rebase once an event's exponent would pass this (2^700 is far from
/// `f64::MAX` = 2^1024, leaving room for sums).
const REBASE_EXPONENT: f64 = 700.0;

#[derive(Debug)]
pub struct Trending {
    half_life_ms: f64,
    epoch_ms: i64,
    /// Invariant: `ranked` holds exactly one `(score bits, id)` per entry of
    /// `scores`. Scores are positive and finite, and the bits of positive
    /// finite `f64`s order like the values.
    scores: HashMap<Arc<str>, f64>,
    ranked: BTreeSet<(u64, Arc<str>)>,
}

impl Trending {
    pub fn new(half_life_ms: f64, now_ms: i64) -> Self {
        Self {
            half_life_ms,
            epoch_ms: now_ms,
            scores: HashMap::new(),
            ranked: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    fn exponent(&self, at_ms: i64) -> f64 {
        (at_ms - self.epoch_ms) as f64 / self.half_life_ms
    }

    /// Adds `weight` observed at `at_ms`; returns the product's new value
    /// in its persisted form.
    pub fn add(&mut self, product: &Arc<str>, weight: f64, at_ms: i64) -> StoredTrend {
        if self.exponent(at_ms) > REBASE_EXPONENT {
            self.rebase(at_ms);
        }
        let delta = weight * self.exponent(at_ms).exp2();
        self.set(
            product,
            self.scores.get(product).copied().unwrap_or(0.0) + delta,
        );
        StoredTrend {
            score: self.scores.get(product).copied().unwrap_or(0.0),
            at_ms: self.epoch_ms,
        }
    }

    /// Restores a persisted value (decayed count as of `t.at_ms`).
    pub fn restore(&mut self, product: Arc<str>, t: StoredTrend) {
        let score = t.score * self.exponent(t.at_ms).exp2();
        self.set(&product, score);
    }

    fn set(&mut self, product: &Arc<str>, score: f64) {
        if let Some(old) = self.scores.remove(product) {
            self.ranked.remove(&(old.to_bits(), Arc::clone(product)));
        }
        // Zero (fully decayed), negative or non-finite scores carry no rank.
        if score > 0.0 && score.is_finite() {
            self.scores.insert(Arc::clone(product), score);
            self.ranked.insert((score.to_bits(), Arc::clone(product)));
        }
    }

    fn rebase(&mut self, new_epoch_ms: i64) {
        let factor = (-((new_epoch_ms - self.epoch_ms) as f64) / self.half_life_ms).exp2();
        self.epoch_ms = new_epoch_ms;
        let old: Vec<(Arc<str>, f64)> = self.scores.drain().collect();
        self.ranked.clear();
        for (id, score) in old {
            self.set(&id, score * factor);
        }
    }

    /// The most-trending products that `accept`s, best first, with scores
    /// relative to the best one overall (in (0, 1]).
    pub fn top(&self, n: usize, accept: &dyn Fn(&str) -> bool) -> Vec<(Arc<str>, f32)> {
        let Some((best, _)) = self.ranked.last() else {
            return Vec::new();
        };
        let best = f64::from_bits(*best);
        self.ranked
            .iter()
            .rev()
            .filter(|(_, id)| accept(id))
            .take(n)
            .map(|(bits, id)| {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a ratio in (0, 1] loses nothing that matters in f32"
                )]
                let relative = (f64::from_bits(*bits) / best) as f32;
                (Arc::clone(id), relative)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: f64 = 86_400_000.0;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn recent_activity_outranks_old_activity() {
        let mut t = Trending::new(DAY, 0);
        for _ in 0..4 {
            t.add(&id("old"), 1.0, 0);
        }
        // Three half-lives later, 4 old views are worth 0.5.
        t.add(&id("new"), 1.0, 3 * DAY as i64);
        let top = t.top(10, &|_| true);
        assert_eq!(&*top[0].0, "new");
        assert!((top[1].1 - 0.5).abs() < 1e-6, "{top:?}");
        let only_old = t.top(10, &|p| p == "old");
        assert_eq!(only_old.len(), 1);
    }

    #[test]
    fn persisted_values_restore_the_same_ranking_under_another_epoch() {
        let mut t = Trending::new(DAY, 0);
        let a = t.add(&id("a"), 8.0, 0);
        let b = t.add(&id("b"), 1.0, 2 * DAY as i64);
        let mut r = Trending::new(DAY, 10 * DAY as i64);
        r.restore(id("a"), a);
        r.restore(id("b"), b);
        assert_eq!(t.top(2, &|_| true), r.top(2, &|_| true));
    }

    #[test]
    fn rebasing_keeps_order_and_finiteness() {
        let mut t = Trending::new(1.0, 0);
        t.add(&id("a"), 1.0, 0);
        t.add(&id("b"), 3.0, 5);
        // 2000 half-lives later: would overflow without a rebase.
        t.add(&id("c"), 1.0, 2000);
        let top = t.top(3, &|_| true);
        assert_eq!(&*top[0].0, "c");
        assert!(top.iter().all(|(_, s)| s.is_finite()));
        assert_eq!(t.len(), 1, "older counts decayed to nothing are dropped");
    }
}
