//! `lookbook` binary: parse the command line, run it, report errors.
//! Everything else lives in the library so tests drive the same code.
//! `src/bin/lookbook-bench.rs` is the same for the tooling binary.

use std::time::Duration;

use clap::Parser;

/// How long the process waits, once the command has returned, for work
/// still running on the blocking pool. The server has drained and dumped
/// within its `shutdown_grace` by then; anything still running is work
/// nobody waits for (an abandoned dump writes to a temporary folder that
/// the next start removes, and every store commit is atomic), so it must
/// not hold up the exit that Kubernetes is counting down to.
const BLOCKING_POOL_GRACE: Duration = Duration::from_millis(250);

/// jemalloc with background purging (the `background_threads` feature) hands
/// memory freed after a burst back to the system; glibc malloc kept it. One
/// AddProducts stream of 40 generated 13.5 MB JPEGs
/// (`examples/burst_rss.rs`) left the server at: glibc, VmRSS 85 MiB before,
/// 676 MiB peak, 569 MiB still 30 s after; jemalloc, 110 MiB before, 773 MiB
/// peak, 208 MiB 10 s after (jemalloc's default 10 s decay). glibc's
/// `malloc_trim` would need `unsafe` FFI, which this crate forbids.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = lookbook::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lookbook: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(lookbook::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Also printed (not only logged) because a config error happens
            // before logging is set up.
            tracing::error!("{error:#}");
            eprintln!("lookbook: {error:#}");
            std::process::ExitCode::FAILURE
        }
    };
    runtime.shutdown_timeout(BLOCKING_POOL_GRACE);
    code
}
