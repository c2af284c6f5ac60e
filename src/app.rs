//! Service wiring: bind, load, serve, drain.
//!
//! The ports are bound first; health answers NOT_SERVING (and `/readyz`
//! 503, `/livez` 200) while the model and index load, so orchestrators can
//! tell "starting" from "dead"; the recommender turns SERVING only once
//! both are loaded (and, in cluster mode, once this replica has joined the
//! cluster and caught up with its logs). On shutdown readiness flips at
//! once, calls are still served for `drain_delay` (while load balancers
//! take the pod out), then the listeners close, in-flight calls drain
//! (bounded by the grace period), the cluster's appliers stop after the
//! commit they are in, and the index dump is written so the next start
//! skips the rebuild.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{
        self, Authenticator, Listeners, Ready, TransportSettings,
        convert::RequestLimits,
        tls::{TlsError, TlsMaterial},
    },
    catalog::{Catalog, CatalogError, StartupReport},
    cluster::{self, ClusterError, Log, ModelIdentity, Writes},
    config::{ClusterConfig, Config},
    encoder::{Encoder, EncoderError},
    personalize::{PersonalizeError, Personalizer},
    recommend::Recommender,
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot load the model: {0}")]
    Encoder(#[from] EncoderError),
    #[error("cannot open the catalogue: {0}")]
    Catalog(#[from] CatalogError),
    #[error("cannot load shopper state: {0}")]
    Personalize(#[from] PersonalizeError),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Serve(#[from] api::ServeError),
    #[error("start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A bound but not yet serving server; lets callers (tests, `main`) learn
/// the real port before start-up work begins.
#[derive(Debug)]
pub struct Bound {
    listeners: Listeners,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    tls: Option<TlsMaterial>,
    config: Config,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AppError::Bind { addr, source })?;
    Ok((listener, bound))
}

impl Bound {
    /// Binds both ports and reads the TLS files, so that every mistake in
    /// them fails here, before minutes of loading.
    pub async fn bind(config: Config) -> Result<Self, AppError> {
        let tls = TlsMaterial::load(&config.tls)?;
        let (grpc, addr) = bind(config.server.listen).await?;
        let (http, http_addr) = match config.http.addr()? {
            Some(addr) => {
                let (listener, bound) = bind(addr).await?;
                (Some(listener), Some(bound))
            }
            None => (None, None),
        };
        Ok(Self {
            listeners: Listeners { grpc, http },
            addr,
            http_addr,
            tls,
            config,
        })
    }

    /// The gRPC port.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP port, unless HTTP is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Serves until `shutdown` fires, then drains and dumps the index.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Self {
            listeners,
            addr,
            http_addr,
            tls,
            config,
        } = self;
        let auth = Authenticator::new(config.tokens.clone());
        let secured = (tls.as_ref().map(TlsMaterial::mutual), auth.enabled());
        // Fired after `drain_delay` (or at once during start-up): the
        // listeners close and in-flight calls drain.
        let close = CancellationToken::new();
        let (readiness, server) = api::start(
            listeners,
            TransportSettings {
                max_message_bytes: config.server.max_message_bytes,
                shutdown_grace: work_grace(config.server.shutdown_grace),
                max_in_flight: config.server.max_in_flight,
                reflection: config.server.reflection,
                tls,
                auth,
                access_log: config.telemetry.access_log,
                ui: config.http.ui,
            },
            close.clone(),
        )
        .await?;
        tracing::info!(
            %addr,
            http = %http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            tls = match secured.0 { None => "off", Some(false) => "on", Some(true) => "mutual" },
            tokens = if secured.1 { "required" } else { "off" },
            reflection = config.server.reflection,
            "listening (NOT_SERVING until the model and index are loaded)"
        );

        let loaded = tokio::select! {
            loaded = load(&config) => loaded,
            () = shutdown.cancelled() => {
                tracing::info!("shutdown requested during start-up");
                readiness.not_serving().await;
                close.cancel();
                return finish(server).await;
            }
        };
        let (catalog, report) = match loaded {
            Ok(v) => v,
            Err(error) => {
                close.cancel();
                // The start-up error is the one worth reporting.
                let _ = finish(server).await;
                return Err(error);
            }
        };
        tracing::info!(
            products = report.products,
            damaged_products = report.damaged_products,
            index_from_dump = report.index_from_dump,
            reconciled = report.reconciled,
            seconds = format_args!("{:.2}", report.seconds),
            model = catalog.model(),
            dim = catalog.dim(),
            "catalogue loaded"
        );
        let catalog = Arc::new(catalog);
        let opened = tokio::select! {
            opened = Personalizer::open(
                Arc::clone(catalog.store()),
                Arc::clone(&catalog),
                config.personalize.clone(),
            ) => opened,
            () = shutdown.cancelled() => {
                readiness.not_serving().await;
                close.cancel();
                return finish(server).await;
            }
        };
        let (personalizer, shoppers) = match opened {
            Ok(v) => v,
            Err(error) => {
                close.cancel();
                let _ = finish(server).await;
                return Err(error.into());
            }
        };
        tracing::info!(
            users = shoppers.users,
            interactions = shoppers.interactions,
            trending_products = shoppers.trending_products,
            damaged_trending = shoppers.damaged_trending,
            "shopper state loaded"
        );
        let personalizer = Arc::new(personalizer);
        let log = if config.cluster.enabled() {
            let joined = tokio::select! {
                joined = join(&config.cluster, &catalog) => joined,
                () = shutdown.cancelled() => {
                    readiness.not_serving().await;
                    close.cancel();
                    return finish(server).await;
                }
            };
            match joined {
                Ok(log) => Some(Arc::new(log)),
                Err(error) => {
                    close.cancel();
                    let _ = finish(server).await;
                    return Err(error);
                }
            }
        } else {
            None
        };
        let appliers = log.as_ref().map(|log| {
            tokio::spawn(cluster::run_appliers(
                Arc::clone(log),
                Arc::clone(&catalog),
                Arc::clone(&personalizer),
                shutdown.clone(),
            ))
        });
        if let Some(log) = &log {
            // NOT_SERVING until caught up: a new replica would otherwise
            // answer from a partial catalogue.
            let caught_up = tokio::select! {
                caught_up = log.wait_caught_up() => caught_up,
                () = shutdown.cancelled() => Ok(()),
            };
            if let Err(error) = caught_up {
                close.cancel();
                let _ = finish(server).await;
                return Err(error.into());
            }
            let lag = Arc::clone(log);
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move { lag.report_lag(shutdown).await }
            });
            // A replica that stops following (an event of another model)
            // must leave the load balancers' rotation.
            // Ends at shutdown: it holds the readiness handle, and with it
            // the catalogue and its store file.
            let halted = Arc::clone(log);
            let readiness = readiness.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    reason = halted.halted() => {
                        tracing::error!(%reason, "NOT_SERVING: this replica no longer follows the cluster");
                        readiness.not_serving().await;
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
        let limits = RequestLimits {
            dim: catalog.dim() as usize,
            max_k: config.limits.max_k,
            max_product_id_bytes: config.limits.max_product_id_bytes,
            max_attributes: config.limits.max_attributes,
            max_attribute_bytes: config.limits.max_attribute_bytes,
            max_user_id_bytes: config.limits.max_user_id_bytes,
            max_examples: config.limits.max_examples,
            metric: catalog.metric(),
        };
        let maintenance = tokio::spawn(Arc::clone(&catalog).maintain(
            config.index.maintenance_interval,
            config.index.checkpoint_changes,
            shutdown.clone(),
        ));
        readiness
            .serving(Ready {
                writes: Writes::new(Arc::clone(&catalog), Arc::clone(&personalizer), log),
                recommender: Recommender::new(
                    Arc::clone(&catalog),
                    personalizer,
                    config.server.search_concurrency,
                    config.server.max_pending_searches,
                    config.index.exact_threshold,
                ),
                limits,
            })
            .await;
        tracing::info!(%addr, "SERVING");

        shutdown.cancelled().await;
        readiness.not_serving().await;
        if !config.server.drain_delay.is_zero() {
            tracing::info!(
                delay = ?config.server.drain_delay,
                "not ready; still serving while load balancers catch up"
            );
            tokio::time::sleep(config.server.drain_delay).await;
        }
        // Everything from here on fits in the grace period, so that the
        // process is gone before Kubernetes' own countdown kills it.
        let deadline = tokio::time::Instant::now() + work_grace(config.server.shutdown_grace);
        tracing::info!("draining in-flight calls");
        close.cancel();
        let served = finish(server).await;
        // A rebuild of a large index takes minutes; it is abandoned (the
        // current generation stays complete and is what gets dumped).
        catalog.cancel_background_work();
        if let Err(error) = maintenance.await {
            tracing::error!(%error, "maintenance task failed");
        }
        // The appliers stop at `shutdown`, after the commit they are in.
        if let Some(appliers) = appliers
            && let Err(error) = appliers.await
        {
            tracing::error!(%error, "cluster applier failed");
        }
        match tokio::time::timeout_at(deadline, catalog.dump_index()).await {
            Ok(Ok(())) => tracing::info!("index dump written"),
            // Not fatal: the next start rebuilds from the store.
            Ok(Err(error)) => tracing::error!(%error, "cannot write the index dump"),
            Err(_) => tracing::warn!(
                grace = ?config.server.shutdown_grace,
                "the index dump did not finish within the grace period; exiting without it"
            ),
        }
        served
    }
}

