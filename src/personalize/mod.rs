//! Shoppers: what they did (interactions), what they like (taste profiles),
//! and what everyone is doing (trending).
//!
//! Writes go through one writer thread that group-commits: every
//! interaction that arrives while a commit is on disk joins the next
//! transaction, so an fsync is shared by all concurrent callers instead of
//! paid by each (the same reason databases group-commit their logs). Each
//! caller is answered only after its transaction is durable *and* its
//! profile is published in memory, so an acknowledged interaction both
//! survives `kill -9` and shapes the very next recommendation. The queue to
//! the writer is bounded; callers wait for room instead of growing it.
//!
//! Reads never touch the store: profiles are kept in memory, updated
//! incrementally per interaction (see [`profile`]), and shared with readers
//! as immutable `Arc` snapshots that the writer replaces (copy on write), so
//! a reader never waits for a commit.

mod profile;
mod trending;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    catalog::Catalog,
    domain::{ProductId, UserId},
    store::{
        InteractionCommit, Store, StoreError, StoredInteraction, StoredInterest, StoredProfile,
        StoredTrend, UserWrite,
    },
};

pub use profile::{ProfileRules, TasteProfile};
use trending::Trending;

/// What a shopper did with a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    View,
    Click,
    AddToCart,
    Purchase,
    /// Negative evidence: pushes similar products away.
    Dislike,
}

impl Action {
    /// The stored code: the action's number in the API.
    pub fn code(self) -> u8 {
        match self {
            Self::View => 1,
            Self::Click => 2,
            Self::AddToCart => 3,
            Self::Purchase => 4,
            Self::Dislike => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::View,
            2 => Self::Click,
            3 => Self::AddToCart,
            4 => Self::Purchase,
            5 => Self::Dislike,
            _ => return None,
        })
    }

    /// For "because you ..." reasons.
    pub fn past_tense(self) -> &'static str {
        match self {
            Self::View => "viewed",
            Self::Click => "clicked",
            Self::AddToCart => "added to your cart",
            Self::Purchase => "bought",
            Self::Dislike => "disliked",
        }
    }
}

/// A validated interaction with an absolute time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    pub user: UserId,
    pub product: ProductId,
    pub action: Action,
    /// Unix epoch milliseconds, not in the future by more than a day.
    pub timestamp_ms: i64,
}

/// Evidence weight of each positive action.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionWeights {
    pub view: f64,
    pub click: f64,
    pub add_to_cart: f64,
    pub purchase: f64,
}

impl Default for ActionWeights {
    fn default() -> Self {
        Self {
            view: 1.0,
            click: 2.0,
            add_to_cart: 4.0,
            purchase: 8.0,
        }
    }
}

impl ActionWeights {
    /// `None` for dislikes, which are not positive evidence.
    pub fn of(&self, action: Action) -> Option<f64> {
        match action {
            Action::View => Some(self.view),
            Action::Click => Some(self.click),
            Action::AddToCart => Some(self.add_to_cart),
            Action::Purchase => Some(self.purchase),
            Action::Dislike => None,
        }
    }
}

/// The `[personalize]` configuration section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersonalizeConfig {
    pub weights: ActionWeights,
    /// Age at which an interaction counts half.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Interest centroids per shopper (1 = a single taste vector).
    pub max_interests: usize,
    /// Cosine at or above which an interaction joins its nearest interest
    /// instead of starting a new one.
    pub interest_similarity: f32,
    /// Interactions kept per shopper (oldest evicted), bounding memory.
    pub max_history: usize,
    /// Never recommend what the shopper bought (within the kept history).
    pub exclude_purchased: bool,
    /// Never recommend what the shopper viewed, clicked or carted.
    pub exclude_viewed: bool,
    /// Weight of `context_product_ids` against the shopper's taste in each
    /// query, in [0, 1].
    pub context_weight: f32,
    /// Age at which an interaction counts half towards trending.
    #[serde(with = "humantime_serde")]
    pub trending_half_life: Duration,
    /// Most recent dislikes used as negatives per query.
    pub max_dislikes: usize,
    /// Most recent distinct products considered when explaining a result.
    pub reason_window: usize,
    /// Most interactions in one group commit.
    pub commit_batch: usize,
    /// Record calls allowed to wait for the writer.
    pub queue_capacity: usize,
}

