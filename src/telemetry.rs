//! Logging set-up: `tracing` with a configurable filter, as text for people
//! or JSON lines for log pipelines. Logs go to stderr so that command output
//! (tables, summaries) on stdout stays clean.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. Calling it twice is harmless (the second
/// call is ignored), which lets tests start several servers in one process.
pub fn init(cfg: &TelemetryConfig) {
    // `Config::validate` already parsed this directive, so falling back to
    // "info" only happens if a caller skipped validation.
    let filter = EnvFilter::try_new(&cfg.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.log_format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
