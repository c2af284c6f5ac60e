//! In-process and client-side measurements behind `make bench`: the encoder's
//! throughput with its time split by stage, the index's build time, memory,
//! QPS and recall against an exact ground truth, and ingest and freshness over
//! gRPC. Each writes a JSON report that `bench/report.py` puts next to the
//! Python peers' reports (`bench/peers/`), which use the same schema.
//!
//! The index datasets are plain files so that both sides read the very same
//! bytes: `base.f32` / `query.f32` (row-major little-endian f32), `gt.i32`
//! (the exact top-10 row numbers per query) and `meta.json`, written by
//! `bench/peers/make_vectors.py`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::api::client::{Client, SimilarTo};
use crate::encoder::{Encoder, EncoderStats};
use crate::index::{IndexParams, Quantization, VectorIndex};

/// Neighbours asked for and checked, as in the ground truth files.
pub(crate) const K: usize = 10;
/// Vectors handed to the index per `upsert_batch` while building: large
/// enough for the parallel insert, small enough that the copies made for the
/// call (freed afterwards, but kept by the allocator) hardly count in the
/// memory figure.
const BUILD_CHUNK: usize = 4096;
/// Each (ef, threads) point is timed over at least this long.
const MIN_MEASURE: Duration = Duration::from_secs(1);

/// `meta.json` of an index dataset (only the fields used here).
#[derive(Debug, Deserialize)]
pub struct DatasetMeta {
    pub scale: String,
    pub n: usize,
    pub nq: usize,
    pub dim: usize,
}

/// A dataset directory's files, loaded.
#[derive(Debug)]
pub struct Dataset {
    pub meta: DatasetMeta,
    pub base: Vec<f32>,
    pub queries: Vec<f32>,
    /// `nq x K` row numbers into `base`, best first.
    pub truth: Vec<u32>,
}

