//! Churn: a catalogue on the HNSW path (`exact_threshold = 0`) of which a
//! quarter is replaced, or deleted and replenished with new products, every
//! round while background rebuilds run. After each round the real server's
//! answers are checked against exact search computed here from the vectors
//! the test sent: recall@10, filtered queries (a rare category included)
//! returning k whenever k products match, and resident memory.
//!
//! Short run (`make test`): 2,000 products x 2 rounds; full run (`make
//! reliability`): 12,000 x 20. `LOOKBOOK_CHURN_PRODUCTS` and
//! `LOOKBOOK_CHURN_ROUNDS` override either, `LOOKBOOK_CHURN_SEED` draws
//! another catalogue and other choices (a failure names its seed).

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use lookbook::api::proto;

const DIM: usize = 1280;
const K: usize = 10;
/// Share of the catalogue each round touches, in percent.
const CHURN_PERCENT: u64 = 25;
const MIN_RECALL: f64 = 0.97;
/// Every round's settled RSS may exceed the post-load RSS by this share.
const RSS_SLACK: f64 = 0.10;
/// The server's default rebuild trigger (`index.rebuild_dead_ratio`,
/// `index.rebuild_min_dead`), which this test leaves as it is: the test
/// waits for the state in which no rebuild is due.
const REBUILD_DEAD_RATIO: f64 = 0.2;
const REBUILD_MIN_DEAD: u64 = 100;
const MAINTENANCE_INTERVAL: &str = "200ms";
/// Unfiltered queries per check: by a live product's id, and by a new
/// vector drawn like the products (off-catalogue).
const QUERIES_BY_ID: usize = 200;
const QUERIES_BY_VECTOR: usize = 100;
/// Filtered queries per category per check.
const FILTERED_PER_CATEGORY: usize = 8;

/// Category values with their weight per mille; "jewellery" is the rare one
/// (about 10 products of 2,000, 60 of 12,000).
const CATEGORIES: [(&str, u64); 5] = [
    ("tops", 400),
    ("bottoms", 300),
    ("shoes", 200),
    ("bags", 95),
    ("jewellery", 5),
];
const RARE: usize = 4;
const COLOURS: [&str; 6] = ["black", "white", "blue", "red", "green", "beige"];

/// Latent dimensions and styles (clusters) of [`Looks`].
const LATENT: usize = 32;
const STYLES: usize = 24;
/// Spread of a product around its style's centre, in latent units.
const SPREAD: f32 = 0.7;
/// Full-dimensional noise, as a share of the vector's norm.
const NOISE: f32 = 0.2;

/// Vectors shaped like image embeddings: clustered points near a
/// low-dimensional subspace, plus a little noise in every dimension.
/// Isotropic random vectors in 1280 dimensions have no near neighbours
/// (every pair is about equally far apart), unlike any real catalogue, and
/// recall on them says nothing about an index built for real ones.
struct Looks {
    basis: Vec<Vec<f32>>,
    centres: Vec<Vec<f32>>,
}

impl Looks {
    fn new(rng: &mut Rng) -> Self {
        Self {
            basis: (0..LATENT as u64)
                .map(|i| synthetic_vector(0xB0_0000 + i, DIM))
                .collect(),
            centres: (0..STYLES)
                .map(|_| (0..LATENT).map(|_| rng.gaussian()).collect())
                .collect(),
        }
    }

    /// A unit vector and the style it was drawn from.
    fn draw(&self, rng: &mut Rng) -> (Vec<f32>, usize) {
        let style = rng.pick(STYLES);
        let mut v = vec![0.0f32; DIM];
        for (centre, basis) in self.centres[style].iter().zip(&self.basis) {
            let z = centre + SPREAD * rng.gaussian();
            v.iter_mut().zip(basis).for_each(|(x, b)| *x += z * b);
        }
        let sd = NOISE * norm(&v) / (DIM as f32).sqrt();
        v.iter_mut().for_each(|x| *x += sd * rng.gaussian());
        let n = norm(&v);
        v.iter_mut().for_each(|x| *x /= n);
        (v, style)
    }
}

