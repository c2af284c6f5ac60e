//! Durable store for the catalog: every product (id, attributes, embedding, model) plus the
//! catalog-wide metadata, in one redb file.
//!
//! This is the source of truth the in-memory vector index is rebuilt from at start-up, so the
//! design favours two things:
//! - **Durability per acknowledged write.** Every mutating call is one redb write transaction
//!   committed with [`redb::Durability::Immediate`] (fsync) before it returns, so an
//!   acknowledged product survives a process kill, and a power loss as far as the disk honours
//!   fsync; a killed writer leaves either the whole transaction or none of it (redb's
//!   checksummed commit slots; the file is repaired on the next [`Store::open`]).
//! - **Recovery that does not read the whole file.** Every commit also saves redb's allocator
//!   state and commits in two phases (redb's quick-repair), so opening after a crash trusts the
//!   primary commit slot and loads that state. Without it, redb's repair walks and checksums
//!   every page to rebuild the allocator: 176 s for a 535K-product file on the 2-core dev VM
//!   (with a build running beside it), longer than any start-up probe, while start-up
//!   otherwise costs the writes since the last index checkpoint. The price is a larger commit
//!   (`make bench`, `benches/store.rs`).
//! - **Fast bulk load.** Products are keyed by id and their embeddings are stored as raw
//!   little-endian `f32`, so [`Store::scan`] streams the catalog in id order with one copy per
//!   embedding (about 0.1 s for 12K x 1280-d on a 2-core dev VM).
//!
//! A `products_version` counter is bumped in the same transaction as every product change; a
//! dump of the vector index records the version it was built from and is stale if it differs.
//!
//! Tables are grouped one module per concern (`products`, `meta`), each owning its
//! `TableDefinition` consts and value encodings, private to this module so nothing outside can
//! write a row without its version bump; [`Store::open`] creates every table so read transactions never
//! meet a missing one. Shopper state (`users`: history, taste profiles, trending counts) lives in
//! the same file: one fsync'd file to back up, and a group commit of interactions is one
//! transaction like a product batch.
//!
//! All methods block on disk I/O: call them from `spawn_blocking` or a dedicated thread, never
//! on an async worker. `Store` is `Send + Sync` and meant to be shared through an `Arc`; redb
//! serialises write transactions internally and readers see consistent snapshots.

mod codec;
mod error;
mod meta;
mod products;
mod thumbnails;
mod users;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

pub use error::StoreError;
pub use meta::Applied;
pub use products::StoredProduct;
pub use users::{
    InteractionCommit, StoredInteraction, StoredInterest, StoredProfile, StoredShopper,
    StoredTrend, UserWrite,
};

use meta::META;
use products::PRODUCTS;
use thumbnails::THUMBNAILS;
use users::{INTERACTIONS, PROFILES, TRENDS};

use error::db;

/// Whether a write inserted a new product or replaced an existing one with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Created,
    Replaced,
}

/// redb's page cache. Its default is 1 GiB, and since the whole store is
/// read once at start-up (the catalogue and the index live in memory) the
/// cache would fill with pages nothing reads again: at 12K products that
/// was ~6 KB of RSS per product, more than the vector itself. Writes only
/// need the B-tree's upper pages cached.
const CACHE_BYTES: usize = 32 << 20;

/// Handle on the store's redb database.
#[derive(Debug)]
pub struct Store {
    /// Every table listed in `open` exists in this database.
    db: redb::Database,
    /// Whether commits save the allocator state (see the module docs).
    quick_repair: bool,
    /// Whether opening ran redb's full repair (an unclean shutdown whose
    /// last commit saved no allocator state).
    full_repair: bool,
}

/// How [`Store::open_with`] opens a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Save redb's allocator state with every commit so that opening after a crash skips the
    /// full-file repair (see the module docs). On by default; off only to measure its cost.
    pub quick_repair: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { quick_repair: true }
    }
}

