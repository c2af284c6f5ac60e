//! The appliers: one task per log, consuming it in order from the last
//! applied sequence and applying each event to the local catalogue or
//! shopper state, with the sequence recorded in the same store transaction.
//!
//! Events are applied in batches of whatever has arrived (up to
//! `APPLY_BATCH`): consecutive product upserts are one commit (one fsync,
//! the index links them on all cores), as are consecutive interactions; a
//! delete or forget ends a batch so the order of the log is kept. An event
//! this replica cannot use (undecodable, or a vector of the wrong shape) is
//! skipped with an error log on every replica alike, so they stay equal.
//! An event of another model stops the applier: applying it would mix
//! vector spaces, and skipping it would silently drop a write.
//!
//! Consumers are JetStream ordered consumers (ephemeral, flow-controlled,
//! recreated by the client at the next sequence after a gap); if one fails
//! for good (NATS gone), or delivers nothing while the log is ahead (see
//! `STALL`), the applier waits a second and starts a new one from the
//! store's applied sequence.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    ClusterError, Log, Progress,
    event::{self, InteractionEvent, ProductEvent},
};
use crate::{
    catalog::{Catalog, CatalogError, Embedded, usable_vector},
    domain::{Attributes, Embedding, ProductId, UserId},
    personalize::{Interaction, PersonalizeError, Personalizer},
};

/// Most events applied in one commit.
const APPLY_BATCH: usize = 256;
/// Pause before a new consumer after one failed.
const RETRY: Duration = Duration::from_secs(1);
/// A consumer that delivers nothing this long while the log is ahead of
/// this replica is replaced. The lag is refreshed every second, so this is
/// several refreshes; an ordered consumer's own heartbeat check did not
/// notice a lost NATS server within 30 s in `tests/cluster.rs`.
const STALL: Duration = Duration::from_secs(4);

/// Runs both appliers until `shutdown` (or until one halts the log).
pub async fn run(
    log: Arc<Log>,
    catalog: Arc<Catalog>,
    personalizer: Arc<Personalizer>,
    shutdown: CancellationToken,
) {
    let products = follow(
        Arc::clone(&log),
        Which::Products(Arc::clone(&catalog)),
        shutdown.clone(),
    );
    let interactions = follow(
        Arc::clone(&log),
        Which::Interactions(personalizer, catalog),
        shutdown,
    );
    tokio::join!(products, interactions);
}

enum Which {
    Products(Arc<Catalog>),
    Interactions(Arc<Personalizer>, Arc<Catalog>),
}

impl Which {
    fn progress<'a>(&self, log: &'a Log) -> &'a Progress {
        match self {
            Self::Products(_) => &log.products,
            Self::Interactions(..) => &log.interactions,
        }
    }

    fn stream<'a>(&self, log: &'a Log) -> &'a str {
        match self {
            Self::Products(_) => &log.products_stream,
            Self::Interactions(..) => &log.interactions_stream,
        }
    }
}

/// Why a consumer ended.
enum Stop {
    Shutdown,
    Halt(String),
    Retry(String),
}

