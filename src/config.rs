//! Typed, layered configuration.
//!
//! Layers, lowest first: built-in defaults < a TOML file (`lookbook.toml` in
//! the working directory if present, or the file given with `--config`) <
//! environment variables `LOOKBOOK__SECTION__KEY` (e.g.
//! `LOOKBOOK__SERVER__LISTEN=0.0.0.0:50051`). This is the only module that
//! reads the process environment, so every knob is visible in one type and
//! can be validated before anything binds a port or loads a model.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{encoder::EncoderConfig, index::IndexParams, personalize::PersonalizeConfig};

/// Environment prefix; `__` separates nesting levels.
const ENV_PREFIX: &str = "LOOKBOOK";
/// Read when present and no `--config` was given.
const DEFAULT_FILE: &str = "lookbook.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The whole service configuration. Every field has a default, so an empty
/// file (or none) gives a working local set-up from the repository root.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub model: ModelConfig,
    pub index: IndexConfig,
    pub limits: LimitsConfig,
    pub personalize: PersonalizeConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest accepted gRPC message. Real catalogue photos run to several
    /// MiB, so the default is well above tonic's 4 MiB.
    pub max_message_bytes: usize,
    /// How long a graceful shutdown waits for in-flight calls to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Bound on concurrently executing CPU-bound searches; further callers
    /// wait (asynchronously) for a slot.
    pub search_concurrency: usize,
    /// Searches allowed to wait for a slot; callers past it get
    /// RESOURCE_EXHAUSTED at once.
    pub max_pending_searches: usize,
    /// Catalogue writes (AddProduct, a batch of AddProducts, DeleteProduct)
    /// allowed to wait for the writer; callers past it get
    /// RESOURCE_EXHAUSTED at once.
    pub max_pending_writes: usize,
    /// Recommender calls in flight on the whole server (running or waiting
    /// in any queue); calls past it get RESOURCE_EXHAUSTED before any work
    /// starts. Health checks and reflection are not counted, so an
    /// overloaded server still reports SERVING.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Holds the redb database and the index dump.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model manifest (`models/<name>.toml`); switching models is changing this.
    pub manifest: PathBuf,
    /// `libonnxruntime.so` to load at run time (`ort`'s `load-dynamic`).
    pub onnxruntime_library: PathBuf,
    /// Inference threads, each owning one ONNX Runtime session.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Encoding jobs allowed to wait for a worker before callers get
    /// RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Decompression-bomb guard, checked from the image header before decode.
    pub max_pixels: u64,
    /// Decode budget: largest buffer the decoder may fill (width x height x
    /// bytes per pixel of its output, so 16-bit images count double), also
    /// checked from the header.
    pub max_decoded_bytes: u64,
    /// Most images in one `Embed` call.
    pub max_batch: usize,
    /// Most images in one model run: concurrent calls are coalesced up to it
    /// (dynamic batching; 1 = off) and larger calls are split into runs of it.
    pub batch_max_images: usize,
    /// Dynamic batching: longest wait for more calls to fill a batch.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// HNSW `M`: links per node.
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    /// Rebuild in the background once this share of index points is dead.
    pub rebuild_dead_ratio: f64,
    /// ... and at least this many points are dead.
    pub rebuild_min_dead: usize,
    /// Filters admitting at most this many products are answered by exact
    /// search over the admitted set instead of filtered HNSW.
    pub exact_threshold: usize,
    /// How often the background task checks whether a rebuild or a
    /// checkpoint is due.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// Products written or deleted since the last index checkpoint after
    /// which the next one is written even while writes go on (otherwise one
    /// is written once writes pause for a `maintenance_interval`). A start
    /// after a crash re-inserts at most about this many products.
    pub checkpoint_changes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest `k` a recommendation call may ask for.
    pub max_k: u32,
    /// Longest accepted product id, in bytes.
    pub max_product_id_bytes: usize,
    /// Most attributes on one product, and longest key/value in bytes.
    pub max_attributes: usize,
    pub max_attribute_bytes: usize,
    /// Longest accepted user id, in bytes.
    pub max_user_id_bytes: usize,
    /// Most ids in `positive_ids` + `negative_ids`, or in
    /// `context_product_ids`: each costs a search or a similarity per
    /// candidate.
    pub max_examples: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `tracing_subscriber` filter directive, e.g. `info,lookbook=debug`.
    pub log_filter: String,
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            max_message_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(20),
            search_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            max_pending_searches: 128,
            max_pending_writes: 128,
            max_in_flight: 512,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            manifest: PathBuf::from("models/efficientnet_lite2.toml"),
            onnxruntime_library: PathBuf::from(".cache/onnxruntime/libonnxruntime.so.1.31.1"),
            workers: 1,
            intra_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_capacity: 64,
            max_pixels: crate::encoder::DEFAULT_MAX_PIXELS,
            max_decoded_bytes: crate::encoder::DEFAULT_MAX_DECODED_BYTES,
            max_batch: 64,
            batch_max_images: crate::encoder::DEFAULT_BATCH_MAX_IMAGES,
            batch_max_delay: crate::encoder::DEFAULT_BATCH_MAX_DELAY,
        }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        let p = IndexParams::default();
        Self {
            m: p.max_nb_connection,
            ef_construction: p.ef_construction,
            ef_search: p.ef_search,
            rebuild_dead_ratio: p.rebuild_dead_ratio,
            rebuild_min_dead: p.rebuild_min_dead,
            exact_threshold: p.exact_threshold,
            maintenance_interval: Duration::from_secs(5),
            checkpoint_changes: 10_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_k: 1000,
            max_product_id_bytes: 256,
            max_attributes: 64,
            max_attribute_bytes: 1024,
            max_user_id_bytes: 256,
            max_examples: 64,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".to_owned(),
            log_format: LogFormat::Text,
        }
    }
}

