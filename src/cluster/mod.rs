//! Cluster mode: several replicas kept in step through NATS JetStream.
//!
//! We do not replicate anything ourselves: JetStream (Raft-replicated,
//! clustered, durable) is the log, and each replica is a deterministic state
//! machine over it that keeps its own store, attribute table and HNSW index,
//! exactly as a single node does. Two logs:
//! - **products**: a JetStream key-value bucket (a stream that keeps only
//!   the latest value per key; a delete is a tombstone), value = the
//!   product as applied ([`event::ProductEvent`]); a new replica catches up
//!   from it without replaying history;
//! - **interactions**: a stream with time-based retention, one subject per
//!   shopper, so that `ForgetUser` purges that shopper's events from the
//!   log itself.
//!
//! **Write path** ([`Writes`]): validate, embed the photo locally, publish
//! with a deduplication id, wait for JetStream's acknowledgement (durable in
//! the cluster), then wait, bounded, until this replica has applied that
//! sequence, so that a client reads its own write on the replica it wrote
//! to. No local state changes before the acknowledgement, so a write that
//! fails (JetStream unreachable: UNAVAILABLE) left nothing half-applied.
//!
//! **Apply path** ([`apply`]): one task per log consumes it from the last
//! applied sequence, in order, and records the sequence in the same redb
//! transaction as the change, so a restart resumes exactly where it stopped
//! and nothing is applied twice.
//!
//! **Model consistency**: the cluster records its model (name, ONNX SHA-256,
//! dimension, metric) in a small bucket of its own; a replica with another
//! model refuses to start, and an event of another model stops the applier
//! (health NOT_SERVING) instead of mixing vector spaces.

mod apply;
pub mod event;
mod writes;

use std::{
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::Duration,
};

use async_nats::jetstream::{self, kv, message::PublishMessage as Publish, stream};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    catalog::CatalogError,
    config::ClusterConfig,
    personalize::{Forgotten, PersonalizeError},
};

pub use apply::run as run_appliers;
pub use event::ModelIdentity;
pub use writes::Writes;

/// The key of the cluster's model in the meta bucket.
const MODEL_KEY: &str = "model";
/// Forget results kept for the caller waiting on this replica: the applier
/// cannot tell whether one waits, so the oldest are dropped past this.
const MAX_FORGOTTEN: usize = 1024;
/// How long JetStream keeps a deduplication id: a retried publish within it
/// is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Pause before a publish whose acknowledgement failed is sent again.
const PUBLISH_RETRY: Duration = Duration::from_millis(200);
/// Largest product event the bucket takes (a thumbnail, the vector,
/// attributes: tens of KB in practice): NATS' default payload limit.
const MAX_VALUE_BYTES: i32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("cannot set up JetStream {what}: {detail}")]
    Setup { what: String, detail: String },
    #[error(
        "this replica runs model {local}, but the cluster's replicas run {cluster}; every \
         replica must run the same model (the same ONNX file), or their vectors would not be \
         comparable: configure that model, or use another bucket for a new catalogue"
    )]
    ModelMismatch { local: String, cluster: String },
    #[error(
        "this data directory has applied the {log} log up to {applied}, but the log ends at \
         {last}: the log was reset (its storage wiped); start this replica with an empty data \
         directory so it catches up from the log as it is"
    )]
    AheadOfLog {
        log: &'static str,
        applied: u64,
        last: u64,
    },
    /// No acknowledgement from JetStream: not sent (not connected; nothing
    /// stored), or sent and not acknowledged within `write_timeout` (then
    /// it may still be stored). Retrying is safe for upserts and deletes.
    #[error("the replicated log is unavailable: {0}")]
    Unavailable(String),
    /// Durable in the cluster, but this replica had not applied it within
    /// `cluster.write_timeout`; it will.
    #[error("the write is durable in the cluster but this replica has not applied it within {0:?}")]
    NotApplied(Duration),
    /// The applier stopped (e.g. an event of another model): this replica
    /// no longer follows the cluster.
    #[error("this replica stopped following the cluster: {0}")]
    Halted(String),
    #[error("cannot encode the event: {0}")]
    Encode(#[from] event::InvalidEvent),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Personalize(#[from] PersonalizeError),
}

