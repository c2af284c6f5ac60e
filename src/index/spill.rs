//! Full-precision vectors of a quantized graph, kept off the heap.
//!
//! A quantized graph walks codes (a quarter or half of the bytes) and reads
//! full-precision vectors only to re-rank what a walk found and to answer
//! `vector`. Keeping those vectors on the heap would cost more than the
//! codes save, and they are already durable in the store, so they live in
//! files instead: unlinked temporary files in the data dir (nothing is left
//! behind by a crash, and nothing is ever read back after a restart: the
//! index is rebuilt from its dump or the store), mapped read-only. The pages
//! re-ranking touches are page cache, which the kernel reclaims under
//! pressure and a pod's anonymous-memory limit does not count the same way
//! as heap; the heap holds only the codes and the links.
//!
//! Reads must not lock (searches run beside the single writer), so the
//! files follow the slot tables' layout: geometrically growing segments,
//! each created once and never moved, and a length published with release
//! ordering after the bytes are written. Writes go through `pwrite`, never
//! through the mapping, which stays read-only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{Advice, Mmap};

use super::slots::{AppendTable, CHUNKS, FIRST_CHUNK, locate};

/// Where a quantized graph keeps its full-precision vectors.
#[derive(Debug)]
pub(crate) enum FullVectors {
    /// On the heap (no directory configured: tools and unit tests).
    Heap(Box<AppendTable<Box<[f32]>>>),
    /// In files under a directory, mapped read-only. (Both variants are
    /// boxed: their chunk tables are large, and a graph holds one.)
    Mapped(Box<MappedVectors>),
}

impl FullVectors {
    pub(crate) fn new(dir: Option<&Path>) -> Self {
        match dir {
            Some(dir) => Self::Mapped(Box::new(MappedVectors::new(dir))),
            None => Self::Heap(Box::new(AppendTable::new())),
        }
    }

    pub(crate) fn get(&self, id: usize) -> Option<&[f32]> {
        match self {
            Self::Heap(table) => table.get(id).map(|v| &v[..]),
            Self::Mapped(mapped) => mapped.get(id),
        }
    }

    /// Appends a vector and returns its id. Appends must be serialised by
    /// the caller.
    pub(crate) fn push(&self, vector: Box<[f32]>) -> io::Result<usize> {
        match self {
            Self::Heap(table) => table
                .push(vector)
                .ok_or_else(|| io::Error::other("the vector table is full")),
            Self::Mapped(mapped) => mapped.push(&vector),
        }
    }

    /// `(heap bytes, mapped bytes)` of the vectors held.
    pub(crate) fn bytes(&self) -> (usize, usize) {
        match self {
            Self::Heap(table) => (table.iter().map(|(_, v)| v.len() * 4).sum(), 0),
            Self::Mapped(mapped) => (0, mapped.len() * mapped.dim().unwrap_or(0) * 4),
        }
    }
}

/// Vectors in unlinked files under `dir`, mapped read-only.
///
/// Invariant: vectors `0..len` are written to their segment's file, whose
/// mapping covers the whole segment; no byte of a published vector is
/// written again, so slices handed out never change under a reader.
pub(crate) struct MappedVectors {
    dir: PathBuf,
    /// Set by the first push; every later vector has the same length (the
    /// index checks dimensions before a vector reaches the graph).
    dim: OnceLock<usize>,
    segments: [OnceLock<Segment>; CHUNKS],
    len: AtomicUsize,
}

struct Segment {
    file: File,
    map: Mmap,
}

