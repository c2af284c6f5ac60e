//! Validated domain types shared by the core layers.
//!
//! Everything that crosses from a request into the core is one of these, so
//! the core never re-checks ids, dimensions or finiteness: a value of these
//! types is valid by construction.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

/// Product attributes (articleType, gender, baseColour, ...). Ordered so
/// that responses and stored values are deterministic.
pub type Attributes = BTreeMap<String, String>;

/// A product id: non-empty, at most the configured number of bytes, and free
/// of control characters (they break logs and CSV round trips).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductId(Arc<str>);

/// Why a product or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("id contains a control character")]
    ControlCharacter,
}

/// The rules product and user ids share.
fn check_id(raw: &str, max_bytes: usize) -> Result<(), InvalidId> {
    if raw.is_empty() {
        return Err(InvalidId::Empty);
    }
    if raw.len() > max_bytes {
        return Err(InvalidId::TooLong {
            len: raw.len(),
            max: max_bytes,
        });
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidId::ControlCharacter);
    }
    Ok(())
}

/// The shared methods of the id newtypes: parsing with [`check_id`], access,
/// and `Debug`/`Display` as the bare string.
macro_rules! id_type {
    ($name:ident) => {
        impl $name {
            pub fn parse(raw: &str, max_bytes: usize) -> Result<Self, InvalidId> {
                check_id(raw, max_bytes)?;
                Ok(Self(Arc::from(raw)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn as_arc(&self) -> &Arc<str> {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(ProductId);

impl ProductId {
    /// For ids read back from our own store or index, or from the
    /// replicated log, which were validated when they were written.
    pub fn from_trusted(raw: Arc<str>) -> Self {
        Self(raw)
    }
}

impl UserId {
    /// For ids read back from the replicated log, validated by the replica
    /// that wrote them.
    pub fn from_trusted(raw: Arc<str>) -> Self {
        Self(raw)
    }
}

/// A shopper id, chosen by the calling shop (opaque to us); same rules as
/// [`ProductId`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

id_type!(UserId);

/// How far from 1 the norm of a vector already unit length to f32
/// precision can be: dividing each component by its norm and rounding to
/// f32 moves it by at most 2^-24 of its value, so the norm of any such
/// result is within about 2^-24 of 1. `Embedding::normalize` keeps a vector
/// within this of unit length bit for bit. Dividing it again would move the
/// last bit of a component now and then (a 1280-d vector normalised in f32,
/// with norm 1 - 3.0e-8, lost 4 bits that way), so a caller sending a unit
/// vector would read back another one, and normalising twice would not give
/// what normalising once gave.
const UNIT_TOLERANCE: f64 = 1.0 / (1_u64 << 23) as f64;

/// How a catalogue's vectors are compared: a property of the data, chosen
/// per data directory (`index.metric`). Every score is a similarity, higher
/// is better, whatever the metric:
///
/// | metric | score of `a` against `b` | range |
/// | --- | --- | --- |
/// | `cosine` (default) | `a . b`, the cosine: vectors are stored unit length | [-1, 1] (clamped) |
/// | `dot` | `a . b` of the vectors as given | any real |
/// | `euclidean` | `-sqrt(sum (a_i - b_i)^2)`, minus the L2 distance | (-inf, 0] |
/// | `manhattan` | `-sum abs(a_i - b_i)`, minus the L1 distance | (-inf, 0] |
///
/// Cosine is what the original design used and what the bundled encoder's
/// (unit) embeddings are made for; `dot` and `euclidean` are for callers
/// who bring their own non-normalised embeddings, where length means
/// something; `manhattan` is the design's other comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Cosine,
    Dot,
    Euclidean,
    Manhattan,
}

/// A metric name that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?}: expected cosine, dot, euclidean or manhattan")]
pub struct UnknownMetric(pub String);

impl Metric {
    pub const ALL: [Self; 4] = [Self::Cosine, Self::Dot, Self::Euclidean, Self::Manhattan];

    /// The name used in configuration and dumps.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Dot => "dot",
            Self::Euclidean => "euclidean",
            Self::Manhattan => "manhattan",
        }
    }

    /// How similar `b` is to `a`; higher is better (see the table above).
    /// Not clamped: the index clamps cosine scores, whose rounding can
    /// pass 1 by an ulp or two.
    ///
    /// The match sits outside the kernels, which stay as tight as before;
    /// for cosine and dot this is [`dot`] itself behind one predictable
    /// branch.
    #[inline]
    pub fn similarity(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Self::Cosine | Self::Dot => dot(a, b),
            // `0.0 - d` rather than `-d`: identical vectors score +0, not
            // -0 (which callers would see printed as "-0").
            Self::Euclidean => 0.0 - l2_squared(a, b).sqrt(),
            Self::Manhattan => 0.0 - l1(a, b),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// Largest L2 norm of a vector kept as given (every metric but cosine).
/// Any dot product of two such vectors is at most 1e36 and any distance
/// between them at most 2e18, so no score overflows f32 (max 3.4e38); an
/// overflowed score would be infinite or NaN and break every ranking it
/// joins. Real embeddings are many orders of magnitude shorter.
pub const MAX_NORM: f64 = 1e18;

/// A finite embedding, as the catalogue's [`Metric`] keeps it: unit length
/// (L2-normalised) under cosine, so that cosine similarity is the dot
/// product; as given under the other metrics (see [`Self::for_metric`]).
#[derive(Clone, PartialEq)]
pub struct Embedding(Arc<[f32]>);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidEmbedding {
    #[error("embedding has {got} values, the model's dimension is {expected}")]
    WrongDimension { got: usize, expected: usize },
    #[error("embedding value {index} is not finite")]
    NotFinite { index: usize },
    #[error("embedding is all zeros and has no direction")]
    Zero,
    #[error("embedding has L2 norm {norm:e}, the limit is {MAX_NORM:e}")]
    TooLong { norm: f64 },
}

/// The dimension and finiteness every embedding is checked for; returns
/// the L2 norm, accumulated in f64 (a sum of 2048 squares in f32 loses
/// enough precision to leave norms visibly off 1).
fn checked_norm(values: &[f32], dim: usize) -> Result<f64, InvalidEmbedding> {
    if values.len() != dim {
        return Err(InvalidEmbedding::WrongDimension {
            got: values.len(),
            expected: dim,
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(InvalidEmbedding::NotFinite { index });
    }
    Ok(values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt())
}

impl Embedding {
    /// Validates and L2-normalises a caller-supplied vector; one that is
    /// already unit length (to f32 precision) is kept as it is, so this is
    /// idempotent and a stored unit vector reads back bit for bit. What
    /// cosine catalogues store; the encoder's outputs go through it under
    /// every metric (a unit vector is a valid vector under all of them).
    pub fn normalize(values: &[f32], dim: usize) -> Result<Self, InvalidEmbedding> {
        let norm = checked_norm(values, dim)?;
        if norm == 0.0 || !norm.is_finite() {
            return Err(InvalidEmbedding::Zero);
        }
        if (norm - 1.0).abs() <= UNIT_TOLERANCE {
            return Ok(Self(values.into()));
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "each normalised component is within [-1, 1]"
        )]
        let unit: Arc<[f32]> = values
            .iter()
            .map(|&v| (f64::from(v) / norm) as f32)
            .collect();
        Ok(Self(unit))
    }

    /// Validates a caller-supplied vector for a catalogue of `metric`:
    /// - cosine: exactly [`Self::normalize`];
    /// - dot: stored as given; refused if all zero (it has no direction and
    ///   scores 0 against everything);
    /// - euclidean, manhattan: stored as given; zero is a point like any other.
    ///
    /// Every metric checks the dimension and finiteness, and the ones that
    /// keep vectors as given also the length ([`MAX_NORM`]).
    pub fn for_metric(
        values: &[f32],
        dim: usize,
        metric: Metric,
    ) -> Result<Self, InvalidEmbedding> {
        if metric == Metric::Cosine {
            return Self::normalize(values, dim);
        }
        let norm = checked_norm(values, dim)?;
        if metric == Metric::Dot && values.iter().all(|v| *v == 0.0) {
            return Err(InvalidEmbedding::Zero);
        }
        if norm > MAX_NORM {
            return Err(InvalidEmbedding::TooLong { norm });
        }
        Ok(Self(values.into()))
    }

    /// For vectors read back from our own store or index, which were
    /// validated (and under cosine normalised) when they were written.
    pub fn from_trusted(values: Arc<[f32]>) -> Self {
        Self(values)
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn as_arc(&self) -> &Arc<[f32]> {
        &self.0
    }

    pub fn dim(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Embedding(dim={})", self.0.len())
    }
}

/// Independent accumulators in [`dot`], [`l2_squared`] and [`l1`]. A
/// single running sum is a serial dependency chain that LLVM may not
/// reorder (float addition is not associative); split sums vectorise. 16
/// lanes beat 8, and fill one AVX-512 register.
const DOT_LANES: usize = 16;

/// Dot product; the cosine similarity of two unit vectors.
///
/// The hottest loop in the service: every HNSW step, exact scan, MMR pick
/// and reason is made of it (of it or of its siblings below, by metric).
/// The release build targets baseline x86-64
/// (SSE2, 4 lanes), so `multiversion` also compiles it for AVX2 and
/// AVX-512 and picks the best at run time. Measured with
/// `cargo bench --bench index` on this machine (AVX2): a 1280-d dot took
/// 1.31 µs as a plain iterator sum and takes 0.10 µs now; an HNSW search
/// (k=10, 5K x 1280-d) went from 1.21 ms with the same loop compiled for
/// SSE2 only to 0.97 ms.
///
/// Callers guarantee equal lengths (every vector is checked against the
/// model's dimension on the way in); a mismatch would only shorten the sum,
/// so it is a debug assertion rather than a panic on the hot path.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2", "aarch64+neon"))]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of slices of different lengths");
    let (chunks_a, rest_a) = a.as_chunks::<DOT_LANES>();
    let (chunks_b, rest_b) = b.as_chunks::<DOT_LANES>();
    let mut acc = [0.0_f32; DOT_LANES];
    for (xa, xb) in chunks_a.iter().zip(chunks_b) {
        for (s, (p, q)) in acc.iter_mut().zip(xa.iter().zip(xb)) {
            *s += p * q;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (p, q) in rest_a.iter().zip(rest_b) {
        sum += p * q;
    }
    sum
}

/// Squared Euclidean (L2) distance; the `euclidean` metric's kernel (the
/// square root is taken once, outside). Built like [`dot`], for the same
/// reasons; lengths are the caller's guarantee, as there.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2", "aarch64+neon"))]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "l2 of slices of different lengths");
    let (chunks_a, rest_a) = a.as_chunks::<DOT_LANES>();
    let (chunks_b, rest_b) = b.as_chunks::<DOT_LANES>();
    let mut acc = [0.0_f32; DOT_LANES];
    for (xa, xb) in chunks_a.iter().zip(chunks_b) {
        for (s, (p, q)) in acc.iter_mut().zip(xa.iter().zip(xb)) {
            let d = p - q;
            *s += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (p, q) in rest_a.iter().zip(rest_b) {
        let d = p - q;
        sum += d * d;
    }
    sum
}

/// Manhattan (L1) distance; the `manhattan` metric's kernel. Built like
/// [`dot`] (`abs` is a sign-bit mask, so it vectorises as well).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2", "aarch64+neon"))]
pub fn l1(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "l1 of slices of different lengths");
    let (chunks_a, rest_a) = a.as_chunks::<DOT_LANES>();
    let (chunks_b, rest_b) = b.as_chunks::<DOT_LANES>();
    let mut acc = [0.0_f32; DOT_LANES];
    for (xa, xb) in chunks_a.iter().zip(chunks_b) {
        for (s, (p, q)) in acc.iter_mut().zip(xa.iter().zip(xb)) {
            *s += (p - q).abs();
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (p, q) in rest_a.iter().zip(rest_b) {
        sum += (p - q).abs();
    }
    sum
}

/// Euclidean norm.
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Matches when `attributes[key]` is one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeFilter {
    pub key: String,
    /// Never empty: an empty set would match nothing (in `must`) or
    /// everything (in `must_not`), which is always a caller mistake.
    pub values: BTreeSet<String>,
}

impl AttributeFilter {
    pub fn matches(&self, attributes: &Attributes) -> bool {
        attributes
            .get(&self.key)
            .is_some_and(|v| self.values.contains(v))
    }
}

/// A conjunction of `must` clauses and negated `must_not` clauses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub must: Vec<AttributeFilter>,
    pub must_not: Vec<AttributeFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFilter {
    #[error("filter clause has an empty key")]
    EmptyKey,
    #[error("filter clause on {key:?} lists no values")]
    NoValues { key: String },
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.must_not.is_empty()
    }

    pub fn matches(&self, attributes: &Attributes) -> bool {
        self.must.iter().all(|c| c.matches(attributes))
            && !self.must_not.iter().any(|c| c.matches(attributes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn product_id_rules() {
        assert_eq!(ProductId::parse("", 8), Err(InvalidId::Empty));
        assert_eq!(
            ProductId::parse("123456789", 8),
            Err(InvalidId::TooLong { len: 9, max: 8 })
        );
        assert_eq!(
            ProductId::parse("a\nb", 8),
            Err(InvalidId::ControlCharacter)
        );
        assert_eq!(ProductId::parse("1563", 8).unwrap().as_str(), "1563");
    }

    #[test]
    fn embedding_rules() {
        assert_eq!(
            Embedding::normalize(&[1.0, 2.0], 3),
            Err(InvalidEmbedding::WrongDimension {
                got: 2,
                expected: 3
            })
        );
        assert_eq!(
            Embedding::normalize(&[1.0, f32::NAN, 0.0], 3),
            Err(InvalidEmbedding::NotFinite { index: 1 })
        );
        assert_eq!(
            Embedding::normalize(&[0.0, f32::INFINITY, 0.0], 3),
            Err(InvalidEmbedding::NotFinite { index: 1 })
        );
        assert_eq!(
            Embedding::normalize(&[0.0; 3], 3),
            Err(InvalidEmbedding::Zero)
        );
        let e = Embedding::normalize(&[3.0, 4.0, 0.0], 3).unwrap();
        assert_eq!(e.as_slice(), &[0.6, 0.8, 0.0]);
    }

    #[test]
    fn filter_semantics() {
        let attrs: Attributes = [("articleType", "Shirts"), ("gender", "Men")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let clause = |k: &str, vs: &[&str]| AttributeFilter {
            key: k.to_owned(),
            values: vs.iter().map(|v| (*v).to_owned()).collect(),
        };
        let f = Filter {
            must: vec![clause("articleType", &["Shirts", "Tshirts"])],
            must_not: vec![clause("gender", &["Women"])],
        };
        assert!(f.matches(&attrs));
        let f = Filter {
            must: vec![],
            must_not: vec![clause("gender", &["Men"])],
        };
        assert!(!f.matches(&attrs));
        let f = Filter {
            must: vec![clause("season", &["Summer"])],
            must_not: vec![],
        };
        assert!(!f.matches(&attrs), "a missing key never satisfies must");
        assert!(Filter::default().matches(&attrs));
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn a_unit_vector_is_kept_bit_for_bit() {
        // Norm 1 - 6e-8: unit length to f32 precision. Divided by its norm
        // it would become exactly 1.0.
        let unit = [1.0 - f32::EPSILON / 2.0, 0.0, 0.0];
        let e = Embedding::normalize(&unit, 3).unwrap();
        assert_eq!(bits(e.as_slice()), bits(&unit));
        // Off by more than f32 precision: normalised.
        let long = [1.0 + 4.0 * f32::EPSILON, 0.0, 0.0];
        assert_eq!(
            Embedding::normalize(&long, 3).unwrap().as_slice(),
            &[1.0, 0.0, 0.0]
        );
    }

    #[test]
    fn metric_names_round_trip_and_unknown_ones_are_refused() {
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
            let toml = toml::to_string(&[("metric", m)].into_iter().collect::<BTreeMap<_, _>>())
                .expect("serialises");
            assert_eq!(toml.trim(), format!("metric = \"{}\"", m.as_str()));
        }
        assert_eq!(Metric::default(), Metric::Cosine);
        let err = "L2".parse::<Metric>().expect_err("not a metric name");
        assert_eq!(
            err.to_string(),
            "unknown metric \"L2\": expected cosine, dot, euclidean or manhattan"
        );
    }

    #[test]
    fn similarity_is_higher_for_closer_vectors_under_every_metric() {
        let (a, b) = ([1.0_f32, 2.0, 2.0], [4.0_f32, 6.0, 2.0]);
        assert_eq!(Metric::Dot.similarity(&a, &b), 20.0);
        assert_eq!(Metric::Cosine.similarity(&a, &b), 20.0);
        assert_eq!(Metric::Euclidean.similarity(&a, &b), -5.0);
        assert_eq!(Metric::Manhattan.similarity(&a, &b), -7.0);
        for m in [Metric::Euclidean, Metric::Manhattan] {
            assert!(m.similarity(&a, &a).to_bits() == 0, "{m}: +0, not -0");
            assert!(
                m.similarity(&a, &[1.0, 2.0, 3.0]) > m.similarity(&a, &b),
                "{m}"
            );
        }
    }

    fn naive_l2_squared(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum()
    }

    fn naive_l1(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
            .sum()
    }

    #[test]
    fn distance_kernels_match_naive_for_all_remainder_lengths() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let l2 = f64::from(l2_squared(&a, &b));
            assert!(
                (l2 - naive_l2_squared(&a, &b)).abs() < 1e-4,
                "len {len}: {l2}"
            );
            let got = f64::from(l1(&a, &b));
            assert!((got - naive_l1(&a, &b)).abs() < 1e-4, "len {len}: {got}");
        }
    }

    #[test]
    fn embeddings_are_validated_per_metric() {
        // Cosine is `normalize`, bit for bit.
        let raw = [3.0, 4.0, 0.0];
        assert_eq!(
            Embedding::for_metric(&raw, 3, Metric::Cosine),
            Embedding::normalize(&raw, 3)
        );
        // The others keep the vector as given.
        for m in [Metric::Dot, Metric::Euclidean, Metric::Manhattan] {
            let e = Embedding::for_metric(&raw, 3, m).unwrap();
            assert_eq!(bits(e.as_slice()), bits(&raw), "{m}");
            assert_eq!(
                Embedding::for_metric(&raw[..2], 3, m),
                Err(InvalidEmbedding::WrongDimension {
                    got: 2,
                    expected: 3
                })
            );
            assert_eq!(
                Embedding::for_metric(&[1.0, f32::NEG_INFINITY, 0.0], 3, m),
                Err(InvalidEmbedding::NotFinite { index: 1 })
            );
            assert!(matches!(
                Embedding::for_metric(&[1e19, 1e19, 0.0], 3, m),
                Err(InvalidEmbedding::TooLong { .. })
            ));
        }
        // Zero has no direction for a dot product, but is a point in space.
        assert_eq!(
            Embedding::for_metric(&[0.0, -0.0, 0.0], 3, Metric::Dot),
            Err(InvalidEmbedding::Zero)
        );
        for m in [Metric::Euclidean, Metric::Manhattan] {
            assert!(Embedding::for_metric(&[0.0; 3], 3, m).is_ok(), "{m}");
        }
    }

    proptest! {
        #[test]
        fn normalized_embeddings_are_unit_or_rejected(values in prop::collection::vec(any::<f32>(), 1..64)) {
            let dim = values.len();
            match Embedding::normalize(&values, dim) {
                Ok(e) => {
                    let norm: f64 = e.as_slice().iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
                    prop_assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
                    let again = Embedding::normalize(e.as_slice(), dim).unwrap();
                    prop_assert!(bits(again.as_slice()) == bits(e.as_slice()), "normalising twice changed it");
                }
                Err(InvalidEmbedding::NotFinite { index }) => prop_assert!(!values[index].is_finite()),
                Err(InvalidEmbedding::Zero) => prop_assert!(values.iter().all(|v| *v == 0.0) || values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() == 0.0),
                Err(e @ (InvalidEmbedding::WrongDimension { .. } | InvalidEmbedding::TooLong { .. })) => {
                    prop_assert!(false, "{e}")
                }
            }
        }

        /// The split-accumulator kernels agree with a plain f64 sum, up to
        /// f32 rounding relative to the sum's size.
        #[test]
        fn distance_kernels_match_naive(
            pairs in prop::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 0..300),
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let want = naive_l2_squared(&a, &b);
            let got = f64::from(l2_squared(&a, &b));
            prop_assert!((got - want).abs() <= 1e-5 * want.max(1.0), "l2^2 {got} vs {want}");
            let want = naive_l1(&a, &b);
            let got = f64::from(l1(&a, &b));
            prop_assert!((got - want).abs() <= 1e-5 * want.max(1.0), "l1 {got} vs {want}");
            let distance = naive_l2_squared(&a, &b).sqrt();
            let sim = f64::from(Metric::Euclidean.similarity(&a, &b));
            prop_assert!((sim + distance).abs() <= 1e-5 * distance.max(1.0), "{sim} vs -{distance}");
        }

        #[test]
        fn product_ids_within_limits_round_trip(raw in "[a-zA-Z0-9_\\-./]{1,64}") {
            let id = ProductId::parse(&raw, 64).unwrap();
            prop_assert_eq!(id.as_str(), raw.as_str());
        }
    }
}
