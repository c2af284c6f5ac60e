//! One generation of the index: an HNSW graph plus the tables that map its
//! points to keys. A rebuild makes a new generation and swaps it in whole.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use rayon::prelude::*;

use super::distance::Metric;
use super::hnsw::{Graph, Near, Shape};
use super::prefetch::prefetch;
use super::slots::{Slot, SlotTable};
use super::topk::{Scored, TopK, finish};
use super::{Hit, IndexError, IndexParams};

/// Below this many slots an exact scan runs on the calling thread; above it
/// the scan is split over rayon's global pool.
const PARALLEL_SCAN_MIN: usize = 4096;

/// Nodes of a new graph linked one by one before parallel linking starts.
const SEQUENTIAL_START: usize = 1024;

pub(crate) struct Generation {
    /// Holds the vectors; node id = point id.
    pub(crate) graph: Graph,
    /// Point id -> key, tombstone. Every node of `graph` has a slot once the
    /// inserting writer returns; a node found by a search before that has no
    /// slot yet and is treated as absent.
    pub(crate) slots: SlotTable,
    /// Live key -> point id. Invariant (under the lock): each id refers to a
    /// live slot holding that key, and at most one live slot per key exists
    /// outside the short replace window described in `publish`.
    pub(crate) by_key: RwLock<HashMap<Arc<str>, usize>>,
    /// `by_key.len()`, readable without the lock.
    live: AtomicUsize,
    /// Tombstoned slots, i.e. points the graph still traverses but we hide.
    dead: AtomicUsize,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("points", &self.slots.len())
            .field("live", &self.live())
            .field("dead", &self.dead())
            .finish_non_exhaustive()
    }
}

impl Generation {
    pub(crate) fn empty(params: &IndexParams) -> Self {
        let graph = Graph::with_vector_dir(shape_of(params), params.vector_dir.as_deref());
        Self::from_parts(graph, SlotTable::new(), HashMap::new(), 0)
    }

