//! Query planning: "more like this" and "what should this shopper see next".
//!
//! Both paths resolve their inputs first (products, photos, the shopper's
//! taste), then build one or more ranked candidate lists on the blocking
//! pool and hand them to [`select`] for shares, caps, MMR and reasons:
//! - similar: one k-NN list (AVERAGE_VECTOR), or the union of one k-NN list
//!   per positive rescored by best positive vs best negative (BEST_SCORE,
//!   Qdrant's semantics); negatives only: a scan for the products furthest
//!   from them;
//! - for a shopper: one k-NN list per taste interest (blended with the
//!   context products when given), with shares of k by interest weight and
//!   dislikes pushing candidates down; without positive evidence, the
//!   context alone; without context, trending products with a diverse
//!   explore list behind them, so that the answer is never empty while
//!   anything matches.
//! - negatives only: the nearest neighbours of the direction away from the
//!   negatives, scored by distance from them.
//!
//! **Metrics.** Everything is compared with the catalogue's [`Metric`]:
//! k-NN, MMR, reasons, BEST_SCORE and dislikes, the explore list's "typical
//! look". Queries made of several vectors (averages, blends, interests) are
//! built per metric (see [`query_for`]): unit length under cosine and dot,
//! as they are under euclidean and manhattan, where a mean of points is the
//! point to search around. Candidates closer to a negative than to every
//! positive go below the rest of their list (see [`settle`]).
//!
//! Each k-NN list uses exact search over the admitted ids when the filter's
//! most selective `must` clause admits at most `exact_threshold` products,
//! and filtered HNSW otherwise. Lists are over-fetched when caps, MMR or
//! negatives may discard candidates, and fetched again wider (up to the
//! whole catalogue) while the answer is short of k and more candidates
//! exist. Searches are CPU work: they run on the blocking pool behind a
//! bounded gate, so a burst of queries queues (up to
//! `server.max_pending_searches`, then RESOURCE_EXHAUSTED) instead of
//! starving the async workers.
//!
//! **Bounded cost.** No request walks the whole catalogue: a candidate list
//! holds at most [`MAX_LIST`] products whatever the widening, MMR weighs a
//! bounded window (see [`select`]), the explore list comes from a cached
//! sample refreshed in the background, and negatives-only queries go through
//! the index. A search whose caller has gone (deadline, disconnect) stops at
//! its next check instead of finishing for nobody.

pub mod select;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{AttributeView, Catalog, CatalogError},
    domain::{Attributes, Embedding, Filter, Metric, ProductId, UserId, norm},
    gate::{Busy, Gate},
    index::Hit,
    personalize::{Personalizer, Shopper},
};
use select::{Anchor, Candidate, Cap, List, Vectors, Why};

/// Products sampled (evenly, in id order) for the explore list, or the
/// list size asked for if larger.
const EXPLORE_SAMPLE: usize = 512;
/// MMR trade-off of the explore list when the caller asked for none: the
/// point of that list is variety.
const EXPLORE_MMR: f32 = 0.5;
/// Times a short answer is fetched again, each 4x wider.
const WIDEN_ATTEMPTS: usize = 4;
/// Most candidates in one list, however often it is widened. Only caps (at
/// most `max` per attribute value) and duplicates between a shopper's
/// interests discard candidates, so a list this long is short of k only
/// when a cap admits fewer than k over its first `MAX_LIST` candidates;
/// filters, exclusions and dislikes never make it short (the index returns
/// `min(n, admitted)`).
pub const MAX_LIST: usize = 16_384;
/// Products kept in the cached explore sample (evenly spread in id order).
const EXPLORE_CACHE: usize = 8_192;
/// The explore sample is rebuilt at most this often while the catalogue
/// changes; between rebuilds the previous one is served.
const EXPLORE_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum SimilarTarget {
    Product(ProductId),
    Image(Bytes),
    Embedding(Embedding),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    AverageVector,
    BestScore,
}

/// Result diversity; the default is off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diversity {
    /// In [0, 1]; 0 = off.
    pub mmr_lambda: f32,
    pub cap: Option<Cap>,
}

/// A validated `RecommendSimilar` request.
#[derive(Debug, Clone)]
pub struct SimilarQuery {
    pub target: Option<SimilarTarget>,
    pub positives: Vec<ProductId>,
    pub negatives: Vec<ProductId>,
    pub strategy: Strategy,
    /// 1..=configured maximum.
    pub k: usize,
    pub filter: Filter,
    pub exclude: HashSet<ProductId>,
    pub diversity: Diversity,
}

/// A validated `RecommendForUser` request.
#[derive(Debug, Clone)]
pub struct UserQuery {
    /// `None`: an anonymous session.
    pub user: Option<UserId>,
    pub k: usize,
    pub filter: Filter,
    pub exclude: HashSet<ProductId>,
    pub context: Vec<ProductId>,
    pub diversity: Diversity,
}