impl std::fmt::Debug for MappedVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedVectors")
            .field("dir", &self.dir)
            .field("dim", &self.dim.get())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl MappedVectors {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            dim: OnceLock::new(),
            segments: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn dim(&self) -> Option<usize> {
        self.dim.get().copied()
    }

    fn get(&self, id: usize) -> Option<&[f32]> {
        if id >= self.len() {
            return None;
        }
        let dim = self.dim()?;
        let (chunk, offset) = locate(id);
        let segment = self.segments.get(chunk)?.get()?;
        let bytes = segment.map.get(offset * dim * 4..(offset + 1) * dim * 4)?;
        // The mapping is page-aligned and every vector starts at a multiple
        // of 4 bytes, so the cast cannot fail; `ok()` keeps it panic-free.
        bytemuck::try_cast_slice(bytes).ok()
    }

    fn push(&self, vector: &[f32]) -> io::Result<usize> {
        let dim = *self.dim.get_or_init(|| vector.len());
        if vector.len() != dim || dim == 0 {
            return Err(io::Error::other(format!(
                "a vector of {} dimensions in a file of {dim}",
                vector.len()
            )));
        }
        let id = self.len();
        let (chunk, offset) = locate(id);
        let slot = self
            .segments
            .get(chunk)
            .ok_or_else(|| io::Error::other("the vector files are full"))?;
        if slot.get().is_none() {
            let segment = Segment::create(&self.dir, (FIRST_CHUNK << chunk) * dim * 4)?;
            // Appends are serialised, so nobody set it meanwhile.
            let _ = slot.set(segment);
        }
        let segment = slot
            .get()
            .ok_or_else(|| io::Error::other("vector segment missing"))?;
        let at = u64::try_from(offset * dim * 4).map_err(io::Error::other)?;
        segment
            .file
            .write_all_at(bytemuck::cast_slice(vector), at)?;
        self.len.store(id + 1, Ordering::Release);
        Ok(id)
    }
}

impl Segment {
    fn create(dir: &Path, bytes: usize) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Unlinked at once (O_TMPFILE where the file system has it): the
        // file lives as long as this handle, so crashes leave nothing.
        let file = tempfile::tempfile_in(dir)?;
        // Sparse: blocks are allocated as vectors are written.
        file.set_len(u64::try_from(bytes).map_err(io::Error::other)?)?;
        let map = map_read_only(&file)?;
        // Re-ranking reads a few scattered vectors per query: read-ahead
        // would pull in pages nobody asked for.
        map.advise(Advice::Random)?;
        Ok(Self { file, map })
    }
}

#[expect(
    unsafe_code,
    reason = "mapping a file is unsafe only if someone else changes it under the \
              mapping; see the SAFETY comment"
)]
fn map_read_only(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is an unlinked temporary that only this process holds
    // (no path reaches it), it is never truncated, and the only writes to it
    // (`MappedVectors::push`) fill bytes past every published vector before
    // publishing them, so no byte a reader can see ever changes.
    unsafe { Mmap::map(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_across_segments_off_the_heap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let vectors = FullVectors::new(Some(dir.path()));
        let dim = 5;
        let n = FIRST_CHUNK * 3 + 7; // spans three segments
        for i in 0..n {
            let v: Box<[f32]> = (0..dim).map(|d| (i * dim + d) as f32).collect();
            assert_eq!(vectors.push(v).expect("push"), i);
        }
        for i in [0, 1, FIRST_CHUNK - 1, FIRST_CHUNK, n - 1] {
            let v = vectors.get(i).expect("published");
            assert_eq!(v.len(), dim);
            assert_eq!(v[0], (i * dim) as f32);
            assert_eq!(v[dim - 1], (i * dim + dim - 1) as f32);
        }
        assert!(vectors.get(n).is_none());
        assert_eq!(vectors.bytes(), (0, n * dim * 4));
        // Another length is refused, and nothing is published for it.
        assert!(vectors.push(vec![1.0; dim + 1].into()).is_err());
        assert!(vectors.get(n).is_none());
        // The files are unlinked: nothing is left in the directory.
        let left = std::fs::read_dir(dir.path()).expect("read dir").count();
        assert_eq!(left, 0);
    }

    #[test]
    fn heap_vectors_count_as_heap() {
        let vectors = FullVectors::new(None);
        assert_eq!(vectors.push(vec![1.0, 2.0].into()).expect("push"), 0);
        assert_eq!(vectors.get(0), Some(&[1.0, 2.0][..]));
        assert_eq!(vectors.bytes(), (8, 0));
    }

    #[test]
    fn an_unusable_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let vectors = FullVectors::new(Some(&file));
        assert!(vectors.push(vec![1.0; 4].into()).is_err());
        assert!(vectors.get(0).is_none());
    }
}
