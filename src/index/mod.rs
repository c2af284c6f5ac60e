//! In-memory approximate nearest-neighbour index over product embeddings
//! (L2-normalised under the default cosine metric), keyed by product id.
//!
//! The graph itself (`hnsw`) is a concurrent HNSW graph over dense point ids
//! (insert and search take `&self`); it knows nothing of keys, deletes or
//! filters. It replaced hnsw_rs, which this index first used; `hnsw`'s module
//! doc gives the measurements behind that. This module adds what the service
//! needs on top:
//!
//! * **Keys, replace and delete.** Points get dense ids (`usize`); a slot
//!   table maps id -> key/tombstone and a map holds key -> live id.
//!   Replacing a key inserts a new point and tombstones the old one; removing
//!   tombstones. Tombstones and filters are applied to the candidate list of
//!   a graph pass, widened by the dead fraction (see `search`).
//! * **Generations.** Dead points still cost traversal time, so once they pass
//!   `rebuild_dead_ratio` a rebuild builds a fresh graph from the live vectors
//!   while queries and writes continue on the current one, replays the writes
//!   that arrived meanwhile, and swaps the new generation in with `ArcSwap`.
//! * **Concurrency.** One writer at a time (a mutex): point ids are assigned
//!   in order, and the rebuild log needs a total order of writes. A large
//!   batch is still linked in parallel inside that one write. Searches take
//!   none of this module's locks on their hot path: the slot and node tables
//!   are append-only and lock-free to read, and the generation is an
//!   `ArcSwap` load. Only the key map is behind an `RwLock`, held for single
//!   lookups/updates by `get`/`contains`/`search_among` and writers.
//! * **Similarity.** The index's [`Metric`] (`IndexParams::metric`, a
//!   property of the data): by default the dot product of unit vectors
//!   (cosine). Vectors are checked on the way in: finite always, unit length
//!   under cosine, not long enough to overflow a score otherwise. A dump
//!   records the metric, and one of another metric is not loaded.
//! * **Filters.** `search` guarantees `min(k, #accepted live)` results: an
//!   HNSW pass post-filtered; if short, an exact scan of the accepted points
//!   or (when cheaper) a wider HNSW pass; an exact scan if that still falls short.
//! * **Dumps** (`persist`): temp dir + fsync + atomic rename, a checksummed
//!   manifest, and a checksummed graph file verified before it is parsed.
//!
//! **Where vectors live.** Each vector is stored once per generation:
//! without quantization in its graph node, otherwise as a code in the node
//! (what the walk compares: int8 is a quarter of the bytes, and with the
//! walk's prefetch it is also the fastest) plus the full-precision vector
//! in a mapped file (`spill`), read to re-rank what a walk found, for exact
//! scans, rebuilds and `get`. Keeping an `Arc<[f32]>` as well would double
//! the memory for no gain. The costs: `get` returns a fresh `Arc<[f32]>`
//! copy, and a rebuild briefly holds two copies.

mod distance;
mod generation;
mod hnsw;
mod persist;
mod prefetch;
mod quant;
mod slots;
mod spill;
mod topk;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::domain::{MAX_NORM, Metric};
use generation::Generation;
pub use hnsw::GraphBytes;
pub use quant::{Quantization, UnknownQuantization};

/// The most layers a graph may have. With `M` = 16 a node reaches level `l`
/// with probability `16^-l`, so 16 layers suffice for any catalogue.
pub const HNSW_MAX_LAYERS: usize = 16;

/// Cost of one unit of HNSW `ef` in exact scores of full-precision vectors,
/// for choosing between a graph pass and an exact scan. Measured with the
/// default int8 index on 100K x 1280-d (bench-index's filter sweep with each
/// plan forced, 2 threads so that both plans are charged in CPU time): a
/// graph pass took 1.7-2.5 us of CPU per unit of `ef`, an exact score from
/// the mapped full vectors 0.44 us.
const GRAPH_CANDIDATE_COST: usize = 5;

/// Points an exact scan checks against the filter in the time of one exact
/// score: 11 ns of CPU per check of the sweep's predicate (a key parse and
/// a hash) in the same measurement. With these two costs the plans cross
/// at about 4.5% admitted on 100K, where both measured the same QPS.
const SCAN_CHECKS_PER_SCORE: usize = 40;

/// Estimated cost of an exact scan of `total` slots of which `accepted`
/// pass, in exact scores.
fn exact_cost(total: usize, accepted: usize) -> usize {
    accepted.saturating_add(total / SCAN_CHECKS_PER_SCORE)
}