impl Default for PersonalizeConfig {
    fn default() -> Self {
        Self {
            weights: ActionWeights::default(),
            half_life: Duration::from_secs(14 * 86_400),
            max_interests: 4,
            interest_similarity: 0.5,
            max_history: 500,
            exclude_purchased: true,
            exclude_viewed: false,
            context_weight: 0.5,
            trending_half_life: Duration::from_secs(86_400),
            max_dislikes: 20,
            reason_window: 50,
            commit_batch: 512,
            queue_capacity: 1024,
        }
    }
}

impl PersonalizeConfig {
    /// The offending field (under `personalize.`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let w = &self.weights;
        for (field, v) in [
            ("weights.view", w.view),
            ("weights.click", w.click),
            ("weights.add_to_cart", w.add_to_cart),
            ("weights.purchase", w.purchase),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err((field, "must be a positive number"));
            }
        }
        if self.half_life.is_zero() {
            return Err(("half_life", "must be positive"));
        }
        if self.trending_half_life.is_zero() {
            return Err(("trending_half_life", "must be positive"));
        }
        if !(1..=64).contains(&self.max_interests) {
            return Err(("max_interests", "must be in 1..=64"));
        }
        if !(-1.0..=1.0).contains(&self.interest_similarity) {
            return Err(("interest_similarity", "must be in [-1, 1]"));
        }
        if !(0.0..=1.0).contains(&self.context_weight) {
            return Err(("context_weight", "must be in [0, 1]"));
        }
        for (field, v) in [
            ("max_history", self.max_history),
            ("commit_batch", self.commit_batch),
            ("queue_capacity", self.queue_capacity),
        ] {
            if v == 0 {
                return Err((field, "must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn rules(&self) -> ProfileRules {
        ProfileRules {
            half_life_ms: self.half_life.as_secs_f64() * 1000.0,
            max_interests: self.max_interests,
            join_similarity: self.interest_similarity,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PersonalizeError {
    #[error("product {0} not found")]
    UnknownProduct(ProductId),
    /// Shared by every caller of the failed group commit.
    #[error("store: {0}")]
    Store(Arc<StoreError>),
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

/// One kept interaction.
#[derive(Debug, Clone)]
struct Event {
    seq: u64,
    product: Arc<str>,
    action: Action,
}

/// Per product, how often each kind of action is in the kept history;
/// maintained on append and evict so exclusion checks are a hash lookup.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    purchases: u32,
    views: u32,
    dislikes: u32,
}

impl Counts {
    fn slot(&mut self, action: Action) -> &mut u32 {
        match action {
            Action::Purchase => &mut self.purchases,
            Action::View | Action::Click | Action::AddToCart => &mut self.views,
            Action::Dislike => &mut self.dislikes,
        }
    }

    fn is_zero(&self) -> bool {
        self.purchases == 0 && self.views == 0 && self.dislikes == 0
    }
}

/// Everything kept about one shopper. Immutable once published: the writer
/// clones, changes and swaps it.
#[derive(Debug, Clone, Default)]
struct UserState {
    profile: TasteProfile,
    next_seq: u64,
    /// Arrival order, at most `max_history` long.
    history: VecDeque<Event>,
    counts: HashMap<Arc<str>, Counts>,
}

impl UserState {
    fn push(&mut self, event: Event, max_history: usize, evicted: &mut Vec<u64>) {
        *self
            .counts
            .entry(Arc::clone(&event.product))
            .or_default()
            .slot(event.action) += 1;
        self.history.push_back(event);
        while self.history.len() > max_history {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            if let Some(c) = self.counts.get_mut(&old.product) {
                let slot = c.slot(old.action);
                *slot = slot.saturating_sub(1);
                if c.is_zero() {
                    self.counts.remove(&old.product);
                }
            }
            evicted.push(old.seq);
        }
    }
}

/// A read-only view of one shopper for a query.
#[derive(Debug, Clone)]
pub struct Shopper {
    state: Arc<UserState>,
    exclude_purchased: bool,
    exclude_viewed: bool,
    max_dislikes: usize,
    reason_window: usize,
}

impl Shopper {
    /// Interests as (unit direction, share of weight), largest first; empty
    /// without positive evidence.
    pub fn interests(&self) -> Vec<(Vec<f32>, f64)> {
        self.state.profile.directions()
    }

    /// Whether `id` must not be recommended: disliked, or bought/viewed
    /// when configured so.
    pub fn excludes(&self, id: &str) -> bool {
        self.state.counts.get(id).is_some_and(|c| {
            c.dislikes > 0
                || (self.exclude_purchased && c.purchases > 0)
                || (self.exclude_viewed && c.views > 0)
        })
    }

    /// Most recent distinct disliked products, newest first.
    pub fn dislikes(&self) -> Vec<Arc<str>> {
        self.recent(|a| a == Action::Dislike, self.max_dislikes)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Most recent distinct positively-interacted products with the
    /// strongest action taken on each, newest first (for reasons).
    pub fn recent_positives(&self) -> Vec<(Arc<str>, Action)> {
        self.recent(|a| a != Action::Dislike, self.reason_window)
            .into_iter()
            .map(|(id, action)| {
                let c = self.state.counts.get(&id).copied().unwrap_or_default();
                let strongest = if c.purchases > 0 {
                    Action::Purchase
                } else {
                    action
                };
                (id, strongest)
            })
            .collect()
    }

    fn recent(&self, want: impl Fn(Action) -> bool, limit: usize) -> Vec<(Arc<str>, Action)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in self.state.history.iter().rev() {
            if out.len() >= limit {
                break;
            }
            if want(e.action) && seen.insert(Arc::clone(&e.product)) {
                out.push((Arc::clone(&e.product), e.action));
            }
        }
        out
    }

    pub fn interactions(&self) -> usize {
        self.state.history.len()
    }
}

enum Job {
    Record {
        items: Vec<(Interaction, Arc<[f32]>)>,
        done: oneshot::Sender<Result<(), PersonalizeError>>,
    },
    Forget {
        user: UserId,
        done: oneshot::Sender<Result<Forgotten, PersonalizeError>>,
    },
}

/// What `forget` erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Whether anything was known about the user.
    pub existed: bool,
    pub interactions: u64,
}

#[derive(Debug)]
struct Shared {
    config: PersonalizeConfig,
    rules: ProfileRules,
    store: Arc<Store>,
    users: RwLock<HashMap<Arc<str>, Arc<UserState>>>,
    trending: RwLock<Trending>,
}

/// Shopper state and the writer that keeps it durable.
#[derive(Debug)]
pub struct Personalizer {
    shared: Arc<Shared>,
    catalog: Arc<Catalog>,
    /// Bounded: `record` waits for room when the writer falls behind.
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Record { items, .. } => write!(f, "Record({} items)", items.len()),
            Self::Forget { user, .. } => write!(f, "Forget({user})"),
        }
    }
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
    pub users: usize,
    pub interactions: usize,
    pub trending_products: usize,
}

impl Personalizer {
    /// Loads every profile, history and trending count from the store (on
    /// the blocking pool) and starts the writer thread.
    pub async fn open(
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        config: PersonalizeConfig,
    ) -> Result<(Self, PersonalizeReport), PersonalizeError> {
        let dim = catalog.dim() as usize;
        let (shared, report) =
            tokio::task::spawn_blocking(move || load(store, config, dim)).await??;
        let shared = Arc::new(shared);
        let (jobs, rx) = mpsc::channel(shared.config.queue_capacity);
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("interaction-writer".into())
            .spawn(move || writer_loop(&writer, rx))
            .map_err(PersonalizeError::Spawn)?;
        Ok((
            Self {
                shared,
                catalog,
                jobs,
            },
            report,
        ))
    }

    pub fn config(&self) -> &PersonalizeConfig {
        &self.shared.config
    }

    /// Records interactions durably and applies them to the profiles. The
    /// outer error fails the whole call (store down, shutting down); an
    /// unknown product fails only its own item.
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
        let (done, reply) = oneshot::channel();
        self.jobs
            .send(Job::Record { items, done })
            .await
            .map_err(|_| PersonalizeError::WriterStopped)?;
        reply.await.map_err(|_| PersonalizeError::WriterStopped)??;
        Ok(results)
    }

    /// Erases the user's history and profile, in memory and durably.
    pub async fn forget(&self, user: UserId) -> Result<Forgotten, PersonalizeError> {
        let (done, reply) = oneshot::channel();
        self.jobs
            .send(Job::Forget { user, done })
            .await
            .map_err(|_| PersonalizeError::WriterStopped)?;
        reply.await.map_err(|_| PersonalizeError::WriterStopped)?
    }

    /// The shopper's current state, `None` if nothing is known about them.
    pub fn shopper(&self, user: &UserId) -> Option<Shopper> {
        let state = Arc::clone(self.shared.users.read().get(user.as_str())?);
        let c = &self.shared.config;
        Some(Shopper {
            state,
            exclude_purchased: c.exclude_purchased,
            exclude_viewed: c.exclude_viewed,
            max_dislikes: c.max_dislikes,
            reason_window: c.reason_window,
        })
    }

    /// Up to `n` trending products that `accept`s, best first, scored
    /// relative to the top product.
    pub fn trending(&self, n: usize, accept: &dyn Fn(&str) -> bool) -> Vec<(Arc<str>, f32)> {
        self.shared.trending.read().top(n, accept)
    }

    pub fn users(&self) -> usize {
        self.shared.users.read().len()
    }
}

fn load(
    store: Arc<Store>,
    config: PersonalizeConfig,
    dim: usize,
) -> Result<(Shared, PersonalizeReport), PersonalizeError> {
    let mut users: HashMap<Arc<str>, UserState> = HashMap::new();
    store.scan_profiles(&mut |(user, p): (String, StoredProfile)| {
        let interests = p
            .interests
            .into_iter()
            .filter(|i| i.mean.len() == dim && i.weight > 0.0 && i.weight.is_finite())
            .map(|i| profile::Interest {
                mean: i.mean,
                weight: i.weight,
            })
            .collect();
        users.insert(
            Arc::from(user),
            UserState {
                profile: TasteProfile {
                    reference_ms: p.reference_ms,
                    interests,
                },
                next_seq: p.next_seq,
                ..UserState::default()
            },
        );
        Ok(())
    })?;
    let mut interactions = 0usize;
    let mut orphans = 0usize;
    let mut unused = Vec::new();
    store.scan_interactions(&mut |(user, seq, i): (String, u64, StoredInteraction)| {
        let Some(action) = Action::from_code(i.action) else {
            orphans += 1;
            return Ok(());
        };
        let state = users.entry(Arc::from(user)).or_default();
        state.next_seq = state.next_seq.max(seq + 1);
        let event = Event {
            seq,
            product: Arc::from(i.product_id),
            action,
        };
        // Rows are in sequence order, so the kept history is rebuilt
        // exactly; nothing is evicted unless the limit was lowered.
        state.push(event, config.max_history, &mut unused);
        interactions += 1;
        Ok(())
    })?;
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "skipped stored interactions with an unknown action"
        );
    }
    let mut trending = Trending::new(config.trending_half_life.as_secs_f64() * 1000.0, now_ms());
    store.scan_trends(&mut |(product, t)| {
        trending.restore(Arc::from(product), t);
        Ok(())
    })?;
    let report = PersonalizeReport {
        users: users.len(),
        interactions,
        trending_products: trending.len(),
    };
    Ok((
        Shared {
            rules: config.rules(),
            config,
            store,
            users: RwLock::new(users.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            trending: RwLock::new(trending),
        },
        report,
    ))
}