async fn follow(log: Arc<Log>, which: Which, shutdown: CancellationToken) {
    loop {
        let progress = which.progress(&log);
        match consume(&log, &which, &shutdown).await {
            Stop::Shutdown => return,
            Stop::Halt(reason) => {
                log.halt(reason);
                return;
            }
            Stop::Retry(reason) => {
                tracing::warn!(
                    log = progress.name,
                    applied = progress.applied(),
                    %reason,
                    "the log consumer failed; starting a new one"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// One delivered event: its sequence, publication time and content.
struct Delivered {
    seq: u64,
    published_ms: i64,
    subject: String,
    payload: bytes::Bytes,
    /// The bucket's delete marker (`KV-Operation: DEL` or `PURGE`).
    tombstone: bool,
}

fn delivered(message: &jetstream::Message) -> Result<Delivered, String> {
    let info = message.info().map_err(|e| e.to_string())?;
    let tombstone = message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    Ok(Delivered {
        seq: info.stream_sequence,
        published_ms: i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX),
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        tombstone,
    })
}

async fn consume(log: &Log, which: &Which, shutdown: &CancellationToken) -> Stop {
    let progress = which.progress(log);
    let start = progress.applied() + 1;
    let messages = async {
        let stream = log.js.get_stream(which.stream(log)).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await?;
        Ok::<_, async_nats::Error>(consumer.messages().await?)
    };
    let messages = tokio::select! {
        () = shutdown.cancelled() => return Stop::Shutdown,
        m = messages => m,
    };
    let mut messages = match messages {
        Ok(m) => m.ready_chunks(APPLY_BATCH),
        Err(e) => return Stop::Retry(e.to_string()),
    };
    tracing::info!(log = progress.name, from = start, "following the log");
    let mut last_event = tokio::time::Instant::now();
    let mut watch = tokio::time::interval(STALL / 4);
    loop {
        let chunk = tokio::select! {
            () = shutdown.cancelled() => return Stop::Shutdown,
            chunk = messages.next() => chunk,
            _ = watch.tick() => {
                // The log has events this consumer has not delivered for a
                // while (its server went away and the client did not
                // notice): start a new one.
                if progress.lag() > 0 && last_event.elapsed() > STALL {
                    return Stop::Retry(format!("no event delivered for {STALL:?} while behind"));
                }
                continue;
            }
        };
        last_event = tokio::time::Instant::now();
        let Some(chunk) = chunk else {
            return Stop::Retry("the consumer ended".to_owned());
        };
        let mut events = Vec::with_capacity(chunk.len());
        let mut failed = None;
        for m in chunk {
            match m.map_err(|e| e.to_string()).and_then(|m| delivered(&m)) {
                // Already applied (a consumer restarted before the store's
                // position): the store holds it.
                Ok(d) if d.seq <= progress.applied() => {}
                Ok(d) => events.push(d),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Applied to the end, even if shutdown comes meanwhile: the store
        // and the position move together, so a stop in between only means
        // the next start resumes later.
        let applied = match which {
            Which::Products(catalog) => apply_products(log, catalog, events).await,
            Which::Interactions(personalizer, catalog) => {
                apply_interactions(log, personalizer, catalog, events).await
            }
        };
        match applied {
            Ok(()) => {}
            Err(Applying::Halt(reason)) => return Stop::Halt(reason),
            Err(Applying::Retry(reason)) => return Stop::Retry(reason),
        }
        if let Some(e) = failed {
            return Stop::Retry(e);
        }
    }
}

enum Applying {
    /// Stop following for good.
    Halt(String),
    /// Start again from the store's position (a transient failure: the
    /// store or a queue refused; nothing after the position was applied).
    Retry(String),
}

impl From<CatalogError> for Applying {
    fn from(e: CatalogError) -> Self {
        Self::Retry(e.to_string())
    }
}

impl From<PersonalizeError> for Applying {
    fn from(e: PersonalizeError) -> Self {
        Self::Retry(e.to_string())
    }
}

/// An event that every replica skips the same way.
fn skip(log: &'static str, seq: u64, reason: &dyn std::fmt::Display) {
    tracing::error!(log, seq, %reason, "skipping an event this replica cannot apply");
    metrics::counter!("lookbook_cluster_skipped_events_total", "log" => log).increment(1);
}

fn mismatch(log: &Log, seq: u64, model: &str, sha256: &str) -> Applying {
    Applying::Halt(
        ClusterError::ModelMismatch {
            local: log.model.to_string(),
            cluster: format!("{model} (sha256 {sha256}) in event {seq}"),
        }
        .to_string(),
    )
}

async fn apply_products(
    log: &Log,
    catalog: &Catalog,
    events: Vec<Delivered>,
) -> Result<(), Applying> {
    let mut batch: Vec<Embedded> = Vec::new();
    let mut ids: HashSet<Arc<str>> = HashSet::new();
    let mut last: Option<(u64, i64)> = None;
    for d in events {
        let key = d.subject.rsplit('.').next().unwrap_or_default();
        let id = match event::untoken(key) {
            Ok(id) => ProductId::from_trusted(id.into()),
            Err(e) => {
                skip("products", d.seq, &e);
                last = Some((d.seq, d.published_ms));
                continue;
            }
        };
        // A repeated id or a delete ends the batch: the log's order holds.
        if d.tombstone || ids.contains(id.as_arc()) {
            flush_products(log, catalog, &mut batch, &mut ids, last).await?;
        }
        if d.tombstone {
            catalog.apply_delete(&id, d.seq).await?;
            log.products.advance(d.seq, d.published_ms);
            last = None;
            continue;
        }
        if let Some(item) = product(log, catalog.metric(), d.seq, id, &d.payload)? {
            ids.insert(Arc::clone(item.0.as_arc()));
            batch.push(item);
        }
        last = Some((d.seq, d.published_ms));
    }
    flush_products(log, catalog, &mut batch, &mut ids, last).await
}

async fn flush_products(
    log: &Log,
    catalog: &Catalog,
    batch: &mut Vec<Embedded>,
    ids: &mut HashSet<Arc<str>>,
    last: Option<(u64, i64)>,
) -> Result<(), Applying> {
    let Some((seq, published_ms)) = last else {
        return Ok(());
    };
    ids.clear();
    catalog.apply_products(std::mem::take(batch), seq).await?;
    log.products.advance(seq, published_ms);
    Ok(())
}

/// The product an event holds, `None` if every replica skips it.
fn product(
    log: &Log,
    metric: crate::domain::Metric,
    seq: u64,
    id: ProductId,
    payload: &[u8],
) -> Result<Option<Embedded>, Applying> {
    let e: ProductEvent = match event::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            skip("products", seq, &e);
            return Ok(None);
        }
    };
    if e.model_sha256 != log.model.sha256 || e.model != log.model.name {
        return Err(mismatch(log, seq, &e.model, &e.model_sha256));
    }
    if e.metric != log.model.metric || e.id != id.as_str() {
        skip(
            "products",
            seq,
            &"the event's metric or id disagrees with its key",
        );
        return Ok(None);
    }
    if let Err(reason) = usable_vector(&e.embedding, log.model.dim as usize, metric) {
        skip("products", seq, &reason);
        return Ok(None);
    }
    let attributes: Attributes = e.attributes.into_iter().collect();
    Ok(Some((
        id,
        attributes,
        Embedding::from_trusted(e.embedding.into()),
        e.thumbnail,
    )))
}

async fn apply_interactions(
    log: &Log,
    personalizer: &Personalizer,
    catalog: &Catalog,
    events: Vec<Delivered>,
) -> Result<(), Applying> {
    let mut batch: Vec<(Interaction, Arc<[f32]>)> = Vec::new();
    let mut last: Option<(u64, i64)> = None;
    for d in events {
        let e: InteractionEvent = match event::decode(&d.payload) {
            Ok(e) => e,
            Err(e) => {
                skip("interactions", d.seq, &e);
                last = Some((d.seq, d.published_ms));
                continue;
            }
        };
        match e {
            InteractionEvent::Forget { user } => {
                flush_interactions(log, personalizer, &mut batch, last).await?;
                last = None;
                let user = UserId::from_trusted(user.into());
                let forgotten = personalizer.apply_forget(user, Some(d.seq)).await?;
                log.keep_forgotten(d.seq, forgotten);
                log.interactions.advance(d.seq, d.published_ms);
            }
            InteractionEvent::Record {
                user,
                product,
                action,
                timestamp_ms,
                vector,
                model,
                model_sha256,
            } => {
                if model_sha256 != log.model.sha256 || model != log.model.name {
                    return Err(mismatch(log, d.seq, &model, &model_sha256));
                }
                last = Some((d.seq, d.published_ms));
                let item = event::action(action)
                    .and_then(|action| Ok((action, event::f16_values(&vector)?)));
                let (action, vector) = match item {
                    Ok(v) => v,
                    Err(e) => {
                        skip("interactions", d.seq, &e);
                        continue;
                    }
                };
                if vector.len() != catalog.dim() as usize {
                    skip("interactions", d.seq, &"the vector has another dimension");
                    continue;
                }
                batch.push((
                    Interaction {
                        user: UserId::from_trusted(user.into()),
                        product: ProductId::from_trusted(product.into()),
                        action,
                        timestamp_ms,
                    },
                    vector.into(),
                ));
            }
        }
    }
    flush_interactions(log, personalizer, &mut batch, last).await
}

async fn flush_interactions(
    log: &Log,
    personalizer: &Personalizer,
    batch: &mut Vec<(Interaction, Arc<[f32]>)>,
    last: Option<(u64, i64)>,
) -> Result<(), Applying> {
    let Some((seq, published_ms)) = last else {
        return Ok(());
    };
    personalizer
        .apply_record(std::mem::take(batch), Some(seq))
        .await?;
    log.interactions.advance(seq, published_ms);
    Ok(())
}