/// Commits `txn` durably, timing it for `lookbook_store_commit_duration_seconds`
/// (labelled by operation: the fsync dominates and differs by what is written).
fn commit(txn: WriteTransaction, op: &'static str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let result = txn.commit().map_err(db(op));
    metrics::histogram!("lookbook_store_commit_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    result
}

impl Store {
    /// Opens the database at `path`, creating the parent directories and the file if needed.
    ///
    /// A file left by a crashed writer is recovered by redb before this returns: from the
    /// allocator state its last commit saved (quick-repair, the default: about instant), or
    /// else by a full repair that reads the whole file (progress logged at `warn`). Fails with
    /// [`StoreError::Open`] (`DatabaseAlreadyOpen`) if another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Whether opening this store had to run redb's full repair, reading the whole file.
    pub fn opened_with_full_repair(&self) -> bool {
        self.full_repair
    }

    /// [`Store::open`] with explicit options.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let repaired = Arc::new(AtomicBool::new(false));
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback({
                let repaired = Arc::clone(&repaired);
                move |session| {
                    repaired.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        progress = session.progress(),
                        "repairing store after unclean shutdown (the whole file is read)"
                    );
                }
            })
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let store = Self {
            db,
            quick_repair: options.quick_repair,
            full_repair: repaired.load(Ordering::Relaxed),
        };
        store.create_tables()?;
        tracing::info!(
            path = %path.display(),
            products = store.len()?,
            version = store.version()?,
            "store opened"
        );
        Ok(store)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        const OP: &str = "create tables";
        let txn = self.begin_write(OP)?;
        txn.open_table(PRODUCTS).map_err(db(OP))?;
        txn.open_table(THUMBNAILS).map_err(db(OP))?;
        txn.open_table(META).map_err(db(OP))?;
        txn.open_table(INTERACTIONS).map_err(db(OP))?;
        txn.open_table(PROFILES).map_err(db(OP))?;
        txn.open_table(TRENDS).map_err(db(OP))?;
        commit(txn, OP)
    }

    fn begin_write(&self, op: &'static str) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(db(op))?;
        // Immediate is redb's default; set it so a change of default cannot weaken the promise
        // that an acknowledged write is on disk.
        txn.set_durability(Durability::Immediate).map_err(db(op))?;
        txn.set_quick_repair(self.quick_repair);
        Ok(txn)
    }

    /// Inserts or replaces one product in its own durable transaction and bumps the version.
    /// Returns only after the commit is on disk. Records the catalog model (from `p.model` and
    /// the embedding length) if none is recorded yet.
    ///
    /// Like every write without a thumbnail, it removes any thumbnail stored for the id: the
    /// thumbnail showed the photo the product was last added from.
    pub fn put(&self, p: &StoredProduct) -> Result<Upsert, StoreError> {
        let mut upsert = Upsert::Created;
        self.write_products("put", std::slice::from_ref(p), &[], None, |u| upsert = u)?;
        Ok(upsert)
    }

    /// Inserts or replaces all of `ps` in one durable transaction (all or nothing) and bumps the
    /// version once. A repeated id inside the batch: the later product wins and is reported as
    /// [`Upsert::Replaced`]. An empty batch writes nothing and does not bump the version. The
    /// catalog model is recorded from the first product if none is recorded yet.
    pub fn put_batch(&self, ps: &[StoredProduct]) -> Result<Vec<Upsert>, StoreError> {
        self.put_batch_with_thumbnails(ps, &[])
    }

    /// [`Self::put_batch`] with a thumbnail (JPEG bytes) per product: `thumbnails[i]` belongs
    /// to `ps[i]`; `None`, or an index past the end of `thumbnails`, removes any stored one.
    /// `has_thumbnail` of each product is set from this, whatever `ps` says.
    pub fn put_batch_with_thumbnails(
        &self,
        ps: &[StoredProduct],
        thumbnails: &[Option<&[u8]>],
    ) -> Result<Vec<Upsert>, StoreError> {
        self.put_batch_applied(ps, thumbnails, None)
    }

    /// [`Self::put_batch_with_thumbnails`] that also records `applied` (a replicated log's
    /// position) in the same transaction; with `applied` the transaction commits even when
    /// `ps` is empty.
    pub fn put_batch_applied(
        &self,
        ps: &[StoredProduct],
        thumbnails: &[Option<&[u8]>],
        applied: Option<Applied>,
    ) -> Result<Vec<Upsert>, StoreError> {
        let mut upserts = Vec::with_capacity(ps.len());
        self.write_products("put_batch", ps, thumbnails, applied, |u| upserts.push(u))?;
        Ok(upserts)
    }

    /// Shared body of the puts: reports each product's [`Upsert`] in order.
    fn write_products(
        &self,
        op: &'static str,
        ps: &[StoredProduct],
        thumbnails: &[Option<&[u8]>],
        applied: Option<Applied>,
        mut report: impl FnMut(Upsert),
    ) -> Result<(), StoreError> {
        if ps.is_empty() && applied.is_none() {
            return Ok(());
        }
        let thumbnail = |i: usize| thumbnails.get(i).copied().flatten();
        // Encode before taking the write transaction, which excludes every other writer.
        let values = ps
            .iter()
            .enumerate()
            .map(|(i, p)| products::encode(p, thumbnail(i).is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        let thumbnail_values: Vec<Option<Vec<u8>>> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| thumbnail(i).map(|jpeg| thumbnails::encode(&p.id, jpeg)))
            .collect();
        let txn = self.begin_write(op)?;
        let version = {
            let mut table = txn.open_table(PRODUCTS).map_err(db(op))?;
            let mut thumbs = txn.open_table(THUMBNAILS).map_err(db(op))?;
            for ((p, value), thumb) in ps.iter().zip(&values).zip(&thumbnail_values) {
                let old = table
                    .insert(p.id.as_str(), value.as_slice())
                    .map_err(db(op))?;
                match thumb {
                    Some(t) => {
                        thumbs.insert(p.id.as_str(), t.as_slice()).map_err(db(op))?;
                    }
                    None => {
                        thumbs.remove(p.id.as_str()).map_err(db(op))?;
                    }
                }
                report(if old.is_some() {
                    Upsert::Replaced
                } else {
                    Upsert::Created
                });
            }
            let mut meta = txn.open_table(META).map_err(db(op))?;
            if let Some(applied) = applied {
                meta::set_applied(&mut meta, applied)?;
            }
            match ps.first() {
                Some(first) => {
                    meta::init_catalog_model(&mut meta, &first.model, first.embedding.len())?;
                    meta::bump_version(&mut meta)?
                }
                None => meta::version(&meta)?,
            }
        };
        commit(txn, op)?;
        tracing::debug!(products = ps.len(), version, "products written");
        Ok(())
    }

    /// Deletes a product durably; `false` (and no version bump) if the id was absent.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_applied(id, None)
    }

    /// [`Self::delete`] that also records `applied` in the same transaction, which then
    /// commits even when the id was absent.
    pub fn delete_applied(&self, id: &str, applied: Option<Applied>) -> Result<bool, StoreError> {
        const OP: &str = "delete";
        let txn = self.begin_write(OP)?;
        let version = {
            let mut table = txn.open_table(PRODUCTS).map_err(db(OP))?;
            if let Some(applied) = applied {
                meta::set_applied(&mut txn.open_table(META).map_err(db(OP))?, applied)?;
            }
            if table.remove(id).map_err(db(OP))?.is_none() {
                None
            } else {
                txn.open_table(THUMBNAILS)
                    .map_err(db(OP))?
                    .remove(id)
                    .map_err(db(OP))?;
                let mut meta = txn.open_table(META).map_err(db(OP))?;
                Some(meta::bump_version(&mut meta)?)
            }
        };
        match version {
            Some(version) => {
                commit(txn, OP)?;
                tracing::debug!(id, version, "product deleted");
                Ok(true)
            }
            None if applied.is_some() => {
                commit(txn, OP)?;
                Ok(false)
            }
            None => {
                txn.abort().map_err(db(OP))?;
                Ok(false)
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredProduct>, StoreError> {
        const OP: &str = "get";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(PRODUCTS).map_err(db(OP))?;
        let Some(value) = table.get(id).map_err(db(OP))? else {
            return Ok(None);
        };
        products::decode(id, value.value()).map(Some)
    }

    /// The thumbnail stored for `id`, if any.
    pub fn thumbnail(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        const OP: &str = "get thumbnail";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(THUMBNAILS).map_err(db(OP))?;
        let Some(value) = table.get(id).map_err(db(OP))? else {
            return Ok(None);
        };
        thumbnails::decode(id, value.value()).map(Some)
    }

    /// Sets and removes attributes of a stored product in one durable transaction; its
    /// vector and thumbnail stay as they are. Returns the product as now stored, or `None`
    /// (nothing written) if there is none. `set` wins over `remove` for a key in both.
    ///
    /// Does not bump the product version: the version tells a vector index dump whether it
    /// is stale, and attributes are not in the dump.
    pub fn update_attributes(
        &self,
        id: &str,
        set: &std::collections::BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Option<StoredProduct>, StoreError> {
        const OP: &str = "update attributes";
        let txn = self.begin_write(OP)?;
        let updated = {
            let mut table = txn.open_table(PRODUCTS).map_err(db(OP))?;
            let current = match table.get(id).map_err(db(OP))? {
                Some(value) => Some(products::decode(id, value.value())?),
                None => None,
            };
            match current {
                None => None,
                Some(mut p) => {
                    for key in remove {
                        p.attributes.remove(key);
                    }
                    for (k, v) in set {
                        p.attributes.insert(k.clone(), v.clone());
                    }
                    let value = products::encode(&p, p.has_thumbnail)?;
                    table.insert(id, value.as_slice()).map_err(db(OP))?;
                    Some(p)
                }
            }
        };
        match updated {
            Some(p) => {
                commit(txn, OP)?;
                Ok(Some(p))
            }
            None => {
                txn.abort().map_err(db(OP))?;
                Ok(None)
            }
        }
    }

    /// The similarity metric the catalog was created with, if recorded (by
    /// [`Self::set_catalog_metric`]); stores from before metrics were recorded have none.
    pub fn catalog_metric(&self) -> Result<Option<String>, StoreError> {
        const OP: &str = "catalog metric";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(META).map_err(db(OP))?;
        meta::catalog_metric(&table)
    }

    /// Records the catalog's similarity metric durably.
    pub fn set_catalog_metric(&self, metric: &str) -> Result<(), StoreError> {
        const OP: &str = "set catalog metric";
        let txn = self.begin_write(OP)?;
        {
            let mut table = txn.open_table(META).map_err(db(OP))?;
            meta::set_catalog_metric(&mut table, metric)?;
        }
        commit(txn, OP)
    }

    /// The replicated logs' applied sequences `(products, interactions)` (see
    /// [`Applied`]); `(0, 0)` on a single node.
    pub fn applied(&self) -> Result<(u64, u64), StoreError> {
        const OP: &str = "applied";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(META).map_err(db(OP))?;
        meta::applied(&table)
    }

    /// Number of stored products (O(1): redb keeps the count in the table header).
    pub fn len(&self) -> Result<u64, StoreError> {
        const OP: &str = "len";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(PRODUCTS).map_err(db(OP))?;
        table.len().map_err(db(OP))
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// The product version: 0 for a new store, +1 for every committed `put`, non-empty
    /// `put_batch` and successful `delete`.
    pub fn version(&self) -> Result<u64, StoreError> {
        const OP: &str = "version";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(META).map_err(db(OP))?;
        meta::version(&table)
    }

    /// The embedding model name and dimension the catalog was built with, if recorded.
    pub fn catalog_model(&self) -> Result<Option<(String, u32)>, StoreError> {
        const OP: &str = "catalog model";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(META).map_err(db(OP))?;
        meta::catalog_model(&table)
    }

    /// Records (overwriting) the catalog model durably. Does not bump the product version:
    /// switching models goes with re-embedding every product, and those writes bump it.
    pub fn set_catalog_model(&self, name: &str, dim: u32) -> Result<(), StoreError> {
        const OP: &str = "set catalog model";
        let txn = self.begin_write(OP)?;
        {
            let mut table = txn.open_table(META).map_err(db(OP))?;
            meta::set_catalog_model(&mut table, name, dim)?;
        }
        commit(txn, OP)
    }

    /// Calls `f` with every product in id order (byte-wise, as `str` sorts), from one consistent
    /// snapshot; stops at the first error (from decoding or from `f`) and returns it.
    ///
    /// The snapshot's read transaction is held until this returns, which keeps the pages it sees
    /// from being reused by concurrent writers: keep `f` quick (e.g. collect, then build).
    pub fn scan(
        &self,
        f: &mut dyn FnMut(StoredProduct) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        const OP: &str = "scan";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(PRODUCTS).map_err(db(OP))?;
        for entry in table.iter().map_err(db(OP))? {
            let (key, value) = entry.map_err(db(OP))?;
            f(products::decode(key.value(), value.value())?)?;
        }
        Ok(())
    }

    /// Like [`Self::scan`], but a row that fails to decode (damaged, or of
    /// an unknown format) does not end the scan: its error, naming the key,
    /// is pushed to `damaged` and the scan goes on. Errors of the database
    /// itself, and errors from `f`, still end it.
    pub fn scan_checked(
        &self,
        f: &mut dyn FnMut(StoredProduct) -> Result<(), StoreError>,
        damaged: &mut Vec<StoreError>,
    ) -> Result<(), StoreError> {
        const OP: &str = "scan";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(PRODUCTS).map_err(db(OP))?;
        for entry in table.iter().map_err(db(OP))? {
            let (key, value) = entry.map_err(db(OP))?;
            match products::decode(key.value(), value.value()) {
                Ok(p) => f(p)?,
                Err(e) => damaged.push(e),
            }
        }
        Ok(())
    }

    /// Applies one group commit of interactions (history rows appended and
    /// evicted, profiles and trending counts replaced) in one durable
    /// transaction: all of it or none of it survives a crash. Does not bump
    /// the product version (the index dump does not depend on it).
    pub fn commit_interactions(&self, c: &InteractionCommit) -> Result<(), StoreError> {
        const OP: &str = "commit interactions";
        if c.users.is_empty() && c.trends.is_empty() && c.applied.is_none() {
            return Ok(());
        }
        let txn = self.begin_write(OP)?;
        {
            if let Some(seq) = c.applied {
                let mut meta = txn.open_table(META).map_err(db(OP))?;
                meta::set_applied(&mut meta, Applied::Interactions(seq))?;
            }
            let mut history = txn.open_table(INTERACTIONS).map_err(db(OP))?;
            let mut profiles = txn.open_table(PROFILES).map_err(db(OP))?;
            for u in &c.users {
                for (seq, i) in &u.appended {
                    let value = users::encode_interaction(&u.user, *seq, i)?;
                    history
                        .insert((u.user.as_str(), *seq), value.as_slice())
                        .map_err(db(OP))?;
                }
                for seq in &u.evicted {
                    history.remove((u.user.as_str(), *seq)).map_err(db(OP))?;
                }
                let value = users::encode_profile(&u.user, &u.profile)?;
                profiles
                    .insert(u.user.as_str(), value.as_slice())
                    .map_err(db(OP))?;
            }
            let mut trends = txn.open_table(TRENDS).map_err(db(OP))?;
            for (product, t) in &c.trends {
                trends
                    .insert(
                        product.as_str(),
                        users::encode_trend(product, *t).as_slice(),
                    )
                    .map_err(db(OP))?;
            }
        }
        commit(txn, OP)
    }

    /// Durably erases a user's history and profile; returns how many
    /// history rows were erased and whether anything was stored at all.
    pub fn forget_user(&self, user: &str) -> Result<(u64, bool), StoreError> {
        self.forget_user_applied(user, None)
    }

    /// [`Self::forget_user`] that also records `applied` in the same transaction.
    pub fn forget_user_applied(
        &self,
        user: &str,
        applied: Option<u64>,
    ) -> Result<(u64, bool), StoreError> {
        const OP: &str = "forget user";
        let txn = self.begin_write(OP)?;
        if let Some(seq) = applied {
            let mut meta = txn.open_table(META).map_err(db(OP))?;
            meta::set_applied(&mut meta, Applied::Interactions(seq))?;
        }
        let (erased, had_profile) = {
            let mut history = txn.open_table(INTERACTIONS).map_err(db(OP))?;
            let mut erased = 0u64;
            history
                .retain_in((user, 0u64)..=(user, u64::MAX), |_, _| {
                    erased += 1;
                    false
                })
                .map_err(db(OP))?;
            let mut profiles = txn.open_table(PROFILES).map_err(db(OP))?;
            let had_profile = profiles.remove(user).map_err(db(OP))?.is_some();
            (erased, had_profile)
        };
        commit(txn, OP)?;
        Ok((erased, had_profile || erased > 0))
    }

    /// The stored profile and history of each of `users`, in order, from one
    /// consistent snapshot: two lookups per user, so a shopper can be
    /// brought back into memory without scanning anyone else's rows.
    ///
    /// A row that fails its checksum or decoding does not fail the call: it
    /// is returned in the shopper's `damaged_profile` / `damaged_history`
    /// (naming its key) and left out of the rest. Errors of the database
    /// itself still fail it.
    pub fn load_shoppers(&self, users: &[&str]) -> Result<Vec<StoredShopper>, StoreError> {
        const OP: &str = "load shoppers";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let profiles = txn.open_table(PROFILES).map_err(db(OP))?;
        let history = txn.open_table(INTERACTIONS).map_err(db(OP))?;
        let mut out = Vec::with_capacity(users.len());
        for &user in users {
            let mut shopper = StoredShopper::default();
            if let Some(value) = profiles.get(user).map_err(db(OP))? {
                match users::decode_profile(user, value.value()) {
                    Ok(p) => shopper.profile = Some(p),
                    Err(e) => shopper.damaged_profile = Some(e),
                }
            }
            for entry in history
                .range((user, 0u64)..=(user, u64::MAX))
                .map_err(db(OP))?
            {
                let (key, value) = entry.map_err(db(OP))?;
                let (_, seq) = key.value();
                match users::decode_interaction(user, seq, value.value()) {
                    Ok(i) => shopper.history.push((seq, i)),
                    Err(e) => shopper.damaged_history.push((seq, e)),
                }
            }
            out.push(shopper);
        }
        Ok(out)
    }

    /// Stored profiles (one per known shopper) and history rows; O(1)
    /// (redb keeps the counts in the table headers).
    pub fn shopper_counts(&self) -> Result<(u64, u64), StoreError> {
        const OP: &str = "shopper counts";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let profiles = txn.open_table(PROFILES).map_err(db(OP))?;
        let history = txn.open_table(INTERACTIONS).map_err(db(OP))?;
        Ok((
            profiles.len().map_err(db(OP))?,
            history.len().map_err(db(OP))?,
        ))
    }

    /// Calls `f` with every stored profile, in user id order; a row that
    /// fails its checksum or decoding goes to `damaged` (naming its key) and
    /// the scan goes on. Errors of the database, and from `f`, end it.
    pub fn scan_profiles(
        &self,
        f: &mut dyn FnMut((String, StoredProfile)) -> Result<(), StoreError>,
        damaged: &mut Vec<StoreError>,
    ) -> Result<(), StoreError> {
        const OP: &str = "scan profiles";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(PROFILES).map_err(db(OP))?;
        users::scan_table(
            &table,
            OP,
            |user, bytes| Ok((user.to_owned(), users::decode_profile(user, bytes)?)),
            f,
            damaged,
        )
    }

    /// Calls `f` with every stored interaction, by user id then sequence
    /// (i.e. each user's history in arrival order); damaged rows go to
    /// `damaged`, as in [`Self::scan_profiles`].
    pub fn scan_interactions(
        &self,
        f: &mut dyn FnMut((String, u64, StoredInteraction)) -> Result<(), StoreError>,
        damaged: &mut Vec<StoreError>,
    ) -> Result<(), StoreError> {
        const OP: &str = "scan interactions";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(INTERACTIONS).map_err(db(OP))?;
        users::scan_table(
            &table,
            OP,
            |(user, seq), bytes| {
                Ok((
                    user.to_owned(),
                    seq,
                    users::decode_interaction(user, seq, bytes)?,
                ))
            },
            f,
            damaged,
        )
    }

    /// Calls `f` with every stored trending count, in product id order;
    /// damaged rows go to `damaged`, as in [`Self::scan_profiles`].
    pub fn scan_trends(
        &self,
        f: &mut dyn FnMut((String, StoredTrend)) -> Result<(), StoreError>,
        damaged: &mut Vec<StoreError>,
    ) -> Result<(), StoreError> {
        const OP: &str = "scan trending";
        let txn = self.db.begin_read().map_err(db(OP))?;
        let table = txn.open_table(TRENDS).map_err(db(OP))?;
        users::scan_table(
            &table,
            OP,
            |product, bytes| Ok((product.to_owned(), users::decode_trend(product, bytes)?)),
            f,
            damaged,
        )
    }
}
