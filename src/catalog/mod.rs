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
    domain::{Attributes, Embedding, Filter, InvalidEmbedding, Metric, ProductId},
    encoder::{Encoded, Encoder, EncoderError},
    gate::{Busy, Gate},
    index::{IndexError, IndexParams, RebuildOutcome, VectorIndex},
    store::{Applied, Store, StoreError, StoredProduct, Upsert},
};

pub use attributes::{AttributeTable, AttributeView, Facet};
pub use check::{CheckReport, DumpState, check};

/// File name of the redb database inside the data directory.
const STORE_FILE: &str = "catalog.redb";
/// Folder of the index dump inside the data directory.
const INDEX_DUMP_DIR: &str = "index";
/// Where a quantized index keeps its full-precision vectors (see
/// `IndexParams::vector_dir`): files that live only as long as the process,
/// so whatever a crash left there is removed at open.
const INDEX_VECTOR_DIR: &str = "index-vectors";
/// `dumped_version` when no dump matches the store.
const NO_DUMP: u64 = u64::MAX;
/// A checkpoint is reconciled with the store while at most
/// `products / RECONCILE_MAX_DIVISOR + RECONCILE_MIN` products differ;
/// beyond that (e.g. a checkpoint of another store) inserting the
/// differences costs about what a fresh build does and leaves a graph full
/// of dead points, so the index is built from the store instead.
const RECONCILE_MAX_DIVISOR: u64 = 2;
const RECONCILE_MIN: u64 = 1024;

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
    #[error(
        "the data directory was created with index.metric = {stored:?}, but the configured \
         metric is {configured:?}; the metric is fixed when a data directory is created: \
         configure {stored:?}, or import into a fresh data directory"
    )]
    MetricMismatch {
        stored: String,
        configured: &'static str,
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
    pub has_thumbnail: bool,
}

/// A validated attribute update: keys in `set` are written, keys in
/// `remove` deleted (never both).
#[derive(Debug, Clone, Default)]
pub struct AttributeUpdate {
    pub set: Attributes,
    pub remove: Vec<String>,
}

/// One page of [`Catalog::list`].
#[derive(Debug)]
pub struct ProductPage {
    pub products: Vec<ProductView>,
    /// The id to continue after, when more products follow.
    pub next_after: Option<ProductId>,
}

