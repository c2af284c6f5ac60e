//! `lookbook` binary: parse the command line, run it, report errors.
//! Everything else lives in the library so tests drive the same code.

use clap::Parser;

/// jemalloc with background purging (the `background_threads` feature) hands
/// memory freed after a burst back to the system; glibc malloc kept it. One
/// AddProducts stream of 40 generated 13.5 MB JPEGs
/// (`examples/burst_rss.rs`) left the server at: glibc, VmRSS 85 MiB before,
/// 676 MiB peak, 569 MiB still 30 s after; jemalloc, 110 MiB before, 773 MiB
/// peak, 208 MiB 10 s after (jemalloc's default 10 s decay). glibc's
/// `malloc_trim` would need `unsafe` FFI, which this crate forbids.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = lookbook::cli::Cli::parse();
    match lookbook::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Also printed (not only logged) because a config error happens
            // before logging is set up.
            tracing::error!("{error:#}");
            eprintln!("lookbook: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