    pub(crate) fn from_parts(
        graph: Graph,
        slots: SlotTable,
        by_key: HashMap<Arc<str>, usize>,
        dead: usize,
    ) -> Self {
        Self {
            graph,
            slots,
            live: AtomicUsize::new(by_key.len()),
            by_key: RwLock::new(by_key),
            dead: AtomicUsize::new(dead),
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub(crate) fn dead(&self) -> usize {
        self.dead.load(Ordering::Acquire)
    }

    /// The vector of a point (dead ones included).
    pub(crate) fn vector(&self, id: usize) -> Option<&[f32]> {
        self.graph.vector(id)
    }

    /// Inserts one point. Caller must be the only writer of this generation.
    pub(crate) fn insert_one(&self, key: Arc<str>, vector: &[f32]) -> Result<bool, IndexError> {
        self.check_in_step()?;
        let id = self.slots.len();
        let node = self.graph.push(vector)?;
        self.graph.link(node);
        self.append(key, id, node)
    }

    /// Inserts distinct keys, linking them in parallel on `pool` (rayon's
    /// global pool if `None`). Caller must be the only writer of this
    /// generation. Returns per item whether the key was new.
    ///
    /// Every node is published before any is linked (see `hnsw`); the slots
    /// are added after linking, so searches skip the batch until then.
    pub(crate) fn insert_many(
        &self,
        items: &[(Arc<str>, &[f32])],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Vec<bool>, IndexError> {
        self.check_in_step()?;
        let start = self.slots.len();
        for (i, (_, vector)) in items.iter().enumerate() {
            if self.graph.push(vector)? != start + i {
                return Err(IndexError::Internal {
                    reason: format!("node {} published out of order", start + i),
                });
            }
        }
        // A graph's first nodes are linked one at a time: linked in parallel,
        // each would find only the few nodes linked before it (at the start,
        // just the entry point), and those poor early links left later
        // searches stuck in the wrong cluster of clustered data.
        let sequential = start.max(SEQUENTIAL_START).min(start + items.len());
        (start..sequential).for_each(|id| self.graph.link(id));
        let link_all = || {
            (sequential..start + items.len())
                .into_par_iter()
                .for_each(|id| self.graph.link(id));
        };
        match pool {
            Some(pool) => pool.install(link_all),
            None => link_all(),
        }
        items
            .iter()
            .enumerate()
            .map(|(i, (key, _))| self.append(Arc::clone(key), start + i, start + i))
            .collect()
    }

    /// Point ids are node ids, so the next insert must find the graph and
    /// the slot table the same size. Only a failure between publishing a
    /// node and registering its slot can break that; refusing further
    /// inserts then beats silently pairing keys with the wrong vectors. A
    /// rebuild (which makes a new generation) recovers.
    fn check_in_step(&self) -> Result<(), IndexError> {
        let (graph, slots) = (self.graph.len(), self.slots.len());
        if graph == slots {
            Ok(())
        } else {
            Err(IndexError::Internal {
                reason: format!("graph has {graph} points but {slots} are registered"),
            })
        }
    }

    fn append(&self, key: Arc<str>, expected_id: usize, node: usize) -> Result<bool, IndexError> {
        let id = self.slots.push(Slot::new(Arc::clone(&key), true));
        if id != Some(expected_id) || node != expected_id {
            return Err(IndexError::Internal {
                reason: format!(
                    "slot id {id:?}, node {node}, expected {expected_id} (concurrent writers?)"
                ),
            });
        }
        Ok(self.publish(key, expected_id))
    }

    /// Points `key` at `id` and tombstones the key's previous point.
    ///
    /// The new slot is already live when this runs, so a concurrent search can
    /// see both points of the key for an instant; results are deduplicated by
    /// key. The other order would make the key briefly unfindable.
    fn publish(&self, key: Arc<str>, id: usize) -> bool {
        let mut by_key = self.by_key.write();
        match by_key.insert(key, id) {
            Some(old) => {
                if self.slots.get(old).is_some_and(Slot::kill) {
                    self.dead.fetch_add(1, Ordering::AcqRel);
                }
                false
            }
            None => {
                self.live.fetch_add(1, Ordering::AcqRel);
                true
            }
        }
    }

    pub(crate) fn remove(&self, key: &str) -> bool {
        let mut by_key = self.by_key.write();
        let Some(id) = by_key.remove(key) else {
            return false;
        };
        if self.slots.get(id).is_some_and(Slot::kill) {
            self.dead.fetch_add(1, Ordering::AcqRel);
        }
        self.live.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Point id of a live key.
    pub(crate) fn id_of(&self, key: &str) -> Option<usize> {
        self.by_key.read().get(key).copied()
    }

    pub(crate) fn live_slot(&self, id: usize) -> Option<&Slot> {
        self.slots.get(id).filter(|s| s.is_live())
    }

    fn scored<'a>(&'a self, query: &[f32], id: usize, slot: &'a Slot) -> Option<Scored<'a>> {
        let metric = self.graph.metric();
        Some(Scored {
            score: score(metric, metric.similarity(query, self.vector(id)?)),
            key: &slot.key,
            id,
        })
    }

    /// Ranks what [`Graph::find`] found (skipping dead, unknown and rejected
    /// points) and returns the best `k`, deduplicated by key, with exact
    /// scores. A quantized graph ranked by codes: the best
    /// [`rerank_depth`]`(k)` accepted candidates in that order are scored
    /// again from their full-precision vectors, the rest dropped.
    pub(crate) fn rank_found(
        &self,
        query: &[f32],
        k: usize,
        found: &[Near],
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        let metric = self.graph.metric();
        let accepted = found.iter().filter_map(|near| {
            let id = near.id as usize;
            let slot = self.live_slot(id)?;
            accept(&slot.key).then_some((near.sim, id, slot))
        });
        let candidates = if self.graph.is_quantized() {
            let best: Vec<_> = accepted.take(rerank_depth(k)).collect();
            // Ask for every vector first, then score (as the walk does).
            for &(_, id, _) in &best {
                if let Some(vector) = self.vector(id) {
                    prefetch(vector);
                }
            }
            best.into_iter()
                .filter_map(|(_, id, slot)| self.scored(query, id, slot))
                .collect()
        } else {
            accepted
                .map(|(sim, id, slot)| Scored {
                    score: score(metric, sim),
                    key: &slot.key,
                    id,
                })
                .collect()
        };
        self.to_hits(finish(candidates, k))
    }

    /// Exact top-k over all live points accepted by `accept`.
    pub(crate) fn exact_scan(
        &self,
        query: &[f32],
        k: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        self.exact_top_k(query, k, self.slots.len(), |i| i, accept)
    }

    /// Exact top-k over the given point ids (dead ones are skipped).
    pub(crate) fn exact_ids(
        &self,
        query: &[f32],
        k: usize,
        ids: &[usize],
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        self.exact_top_k(query, k, ids.len(), |i| ids[i], accept)
    }

    fn exact_top_k<'a>(
        &'a self,
        query: &[f32],
        k: usize,
        count: usize,
        id_at: impl Fn(usize) -> usize + Sync,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        let visit = |mut top: TopK<'a>, i: usize| -> TopK<'a> {
            let id = id_at(i);
            if let Some(slot) = self.live_slot(id)
                && accept(&slot.key)
                && let Some(scored) = self.scored(query, id, slot)
            {
                top.push(scored);
            }
            top
        };
        let top = if count < PARALLEL_SCAN_MIN {
            (0..count).fold(TopK::new(k), visit)
        } else {
            (0..count)
                .into_par_iter()
                .with_min_len(1024)
                .fold(|| TopK::new(k), visit)
                .reduce(|| TopK::new(k), TopK::merge)
        };
        self.to_hits(finish(top.into_sorted(), k))
    }

    /// A filter's share of the live points, estimated from a sample of
    /// slots spread by a hash of the draw number (deterministic, and with no
    /// pattern a filter over keys or insertion order could line up with).
    /// Draws stop once [`SAMPLE_PASSED`] sampled points pass or after
    /// [`SAMPLE_DRAWS`], so a filter that admits most points costs a few
    /// dozen `accept` calls and a selective one about a thousand.
    pub(crate) fn sample_share(&self, accept: &(dyn Fn(&str) -> bool + Sync)) -> Share {
        let n = self.slots.len() as u64;
        let mut share = Share {
            looked: 0,
            passed: 0,
        };
        if n == 0 {
            return share;
        }
        for draw in 0..SAMPLE_DRAWS {
            let id = usize::try_from(mix(draw) % n).unwrap_or(usize::MAX);
            if let Some(slot) = self.live_slot(id) {
                share.looked += 1;
                if accept(&slot.key) {
                    share.passed += 1;
                    if share.passed >= SAMPLE_PASSED {
                        break;
                    }
                }
            }
        }
        share
    }

    /// Live point ids accepted by `accept`, ascending.
    pub(crate) fn accepted_ids(&self, accept: &(dyn Fn(&str) -> bool + Sync)) -> Vec<usize> {
        let n = self.slots.len();
        let keep = |id: &usize| self.live_slot(*id).is_some_and(|s| accept(&s.key));
        if n < PARALLEL_SCAN_MIN {
            (0..n).filter(keep).collect()
        } else {
            (0..n)
                .into_par_iter()
                .with_min_len(1024)
                .filter(keep)
                .collect()
        }
    }

    fn to_hits(&self, ranked: Vec<Scored<'_>>) -> Vec<Hit> {
        ranked
            .into_iter()
            .filter_map(|c| {
                let slot = self.slots.get(c.id)?;
                Some(Hit {
                    key: Arc::clone(&slot.key),
                    score: c.score,
                })
            })
            .collect()
    }

    /// Live `(key, id)` pairs, cloned so callers never run code under the lock.
    pub(crate) fn live_entries(&self) -> Vec<(Arc<str>, usize)> {
        let by_key = self.by_key.read();
        let mut entries: Vec<(Arc<str>, usize)> =
            by_key.iter().map(|(k, id)| (Arc::clone(k), *id)).collect();
        drop(by_key);
        entries.sort_unstable_by_key(|(_, id)| *id);
        entries
    }
}

/// Most slots [`Generation::sample_share`] draws.
const SAMPLE_DRAWS: u64 = 1024;
/// Sampled points that must pass before [`Generation::sample_share`]
/// stops: with 32 the estimate is within about +-35% (two standard errors)
/// of the true share, close enough to choose between plans whose costs
/// cross over gradually.
const SAMPLE_PASSED: usize = 32;

/// What [`Generation::sample_share`] saw: live points looked at and how many
/// of them passed the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) looked: usize,
    pub(crate) passed: usize,
}

impl Share {
    /// Estimated accepted points among `live` (0 when none was seen).
    pub(crate) fn of(self, live: usize) -> usize {
        if self.looked == 0 {
            return 0;
        }
        let estimate = (live as u128 * self.passed as u128).div_ceil(self.looked as u128);
        usize::try_from(estimate).unwrap_or(usize::MAX)
    }
}

/// splitmix64's finaliser: draw number -> well-mixed 64 bits.
fn mix(draw: u64) -> u64 {
    let mut z = draw.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How many of a quantized graph's candidates, in the order of their codes,
/// are scored again from full-precision vectors for a top `k`. int8 codes
/// rank well enough that the true top 10 is among the first 40: at 100K x
/// 1280-d (`lookbook-bench bench-index --quantization int8`), re-scoring 40
/// instead of every candidate left recall@10 the same at ef 16 to 256 and
/// gave 1.3x the QPS at ef 256, where every candidate is 1.3 MB of
/// scattered reads per query.
pub(crate) fn rerank_depth(k: usize) -> usize {
    k.saturating_mul(RERANK_PER_RESULT).max(RERANK_MIN)
}

const RERANK_PER_RESULT: usize = 4;
const RERANK_MIN: usize = 40;

/// The graph shape the index parameters ask for.
pub(crate) fn shape_of(params: &IndexParams) -> Shape {
    Shape {
        m: params.max_nb_connection,
        ef_construction: params.ef_construction,
        layers: params.max_layer,
        metric: params.metric,
        quantization: params.quantization,
    }
}

/// A hit's score from its similarity: cosines are clamped to [-1, 1]
/// (f32 rounding takes a unit vector's dot with itself an ulp or two past
/// 1); the other metrics' similarities have no such bound to keep.
fn score(metric: Metric, similarity: f32) -> f32 {
    match metric {
        Metric::Cosine => similarity.clamp(-1.0, 1.0),
        Metric::Dot | Metric::Euclidean | Metric::Manhattan => similarity,
    }
}
