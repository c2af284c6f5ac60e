//! The `meta` table: small named singletons describing the catalog as a whole.
//!
//! Values are byte strings with a leading format byte (see [`super::codec`]) rather than redb's
//! typed `u64`/`&str` values, because redb's built-in decoders panic on malformed bytes while
//! ours report [`StoreError::Corrupt`]. Keys:
//! - `products_version` (format 1: `u64`): bumped in the same transaction as every committed
//!   product write or delete, so a derived artefact (the vector index dump) that records the
//!   version it was built from can tell it is stale. Absent means 0.
//! - `catalog_model` (format 1: `u32` length + name, `u32` dim): the embedding model the catalog
//!   was built with.
//! - `catalog_metric` (format 1: `u32` length + name): the similarity metric the catalog was
//!   created with (`cosine`, `dot`, `euclidean`, `manhattan`).
//! - `applied_products`, `applied_interactions` (format 1: `u64`): in cluster mode, the last
//!   sequence of each replicated log whose change this store holds, written in the same
//!   transaction as that change so that a restart resumes exactly after it. Absent means 0
//!   (nothing applied; always the case on a single node).

use redb::{ReadableTable, Table, TableDefinition};

use super::codec::{Malformed, Reader, Writer, len_u32};
use super::error::{StoreError, db};

/// Singleton name -> encoded value.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new(META_NAME);
const META_NAME: &str = "meta";

const VERSION_KEY: &str = "products_version";
const CATALOG_MODEL_KEY: &str = "catalog_model";
const CATALOG_METRIC_KEY: &str = "catalog_metric";
const APPLIED_PRODUCTS_KEY: &str = "applied_products";
const APPLIED_INTERACTIONS_KEY: &str = "applied_interactions";
const FORMAT_V1: u8 = 1;

/// Reads and decodes `key`, or `None` if it was never written.
fn read<T>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
    op: &'static str,
    decode: impl FnOnce(&mut Reader<'_>) -> Result<T, Malformed>,
) -> Result<Option<T>, StoreError> {
    let Some(guard) = table.get(key).map_err(db(op))? else {
        return Ok(None);
    };
    let bytes = guard.value();
    let mut r = Reader::new(bytes);
    let decoded = r.format(FORMAT_V1).and_then(|()| decode(&mut r));
    decoded
        .and_then(|v| r.finish().map(|()| v))
        .map(Some)
        .map_err(|m| m.at(META_NAME, key))
}

pub(super) fn version(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    Ok(read(table, VERSION_KEY, "read version", |r| r.u64("version"))?.unwrap_or(0))
}

/// Increments the product version inside the caller's write transaction and returns the new
/// value.
pub(super) fn bump_version(table: &mut Table<'_, &str, &[u8]>) -> Result<u64, StoreError> {
    let next = version(table)?
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt {
            table: META_NAME,
            key: VERSION_KEY.to_owned(),
            reason: "version is u64::MAX and cannot be bumped".to_owned(),
        })?;
    put_u64(table, VERSION_KEY, next, "bump version")?;
    Ok(next)
}

/// Writes `value` as a format-1 `u64` singleton.
fn put_u64(
    table: &mut Table<'_, &str, &[u8]>,
    key: &'static str,
    value: u64,
    op: &'static str,
) -> Result<(), StoreError> {
    let mut w = Writer::with_capacity(9);
    w.u8(FORMAT_V1);
    w.u64(value);
    table.insert(key, w.finish().as_slice()).map_err(db(op))?;
    Ok(())
}

pub(super) fn catalog_model(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<(String, u32)>, StoreError> {
    read(table, CATALOG_MODEL_KEY, "read catalog model", |r| {
        let name = r.str("model name")?.to_owned();
        let dim = r.u32("dim")?;
        Ok((name, dim))
    })
}

pub(super) fn set_catalog_model(
    table: &mut Table<'_, &str, &[u8]>,
    name: &str,
    dim: u32,
) -> Result<(), StoreError> {
    let name_len = len_u32(name.len(), CATALOG_MODEL_KEY, "model name")?;
    let mut w = Writer::with_capacity(1 + 4 + name.len() + 4);
    w.u8(FORMAT_V1);
    w.str(name_len, name);
    w.u32(dim);
    table
        .insert(CATALOG_MODEL_KEY, w.finish().as_slice())
        .map_err(db("set catalog model"))?;
    Ok(())
}

/// Records `name`/`dim` as the catalog model unless one is already recorded.
pub(super) fn init_catalog_model(
    table: &mut Table<'_, &str, &[u8]>,
    name: &str,
    dim: usize,
) -> Result<(), StoreError> {
    if table
        .get(CATALOG_MODEL_KEY)
        .map_err(db("read catalog model"))?
        .is_some()
    {
        return Ok(());
    }
    let dim = len_u32(dim, CATALOG_MODEL_KEY, "embedding")?;
    set_catalog_model(table, name, dim)
}

pub(super) fn catalog_metric(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<String>, StoreError> {
    read(table, CATALOG_METRIC_KEY, "read catalog metric", |r| {
        Ok(r.str("metric")?.to_owned())
    })
}

pub(super) fn set_catalog_metric(
    table: &mut Table<'_, &str, &[u8]>,
    metric: &str,
) -> Result<(), StoreError> {
    let len = len_u32(metric.len(), CATALOG_METRIC_KEY, "metric")?;
    let mut w = Writer::with_capacity(1 + 4 + metric.len());
    w.u8(FORMAT_V1);
    w.str(len, metric);
    table
        .insert(CATALOG_METRIC_KEY, w.finish().as_slice())
        .map_err(db("set catalog metric"))?;
    Ok(())
}

/// A position in one of the replicated logs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Products(u64),
    Interactions(u64),
}

impl Applied {
    fn key(self) -> (&'static str, u64) {
        match self {
            Self::Products(seq) => (APPLIED_PRODUCTS_KEY, seq),
            Self::Interactions(seq) => (APPLIED_INTERACTIONS_KEY, seq),
        }
    }
}

/// The applied sequences `(products, interactions)`; 0 for a log never applied.
pub(super) fn applied(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(u64, u64), StoreError> {
    let products = read(table, APPLIED_PRODUCTS_KEY, "read applied", |r| {
        r.u64("seq")
    })?;
    let interactions = read(table, APPLIED_INTERACTIONS_KEY, "read applied", |r| {
        r.u64("seq")
    })?;
    Ok((products.unwrap_or(0), interactions.unwrap_or(0)))
}

/// Records `applied` inside the caller's write transaction.
pub(super) fn set_applied(
    table: &mut Table<'_, &str, &[u8]>,
    applied: Applied,
) -> Result<(), StoreError> {
    let (key, seq) = applied.key();
    put_u64(table, key, seq, "set applied")
}
