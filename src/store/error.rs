//! The store layer's single error type.
//!
//! redb reports failures through five error types (database, transaction, table, storage,
//! commit); they are folded into [`redb::Error`] and tagged with the store operation that hit
//! them, because "which call failed" is what an operator can act on, while the redb source keeps
//! the detail. Opening is kept apart since its failures (file locked by another process, not a
//! redb file, permission denied) need the path to be acted on.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The parent directory of the database file could not be created.
    #[error("cannot create directory {path:?} for the store")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// redb refused to open (or repair) the database file, e.g. because another process holds
    /// it open (`DatabaseAlreadyOpen`) or the file is not a redb database.
    #[error("cannot open store at {path:?}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },

    /// A redb transaction, table, storage or commit failure during `op`.
    #[error("store {op} failed")]
    Db {
        /// The [`crate::store::Store`] method (or internal step) that failed.
        op: &'static str,
        #[source]
        source: redb::Error,
    },

    /// A stored value could not be decoded: the bytes were written by an unknown format version
    /// or damaged. Never produced by a panic; the rest of the table stays readable.
    #[error("corrupt value in table {table:?} at key {key:?}: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },

    /// A field is too long for the value encoding's 32-bit length prefixes.
    #[error("{field} of {key:?} has {len} elements, more than the store encoding allows")]
    TooLarge {
        key: String,
        field: &'static str,
        len: usize,
    },
}

/// Adapts any redb error into [`StoreError::Db`] tagged with `op`, for use as
/// `.map_err(db("put"))`.
pub(super) fn db<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        source: e.into(),
    }
}