/// The writer thread: takes whatever jobs are queued (up to one commit's
/// worth), commits them together, publishes, answers. Ends when every
/// sender is gone, after finishing what was queued.
fn writer_loop(shared: &Shared, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        let mut queued = 0usize;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Record { items, done } => {
                    queued += items.len();
                    batch.push((items, done));
                }
                Job::Forget { user, done } => {
                    // Order matters: what was recorded before the forget
                    // is committed first, then erased with the rest.
                    commit(shared, std::mem::take(&mut batch));
                    queued = 0;
                    let _ = done.send(forget(shared, &user));
                }
            }
            if queued < shared.config.commit_batch {
                next = rx.try_recv().ok();
            }
        }
        commit(shared, batch);
    }
    tracing::debug!("interaction writer stopped");
}

type Pending = Vec<(
    Vec<(Interaction, Arc<[f32]>)>,
    oneshot::Sender<Result<(), PersonalizeError>>,
)>;

/// A user's new state in a commit, with the history rows it appends and
/// the sequence numbers it evicts.
type Touched = (UserState, Vec<(u64, StoredInteraction)>, Vec<u64>);

fn commit(shared: &Shared, batch: Pending) {
    if batch.is_empty() {
        return;
    }
    let config = &shared.config;
    let mut touched: HashMap<Arc<str>, Touched> = HashMap::new();
    // Latest value per product: a product touched twice in one commit is
    // written once.
    let mut trends: HashMap<String, StoredTrend> = HashMap::new();
    {
        let users = shared.users.read();
        let mut trending = shared.trending.write();
        for (items, _) in &batch {
            for (i, vector) in items {
                let key = i.user.as_arc();
                let (state, appended, evicted) =
                    touched.entry(Arc::clone(key)).or_insert_with(|| {
                        let state = users.get(key).map(|s| (**s).clone()).unwrap_or_default();
                        (state, Vec::new(), Vec::new())
                    });
                let seq = state.next_seq;
                state.next_seq += 1;
                appended.push((
                    seq,
                    StoredInteraction {
                        product_id: i.product.to_string(),
                        action: i.action.code(),
                        timestamp_ms: i.timestamp_ms,
                    },
                ));
                state.push(
                    Event {
                        seq,
                        product: Arc::clone(i.product.as_arc()),
                        action: i.action,
                    },
                    config.max_history,
                    evicted,
                );
                if let Some(weight) = config.weights.of(i.action) {
                    state
                        .profile
                        .add(vector, weight, i.timestamp_ms, &shared.rules);
                    // Trending is aggregate-only: it is updated before the
                    // commit, so a failed commit may leave it counting
                    // interactions the caller was told failed.
                    let t = trending.add(i.product.as_arc(), weight, i.timestamp_ms);
                    trends.insert(i.product.to_string(), t);
                }
            }
        }
    }
    let write = InteractionCommit {
        users: touched
            .iter()
            .map(|(user, (state, appended, evicted))| UserWrite {
                user: user.to_string(),
                // A row appended and evicted in the same commit is never written.
                appended: appended
                    .iter()
                    .filter(|(seq, _)| !evicted.contains(seq))
                    .cloned()
                    .collect(),
                evicted: evicted.clone(),
                profile: StoredProfile {
                    reference_ms: state.profile.reference_ms,
                    next_seq: state.next_seq,
                    interests: state
                        .profile
                        .interests
                        .iter()
                        .map(|i| StoredInterest {
                            mean: i.mean.clone(),
                            weight: i.weight,
                        })
                        .collect(),
                },
            })
            .collect(),
        trends: trends.into_iter().collect(),
    };
    let result = shared.store.commit_interactions(&write).map_err(Arc::new);
    if result.is_ok() {
        let mut users = shared.users.write();
        for (user, (state, _, _)) in touched {
            users.insert(user, Arc::new(state));
        }
    }
    for (_, done) in batch {
        let reply = result.clone().map_err(PersonalizeError::Store);
        // The caller may have gone away (cancelled); the write stands.
        let _ = done.send(reply);
    }
}

