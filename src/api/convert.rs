//! Proto -> domain conversions: every handler turns its request into a
//! validated domain value here before doing anything else.
//!
//! proto3 message fields arrive as `Option`s and are never unwrapped: a
//! missing field is either a documented default or an `InvalidRequest`.

use std::collections::HashSet;

use bytes::Bytes;

use super::proto;
use crate::{
    catalog::{AttributeUpdate, NewProduct, ProductContent},
    domain::{
        AttributeFilter, Attributes, Embedding, Filter, InvalidEmbedding, InvalidFilter, InvalidId,
        Metric, ProductId, UserId,
    },
    personalize::{Action, Interaction},
    recommend::{Diversity, SimilarQuery, SimilarTarget, Strategy, UserQuery, select::Cap},
};

/// Most ids in one GetProducts call.
pub const MAX_BATCH_IDS: usize = 1000;
/// ListProducts page size when the caller sets none, and the most it gets.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// ListAttributes values per key when the caller sets none, and the most.
pub const DEFAULT_FACET_VALUES: usize = 100;
pub const MAX_FACET_VALUES: usize = 1000;

/// How far ahead of the server's clock an interaction may be stamped:
/// generous for clock skew, strict enough to catch seconds-for-millis bugs.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// Request-independent bounds that conversions check against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub dim: usize,
    pub max_k: u32,
    pub max_product_id_bytes: usize,
    pub max_attributes: usize,
    pub max_attribute_bytes: usize,
    pub max_user_id_bytes: usize,
    /// Most ids in `positive_ids` + `negative_ids`, or in `context_product_ids`.
    pub max_examples: usize,
    /// The catalogue's metric: caller embeddings are L2-normalised under
    /// cosine only, and kept as sent under the others.
    pub metric: Metric,
}

/// Why a request was rejected before any work was done. Each message says
/// which field is wrong and how, so a caller can fix the request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("{field}: {source}")]
    ProductId {
        field: &'static str,
        source: InvalidId,
    },
    #[error("{field}: {source}")]
    Embedding {
        field: &'static str,
        source: InvalidEmbedding,
    },
    #[error("filter: {0}")]
    Filter(#[from] InvalidFilter),
    #[error("set exactly one of `image` or `embedding` (neither was set)")]
    MissingContent,
    #[error("set exactly one of `image` or `embedding` (both were set)")]
    BothContents,
    #[error(
        "set one of `product_id`, `image` or `embedding` as the query, or `positive_ids`/`negative_ids`"
    )]
    MissingQuery,
    #[error("k must be between 1 and {max}, got {k}")]
    K { k: u32, max: u32 },
    #[error("at most {max} attributes per product, got {count}")]
    TooManyAttributes { count: usize, max: usize },
    #[error("attribute {key:?}: keys must be non-empty and keys and values at most {max} bytes")]
    Attribute { key: String, max: usize },
    #[error("`images` is empty")]
    NoImages,
    #[error("{field}: {source}")]
    UserId {
        field: &'static str,
        source: InvalidId,
    },
    #[error("AVERAGE_VECTOR needs a positive: set `query` or `positive_ids`")]
    NoPositive,
    #[error("set a `query`, `positive_ids` or (with BEST_SCORE) `negative_ids`")]
    NoExamples,
    #[error("{field}: at most {max} ids, got {count}")]
    TooManyExamples {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("diversity.mmr_lambda must be in [0, 1], got {0}")]
    MmrLambda(f32),
    #[error("diversity: set both `max_per_key` and `max_per_value` (> 0), or neither")]
    HalfCap,
    #[error("product {0:?} is both a positive (query or positive_ids) and a negative")]
    PositiveAndNegative(String),
    #[error("`interaction` is missing")]
    MissingInteraction,
    #[error("interaction.action must be set (ACTION_UNSPECIFIED is not an action)")]
    UnspecifiedAction,
    #[error("interaction.timestamp_ms {got} is negative")]
    NegativeTimestamp { got: i64 },
    #[error(
        "interaction.timestamp_ms {got} is more than a day ahead of the server's clock ({now})"
    )]
    FutureTimestamp { got: i64, now: i64 },
    #[error("product_ids: at most {max} ids, got {count}")]
    TooManyIds { count: usize, max: usize },
    #[error("product_ids is empty")]
    NoIds,
    #[error("remove_attributes: {key:?} is also in set_attributes")]
    SetAndRemove { key: String },
    #[error("set at least one of `set_attributes` or `remove_attributes`")]
    EmptyUpdate,
    #[error(
        "page_token is not one this server issued for this filter; start again without a page_token"
    )]
    PageToken,
}

/// What a read returns of each product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Basic,
    Full,
}