/// A product with what it was made from, ready to commit: id, attributes,
/// embedding and thumbnail (JPEG).
pub type Embedded = (ProductId, Attributes, Embedding, Option<Vec<u8>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStats {
    pub catalog_size: u64,
    pub model: String,
    pub dim: u32,
    pub deleted_pending: u64,
    pub index_from_dump: bool,
    pub index_rebuilds: u64,
    pub index_reconciled_at_start: u64,
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
    /// Products the checkpoint did not hold as stored (written after it, or
    /// deleted since), re-inserted into or removed from the loaded index.
    pub reconciled: u64,
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
    /// Products written or deleted since start (a batch counts each item).
    changed_products: Arc<AtomicU64>,
    /// `changed_products` as of the last checkpoint: the difference is what
    /// a start after a crash now would have to re-insert.
    checkpointed_products: Arc<AtomicU64>,
    /// Whether the index was loaded from a dump at start (not rebuilt).
    index_from_dump: bool,
    /// Products reconciled into that dump at start (see `reconcile`).
    reconciled_at_start: u64,
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
        mut params: IndexParams,
        max_pending_writes: usize,
    ) -> Result<(Self, StartupReport), CatalogError> {
        let started = Instant::now();
        let vector_dir = params
            .vector_dir
            .get_or_insert_with(|| data_dir.join(INDEX_VECTOR_DIR))
            .clone();
        let model = encoder.model_name().to_owned();
        let dim = u32::try_from(encoder.dim())
            .map_err(|_| CatalogError::Internal("the model's dimension does not fit in u32"))?;
        let dim_usize = encoder.dim();
        let dump_dir = data_dir.join(INDEX_DUMP_DIR);
        let (store, index, attributes, from_dump, reconciled, dumped_version, damaged_products) =
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
                // After the store is open: it locks the data dir, so no other
                // process is using these files.
                match std::fs::remove_dir_all(&vector_dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(CatalogError::DataDir {
                            path: vector_dir,
                            source,
                        });
                    }
                }
                // The metric is a property of the data, like the model:
                // scores, stored vectors (normalised or not) and the graph
                // all depend on it. Stores from before it was recorded were
                // cosine.
                let configured_metric = params.metric;
                match store.catalog_metric()? {
                    Some(stored) if stored != configured_metric.as_str() => {
                        return Err(CatalogError::MetricMismatch {
                            stored,
                            configured: configured_metric.as_str(),
                        });
                    }
                    Some(_) => {}
                    None if store.is_empty()? || configured_metric == Metric::Cosine => {
                        store.set_catalog_metric(configured_metric.as_str())?;
                    }
                    None => {
                        return Err(CatalogError::MetricMismatch {
                            stored: Metric::Cosine.as_str().to_owned(),
                            configured: configured_metric.as_str(),
                        });
                    }
                }
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
                let checkpoint = match VectorIndex::load(&dump_dir, dim_usize, params.clone()) {
                    Ok(Some((index, at))) => Some((index, at)),
                    Ok(None) => {
                        tracing::info!("no usable index checkpoint; building the index from the store");
                        None
                    }
                    Err(error) => {
                        tracing::warn!(%error, "index checkpoint unusable; rebuilding from the store");
                        None
                    }
                };
                // One scan of the store serves both ends: it fills the
                // attribute table and either collects every vector (no
                // checkpoint: build) or compares each with the checkpoint's
                // and keeps only those that differ or are missing there.
                // Only changed vectors are held: every vector kept beside a
                // loaded checkpoint would be a second copy, and even freed
                // afterwards it leaves its pages interleaved with the
                // attributes that stay (measured at 12,200 products: RSS
                // 235 MiB instead of 164).
                let attributes = AttributeTable::default();
                let mut items = Vec::new();
                let mut products = 0_usize;
                let changed_cap =
                    usize::try_from(store.len()? / RECONCILE_MAX_DIVISOR + RECONCILE_MIN)
                        .unwrap_or(usize::MAX);
                let mut too_many_changes = false;
                let scan_started = Instant::now();
                let damaged =
                    scan_usable(&store, &store_path, dim_usize, params.metric, &mut |p: StoredProduct| {
                        let id: Arc<str> = Arc::from(p.id);
                        match &checkpoint {
                            None => items.push((Arc::clone(&id), Arc::<[f32]>::from(p.embedding))),
                            Some((index, _)) => {
                                if index.holds(&id, &p.embedding) != Some(true) {
                                    if items.len() < changed_cap {
                                        items.push((Arc::clone(&id), Arc::<[f32]>::from(p.embedding)));
                                    } else {
                                        too_many_changes = true;
                                    }
                                }
                            }
                        }
                        attributes.insert_product(id, p.attributes, p.has_thumbnail);
                        products += 1;
                    })?;
                tracing::info!(
                    products,
                    seconds = scan_started.elapsed().as_secs_f64(),
                    "store scanned"
                );
                // A damaged row costs its product, not the service: it is
                // left out (never served, and removed from a checkpoint that
                // holds it), and a new AddProduct of the id replaces it.
                for error in &damaged {
                    tracing::error!(%error, "stored product left out");
                }
                let damaged_products = damaged.len() as u64;
                let checkpoint = if too_many_changes {
                    tracing::warn!(
                        products,
                        "the index checkpoint differs from the store in more than {changed_cap} products; rebuilding"
                    );
                    // Freed before the vectors are read again, not beside them.
                    drop(checkpoint);
                    items.clear();
                    scan_usable(&store, &store_path, dim_usize, params.metric, &mut |p: StoredProduct| {
                        items.push((Arc::from(p.id), Arc::<[f32]>::from(p.embedding)));
                    })?;
                    None
                } else {
                    checkpoint
                };
                let (index, from_dump, reconciled) = match checkpoint {
                    Some((index, at)) => {
                        let reconciled = reconcile(&index, items, &attributes)?;
                        tracing::info!(
                            checkpoint_version = at,
                            store_version = version,
                            reconciled,
                            "index loaded from its checkpoint and reconciled with the store"
                        );
                        (index, true, reconciled)
                    }
                    None => (VectorIndex::build(dim_usize, params, items)?, false, 0),
                };
                // A checkpoint that needed nothing is as good as a new one.
                let dumped_version = if from_dump && reconciled == 0 { version } else { NO_DUMP };
                Ok((store, index, attributes, from_dump, reconciled, dumped_version, damaged_products))
            }
        })
        .await??;
        let report = StartupReport {
            products: index.len() as u64,
            damaged_products,
            index_from_dump: from_dump,
            reconciled,
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
                changed_products: Arc::new(AtomicU64::new(0)),
                checkpointed_products: Arc::new(AtomicU64::new(0)),
                index_from_dump: from_dump,
                reconciled_at_start: reconciled,
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

    /// How the catalogue's vectors are compared (the index's metric).
    pub fn metric(&self) -> Metric {
        self.index.metric()
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

    /// Embeds product photos and makes their thumbnails from the same
    /// decoded pixels.
    async fn embed_photos(
        &self,
        images: Vec<Bytes>,
    ) -> Result<Vec<(Embedding, Option<Vec<u8>>)>, CatalogError> {
        let encoded = self.encoder.embed_with_thumbnails(images).await?;
        encoded
            .into_iter()
            .map(|Encoded { vector, thumbnail }| {
                Embedding::normalize(&vector, self.dim as usize)
                    .map(|e| (e, thumbnail))
                    .map_err(CatalogError::BadModelOutput)
            })
            .collect()
    }

    /// Upserts one product; returns once it is durable and searchable.
    pub async fn add(&self, product: NewProduct) -> Result<AddOutcome, CatalogError> {
        let (embedding, thumbnail) = match product.content {
            ProductContent::Embedding(e) => (e, None),
            ProductContent::Image(bytes) => {
                self.embed_photos(vec![bytes])
                    .await?
                    .pop()
                    .ok_or(CatalogError::Internal(
                        "the encoder returned no embedding for an image",
                    ))?
            }
        };
        let mut outcome = self
            .commit(
                vec![(product.id, product.attributes, embedding, thumbnail)],
                None,
            )
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
        let prepared = self.prepare(products).await?;
        let mut results: Vec<Option<Result<bool, CatalogError>>> =
            (0..prepared.len()).map(|_| None).collect();
        let mut order = Vec::new();
        let mut items = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(item) => {
                    order.push(i);
                    items.push(item);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let committed = self.commit(items, None).await?;
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

    /// Embeds the images of a batch (together; an image that fails to
    /// decode fails only its own item) and makes their thumbnails, without
    /// committing anything: each item comes back ready for a commit, here
    /// or, in cluster mode, on every replica through the replicated log.
    pub async fn prepare(
        &self,
        products: Vec<NewProduct>,
    ) -> Result<Vec<Result<Embedded, CatalogError>>, CatalogError> {
        let mut results: Vec<Option<Result<Embedded, CatalogError>>> =
            (0..products.len()).map(|_| None).collect();
        let mut embeddings: Vec<Option<(Embedding, Option<Vec<u8>>)>> =
            (0..products.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Bytes)> = Vec::new();
        for (i, p) in products.iter().enumerate() {
            match &p.content {
                ProductContent::Embedding(e) => embeddings[i] = Some((e.clone(), None)),
                ProductContent::Image(b) => pending.push((i, b.clone())),
            }
        }
        // The encoder fails a whole call on the first bad image and names
        // its position; drop that item and retry the rest. Bad images are
        // rare in practice, so this costs nothing on the happy path.
        while !pending.is_empty() {
            let images = pending.iter().map(|(_, b)| b.clone()).collect();
            match self.embed_photos(images).await {
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
        for (i, (p, e)) in products.into_iter().zip(embeddings).enumerate() {
            if let Some((e, thumbnail)) = e {
                results[i] = Some(Ok((p.id, p.attributes, e, thumbnail)));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(CatalogError::Internal(
                    "prepared item left without a result",
                )))
            })
            .collect())
    }

    /// Commits products read from the replicated log at `seq` (cluster
    /// mode); the store records `seq` in the same transaction, so a restart
    /// resumes after it. An empty batch records only the position.
    pub async fn apply_products(
        &self,
        items: Vec<Embedded>,
        seq: u64,
    ) -> Result<BulkOutcome, CatalogError> {
        self.commit(items, Some(Applied::Products(seq))).await
    }

    /// Deletes a product read from the replicated log at `seq` (see
    /// [`Self::apply_products`]).
    pub async fn apply_delete(&self, id: &ProductId, seq: u64) -> Result<bool, CatalogError> {
        Ok(self.remove(id, Some(Applied::Products(seq))).await?.0)
    }

    /// Durably stores, then publishes, a batch of embedded products.
    async fn commit(
        &self,
        items: Vec<Embedded>,
        applied: Option<Applied>,
    ) -> Result<BulkOutcome, CatalogError> {
        if items.is_empty() && applied.is_none() {
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
        let changed_products = Arc::clone(&self.changed_products);
        let model = self.model.clone();
        // Runs to the end even if this future is dropped: the blocking task
        // owns the writer permit, which is released when the task returns.
        tokio::task::spawn_blocking(move || -> Result<BulkOutcome, CatalogError> {
            let _writer = writer;
            let stored: Vec<StoredProduct> = items
                .iter()
                .map(|(id, attrs, e, thumbnail)| StoredProduct {
                    id: id.as_str().to_owned(),
                    attributes: attrs.clone(),
                    embedding: e.as_slice().to_vec(),
                    model: model.clone(),
                    has_thumbnail: thumbnail.is_some(),
                })
                .collect();
            let thumbnails: Vec<Option<&[u8]>> =
                items.iter().map(|(_, _, _, t)| t.as_deref()).collect();
            let upserts = store.put_batch_applied(&stored, &thumbnails, applied)?;
            // Attributes before vectors: a point must never be searchable
            // without the attributes that filters are evaluated on.
            let mut vectors = Vec::with_capacity(items.len());
            for (id, attrs, e, thumbnail) in items {
                attributes.insert_product(Arc::clone(id.as_arc()), attrs, thumbnail.is_some());
                vectors.push((Arc::clone(id.as_arc()), Arc::clone(e.as_arc())));
            }
            let count = vectors.len() as u64;
            index.upsert_batch(vectors)?;
            changes.fetch_add(1, Ordering::Release);
            changed_products.fetch_add(count, Ordering::Release);
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

    /// The product's embedding (unit length under cosine), if it is in the
    /// catalogue.
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
            has_thumbnail: self.attributes.has_thumbnail(id.as_str()),
        })
    }

    /// Products by id, in the order asked, `None` for ids not in the
    /// catalogue. Answered from memory.
    pub fn get_many(&self, ids: &[ProductId]) -> Vec<Option<ProductView>> {
        ids.iter()
            .map(|id| {
                let embedding = self.index.get(id.as_str())?;
                let attributes = self.attributes.get(id.as_str())?;
                Some(ProductView {
                    id: id.clone(),
                    attributes,
                    embedding: Embedding::from_trusted(embedding),
                    has_thumbnail: self.attributes.has_thumbnail(id.as_str()),
                })
            })
            .collect()
    }

    /// Up to `limit` products admitted by `filter` with ids after `after`,
    /// in id order (see [`AttributeTable::page`]). Answered from memory on
    /// the blocking pool: a selective filter may scan much of the catalogue.
    pub async fn list(
        &self,
        after: Option<ProductId>,
        filter: Filter,
        limit: usize,
    ) -> Result<ProductPage, CatalogError> {
        let attributes = Arc::clone(&self.attributes);
        let index = Arc::clone(&self.index);
        tokio::task::spawn_blocking(move || {
            let (page, more) =
                attributes.page(after.as_ref().map(ProductId::as_str), &filter, limit);
            let mut products = Vec::with_capacity(page.len());
            for (id, attributes, has_thumbnail) in page {
                // Deleted between the page and this look: left out.
                let Some(embedding) = index.get(&id) else {
                    continue;
                };
                products.push(ProductView {
                    id: ProductId::from_trusted(id),
                    attributes,
                    embedding: Embedding::from_trusted(embedding),
                    has_thumbnail,
                });
            }
            let next_after = if more {
                products.last().map(|p| p.id.clone())
            } else {
                None
            };
            ProductPage {
                products,
                next_after,
            }
        })
        .await
        .map_err(CatalogError::from)
    }

    /// The catalogue's attribute keys with their most common values.
    pub fn facets(&self, max_values: usize) -> Vec<Facet> {
        self.attributes.facets(max_values)
    }

    /// Whether the product has a thumbnail (false for unknown ids).
    pub fn has_thumbnail(&self, id: &str) -> bool {
        self.attributes.has_thumbnail(id)
    }

    /// The product's thumbnail (JPEG), if it has one.
    pub async fn thumbnail(&self, id: &ProductId) -> Result<Option<Vec<u8>>, CatalogError> {
        if !self.attributes.has_thumbnail(id.as_str()) {
            return Ok(None);
        }
        let store = Arc::clone(&self.store);
        let id = id.clone();
        Ok(tokio::task::spawn_blocking(move || store.thumbnail(id.as_str())).await??)
    }

    /// Sets and removes attributes of a product; durable, and seen by
    /// filters, when it returns. The vector and thumbnail are untouched.
    pub async fn update(
        &self,
        id: &ProductId,
        update: AttributeUpdate,
    ) -> Result<ProductView, CatalogError> {
        let writer = self.writer.enter().await?;
        let store = Arc::clone(&self.store);
        let index = Arc::clone(&self.index);
        let attributes = Arc::clone(&self.attributes);
        let changes = Arc::clone(&self.changes);
        let id = id.clone();
        // As in `commit`: the task owns the permit and finishes regardless.
        tokio::task::spawn_blocking(move || -> Result<ProductView, CatalogError> {
            let _writer = writer;
            let stored = store
                .update_attributes(id.as_str(), &update.set, &update.remove)?
                .ok_or_else(|| CatalogError::NotFound(id.clone()))?;
            let embedding = index.get(id.as_str()).ok_or(CatalogError::Internal(
                "a stored product is not in the index",
            ))?;
            attributes.insert_product(
                Arc::clone(id.as_arc()),
                stored.attributes.clone(),
                stored.has_thumbnail,
            );
            changes.fetch_add(1, Ordering::Release);
            Ok(ProductView {
                id,
                attributes: Arc::new(stored.attributes),
                embedding: Embedding::from_trusted(embedding),
                has_thumbnail: stored.has_thumbnail,
            })
        })
        .await?
    }

    /// Deletes a product; `Ok(false)` if it did not exist.
    pub async fn delete(&self, id: &ProductId) -> Result<(bool, u64), CatalogError> {
        self.remove(id, None).await
    }

    async fn remove(
        &self,
        id: &ProductId,
        applied: Option<Applied>,
    ) -> Result<(bool, u64), CatalogError> {
        let writer = self.writer.enter().await?;
        let store = Arc::clone(&self.store);
        let index = Arc::clone(&self.index);
        let attributes = Arc::clone(&self.attributes);
        let changes = Arc::clone(&self.changes);
        let changed_products = Arc::clone(&self.changed_products);
        let id = id.clone();
        // As in `commit`: the task owns the permit and finishes regardless.
        tokio::task::spawn_blocking(move || -> Result<(bool, u64), CatalogError> {
            let _writer = writer;
            let deleted = store.delete_applied(id.as_str(), applied)?;
            // Vector before attributes: the reverse of insertion.
            index.remove(id.as_str());
            attributes.remove(id.as_str());
            changes.fetch_add(1, Ordering::Release);
            changed_products.fetch_add(u64::from(deleted), Ordering::Release);
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
            index_reconciled_at_start: self.reconciled_at_start,
        }
    }

    /// Background upkeep until `shutdown` fires: rebuilds the index once
    /// enough points are dead, and writes a checkpoint once the catalogue has
    /// changed since the last one and either writes have been quiet for a
    /// whole interval or `checkpoint_changes` products have changed. After a
    /// crash the next start loads that checkpoint and re-inserts only what
    /// changed since, so its cost is bounded by `checkpoint_changes` (plus
    /// the writes of one checkpoint's duration), not by the catalogue size.
    pub async fn maintain(
        self: Arc<Self>,
        every: std::time::Duration,
        checkpoint_changes: u64,
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
                            let result = if stats.outcome == RebuildOutcome::Swapped {
                                self.rebuilds.fetch_add(1, Ordering::AcqRel);
                                metrics::histogram!("lookbook_index_rebuild_duration_seconds")
                                    .record(stats.elapsed.as_secs_f64());
                                "swapped"
                            } else {
                                "aborted"
                            };
                            metrics::counter!("lookbook_index_rebuilds_total", "result" => result)
                                .increment(1);
                            tracing::info!(?stats, "index rebuilt");
                        }
                        Err(error) => {
                            metrics::counter!("lookbook_index_rebuilds_total", "result" => "failed")
                                .increment(1);
                            tracing::error!(%error, "index rebuild task failed");
                        }
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
            let unsaved = self
                .changed_products
                .load(Ordering::Acquire)
                .saturating_sub(self.checkpointed_products.load(Ordering::Acquire));
            if self.dumped_version.load(Ordering::Acquire) != version
                && (quiet || unsaved >= checkpoint_changes)
            {
                let started = Instant::now();
                match self.dump_index().await {
                    Ok(()) => tracing::info!(
                        version,
                        unsaved,
                        seconds = started.elapsed().as_secs_f64(),
                        "index checkpoint written"
                    ),
                    Err(error) => tracing::error!(%error, "cannot write the index checkpoint"),
                }
            }
        }
    }

    /// Writes an index checkpoint (the dump the next start loads and
    /// reconciles with the store instead of rebuilding). Takes the writer
    /// lock only to read the store version it records, which every write up
    /// to then has reached the index, and lets writers go on while the graph
    /// is written. Like a write, it finishes (and records what it wrote)
    /// even if the caller stops waiting.
    pub async fn dump_index(&self) -> Result<(), CatalogError> {
        let started = Instant::now();
        let result = self.write_checkpoint().await;
        metrics::counter!(
            "lookbook_index_checkpoints_total",
            "result" => if result.is_ok() { "written" } else { "failed" }
        )
        .increment(1);
        if result.is_ok() {
            metrics::histogram!("lookbook_index_checkpoint_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn write_checkpoint(&self) -> Result<(), CatalogError> {
        // Live inserts leave some points that no search reaches, and a start
        // links every such point it loads (see `reconcile`). Linking them
        // here first leaves the next start, even after a crash, only what
        // was written since the checkpoint, instead of everything inserted
        // live since the last start (on clustered catalogues a large share
        // of the inserts). Writers wait only while the links are added.
        let index = Arc::clone(&self.index);
        let started = Instant::now();
        let linked = tokio::task::spawn_blocking(move || index.connect_unreachable()).await?;
        if linked > 0 {
            tracing::info!(
                linked,
                seconds = started.elapsed().as_secs_f64(),
                "unreachable points linked before the checkpoint"
            );
        }
        let writer = self.writer.enter().await?;
        let store = Arc::clone(&self.store);
        let index = Arc::clone(&self.index);
        let dumped_version = Arc::clone(&self.dumped_version);
        let changed = Arc::clone(&self.changed_products);
        let checkpointed = Arc::clone(&self.checkpointed_products);
        let dir = self.dump_dir.clone();
        let version = tokio::task::spawn_blocking(move || -> Result<u64, CatalogError> {
            let version = store.version()?;
            let changes = changed.load(Ordering::Acquire);
            drop(writer);
            index.dump(&dir, version)?;
            dumped_version.store(version, Ordering::Release);
            checkpointed.store(changes, Ordering::Release);
            Ok(version)
        })
        .await??;
        tracing::debug!(version, "index checkpoint written");
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

/// Brings a loaded checkpoint in line with the store: `changed` (stored
/// products the checkpoint lacks or holds with another vector) are
/// upserted, and points whose key is not in the store (deleted since, or a
/// row now damaged) are removed. Returns how many products that touched.
///
/// This compares the whole checkpoint with the whole store instead of
/// replaying a log of changes since it: the start-up scan of the store is
/// needed anyway (it fills the attribute table and checks every row's
/// checksum), a bitwise compare per product costs little beside it, and it
/// catches every difference, including ones a change log would not record
/// (a row damaged since, a store restored from a backup, a checkpoint
/// copied from another store). The cost that scales with the damage is the
/// upserts: writes since the checkpoint, not catalogue size.
fn reconcile(
    index: &VectorIndex,
    changed: Vec<(Arc<str>, Arc<[f32]>)>,
    attributes: &AttributeTable,
) -> Result<u64, CatalogError> {
    let mut touched = changed.len() as u64;
    let started = Instant::now();
    if !changed.is_empty() {
        index.upsert_batch(changed)?;
    }
    let upserted = started.elapsed();
    // Live inserts (before the checkpoint and just now) leave some points
    // that no search reaches; a flood fill finds them and each is linked,
    // a search per point.
    let linked = index.connect_unreachable();
    tracing::info!(
        upserts = touched,
        upsert_seconds = upserted.as_secs_f64(),
        linked,
        link_seconds = (started.elapsed() - upserted).as_secs_f64(),
        "checkpoint brought up to date"
    );
    // Every stored product is now live in the index, so any surplus is
    // points the store no longer has.
    if index.len() != attributes.len() {
        for key in index.live_keys() {
            if attributes.get(&key).is_none() {
                index.remove(&key);
                touched += 1;
            }
        }
    }
    if index.len() != attributes.len() {
        return Err(CatalogError::Internal(
            "the reconciled index and the store hold different products",
        ));
    }
    Ok(touched)
}

/// Whether a stored vector can go into an index of `metric` (the rules the
/// index applies on insert: [`crate::index::vector_rule`]), so a bad row is
/// left out by id instead of failing the whole start-up.
pub fn usable_vector(v: &[f32], dim: usize, metric: Metric) -> Result<(), String> {
    if v.len() != dim {
        return Err(format!(
            "embedding has {} dimensions, the catalogue {dim}",
            v.len()
        ));
    }
    crate::index::vector_rule(metric, v)
        .map_err(|(problem, norm)| format!("embedding is {problem} (L2 norm {norm})"))
}

/// Calls `f` with every stored product that start-up accepts (its row
/// decodes and passes its checksum, its vector is one the index takes) and
/// returns the errors of the others, naming each by id.
fn scan_usable(
    store: &Store,
    path: &std::path::Path,
    dim: usize,
    metric: Metric,
    f: &mut dyn FnMut(StoredProduct),
) -> Result<Vec<StoreError>, CatalogError> {
    let mut damaged = Vec::new();
    let mut unusable = Vec::new();
    survive_store_panic(path, || {
        Ok(store.scan_checked(
            &mut |p: StoredProduct| {
                match usable_vector(&p.embedding, dim, metric) {
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
/// needs "this file is damaged", not a backtrace. While it runs, panics on
/// this thread are not printed by the panic hook (the error reports them);
/// panics on other threads still are. Calls are serialised because the
/// hook is process-wide; they happen at start-up and in `lookbook check`.
fn survive_store_panic<T>(
    path: &std::path::Path,
    read: impl FnOnce() -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync>;
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A poisoned lock only means an earlier call panicked outside
    // `catch_unwind`; the guard protects no data.
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let reader = std::thread::current().id();
    let previous: Arc<Hook> = Arc::new(std::panic::take_hook());
    std::panic::set_hook({
        let previous = Arc::clone(&previous);
        Box::new(move |info| {
            if std::thread::current().id() != reader {
                previous(info);
            }
        })
    });
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    drop(std::panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => std::panic::set_hook(hook),
        Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
    }
    outcome.unwrap_or_else(|payload| {
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
