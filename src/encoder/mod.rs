//! Image encoder: turns product photos into L2-normalised embeddings with an
//! ONNX model (EfficientNet-Lite2 by default) run by ONNX Runtime on the CPU.
//!
//! The model and how to feed it are described by a [`ModelManifest`] committed
//! next to the `.onnx` file, so swapping models needs no code change. All
//! CPU-heavy work (decode, resize, inference) runs on the encoder's own fixed pool
//! of threads behind a bounded queue: async callers never block the runtime, load
//! beyond capacity is refused quickly with [`EncoderError::Overloaded`], and the
//! encoder's CPU use is capped by `workers x intra_threads`.
//!
//! ```no_run
//! # async fn demo(photo: bytes::Bytes) -> Result<(), lookbook::encoder::EncoderError> {
//! use lookbook::encoder::{Encoder, EncoderConfig};
//! let cfg = EncoderConfig::new(
//!     "models/efficientnet_lite2.toml",
//!     ".cache/onnxruntime/libonnxruntime.so.1.31.1",
//! );
//! let encoder = tokio::task::spawn_blocking(move || Encoder::load(&cfg))
//!     .await
//!     .expect("load does not panic")?;
//! let embeddings = encoder.embed(vec![photo]).await?;
//! assert_eq!(embeddings[0].len(), encoder.dim());
//! # Ok(()) }
//! ```

mod error;
mod manifest;
mod pool;
mod preprocess;
mod session;
pub mod thumbnail;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ndarray::{Array2, Array4};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

pub use error::{EncoderError, ImageError, SizeLimit};
pub use manifest::{
    ColorOrder, InputSpec, Interpolation, Layout, MAX_INPUT_SIDE, ModelManifest, OutputSpec,
};
pub use preprocess::{DecodeLimits, StageTimes, preprocess, preprocess_timed};

pub use pool::Encoded;
use pool::{Batching, Job, Pool, WorkerContext};
use session::ModelSession;

