//! `lookbook` binary: parse the command line, run it, report errors.
//! Everything else lives in the library so tests drive the same code.

use std::time::Duration;

use clap::Parser;

/// How long the process waits, once the command has returned, for work
/// still running on the blocking pool. The server has drained and dumped
/// within its `shutdown_grace` by then; anything still running is work
/// nobody waits for (an abandoned dump writes to a temporary folder that
/// the next start removes, and every store commit is atomic), so it must
/// not hold up the exit that Kubernetes is counting down to.
const BLOCKING_POOL_GRACE: Duration = Duration::from_millis(250);

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