impl Dataset {
    /// Reads `dir/{meta.json, base.f32, query.f32, gt.i32}`, checking sizes.
    pub fn load(dir: &Path, with_truth: bool) -> Result<Self> {
        let meta: DatasetMeta = serde_json::from_slice(
            &std::fs::read(dir.join("meta.json"))
                .with_context(|| format!("cannot read {}/meta.json", dir.display()))?,
        )
        .context("meta.json")?;
        let base = read_f32(&dir.join("base.f32"), meta.n * meta.dim)?;
        let queries = read_f32(&dir.join("query.f32"), meta.nq * meta.dim)?;
        let truth = if with_truth {
            let bytes = std::fs::read(dir.join("gt.i32")).context("gt.i32")?;
            ensure!(
                bytes.len() == meta.nq * K * 4,
                "gt.i32 is not {} x {K}",
                meta.nq
            );
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            meta,
            base,
            queries,
            truth,
        })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.base[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    pub fn query(&self, i: usize) -> &[f32] {
        &self.queries[i * self.meta.dim..(i + 1) * self.meta.dim]
    }
}

/// Reads `values` little-endian f32s through a small buffer: a whole-file
/// byte copy, freed after conversion, would be handed back to the index's
/// first allocations by the allocator and hide them from the RSS-growth
/// memory figure.
fn read_f32(path: &Path, values: usize) -> Result<Vec<f32>> {
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = file.metadata()?.len();
    ensure!(
        bytes == values as u64 * 4,
        "{} has {bytes} bytes, expected {}",
        path.display(),
        values * 4
    );
    let mut out = Vec::with_capacity(values);
    let mut buffer = vec![0u8; 1 << 20];
    while out.len() < values {
        let take = ((values - out.len()) * 4).min(buffer.len());
        file.read_exact(&mut buffer[..take])
            .with_context(|| format!("cannot read {}", path.display()))?;
        out.extend(
            buffer[..take]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok(out)
}

/// Writes `value` as pretty JSON to `path` (creating its folder).
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Resident set size of this process, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    rss_of("self")
}

/// Resident set size of process `pid` (`"self"` for this one).
pub fn rss_of(pid: &str) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of this process's resident set: heap and other
/// memory no file backs, which the kernel cannot drop under pressure (file
/// pages it maps, such as a quantized index's full vectors, it can).
pub fn rss_anon_bytes() -> Option<u64> {
    status_bytes("self", "RssAnon:")
}

fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// p50 and p99 of `samples` (milliseconds); sorts them.
fn percentiles(samples: &mut [f64]) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i]
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Split {
    pub decode: f64,
    pub resize: f64,
    pub normalise: f64,
    pub inference: f64,
}

#[derive(Debug, Serialize)]
pub struct EncodeRun {
    pub batch: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Per call, i.e. per batch.
    pub latency_ms: Percentiles,
    /// Seconds per stage, summed over the worker threads.
    pub split_seconds: Split,
    /// `split_seconds` over the wall time.
    pub split_share: Split,
    /// Inference seconds per image (the model alone).
    pub inference_seconds_per_image: f64,
}

#[derive(Debug, Serialize)]
pub struct EncodeReport {
    pub peer: &'static str,
    pub model: String,
    pub model_sha256: String,
    pub runs: Vec<EncodeRun>,
}

/// Embeds `images` in calls of each size in `batches` from one caller
/// (closed loop, as the Python peer does), after one warm-up call.
///
/// Blocking; run it outside an async runtime.
pub fn bench_encode(
    encoder: &Encoder,
    images: &[Vec<u8>],
    batches: &[usize],
) -> Result<EncodeReport> {
    ensure!(!images.is_empty(), "no images to encode");
    let mut runs = Vec::new();
    for &batch in batches {
        ensure!(batch >= 1, "batch sizes start at 1");
        let warm: Vec<&[u8]> = images.iter().take(batch).map(Vec::as_slice).collect();
        encoder.embed_blocking(&warm)?;
        let before = encoder.stats();
        let started = Instant::now();
        let mut latencies = Vec::new();
        for chunk in images.chunks(batch) {
            let call: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let t = Instant::now();
            let out = encoder.embed_blocking(&call)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(out.len() == chunk.len(), "the encoder lost images");
        }
        let seconds = started.elapsed().as_secs_f64();
        let split = stage_delta(&before, &encoder.stats());
        let share = |v: f64| v / seconds;
        runs.push(EncodeRun {
            batch,
            images: images.len(),
            seconds,
            images_per_second: images.len() as f64 / seconds,
            latency_ms: percentiles(&mut latencies),
            split_share: Split {
                decode: share(split.decode),
                resize: share(split.resize),
                normalise: share(split.normalise),
                inference: share(split.inference),
            },
            inference_seconds_per_image: split.inference / images.len() as f64,
            split_seconds: split,
        });
    }
    Ok(EncodeReport {
        peer: "lookbook",
        model: encoder.model_name().to_owned(),
        model_sha256: encoder.model_sha256().to_owned(),
        runs,
    })
}

fn stage_delta(before: &EncoderStats, after: &EncoderStats) -> Split {
    let d = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64();
    Split {
        decode: d(after.decode_time, before.decode_time),
        resize: d(after.resize_time, before.resize_time),
        normalise: d(after.normalise_time, before.normalise_time),
        inference: d(after.inference_time, before.inference_time),
    }
}

#[derive(Debug, Serialize)]
pub struct IndexRun {
    pub ef_search: usize,
    pub threads: usize,
    pub qps: f64,
    pub recall_at_10: f64,
}

/// Same fields as `bench/peers/index_peers.py` writes.
#[derive(Debug, Serialize)]
pub struct IndexReport {
    pub lib: &'static str,
    pub version: &'static str,
    pub scale: String,
    pub n: usize,
    pub nq: usize,
    pub dim: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub build_threads: usize,
    pub build_seconds: f64,
    pub memory_bytes_per_vector: f64,
    pub raw_vector_bytes: usize,
    /// The own index only: heap bytes per vector its graph accounts for,
    /// what the search walk reads (codes and links) and the full-precision
    /// copies a quantized graph keeps for re-ranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_walk_bytes_per_vector: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_full_bytes_per_vector: Option<f64>,
    /// The own index only: full-precision bytes per vector in mapped files
    /// (page cache, not heap; see `index.quantization`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_mapped_bytes_per_vector: Option<f64>,
    /// The own index only: growth of anonymous resident memory (`RssAnon`)
    /// over the build, per vector: what cannot be paged out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_bytes_per_vector: Option<f64>,
    pub runs: Vec<IndexRun>,
    /// The selectivity sweep (`--filter`): searches restricted to the rows
    /// `admitted` lets through, against their own exact top 10.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filtered: Vec<FilteredRun>,
}

#[derive(Debug, Serialize)]
pub struct FilteredRun {
    /// Share of the base rows the filter admits (asked for).
    pub selectivity: f64,
    /// Rows it admits (counted).
    pub admitted: usize,
    pub ef_search: usize,
    pub threads: usize,
    /// Queries measured (the first `nq` of the dataset).
    pub nq: usize,
    pub qps: f64,
    pub recall_at_10: f64,
}

/// Whether the selectivity-`share` filter admits base row `row`: a
/// multiplicative hash of the row number below `share * 2^32`. Every
/// harness (`bench/peers/index_peers.py` computes the same in numpy) admits
/// the same rows with no file to share, spread over the whole base rather
/// than a contiguous block of it.
pub fn admitted(row: u32, share: f64) -> bool {
    u64::from(row.wrapping_mul(0x9E37_79B1)) < (share * 4_294_967_296.0) as u64
}

/// The filter sweep's settings.
#[derive(Debug, Clone)]
pub struct FilterSweep {
    pub selectivities: Vec<f64>,
    /// `ef_search` of the filtered searches.
    pub ef: usize,
    /// Queries per selectivity (each needs an exact top 10 of its own).
    pub queries: usize,
}

/// Exact top `K` (row numbers, best first, ties by row) among the rows the
/// `share` filter admits, for the first `nq` queries.
pub(crate) fn filtered_truth(data: &Dataset, share: f64, nq: usize) -> (usize, Vec<Vec<u32>>) {
    use rayon::prelude::*;
    let rows: Vec<u32> = (0..data.meta.n as u32)
        .filter(|&r| admitted(r, share))
        .collect();
    let truth = (0..nq)
        .into_par_iter()
        .map(|q| {
            let query = data.query(q);
            let mut scored: Vec<(f32, u32)> = rows
                .iter()
                .map(|&r| (dot(query, data.row(r as usize)), r))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().take(K).map(|(_, r)| r).collect()
        })
        .collect();
    (rows.len(), truth)
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs the filter sweep with `search(query, share)` (row numbers of the top
/// `K`, best first) at each thread count.
pub(crate) fn sweep_filters(
    data: &Dataset,
    sweep: &FilterSweep,
    threads: &[usize],
    search: &(dyn Fn(usize, f64) -> Vec<u32> + Sync),
) -> Vec<FilteredRun> {
    let nq = sweep.queries.min(data.meta.nq);
    let mut runs = Vec::new();
    for &share in &sweep.selectivities {
        let (rows, truth) = filtered_truth(data, share, nq);
        for &t in threads {
            let (qps, recall) =
                measure_against(nq, &|q| &truth[q], t.max(1), &|q| search(q, share));
            runs.push(FilteredRun {
                selectivity: share,
                admitted: rows,
                ef_search: sweep.ef,
                threads: t,
                nq,
                qps,
                recall_at_10: recall,
            });
        }
    }
    runs
}

/// Builds the service's index over `data`'s base vectors (keys are row
/// numbers) and measures single-query searches at each `ef` with each thread
/// count, as the service runs them: `T` threads, each searching one query
/// at a time.
pub fn bench_index(
    data: &Dataset,
    params: IndexParams,
    efs: &[usize],
    threads: &[usize],
    filters: Option<&FilterSweep>,
) -> Result<IndexReport> {
    let (n, nq, dim) = (data.meta.n, data.meta.nq, data.meta.dim);
    ensure!(nq > 0 && data.truth.len() == nq * K, "no ground truth");
    let (m, ef_construction) = (params.max_nb_connection, params.ef_construction);
    let lib = match params.quantization {
        Quantization::None => "lookbook",
        Quantization::F16 => "lookbook-f16",
        Quantization::Int8 => "lookbook-int8",
    };
    let rss_before = rss_bytes().unwrap_or(0);
    let anon_before = rss_anon_bytes().unwrap_or(0);
    let started = Instant::now();
    let mut index = VectorIndex::new(dim, params);
    for start in (0..n).step_by(BUILD_CHUNK) {
        let items = (start..(start + BUILD_CHUNK).min(n))
            .map(|i| {
                (
                    Arc::<str>::from(i.to_string()),
                    Arc::<[f32]>::from(data.row(i)),
                )
            })
            .collect();
        index.upsert_batch(items)?;
    }
    let build_seconds = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes().unwrap_or(0);
    let anon_after = rss_anon_bytes().unwrap_or(0);
    ensure!(
        index.len() == n,
        "the index holds {} of {n} vectors",
        index.len()
    );

    let runs = ef_sweep(efs, threads, |ef, t| {
        index.set_ef_search(ef);
        measure_search(&index, data, t)
    });
    let filtered = match filters {
        Some(sweep) => {
            index.set_ef_search(sweep.ef);
            sweep_filters(data, sweep, threads, &|q, share| {
                let accept = |key: &str| key.parse::<u32>().is_ok_and(|r| admitted(r, share));
                index
                    .search(data.query(q), K, &accept)
                    .iter()
                    .filter_map(|h| h.key.parse::<u32>().ok())
                    .collect()
            })
        }
        None => Vec::new(),
    };
    let bytes = index.graph_bytes();
    Ok(IndexReport {
        lib,
        version: env!("CARGO_PKG_VERSION"),
        scale: data.meta.scale.clone(),
        n,
        nq,
        dim,
        m,
        ef_construction,
        build_threads: std::thread::available_parallelism().map_or(1, |p| p.get()),
        build_seconds,
        memory_bytes_per_vector: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        raw_vector_bytes: dim * 4,
        graph_walk_bytes_per_vector: Some(bytes.walk as f64 / n as f64),
        graph_full_bytes_per_vector: Some(bytes.full as f64 / n as f64),
        graph_mapped_bytes_per_vector: Some(bytes.mapped as f64 / n as f64),
        anon_bytes_per_vector: Some(anon_after.saturating_sub(anon_before) as f64 / n as f64),
        runs,
        filtered,
    })
}

/// One run per `ef` and thread count: `measure(ef, threads)` sets the
/// engine's `ef` and returns (QPS, recall@10) with that many threads (at
/// least 1).
pub(super) fn ef_sweep(
    efs: &[usize],
    threads: &[usize],
    mut measure: impl FnMut(usize, usize) -> (f64, f64),
) -> Vec<IndexRun> {
    let mut runs = Vec::new();
    for &ef in efs {
        for &t in threads {
            let (qps, recall) = measure(ef, t.max(1));
            runs.push(IndexRun {
                ef_search: ef,
                threads: t,
                qps,
                recall_at_10: recall,
            });
        }
    }
    runs
}

/// Queries per second and recall@10 with `threads` searching threads.
fn measure_search(index: &VectorIndex, data: &Dataset, threads: usize) -> (f64, f64) {
    measure_searcher(data, threads, &|q| {
        index
            .search(data.query(q), K, &|_| true)
            .iter()
            .filter_map(|h| h.key.parse::<u32>().ok())
            .collect()
    })
}

/// Queries per second and recall@10 of `search` (query number -> row
/// numbers of the top `K`, best first) with `threads` searching threads,
/// each searching one query at a time.
pub(crate) fn measure_searcher(
    data: &Dataset,
    threads: usize,
    search: &(dyn Fn(usize) -> Vec<u32> + Sync),
) -> (f64, f64) {
    let truth = |q: usize| &data.truth[q * K..(q + 1) * K];
    measure_against(data.meta.nq, &truth, threads, search)
}

/// `measure_searcher` over the first `nq` queries against `truth(q)`.
fn measure_against<'t>(
    nq: usize,
    truth: &dyn Fn(usize) -> &'t [u32],
    threads: usize,
    search: &(dyn Fn(usize) -> Vec<u32> + Sync),
) -> (f64, f64) {
    // Warm-up pass, which also gives the recall (searches are deterministic).
    let (mut found, mut wanted) = (0usize, 0usize);
    for q in 0..nq {
        let truth = truth(q);
        wanted += truth.len();
        found += search(q).iter().filter(|id| truth.contains(id)).count();
    }
    let recall = found as f64 / wanted.max(1) as f64;
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < MIN_MEASURE {
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for q in (t..nq).step_by(threads) {
                        std::hint::black_box(search(q));
                    }
                });
            }
        });
        done += nq;
    }
    (done as f64 / started.elapsed().as_secs_f64(), recall)
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub products: usize,
    pub seconds: f64,
    pub products_per_second: f64,
}