#[derive(Debug, Clone)]
pub struct Recommendation {
    pub id: ProductId,
    /// Higher is better: for similarity-based picks the catalogue metric's
    /// similarity ([`Metric::similarity`]: the cosine by default); below
    /// every other pick of its list when penalised by a negative (see
    /// [`settle`]).
    pub score: f32,
    pub attributes: Arc<Attributes>,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the positives and negatives cancel out: no query direction is left")]
    DegenerateQuery,
    #[error("search task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Busy(#[from] Busy),
    /// The shopper's state could not be read.
    #[error(transparent)]
    Personalize(#[from] crate::personalize::PersonalizeError),
}

/// Where a list's candidates come from.
#[derive(Debug, Clone)]
enum Source {
    Knn(Vec<f32>),
    /// Union of k-NN lists of each positive, scored by the best positive.
    BestOf(Vec<Arc<[f32]>>),
    /// Nearest neighbours of the direction (cosine, dot) or point
    /// (euclidean, manhattan) away from the negatives, whose mean this
    /// holds (see [`away_from`]), scored by distance from the negatives.
    AwayFrom(Vec<f32>),
    Trending,
    Explore,
}

#[derive(Debug, Clone)]
struct ListPlan {
    source: Source,
    quota: usize,
    mmr_lambda: f32,
    why: Why,
}

/// Everything a search needs, resolved before going to the blocking pool.
#[derive(Debug, Clone)]
struct Plan {
    lists: Vec<ListPlan>,
    k: usize,
    filter: Filter,
    exclude: HashSet<Arc<str>>,
    shopper: Option<Shopper>,
    /// Candidates closer to one of these than to their query are pushed
    /// below every other of their list (see [`settle`]).
    negatives: Vec<Arc<[f32]>>,
    anchors: Vec<Anchor>,
    cap: Option<Cap>,
}

/// An evenly spread sample of the catalogue for explore lists, with the
/// catalogue change count it was taken at.
#[derive(Debug)]
struct ExploreSample {
    changes: u64,
    taken: Instant,
    /// In id order.
    items: Vec<(Arc<str>, Arc<[f32]>)>,
    /// The mean of `items`' vectors (the catalogue's mean look), computed
    /// once per sample; `None` for an empty one.
    mean: Option<Vec<f32>>,
}

/// The explore sample and its background refresh.
#[derive(Debug, Default)]
struct ExploreCache {
    sample: ArcSwapOption<ExploreSample>,
    /// Set while a refresh runs, so at most one does.
    refreshing: AtomicBool,
}

impl ExploreCache {
    /// The current sample, starting a background refresh when the
    /// catalogue has changed since it was taken (and it is old enough).
    /// Only the very first call, with no sample yet, builds one in line.
    fn get(self: &Arc<Self>, catalog: &Arc<Catalog>) -> Arc<ExploreSample> {
        let current = self.sample.load_full();
        if let Some(sample) = &current {
            let stale =
                sample.changes != catalog.changes() && sample.taken.elapsed() >= EXPLORE_REFRESH;
            if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
                let cache = Arc::clone(self);
                let catalog = Arc::clone(catalog);
                // Its own thread, detached: the refresh serves later
                // requests, not this one, and must not take a search slot.
                let spawned = std::thread::Builder::new()
                    .name("explore-refresh".into())
                    .spawn(move || {
                        cache
                            .sample
                            .store(Some(Arc::new(take_explore_sample(&catalog))));
                        cache.refreshing.store(false, Ordering::Release);
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot start the explore refresh; serving the old sample");
                    self.refreshing.store(false, Ordering::Release);
                }
            }
            return Arc::clone(sample);
        }
        let fresh = Arc::new(take_explore_sample(catalog));
        self.sample.store(Some(Arc::clone(&fresh)));
        fresh
    }
}

#[derive(Debug)]
pub struct Recommender {
    catalog: Arc<Catalog>,
    personalizer: Arc<Personalizer>,
    /// Bounds concurrently running searches (CPU-bound, on the blocking
    /// pool) and the queue in front of them.
    slots: Gate,
    exact_threshold: usize,
    explore: Arc<ExploreCache>,
}

impl Recommender {
    pub fn new(
        catalog: Arc<Catalog>,
        personalizer: Arc<Personalizer>,
        concurrency: usize,
        max_pending: usize,
        exact_threshold: usize,
    ) -> Self {
        Self {
            catalog,
            personalizer,
            slots: Gate::new("searches", concurrency, max_pending),
            exact_threshold,
            explore: Arc::new(ExploreCache::default()),
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn personalizer(&self) -> &Arc<Personalizer> {
        &self.personalizer
    }

    fn vector(&self, id: &ProductId) -> Result<Arc<[f32]>, CatalogError> {
        self.catalog
            .vector(id)
            .ok_or_else(|| CatalogError::NotFound(id.clone()))
    }

    pub async fn similar(
        &self,
        query: SimilarQuery,
    ) -> Result<Vec<Recommendation>, RecommendError> {
        let SimilarQuery {
            target,
            positives,
            negatives,
            strategy,
            k,
            filter,
            mut exclude,
            diversity,
        } = query;
        let mut anchors = Vec::new();
        match target {
            Some(SimilarTarget::Product(id)) => {
                anchors.push(Anchor {
                    reason: format!("similar to {id}"),
                    vector: self.vector(&id)?,
                });
                exclude.insert(id);
            }
            Some(SimilarTarget::Embedding(e)) => anchors.push(Anchor {
                reason: "similar to the given embedding".to_owned(),
                vector: Arc::clone(e.as_arc()),
            }),
            Some(SimilarTarget::Image(bytes)) => anchors.push(Anchor {
                reason: "similar to your photo".to_owned(),
                vector: Arc::clone(self.catalog.embed_one(bytes).await?.as_arc()),
            }),
            None => {}
        }
        for id in positives {
            anchors.push(Anchor {
                reason: format!("similar to {id}"),
                vector: self.vector(&id)?,
            });
            exclude.insert(id);
        }
        let mut negative_vectors = Vec::with_capacity(negatives.len());
        for id in negatives {
            negative_vectors.push(self.vector(&id)?);
            exclude.insert(id);
        }
        let positive_vectors: Vec<Arc<[f32]>> =
            anchors.iter().map(|a| Arc::clone(&a.vector)).collect();
        let metric = self.catalog.metric();
        let (source, negatives) = match strategy {
            Strategy::AverageVector => {
                // Qdrant's average_vector: avg(pos) + (avg(pos) - avg(neg)).
                let pos = mean(&positive_vectors);
                let query = match mean(&negative_vectors) {
                    Some(neg) => {
                        pos.map(|p| p.iter().zip(&neg).map(|(p, n)| 2.0 * p - n).collect())
                    }
                    None => pos,
                };
                let query = query
                    .and_then(|q| query_for(metric, q))
                    .ok_or(RecommendError::DegenerateQuery)?;
                (Source::Knn(query), Vec::new())
            }
            Strategy::BestScore if positive_vectors.is_empty() => {
                // Only checked here: under euclidean and manhattan the query
                // also needs the catalogue's centre, which the search reads.
                let away = mean(&negative_vectors)
                    .filter(|m| away_from(metric, m, None).is_some())
                    .ok_or(RecommendError::DegenerateQuery)?;
                (Source::AwayFrom(away), negative_vectors)
            }
            Strategy::BestScore => (Source::BestOf(positive_vectors), negative_vectors),
        };
        let plan = Plan {
            lists: vec![ListPlan {
                source,
                quota: k,
                mmr_lambda: diversity.mmr_lambda,
                why: if anchors.is_empty() {
                    Why::Fixed("far from the negatives")
                } else {
                    Why::NearestAnchor
                },
            }],
            k,
            filter,
            exclude: exclude.iter().map(|id| Arc::clone(id.as_arc())).collect(),
            shopper: None,
            negatives,
            anchors,
            cap: diversity.cap,
        };
        self.run(plan).await
    }

    pub async fn for_user(&self, query: UserQuery) -> Result<Vec<Recommendation>, RecommendError> {
        let UserQuery {
            user,
            k,
            filter,
            mut exclude,
            context,
            diversity,
        } = query;
        let shopper = match &user {
            Some(u) => self.personalizer.shopper(u).await?,
            None => None,
        };
        let mut anchors = Vec::new();
        let mut context_vectors = Vec::with_capacity(context.len());
        for id in context {
            let vector = self.vector(&id)?;
            anchors.push(Anchor {
                reason: format!("similar to {id} you are looking at"),
                vector: Arc::clone(&vector),
            });
            context_vectors.push(vector);
            exclude.insert(id);
        }
        let metric = self.catalog.metric();
        let context = mean(&context_vectors).and_then(|c| query_for(metric, c));
        let interests: Vec<(Vec<f32>, f64)> = shopper
            .as_ref()
            .map(Shopper::interests)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(centroid, share)| Some((query_for(metric, centroid)?, share)))
            .collect();
        let mut negatives = Vec::new();
        if let Some(s) = &shopper {
            for (id, action) in s.recent_positives() {
                if let Some(vector) = self
                    .catalog
                    .vector(&ProductId::from_trusted(Arc::clone(&id)))
                {
                    anchors.push(Anchor {
                        reason: format!("similar to {id} you {}", action.past_tense()),
                        vector,
                    });
                }
            }
            for id in s.dislikes() {
                if let Some(v) = self.catalog.vector(&ProductId::from_trusted(id)) {
                    negatives.push(v);
                }
            }
        }
        let lambda = diversity.mmr_lambda;
        let lists = if !interests.is_empty() {
            let w = self.personalizer.config().context_weight;
            let shares: Vec<f64> = interests.iter().map(|(_, s)| *s).collect();
            interests
                .into_iter()
                .zip(select::quotas(k, &shares))
                .filter(|(_, quota)| *quota > 0)
                .map(|((taste, _), quota)| {
                    let query = match &context {
                        Some(c) => blend(metric, c, &taste, w),
                        None => taste,
                    };
                    ListPlan {
                        source: Source::Knn(query),
                        quota,
                        mmr_lambda: lambda,
                        why: Why::NearestAnchor,
                    }
                })
                .collect()
        } else if let Some(c) = context {
            vec![ListPlan {
                source: Source::Knn(c),
                quota: k,
                mmr_lambda: lambda,
                why: Why::NearestAnchor,
            }]
        } else {
            vec![
                ListPlan {
                    source: Source::Trending,
                    quota: k,
                    mmr_lambda: lambda,
                    why: Why::Fixed("trending"),
                },
                ListPlan {
                    source: Source::Explore,
                    quota: 0,
                    mmr_lambda: lambda.max(EXPLORE_MMR),
                    why: Why::Fixed("explore: a varied pick from the catalogue"),
                },
            ]
        };
        let plan = Plan {
            lists,
            k,
            filter,
            exclude: exclude.iter().map(|id| Arc::clone(id.as_arc())).collect(),
            shopper,
            negatives,
            anchors,
            cap: diversity.cap,
        };
        self.run(plan).await
    }

    async fn run(&self, plan: Plan) -> Result<Vec<Recommendation>, RecommendError> {
        let slot = self.slots.enter().await?;
        let catalog = Arc::clone(&self.catalog);
        let personalizer = Arc::clone(&self.personalizer);
        let explore = Arc::clone(&self.explore);
        let threshold = self.exact_threshold;
        // Dropping this future (deadline, disconnect, shutdown) cancels the
        // token, and the search stops at its next check. The slot moves into
        // the task, so it stays taken until the CPU work has really stopped.
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let picks = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let context = Context {
                catalog: &catalog,
                personalizer: &personalizer,
                explore: &explore,
                exact_threshold: threshold,
                cancel: &cancel,
            };
            execute(&context, &plan)
        })
        .await?;
        Ok(picks)
    }
}