/// Kept back from `shutdown_grace` for what follows the drain and the dump:
/// the runtime's wait for abandoned blocking work (250 ms, `main.rs`) and
/// the process exit. Without it a drain that used the whole grace period
/// ended the process ~0.3 s after it.
const EXIT_RESERVE: std::time::Duration = std::time::Duration::from_millis(500);

/// The part of `shutdown_grace` that draining and dumping may use.
fn work_grace(grace: std::time::Duration) -> std::time::Duration {
    grace.saturating_sub(EXIT_RESERVE)
}

async fn finish(
    server: tokio::task::JoinHandle<Result<(), api::ServeError>>,
) -> Result<(), AppError> {
    server.await??;
    Ok(())
}

/// Connects to the cluster's logs. An unreachable NATS (or a JetStream
/// not ready yet) is retried every 2 s, logged, while health says
/// NOT_SERVING; a replica of another model, or with a store ahead of the
/// log, is refused for good.
async fn join(config: &ClusterConfig, catalog: &Catalog) -> Result<Log, AppError> {
    let model = ModelIdentity {
        name: catalog.model().to_owned(),
        sha256: catalog.encoder().model_sha256().to_owned(),
        dim: catalog.dim(),
        metric: catalog.metric().as_str().to_owned(),
    };
    let store = Arc::clone(catalog.store());
    let applied = tokio::task::spawn_blocking(move || store.applied())
        .await?
        .map_err(CatalogError::from)?;
    loop {
        match Log::connect(config, model.clone(), applied).await {
            Ok(log) => {
                tracing::info!(
                    products = applied.0,
                    interactions = applied.1,
                    "joined the cluster; applying its logs from the stored positions"
                );
                return Ok(log);
            }
            Err(error @ (ClusterError::ModelMismatch { .. } | ClusterError::AheadOfLog { .. })) => {
                return Err(error.into());
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reach the cluster's logs yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    }
}

/// Loads the encoder (blocking: reads and optimises the ONNX graph) and
/// the catalogue.
async fn load(config: &Config) -> Result<(Catalog, StartupReport), AppError> {
    let encoder_config = config.encoder();
    let encoder = tokio::task::spawn_blocking(move || Encoder::load(&encoder_config)).await??;
    tracing::info!(
        model = encoder.model_name(),
        dim = encoder.dim(),
        "model loaded"
    );
    let (catalog, report) = Catalog::open(
        config.storage.data_dir.clone(),
        encoder,
        config.index_params(),
        config.server.max_pending_writes,
    )
    .await?;
    Ok((catalog, report))
}
