//! Proto -> domain conversions: every handler turns its request into a
//! validated domain value here before doing anything else.
//!
//! proto3 message fields arrive as `Option`s and are never unwrapped: a
//! missing field is either a documented default or an `InvalidRequest`.

use std::collections::HashSet;

use bytes::Bytes;

use super::proto;
use crate::{
    catalog::{NewProduct, ProductContent},
    domain::{
        AttributeFilter, Attributes, Embedding, Filter, InvalidEmbedding, InvalidFilter,
        InvalidProductId, ProductId,
    },
    recommend::{SimilarQuery, SimilarTarget},
};

/// Request-independent bounds that conversions check against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub dim: usize,
    pub max_k: u32,
    pub max_product_id_bytes: usize,
    pub max_attributes: usize,
    pub max_attribute_bytes: usize,
}

/// Why a request was rejected before any work was done. Each message says
/// which field is wrong and how, so a caller can fix the request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("{field}: {source}")]
    ProductId {
        field: &'static str,
        source: InvalidProductId,
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
    #[error("set one of `product_id`, `image` or `embedding` as the query")]
    MissingQuery,
    #[error("k must be between 1 and {max}, got {k}")]
    K { k: u32, max: u32 },
    #[error("at most {max} attributes per product, got {count}")]
    TooManyAttributes { count: usize, max: usize },
    #[error("attribute {key:?}: keys must be non-empty and keys and values at most {max} bytes")]
    Attribute { key: String, max: usize },
    #[error("`images` is empty")]
    NoImages,
}

fn product_id(
    raw: &str,
    field: &'static str,
    limits: &RequestLimits,
) -> Result<ProductId, InvalidRequest> {
    ProductId::parse(raw, limits.max_product_id_bytes)
        .map_err(|source| InvalidRequest::ProductId { field, source })
}

fn embedding(
    raw: &proto::Embedding,
    field: &'static str,
    limits: &RequestLimits,
) -> Result<Embedding, InvalidRequest> {
    Embedding::normalize(&raw.values, limits.dim)
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
            None => return Err(InvalidRequest::MissingQuery),
            Some(Query::ProductId(id)) => {
                SimilarTarget::Product(product_id(&id, "product_id", limits)?)
            }
            Some(Query::Image(bytes)) => SimilarTarget::Image(bytes),
            Some(Query::Embedding(e)) => {
                SimilarTarget::Embedding(embedding(&e, "embedding", limits)?)
            }
        };
        let exclude = raw
            .exclude_ids
            .iter()
            .map(|id| product_id(id, "exclude_ids", limits))
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(Self {
            target,
            k: k(raw.k, limits)?,
            filter: raw
                .filter
                .map(Filter::try_from)
                .transpose()?
                .unwrap_or_default(),
            exclude,
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

    proptest! {
        #[test]
        fn add_product_conversion_never_panics_and_keeps_attributes(
            id in ".{0,20}",
            values in prop::collection::vec(any::<f32>(), 0..6),
            attrs in prop::collection::hash_map("[a-z]{0,5}", ".{0,40}", 0..6),
        ) {
            let req = proto::AddProductRequest {
                product_id: id,
                image: Bytes::new(),
                embedding: Some(proto::Embedding { values }),
                attributes: attrs.clone(),
            };
            if let Ok(p) = NewProduct::try_from((req, &LIMITS)) {
                prop_assert!(attrs.len() <= LIMITS.max_attributes);
                prop_assert_eq!(p.attributes.len(), attrs.len());
                let ProductContent::Embedding(e) = p.content else { panic!("embedding expected") };
                prop_assert_eq!(e.dim(), LIMITS.dim);
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