/// How far this replica has applied one log.
#[derive(Debug)]
struct Progress {
    /// Which log, as the metrics label it.
    name: &'static str,
    /// The last sequence whose change is in the store and in memory.
    applied: watch::Sender<u64>,
    /// The log's last sequence when last asked (0: unknown or empty).
    last: AtomicU64,
    /// When the last applied event was published, Unix ms (0: none yet).
    published_ms: AtomicI64,
}

impl Progress {
    fn new(name: &'static str, applied: u64) -> Self {
        Self {
            name,
            applied: watch::Sender::new(applied),
            last: AtomicU64::new(0),
            published_ms: AtomicI64::new(0),
        }
    }

    fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Events in the log after the last applied one.
    fn lag(&self) -> u64 {
        self.last
            .load(Ordering::Acquire)
            .saturating_sub(self.applied())
    }

    /// Seconds between the newest applied event's publication and now,
    /// while events wait; 0 when caught up.
    fn lag_seconds(&self, now_ms: i64) -> f64 {
        if self.lag() == 0 {
            return 0.0;
        }
        let published = self.published_ms.load(Ordering::Acquire);
        if published == 0 {
            return 0.0;
        }
        (now_ms - published).max(0) as f64 / 1e3
    }

    fn advance(&self, seq: u64, published_ms: i64) {
        self.published_ms.store(published_ms, Ordering::Release);
        self.applied.send_if_modified(|applied| {
            let moved = seq > *applied;
            *applied = (*applied).max(seq);
            moved
        });
        metrics::gauge!("lookbook_cluster_applied_sequence", "log" => self.name).set(seq as f64);
    }
}

/// This replica's connection to the cluster's logs: publishes writes and
/// tracks how far the appliers have got.
#[derive(Debug)]
pub struct Log {
    /// Asked for its connection state before every publish.
    client: async_nats::Client,
    js: jetstream::Context,
    products_stream: String,
    bucket: String,
    interactions_stream: String,
    model: ModelIdentity,
    write_timeout: Duration,
    max_ready_lag: u64,
    products: Progress,
    interactions: Progress,
    /// Why the appliers stopped, once they have.
    halted: watch::Sender<Option<String>>,
    /// Results of applied forgets by sequence, for the local caller.
    forgotten: Mutex<std::collections::BTreeMap<u64, Forgotten>>,
}

