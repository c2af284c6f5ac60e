//! Typed, layered configuration.
//!
//! Layers, lowest first: built-in defaults < a TOML file (`lookbook.toml` in
//! the working directory if present, or the file given with `--config`) <
//! environment variables `LOOKBOOK__SECTION__KEY` (e.g.
//! `LOOKBOOK__SERVER__LISTEN=0.0.0.0:50051`). This is the only module that
//! reads the process environment, so every knob is visible in one type and
//! can be validated before anything binds a port or loads a model.
//!
//! Bearer tokens are the one exception to "everything is a config key":
//! they come from files named in `[auth]` (a Kubernetes Secret mounted as
//! files) or from `LOOKBOOK_READ_TOKEN` / `LOOKBOOK_WRITE_TOKEN`, never from
//! the TOML file itself, which is baked into images and ConfigMaps that
//! many people can read. `[auth]` has no key that could hold a token, and
//! unknown keys are rejected.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    domain::Metric,
    encoder::EncoderConfig,
    index::{IndexParams, Quantization},
    personalize::PersonalizeConfig,
};

/// Environment prefix; `__` separates nesting levels.
const ENV_PREFIX: &str = "LOOKBOOK";
/// Read when present and no `--config` was given.
const DEFAULT_FILE: &str = "lookbook.toml";
/// Environment variables holding bearer tokens (whitespace-separated when
/// several are valid at once, e.g. during a rotation).
pub const READ_TOKEN_ENV: &str = "LOOKBOOK_READ_TOKEN";
pub const WRITE_TOKEN_ENV: &str = "LOOKBOOK_WRITE_TOKEN";
/// Shortest accepted token. Even 16 hex characters of a random token carry
/// 64 bits; anything shorter is a typo or guessable (`openssl rand -hex 32`
/// gives 64 characters).
pub const MIN_TOKEN_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole service configuration. Every field has a default, so an empty
/// file (or none) gives a working local set-up from the repository root.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub model: ModelConfig,
    pub index: IndexConfig,
    pub limits: LimitsConfig,
    pub personalize: PersonalizeConfig,
    pub telemetry: TelemetryConfig,
    pub cluster: ClusterConfig,
    /// Read from the files and variables `[auth]` names by [`Config::load`];
    /// never part of the file.
    #[serde(skip)]
    pub tokens: Tokens,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Serve gRPC server reflection (`grpcurl` without a proto file). It
    /// tells anyone who can connect the whole API, so production turns it
    /// off.
    pub reflection: bool,
    /// After SIGTERM: how long readiness reports "not ready" while calls
    /// are still served, so that load balancers stop sending new calls
    /// before the listeners close. Kubernetes removes a terminating pod
    /// from Service endpoints asynchronously; without this pause, calls
    /// routed in that window would be refused.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Largest accepted gRPC message. Real catalogue photos run to several
    /// MiB, so the default is well above tonic's 4 MiB.
    pub max_message_bytes: usize,
    /// After `drain_delay`: how long in-flight calls may take to finish and
    /// the index dump to be written before the process exits anyway.
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

/// The HTTP port: everything that is not gRPC (`/metrics`, `/livez`,
/// `/readyz`, the HTTP/JSON API under `/v1`, the page at `/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address, or "" to serve no HTTP at all.
    pub listen: String,
    /// Serve the page at `/` (the JSON API is served either way).
    pub ui: bool,
}

impl HttpConfig {
    /// The address to bind, `None` when HTTP is off. Validated at load.
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen
            .parse()
            .map(Some)
            .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                field: "http.listen",
                reason: format!("{listen:?}: {e}"),
            })
    }
}

