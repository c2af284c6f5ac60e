//! Compact codes for the graph walk (`index.quantization`).
//!
//! An HNSW search reads a few thousand vectors per query at random, so it is
//! bound by memory traffic: a 1280-d f32 vector is 5 KB, 80 cache lines.
//! With `f16` each node keeps its vector as half floats (half the bytes);
//! with `int8` as one signed byte per dimension and a per-vector scale (a
//! quarter), compared to an int8 code of the query in integer arithmetic.
//! The codes only steer the walk: the graph re-ranks what it found with the
//! full-precision vectors (see `Graph::search`), so scores and the final
//! order are exact among the candidates, and the codes cost recall only
//! where they let a true neighbour drop out of the beam, which a wider `ef`
//! buys back. Links are chosen on the codes too, so building touches only
//! them.
//!
//! **Int8 scheme.** Symmetric, per vector: `scale = max |x_i| / 127`,
//! `code_i = round(x_i / scale)`. Per-vector rather than per-dimension
//! scales keep the dot product of two codes one integer sum times two
//! floats (`s_a s_b sum a_i b_i`), which vectorises to multiply-add of
//! bytes; a per-dimension scale would need a float per dimension in that
//! loop. Euclidean distances use `|a|^2 + |b|^2 - 2 a.b` with the exact
//! squared norms kept beside the code; Manhattan distance is not a dot
//! product, so it dequantises on the fly (slower, still a quarter of the
//! bytes).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use super::distance::Metric;
use crate::domain::{dot, l1, l2_squared};

/// How the graph holds the vectors it walks (`index.quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Full-precision f32 vectors: the walk compares exact similarities.
    #[default]
    None,
    /// IEEE half floats: half the bytes per vector, ~3 significant digits.
    F16,
    /// One signed byte per dimension and a scale per vector: a quarter of
    /// the bytes.
    Int8,
}

/// A quantization name that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown quantization {0:?}: expected none, f16 or int8")]
pub struct UnknownQuantization(pub String);

impl Quantization {
    pub const ALL: [Self; 3] = [Self::None, Self::F16, Self::Int8];

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        }
    }

    /// Bytes of one dimension in a code.
    pub fn bytes_per_dim(self) -> usize {
        match self {
            Self::None => 4,
            Self::F16 => 2,
            Self::Int8 => 1,
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quantization {
    type Err = UnknownQuantization;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| UnknownQuantization(s.to_owned()))
    }
}

/// A vector as one node of the graph keeps it.
pub(crate) enum Code {
    F32(Box<[f32]>),
    F16(Box<[f16]>),
    I8(I8Code),
}

/// Invariant: `values` in -127..=127, `scale > 0` and finite, `norm2` the
/// squared L2 norm of the vector the code was made from.
pub(crate) struct I8Code {
    values: Box<[i8]>,
    scale: f32,
    norm2: f32,
}

impl I8Code {
    fn encode(vector: &[f32]) -> Self {
        let max = vector.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
        // An all-zero vector (possible under `dot` and `euclidean`) codes as
        // zeros under any scale; 1 keeps the scale finite and positive.
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        let values = vector
            .iter()
            // |x / scale| <= 127 by the choice of scale; the clamp only
            // guards the last ulp. `as` from a finite float in range is exact.
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Self {
            values,
            scale,
            norm2: dot(vector, vector),
        }
    }

    fn as_probe(&self) -> Probe<'_> {
        Probe::I8 {
            values: Cow::Borrowed(&self.values),
            scale: self.scale,
            norm2: self.norm2,
        }
    }
}

impl Code {
    pub(crate) fn encode(quantization: Quantization, vector: &[f32]) -> Self {
        match quantization {
            Quantization::None => Self::F32(vector.into()),
            Quantization::F16 => Self::F16(vector.iter().map(|x| f16::from_f32(*x)).collect()),
            Quantization::Int8 => Self::I8(I8Code::encode(vector)),
        }
    }

    #[cfg(test)]
    pub(crate) fn dim(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::I8(c) => c.values.len(),
        }
    }

    /// The full-precision vector, where this code is one.
    pub(crate) fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            Self::F16(_) | Self::I8(_) => None,
        }
    }

    /// This code as the probe of another comparison, borrowing where it can.
    /// `full` is the node's full-precision vector, used where the code is
    /// not comparable by itself (f16 codes are compared against f32 probes).
    pub(crate) fn as_probe<'a>(&'a self, full: Option<&'a [f32]>) -> Probe<'a> {
        match (self, full) {
            (Self::F32(v), _) => Probe::F32(Cow::Borrowed(v)),
            (Self::I8(c), _) => c.as_probe(),
            (Self::F16(_), Some(full)) => Probe::F32(Cow::Borrowed(full)),
            (Self::F16(v), None) => {
                let mut out = vec![0.0; v.len()];
                v.convert_to_f32_slice(&mut out);
                Probe::F32(Cow::Owned(out))
            }
        }
    }

    /// Starts loading this code's first cache lines (see `prefetch`).
    #[inline]
    pub(crate) fn prefetch(&self) {
        match self {
            Self::F32(v) => super::prefetch::prefetch(v),
            Self::F16(v) => super::prefetch::prefetch(v),
            Self::I8(c) => super::prefetch::prefetch(&c.values),
        }
    }

    /// Heap bytes of this code (what a node pays for its vector).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::F16(v) => v.len() * 2,
            Self::I8(c) => c.values.len(),
        }
    }

    fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.to_vec(),
            Self::F16(v) => {
                let mut out = vec![0.0; v.len()];
                v.convert_to_f32_slice(&mut out);
                out
            }
            Self::I8(c) => c.values.iter().map(|x| f32::from(*x) * c.scale).collect(),
        }
    }
}

