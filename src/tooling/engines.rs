//! Other HNSW engines in the same harness as the index's own graph, so that
//! the choice of engine is made on one run's measurements (`bench-index
//! --usearch`): same dataset files, `M`, `ef_construction`, `ef` sweep and
//! thread counts, and the same report schema as `perf::bench_index` and the
//! Python peers.
//!
//! `usearch` (Unum's C++ HNSW through its `cxx` bindings, built from the
//! crate's bundled sources) is measured with f32, f16 and int8 storage. Its
//! int8 storage can be measured with exact re-ranking (`rerank` > 0): the
//! graph walk returns `rerank` candidates by their int8 codes, which are then
//! re-scored against the full-precision vectors, as a quantized index with
//! the full vectors kept off the walk would answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow, ensure};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::perf::{
    Dataset, FilterSweep, IndexReport, K, admitted, dot, ef_sweep, measure_searcher, rss_bytes,
    sweep_filters,
};

/// Storage of the vectors `usearch` walks the graph with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsearchStorage {
    F32,
    F16,
    I8,
}

impl UsearchStorage {
    fn scalar(self) -> ScalarKind {
        match self {
            Self::F32 => ScalarKind::F32,
            Self::F16 => ScalarKind::F16,
            Self::I8 => ScalarKind::I8,
        }
    }
}

/// How `usearch` is measured.
#[derive(Debug, Clone, Copy)]
pub struct UsearchSetup {
    pub storage: UsearchStorage,
    /// Candidates taken from the graph walk and re-scored exactly from the
    /// full-precision vectors; 0: none (the walk's own top `K`).
    pub rerank: usize,
}

/// Builds a `usearch` index over `data`'s base vectors (inner product, the
/// datasets being unit vectors) with every available core, then measures
/// searches at each `ef` and thread count as `perf::bench_index` does.
pub fn bench_usearch(
    data: &Dataset,
    m: usize,
    ef_construction: usize,
    efs: &[usize],
    threads: &[usize],
    setup: UsearchSetup,
    filters: Option<&FilterSweep>,
) -> Result<IndexReport> {
    let UsearchSetup { storage, rerank } = setup;
    let (n, nq, dim) = (data.meta.n, data.meta.nq, data.meta.dim);
    ensure!(nq > 0 && data.truth.len() == nq * K, "no ground truth");
    let build_threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let rss_before = rss_bytes().unwrap_or(0);
    let started = Instant::now();
    let index = Index::new(&IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: storage.scalar(),
        connectivity: m,
        expansion_add: ef_construction,
        expansion_search: efs.first().copied().unwrap_or(64),
        multi: false,
    })
    .map_err(|e| anyhow!("usearch: {e}"))?;
    let search_threads = threads.iter().copied().max().unwrap_or(1);
    index
        .reserve_capacity_and_threads(n, build_threads.max(search_threads))
        .map_err(|e| anyhow!("usearch reserve: {e}"))?;
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..build_threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        index
                            .add(i as u64, data.row(i))
                            .map_err(|e| anyhow!("usearch add {i}: {e}"))?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow!("a build thread panicked"))??;
        }
        Ok(())
    })?;
    let build_seconds = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes().unwrap_or(0);
    ensure!(index.size() == n, "usearch holds {} of {n}", index.size());

    let candidates = rerank.max(K);
    // The top `K` rows of a `usearch` answer, re-ranked exactly when asked.
    let finish = |query: &[f32], keys: &[u64]| -> Vec<u32> {
        let mut ids: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
        if rerank > 0 {
            // Exact scores from the full-precision rows (the dataset's copy
            // stands for vectors kept outside the resident set).
            let mut scored: Vec<(f32, u32)> = ids
                .iter()
                .map(|&id| (dot(query, data.row(id as usize)), id))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            ids = scored.into_iter().map(|(_, id)| id).collect();
        }
        ids.truncate(K);
        ids
    };
    let search = |q: usize| -> Vec<u32> {
        let query = data.query(q);
        match index.search(query, candidates) {
            Ok(found) => finish(query, &found.keys),
            Err(_) => Vec::new(),
        }
    };
    let runs = ef_sweep(efs, threads, |ef, t| {
        index.change_expansion_search(ef);
        measure_searcher(data, t, &search)
    });
    let filtered = match filters {
        Some(sweep) => {
            index.change_expansion_search(sweep.ef);
            sweep_filters(data, sweep, threads, &|q, share| {
                let query = data.query(q);
                let accept = |key: u64| u32::try_from(key).is_ok_and(|r| admitted(r, share));
                match index.filtered_search(query, candidates, accept) {
                    Ok(found) => finish(query, &found.keys),
                    Err(_) => Vec::new(),
                }
            })
        }
        None => Vec::new(),
    };
    let lib = match (storage, rerank) {
        (UsearchStorage::F32, _) => "usearch-f32",
        (UsearchStorage::F16, _) => "usearch-f16",
        (UsearchStorage::I8, 0) => "usearch-i8",
        (UsearchStorage::I8, _) => "usearch-i8-rerank",
    };
    Ok(IndexReport {
        lib,
        version: usearch::version(),
        scale: data.meta.scale.clone(),
        n,
        nq,
        dim,
        m,
        ef_construction,
        build_threads,
        build_seconds,
        memory_bytes_per_vector: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        raw_vector_bytes: dim * 4,
        graph_walk_bytes_per_vector: None,
        graph_full_bytes_per_vector: None,
        graph_mapped_bytes_per_vector: None,
        anon_bytes_per_vector: None,
        runs,
        filtered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tooling::perf::tests::dataset;

    #[test]
    fn usearch_runs_in_the_same_harness_with_every_storage() {
        let data = dataset(3000, 20, 16);
        let sweep = FilterSweep {
            selectivities: vec![0.01, 0.5],
            ef: 64,
            queries: 10,
        };
        for (storage, rerank, lib) in [
            (UsearchStorage::F32, 0, "usearch-f32"),
            (UsearchStorage::F16, 0, "usearch-f16"),
            (UsearchStorage::I8, 40, "usearch-i8-rerank"),
        ] {
            let setup = UsearchSetup { storage, rerank };
            let report =
                bench_usearch(&data, 16, 200, &[64], &[1, 2], setup, Some(&sweep)).expect("bench");
            assert_eq!(report.lib, lib);
            assert_eq!(report.runs.len(), 2);
            for r in &report.runs {
                assert!(r.recall_at_10 >= 0.9, "{lib}: {r:?}");
            }
            assert_eq!(report.filtered.len(), 4);
            for r in &report.filtered {
                assert!(r.recall_at_10 >= 0.9, "{lib}: {r:?}");
            }
        }
    }
}