/// A validated GetProducts request: distinct ids in request order.
#[derive(Debug, Clone)]
pub struct ProductsQuery {
    pub ids: Vec<ProductId>,
    pub view: View,
}

/// A validated ListProducts request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Continue after this id (from the page token).
    pub after: Option<ProductId>,
    pub filter: Filter,
    pub page_size: usize,
    pub view: View,
}

/// A validated UpdateProduct request.
#[derive(Debug, Clone)]
pub struct ProductUpdate {
    pub id: ProductId,
    pub update: AttributeUpdate,
}

pub fn view(raw: i32) -> Result<View, InvalidRequest> {
    match proto::ProductView::try_from(raw) {
        Ok(proto::ProductView::Unspecified | proto::ProductView::Basic) => Ok(View::Basic),
        Ok(proto::ProductView::Full) => Ok(View::Full),
        Err(_) => Err(InvalidRequest::UnknownEnum {
            field: "view",
            value: raw,
        }),
    }
}

/// Page tokens bind the id to continue after to the filter they were
/// issued for: a token reused with another filter would silently skip or
/// repeat products, so it is refused instead. Hex of
/// `"lb1" | 8 bytes of SHA-256 over the filter | the id`: opaque to callers,
/// free of characters that need escaping in a URL.
const TOKEN_MAGIC: &[u8] = b"lb1";
const FINGERPRINT_BYTES: usize = 8;

fn filter_fingerprint(filter: &Filter) -> [u8; FINGERPRINT_BYTES] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (tag, clauses) in [(b'm', &filter.must), (b'n', &filter.must_not)] {
        for clause in clauses {
            h.update([tag]);
            for part in std::iter::once(&clause.key).chain(&clause.values) {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
    }
    let digest = h.finalize();
    let mut out = [0; FINGERPRINT_BYTES];
    out.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
    out
}

/// The token that continues a listing with `filter` after `last`.
pub fn page_token(filter: &Filter, last: &ProductId) -> String {
    let mut raw = Vec::with_capacity(TOKEN_MAGIC.len() + FINGERPRINT_BYTES + last.as_str().len());
    raw.extend_from_slice(TOKEN_MAGIC);
    raw.extend_from_slice(&filter_fingerprint(filter));
    raw.extend_from_slice(last.as_str().as_bytes());
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_page_token(
    token: &str,
    filter: &Filter,
    limits: &RequestLimits,
) -> Result<ProductId, InvalidRequest> {
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or(InvalidRequest::PageToken)?;
    let rest = bytes
        .strip_prefix(TOKEN_MAGIC)
        .ok_or(InvalidRequest::PageToken)?;
    let (fingerprint, id) = rest
        .split_at_checked(FINGERPRINT_BYTES)
        .ok_or(InvalidRequest::PageToken)?;
    if fingerprint != filter_fingerprint(filter) {
        return Err(InvalidRequest::PageToken);
    }
    let id = std::str::from_utf8(id).map_err(|_| InvalidRequest::PageToken)?;
    ProductId::parse(id, limits.max_product_id_bytes).map_err(|_| InvalidRequest::PageToken)
}

impl TryFrom<(proto::ListProductsRequest, &RequestLimits)> for ListQuery {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits): (proto::ListProductsRequest, &RequestLimits),
    ) -> Result<Self, Self::Error> {
        let filter = optional_filter(raw.filter)?;
        let after = if raw.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&raw.page_token, &filter, limits)?)
        };
        // AIP-158: 0 means the default, and above the maximum is coerced
        // down rather than refused.
        let page_size = match raw.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        Ok(Self {
            after,
            filter,
            page_size,
            view: view(raw.view)?,
        })
    }
}

impl TryFrom<(proto::GetProductsRequest, &RequestLimits)> for ProductsQuery {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits): (proto::GetProductsRequest, &RequestLimits),
    ) -> Result<Self, Self::Error> {
        if raw.product_ids.is_empty() {
            return Err(InvalidRequest::NoIds);
        }
        if raw.product_ids.len() > MAX_BATCH_IDS {
            return Err(InvalidRequest::TooManyIds {
                count: raw.product_ids.len(),
                max: MAX_BATCH_IDS,
            });
        }
        let mut seen = HashSet::new();
        let mut ids = Vec::with_capacity(raw.product_ids.len());
        for raw_id in &raw.product_ids {
            let id = product_id(raw_id, "product_ids", limits)?;
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        }
        Ok(Self {
            ids,
            view: view(raw.view)?,
        })
    }
}