fn norm(v: &[f32]) -> f32 {
    fast_dot(v, v).sqrt()
}

/// Dot product in eight independent lanes, which the compiler vectorises
/// (a single running sum is not reordered, so it is not): the exact top-10
/// here scans the whole catalogue for every query.
fn fast_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[derive(Clone)]
struct Item {
    id: String,
    vector: Vec<f32>,
    category: usize,
    colour: usize,
}

impl Item {
    fn request(&self) -> proto::AddProductRequest {
        embedding_request(
            &self.id,
            self.vector.clone(),
            &[
                ("category", CATEGORIES[self.category].0),
                ("colour", COLOURS[self.colour]),
            ],
        )
    }
}

/// What the server should hold: every live product and its vector.
struct Catalogue {
    items: Vec<Item>,
    position: HashMap<String, usize>,
    next_id: u64,
}

impl Catalogue {
    fn new_item(&mut self, looks: &Looks, rng: &mut Rng, id: Option<String>) -> Item {
        let id = id.unwrap_or_else(|| {
            self.next_id += 1;
            format!("p{}", self.next_id)
        });
        let (vector, style) = looks.draw(rng);
        let mut pick = rng.below(1000);
        let category = CATEGORIES
            .iter()
            .position(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .expect("weights sum to 1000");
        Item {
            id,
            vector,
            category,
            // Colour follows the style, as it would for photos.
            colour: style % COLOURS.len(),
        }
    }

    fn upsert(&mut self, item: Item) {
        match self.position.get(&item.id) {
            Some(&p) => self.items[p] = item,
            None => {
                self.position.insert(item.id.clone(), self.items.len());
                self.items.push(item);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        let p = self.position.remove(id).expect("removing a live id");
        self.items.swap_remove(p);
        if let Some(moved) = self.items.get(p) {
            self.position.insert(moved.id.clone(), p);
        }
    }

    /// The exact top `k` (index into `items`, similarity) of the accepted
    /// products, best first.
    fn exact(
        &self,
        query: &[f32],
        k: usize,
        accept: &dyn Fn(&Item) -> bool,
        exclude: Option<&str>,
    ) -> Vec<(usize, f32)> {
        let mut top: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        for (i, item) in self.items.iter().enumerate() {
            if !accept(item) || exclude == Some(item.id.as_str()) {
                continue;
            }
            let s = fast_dot(query, &item.vector);
            if top.len() == k && top[k - 1].1 >= s {
                continue;
            }
            let at = top.partition_point(|&(_, t)| t >= s);
            top.insert(at, (i, s));
            top.truncate(k);
        }
        top
    }

    fn count(&self, accept: &dyn Fn(&Item) -> bool) -> usize {
        self.items.iter().filter(|i| accept(i)).count()
    }
}

fn filter(must: &[(&str, &str)], must_not: &[(&str, &str)]) -> proto::Filter {
    let clause = |(k, v): &(&str, &str)| proto::AttributeFilter {
        key: (*k).to_owned(),
        values: vec![(*v).to_owned()],
    };
    proto::Filter {
        must: must.iter().map(clause).collect(),
        must_not: must_not.iter().map(clause).collect(),
    }
}

/// One query of a check: what to send and what exact search says.
struct Query<'a> {
    request: proto::RecommendSimilarRequest,
    vector: &'a [f32],
    exclude: Option<&'a str>,
    accept: &'a dyn Fn(&Item) -> bool,
    k: usize,
}

/// Sends `q` and checks what exact search can prove about the answer: only
/// live, accepted, distinct products, scored with the vector the test last
/// sent for them, `min(k, accepted)` of them. Returns the share of the
/// exact top-k found.
async fn run_query(c: &mut Client, cat: &Catalogue, q: Query<'_>, what: &str) -> f64 {
    let truth = cat.exact(q.vector, q.k, q.accept, q.exclude);
    let items = c
        .recommend_similar(q.request)
        .await
        .unwrap_or_else(|s| panic!("{what}: RecommendSimilar failed: {s}"))
        .into_inner()
        .items;
    let accepted = cat.count(&|i| (q.accept)(i) && q.exclude != Some(i.id.as_str()));
    assert_eq!(
        items.len(),
        q.k.min(accepted),
        "{what}: {} results for k = {} with {accepted} matching products",
        items.len(),
        q.k
    );
    let mut seen = HashSet::new();
    for r in &items {
        assert!(seen.insert(&r.product_id), "{what}: {} twice", r.product_id);
        let &p = cat
            .position
            .get(&r.product_id)
            .unwrap_or_else(|| panic!("{what}: {} is deleted but was returned", r.product_id));
        let item = &cat.items[p];
        assert!((q.accept)(item), "{what}: {} fails the filter", item.id);
        assert_ne!(
            Some(item.id.as_str()),
            q.exclude,
            "{what}: the query itself"
        );
        let expected = fast_dot(q.vector, &item.vector);
        assert!(
            (r.score - expected).abs() < 2e-3,
            "{what}: {} scored {} but its current vector gives {expected}",
            item.id,
            r.score
        );
    }
    if truth.is_empty() {
        return 1.0;
    }
    let found = truth
        .iter()
        .filter(|(i, _)| seen.contains(&cat.items[*i].id))
        .count();
    found as f64 / truth.len() as f64
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Check {
    recall: f64,
    filtered_recall: f64,
    filtered_queries: usize,
    rare_products: usize,
}

/// Recall@10 of unfiltered queries and the filtered checks, against the
/// catalogue the test knows.
async fn check(c: &mut Client, cat: &Catalogue, looks: &Looks, rng: &mut Rng) -> Check {
    let everything: &dyn Fn(&Item) -> bool = &|_| true;
    let mut recall = 0.0;
    for n in 0..QUERIES_BY_ID {
        let item = &cat.items[rng.pick(cat.items.len())];
        recall += run_query(
            c,
            cat,
            Query {
                request: similar_to_id(&item.id, K as u32),
                vector: &item.vector,
                exclude: Some(&item.id),
                accept: everything,
                k: K,
            },
            &format!("query {n} by id {}", item.id),
        )
        .await;
    }
    for n in 0..QUERIES_BY_VECTOR {
        let (v, _) = looks.draw(rng);
        recall += run_query(
            c,
            cat,
            Query {
                request: similar_to_vector(v.clone(), K as u32),
                vector: &v,
                exclude: None,
                accept: everything,
                k: K,
            },
            &format!("query {n} by vector"),
        )
        .await;
    }
    let recall = recall / (QUERIES_BY_ID + QUERIES_BY_VECTOR) as f64;

    let mut filtered_recall = 0.0;
    let mut filtered_queries = 0;
    let rare_products = cat.count(&|i| i.category == RARE);
    for (category, (name, _)) in CATEGORIES.iter().enumerate() {
        let in_category = move |i: &Item| i.category == category;
        for n in 0..FILTERED_PER_CATEGORY {
            // Half by a new vector, half by a product of the category; for
            // the rare category every other query asks for more than all
            // of it, which must return exactly all of it.
            let k = if category == RARE && n % 2 == 1 {
                rare_products + 3
            } else {
                K
            };
            let by_id = n % 4 >= 2;
            let members: Vec<&Item> = cat.items.iter().filter(|i| in_category(i)).collect();
            let drawn;
            let (mut request, vector, exclude) = if by_id && !members.is_empty() {
                let item = members[rng.pick(members.len())];
                (
                    similar_to_id(&item.id, k as u32),
                    item.vector.as_slice(),
                    Some(item.id.as_str()),
                )
            } else {
                drawn = looks.draw(rng).0;
                (
                    similar_to_vector(drawn.clone(), k as u32),
                    drawn.as_slice(),
                    None,
                )
            };
            request.filter = Some(filter(&[("category", name)], &[]));
            filtered_recall += run_query(
                c,
                cat,
                Query {
                    request,
                    vector,
                    exclude,
                    accept: &in_category,
                    k,
                },
                &format!("filtered query {n}, category {name}, k {k}"),
            )
            .await;
            filtered_queries += 1;
        }
    }
    // A colour (a sixth of the catalogue) but not tops: two clauses.
    for n in 0..FILTERED_PER_CATEGORY {
        let colour = n % COLOURS.len();
        let accept = move |i: &Item| i.colour == colour && i.category != 0;
        let (v, _) = looks.draw(rng);
        let mut request = similar_to_vector(v.clone(), K as u32);
        request.filter = Some(filter(
            &[("colour", COLOURS[colour])],
            &[("category", CATEGORIES[0].0)],
        ));
        filtered_recall += run_query(
            c,
            cat,
            Query {
                request,
                vector: &v,
                exclude: None,
                accept: &accept,
                k: K,
            },
            &format!(
                "filtered query {n}, colour {} and not tops",
                COLOURS[colour]
            ),
        )
        .await;
        filtered_queries += 1;
    }
    Check {
        recall,
        filtered_recall: filtered_recall / filtered_queries as f64,
        filtered_queries,
        rare_products,
    }
}

async fn stats(c: &mut Client) -> proto::GetStatsResponse {
    c.get_stats(proto::GetStatsRequest {})
        .await
        .expect("GetStats succeeds")
        .into_inner()
}

/// Whether the server's maintenance would start a rebuild now.
fn rebuild_due(s: &proto::GetStatsResponse) -> bool {
    let dead = s.deleted_pending;
    let points = s.catalog_size + dead;
    dead >= REBUILD_MIN_DEAD && dead as f64 >= REBUILD_DEAD_RATIO * points as f64
}

/// The server's RSS, `None` once it has gone (an exited process that is
/// not reaped yet has a status without `VmRSS`).
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .any(|l| l.starts_with("VmRSS:"))
        .then(|| vm_kib(&status, "VmRSS:") * 1024)
}

/// RSS counts as settled once it has not dropped by 1 MiB or more for this
/// long.
/// jemalloc returns freed pages in steps (its background thread purges on a
/// 10 s decay curve and sleeps in between): after a rebuild of 12K products
/// the steps went on for 25-45 s here, up to 8 s apart.
const SETTLE_QUIET: Duration = Duration::from_secs(15);
/// ... or after this long in all.
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// The server's RSS once the index is quiet: no rebuild due, and the
/// rebuild count unchanged while RSS was watched until it settled (see
/// [`SETTLE_QUIET`]); returns the lowest sample, which is where RSS is
/// heading, and the stats.
async fn settled(c: &mut Client, pid: u32) -> (u64, proto::GetStatsResponse) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = stats(c).await;
        assert!(
            Instant::now() < deadline,
            "the index did not settle (no rebuild due, none running) in 600 s: {s:?}"
        );
        if rebuild_due(&s) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let started = Instant::now();
        let mut lowest = u64::MAX;
        let mut last_low = started;
        while last_low.elapsed() < SETTLE_QUIET && started.elapsed() < SETTLE_MAX {
            let now = rss_of(pid).expect("the server is running");
            // A page or two of jitter is no step of the purge.
            if now.saturating_add(1 << 20) <= lowest {
                last_low = Instant::now();
            }
            lowest = lowest.min(now);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let after = stats(c).await;
        if after.index_rebuilds == s.index_rebuilds && !rebuild_due(&after) {
            return (lowest, after);
        }
    }
}

/// Adds `items` in `AddProducts` streams of `chunk`.
async fn add_all(c: &mut Client, items: &[Item], chunk: usize) {
    for part in items.chunks(chunk) {
        let requests: Vec<proto::AddProductRequest> = part.iter().map(Item::request).collect();
        let r = c
            .add_products(tokio_stream::iter(
                requests.into_iter().map(proto::AddProductsRequest::from),
            ))
            .await
            .expect("AddProducts succeeds")
            .into_inner();
        assert_eq!(r.failed, 0, "{:?}", r.errors);
        assert_eq!(r.added + r.replaced, part.len() as u64);
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    round: u64,
    replaced: usize,
    deleted: usize,
    added: usize,
    recall: f64,
    filtered_recall: f64,
    filtered_queries: usize,
    rare_products: usize,
    rebuilds: u64,
    /// Replaced and deleted points still in the graph once it settled
    /// (GetStats `deleted_pending`): writes after the last rebuild began.
    dead_points: u64,
    rss_mib: f64,
    seconds: f64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Kills the server if the test fails before stopping it, so that a failed
/// run leaves no process behind (`ServerProcess` does not kill on drop).
struct Running(Option<ServerProcess>);

impl Running {
    fn get(&self) -> &ServerProcess {
        self.0.as_ref().expect("the server is running")
    }

    fn stop(mut self) -> std::process::ExitStatus {
        self.0.take().expect("the server is running").terminate()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            server.kill9();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_recall_filters_and_memory_through_rebuilds() {
    let products = sized("CHURN_PRODUCTS", 2_000, 12_000) as usize;
    let rounds = sized("CHURN_ROUNDS", 2, 20);
    let seed = sized("CHURN_SEED", 0x5EED_C4A2, 0x5EED_C4A2);
    eprintln!("churn: {products} products, {rounds} rounds, LOOKBOOK_CHURN_SEED={seed}");
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Running(Some(
        ServerProcess::spawn_with(
            dir.path(),
            &[
                ("LOOKBOOK__INDEX__EXACT_THRESHOLD", "0"),
                (
                    "LOOKBOOK__INDEX__MAINTENANCE_INTERVAL",
                    MAINTENANCE_INTERVAL,
                ),
            ],
        )
        .await,
    ));
    let pid = server.get().pid();
    let mut c = connect(&server.get().url).await;

    // Peak RSS over the whole run, rebuilds (two graphs at once) included.
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed)
                && let Some(rss) = rss_of(pid)
            {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut rng = Rng::new(seed);
    let looks = Looks::new(&mut rng);
    let mut cat = Catalogue {
        items: Vec::new(),
        position: HashMap::new(),
        next_id: 0,
    };
    let initial: Vec<Item> = (0..products)
        .map(|_| cat.new_item(&looks, &mut rng, None))
        .collect();
    add_all(&mut c, &initial, 1_000).await;
    initial.into_iter().for_each(|i| cat.upsert(i));
    let s = stats(&mut c).await;
    assert_eq!(s.catalog_size, products as u64);

    // "The start": the server's RSS once the initial load has settled, the
    // state an operator sees after an import; the rounds must stay within
    // 10% of it once their rebuilds are done.
    let (rss_start, _) = settled(&mut c, pid).await;
    let baseline = check(&mut c, &cat, &looks, &mut rng).await;
    eprintln!(
        "churn: loaded {products} in {:.1} s, RSS {:.0} MiB, recall@10 {:.4}, filtered recall {:.4}",
        started.elapsed().as_secs_f64(),
        mib(rss_start),
        baseline.recall,
        baseline.filtered_recall
    );
    let mut missed: Vec<String> = Vec::new();
    if baseline.recall < MIN_RECALL {
        missed.push(format!(
            "after the initial load: recall@10 {:.4} < {MIN_RECALL}",
            baseline.recall
        ));
    }

    let mut history: Vec<Round> = Vec::new();
    let (mut replaced_total, mut deleted_total) = (0usize, 0usize);
    for round in 1..=rounds {
        let t = Instant::now();
        // A quarter of the live products: half get a new vector (and
        // perhaps a new category), half are deleted and as many new
        // products are added, so the size stays where it was.
        let touched = cat.items.len() * CHURN_PERCENT as usize / 100;
        let mut ids: Vec<String> = cat.items.iter().map(|i| i.id.clone()).collect();
        for i in 0..touched {
            let j = i + rng.pick(ids.len() - i);
            ids.swap(i, j);
        }
        ids.truncate(touched);
        let (replace, delete) = ids.split_at(touched / 2);
        let replacements: Vec<Item> = replace
            .iter()
            .map(|id| cat.new_item(&looks, &mut rng, Some(id.clone())))
            .collect();
        let additions: Vec<Item> = (0..delete.len())
            .map(|_| cat.new_item(&looks, &mut rng, None))
            .collect();

        // Replacements in streams and deletes four at a time, together;
        // they cross the rebuild trigger (20% of points dead) near their
        // end, so the new products that follow usually land while the
        // rebuild runs and are replayed onto its graph.
        let replacing = {
            let mut c = c.clone();
            let replacements = replacements.clone();
            async move { add_all(&mut c, &replacements, 250).await }
        };
        let deleting =
            futures::future::join_all(delete.chunks(delete.len().div_ceil(4).max(1)).map(|part| {
                let mut c = c.clone();
                async move {
                    for id in part {
                        let r = c
                            .delete_product(proto::DeleteProductRequest {
                                product_id: id.clone(),
                            })
                            .await
                            .expect("DeleteProduct succeeds")
                            .into_inner();
                        assert!(r.deleted, "{id} was live");
                    }
                }
            }));
        tokio::join!(replacing, deleting);
        add_all(&mut c, &additions, 250).await;
        delete.iter().for_each(|id| cat.remove(id));
        replacements
            .into_iter()
            .chain(additions)
            .for_each(|i| cat.upsert(i));
        replaced_total += replace.len();
        deleted_total += delete.len();

        let (rss, s) = settled(&mut c, pid).await;
        assert_eq!(
            s.catalog_size,
            cat.items.len() as u64,
            "round {round}: catalogue size"
        );
        let q = check(&mut c, &cat, &looks, &mut rng).await;
        let r = Round {
            round,
            replaced: replace.len(),
            deleted: delete.len(),
            added: delete.len(),
            recall: q.recall,
            filtered_recall: q.filtered_recall,
            filtered_queries: q.filtered_queries,
            rare_products: q.rare_products,
            rebuilds: s.index_rebuilds,
            dead_points: s.deleted_pending,
            rss_mib: mib(rss),
            seconds: t.elapsed().as_secs_f64(),
        };
        eprintln!("churn: {r:?}");
        // Bounds missed are collected and asserted after the report, so
        // that a failed run still writes its figures; wrong answers fail
        // at once (in `run_query`).
        if q.recall < MIN_RECALL {
            missed.push(format!(
                "round {round}: recall@10 {:.4} < {MIN_RECALL}",
                q.recall
            ));
        }
        if rss as f64 > rss_start as f64 * (1.0 + RSS_SLACK) {
            missed.push(format!(
                "round {round}: RSS {:.0} MiB is more than {:.0}% above the {:.0} MiB after the \
                 load",
                mib(rss),
                RSS_SLACK * 100.0,
                mib(rss_start)
            ));
        }
        history.push(r);
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("RSS sampler");

    let end = stats(&mut c).await;
    if end.index_rebuilds == 0 {
        missed.push(format!(
            "no background rebuild ran in {rounds} rounds: {end:?}"
        ));
    }
    let status = server.stop();
    assert!(
        status.success(),
        "graceful exit after the churn: {status:?}"
    );

    let min_recall = history
        .iter()
        .map(|r| r.recall)
        .fold(baseline.recall, f64::min);
    let min_filtered = history
        .iter()
        .map(|r| r.filtered_recall)
        .fold(baseline.filtered_recall, f64::min);
    let filtered_checks: usize =
        baseline.filtered_queries + history.iter().map(|r| r.filtered_queries).sum::<usize>();
    let rare_min = history
        .iter()
        .map(|r| r.rare_products)
        .fold(baseline.rare_products, usize::min);
    let rss_end = history.last().map_or(mib(rss_start), |r| r.rss_mib);
    let rss_max = history
        .iter()
        .map(|r| r.rss_mib)
        .fold(mib(rss_start), f64::max);
    let seconds = started.elapsed().as_secs_f64();
    let per_round: Vec<String> = history.iter().map(|r| format!("{:.3}", r.recall)).collect();
    let figures = serde_json::json!({
        "products": products,
        "rounds": rounds,
        "churn_percent": CHURN_PERCENT,
        "seed": seed,
        "replaced": replaced_total,
        "deleted": deleted_total,
        "added": deleted_total,
        "baseline": baseline,
        "min_recall": min_recall,
        "min_filtered_recall": min_filtered,
        "filtered_queries": filtered_checks,
        "rare_products_min": rare_min,
        "index_rebuilds": end.index_rebuilds,
        "rss_start_mib": mib(rss_start),
        "rss_settled_max_mib": rss_max,
        "rss_end_mib": rss_end,
        "rss_peak_mib": mib(peak.load(Ordering::Relaxed)),
        "seconds": seconds,
        "missed": missed,
        "per_round": history,
    });
    let markdown = format!(
        "## Churn\n\n\
         `tests/churn.rs`: {rounds} rounds on a catalogue of {products} synthetic products on \
         the HNSW path (`exact_threshold = 0`, maintenance every {MAINTENANCE_INTERVAL}), each \
         round replacing or deleting-and-replenishing {CHURN_PERCENT}% of it while background \
         rebuilds ran, then checking the real server against exact search over the vectors the \
         test sent ({seconds:.0} s).\n\n\
         | figure | value |\n| --- | --- |\n\
         | writes | {replaced_total} replaced, {deleted_total} deleted, {deleted_total} added |\n\
         | recall@10 vs exact, {queries} queries a round: min over rounds (bound {MIN_RECALL}) | \
         {min_recall:.4} (after the load {:.4}) |\n\
         | recall@10 per round | {} |\n\
         | filtered queries returning exactly min(k, matching), live and matching products \
         with their current vectors' scores | {filtered_checks} of {filtered_checks} (rare \
         category: at least {rare_min} products; filtered recall@10 min {min_filtered:.4}) |\n\
         | background rebuilds (GetStats `index_rebuilds`) | {} |\n\
         | server RSS after the load / max after a round / end, each once settled (no \
         rebuild due or running, no drop of 1 MiB for {} s) | {:.0} / {rss_max:.0} / \
         {rss_end:.0} MiB (bound: start + {:.0}%) |\n\
         | server RSS peak (during rebuilds, two graphs at once) | {:.0} MiB |\n\
         | bounds missed | {} |\n",
        baseline.recall,
        per_round.join(", "),
        end.index_rebuilds,
        SETTLE_QUIET.as_secs(),
        mib(rss_start),
        RSS_SLACK * 100.0,
        mib(peak.load(Ordering::Relaxed)),
        if missed.is_empty() {
            "none".to_owned()
        } else {
            format!("**{}**", missed.join("; "))
        },
        queries = QUERIES_BY_ID + QUERIES_BY_VECTOR,
    );
    report("churn", &figures, &markdown);
    assert!(
        missed.is_empty(),
        "churn (LOOKBOOK_CHURN_SEED={seed}): {missed:?}"
    );
}
