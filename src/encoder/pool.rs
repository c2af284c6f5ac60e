//! The encoder's worker pool: dedicated OS threads, each owning one ONNX Runtime
//! session, fed from one bounded queue, with dynamic batching.
//!
//! Why this shape:
//! - Decoding, resizing and inference are CPU-bound and must not run on the async
//!   runtime's threads; `spawn_blocking` would not bound them either, whereas a
//!   fixed set of threads caps the CPU the encoder can take from the rest of the
//!   service.
//! - The queue is a bounded `sync_channel` and the async path uses `try_send`: when
//!   it is full the caller gets `Overloaded` at once (a fast, retryable error)
//!   instead of piling up latency. Blocking callers (CLI, benchmarks) wait for room.
//! - The receiver sits behind a mutex that an idle worker holds while it waits, so
//!   the next job goes to whichever worker is free; the lock is released as soon as
//!   a job (or a batch of them) is taken.
//! - Dynamic batching, like Triton's dynamic batcher: a worker that takes an
//!   `Embed` job also takes the `Embed` jobs already queued behind it, up to
//!   `max_images` images, waiting at most `max_delay` for more, and runs them
//!   through the model as one batch. With `max_delay` zero only jobs that are
//!   already waiting are coalesced, so a lone caller never waits for company
//!   (its latency is unchanged), while under concurrency the queue that builds up
//!   during one model run becomes the next batch. Each job's images are
//!   preprocessed separately, so one caller's bad image fails only that caller.
//! - A job whose caller has gone away (request cancelled) is dropped before any
//!   work is done, so cancelled requests do not consume inference time.
//! - A panic while handling a job (say, in an image decoder) becomes an error reply
//!   and the worker carries on, so bad input cannot shrink the pool.
//! - Dropping the pool closes the queue; workers finish the job in hand, skip the
//!   (necessarily cancelled) rest and exit, and the drop joins them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ndarray::{Array2, Array4};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::EncoderStats;
use super::error::EncoderError;
use super::manifest::InputSpec;
use super::preprocess::{DecodeLimits, StageTimes, decode_rgb, prepare_decoded, preprocess_timed};
use super::session::ModelSession;
use super::thumbnail;

/// Where a worker sends a job's result.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, EncoderError>>;

/// A unit of work for one worker.
pub(crate) enum Job {
    /// Decode, preprocess and embed a batch of images, making a thumbnail
    /// of each from the same decoded pixels when asked to.
    Embed {
        images: Vec<Bytes>,
        thumbnails: bool,
        reply: Reply<Vec<Encoded>>,
    },
    /// Run the model on a ready-made NCHW tensor.
    Tensor {
        input: Array4<f32>,
        reply: Reply<Array2<f32>>,
    },
}

/// One embedded image.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// L2-normalised model output.
    pub vector: Vec<f32>,
    /// JPEG thumbnail, when the job asked for one and it could be made (a
    /// failure is logged; the image is still embedded).
    pub thumbnail: Option<Vec<u8>>,
}

/// How `Embed` jobs are coalesced into model batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most images in one model run; 1 turns coalescing off. A single job
    /// larger than this runs alone, in several runs (see `Session::run`).
    pub(crate) max_images: usize,
    /// Longest a worker holding a partial batch waits for more jobs.
    pub(crate) max_delay: Duration,
}

/// What workers need besides their session.
#[derive(Debug)]
pub(crate) struct WorkerContext {
    pub(crate) input: InputSpec,
    pub(crate) limits: DecodeLimits,
    pub(crate) dim: usize,
    pub(crate) batching: Batching,
}

/// Monotonic counters, shared by the workers and the submitting side.
#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    images: AtomicU64,
    model_runs: AtomicU64,
    decode_nanos: AtomicU64,
    resize_nanos: AtomicU64,
    normalise_nanos: AtomicU64,
    inference_nanos: AtomicU64,
}