/// TLS for both ports (rustls). Both files set: TLS on; neither: plaintext.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed (mutual TLS), on both ports.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// Where bearer tokens come from. With no token configured at all the
/// service is open (local development); with a write token, every write
/// needs it; with a read token too, every call but health needs one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File with read tokens, one per line (`#` comments and blank lines
    /// ignored); also `LOOKBOOK_READ_TOKEN`.
    pub read_tokens_file: Option<PathBuf>,
    /// File with write tokens (which also allow reads); also
    /// `LOOKBOOK_WRITE_TOKEN`.
    pub write_tokens_file: Option<PathBuf>,
}

/// SHA-256 digests of the accepted tokens. Only digests are kept: they
/// compare in constant time whatever the token's length, and a heap dump
/// or a `Debug` print shows no secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub read: Vec<[u8; 32]>,
    pub write: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("read", &self.read.len())
            .field("write", &self.write.len())
            .finish()
    }
}

impl Tokens {
    pub fn digest(token: &[u8]) -> [u8; 32] {
        Sha256::digest(token).into()
    }

    /// Tokens in `text`: whitespace-separated, `#` starts a comment line.
    fn parse(text: &str, field: &'static str) -> Result<Vec<[u8; 32]>, ConfigError> {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            for token in line.split_whitespace() {
                if token.len() < MIN_TOKEN_BYTES {
                    return Err(ConfigError::Invalid {
                        field,
                        reason: format!("a token is shorter than {MIN_TOKEN_BYTES} bytes"),
                    });
                }
                out.push(Self::digest(token.as_bytes()));
            }
        }
        Ok(out)
    }

    fn read(
        file: Option<&Path>,
        env: Option<String>,
        field: &'static str,
    ) -> Result<Vec<[u8; 32]>, ConfigError> {
        let mut out = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                what: field,
                path: path.to_path_buf(),
                source,
            })?;
            let tokens = Self::parse(&text, field)?;
            if tokens.is_empty() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{} holds no token", path.display()),
                });
            }
            out.extend(tokens);
        }
        if let Some(text) = env {
            out.extend(Self::parse(&text, field)?);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Holds the redb database and the index dump.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// How vectors are compared: `cosine` (the default; vectors are stored
    /// unit length), `dot`, `euclidean` or `manhattan` (vectors stored as
    /// given). A property of the data: choose it before the first import.
    pub metric: Metric,
    /// How the graph keeps the vectors its search walks: `int8` (the
    /// default: a quarter of the bytes per dimension), `f16` or `none`
    /// (f32). Quantized, the full-precision vectors live in mapped files
    /// under `<data_dir>/index-vectors/` rather than on the heap, and what
    /// a search found is re-ranked with them, so scores are exact in every
    /// mode. int8 is the default because it measured best on every count
    /// (README, "Index: memory and speed"). Not a property of the data: the
    /// store and the dumps hold full vectors, so it can change between
    /// restarts.
    pub quantization: Quantization,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `tracing_subscriber` filter directive, e.g. `info,lookbook=debug`.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// One line per call (method, peer, status, latency, request id) at
    /// info, target `lookbook::access`.
    pub access_log: bool,
    /// OpenTelemetry traces over OTLP/gRPC to this collector (e.g.
    /// `http://otel-collector:4317`); "" exports nothing.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub otlp_service_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            reflection: true,
            drain_delay: Duration::ZERO,
            max_message_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(20),
            search_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            max_pending_searches: 128,
            max_pending_writes: 128,
            max_in_flight: 512,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            ui: true,
        }
    }
}

