//! The gRPC edge: generated `lookbook.v1` types, the service
//! implementation, proto <-> domain conversions, error -> `Status` mapping,
//! and a typed client for the CLI. Nothing outside this module sees prost
//! or tonic types.

pub mod client;
pub mod convert;
mod error;
mod limit;
mod service;

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::OnceCell};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};

pub use error::ApiError;
pub use service::Ready;

/// Generated protobuf and gRPC code for `lookbook.v1`.
pub mod proto {
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations,
        reason = "generated code"
    )]
    tonic::include_proto!("lookbook.v1");

    /// Encoded descriptors for server reflection.
    pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lookbook_descriptor");
}

/// Fully qualified name of the service, as health checks ask for it.
pub const SERVICE_NAME: &str = "lookbook.v1.Recommender";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Handle to the gRPC server's readiness: flip it to SERVING once the model
/// and index are loaded, back to NOT_SERVING when draining.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    ready: Arc<OnceCell<Ready>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.ready.initialized())
            .finish()
    }
}

impl Readiness {
    /// Installs the loaded state and reports SERVING. Returns false if state
    /// was already installed.
    pub async fn serving(&self, ready: Ready) -> bool {
        if self.ready.set(ready).is_err() {
            return false;
        }
        self.set(ServingStatus::Serving).await;
        true
    }

    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        // "" is the whole server's status, which Kubernetes' gRPC probe asks
        // for by default.
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }
}

/// Settings of the transport itself.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    pub max_message_bytes: usize,
    /// Longest a graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// Recommender calls in flight on the whole server before the next is
    /// refused with RESOURCE_EXHAUSTED (see `limit`).
    pub max_in_flight: usize,
}

/// Starts serving on `listener` right away (health NOT_SERVING, the
/// recommender UNAVAILABLE) and returns the readiness handle plus the
/// server task. The task ends after `shutdown` fires and in-flight calls
/// have drained, or the grace period ran out.
pub async fn start(
    listener: TcpListener,
    settings: TransportSettings,
    shutdown: CancellationToken,
) -> Result<(Readiness, tokio::task::JoinHandle<Result<(), ServeError>>), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let ready = Arc::new(OnceCell::new());
    let readiness = Readiness {
        reporter,
        ready: Arc::clone(&ready),
    };
    readiness.not_serving().await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .with_service_name(SERVICE_NAME)
        .build_v1()?;
    let recommender =
        proto::recommender_server::RecommenderServer::new(service::RecommenderService::new(ready))
            .max_decoding_message_size(settings.max_message_bytes)
            .max_encoding_message_size(settings.max_message_bytes);

    // Calls past their `grpc-timeout` are dropped by tonic itself (its
    // server wraps every call in the deadline), which cancels the handler's
    // future and with it any search it started (see `recommend`).
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted::<tonic::body::Body>,
        ))
        .layer(limit::InFlightLimitLayer::new(settings.max_in_flight))
        .add_service(health)
        .add_service(reflection)
        .add_service(recommender);
    // Without TCP_NODELAY small responses wait for the peer's delayed ACK
    // (measured: a flat ~40 ms added to every RecommendSimilar call).
    // Keepalive notices peers that vanished without closing.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let grace = settings.shutdown_grace;
    let task = tokio::spawn(async move {
        let drained = shutdown.clone();
        let serve = router.serve_with_incoming_shutdown(incoming, drained.cancelled_owned());
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result.map_err(ServeError::from),
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight calls did not finish within the grace period; closing");
                Ok(())
            }
        }
    });
    Ok((readiness, task))
}

/// tonic rejects a request above the decoding limit with OUT_OF_RANGE
/// before any handler runs; gRPC's convention (and our contract) for an
/// over-limit message is RESOURCE_EXHAUSTED. The rejection is a
/// trailers-only response, so the status is in the headers.
fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let oversize = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(is_oversize_message);
    if out_of_range && oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// tonic's wording, raw or percent-encoded as in a `grpc-message` header.
pub(crate) fn is_oversize_message(message: &str) -> bool {
    message.contains("message length too large")
        || message.contains("message%20length%20too%20large")
}
