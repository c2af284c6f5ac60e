//! The product catalogue: the one place that keeps the durable store, the
//! vector index and the in-memory attribute table in step.
//!
//! Writes go store first (durable), then attributes, then the index, under a
//! single writer lock, so that an acknowledged product is both on disk and
//! visible to the very next query, and a product is never searchable before
//! its attributes (which filters need) are known. Reads never take the
//! writer lock. Blocking work (redb commits, index inserts, scans) runs on
//! tokio's blocking pool, never on the async workers.
//!
//! **Cancellation.** A caller's future may be dropped at any `.await`
//! (deadline, disconnect, shutdown). The writer lock is an owned permit
//! that moves into the blocking task together with the work it protects,
//! so a commit that has started finishes store, attributes and index
//! together and only then lets the next writer in, whether or not anyone
//! still waits for its answer. (A guard held by the caller would be
//! released when the caller is dropped while its commit still runs, and two
//! commits of one id could then reach the index in the reverse of their
//! store order.) Writers queue for the lock up to `max_pending_writes`; past that
//! they are refused at once with [`CatalogError::Busy`].

mod attributes;
mod check;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{Attributes, Embedding, InvalidEmbedding, ProductId},
    encoder::{Encoder, EncoderError},
    gate::{Busy, Gate},
    index::{IndexError, IndexParams, RebuildOutcome, VectorIndex},
    store::{Store, StoreError, StoredProduct, Upsert},
};

pub use attributes::{AttributeTable, AttributeView};
pub use check::{CheckReport, DumpState, check};