/// Streams rows `skip..` of `data`'s base (ids from `ids.txt`) through
/// `AddProducts` with precomputed embeddings; the reply comes after the
/// products are durable and searchable.
pub async fn ingest_vectors(
    client: &mut Client,
    dir: &Path,
    data: &Dataset,
    skip: usize,
) -> Result<IngestReport> {
    let ids = std::fs::read_to_string(dir.join("ids.txt")).context("ids.txt")?;
    let ids: Vec<String> = ids.lines().map(str::to_owned).collect();
    ensure!(
        ids.len() == data.meta.n,
        "ids.txt has {} lines, expected {}",
        ids.len(),
        data.meta.n
    );
    let rows: Vec<(String, Vec<f32>, BTreeMap<String, String>)> = (skip..data.meta.n)
        .map(|i| (ids[i].clone(), data.row(i).to_vec(), BTreeMap::new()))
        .collect();
    let products = rows.len();
    let started = Instant::now();
    let summary = client
        .import_embeddings(futures::stream::iter(rows))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    if summary.failed > 0 {
        bail!(
            "{} products failed, e.g. {:?}",
            summary.failed,
            summary.errors.first()
        );
    }
    Ok(IngestReport {
        products,
        seconds,
        products_per_second: products as f64 / seconds,
    })
}