/// Estimated cost of a graph pass of width `ef`, in exact scores.
fn graph_cost(ef: usize) -> usize {
    ef.saturating_mul(GRAPH_CANDIDATE_COST)
}

/// How [`VectorIndex::search`] answered a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Plan {
    /// An empty index, `k` = 0 or an invalid query.
    Nothing,
    /// Exact scan: the index is under `exact_threshold` or `k` covers it.
    Small,
    /// Exact scan: the filter admits few enough points that scanning costs
    /// less than a graph pass widened to match.
    Exact,
    /// One graph pass, widened by the filter's estimated share.
    Graph,
    /// The first pass fell short of `k`; a pass four times as wide filled it.
    GraphWidened,
    /// The graph passes fell short; an exact scan of the admitted points.
    GraphThenExact,
}

/// `ef` scaled by `total / part` (at least `ef`, at most `total`): the
/// candidate count at which about `ef` of them fall in a `part`-sized subset.
fn oversampled(ef: usize, total: usize, part: usize) -> usize {
    let scaled = (ef as u128 * total as u128).div_ceil(part.max(1) as u128);
    usize::try_from(scaled)
        .unwrap_or(usize::MAX)
        .clamp(ef, total.max(ef))
}

/// Relative tolerance on the L2 norm of inserted vectors under cosine.
const NORM_TOLERANCE: f32 = 1e-3;

/// The rule every indexed vector of the right dimension follows under
/// `metric` (the catalogue applies it to stored rows as well): finite;
/// under cosine unit length (within [`NORM_TOLERANCE`]); under the others
/// at most [`MAX_NORM`] long, so that no score overflows. On failure, what
/// is wrong and the vector's L2 norm.
pub fn vector_rule(metric: Metric, vector: &[f32]) -> Result<(), (&'static str, f32)> {
    let norm = distance::dot(vector, vector).sqrt();
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(("not finite", norm));
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "1e18 is well inside f32's range"
    )]
    let max_norm = MAX_NORM as f32;
    // Finite components square to a sum without NaN: too long a vector has
    // an infinite `norm`, which both tests below refuse.
    match metric {
        Metric::Cosine if (norm - 1.0).abs() > NORM_TOLERANCE => {
            Err(("not a unit vector, as the cosine metric needs", norm))
        }
        Metric::Dot | Metric::Euclidean | Metric::Manhattan if norm > max_norm => {
            Err(("too long for its scores to stay finite", norm))
        }
        _ => Ok(()),
    }
}

/// Below this batch size `upsert_batch` inserts one by one on the caller's
/// thread, which saves handing a few inserts to the pool. (The size dates
/// from hnsw_rs, whose parallel insert ended with a walk over the whole
/// graph; ours links the batch and nothing else.) Bulk loads should pass
/// larger batches, or they are linked on one core.
const PARALLEL_BATCH_MIN: usize = 64;

/// A rebuild aborts instead of letting its replay log grow past
/// `max(this, live points)` operations (writes are then simply kept in the
/// current generation and a later rebuild retries).
const MIN_REBUILD_LOG_CAP: usize = 4096;

/// Replay rounds outside the writer lock before the final locked round.
const CATCH_UP_ROUNDS: usize = 8;
/// A catch-up round this small ends catch-up; the rest is replayed under lock.
const CATCH_UP_SMALL: usize = 64;

/// Points a rebuild links between two looks at its cancel flag and at the
/// keys written meanwhile (left out, see `build_and_swap`): large enough
/// that the parallel linking of a chunk keeps both cores busy, small enough
/// that a cancelled rebuild stops within one chunk's linking and that
/// writes made during a rebuild mostly land on chunks not yet linked.
const REBUILD_CHUNK: usize = 2_048;

/// How long a finished rebuild waits for in-flight searches to release the
/// old generation so that its (parallel, non-trivial) teardown happens on the
/// rebuild thread rather than on whichever search drops it last.
const OLD_GENERATION_DRAIN: Duration = Duration::from_secs(2);

