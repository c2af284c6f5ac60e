use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::distance::dot;
use super::*;

type Item = (Arc<str>, Arc<[f32]>);

fn key(i: usize) -> Arc<str> {
    Arc::from(format!("p{i:06}"))
}

/// The number in a key made by [`key`].
fn number(key: &str) -> usize {
    key[1..].parse().expect("a key made by `key`")
}

fn normalize(mut v: Vec<f32>) -> Arc<[f32]> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    Arc::from(v)
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller; u1 > 0 keeps the log finite.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn random_unit(rng: &mut StdRng, dim: usize) -> Arc<[f32]> {
    normalize((0..dim).map(|_| gaussian(rng)).collect())
}

/// Unit vectors scattered around `centres` random centres, like image
/// embeddings (tight categories that still overlap somewhat).
#[derive(Clone)]
struct Clusters {
    centres: Vec<Arc<[f32]>>,
    dim: usize,
}

impl Clusters {
    fn new(rng: &mut StdRng, centres: usize, dim: usize) -> Self {
        Self {
            centres: (0..centres).map(|_| random_unit(rng, dim)).collect(),
            dim,
        }
    }

    fn sample(&self, rng: &mut StdRng) -> Arc<[f32]> {
        let c = rng.random_range(0..self.centres.len());
        self.sample_near(rng, c)
    }

    /// A point of cluster `c`.
    fn sample_near(&self, rng: &mut StdRng, c: usize) -> Arc<[f32]> {
        let centre = &self.centres[c];
        // Noise of L2 norm ~0.5..1.0 relative to the unit centre.
        let spread = rng.random_range(0.5..1.0) / (self.dim as f32).sqrt();
        normalize(centre.iter().map(|c| c + spread * gaussian(rng)).collect())
    }

    fn items(&self, rng: &mut StdRng, n: usize) -> Vec<Item> {
        (0..n).map(|i| (key(i), self.sample(rng))).collect()
    }
}

fn accept_all(_: &str) -> bool {
    true
}

/// Params that force the HNSW path even on small test indexes, with a
/// cheaper graph build than the default (tests that check quality use the
/// default params).
fn hnsw_only() -> IndexParams {
    hnsw_only_with(Quantization::None)
}

/// [`hnsw_only`] with the graph's vectors kept as `quantization` codes and,
/// when quantized, the full-precision vectors in mapped files, as the
/// service keeps them (the graph's own tests cover them on the heap).
fn hnsw_only_with(quantization: Quantization) -> IndexParams {
    IndexParams {
        exact_threshold: 0,
        ef_construction: 40,
        quantization,
        vector_dir: (quantization != Quantization::None).then(|| test_vector_dir().to_owned()),
        ..IndexParams::default()
    }
}

/// One directory for every test's vector files. The files are unlinked as
/// they are made, so tests sharing it see nothing of each other; the
/// (empty) directory outlives the process, which is why it is not per test.
fn test_vector_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Checks the ordering/uniqueness contract of any result list.
fn assert_well_formed(hits: &[Hit]) {
    for w in hits.windows(2) {
        assert!(
            w[0].score > w[1].score || (w[0].score == w[1].score && w[0].key < w[1].key),
            "not sorted: {w:?}"
        );
    }
    let keys: HashSet<&str> = hits.iter().map(|h| &*h.key).collect();
    assert_eq!(keys.len(), hits.len(), "duplicate keys: {hits:?}");
}

fn brute_force(items: &HashMap<Arc<str>, Arc<[f32]>>, q: &[f32], k: usize) -> Vec<Arc<str>> {
    let mut all: Vec<(f32, &Arc<str>)> = items
        .iter()
        .map(|(k, v)| (dot(q, v).clamp(-1.0, 1.0), k))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    all.into_iter()
        .take(k)
        .map(|(_, k)| Arc::clone(k))
        .collect()
}

#[test]
fn index_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<VectorIndex>();
}

#[test]
fn self_query_returns_itself_even_when_self_dot_exceeds_one() {
    let mut rng = StdRng::seed_from_u64(1);
    let dim = 64;
    // A sequential f32 sum is how a plain dot product loop computes it.
    let sequential = |v: &[f32]| v.iter().fold(0.0_f32, |acc, x| acc + x * x);
    let mut risky = Vec::new();
    let mut items = Vec::new();
    while risky.len() < 40 || items.len() < 1000 {
        let v = random_unit(&mut rng, dim);
        if sequential(&v) > 1.0 && dot(&v, &v) > 1.0 && risky.len() < 40 {
            risky.push(items.len());
        }
        items.push((key(items.len()), v));
    }
    // These vectors are the kind whose `1 - dot` distance goes negative (on
    // which hnsw_rs's `DistDot`, used before our own graph, panicked).
    assert!(sequential(&items[risky[0]].1) > 1.0);

    let index = VectorIndex::build(dim, hnsw_only(), items.clone()).expect("valid vectors");
    for &i in &risky {
        let (k, v) = &items[i];
        let hits = index.search(v, 5, &accept_all);
        assert_eq!(&hits[0].key, k, "self query of {k} returned {hits:?}");
        assert!(
            hits[0].score >= 0.999 && hits[0].score <= 1.0,
            "{}",
            hits[0].score
        );
    }
}

#[test]
fn replaced_point_is_never_returned() {
    for quantization in Quantization::ALL {
        replaced_point_is_never_returned_with(quantization);
    }
}

fn replaced_point_is_never_returned_with(quantization: Quantization) {
    let mut rng = StdRng::seed_from_u64(2);
    let clusters = Clusters::new(&mut rng, 20, 32);
    let items = clusters.items(&mut rng, 2000);
    let index =
        VectorIndex::build(32, hnsw_only_with(quantization), items.clone()).expect("valid vectors");
    for i in (0..2000).step_by(100) {
        let (k, old) = &items[i];
        let new: Arc<[f32]> = Arc::from(old.iter().map(|x| -x).collect::<Vec<_>>());
        assert!(
            !index
                .upsert(Arc::clone(k), Arc::clone(&new))
                .expect("valid")
        );
        assert_eq!(index.get(k).as_deref(), Some(&new[..]));
        // Querying with the old vector must not surface the old point: the
        // key may only appear with the new vector's score.
        for search in [VectorIndex::search, VectorIndex::search_exact] {
            let hits = search(&index, old, 10, &accept_all);
            assert_well_formed(&hits);
            for h in hits.iter().filter(|h| &h.key == k) {
                assert!(
                    (h.score - dot(old, &new)).abs() < 1e-5,
                    "stale score {}",
                    h.score
                );
            }
        }
        assert_eq!(index.search(&new, 1, &accept_all)[0].key, *k);
    }
    assert_eq!(index.len(), 2000);
    assert_eq!(index.dead_points(), 20);
}

