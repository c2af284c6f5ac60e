//! One generation of the index: an hnsw_rs graph plus the tables that map its
//! points to keys. A rebuild makes a new generation and swaps it in whole.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hnsw_rs::prelude::{Hnsw, Point};
use parking_lot::RwLock;
use rayon::prelude::*;

use super::distance::{UnitCosineDistance, dot};
use super::slots::{Slot, SlotTable};
use super::topk::{Scored, TopK, finish};
use super::{Hit, IndexError, IndexParams};

/// The graph type. `'static` because points own their vectors (no mmap); a
/// graph loaded from disk gets `'static` from a leaked loader (see `persist`).
pub(crate) type Graph = Hnsw<'static, f32, UnitCosineDistance>;

/// Below this many slots an exact scan runs on the calling thread; above it
/// the scan is split over rayon's global pool.
const PARALLEL_SCAN_MIN: usize = 4096;

pub(crate) struct Generation {
    pub(crate) graph: Graph,
    /// Point id (= hnsw_rs data id) -> key, vector, tombstone. Every point of
    /// `graph` has a slot once the inserting writer returns; a point found by
    /// a search before that has no slot yet and is treated as absent.
    pub(crate) slots: SlotTable,
    /// Live key -> point id. Invariant (under the lock): each id refers to a
    /// live slot holding that key, and at most one live slot per key exists
    /// outside the short replace window described in `publish`.
    pub(crate) by_key: RwLock<HashMap<Arc<str>, usize>>,
    /// `by_key.len()`, readable without the lock.
    live: AtomicUsize,
    /// Tombstoned slots, i.e. points hnsw_rs still traverses but we hide.
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
    pub(crate) fn empty(params: &IndexParams, capacity: usize) -> Self {
        let graph = Hnsw::new(
            params.max_nb_connection,
            capacity.max(1),
            params.max_layer,
            params.ef_construction,
            UnitCosineDistance,
        );
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

    /// Number of points per layer, to find where the next insert lands.
    fn layer_lens(&self) -> Vec<usize> {
        let indexation = self.graph.get_point_indexation();
        (0..self.graph.get_max_level())
            .map(|layer| indexation.get_layer_nb_point(layer))
            .collect()
    }

    /// Inserts one point. Caller must be the only writer of this generation.
    pub(crate) fn insert_one(&self, key: Arc<str>, vector: &[f32]) -> Result<bool, IndexError> {
        self.check_in_step()?;
        let id = self.slots.len();
        let before = self.layer_lens();
        self.graph.insert_slice((vector, id));
        let point = self.find_new_point(&before, id)?;
        self.append(key, point, id)
    }

    /// Inserts distinct keys in parallel on `pool` (rayon's global pool if `None`). Caller must be the only
    /// writer of this generation. Returns per item whether the key was new.
    pub(crate) fn insert_many(
        &self,
        items: &[(Arc<str>, &[f32])],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Vec<bool>, IndexError> {
        self.check_in_step()?;
        let start = self.slots.len();
        let data: Vec<(&[f32], usize)> = items
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (*v, start + i))
            .collect();
        match pool {
            Some(pool) => pool.install(|| self.graph.parallel_insert_slice(&data)),
            None => self.graph.parallel_insert_slice(&data),
        }
        let points = resolve_range(&self.graph, start, items.len())?;
        items
            .iter()
            .zip(points)
            .enumerate()
            .map(|(i, ((key, _), point))| self.append(Arc::clone(key), point, start + i))
            .collect()
    }

    /// Data ids are slot ids, so the next insert must find the graph and the
    /// slot table the same size. Only a panic inside an earlier insert (a
    /// point in the graph but never registered) can break that; refusing
    /// further inserts then beats silently reusing a data id. A rebuild
    /// (which makes a new generation) recovers.
    fn check_in_step(&self) -> Result<(), IndexError> {
        let (graph, slots) = (self.graph.get_nb_point(), self.slots.len());
        if graph == slots {
            Ok(())
        } else {
            Err(IndexError::Internal {
                reason: format!("graph has {graph} points but {slots} are registered"),
            })
        }
    }

    /// hnsw_rs's insert does not return the point it created. With a single
    /// writer the new point is the last one of whichever layer grew, so only
    /// that layer is walked; the origin id check makes this robust and the
    /// full scan is the fallback.
    fn find_new_point(
        &self,
        before: &[usize],
        id: usize,
    ) -> Result<Arc<Point<'static, f32>>, IndexError> {
        let indexation = self.graph.get_point_indexation();
        for (layer, &len) in before.iter().enumerate() {
            if indexation.get_layer_nb_point(layer) > len
                && let Some(point) = indexation.get_layer_iterator(layer).nth(len)
                && point.get_origin_id() == id
            {
                return Ok(point);
            }
        }
        let mut found = resolve_range(&self.graph, id, 1)?;
        found.pop().ok_or(IndexError::Internal {
            reason: "resolve_range(id, 1) returned no point".into(),
        })
    }

    fn append(
        &self,
        key: Arc<str>,
        point: Arc<Point<'static, f32>>,
        expected_id: usize,
    ) -> Result<bool, IndexError> {
        let id = self.slots.push(Slot::new(Arc::clone(&key), point, true));
        if id != Some(expected_id) {
            return Err(IndexError::Internal {
                reason: format!("slot id {id:?} != data id {expected_id} (concurrent writers?)"),
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

    fn scored<'a>(&'a self, query: &[f32], id: usize, slot: &'a Slot) -> Scored<'a> {
        Scored {
            score: dot(query, slot.vector()).clamp(-1.0, 1.0),
            key: &slot.key,
            id,
        }
    }

    /// Scores the given point ids (skipping dead, unknown and rejected ones)
    /// and returns the best `k`, deduplicated by key.
    pub(crate) fn rank_ids(
        &self,
        query: &[f32],
        k: usize,
        ids: impl IntoIterator<Item = usize>,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Hit> {
        let candidates = ids
            .into_iter()
            .filter_map(|id| {
                let slot = self.live_slot(id)?;
                accept(&slot.key).then(|| self.scored(query, id, slot))
            })
            .collect();
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
            {
                top.push(self.scored(query, id, slot));
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

/// Finds the points with data ids `start..start + n` by walking every layer
/// (hnsw_rs has no lookup by data id).
pub(crate) fn resolve_range(
    graph: &Graph,
    start: usize,
    n: usize,
) -> Result<Vec<Arc<Point<'static, f32>>>, IndexError> {
    let indexation = graph.get_point_indexation();
    let mut found: Vec<Option<Arc<Point<'static, f32>>>> = vec![None; n];
    for layer in 0..graph.get_max_level() {
        if indexation.get_layer_nb_point(layer) == 0 {
            continue;
        }
        for point in indexation.get_layer_iterator(layer) {
            let origin = point.get_origin_id();
            if let Some(entry) = origin.checked_sub(start).and_then(|i| found.get_mut(i)) {
                if entry.is_some() {
                    return Err(IndexError::Internal {
                        reason: format!("data id {origin} appears twice in the graph"),
                    });
                }
                *entry = Some(point);
            }
        }
    }
    let missing = found.iter().filter(|p| p.is_none()).count();
    found
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or(IndexError::Internal {
            reason: format!(
                "{missing} of data ids {start}..{} not in the graph",
                start + n
            ),
        })
}