impl TryFrom<(proto::UpdateProductRequest, &RequestLimits)> for ProductUpdate {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits): (proto::UpdateProductRequest, &RequestLimits),
    ) -> Result<Self, Self::Error> {
        let id = product_id(&raw.product_id, "product_id", limits)?;
        if raw.set_attributes.is_empty() && raw.remove_attributes.is_empty() {
            return Err(InvalidRequest::EmptyUpdate);
        }
        let set = attributes(raw.set_attributes, limits)?;
        if raw.remove_attributes.len() > limits.max_attributes {
            return Err(InvalidRequest::TooManyAttributes {
                count: raw.remove_attributes.len(),
                max: limits.max_attributes,
            });
        }
        for key in &raw.remove_attributes {
            if key.is_empty() || key.len() > limits.max_attribute_bytes {
                return Err(InvalidRequest::Attribute {
                    key: key.chars().take(64).collect(),
                    max: limits.max_attribute_bytes,
                });
            }
            if set.contains_key(key) {
                return Err(InvalidRequest::SetAndRemove {
                    key: key.chars().take(64).collect(),
                });
            }
        }
        Ok(Self {
            id,
            update: AttributeUpdate {
                set,
                remove: raw.remove_attributes,
            },
        })
    }
}

/// Most values per key a ListAttributes call returns.
pub fn facet_values(raw: u32) -> usize {
    match raw as usize {
        0 => DEFAULT_FACET_VALUES,
        n => n.min(MAX_FACET_VALUES),
    }
}

impl From<proto::AddProductsRequest> for proto::AddProductRequest {
    fn from(raw: proto::AddProductsRequest) -> Self {
        Self {
            product_id: raw.product_id,
            image: raw.image,
            embedding: raw.embedding,
            attributes: raw.attributes,
        }
    }
}

/// A stream item is an AddProduct request by another name (buf's lint
/// wants a request message per RPC); both directions, for callers that
/// build one kind and send the other.
impl From<proto::AddProductRequest> for proto::AddProductsRequest {
    fn from(raw: proto::AddProductRequest) -> Self {
        Self {
            product_id: raw.product_id,
            image: raw.image,
            embedding: raw.embedding,
            attributes: raw.attributes,
        }
    }
}

impl From<proto::RecordInteractionRequest> for proto::RecordInteractionsRequest {
    fn from(raw: proto::RecordInteractionRequest) -> Self {
        Self {
            interaction: raw.interaction,
        }
    }
}

impl From<proto::RecordInteractionsRequest> for proto::RecordInteractionRequest {
    fn from(raw: proto::RecordInteractionsRequest) -> Self {
        Self {
            interaction: raw.interaction,
        }
    }
}

fn product_id(
    raw: &str,
    field: &'static str,
    limits: &RequestLimits,
) -> Result<ProductId, InvalidRequest> {
    ProductId::parse(raw, limits.max_product_id_bytes)
        .map_err(|source| InvalidRequest::ProductId { field, source })
}

fn user_id(raw: &str, limits: &RequestLimits) -> Result<UserId, InvalidRequest> {
    UserId::parse(raw, limits.max_user_id_bytes).map_err(|source| InvalidRequest::UserId {
        field: "user_id",
        source,
    })
}

fn product_ids(
    raw: &[String],
    field: &'static str,
    limits: &RequestLimits,
) -> Result<Vec<ProductId>, InvalidRequest> {
    if raw.len() > limits.max_examples {
        return Err(InvalidRequest::TooManyExamples {
            field,
            count: raw.len(),
            max: limits.max_examples,
        });
    }
    raw.iter().map(|id| product_id(id, field, limits)).collect()
}

fn exclusions(
    raw: &[String],
    limits: &RequestLimits,
) -> Result<HashSet<ProductId>, InvalidRequest> {
    raw.iter()
        .map(|id| product_id(id, "exclude_ids", limits))
        .collect()
}

impl TryFrom<Option<proto::Diversity>> for Diversity {
    type Error = InvalidRequest;

    fn try_from(raw: Option<proto::Diversity>) -> Result<Self, Self::Error> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        if !(0.0..=1.0).contains(&raw.mmr_lambda) {
            return Err(InvalidRequest::MmrLambda(raw.mmr_lambda));
        }
        let cap = match (raw.max_per_key.is_empty(), raw.max_per_value) {
            (true, 0) => None,
            (false, max) if max > 0 => Some(Cap {
                key: raw.max_per_key,
                max: max as usize,
            }),
            _ => return Err(InvalidRequest::HalfCap),
        };
        Ok(Self {
            mmr_lambda: raw.mmr_lambda,
            cap,
        })
    }
}