impl Log {
    /// Connects to NATS, creates the bucket and stream if this is the first
    /// replica, and checks (or records) the cluster's model. `applied` is
    /// what the store holds: `(products, interactions)` sequences.
    pub async fn connect(
        config: &ClusterConfig,
        model: ModelIdentity,
        applied: (u64, u64),
    ) -> Result<Self, ClusterError> {
        let url = config.nats_url.trim().to_owned();
        let connect_error = |detail: String| ClusterError::Connect {
            url: url.clone(),
            detail,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name("lookbook")
            .connection_timeout(Duration::from_secs(5))
            // Bounded by `write_timeout` per call instead of the client's
            // own 5 s, so UNAVAILABLE comes within the configured time.
            .request_timeout(Some(config.write_timeout));
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| connect_error(format!("credentials {}: {e}", path.display())))?;
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let servers = config.servers().map_err(|e| connect_error(e.to_string()))?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let setup = |what: &str, e: &dyn std::fmt::Display| ClusterError::Setup {
            what: what.to_owned(),
            detail: e.to_string(),
        };
        let replicas = config.stream_replicas;
        let products = js
            .create_key_value(kv::Config {
                bucket: config.products_bucket.clone(),
                description: "lookbook products: the latest state of each product".to_owned(),
                history: 1,
                max_value_size: MAX_VALUE_BYTES,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(&format!("bucket {}", config.products_bucket), &e))?;
        let products_stream = products.stream_name.clone();
        js.get_or_create_stream(stream::Config {
            name: config.interactions_stream.clone(),
            description: Some("lookbook interactions, one subject per shopper".to_owned()),
            subjects: vec![format!("{}.*", config.interactions_stream)],
            max_age: config.interactions_retention,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| setup(&format!("stream {}", config.interactions_stream), &e))?;
        let meta_bucket = format!("{}_cluster", config.products_bucket);
        let meta = js
            .create_key_value(kv::Config {
                bucket: meta_bucket.clone(),
                description: "lookbook cluster: the model every replica must run".to_owned(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(&format!("bucket {meta_bucket}"), &e))?;
        check_model(&meta, &model).await?;
        // A store ahead of the log (NATS' storage wiped and started anew)
        // would skip the new log's first events as already applied.
        for (log, stream, position) in [
            ("products", &products_stream, applied.0),
            ("interactions", &config.interactions_stream, applied.1),
        ] {
            let mut handle = js
                .get_stream(stream.as_str())
                .await
                .map_err(|e| setup(&format!("stream {stream}"), &e))?;
            let last = handle
                .info()
                .await
                .map_err(|e| setup(&format!("stream {stream}"), &e))?
                .state
                .last_sequence;
            if position > last {
                return Err(ClusterError::AheadOfLog {
                    log,
                    applied: position,
                    last,
                });
            }
        }
        Ok(Self {
            client,
            js,
            products_stream,
            bucket: config.products_bucket.clone(),
            interactions_stream: config.interactions_stream.clone(),
            model,
            write_timeout: config.write_timeout,
            max_ready_lag: config.max_ready_lag,
            products: Progress::new("products", applied.0),
            interactions: Progress::new("interactions", applied.1),
            halted: watch::Sender::new(None),
            forgotten: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// The subject of a shopper's interactions.
    fn user_subject(&self, user: &str) -> String {
        format!("{}.{}", self.interactions_stream, event::token(user))
    }

    /// The subject of a product's key in the bucket.
    fn product_subject(&self, id: &str) -> String {
        format!("$KV.{}.{}", self.bucket, event::token(id))
    }

    /// Publishes each message with its own deduplication id and waits for
    /// every acknowledgement; returns their sequences in order. All are
    /// sent before any acknowledgement is awaited (one round trip for a
    /// batch); one whose acknowledgement fails is sent again with the same
    /// id, which JetStream stores once, until `write_timeout`.
    async fn publish(&self, messages: Vec<(String, Publish)>) -> Result<Vec<u64>, ClusterError> {
        self.check_following()?;
        let timeout = self.write_timeout;
        let publish = async {
            let mut sent = Vec::with_capacity(messages.len());
            for (subject, message) in messages {
                self.connected()?;
                let message = message.message_id(new_message_id());
                let ack = self.js.send_publish(subject.clone(), message.clone()).await;
                sent.push((subject, message, ack));
            }
            let mut seqs = Vec::with_capacity(sent.len());
            for (subject, message, ack) in sent {
                let mut ack = ack;
                loop {
                    let error = match ack {
                        Ok(pending) => match pending.await {
                            Ok(ack) => {
                                seqs.push(ack.sequence);
                                break;
                            }
                            Err(e) => e.to_string(),
                        },
                        Err(e) => e.to_string(),
                    };
                    tracing::debug!(%error, "publish not acknowledged; sending again");
                    tokio::time::sleep(PUBLISH_RETRY).await;
                    self.connected()?;
                    ack = self.js.send_publish(subject.clone(), message.clone()).await;
                }
            }
            Ok(seqs)
        };
        tokio::time::timeout(timeout, publish).await.map_err(|_| {
            ClusterError::Unavailable(format!("no acknowledgement from JetStream in {timeout:?}"))
        })?
    }

    /// Refuses to send while the client is not connected: it would buffer
    /// the message and deliver it after reconnecting, storing a write whose
    /// caller was told it failed.
    fn connected(&self) -> Result<(), ClusterError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(ClusterError::Unavailable(format!(
                "not connected to NATS ({state})"
            ))),
        }
    }

    /// Waits (bounded by `write_timeout`) until `progress` reaches `seq`.
    async fn wait_applied(&self, progress: &Progress, seq: u64) -> Result<(), ClusterError> {
        let mut applied = progress.applied.subscribe();
        let mut halted = self.halted.subscribe();
        let wait = async {
            tokio::select! {
                reached = applied.wait_for(|a| *a >= seq) => {
                    reached.map(|_| ()).map_err(|_| ClusterError::Halted("the applier stopped".to_owned()))
                }
                reason = halted.wait_for(Option::is_some) => Err(ClusterError::Halted(
                    reason.ok().and_then(|r| r.clone()).unwrap_or_default(),
                )),
            }
        };
        tokio::time::timeout(self.write_timeout, wait)
            .await
            .map_err(|_| ClusterError::NotApplied(self.write_timeout))?
    }

    fn check_following(&self) -> Result<(), ClusterError> {
        match &*self.halted.borrow() {
            Some(reason) => Err(ClusterError::Halted(reason.clone())),
            None => Ok(()),
        }
    }

    /// Stops following the cluster, for good (the appliers have stopped).
    fn halt(&self, reason: String) {
        tracing::error!(%reason, "this replica stopped applying the cluster's logs");
        self.halted.send_replace(Some(reason));
    }

    /// Resolves once the appliers have stopped for good, with the reason.
    pub async fn halted(&self) -> String {
        let mut rx = self.halted.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `self`, which outlives this borrow.
            Err(_) => String::new(),
        }
    }

    /// Asks JetStream for both logs' last sequences and updates the lag
    /// metrics; an unreachable JetStream leaves the last known values.
    /// Returns whether both were read.
    async fn refresh_lag(&self) -> bool {
        let mut read_both = true;
        for (stream, progress) in [
            (&self.products_stream, &self.products),
            (&self.interactions_stream, &self.interactions),
        ] {
            let state = match self.js.get_stream(stream).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .map(|i| i.state.clone())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match state {
                // A log with no messages left (all expired) has nothing to
                // catch up on, whatever its last sequence was.
                Ok(state) if state.messages == 0 => {
                    progress.last.store(progress.applied(), Ordering::Release);
                }
                Ok(state) => progress.last.store(state.last_sequence, Ordering::Release),
                Err(error) => {
                    read_both = false;
                    tracing::debug!(%stream, %error, "cannot read the stream's state");
                }
            }
        }
        let now = crate::personalize::now_ms();
        for p in [&self.products, &self.interactions] {
            metrics::gauge!("lookbook_cluster_lag_events", "log" => p.name).set(p.lag() as f64);
            metrics::gauge!("lookbook_cluster_lag_seconds", "log" => p.name)
                .set(p.lag_seconds(now));
        }
        read_both
    }

    /// Whether both logs are applied to within `max_ready_lag` events (as
    /// of the last [`Self::refresh_lag`]).
    fn caught_up(&self) -> bool {
        self.products.lag() <= self.max_ready_lag && self.interactions.lag() <= self.max_ready_lag
    }

    /// Waits until this replica has caught up with both logs (see
    /// `cluster.max_ready_lag`), refreshing the lag twice a second.
    pub async fn wait_caught_up(&self) -> Result<(), ClusterError> {
        loop {
            // A log whose end could not be read (JetStream still
            // recovering after a restart) is not one this replica has
            // caught up with: its last known end may be none at all.
            let read = self.refresh_lag().await;
            self.check_following()?;
            if read && self.caught_up() {
                tracing::info!(
                    products = self.products.applied(),
                    interactions = self.interactions.applied(),
                    "caught up with the cluster"
                );
                return Ok(());
            }
            tracing::info!(
                products_behind = self.products.lag(),
                interactions_behind = self.interactions.lag(),
                "catching up with the cluster"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Keeps the lag metrics current until `shutdown`.
    pub async fn report_lag(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            self.refresh_lag().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn keep_forgotten(&self, seq: u64, f: Forgotten) {
        let mut kept = self.forgotten.lock();
        kept.insert(seq, f);
        while kept.len() > MAX_FORGOTTEN {
            kept.pop_first();
        }
    }

    fn take_forgotten(&self, seq: u64) -> Option<Forgotten> {
        self.forgotten.lock().remove(&seq)
    }
}

/// Records `model` as the cluster's if none is, else requires it to match.
async fn check_model(meta: &kv::Store, model: &ModelIdentity) -> Result<(), ClusterError> {
    let setup = |e: &dyn std::fmt::Display| ClusterError::Setup {
        what: "the cluster's model record".to_owned(),
        detail: e.to_string(),
    };
    let value = serde_json::to_vec(model).map_err(|e| setup(&e))?;
    match meta.create(MODEL_KEY, value.into()).await {
        Ok(_) => {
            tracing::info!(%model, "recorded this model as the cluster's");
            return Ok(());
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(&e)),
    }
    let stored = meta
        .get(MODEL_KEY)
        .await
        .map_err(|e| setup(&e))?
        .ok_or_else(|| setup(&"the model record vanished while it was read"))?;
    let cluster: ModelIdentity = serde_json::from_slice(&stored).map_err(|e| setup(&e))?;
    if cluster == *model {
        Ok(())
    } else {
        Err(ClusterError::ModelMismatch {
            local: model.to_string(),
            cluster: cluster.to_string(),
        })
    }
}

/// A fresh deduplication id: 128 random bits, hex.
fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
