//! Query planning for "more like this".
//!
//! A similar-products query names its target (a product, a photo or a raw
//! embedding), a filter and exclusions. The planner picks exact search over
//! the admitted ids when the filter's most selective `must` clause admits at
//! most `exact_threshold` products, and filtered HNSW otherwise; either way
//! the answer holds `k` items whenever `k` products match. Searches are CPU
//! work: they run on the blocking pool behind a semaphore, so a burst of
//! queries queues instead of starving the async workers.

use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::{
    catalog::{Catalog, CatalogError},
    domain::{Attributes, Embedding, Filter, ProductId},
};

#[derive(Debug, Clone)]
pub enum SimilarTarget {
    Product(ProductId),
    Image(Bytes),
    Embedding(Embedding),
}

/// A validated `RecommendSimilar` request.
#[derive(Debug, Clone)]
pub struct SimilarQuery {
    pub target: SimilarTarget,
    /// 1..=configured maximum.
    pub k: usize,
    pub filter: Filter,
    pub exclude: HashSet<ProductId>,
}

#[derive(Debug, Clone)]
pub struct Recommendation {
    pub id: ProductId,
    /// Cosine similarity to the query, higher is closer.
    pub score: f32,
    pub attributes: Arc<Attributes>,
}

#[derive(Debug)]
pub struct Recommender {
    catalog: Arc<Catalog>,
    /// Bounds concurrently running searches (CPU-bound, on the blocking pool).
    slots: Semaphore,
    exact_threshold: usize,
}

impl Recommender {
    pub fn new(catalog: Arc<Catalog>, concurrency: usize, exact_threshold: usize) -> Self {
        Self {
            catalog,
            slots: Semaphore::new(concurrency),
            exact_threshold,
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub async fn similar(&self, query: SimilarQuery) -> Result<Vec<Recommendation>, CatalogError> {
        let SimilarQuery {
            target,
            k,
            filter,
            mut exclude,
        } = query;
        let vector = match target {
            SimilarTarget::Product(id) => {
                let product = self.catalog.get(&id).await?;
                exclude.insert(id);
                product.embedding
            }
            SimilarTarget::Embedding(e) => e,
            SimilarTarget::Image(bytes) => self.catalog.embed_one(bytes).await?,
        };
        // Closed only if the recommender is dropped, which cannot happen
        // while `self` is borrowed.
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the search semaphore is never closed");
        let catalog = Arc::clone(&self.catalog);
        let threshold = self.exact_threshold;
        let hits = tokio::task::spawn_blocking(move || {
            search_blocking(&catalog, vector.as_slice(), k, &filter, &exclude, threshold)
        })
        .await?;
        Ok(hits)
    }
}

/// Runs one planned search against the catalogue's current state.
pub(crate) fn search_blocking(
    catalog: &Catalog,
    query: &[f32],
    k: usize,
    filter: &Filter,
    exclude: &HashSet<ProductId>,
    exact_threshold: usize,
) -> Vec<Recommendation> {
    let excluded: HashSet<&str> = exclude.iter().map(ProductId::as_str).collect();
    let view = catalog.attributes().view();
    let admits = |id: &str| !excluded.contains(id) && view.admits(id, filter);
    let index = catalog.index();
    let hits = match view.narrow_candidates(filter, exact_threshold) {
        Some(candidates) => {
            let mut admitted = candidates.into_iter().filter(|id| admits(id));
            index.search_among(query, k, &mut admitted)
        }
        None => index.search(query, k, &admits),
    };
    hits.into_iter()
        // The attribute lookup is the final liveness check: an id deleted
        // while the search ran has no attributes any more.
        .filter_map(|hit| {
            let attributes = Arc::clone(view.get(&hit.key)?);
            admits(&hit.key).then(|| Recommendation {
                id: ProductId::from_trusted(Arc::clone(&hit.key)),
                score: hit.score,
                attributes,
            })
        })
        .collect()
}