fn strategy(raw: i32) -> Result<Strategy, InvalidRequest> {
    match proto::Strategy::try_from(raw) {
        // Unset is the documented default.
        Ok(proto::Strategy::Unspecified | proto::Strategy::AverageVector) => {
            Ok(Strategy::AverageVector)
        }
        Ok(proto::Strategy::BestScore) => Ok(Strategy::BestScore),
        Err(_) => Err(InvalidRequest::UnknownEnum {
            field: "strategy",
            value: raw,
        }),
    }
}

fn action(raw: i32) -> Result<Action, InvalidRequest> {
    match proto::Action::try_from(raw) {
        Ok(proto::Action::Unspecified) => Err(InvalidRequest::UnspecifiedAction),
        Ok(proto::Action::View) => Ok(Action::View),
        Ok(proto::Action::Click) => Ok(Action::Click),
        Ok(proto::Action::AddToCart) => Ok(Action::AddToCart),
        Ok(proto::Action::Purchase) => Ok(Action::Purchase),
        Ok(proto::Action::Dislike) => Ok(Action::Dislike),
        Err(_) => Err(InvalidRequest::UnknownEnum {
            field: "interaction.action",
            value: raw,
        }),
    }
}

/// A `RecordInteraction(s)` item, checked against the server's clock `now_ms`.
impl TryFrom<(proto::RecordInteractionRequest, &RequestLimits, i64)> for Interaction {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits, now_ms): (proto::RecordInteractionRequest, &RequestLimits, i64),
    ) -> Result<Self, Self::Error> {
        let raw = raw.interaction.ok_or(InvalidRequest::MissingInteraction)?;
        let user = user_id(&raw.user_id, limits)?;
        let product = product_id(&raw.product_id, "product_id", limits)?;
        let action = action(raw.action)?;
        let timestamp_ms = match raw.timestamp_ms {
            0 => now_ms,
            t if t < 0 => return Err(InvalidRequest::NegativeTimestamp { got: t }),
            t if t > now_ms.saturating_add(MAX_FUTURE_MS) => {
                return Err(InvalidRequest::FutureTimestamp {
                    got: t,
                    now: now_ms,
                });
            }
            t => t,
        };
        Ok(Self {
            user,
            product,
            action,
            timestamp_ms,
        })
    }
}

impl TryFrom<(proto::RecommendForUserRequest, &RequestLimits)> for UserQuery {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits): (proto::RecommendForUserRequest, &RequestLimits),
    ) -> Result<Self, Self::Error> {
        let user = if raw.user_id.is_empty() {
            None
        } else {
            Some(user_id(&raw.user_id, limits)?)
        };
        Ok(Self {
            user,
            k: k(raw.k, limits)?,
            filter: optional_filter(raw.filter)?,
            exclude: exclusions(&raw.exclude_ids, limits)?,
            context: product_ids(&raw.context_product_ids, "context_product_ids", limits)?,
            diversity: Diversity::try_from(raw.diversity)?,
        })
    }
}

/// Parses the `user_id` of ForgetUser.
pub fn requested_user(raw: &str, limits: &RequestLimits) -> Result<UserId, InvalidRequest> {
    user_id(raw, limits)
}

fn embedding(
    raw: &proto::Embedding,
    field: &'static str,
    limits: &RequestLimits,
) -> Result<Embedding, InvalidRequest> {
    Embedding::for_metric(&raw.values, limits.dim, limits.metric)
        .map_err(|source| InvalidRequest::Embedding { field, source })
}

fn attributes(
    raw: std::collections::HashMap<String, String>,
    limits: &RequestLimits,
) -> Result<Attributes, InvalidRequest> {
    if raw.len() > limits.max_attributes {
        return Err(InvalidRequest::TooManyAttributes {
            count: raw.len(),
            max: limits.max_attributes,
        });
    }
    if let Some((key, _)) = raw.iter().find(|(k, v)| {
        k.is_empty() || k.len() > limits.max_attribute_bytes || v.len() > limits.max_attribute_bytes
    }) {
        return Err(InvalidRequest::Attribute {
            key: key.chars().take(64).collect(),
            max: limits.max_attribute_bytes,
        });
    }
    Ok(raw.into_iter().collect())
}

fn k(raw: u32, limits: &RequestLimits) -> Result<usize, InvalidRequest> {
    if raw == 0 || raw > limits.max_k {
        return Err(InvalidRequest::K {
            k: raw,
            max: limits.max_k,
        });
    }
    Ok(raw as usize)
}

fn clauses(raw: Vec<proto::AttributeFilter>) -> Result<Vec<AttributeFilter>, InvalidFilter> {
    raw.into_iter()
        .map(|c| {
            if c.key.is_empty() {
                return Err(InvalidFilter::EmptyKey);
            }
            if c.values.is_empty() {
                return Err(InvalidFilter::NoValues { key: c.key });
            }
            Ok(AttributeFilter {
                key: c.key,
                values: c.values.into_iter().collect(),
            })
        })
        .collect()
}