#[test]
fn removed_point_is_never_returned() {
    for quantization in Quantization::ALL {
        removed_point_is_never_returned_with(quantization);
    }
}

fn removed_point_is_never_returned_with(quantization: Quantization) {
    let mut rng = StdRng::seed_from_u64(3);
    let clusters = Clusters::new(&mut rng, 20, 32);
    let items = clusters.items(&mut rng, 2000);
    let index =
        VectorIndex::build(32, hnsw_only_with(quantization), items.clone()).expect("valid vectors");
    let removed: Vec<&Item> = items.iter().step_by(30).collect();
    for (k, _) in &removed {
        assert!(index.remove(k));
        assert!(!index.remove(k), "second remove of {k} reported success");
    }
    for (k, v) in &removed {
        assert!(!index.contains(k));
        assert!(index.get(k).is_none());
        let hits = index.search(v, 10, &accept_all);
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| &h.key != k), "removed {k} returned");
        let among = index.search_among(v, 10, &mut [&**k, "p000001", "nope"].into_iter());
        assert!(among.iter().all(|h| &h.key != k && &*h.key != "nope"));
    }
    assert_eq!(index.len(), 2000 - removed.len());
    assert_eq!(index.dead_points(), removed.len());
}

#[test]
fn rebuild_drops_tombstones_and_keeps_contents() {
    for quantization in Quantization::ALL {
        rebuild_drops_tombstones_and_keeps_contents_with(quantization);
    }
}

fn rebuild_drops_tombstones_and_keeps_contents_with(quantization: Quantization) {
    let mut rng = StdRng::seed_from_u64(4);
    let clusters = Clusters::new(&mut rng, 20, 32);
    let items = clusters.items(&mut rng, 2000);
    let params = IndexParams {
        rebuild_min_dead: 10,
        ..hnsw_only_with(quantization)
    };
    let index = VectorIndex::build(32, params, items.clone()).expect("valid vectors");
    let mut model: HashMap<Arc<str>, Arc<[f32]>> = items.iter().cloned().collect();
    for (k, _) in items.iter().step_by(5) {
        index.remove(k);
        model.remove(k);
    }
    for (k, _) in items.iter().skip(1).step_by(7) {
        let v = clusters.sample(&mut rng);
        index.upsert(Arc::clone(k), Arc::clone(&v)).expect("valid");
        model.insert(Arc::clone(k), v);
    }
    assert!(index.needs_rebuild());
    let stats = index.rebuild();
    assert_eq!(stats.outcome, RebuildOutcome::Swapped);
    assert_eq!(stats.live_points, model.len());
    assert!(stats.dropped_points > 0);
    assert_eq!(index.dead_points(), 0);
    assert!(!index.needs_rebuild());
    assert_eq!(index.len(), model.len());
    for (k, v) in &items {
        match model.get(k) {
            Some(current) => {
                assert_eq!(index.get(k).as_deref(), Some(&current[..]));
                assert_eq!(&index.search(current, 1, &accept_all)[0].key, k);
            }
            None => {
                assert!(!index.contains(k));
                assert!(index.search(v, 10, &accept_all).iter().all(|h| &h.key != k));
            }
        }
    }
}

#[test]
fn selective_filter_still_returns_k() {
    for quantization in Quantization::ALL {
        selective_filter_still_returns_k_with(quantization);
    }
}

fn selective_filter_still_returns_k_with(quantization: Quantization) {
    let mut rng = StdRng::seed_from_u64(5);
    let clusters = Clusters::new(&mut rng, 20, 32);
    // More points than the default exact_threshold, so HNSW runs first.
    let items = clusters.items(&mut rng, 2600);
    let model: HashMap<Arc<str>, Arc<[f32]>> = items.iter().cloned().collect();
    // 0.5% of the keys pass.
    let allowed: HashSet<Arc<str>> = items
        .iter()
        .step_by(200)
        .map(|(k, _)| Arc::clone(k))
        .collect();
    assert_eq!(allowed.len(), 13);
    let accept = |k: &str| allowed.contains(k);
    let allowed_model: HashMap<Arc<str>, Arc<[f32]>> = model
        .iter()
        .filter(|(k, _)| accept(k))
        .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
        .collect();
    // Default params scan exactly because the admitted set is under
    // exact_threshold; with a zero threshold because a graph pass widened to
    // find ~ef of 13 admitted points would cover the whole index.
    let exact_route = IndexParams {
        exact_threshold: IndexParams::default().exact_threshold,
        ..hnsw_only_with(quantization)
    };
    for params in [exact_route, hnsw_only_with(quantization)] {
        let index = VectorIndex::build(32, params, items.clone()).expect("valid vectors");
        for q in 0..20 {
            let query = clusters.sample(&mut rng);
            let k = if q % 2 == 0 { 10 } else { 30 };
            let (hits, plan) = index.search_planned(&query, k, &accept);
            assert_eq!(plan, Plan::Exact);
            assert_eq!(hits.len(), k.min(13));
            assert_well_formed(&hits);
            assert!(hits.iter().all(|h| accept(&h.key)));
            let keys: Vec<Arc<str>> = hits.iter().map(|h| Arc::clone(&h.key)).collect();
            assert_eq!(keys, brute_force(&allowed_model, &query, k));
        }
    }
}

/// A filter passing half the points with k above ef: the one graph pass,
/// widened by the filter's share (not an exact scan, not a second pass),
/// must fill the list.
#[test]
fn half_filter_with_large_k_fills_the_list() {
    for quantization in Quantization::ALL {
        half_filter_with_large_k_fills_the_list_with(quantization);
    }
}

fn half_filter_with_large_k_fills_the_list_with(quantization: Quantization) {
    let mut rng = StdRng::seed_from_u64(11);
    let clusters = Clusters::new(&mut rng, 20, 32);
    let items = clusters.items(&mut rng, 2600);
    let accept = |k: &str| k.ends_with(['0', '2', '4', '6', '8']);
    let allowed_model: HashMap<Arc<str>, Arc<[f32]>> =
        items.iter().filter(|(k, _)| accept(k)).cloned().collect();
    let index = VectorIndex::build(32, hnsw_only_with(quantization), items).expect("valid vectors");
    let k = 40;
    let mut found = 0;
    for _ in 0..20 {
        let query = clusters.sample(&mut rng);
        let (hits, plan) = index.search_planned(&query, k, &accept);
        assert_eq!(plan, Plan::Graph);
        assert_eq!(hits.len(), k);
        assert_well_formed(&hits);
        assert!(hits.iter().all(|h| accept(&h.key)));
        let truth: HashSet<Arc<str>> = brute_force(&allowed_model, &query, k).into_iter().collect();
        found += hits.iter().filter(|h| truth.contains(&h.key)).count();
    }
    let recall = found as f64 / (20 * k) as f64;
    assert!(recall >= 0.9, "recall@{k} = {recall}");
}