/// Mean of vectors, `None` for none.
fn mean(vectors: &[Arc<[f32]>]) -> Option<Vec<f32>> {
    let first = vectors.first()?;
    let mut sum = vec![0.0f32; first.len()];
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(v.iter()) {
            *s += x;
        }
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "a handful of vectors; the count is exact in f32"
    )]
    let n = vectors.len() as f32;
    Some(sum.into_iter().map(|s| s / n).collect())
}

/// `v` scaled to unit length; `None` if it has (almost) no direction.
fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let n = norm(v);
    (n > 1e-6 && n.is_finite()).then(|| v.iter().map(|x| x / n).collect())
}

/// A query made of several vectors (an average, a blend, an interest's
/// mean), as the catalogue's metric needs it:
/// - cosine: unit length, like every vector it is compared with, so that
///   scores are cosines; `None` if it has (almost) no direction.
/// - dot: unit length as well. A positive scale changes no dot-product
///   ranking, but a unit query puts every query's scores on one scale (a
///   product's length times its cosine) and makes a blend weigh the
///   directions it mixes, not their lengths. `None` likewise.
/// - euclidean, manhattan: as it is. A mean of points is a point among
///   them; scaled to unit length it would land elsewhere, possibly far from
///   every product. `None` only if it is not finite.
fn query_for(metric: Metric, v: Vec<f32>) -> Option<Vec<f32>> {
    match metric {
        Metric::Cosine | Metric::Dot => unit(&v),
        Metric::Euclidean | Metric::Manhattan => v.iter().all(|x| x.is_finite()).then_some(v),
    }
}

