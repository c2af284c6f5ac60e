//! A shopper's taste: up to M interest centroids with time-decayed weights.
//!
//! Each interest keeps the weighted *mean* of the embeddings assigned to it
//! and the decayed sum of their weights. Decay multiplies every weight of a
//! profile by the same factor, so it never moves a mean: only the weight
//! (an `f64`) is decayed, and the means stay well-scaled however old the
//! profile gets (a decayed *sum* in `f32` would underflow after a few years
//! of 14-day half-lives). Updates are O(M x dim) per interaction and never
//! look at the history, which is what keeps the read path free of
//! recomputation.
//!
//! **Metrics.** Interests group interactions by direction whatever the
//! catalogue's metric: an interaction joins the interest whose mean is at
//! the highest *cosine* from its embedding (computed with both norms, so it
//! holds for the non-unit vectors of dot, euclidean and manhattan
//! catalogues). Each mean is of the embeddings as the catalogue keeps them,
//! so under euclidean and manhattan it is a point among them, and the query
//! planner turns it into a query for the metric.

use crate::domain::{dot, norm};

/// One interest: where it points and how much evidence backs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Interest {
    /// Weighted mean of the embeddings assigned to this interest (under
    /// cosine, of unit vectors: norm <= 1, lower when the interest is
    /// spread out).
    pub mean: Vec<f32>,
    /// Sum of the assigned interactions' weights, decayed to the profile's
    /// reference time. Always > 0 for a live interest.
    pub weight: f64,
}

impl Interest {
    /// Cosine similarity between the interest's direction and `vector`'s
    /// (0 if either has none).
    fn similarity(&self, vector: &[f32]) -> f32 {
        cosine(&self.mean, vector)
    }

    fn absorb(&mut self, other_mean: &[f32], other_weight: f64) {
        let total = self.weight + other_weight;
        if total <= 0.0 {
            return;
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "shares are in [0, 1]; f32 keeps the means' precision"
        )]
        let (a, b) = ((self.weight / total) as f32, (other_weight / total) as f32);
        for (m, o) in self.mean.iter_mut().zip(other_mean) {
            *m = a * *m + b * o;
        }
        self.weight = total;
    }
}

/// How profiles learn; from the `[personalize]` configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileRules {
    /// Weight halves every this many milliseconds of age.
    pub half_life_ms: f64,
    /// Most interests kept per shopper (1 = a single taste centroid).
    pub max_interests: usize,
    /// An interaction joins its nearest interest when their cosine is at
    /// least this; otherwise it starts a new interest.
    pub join_similarity: f32,
}

/// Invariants: `interests.len() <= rules.max_interests`, every mean has the
/// same dimension, every weight is > 0 and finite.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TasteProfile {
    /// Time the weights are decayed to: the newest interaction seen.
    pub reference_ms: i64,
    pub interests: Vec<Interest>,
}

/// The cosine of the angle between `a` and `b`, whatever their lengths; 0
/// when either is zero (it has no direction).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot(a, b) / (na * nb)
}

/// `2^(-age / half_life)`; ages <= 0 give 1.
fn decay(age_ms: i64, half_life_ms: f64) -> f64 {
    if age_ms <= 0 {
        return 1.0;
    }
    (-(age_ms as f64) / half_life_ms).exp2()
}

impl TasteProfile {
    pub fn is_empty(&self) -> bool {
        self.interests.is_empty()
    }

