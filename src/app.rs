//! Service wiring: bind, load, serve, drain.
//!
//! The port is bound first and health answers NOT_SERVING while the model
//! and index load, so orchestrators can tell "starting" from "dead"; the
//! recommender turns SERVING only once both are loaded. On shutdown the
//! server stops taking calls, drains in-flight ones (bounded by the grace
//! period), and writes the index dump so the next start skips the rebuild.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, Ready, TransportSettings, convert::RequestLimits},
    catalog::{Catalog, CatalogError, StartupReport},
    config::Config,
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
    #[error("cannot load the model: {0}")]
    Encoder(#[from] EncoderError),
    #[error("cannot open the catalogue: {0}")]
    Catalog(#[from] CatalogError),
    #[error("cannot load shopper state: {0}")]
    Personalize(#[from] PersonalizeError),
    #[error(transparent)]
    Serve(#[from] api::ServeError),
    #[error("start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A bound but not yet serving server; lets callers (tests, `main`) learn
/// the real port before start-up work begins.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
}

impl Bound {
    pub async fn bind(config: Config) -> Result<Self, AppError> {
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?;
        Ok(Self {
            listener,
            addr,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` fires, then drains and dumps the index.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Self {
            listener,
            addr,
            config,
        } = self;
        let (readiness, server) = api::start(
            listener,
            TransportSettings {
                max_message_bytes: config.server.max_message_bytes,
                shutdown_grace: work_grace(config.server.shutdown_grace),
                max_in_flight: config.server.max_in_flight,
            },
            shutdown.clone(),
        )
        .await?;
        tracing::info!(%addr, "listening (NOT_SERVING until the model and index are loaded)");

        let loaded = tokio::select! {
            loaded = load(&config) => loaded,
            () = shutdown.cancelled() => {
                tracing::info!("shutdown requested during start-up");
                return finish(server).await;
            }
        };
        let (catalog, report) = match loaded {
            Ok(v) => v,
            Err(error) => {
                shutdown.cancel();
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
            () = shutdown.cancelled() => return finish(server).await,
        };
        let (personalizer, shoppers) = match opened {
            Ok(v) => v,
            Err(error) => {
                shutdown.cancel();
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
        let limits = RequestLimits {
            dim: catalog.dim() as usize,
            max_k: config.limits.max_k,
            max_product_id_bytes: config.limits.max_product_id_bytes,
            max_attributes: config.limits.max_attributes,
            max_attribute_bytes: config.limits.max_attribute_bytes,
            max_user_id_bytes: config.limits.max_user_id_bytes,
            max_examples: config.limits.max_examples,
        };
        let maintenance = tokio::spawn(Arc::clone(&catalog).maintain(
            config.index.maintenance_interval,
            config.index.checkpoint_changes,
            shutdown.clone(),
        ));
        readiness
            .serving(Ready {
                recommender: Recommender::new(
                    Arc::clone(&catalog),
                    Arc::new(personalizer),
                    config.server.search_concurrency,
                    config.server.max_pending_searches,
                    config.index.exact_threshold,
                ),
                limits,
            })
            .await;
        tracing::info!(%addr, "SERVING");

        shutdown.cancelled().await;
        // Everything from here on fits in the grace period, so that the
        // process is gone before Kubernetes' own countdown kills it.
        let deadline = tokio::time::Instant::now() + work_grace(config.server.shutdown_grace);
        readiness.not_serving().await;
        tracing::info!("draining in-flight calls");
        let served = finish(server).await;
        // A rebuild of a large index takes minutes; it is abandoned (the
        // current generation stays complete and is what gets dumped).
        catalog.cancel_background_work();
        if let Err(error) = maintenance.await {
            tracing::error!(%error, "maintenance task failed");
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