/// Default number of inference threads (each with its own session).
pub const DEFAULT_WORKERS: usize = 2;
/// Default ONNX Runtime intra-op threads per session.
pub const DEFAULT_INTRA_THREADS: usize = 1;
/// Default number of jobs allowed to wait for a worker.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// Default decompression-bomb guard: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// Default largest decoded buffer: 160 MB, what the largest image
/// `DEFAULT_MAX_PIXELS` admits takes as 8-bit RGBA (4 bytes per pixel). Every
/// 8-bit image up to 40 MP passes (a 40 MP RGB photo is 120 MB); 16-bit images
/// pass up to 26.7 MP (RGB, 6 bytes per pixel) or 20 MP (RGBA, 8), so a
/// 40 MP 16-bit RGBA PNG, which would need 320 MB before its conversion to
/// 8 bits, is refused from its header. The `image` crate has no way to
/// decode 16-bit PNG rows straight to 8 bits, so the budget is what bounds it.
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 4 * DEFAULT_MAX_PIXELS;
/// Default maximum number of images per call (run in model runs of at most
/// `batch_max_images`).
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Default most images in one model run (dynamic batching coalesces calls up
/// to it). Chosen from 1, 4 and 16 in the Embed loads of three bench runs: on
/// their 2-core CPU a model run costs about the same per image at any batch
/// size and each caller waits for its whole batch, so 16 had the higher p99
/// at concurrency 16 every time while QPS differed by less than the noise;
/// and runs of 4 hold far less ONNX Runtime memory (see `ModelSession::run`).
pub const DEFAULT_BATCH_MAX_IMAGES: usize = 4;
/// Default longest wait for more jobs to fill a batch: none, so a lone caller
/// is never delayed; see `EncoderConfig::batch_max_delay`.
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::ZERO;

/// How to load and run the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// The model manifest (TOML); the `.onnx` path inside is relative to it.
    pub manifest: PathBuf,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.31.1`).
    pub onnxruntime_library: PathBuf,
    /// Inference threads, each owning one session (>= 1).
    pub workers: usize,
    /// ONNX Runtime intra-op threads per session (>= 1).
    pub intra_threads: usize,
    /// Jobs that may wait for a free worker before callers get `Overloaded` (>= 1).
    pub queue_capacity: usize,
    /// Largest accepted image, in pixels (width x height, from the header).
    pub max_pixels: u64,
    /// Largest accepted decoded buffer, in bytes (width x height x the bytes
    /// per pixel of the decoder's output format, from the header).
    pub max_decoded_bytes: u64,
    /// Most images accepted in one call.
    pub max_batch: usize,
    /// Most images in one model run (>= 1). Concurrent calls are coalesced
    /// into runs of up to this many images (dynamic batching; 1 turns it
    /// off), and a call with more images is run in several. Memory grows
    /// with it: ONNX Runtime keeps what its largest run needed.
    pub batch_max_images: usize,
    /// Dynamic batching: how long a worker holding a partial batch waits for
    /// more calls. Zero coalesces only calls that are already queued, which
    /// adds no latency for a lone caller.
    pub batch_max_delay: Duration,
}

impl EncoderConfig {
    /// A configuration with the default pool and limits.
    pub fn new(manifest: impl Into<PathBuf>, onnxruntime_library: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            onnxruntime_library: onnxruntime_library.into(),
            workers: DEFAULT_WORKERS,
            intra_threads: DEFAULT_INTRA_THREADS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            batch_max_images: DEFAULT_BATCH_MAX_IMAGES,
            batch_max_delay: DEFAULT_BATCH_MAX_DELAY,
        }
    }

    fn validate(&self) -> Result<(), EncoderError> {
        let at_least_one = |field: &'static str, value: u64| {
            if value == 0 {
                Err(EncoderError::Config {
                    field,
                    reason: "must be at least 1".to_owned(),
                })
            } else {
                Ok(())
            }
        };
        at_least_one("workers", self.workers as u64)?;
        at_least_one("intra_threads", self.intra_threads as u64)?;
        at_least_one("queue_capacity", self.queue_capacity as u64)?;
        at_least_one("max_pixels", self.max_pixels)?;
        at_least_one("max_decoded_bytes", self.max_decoded_bytes)?;
        at_least_one("max_batch", self.max_batch as u64)?;
        at_least_one("batch_max_images", self.batch_max_images as u64)
    }
}

/// Counters since the encoder was loaded (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderStats {
    /// Jobs that produced a result.
    pub jobs_completed: u64,
    /// Jobs that ended in an error (bad image, model failure).
    pub jobs_failed: u64,
    /// Jobs skipped because their caller had gone away before a worker took them.
    pub jobs_cancelled: u64,
    /// Calls refused with `Overloaded`.
    pub jobs_rejected: u64,
    /// Images embedded by completed jobs.
    pub images_embedded: u64,
    /// Model runs for `embed` jobs; `images_embedded / model_runs` is the
    /// mean batch size that dynamic batching achieved.
    pub model_runs: u64,
    /// Time spent decoding images, summed over workers.
    pub decode_time: Duration,
    /// Time spent resizing and cropping, summed over workers.
    pub resize_time: Duration,
    /// Time spent writing normalised values into the input tensor.
    pub normalise_time: Duration,
    /// Time spent in ONNX Runtime for `embed` jobs.
    pub inference_time: Duration,
}

/// A loaded model and its worker pool. Cheap to clone (shared); the workers stop
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Encoder {
    inner: Arc<Inner>,
}

struct Inner {
    manifest: ModelManifest,
    /// SHA-256 of the loaded `.onnx` file, for logs and provenance.
    model_sha256: String,
    workers: usize,
    intra_threads: usize,
    max_batch: usize,
    pool: Pool,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Encoder")
            .field("model", &inner.manifest.name)
            .field("dim", &inner.manifest.output.dim)
            .field("model_sha256", &inner.model_sha256)
            .field("workers", &inner.workers)
            .field("intra_threads", &inner.intra_threads)
            .field("max_batch", &inner.max_batch)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Loads the manifest, verifies and loads the model, and starts the workers.
    ///
    /// Blocking (reads the model, builds one session per worker); call it from
    /// `spawn_blocking` in async code.
    pub fn load(cfg: &EncoderConfig) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let manifest = ModelManifest::load(&cfg.manifest)?;
        let onnx_path = manifest.onnx_path().to_owned();
        if manifest.synthetic {
            tracing::warn!(
                model = %manifest.name,
                path = %onnx_path.display(),
                "SYNTHETIC MODEL: random weights, embeddings are meaningless; use only for shape and speed tests"
            );
        }
        let model = std::fs::read(&onnx_path).map_err(|err| EncoderError::Model {
            path: onnx_path.clone(),
            reason: format!("cannot read it: {err}"),
        })?;
        let model_sha256 = hex_sha256(&model);
        match &manifest.sha256 {
            Some(expected) if *expected != model_sha256 => {
                return Err(EncoderError::Model {
                    path: onnx_path,
                    reason: format!(
                        "SHA-256 is {model_sha256} but the manifest expects {expected}; the file is not the model the manifest describes"
                    ),
                });
            }
            Some(_) => {}
            None => tracing::warn!(
                path = %onnx_path.display(),
                sha256 = %model_sha256,
                "model manifest has no sha256; the model file is not verified"
            ),
        }

        let env = session::environment(&cfg.onnxruntime_library)?;
        let sessions = (0..cfg.workers)
            .map(|_| ModelSession::new(&env, &manifest, &model, cfg.intra_threads))
            .collect::<Result<Vec<_>, _>>()?;
        drop(model);
        let pool = Pool::start(
            sessions,
            cfg.queue_capacity,
            WorkerContext {
                input: manifest.input.clone(),
                limits: DecodeLimits {
                    max_pixels: cfg.max_pixels,
                    max_decoded_bytes: cfg.max_decoded_bytes,
                },
                dim: manifest.output.dim,
                batching: Batching {
                    max_images: cfg.batch_max_images,
                    max_delay: cfg.batch_max_delay,
                },
            },
        )?;
        tracing::info!(
            model = %manifest.name,
            dim = manifest.output.dim,
            sha256 = %model_sha256,
            workers = cfg.workers,
            intra_threads = cfg.intra_threads,
            queue_capacity = cfg.queue_capacity,
            max_batch = cfg.max_batch,
            batch_max_images = cfg.batch_max_images,
            batch_max_delay_us = cfg.batch_max_delay.as_micros() as u64,
            "image encoder ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                manifest,
                model_sha256,
                workers: cfg.workers,
                intra_threads: cfg.intra_threads,
                max_batch: cfg.max_batch,
                pool,
            }),
        })
    }

    /// The model name from the manifest.
    pub fn model_name(&self) -> &str {
        &self.inner.manifest.name
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.inner.manifest.output.dim
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.inner.manifest
    }

    /// SHA-256 (hex) of the loaded model file.
    pub fn model_sha256(&self) -> &str {
        &self.inner.model_sha256
    }

    /// Most images accepted per call.
    pub fn max_batch(&self) -> usize {
        self.inner.max_batch
    }

    /// Job counters since load.
    pub fn stats(&self) -> EncoderStats {
        self.inner.pool.stats()
    }

    /// Decodes, preprocesses and embeds `images` on the encoder's worker pool, as
    /// one model batch. Returns one unit-length embedding per image, in order.
    ///
    /// Fails fast with `Overloaded` when the queue is full. Dropping the future
    /// before a worker picks the job up cancels it.
    pub async fn embed(&self, images: Vec<Bytes>) -> Result<Vec<Vec<f32>>, EncoderError> {
        Ok(self
            .encode(images, false)
            .await?
            .into_iter()
            .map(|e| e.vector)
            .collect())
    }

    /// Like [`embed`](Self::embed), and makes a thumbnail of each image from
    /// the same decoded pixels (see [`thumbnail`]).
    pub async fn embed_with_thumbnails(
        &self,
        images: Vec<Bytes>,
    ) -> Result<Vec<Encoded>, EncoderError> {
        self.encode(images, true).await
    }

    async fn encode(
        &self,
        images: Vec<Bytes>,
        thumbnails: bool,
    ) -> Result<Vec<Encoded>, EncoderError> {
        if !self.check_request(images.iter().map(Bytes::len))? {
            return Ok(Vec::new());
        }
        let (reply, result) = oneshot::channel();
        self.inner.pool.try_submit(Job::Embed {
            images,
            thumbnails,
            reply,
        })?;
        result.await.unwrap_or_else(|_| Err(worker_gone()))
    }

    /// Like [`embed`](Self::embed), but blocks the calling thread, and waits for
    /// room in the queue instead of failing with `Overloaded` (for the CLI,
    /// benchmarks and tests). The work still runs on the pool.
    ///
    /// # Panics
    /// When called from within an async runtime (it would block an executor thread).
    pub fn embed_blocking(&self, images: &[&[u8]]) -> Result<Vec<Vec<f32>>, EncoderError> {
        if !self.check_request(images.iter().map(|i| i.len()))? {
            return Ok(Vec::new());
        }
        let images = images.iter().map(|i| Bytes::copy_from_slice(i)).collect();
        let (reply, result) = oneshot::channel();
        self.inner.pool.submit_wait(Job::Embed {
            images,
            thumbnails: false,
            reply,
        })?;
        result
            .blocking_recv()
            .unwrap_or_else(|_| Err(worker_gone()))
            .map(|encoded| encoded.into_iter().map(|e| e.vector).collect())
    }

    /// Runs the raw model on a preprocessed `[N, 3, H, W]` tensor and returns its
    /// un-normalised `[N, dim]` output. For checking this pipeline against a
    /// reference implementation; blocks like [`embed_blocking`](Self::embed_blocking).
    ///
    /// # Panics
    /// When called from within an async runtime.
    pub fn run_tensor(&self, input: Array4<f32>) -> Result<Array2<f32>, EncoderError> {
        let (reply, result) = oneshot::channel();
        self.inner.pool.submit_wait(Job::Tensor { input, reply })?;
        result
            .blocking_recv()
            .unwrap_or_else(|_| Err(worker_gone()))
    }

    /// Checks what can be checked without decoding; returns `false` for an empty request.
    fn check_request(
        &self,
        lengths: impl ExactSizeIterator<Item = usize>,
    ) -> Result<bool, EncoderError> {
        let count = lengths.len();
        if count > self.inner.max_batch {
            return Err(EncoderError::TooManyImages {
                count,
                max: self.inner.max_batch,
            });
        }
        // Rejected here so that an obviously bad request does not take a queue slot.
        if let Some(index) = lengths.into_iter().position(|len| len == 0) {
            return Err(EncoderError::EmptyImage { index });
        }
        Ok(count > 0)
    }
}

fn worker_gone() -> EncoderError {
    EncoderError::Runtime("the encoder worker stopped without replying".to_owned())
}

fn hex_sha256(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

#[cfg(test)]
mod tests;