/// A filter that admits half the index but almost nothing near the query:
/// the graph pass sized from the sample falls short, and the fallback
/// fills the list. With the query's cluster rarely admitted the pass four
/// times as wide does it; with the cluster not admitted at all, nothing in
/// the graph's reach passes and the admitted points are scanned exactly.
#[test]
fn filter_avoiding_the_query_falls_back_and_fills_the_list() {
    for quantization in Quantization::ALL {
        filter_avoiding_the_query_falls_back_with(quantization);
    }
}

fn filter_avoiding_the_query_falls_back_with(quantization: Quantization) {
    let mut rng = StdRng::seed_from_u64(12);
    let clusters = Clusters::new(&mut rng, 20, 32);
    // Half the points in cluster 0, where the queries are; the rest spread
    // over the other 19.
    let n = 8000;
    let items: Vec<Item> = (0..n)
        .map(|i| {
            let c = if i % 2 == 0 { 0 } else { 1 + i % 19 };
            (key(i), clusters.sample_near(&mut rng, c))
        })
        .collect();
    let model: HashMap<Arc<str>, Arc<[f32]>> = items.iter().cloned().collect();
    let index = VectorIndex::build(32, hnsw_only_with(quantization), items).expect("valid vectors");
    // Cluster 0 (even i) admitted one in `rare`; the others all but one in 20.
    for (rare, expected_plan) in [(Some(16), Plan::GraphWidened), (None, Plan::GraphThenExact)] {
        let accept = move |k: &str| {
            let i = number(k);
            if i.is_multiple_of(2) {
                rare.is_some_and(|r: usize| i.is_multiple_of(2 * r))
            } else {
                i % 20 != 1
            }
        };
        let admitted: HashMap<Arc<str>, Arc<[f32]>> = model
            .iter()
            .filter(|(k, _)| accept(k))
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        let mut plans = HashMap::new();
        let mut found = 0;
        for _ in 0..20 {
            let query = clusters.sample_near(&mut rng, 0);
            let (hits, plan) = index.search_planned(&query, 10, &accept);
            *plans.entry(plan).or_insert(0) += 1;
            assert_eq!(hits.len(), 10);
            assert_well_formed(&hits);
            assert!(hits.iter().all(|h| accept(&h.key)));
            let truth = brute_force(&admitted, &query, 10);
            if plan == Plan::GraphThenExact {
                let keys: Vec<Arc<str>> = hits.iter().map(|h| Arc::clone(&h.key)).collect();
                assert_eq!(keys, truth);
            }
            found += hits.iter().filter(|h| truth.contains(&h.key)).count();
        }
        assert!(
            plans.get(&expected_plan).copied().unwrap_or(0) >= 15,
            "{quantization:?}, cluster 0 admitted 1 in {rare:?}: plans {plans:?}"
        );
        let recall = f64::from(u32::try_from(found).expect("small")) / 200.0;
        assert!(recall >= 0.9, "{quantization:?}: recall@10 = {recall}");
    }
}

/// The share a filter is estimated to pass, from the sample the planner
/// takes: close to the truth for common and rare filters, zero for a filter
/// that passes nothing, and blind to dead points.
#[test]
fn sampled_share_follows_the_filter() {
    let mut rng = StdRng::seed_from_u64(13);
    let n = 20_000;
    let items: Vec<Item> = (0..n).map(|i| (key(i), random_unit(&mut rng, 8))).collect();
    let index = VectorIndex::build(8, hnsw_only(), items).expect("valid vectors");
    let estimate = |index: &VectorIndex, accept: &(dyn Fn(&str) -> bool + Sync)| {
        let generation = index.current.load();
        generation.sample_share(accept).of(generation.live())
    };
    for share in [2, 10, 100] {
        let truth = n / share;
        let got = estimate(&index, &|k| number(k).is_multiple_of(share));
        assert!(
            got.abs_diff(truth) * 100 <= truth * 35,
            "1 in {share}: estimated {got}, true {truth}"
        );
    }
    assert_eq!(estimate(&index, &|_| false), 0);
    // With every even key removed, a filter for even keys passes nothing
    // live, and one for odd keys is the whole live index.
    for i in (0..n).step_by(2) {
        assert!(index.remove(&key(i)));
    }
    assert_eq!(estimate(&index, &|k| number(k).is_multiple_of(2)), 0);
    assert_eq!(estimate(&index, &|k| number(k) % 2 == 1), n / 2);
}

/// The repair of a live index never waits for the writer lock inside a job
/// of the insert pool. A writer holds that lock while it waits for the pool
/// to link its batch, so a pool thread blocked on the lock (for instance in
/// a repair job it took up while waiting inside its part of the batch)
/// would stop the writer and itself for good. With a one-thread pool the
/// order is forced: the writer holds the lock, the repair (which has an
/// unreachable node to link) starts, then the writer needs the pool before
/// it lets go.
#[test]
fn repair_waits_for_the_writer_off_the_insert_pool() {
    let mut rng = StdRng::seed_from_u64(25);
    let items: Vec<Item> = (0..600)
        .map(|i| (key(i), random_unit(&mut rng, 8)))
        .collect();
    let index = Arc::new(VectorIndex::new(8, hnsw_only()));
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    assert!(
        index.pool.set(Some(one_thread)).is_ok(),
        "the pool is set before first use"
    );
    index.upsert_batch(items).expect("valid vectors");
    let orphan = index.current.load().graph.cut_off_a_node();

    let (done, finished) = std::sync::mpsc::channel();
    let writer = index.writer.lock();
    let repair = {
        let index = Arc::clone(&index);
        std::thread::spawn(move || {
            let linked = index.connect_unreachable();
            let _ = done.send(());
            linked
        })
    };
    // Long enough for the repair's searches to run and for it to ask for
    // the lock; the order only decides whether the old design deadlocked.
    std::thread::sleep(Duration::from_millis(200));
    let (pool_ran, pool_done) = std::sync::mpsc::channel();
    let waiting_writer = {
        let index = Arc::clone(&index);
        std::thread::spawn(move || {
            index.in_pool(|| ());
            let _ = pool_ran.send(());
        })
    };
    assert!(
        pool_done.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the insert pool is stuck behind a job waiting for the writer lock"
    );
    drop(writer);
    assert!(
        finished.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the repair never finished"
    );
    waiting_writer.join().expect("no panic");
    assert!(
        repair.join().expect("no panic") >= 1,
        "the cut-off node was linked"
    );
    let generation = index.current.load();
    let own = generation
        .graph
        .vector(orphan as usize)
        .expect("a vector")
        .to_vec();
    assert!(
        generation
            .graph
            .search(&own, 50)
            .iter()
            .any(|n| n.id == orphan)
    );
}