/// Cluster mode: replicas kept in step through NATS JetStream (see
/// `crate::cluster`). Off (a single node with its embedded store) while
/// `nats_url` is empty. Secrets are never keys here: the NATS credentials
/// and TLS key come from files (a mounted Secret), like `[auth]`'s tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`nats://nats:4222`); empty: off.
    pub nats_url: String,
    /// A NATS `.creds` file (user JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// CA bundle to verify the NATS servers with (turns TLS on).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS with NATS (set together).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The key-value bucket holding the latest state of every product.
    pub products_bucket: String,
    /// The stream holding interactions, one subject per shopper.
    pub interactions_stream: String,
    /// How long the interaction stream keeps events.
    #[serde(with = "humantime_serde")]
    pub interactions_retention: Duration,
    /// JetStream replicas of the bucket and stream when this replica
    /// creates them (3 on a 3-node NATS cluster; existing ones are kept).
    pub stream_replicas: usize,
    /// Longest wait for JetStream's acknowledgement of a write, and then
    /// again for this replica to apply it, before the call fails.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Health stays NOT_SERVING at start until this replica is behind the
    /// logs by at most this many events.
    pub max_ready_lag: u64,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.nats_url.trim().is_empty()
    }

    /// The NATS servers `nats_url` names, comma-separated.
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, async_nats::Error> {
        self.nats_url
            .split(',')
            .map(|u| Ok(u.trim().parse::<async_nats::ServerAddr>()?))
            .collect()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: String::new(),
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            products_bucket: "lookbook_products".to_owned(),
            interactions_stream: "LOOKBOOK_INTERACTIONS".to_owned(),
            interactions_retention: Duration::from_secs(90 * 24 * 3600),
            stream_replicas: 1,
            write_timeout: Duration::from_secs(10),
            max_ready_lag: 100,
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
            metric: p.metric,
            // Not `IndexParams`' default (none): the library keeps quantized
            // graphs' full vectors on the heap unless given a directory, and
            // the service always gives one.
            quantization: Quantization::Int8,
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
            access_log: true,
            otlp_endpoint: String::new(),
            otlp_service_name: "lookbook".to_owned(),
        }
    }
}

/// Environment variable with the bearer token client commands send.
pub const CLIENT_TOKEN_ENV: &str = "LOOKBOOK_TOKEN";

