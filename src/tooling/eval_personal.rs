//! Offline evaluation of personalized recommendations, on *simulated*
//! shoppers.
//!
//! There is no real interaction log for the Kaggle fashion catalogue, so
//! this builds one from its labels and says so. A *taste* is gender +
//! articleType + colour group (e.g. Men / Tshirts / blue). Each simulated
//! shopper has 1-3 tastes (equal thirds), a history of 4-8 interactions per
//! taste (60% views, 20% clicks, 12% add-to-cart, 8% purchases) plus 20%
//! random views as noise, spread over the last 30 days in random order, and
//! one held-out next product drawn from one of the tastes. Every shopper is
//! recorded through the real [`Personalizer`] (durable group commits) and
//! queried through the real [`Recommender`], once with one taste centroid
//! per shopper and once with the configured multi-interest profile.
//!
//! Reported per method: hit-rate@k (the held-out product is in the top k),
//! NDCG@k (binary relevance of that product), taste-precision@k (share of
//! the top k matching one of the shopper's tastes) and intra-list
//! diversity (mean pairwise cosine distance within the top k). Baselines:
//! trending (the anonymous answer, from all simulated interactions) and
//! random products.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use rand::{
    RngExt, SeedableRng,
    rngs::StdRng,
    seq::{IndexedRandom, SliceRandom},
};

use crate::{
    catalog::{Catalog, NewProduct, ProductContent},
    config::Config,
    dataset::{self, ARTICLE_TYPE, CatalogEntry},
    domain::{Embedding, ProductId, UserId, dot},
    encoder::Encoder,
    personalize::{Action, Interaction, PersonalizeConfig, Personalizer, now_ms},
    recommend::{Diversity, Recommender, UserQuery},
};

/// Tastes with fewer products cannot give a history and a held-out item.
const MIN_TASTE_SIZE: usize = 6;
const HISTORY_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone)]
pub struct Spec {
    pub shoppers: usize,
    pub seed: u64,
    pub k: usize,
    /// Where embeddings of the photos are cached between runs.
    pub cache: PathBuf,
}

/// Colour families: shoppers who like "blue" take navy and teal too.
fn colour_group(colour: &str) -> &'static str {
    match colour {
        "Black" | "Charcoal" => "black",
        "White" | "Off White" | "Cream" | "Beige" | "Skin" | "Nude" => "light",
        "Grey" | "Grey Melange" | "Steel" | "Silver" | "Metallic" => "grey",
        "Blue" | "Navy Blue" | "Teal" | "Turquoise Blue" => "blue",
        "Red" | "Maroon" | "Rust" | "Rose" => "red",
        "Green" | "Olive" | "Sea Green" | "Lime Green" => "green",
        "Pink" | "Peach" | "Magenta" | "Lavender" | "Purple" | "Mauve" => "pink",
        "Yellow" | "Mustard" | "Gold" | "Orange" | "Khaki" | "Copper" | "Bronze" => "warm",
        "Brown" | "Tan" | "Coffee Brown" | "Mushroom Brown" | "Taupe" => "brown",
        _ => "other",
    }
}

fn taste_of(e: &CatalogEntry) -> Option<String> {
    let get = |k: &str| {
        e.attributes
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    Some(format!(
        "{}/{}/{}",
        get("gender")?,
        get(ARTICLE_TYPE)?,
        colour_group(get("baseColour")?)
    ))
}

#[derive(Debug, Clone)]
struct Shopper {
    tastes: Vec<String>,
    history: Vec<(usize, Action, i64)>,
    held_out: usize,
}

fn pick_action(rng: &mut StdRng) -> Action {
    match rng.random_range(0..100) {
        0..60 => Action::View,
        60..80 => Action::Click,
        80..92 => Action::AddToCart,
        _ => Action::Purchase,
    }
}

fn simulate(
    entries: &[CatalogEntry],
    tastes: &HashMap<String, Vec<usize>>,
    n: usize,
    seed: u64,
    now: i64,
) -> Vec<Shopper> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names: Vec<&String> = tastes.keys().collect();
    names.sort();
    (0..n)
        .map(|i| {
            let count = 1 + i % 3;
            let chosen: Vec<String> = names
                .sample(&mut rng, count)
                .map(|s| (*s).clone())
                .collect();
            let mut events: Vec<(usize, Action)> = Vec::new();
            let mut used = HashSet::new();
            for t in &chosen {
                let mut products = tastes[t].clone();
                products.shuffle(&mut rng);
                let m = rng.random_range(4..=8).min(products.len() - 1);
                for &p in &products[..m] {
                    used.insert(p);
                    events.push((p, pick_action(&mut rng)));
                }
            }
            // 20% of the history is random browsing.
            let noise = events.len().div_ceil(4);
            for _ in 0..noise {
                let p = rng.random_range(0..entries.len());
                used.insert(p);
                events.push((p, Action::View));
            }
            events.shuffle(&mut rng);
            let span = HISTORY_DAYS * DAY_MS;
            let mut times: Vec<i64> = (0..events.len())
                .map(|_| now - rng.random_range(0..span))
                .collect();
            times.sort_unstable();
            let history = events
                .into_iter()
                .zip(times)
                .map(|((p, a), t)| (p, a, t))
                .collect();
            let target = &chosen[rng.random_range(0..chosen.len())];
            let unseen: Vec<usize> = tastes[target]
                .iter()
                .copied()
                .filter(|p| !used.contains(p))
                .collect();
            let held_out = unseen[rng.random_range(0..unseen.len())];
            Shopper {
                tastes: chosen,
                history,
                held_out,
            }
        })
        .collect()
}