#[test]
fn tiny_index_returns_min_k_live() {
    let mut rng = StdRng::seed_from_u64(6);
    for params in [IndexParams::default(), hnsw_only()] {
        let index = VectorIndex::new(16, params);
        let q = random_unit(&mut rng, 16);
        assert!(index.search(&q, 10, &accept_all).is_empty());
        assert!(index.is_empty());
        for i in 0..5 {
            assert!(
                index
                    .upsert(key(i), random_unit(&mut rng, 16))
                    .expect("valid")
            );
        }
        assert_eq!(index.search(&q, 10, &accept_all).len(), 5);
        assert_eq!(index.search(&q, 3, &accept_all).len(), 3);
        assert!(index.search(&q, 0, &accept_all).is_empty());
        index.remove(&key(2));
        let hits = index.search(&q, 10, &accept_all);
        assert_eq!(hits.len(), 4);
        assert_well_formed(&hits);
        // Wrong dimension / non-finite queries are ignored, not a panic.
        assert!(index.search(&q[..8], 10, &accept_all).is_empty());
        let mut nan = q.to_vec();
        nan[0] = f32::NAN;
        assert!(index.search(&nan, 10, &accept_all).is_empty());
    }
}

#[test]
fn rejects_invalid_vectors_and_reports_created() {
    let index = VectorIndex::new(4, IndexParams::default());
    let err = index
        .upsert(key(0), Arc::from(vec![1.0_f32, 0.0]))
        .expect_err("short vector");
    assert!(
        matches!(
            err,
            IndexError::DimensionMismatch {
                expected: 4,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = index
        .upsert(key(0), Arc::from(vec![2.0_f32, 0.0, 0.0, 0.0]))
        .expect_err("not unit");
    assert!(matches!(err, IndexError::InvalidVector { .. }), "{err}");
    let err = index
        .upsert(key(0), Arc::from(vec![f32::NAN, 0.0, 0.0, 0.0]))
        .expect_err("NaN");
    assert!(matches!(err, IndexError::InvalidVector { .. }), "{err}");
    assert!(index.is_empty());

    let e = |i: usize| -> Arc<[f32]> {
        let mut v = vec![0.0_f32; 4];
        v[i] = 1.0;
        Arc::from(v)
    };
    let created = index
        .upsert_batch(vec![(key(0), e(0)), (key(1), e(1)), (key(0), e(2))])
        .expect("valid");
    assert_eq!(created, [true, true, false]);
    assert_eq!(index.len(), 2);
    assert_eq!(
        index.get(&key(0)).as_deref(),
        Some(&e(2)[..]),
        "last duplicate wins"
    );
    assert_eq!(
        index
            .upsert_batch(vec![(key(1), e(3)), (key(2), e(0))])
            .expect("valid"),
        [false, true]
    );
    // A bad item rejects the whole batch.
    assert!(
        index
            .upsert_batch(vec![(key(3), e(0)), (key(4), Arc::from(vec![1.0_f32]))])
            .is_err()
    );
    assert!(!index.contains(&key(3)));
}

#[test]
fn parallel_batch_matches_exact_neighbours() {
    let mut rng = StdRng::seed_from_u64(7);
    let clusters = Clusters::new(&mut rng, 10, 16);
    let items = clusters.items(&mut rng, 500);
    let index = VectorIndex::new(16, hnsw_only());
    assert!(
        index
            .upsert_batch(items.clone())
            .expect("valid")
            .iter()
            .all(|c| *c)
    );
    let mut seen = 0;
    index.for_each_live(&mut |k, v| {
        seen += 1;
        assert_eq!(v, &items[number(k)].1[..]);
    });
    assert_eq!(seen, 500);
    let (k, v) = &items[123];
    assert_eq!(&index.search(v, 1, &accept_all)[0].key, k);
    let among = index.search_among(v, 2, &mut items[100..130].iter().map(|(k, _)| &**k));
    assert_eq!(&among[0].key, k);
    assert_eq!(among.len(), 2);
}

/// recall@10 of the default parameters against brute force, on clustered
/// 128-d vectors.
#[test]
fn recall_at_10_with_default_params() {
    let mut rng = StdRng::seed_from_u64(8);
    let clusters = Clusters::new(&mut rng, 50, 128);
    let items = clusters.items(&mut rng, 5000);
    let model: HashMap<Arc<str>, Arc<[f32]>> = items.iter().cloned().collect();
    let index = VectorIndex::build(128, IndexParams::default(), items).expect("valid vectors");
    let queries = 200;
    let mut found = 0;
    for _ in 0..queries {
        let q = clusters.sample(&mut rng);
        let truth: HashSet<Arc<str>> = brute_force(&model, &q, 10).into_iter().collect();
        let hits = index.search(&q, 10, &accept_all);
        assert_eq!(hits.len(), 10);
        found += hits.iter().filter(|h| truth.contains(&h.key)).count();
    }
    let recall = found as f64 / (queries * 10) as f64;
    assert!(recall >= 0.97, "recall@10 = {recall}");
}

/// Writers insert, replace and delete while searchers and rebuilds run; then
/// the final state must equal what the writers did.
#[test]
fn concurrent_writes_searches_and_rebuilds() {
    let dim = 24;
    let mut rng = StdRng::seed_from_u64(9);
    // More live points than a rebuild chunk (2,048), so that rebuilds also
    // leave keys written meanwhile out of the chunks they have not linked.
    let initial: Vec<Item> = (0..3000)
        .map(|i| (key(i), random_unit(&mut rng, dim)))
        .collect();
    let params = IndexParams {
        rebuild_min_dead: 50,
        ..hnsw_only()
    };
    let index = Arc::new(VectorIndex::build(dim, params, initial.clone()).expect("valid vectors"));
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(2);
    // A bound on waiting for the first rebuild, not a speed goal.
    const MAX_RUN: Duration = Duration::from_secs(120);

    let writers: Vec<_> = (0..2)
        .map(|w| {
            let index = Arc::clone(&index);
            let stop = Arc::clone(&stop);
            // Writer w owns keys with i % 2 == w, so each has an exact model.
            let mut model: HashMap<Arc<str>, Arc<[f32]>> = initial
                .iter()
                .filter(|(k, _)| k.ends_with(['0', '2', '4', '6', '8']) == (w == 0))
                .cloned()
                .collect();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + w as u64);
                let mut background = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = 2 * rng.random_range(0..2000) + w;
                    let k = key(i);
                    if rng.random_range(0..4) == 0 {
                        assert_eq!(index.remove(&k), model.remove(&k).is_some());
                    } else {
                        let v = random_unit(&mut rng, dim);
                        let created = index.upsert(Arc::clone(&k), Arc::clone(&v)).expect("valid");
                        assert_eq!(created, model.insert(k, v).is_none());
                    }
                    if rng.random_range(0..200) == 0 {
                        background.extend(index.spawn_rebuild_if_needed());
                    }
                }
                (model, background)
            })
        })
        .collect();
    let searchers: Vec<_> = (0..2)
        .map(|s| {
            let index = Arc::clone(&index);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(200 + s);
                let mut searches = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let q = random_unit(&mut rng, dim);
                    let odd_only = |k: &str| k.ends_with(['1', '3', '5', '7', '9']);
                    let hits = if searches.is_multiple_of(2) {
                        index.search(&q, 10, &accept_all)
                    } else {
                        index.search(&q, 10, &odd_only)
                    };
                    assert_well_formed(&hits);
                    assert!(!hits.is_empty());
                    searches += 1;
                }
                searches
            })
        })
        .collect();
    let rebuilder_swaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rebuilder = {
        let index = Arc::clone(&index);
        let stop = Arc::clone(&stop);
        let swaps = Arc::clone(&rebuilder_swaps);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if index.rebuild().outcome == RebuildOutcome::Swapped {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            swaps.load(Ordering::Relaxed)
        })
    };
    // `run_for` at least, and on until the rebuilder has swapped once: on
    // cores shared with other tests a rebuild can take longer than that,
    // and the point is a rebuild completing while writes and searches go on.
    let started = Instant::now();
    while started.elapsed() < run_for
        || (rebuilder_swaps.load(Ordering::Relaxed) == 0 && started.elapsed() < MAX_RUN)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut model = HashMap::new();
    let mut swapped = 0;
    for w in writers {
        let (part, background) = w.join().expect("writer panicked");
        model.extend(part);
        // Rebuilds the writers started count too: with fast inserts one of
        // them is often running whenever the rebuilder thread tries.
        for rebuild in background {
            let stats = rebuild.join().expect("background rebuild panicked");
            swapped += usize::from(stats.outcome == RebuildOutcome::Swapped);
        }
    }
    for s in searchers {
        assert!(s.join().expect("searcher panicked") > 0);
    }
    swapped += rebuilder.join().expect("rebuilder panicked");
    assert!(swapped > 0, "no rebuild completed");

    assert_eq!(index.len(), model.len());
    for i in 0..4002 {
        let k = key(i);
        match model.get(&k) {
            Some(v) => {
                assert_eq!(index.get(&k).as_deref(), Some(&v[..]), "{k}");
                let hits = index.search(v, 10, &accept_all);
                assert!(
                    hits.iter().any(|h| h.key == k),
                    "{k} not found by its own vector"
                );
            }
            None => assert!(!index.contains(&k), "{k} should be absent"),
        }
    }
}

