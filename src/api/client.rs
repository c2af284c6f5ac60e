//! A typed client over the generated tonic client, for the CLI commands.
//!
//! It speaks in domain-ish types (ids, scores, attribute maps) so that the
//! command-line code never touches prost or tonic.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use bytes::Bytes;
use futures::Stream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::proto::{self, recommender_service_client::RecommenderServiceClient};
use crate::personalize::Action;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {url:?}: {source}")]
    Address {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("server answered {code:?}: {message}")]
    Rpc { code: String, message: String },
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token is not a valid header value")]
    Token,
}

/// How to reach a server: message limit, TLS and token.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Raised so that real photos fit.
    pub max_message_bytes: usize,
    /// PEM CA that signed the server's certificate (`https://` URLs);
    /// without it the system roots are not consulted, so it is required
    /// for TLS.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for servers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

/// Adds `authorization: Bearer ...` to every call when a token is set.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A channel to `url`, with TLS when `options` name a CA.
async fn connect_channel(url: &str, options: &ClientOptions) -> Result<Channel, ClientError> {
    let address = |source| ClientError::Address {
        url: url.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(address)?
        .connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &options.ca_cert {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_file(ca, "CA certificate")?));
        if let (Some(cert), Some(key)) = (&options.client_cert, &options.client_key) {
            tls = tls.identity(Identity::from_pem(
                read_file(cert, "client certificate")?,
                read_file(key, "client key")?,
            ));
        }
        endpoint = endpoint.tls_config(tls).map_err(address)?;
    }
    endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// The server's overall status on the standard gRPC health service
/// ("SERVING", "NOT_SERVING", ...); health needs no token.
pub async fn health(url: &str, options: &ClientOptions) -> Result<String, ClientError> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = connect_channel(url, options).await?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(r.get_ref().status().as_str_name().to_owned())
}

fn read_file(path: &PathBuf, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::File {
        what,
        path: path.clone(),
        source,
    })
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Rpc {
            code: format!("{:?}", s.code()),
            message: s.message().to_owned(),
        }
    }
}

/// One product to import.
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub id: String,
    pub image: Bytes,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    pub added: u64,
    pub replaced: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub catalog_size: u64,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub attributes: BTreeMap<String, String>,
    /// Why the server picked it ("similar to 1563", "trending", ...).
    pub reason: String,
}

