//! The `lookbook.v1.RecommenderService` gRPC service: convert, delegate to the
//! core, convert back. No business logic lives here. The HTTP/JSON API
//! (`rest`) calls these same methods, so both protocols share validation,
//! limits and error mapping.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status, Streaming};

use super::{
    convert::{
        EmbedImages, ListQuery, ProductUpdate, ProductsQuery, RequestLimits, View, facet_values,
        page_token, requested_id, requested_user, view,
    },
    error::ApiError,
    proto::{self, recommender_service_server::RecommenderService as RecommenderRpc},
};
use crate::{
    catalog::{Catalog, NewProduct, ProductContent, ProductView},
    domain::{Embedding, Metric},
    personalize::{Interaction, now_ms},
    recommend::{Recommendation, Recommender, SimilarQuery, UserQuery},
};

/// Items with photos of a bulk import committed per durable transaction:
/// large enough to amortise the fsync, small enough that one batch of
/// photos stays a bounded amount of memory.
const IMPORT_BATCH_PHOTOS: usize = 32;
/// Items per durable transaction when they carry embeddings only (5 KB each
/// at 1280-d): large enough that the index links a batch on all cores
/// (`index::PARALLEL_BATCH_MIN` is 64). With batches of 32, a load of 1M
/// products kept the server on one of the two cores here.
const IMPORT_BATCH: usize = 256;
/// Per-item errors reported back from a bulk import; the count of failures
/// is always exact, the list is capped so one bad file cannot make the
/// response huge.
const MAX_REPORTED_ERRORS: usize = 100;
/// Interactions of a bulk record handed to the writer at once; the writer
/// group-commits them with whatever else is queued.
const RECORD_BATCH: usize = 256;

/// What the service needs once start-up has finished.
#[derive(Debug)]
pub struct Ready {
    pub recommender: Recommender,
    /// Where writes go: local, or through the cluster's log.
    pub writes: crate::cluster::Writes,
    pub limits: RequestLimits,
}

/// The service is registered before the model and index finish loading so
/// that health checks answer from the first second; until then every call
/// gets UNAVAILABLE.
#[derive(Debug, Clone)]
pub struct RecommenderService {
    ready: Arc<OnceCell<Ready>>,
}

impl RecommenderService {
    pub fn new(ready: Arc<OnceCell<Ready>>) -> Self {
        Self { ready }
    }

    fn ready(&self) -> Result<&Ready, Status> {
        self.ready
            .get()
            .ok_or_else(|| Status::unavailable("the service is still loading its model and index"))
    }
}

impl RecommenderService {
    /// A product's thumbnail (JPEG) for the HTTP API, which has no gRPC
    /// counterpart: NOT_FOUND if the product does not exist or has none.
    pub(crate) async fn thumbnail(&self, product_id: &str) -> Result<Vec<u8>, Status> {
        let ready = self.ready()?;
        let id = requested_id(product_id, &ready.limits).map_err(ApiError::from)?;
        ready
            .recommender
            .catalog()
            .thumbnail(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| Status::not_found(format!("product {id} has no thumbnail")))
    }
}

fn embedding_to_proto(e: &Embedding) -> proto::Embedding {
    proto::Embedding {
        values: e.as_slice().to_vec(),
    }
}

fn recommendation_to_proto(r: Recommendation, catalog: &Catalog) -> proto::Recommendation {
    proto::Recommendation {
        has_thumbnail: catalog.has_thumbnail(r.id.as_str()),
        product_id: r.id.to_string(),
        score: r.score,
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        reason: r.reason,
    }
}

fn recommendations(items: Vec<Recommendation>, catalog: &Catalog) -> Vec<proto::Recommendation> {
    items
        .into_iter()
        .map(|r| recommendation_to_proto(r, catalog))
        .collect()
}