/// Sums while accumulating, means in a [`Report`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    pub n: usize,
    pub hit: f64,
    pub ndcg: f64,
    pub taste_precision: f64,
    pub diversity: f64,
}

impl Metrics {
    fn add(&mut self, other: Self) {
        self.n += other.n;
        self.hit += other.hit;
        self.ndcg += other.ndcg;
        self.taste_precision += other.taste_precision;
        self.diversity += other.diversity;
    }

    fn mean(&self) -> Self {
        let n = self.n.max(1) as f64;
        Self {
            n: self.n,
            hit: self.hit / n,
            ndcg: self.ndcg / n,
            taste_precision: self.taste_precision / n,
            diversity: self.diversity / n,
        }
    }
}

/// Scores one answer for one shopper.
fn score(
    answer: &[usize],
    shopper: &Shopper,
    taste_of: &[Option<String>],
    vectors: &[Arc<[f32]>],
    k: usize,
) -> Metrics {
    let rank = answer.iter().take(k).position(|&p| p == shopper.held_out);
    let matches = answer
        .iter()
        .take(k)
        .filter(|&&p| {
            taste_of[p]
                .as_ref()
                .is_some_and(|t| shopper.tastes.contains(t))
        })
        .count();
    let top: Vec<&Arc<[f32]>> = answer.iter().take(k).map(|&p| &vectors[p]).collect();
    let mut pairs = 0usize;
    let mut distance = 0.0f64;
    for a in 0..top.len() {
        for b in a + 1..top.len() {
            pairs += 1;
            distance += f64::from(1.0 - dot(top[a], top[b]));
        }
    }
    Metrics {
        n: 1,
        hit: f64::from(u8::from(rank.is_some())),
        ndcg: rank.map_or(0.0, |r| 1.0 / ((r + 2) as f64).log2()),
        taste_precision: matches as f64 / k as f64,
        diversity: if pairs == 0 {
            0.0
        } else {
            distance / pairs as f64
        },
    }
}

/// Loads the photos' embeddings from `cache` when it holds exactly these
/// ids for this model, else embeds them (and refreshes the cache).
async fn embeddings(
    catalog: &Catalog,
    entries: &[CatalogEntry],
    cache: &Path,
) -> Result<Vec<Arc<[f32]>>> {
    let dim = catalog.dim() as usize;
    let tag = format!("{}:{}:{}", catalog.model(), dim, entries.len());
    if let Ok(bytes) = std::fs::read(cache)
        && let Some(vectors) = decode_cache(&bytes, &tag, entries, dim)
    {
        tracing::info!(path = %cache.display(), "embeddings loaded from cache");
        return Ok(vectors);
    }
    let started = Instant::now();
    let mut out = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(16) {
        let images = chunk
            .iter()
            .map(|e| {
                std::fs::read(&e.image)
                    .map(Bytes::from)
                    .with_context(|| format!("cannot read {}", e.image.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        for v in catalog.embed(images).await? {
            out.push(Arc::clone(v.as_arc()));
        }
    }
    tracing::info!(
        products = entries.len(),
        seconds = started.elapsed().as_secs_f64(),
        "photos embedded"
    );
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(tag.len() as u32).to_le_bytes());
    bytes.extend_from_slice(tag.as_bytes());
    for (e, v) in entries.iter().zip(&out) {
        bytes.extend_from_slice(&(e.id.len() as u32).to_le_bytes());
        bytes.extend_from_slice(e.id.as_bytes());
        for x in v.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    if let Some(parent) = cache.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(cache, bytes).with_context(|| format!("cannot write {}", cache.display()))?;
    Ok(out)
}

fn decode_cache(
    bytes: &[u8],
    tag: &str,
    entries: &[CatalogEntry],
    dim: usize,
) -> Option<Vec<Arc<[f32]>>> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            Some(head)
        }
        fn chunk(&mut self) -> Option<&'a [u8]> {
            let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
            self.take(n)
        }
    }
    let mut c = Cursor(bytes);
    if c.chunk()? != tag.as_bytes() {
        return None;
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if c.chunk()? != e.id.as_bytes() {
            return None;
        }
        let raw = c.take(dim * 4)?;
        let v: Arc<[f32]> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(v);
    }
    Some(out)
}

