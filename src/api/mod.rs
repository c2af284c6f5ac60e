//! The service's edge: generated `lookbook.v1` types, the gRPC service,
//! the HTTP port (health, metrics), proto <-> domain conversions, error ->
//! `Status` mapping, the layers every call goes through (observation,
//! tokens, overload), TLS, and a typed client for the CLI. Nothing outside
//! this module sees prost, tonic or HTTP types.

mod auth;
pub mod client;
pub mod convert;
mod error;
mod limit;
mod observe;
mod openapi;
mod rest;
mod service;
pub mod tls;
mod web;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::OnceCell};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};

pub use auth::{Access, Authenticator, Denied, access_of};
pub use error::ApiError;
pub use observe::REQUEST_ID;
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
    // proto3 JSON (serde) impls of every message, for the HTTP/JSON API.
    include!(concat!(env!("OUT_DIR"), "/lookbook.v1.serde.rs"));

    /// Encoded descriptors for server reflection.
    pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lookbook_descriptor");
}

/// Fully qualified name of the service, as health checks ask for it.
pub const SERVICE_NAME: &str = "lookbook.v1.RecommenderService";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot read the built-in API descriptor: {0}")]
    Descriptor(#[from] prost::DecodeError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the HTTP server task failed: {0}")]
    Http(#[from] tokio::task::JoinError),
}

/// The loaded state, set once start-up has finished.
pub(crate) type ReadyCell = Arc<OnceCell<Ready>>;

/// Where the server is in its life, for `/readyz` and `lookbook_ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhaseValue {
    Loading = 0,
    Serving = 1,
    Draining = 2,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Phase(Arc<AtomicU8>);

impl Phase {
    fn set(&self, value: PhaseValue) {
        self.0.store(value as u8, Ordering::Release);
    }

    pub(crate) fn get(&self) -> PhaseValue {
        match self.0.load(Ordering::Acquire) {
            0 => PhaseValue::Loading,
            1 => PhaseValue::Serving,
            _ => PhaseValue::Draining,
        }
    }
}

/// Handle to the server's readiness, on both ports: flip it to SERVING
/// once the model and index are loaded, to NOT_SERVING when draining.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    ready: ReadyCell,
    phase: Phase,
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
        self.phase.set(PhaseValue::Serving);
        self.set(ServingStatus::Serving).await;
        true
    }

    /// From here on until exit: health NOT_SERVING, `/readyz` 503.
    pub async fn not_serving(&self) {
        self.phase.set(PhaseValue::Draining);
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
#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub max_message_bytes: usize,
    /// Longest a graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// Recommender calls in flight on the whole server before the next is
    /// refused with RESOURCE_EXHAUSTED (see `limit`).
    pub max_in_flight: usize,
    /// Serve gRPC reflection.
    pub reflection: bool,
    /// TLS on both ports, or plaintext.
    pub tls: Option<tls::TlsMaterial>,
    pub auth: Authenticator,
    /// An access log line per call.
    pub access_log: bool,
    /// Serve the page at `/` on the HTTP port.
    pub ui: bool,
}

/// The bound listeners: gRPC, and HTTP unless it is turned off.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

/// Every `package.Service/Method` the gRPC port can serve, from the
/// built-in descriptors (ours, health's, reflection's), as metric label
/// values. Decoded once per process; reflection's methods are included
/// even when it is off (calls to them are then UNIMPLEMENTED, still a
/// bounded label).
fn served_methods() -> Result<&'static [&'static str], prost::DecodeError> {
    use prost::Message as _;
    static METHODS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    if let Some(methods) = METHODS.get() {
        return Ok(methods);
    }
    let mut methods = Vec::new();
    for set in [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(set)?;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    // Leaked once: a few dozen short strings that label metrics for the
    // process's life.
    let methods = methods
        .into_iter()
        .map(|m| &*Box::leak(m.into_boxed_str()))
        .collect();
    Ok(METHODS.get_or_init(|| methods))
}

/// Starts serving on both listeners right away (health NOT_SERVING,
/// `/readyz` 503, the recommender UNAVAILABLE) and returns the readiness
/// handle plus the server task. The task ends after `close` fires and
/// in-flight calls have drained, or the grace period ran out.
pub async fn start(
    listeners: Listeners,
    settings: TransportSettings,
    close: CancellationToken,
) -> Result<(Readiness, tokio::task::JoinHandle<Result<(), ServeError>>), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let ready: ReadyCell = Arc::new(OnceCell::new());
    let readiness = Readiness {
        reporter,
        ready: Arc::clone(&ready),
        phase: Phase::default(),
    };
    readiness.set(ServingStatus::NotServing).await;

    let reflection = if settings.reflection {
        Some(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .with_service_name(SERVICE_NAME)
                .build_v1()?,
        )
    } else {
        None
    };
    let service = service::RecommenderService::new(Arc::clone(&ready));
    // One bound for both ports: HTTP/JSON calls take slots of the same
    // semaphore as gRPC calls.
    let in_flight = limit::InFlightLimitLayer::new(settings.max_in_flight);
    let recommender =
        proto::recommender_service_server::RecommenderServiceServer::new(service.clone())
            .max_decoding_message_size(settings.max_message_bytes)
            .max_encoding_message_size(settings.max_message_bytes);

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &settings.tls {
        builder = builder.tls_config(tls.grpc())?;
    }
    // Outermost first: every call is observed (with the code its caller
    // saw), then its token checked before it can take an in-flight slot.
    // Calls past their `grpc-timeout` are dropped by tonic itself (its
    // server wraps every call in the deadline), which cancels the handler's
    // future and with it any search it started (see `recommend`).
    let router = builder
        .layer(observe::ObserveLayer::new(
            served_methods()?.iter().copied(),
            settings.access_log,
        ))
        .layer(auth::AuthLayer::new(settings.auth.clone()))
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted::<tonic::body::Body>,
        ))
        .layer(in_flight.clone())
        .add_service(health)
        .add_optional_service(reflection)
        .add_service(recommender);
    // Without TCP_NODELAY small responses wait for the peer's delayed ACK
    // (measured: a flat ~40 ms added to every RecommendSimilar call).
    // Keepalive notices peers that vanished without closing.
    let incoming = TcpIncoming::from(listeners.grpc)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let grace = settings.shutdown_grace;
    let http = listeners.http.map(|listener| {
        let api = rest::RestState {
            service,
            auth: settings.auth.clone(),
            limit: in_flight,
            max_body: settings.max_message_bytes.saturating_mul(4) / 3 + 64 * 1024,
        };
        let router = web::router(
            web::HttpState {
                phase: readiness.phase.clone(),
                ready: Arc::clone(&ready),
            },
            api,
            settings.ui,
        );
        tokio::spawn(web::serve(
            listener,
            settings.tls.as_ref().map(tls::TlsMaterial::http),
            router,
            close.clone(),
            grace,
        ))
    });
    let task = tokio::spawn(async move {
        let drained = close.clone();
        let serve = router.serve_with_incoming_shutdown(incoming, drained.cancelled_owned());
        tokio::pin!(serve);
        let grpc = tokio::select! {
            result = &mut serve => result.map_err(ServeError::from),
            () = async { close.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight calls did not finish within the grace period; closing");
                Ok(())
            }
        };
        if let Some(http) = http {
            http.await?;
        }
        grpc
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