    /// Adds one positive interaction with embedding `vector` (as the
    /// catalogue keeps it: unit length under cosine), base weight `weight`
    /// (> 0), at `at_ms`. Order-independent in the weights: an old event
    /// arriving late counts with its decayed weight.
    pub fn add(&mut self, vector: &[f32], weight: f64, at_ms: i64, rules: &ProfileRules) {
        if !(weight > 0.0 && weight.is_finite()) {
            return;
        }
        let weight = if self.interests.is_empty() {
            self.reference_ms = at_ms;
            weight
        } else if at_ms > self.reference_ms {
            let factor = decay(at_ms - self.reference_ms, rules.half_life_ms);
            for i in &mut self.interests {
                i.weight *= factor;
            }
            // Evidence decayed below f64's range is gone; dropping it keeps
            // every weight > 0.
            self.interests.retain(|i| i.weight > 0.0);
            self.reference_ms = at_ms;
            weight
        } else {
            weight * decay(self.reference_ms - at_ms, rules.half_life_ms)
        };
        // A weight decayed to nothing carries no evidence, and would make
        // means divide by zero below.
        if weight <= 0.0 {
            return;
        }
        let nearest = self
            .interests
            .iter()
            .enumerate()
            .map(|(n, i)| (n, i.similarity(vector)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match nearest {
            Some((n, similarity)) if similarity >= rules.join_similarity => {
                self.interests[n].absorb(vector, weight);
            }
            _ => {
                self.interests.push(Interest {
                    mean: vector.to_vec(),
                    weight,
                });
                self.merge_to(rules.max_interests.max(1));
            }
        }
    }

    /// Merges the two most similar interests until at most `max` remain.
    fn merge_to(&mut self, max: usize) {
        while self.interests.len() > max {
            let mut best = (0, 1, f32::NEG_INFINITY);
            for a in 0..self.interests.len() {
                for b in a + 1..self.interests.len() {
                    let cos = cosine(&self.interests[a].mean, &self.interests[b].mean);
                    if cos > best.2 {
                        best = (a, b, cos);
                    }
                }
            }
            let (a, b, _) = best;
            let removed = self.interests.swap_remove(b);
            self.interests[a].absorb(&removed.mean, removed.weight);
        }
    }

    /// Each interest as (mean, share of the total weight), largest share
    /// first. Interests whose mean cancelled out (to zero) are skipped.
    pub fn centroids(&self) -> Vec<(Vec<f32>, f64)> {
        let total: f64 = self.interests.iter().map(|i| i.weight).sum();
        // Also catches NaN.
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Vec::new();
        }
        let mut out: Vec<(Vec<f32>, f64)> = self
            .interests
            .iter()
            .filter(|i| norm(&i.mean) > 0.0)
            .map(|i| (i.mean.clone(), i.weight / total))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// [`Self::centroids`] scaled to unit directions.
    pub fn directions(&self) -> Vec<(Vec<f32>, f64)> {
        self.centroids()
            .into_iter()
            .map(|(mean, share)| {
                let n = norm(&mean);
                (mean.iter().map(|v| v / n).collect(), share)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: f64 = 86_400_000.0;

    fn rules(max: usize) -> ProfileRules {
        ProfileRules {
            half_life_ms: 14.0 * DAY,
            max_interests: max,
            join_similarity: 0.5,
        }
    }

    fn axis(i: usize, dim: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[i] = 1.0;
        v
    }

    #[test]
    fn distinct_tastes_become_distinct_interests_and_merge_beyond_the_cap() {
        let mut p = TasteProfile::default();
        p.add(&axis(0, 4), 1.0, 0, &rules(2));
        p.add(&axis(0, 4), 1.0, 0, &rules(2));
        assert_eq!(p.interests.len(), 1, "the same look joins its interest");
        p.add(&axis(1, 4), 1.0, 0, &rules(2));
        assert_eq!(p.interests.len(), 2);
        p.add(&axis(2, 4), 1.0, 0, &rules(2));
        assert_eq!(p.interests.len(), 2, "merged back under the cap");
        let total: f64 = p.interests.iter().map(|i| i.weight).sum();
        assert!((total - 4.0).abs() < 1e-9, "merging keeps the evidence");
    }

    #[test]
    fn a_single_centroid_profile_averages_everything() {
        let mut p = TasteProfile::default();
        p.add(&axis(0, 2), 1.0, 0, &rules(1));
        p.add(&axis(1, 2), 1.0, 0, &rules(1));
        let d = p.directions();
        assert_eq!(d.len(), 1);
        assert!((d[0].0[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }

    #[test]
    fn weights_decay_with_the_half_life_whatever_the_arrival_order() {
        let half = rules(4).half_life_ms as i64;
        let mut a = TasteProfile::default();
        a.add(&axis(0, 2), 8.0, 0, &rules(4));
        a.add(&axis(1, 2), 1.0, half, &rules(4));
        let mut b = TasteProfile::default();
        b.add(&axis(1, 2), 1.0, half, &rules(4));
        b.add(&axis(0, 2), 8.0, 0, &rules(4));
        for p in [&a, &b] {
            let d = p.directions();
            // purchase (8) a half-life ago = 4 vs a view (1) now.
            assert!((d[0].1 - 0.8).abs() < 1e-9, "{d:?}");
            assert_eq!(p.reference_ms, half);
        }
    }

    #[test]
    fn ancient_profiles_keep_their_direction() {
        let mut p = TasteProfile::default();
        p.add(&axis(0, 2), 1.0, 0, &rules(4));
        // Fifty years later the old weight is ~2^-1300: it underflows to 0.
        p.add(&axis(0, 2), 1.0, (50.0 * 365.0 * DAY) as i64, &rules(4));
        let d = p.directions();
        assert_eq!(d.len(), 1);
        assert!((d[0].0[0] - 1.0).abs() < 1e-6);
    }

    /// Interests group by direction whatever the vectors' lengths: long
    /// and short vectors of one direction join one interest (an
    /// uncorrected dot product would start a new interest for the short
    /// one), and the mean stays in the vectors' own scale.
    #[test]
    fn non_unit_vectors_are_grouped_by_direction() {
        let mut p = TasteProfile::default();
        p.add(&[10.0, 0.0, 0.0], 1.0, 0, &rules(4));
        p.add(&[0.1, 0.01, 0.0], 1.0, 0, &rules(4));
        assert_eq!(p.interests.len(), 1, "{p:?}");
        p.add(&[0.0, 0.0, 3.0], 1.0, 0, &rules(4));
        assert_eq!(p.interests.len(), 2);
        let c = p.centroids();
        let want = [5.05, 0.005, 0.0];
        assert!(
            c[0].0.iter().zip(want).all(|(x, w)| (x - w).abs() < 1e-6),
            "{c:?}"
        );
        assert!((c[0].1 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(c[1].0, vec![0.0, 0.0, 3.0]);
        let d = p.directions();
        assert!((norm(&d[0].0) - 1.0).abs() < 1e-6);
        assert_eq!(d[1].0, vec![0.0, 0.0, 1.0]);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    proptest! {
        #[test]
        fn invariants_hold_for_any_sequence(
            events in proptest::collection::vec(
                (proptest::collection::vec(-1.0f32..1.0, 6), 0.1f64..10.0, 0i64..10_000_000_000),
                1..40,
            ),
            max in 1usize..5,
        ) {
            let mut p = TasteProfile::default();
            for (v, w, t) in &events {
                let n = norm(v);
                if n < 1e-3 { continue; }
                let unit: Vec<f32> = v.iter().map(|x| x / n).collect();
                p.add(&unit, *w, *t, &rules(max));
                prop_assert!(p.interests.len() <= max);
                for i in &p.interests {
                    prop_assert!(i.weight > 0.0 && i.weight.is_finite());
                    prop_assert!(norm(&i.mean) <= 1.0 + 1e-4);
                }
            }
            let shares: f64 = p.directions().iter().map(|d| d.1).sum();
            prop_assert!(p.is_empty() || (shares - 1.0).abs() < 1e-6);
        }
    }
}