#[derive(Debug, Serialize)]
pub struct FreshnessReport {
    pub products: usize,
    /// Products returned by the first query sent after `AddProduct`
    /// replied. The query is restricted to the new products (an attribute
    /// filter), so it asks "is the product there yet" and nothing else.
    pub visible_on_first_query: usize,
    /// From `AddProduct`'s reply to the end of the first query that
    /// returned the product.
    pub reply_to_visible_ms: Percentiles,
    pub max_ms: f64,
    /// Products that an unrestricted query by their own embedding (the
    /// HNSW graph search) returned first, on its first try.
    pub graph_top1_first_query: usize,
    /// Products that this unrestricted query missed at first but returned
    /// when repeated: that would be a delay in indexing, not a recall miss.
    pub graph_found_when_repeated: usize,
    /// Products that it never returned first in `GRAPH_REPEATS` tries,
    /// although they were visible: misses of the approximate search (the
    /// graph walk at `ef_search` does not reach them), not of freshness.
    pub graph_missed: Vec<String>,
}

/// Attribute that marks the products `freshness` adds.
const FRESH_KEY: &str = "bench";
const FRESH_VALUE: &str = "fresh";
/// Tries of a query before a product counts as not showing up.
const VISIBLE_TRIES: usize = 100;
/// Repeats of the unrestricted query: enough to tell a delay from a miss.
const GRAPH_REPEATS: usize = 20;