/// The token client commands send, from `LOOKBOOK_TOKEN` only: a flag
/// would leak it into process listings and shell history.
pub fn client_token() -> Option<String> {
    std::env::var(CLIENT_TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
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
        cfg.tokens = Tokens {
            read: Tokens::read(
                cfg.auth.read_tokens_file.as_deref(),
                std::env::var(READ_TOKEN_ENV).ok(),
                "auth.read_tokens_file",
            )?,
            write: Tokens::read(
                cfg.auth.write_tokens_file.as_deref(),
                std::env::var(WRITE_TOKEN_ENV).ok(),
                "auth.write_tokens_file",
            )?,
        };
        if !cfg.tokens.read.is_empty() && cfg.tokens.write.is_empty() {
            // Reads locked while writes are open is never what was meant.
            return Err(ConfigError::Invalid {
                field: "auth",
                reason: "read tokens are configured but no write token".to_owned(),
            });
        }
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
        self.http.addr()?;
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), Some(_)) | (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "tls",
                    "cert_file and key_file must be set together",
                ));
            }
        }
        if self.tls.client_ca_file.is_some() && !self.tls.enabled() {
            return Err(invalid(
                "tls.client_ca_file",
                "mutual TLS needs cert_file and key_file",
            ));
        }
        let otlp = self.telemetry.otlp_endpoint.trim();
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            ));
        }
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
        let c = &self.cluster;
        if c.enabled() {
            c.servers()
                .map_err(|e| invalid("cluster.nats_url", e.to_string()))?;
            if !(1..=5).contains(&c.stream_replicas) {
                return Err(invalid("cluster.stream_replicas", "must be in 1..=5"));
            }
            if c.tls_cert_file.is_some() != c.tls_key_file.is_some() {
                return Err(invalid(
                    "cluster",
                    "tls_cert_file and tls_key_file must be set together",
                ));
            }
            if c.write_timeout.is_zero() {
                return Err(invalid("cluster.write_timeout", "must be positive"));
            }
            if c.interactions_retention.is_zero() {
                return Err(invalid(
                    "cluster.interactions_retention",
                    "must be positive",
                ));
            }
            // Bucket and stream names become subject tokens.
            for (field, name) in [
                ("cluster.products_bucket", &c.products_bucket),
                ("cluster.interactions_stream", &c.interactions_stream),
            ] {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(invalid(field, "must be letters, digits, '_' or '-'"));
                }
            }
        }
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
            metric: self.index.metric,
            quantization: self.index.quantization,
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
    fn cluster_mode_is_off_by_default_and_checked_when_on() {
        assert!(!Config::default().cluster.enabled());
        let mut c = Config::default();
        c.cluster.nats_url = "nats://127.0.0.1:4222".to_owned();
        c.validate().expect("a URL alone is a valid cluster set-up");
        c.cluster.nats_url = "nats://a:4222, nats://b:4222,nats://c:4222".to_owned();
        assert_eq!(c.cluster.servers().unwrap().len(), 3);
        for (field, broken) in [
            ("cluster.stream_replicas", {
                let mut b = c.clone();
                b.cluster.stream_replicas = 0;
                b
            }),
            ("cluster", {
                let mut b = c.clone();
                b.cluster.tls_cert_file = Some("cert.pem".into());
                b
            }),
            ("cluster.products_bucket", {
                let mut b = c.clone();
                b.cluster.products_bucket = "a.b".to_owned();
                b
            }),
            ("cluster.write_timeout", {
                let mut b = c.clone();
                b.cluster.write_timeout = Duration::ZERO;
                b
            }),
            ("cluster.nats_url", {
                let mut b = c.clone();
                b.cluster.nats_url = "nats://127.0.0.1:4222,nats://:x".to_owned();
                b
            }),
        ] {
            match broken.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
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

        std::fs::write(&path, "[index]\nmetric = \"euclidean\"\n").unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.index_params().metric, Metric::Euclidean);
        std::fs::write(&path, "[index]\nmetric = \"l2\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("l2"), "{err}");

        std::fs::write(&path, "[server]\nno_such_key = 1\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    /// Keys whose default depends on the machine (its cores); the README
    /// shows this machine's value and says so.
    const MACHINE_DEPENDENT: [&str; 2] = ["server.search_concurrency", "model.intra_threads"];

    /// `section.key` -> value of every leaf of a TOML table.
    fn leaves(
        prefix: &str,
        table: &toml::Table,
        out: &mut std::collections::BTreeMap<String, toml::Value>,
    ) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => leaves(&path, inner, out),
                other => {
                    out.insert(path, other.clone());
                }
            }
        }
    }

    #[test]
    fn the_readme_lists_every_key_with_its_default() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("<!-- config-reference -->")
            .expect("the README marks its config reference");
        let end = readme
            .find("<!-- /config-reference -->")
            .expect("and its end");
        let block = &readme[start..end];
        let toml_text = block
            .split_once("```toml\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(body, _)| body)
            .expect("a toml code block");
        // Optional keys (no default) are shown commented out, in their section.
        let mut optional = Vec::new();
        let mut section = String::new();
        for line in toml_text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[') {
                section = name.split(']').next().unwrap_or_default().to_owned();
            } else if let Some(commented) = line.strip_prefix("# ")
                && let Some((key, _)) = commented.split_once(" = ")
            {
                optional.push(format!("{section}.{}", key.trim()));
            }
        }
        let documented: toml::Table = toml::from_str(toml_text).expect("the reference parses");
        let mut shown = std::collections::BTreeMap::new();
        leaves("", &documented, &mut shown);

        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
        let mut actual = std::collections::BTreeMap::new();
        leaves("", &defaults, &mut actual);
        // Every key with a default is shown with that default.
        for (key, value) in &actual {
            let Some(readme_value) = shown.get(key) else {
                panic!("README config reference lacks {key} (default {value})");
            };
            if MACHINE_DEPENDENT.contains(&key.as_str()) {
                continue;
            }
            // Durations are compared as durations ("14d" is "14days").
            let as_duration = |v: &toml::Value| {
                v.as_str()
                    .and_then(|s| humantime_serde::re::humantime::parse_duration(s).ok())
            };
            match (as_duration(readme_value), as_duration(value)) {
                (Some(shown), Some(default)) => {
                    assert_eq!(shown, default, "README shows another default for {key}");
                }
                _ => assert_eq!(
                    readme_value, value,
                    "README shows another default for {key}"
                ),
            }
        }
        for key in shown.keys() {
            assert!(
                actual.contains_key(key),
                "README documents {key}, which is no key"
            );
        }
        // Every optional key is shown commented, and parses when set.
        let all_set = Config {
            tls: TlsConfig {
                cert_file: Some("c".into()),
                key_file: Some("k".into()),
                client_ca_file: Some("a".into()),
            },
            auth: AuthConfig {
                read_tokens_file: Some("r".into()),
                write_tokens_file: Some("w".into()),
            },
            cluster: ClusterConfig {
                credentials_file: Some("n".into()),
                tls_ca_file: Some("a".into()),
                tls_cert_file: Some("c".into()),
                tls_key_file: Some("k".into()),
                ..ClusterConfig::default()
            },
            ..Config::default()
        };
        let mut with_optional = std::collections::BTreeMap::new();
        leaves(
            "",
            &toml::Table::try_from(all_set).expect("serialises"),
            &mut with_optional,
        );
        let mut expected_optional: Vec<String> = with_optional
            .keys()
            .filter(|k| !actual.contains_key(*k))
            .cloned()
            .collect();
        expected_optional.sort();
        optional.sort();
        assert_eq!(optional, expected_optional, "optional keys in the README");
        // And the reference itself loads as a valid configuration.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reference.toml");
        std::fs::write(&path, toml_text).expect("write");
        Config::load(Some(&path), &Overrides::default()).expect("the reference is valid");
    }

    #[test]
    fn tokens_come_from_files_and_the_environment_never_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let read = dir.path().join("read");
        std::fs::write(
            &read,
            "# comment\nfirst-token-0123456789\n\nsecond-token-0123456789\n",
        )
        .unwrap();
        let tokens =
            Tokens::read(Some(&read), Some("env-token-0123456789".to_owned()), "t").unwrap();
        assert_eq!(tokens.len(), 3);
        assert!(tokens.contains(&Tokens::digest(b"second-token-0123456789")));
        assert!(tokens.contains(&Tokens::digest(b"env-token-0123456789")));
        std::fs::write(&read, "short\n").unwrap();
        assert!(Tokens::read(Some(&read), None, "t").is_err(), "too short");
        std::fs::write(&read, "# nothing\n").unwrap();
        assert!(
            Tokens::read(Some(&read), None, "t").is_err(),
            "an empty token file"
        );
        assert!(Tokens::read(Some(&dir.path().join("absent")), None, "t").is_err());
        // No key of the file can hold a token.
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[auth]\nwrite_token = \"inline-token-0123456789\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("write_token"), "{err}");
        // Read tokens without a write token would leave writes open.
        std::fs::write(&read, "only-read-token-0123456789\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "[auth]\nread_tokens_file = {:?}\n",
                read.display().to_string()
            ),
        )
        .unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("no write token"), "{err}");
        assert!(
            !format!(
                "{:?}",
                Tokens {
                    read: tokens,
                    write: Vec::new()
                }
            )
            .contains("token-0123")
        );
    }

    #[test]
    fn tls_and_http_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[tls]\ncert_file = \"/x.crt\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        std::fs::write(&path, "[http]\nlisten = \"nowhere\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
        std::fs::write(&path, "[http]\nlisten = \"\"\n").unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.http.addr().unwrap(), None);
        std::fs::write(&path, "[telemetry]\notlp_endpoint = \"collector:4317\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("otlp_endpoint"), "{err}");
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
