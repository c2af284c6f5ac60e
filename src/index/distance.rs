//! Dot product and the distance the HNSW graph is built with.
//!
//! `anndists::DistDot` asserts `1 - dot >= 0`, which fails whenever a query
//! equals an indexed unit vector whose f32 self-dot rounds above 1.0 (about
//! half of real embeddings): the process would panic on an exact-match query.
//! `DistCosine` is safe but re-normalises both vectors on every evaluation.
//! The vectors here are already L2-normalised, so the cosine distance is just
//! `1 - dot`; clamping it at zero keeps hnsw_rs's `dist >= 0` assertions true
//! and can never produce NaN (`f32::max` ignores a NaN operand).

use hnsw_rs::prelude::Distance;

/// The kernel lives in [`crate::domain`], shared with the rest of the core.
pub(crate) use crate::domain::dot;

/// Cosine distance for unit vectors: `max(0, 1 - a·b)`.
///
/// The type name is written into hnsw_rs dumps and checked on load (by its
/// last path segment), so renaming this type invalidates existing dumps; the
/// manifest's format version must be bumped together with such a rename.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosineDistance;

impl Distance<f32> for UnitCosineDistance {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn dot_matches_naive_for_all_remainder_lengths() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let got = f64::from(dot(&a, &b));
            assert!((got - naive(&a, &b)).abs() < 1e-4, "len {len}: {got}");
        }
    }

    #[test]
    fn distance_is_clamped_and_never_nan() {
        let d = UnitCosineDistance;
        // Self-dot slightly above one must give zero, not a negative distance.
        let v = [0.6_f32, 0.8000001];
        assert!(dot(&v, &v) > 1.0);
        assert_eq!(d.eval(&v, &v), 0.0);
        // Opposite unit vectors are at the maximum distance 2.
        assert!((d.eval(&[1.0, 0.0], &[-1.0, 0.0]) - 2.0).abs() < 1e-6);
        // A NaN input yields a finite distance instead of poisoning the heap
        // ordering inside hnsw_rs (which panics on NaN).
        assert_eq!(d.eval(&[f32::NAN, 0.0], &[1.0, 0.0]), 0.0);
    }
}