/// Jobs queued and not yet taken by a worker. A gauge moved on both sides
/// of the channel, because `sync_channel` does not tell its length.
fn queue_depth() -> metrics::Gauge {
    metrics::gauge!("lookbook_encoder_queue_depth")
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn bump_time(counter: &AtomicU64, by: Duration) {
    bump(counter, u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
}

/// The running pool. Invariant: `sender` is `Some` until `drop`.
pub(crate) struct Pool {
    sender: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts one thread per session, named `lookbook-encoder-N`.
    pub(crate) fn start(
        sessions: Vec<ModelSession>,
        queue_capacity: usize,
        ctx: WorkerContext,
    ) -> Result<Self, EncoderError> {
        let (sender, receiver) = sync_channel(queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let ctx = Arc::new(ctx);
        // Built up in place so that, if a spawn fails, dropping `pool` stops the
        // threads already started.
        let mut pool = Self {
            sender: Some(sender),
            threads: Vec::with_capacity(sessions.len()),
            counters: Arc::new(Counters::default()),
        };
        for (n, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                session,
                ctx: Arc::clone(&ctx),
                counters: Arc::clone(&pool.counters),
                held: None,
                batch: Vec::new(),
                rows: Vec::new(),
            };
            let receiver = Arc::clone(&receiver);
            let thread = std::thread::Builder::new()
                .name(format!("lookbook-encoder-{n}"))
                .spawn(move || worker.run(&receiver))
                .map_err(|err| {
                    EncoderError::Runtime(format!("cannot start encoder thread {n}: {err}"))
                })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Queues `job` unless the queue is full.
    pub(crate) fn try_submit(&self, job: Job) -> Result<(), EncoderError> {
        match self.sender()?.try_send(job) {
            Ok(()) => {
                queue_depth().increment(1.0);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                bump(&self.counters.rejected, 1);
                Err(EncoderError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => Err(EncoderError::ShuttingDown),
        }
    }

    /// Queues `job`, waiting for room if the queue is full.
    pub(crate) fn submit_wait(&self, job: Job) -> Result<(), EncoderError> {
        self.sender()?
            .send(job)
            .map_err(|_| EncoderError::ShuttingDown)?;
        queue_depth().increment(1.0);
        Ok(())
    }

    fn sender(&self) -> Result<&SyncSender<Job>, EncoderError> {
        self.sender.as_ref().ok_or(EncoderError::ShuttingDown)
    }

    pub(crate) fn stats(&self) -> EncoderStats {
        let c = &self.counters;
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let time = |v: &AtomicU64| Duration::from_nanos(get(v));
        EncoderStats {
            jobs_completed: get(&c.completed),
            jobs_failed: get(&c.failed),
            jobs_cancelled: get(&c.cancelled),
            jobs_rejected: get(&c.rejected),
            images_embedded: get(&c.images),
            model_runs: get(&c.model_runs),
            decode_time: time(&c.decode_nanos),
            resize_time: time(&c.resize_nanos),
            normalise_time: time(&c.normalise_nanos),
            inference_time: time(&c.inference_nanos),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue is what makes the workers' `recv` fail and return.
        self.sender = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an image encoder thread panicked outside of a job");
            }
        }
    }
}

/// One caller's `Embed` job inside a coalesced batch.
struct EmbedJob {
    images: Vec<Bytes>,
    thumbnails: bool,
    reply: Reply<Vec<Encoded>>,
    /// One per image once preprocessed, when `thumbnails` is set.
    made: Vec<Option<Vec<u8>>>,
    /// Set once this job's answer is known; `None` after the model run means
    /// the batch as a whole failed.
    outcome: Option<Result<Vec<Encoded>, EncoderError>>,
}

/// State owned by one worker thread.
struct Worker {
    session: ModelSession,
    ctx: Arc<WorkerContext>,
    counters: Arc<Counters>,
    /// A job taken off the queue while gathering a batch that did not fit in
    /// it; it is handled next, before the queue is read again.
    held: Option<Job>,
    /// Batch input tensor, reused between batches (keeps the largest capacity).
    batch: Vec<f32>,
    /// Raw model output, reused between batches.
    rows: Vec<f32>,
}

impl Worker {
    fn run(mut self, receiver: &Mutex<Receiver<Job>>) {
        loop {
            let job = match self.held.take() {
                Some(job) => job,
                // The guard is a temporary: it is released as soon as a job arrives.
                None => match receiver.lock().recv() {
                    Ok(job) => {
                        queue_depth().decrement(1.0);
                        job
                    }
                    Err(_) => break, // queue closed and drained: the pool is being dropped
                },
            };
            match job {
                Job::Embed {
                    images,
                    thumbnails,
                    reply,
                } => {
                    let mut group = Vec::new();
                    self.admit(&mut group, images, thumbnails, reply);
                    if !group.is_empty() {
                        self.gather(receiver, &mut group);
                        self.embed_group(group);
                    }
                }
                Job::Tensor { input, reply } => self.tensor_job(input, reply),
            }
        }
        tracing::debug!("image encoder worker exiting");
    }

    /// Adds a job to `group` unless its caller has gone away.
    fn admit(
        &self,
        group: &mut Vec<EmbedJob>,
        images: Vec<Bytes>,
        thumbnails: bool,
        reply: Reply<Vec<Encoded>>,
    ) {
        if reply.is_closed() {
            bump(&self.counters.cancelled, 1);
            return;
        }
        group.push(EmbedJob {
            images,
            thumbnails,
            reply,
            made: Vec::new(),
            outcome: None,
        });
    }

    /// Takes queued `Embed` jobs into `group` until it holds `max_images`
    /// images, the queue stays empty for `max_delay`, or a job that does not
    /// fit (a tensor job, or too many images) comes up; that one is held over.
    fn gather(&mut self, receiver: &Mutex<Receiver<Job>>, group: &mut Vec<EmbedJob>) {
        let Batching {
            max_images,
            max_delay,
        } = self.ctx.batching;
        let mut images: usize = group.iter().map(|j| j.images.len()).sum();
        if images >= max_images {
            return;
        }
        let deadline = Instant::now() + max_delay;
        // Held by another worker only while that one is idle in `recv` (so
        // nothing is queued) or gathering a batch of its own: either way
        // there is nothing to add, and waiting for the lock could wait
        // forever for a job that never comes while this one's callers wait.
        let Some(queue) = receiver.try_lock() else {
            return;
        };
        while images < max_images {
            let next = match queue.try_recv() {
                Ok(job) => {
                    queue_depth().decrement(1.0);
                    job
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match queue.recv_timeout(left) {
                        Ok(job) => {
                            queue_depth().decrement(1.0);
                            job
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match next {
                Job::Embed {
                    images: more,
                    thumbnails,
                    reply,
                } if images + more.len() <= max_images => {
                    images += more.len();
                    self.admit(group, more, thumbnails, reply);
                }
                other => {
                    self.held = Some(other);
                    break;
                }
            }
        }
    }

    /// Embeds a group of jobs with one model run (more for a large job) and
    /// answers each caller.
    fn embed_group(&mut self, mut group: Vec<EmbedJob>) {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.embed_jobs(&mut group)))
            .unwrap_or_else(|panic| Err(panicked(&*panic)));
        for job in group {
            let result = match job.outcome {
                Some(result) => result,
                None => Err(match &outcome {
                    Err(err) => err.clone(),
                    Ok(()) => EncoderError::Runtime("a batched job got no result".to_owned()),
                }),
            };
            match &result {
                Ok(rows) => {
                    bump(&self.counters.completed, 1);
                    bump(&self.counters.images, rows.len() as u64);
                }
                Err(_) => bump(&self.counters.failed, 1),
            }
            // The caller may have given up while we worked; the result is then unwanted.
            let _ = job.reply.send(result);
        }
    }

    /// Preprocesses every job's images into the batch tensor (a job with a bad
    /// image gets its error and is left out), runs the model once, and sets each
    /// remaining job's outcome to its rows.
    fn embed_jobs(&mut self, group: &mut [EmbedJob]) -> Result<(), EncoderError> {
        let spec = &self.ctx.input;
        let per_image = spec.tensor_len();
        let total: usize = group.iter().map(|j| j.images.len()).sum();
        self.batch.resize(total * per_image, 0.0);
        let mut times = StageTimes::default();
        // Images written so far; a failed job's slots are reused by the next one.
        let mut filled = 0;
        // (job index, first row, rows) of the jobs that made it into the batch.
        let mut spans = Vec::with_capacity(group.len());
        for (job_index, job) in group.iter_mut().enumerate() {
            let start = filled;
            let mut failure = None;
            job.made.clear();
            for (index, bytes) in job.images.iter().enumerate() {
                let slot = &mut self.batch[filled * per_image..(filled + 1) * per_image];
                let prepared = if job.thumbnails {
                    prepare_with_thumbnail(bytes, spec, self.ctx.limits, slot, &mut job.made)
                } else {
                    preprocess_timed(bytes, spec, self.ctx.limits, slot)
                };
                match prepared {
                    Ok(t) => {
                        metrics::histogram!("lookbook_encoder_decode_seconds")
                            .record(t.decode.as_secs_f64());
                        times.decode += t.decode;
                        times.resize += t.resize;
                        times.normalise += t.normalise;
                        filled += 1;
                    }
                    Err(err) => {
                        failure = Some(err.at(index));
                        break;
                    }
                }
            }
            match failure {
                Some(err) => {
                    filled = start;
                    job.outcome = Some(Err(err));
                }
                None => spans.push((job_index, start, filled - start)),
            }
        }
        bump_time(&self.counters.decode_nanos, times.decode);
        bump_time(&self.counters.resize_nanos, times.resize);
        bump_time(&self.counters.normalise_nanos, times.normalise);
        if filled == 0 {
            return Ok(());
        }
        let side = spec.size as usize;
        let started = Instant::now();
        let runs = self.session.run(
            &self.batch[..filled * per_image],
            filled,
            (side, side),
            self.ctx.batching.max_images,
            &mut self.rows,
        )?;
        let inference = started.elapsed();
        bump_time(&self.counters.inference_nanos, inference);
        bump(&self.counters.model_runs, runs as u64);
        metrics::histogram!("lookbook_encoder_inference_seconds").record(inference.as_secs_f64());
        metrics::histogram!("lookbook_encoder_batch_images").record(filled as f64);
        let dim = self.ctx.dim;
        for (job_index, first, count) in spans {
            let rows = &self.rows[first * dim..(first + count) * dim];
            let job = &mut group[job_index];
            let mut thumbnails = std::mem::take(&mut job.made).into_iter();
            job.outcome = Some(
                rows.chunks_exact(dim)
                    .enumerate()
                    .map(|(index, row)| {
                        Ok(Encoded {
                            vector: l2_normalised(row, index)?,
                            thumbnail: thumbnails.next().flatten(),
                        })
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    fn tensor_job(&mut self, input: Array4<f32>, reply: Reply<Array2<f32>>) {
        if reply.is_closed() {
            bump(&self.counters.cancelled, 1);
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.run_tensor(input)))
            .unwrap_or_else(|panic| Err(panicked(&*panic)));
        let counter = if result.is_ok() {
            &self.counters.completed
        } else {
            &self.counters.failed
        };
        bump(counter, 1);
        let _ = reply.send(result);
    }

    fn run_tensor(&mut self, input: Array4<f32>) -> Result<Array2<f32>, EncoderError> {
        let (n, channels, height, width) = input.dim();
        if channels != 3 {
            return Err(EncoderError::Runtime(format!(
                "run_tensor needs [N, 3, H, W], got {:?}",
                input.dim()
            )));
        }
        if n == 0 {
            return Ok(Array2::zeros((0, self.ctx.dim)));
        }
        let input = input.as_standard_layout();
        let data = input
            .as_slice()
            .expect("an array in standard layout is one contiguous slice");
        self.session.run(
            data,
            n,
            (height, width),
            self.ctx.batching.max_images,
            &mut self.rows,
        )?;
        Array2::from_shape_vec((n, self.ctx.dim), self.rows.clone())
            .map_err(|err| EncoderError::Runtime(format!("model output: {err}")))
    }
}

/// The error a caller gets when its job panicked; the panic is logged.
/// Decodes once, prepares the model input from the decoded pixels and
/// pushes a thumbnail of them to `made` (`None` if it could not be made:
/// the product is still added, without one). The thumbnail's time counts as
/// decoding in the stage times.
fn prepare_with_thumbnail(
    bytes: &[u8],
    spec: &InputSpec,
    limits: DecodeLimits,
    slot: &mut [f32],
    made: &mut Vec<Option<Vec<u8>>>,
) -> Result<StageTimes, super::ImageError> {
    let started = Instant::now();
    let rgb = decode_rgb(bytes, limits)?;
    let decode = started.elapsed();
    let times = prepare_decoded(&rgb, spec, slot)?;
    let thumbed = Instant::now();
    let thumb = match thumbnail::make(&rgb) {
        Ok(jpeg) => Some(jpeg),
        Err(error) => {
            tracing::warn!(%error, "no thumbnail for an image");
            None
        }
    };
    let thumb_time = thumbed.elapsed();
    metrics::histogram!("lookbook_encoder_thumbnail_seconds").record(thumb_time.as_secs_f64());
    made.push(thumb);
    Ok(StageTimes {
        decode: decode + thumb_time,
        ..times
    })
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> EncoderError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %what, "image encoder job panicked");
    EncoderError::Runtime(format!("encoder job panicked: {what}"))
}

/// Scales `row` to unit length, so that dot products are cosine similarities.
fn l2_normalised(row: &[f32], index: usize) -> Result<Vec<f32>, EncoderError> {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        // A zero or non-finite embedding has no direction; passing it on would
        // put NaNs into the index.
        return Err(EncoderError::Runtime(format!(
            "the model returned an embedding of norm {norm} for image {index}"
        )));
    }
    Ok(row.iter().map(|v| v / norm).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_unit_length() {
        let v = l2_normalised(&[3.0, 4.0], 0).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
    }

    #[test]
    fn refuses_zero_and_non_finite_rows() {
        assert!(
            matches!(l2_normalised(&[0.0, 0.0], 3), Err(EncoderError::Runtime(m)) if m.contains("image 3"))
        );
        assert!(l2_normalised(&[f32::NAN, 1.0], 0).is_err());
        assert!(l2_normalised(&[f32::MAX, f32::MAX], 0).is_err());
    }
}
