//! Append-only table from hnsw_rs data id (our "point id") to its key, its
//! vector and its tombstone, readable without any lock.
//!
//! The HNSW filter callback runs for every node a search visits, so it must
//! not take a lock that a writer could hold (a writer waiting on a fair
//! `RwLock` also stalls every later reader). Point ids are dense and only
//! grow, so the table is a fixed array of geometrically growing chunks, each
//! allocated once through `OnceLock`: reads are two acquire loads, appends
//! never move existing entries, and no `unsafe` is needed. (Crates such as
//! `boxcar` do the same, but are outside this module's allowed dependencies.)

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use hnsw_rs::prelude::Point;

/// Size of chunk 0; chunk `c` holds `FIRST_CHUNK << c` slots.
const FIRST_CHUNK_BITS: u32 = 10;
const FIRST_CHUNK: usize = 1 << FIRST_CHUNK_BITS;
/// `FIRST_CHUNK * (2^22 - 1)` slots exceeds `i32::MAX`, the most points
/// hnsw_rs can rank in one layer, so the table never runs out first.
const CHUNKS: usize = 22;

/// Maps a point id to (chunk, offset). Chunk `c` starts at
/// `FIRST_CHUNK * (2^c - 1)`, so `id / FIRST_CHUNK + 1` lies in `[2^c, 2^(c+1))`.
fn locate(id: usize) -> (usize, usize) {
    let j = id / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - j.leading_zeros()) as usize;
    let offset = id - FIRST_CHUNK * ((1 << chunk) - 1);
    (chunk, offset)
}

/// One point of a generation's graph.
pub(crate) struct Slot {
    pub(crate) key: Arc<str>,
    /// The point inside the hnsw_rs graph. Its vector is the only copy this
    /// index keeps (see the module doc of `index`).
    pub(crate) point: Arc<Point<'static, f32>>,
    /// False once the key was removed or re-inserted. Never becomes true again.
    live: AtomicBool,
}

impl Slot {
    pub(crate) fn new(key: Arc<str>, point: Arc<Point<'static, f32>>, live: bool) -> Self {
        Self {
            key,
            point,
            live: AtomicBool::new(live),
        }
    }

    pub(crate) fn vector(&self) -> &[f32] {
        self.point.get_v()
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Tombstones the slot; returns whether it was live before.
    pub(crate) fn kill(&self) -> bool {
        self.live.swap(false, Ordering::AcqRel)
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.key)
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

/// Append-only, lock-free-read slot table.
///
/// Invariant: slots `0..len` are all set; `len` is published with release
/// ordering after the slot, so a reader that sees `len` also sees the slot.
/// Appends must be serialised by the caller (the index's writer lock, or sole
/// ownership of a generation still under construction).
pub(crate) struct SlotTable {
    chunks: [OnceLock<Box<[OnceLock<Slot>]>>; CHUNKS],
    len: AtomicUsize,
}

impl SlotTable {
    pub(crate) fn new() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, id: usize) -> Option<&Slot> {
        let (chunk, offset) = locate(id);
        self.chunks.get(chunk)?.get()?.get(offset)?.get()
    }

    /// Appends a slot and returns its id. Returns `None` only if the table is
    /// full (more points than hnsw_rs can hold) or appends raced, which the
    /// caller's single-writer discipline rules out.
    pub(crate) fn push(&self, slot: Slot) -> Option<usize> {
        let id = self.len.load(Ordering::Acquire);
        let (chunk, offset) = locate(id);
        let chunk_ref = self.chunks.get(chunk)?.get_or_init(|| {
            (0..FIRST_CHUNK << chunk)
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        chunk_ref.get(offset)?.set(slot).ok()?;
        self.len.store(id + 1, Ordering::Release);
        Some(id)
    }

    /// Iterates `(id, slot)` over the slots present when the call started.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Slot)> {
        (0..self.len()).filter_map(|id| self.get(id).map(|s| (id, s)))
    }
}

impl fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTable")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hnsw_rs::prelude::PointId;

    #[test]
    fn locate_is_a_bijection_onto_chunk_offsets() {
        let mut expected = (0, 0);
        for id in 0..FIRST_CHUNK * 20 {
            assert_eq!(locate(id), expected, "id {id}");
            expected.1 += 1;
            if expected.1 == FIRST_CHUNK << expected.0 {
                expected = (expected.0 + 1, 0);
            }
        }
        // The last representable id still falls in the last chunk.
        let last = FIRST_CHUNK * ((1 << CHUNKS) - 1) - 1;
        assert_eq!(locate(last).0, CHUNKS - 1);
        const { assert!(FIRST_CHUNK * ((1 << CHUNKS) - 1) > i32::MAX as usize) };
    }

    #[test]
    fn push_then_get_across_chunk_boundaries() {
        let table = SlotTable::new();
        let n = FIRST_CHUNK * 3 + 5;
        for i in 0..n {
            let point = Arc::new(Point::new(vec![i as f32], i, PointId(0, i as i32)));
            let id = table.push(Slot::new(Arc::from(i.to_string()), point, true));
            assert_eq!(id, Some(i));
        }
        assert_eq!(table.len(), n);
        assert!(table.get(n).is_none());
        for (id, slot) in table.iter() {
            assert_eq!(&*slot.key, id.to_string());
            assert_eq!(slot.vector(), &[id as f32]);
        }
        let slot = table.get(FIRST_CHUNK).expect("pushed above");
        assert!(slot.kill());
        assert!(!slot.kill());
        assert!(!slot.is_live());
    }
}