/// Tuning and maintenance parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexParams {
    /// HNSW `M`: links per node per layer (twice that on layer 0). 2..=255.
    pub max_nb_connection: usize,
    /// Candidate list size while inserting; higher = better graph, slower build.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to `k` when smaller).
    pub ef_search: usize,
    /// Layers of the graph, 1..=16.
    pub max_layer: usize,
    /// Rebuild once tombstoned points reach this fraction of all points.
    pub rebuild_dead_ratio: f64,
    /// ... and at least this many (avoids rebuilding tiny indexes constantly).
    pub rebuild_min_dead: usize,
    /// With at most this many live (or accepted) points, search scans exactly.
    pub exact_threshold: usize,
    /// How vectors are compared (and checked on the way in). A property of
    /// the data: the graph is built with it, so a dump of another metric is
    /// not loaded.
    pub metric: Metric,
    /// How the graph keeps the vectors its walk compares (see
    /// [`Quantization`]). Not a property of the data: dumps and the store
    /// hold full-precision vectors, and the codes are made again on load.
    pub quantization: Quantization,
    /// Where a quantized graph keeps its full-precision vectors: unlinked
    /// files in this directory, mapped read-only, so that the heap holds
    /// only codes and links. `None` keeps them on the heap. Not a property
    /// of the data (nothing in it outlives the process); the catalogue sets
    /// it inside its data dir.
    #[serde(skip)]
    pub vector_dir: Option<PathBuf>,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            max_nb_connection: 16,
            ef_construction: 200,
            ef_search: 32,
            max_layer: HNSW_MAX_LAYERS,
            rebuild_dead_ratio: 0.2,
            rebuild_min_dead: 100,
            exact_threshold: 2048,
            metric: Metric::Cosine,
            quantization: Quantization::None,
            vector_dir: None,
        }
    }
}

impl IndexParams {
    /// Checks ranges; use when loading configuration so bad values fail fast.
    /// (Constructors clamp instead, with a warning.)
    pub fn validate(&self) -> Result<(), IndexError> {
        let bad =
            |name: &'static str, reason: String| Err(IndexError::InvalidParams { name, reason });
        if !(2..=255).contains(&self.max_nb_connection) {
            return bad(
                "max_nb_connection",
                format!("{} not in 2..=255", self.max_nb_connection),
            );
        }
        if self.ef_construction == 0 {
            return bad("ef_construction", "must be at least 1".into());
        }
        if self.ef_search == 0 {
            return bad("ef_search", "must be at least 1".into());
        }
        if !(1..=HNSW_MAX_LAYERS).contains(&self.max_layer) {
            return bad(
                "max_layer",
                format!("{} not in 1..={HNSW_MAX_LAYERS}", self.max_layer),
            );
        }
        if !(self.rebuild_dead_ratio > 0.0 && self.rebuild_dead_ratio <= 1.0) {
            return bad(
                "rebuild_dead_ratio",
                format!("{} not in (0, 1]", self.rebuild_dead_ratio),
            );
        }
        Ok(())
    }