fn dumped_index(dir: &std::path::Path) -> (VectorIndex, StdRng) {
    dumped_index_with(dir, hnsw_only())
}

fn dumped_index_with(dir: &std::path::Path, params: IndexParams) -> (VectorIndex, StdRng) {
    let mut rng = StdRng::seed_from_u64(10);
    let clusters = Clusters::new(&mut rng, 10, 32);
    let items = clusters.items(&mut rng, 1000);
    let index = VectorIndex::build(32, params, items.clone()).expect("valid vectors");
    for (k, _) in items.iter().step_by(9) {
        index.remove(k);
    }
    for (k, _) in items.iter().skip(1).step_by(11) {
        index
            .upsert(Arc::clone(k), clusters.sample(&mut rng))
            .expect("valid");
    }
    index.dump(dir, 7).expect("dump");
    (index, rng)
}

#[test]
fn dump_load_round_trip_gives_identical_results() {
    for quantization in Quantization::ALL {
        dump_load_round_trip_gives_identical_results_with(quantization);
    }
}

fn dump_load_round_trip_gives_identical_results_with(quantization: Quantization) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (index, mut rng) = dumped_index_with(dir.path(), hnsw_only_with(quantization));
    // The dump holds full-precision vectors, so it loads under any
    // quantization with the same contents; the codes are made again.
    for other in Quantization::ALL {
        let (loaded, _) = VectorIndex::load(dir.path(), 32, hnsw_only_with(other))
            .expect("not corrupt")
            .expect("present");
        assert_eq!(loaded.len(), index.len());
        let bytes = loaded.graph_bytes();
        assert_eq!(
            bytes.mapped,
            if other == Quantization::None {
                0
            } else {
                index.dead_points() + index.len()
            } * 32
                * 4,
            "a quantized graph keeps its full vectors in mapped files, an f32 graph none"
        );
        assert_eq!(bytes.full, 0, "no full vectors on the heap");
        for i in 0..1000 {
            let k = key(i);
            assert_eq!(
                loaded.get(&k),
                index.get(&k),
                "{quantization} -> {other}: {k}"
            );
        }
    }
    // A second dump replaces the first and cleans it up.
    index.dump(dir.path(), 7).expect("second dump");
    let gens = std::fs::read_dir(dir.path())
        .expect("readable")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("gen-"))
        })
        .count();
    assert_eq!(gens, 1);

    let (loaded, version) = VectorIndex::load(dir.path(), 32, hnsw_only_with(quantization))
        .expect("not corrupt")
        .expect("present");
    assert_eq!(version, 7, "the dump records the caller's store version");
    assert_eq!(loaded.len(), index.len());
    assert_eq!(loaded.dead_points(), index.dead_points());
    let odd = |k: &str| k.ends_with('1');
    for _ in 0..50 {
        let q = random_unit(&mut rng, 32);
        assert_eq!(
            loaded.search(&q, 10, &accept_all),
            index.search(&q, 10, &accept_all)
        );
        assert_eq!(loaded.search(&q, 10, &odd), index.search(&q, 10, &odd));
    }
    // The loaded index stays writable and rebuildable.
    let v = random_unit(&mut rng, 32);
    assert!(
        loaded
            .upsert(Arc::from("fresh"), Arc::clone(&v))
            .expect("valid")
    );
    assert_eq!(&*loaded.search(&v, 1, &accept_all)[0].key, "fresh");
    assert_eq!(loaded.rebuild().outcome, RebuildOutcome::Swapped);
    assert_eq!(loaded.dead_points(), 0);
    assert_eq!(&*loaded.search(&v, 1, &accept_all)[0].key, "fresh");
}