/// `w * context + (1 - w) * taste` made a query for `metric` (so under
/// cosine and dot the blend of two unit directions, normalised), falling
/// back to the taste when the two cancel out.
fn blend(metric: Metric, context: &[f32], taste: &[f32], w: f32) -> Vec<f32> {
    let mixed: Vec<f32> = context
        .iter()
        .zip(taste)
        .map(|(c, t)| w * c + (1.0 - w) * t)
        .collect();
    query_for(metric, mixed).unwrap_or_else(|| taste.to_vec())
}

/// What a negatives-only query searches around, given the negatives' mean:
/// - cosine, dot: the opposite direction, `-mean`, at unit length (`None`
///   if the negatives cancel out);
/// - euclidean, manhattan: the mean reflected through `centre` (the
///   catalogue's mean look), `2 * centre - mean`, i.e. as far from the
///   negatives as they are from the middle of the catalogue, on the other
///   side. Reflecting through the origin instead would search wherever the
///   origin lies, which for embeddings that are not centred (all positive,
///   say) is beside no product at all. Without a centre, through the origin.
fn away_from(metric: Metric, negatives_mean: &[f32], centre: Option<&[f32]>) -> Option<Vec<f32>> {
    match metric {
        Metric::Cosine | Metric::Dot => {
            unit(&negatives_mean.iter().map(|x| -x).collect::<Vec<_>>())
        }
        Metric::Euclidean | Metric::Manhattan => {
            let away = match centre {
                Some(c) => c
                    .iter()
                    .zip(negatives_mean)
                    .map(|(c, m)| 2.0 * c - m)
                    .collect(),
                None => negatives_mean.iter().map(|x| -x).collect(),
            };
            query_for(metric, away)
        }
    }
}

/// Best-positive score with negatives pushed down (Qdrant's best_score);
/// what [`settle`] does under cosine.
fn best_score(best_positive: f32, best_negative: f32) -> f32 {
    if best_positive > best_negative {
        best_positive
    } else {
        -(best_negative * best_negative)
    }
}

