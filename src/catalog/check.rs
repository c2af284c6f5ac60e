//! `lookbook check`: an offline verification of a data directory.
//!
//! Reads every stored row the way start-up does (checksums, decoding,
//! vectors the index would accept) and the index dump the way start-up
//! loads it, and says what a start would do with each: serve it, leave it
//! out, or rebuild it. It opens the store like the server does, so it needs
//! the server stopped (redb allows one process per file).

use std::{fmt, path::Path};

use crate::{
    index::{IndexParams, VectorIndex},
    store::{Store, StoreError},
};

use super::{CatalogError, INDEX_DUMP_DIR, STORE_FILE, scan_usable, survive_store_panic};

/// What the dump folder holds, as start-up would judge it.
#[derive(Debug)]
pub enum DumpState {
    /// Intact; start-up loads it and reconciles it with the store (re-inserts
    /// what changed after `store_version`, which may be older than the store's).
    Checkpoint { points: usize, store_version: u64 },
    /// Missing, or made for another model, graph shape, format or platform;
    /// start-up rebuilds the index.
    Stale,
    /// Fails its checks; start-up rebuilds the index.
    Damaged(String),
}

#[derive(Debug)]
pub struct CheckReport {
    pub model: Option<(String, u32)>,
    pub store_version: u64,
    pub products: u64,
    /// Rows start-up leaves out, by id, with the reason.
    pub damaged_products: Vec<StoreError>,
    /// Shopper rows that fail their checksum or decoding, each naming its
    /// table and key, by table (`profiles`, `interactions`, `trending`);
    /// and any shopper table that could not be read at all.
    pub damaged_shopper_rows: Vec<StoreError>,
    pub dump: DumpState,
}

impl CheckReport {
    /// Whether stored data (not just a derived file) is damaged.
    pub fn store_is_damaged(&self) -> bool {
        !self.damaged_products.is_empty() || !self.damaged_shopper_rows.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some((model, dim)) => writeln!(f, "model: {model} (dim {dim})")?,
            None => writeln!(f, "model: none recorded (empty catalogue)")?,
        }
        writeln!(f, "store version: {}", self.store_version)?;
        writeln!(f, "products readable: {}", self.products)?;
        writeln!(
            f,
            "products damaged (left out at start): {}",
            self.damaged_products.len()
        )?;
        for e in &self.damaged_products {
            writeln!(f, "  {e}")?;
        }
        let in_table = |name: &str| {
            self.damaged_shopper_rows
                .iter()
                .filter(|e| matches!(e, StoreError::Corrupt { table, .. } if *table == name))
                .count()
        };
        writeln!(
            f,
            "shopper rows damaged: profiles {} (rebuilt from the history when loaded), \
             interactions {}, trending {} (skipped)",
            in_table("profiles"),
            in_table("interactions"),
            in_table("trending"),
        )?;
        for e in &self.damaged_shopper_rows {
            writeln!(f, "  {e}")?;
        }
        match &self.dump {
            DumpState::Checkpoint {
                points,
                store_version,
            } => writeln!(
                f,
                "index checkpoint: {points} points as of store version {store_version}; \
                 start-up loads it and re-inserts what changed since"
            ),
            DumpState::Stale => writeln!(
                f,
                "index checkpoint: missing or made for another model or graph shape; \
                 start-up rebuilds the index"
            ),
            DumpState::Damaged(reason) => writeln!(
                f,
                "index dump: damaged ({reason}); start-up rebuilds the index"
            ),
        }
    }
}

/// Verifies `data_dir` (see the module docs). `Err` only when the store
/// cannot be opened or read at all.
pub fn check(data_dir: &Path, params: IndexParams) -> Result<CheckReport, CatalogError> {
    let store_path = data_dir.join(STORE_FILE);
    if !store_path.is_file() {
        return Err(CatalogError::StoreDamaged {
            path: store_path,
            detail: "no such file".to_owned(),
        });
    }
    let store = survive_store_panic(&store_path, || Ok(Store::open(&store_path)?))?;
    let model = store.catalog_model()?;
    let store_version = store.version()?;
    let dim = model.as_ref().map_or(0, |(_, d)| *d as usize);
    let mut products = 0_u64;
    // TODO(metric-property): judge the rows by the metric the store records
    // once it records one; until then, by the configured one.
    let damaged = scan_usable(&store, &store_path, dim, params.metric, &mut |_| {
        products += 1;
    })?;
    let mut shopper_rows = Vec::new();
    let unreadable = survive_store_panic(&store_path, || {
        Ok([
            store.scan_profiles(&mut |_| Ok(()), &mut shopper_rows),
            store.scan_interactions(&mut |_| Ok(()), &mut shopper_rows),
            store.scan_trends(&mut |_| Ok(()), &mut shopper_rows),
        ])
    })?;
    shopper_rows.extend(unreadable.into_iter().filter_map(Result::err));
    drop(store);
    let dump = match VectorIndex::load(&data_dir.join(INDEX_DUMP_DIR), dim, params) {
        Ok(Some((index, at))) => DumpState::Checkpoint {
            points: index.len(),
            store_version: at,
        },
        Ok(None) => DumpState::Stale,
        Err(e) => DumpState::Damaged(e.to_string()),
    };
    Ok(CheckReport {
        model,
        store_version,
        products,
        damaged_products: damaged,
        damaged_shopper_rows: shopper_rows,
        dump,
    })
}