#[test]
fn empty_index_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    VectorIndex::new(8, IndexParams::default())
        .dump(dir.path(), 1)
        .expect("dump");
    let (loaded, version) = VectorIndex::load(dir.path(), 8, IndexParams::default())
        .expect("ok")
        .expect("present");
    assert!(loaded.is_empty());
    assert_eq!(version, 1);
}

#[test]
fn missing_or_stale_dump_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = IndexParams::default;
    assert!(
        VectorIndex::load(dir.path(), 32, p())
            .expect("ok")
            .is_none()
    );
    assert!(
        VectorIndex::load(&dir.path().join("nope"), 32, p())
            .expect("ok")
            .is_none()
    );
    let (_index, _) = dumped_index(dir.path());
    assert!(
        VectorIndex::load(dir.path(), 33, hnsw_only())
            .expect("ok")
            .is_none(),
        "dimension"
    );
    let other_m = IndexParams {
        max_nb_connection: 24,
        ..hnsw_only()
    };
    assert!(
        VectorIndex::load(dir.path(), 32, other_m)
            .expect("ok")
            .is_none(),
        "graph params"
    );
    assert!(
        VectorIndex::load(dir.path(), 32, hnsw_only())
            .expect("ok")
            .is_some()
    );
}

/// A dump taken while another thread keeps writing loads (the parser
/// checks every id and count, and the loader that no key is live twice),
/// and every point it holds has the vector that key had before or during
/// the dump. (`hnsw::tests::a_snapshot_is_unaffected_by_later_inserts`
/// shows that the graph written is exactly the graph at the snapshot.)
#[test]
fn dump_while_writing_is_a_consistent_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(21);
    let clusters = Clusters::new(&mut rng, 10, 32);
    let index = Arc::new(
        VectorIndex::build(32, hnsw_only(), clusters.items(&mut rng, 3000)).expect("valid"),
    );
    let before: HashMap<Arc<str>, Arc<[f32]>> = index
        .live_keys()
        .into_iter()
        .map(|k| {
            let v = index.get(&k).expect("live");
            (k, v)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let index = Arc::clone(&index);
        let stop = Arc::clone(&stop);
        let mut rng = StdRng::seed_from_u64(22);
        let clusters = clusters.clone();
        move || {
            let mut written = Vec::new();
            let mut i = 0_usize;
            while !stop.load(Ordering::Acquire) || i < 200 {
                // Replace existing keys, add new ones, and delete some.
                let key: Arc<str> = match i % 3 {
                    0 => key(i % 3000),
                    1 => Arc::from(format!("new{i}")),
                    _ => {
                        index.remove(&key((i * 7) % 3000));
                        i += 1;
                        continue;
                    }
                };
                let v = clusters.sample(&mut rng);
                index
                    .upsert(Arc::clone(&key), Arc::clone(&v))
                    .expect("valid");
                written.push((key, v));
                i += 1;
            }
            written
        }
    });
    // Let the writer get going, then dump while it writes.
    while index.len() < 3050 {
        std::thread::yield_now();
    }
    index.dump(dir.path(), 1).expect("dump");
    stop.store(true, Ordering::Release);
    let written = writer.join().expect("writer");
    assert!(written.len() >= 200, "writes went on during the dump");

    let (loaded, _) = VectorIndex::load(dir.path(), 32, hnsw_only())
        .expect("intact")
        .expect("present");
    let mut later: HashMap<Arc<str>, Vec<Arc<[f32]>>> = HashMap::new();
    for (k, v) in written {
        later.entry(k).or_default().push(v);
    }
    for key in loaded.live_keys() {
        let v = loaded.get(&key).expect("live");
        let known = before.get(&key).is_some_and(|b| *b == v)
            || later.get(&key).is_some_and(|vs| vs.contains(&v));
        assert!(known, "{key} holds a vector it never had");
    }
    assert!(
        loaded.len() >= 2900,
        "the dump holds the catalogue: {}",
        loaded.len()
    );
}

