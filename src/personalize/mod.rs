//! Shoppers: what they did (interactions), what they like (taste profiles),
//! and what everyone is doing (trending).
//!
//! Writes go through one writer thread ([`writer`]) that group-commits:
//! every interaction that arrives while a commit is on disk joins the next
//! transaction, so an fsync is shared by all concurrent callers instead of
//! paid by each (the same reason databases group-commit their logs). Each
//! caller is answered only after its transaction is durable *and* its
//! shopper's new state is published in memory, so an acknowledged
//! interaction both survives `kill -9` and shapes the very next
//! recommendation. The queue to the writer is bounded: a call that finds it
//! full is refused at once ([`PersonalizeError::Overloaded`]) instead of
//! waiting; a queued job is completed even if its caller goes away.
//!
//! The store holds every shopper's history and profile; memory holds only a
//! bounded working set ([`resident`]): the `max_resident_shoppers` most
//! recently used, as immutable `Arc` snapshots that the writer replaces
//! (copy on write), so a reader never waits for a commit. A shopper who is
//! not resident is read back from the store on the blocking pool (two
//! B-tree lookups; the state is rebuilt exactly, see [`shopper`]) and made
//! resident again, with a check that keeps a load racing a commit from
//! installing a stale state. Start-up loads only the trending counts, so
//! neither start-up time nor memory grows with the number of shoppers ever
//! seen. Profiles are updated incrementally per interaction (see
//! [`profile`]), so a read never recomputes anything from the history.

mod config;
mod interaction;
mod load;
mod profile;
mod resident;
mod shopper;
mod trending;
mod writer;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use parking_lot::RwLock;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    catalog::Catalog,
    domain::{Metric, ProductId, UserId},
    store::{Store, StoreError},
};

pub use config::{ActionWeights, PersonalizeConfig};
pub use interaction::{Action, Interaction};
pub use profile::{ProfileRules, TasteProfile};
pub use shopper::Shopper;

use resident::Resident;
use shopper::ViewRules;
use trending::Trending;
use writer::Job;

#[derive(Debug, thiserror::Error)]
pub enum PersonalizeError {
    #[error("product {0} not found")]
    UnknownProduct(ProductId),
    /// Shared by every caller of the failed group commit.
    #[error("store: {0}")]
    Store(Arc<StoreError>),
    /// The writer's queue, or the shopper loads running at once, are at
    /// their configured bound.
    #[error("personalization is overloaded; retry later")]
    Overloaded,
    #[error("the interaction writer has stopped")]
    WriterStopped,
    #[error("cannot start the interaction writer: {0}")]
    Spawn(std::io::Error),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<StoreError> for PersonalizeError {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

/// What `forget` erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Whether anything was known about the user.
    pub existed: bool,
    pub interactions: u64,
}

/// State shared by the API and the writer thread.
#[derive(Debug)]
struct Shared {
    config: PersonalizeConfig,
    rules: ProfileRules,
    /// The catalogue's dimension: stored interests of another are dropped.
    dim: usize,
    /// The catalogue's metric: what a stored vector must satisfy to be
    /// replayed into a damaged profile.
    metric: Metric,
    store: Arc<Store>,
    resident: Resident,
    trending: RwLock<Trending>,
    /// Stored shoppers; changed only by the writer.
    shoppers: AtomicU64,
}

/// Shopper state and the writer that keeps it durable.
#[derive(Debug)]
pub struct Personalizer {
    shared: Arc<Shared>,
    catalog: Arc<Catalog>,
    /// Bounded: calls past `queue_capacity` are refused.
    jobs: mpsc::Sender<Job>,
    /// Store loads of non-resident shoppers running at once.
    loads: Arc<Semaphore>,
}

/// Queues a job for the writer, refusing it at once if the queue is full.
fn submit(jobs: &mpsc::Sender<Job>, job: Job) -> Result<(), PersonalizeError> {
    jobs.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => PersonalizeError::Overloaded,
        mpsc::error::TrySendError::Closed(_) => PersonalizeError::WriterStopped,
    })
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How the shopper state came up; logged at start.
#[derive(Debug, Clone, Copy)]
pub struct PersonalizeReport {
    /// Shoppers in the store (none is loaded until they return).
    pub users: u64,
    /// Interactions kept in the store.
    pub interactions: u64,
    pub trending_products: usize,
    /// Trending rows that failed their checks and were skipped (each
    /// logged by product id).
    pub damaged_trending: usize,
}

impl Personalizer {
    /// Loads the trending counts and totals from the store (on the blocking
    /// pool) and starts the writer thread. Shoppers are loaded on demand.
    pub async fn open(
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        config: PersonalizeConfig,
    ) -> Result<(Self, PersonalizeReport), PersonalizeError> {
        let dim = catalog.dim() as usize;
        let metric = catalog.metric();
        let (shared, report) =
            tokio::task::spawn_blocking(move || load::open(store, config, dim, metric)).await??;
        let shared = Arc::new(shared);
        let (jobs, rx) = mpsc::channel(shared.config.queue_capacity);
        let loads = Arc::new(Semaphore::new(shared.config.load_concurrency));
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("interaction-writer".into())
            .spawn(move || writer::writer_loop(&writer, rx))
            .map_err(PersonalizeError::Spawn)?;
        Ok((
            Self {
                shared,
                catalog,
                jobs,
                loads,
            },
            report,
        ))
    }

