//! Regression benchmarks for the hot paths of a query: the distance kernel,
//! an HNSW search and an exact scan, and a single insert, on 1280-d vectors
//! (the default model's dimension) clustered like real embeddings.
//! `make bench` runs them; numbers land in `target/criterion/`.

use std::{hint::black_box, sync::Arc};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use lookbook::{
    domain::dot,
    index::{IndexParams, VectorIndex},
};

const DIM: usize = 1280;
const POINTS: usize = 5_000;

/// Deterministic clustered unit vectors: 50 centres, each point a centre
/// plus noise, normalised (xorshift, so no RNG dependency in the bench).
fn vectors(n: usize) -> Vec<Arc<[f32]>> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..50)
        .map(|_| (0..DIM).map(|_| next()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            let v: Vec<f32> = c.iter().map(|x| x + 0.6 * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn index_of(points: &[Arc<[f32]>]) -> VectorIndex {
    let items = points
        .iter()
        .enumerate()
        .map(|(i, v)| (Arc::from(format!("p{i}")), Arc::clone(v)))
        .collect();
    VectorIndex::build(DIM, IndexParams::default(), items).expect("valid synthetic vectors")
}

fn benches(c: &mut Criterion) {
    let points = vectors(POINTS + 100);
    let (indexed, queries) = points.split_at(POINTS);
    c.bench_function("dot 1280-d", |b| {
        b.iter(|| dot(black_box(&queries[0]), black_box(&queries[1])))
    });
    let index = index_of(indexed);
    let mut q = queries.iter().cycle();
    c.bench_function("hnsw search k=10, 5K x 1280-d", |b| {
        b.iter(|| index.search(q.next().expect("cycle"), 10, &|_| true))
    });
    c.bench_function("exact scan k=10, 5K x 1280-d", |b| {
        b.iter(|| index.search_exact(q.next().expect("cycle"), 10, &|_| true))
    });
    let mut n = 0usize;
    c.bench_function("insert one into 5K x 1280-d", |b| {
        b.iter_batched(
            || {
                n += 1;
                (
                    Arc::<str>::from(format!("new{n}")),
                    Arc::clone(&queries[n % queries.len()]),
                )
            },
            |(key, v)| index.upsert(key, v).expect("valid vector"),
            BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = index;
    config = Criterion::default().sample_size(30);
    targets = benches
}
criterion_main!(index);