    /// Clamps every field into its valid range, warning about each change.
    fn sanitized(&self) -> Self {
        let mut p = self.clone();
        p.max_nb_connection = p.max_nb_connection.clamp(2, 255);
        p.ef_construction = p.ef_construction.max(1);
        p.ef_search = p.ef_search.max(1);
        p.max_layer = p.max_layer.clamp(1, HNSW_MAX_LAYERS);
        if !(p.rebuild_dead_ratio > 0.0 && p.rebuild_dead_ratio <= 1.0) {
            p.rebuild_dead_ratio = Self::default().rebuild_dead_ratio;
        }
        if p != *self {
            warn!(given = ?self, used = ?p, "index parameters out of range were clamped");
        }
        p
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub key: Arc<str>,
    /// `metric.similarity(query, vector)`, higher is better (see
    /// [`Metric`]); under cosine clamped to [-1, 1].
    pub score: f32,
}

/// Why a rebuild ended the way it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildOutcome {
    /// The new generation replaced the old one.
    Swapped,
    /// Another rebuild was running; this call did nothing.
    AlreadyRunning,
    /// Gave up; the current generation stays in place and keeps all writes.
    Aborted { reason: String },
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildStats {
    pub outcome: RebuildOutcome,
    /// Live points copied into the new generation (before replay).
    pub live_points: usize,
    /// Tombstoned points left behind.
    pub dropped_points: usize,
    /// Writes made during the build and replayed onto the new generation.
    pub replayed_ops: usize,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector for key {key:?} has {got} dimensions, the index has {expected}")]
    DimensionMismatch {
        key: Arc<str>,
        expected: usize,
        got: usize,
    },
    #[error("vector for key {key:?} is {problem} (L2 norm {norm})")]
    InvalidVector {
        key: Arc<str>,
        norm: f32,
        /// What is wrong with it under the index's metric.
        problem: &'static str,
    },
    #[error("invalid index parameter {name}: {reason}")]
    InvalidParams { name: &'static str, reason: String },
    #[error("index dump at {path}: {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index dump at {dir} is corrupt: {reason}")]
    CorruptDump { dir: PathBuf, reason: String },
    #[error("cannot dump the index: {reason}")]
    DumpUnsupported { reason: String },
    #[error("full-precision vector file: {source}")]
    VectorFile {
        #[source]
        source: std::io::Error,
    },
    #[error("internal index error: {reason}")]
    Internal { reason: String },
}

/// A write made while a rebuild was building, to replay onto its result.
#[derive(Debug)]
enum LogOp {
    Upsert(Arc<str>, Arc<[f32]>),
    Remove(Arc<str>),
}

impl LogOp {
    fn key(&self) -> &Arc<str> {
        match self {
            Self::Upsert(key, _) | Self::Remove(key) => key,
        }
    }
}

/// State guarded by the writer lock (the lock itself is what serialises writes).
#[derive(Debug, Default)]
struct WriterState {
    /// `Some` while a rebuild runs: writes it must replay, in order. Bounded
    /// by `log_cap`; overflowing aborts that rebuild (sets this to `None`).
    rebuild_log: Option<Vec<LogOp>>,
    log_cap: usize,
}

impl WriterState {
    fn record(&mut self, op: impl FnOnce() -> LogOp) {
        if let Some(log) = &mut self.rebuild_log {
            if log.len() < self.log_cap {
                log.push(op());
            } else {
                warn!(
                    cap = self.log_cap,
                    "too many writes during rebuild; aborting it"
                );
                self.rebuild_log = None;
            }
        }
    }
}

/// Concurrent key -> vector ANN index. `Send + Sync`; share it via `Arc`.
pub struct VectorIndex {
    dim: usize,
    params: IndexParams,
    /// The generation all reads and writes go to.
    current: ArcSwap<Generation>,
    /// Held by every writer for the whole write, by a rebuild to start its
    /// log and to swap, and by a dump while it copies the key table.
    writer: Mutex<WriterState>,
    /// Held for the duration of a rebuild or a reachability repair; with
    /// `try_lock`, a second one (of either) is a no-op.
    rebuild_running: Mutex<()>,
    /// Serialises dumps (they share the target folder's temp/GC logic).
    dump_running: Mutex<()>,
    /// Once set, running and future rebuilds abort (at shutdown).
    rebuilds_cancelled: AtomicBool,
    /// Dedicated pool for parallel inserts. `upsert_batch` waits on it while
    /// holding the writer lock; on rayon's global pool that could deadlock if
    /// all global workers were blocked in `upsert` on that same lock. `None`
    /// if the pool could not be created (then the global pool is used).
    pool: OnceLock<Option<rayon::ThreadPool>>,
}

impl fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dim", &self.dim)
            .field("params", &self.params)
            .field("generation", &*self.current.load())
            .finish_non_exhaustive()
    }
}

impl VectorIndex {
    /// Empty index. Out-of-range params are clamped (see [`IndexParams::validate`]).
    pub fn new(dim: usize, params: IndexParams) -> Self {
        let params = params.sanitized();
        let generation = Generation::empty(&params);
        Self::from_generation(dim, params, generation)
    }

    fn from_generation(dim: usize, params: IndexParams, generation: Generation) -> Self {
        Self {
            dim,
            params,
            current: ArcSwap::from_pointee(generation),
            writer: Mutex::new(WriterState::default()),
            rebuild_running: Mutex::new(()),
            dump_running: Mutex::new(()),
            rebuilds_cancelled: AtomicBool::new(false),
            pool: OnceLock::new(),
        }
    }

    /// Bulk build with parallel insertion. Duplicate keys: the last one wins.
    /// Fails without building anything if any vector is invalid.
    pub fn build(
        dim: usize,
        params: IndexParams,
        items: Vec<(Arc<str>, Arc<[f32]>)>,
    ) -> Result<Self, IndexError> {
        let index = Self::new(dim, params);
        index.upsert_batch(items)?;
        index.connect_unreachable();
        Ok(index)
    }