fn forget(shared: &Shared, user: &UserId) -> Result<Forgotten, PersonalizeError> {
    let (interactions, existed) = shared.store.forget_user(user.as_str())?;
    let in_memory = shared.users.write().remove(user.as_str()).is_some();
    Ok(Forgotten {
        existed: existed || in_memory,
        interactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_field() {
        PersonalizeConfig::default().validate().unwrap();
        let c = PersonalizeConfig {
            context_weight: 1.5,
            ..PersonalizeConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "context_weight");
        let c = PersonalizeConfig {
            max_interests: 0,
            ..PersonalizeConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "max_interests");
    }

    #[test]
    fn action_codes_round_trip() {
        for a in [
            Action::View,
            Action::Click,
            Action::AddToCart,
            Action::Purchase,
            Action::Dislike,
        ] {
            assert_eq!(Action::from_code(a.code()), Some(a));
        }
        assert_eq!(Action::from_code(0), None);
    }

    #[test]
    fn history_is_bounded_and_counts_follow_evictions() {
        let mut s = UserState::default();
        let mut evicted = Vec::new();
        for seq in 0..5 {
            s.push(
                Event {
                    seq,
                    product: Arc::from(if seq == 0 { "bought" } else { "viewed" }),
                    action: if seq == 0 {
                        Action::Purchase
                    } else {
                        Action::View
                    },
                },
                3,
                &mut evicted,
            );
        }
        assert_eq!(s.history.len(), 3);
        assert_eq!(evicted, vec![0, 1]);
        assert!(
            !s.counts.contains_key("bought"),
            "evicted purchase is forgotten"
        );
        assert_eq!(s.counts["viewed"].views, 3);
    }
}