impl From<proto::AddProductsResponse> for ImportSummary {
    fn from(r: proto::AddProductsResponse) -> Self {
        Self {
            added: r.added,
            replaced: r.replaced,
            failed: r.failed,
            errors: r
                .errors
                .into_iter()
                .map(|e| {
                    format!(
                        "item {} (id {:?}): {} ({})",
                        e.index,
                        e.product_id,
                        e.message,
                        tonic::Code::from(e.code).description()
                    )
                })
                .collect(),
            catalog_size: r.catalog_size,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerStats {
    pub catalog_size: u64,
    pub model: String,
    pub dim: u32,
    pub deleted_pending: u64,
    pub index_from_dump: bool,
    pub index_rebuilds: u64,
}

/// What to look for.
#[derive(Debug, Clone)]
pub enum SimilarTo {
    Product(String),
    Image(Bytes),
    Embedding(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct Client {
    inner: RecommenderServiceClient<InterceptedService<Channel, BearerToken>>,
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`), in plaintext and
    /// without a token. Message limits are raised to `max_message_bytes`
    /// so real photos fit.
    pub async fn connect(url: &str, max_message_bytes: usize) -> Result<Self, ClientError> {
        Self::connect_with(
            url,
            &ClientOptions {
                max_message_bytes,
                ..ClientOptions::default()
            },
        )
        .await
    }

    /// Connects with TLS and a token as `options` say.
    pub async fn connect_with(url: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        let token = match &options.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::Token)?,
            ),
            None => None,
        };
        let channel = connect_channel(url, options).await?;
        Ok(Self {
            inner: RecommenderServiceClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(options.max_message_bytes)
                .max_encoding_message_size(options.max_message_bytes),
        })
    }

    /// Deletes a product; `false` if it was not in the catalogue.
    pub async fn delete(&mut self, id: &str) -> Result<bool, ClientError> {
        let r = self
            .inner
            .delete_product(proto::DeleteProductRequest {
                product_id: id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(r.deleted)
    }

    /// Erases a shopper; returns whether anything was known about them and
    /// how many interactions were erased.
    pub async fn forget(&mut self, user: &str) -> Result<(bool, u64), ClientError> {
        let r = self
            .inner
            .forget_user(proto::ForgetUserRequest {
                user_id: user.to_owned(),
            })
            .await?
            .into_inner();
        Ok((r.forgotten, r.interactions_erased))
    }

    /// Streams `items` through `AddProducts` (one call, durable batches).
    pub async fn import(
        &mut self,
        items: impl Stream<Item = ImportItem> + Send + 'static,
    ) -> Result<ImportSummary, ClientError> {
        use futures::StreamExt;
        let requests = items.map(|item| proto::AddProductsRequest {
            product_id: item.id,
            image: item.image,
            embedding: None,
            attributes: item.attributes.into_iter().collect(),
        });
        Ok(self.inner.add_products(requests).await?.into_inner().into())
    }

    pub async fn similar(&mut self, to: SimilarTo, k: u32) -> Result<Vec<Hit>, ClientError> {
        self.similar_where(to, k, None).await
    }

    /// [`Self::similar`] restricted to products whose attribute `key` is
    /// `value` (`must`), or unrestricted with `None`.
    pub async fn similar_where(
        &mut self,
        to: SimilarTo,
        k: u32,
        attribute: Option<(&str, &str)>,
    ) -> Result<Vec<Hit>, ClientError> {
        use proto::recommend_similar_request::Query;
        let query = match to {
            SimilarTo::Product(id) => Query::ProductId(id),
            SimilarTo::Image(bytes) => Query::Image(bytes),
            SimilarTo::Embedding(values) => Query::Embedding(proto::Embedding { values }),
        };
        let r = self
            .inner
            .recommend_similar(proto::RecommendSimilarRequest {
                query: Some(query),
                k,
                filter: attribute.map(|(key, value)| proto::Filter {
                    must: vec![proto::AttributeFilter {
                        key: key.to_owned(),
                        values: vec![value.to_owned()],
                    }],
                    must_not: Vec::new(),
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(hits(r.items))
    }

    /// RecommendForUser without filter or context.
    pub async fn for_user(&mut self, user: &str, k: u32) -> Result<Vec<Hit>, ClientError> {
        let r = self
            .inner
            .recommend_for_user(proto::RecommendForUserRequest {
                user_id: user.to_owned(),
                k,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(hits(r.items))
    }

    /// Streams (user, product, action) through `RecordInteractions`, stamped
    /// now; returns (recorded, failed, first errors).
    pub async fn record_interactions(
        &mut self,
        items: impl Stream<Item = (String, String, Action)> + Send + 'static,
    ) -> Result<(u64, u64, Vec<String>), ClientError> {
        use futures::StreamExt;
        let requests =
            items.map(
                |(user_id, product_id, action)| proto::RecordInteractionsRequest {
                    interaction: Some(proto::Interaction {
                        user_id,
                        product_id,
                        action: action_to_proto(action) as i32,
                        timestamp_ms: 0,
                    }),
                },
            );
        let r = self.inner.record_interactions(requests).await?.into_inner();
        let errors = r
            .errors
            .into_iter()
            .map(|e| format!("item {} (user {:?}): {}", e.index, e.user_id, e.message))
            .collect();
        Ok((r.recorded, r.failed, errors))
    }

    pub async fn stats(&mut self) -> Result<ServerStats, ClientError> {
        let s = self
            .inner
            .get_stats(proto::GetStatsRequest {})
            .await?
            .into_inner();
        Ok(ServerStats {
            catalog_size: s.catalog_size,
            model: s.model,
            dim: s.dim,
            deleted_pending: s.deleted_pending,
            index_from_dump: s.index_from_dump,
            index_rebuilds: s.index_rebuilds,
        })
    }

    /// Embeds encoded images; returns one vector per image.
    pub async fn embed(&mut self, images: Vec<Bytes>) -> Result<Vec<Vec<f32>>, ClientError> {
        let r = self
            .inner
            .embed(proto::EmbedRequest { images })
            .await?
            .into_inner();
        Ok(r.embeddings.into_iter().map(|e| e.values).collect())
    }

    /// A product's attributes and embedding, `None` if unknown.
    pub async fn product(
        &mut self,
        id: &str,
    ) -> Result<Option<(BTreeMap<String, String>, Vec<f32>)>, ClientError> {
        match self
            .inner
            .get_product(proto::GetProductRequest {
                product_id: id.to_owned(),
                view: proto::ProductView::Full.into(),
            })
            .await
        {
            Ok(r) => {
                let p = r.into_inner().product.unwrap_or_default();
                Ok(Some((
                    p.attributes.into_iter().collect(),
                    p.embedding.map(|e| e.values).unwrap_or_default(),
                )))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Streams precomputed embeddings through `AddProducts`.
    pub async fn import_embeddings(
        &mut self,
        items: impl Stream<Item = (String, Vec<f32>, BTreeMap<String, String>)> + Send + 'static,
    ) -> Result<ImportSummary, ClientError> {
        use futures::StreamExt;
        let requests = items.map(|(id, values, attributes)| proto::AddProductsRequest {
            product_id: id,
            image: Bytes::new(),
            embedding: Some(proto::Embedding { values }),
            attributes: attributes.into_iter().collect(),
        });
        Ok(self.inner.add_products(requests).await?.into_inner().into())
    }
}

fn hits(items: Vec<proto::Recommendation>) -> Vec<Hit> {
    items
        .into_iter()
        .map(|i| Hit {
            id: i.product_id,
            score: i.score,
            attributes: i.attributes.into_iter().collect(),
            reason: i.reason,
        })
        .collect()
}

fn action_to_proto(a: Action) -> proto::Action {
    match a {
        Action::View => proto::Action::View,
        Action::Click => proto::Action::Click,
        Action::AddToCart => proto::Action::AddToCart,
        Action::Purchase => proto::Action::Purchase,
        Action::Dislike => proto::Action::Dislike,
    }
}
