//! The HNSW graph (Malkov & Yashunin, 2016) the index searches: layered
//! proximity graphs, greedy descent through the upper layers, a best-first
//! beam of width `ef` on layer 0, and the neighbour-selection heuristic on
//! insert.
//!
//! **Why our own graph rather than hnsw_rs** (which this index used until
//! issue 4 measured it; bench/RESULTS.md at git 7b01726): at 100K x 1280-d,
//! hnsw_rs answered 0.44-0.57x the queries per second of hnswlib at equal
//! recall and took 7,253 bytes per 5,120-byte vector. `perf annotate` put
//! over half of its `search_layer` self-time on two loads that read a
//! neighbour's id through two pointers (a neighbour list holds
//! `Arc<PointWithOrder>` -> `Arc<Point>` -> id), before a SipHash map
//! lookup for the visited check; each candidate also allocates two `Arc`s.
//! Here a node's links are `u32` ids stored inline in one array per node,
//! the visited set is a reusable per-thread array of epoch tags, candidates
//! are plain `(similarity, id)` pairs (no allocation per candidate), and a
//! node costs its vector plus `4 * (2M + 1)` bytes of layer-0 links.
//!
//! **Concurrency without `unsafe`.** Nodes live in an [`AppendTable`]
//! (lock-free reads, appends by one writer at a time). A link list is an
//! array of `AtomicU32`: its length slot first, then the ids. Writers change
//! a node's lists only under that node's mutex and never hold two node
//! mutexes at once; readers take no lock and may see a list mid-rewrite,
//! i.e. a mix of old and new ids. Every id ever written refers to a node
//! that was published before it was linked anywhere, so a reader only ever
//! sees valid ids, and a mixed list costs at most a little recall for that
//! one query (hnswlib makes the same trade with plain loads). Inserting a
//! batch publishes all its nodes first (one writer), then links them in
//! parallel (a new graph's first nodes one by one; see `Generation`).
//!
//! **Codes and prefetch.** A node holds its vector as the walk compares it:
//! f32, or an f16 / int8 code (`quant`), whose full-precision vector a
//! quantized graph keeps apart and reads only to re-rank what a walk found.
//! Expanding a node first asks the CPU for all its unvisited neighbours'
//! codes (`prefetch`), then compares them, so their cache misses overlap;
//! at 100K x 1280-d, int8, ef 24, one thread, searches answer 2.2x the
//! queries per second they do without it (`lookbook-bench bench-index`).
//!
//! **Determinism.** A node's level is a hash of its id, so the same inserts
//! in the same order build the same graph (parallel linking aside).

use std::cell::RefCell;
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use rayon::prelude::*;

use super::IndexError;
use super::distance::Metric;
use super::quant::{Code, Probe, Quantization};
use super::slots::AppendTable;
use super::spill::FullVectors;

/// `entry` when the graph is empty.
const NO_ENTRY: u64 = u64::MAX;

/// Seed of the level hash, fixed so builds are reproducible.
const LEVEL_SEED: u64 = 0x6c6f_6f6b_626f_6f6b;

/// Flood-and-link passes per layer in `Graph::connect_unreachable`: one
/// suffices unless a replaced link cut something off.
const REPAIR_ROUNDS: usize = 4;

/// Reached nodes tried as hosts for each unreachable one, the most similar
/// first; any with room, or with a link to spare, will do.
const HOST_CANDIDATES: usize = 32;

/// First bytes of a serialised graph; the digit is the layout version.
const MAGIC: &[u8; 8] = b"LBHNSW01";

/// A node and its similarity (the graph's metric) to the current query.
/// `Ord`: greater = more similar; ties by id so orders are total and
/// deterministic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Near {
    pub(crate) sim: f32,
    pub(crate) id: u32,
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.sim
            .total_cmp(&other.sim)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Near {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Near {}

/// See [`Graph::heap_bytes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphBytes {
    /// Heap bytes of what the walk reads: nodes, codes and link lists.
    pub walk: usize,
    /// Heap bytes of full-precision vectors kept beside codes.
    pub full: usize,
    /// Bytes of full-precision vectors kept in mapped files (page cache as
    /// far as re-ranking touches them, not heap).
    pub mapped: usize,
}

/// Why a node could not be published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error("the graph holds as many nodes as u32 ids address")]
    Full,
    #[error("the node and vector tables are out of step (concurrent writers?)")]
    OutOfStep,
    #[error("writing the full-precision vector: {0}")]
    VectorFile(#[source] io::Error),
}

impl From<PushError> for IndexError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::VectorFile(source) => IndexError::VectorFile { source },
            PushError::Full | PushError::OutOfStep => IndexError::Internal {
                reason: e.to_string(),
            },
        }
    }
}

/// Shape of a graph: what a dump must match to be loaded into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Links per node on layers >= 1 (and chosen per layer on insert).
    pub(crate) m: usize,
    /// Candidate list size while inserting.
    pub(crate) ef_construction: usize,
    /// Number of layers; levels are `0..layers`.
    pub(crate) layers: usize,
    /// How vectors are compared: links chosen under one metric are not a
    /// graph for another.
    pub(crate) metric: Metric,
    /// How nodes keep the vectors the walk compares (see `quant`). Not part
    /// of what a dump must match: a dump holds the full-precision vectors
    /// and the codes are made again as it is read.
    pub(crate) quantization: Quantization,
}

struct Node {
    /// The vector as the walk compares it: the vector itself when the graph
    /// is not quantized, else its code (the full vector is in `Graph::full`).
    code: Code,
    /// Layer 0's list, then one per upper layer up to `level`; each list is
    /// its length followed by `capacity` id slots (see `Graph::span`).
    links: Box<[AtomicU32]>,
    level: u8,
    /// Held while this node's lists are written. Never held together with
    /// another node's lock, so linking cannot deadlock.
    lock: Mutex<()>,
}

