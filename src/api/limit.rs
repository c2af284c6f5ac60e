//! The server-wide bound on recommender calls in flight.
//!
//! tonic's own `concurrency_limit_per_connection` + `load_shed` count per
//! connection, so a client that opens many connections (or many clients)
//! is not bounded by them, and tower's `GlobalConcurrencyLimit` queues
//! instead of refusing. This layer counts every call of the server in one
//! semaphore and answers a call past the limit with RESOURCE_EXHAUSTED at
//! once, before any handler runs or any request body is read. Health checks
//! and reflection are not counted: an overloaded server is still alive and
//! serving, and its orchestrator must not restart it for being busy.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;
use tonic::Status;

/// Path prefixes of the calls that are never shed.
const EXEMPT: [&str; 2] = ["/grpc.health.v1.Health/", "/grpc.reflection."];

#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlightLimitLayer {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a call that does not pass through the gRPC stack (the
    /// HTTP/JSON API shares the bound), or the bound when none is free.
    pub fn try_enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, usize> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| self.max)
    }
}

impl<S> tower::Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: Arc::clone(&self.permits),
            max: self.max,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for InFlightLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            tracing::debug!(path, max = self.max, "shed: too many calls in flight");
            metrics::counter!("lookbook_shed_total", "bound" => "in_flight").increment(1);
            let status = Status::resource_exhausted(format!(
                "overloaded: {} calls in flight; retry later",
                self.max
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            // Held until the handler has produced its response (our calls
            // are unary or client-streaming, so the work is done by then).
            let _permit = permit;
            response.await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    /// A service that answers once `release` is notified.
    fn slow(
        release: Arc<tokio::sync::Notify>,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<String>, Infallible>> + Send,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| {
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                Ok::<_, Infallible>(http::Response::new("done".to_owned()))
            }
        })
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .body(())
            .expect("a valid request")
    }

    #[tokio::test]
    async fn calls_past_the_limit_are_refused_at_once_but_health_is_not() {
        let release = Arc::new(tokio::sync::Notify::new());
        let mut service = InFlightLimitLayer::new(1).layer(slow(Arc::clone(&release)));
        let first = tokio::spawn(
            service
                .clone()
                .oneshot(request("/lookbook.v1.RecommenderService/RecommendSimilar")),
        );
        // Let the first call take the only permit.
        while service.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = service
            .ready()
            .await
            .expect("always ready")
            .call(request("/lookbook.v1.RecommenderService/Embed"))
            .await
            .expect("infallible");
        assert_eq!(
            refused.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"8"[..]),
            "RESOURCE_EXHAUSTED"
        );
        let health = tokio::spawn(
            service
                .clone()
                .oneshot(request("/grpc.health.v1.Health/Check")),
        );
        release.notify_waiters();
        // Both the counted call and the exempt one complete normally.
        while !(first.is_finished() && health.is_finished()) {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(first.await.expect("joins").expect("ok").body(), "done");
        assert_eq!(health.await.expect("joins").expect("ok").body(), "done");
        assert_eq!(service.permits.available_permits(), 1, "permit returned");
    }
}
