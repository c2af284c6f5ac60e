//! Where a write goes: straight to the local catalogue and shopper state on
//! a single node, or through the replicated log in cluster mode (see the
//! module docs of [`super`] for the order of a replicated write).

use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage as Publish;

use super::{
    ClusterError, Log,
    event::{self, InteractionEvent, ProductEvent},
};
use crate::{
    catalog::{
        AddOutcome, AttributeUpdate, BulkOutcome, Catalog, CatalogError, Embedded, NewProduct,
        ProductView,
    },
    domain::{ProductId, UserId},
    personalize::{Forgotten, Interaction, PersonalizeError, Personalizer},
};

/// The write side of the service.
#[derive(Debug, Clone)]
pub struct Writes {
    catalog: Arc<Catalog>,
    personalizer: Arc<Personalizer>,
    /// `None` on a single node.
    log: Option<Arc<Log>>,
}

impl Writes {
    pub fn new(
        catalog: Arc<Catalog>,
        personalizer: Arc<Personalizer>,
        log: Option<Arc<Log>>,
    ) -> Self {
        Self {
            catalog,
            personalizer,
            log,
        }
    }

    /// Upserts one product; returns once it is durable and searchable here.
    pub async fn add(&self, product: NewProduct) -> Result<AddOutcome, ClusterError> {
        let Some(log) = &self.log else {
            return Ok(self.catalog.add(product).await?);
        };
        let mut outcome = self.replicate_products(log, vec![product]).await?;
        let created = outcome.results.pop().ok_or(CatalogError::Internal(
            "a replicated add returned no result for its item",
        ))??;
        Ok(AddOutcome {
            created,
            catalog_size: outcome.catalog_size,
        })
    }

    /// Upserts a batch; per-item failures (an undecodable photo) are
    /// reported per item.
    pub async fn add_batch(&self, products: Vec<NewProduct>) -> Result<BulkOutcome, ClusterError> {
        match &self.log {
            None => Ok(self.catalog.add_batch(products).await?),
            Some(log) => self.replicate_products(log, products).await,
        }
    }

