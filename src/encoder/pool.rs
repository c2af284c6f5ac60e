//! The encoder's worker pool: dedicated OS threads, each owning one ONNX Runtime
//! session, fed from one bounded queue.
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
//!   a job is taken.
//! - A job whose caller has gone away (request cancelled) is dropped before any
//!   work is done, so cancelled requests do not consume inference time.
//! - A panic while handling a job (say, in an image decoder) becomes an error reply
//!   and the worker carries on, so bad input cannot shrink the pool.
//! - Dropping the pool closes the queue; workers finish the job in hand, skip the
//!   (necessarily cancelled) rest and exit, and the drop joins them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use ndarray::{Array2, Array4};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::EncoderStats;
use super::error::EncoderError;
use super::manifest::InputSpec;
use super::preprocess::preprocess;
use super::session::ModelSession;

/// Where a worker sends a job's result.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, EncoderError>>;

/// A unit of work for one worker.
pub(crate) enum Job {
    /// Decode, preprocess and embed a batch of images (one model run).
    Embed {
        images: Vec<Bytes>,
        reply: Reply<Vec<Vec<f32>>>,
    },
    /// Run the model on a ready-made NCHW tensor.
    Tensor {
        input: Array4<f32>,
        reply: Reply<Array2<f32>>,
    },
}

/// What workers need besides their session.
#[derive(Debug)]
pub(crate) struct WorkerContext {
    pub(crate) input: InputSpec,
    pub(crate) max_pixels: u64,
    pub(crate) dim: usize,
}

/// Monotonic job counters, shared by the workers and the submitting side.
#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    images: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
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
                batch: Vec::new(),
                rows: Vec::new(),
            };
            let receiver = Arc::clone(&receiver);
            let counters = Arc::clone(&pool.counters);
            let thread = std::thread::Builder::new()
                .name(format!("lookbook-encoder-{n}"))
                .spawn(move || worker.run(&receiver, &counters))
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
            Ok(()) => Ok(()),
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
            .map_err(|_| EncoderError::ShuttingDown)
    }

    fn sender(&self) -> Result<&SyncSender<Job>, EncoderError> {
        self.sender.as_ref().ok_or(EncoderError::ShuttingDown)
    }

    pub(crate) fn stats(&self) -> EncoderStats {
        let c = &self.counters;
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        EncoderStats {
            jobs_completed: get(&c.completed),
            jobs_failed: get(&c.failed),
            jobs_cancelled: get(&c.cancelled),
            jobs_rejected: get(&c.rejected),
            images_embedded: get(&c.images),
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

/// State owned by one worker thread.
struct Worker {
    session: ModelSession,
    ctx: Arc<WorkerContext>,
    /// Batch input tensor, reused between jobs (keeps the largest batch's capacity).
    batch: Vec<f32>,
    /// Raw model output, reused between jobs.
    rows: Vec<f32>,
}

impl Worker {
    fn run(mut self, receiver: &Mutex<Receiver<Job>>, counters: &Counters) {
        loop {
            // The guard is a temporary: it is released as soon as a job arrives.
            let Ok(job) = receiver.lock().recv() else {
                break; // queue closed and drained: the pool is being dropped
            };
            match job {
                Job::Embed { images, reply } => {
                    let count = images.len() as u64;
                    self.answer(reply, counters, count, |w| w.embed(&images));
                }
                Job::Tensor { input, reply } => {
                    self.answer(reply, counters, 0, |w| w.run_tensor(input));
                }
            }
        }
        tracing::debug!("image encoder worker exiting");
    }

    /// Runs `work` unless the caller is gone, and sends its result. Counters are
    /// updated before the reply, so a caller that got its answer sees them.
    fn answer<T>(
        &mut self,
        reply: Reply<T>,
        counters: &Counters,
        images: u64,
        work: impl FnOnce(&mut Self) -> Result<T, EncoderError>,
    ) {
        if reply.is_closed() {
            bump(&counters.cancelled, 1);
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| work(self))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(panic = %what, "image encoder job panicked");
            Err(EncoderError::Runtime(format!(
                "encoder job panicked: {what}"
            )))
        });
        if result.is_ok() {
            bump(&counters.completed, 1);
            bump(&counters.images, images);
        } else {
            bump(&counters.failed, 1);
        }
        // The caller may have given up while we worked; the result is then unwanted.
        let _ = reply.send(result);
    }

    fn embed(&mut self, images: &[Bytes]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let spec = &self.ctx.input;
        let per_image = spec.tensor_len();
        self.batch.resize(images.len() * per_image, 0.0);
        for (index, (bytes, slot)) in images
            .iter()
            .zip(self.batch.chunks_exact_mut(per_image))
            .enumerate()
        {
            preprocess(bytes, spec, self.ctx.max_pixels, slot).map_err(|err| err.at(index))?;
        }
        let side = spec.size as usize;
        self.session
            .run(&self.batch, images.len(), side, side, &mut self.rows)?;
        self.rows
            .chunks_exact(self.ctx.dim)
            .enumerate()
            .map(|(index, row)| l2_normalised(row, index))
            .collect()
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
        self.session.run(data, n, height, width, &mut self.rows)?;
        Array2::from_shape_vec((n, self.ctx.dim), self.rows.clone())
            .map_err(|err| EncoderError::Runtime(format!("model output: {err}")))
    }
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