/// A candidate's standing before its list is settled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Relevance {
    /// Its score: the similarity to its query or best positive, or another
    /// list's own score (trending, explore).
    Kept(f32),
    /// Closer to a negative than to every positive; holds the similarity
    /// to the nearest negative.
    Penalised(f32),
}

/// Qdrant's best_score split: the best positive if it beats the best
/// negative, else a penalty.
fn relevance(best_positive: f32, best_negative: f32) -> Relevance {
    if best_positive > best_negative {
        Relevance::Kept(best_positive)
    } else {
        Relevance::Penalised(best_negative)
    }
}

/// How far the best penalised candidate of a list is put below its worst
/// kept one under metrics other than cosine (see [`settle`]).
const PENALTY_GAP: f32 = 1.0;

/// The scores of one list, penalised candidates pushed below the rest, each
/// further down the closer it is to a negative (monotone decreasing in the
/// negative similarity):
/// - cosine: Qdrant's best_score, `-(negative similarity)^2`, in [-1, 0].
/// - dot, euclidean, manhattan: their similarities have no fixed bounds, so
///   no fixed transform can keep every penalised candidate below every
///   other. A penalised candidate scores `-(negative similarity)` (for
///   euclidean and manhattan: its distance from the nearest negative),
///   shifted down by one amount for the whole list when needed, so that the
///   best of them ends [`PENALTY_GAP`] below the list's worst kept
///   candidate. A list with no kept candidate (negatives only) keeps the
///   unshifted scores: how far each product is from the negatives.
fn settle(metric: Metric, scored: Vec<(Arc<str>, Relevance)>) -> Vec<Candidate> {
    // `None` under cosine; else the shift of the list's penalised scores.
    let shift = match metric {
        Metric::Cosine => None,
        Metric::Dot | Metric::Euclidean | Metric::Manhattan => {
            let (mut floor, mut top) = (f32::INFINITY, f32::NEG_INFINITY);
            for (_, r) in &scored {
                match *r {
                    Relevance::Kept(score) => floor = floor.min(score),
                    Relevance::Penalised(negative) => top = top.max(-negative),
                }
            }
            Some(if floor.is_finite() && top.is_finite() {
                (top - (floor - PENALTY_GAP)).max(0.0)
            } else {
                0.0
            })
        }
    };
    scored
        .into_iter()
        .map(|(key, r)| Candidate {
            score: match (r, shift) {
                (Relevance::Kept(score), _) => score,
                (Relevance::Penalised(negative), None) => best_score(f32::NEG_INFINITY, negative),
                (Relevance::Penalised(negative), Some(shift)) => -negative - shift,
            },
            key,
        })
        .collect()
}

fn max_similarity(metric: Metric, v: &[f32], others: &[Arc<[f32]>]) -> f32 {
    others
        .iter()
        .map(|o| metric.similarity(v, o))
        .fold(f32::NEG_INFINITY, f32::max)
}

/// What a search runs against.
struct Context<'a> {
    catalog: &'a Arc<Catalog>,
    personalizer: &'a Personalizer,
    explore: &'a Arc<ExploreCache>,
    exact_threshold: usize,
    /// Cancelled when nobody waits for the answer any more.
    cancel: &'a CancellationToken,
}

/// Runs a plan against the catalogue's current state. Returns nothing once
/// cancelled.
fn execute(cx: &Context<'_>, plan: &Plan) -> Vec<Recommendation> {
    let catalog = cx.catalog;
    let view = catalog.attributes().view();
    let admits = |id: &str| {
        !plan.exclude.contains(id)
            && !plan.shopper.as_ref().is_some_and(|s| s.excludes(id))
            && view.admits(id, &plan.filter)
    };
    let index = catalog.index();
    let mut vectors = Vectors::new(index);
    let discards = plan.cap.is_some()
        || !plan.negatives.is_empty()
        || plan.lists.iter().any(|l| l.mmr_lambda > 0.0);
    let mut widen = 1usize;
    let mut answer = Vec::new();
    let cancelled = || cx.cancel.is_cancelled();
    for attempt in 0..WIDEN_ATTEMPTS {
        if cancelled() {
            return Vec::new();
        }
        let lists: Vec<List> = plan
            .lists
            .iter()
            .map(|l| {
                // A quota-0 list is a fallback: it may have to fill all of k.
                let base = if l.quota == 0 { plan.k } else { l.quota };
                let mut want = if discards {
                    (base * 4).max(base + 16)
                } else {
                    base
                };
                if plan.lists.len() > 1 {
                    // Interests overlap; leave room for duplicates.
                    want += plan.k;
                }
                fetch(
                    cx,
                    l,
                    want.saturating_mul(widen).min(MAX_LIST),
                    plan,
                    &view,
                    &admits,
                    &mut vectors,
                )
            })
            .collect();
        let picks = select::select(
            &lists,
            plan.k,
            plan.cap.as_ref(),
            &view,
            &mut vectors,
            &plan.anchors,
            &cancelled,
        );
        // The attribute lookup is the final liveness check: an id deleted
        // while the search ran has no attributes any more. It runs before
        // the count is judged, so such a loss widens the search like any
        // other shortfall instead of returning fewer than k.
        answer = picks
            .into_iter()
            .filter_map(|p| {
                let attributes = view.get(&p.key)?;
                Some(Recommendation {
                    id: ProductId::from_trusted(p.key),
                    score: p.score,
                    attributes,
                    reason: p.reason,
                })
            })
            .collect();
        if answer.len() >= plan.k
            || !lists
                .iter()
                .any(|l| l.saturated && l.candidates.len() < MAX_LIST)
        {
            break;
        }
        tracing::debug!(
            attempt,
            found = answer.len(),
            k = plan.k,
            "short answer; widening"
        );
        widen = widen.saturating_mul(4);
    }
    if cancelled() {
        return Vec::new();
    }
    answer
}

