//! OpenTelemetry export: with `telemetry.otlp_endpoint` set, the span of
//! each call reaches an OTLP/gRPC collector. The collector here is a bare
//! HTTP/2 server that records what is posted to the trace service and
//! answers OK, so the test needs no collector binary. Its own test binary,
//! because the tracing subscriber (with the OTLP layer) is per process.

mod common;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming};
use lookbook::{api::proto, config::TelemetryConfig};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Accepts gRPC calls on `listener`, keeps the bodies posted to the trace
/// service's Export, and answers each with an empty ExportTraceServiceResponse.
async fn collector(listener: tokio::net::TcpListener, received: Arc<Mutex<Vec<Bytes>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let received = Arc::clone(&received);
                async move {
                    let path = request.uri().path().to_owned();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if path == EXPORT_PATH {
                        received.lock().expect("lock").push(body);
                    }
                    // One gRPC frame: not compressed, zero-length message.
                    let response = Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_calls_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let received = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(collector(listener, Arc::clone(&received)));

    let telemetry = lookbook::telemetry::init(&TelemetryConfig {
        otlp_endpoint: endpoint,
        otlp_service_name: "lookbook-under-test".to_owned(),
        log_filter: "warn,lookbook=info".to_owned(),
        ..TelemetryConfig::default()
    })
    .expect("OTLP exporter set-up");

    let dir = tempfile::tempdir().expect("tempdir");
    // The subscriber with the OTLP layer is installed above; the server's
    // own `init` finds it in place.
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    client
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("stats");
    server.stop().await;
    // Flushes the batch (it would otherwise go out on its 5 s timer).
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let exported: Vec<u8> = received
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|b| b.to_vec())
            .collect();
        let contains = |needle: &str| {
            exported
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        if contains("lookbook.v1.RecommenderService/GetStats") {
            assert!(
                contains("lookbook-under-test"),
                "the service name is exported"
            );
            assert!(contains("request_id"), "the span's fields are exported");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span of the call reached the collector ({} bytes received)",
            exported.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
