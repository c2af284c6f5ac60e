//! The `lookbook-bench` command line: load and ingest tools against a
//! running server (`bench`, `synth`, `load-vectors`, `freshness`), the
//! retrieval evaluations (`eval`, `eval-personal`) and the in-process
//! measurements `make bench` puts next to the Python peers
//! (`bench-encode`, `bench-index`).
//!
//! Load tools talk to the server through [`crate::api::client`], so they
//! measure exactly what platform services call; the evaluations run the
//! model, index and shopper state in-process because they measure those,
//! not the transport.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};

use super::{
    engines, eval,
    loadgen::{self, LoadSpec, Rpc},
    perf,
};
use crate::{
    cli::ServerArg,
    config::{Config, Overrides},
    dataset::{self, ARTICLE_TYPE},
    encoder::Encoder,
    index::{IndexParams, Quantization, VectorIndex},
};
use std::io::Write as _;

#[derive(Debug, Parser)]
#[command(
    name = "lookbook-bench",
    version,
    about = "Benchmarks and evaluations of lookbook (make bench, make eval)"
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
        /// `index.quantization` of the service's own index: none, f16 or int8.
        #[arg(long, default_value = "none")]
        quantization: Quantization,
        /// Where a quantized index keeps its full-precision vectors (mapped
        /// files, as the service keeps them in its data dir); default: a
        /// `vectors` directory beside the dataset.
        #[arg(long)]
        vector_dir: Option<PathBuf>,
        /// Measure the `usearch` engine with this vector storage instead of
        /// the service's own index.
        #[arg(long)]
        usearch: Option<engines::UsearchStorage>,
        /// With `--usearch`: candidates re-scored exactly from the
        /// full-precision vectors (0: none).
        #[arg(long, default_value_t = 0)]
        rerank: usize,
        /// Selectivity sweep: shares of the base that filtered searches
        /// admit (e.g. 0.001,0.01,0.1,0.5), each against its own exact top 10.
        #[arg(long, value_delimiter = ',')]
        filter: Vec<f64>,
        /// `ef_search` of the filtered searches.
        #[arg(long, default_value_t = 64)]
        filter_ef: usize,
        /// Queries per selectivity.
        #[arg(long, default_value_t = 200)]
        filter_queries: usize,
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
    /// Cluster mode: add synthetic products through one replica (the
    /// writer, `--server`) and time until another (`--replica`) returns
    /// each: the replication lag. `--preload` first adds that many
    /// products in bulk (for a catch-up measurement afterwards).
    ClusterLag {
        #[command(flatten)]
        server: ServerArg,
        /// gRPC address of the replica that reads.
        #[arg(long)]
        replica: Option<String>,
        #[arg(long, default_value_t = 0)]
        preload: usize,
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

impl Command {
    fn server_mut(&mut self) -> Option<&mut ServerArg> {
        match self {
            Self::Bench { server, .. }
            | Self::Synth { server, .. }
            | Self::LoadVectors { server, .. }
            | Self::Freshness { server, .. }
            | Self::ClusterLag { server, .. } => Some(server),
            Self::Eval { .. }
            | Self::BenchEncode { .. }
            | Self::BenchIndex { .. }
            | Self::EvalPersonal { .. } => None,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let mut command = cli.command;
    if let Some(server) = command.server_mut() {
        server.token = crate::config::client_token();
    }
    match command {
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
            bench(&server, &catalog, &spec, history, json.as_deref()).await
        }
        Command::Synth {
            server,
            catalog,
            total,
            noise,
            seed,
        } => synth(&server, &catalog, total, noise, seed).await,
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
            quantization,
            vector_dir,
            usearch,
            rerank,
            filter,
            filter_ef,
            filter_queries,
            json,
        } => {
            anyhow::ensure!(
                filter.iter().all(|s| *s > 0.0 && *s <= 1.0),
                "--filter takes shares in (0, 1]"
            );
            let sweep = (!filter.is_empty()).then(|| perf::FilterSweep {
                selectivities: filter,
                ef: filter_ef.max(1),
                queries: filter_queries.max(1),
            });
            let params = IndexParams {
                max_nb_connection: m,
                ef_construction,
                quantization,
                vector_dir: Some(vector_dir.unwrap_or_else(|| data.join("vectors"))),
                ..IndexParams::default()
            };
            params.validate()?;
            let report = tokio::task::spawn_blocking(move || {
                let dataset = perf::Dataset::load(&data, true)?;
                match usearch {
                    Some(storage) => engines::bench_usearch(
                        &dataset,
                        m,
                        ef_construction,
                        &ef_search,
                        &threads,
                        engines::UsearchSetup { storage, rerank },
                        sweep.as_ref(),
                    ),
                    None => {
                        perf::bench_index(&dataset, params, &ef_search, &threads, sweep.as_ref())
                    }
                }
            })
            .await??;
            let mut out = std::io::stdout().lock();
            for r in &report.runs {
                writeln!(
                    out,
                    "{} {} n={}: ef={:<4} threads={} qps={:>9.1} recall@10={:.4}",
                    report.lib,
                    report.scale,
                    report.n,
                    r.ef_search,
                    r.threads,
                    r.qps,
                    r.recall_at_10
                )?;
            }
            for r in &report.filtered {
                writeln!(
                    out,
                    "{} {} filter {} ({} rows): ef={:<4} threads={} qps={:>9.1} recall@10={:.4}",
                    report.lib,
                    report.scale,
                    r.selectivity,
                    r.admitted,
                    r.ef_search,
                    r.threads,
                    r.qps,
                    r.recall_at_10
                )?;
            }
            writeln!(
                out,
                "build {:.1} s, {:.0} bytes/vector (raw {})",
                report.build_seconds, report.memory_bytes_per_vector, report.raw_vector_bytes
            )?;
            if let (Some(walk), Some(full), Some(mapped), Some(anon)) = (
                report.graph_walk_bytes_per_vector,
                report.graph_full_bytes_per_vector,
                report.graph_mapped_bytes_per_vector,
                report.anon_bytes_per_vector,
            ) {
                writeln!(
                    out,
                    "graph: {walk:.0} heap bytes/vector walked, {full:.0} on the heap and \
                     {mapped:.0} mapped for re-ranking; anonymous RSS +{anon:.0} bytes/vector"
                )?;
            }
            emit(json.as_deref(), &report)
        }
        Command::LoadVectors {
            data,
            server,
            skip,
            json,
        } => {
            let dataset = load_dataset(data.clone(), false).await?;
            let mut client = server.connect().await?;
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
            let mut client = server.connect().await?;
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
        Command::ClusterLag {
            server,
            replica,
            preload,
            count,
            json,
        } => {
            let mut writer = server.connect().await?;
            if preload > 0 {
                let started = Instant::now();
                perf::preload(&mut writer, preload).await?;
                let seconds = started.elapsed().as_secs_f64();
                writeln!(
                    std::io::stdout().lock(),
                    "preloaded {preload} products through the writer in {seconds:.1} s ({:.0}/s)",
                    preload as f64 / seconds
                )?;
            }
            if let Some(replica) = replica {
                let mut reader = crate::api::client::Client::connect(&replica, 64 << 20).await?;
                let report = perf::cluster_lag(&mut writer, &mut reader, count).await?;
                writeln!(
                    std::io::stdout().lock(),
                    "{} products added on the writer were returned by the replica after p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    report.products,
                    report.lag_ms.p50,
                    report.lag_ms.p99,
                    report.max_ms
                )?;
                emit(json.as_deref(), &report)?;
            }
            Ok(())
        }
        Command::EvalPersonal {
            dir,
            shoppers,
            seed,
            k,
            cache,
        } => {
            let config = local_config(cli.config.as_deref())?;
            let spec = super::eval_personal::Spec {
                shoppers: shoppers.max(3),
                seed,
                k: k.max(1),
                cache,
            };
            let report = super::eval_personal::run(&config, &dir, &spec).await?;
            use std::io::Write;
            write!(std::io::stdout().lock(), "{}", report.markdown())?;
            Ok(())
        }
    }
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
    crate::telemetry::init(&config.telemetry)?;
    Ok(config)
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
    server: &ServerArg,
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
    let mut client = server.connect().await?;
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
        clients.push(server.connect().await?);
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

async fn synth(
    server: &ServerArg,
    catalog: &Path,
    total: usize,
    noise: f32,
    seed: u64,
) -> Result<()> {
    let (entries, _) = dataset::read_catalog(catalog)?;
    let mut client = server.connect().await?;
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

/// Writes a report as JSON when a path was given.
fn emit(json: Option<&Path>, report: &impl serde::Serialize) -> Result<()> {
    match json {
        Some(path) => perf::write_json(path, report),
        None => Ok(()),
    }
}