/// One side of a comparison during the walk: the query, or the node being
/// linked, in the form that compares fast against the graph's codes (see
/// `Graph::probe`): f32 against f32 and f16 codes, int8 against int8 codes.
pub(crate) enum Probe<'a> {
    F32(Cow<'a, [f32]>),
    I8 {
        values: Cow<'a, [i8]>,
        scale: f32,
        norm2: f32,
    },
}

impl Probe<'_> {
    /// The probe a query needs against codes of `quantization`.
    pub(crate) fn of_query(quantization: Quantization, query: &[f32]) -> Probe<'_> {
        match quantization {
            Quantization::None | Quantization::F16 => Probe::F32(Cow::Borrowed(query)),
            Quantization::Int8 => {
                let code = I8Code::encode(query);
                Probe::I8 {
                    values: Cow::Owned(code.values.into_vec()),
                    scale: code.scale,
                    norm2: code.norm2,
                }
            }
        }
    }

    /// The metric's similarity of this probe and `code` (higher = more
    /// similar), approximated by the code's precision.
    #[inline]
    pub(crate) fn similarity(&self, metric: Metric, code: &Code) -> f32 {
        match (self, code) {
            (Self::F32(q), Code::F32(x)) => metric.similarity(q, x),
            (Self::F32(q), Code::F16(x)) => similarity_f16(metric, q, x),
            (
                Self::I8 {
                    values,
                    scale,
                    norm2,
                },
                Code::I8(x),
            ) => similarity_i8(metric, (values, *scale, *norm2), x),
            // A probe of another form than the graph's codes: `Graph::probe`
            // never makes one; decoding both sides keeps it correct anyway.
            (Self::F32(q), Code::I8(_)) => metric.similarity(q, &code.to_f32()),
            (Self::I8 { values, scale, .. }, Code::F32(_) | Code::F16(_)) => {
                let q: Vec<f32> = values.iter().map(|x| f32::from(*x) * scale).collect();
                metric.similarity(&q, &code.to_f32())
            }
        }
    }
}

/// Half floats are widened a block at a time into a stack buffer (F16C
/// instructions where the CPU has them, chosen at run time by `half`) and
/// fed to the f32 kernels; sums of blocks are the sums of the whole.
const F16_BLOCK: usize = 256;

fn similarity_f16(metric: Metric, query: &[f32], code: &[f16]) -> f32 {
    let mut block = [0.0_f32; F16_BLOCK];
    let mut sum = 0.0_f32;
    for (q, x) in query.chunks(F16_BLOCK).zip(code.chunks(F16_BLOCK)) {
        let widened = &mut block[..x.len()];
        x.convert_to_f32_slice(widened);
        sum += match metric {
            Metric::Cosine | Metric::Dot => dot(q, widened),
            Metric::Euclidean => l2_squared(q, widened),
            Metric::Manhattan => l1(q, widened),
        };
    }
    match metric {
        Metric::Cosine | Metric::Dot => sum,
        // As in `Metric::similarity`: `0.0 - d` so identical vectors score +0.
        Metric::Euclidean => 0.0 - sum.sqrt(),
        Metric::Manhattan => 0.0 - sum,
    }
}

fn similarity_i8(metric: Metric, (a, sa, na): (&[i8], f32, f32), b: &I8Code) -> f32 {
    match metric {
        Metric::Cosine | Metric::Dot => dot_i8(a, &b.values) as f32 * sa * b.scale,
        Metric::Euclidean => {
            let cross = dot_i8(a, &b.values) as f32 * sa * b.scale;
            // Rounding can push a tiny distance below zero.
            0.0 - (na + b.norm2 - 2.0 * cross).max(0.0).sqrt()
        }
        Metric::Manhattan => 0.0 - l1_i8(a, sa, &b.values, b.scale),
    }
}

/// Independent accumulators of the int8 kernels, as in `domain::dot`: 32
/// byte lanes fill one AVX2 register.
const I8_LANES: usize = 32;

