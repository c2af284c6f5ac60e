//! The `lookbook` command line: `serve` and `check` for the server's host,
//! and the client commands an operator uses against a running server:
//! `import`, `similar`, `get`, `delete`, `stats`, `for-user`, `forget`,
//! `wait-ready`. Benchmarks and evaluations live in the separate
//! `lookbook-bench` binary (the `tooling` feature), so the server binary
//! and its image carry only what serves.
//!
//! Client commands talk to a running server through [`crate::api::client`]
//! so they exercise exactly what platform services call. Their connection
//! options also come from the environment (`LOOKBOOK_SERVER`,
//! `LOOKBOOK_CA_CERT`, `LOOKBOOK_TOKEN`, ...); the token only from there,
//! so it never shows in a process listing.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::{
    api::client::{self, Client, ClientOptions, Hit, ImportItem, SimilarTo},
    app::Bound,
    config::{Config, Overrides},
    dataset::{self, ARTICLE_TYPE},
};
use std::io::Write as _;

/// Photos sent per `AddProducts` stream item batch; the server commits in
/// its own batches, this only bounds how many files are read ahead.
const READ_AHEAD: usize = 16;
/// Client-side message limit; matches the server's default.
pub const CLIENT_MAX_MESSAGE: usize = 32 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "lookbook",
    version,
    about = "Visual and personalized product recommendations over gRPC"
)]
pub struct Cli {
    /// Configuration file (default: ./lookbook.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve {
        /// Address to listen on [default: 0.0.0.0:50051].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where the store and index dump live [default: ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Verify a data directory offline (the server must be stopped): every
    /// stored row's checksum and vector, the shopper tables, the index dump.
    /// Exits non-zero if stored data is damaged.
    Check {
        /// The data directory [default: storage.data_dir].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Bulk-load a catalogue folder (images/<id>.jpg + styles.csv) into a running server.
    Import {
        dir: PathBuf,
        #[command(flatten)]
        server: ServerArg,
        /// Import only the first N products.
        #[arg(long)]
        limit: Option<usize>,
        /// Also write the figures as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Wait until a server reports SERVING on the standard gRPC health
    /// service (for scripts); fails after the timeout.
    WaitReady {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Show one product: its attributes and the size of its embedding.
    Get {
        #[command(flatten)]
        server: ServerArg,
        product: String,
    },
    /// Delete a product from the catalogue.
    Delete {
        #[command(flatten)]
        server: ServerArg,
        product: String,
    },
    /// The server's catalogue and index figures.
    Stats {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Recommendations for a shopper.
    ForUser {
        #[command(flatten)]
        server: ServerArg,
        user: String,
        #[arg(short, default_value_t = 10)]
        k: u32,
    },
    /// Erase everything known about a shopper (history and profile).
    Forget {
        #[command(flatten)]
        server: ServerArg,
        user: String,
    },
    /// Print the products most similar to a product or a photo.
    Similar {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        product: Option<String>,
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(short, default_value_t = 10)]
        k: u32,
    },
}

#[derive(Debug, Args)]
pub struct ServerArg {
    /// gRPC address of a running lookbook server (`https://` for TLS).
    #[arg(
        long,
        env = "LOOKBOOK_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// PEM CA that signed the server's certificate (needed for https://).
    #[arg(long, env = "LOOKBOOK_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(
        long,
        env = "LOOKBOOK_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(
        long,
        env = "LOOKBOOK_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Bearer token, only from the environment (`LOOKBOOK_TOKEN`).
    #[arg(skip)]
    pub token: Option<String>,
}

impl ServerArg {
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            max_message_bytes: CLIENT_MAX_MESSAGE,
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            token: self.token.clone(),
        }
    }

    pub async fn connect(&self) -> Result<Client> {
        Ok(Client::connect_with(&self.server, &self.options()).await?)
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let mut command = cli.command;
    if let Some(server) = command.server_mut() {
        server.token = crate::config::client_token();
    }
    match command {
        Command::Serve { listen, data_dir } => {
            let config = Config::load(cli.config.as_deref(), &Overrides { listen, data_dir })?;
            serve(config).await
        }
        Command::Check { data_dir } => {
            let config = Config::load(
                cli.config.as_deref(),
                &Overrides {
                    listen: None,
                    data_dir,
                },
            )?;
            let dir = config.storage.data_dir.clone();
            let report = tokio::task::spawn_blocking(move || {
                crate::catalog::check(&dir, config.index_params())
            })
            .await??;
            let mut out = std::io::stdout().lock();
            write!(out, "{report}")?;
            if report.store_is_damaged() {
                anyhow::bail!("the store holds damaged data (listed above)");
            }
            Ok(())
        }
        Command::Import {
            dir,
            server,
            limit,
            json,
        } => import(&dir, &server, limit, json.as_deref()).await,
        Command::WaitReady { server, timeout } => {
            wait_ready(&server, Duration::from_secs_f64(timeout.max(0.0))).await
        }
        Command::Similar {
            server,
            product,
            image,
            k,
        } => similar(&server, product, image, k).await,
        Command::Get { server, product } => {
            let mut client = server.connect().await?;
            match client.product(&product).await? {
                Some((attributes, embedding)) => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "product {product}: {}-d embedding", embedding.len())?;
                    for (key, value) in attributes {
                        writeln!(out, "  {key} = {value}")?;
                    }
                    Ok(())
                }
                None => bail!("product {product} is not in the catalogue"),
            }
        }
        Command::Delete { server, product } => {
            let deleted = server.connect().await?.delete(&product).await?;
            if !deleted {
                bail!("product {product} was not in the catalogue");
            }
            writeln!(std::io::stdout().lock(), "deleted {product}")?;
            Ok(())
        }
        Command::Stats { server } => {
            let s = server.connect().await?.stats().await?;
            writeln!(
                std::io::stdout().lock(),
                "products {}\nmodel {} ({}-d)\ndead index points {}\nindex from checkpoint {}\nrebuilds {}",
                s.catalog_size,
                s.model,
                s.dim,
                s.deleted_pending,
                s.index_from_dump,
                s.index_rebuilds
            )?;
            Ok(())
        }
        Command::ForUser { server, user, k } => {
            let hits = server.connect().await?.for_user(&user, k).await?;
            print_hits(&hits, true)
        }
        Command::Forget { server, user } => {
            let (forgotten, erased) = server.connect().await?.forget(&user).await?;
            writeln!(
                std::io::stdout().lock(),
                "{}",
                if forgotten {
                    format!("forgot {user}: {erased} interactions erased")
                } else {
                    format!("nothing was known about {user}")
                }
            )?;
            Ok(())
        }
    }
}

