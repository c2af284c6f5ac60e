//! The HTTP port (`http.listen`): everything that is not gRPC, as Qdrant
//! does it: `/livez`, `/readyz` and `/metrics`, on the same TLS as gRPC.
//!
//! - `/livez` answers 200 from the first second to the last: the process
//!   is up and its runtime schedules work. It does not wait for the model
//!   or the index, so a liveness probe cannot kill a pod that is loading a
//!   large catalogue, however long that takes.
//! - `/readyz` answers 200 only while the recommender is SERVING: 503 while
//!   loading and from the moment a shutdown starts, so load balancers stop
//!   routing to a pod before its listeners close.
//! - `/metrics` is the Prometheus text format. Gauges of state (products,
//!   dead points, shoppers) are read at scrape time, so they are never
//!   stale.
//!
//! None of these needs a token: probes and scrapers carry none, and what
//! they show is operational, not catalogue data. The same port serves the
//! HTTP/JSON API and the page (`rest`), which do check tokens. The server is hyper's,
//! with a bound on open connections, a header-read timeout and, with TLS,
//! a handshake timeout; it drains like the gRPC server.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Phase, ReadyCell, tls::HANDSHAKE_TIMEOUT};

/// Open HTTP connections; further ones are closed at once. Probes and a
/// scraper need a handful; this leaves room for the JSON API's callers.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request headers within this, so slow or idle
/// connections cannot pile up against the connection bound.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub(crate) struct HttpState {
    pub(crate) phase: Phase,
    pub(crate) ready: ReadyCell,
}

/// Health and metrics, the JSON API (`rest`) and, with `ui`, the page.
pub(crate) fn router(state: HttpState, api: super::rest::RestState, ui: bool) -> Router {
    // The API reads bodies itself with its own bound (`RestState::max_body`);
    // axum's default limit would cut multipart uploads at 2 MB first.
    let body_limit = axum::extract::DefaultBodyLimit::max(api.max_body);
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(super::rest::router(api, ui))
        .fallback(super::rest::not_found)
        .layer(body_limit)
        .layer(middleware::from_fn(count))
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.phase.get() {
        super::PhaseValue::Serving => (StatusCode::OK, "ready\n").into_response(),
        super::PhaseValue::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the model and index\n",
        )
            .into_response(),
        super::PhaseValue::Draining => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let handle = crate::telemetry::metrics();
    if let Some(ready) = state.ready.get() {
        let stats = ready.recommender.catalog().stats();
        metrics::gauge!("lookbook_catalog_products").set(stats.catalog_size as f64);
        metrics::gauge!("lookbook_index_points")
            .set((stats.catalog_size + stats.deleted_pending) as f64);
        metrics::gauge!("lookbook_index_dead_points").set(stats.deleted_pending as f64);
        let personalizer = ready.recommender.personalizer();
        metrics::gauge!("lookbook_shoppers_resident").set(personalizer.resident_shoppers() as f64);
        metrics::gauge!("lookbook_shoppers_total").set(personalizer.shoppers() as f64);
    }
    metrics::gauge!("lookbook_ready").set(match state.phase.get() {
        super::PhaseValue::Serving => 1.0,
        super::PhaseValue::Loading | super::PhaseValue::Draining => 0.0,
    });
    // Histograms are drained into their buckets on upkeep; doing it per
    // scrape keeps them current without a timer task.
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Counts requests by route (the matched pattern, so the label set is
/// bounded) and status.
async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics::counter!(
        "lookbook_http_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Serves `router` on `listener` until `close` fires, then lets open
/// requests finish for at most `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    close: CancellationToken,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather
                    // than spin, then keep serving.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = close.cancelled() => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "HTTP connection refused: too many open");
            metrics::counter!("lookbook_shed_total", "bound" => "http_connections").increment(1);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let result =
                match tls {
                    None => {
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(connection).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(connection).await
                    }
                };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "HTTP connections did not close within the grace period");
        }
    }
}