/// A missing filter admits everything.
fn optional_filter(raw: Option<proto::Filter>) -> Result<Filter, InvalidFilter> {
    Ok(raw.map(Filter::try_from).transpose()?.unwrap_or_default())
}

impl TryFrom<proto::Filter> for Filter {
    type Error = InvalidFilter;

    fn try_from(raw: proto::Filter) -> Result<Self, Self::Error> {
        Ok(Self {
            must: clauses(raw.must)?,
            must_not: clauses(raw.must_not)?,
        })
    }
}

impl TryFrom<(proto::AddProductRequest, &RequestLimits)> for NewProduct {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits): (proto::AddProductRequest, &RequestLimits),
    ) -> Result<Self, Self::Error> {
        let id = product_id(&raw.product_id, "product_id", limits)?;
        let content = match (raw.image.is_empty(), raw.embedding) {
            (true, None) => return Err(InvalidRequest::MissingContent),
            (false, Some(_)) => return Err(InvalidRequest::BothContents),
            (false, None) => ProductContent::Image(raw.image),
            (true, Some(e)) => ProductContent::Embedding(embedding(&e, "embedding", limits)?),
        };
        Ok(Self {
            id,
            content,
            attributes: attributes(raw.attributes, limits)?,
        })
    }
}

impl TryFrom<(proto::RecommendSimilarRequest, &RequestLimits)> for SimilarQuery {
    type Error = InvalidRequest;

    fn try_from(
        (raw, limits): (proto::RecommendSimilarRequest, &RequestLimits),
    ) -> Result<Self, Self::Error> {
        use proto::recommend_similar_request::Query;
        let target = match raw.query {
            None => None,
            Some(Query::ProductId(id)) => Some(SimilarTarget::Product(product_id(
                &id,
                "product_id",
                limits,
            )?)),
            Some(Query::Image(bytes)) => Some(SimilarTarget::Image(bytes)),
            Some(Query::Embedding(e)) => Some(SimilarTarget::Embedding(embedding(
                &e,
                "embedding",
                limits,
            )?)),
        };
        let examples = raw.positive_ids.len() + raw.negative_ids.len();
        if examples > limits.max_examples {
            return Err(InvalidRequest::TooManyExamples {
                field: "positive_ids + negative_ids",
                count: examples,
                max: limits.max_examples,
            });
        }
        let positives = product_ids(&raw.positive_ids, "positive_ids", limits)?;
        let negatives = product_ids(&raw.negative_ids, "negative_ids", limits)?;
        let strategy = strategy(raw.strategy)?;
        let query_id = match &target {
            Some(SimilarTarget::Product(id)) => Some(id),
            _ => None,
        };
        if let Some(both) = negatives
            .iter()
            .find(|n| positives.contains(n) || query_id == Some(*n))
        {
            return Err(InvalidRequest::PositiveAndNegative(both.to_string()));
        }
        let has_positive = target.is_some() || !positives.is_empty();
        if target.is_none() && positives.is_empty() && negatives.is_empty() {
            return Err(InvalidRequest::MissingQuery);
        }
        if strategy == Strategy::AverageVector && !has_positive {
            return Err(InvalidRequest::NoPositive);
        }
        Ok(Self {
            target,
            positives,
            negatives,
            strategy,
            k: k(raw.k, limits)?,
            filter: optional_filter(raw.filter)?,
            exclude: exclusions(&raw.exclude_ids, limits)?,
            diversity: Diversity::try_from(raw.diversity)?,
        })
    }
}

/// A validated `Embed` request: the encoded images, in order.
#[derive(Debug, Clone)]
pub struct EmbedImages(pub Vec<Bytes>);

impl TryFrom<proto::EmbedRequest> for EmbedImages {
    type Error = InvalidRequest;

    fn try_from(raw: proto::EmbedRequest) -> Result<Self, Self::Error> {
        if raw.images.is_empty() {
            return Err(InvalidRequest::NoImages);
        }
        Ok(Self(raw.images))
    }
}