/// Command-line values that override every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Loads defaults < file < environment < `overrides`, then validates.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::MissingFile(path.to_path_buf()));
                }
                builder = builder.add_source(config::File::from(path).required(true));
            }
            None => {
                builder = builder.add_source(config::File::with_name(DEFAULT_FILE).required(false));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let mut cfg: Self = builder.build()?.try_deserialize()?;
        if let Some(listen) = overrides.listen {
            cfg.server.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            cfg.storage.data_dir.clone_from(dir);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects values that would only fail later, deep inside a request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                field,
                reason: reason.into(),
            }
        }
        fn positive(field: &'static str, v: usize) -> Result<(), ConfigError> {
            if v == 0 {
                Err(invalid(field, "must be at least 1"))
            } else {
                Ok(())
            }
        }
        // 1 MiB is far below any real photo; smaller limits are a typo.
        if self.server.max_message_bytes < 1024 * 1024 {
            return Err(invalid(
                "server.max_message_bytes",
                "must be at least 1 MiB",
            ));
        }
        positive("server.search_concurrency", self.server.search_concurrency)?;
        positive("server.max_in_flight", self.server.max_in_flight)?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        if self.model.manifest.as_os_str().is_empty() {
            return Err(invalid("model.manifest", "must not be empty"));
        }
        positive("model.workers", self.model.workers)?;
        positive("model.intra_threads", self.model.intra_threads)?;
        positive("model.queue_capacity", self.model.queue_capacity)?;
        positive("model.max_batch", self.model.max_batch)?;
        positive("model.batch_max_images", self.model.batch_max_images)?;
        if self.model.max_pixels == 0 {
            return Err(invalid("model.max_pixels", "must be at least 1"));
        }
        if self.model.max_decoded_bytes == 0 {
            return Err(invalid("model.max_decoded_bytes", "must be at least 1"));
        }
        if !(2..=256).contains(&self.index.m) {
            return Err(invalid("index.m", "must be in 2..=256"));
        }
        positive("index.ef_construction", self.index.ef_construction)?;
        positive("index.ef_search", self.index.ef_search)?;
        if !(self.index.rebuild_dead_ratio > 0.0 && self.index.rebuild_dead_ratio <= 1.0) {
            return Err(invalid("index.rebuild_dead_ratio", "must be in (0, 1]"));
        }
        if self.index.maintenance_interval.is_zero() {
            return Err(invalid("index.maintenance_interval", "must be positive"));
        }
        if self.index.checkpoint_changes == 0 {
            return Err(invalid("index.checkpoint_changes", "must be at least 1"));
        }
        if self.limits.max_k == 0 {
            return Err(invalid("limits.max_k", "must be at least 1"));
        }
        positive(
            "limits.max_product_id_bytes",
            self.limits.max_product_id_bytes,
        )?;
        positive(
            "limits.max_attribute_bytes",
            self.limits.max_attribute_bytes,
        )?;
        positive("limits.max_user_id_bytes", self.limits.max_user_id_bytes)?;
        positive("limits.max_examples", self.limits.max_examples)?;
        if let Err((field, reason)) = self.personalize.validate() {
            return Err(ConfigError::Invalid {
                field: "personalize",
                reason: format!("{field} {reason}"),
            });
        }
        tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter)
            .map_err(|e| invalid("telemetry.log_filter", e.to_string()))?;
        Ok(())
    }

    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            manifest: self.model.manifest.clone(),
            onnxruntime_library: self.model.onnxruntime_library.clone(),
            workers: self.model.workers,
            intra_threads: self.model.intra_threads,
            queue_capacity: self.model.queue_capacity,
            max_pixels: self.model.max_pixels,
            max_decoded_bytes: self.model.max_decoded_bytes,
            max_batch: self.model.max_batch,
            batch_max_images: self.model.batch_max_images,
            batch_max_delay: self.model.batch_max_delay,
        }
    }

    pub fn index_params(&self) -> IndexParams {
        IndexParams {
            max_nb_connection: self.index.m,
            ef_construction: self.index.ef_construction,
            ef_search: self.index.ef_search,
            rebuild_dead_ratio: self.index.rebuild_dead_ratio,
            rebuild_min_dead: self.index.rebuild_min_dead,
            exact_threshold: self.index.exact_threshold,
            ..IndexParams::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default()
            .validate()
            .expect("defaults must be valid");
    }

    #[test]
    fn file_layer_overrides_defaults_and_cli_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:7000\"\n[limits]\nmax_k = 50\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(cfg.limits.max_k, 50);
        let over = Overrides {
            listen: Some("127.0.0.1:7001".parse().unwrap()),
            data_dir: Some(PathBuf::from("/tmp/x")),
        };
        let cfg = Config::load(Some(&path), &over).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(cfg.storage.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[index]\nrebuild_dead_ratio = 1.5\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("index.rebuild_dead_ratio"),
            "{err}"
        );

        std::fs::write(&path, "[server]\nlisten = \"not an address\"\n").unwrap();
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());

        std::fs::write(&path, "[personalize]\nmax_interests = 0\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_interests"), "{err}");

        std::fs::write(&path, "[personalize]\nhalf_life = \"7d\"\n").unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.personalize.half_life, Duration::from_secs(7 * 86_400));

        std::fs::write(&path, "[server]\nno_such_key = 1\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(
            Some(std::path::Path::new("/nonexistent/lookbook.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
