//! A closed-loop gRPC load generator (`lookbook bench`) and a catalogue
//! filler (`lookbook synth`), used for the figures in the README.
//!
//! Closed loop: `concurrency` tasks each send the next request as soon as
//! the previous one answered, after a warm-up whose samples are discarded.
//! Latencies go into an HDR histogram (microsecond resolution) so p99 and
//! max are exact rather than estimated from a sample.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use crate::api::client::{Client, ClientError, SimilarTo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    /// RecommendSimilar by product id.
    Similar,
    /// Embed one photo per call.
    Embed,
    /// RecommendForUser for shoppers with a long history (set up first
    /// with `seed_shoppers`).
    User,
}

/// Shopper ids `seed_shoppers` creates.
pub fn shopper_id(n: usize) -> String {
    format!("bench-shopper-{n}")
}

/// Records `history` interactions for each of `shoppers` synthetic
/// shoppers: each has three favourite products and interacts with random
/// products near them in id order (ids are a proxy for catalogue
/// neighbourhoods), mostly views, some clicks, carts and purchases.
pub fn shopper_histories(
    ids: &[String],
    shoppers: usize,
    history: usize,
    seed: u64,
) -> Vec<(String, String, crate::personalize::Action)> {
    use crate::personalize::Action;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(shoppers * history);
    for n in 0..shoppers {
        let favourites: Vec<usize> = (0..3).map(|_| rng.random_range(0..ids.len())).collect();
        for _ in 0..history {
            let centre = favourites[rng.random_range(0..favourites.len())];
            let offset = rng.random_range(0..50usize);
            let product = &ids[(centre + offset) % ids.len()];
            let action = match rng.random_range(0..100) {
                0..70 => Action::View,
                70..85 => Action::Click,
                85..95 => Action::AddToCart,
                _ => Action::Purchase,
            };
            out.push((shopper_id(n), product.clone(), action));
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub rpc: Rpc,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub k: u32,
    /// Shoppers queried by `Rpc::User`.
    pub shoppers: usize,
    /// HTTP/2 connections the workers are spread over. One connection is
    /// driven by one task on each side, which caps QPS before the server
    /// does; a fleet of callers would hold several.
    pub connections: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub qps: f64,
    /// Milliseconds.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Runs the load; `ids` feed `similar`, `images` feed `embed`.
pub async fn run(
    clients: &[Client],
    spec: &LoadSpec,
    ids: Arc<Vec<String>>,
    images: Arc<Vec<Bytes>>,
) -> Result<LoadReport, ClientError> {
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for worker in 0..spec.concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let (ids, images, spec) = (Arc::clone(&ids), Arc::clone(&images), spec.clone());
        tasks.push(tokio::spawn(async move {
            // 1 µs .. 60 s at 3 significant digits.
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid");
            let mut errors = 0u64;
            let mut i = worker;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let result = match spec.rpc {
                    Rpc::Similar => client
                        .similar(SimilarTo::Product(ids[i % ids.len()].clone()), spec.k)
                        .await
                        .map(drop),
                    Rpc::Embed => client
                        .embed(vec![images[i % images.len()].clone()])
                        .await
                        .map(drop),
                    Rpc::User => client
                        .for_user(&shopper_id(i % spec.shoppers.max(1)), spec.k)
                        .await
                        .map(drop),
                };
                i += spec.concurrency;
                let done = Instant::now();
                if now < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => {
                        let micros =
                            u64::try_from(done.duration_since(now).as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(micros.max(1));
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("static histogram bounds are valid");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.map_err(|e| ClientError::Rpc {
            code: "Internal".into(),
            message: format!("load task failed: {e}"),
        })?;
        hist.add(&h).map_err(|e| ClientError::Rpc {
            code: "Internal".into(),
            message: format!("histogram merge: {e}"),
        })?;
        errors += e;
    }
    let seconds = spec.duration.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(LoadReport {
        requests: hist.len(),
        errors,
        seconds,
        qps: hist.len() as f64 / seconds,
        p50: ms(0.50),
        p95: ms(0.95),
        p99: ms(0.99),
        max: hist.max() as f64 / 1000.0,
    })
}

/// Builds `count` synthetic products clustered like the real ones: each is
/// a real product's embedding plus isotropic Gaussian noise of standard
/// deviation `noise / sqrt(dim)` per component (so the noise vector has
/// norm ≈ `noise`), re-normalised, and keeps that product's attributes.
/// Their ids are `syn-<first>` onwards. Deterministic for a given `seed`.
pub fn synthesize(
    bases: &[(String, BTreeMap<String, String>, Vec<f32>)],
    first: usize,
    count: usize,
    noise: f32,
    seed: u64,
) -> Vec<(String, Vec<f32>, BTreeMap<String, String>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count);
    if bases.is_empty() {
        return out;
    }
    for i in 0..count {
        let (base_id, attrs, v) = &bases[rng.random_range(0..bases.len())];
        let sd = noise / (v.len().max(1) as f32).sqrt();
        let normal = Normal::new(0.0f32, sd).expect("a finite, non-negative standard deviation");
        let mut w: Vec<f32> = v.iter().map(|x| x + normal.sample(&mut rng)).collect();
        let n = w
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        w.iter_mut().for_each(|x| *x /= n);
        let mut attrs = attrs.clone();
        attrs.insert("synthetic_from".into(), base_id.clone());
        out.push((format!("syn-{}", first + i), w, attrs));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_products_stay_near_their_base() {
        let base: Vec<f32> = (0..256).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
        let bases = vec![("b".to_owned(), BTreeMap::new(), base)];
        let out = synthesize(&bases, 0, 50, 0.3, 7);
        assert_eq!(out.len(), 50);
        for (_, v, attrs) in &out {
            let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-4);
            // cos = 1/sqrt(1 + 0.09) ≈ 0.958 in expectation.
            assert!(v[0] > 0.9 && v[0] < 0.99, "cos {}", v[0]);
            assert_eq!(attrs["synthetic_from"], "b");
        }
        assert_eq!(
            synthesize(&bases, 0, 5, 0.3, 7)[3].1,
            out[3].1,
            "deterministic"
        );
        let later = synthesize(&bases, 50, 5, 0.3, 7);
        assert_eq!(later[0].0, "syn-50", "ids continue from `first`");
    }
}
