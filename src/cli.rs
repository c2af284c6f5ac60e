//! The `lookbook` command line: `serve`, the client-side tools `import`,
//! `similar`, `bench`, `synth`, `load-vectors`, `freshness` and
//! `wait-ready`, the evaluations `eval` and `eval-personal`, and the
//! in-process measurements `bench-encode` and `bench-index` that `make bench`
//! puts next to the Python peers.
//!
//! Client commands talk to a running server through [`crate::api::client`]
//! so they exercise exactly what platform services call; the evaluations
//! run the model, index and shopper state in-process because they measure
//! them, not the transport.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
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
    api::client::{Client, ImportItem, SimilarTo},
    app::Bound,
    config::{Config, Overrides},
    dataset::{self, ARTICLE_TYPE},
    encoder::Encoder,
    eval,
    index::{IndexParams, VectorIndex},
    loadgen::{self, LoadSpec, Rpc},
    perf,
};
use std::io::Write as _;

/// Photos sent per `AddProducts` stream item batch; the server commits in
/// its own batches, this only bounds how many files are read ahead.
const READ_AHEAD: usize = 16;
/// Client-side message limit; matches the server's default.
const CLIENT_MAX_MESSAGE: usize = 32 * 1024 * 1024;

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
    /// Closed-loop load against a running server: QPS and latency percentiles.
    Bench {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, value_enum, default_value = "similar")]
        rpc: Rpc,
        /// Catalogue folder: its ids are the `similar` queries, its photos the `embed` payloads.
        #[arg(long)]
        catalog: PathBuf,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Measured seconds (after warm-up).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[arg(short, default_value_t = 10)]
        k: u32,
        /// `user`: synthetic shoppers to create and query.
        #[arg(long, default_value_t = 32)]
        shoppers: usize,
        /// `user`: interactions recorded per shopper before the run.
        #[arg(long, default_value_t = 500)]
        history: usize,
        /// HTTP/2 connections the load is spread over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Also write the figures as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Grow a running server's catalogue to TOTAL products with synthetic
    /// products clustered like the real ones (noisy copies of real embeddings).
    Synth {
        #[command(flatten)]
        server: ServerArg,
        /// Catalogue folder whose (already imported) products are the cluster centres.
        #[arg(long)]
        catalog: PathBuf,
        #[arg(long)]
        total: usize,
        /// Norm of the noise added to each copied embedding.
        #[arg(long, default_value_t = 0.35)]
        noise: f32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Measure precision@1/5/10 (same articleType) and HNSW recall@10 on a catalogue folder.
    Eval {
        dir: PathBuf,
        /// Evaluate only the first N products.
        #[arg(long)]
        limit: Option<usize>,
        /// Also write the embeddings to PREFIX.f32 (row-major little-endian
        /// f32) and PREFIX.ids (one product id per line).
        #[arg(long)]
        export: Option<PathBuf>,
        /// Also write the figures as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Encoder throughput on a catalogue's photos, in-process: images/s,
    /// latency per call and the decode/resize/normalise/inference split.
    BenchEncode {
        dir: PathBuf,
        /// Photos used (read into memory first).
        #[arg(long, default_value_t = 512)]
        limit: usize,
        /// Images per call, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        batch: Vec<usize>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Index build time, memory and QPS/recall@10 sweep on a dataset written by
    /// `bench/peers/make_vectors.py`.
    BenchIndex {
        data: PathBuf,
        #[arg(long, default_value_t = 16)]
        m: usize,
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
        ef_search: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Load a dataset's base vectors into a running server through
    /// AddProducts with precomputed embeddings (ids from its ids.txt).
    LoadVectors {
        data: PathBuf,
        #[command(flatten)]
        server: ServerArg,
        /// Skip the first N rows (e.g. real products already imported with photos).
        #[arg(long, default_value_t = 0)]
        skip: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time from AddProduct's reply until the product is returned by a query.
    Freshness {
        /// Dataset whose query vectors become the new products.
        data: PathBuf,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Evaluate personalized recommendations on simulated shoppers built
    /// from the catalogue's labels (prints a Markdown report).
    EvalPersonal {
        dir: PathBuf,
        #[arg(long, default_value_t = 600)]
        shoppers: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Embeddings of the photos are cached here between runs.
        #[arg(long, default_value = ".cache/eval/embeddings.bin")]
        cache: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ServerArg {
    /// gRPC address of a running lookbook server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { listen, data_dir } => {
            let config = Config::load(cli.config.as_deref(), &Overrides { listen, data_dir })?;
            crate::telemetry::init(&config.telemetry);
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
        } => import(&dir, &server.server, limit, json.as_deref()).await,
        Command::WaitReady { server, timeout } => {
            wait_ready(&server.server, Duration::from_secs_f64(timeout.max(0.0))).await
        }
        Command::Similar {
            server,
            product,
            image,
            k,
        } => similar(&server.server, product, image, k).await,
        Command::Bench {
            server,
            rpc,
            catalog,
            concurrency,
            duration,
            warmup,
            k,
            shoppers,
            history,
            connections,
            json,
        } => {
            let spec = LoadSpec {
                rpc,
                concurrency: concurrency.max(1),
                warmup: Duration::from_secs_f64(warmup.max(0.0)),
                duration: Duration::from_secs_f64(duration.max(0.1)),
                k,
                shoppers: shoppers.max(1),
                connections: connections.max(1),
            };
            bench(&server.server, &catalog, &spec, history, json.as_deref()).await
        }
        Command::Synth {
            server,
            catalog,
            total,
            noise,
            seed,
        } => synth(&server.server, &catalog, total, noise, seed).await,
        Command::Eval {
            dir,
            limit,
            export,
            json,
        } => {
            let config = local_config(cli.config.as_deref())?;
            evaluate(&config, &dir, limit, export.as_deref(), json.as_deref()).await
        }
        Command::BenchEncode {
            dir,
            limit,
            batch,
            json,
        } => {
            let config = local_config(cli.config.as_deref())?;
            bench_encode(&config, &dir, limit, batch, json).await
        }
        Command::BenchIndex {
            data,
            m,
            ef_construction,
            ef_search,
            threads,
            json,
        } => {
            let params = IndexParams {
                max_nb_connection: m,
                ef_construction,
                ..IndexParams::default()
            };
            params.validate()?;
            let report = tokio::task::spawn_blocking(move || {
                let dataset = perf::Dataset::load(&data, true)?;
                perf::bench_index(&dataset, params, &ef_search, &threads)
            })
            .await??;
            let mut out = std::io::stdout().lock();
            for r in &report.runs {
                writeln!(
                    out,
                    "lookbook {} n={}: ef={:<4} threads={} qps={:>9.1} recall@10={:.4}",
                    report.scale, report.n, r.ef_search, r.threads, r.qps, r.recall_at_10
                )?;
            }
            writeln!(
                out,
                "build {:.1} s, {:.0} bytes/vector (raw {})",
                report.build_seconds, report.memory_bytes_per_vector, report.raw_vector_bytes
            )?;
            emit(json.as_deref(), &report)
        }
        Command::LoadVectors {
            data,
            server,
            skip,
            json,
        } => {
            let dataset = load_dataset(data.clone(), false).await?;
            let mut client = Client::connect(&server.server, CLIENT_MAX_MESSAGE).await?;
            let report = perf::ingest_vectors(&mut client, &data, &dataset, skip).await?;
            writeln!(
                std::io::stdout().lock(),
                "added {} products with embeddings in {:.1} s ({:.0}/s)",
                report.products,
                report.seconds,
                report.products_per_second
            )?;
            emit(json.as_deref(), &report)
        }
        Command::Freshness {
            data,
            server,
            count,
            json,
        } => {
            let dataset = load_dataset(data, false).await?;
            let mut client = Client::connect(&server.server, CLIENT_MAX_MESSAGE).await?;
            let report = perf::freshness(&mut client, &dataset, count).await?;
            writeln!(
                std::io::stdout().lock(),
                "{} of {} new products were returned by the first query after AddProduct replied; reply to visible p50 {:.2} ms, max {:.2} ms; \
                 unrestricted graph search returned {} first at once, {} when repeated, missed {}",
                report.visible_on_first_query,
                report.products,
                report.reply_to_visible_ms.p50,
                report.max_ms,
                report.graph_top1_first_query,
                report.graph_found_when_repeated,
                report.graph_missed.len()
            )?;
            emit(json.as_deref(), &report)
        }
        Command::EvalPersonal {
            dir,
            shoppers,
            seed,
            k,
            cache,
        } => {
            let config = local_config(cli.config.as_deref())?;
            let spec = crate::eval_personal::Spec {
                shoppers: shoppers.max(3),
                seed,
                k: k.max(1),
                cache,
            };
            let report = crate::eval_personal::run(&config, &dir, &spec).await?;
            use std::io::Write;
            write!(std::io::stdout().lock(), "{}", report.markdown())?;
            Ok(())
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let bound = Bound::bind(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        }
    });
    bound.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn import(dir: &Path, server: &str, limit: Option<usize>, json: Option<&Path>) -> Result<()> {
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
    let mut client = Client::connect(server, CLIENT_MAX_MESSAGE).await?;
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
    emit(
        json,
        &perf::IngestReport {
            products: total as usize,
            seconds: secs,
            products_per_second: total as f64 / secs.max(1e-9),
        },
    )
}

/// Polls the health service every 50 ms until SERVING or `timeout`.
async fn wait_ready(server: &str, timeout: Duration) -> Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not reached yet");
    while Instant::now() < deadline {
        match tonic::transport::Endpoint::from_shared(server.to_owned())?
            .connect()
            .await
        {
            Ok(channel) => match HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
                Ok(r) => last = format!("status {:?}", r.get_ref().status()),
                Err(status) => last = status.message().to_owned(),
            },
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{server} did not report SERVING within {timeout:?} ({last})")
}

async fn similar(
    server: &str,
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
    let mut client = Client::connect(server, CLIENT_MAX_MESSAGE).await?;
    let hits = client.similar(to, k).await?;
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "#",
        "product",
        "score",
        "articleType",
        "baseColour",
        "name",
    ]);
    for (i, h) in hits.iter().enumerate() {
        let attr = |k: &str| h.attributes.get(k).cloned().unwrap_or_default();
        table.add_row([
            (i + 1).to_string(),
            h.id.clone(),
            format!("{:.4}", h.score),
            attr(ARTICLE_TYPE),
            attr("baseColour"),
            attr("productDisplayName"),
        ]);
    }
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{table}")?;
    Ok(())
}

async fn evaluate(
    config: &Config,
    dir: &Path,
    limit: Option<usize>,
    export: Option<&Path>,
    json: Option<&Path>,
) -> Result<()> {
    let (mut entries, _) = dataset::read_catalog(dir)?;
    if let Some(limit) = limit {
        entries.truncate(limit);
    }
    let encoder_config = config.encoder();
    let params = config.index_params();
    let report = tokio::task::spawn_blocking(move || -> Result<_> {
        let encoder = Encoder::load(&encoder_config)?;
        let started = Instant::now();
        let mut items = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(16) {
            let images = chunk
                .iter()
                .map(|e| {
                    std::fs::read(&e.image)
                        .with_context(|| format!("cannot read {}", e.image.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
            let vectors = encoder.embed_blocking(&refs)?;
            for (e, v) in chunk.iter().zip(vectors) {
                let label = e.attributes.get(ARTICLE_TYPE).cloned().unwrap_or_default();
                items.push((
                    Arc::<str>::from(e.id.as_str()),
                    Arc::<[f32]>::from(v),
                    label,
                ));
            }
        }
        let embed_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let index = VectorIndex::build(
            encoder.dim(),
            params,
            items
                .iter()
                .map(|(id, v, _)| (Arc::clone(id), Arc::clone(v)))
                .collect(),
        )?;
        let build_secs = started.elapsed().as_secs_f64();
        Ok((
            eval::evaluate(&items, &index),
            encoder.model_name().to_owned(),
            embed_secs,
            build_secs,
            items,
        ))
    })
    .await??;
    let (r, model, embed_secs, build_secs, items) = report;
    if let Some(prefix) = export {
        export_embeddings(prefix, &items)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "model {model}: {} products embedded in {embed_secs:.1} s ({:.1} images/s), index built in {build_secs:.2} s",
        r.products,
        r.products as f64 / embed_secs.max(1e-9)
    )?;
    writeln!(
        out,
        "queries: {} products of {} articleTypes with >= {} images",
        r.queries,
        r.classes,
        eval::MIN_CLASS_SIZE
    )?;
    for (k, p) in &r.precision {
        writeln!(out, "precision@{k:<2} (same articleType): {p:.4}")?;
    }
    writeln!(
        out,
        "HNSW recall@10 vs exact search:   {:.4}",
        r.recall_at_10
    )?;
    drop(out);
    emit(
        json,
        &serde_json::json!({
            "model": model,
            "products": r.products,
            "queries": r.queries,
            "classes": r.classes,
            "precision": r.precision.iter().map(|(k, p)| (format!("at_{k}"), *p)).collect::<std::collections::BTreeMap<_, _>>(),
            "recall_at_10": r.recall_at_10,
            "images_per_second": r.products as f64 / embed_secs.max(1e-9),
        }),
    )
}

/// `PREFIX.f32` + `PREFIX.ids`, the format `bench/peers/make_vectors.py` reads.
fn export_embeddings(prefix: &Path, items: &[eval::LabelledVector]) -> Result<()> {
    let with = |ext: &str| prefix.with_extension(ext);
    if let Some(parent) = prefix.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut vectors = Vec::with_capacity(items.iter().map(|(_, v, _)| v.len() * 4).sum());
    let mut ids = String::new();
    for (id, v, _) in items {
        vectors.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        ids.push_str(id);
        ids.push('\n');
    }
    std::fs::write(with("f32"), vectors)
        .with_context(|| format!("cannot write {}", with("f32").display()))?;
    std::fs::write(with("ids"), ids)
        .with_context(|| format!("cannot write {}", with("ids").display()))?;
    Ok(())
}

/// Configuration for the in-process commands (model, index), with tracing
/// set up from it; no command-line overrides apply to them.
fn local_config(file: Option<&Path>) -> Result<Config> {
    let config = Config::load(file, &Overrides::default())?;
    crate::telemetry::init(&config.telemetry);
    Ok(config)
}

/// Writes a report as JSON when a path was given.
fn emit(json: Option<&Path>, report: &impl serde::Serialize) -> Result<()> {
    match json {
        Some(path) => perf::write_json(path, report),
        None => Ok(()),
    }
}

async fn load_dataset(dir: PathBuf, with_truth: bool) -> Result<perf::Dataset> {
    tokio::task::spawn_blocking(move || perf::Dataset::load(&dir, with_truth)).await?
}

async fn bench_encode(
    config: &Config,
    dir: &Path,
    limit: usize,
    batches: Vec<usize>,
    json: Option<PathBuf>,
) -> Result<()> {
    let (entries, _) = dataset::read_catalog(dir)?;
    let photos = perf::read_photos(entries.iter().map(|e| &e.image), limit)?;
    let mut encoder_config = config.encoder();
    // Each measured call is to be one model run of its batch size (the
    // calls run one at a time, so nothing else is coalesced with them).
    let largest = batches.iter().copied().max().unwrap_or(1);
    encoder_config.batch_max_images = encoder_config.batch_max_images.max(largest);
    encoder_config.max_batch = encoder_config.max_batch.max(largest);
    let report = tokio::task::spawn_blocking(move || -> Result<_> {
        let encoder = Encoder::load(&encoder_config)?;
        perf::bench_encode(&encoder, &photos, &batches)
    })
    .await??;
    let mut out = std::io::stdout().lock();
    for r in &report.runs {
        let s = &r.split_share;
        writeln!(
            out,
            "{} batch {:>2}: {:.1} images/s, p50 {:.1} ms, p99 {:.1} ms per call; decode {:.1}% resize {:.1}% normalise {:.1}% inference {:.1}%",
            report.model,
            r.batch,
            r.images_per_second,
            r.latency_ms.p50,
            r.latency_ms.p99,
            s.decode * 100.0,
            s.resize * 100.0,
            s.normalise * 100.0,
            s.inference * 100.0
        )?;
    }
    drop(out);
    emit(json.as_deref(), &report)
}

async fn bench(
    server: &str,
    catalog: &Path,
    spec: &LoadSpec,
    history: usize,
    json: Option<&Path>,
) -> Result<()> {
    let (entries, _) = dataset::read_catalog(catalog)?;
    if entries.is_empty() {
        bail!("{} lists no products with an image", catalog.display());
    }
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let images = match spec.rpc {
        Rpc::Embed => entries
            .iter()
            .take(256)
            .map(|e| {
                std::fs::read(&e.image)
                    .map(Bytes::from)
                    .with_context(|| format!("cannot read {}", e.image.display()))
            })
            .collect::<Result<Vec<_>>>()?,
        Rpc::Similar | Rpc::User => Vec::new(),
    };
    let mut client = Client::connect(server, CLIENT_MAX_MESSAGE).await?;
    if spec.rpc == Rpc::User {
        let items = loadgen::shopper_histories(&ids, spec.shoppers, history, 7);
        let started = Instant::now();
        let (recorded, failed, errors) = client
            .record_interactions(futures::stream::iter(items))
            .await?;
        if failed > 0 {
            bail!("{failed} interactions failed, e.g. {:?}", errors.first());
        }
        use std::io::Write;
        writeln!(
            std::io::stdout().lock(),
            "recorded {recorded} interactions ({} shoppers x {history}) in {:.1} s through RecordInteractions",
            spec.shoppers,
            started.elapsed().as_secs_f64()
        )?;
    }
    let mut clients = vec![client];
    for _ in 1..spec.connections {
        clients.push(Client::connect(server, CLIENT_MAX_MESSAGE).await?);
    }
    let r = loadgen::run(&clients, spec, Arc::new(ids), Arc::new(images)).await?;
    use std::io::Write;
    writeln!(
        std::io::stdout().lock(),
        "rpc={:?} concurrency={} duration={:.0}s requests={} errors={} qps={:.1} p50={:.3}ms p95={:.3}ms p99={:.3}ms max={:.3}ms",
        spec.rpc,
        spec.concurrency,
        r.seconds,
        r.requests,
        r.errors,
        r.qps,
        r.p50,
        r.p95,
        r.p99,
        r.max
    )?;
    emit(json, &r)
}

async fn synth(server: &str, catalog: &Path, total: usize, noise: f32, seed: u64) -> Result<()> {
    let (entries, _) = dataset::read_catalog(catalog)?;
    let mut client = Client::connect(server, CLIENT_MAX_MESSAGE).await?;
    let mut bases = Vec::with_capacity(entries.len());
    for e in &entries {
        if let Some((attrs, v)) = client.product(&e.id).await? {
            bases.push((e.id.clone(), attrs, v));
        }
    }
    if bases.is_empty() {
        bail!(
            "none of the products in {} is in the server's catalogue; import it first",
            catalog.display()
        );
    }
    let current = client.stats().await?.catalog_size as usize;
    let count = total.saturating_sub(current);
    // Ids continue from the catalogue's size and the seed moves with it, so
    // that a later run (growing further, or resuming an interrupted one)
    // adds new products rather than writing syn-0, syn-1, ... again.
    let items = loadgen::synthesize(&bases, current, count, noise, seed ^ current as u64);
    let summary = client
        .import_embeddings(futures::stream::iter(items))
        .await?;
    use std::io::Write;
    writeln!(
        std::io::stdout().lock(),
        "added {} synthetic products around {} real ones (noise {noise}); catalogue size {}",
        summary.added,
        bases.len(),
        summary.catalog_size
    )?;
    Ok(())
}