impl Command {
    fn server_mut(&mut self) -> Option<&mut ServerArg> {
        match self {
            Self::Import { server, .. }
            | Self::WaitReady { server, .. }
            | Self::Get { server, .. }
            | Self::Delete { server, .. }
            | Self::Stats { server }
            | Self::ForUser { server, .. }
            | Self::Forget { server, .. }
            | Self::Similar { server, .. } => Some(server),
            Self::Serve { .. } | Self::Check { .. } => None,
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let telemetry = crate::telemetry::init(&config.telemetry)?;
    let bound = Bound::bind(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(shutdown.clone()));
    let result = bound.run(shutdown).await;
    // Flushes buffered spans; blocking, so off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The first SIGTERM (Kubernetes) or Ctrl-C starts a graceful shutdown; a
/// second one exits at once, without draining or writing the index dump
/// (an operator who asks twice means it; the next start recovers from the
/// last checkpoint and the store like after a crash).
async fn on_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "cannot listen for signals; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received; a second one exits at once");
        shutdown.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second shutdown signal: exiting without draining");
        eprintln!("lookbook: second shutdown signal: exiting without draining");
        std::process::exit(EXIT_SECOND_SIGNAL);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}

/// Exit status after a second signal: 128 + SIGTERM, as a shell reports a
/// process killed by it.
pub const EXIT_SECOND_SIGNAL: i32 = 143;

async fn import(
    dir: &Path,
    server: &ServerArg,
    limit: Option<usize>,
    json: Option<&Path>,
) -> Result<()> {
    let (mut entries, missing) = dataset::read_catalog(dir)?;
    if let Some(limit) = limit {
        entries.truncate(limit);
    }
    if entries.is_empty() {
        bail!(
            "{} lists no products with an image",
            dir.join("styles.csv").display()
        );
    }
    let mut client = server.connect().await?;
    let bar = ProgressBar::new(entries.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} products  {per_sec}  eta {eta}")
            .context("progress bar template")?,
    );
    let started = Instant::now();
    let progress = bar.clone();
    let items = futures::stream::iter(entries)
        .map(|e| async move {
            match tokio::fs::read(&e.image).await {
                Ok(bytes) => Some(ImportItem {
                    id: e.id,
                    image: Bytes::from(bytes),
                    attributes: e.attributes,
                }),
                Err(error) => {
                    tracing::warn!(path = %e.image.display(), %error, "skipping unreadable image");
                    None
                }
            }
        })
        .buffered(READ_AHEAD)
        .filter_map(futures::future::ready)
        .inspect(move |_| progress.inc(1));
    let summary = client.import(items).await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let total = summary.added + summary.replaced;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(
        out,
        "imported {total} products ({} new, {} replaced, {} failed, {missing} rows without an image) in {secs:.1} s ({:.1}/s); catalogue size {}",
        summary.added,
        summary.replaced,
        summary.failed,
        total as f64 / secs.max(1e-9),
        summary.catalog_size
    )?;
    for e in &summary.errors {
        writeln!(out, "  error: {e}")?;
    }
    drop(out);
    if let Some(path) = json {
        let report = serde_json::json!({
            "products": total,
            "seconds": secs,
            "products_per_second": total as f64 / secs.max(1e-9),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Polls the health service every 50 ms until SERVING or `timeout`.
async fn wait_ready(server: &ServerArg, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let options = server.options();
    let mut last = String::from("not reached yet");
    while Instant::now() < deadline {
        match client::health(&server.server, &options).await {
            Ok(status) if status == "SERVING" => return Ok(()),
            Ok(status) => last = format!("status {status}"),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} did not report SERVING within {timeout:?} ({last})",
        server.server
    )
}

async fn similar(
    server: &ServerArg,
    product: Option<String>,
    image: Option<PathBuf>,
    k: u32,
) -> Result<()> {
    let to = match (product, image) {
        (Some(id), None) => SimilarTo::Product(id),
        (None, Some(path)) => SimilarTo::Image(Bytes::from(
            tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
        )),
        _ => bail!("give exactly one of --product or --image"),
    };
    let hits = server.connect().await?.similar(to, k).await?;
    print_hits(&hits, false)
}

/// A table of recommendations, with the fashion sample's columns.
fn print_hits(hits: &[Hit], reasons: bool) -> Result<()> {
    let mut table = Table::new();
    let mut header = vec!["#", "product", "score", "articleType", "baseColour", "name"];
    if reasons {
        header.push("reason");
    }
    table.load_style(UTF8_FULL_CONDENSED).set_header(header);
    for (i, h) in hits.iter().enumerate() {
        let attr = |k: &str| h.attributes.get(k).cloned().unwrap_or_default();
        let mut row = vec![
            (i + 1).to_string(),
            h.id.clone(),
            format!("{:.4}", h.score),
            attr(ARTICLE_TYPE),
            attr("baseColour"),
            attr("productDisplayName"),
        ];
        if reasons {
            row.push(h.reason.clone());
        }
        table.add_row(row);
    }
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{table}")?;
    Ok(())
}