/// Builds one candidate list of up to `n` admitted products.
fn fetch(
    cx: &Context<'_>,
    l: &ListPlan,
    n: usize,
    plan: &Plan,
    view: &AttributeView<'_>,
    admits: &(dyn Fn(&str) -> bool + Sync),
    vectors: &mut Vectors<'_>,
) -> List {
    let catalog = cx.catalog;
    let metric = catalog.metric();
    let exact_threshold = cx.exact_threshold;
    let mut saturated = false;
    let mut scored: Vec<(Arc<str>, Relevance)> = match &l.source {
        Source::Knn(query) => {
            let hits = knn(
                catalog,
                view,
                query,
                n,
                &plan.filter,
                admits,
                exact_threshold,
            );
            saturated = hits.len() >= n;
            hits.into_iter()
                .map(|h| (h.key, Relevance::Kept(h.score)))
                .collect()
        }
        Source::BestOf(positives) => {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for p in positives {
                let hits = knn(catalog, view, p, n, &plan.filter, admits, exact_threshold);
                saturated |= hits.len() >= n;
                for h in hits {
                    if seen.insert(Arc::clone(&h.key))
                        && let Some(v) = vectors.get(&h.key)
                    {
                        let r = relevance(
                            max_similarity(metric, &v, positives),
                            max_similarity(metric, &v, &plan.negatives),
                        );
                        out.push((h.key, r));
                    }
                }
            }
            out
        }
        Source::AwayFrom(negatives_mean) => {
            // The products least like the negatives lie around the direction
            // (or point) opposite them; the index finds them without a scan,
            // and each is then scored by its distance from the nearest
            // negative.
            let centre = match metric {
                Metric::Cosine | Metric::Dot => None,
                Metric::Euclidean | Metric::Manhattan => {
                    sample_centre(metric, &cx.explore.get(catalog))
                }
            };
            let hits = away_from(metric, negatives_mean, centre.as_deref())
                .map(|away| {
                    knn(
                        catalog,
                        view,
                        &away,
                        n,
                        &plan.filter,
                        admits,
                        exact_threshold,
                    )
                })
                .unwrap_or_default();
            saturated = hits.len() >= n;
            hits.into_iter()
                .filter_map(|h| {
                    let v = vectors.get(&h.key)?;
                    let negative = max_similarity(metric, &v, &plan.negatives);
                    Some((h.key, Relevance::Penalised(negative)))
                })
                .collect()
        }
        Source::Trending => {
            let top = cx.personalizer.trending(n, admits);
            saturated = top.len() >= n;
            top.into_iter()
                .map(|(key, score)| (key, Relevance::Kept(score)))
                .collect()
        }
        Source::Explore => {
            let sample = cx.explore.get(catalog);
            let (candidates, full) = explore(cx, &sample, view, admits, &plan.filter, vectors, n);
            saturated = full;
            candidates
                .into_iter()
                .map(|c| (c.key, Relevance::Kept(c.score)))
                .collect()
        }
    };
    // Dislikes push k-NN candidates down (BEST_SCORE lists already include
    // negatives in their score). As in Qdrant's best_score, the comparison
    // is example to example: a candidate closer to a disliked product than
    // to every product the shopper liked (or is looking at) goes below the
    // rest. Comparing with the interest centroid instead would keep the
    // disliked product's near-duplicates, which sit as close to the centre
    // of a taste as the liked products do.
    if !plan.negatives.is_empty() && matches!(l.source, Source::Knn(_)) {
        let examples: Vec<Arc<[f32]>> =
            plan.anchors.iter().map(|a| Arc::clone(&a.vector)).collect();
        for (key, r) in &mut scored {
            if let Relevance::Kept(score) = *r
                && let Some(v) = vectors.get(key)
            {
                let negative = max_similarity(metric, &v, &plan.negatives);
                let positive = if examples.is_empty() {
                    score
                } else {
                    max_similarity(metric, &v, &examples)
                };
                if negative >= positive {
                    *r = Relevance::Penalised(negative);
                }
            }
        }
    }
    let mut candidates = settle(metric, scored);
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key)));
    List {
        candidates,
        quota: l.quota,
        mmr_lambda: l.mmr_lambda,
        why: l.why.clone(),
        saturated,
    }
}