/// Parses the `product_id` of Get/Delete requests.
pub fn requested_id(raw: &str, limits: &RequestLimits) -> Result<ProductId, InvalidRequest> {
    product_id(raw, "product_id", limits)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        dim: 4,
        max_k: 100,
        max_product_id_bytes: 16,
        max_attributes: 4,
        max_attribute_bytes: 32,
        max_user_id_bytes: 8,
        max_examples: 3,
        metric: Metric::Cosine,
    };

    fn add(id: &str, image: &[u8], emb: Option<Vec<f32>>) -> proto::AddProductRequest {
        proto::AddProductRequest {
            product_id: id.to_owned(),
            image: Bytes::copy_from_slice(image),
            embedding: emb.map(|values| proto::Embedding { values }),
            attributes: Default::default(),
        }
    }

    #[test]
    fn add_product_requires_exactly_one_content() {
        let r = NewProduct::try_from((add("a", b"", None), &LIMITS));
        assert_eq!(r.unwrap_err(), InvalidRequest::MissingContent);
        let r = NewProduct::try_from((add("a", b"x", Some(vec![1.0; 4])), &LIMITS));
        assert_eq!(r.unwrap_err(), InvalidRequest::BothContents);
        let p =
            NewProduct::try_from((add("a", b"", Some(vec![2.0, 0.0, 0.0, 0.0])), &LIMITS)).unwrap();
        match p.content {
            ProductContent::Embedding(e) => assert_eq!(e.as_slice(), &[1.0, 0.0, 0.0, 0.0]),
            ProductContent::Image(_) => panic!("expected an embedding"),
        }
    }

    #[test]
    fn add_product_rejects_bad_ids_and_embeddings() {
        for id in ["", "01234567890123456"] {
            let r = NewProduct::try_from((add(id, b"x", None), &LIMITS));
            assert!(matches!(r, Err(InvalidRequest::ProductId { .. })), "{id:?}");
        }
        let r = NewProduct::try_from((add("a", b"", Some(vec![1.0; 3])), &LIMITS));
        assert!(matches!(
            r,
            Err(InvalidRequest::Embedding {
                source: InvalidEmbedding::WrongDimension { .. },
                ..
            })
        ));
        let r = NewProduct::try_from((add("a", b"", Some(vec![1.0, f32::NAN, 0.0, 0.0])), &LIMITS));
        assert!(matches!(
            r,
            Err(InvalidRequest::Embedding {
                source: InvalidEmbedding::NotFinite { index: 1 },
                ..
            })
        ));
    }

    #[test]
    fn similar_requires_query_and_sane_k() {
        let base = proto::RecommendSimilarRequest {
            query: Some(proto::recommend_similar_request::Query::ProductId(
                "a".into(),
            )),
            k: 10,
            ..Default::default()
        };
        assert!(SimilarQuery::try_from((base.clone(), &LIMITS)).is_ok());
        let r = SimilarQuery::try_from((
            proto::RecommendSimilarRequest {
                query: None,
                ..base.clone()
            },
            &LIMITS,
        ));
        assert_eq!(r.unwrap_err(), InvalidRequest::MissingQuery);
        for k in [0, 101] {
            let r = SimilarQuery::try_from((
                proto::RecommendSimilarRequest { k, ..base.clone() },
                &LIMITS,
            ));
            assert_eq!(r.unwrap_err(), InvalidRequest::K { k, max: 100 });
        }
        let r = SimilarQuery::try_from((
            proto::RecommendSimilarRequest {
                filter: Some(proto::Filter {
                    must: vec![proto::AttributeFilter {
                        key: "t".into(),
                        values: vec![],
                    }],
                    must_not: vec![],
                }),
                ..base
            },
            &LIMITS,
        ));
        assert_eq!(
            r.unwrap_err(),
            InvalidRequest::Filter(InvalidFilter::NoValues { key: "t".into() })
        );
    }

    fn interaction(
        user: &str,
        product: &str,
        action: i32,
        ts: i64,
    ) -> proto::RecordInteractionRequest {
        proto::RecordInteractionRequest {
            interaction: Some(proto::Interaction {
                user_id: user.into(),
                product_id: product.into(),
                action,
                timestamp_ms: ts,
            }),
        }
    }

    #[test]
    fn interactions_are_validated_with_exact_reasons() {
        let now = 1_700_000_000_000;
        let ok = Interaction::try_from((interaction("u", "p", 4, 0), &LIMITS, now)).unwrap();
        assert_eq!(
            (ok.action, ok.timestamp_ms),
            (Action::Purchase, now),
            "0 means now"
        );
        type Case = (proto::RecordInteractionRequest, fn(&InvalidRequest) -> bool);
        let cases: Vec<Case> = vec![
            (interaction("u", "p", 0, 0), |e| {
                *e == InvalidRequest::UnspecifiedAction
            }),
            (interaction("u", "p", 42, 0), |e| {
                matches!(e, InvalidRequest::UnknownEnum { .. })
            }),
            (interaction("", "p", 1, 0), |e| {
                matches!(e, InvalidRequest::UserId { .. })
            }),
            (interaction("123456789", "p", 1, 0), |e| {
                matches!(e, InvalidRequest::UserId { .. })
            }),
            (interaction("u", "", 1, 0), |e| {
                matches!(e, InvalidRequest::ProductId { .. })
            }),
            (interaction("u", "p", 1, -5), |e| {
                matches!(e, InvalidRequest::NegativeTimestamp { .. })
            }),
            (interaction("u", "p", 1, now + MAX_FUTURE_MS + 1), |e| {
                matches!(e, InvalidRequest::FutureTimestamp { .. })
            }),
            (proto::RecordInteractionRequest { interaction: None }, |e| {
                *e == InvalidRequest::MissingInteraction
            }),
        ];
        for (req, expected) in cases {
            let err = Interaction::try_from((req.clone(), &LIMITS, now)).unwrap_err();
            assert!(expected(&err), "{req:?}: {err}");
        }
        assert!(
            Interaction::try_from((interaction("u", "p", 1, now + MAX_FUTURE_MS), &LIMITS, now))
                .is_ok()
        );
    }

    #[test]
    fn similar_examples_and_diversity_are_validated() {
        let base = proto::RecommendSimilarRequest {
            k: 5,
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut proto::RecommendSimilarRequest)| {
            let mut r = base.clone();
            f(&mut r);
            SimilarQuery::try_from((r, &LIMITS))
        };
        assert_eq!(with(&|_| {}).unwrap_err(), InvalidRequest::MissingQuery);
        assert_eq!(
            with(&|r| r.negative_ids = vec!["n".into()]).unwrap_err(),
            InvalidRequest::NoPositive
        );
        assert!(
            with(&|r| {
                r.negative_ids = vec!["n".into()];
                r.strategy = proto::Strategy::BestScore as i32;
            })
            .is_ok()
        );
        assert!(with(&|r| r.positive_ids = vec!["p".into()]).is_ok());
        assert!(matches!(
            with(&|r| r.positive_ids = vec!["a".into(), "b".into(), "c".into(), "d".into()]),
            Err(InvalidRequest::TooManyExamples { .. })
        ));
        assert!(matches!(
            with(&|r| {
                r.positive_ids = vec!["p".into()];
                r.strategy = 7;
            }),
            Err(InvalidRequest::UnknownEnum { .. })
        ));
        for (lambda, key, max, ok) in [
            (0.0, "", 0, true),
            (1.0, "articleType", 3, true),
            (1.5, "", 0, false),
            (-0.1, "", 0, false),
            (f32::NAN, "", 0, false),
            (0.5, "articleType", 0, false),
            (0.5, "", 3, false),
        ] {
            let r = with(&|r| {
                r.positive_ids = vec!["p".into()];
                r.diversity = Some(proto::Diversity {
                    mmr_lambda: lambda,
                    max_per_key: key.into(),
                    max_per_value: max,
                });
            });
            assert_eq!(r.is_ok(), ok, "{lambda} {key:?} {max}");
        }
    }

    #[test]
    fn anonymous_users_are_allowed_for_recommendations_only() {
        let q = UserQuery::try_from((
            proto::RecommendForUserRequest {
                k: 3,
                ..Default::default()
            },
            &LIMITS,
        ))
        .unwrap();
        assert!(q.user.is_none());
        assert!(requested_user("", &LIMITS).is_err());
    }

    proptest! {
        /// Every request gets exactly the outcome an independent model of
        /// the rules predicts (checked in the order the conversion checks
        /// them: id, content, attributes), and an `Ok` carries the content
        /// and attributes that were sent.
        #[test]
        fn add_product_conversion_matches_the_rules(
            id in prop_oneof![
                Just(String::new()),
                "[a-z0-9]{1,16}",
                "[a-z]{17,24}",
                "[a-z]{0,3}[\\x00-\\x1f][a-z]{0,3}",
                ".{0,20}",
            ],
            image in prop::collection::vec(any::<u8>(), 0..3),
            values in prop::option::of(prop_oneof![
                prop::collection::vec(-1e3f32..1e3, 4),
                Just(vec![0.0f32; 4]),
                prop::collection::vec(any::<f32>(), 0..6),
            ]),
            attrs in prop::collection::hash_map("[a-z]{0,5}", ".{0,40}", 0..6),
        ) {
            let req = proto::AddProductRequest {
                product_id: id.clone(),
                image: Bytes::from(image.clone()),
                embedding: values.clone().map(|values| proto::Embedding { values }),
                attributes: attrs.clone(),
            };
            let got = NewProduct::try_from((req, &LIMITS));

            let expected_err = if id.is_empty() {
                Some(InvalidRequest::ProductId { field: "product_id", source: InvalidId::Empty })
            } else if id.len() > LIMITS.max_product_id_bytes {
                Some(InvalidRequest::ProductId {
                    field: "product_id",
                    source: InvalidId::TooLong { len: id.len(), max: LIMITS.max_product_id_bytes },
                })
            } else if id.chars().any(char::is_control) {
                Some(InvalidRequest::ProductId { field: "product_id", source: InvalidId::ControlCharacter })
            } else {
                match (&values, image.is_empty()) {
                    (None, true) => Some(InvalidRequest::MissingContent),
                    (Some(_), false) => Some(InvalidRequest::BothContents),
                    (Some(v), true) if v.len() != LIMITS.dim => Some(InvalidRequest::Embedding {
                        field: "embedding",
                        source: InvalidEmbedding::WrongDimension { got: v.len(), expected: LIMITS.dim },
                    }),
                    (Some(v), true) if v.iter().any(|x| !x.is_finite()) => Some(InvalidRequest::Embedding {
                        field: "embedding",
                        source: InvalidEmbedding::NotFinite {
                            index: v.iter().position(|x| !x.is_finite()).unwrap_or_default(),
                        },
                    }),
                    (Some(v), true) if v.iter().all(|x| *x == 0.0) => Some(InvalidRequest::Embedding {
                        field: "embedding",
                        source: InvalidEmbedding::Zero,
                    }),
                    _ => None,
                }
            };
            let bad_attribute = attrs.iter().find(|(k, v)| {
                k.is_empty() || k.len() > LIMITS.max_attribute_bytes || v.len() > LIMITS.max_attribute_bytes
            });
            let expected_err = expected_err.or_else(|| {
                if attrs.len() > LIMITS.max_attributes {
                    Some(InvalidRequest::TooManyAttributes { count: attrs.len(), max: LIMITS.max_attributes })
                } else {
                    bad_attribute.map(|(key, _)| InvalidRequest::Attribute {
                        key: key.chars().take(64).collect(),
                        max: LIMITS.max_attribute_bytes,
                    })
                }
            });

            match (got, expected_err) {
                (Err(err), Some(want)) => {
                    // Which offending attribute is named depends on map order
                    // when several are bad; the variant must still match.
                    if let (InvalidRequest::Attribute { key, .. }, InvalidRequest::Attribute { .. }) = (&err, &want) {
                        prop_assert!(attrs.get(key).is_some_and(|v| {
                            key.is_empty() || key.len() > LIMITS.max_attribute_bytes || v.len() > LIMITS.max_attribute_bytes
                        }), "{} does not name a bad attribute", err);
                    } else {
                        prop_assert_eq!(err, want);
                    }
                }
                (Ok(p), None) => {
                    prop_assert_eq!(p.id.as_str(), id.as_str());
                    let mut got_attrs: Vec<(String, String)> = p.attributes.into_iter().collect();
                    let mut want_attrs: Vec<(String, String)> = attrs.into_iter().collect();
                    got_attrs.sort();
                    want_attrs.sort();
                    prop_assert_eq!(got_attrs, want_attrs);
                    match (p.content, values) {
                        (ProductContent::Image(bytes), None) => prop_assert_eq!(&bytes[..], &image[..]),
                        (ProductContent::Embedding(e), Some(v)) => {
                            prop_assert_eq!(e.dim(), LIMITS.dim);
                            let norm: f64 = e.as_slice().iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                            prop_assert!((norm - 1.0).abs() < 1e-5, "norm {}", norm);
                            // Same direction: each component keeps its sign
                            // and its share of the largest one.
                            let max_in = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                            let max_out = e.as_slice().iter().fold(0.0f32, |m, x| m.max(x.abs()));
                            for (a, b) in v.iter().zip(e.as_slice()) {
                                prop_assert!((a / max_in - b / max_out).abs() < 1e-4, "{:?} -> {:?}", v, e.as_slice());
                            }
                        }
                        (content, v) => prop_assert!(false, "content {:?} for embedding {:?}", content, v),
                    }
                }
                (got, want) => prop_assert!(false, "got {:?}, the rules say {:?}", got, want),
            }
        }

        #[test]
        fn filter_conversion_keeps_every_value(
            key in "[a-zA-Z]{1,10}",
            values in prop::collection::vec("[a-zA-Z]{1,10}", 1..5),
        ) {
            let f = Filter::try_from(proto::Filter {
                must: vec![proto::AttributeFilter { key: key.clone(), values: values.clone() }],
                must_not: vec![],
            }).unwrap();
            prop_assert_eq!(&f.must[0].key, &key);
            for v in &values {
                prop_assert!(f.must[0].values.contains(v));
            }
        }
    }
}
