//! Logs, metrics and traces.
//!
//! - Logs: `tracing` with a configurable filter, as text for people or JSON
//!   lines for log pipelines, on stderr so that command output on stdout
//!   stays clean.
//! - Metrics: the `metrics` facade, recorded where things happen (the
//!   core records its own timings without knowing who reads them) and
//!   rendered in the Prometheus text format by the HTTP port's `/metrics`.
//!   One process-wide recorder, installed on first use.
//! - Traces: optionally exported over OTLP/gRPC (`telemetry.otlp_endpoint`)
//!   from the same `tracing` spans, so the per-request span the API opens
//!   becomes the trace's root span.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{LogFormat, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Otlp {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Latency buckets (seconds) shared by every `*_seconds` histogram: from
/// half a millisecond (a cached similar-products query) to five minutes (a
/// rebuild of a large index).
const SECONDS_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
/// Images per model run: the encoder's batches are powers of two at most.
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call.
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("lookbook_encoder_batch_images".to_owned()),
                    &BATCH_BUCKETS,
                )
            });
        // Only an empty bucket list is refused, and both lists are constants.
        let builder = match builder {
            Ok(builder) => builder,
            Err(error) => {
                tracing::error!(%error, "histogram buckets refused; using summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Another recorder (an embedding program's) owns the facade;
            // `/metrics` then shows only what is described, never values.
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// HELP lines for every series the service records.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "lookbook_grpc_requests_total",
        "gRPC calls answered, by method and status code"
    );
    describe_histogram!(
        "lookbook_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC call latency from request headers to the end of the response"
    );
    describe_gauge!(
        "lookbook_grpc_requests_in_flight",
        "gRPC calls being served"
    );
    describe_counter!(
        "lookbook_http_requests_total",
        "HTTP requests answered, by route and status"
    );
    describe_counter!(
        "lookbook_shed_total",
        "calls refused with RESOURCE_EXHAUSTED because a bound was reached, by bound"
    );
    describe_counter!(
        "lookbook_auth_failures_total",
        "calls refused by token checks, by code"
    );
    describe_gauge!(
        "lookbook_encoder_queue_depth",
        "images waiting for an inference worker"
    );
    describe_histogram!(
        "lookbook_encoder_batch_images",
        "images per model run (dynamic batching)"
    );
    describe_histogram!(
        "lookbook_encoder_decode_seconds",
        Unit::Seconds,
        "decode, resize and normalise time per image"
    );
    describe_histogram!(
        "lookbook_encoder_inference_seconds",
        Unit::Seconds,
        "model run time per batch"
    );
    describe_gauge!(
        "lookbook_index_points",
        "points in the vector index, dead ones included"
    );
    describe_gauge!(
        "lookbook_index_dead_points",
        "deleted or replaced points awaiting a rebuild"
    );
    describe_gauge!("lookbook_catalog_products", "products in the catalogue");
    describe_counter!(
        "lookbook_index_rebuilds_total",
        "background index rebuilds, by result"
    );
    describe_histogram!(
        "lookbook_index_rebuild_duration_seconds",
        Unit::Seconds,
        "duration of completed background rebuilds"
    );
    describe_counter!(
        "lookbook_index_checkpoints_total",
        "index checkpoints (dumps) written, by result"
    );
    describe_histogram!(
        "lookbook_index_checkpoint_duration_seconds",
        Unit::Seconds,
        "duration of index checkpoints, reachability repair included"
    );
    describe_histogram!(
        "lookbook_store_commit_duration_seconds",
        Unit::Seconds,
        "durable store transactions, by what they commit"
    );
    describe_counter!(
        "lookbook_interactions_recorded_total",
        "shopper interactions committed, by action"
    );
    describe_gauge!(
        "lookbook_shoppers_resident",
        "shoppers whose state is held in memory"
    );
    describe_gauge!("lookbook_shoppers_total", "shoppers known to the store");
    describe_gauge!(
        "lookbook_ready",
        "1 once the model and index are loaded and the server is SERVING"
    );
    describe_gauge!(
        "lookbook_cluster_lag_events",
        "cluster mode: events in the replicated log this replica has not applied"
    );
    describe_gauge!(
        "lookbook_cluster_lag_seconds",
        Unit::Seconds,
        "cluster mode: age of the newest applied event while events wait (0 when caught up)"
    );
    describe_gauge!(
        "lookbook_cluster_applied_sequence",
        "cluster mode: the last log sequence applied to the store and memory"
    );
    describe_counter!(
        "lookbook_cluster_skipped_events_total",
        "cluster mode: events every replica skips alike (undecodable, unusable vector)"
    );
}

/// What must outlive serving: the trace exporter, flushed on drop.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Sends the spans still buffered. Blocks (up to the exporter's
    /// timeout), so async callers run it on the blocking pool.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.tracer.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace export did not flush");
        }
    }
}

/// Installs the global subscriber (logs, and traces when configured) and
/// the metrics recorder. Calling it twice is harmless (the second
/// subscriber is ignored), which lets tests start several servers in one
/// process. Must run inside the Tokio runtime when OTLP export is on.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    metrics();
    // `Config::validate` already parsed this directive, so falling back to
    // "info" only happens if a caller skipped validation.
    let filter = EnvFilter::try_new(&cfg.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match cfg.log_format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let endpoint = cfg.otlp_endpoint.trim();
    let (otel_layer, tracer) = if endpoint.is_empty() {
        (None, None)
    } else {
        let provider = otlp_provider(endpoint, &cfg.otlp_service_name)?;
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("lookbook"));
        (Some(layer), Some(provider))
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    } else if tracer.is_some() {
        tracing::info!(endpoint, "exporting traces over OTLP");
    }
    Ok(TelemetryGuard { tracer })
}

/// How long one OTLP export may take before it is abandoned; spans of a
/// collector that is down are dropped rather than piling up.
const OTLP_TIMEOUT: Duration = Duration::from_secs(5);

fn otlp_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(OTLP_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Otlp {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let exporter = OnRuntime {
        inner: exporter,
        runtime: tokio::runtime::Handle::current(),
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// Runs a tonic-based exporter on the service's runtime. The SDK's batch
/// processor exports from a plain OS thread with a minimal executor, but
/// tonic's connections need Tokio's reactor: without this, the export
/// thread panics ("there is no reactor running") and every span is lost.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let export = self.inner.export(batch);
        if tokio::runtime::Handle::try_current().is_ok() {
            export.await
        } else {
            self.runtime.block_on(export)
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