/// k-NN among admitted products: exact over the ids of a selective filter,
/// filtered HNSW otherwise.
fn knn(
    catalog: &Catalog,
    view: &AttributeView<'_>,
    query: &[f32],
    n: usize,
    filter: &Filter,
    admits: &(dyn Fn(&str) -> bool + Sync),
    exact_threshold: usize,
) -> Vec<Hit> {
    let index = catalog.index();
    match view.narrow_candidates(filter, exact_threshold) {
        Some(candidates) => {
            let mut admitted = candidates.iter().map(|id| &**id).filter(|id| admits(id));
            index.search_among(query, n, &mut admitted)
        }
        None => index.search(query, n, admits),
    }
}

/// An evenly spread sample of the whole catalogue, in id order: what
/// explore lists are drawn from. Sorting every id is O(n log n) in the
/// catalogue, which is why it runs in the background, not per request.
fn take_explore_sample(catalog: &Catalog) -> ExploreSample {
    let changes = catalog.changes();
    let mut ids = catalog.attributes().ids();
    ids.sort_unstable();
    let stride = ids.len().div_ceil(EXPLORE_CACHE).max(1);
    let index = catalog.index();
    let items: Vec<(Arc<str>, Arc<[f32]>)> = ids
        .into_iter()
        .step_by(stride)
        .filter_map(|id| {
            let v = index.get(&id)?;
            Some((id, v))
        })
        .collect();
    let vectors: Vec<Arc<[f32]>> = items.iter().map(|(_, v)| Arc::clone(v)).collect();
    ExploreSample {
        changes,
        taken: Instant::now(),
        mean: mean(&vectors),
        items,
    }
}

/// A deterministic, evenly spread pick of `n` admitted products (at least
/// [`EXPLORE_SAMPLE`]), ranked by how typical they are (similarity to the
/// pick's mean look); MMR then spreads the picks out. A selective filter
/// draws from the ids it admits; otherwise the pick comes from the cached
/// sample, topped up from the index (the admitted products nearest the mean
/// look) when the sample holds too few admitted ones. Returns the list and
/// whether more candidates exist than it holds.
fn explore(
    cx: &Context<'_>,
    sample: &ExploreSample,
    view: &AttributeView<'_>,
    admits: &(dyn Fn(&str) -> bool + Sync),
    filter: &Filter,
    vectors: &mut Vectors<'_>,
    n: usize,
) -> (Vec<Candidate>, bool) {
    let want = EXPLORE_SAMPLE.max(n);
    let mut picked: Vec<(Arc<str>, Arc<[f32]>)> =
        match view.narrow_candidates(filter, cx.exact_threshold) {
            Some(mut narrow) => {
                narrow.retain(|id| admits(id));
                narrow.sort_unstable();
                let stride = narrow.len().div_ceil(want).max(1);
                narrow
                    .into_iter()
                    .step_by(stride)
                    .filter_map(|id| {
                        let v = vectors.get(&id)?;
                        Some((id, v))
                    })
                    .collect()
            }
            None => {
                let admitted: Vec<&(Arc<str>, Arc<[f32]>)> =
                    sample.items.iter().filter(|(id, _)| admits(id)).collect();
                let stride = admitted.len().div_ceil(want).max(1);
                admitted.into_iter().step_by(stride).cloned().collect()
            }
        };
    let metric = cx.catalog.metric();
    let vs: Vec<Arc<[f32]>> = picked.iter().map(|(_, v)| Arc::clone(v)).collect();
    let centre = mean(&vs)
        .and_then(|m| query_for(metric, m))
        .or_else(|| sample_centre(metric, sample));
    let Some(centre) = centre else {
        return (Vec::new(), false);
    };
    let mut more = false;
    if picked.len() < n {
        // Too few admitted products in the sample: the rest from the index.
        let hits = knn(
            cx.catalog,
            view,
            &centre,
            n,
            filter,
            admits,
            cx.exact_threshold,
        );
        more = hits.len() >= n;
        let have: HashSet<Arc<str>> = picked.iter().map(|(id, _)| Arc::clone(id)).collect();
        for h in hits {
            if picked.len() >= n {
                break;
            }
            if !have.contains(&h.key)
                && let Some(v) = vectors.get(&h.key)
            {
                picked.push((h.key, v));
            }
        }
    }
    let candidates = picked
        .into_iter()
        .map(|(key, v)| Candidate {
            score: metric.similarity(&v, &centre),
            key,
        })
        .collect();
    (candidates, more)
}