/// Maps tonic's OUT_OF_RANGE for an over-limit stream message to the
/// contract's RESOURCE_EXHAUSTED (same as `oversize_is_resource_exhausted`
/// does for unary calls).
fn stream_status(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && super::is_oversize_message(status.message()) {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

fn product_to_proto(p: ProductView, view: View) -> proto::Product {
    proto::Product {
        product_id: p.id.to_string(),
        attributes: p
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        embedding: match view {
            View::Full => Some(embedding_to_proto(&p.embedding)),
            View::Basic => None,
        },
        has_thumbnail: p.has_thumbnail,
    }
}

/// A bulk item's failure as the caller sees it: the code and message the
/// item would have got as a single call. Ids are cut to 64 characters so
/// one bad item cannot make the response huge.
fn item_error(position: usize, product: &str, user: &str, error: ApiError) -> proto::ItemError {
    let status = Status::from(error);
    proto::ItemError {
        index: position as u64,
        product_id: product.chars().take(64).collect(),
        code: status.code() as i32,
        message: status.message().to_owned(),
        user_id: user.chars().take(64).collect(),
    }
}

#[tonic::async_trait]
impl RecommenderRpc for RecommenderService {
    async fn embed(
        &self,
        request: Request<proto::EmbedRequest>,
    ) -> Result<Response<proto::EmbedResponse>, Status> {
        let ready = self.ready()?;
        let EmbedImages(images) =
            EmbedImages::try_from(request.into_inner()).map_err(ApiError::from)?;
        let catalog = ready.recommender.catalog();
        let embeddings = catalog.embed(images).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::EmbedResponse {
            embeddings: embeddings.iter().map(embedding_to_proto).collect(),
            model: catalog.model().to_owned(),
            dim: catalog.dim(),
        }))
    }

    async fn add_product(
        &self,
        request: Request<proto::AddProductRequest>,
    ) -> Result<Response<proto::AddProductResponse>, Status> {
        let ready = self.ready()?;
        let product =
            NewProduct::try_from((request.into_inner(), &ready.limits)).map_err(ApiError::from)?;
        let outcome = ready.writes.add(product).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::AddProductResponse {
            created: outcome.created,
            catalog_size: outcome.catalog_size,
        }))
    }

    async fn add_products(
        &self,
        request: Request<Streaming<proto::AddProductsRequest>>,
    ) -> Result<Response<proto::AddProductsResponse>, Status> {
        let ready = self.ready()?;
        let writes = &ready.writes;
        let catalog = ready.recommender.catalog();
        let mut stream = request.into_inner();
        let mut summary = ImportSummary::default();
        let mut batch: Vec<(usize, NewProduct)> = Vec::with_capacity(IMPORT_BATCH);
        // Items in `batch` that carry a photo.
        let mut photos = 0usize;
        let mut position = 0usize;
        // A transport error ends the stream: what was committed stays
        // committed (each batch is durable) and the error goes back.
        while let Some(item) = stream.next().await {
            let item = proto::AddProductRequest::from(item.map_err(stream_status)?);
            let id = item.product_id.clone();
            match NewProduct::try_from((item, &ready.limits)) {
                Ok(p) => {
                    photos += usize::from(matches!(p.content, ProductContent::Image(_)));
                    batch.push((position, p));
                }
                Err(e) => summary.fail(position, &id, ApiError::from(e)),
            }
            position += 1;
            if batch.len() >= IMPORT_BATCH || photos >= IMPORT_BATCH_PHOTOS {
                summary.catalog_size = flush(writes, catalog, &mut batch, &mut summary).await?;
                photos = 0;
            }
        }
        summary.catalog_size = flush(writes, catalog, &mut batch, &mut summary).await?;
        Ok(Response::new(summary.into_proto()))
    }

    async fn get_product(
        &self,
        request: Request<proto::GetProductRequest>,
    ) -> Result<Response<proto::GetProductResponse>, Status> {
        let ready = self.ready()?;
        let request = request.get_ref();
        let id = requested_id(&request.product_id, &ready.limits).map_err(ApiError::from)?;
        let view = view(request.view).map_err(ApiError::from)?;
        let product = ready
            .recommender
            .catalog()
            .get(&id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::GetProductResponse {
            product: Some(product_to_proto(product, view)),
        }))
    }

    async fn get_products(
        &self,
        request: Request<proto::GetProductsRequest>,
    ) -> Result<Response<proto::GetProductsResponse>, Status> {
        let ready = self.ready()?;
        let query = ProductsQuery::try_from((request.into_inner(), &ready.limits))
            .map_err(ApiError::from)?;
        let found = ready.recommender.catalog().get_many(&query.ids);
        let mut response = proto::GetProductsResponse::default();
        for (id, product) in query.ids.iter().zip(found) {
            match product {
                Some(p) => response.products.push(product_to_proto(p, query.view)),
                None => response.missing_ids.push(id.to_string()),
            }
        }
        Ok(Response::new(response))
    }

    async fn list_products(
        &self,
        request: Request<proto::ListProductsRequest>,
    ) -> Result<Response<proto::ListProductsResponse>, Status> {
        let ready = self.ready()?;
        let query =
            ListQuery::try_from((request.into_inner(), &ready.limits)).map_err(ApiError::from)?;
        let page = ready
            .recommender
            .catalog()
            .list(query.after, query.filter.clone(), query.page_size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::ListProductsResponse {
            next_page_token: page
                .next_after
                .map(|last| page_token(&query.filter, &last))
                .unwrap_or_default(),
            products: page
                .products
                .into_iter()
                .map(|p| product_to_proto(p, query.view))
                .collect(),
        }))
    }

    async fn list_attributes(
        &self,
        request: Request<proto::ListAttributesRequest>,
    ) -> Result<Response<proto::ListAttributesResponse>, Status> {
        let ready = self.ready()?;
        let max_values = facet_values(request.get_ref().max_values);
        let facets = ready.recommender.catalog().facets(max_values);
        Ok(Response::new(proto::ListAttributesResponse {
            attributes: facets
                .into_iter()
                .map(|f| proto::AttributeValues {
                    key: f.key,
                    values: f
                        .values
                        .into_iter()
                        .map(|(value, count)| proto::AttributeValueCount { value, count })
                        .collect(),
                    distinct_values: f.distinct,
                })
                .collect(),
        }))
    }

    async fn update_product(
        &self,
        request: Request<proto::UpdateProductRequest>,
    ) -> Result<Response<proto::UpdateProductResponse>, Status> {
        let ready = self.ready()?;
        let ProductUpdate { id, update } =
            ProductUpdate::try_from((request.into_inner(), &ready.limits))
                .map_err(ApiError::from)?;
        let product = ready
            .writes
            .update(&id, update)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::UpdateProductResponse {
            product: Some(product_to_proto(product, View::Basic)),
        }))
    }

    async fn delete_product(
        &self,
        request: Request<proto::DeleteProductRequest>,
    ) -> Result<Response<proto::DeleteProductResponse>, Status> {
        let ready = self.ready()?;
        let id =
            requested_id(&request.get_ref().product_id, &ready.limits).map_err(ApiError::from)?;
        let (deleted, catalog_size) = ready.writes.delete(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::DeleteProductResponse {
            deleted,
            catalog_size,
        }))
    }

    async fn recommend_similar(
        &self,
        request: Request<proto::RecommendSimilarRequest>,
    ) -> Result<Response<proto::RecommendSimilarResponse>, Status> {
        let ready = self.ready()?;
        let query = SimilarQuery::try_from((request.into_inner(), &ready.limits))
            .map_err(ApiError::from)?;
        let items = ready
            .recommender
            .similar(query)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::RecommendSimilarResponse {
            items: recommendations(items, ready.recommender.catalog()),
        }))
    }

    async fn record_interaction(
        &self,
        request: Request<proto::RecordInteractionRequest>,
    ) -> Result<Response<proto::RecordInteractionResponse>, Status> {
        let ready = self.ready()?;
        let interaction = Interaction::try_from((request.into_inner(), &ready.limits, now_ms()))
            .map_err(ApiError::from)?;
        let mut results = ready
            .writes
            .record(vec![interaction])
            .await
            .map_err(ApiError::from)?;
        if let Some(Err(e)) = results.pop() {
            return Err(ApiError::from(e).into());
        }
        Ok(Response::new(proto::RecordInteractionResponse {}))
    }

    async fn record_interactions(
        &self,
        request: Request<Streaming<proto::RecordInteractionsRequest>>,
    ) -> Result<Response<proto::RecordInteractionsResponse>, Status> {
        let ready = self.ready()?;
        let writes = &ready.writes;
        let mut stream = request.into_inner();
        let mut summary = RecordSummary::default();
        let mut batch: Vec<(usize, Interaction)> = Vec::with_capacity(RECORD_BATCH);
        let mut position = 0usize;
        // As for AddProducts: committed batches stay committed if the
        // stream breaks.
        while let Some(item) = stream.next().await {
            let item = proto::RecordInteractionRequest::from(item.map_err(stream_status)?);
            let (user, product) = item
                .interaction
                .as_ref()
                .map(|i| (i.user_id.clone(), i.product_id.clone()))
                .unwrap_or_default();
            match Interaction::try_from((item, &ready.limits, now_ms())) {
                Ok(i) => batch.push((position, i)),
                Err(e) => summary.fail(position, &user, &product, ApiError::from(e)),
            }
            position += 1;
            if batch.len() >= RECORD_BATCH {
                summary.flush(writes, &mut batch).await?;
            }
        }
        summary.flush(writes, &mut batch).await?;
        // Bad requests fail as they arrive, unknown products at their
        // batch's commit: in stream order for the caller.
        summary.errors.sort_by_key(|e| e.index);
        Ok(Response::new(proto::RecordInteractionsResponse {
            recorded: summary.recorded,
            failed: summary.failed,
            errors: summary.errors,
        }))
    }

    async fn recommend_for_user(
        &self,
        request: Request<proto::RecommendForUserRequest>,
    ) -> Result<Response<proto::RecommendForUserResponse>, Status> {
        let ready = self.ready()?;
        let query =
            UserQuery::try_from((request.into_inner(), &ready.limits)).map_err(ApiError::from)?;
        let items = ready
            .recommender
            .for_user(query)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::RecommendForUserResponse {
            items: recommendations(items, ready.recommender.catalog()),
        }))
    }

    async fn forget_user(
        &self,
        request: Request<proto::ForgetUserRequest>,
    ) -> Result<Response<proto::ForgetUserResponse>, Status> {
        let ready = self.ready()?;
        let user =
            requested_user(&request.get_ref().user_id, &ready.limits).map_err(ApiError::from)?;
        let forgotten = ready.writes.forget(user).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ForgetUserResponse {
            forgotten: forgotten.existed,
            interactions_erased: forgotten.interactions,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        let catalog = self.ready()?.recommender.catalog();
        let stats = catalog.stats();
        Ok(Response::new(proto::GetStatsResponse {
            metric: match catalog.metric() {
                Metric::Cosine => proto::Metric::Cosine,
                Metric::Dot => proto::Metric::Dot,
                Metric::Euclidean => proto::Metric::Euclidean,
                Metric::Manhattan => proto::Metric::Manhattan,
            }
            .into(),
            catalog_size: stats.catalog_size,
            model: stats.model,
            dim: stats.dim,
            deleted_pending: stats.deleted_pending,
            index_from_dump: stats.index_from_dump,
            index_rebuilds: stats.index_rebuilds,
            index_reconciled_at_start: stats.index_reconciled_at_start,
        }))
    }
}

