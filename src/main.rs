//! `lookbook` binary: parse the command line, run it, report errors.
//! Everything else lives in the library so tests drive the same code.

use clap::Parser;

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