/// File name of the redb database inside the data directory.
const STORE_FILE: &str = "catalog.redb";
/// Folder of the index dump inside the data directory.
const INDEX_DUMP_DIR: &str = "index";
/// `dumped_version` when no dump matches the store.
const NO_DUMP: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("product {0} not found")]
    NotFound(ProductId),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("model produced an unusable embedding: {0}")]
    BadModelOutput(InvalidEmbedding),
    #[error(
        "the data directory holds a catalogue embedded with model {stored:?} (dim {stored_dim}), \
         but the configured model is {configured:?} (dim {configured_dim}); re-import into a fresh \
         data directory or configure the original model"
    )]
    ModelMismatch {
        stored: String,
        stored_dim: u32,
        configured: String,
        configured_dim: u32,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(
        "the store file {path} is damaged ({detail}); `lookbook check --data-dir <dir>` reports \
         what is readable; restore the data directory from a backup"
    )]
    StoreDamaged { path: PathBuf, detail: String },
    #[error(transparent)]
    Busy(#[from] Busy),
    /// A broken internal invariant (a bug, not bad input).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// What a product is embedded from.
#[derive(Debug, Clone)]
pub enum ProductContent {
    Image(Bytes),
    Embedding(Embedding),
}

/// A validated upsert request.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub id: ProductId,
    pub content: ProductContent,
    pub attributes: Attributes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOutcome {
    pub created: bool,
    pub catalog_size: u64,
}

/// Per-item result of a bulk add; failures carry the item's error so the
/// caller can report it and go on.
#[derive(Debug)]
pub struct BulkOutcome {
    pub results: Vec<Result<bool, CatalogError>>,
    pub catalog_size: u64,
}

/// A product as returned to callers.
#[derive(Debug, Clone)]
pub struct ProductView {
    pub id: ProductId,
    pub attributes: Arc<Attributes>,
    pub embedding: Embedding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStats {
    pub catalog_size: u64,
    pub model: String,
    pub dim: u32,
    pub deleted_pending: u64,
    pub index_from_dump: bool,
    pub index_rebuilds: u64,
}

/// How the catalogue came up; logged and printed at start.
#[derive(Debug, Clone, Copy)]
pub struct StartupReport {
    pub products: u64,
    /// Stored products left out because their row failed its checksum,
    /// could not be decoded, or holds an unusable vector (each is logged
    /// by id; `lookbook check` lists them).
    pub damaged_products: u64,
    pub index_from_dump: bool,
    pub seconds: f64,
}

#[derive(Debug)]
pub struct Catalog {
    store: Arc<Store>,
    index: Arc<VectorIndex>,
    attributes: Arc<AttributeTable>,
    encoder: Encoder,
    dump_dir: PathBuf,
    /// Serialises writers so the store, attribute table and index apply
    /// changes in the same order. Its permit moves into the blocking task of
    /// the write (see the module docs), so it is held exactly as long as the
    /// write runs, even when the caller has gone.
    writer: Gate,
    /// Store version the on-disk index dump matches (`NO_DUMP` if none).
    /// Shared with the blocking dump task, which sets it once the dump is
    /// on disk.
    dumped_version: Arc<AtomicU64>,
    /// Counts applied writes (adds, replaces, deletes); readers that cache
    /// something derived from the catalogue compare it to see staleness.
    changes: Arc<AtomicU64>,
    /// Whether the index was loaded from a dump at start (not rebuilt).
    index_from_dump: bool,
    /// Background rebuilds that swapped in a new generation.
    rebuilds: AtomicU64,
    model: String,
    dim: u32,
}

impl Catalog {
    /// Opens (or creates) the catalogue in `data_dir`: loads every stored
    /// product, then the index from its dump when the dump matches the store,
    /// otherwise rebuilds the index from the stored vectors.
    pub async fn open(
        data_dir: PathBuf,
        encoder: Encoder,
        params: IndexParams,
        max_pending_writes: usize,
    ) -> Result<(Self, StartupReport), CatalogError> {
        let started = Instant::now();
        let model = encoder.model_name().to_owned();
        let dim = u32::try_from(encoder.dim())
            .map_err(|_| CatalogError::Internal("the model's dimension does not fit in u32"))?;
        let dim_usize = encoder.dim();
        let dump_dir = data_dir.join(INDEX_DUMP_DIR);
        let (store, index, attributes, from_dump, dumped_version, damaged_products) =
            tokio::task::spawn_blocking({
            let model = model.clone();
            let dump_dir = dump_dir.clone();
            move || -> Result<_, CatalogError> {
                std::fs::create_dir_all(&data_dir).map_err(|source| CatalogError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
                let store_path = data_dir.join(STORE_FILE);
                let store = survive_store_panic(&store_path, || Ok(Store::open(&store_path)?))?;
                match store.catalog_model()? {
                    Some((stored, stored_dim)) if stored != model || stored_dim != dim => {
                        return Err(CatalogError::ModelMismatch {
                            stored,
                            stored_dim,
                            configured: model,
                            configured_dim: dim,
                        });
                    }
                    Some(_) => {}
                    None => store.set_catalog_model(&model, dim)?,
                }
                let version = store.version()?;
                let dump = match VectorIndex::load(&dump_dir, dim_usize, params.clone(), version) {
                    Ok(Some(index)) => Some(index),
                    Ok(None) => {
                        tracing::info!("no current index dump; building the index from the store");
                        None
                    }
                    Err(error) => {
                        tracing::warn!(%error, "index dump unusable; rebuilding from the store");
                        None
                    }
                };
                // The embeddings are kept only when the index must be built from them. Kept
                // beside a loaded dump, they were a second copy of every vector: freed once the
                // dump was accepted, but interleaved on the heap with the attributes that stay,
                // so the allocator kept the pages. Started from a 12,200-product dump, the
                // server's RSS fell from 235 to 164 MiB when they were no longer kept.
                let attributes = AttributeTable::default();
                let mut items = Vec::new();
                let mut products = 0_usize;
                let damaged =
                    scan_usable(&store, &store_path, dim_usize, &mut |p: StoredProduct| {
                        let id: Arc<str> = Arc::from(p.id);
                        if dump.is_none() {
                            items.push((Arc::clone(&id), Arc::<[f32]>::from(p.embedding)));
                        }
                        attributes.insert(id, p.attributes);
                        products += 1;
                    })?;
                // A damaged row costs its product, not the service: it is
                // left out (never served), and a new AddProduct of the id
                // replaces it.
                for error in &damaged {
                    tracing::error!(%error, "stored product left out");
                }
                let damaged_products = damaged.len() as u64;
                let loaded = match dump {
                    Some(index) if index.len() == products => Some(index),
                    Some(index) => {
                        tracing::warn!(
                            dump = index.len(),
                            store = products,
                            "index dump disagrees with the store; rebuilding"
                        );
                        drop(index);
                        // Rare (a dump from another copy of the store): read the vectors now.
                        scan_usable(&store, &store_path, dim_usize, &mut |p: StoredProduct| {
                            items.push((Arc::from(p.id), Arc::<[f32]>::from(p.embedding)));
                        })?;
                        None
                    }
                    None => None,
                };
                let from_dump = loaded.is_some();
                let index = match loaded {
                    Some(index) => index,
                    None => VectorIndex::build(dim_usize, params, items)?,
                };
                let dumped_version = if from_dump { version } else { NO_DUMP };
                Ok((store, index, attributes, from_dump, dumped_version, damaged_products))
            }
        })
        .await??;
        let report = StartupReport {
            products: index.len() as u64,
            damaged_products,
            index_from_dump: from_dump,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((
            Self {
                store: Arc::new(store),
                index: Arc::new(index),
                attributes: Arc::new(attributes),
                encoder,
                dump_dir,
                writer: Gate::new("writes", 1, max_pending_writes),
                dumped_version: Arc::new(AtomicU64::new(dumped_version)),
                changes: Arc::new(AtomicU64::new(0)),
                index_from_dump: from_dump,
                rebuilds: AtomicU64::new(0),
                model,
                dim,
            },
            report,
        ))
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn dim(&self) -> u32 {
        self.dim
    }

    pub(crate) fn index(&self) -> &VectorIndex {
        &self.index
    }

    pub(crate) fn attributes(&self) -> &AttributeTable {
        &self.attributes
    }

    pub fn len(&self) -> u64 {
        self.index.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Embeds images on the encoder's bounded pool and wraps the results.
    pub async fn embed(&self, images: Vec<Bytes>) -> Result<Vec<Embedding>, CatalogError> {
        let raw = self.encoder.embed(images).await?;
        raw.iter()
            .map(|v| {
                Embedding::normalize(v, self.dim as usize).map_err(CatalogError::BadModelOutput)
            })
            .collect()
    }

    /// Embeds one image.
    pub async fn embed_one(&self, image: Bytes) -> Result<Embedding, CatalogError> {
        self.embed(vec![image])
            .await?
            .pop()
            .ok_or(CatalogError::Internal(
                "the encoder returned no embedding for an image",
            ))
    }

    /// Upserts one product; returns once it is durable and searchable.
    pub async fn add(&self, product: NewProduct) -> Result<AddOutcome, CatalogError> {
        let embedding = match product.content {
            ProductContent::Embedding(e) => e,
            ProductContent::Image(bytes) => self.embed_one(bytes).await?,
        };
        let mut outcome = self
            .commit(vec![(product.id, product.attributes, embedding)])
            .await?;
        let created = outcome.results.pop().ok_or(CatalogError::Internal(
            "commit returned no result for its item",
        ))??;
        Ok(AddOutcome {
            created,
            catalog_size: outcome.catalog_size,
        })
    }

    /// Upserts a batch: images are embedded together (an image that fails
    /// to decode fails only its own item), then every good item is committed
    /// in one durable transaction.
    pub async fn add_batch(&self, products: Vec<NewProduct>) -> Result<BulkOutcome, CatalogError> {
        let mut results: Vec<Option<Result<bool, CatalogError>>> =
            (0..products.len()).map(|_| None).collect();
        let mut embeddings: Vec<Option<Embedding>> = vec![None; products.len()];
        let mut pending: Vec<(usize, Bytes)> = Vec::new();
        for (i, p) in products.iter().enumerate() {
            match &p.content {
                ProductContent::Embedding(e) => embeddings[i] = Some(e.clone()),
                ProductContent::Image(b) => pending.push((i, b.clone())),
            }
        }
        // The encoder fails a whole call on the first bad image and names
        // its position; drop that item and retry the rest. Bad images are
        // rare in practice, so this costs nothing on the happy path.
        while !pending.is_empty() {
            let images = pending.iter().map(|(_, b)| b.clone()).collect();
            match self.embed(images).await {
                Ok(done) => {
                    for ((i, _), e) in pending.drain(..).zip(done) {
                        embeddings[i] = Some(e);
                    }
                }
                Err(CatalogError::Encoder(err)) => match image_index(&err) {
                    Some(pos) if pos < pending.len() => {
                        let (i, _) = pending.remove(pos);
                        results[i] = Some(Err(CatalogError::Encoder(err)));
                    }
                    _ => return Err(CatalogError::Encoder(err)),
                },
                Err(other) => return Err(other),
            }
        }
        let mut order = Vec::new();
        let mut items = Vec::new();
        for (i, (p, e)) in products.into_iter().zip(embeddings).enumerate() {
            if let Some(e) = e {
                order.push(i);
                items.push((p.id, p.attributes, e));
            }
        }
        let committed = self.commit(items).await?;
        for (i, r) in order.into_iter().zip(committed.results) {
            results[i] = Some(r);
        }
        Ok(BulkOutcome {
            results: results
                .into_iter()
                .map(|r| {
                    r.unwrap_or(Err(CatalogError::Internal(
                        "bulk item left without a result",
                    )))
                })
                .collect(),
            catalog_size: committed.catalog_size,
        })
    }

    /// Durably stores, then publishes, a batch of embedded products.
    async fn commit(
        &self,
        items: Vec<(ProductId, Attributes, Embedding)>,
    ) -> Result<BulkOutcome, CatalogError> {
        if items.is_empty() {
            return Ok(BulkOutcome {
                results: Vec::new(),
                catalog_size: self.len(),
            });
        }
        let writer = self.writer.enter().await?;
        let store = Arc::clone(&self.store);
        let index = Arc::clone(&self.index);
        let attributes = Arc::clone(&self.attributes);
        let changes = Arc::clone(&self.changes);
        let model = self.model.clone();
        // Runs to the end even if this future is dropped: the blocking task
        // owns the writer permit, which is released when the task returns.
        tokio::task::spawn_blocking(move || -> Result<BulkOutcome, CatalogError> {
            let _writer = writer;
            let stored: Vec<StoredProduct> = items
                .iter()
                .map(|(id, attrs, e)| StoredProduct {
                    id: id.as_str().to_owned(),
                    attributes: attrs.clone(),
                    embedding: e.as_slice().to_vec(),
                    model: model.clone(),
                })
                .collect();
            let upserts = store.put_batch(&stored)?;
            // Attributes before vectors: a point must never be searchable
            // without the attributes that filters are evaluated on.
            let mut vectors = Vec::with_capacity(items.len());
            for (id, attrs, e) in items {
                attributes.insert(Arc::clone(id.as_arc()), attrs);
                vectors.push((Arc::clone(id.as_arc()), Arc::clone(e.as_arc())));
            }
            index.upsert_batch(vectors)?;
            changes.fetch_add(1, Ordering::Release);
            Ok(BulkOutcome {
                results: upserts
                    .into_iter()
                    .map(|u| Ok(matches!(u, Upsert::Created)))
                    .collect(),
                catalog_size: index.len() as u64,
            })
        })
        .await?
    }

    /// The product's unit embedding, if it is in the catalogue.
    pub fn vector(&self, id: &ProductId) -> Option<Arc<[f32]>> {
        self.index.get(id.as_str())
    }

    /// The durable store, shared with the shopper state.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub async fn get(&self, id: &ProductId) -> Result<ProductView, CatalogError> {
        let embedding = self
            .index
            .get(id.as_str())
            .ok_or_else(|| CatalogError::NotFound(id.clone()))?;
        let attributes = self
            .attributes
            .get(id.as_str())
            .ok_or_else(|| CatalogError::NotFound(id.clone()))?;
        Ok(ProductView {
            id: id.clone(),
            attributes,
            embedding: Embedding::from_trusted(embedding),
        })
    }

    /// Deletes a product; `Ok(false)` if it did not exist.
    pub async fn delete(&self, id: &ProductId) -> Result<(bool, u64), CatalogError> {
        let writer = self.writer.enter().await?;
        let store = Arc::clone(&self.store);
        let index = Arc::clone(&self.index);
        let attributes = Arc::clone(&self.attributes);
        let changes = Arc::clone(&self.changes);
        let id = id.clone();
        // As in `commit`: the task owns the permit and finishes regardless.
        tokio::task::spawn_blocking(move || -> Result<(bool, u64), CatalogError> {
            let _writer = writer;
            let deleted = store.delete(id.as_str())?;
            // Vector before attributes: the reverse of insertion.
            index.remove(id.as_str());
            attributes.remove(id.as_str());
            changes.fetch_add(1, Ordering::Release);
            Ok((deleted, index.len() as u64))
        })
        .await?
    }

    pub fn stats(&self) -> CatalogStats {
        CatalogStats {
            catalog_size: self.len(),
            model: self.model.clone(),
            dim: self.dim,
            deleted_pending: self.index.dead_points() as u64,
            index_from_dump: self.index_from_dump,
            index_rebuilds: self.rebuilds.load(Ordering::Acquire),
        }
    }

    /// Background upkeep until `shutdown` fires: rebuilds the index once
    /// enough points are dead, and dumps it once writes have been quiet for
    /// a whole interval, so that even after a crash the next start loads a
    /// recent dump instead of rebuilding the graph (seconds vs a minute at
    /// 12K products).
    pub async fn maintain(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.index.needs_rebuild() {
                let index = Arc::clone(&self.index);
                let rebuild = tokio::task::spawn_blocking(move || index.rebuild());
                tokio::select! {
                    done = rebuild => match done {
                        Ok(stats) => {
                            if stats.outcome == RebuildOutcome::Swapped {
                                self.rebuilds.fetch_add(1, Ordering::AcqRel);
                            }
                            tracing::info!(?stats, "index rebuilt");
                        }
                        Err(error) => tracing::error!(%error, "index rebuild task failed"),
                    },
                    () = shutdown.cancelled() => {
                        // The rebuild stops at its next chunk; nobody waits for it.
                        self.index.cancel_rebuilds();
                        return;
                    }
                }
                continue;
            }
            let store = Arc::clone(&self.store);
            let version = match tokio::task::spawn_blocking(move || store.version()).await {
                Ok(Ok(v)) => v,
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot read the store version");
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "store version task failed");
                    continue;
                }
            };
            let quiet = last_seen == Some(version);
            last_seen = Some(version);
            if quiet
                && self.dumped_version.load(Ordering::Acquire) != version
                && let Err(error) = self.dump_index().await
            {
                tracing::error!(%error, "cannot write the index dump");
            }
        }
    }

    /// Writes the index dump so the next start can skip the rebuild. Holds
    /// the writer lock so the dump and the store version it records agree;
    /// like a write, it finishes (and records what it wrote) even if the
    /// caller stops waiting.
    pub async fn dump_index(&self) -> Result<(), CatalogError> {
        let writer = self.writer.enter().await?;
        let store = Arc::clone(&self.store);
        let index = Arc::clone(&self.index);
        let dumped_version = Arc::clone(&self.dumped_version);
        let dir = self.dump_dir.clone();
        let version = tokio::task::spawn_blocking(move || -> Result<u64, CatalogError> {
            let _writer = writer;
            let version = store.version()?;
            index.dump(&dir, version)?;
            dumped_version.store(version, Ordering::Release);
            Ok(version)
        })
        .await??;
        tracing::debug!(version, "index dump written");
        Ok(())
    }

    /// Stops background work that would outlast a shutdown (a running index
    /// rebuild); the index stays complete and usable.
    pub fn cancel_background_work(&self) {
        self.index.cancel_rebuilds();
    }

    /// Applied writes so far (see `changes`).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

/// Whether a stored vector can go into the index (the same rules the index
/// applies on insert), so a bad row is left out by id instead of failing the
/// whole start-up.
pub fn usable_vector(v: &[f32], dim: usize) -> Result<(), String> {
    if v.len() != dim {
        return Err(format!(
            "embedding has {} dimensions, the catalogue {dim}",
            v.len()
        ));
    }
    let norm = crate::domain::dot(v, v).sqrt();
    if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
        return Err(format!(
            "embedding is not a finite unit vector (L2 norm {norm})"
        ));
    }
    Ok(())
}

/// Calls `f` with every stored product that start-up accepts (its row
/// decodes and passes its checksum, its vector is one the index takes) and
/// returns the errors of the others, naming each by id.
fn scan_usable(
    store: &Store,
    path: &std::path::Path,
    dim: usize,
    f: &mut dyn FnMut(StoredProduct),
) -> Result<Vec<StoreError>, CatalogError> {
    let mut damaged = Vec::new();
    let mut unusable = Vec::new();
    survive_store_panic(path, || {
        Ok(store.scan_checked(
            &mut |p: StoredProduct| {
                match usable_vector(&p.embedding, dim) {
                    Ok(()) => f(p),
                    Err(reason) => unusable.push(StoreError::Corrupt {
                        table: "products",
                        key: p.id,
                        reason,
                    }),
                }
                Ok(())
            },
            &mut damaged,
        )?)
    })?;
    damaged.append(&mut unusable);
    Ok(damaged)
}

/// Runs a store read and turns a panic inside it (redb asserts on pages it
/// cannot make sense of) into [`CatalogError::StoreDamaged`]: an operator
/// needs "this file is damaged", not a backtrace.
fn survive_store_panic<T>(
    path: &std::path::Path,
    read: impl FnOnce() -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the store panicked while reading it")
            .to_owned();
        Err(CatalogError::StoreDamaged {
            path: path.to_path_buf(),
            detail,
        })
    })
}

/// Position of the offending image for per-image encoder errors; `None`
/// for failures of the whole call.
fn image_index(e: &EncoderError) -> Option<usize> {
    match e {
        EncoderError::EmptyImage { index }
        | EncoderError::UndecodableImage { index, .. }
        | EncoderError::ImageTooLarge { index, .. } => Some(*index),
        EncoderError::TooManyImages { .. }
        | EncoderError::Overloaded
        | EncoderError::ShuttingDown
        | EncoderError::Ort { .. }
        | EncoderError::Runtime(_)
        | EncoderError::Manifest { .. }
        | EncoderError::Model { .. }
        | EncoderError::Library { .. }
        | EncoderError::Config { .. } => None,
    }
}