/// Adds `count` products (the dataset's query vectors, which are not in the
/// base) one call each. After each reply it queries with the product's own
/// embedding, restricted to the products it added, until the product comes
/// back first (it fails after `VISIBLE_TRIES`). Then it checks whether the
/// unrestricted query (the HNSW graph search) finds it too; that part is
/// counted, not required, because approximate search may miss a vector that
/// is far from the rest of the catalogue.
pub async fn freshness(
    client: &mut Client,
    data: &Dataset,
    count: usize,
) -> Result<FreshnessReport> {
    let count = count.min(data.meta.nq);
    let mut first = 0;
    let mut waits = Vec::with_capacity(count);
    let mut graph_first = 0;
    let mut graph_later = 0;
    let mut graph_missed = Vec::new();
    for q in 0..count {
        let id = format!("fresh-{q:05}");
        let vector = data.query(q).to_vec();
        let attributes = BTreeMap::from([(FRESH_KEY.to_owned(), FRESH_VALUE.to_owned())]);
        let item = (id.clone(), vector.clone(), attributes);
        let summary = client
            .import_embeddings(futures::stream::iter([item]))
            .await?;
        ensure!(
            summary.failed == 0,
            "AddProducts refused {id}: {:?}",
            summary.errors
        );
        let replied = Instant::now();
        let tries = first_try_returning(
            client,
            &id,
            &vector,
            Some((FRESH_KEY, FRESH_VALUE)),
            VISIBLE_TRIES,
        )
        .await?;
        ensure!(
            tries.is_some(),
            "{id} did not show up in {VISIBLE_TRIES} queries"
        );
        waits.push(replied.elapsed().as_secs_f64() * 1e3);
        if tries == Some(1) {
            first += 1;
        }
        match first_try_returning(client, &id, &vector, None, GRAPH_REPEATS).await? {
            Some(1) => graph_first += 1,
            Some(_) => graph_later += 1,
            None => graph_missed.push(id),
        }
    }
    let max_ms = waits.iter().copied().fold(0.0, f64::max);
    Ok(FreshnessReport {
        products: count,
        visible_on_first_query: first,
        reply_to_visible_ms: percentiles(&mut waits),
        max_ms,
        graph_top1_first_query: graph_first,
        graph_found_when_repeated: graph_later,
        graph_missed,
    })
}