/// Runs the protocol.
pub async fn run(config: &Config, dir: &Path, spec: &Spec) -> Result<Report> {
    let (entries, _) = dataset::read_catalog(dir)?;
    let tastes_of: Vec<Option<String>> = entries.iter().map(taste_of).collect();
    let mut tastes: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, t) in tastes_of.iter().enumerate() {
        if let Some(t) = t {
            tastes.entry(t.clone()).or_default().push(i);
        }
    }
    tastes.retain(|_, v| v.len() >= MIN_TASTE_SIZE);
    if tastes.len() < 3 {
        bail!(
            "{} has too few tastes of >= {MIN_TASTE_SIZE} products",
            dir.display()
        );
    }
    let encoder_config = config.encoder();
    let encoder = tokio::task::spawn_blocking(move || Encoder::load(&encoder_config)).await??;
    let scratch = tempfile_dir()?;
    let (catalog, _) = Catalog::open(
        scratch.0.clone(),
        encoder,
        config.index_params(),
        config.server.max_pending_writes,
    )
    .await?;
    let catalog = Arc::new(catalog);
    let vectors = embeddings(&catalog, &entries, &spec.cache).await?;
    let mut products = Vec::with_capacity(entries.len());
    for (e, v) in entries.iter().zip(&vectors) {
        products.push(NewProduct {
            id: ProductId::parse(&e.id, usize::MAX)?,
            content: ProductContent::Embedding(Embedding::from_trusted(Arc::clone(v))),
            attributes: e.attributes.clone(),
        });
    }
    for chunk in products.chunks(512) {
        catalog.add_batch(chunk.to_vec()).await?;
    }
    let index_of: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();

    let now = now_ms();
    let shoppers = simulate(&entries, &tastes, spec.shoppers, spec.seed, now);
    let store = Arc::clone(catalog.store());
    let open = |max_interests: usize| {
        let cfg = PersonalizeConfig {
            max_interests,
            ..config.personalize.clone()
        };
        Personalizer::open(Arc::clone(&store), Arc::clone(&catalog), cfg)
    };
    let recommender = |p: Personalizer| {
        Recommender::new(
            Arc::clone(&catalog),
            Arc::new(p),
            config.server.search_concurrency,
            config.server.max_pending_searches,
            config.index.exact_threshold,
        )
    };
    let single = recommender(open(1).await?.0);
    let multi = recommender(open(config.personalize.max_interests).await?.0);
    let started = Instant::now();
    for (n, s) in shoppers.iter().enumerate() {
        for (prefix, r) in [("single", &single), ("multi", &multi)] {
            let user = UserId::parse(&format!("{prefix}-{n}"), usize::MAX)?;
            let batch = s
                .history
                .iter()
                .map(|&(p, action, timestamp_ms)| {
                    Ok(Interaction {
                        user: user.clone(),
                        product: ProductId::parse(&entries[p].id, usize::MAX)?,
                        action,
                        timestamp_ms,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            for result in r.personalizer().record(batch).await? {
                result?;
            }
        }
    }
    let recorded: usize = shoppers.iter().map(|s| s.history.len()).sum();
    tracing::info!(
        shoppers = shoppers.len(),
        interactions = recorded,
        seconds = started.elapsed().as_secs_f64(),
        "simulated histories recorded (twice)"
    );

    // [method][tastes - 1]
    let mut totals = [[Metrics::default(); 3]; 4];
    let mut latencies = Vec::new();
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x5eed);
    let ids = |items: Vec<crate::recommend::Recommendation>| -> Vec<usize> {
        items
            .iter()
            .filter_map(|r| index_of.get(r.id.as_str()).copied())
            .collect()
    };
    for (n, s) in shoppers.iter().enumerate() {
        let query = |user: Option<String>| -> Result<UserQuery> {
            Ok(UserQuery {
                user: user.map(|u| UserId::parse(&u, usize::MAX)).transpose()?,
                k: spec.k,
                filter: Default::default(),
                exclude: HashSet::new(),
                context: Vec::new(),
                diversity: Diversity::default(),
            })
        };
        let t0 = Instant::now();
        let m = ids(multi.for_user(query(Some(format!("multi-{n}")))?).await?);
        latencies.push(t0.elapsed().as_secs_f64() * 1e3);
        let single_answer = ids(single.for_user(query(Some(format!("single-{n}")))?).await?);
        let trending = ids(multi.for_user(query(None)?).await?);
        let mut random: Vec<usize> = (0..entries.len()).collect();
        random.shuffle(&mut rng);
        random.truncate(spec.k);
        for (method, answer) in [m, single_answer, trending, random].iter().enumerate() {
            totals[method][s.tastes.len() - 1].add(score(answer, s, &tastes_of, &vectors, spec.k));
        }
    }
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    drop(scratch);
    Ok(Report {
        shoppers: shoppers.len(),
        interactions: recorded,
        products: entries.len(),
        tastes: tastes.len(),
        seed: spec.seed,
        k: spec.k,
        max_interests: config.personalize.max_interests,
        interest_similarity: config.personalize.interest_similarity,
        methods: METHODS
            .iter()
            .zip(totals)
            .map(|(name, per)| MethodResult {
                name,
                by_tastes: per.map(|m| m.mean()),
                overall: {
                    let mut all = Metrics::default();
                    for m in per {
                        all.add(m);
                    }
                    all.mean()
                },
            })
            .collect(),
        latency_ms: (p(0.5), p(0.99)),
    })
}

/// Method names, in the order of `Report::methods`.
pub const METHODS: [&str; 4] = [
    "personalized, multi-interest",
    "personalized, single centroid",
    "trending",
    "random",
];

#[derive(Debug, Clone)]
pub struct MethodResult {
    pub name: &'static str,
    /// Means over shoppers with 1, 2 and 3 tastes.
    pub by_tastes: [Metrics; 3],
    pub overall: Metrics,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub shoppers: usize,
    pub interactions: usize,
    pub products: usize,
    pub tastes: usize,
    pub seed: u64,
    pub k: usize,
    pub max_interests: usize,
    pub interest_similarity: f32,
    pub methods: Vec<MethodResult>,
    /// In-process RecommendForUser (multi-interest) p50 and p99.
    pub latency_ms: (f64, f64),
}

impl Report {
    pub fn method(&self, name: &str) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.name == name)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_markdown(&mut out);
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let k = self.k;
        writeln!(
            out,
            "Simulated shoppers (see `src/eval_personal.rs`): {} shoppers (1/2/3 tastes in equal thirds), \
             {} interactions, {} products, {} tastes (gender/articleType/colour group with >= {MIN_TASTE_SIZE} products), \
             seed {}, max_interests {}, interest_similarity {}.\n",
            self.shoppers,
            self.interactions,
            self.products,
            self.tastes,
            self.seed,
            self.max_interests,
            self.interest_similarity,
        )?;
        writeln!(
            out,
            "| method | hit-rate@{k} | NDCG@{k} | taste-precision@{k} | intra-list diversity |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|")?;
        for m in &self.methods {
            let a = &m.overall;
            writeln!(
                out,
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                m.name, a.hit, a.ndcg, a.taste_precision, a.diversity
            )?;
        }
        writeln!(
            out,
            "\ntaste-precision@{k} by number of tastes per shopper:\n"
        )?;
        writeln!(out, "| method | 1 taste | 2 tastes | 3 tastes |")?;
        writeln!(out, "|---|---:|---:|---:|")?;
        for m in &self.methods {
            let [one, two, three] = &m.by_tastes;
            writeln!(
                out,
                "| {} | {:.4} | {:.4} | {:.4} |",
                m.name, one.taste_precision, two.taste_precision, three.taste_precision
            )?;
        }
        writeln!(
            out,
            "\nRecommendForUser in-process latency (multi-interest, {} queries, no gRPC): p50 {:.2} ms, p99 {:.2} ms.",
            self.shoppers, self.latency_ms.0, self.latency_ms.1
        )
    }
}

/// A scratch data directory, removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<ScratchDir> {
    let dir = std::env::temp_dir().join(format!(
        "lookbook-eval-personal-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(ScratchDir(dir))
}