    pub fn config(&self) -> &PersonalizeConfig {
        &self.shared.config
    }

    /// Records interactions durably and applies them to the profiles. The
    /// outer error fails the whole call (queue full, store down, shutting
    /// down); an unknown product fails only its own item.
    pub async fn record(
        &self,
        interactions: Vec<Interaction>,
    ) -> Result<Vec<Result<(), PersonalizeError>>, PersonalizeError> {
        let mut results = Vec::with_capacity(interactions.len());
        let mut items = Vec::with_capacity(interactions.len());
        for i in interactions {
            match self.catalog.vector(&i.product) {
                Some(v) => {
                    results.push(Ok(()));
                    items.push((i, v));
                }
                None => results.push(Err(PersonalizeError::UnknownProduct(i.product))),
            }
        }
        if items.is_empty() {
            return Ok(results);
        }
        self.commit_record(items, None).await?;
        Ok(results)
    }

    /// Erases the user's history and profile, in memory and durably,
    /// whether or not they are resident.
    pub async fn forget(&self, user: UserId) -> Result<Forgotten, PersonalizeError> {
        self.apply_forget(user, None).await
    }

    /// Applies interactions read from the replicated log, with the vectors
    /// their events carry (not the catalogue's: a replica that has not yet
    /// applied a product, or has applied its later deletion, must still
    /// build the same profile), and records `applied` with them.
    pub async fn apply_record(
        &self,
        items: Vec<(Interaction, Arc<[f32]>)>,
        applied: Option<u64>,
    ) -> Result<(), PersonalizeError> {
        self.commit_record(items, applied).await
    }

    /// [`Self::forget`] read from the replicated log at `applied`.
    pub async fn apply_forget(
        &self,
        user: UserId,
        applied: Option<u64>,
    ) -> Result<Forgotten, PersonalizeError> {
        let (done, reply) = oneshot::channel();
        submit(
            &self.jobs,
            Job::Forget {
                user,
                applied,
                done,
            },
        )?;
        reply.await.map_err(|_| PersonalizeError::WriterStopped)?
    }

    async fn commit_record(
        &self,
        items: Vec<(Interaction, Arc<[f32]>)>,
        applied: Option<u64>,
    ) -> Result<(), PersonalizeError> {
        let (done, reply) = oneshot::channel();
        submit(
            &self.jobs,
            Job::Record {
                items,
                applied,
                done,
            },
        )?;
        reply.await.map_err(|_| PersonalizeError::WriterStopped)?
    }

    /// The shopper's current state, `None` if nothing is known about them.
    /// A resident shopper is answered at once; any other is read from the
    /// store on the blocking pool (refused with `Overloaded` when
    /// `load_concurrency` loads are already running).
    pub async fn shopper(&self, user: &UserId) -> Result<Option<Shopper>, PersonalizeError> {
        let state = match self.shared.resident.get(user.as_str()) {
            Some(state) => Some(state),
            None => {
                // The semaphore is never closed: the only error is "no
                // permit left".
                let permit = Arc::clone(&self.loads)
                    .try_acquire_owned()
                    .map_err(|_| PersonalizeError::Overloaded)?;
                let shared = Arc::clone(&self.shared);
                let user = Arc::clone(user.as_arc());
                tokio::task::spawn_blocking(move || {
                    // Held until the load ends, even if the caller is gone.
                    let _permit = permit;
                    shared.shopper_state(&user)
                })
                .await??
            }
        };
        let c = &self.shared.config;
        let rules = ViewRules {
            exclude_purchased: c.exclude_purchased,
            exclude_viewed: c.exclude_viewed,
            max_dislikes: c.max_dislikes,
            reason_window: c.reason_window,
        };
        Ok(state.map(|s| Shopper::new(s, rules)))
    }

    /// Up to `n` trending products that `accept`s, best first, scored
    /// relative to the top product.
    pub fn trending(&self, n: usize, accept: &dyn Fn(&str) -> bool) -> Vec<(Arc<str>, f32)> {
        self.shared.trending.read().top(n, accept)
    }

    /// Shoppers whose state is in memory now (at most
    /// `max_resident_shoppers`).
    pub fn resident_shoppers(&self) -> usize {
        self.shared.resident.len()
    }

    /// Shoppers known to the store, resident or not.
    pub fn shoppers(&self) -> u64 {
        self.shared.shoppers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forget_job() -> Job {
        let (done, _reply) = oneshot::channel();
        Job::Forget {
            user: UserId::parse("ann", 64).unwrap(),
            applied: None,
            done,
        }
    }

    #[test]
    fn a_full_writer_queue_refuses_at_once() {
        let (jobs, rx) = mpsc::channel(1);
        submit(&jobs, forget_job()).unwrap();
        assert!(matches!(
            submit(&jobs, forget_job()),
            Err(PersonalizeError::Overloaded)
        ));
        drop(rx);
        assert!(matches!(
            submit(&jobs, forget_job()),
            Err(PersonalizeError::WriterStopped)
        ));
    }
}