/// Replication lag between two replicas of a cluster.
#[derive(Debug, Serialize)]
pub struct ClusterLagReport {
    pub products: usize,
    /// From the writer's AddProduct reply until the replica's GetProduct
    /// returns the product.
    pub lag_ms: Percentiles,
    pub max_ms: f64,
}

/// A synthetic unit vector of `dim`, the same for the same `seed`.
fn synthetic(seed: u64, dim: usize) -> Vec<f32> {
    use rand::{RngExt as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

/// Adds `n` synthetic products (`preload-NNNNNNN`) through AddProducts.
pub async fn preload(client: &mut Client, n: usize) -> Result<()> {
    let dim = client.stats().await?.dim as usize;
    let items = futures::stream::iter((0..n).map(move |i| {
        (
            format!("preload-{i:07}"),
            synthetic(i as u64, dim),
            BTreeMap::from([("shard".to_owned(), format!("s{}", i % 16))]),
        )
    }));
    let summary = client.import_embeddings(items).await?;
    ensure!(
        summary.failed == 0,
        "AddProducts refused: {:?}",
        summary.errors
    );
    Ok(())
}

/// Adds `count` products one at a time on `writer` and polls `reader`
/// until each is there.
pub async fn cluster_lag(
    writer: &mut Client,
    reader: &mut Client,
    count: usize,
) -> Result<ClusterLagReport> {
    let dim = writer.stats().await?.dim as usize;
    let run = crate::personalize::now_ms();
    let mut lags = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("lag-{run}-{i:05}");
        let item = (
            id.clone(),
            synthetic(1 << 40 | i as u64, dim),
            BTreeMap::new(),
        );
        let summary = writer
            .import_embeddings(futures::stream::iter([item]))
            .await?;
        ensure!(summary.failed == 0, "AddProducts refused {id}");
        let replied = Instant::now();
        loop {
            if reader.product(&id).await?.is_some() {
                break;
            }
            ensure!(
                replied.elapsed() < Duration::from_secs(30),
                "{id} did not reach the replica within 30 s"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(replied.elapsed().as_secs_f64() * 1e3);
    }
    let max_ms = lags.iter().copied().fold(0.0, f64::max);
    Ok(ClusterLagReport {
        products: count,
        lag_ms: percentiles(&mut lags),
        max_ms,
    })
}

/// The 1-based number of the first of up to `tries` `RecommendSimilar`
/// queries by `vector` that returned `id` first; `None` if none did.
async fn first_try_returning(
    client: &mut Client,
    id: &str,
    vector: &[f32],
    attribute: Option<(&str, &str)>,
    tries: usize,
) -> Result<Option<usize>> {
    for t in 1..=tries {
        let hits = client
            .similar_where(SimilarTo::Embedding(vector.to_vec()), K as u32, attribute)
            .await?;
        if hits.first().is_some_and(|h| h.id == id) {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// Reads the photos of a catalogue folder into memory (file I/O is not
/// part of what the encoder benchmark measures).
pub fn read_photos(
    paths: impl Iterator<Item = impl AsRef<Path>>,
    limit: usize,
) -> Result<Vec<Vec<u8>>> {
    paths
        .take(limit)
        .map(|p| {
            let p = p.as_ref();
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{RngExt as _, SeedableRng, rngs::StdRng};

    /// A small dataset of unit vectors in a few clusters, with its exact
    /// unfiltered top `K` per query.
    pub(crate) fn dataset(n: usize, nq: usize, dim: usize) -> Dataset {
        let mut rng = StdRng::seed_from_u64(7);
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let point = |rng: &mut StdRng| {
            let c = &centres[rng.random_range(0..centres.len())];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.5..0.5)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        };
        let base: Vec<f32> = (0..n).flat_map(|_| point(&mut rng)).collect();
        let queries: Vec<f32> = (0..nq).flat_map(|_| point(&mut rng)).collect();
        let mut data = Dataset {
            meta: DatasetMeta {
                scale: "test".into(),
                n,
                nq,
                dim,
            },
            base,
            queries,
            truth: Vec::new(),
        };
        let (rows, truth) = filtered_truth(&data, 1.0, nq);
        assert_eq!(rows, n, "share 1.0 admits every row");
        data.truth = truth.into_iter().flatten().collect();
        data
    }

    #[test]
    fn the_filter_admits_its_share_spread_over_the_rows() {
        let n = 100_000u32;
        for share in [0.001, 0.01, 0.1, 0.5] {
            let rows: Vec<u32> = (0..n).filter(|&r| admitted(r, share)).collect();
            let got = rows.len() as f64 / f64::from(n);
            assert!(
                (got - share).abs() <= share * 0.1 + 1e-4,
                "share {share}: admitted {got}"
            );
            // Spread, not a block: both halves of the rows get their part.
            let first_half = rows.iter().filter(|&&r| r < n / 2).count() as f64;
            assert!(
                (first_half / rows.len() as f64 - 0.5).abs() < 0.15,
                "share {share}"
            );
        }
        assert!((0..1000).all(|r| admitted(r, 1.0)));
        assert!(!(0..1000).any(|r| admitted(r, 0.0)));
    }

    #[test]
    fn filtered_truth_is_the_exact_top_among_admitted_rows() {
        let data = dataset(500, 4, 8);
        let (rows, truth) = filtered_truth(&data, 0.1, 4);
        assert!(rows > 20 && rows < 90, "{rows} rows admitted of 500");
        for (q, top) in truth.iter().enumerate() {
            assert_eq!(top.len(), K);
            assert!(top.iter().all(|&r| admitted(r, 0.1)));
            let worst = dot(data.query(q), data.row(top[K - 1] as usize));
            let better_outside = (0..500u32)
                .filter(|&r| admitted(r, 0.1) && !top.contains(&r))
                .any(|r| dot(data.query(q), data.row(r as usize)) > worst);
            assert!(
                !better_outside,
                "query {q}: an admitted row beats the top 10"
            );
        }
    }

    #[test]
    fn bench_index_reports_the_graph_sweep_and_the_filter_sweep() {
        let data = dataset(3000, 20, 16);
        let params = IndexParams {
            // The graph is the point: no exact scan below a size threshold.
            exact_threshold: 0,
            ..IndexParams::default()
        };
        let sweep = FilterSweep {
            selectivities: vec![0.01, 0.5],
            ef: 64,
            queries: 10,
        };
        let report = bench_index(&data, params, &[64], &[1, 2], Some(&sweep)).expect("bench");
        assert_eq!(report.n, 3000);
        assert_eq!(report.runs.len(), 2);
        assert!(
            report
                .runs
                .iter()
                .all(|r| r.recall_at_10 >= 0.9 && r.qps > 0.0)
        );
        assert_eq!(report.filtered.len(), 4);
        for r in &report.filtered {
            assert_eq!(r.nq, 10);
            assert!(r.recall_at_10 >= 0.9, "{r:?}");
            let expected = (0..3000u32).filter(|&x| admitted(x, r.selectivity)).count();
            assert_eq!(r.admitted, expected);
        }
    }
}