#[derive(Debug, Default)]
struct RecordSummary {
    recorded: u64,
    failed: u64,
    errors: Vec<proto::ItemError>,
}

impl RecordSummary {
    fn fail(&mut self, position: usize, user: &str, product: &str, error: ApiError) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(item_error(position, product, user, error));
        }
    }

    /// Records the buffered items; an unknown product fails its item, a
    /// failed commit ends the call.
    async fn flush(
        &mut self,
        writes: &crate::cluster::Writes,
        batch: &mut Vec<(usize, Interaction)>,
    ) -> Result<(), Status> {
        if batch.is_empty() {
            return Ok(());
        }
        let (positions, items): (Vec<usize>, Vec<Interaction>) =
            std::mem::take(batch).into_iter().unzip();
        let who: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.user.to_string(), i.product.to_string()))
            .collect();
        let results = writes.record(items).await.map_err(ApiError::from)?;
        for ((position, (user, product)), result) in positions.iter().zip(&who).zip(results) {
            match result {
                Ok(()) => self.recorded += 1,
                Err(e) => self.fail(*position, user, product, ApiError::from(e)),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct ImportSummary {
    added: u64,
    replaced: u64,
    failed: u64,
    errors: Vec<proto::ItemError>,
    catalog_size: u64,
}

impl ImportSummary {
    fn fail(&mut self, position: usize, id: &str, error: ApiError) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(item_error(position, id, "", error));
        }
    }

    fn into_proto(mut self) -> proto::AddProductsResponse {
        // Bad requests fail as they arrive, bad photos when their batch is
        // embedded: in stream order for the caller.
        self.errors.sort_by_key(|e| e.index);
        proto::AddProductsResponse {
            added: self.added,
            replaced: self.replaced,
            failed: self.failed,
            errors: self.errors,
            catalog_size: self.catalog_size,
        }
    }
}

/// Commits the buffered items; item-level failures go into the summary,
/// failures of the whole batch (store down, shutting down) end the call.
async fn flush(
    writes: &crate::cluster::Writes,
    catalog: &crate::catalog::Catalog,
    batch: &mut Vec<(usize, NewProduct)>,
    summary: &mut ImportSummary,
) -> Result<u64, Status> {
    if batch.is_empty() {
        return Ok(catalog.len());
    }
    let items: Vec<(usize, NewProduct)> = std::mem::take(batch);
    let (positions, products): (Vec<usize>, Vec<NewProduct>) = items.into_iter().unzip();
    let ids: Vec<String> = products.iter().map(|p| p.id.to_string()).collect();
    let outcome = writes.add_batch(products).await.map_err(ApiError::from)?;
    for ((position, id), result) in positions.iter().zip(&ids).zip(outcome.results) {
        match result {
            Ok(true) => summary.added += 1,
            Ok(false) => summary.replaced += 1,
            Err(e) => summary.fail(*position, id, ApiError::from(e)),
        }
    }
    Ok(outcome.catalog_size)
}