    /// Links every point no search could reach into the graph (see
    /// `hnsw::Graph::connect_unreachable_with`); returns how many links it
    /// added. Builds and rebuilds do it themselves; call it after upserts
    /// into a loaded index (live inserts leave some points unreachable).
    /// Writes go on while it searches for where to link each point and wait
    /// only while the links are added. While a rebuild runs it does nothing
    /// and returns 0: the rebuild repairs the graph it swaps in, and this
    /// one is about to be dropped.
    pub fn connect_unreachable(&self) -> usize {
        let Some(_maintenance) = self.rebuild_running.try_lock() else {
            return 0;
        };
        let generation = self.current.load_full();
        // Not in `in_pool`: the writer lock must be taken off the pool (see
        // `connect_unreachable_with`); only the searches run there.
        let linked = generation.graph.connect_unreachable_with(
            &self.rebuilds_cancelled,
            self.pool(),
            || self.writer.lock(),
        );
        if linked > 0 {
            debug!(linked, "unreachable points linked into the graph");
        }
        linked
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    /// How this index compares vectors.
    pub fn metric(&self) -> Metric {
        self.params.metric
    }

    /// Changes the search-time candidate list size (`ef_search`) of an index
    /// held exclusively, e.g. to sweep it in a benchmark. Zero is raised to 1.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool
            .get_or_init(|| {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("index-insert-{i}"))
                    .build()
                    .inspect_err(|e| warn!(error = %e, "no dedicated insert pool; using rayon's global pool"))
                    .ok()
            })
            .as_ref()
    }

    /// Runs `f` on the insert pool, so that its parallel parts use it.
    fn in_pool<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.pool() {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    fn check_vector(&self, key: &Arc<str>, vector: &[f32]) -> Result<(), IndexError> {
        if vector.len() != self.dim {
            return Err(IndexError::DimensionMismatch {
                key: Arc::clone(key),
                expected: self.dim,
                got: vector.len(),
            });
        }
        if let Err((problem, norm)) = vector_rule(self.params.metric, vector) {
            return Err(IndexError::InvalidVector {
                key: Arc::clone(key),
                norm,
                problem,
            });
        }
        Ok(())
    }

    fn query_is_valid(&self, query: &[f32]) -> bool {
        let ok = query.len() == self.dim && query.iter().all(|x| x.is_finite());
        if !ok {
            warn!(
                len = query.len(),
                dim = self.dim,
                "ignoring a query of wrong dimension or with non-finite values"
            );
        }
        ok
    }

    /// Inserts or replaces. Returns `true` if the key was new.
    pub fn upsert(&self, key: Arc<str>, vector: Arc<[f32]>) -> Result<bool, IndexError> {
        self.check_vector(&key, &vector)?;
        let mut writer = self.writer.lock();
        let generation = self.current.load_full();
        let created = generation.insert_one(Arc::clone(&key), &vector)?;
        writer.record(|| LogOp::Upsert(key, vector));
        Ok(created)
    }

    /// Inserts or replaces many; large batches are inserted in parallel.
    /// Validates everything first (all or nothing). Result `i` tells whether
    /// item `i` created its key, as if the items were upserted in order.
    pub fn upsert_batch(
        &self,
        items: Vec<(Arc<str>, Arc<[f32]>)>,
    ) -> Result<Vec<bool>, IndexError> {
        for (key, vector) in &items {
            self.check_vector(key, vector)?;
        }
        // Last occurrence of each key wins; earlier ones are never inserted.
        let mut last = std::collections::HashMap::with_capacity(items.len());
        for (i, (key, _)) in items.iter().enumerate() {
            last.insert(Arc::clone(key), i);
        }
        let mut writer = self.writer.lock();
        let generation = self.current.load_full();
        let mut created = Vec::with_capacity(items.len());
        {
            let by_key = generation.by_key.read();
            let mut seen = std::collections::HashSet::with_capacity(last.len());
            for (key, _) in &items {
                created.push(seen.insert(&**key) && !by_key.contains_key(key));
            }
        }
        let unique: Vec<(Arc<str>, &[f32])> = items
            .iter()
            .enumerate()
            .filter(|(i, (key, _))| last.get(key) == Some(i))
            .map(|(_, (key, vector))| (Arc::clone(key), &vector[..]))
            .collect();
        if unique.len() >= PARALLEL_BATCH_MIN {
            generation.insert_many(&unique, self.pool())?;
        } else {
            for (key, vector) in &unique {
                generation.insert_one(Arc::clone(key), vector)?;
            }
        }
        drop(unique);
        for (i, (key, vector)) in items.into_iter().enumerate() {
            if last.get(&key) == Some(&i) {
                writer.record(|| LogOp::Upsert(key, vector));
            }
        }
        Ok(created)
    }

    /// Removes a key. Returns whether it was present.
    pub fn remove(&self, key: &str) -> bool {
        let mut writer = self.writer.lock();
        let removed = self.current.load().remove(key);
        if removed {
            writer.record(|| LogOp::Remove(Arc::from(key)));
        }
        removed
    }

    /// A copy of the key's vector.
    pub fn get(&self, key: &str) -> Option<Arc<[f32]>> {
        let generation = self.current.load();
        let id = generation.id_of(key)?;
        generation.live_slot(id)?;
        generation.vector(id).map(Arc::from)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.current.load().id_of(key).is_some()
    }

    /// Live points.
    pub fn len(&self) -> usize {
        self.current.load().live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the current graph, split into what the search walk
    /// reads and the full-precision vectors a quantized graph keeps for
    /// re-ranking.
    pub fn graph_bytes(&self) -> GraphBytes {
        self.current.load().graph.heap_bytes()
    }

    /// Tombstoned points still in the current graph ("deleted_pending").
    pub fn dead_points(&self) -> usize {
        self.current.load().dead()
    }

    /// Approximate k-NN among live points whose key `accept`s, best first,
    /// ties by key. Returns exactly `min(k, #accepted live points)` hits
    /// (barring writes racing with the search). A query of the wrong
    /// dimension or with non-finite values returns nothing (and warns).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        self.search_planned(query, k, accept).0
    }

    /// [`Self::search`], and the plan it ran.
    pub(crate) fn search_planned(
        &self,
        query: &[f32],
        k: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> (Vec<Hit>, Plan) {
        if k == 0 || !self.query_is_valid(query) {
            return (Vec::new(), Plan::Nothing);
        }
        let generation = self.current.load_full();
        let live = generation.live();
        if live == 0 {
            return (Vec::new(), Plan::Nothing);
        }
        // With k >= live every live point is returned anyway (and this keeps
        // a huge k from becoming a huge graph candidate list).
        if live <= self.params.exact_threshold || k >= live {
            return (generation.exact_scan(query, k, accept), Plan::Small);
        }
        let total = generation.slots.len();
        let ef = self.params.ef_search.max(k);
        // The graph pass ignores tombstones and the caller's filter; both are
        // applied to its candidate list. (Filtering inside the beam, as
        // hnsw_rs's `FilterT` did, drops the early exit: on 12K x 1280-d that
        // took 3.7 ms vs 1.1 ms at ef 64 even with a filter that accepted
        // everything.) So the pass is widened to ~ef accepted candidates:
        // ef scaled by the share of points that are dead or filtered out,
        // estimated from a sample before the first pass. An exact scan runs
        // instead where it costs less, so a query's cost follows the cheaper
        // of the two as a filter grows more selective, with no step where
        // the plan changes.
        let expected = generation.sample_share(accept).of(live);
        // A filtered pass aims at 2k accepted candidates when ef is below
        // that: aimed at k, one pass in two would fall short through the
        // sample's error and chance alone.
        let wanted = if expected < live {
            ef.max(k.saturating_mul(2))
        } else {
            ef
        };
        let ef_pass = oversampled(wanted, total, expected);
        if expected <= self.params.exact_threshold.max(k)
            || exact_cost(total, expected) < graph_cost(ef_pass)
        {
            return (generation.exact_scan(query, k, accept), Plan::Exact);
        }
        let found = generation.graph.find(query, ef_pass);
        let hits = generation.rank_found(query, k, &found, accept);
        if hits.len() >= k {
            return (hits, Plan::Graph);
        }
        // Fewer passed near the query than the sample promised: a filter
        // that avoids this region of the space. Count what passes, then run
        // a pass four times as wide or an exact scan of those, whichever
        // costs less.
        let allowed = generation.accepted_ids(accept);
        if allowed.len() <= hits.len() {
            return (hits, Plan::Graph);
        }
        let ef_wide = oversampled(ef, total, allowed.len()).max(ef_pass.saturating_mul(4));
        debug!(
            k,
            found = hits.len(),
            expected,
            allowed = allowed.len(),
            ef_pass,
            ef_wide,
            "graph pass fell short of k"
        );
        if allowed.len() > self.params.exact_threshold.max(k) && graph_cost(ef_wide) < allowed.len()
        {
            let found = generation.graph.find(query, ef_wide.min(total));
            let hits = generation.rank_found(query, k, &found, accept);
            if hits.len() >= k {
                return (hits, Plan::GraphWidened);
            }
        }
        (
            generation.exact_ids(query, k, &allowed, accept),
            Plan::GraphThenExact,
        )
    }

    /// Exact k-NN among live points whose key `accept`s (brute force).
    pub fn search_exact(
        &self,
        query: &[f32],
        k: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        if k == 0 || !self.query_is_valid(query) {
            return Vec::new();
        }
        self.current.load_full().exact_scan(query, k, accept)
    }

    /// Exact k-NN among the given keys; unknown/removed keys are skipped.
    pub fn search_among(
        &self,
        query: &[f32],
        k: usize,
        candidates: &mut dyn Iterator<Item = &str>,
    ) -> Vec<Hit> {
        if k == 0 || !self.query_is_valid(query) {
            return Vec::new();
        }
        // Collect first: the caller's iterator must not run under our lock.
        let keys: Vec<&str> = candidates.collect();
        let generation = self.current.load_full();
        let mut ids: Vec<usize> = {
            let by_key = generation.by_key.read();
            keys.iter()
                .filter_map(|key| by_key.get(*key).copied())
                .collect()
        };
        ids.sort_unstable();
        ids.dedup();
        generation.exact_ids(query, k, &ids, &|_| true)
    }

    /// Whether tombstones have passed the configured threshold.
    pub fn needs_rebuild(&self) -> bool {
        let generation = self.current.load();
        let dead = generation.dead();
        dead >= self.params.rebuild_min_dead
            && dead as f64 >= self.params.rebuild_dead_ratio * generation.slots.len() as f64
    }

    /// Starts [`Self::rebuild`] on a new thread if [`Self::needs_rebuild`].
    /// Meant to be called after writes; cheap when nothing is needed.
    pub fn spawn_rebuild_if_needed(self: &Arc<Self>) -> Option<JoinHandle<RebuildStats>> {
        if !self.needs_rebuild() || self.rebuild_running.is_locked() {
            return None;
        }
        let index = Arc::clone(self);
        std::thread::Builder::new()
            .name("index-rebuild".into())
            .spawn(move || index.rebuild())
            .inspect_err(|e| warn!(error = %e, "could not spawn the index rebuild thread"))
            .ok()
    }

    /// Makes a running rebuild abort at its next chunk, and every later one
    /// at once; the current generation stays complete. For shutdown, where
    /// a rebuild of a large index would outlast the grace period.
    pub fn cancel_rebuilds(&self) {
        self.rebuilds_cancelled.store(true, Ordering::Release);
    }

    /// Rebuilds the graph from the live points, without stopping searches or
    /// writes, and swaps it in. Blocks until done. A call made while another
    /// rebuild runs returns at once with [`RebuildOutcome::AlreadyRunning`].
    pub fn rebuild(&self) -> RebuildStats {
        let started = Instant::now();
        let Some(_running) = self.rebuild_running.try_lock() else {
            return RebuildStats {
                outcome: RebuildOutcome::AlreadyRunning,
                live_points: 0,
                dropped_points: 0,
                replayed_ops: 0,
                elapsed: started.elapsed(),
            };
        };
        let (old, entries) = {
            let mut writer = self.writer.lock();
            let old = self.current.load_full();
            let entries = old.live_entries();
            writer.rebuild_log = Some(Vec::new());
            writer.log_cap = entries.len().max(MIN_REBUILD_LOG_CAP);
            (old, entries)
        };
        let live_points = entries.len();
        let dropped_points = old.slots.len().saturating_sub(live_points);
        info!(live_points, dropped_points, "index rebuild started");
        let result = self.build_and_swap(old, &entries);
        let (outcome, replayed_ops) = match result {
            Ok(replayed) => (RebuildOutcome::Swapped, replayed),
            Err(reason) => {
                self.writer.lock().rebuild_log = None;
                warn!(%reason, "index rebuild aborted");
                (RebuildOutcome::Aborted { reason }, 0)
            }
        };
        let stats = RebuildStats {
            outcome,
            live_points,
            dropped_points,
            replayed_ops,
            elapsed: started.elapsed(),
        };
        info!(?stats, "index rebuild finished");
        stats
    }

    /// Builds the new generation and swaps it in; returns the replayed ops.
    fn build_and_swap(
        &self,
        old: Arc<Generation>,
        entries: &[(Arc<str>, usize)],
    ) -> Result<usize, String> {
        let fresh = Generation::empty(&self.params);
        let items: Vec<(Arc<str>, &[f32])> = entries
            .iter()
            .filter_map(|(key, id)| old.vector(*id).map(|v| (Arc::clone(key), v)))
            .collect();
        // Keys written since the snapshot are left out of the chunks not yet
        // linked: the replay below inserts their current vector (or leaves
        // them out, if deleted), and linking the snapshot's vector first
        // would only leave a tombstone in the new graph, holding a vector
        // until the next rebuild.
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        let mut logged = 0;
        for chunk in items.chunks(REBUILD_CHUNK) {
            if self.rebuilds_cancelled.load(Ordering::Acquire) {
                return Err("cancelled (shutting down)".to_string());
            }
            if let Some(log) = &self.writer.lock().rebuild_log {
                touched.extend(log.iter().skip(logged).map(|op| Arc::clone(op.key())));
                logged = log.len();
            }
            let untouched: Vec<(Arc<str>, &[f32])> = chunk
                .iter()
                .filter(|(key, _)| !touched.contains(key))
                .map(|(key, vector)| (Arc::clone(key), *vector))
                .collect();
            fresh
                .insert_many(&untouched, self.pool())
                .map_err(|e| e.to_string())?;
        }
        drop(touched);
        drop(items);
        if self.rebuilds_cancelled.load(Ordering::Acquire) {
            return Err("cancelled (shutting down)".to_string());
        }
        // Not yet visible to anyone: no insert can race with the repair.
        let linked = self.in_pool(|| fresh.graph.connect_unreachable(&self.rebuilds_cancelled));
        debug!(linked, "unreachable points linked after the rebuild");
        if self.rebuilds_cancelled.load(Ordering::Acquire) {
            return Err("cancelled (shutting down)".to_string());
        }

        let take_log = |writer: &mut WriterState| match &mut writer.rebuild_log {
            Some(log) => Ok(std::mem::take(log)),
            None => Err("replay log overflowed".to_string()),
        };
        let mut replayed = 0;
        let mut previous = usize::MAX;
        for _ in 0..CATCH_UP_ROUNDS {
            let ops = take_log(&mut self.writer.lock())?;
            // Writers that outpace the (single-threaded) replay would make
            // every round longer than the last until the log overflows; once
            // a round is no shorter than the one before, the rest is
            // replayed under the lock instead, pausing writers briefly.
            let done = ops.len() <= CATCH_UP_SMALL || ops.len() >= previous;
            previous = ops.len();
            replayed += ops.len();
            Self::replay(&fresh, ops)?;
            if done {
                break;
            }
        }
        let mut writer = self.writer.lock();
        let ops = take_log(&mut writer)?;
        replayed += ops.len();
        Self::replay(&fresh, ops)?;
        writer.rebuild_log = None;
        let previous = self.current.swap(Arc::new(fresh));
        drop(writer);
        debug_assert!(
            Arc::ptr_eq(&previous, &old),
            "only rebuild swaps generations"
        );
        drop(old);
        Self::release_generation(previous);
        Ok(replayed)
    }

    fn replay(fresh: &Generation, ops: Vec<LogOp>) -> Result<(), String> {
        for op in ops {
            match op {
                LogOp::Upsert(key, vector) => {
                    fresh.insert_one(key, &vector).map_err(|e| e.to_string())?;
                }
                LogOp::Remove(key) => {
                    fresh.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Drops the old generation here once in-flight searches let go of it.
    fn release_generation(previous: Arc<Generation>) {
        let deadline = Instant::now() + OLD_GENERATION_DRAIN;
        while Arc::strong_count(&previous) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(previous);
    }

    /// Writes a dump (a checkpoint for fast restart) into `dir` (created if
    /// missing), replacing any previous dump there atomically.
    /// `store_version` is the caller's version of the data the index held
    /// when this was called; writes may go on meanwhile (they block only
    /// while the key table is copied, not while the graph file is written),
    /// so the dump holds that version's data and possibly some later writes.
    pub fn dump(&self, dir: &Path, store_version: u64) -> Result<(), IndexError> {
        self.dump_to(dir, store_version)
    }

    /// Loads a dump written by [`Self::dump`], with the store version it
    /// recorded. `Ok(None)`: no dump, or one made for another `dim`, graph
    /// params, format or platform. `Err`: the dump is damaged; log it and
    /// rebuild from the store.
    pub fn load(
        dir: &Path,
        dim: usize,
        params: IndexParams,
    ) -> Result<Option<(Self, u64)>, IndexError> {
        persist::load_from(dir, dim, params)
    }

    /// Whether `key` is live with exactly this vector (bit for bit); `None`
    /// if it is not live. Compares in place, without copying the vector.
    pub fn holds(&self, key: &str, vector: &[f32]) -> Option<bool> {
        let generation = self.current.load();
        let id = generation.id_of(key)?;
        generation.live_slot(id)?;
        let stored = generation.vector(id)?;
        Some(
            stored.len() == vector.len()
                && stored
                    .iter()
                    .zip(vector)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
        )
    }

    /// Live keys (a snapshot).
    pub fn live_keys(&self) -> Vec<Arc<str>> {
        self.current
            .load()
            .live_entries()
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// Calls `f` for each live key and its vector (a snapshot of the keys is
    /// taken first, so `f` may call back into the index).
    pub fn for_each_live(&self, f: &mut dyn FnMut(&Arc<str>, &[f32])) {
        let generation = self.current.load_full();
        for (key, id) in generation.live_entries() {
            if generation.live_slot(id).is_some()
                && let Some(vector) = generation.vector(id)
            {
                f(&key, vector);
            }
        }
    }
}