/// Integer dot product of two codes. No overflow: each term is at most
/// 127^2 in magnitude, so 2^31 / 127^2 > 133,000 dimensions fit.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl",
    "x86_64+avx2",
    "aarch64+neon"
))]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    debug_assert_eq!(a.len(), b.len(), "dot of codes of different lengths");
    let (chunks_a, rest_a) = a.as_chunks::<I8_LANES>();
    let (chunks_b, rest_b) = b.as_chunks::<I8_LANES>();
    let mut acc = [0_i32; I8_LANES];
    for (xa, xb) in chunks_a.iter().zip(chunks_b) {
        for (s, (p, q)) in acc.iter_mut().zip(xa.iter().zip(xb)) {
            *s += i32::from(i16::from(*p) * i16::from(*q));
        }
    }
    let mut sum: i32 = acc.iter().sum();
    for (p, q) in rest_a.iter().zip(rest_b) {
        sum += i32::from(*p) * i32::from(*q);
    }
    sum
}

/// L1 distance of two int8 codes with their scales, dequantised on the fly.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2", "aarch64+neon"))]
fn l1_i8(a: &[i8], sa: f32, b: &[i8], sb: f32) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "l1 of codes of different lengths");
    const LANES: usize = 16;
    let (chunks_a, rest_a) = a.as_chunks::<LANES>();
    let (chunks_b, rest_b) = b.as_chunks::<LANES>();
    let mut acc = [0.0_f32; LANES];
    for (xa, xb) in chunks_a.iter().zip(chunks_b) {
        for (s, (p, q)) in acc.iter_mut().zip(xa.iter().zip(xb)) {
            *s += (f32::from(*p) * sa - f32::from(*q) * sb).abs();
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (p, q) in rest_a.iter().zip(rest_b) {
        sum += (f32::from(*p) * sa - f32::from(*q) * sb).abs();
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vector(seed: u64, dim: usize, spread: f32) -> Vec<f32> {
        (0..dim)
            .map(|i| ((seed as f32 + 1.0) * 0.37 + i as f32 * 0.71).sin() * spread)
            .collect()
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for q in Quantization::ALL {
            assert_eq!(q.as_str().parse::<Quantization>(), Ok(q));
        }
        assert_eq!(
            "i8".parse::<Quantization>(),
            Err(UnknownQuantization("i8".into()))
        );
    }

    #[test]
    fn int8_dot_matches_the_naive_sum_for_all_remainder_lengths() {
        for len in 0..70 {
            let a: Vec<i8> = (0..len).map(|i| ((i * 37) % 255) as i8).collect();
            let b: Vec<i8> = (0..len).map(|i| ((i * 91 + 5) % 255) as i8).collect();
            let naive: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            assert_eq!(dot_i8(&a, &b), naive, "len {len}");
        }
        let extreme = vec![-127_i8; 4096];
        assert_eq!(dot_i8(&extreme, &extreme), 4096 * 127 * 127);
    }

    #[test]
    fn a_zero_vector_codes_to_zeros_with_a_finite_scale() {
        let code = I8Code::encode(&[0.0; 8]);
        assert!(code.values.iter().all(|&x| x == 0));
        assert!(code.scale.is_finite() && code.scale > 0.0);
        let probe = Probe::of_query(Quantization::Int8, &[0.0; 8]);
        for metric in Metric::ALL {
            let sim = probe.similarity(metric, &Code::I8(I8Code::encode(&[0.0; 8])));
            assert_eq!(sim, 0.0, "{metric}");
        }
    }

    proptest! {
        /// Every code approximates every metric within its precision, and
        /// the f32 code is exact.
        #[test]
        fn codes_approximate_every_metric(seed_a in 0u64..1000, seed_b in 0u64..1000, dim in 1usize..600, spread in 0.01f32..10.0) {
            let a = vector(seed_a, dim, spread);
            let b = vector(seed_b, dim, spread);
            for metric in Metric::ALL {
                let exact = metric.similarity(&a, &b);
                for quantization in Quantization::ALL {
                    let code = Code::encode(quantization, &b);
                    prop_assert_eq!(code.dim(), dim);
                    let got = Probe::of_query(quantization, &a).similarity(metric, &code);
                    // Per component an int8 code is off by at most half a
                    // step, scale / 2 = max|x| / 254; an f16 by 2^-11
                    // relative. Bound the error of the whole sum by that
                    // per-component error times the sums it enters.
                    let max = spread;
                    let step = match quantization {
                        Quantization::None => 0.0,
                        Quantization::F16 => max / 2048.0,
                        Quantization::Int8 => max / 254.0,
                    };
                    let n = dim as f32;
                    // Both sides may carry that error: a . b is off by at
                    // most 2 max step n + step^2 n, a squared distance by
                    // twice that, and a distance by the square root of the
                    // error of its square. The last term is f32 rounding.
                    let cross = 2.0 * max * step * n + step * step * n;
                    let tolerance = match metric {
                        Metric::Cosine | Metric::Dot => cross + 1e-5 * max * max * n,
                        Metric::Euclidean => (2.0 * cross).sqrt() + 1e-3 * max * n.sqrt(),
                        Metric::Manhattan => 2.0 * step * n + 1e-5 * max * n,
                    };
                    prop_assert!(
                        (got - exact).abs() <= tolerance,
                        "{} {}: {} vs {} (tolerance {})", metric, quantization, got, exact, tolerance
                    );
                    if quantization == Quantization::None {
                        prop_assert_eq!(got.to_bits(), exact.to_bits());
                    }
                }
            }
        }
    }
}
