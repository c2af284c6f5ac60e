//! Append-only tables indexed by point id, readable without any lock: the
//! slot table (point id -> key and tombstone) and the graph's node table.
//!
//! Searches read both for every node they visit, so they must not take a
//! lock that a writer could hold (a writer waiting on a fair `RwLock` also
//! stalls every later reader). Point ids are dense and only grow, so a table
//! is a fixed array of geometrically growing chunks, each allocated once
//! through `OnceLock`: reads are two acquire loads, appends never move
//! existing entries, and no `unsafe` is needed. (Crates such as `boxcar` do
//! the same, but are outside this module's allowed dependencies.)

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Size of chunk 0; chunk `c` holds `FIRST_CHUNK << c` slots.
const FIRST_CHUNK_BITS: u32 = 10;
pub(crate) const FIRST_CHUNK: usize = 1 << FIRST_CHUNK_BITS;
/// `FIRST_CHUNK * (2^23 - 1)` slots exceeds `u32::MAX`, the most points the
/// graph can address (its links are `u32`), so a table never runs out first.
pub(crate) const CHUNKS: usize = 23;

/// Maps a point id to (chunk, offset). Chunk `c` starts at
/// `FIRST_CHUNK * (2^c - 1)`, so `id / FIRST_CHUNK + 1` lies in `[2^c, 2^(c+1))`.
pub(crate) fn locate(id: usize) -> (usize, usize) {
    let j = id / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - j.leading_zeros()) as usize;
    let offset = id - FIRST_CHUNK * ((1 << chunk) - 1);
    (chunk, offset)
}

/// The key side of one point of a generation's graph (the vector is in the
/// graph's node of the same id).
pub(crate) struct Slot {
    pub(crate) key: Arc<str>,
    /// False once the key was removed or re-inserted. Never becomes true again.
    live: AtomicBool,
}

impl Slot {
    pub(crate) fn new(key: Arc<str>, live: bool) -> Self {
        Self {
            key,
            live: AtomicBool::new(live),
        }
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

/// The slot table of a generation.
pub(crate) type SlotTable = AppendTable<Slot>;

/// Append-only, lock-free-read table.
///
/// Invariant: entries `0..len` are all set; `len` is published with release
/// ordering after the entry, so a reader that sees `len` also sees the entry.
/// Appends must be serialised by the caller (the index's writer lock, or sole
/// ownership of a generation still under construction).
pub(crate) struct AppendTable<T> {
    chunks: [OnceLock<Box<[OnceLock<T>]>>; CHUNKS],
    len: AtomicUsize,
}

impl<T> AppendTable<T> {
    pub(crate) fn new() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, id: usize) -> Option<&T> {
        let (chunk, offset) = locate(id);
        self.chunks.get(chunk)?.get()?.get(offset)?.get()
    }

    /// Appends an entry and returns its id. Returns `None` only if the table
    /// is full (more than `u32::MAX` points) or appends raced, which the
    /// caller's single-writer discipline rules out.
    pub(crate) fn push(&self, slot: T) -> Option<usize> {
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

    /// Iterates `(id, entry)` over the entries present when the call started.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        (0..self.len()).filter_map(|id| self.get(id).map(|s| (id, s)))
    }
}

impl<T> fmt::Debug for AppendTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendTable")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        const { assert!(FIRST_CHUNK * ((1 << CHUNKS) - 1) > u32::MAX as usize) };
    }

    #[test]
    fn push_then_get_across_chunk_boundaries() {
        let table = SlotTable::new();
        let n = FIRST_CHUNK * 3 + 5;
        for i in 0..n {
            let id = table.push(Slot::new(Arc::from(i.to_string()), true));
            assert_eq!(id, Some(i));
        }
        assert_eq!(table.len(), n);
        assert!(table.get(n).is_none());
        for (id, slot) in table.iter() {
            assert_eq!(&*slot.key, id.to_string());
        }
        let slot = table.get(FIRST_CHUNK).expect("pushed above");
        assert!(slot.kill());
        assert!(!slot.kill());
        assert!(!slot.is_live());
    }
}