/// Reusable visited set: a slot per node holding the epoch it was last
/// visited in, so clearing it between searches is one increment.
#[derive(Default)]
struct Visited {
    tags: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn start(&mut self, nodes: usize) {
        if self.tags.len() < nodes {
            self.tags.resize(nodes, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `id` visited; false if it already was. Nodes published after
    /// `start` (beyond the tags) count as visited: the search skips them.
    fn insert(&mut self, id: u32) -> bool {
        match self.tags.get_mut(id as usize) {
            Some(tag) if *tag != self.epoch => {
                *tag = self.epoch;
                true
            }
            _ => false,
        }
    }
}

/// Neighbours whose codes are asked for before any is compared (a
/// layer-0 list of the default `M` = 16 holds 32).
const PREFETCH_GROUP: usize = 32;

thread_local! {
    /// One visited set per thread, kept between searches (a search never
    /// starts another on the same thread while it holds this borrow). Its
    /// size is 4 bytes per node of the largest graph the thread searched.
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A graph's link lists, node count and entry point at one moment (see
/// `Graph::snapshot_links`). With the vectors, which never change once
/// published, it is the whole graph as of that moment.
#[derive(Debug)]
pub(crate) struct LinkSnapshot {
    /// Nodes `0..len` are in the snapshot.
    len: usize,
    entry: Option<(u32, usize)>,
    /// Per node, per layer from 0 to its level: the list's length, then
    /// its ids (all `< len`).
    words: Vec<u32>,
}

impl LinkSnapshot {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

pub(crate) struct Graph {
    shape: Shape,
    /// Capacity of layer-0 lists (`2 * m`, as in the paper and hnswlib).
    m0: usize,
    /// `1 / ln(m)`: levels are `floor(-ln(u) * level_mult)`.
    level_mult: f64,
    nodes: AppendTable<Node>,
    /// Full-precision vectors by node id, when nodes hold codes (empty
    /// otherwise): for re-ranking what a walk found and for `vector`. In
    /// mapped files when the index has a vector directory (see `spill`).
    /// Appended before the node, so a published node always has one.
    full: FullVectors,
    /// `(level << 32) | id` of the entry point, or `NO_ENTRY`. Only ever
    /// replaced by a node of a higher level, under `entry_lock`.
    entry: AtomicU64,
    entry_lock: Mutex<()>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("shape", &self.shape)
            .field("nodes", &self.len())
            .field("entry", &self.entry())
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// An empty graph. `shape` must be valid (`m >= 2`, `layers` in 1..=255);
    /// `IndexParams::sanitized` guarantees that.
    #[cfg(test)]
    pub(crate) fn new(shape: Shape) -> Self {
        Self::with_vector_dir(shape, None)
    }

    /// An empty graph whose full-precision vectors, when it keeps codes,
    /// go to mapped files in `vector_dir` (on the heap if `None`).
    pub(crate) fn with_vector_dir(shape: Shape, vector_dir: Option<&Path>) -> Self {
        let m = shape.m.max(2);
        let shape = Shape {
            m,
            ef_construction: shape.ef_construction.max(1),
            layers: shape.layers.clamp(1, usize::from(u8::MAX)),
            metric: shape.metric,
            quantization: shape.quantization,
        };
        Self {
            shape,
            m0: 2 * m,
            level_mult: 1.0 / (m as f64).ln(),
            nodes: AppendTable::new(),
            full: FullVectors::new(vector_dir),
            entry: AtomicU64::new(NO_ENTRY),
            entry_lock: Mutex::new(()),
        }
    }

    pub(crate) fn metric(&self) -> Metric {
        self.shape.metric
    }

    /// Nodes published so far (ids `0..len`).
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A node's full-precision vector.
    pub(crate) fn vector(&self, id: usize) -> Option<&[f32]> {
        match self.shape.quantization {
            Quantization::None => self.nodes.get(id)?.code.as_f32(),
            Quantization::F16 | Quantization::Int8 => self.full.get(id),
        }
    }

    /// Bytes of the graph: on the heap, what the walk reads (nodes: codes
    /// and link lists) and the full-precision vectors kept beside quantized
    /// codes for re-ranking when they are not mapped; and the bytes of
    /// mapped vectors. The tables' own spines are not counted.
    pub(crate) fn heap_bytes(&self) -> GraphBytes {
        let (full, mapped) = self.full.bytes();
        GraphBytes {
            walk: self
                .nodes
                .iter()
                .map(|(_, n)| n.code.heap_bytes() + n.links.len() * 4 + size_of::<Node>())
                .sum(),
            full,
            mapped,
        }
    }

    /// A node as the probe of comparisons against other nodes' codes.
    fn probe_of<'a>(&'a self, id: u32, node: &'a Node) -> Probe<'a> {
        node.code.as_probe(self.full.get(id as usize))
    }

    /// `(id, level)` of the entry point.
    pub(crate) fn entry(&self) -> Option<(u32, usize)> {
        let packed = self.entry.load(Ordering::Acquire);
        (packed != NO_ENTRY).then_some((packed as u32, (packed >> 32) as usize))
    }

    fn set_entry(&self, id: u32, level: usize) {
        self.entry
            .store(((level as u64) << 32) | u64::from(id), Ordering::Release);
    }

    /// Offset of a layer's list in `Node::links` and its capacity.
    fn span(&self, layer: usize) -> (usize, usize) {
        if layer == 0 {
            (0, self.m0)
        } else {
            (self.m0 + 1 + (layer - 1) * (self.shape.m + 1), self.shape.m)
        }
    }

    fn links_len(&self, level: usize) -> usize {
        self.m0 + 1 + level * (self.shape.m + 1)
    }

    fn level_for(&self, id: usize) -> usize {
        let h = splitmix64(id as u64 ^ LEVEL_SEED);
        // Uniform in (0, 1): 53 random bits, shifted off zero.
        let u = ((h >> 11) as f64 + 0.5) / (1_u64 << 53) as f64;
        let level = (-u.ln() * self.level_mult).floor();
        // `as` saturates; the cast of a finite non-negative float is exact here.
        (level as usize).min(self.shape.layers - 1)
    }

    /// A node's ids on one layer (empty above its level).
    fn neighbours<'a>(&self, node: &'a Node, layer: usize) -> &'a [AtomicU32] {
        if layer > usize::from(node.level) {
            return &[];
        }
        let (offset, cap) = self.span(layer);
        let count = (node.links[offset].load(Ordering::Acquire) as usize).min(cap);
        &node.links[offset + 1..offset + 1 + count]
    }

    /// Publishes a node without linking it; returns its id. Appends must be
    /// serialised by the caller. Fails past `u32::MAX` nodes and when the
    /// full-precision vector cannot be written to its file.
    pub(crate) fn push(&self, vector: &[f32]) -> Result<usize, PushError> {
        let id = self.len();
        u32::try_from(id).map_err(|_| PushError::Full)?;
        let level = self.level_for(id);
        self.push_node(vector.into(), level)
    }

    fn push_node(&self, vector: Box<[f32]>, level: usize) -> Result<usize, PushError> {
        let links = (0..self.links_len(level))
            .map(|_| AtomicU32::new(0))
            .collect();
        let code = match self.shape.quantization {
            Quantization::None => Code::F32(vector),
            quantization => {
                let code = Code::encode(quantization, &vector);
                // Ids of both tables advance together (one writer appends
                // to both), so the node pushed next gets this id.
                if self.full.push(vector).map_err(PushError::VectorFile)? != self.nodes.len() {
                    return Err(PushError::OutOfStep);
                }
                code
            }
        };
        self.nodes
            .push(Node {
                code,
                links,
                // `level < layers <= 255` (see `new`).
                level: u8::try_from(level).map_err(|_| PushError::OutOfStep)?,
                lock: Mutex::new(()),
            })
            .ok_or(PushError::Full)
    }

    /// Publishes and links one node. Appends must be serialised.
    #[cfg(test)]
    pub(crate) fn insert(&self, vector: &[f32]) -> Option<usize> {
        let id = self.push(vector).ok()?;
        self.link(id);
        Some(id)
    }

    /// Connects a published node into the graph. May run concurrently with
    /// searches and with `link` of other nodes.
    pub(crate) fn link(&self, id: usize) {
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        let Ok(id32) = u32::try_from(id) else {
            return;
        };
        let level = usize::from(node.level);
        let (entry, top) = match self.entry() {
            Some(entry) => entry,
            None => {
                let _entry = self.entry_lock.lock();
                match self.entry() {
                    Some(entry) => entry,
                    None => {
                        self.set_entry(id32, level);
                        return;
                    }
                }
            }
        };
        if entry == id32 {
            return;
        }
        let probe = self.probe_of(id32, node);
        let query = &probe;
        let Some(mut current) = self.near(query, entry) else {
            return;
        };
        for layer in (level + 1..=top).rev() {
            current = self.greedy(query, current, layer);
        }
        let mut entries = vec![current];
        let mut chosen_per_layer = Vec::with_capacity(level.min(top) + 1);
        for layer in (0..=level.min(top)).rev() {
            let found: Vec<Near> = self
                .beam(query, &entries, self.shape.ef_construction, layer)
                .into_iter()
                .filter(|n| n.id != id32)
                .collect();
            chosen_per_layer.push((layer, self.select(&found, self.shape.m)));
            if !found.is_empty() {
                entries = found;
            }
        }
        // Every list of this node is set before any back-link to it is made.
        // A back-link is the only way another insert can reach this node.
        // Reached on an upper layer while its layer-0 list is still empty,
        // it would hand a concurrent insert a layer-0 beam of one node, and
        // that insert would keep a single link for good, leaving its product
        // all but unfindable (one node in a few builds under CPU contention;
        // see `preempted_parallel_linking_leaves_every_point_findable`).
        for (layer, chosen) in &chosen_per_layer {
            self.set_links(id32, node, *layer, chosen);
        }
        for (layer, chosen) in &chosen_per_layer {
            for near in chosen {
                self.connect(near.id, Near { id: id32, ..*near }, *layer);
            }
        }
        if level > top {
            let _entry = self.entry_lock.lock();
            if self.entry().is_none_or(|(_, top)| level > top) {
                self.set_entry(id32, level);
            }
        }
    }

    fn near(&self, query: &Probe<'_>, id: u32) -> Option<Near> {
        let node = self.nodes.get(id as usize)?;
        Some(Near {
            sim: query.similarity(self.shape.metric, &node.code),
            id,
        })
    }

    /// Greedy walk on one layer towards the query (beam of width one).
    fn greedy(&self, query: &Probe<'_>, mut current: Near, layer: usize) -> Near {
        loop {
            let Some(node) = self.nodes.get(current.id as usize) else {
                return current;
            };
            let mut moved = false;
            for slot in self.neighbours(node, layer) {
                if let Some(near) = self.near(query, slot.load(Ordering::Relaxed))
                    && near.sim > current.sim
                {
                    current = near;
                    moved = true;
                }
            }
            if !moved {
                return current;
            }
        }
    }

    /// Best-first search of one layer from `entries`; the best `ef` nodes
    /// found, most similar first.
    fn beam(&self, query: &Probe<'_>, entries: &[Near], ef: usize, layer: usize) -> Vec<Near> {
        let ef = ef.max(1);
        VISITED.with_borrow_mut(|visited| {
            visited.start(self.len());
            let mut candidates = BinaryHeap::with_capacity(ef * 2);
            // Min-heap by similarity: the top is the worst result kept.
            let mut results: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(ef + 1);
            for &entry in entries {
                if visited.insert(entry.id) {
                    candidates.push(entry);
                    results.push(Reverse(entry));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
            while let Some(candidate) = candidates.pop() {
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0.sim);
                if results.len() >= ef && candidate.sim < worst {
                    break;
                }
                let Some(node) = self.nodes.get(candidate.id as usize) else {
                    continue;
                };
                // The unvisited neighbours first, asking for their codes
                // as they are found; then the comparisons, whose cache
                // misses now overlap instead of following one another.
                for group in self.neighbours(node, layer).chunks(PREFETCH_GROUP) {
                    let mut fresh = [0_u32; PREFETCH_GROUP];
                    let mut count = 0;
                    for slot in group {
                        let id = slot.load(Ordering::Relaxed);
                        if visited.insert(id)
                            && let Some(neighbour) = self.nodes.get(id as usize)
                        {
                            neighbour.code.prefetch();
                            fresh[count] = id;
                            count += 1;
                        }
                    }
                    for &id in &fresh[..count] {
                        let Some(near) = self.near(query, id) else {
                            continue;
                        };
                        let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0.sim);
                        if results.len() < ef || near.sim > worst {
                            candidates.push(near);
                            results.push(Reverse(near));
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            // Ascending `Reverse` order is descending similarity.
            results.into_sorted_vec().into_iter().map(|r| r.0).collect()
        })
    }

    /// The `ef` nodes nearest to `query` that the graph finds (fewer only if
    /// the graph has fewer), most similar first by what the walk compares:
    /// exact similarities unless the graph [`is_quantized`](Self::is_quantized),
    /// similarities of codes if it is (the caller re-ranks what it keeps,
    /// with [`vector`](Self::vector)).
    pub(crate) fn find(&self, query: &[f32], ef: usize) -> Vec<Near> {
        let probe = Probe::of_query(self.shape.quantization, query);
        self.walk(&probe, ef)
    }

    /// Whether [`find`](Self::find) ranks by codes rather than vectors.
    pub(crate) fn is_quantized(&self) -> bool {
        self.shape.quantization != Quantization::None
    }

    /// [`find`](Self::find) with every result re-ranked exactly.
    #[cfg(test)]
    pub(crate) fn search(&self, query: &[f32], ef: usize) -> Vec<Near> {
        let mut found = self.find(query, ef);
        if self.is_quantized() {
            // As in `beam`: ask for every vector, then compare.
            for near in &found {
                if let Some(vector) = self.vector(near.id as usize) {
                    super::prefetch::prefetch(vector);
                }
            }
            for near in &mut found {
                if let Some(vector) = self.vector(near.id as usize) {
                    near.sim = self.shape.metric.similarity(query, vector);
                }
            }
            found.sort_unstable_by(|a, b| b.cmp(a));
        }
        found
    }

    /// Descent through the upper layers and a layer-0 beam, comparing codes.
    fn walk(&self, probe: &Probe<'_>, ef: usize) -> Vec<Near> {
        let Some((entry, top)) = self.entry() else {
            return Vec::new();
        };
        let Some(mut current) = self.near(probe, entry) else {
            return Vec::new();
        };
        for layer in (1..=top).rev() {
            current = self.greedy(probe, current, layer);
        }
        self.beam(probe, &[current], ef, 0)
    }

    /// The neighbour-selection heuristic (the paper's Algorithm 4 without
    /// extension or pruned fill-up, as in hnswlib): walking candidates from
    /// the most similar, keep one unless a kept node is more similar to it
    /// than the base is. Spreads links over directions instead of spending
    /// them all inside one dense cluster.
    fn select(&self, candidates: &[Near], m: usize) -> Vec<Near> {
        if candidates.len() <= m {
            return candidates.to_vec();
        }
        let mut kept: Vec<(Near, &Node)> = Vec::with_capacity(m);
        for &candidate in candidates {
            if kept.len() >= m {
                break;
            }
            let Some(node) = self.nodes.get(candidate.id as usize) else {
                continue;
            };
            let probe = self.probe_of(candidate.id, node);
            if kept
                .iter()
                .all(|(_, k)| probe.similarity(self.shape.metric, &k.code) <= candidate.sim)
            {
                kept.push((candidate, node));
            }
        }
        kept.into_iter().map(|(near, _)| near).collect()
    }

    fn write_list(&self, node: &Node, layer: usize, ids: impl ExactSizeIterator<Item = u32>) {
        let (offset, cap) = self.span(layer);
        let count = ids.len().min(cap);
        for (slot, id) in node.links[offset + 1..offset + 1 + count].iter().zip(ids) {
            slot.store(id, Ordering::Relaxed);
        }
        // Release: a reader that sees the new length sees these ids.
        node.links[offset].store(count as u32, Ordering::Release);
    }

    /// Sets a new node's list on `layer`. A concurrent `link` may already
    /// have connected other nodes to it there; those are merged in.
    fn set_links(&self, node_id: u32, node: &Node, layer: usize, chosen: &[Near]) {
        let _lock = node.lock.lock();
        let existing: Vec<u32> = self
            .neighbours(node, layer)
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|id| chosen.iter().all(|c| c.id != *id))
            .collect();
        if existing.is_empty() {
            self.write_list(node, layer, chosen.iter().map(|n| n.id));
            return;
        }
        let (_, cap) = self.span(layer);
        let mut all: Vec<Near> = chosen.to_vec();
        let probe = self.probe_of(node_id, node);
        all.extend(existing.iter().filter_map(|&id| self.near(&probe, id)));
        all.sort_unstable_by(|a, b| b.cmp(a));
        let kept = self.select(&all, cap);
        self.write_list(node, layer, kept.iter().map(|n| n.id));
    }

    /// Adds `new` (with its similarity to `target`) to `target`'s list on
    /// `layer`, re-selecting the list with the heuristic when it is full.
    fn connect(&self, target: u32, new: Near, layer: usize) {
        let Some(node) = self.nodes.get(target as usize) else {
            return;
        };
        if layer > usize::from(node.level) {
            return;
        }
        let (offset, cap) = self.span(layer);
        let _lock = node.lock.lock();
        let current = self.neighbours(node, layer);
        if current.iter().any(|s| s.load(Ordering::Relaxed) == new.id) {
            return;
        }
        let count = current.len();
        if count < cap {
            node.links[offset + 1 + count].store(new.id, Ordering::Relaxed);
            node.links[offset].store(count as u32 + 1, Ordering::Release);
            return;
        }
        let probe = self.probe_of(target, node);
        let mut all: Vec<Near> = current
            .iter()
            .filter_map(|s| self.near(&probe, s.load(Ordering::Relaxed)))
            .collect();
        all.push(new);
        all.sort_unstable_by(|a, b| b.cmp(a));
        let kept = self.select(&all, cap);
        self.write_list(node, layer, kept.iter().map(|n| n.id));
    }

    /// Makes every node reachable by a search on every layer it is on, and
    /// returns how many links it had to add. A search reaches a node on a
    /// layer along that layer's links from the entry point or from any node
    /// it reached on the layer above (where it may go down). The selection
    /// heuristic drops links when a list overflows, and now and then that
    /// leaves a node, or a small island of nodes that only link to each
    /// other, out of every such path. No search reaches them, so their
    /// products are never recommended, not even for their own embeddings
    /// (hnswlib has the same gap; Lucene repairs it after merges in much the
    /// same way). From the top layer down: a flood fill marks what is
    /// reached, and each node left over is linked from the most similar
    /// reached node that can take it (into free room first, else in place of
    /// that node's least similar link whose node keeps another incoming
    /// link). Every member of an island gets its own link: one link would
    /// make the island reachable, but a search for a member would still have
    /// to pass through another, unrelated one. A replaced link can, rarely,
    /// cut off what only it reached, so the pass repeats (a bounded number
    /// of times) until a fill reaches everything.
    ///
    /// Costs a flood fill per layer (one pass over the lists, no vector
    /// reads) plus a beam search per unreachable node; once `cancelled` is
    /// set it stops within a search, leaving the links it added. Call it
    /// while no insert runs on this graph (or see
    /// [`Self::connect_unreachable_with`]); searches may run, and see each
    /// changed list either before or after its one changed id.
    pub(crate) fn connect_unreachable(&self, cancelled: &AtomicBool) -> usize {
        self.connect_unreachable_with(cancelled, None, || ())
    }

    /// [`Self::connect_unreachable`] on a graph that inserts may change
    /// meanwhile: the fills and the searches for hosts only read, so they run
    /// without `exclusive`, and only the linking (with the incoming-link
    /// counts it relies on to replace a link safely) holds what it returns,
    /// e.g. the index's writer lock. An insert made between a fill and its
    /// linking can only make a node reachable that the fill found
    /// unreachable, which costs one superfluous link; nodes published after
    /// the fill wait for the next repair.
    ///
    /// The searches run on `pool` (else on the current rayon pool) and
    /// `exclusive` is called on this thread, never in a pool job: a writer
    /// that holds the lock while it links a batch on the same pool waits
    /// for that pool's jobs, and a pool thread blocked on the lock inside a
    /// job it took up while waiting in its own part of the batch (rayon
    /// threads run other jobs while they wait) would never finish it.
    pub(crate) fn connect_unreachable_with<G>(
        &self,
        cancelled: &AtomicBool,
        pool: Option<&rayon::ThreadPool>,
        exclusive: impl Fn() -> G,
    ) -> usize {
        let Some((_, top)) = self.entry() else {
            return 0;
        };
        let mut linked = 0;
        // Nodes reached on the layer above: a search can go down at any of
        // them, so they seed the fill of the layer below.
        let mut above = vec![false; self.len()];
        for layer in (0..=top).rev() {
            let mut reached = Vec::new();
            for _ in 0..REPAIR_ROUNDS {
                if cancelled.load(Ordering::Relaxed) {
                    return linked;
                }
                reached = self.reached_on(layer, &above);
                // Nodes published after the fill are not in `reached`.
                let missing: Vec<u32> = (0..reached.len())
                    .filter(|&id| !reached[id] && self.on_layer(id, layer))
                    .filter_map(|id| u32::try_from(id).ok())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                // The searches for hosts only read, so they run in parallel;
                // the links are then added one by one, each seeing the lists
                // the previous ones left.
                let search = || -> Vec<(u32, Vec<Near>)> {
                    missing
                        .par_iter()
                        .map(|&id| {
                            if cancelled.load(Ordering::Relaxed) {
                                return (id, Vec::new());
                            }
                            (id, self.hosts_for(id, layer, &reached))
                        })
                        .collect()
                };
                let hosts = match pool {
                    Some(pool) => pool.install(search),
                    None => search(),
                };
                if cancelled.load(Ordering::Relaxed) {
                    return linked;
                }
                let _exclusive = exclusive();
                let mut indegree = self.indegree_on(layer);
                for (id, hosts) in hosts {
                    let adopted = [false, true].into_iter().any(|replace| {
                        hosts
                            .iter()
                            .any(|host| self.adopt(host.id, id, layer, replace, &mut indegree))
                    });
                    if adopted {
                        linked += 1;
                        reached[id as usize] = true;
                    }
                }
            }
            above = reached;
        }
        linked
    }

    /// Removes every link to one level-0 node other than the entry point,
    /// so that no search reaches it; returns its id. For tests of the
    /// repair.
    #[cfg(test)]
    pub(crate) fn cut_off_a_node(&self) -> u32 {
        let entry = self.entry().expect("a graph with nodes").0;
        let orphan = (0..u32::try_from(self.len()).expect("a small test graph"))
            .find(|&id| id != entry && self.nodes.get(id as usize).is_some_and(|n| n.level == 0))
            .expect("a level-0 node");
        for id in 0..self.len() {
            let node = self.nodes.get(id).expect("published");
            for layer in 0..=usize::from(node.level) {
                let kept: Vec<u32> = self
                    .neighbours(node, layer)
                    .iter()
                    .map(|s| s.load(Ordering::Relaxed))
                    .filter(|&link| link != orphan)
                    .collect();
                self.write_list(node, layer, kept.into_iter());
            }
        }
        orphan
    }

    /// How many layer-0 links a node has.
    #[cfg(test)]
    pub(crate) fn layer0_links(&self, id: usize) -> usize {
        self.nodes
            .get(id)
            .map_or(0, |node| self.neighbours(node, 0).len())
    }

    fn on_layer(&self, id: usize, layer: usize) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|node| usize::from(node.level) >= layer)
    }

    /// Per node, whether a search gets to it on `layer`: along that layer's
    /// links from the entry point or from any node in `above` (reached on
    /// the layer above, where a search may go down).
    fn reached_on(&self, layer: usize, above: &[bool]) -> Vec<bool> {
        // The entry point only ever names a published node, so reading it
        // before the length keeps it inside `reached` even while inserts run.
        let entry = self.entry();
        let mut reached = vec![false; self.len()];
        if let Some((entry, top)) = entry
            && layer <= top
        {
            self.flood(entry, layer, &mut reached);
        }
        for (id, _) in above.iter().enumerate().filter(|(_, up)| **up) {
            if let Ok(id) = u32::try_from(id) {
                self.flood(id, layer, &mut reached);
            }
        }
        reached
    }

    /// Marks in `reached` everything `from` leads to on `layer`.
    fn flood(&self, from: u32, layer: usize, reached: &mut [bool]) {
        let mut stack = Vec::new();
        if let Some(seen) = reached.get_mut(from as usize)
            && !*seen
        {
            *seen = true;
            stack.push(from);
        }
        while let Some(id) = stack.pop() {
            let Some(node) = self.nodes.get(id as usize) else {
                continue;
            };
            for slot in self.neighbours(node, layer) {
                let next = slot.load(Ordering::Relaxed);
                if let Some(seen) = reached.get_mut(next as usize)
                    && !*seen
                {
                    *seen = true;
                    stack.push(next);
                }
            }
        }
    }

    /// Incoming links per node on `layer`.
    fn indegree_on(&self, layer: usize) -> Vec<u32> {
        let mut indegree = vec![0_u32; self.len()];
        for id in 0..self.len() {
            if let Some(node) = self.nodes.get(id) {
                for slot in self.neighbours(node, layer) {
                    if let Some(d) = indegree.get_mut(slot.load(Ordering::Relaxed) as usize) {
                        *d += 1;
                    }
                }
            }
        }
        indegree
    }

    /// Reached nodes most similar to the unreached `id` on `layer`, most
    /// similar first: the candidates to link it from (see
    /// `connect_unreachable`).
    fn hosts_for(&self, id: u32, layer: usize, reached: &[bool]) -> Vec<Near> {
        let (Some(node), Some((entry, _))) = (self.nodes.get(id as usize), self.entry()) else {
            return Vec::new();
        };
        let probe = self.probe_of(id, node);
        let query = &probe;
        let found = if layer == 0 {
            // A search goes down through the upper layers, so it starts its
            // layer-0 beam near the node, not wherever the entry point is.
            self.walk(query, self.shape.ef_construction)
        } else {
            // Its own reached neighbours start the beam near it; the entry
            // point makes sure it starts somewhere reached.
            let starts: Vec<Near> = self
                .neighbours(node, layer)
                .iter()
                .map(|slot| slot.load(Ordering::Relaxed))
                .chain(std::iter::once(entry))
                .filter(|&host| reached.get(host as usize).copied().unwrap_or(false))
                .filter_map(|host| self.near(query, host))
                .collect();
            self.beam(query, &starts, self.shape.ef_construction, layer)
        };
        found
            .into_iter()
            .filter(|host| host.id != id && reached.get(host.id as usize).copied().unwrap_or(false))
            .take(HOST_CANDIDATES)
            .collect()
    }

    /// Puts `orphan` into `host`'s list on `layer`: into free room, or, if
    /// `replace`, in place of the host's least similar link whose node has
    /// another incoming link. False if neither is possible.
    fn adopt(
        &self,
        host: u32,
        orphan: u32,
        layer: usize,
        replace: bool,
        indegree: &mut [u32],
    ) -> bool {
        let Some(node) = self.nodes.get(host as usize) else {
            return false;
        };
        if layer > usize::from(node.level) {
            return false;
        }
        let (offset, cap) = self.span(layer);
        let _lock = node.lock.lock();
        let current = self.neighbours(node, layer);
        if current
            .iter()
            .any(|slot| slot.load(Ordering::Relaxed) == orphan)
        {
            return false;
        }
        let count = current.len();
        let at = if count < cap {
            count
        } else if replace {
            let probe = self.probe_of(host, node);
            let victim = current
                .iter()
                .enumerate()
                .filter_map(|(i, slot)| {
                    let id = slot.load(Ordering::Relaxed);
                    (indegree.get(id as usize).copied()? > 1)
                        .then(|| self.near(&probe, id).map(|near| (i, near)))
                        .flatten()
                })
                .min_by(|a, b| a.1.cmp(&b.1));
            let Some((i, near)) = victim else {
                return false;
            };
            if let Some(d) = indegree.get_mut(near.id as usize) {
                *d -= 1;
            }
            i
        } else {
            return false;
        };
        // One id written in place: a concurrent reader sees the old id or
        // the new one, both valid nodes.
        node.links[offset + 1 + at].store(orphan, Ordering::Release);
        if at == count {
            node.links[offset].store(count as u32 + 1, Ordering::Release);
        }
        if let Some(d) = indegree.get_mut(orphan as usize) {
            *d += 1;
        }
        true
    }

    /// Copies what a dump needs of the graph's mutable state: the node
    /// count, the entry point and every link list. Call it while no insert
    /// runs (the index's writer lock); it costs one pass over the lists
    /// (about 130 bytes per node at `M` = 16), not over the vectors, which
    /// never change once published and are read later, while inserts go on.
    pub(crate) fn snapshot_links(&self) -> LinkSnapshot {
        // The entry point only ever names a published node: read it first.
        let entry = self.entry();
        let len = self.len();
        let mut words = Vec::with_capacity(len * (self.m0 + 2));
        for id in 0..len {
            let Some(node) = self.nodes.get(id) else {
                break;
            };
            for layer in 0..=usize::from(node.level) {
                let at = words.len();
                words.push(0);
                words.extend(
                    self.neighbours(node, layer)
                        .iter()
                        .map(|slot| slot.load(Ordering::Relaxed))
                        .filter(|&link| (link as usize) < len),
                );
                words[at] = (words.len() - at - 1) as u32;
            }
        }
        LinkSnapshot { len, entry, words }
    }

    /// Writes the graph as of `links` (see [`Self::snapshot_links`]): a
    /// header, then per node its level, its lists and its vector, all
    /// little-endian. Inserts may go on meanwhile; nodes published after the
    /// snapshot are not written.
    pub(crate) fn write_snapshot(
        &self,
        dim: usize,
        links: &LinkSnapshot,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let n = links.len;
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let (entry_id, entry_level) = match links.entry {
            Some((id, level)) if (id as usize) < n => (id, level as u32),
            Some((id, _)) => return Err(invalid(format!("entry point {id} outside {n} nodes"))),
            None if n == 0 => (u32::MAX, u32::MAX),
            None => return Err(invalid(format!("{n} nodes and no entry point"))),
        };
        out.write_all(MAGIC)?;
        for field in [
            dim as u64,
            self.shape.m as u64,
            self.shape.layers as u64,
            n as u64,
            u64::from(entry_id),
            u64::from(entry_level),
        ] {
            out.write_all(&field.to_le_bytes())?;
        }
        let mut words = links.words.iter().copied();
        let mut buf = Vec::with_capacity(dim * 4);
        for id in 0..n {
            let node = self
                .nodes
                .get(id)
                .ok_or_else(|| invalid(format!("node {id} missing")))?;
            let vector = self
                .vector(id)
                .ok_or_else(|| invalid(format!("node {id} has no vector")))?;
            if vector.len() != dim {
                return Err(invalid(format!(
                    "node {id} has {} dimensions",
                    vector.len()
                )));
            }
            buf.clear();
            buf.push(node.level);
            for _ in 0..=usize::from(node.level) {
                let count = words
                    .next()
                    .ok_or_else(|| invalid(format!("node {id}: snapshot too short")))?;
                buf.extend_from_slice(&count.to_le_bytes());
                for _ in 0..count {
                    let link = words
                        .next()
                        .ok_or_else(|| invalid(format!("node {id}: snapshot too short")))?;
                    buf.extend_from_slice(&link.to_le_bytes());
                }
            }
            for x in vector {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }

    /// Reads what [`Self::write_snapshot`] wrote, checking every field against
    /// `dim` and `shape` and every id against the node count; never panics.
    pub(crate) fn read_from(
        dim: usize,
        shape: Shape,
        vector_dir: Option<&Path>,
        input: &mut impl Read,
    ) -> Result<Self, String> {
        let mut magic = [0_u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| format!("header: {e}"))?;
        if &magic != MAGIC {
            return Err("not a lookbook graph file (bad magic)".into());
        }
        let mut header = [0_u64; 6];
        for field in &mut header {
            let mut bytes = [0_u8; 8];
            input
                .read_exact(&mut bytes)
                .map_err(|e| format!("header: {e}"))?;
            *field = u64::from_le_bytes(bytes);
        }
        let [file_dim, m, layers, n, entry_id, entry_level] = header;
        let graph = Self::with_vector_dir(shape, vector_dir);
        if (file_dim, m, layers) != (dim as u64, graph.shape.m as u64, graph.shape.layers as u64) {
            return Err(format!(
                "graph file has dim {file_dim}, m {m}, {layers} layers; expected {dim}, {}, {}",
                graph.shape.m, graph.shape.layers
            ));
        }
        if n > u64::from(u32::MAX) {
            return Err(format!("{n} nodes is more than a graph can hold"));
        }
        let n = n as usize;
        let mut word = [0_u8; 4];
        let mut read_u32 = |input: &mut dyn Read, what: &str| -> Result<u32, String> {
            input
                .read_exact(&mut word)
                .map_err(|e| format!("{what}: {e}"))?;
            Ok(u32::from_le_bytes(word))
        };
        let mut vector_bytes = vec![0_u8; dim * 4];
        for id in 0..n {
            let mut level = [0_u8; 1];
            input
                .read_exact(&mut level)
                .map_err(|e| format!("node {id}: {e}"))?;
            let level = usize::from(level[0]);
            if level >= graph.shape.layers {
                return Err(format!("node {id} has level {level}"));
            }
            let mut lists = Vec::with_capacity(level + 1);
            for layer in 0..=level {
                let count = read_u32(input, "list length")? as usize;
                let (_, cap) = graph.span(layer);
                if count > cap {
                    return Err(format!("node {id} has {count} links on layer {layer}"));
                }
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    let link = read_u32(input, "link")?;
                    if link as usize >= n {
                        return Err(format!("node {id} links to {link} of {n}"));
                    }
                    ids.push(link);
                }
                lists.push(ids);
            }
            input
                .read_exact(&mut vector_bytes)
                .map_err(|e| format!("node {id} vector: {e}"))?;
            let vector: Box<[f32]> = vector_bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            match graph.push_node(vector, level) {
                Ok(placed) if placed == id => {}
                Ok(placed) => return Err(format!("node {id} placed at {placed}")),
                Err(e) => return Err(format!("node {id}: {e}")),
            }
            let node = graph
                .nodes
                .get(id)
                .ok_or_else(|| format!("node {id} vanished"))?;
            for (layer, ids) in lists.into_iter().enumerate() {
                graph.write_list(node, layer, ids.into_iter());
            }
        }
        let mut rest = [0_u8; 1];
        if input.read(&mut rest).map_err(|e| format!("trailer: {e}"))? != 0 {
            return Err("trailing bytes after the last node".into());
        }
        match (n, entry_id, entry_level) {
            (0, id, level) if id == u64::from(u32::MAX) && level == u64::from(u32::MAX) => {}
            (0, ..) => return Err("empty graph with an entry point".into()),
            (_, id, level) => {
                let node = graph
                    .nodes
                    .get(id as usize)
                    .filter(|_| id < n as u64)
                    .ok_or_else(|| format!("entry point {id} of {n}"))?;
                if u64::from(node.level) != level {
                    return Err(format!(
                        "entry point {id} has level {} not {level}",
                        node.level
                    ));
                }
                graph.set_entry(id as u32, level as usize);
            }
        }
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dot;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let norm = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    fn shape() -> Shape {
        Shape {
            m: 8,
            ef_construction: 64,
            layers: 16,
            metric: Metric::Cosine,
            quantization: Quantization::None,
        }
    }

    fn exact(points: &[Vec<f32>], query: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<Near> = points
            .iter()
            .enumerate()
            .map(|(id, v)| Near {
                sim: dot(query, v),
                id: id as u32,
            })
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.into_iter().take(k).map(|n| n.id).collect()
    }

    fn recall(graph: &Graph, points: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut hit = 0;
        for q in queries {
            let truth = exact(points, q, 10);
            let found: Vec<u32> = graph.search(q, ef).iter().take(10).map(|n| n.id).collect();
            hit += truth.iter().filter(|id| found.contains(id)).count();
        }
        hit as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn levels_follow_the_geometric_law() {
        let graph = Graph::new(shape());
        let n = 100_000;
        let upper = (0..n).filter(|&id| graph.level_for(id) >= 1).count();
        // P(level >= 1) = 1/m.
        let expected = n as f64 / 8.0;
        assert!((upper as f64 - expected).abs() < expected * 0.05, "{upper}");
        assert!((0..n).all(|id| graph.level_for(id) < 16));
    }

    #[test]
    fn sequential_and_parallel_builds_find_true_neighbours() {
        let mut rng = StdRng::seed_from_u64(7);
        let points: Vec<Vec<f32>> = (0..3000).map(|_| unit(&mut rng, 24)).collect();
        let queries: Vec<Vec<f32>> = (0..100).map(|_| unit(&mut rng, 24)).collect();

        let sequential = Graph::new(shape());
        for p in &points {
            sequential.insert(p).expect("room");
        }
        let parallel = Graph::new(shape());
        for p in &points {
            parallel.push(p).expect("room");
        }
        let n = points.len();
        std::thread::scope(|s| {
            for t in 0..4 {
                let graph = &parallel;
                s.spawn(move || {
                    for id in (t..n).step_by(4) {
                        graph.link(id);
                    }
                });
            }
        });
        for graph in [&sequential, &parallel] {
            let r = recall(graph, &points, &queries, 64);
            assert!(r >= 0.95, "recall@10 {r}");
            // Every node is reachable: a self query finds itself first.
            for (id, p) in points.iter().enumerate().step_by(97) {
                assert_eq!(graph.search(p, 16)[0].id as usize, id);
            }
        }
    }

    /// A quantized graph walks its codes and answers with exact
    /// similarities from the full-precision vectors, under every metric,
    /// with the recall of the f32 graph to within a little; its walk reads
    /// a half or a quarter of the bytes, and its dump holds the full
    /// vectors, so a dump of one quantization loads into another.
    #[test]
    fn quantized_graphs_walk_codes_and_answer_exactly() {
        let mut rng = StdRng::seed_from_u64(11);
        let dim = 32;
        let points: Vec<Vec<f32>> = (0..2500).map(|_| unit(&mut rng, dim)).collect();
        let queries: Vec<Vec<f32>> = (0..60).map(|_| unit(&mut rng, dim)).collect();
        for metric in Metric::ALL {
            let exact_top = |q: &[f32]| -> Vec<u32> {
                let mut all: Vec<Near> = points
                    .iter()
                    .enumerate()
                    .map(|(id, v)| Near {
                        sim: metric.similarity(q, v),
                        id: id as u32,
                    })
                    .collect();
                all.sort_unstable_by(|a, b| b.cmp(a));
                all.iter().take(10).map(|n| n.id).collect()
            };
            let (mut f32_bytes, mut f32_recall) = (0, 0.0);
            for quantization in Quantization::ALL {
                let graph = Graph::new(Shape {
                    metric,
                    quantization,
                    ..shape()
                });
                for p in &points {
                    graph.insert(p).expect("room");
                }
                let mut hit = 0;
                for q in &queries {
                    let found = graph.search(q, 64);
                    for near in &found {
                        let exact = metric.similarity(q, &points[near.id as usize]);
                        assert_eq!(
                            near.sim.to_bits(),
                            exact.to_bits(),
                            "{metric} {quantization}"
                        );
                    }
                    assert!(found.windows(2).all(|w| w[0] >= w[1]), "sorted");
                    let truth = exact_top(q);
                    hit += truth
                        .iter()
                        .filter(|id| found.iter().take(10).any(|n| n.id == **id))
                        .count();
                }
                let recall = hit as f64 / (queries.len() * 10) as f64;
                eprintln!("{metric} {quantization}: recall@10 {recall:.3}");
                // Random 32-d points are hard for a graph of M 8; the codes
                // may cost a little on top of what the f32 graph finds.
                if quantization == Quantization::None {
                    assert!(recall >= 0.85, "{metric}: recall@10 {recall}");
                    f32_recall = recall;
                }
                assert!(
                    recall >= f32_recall - 0.03,
                    "{metric} {quantization}: recall@10 {recall} vs {f32_recall} with f32"
                );
                let bytes = graph.heap_bytes();
                match quantization {
                    Quantization::None => {
                        assert_eq!(bytes.full, 0);
                        f32_bytes = bytes.walk;
                    }
                    Quantization::F16 | Quantization::Int8 => {
                        assert_eq!(bytes.full, points.len() * dim * 4);
                        let saved = points.len() * dim * (4 - quantization.bytes_per_dim());
                        assert_eq!(bytes.walk + saved, f32_bytes, "{quantization}");
                    }
                }
                // The dump holds full vectors: loaded into an f32 graph, it
                // answers as a graph of those vectors.
                let links = graph.snapshot_links();
                let mut bytes = Vec::new();
                graph
                    .write_snapshot(dim, &links, &mut bytes)
                    .expect("write");
                let plain =
                    Graph::read_from(dim, Shape { metric, ..shape() }, None, &mut &bytes[..])
                        .expect("read");
                for (id, p) in points.iter().enumerate().step_by(131) {
                    assert_eq!(plain.vector(id), Some(&p[..]));
                    assert_eq!(graph.vector(id), Some(&p[..]));
                }
            }
        }
    }

    #[test]
    fn lists_respect_capacity_and_hold_no_self_links() {
        let mut rng = StdRng::seed_from_u64(3);
        let graph = Graph::new(shape());
        for _ in 0..1000 {
            graph.insert(&unit(&mut rng, 8)).expect("room");
        }
        for id in 0..graph.len() {
            let node = graph.nodes.get(id).expect("published");
            for layer in 0..=usize::from(node.level) {
                let (_, cap) = graph.span(layer);
                let list = graph.neighbours(node, layer);
                assert!(list.len() <= cap);
                assert!(
                    list.iter()
                        .all(|s| s.load(Ordering::Relaxed) as usize != id)
                );
            }
        }
    }

    #[test]
    fn results_are_sorted_and_unique() {
        let mut rng = StdRng::seed_from_u64(5);
        let graph = Graph::new(shape());
        for _ in 0..500 {
            graph.insert(&unit(&mut rng, 8)).expect("room");
        }
        let found = graph.search(&unit(&mut rng, 8), 50);
        assert_eq!(found.len(), 50);
        assert!(found.windows(2).all(|w| w[0] > w[1]));
        assert!(Graph::new(shape()).search(&[1.0; 8], 10).is_empty());
    }

    /// A snapshot is the graph as it was when taken: inserts after it
    /// (which add nodes and rewrite the lists of old ones) change nothing in
    /// what it writes.
    #[test]
    fn a_snapshot_is_unaffected_by_later_inserts() {
        let mut rng = StdRng::seed_from_u64(23);
        let graph = Graph::new(shape());
        for _ in 0..300 {
            graph.insert(&unit(&mut rng, 6)).expect("room");
        }
        let links = graph.snapshot_links();
        let mut at_snapshot = Vec::new();
        graph
            .write_snapshot(6, &links, &mut at_snapshot)
            .expect("in memory");
        for _ in 0..300 {
            graph.insert(&unit(&mut rng, 6)).expect("room");
        }
        let mut after = Vec::new();
        graph
            .write_snapshot(6, &links, &mut after)
            .expect("in memory");
        assert_eq!(at_snapshot, after);
        let loaded = Graph::read_from(6, shape(), None, &mut &after[..]).expect("valid");
        assert_eq!(loaded.len(), 300);
        let mut now = Vec::new();
        graph
            .write_snapshot(6, &graph.snapshot_links(), &mut now)
            .expect("in memory");
        assert_ne!(now, after, "the later inserts changed the graph");
    }

    /// A node every list has dropped, and an island of two nodes that only
    /// link to each other, are unreachable; the repair links each of the
    /// three from the reached graph, so that their own vectors find them.
    #[test]
    fn unreachable_nodes_and_islands_are_linked() {
        let mut rng = StdRng::seed_from_u64(17);
        let graph = Graph::new(shape());
        let vectors: Vec<Vec<f32>> = (0..400).map(|_| unit(&mut rng, 8)).collect();
        for v in &vectors {
            graph.insert(v).expect("room");
        }
        assert_eq!(
            graph.connect_unreachable(&AtomicBool::new(false)),
            0,
            "a fresh graph of 400 reaches every node here"
        );
        let entry = graph.entry().expect("entry").0;
        let mut level0 = (0..400_u32).filter(|&id| {
            id != entry && graph.nodes.get(id as usize).is_some_and(|n| n.level == 0)
        });
        let (orphan, a, b) = (
            level0.next().expect("a level-0 node"),
            level0.next().expect("two"),
            level0.next().expect("three"),
        );
        let cut = [orphan, a, b];
        for id in 0..graph.len() {
            let node = graph.nodes.get(id).expect("published");
            for layer in 0..=usize::from(node.level) {
                let mut kept: Vec<u32> = graph
                    .neighbours(node, layer)
                    .iter()
                    .map(|s| s.load(Ordering::Relaxed))
                    .filter(|link| !cut.contains(link))
                    .collect();
                // The island: `a` and `b` keep links out and to each other.
                if id == a as usize {
                    kept[0] = b;
                }
                if id == b as usize {
                    kept[0] = a;
                }
                graph.write_list(node, layer, kept.into_iter());
            }
        }
        for id in cut {
            let own = &vectors[id as usize];
            assert!(
                graph.search(own, 400).iter().all(|n| !cut.contains(&n.id)),
                "no search reaches {id}"
            );
        }
        assert_eq!(
            graph.connect_unreachable(&AtomicBool::new(false)),
            3,
            "one link for each node cut off"
        );
        for id in cut {
            let own = &vectors[id as usize];
            assert_eq!(graph.search(own, 16).first().map(|n| n.id), Some(id));
        }
        assert_eq!(
            graph.connect_unreachable(&AtomicBool::new(false)),
            0,
            "the repair cut nothing else off"
        );
    }

    /// The repair of a graph that inserts change meanwhile: it takes
    /// `exclusive` (here the stand-in for the index's writer lock, which
    /// every insert holds) only to link, so inserts go on between its fill
    /// and its linking, and the node it found cut off is reachable
    /// afterwards. The first call of `exclusive` waits for 50 more inserts
    /// and then stops the inserter, so the overlap is certain and no later
    /// insert can prune the new link before the check.
    #[test]
    fn repair_links_while_inserts_go_on() {
        let mut rng = StdRng::seed_from_u64(23);
        let graph = Graph::new(shape());
        let vectors: Vec<Vec<f32>> = (0..400).map(|_| unit(&mut rng, 8)).collect();
        for v in &vectors {
            graph.insert(v).expect("room");
        }
        let orphan = graph.cut_off_a_node();
        let own = &vectors[orphan as usize];
        assert!(graph.search(own, 400).iter().all(|n| n.id != orphan));

        let writer = Mutex::new(());
        let stop_inserting = AtomicBool::new(false);
        let inserted = std::sync::atomic::AtomicUsize::new(0);
        let exclusive_calls = std::sync::atomic::AtomicUsize::new(0);
        let linked = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut rng = StdRng::seed_from_u64(24);
                while !stop_inserting.load(Ordering::Acquire) {
                    let v = unit(&mut rng, 8);
                    let _writer = writer.lock();
                    graph.insert(&v).expect("room");
                    inserted.fetch_add(1, Ordering::AcqRel);
                }
            });
            let linked = graph.connect_unreachable_with(&AtomicBool::new(false), None, || {
                if exclusive_calls.fetch_add(1, Ordering::AcqRel) == 0 {
                    // This round's fill and searches are done: 50 inserts
                    // from here on land between them and its linking.
                    let at_fill = inserted.load(Ordering::Acquire);
                    while inserted.load(Ordering::Acquire) < at_fill + 50 {
                        std::thread::yield_now();
                    }
                    stop_inserting.store(true, Ordering::Release);
                }
                writer.lock()
            });
            // Ends the inserter even if the repair never took the lock.
            stop_inserting.store(true, Ordering::Release);
            linked
        });
        assert!(linked >= 1, "the cut-off node was linked");
        assert!(exclusive_calls.load(Ordering::Acquire) >= 1);
        let inserted = inserted.load(Ordering::Acquire);
        assert!(inserted >= 50);
        assert_eq!(graph.len(), 400 + inserted);
        assert!(
            graph.search(own, 400).iter().any(|n| n.id == orphan),
            "the repair made node {orphan} reachable"
        );
    }

    #[test]
    fn serialised_graph_round_trips_and_damage_is_an_error() {
        let mut rng = StdRng::seed_from_u64(11);
        let graph = Graph::new(shape());
        for _ in 0..300 {
            graph.insert(&unit(&mut rng, 6)).expect("room");
        }
        let mut bytes = Vec::new();
        graph
            .write_snapshot(6, &graph.snapshot_links(), &mut bytes)
            .expect("in memory");
        let loaded = Graph::read_from(6, shape(), None, &mut &bytes[..]).expect("valid");
        assert_eq!(loaded.len(), graph.len());
        assert_eq!(loaded.entry(), graph.entry());
        let q = unit(&mut rng, 6);
        let ids = |g: &Graph| g.search(&q, 20).iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(ids(&loaded), ids(&graph));
        // Wrong expectations and truncation are errors, not panics.
        assert!(Graph::read_from(7, shape(), None, &mut &bytes[..]).is_err());
        assert!(Graph::read_from(6, Shape { m: 9, ..shape() }, None, &mut &bytes[..]).is_err());
        for cut in [0, 7, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                Graph::read_from(6, shape(), None, &mut &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Graph::read_from(6, shape(), None, &mut &longer[..]).is_err());
    }

    proptest::proptest! {
        /// Any corruption of a serialised graph is an error or a graph whose
        /// ids are all in range; loading never panics.
        #[test]
        fn damaged_graph_never_panics(at in 0usize..4000, flip in 1u8..=255) {
            let mut rng = StdRng::seed_from_u64(2);
            let graph = Graph::new(shape());
            for _ in 0..40 {
                graph.insert(&unit(&mut rng, 4)).expect("room");
            }
            let mut bytes = Vec::new();
            graph.write_snapshot(4, &graph.snapshot_links(), &mut bytes).expect("in memory");
            let i = at % bytes.len();
            bytes[i] ^= flip;
            if let Ok(loaded) = Graph::read_from(4, shape(), None, &mut &bytes[..]) {
                let _ = loaded.search(&[0.5; 4], 10);
            }
        }
    }
}