    /// Embeds locally, publishes every good item, waits for the
    /// acknowledgements and then for this replica to apply them. `created`
    /// is whether this replica held the id when the write was made.
    async fn replicate_products(
        &self,
        log: &Log,
        products: Vec<NewProduct>,
    ) -> Result<BulkOutcome, ClusterError> {
        let prepared = self.catalog.prepare(products).await?;
        let mut results = Vec::with_capacity(prepared.len());
        let mut messages = Vec::new();
        for p in prepared {
            match p {
                Ok(item) => {
                    results.push(Ok(self.catalog.vector(&item.0).is_none()));
                    messages.push(product_message(log, item)?);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if let Some(&seq) = log.publish(messages).await?.iter().max() {
            log.wait_applied(&log.products, seq).await?;
        }
        Ok(BulkOutcome {
            results,
            catalog_size: self.catalog.len(),
        })
    }

    /// Sets and removes attributes. In cluster mode the product is
    /// published whole (vector and thumbnail as stored here): concurrent
    /// updates of one product on different replicas resolve to the one the
    /// log stores last.
    pub async fn update(
        &self,
        id: &ProductId,
        update: AttributeUpdate,
    ) -> Result<ProductView, ClusterError> {
        let Some(log) = &self.log else {
            return Ok(self.catalog.update(id, update).await?);
        };
        let current = self.catalog.get(id).await?;
        let thumbnail = self.catalog.thumbnail(id).await?;
        let mut attributes = (*current.attributes).clone();
        for key in &update.remove {
            attributes.remove(key);
        }
        attributes.extend(update.set);
        let message = product_message(log, (id.clone(), attributes, current.embedding, thumbnail))?;
        if let Some(&seq) = log.publish(vec![message]).await?.first() {
            log.wait_applied(&log.products, seq).await?;
        }
        Ok(self.catalog.get(id).await?)
    }

    /// Deletes a product: `(whether it existed here, catalogue size)`.
    pub async fn delete(&self, id: &ProductId) -> Result<(bool, u64), ClusterError> {
        let Some(log) = &self.log else {
            return Ok(self.catalog.delete(id).await?);
        };
        let existed = self.catalog.vector(id).is_some();
        let message = Publish::build().header("KV-Operation", "DEL");
        if let Some(&seq) = log
            .publish(vec![(log.product_subject(id.as_str()), message)])
            .await?
            .first()
        {
            log.wait_applied(&log.products, seq).await?;
        }
        Ok((existed, self.catalog.len()))
    }

    /// Records interactions; an unknown product fails only its own item.
    pub async fn record(
        &self,
        interactions: Vec<Interaction>,
    ) -> Result<Vec<Result<(), PersonalizeError>>, ClusterError> {
        let Some(log) = &self.log else {
            return Ok(self.personalizer.record(interactions).await?);
        };
        let mut results = Vec::with_capacity(interactions.len());
        let mut messages = Vec::new();
        for i in interactions {
            let Some(vector) = self.catalog.vector(&i.product) else {
                results.push(Err(PersonalizeError::UnknownProduct(i.product)));
                continue;
            };
            let e = InteractionEvent::Record {
                user: i.user.as_str().to_owned(),
                product: i.product.as_str().to_owned(),
                action: i.action.code(),
                timestamp_ms: i.timestamp_ms,
                vector: event::f16_bytes(&vector),
                model: log.model.name.clone(),
                model_sha256: log.model.sha256.clone(),
            };
            messages.push((
                log.user_subject(i.user.as_str()),
                Publish::build().payload(event::encode(&e)?.into()),
            ));
            results.push(Ok(()));
        }
        if let Some(&seq) = log.publish(messages).await?.iter().max() {
            log.wait_applied(&log.interactions, seq).await?;
        }
        Ok(results)
    }

    /// Erases a shopper here and on every replica, and purges their events
    /// from the interaction stream (all but the forget itself, which holds
    /// only the id).
    pub async fn forget(&self, user: UserId) -> Result<Forgotten, ClusterError> {
        let Some(log) = &self.log else {
            return Ok(self.personalizer.forget(user).await?);
        };
        let subject = log.user_subject(user.as_str());
        let e = InteractionEvent::Forget {
            user: user.as_str().to_owned(),
        };
        let message = Publish::build().payload(event::encode(&e)?.into());
        let seqs = log.publish(vec![(subject.clone(), message)]).await?;
        let seq = *seqs.first().ok_or(ClusterError::Unavailable(
            "no acknowledgement for the forget".to_owned(),
        ))?;
        // Everything on the subject before the forget; a failure here
        // leaves the erase applied on every replica but the events in the
        // log, so the call fails and a retry purges them.
        let purge = async {
            let stream = log
                .js
                .get_stream(&log.interactions_stream)
                .await
                .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
            stream
                .purge()
                .filter(subject)
                .sequence(seq)
                .await
                .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
            Ok::<_, ClusterError>(())
        };
        tokio::time::timeout(log.write_timeout, purge)
            .await
            .map_err(|_| ClusterError::Unavailable("the purge timed out".to_owned()))??;
        log.wait_applied(&log.interactions, seq).await?;
        Ok(log.take_forgotten(seq).unwrap_or(Forgotten {
            existed: false,
            interactions: 0,
        }))
    }
}

/// The bucket message that upserts `item`.
fn product_message(log: &Log, item: Embedded) -> Result<(String, Publish), ClusterError> {
    let (id, attributes, embedding, thumbnail) = item;
    let e = ProductEvent {
        id: id.as_str().to_owned(),
        attributes: attributes.into_iter().collect(),
        embedding: embedding.as_slice().to_vec(),
        model: log.model.name.clone(),
        model_sha256: log.model.sha256.clone(),
        metric: log.model.metric.clone(),
        thumbnail,
    };
    Ok((
        log.product_subject(id.as_str()),
        Publish::build().payload(event::encode(&e)?.into()),
    ))
}
