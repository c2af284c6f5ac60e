//! The similarity the graph is built and searched with: the index's
//! [`Metric`] (cosine by default: the dot product of L2-normalised vectors).
//! Every vector is checked on the way in (a finite unit vector under
//! cosine; see `VectorIndex::check_vector`), so no normalisation happens here.

/// The kernels live in [`crate::domain`] (runtime-dispatched AVX2/AVX-512),
/// shared with the rest of the core.
pub(crate) use crate::domain::{Metric, dot};

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
}