#[test]
fn corrupt_dump_is_an_error_not_a_panic() {
    type Damage = fn(&std::path::Path);
    let find = |dir: &std::path::Path, suffix: &str| -> std::path::PathBuf {
        let gen_dir = std::fs::read_dir(dir)
            .expect("readable")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("gen-"))
            .expect("a gen dir")
            .path();
        if suffix == "MANIFEST" {
            return dir.join("MANIFEST");
        }
        std::fs::read_dir(gen_dir)
            .expect("readable")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .expect("dump file")
            .path()
    };
    fn flip(path: &std::path::Path, at: f64) {
        let mut bytes = std::fs::read(path).expect("readable");
        let i = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
        bytes[i] ^= 0x5a;
        std::fs::write(path, bytes).expect("writable");
    }
    fn truncate(path: &std::path::Path) {
        let len = std::fs::metadata(path).expect("exists").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(len / 2))
            .expect("truncatable");
    }
    let cases: [(&str, &str, Damage); 6] = [
        ("flip graph", "graph.bin", |p| flip(p, 0.5)),
        ("flip graph header", "graph.bin", |p| flip(p, 0.0)),
        ("flip graph end", "graph.bin", |p| flip(p, 1.0)),
        ("truncate graph", "graph.bin", truncate),
        ("delete graph", "graph.bin", |p| {
            std::fs::remove_file(p).expect("removable")
        }),
        ("flip manifest", "MANIFEST", |p| flip(p, 0.7)),
    ];
    let pristine = tempfile::tempdir().expect("tempdir");
    let _ = dumped_index(pristine.path());
    let copy_dump = |to: &std::path::Path| {
        for entry in std::fs::read_dir(pristine.path())
            .expect("readable")
            .filter_map(Result::ok)
        {
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                std::fs::create_dir(&target).expect("creatable");
                for file in std::fs::read_dir(entry.path())
                    .expect("readable")
                    .filter_map(Result::ok)
                {
                    std::fs::copy(file.path(), target.join(file.file_name())).expect("copyable");
                }
            } else {
                std::fs::copy(entry.path(), target).expect("copyable");
            }
        }
    };
    for (name, file, damage) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dump(dir.path());
        assert!(
            VectorIndex::load(dir.path(), 32, hnsw_only()).is_ok_and(|i| i.is_some()),
            "copy loads"
        );
        damage(&find(dir.path(), file));
        match VectorIndex::load(dir.path(), 32, hnsw_only()) {
            Err(IndexError::CorruptDump { .. }) => {}
            other => panic!("{name}: expected CorruptDump, got {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(u8, Vec<f32>),
    Remove(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..40u8, prop::collection::vec(-1.0f32..1.0, 8)).prop_map(|(k, v)| Op::Upsert(k, v)),
        1 => (0..40u8).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happened before, a search returns exactly min(k, #accepted
    /// live) hits, sorted, unique, accepted, live, with their current scores.
    #[test]
    fn search_results_respect_the_contract(
        ops in prop::collection::vec(op_strategy(), 1..120),
        query in prop::collection::vec(-1.0f32..1.0, 8),
        k in 0usize..25,
        modulus in 1usize..4,
        rebuild in any::<bool>(),
        quantization in prop::sample::select(Quantization::ALL.to_vec()),
    ) {
        let index = VectorIndex::new(8, hnsw_only_with(quantization));
        let mut model: HashMap<Arc<str>, Arc<[f32]>> = HashMap::new();
        for op in ops {
            match op {
                Op::Upsert(k, v) => {
                    if v.iter().all(|x| x.abs() < 1e-3) {
                        continue;
                    }
                    let (k, v) = (key(k.into()), normalize(v));
                    index.upsert(Arc::clone(&k), Arc::clone(&v)).expect("valid");
                    model.insert(k, v);
                }
                Op::Remove(k) => {
                    prop_assert_eq!(index.remove(&key(k.into())), model.remove(&key(k.into())).is_some());
                }
            }
        }
        if rebuild {
            index.rebuild();
        }
        prop_assume!(query.iter().any(|x| x.abs() > 1e-3));
        let query = normalize(query);
        let accept = |key: &str| key[1..].parse::<usize>().is_ok_and(|i| i % modulus == 0);
        let accepted = model.keys().filter(|k| accept(k)).count();
        let hits = index.search(&query, k, &accept);
        prop_assert_eq!(hits.len(), k.min(accepted));
        assert_well_formed(&hits);
        for h in &hits {
            prop_assert!(accept(&h.key));
            let v = model.get(&h.key).expect("only live keys are returned");
            prop_assert!((dot(&query, v).clamp(-1.0, 1.0) - h.score).abs() < 1e-6);
        }
        prop_assert_eq!(index.len(), model.len());
    }
}

/// Linking in parallel on far more threads than cores preempts inserts in
/// the middle of linking, as a loaded machine does. No point may come out of
/// that with a stunted layer-0 list: each keeps nearly all of its `M` links
/// (random 1280-d vectors leave the selection heuristic little to prune) and
/// is the first answer to its own vector at the default `ef_search`.
#[test]
fn preempted_parallel_linking_leaves_every_point_findable() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(16)
        .build()
        .expect("a thread pool");
    let params = IndexParams {
        exact_threshold: 0,
        ..IndexParams::default()
    };
    let m = params.max_nb_connection;
    for seed in 0..3 {
        let mut rng = StdRng::seed_from_u64(seed);
        let vectors: Vec<Arc<[f32]>> = (0..1500).map(|_| random_unit(&mut rng, 1280)).collect();
        let items: Vec<(Arc<str>, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (key(i), &v[..]))
            .collect();
        let generation = generation::Generation::empty(&params);
        generation
            .insert_many(&items, Some(&pool))
            .expect("valid vectors");
        let graph = &generation.graph;
        for (id, v) in vectors.iter().enumerate() {
            let links = graph.layer0_links(id);
            assert!(
                links >= m / 2,
                "seed {seed}: point {id} kept {links} layer-0 links"
            );
            let first = graph.search(v, params.ef_search).first().map(|n| n.id);
            assert_eq!(first, Some(id as u32), "seed {seed}: point {id}");
        }
    }
}

/// A measurement, not a check (run it with `--ignored --nocapture`): how many
/// points of a parallel build on tight synthetic clusters no search can
/// reach, how many links the repair adds, and how many points are then still
/// not the first answer to their own vector at the default `ef_search`.
#[test]
#[ignore = "a measurement for the README; prints, asserts nothing about quality"]
fn reachability_on_clustered_data() {
    let mut rng = StdRng::seed_from_u64(9);
    let clusters = Clusters::new(&mut rng, 50, 256);
    let items = clusters.items(&mut rng, 40_000);
    let params = IndexParams {
        exact_threshold: 0,
        ..IndexParams::default()
    };
    let index = VectorIndex::new(256, params.clone());
    index.upsert_batch(items.clone()).expect("valid vectors");
    let generation = index.current.load();
    let graph = &generation.graph;
    let not_first = || {
        items
            .iter()
            .enumerate()
            .filter(|(i, (_, v))| {
                graph
                    .search(v, params.ef_search)
                    .first()
                    .map(|n| n.id as usize)
                    != Some(*i)
            })
            .count()
    };
    let before = not_first();
    let linked = graph.connect_unreachable(&AtomicBool::new(false));
    let after = not_first();
    eprintln!(
        "{} points: {linked} unreachable, linked by the repair; not the first answer to their \
         own vector at ef {}: {before} before, {after} after",
        items.len(),
        params.ef_search
    );
    assert_eq!(
        graph.connect_unreachable(&AtomicBool::new(false)),
        0,
        "one repair reaches everything"
    );
}

/// The similarity of `metric` computed plainly in f64: the truth the
/// kernels and the index are checked against.
fn naive_similarity(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let pairs = a.iter().zip(b).map(|(x, y)| (f64::from(*x), f64::from(*y)));
    match metric {
        Metric::Cosine | Metric::Dot => pairs.map(|(x, y)| x * y).sum(),
        Metric::Euclidean => -pairs.map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt(),
        Metric::Manhattan => -pairs.map(|(x, y)| (x - y).abs()).sum::<f64>(),
    }
}

/// The true top `k` under `metric`, best first, with their similarities.
fn naive_top_k(metric: Metric, items: &[Item], query: &[f32], k: usize) -> Vec<(Arc<str>, f64)> {
    let mut all: Vec<(Arc<str>, f64)> = items
        .iter()
        .map(|(key, v)| (Arc::clone(key), naive_similarity(metric, query, v)))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Vectors as a metric stores them: unit ones for cosine; for the others
/// clustered vectors of very different lengths (centres 0.5 to 4 long,
/// points up to 50% longer or shorter than their centre, centres off the
/// origin), where length changes the answer.
fn items_for(
    metric: Metric,
    rng: &mut StdRng,
    n: usize,
    dim: usize,
) -> (Vec<Item>, Vec<Arc<[f32]>>) {
    let clusters = Clusters::new(rng, 30, dim);
    if metric == Metric::Cosine {
        let queries = (0..100).map(|_| clusters.sample(rng)).collect();
        return (clusters.items(rng, n), queries);
    }
    let scales: Vec<f32> = (0..clusters.centres.len())
        .map(|_| rng.random_range(0.5..4.0))
        .collect();
    let raw = |rng: &mut StdRng| -> Arc<[f32]> {
        let c = rng.random_range(0..clusters.centres.len());
        let length = scales[c] * rng.random_range(0.5..1.5);
        let spread = 0.3 / (dim as f32).sqrt();
        clusters.centres[c]
            .iter()
            .map(|x| length * (x + spread * gaussian(rng)) + 0.2)
            .collect()
    };
    let items = (0..n).map(|i| (key(i), raw(rng))).collect();
    let queries = (0..100).map(|_| raw(rng)).collect();
    (items, queries)
}

/// Exact search under each metric returns the true top k: the same
/// similarities, in the same order, as a plain f64 computation, and each
/// hit's score is its own similarity (unclamped but for cosine).
#[test]
fn exact_search_is_the_true_top_k_under_every_metric() {
    for metric in Metric::ALL {
        let mut rng = StdRng::seed_from_u64(31);
        let dim = 24;
        let (items, queries) = items_for(metric, &mut rng, 600, dim);
        let params = IndexParams {
            metric,
            ..IndexParams::default()
        };
        let index = VectorIndex::build(dim, params, items.clone()).expect("valid vectors");
        let vectors: HashMap<Arc<str>, Arc<[f32]>> = items.iter().cloned().collect();
        for q in queries.iter().take(30) {
            let truth = naive_top_k(metric, &items, q, 10);
            // Below exact_threshold, `search` scans exactly too.
            for hits in [
                index.search_exact(q, 10, &accept_all),
                index.search(q, 10, &accept_all),
            ] {
                assert_well_formed(&hits);
                assert_eq!(hits.len(), 10);
                for (hit, (_, want)) in hits.iter().zip(&truth) {
                    let tolerance = 1e-4 * want.abs().max(1.0);
                    assert!(
                        (f64::from(hit.score) - want).abs() <= tolerance,
                        "{metric}: {} scored {}, the true rank's similarity is {want}",
                        hit.key,
                        hit.score
                    );
                    let own = naive_similarity(metric, q, &vectors[&hit.key]);
                    assert!((f64::from(hit.score) - own).abs() <= tolerance, "{metric}");
                }
            }
        }
        if metric == Metric::Dot {
            let best = index.search_exact(&queries[0], 1, &accept_all)[0].score;
            assert!(best > 1.0, "dot scores are not clamped: {best}");
        }
    }
}

/// The graph works under every metric: recall@10 of a graph-only search
/// (exact_threshold 0) against the plain top 10, on vectors of very
/// different lengths for the metrics that keep them as given.
#[test]
fn hnsw_recall_under_every_metric() {
    for metric in Metric::ALL {
        let mut rng = StdRng::seed_from_u64(32);
        let dim = 32;
        let (items, queries) = items_for(metric, &mut rng, 3000, dim);
        let params = IndexParams {
            metric,
            exact_threshold: 0,
            ..IndexParams::default()
        };
        let index = VectorIndex::build(dim, params, items.clone()).expect("valid vectors");
        let mut found = 0;
        for q in &queries {
            let truth: HashSet<Arc<str>> = naive_top_k(metric, &items, q, 10)
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            let hits = index.search(q, 10, &accept_all);
            assert_well_formed(&hits);
            found += hits.iter().filter(|h| truth.contains(&h.key)).count();
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        eprintln!("{metric}: recall@10 {recall}");
        assert!(recall >= 0.9, "{metric}: recall@10 = {recall}");
        // And every point is the first answer to its own vector, but under
        // dot, where a longer vector in the same direction beats it.
        if metric != Metric::Dot {
            for (k, v) in items.iter().step_by(97) {
                assert_eq!(&index.search(v, 1, &accept_all)[0].key, k, "{metric}");
            }
        }
    }
}

/// What each metric lets in: non-unit vectors under all but cosine,
/// non-finite ones under none, and nothing so long that scores overflow.
#[test]
fn vectors_are_checked_for_the_metric() {
    let long: Arc<[f32]> = Arc::from(vec![3.0_f32, 4.0, 0.0, 0.0]);
    let unit: Arc<[f32]> = Arc::from(vec![0.6_f32, 0.8, 0.0, 0.0]);
    let nan: Arc<[f32]> = Arc::from(vec![1.0_f32, f32::NAN, 0.0, 0.0]);
    let huge: Arc<[f32]> = Arc::from(vec![1e19_f32, 0.0, 0.0, 0.0]);
    let overflowing: Arc<[f32]> = Arc::from(vec![3e19_f32, 3e19, 0.0, 0.0]);
    for metric in Metric::ALL {
        let index = VectorIndex::new(
            4,
            IndexParams {
                metric,
                ..IndexParams::default()
            },
        );
        assert_eq!(index.metric(), metric);
        assert!(index.upsert(key(0), Arc::clone(&unit)).is_ok(), "{metric}");
        let refused = |v: &Arc<[f32]>| {
            matches!(
                index.upsert(key(1), Arc::clone(v)),
                Err(IndexError::InvalidVector { .. })
            )
        };
        assert_eq!(refused(&long), metric == Metric::Cosine, "{metric}");
        assert!(refused(&nan), "{metric}");
        assert!(refused(&huge), "{metric}");
        assert!(refused(&overflowing), "{metric}");
        assert!(
            index
                .upsert_batch(vec![
                    (key(2), Arc::clone(&long)),
                    (key(3), Arc::clone(&nan))
                ])
                .is_err(),
            "{metric}: one bad item fails the batch"
        );
        let expected_len = if metric == Metric::Cosine { 1 } else { 2 };
        assert_eq!(index.len(), expected_len, "{metric}");
    }
    let err = VectorIndex::new(4, IndexParams::default())
        .upsert(key(0), long)
        .expect_err("not unit");
    assert_eq!(
        err.to_string(),
        "vector for key \"p000000\" is not a unit vector, as the cosine metric needs (L2 norm 5)"
    );
}
