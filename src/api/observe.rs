//! One tower layer that observes every gRPC call: request id, span, access
//! log line, call count by status code and latency histogram.
//!
//! Doing it here rather than in each handler means no RPC can be added
//! without being counted, and calls that never reach a handler (shed by the
//! in-flight limit, refused by the token check, over the message limit,
//! cancelled by the client) are counted with the code the caller saw.
//!
//! The status of a successful gRPC call is only known from the trailers at
//! the end of the response body, so the response body is wrapped: the call
//! is recorded when the trailers (or a trailers-only response's headers)
//! have gone by, or as CANCELLED if the body is dropped before its end (the
//! client went away). The span lives until then too, so it covers the
//! whole call, streaming included.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use tonic::{
    Code,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tracing::{Instrument as _, Span, field};

/// Response header (and, if the caller sent one, request header) carrying
/// the id that ties a call to its log lines.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest caller-supplied request id kept; longer (or non-printable) ones
/// are replaced by a generated id, so a caller cannot flood the logs.
const MAX_REQUEST_ID: usize = 128;
/// The method label of paths no service serves: the label set stays
/// bounded whatever paths callers send.
const UNKNOWN_METHOD: &str = "unknown";

#[derive(Debug, Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Every `/package.Service/Method` path served, as label values.
    methods: HashSet<&'static str>,
    access_log: bool,
}

impl ObserveLayer {
    /// `methods`: the full paths of every served RPC.
    pub fn new(methods: impl IntoIterator<Item = &'static str>, access_log: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                methods: methods.into_iter().collect(),
                access_log,
            }),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path();
        let method: &'static str = self
            .shared
            .methods
            .get(path.strip_prefix('/').unwrap_or(path))
            .copied()
            .unwrap_or(UNKNOWN_METHOD);
        let request_id = caller_request_id(request.headers()).unwrap_or_else(new_request_id);
        // Printable ASCII by construction, so this always parses.
        let request_id_header = HeaderValue::from_str(&request_id).ok();
        if let Some(value) = &request_id_header {
            request.headers_mut().insert(REQUEST_ID, value.clone());
        }
        let peer = peer(&request);
        let span = tracing::info_span!(
            "grpc",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
            method,
            peer = peer.as_deref().unwrap_or("-"),
            request_id = %request_id,
            code = field::Empty,
            latency_ms = field::Empty,
        );
        let in_flight = metrics::gauge!("lookbook_grpc_requests_in_flight");
        in_flight.increment(1.0);
        let call = Call {
            started,
            method,
            request_id: request_id.clone(),
            peer: peer.clone(),
            span: span.clone(),
            access_log: self.shared.access_log,
            in_flight,
        };
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = match response.await {
                    Ok(response) => response,
                    Err(error) => {
                        // The transport failed the call; tonic reports it
                        // to the caller, we count it.
                        call.finish(Code::Unknown);
                        return Err(error);
                    }
                };
                if let Some(value) = request_id_header {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                let header_code = grpc_status(response.headers());
                Ok(response.map(|body| {
                    let complete = http_body::Body::is_end_stream(&body);
                    tonic::body::Body::new(Observed {
                        inner: body,
                        header_code,
                        complete,
                        call: Some(call),
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// A call in progress, recorded exactly once.
struct Call {
    started: Instant,
    method: &'static str,
    /// Repeated on the access line itself, so that it stands alone
    /// whatever a log pipeline does with span context.
    request_id: String,
    peer: Option<String>,
    span: Span,
    access_log: bool,
    in_flight: metrics::Gauge,
}

impl Call {
    fn finish(self, code: Code) {
        let latency = self.started.elapsed();
        let code_name = code_name(code);
        self.in_flight.decrement(1.0);
        metrics::counter!(
            "lookbook_grpc_requests_total",
            "method" => self.method,
            "code" => code_name
        )
        .increment(1);
        metrics::histogram!(
            "lookbook_grpc_request_duration_seconds",
            "method" => self.method
        )
        .record(latency.as_secs_f64());
        self.span.record("code", code_name);
        self.span.record("latency_ms", latency.as_secs_f64() * 1e3);
        if self.access_log {
            tracing::info!(
                target: "lookbook::access",
                parent: &self.span,
                method = self.method,
                peer = self.peer.as_deref().unwrap_or("-"),
                request_id = %self.request_id,
                code = code_name,
                latency_ms = latency.as_secs_f64() * 1e3,
                "call"
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body, passed through unchanged; records the call when
    /// its status is known.
    struct Observed<B> {
        #[pin]
        inner: B,
        header_code: Option<Code>,
        // The body was empty and complete when the response was made.
        complete: bool,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(call) = this.call.take() {
                // A trailers-only response (an error, or a refusal before
                // any handler) says it is complete up front, so it is sent
                // with its headers and never polled: its status is in them.
                // Any other body dropped before its end was cancelled: the
                // client went away.
                let code = match this.header_code {
                    Some(code) if *this.complete => *code,
                    Some(_) | None => Code::Cancelled,
                };
                call.finish(code);
            }
        }
    }
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    // A trailers-only response (an error, or a refusal
                    // before any handler) carries its status in the headers.
                    call.finish(this.header_code.unwrap_or(Code::Unknown));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// The caller's `x-request-id` when it is short printable ASCII.
fn caller_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(REQUEST_ID)?.to_str().ok()?;
    let ok = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_owned())
}

/// 128 random bits as 32 hex digits.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The client's address, over TLS or not.
fn peer<B>(request: &http::Request<B>) -> Option<String> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|addr| addr.to_string())
}

/// gRPC's canonical upper-case code names (as in grpc-go and the spec).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_callers_are_kept_only_when_short_and_printable() {
        let mut headers = HeaderMap::new();
        assert_eq!(caller_request_id(&headers), None);
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(caller_request_id(&headers).as_deref(), Some("abc-123"));
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(caller_request_id(&headers), None);
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        headers.insert(REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_eq!(caller_request_id(&headers), None);
        let generated = new_request_id();
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, new_request_id());
    }
}