/// The mean look of the cached sample as a query for `metric`, for filters
/// whose admitted products the sample does not hold, and the centre a
/// negatives-only query reflects through.
fn sample_centre(metric: Metric, sample: &ExploreSample) -> Option<Vec<f32>> {
    sample.mean.clone().and_then(|m| query_for(metric, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn best_score_follows_qdrant() {
        assert_eq!(best_score(0.9, 0.5), 0.9);
        assert_eq!(best_score(0.5, 0.9), -(0.9f32 * 0.9));
        assert!(best_score(f32::NEG_INFINITY, 0.1) > best_score(f32::NEG_INFINITY, 0.8));
    }

    #[test]
    fn blending_moves_towards_the_context() {
        let b = blend(Metric::Cosine, &[1.0, 0.0], &[0.0, 1.0], 0.5);
        assert!((b[0] - b[1]).abs() < 1e-6);
        assert_eq!(
            blend(Metric::Cosine, &[1.0, 0.0], &[-1.0, 0.0], 0.5),
            vec![-1.0, 0.0]
        );
        assert!(unit(&[0.0, 0.0]).is_none());
        // Points blend to a point between them, not to a direction.
        assert_eq!(
            blend(Metric::Euclidean, &[2.0, 0.0], &[0.0, 4.0], 0.5),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn queries_are_built_for_the_metric() {
        assert_eq!(
            query_for(Metric::Cosine, vec![3.0, 4.0]),
            Some(vec![0.6, 0.8])
        );
        assert_eq!(query_for(Metric::Dot, vec![3.0, 4.0]), Some(vec![0.6, 0.8]));
        assert_eq!(query_for(Metric::Dot, vec![0.0, 0.0]), None);
        for m in [Metric::Euclidean, Metric::Manhattan] {
            assert_eq!(query_for(m, vec![3.0, 4.0]), Some(vec![3.0, 4.0]));
            assert_eq!(query_for(m, vec![0.0, 0.0]), Some(vec![0.0, 0.0]));
            assert_eq!(query_for(m, vec![f32::NAN, 0.0]), None);
            // Away from the negatives: reflected through the catalogue's centre.
            assert_eq!(
                away_from(m, &[1.0, 1.0], Some(&[3.0, 3.0])),
                Some(vec![5.0, 5.0])
            );
            assert_eq!(away_from(m, &[1.0, 2.0], None), Some(vec![-1.0, -2.0]));
        }
        assert_eq!(
            away_from(Metric::Cosine, &[2.0, 0.0], Some(&[5.0, 5.0])),
            Some(vec![-1.0, 0.0])
        );
        assert_eq!(away_from(Metric::Dot, &[0.0, 0.0], None), None);
    }

    fn scores(candidates: &[Candidate]) -> HashMap<&str, f32> {
        candidates.iter().map(|c| (&*c.key, c.score)).collect()
    }

    #[test]
    fn penalised_candidates_go_below_their_list() {
        let key = |s: &str| -> Arc<str> { Arc::from(s) };
        // Euclidean similarities: kept candidates 1 and 3 from their query,
        // penalised ones 0.5 and 2 from a negative.
        let list = || {
            vec![
                (key("a"), Relevance::Kept(-1.0)),
                (key("b"), Relevance::Kept(-3.0)),
                (key("near"), Relevance::Penalised(-0.5)),
                (key("far"), Relevance::Penalised(-2.0)),
            ]
        };
        for metric in [Metric::Dot, Metric::Euclidean, Metric::Manhattan] {
            let settled = settle(metric, list());
            let s = scores(&settled);
            assert_eq!((s["a"], s["b"]), (-1.0, -3.0), "kept scores stay");
            assert_eq!(s["far"], -3.0 - PENALTY_GAP, "{metric}");
            assert!(
                s["near"] < s["far"],
                "{metric}: closer to a negative is lower"
            );
        }
        // Cosine: Qdrant's -(negative similarity)^2.
        let s = settle(Metric::Cosine, list());
        assert_eq!(scores(&s)["far"], -4.0);
        // Negatives only: each scores its distance from the negatives.
        let s = settle(
            Metric::Euclidean,
            vec![
                (key("x"), Relevance::Penalised(-0.5)),
                (key("y"), Relevance::Penalised(-2.0)),
            ],
        );
        assert_eq!((scores(&s)["x"], scores(&s)["y"]), (0.5, 2.0));
        assert_eq!(relevance(-1.0, -2.0), Relevance::Kept(-1.0));
        assert_eq!(relevance(-2.0, -2.0), Relevance::Penalised(-2.0));
    }

    proptest::proptest! {
        /// Under the unbounded metrics every penalised candidate ends below
        /// every kept one of its list, and the closer to a negative the
        /// lower, whatever the scores.
        #[test]
        fn penalties_keep_their_order_below_the_kept(
            kept in proptest::collection::vec(-1e4f32..1e4, 0..20),
            penalised in proptest::collection::vec(-1e4f32..1e4, 0..20),
            metric in proptest::sample::select(vec![Metric::Dot, Metric::Euclidean, Metric::Manhattan]),
        ) {
            let scored: Vec<(Arc<str>, Relevance)> = kept
                .iter()
                .enumerate()
                .map(|(i, s)| (Arc::from(format!("k{i}")), Relevance::Kept(*s)))
                .chain(penalised.iter().enumerate().map(|(i, n)| {
                    (Arc::from(format!("p{i}")), Relevance::Penalised(*n))
                }))
                .collect();
            let settled = settle(metric, scored);
            let (k, p) = settled.split_at(kept.len());
            let floor = k.iter().map(|c| c.score).fold(f32::INFINITY, f32::min);
            for (c, n) in p.iter().zip(&penalised) {
                proptest::prop_assert!(c.score < floor, "{} not below {floor}", c.score);
                for (d, m) in p.iter().zip(&penalised) {
                    if n > m {
                        proptest::prop_assert!(c.score <= d.score);
                    }
                }
            }
            for (c, s) in k.iter().zip(&kept) {
                proptest::prop_assert_eq!(c.score, *s);
            }
        }
    }
}
