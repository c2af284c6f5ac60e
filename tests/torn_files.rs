//! Torn files: every file of the index dump (`<data>/index/`: the MANIFEST,
//! the graph file, anything else there) damaged at seeded random offsets:
//! truncated, one bit flipped, a range overwritten with garbage. Each
//! damage must be detected (the dump is not used), the index rebuilt from
//! the store, and every product served exactly as stored. Damage to the
//! store file itself must stop start-up with an error naming the file, or,
//! where the damage leaves the store readable, leave out only what is
//! unreadable and serve everything else exactly; never a panic, never a
//! wrong answer.
//!
//! `LOOKBOOK_TORN_SEED` replays a run; `LOOKBOOK_TORN_TRIALS` and
//! `LOOKBOOK_TORN_STORE_TRIALS` set the number of trials.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use lookbook::{api::proto, domain::Embedding};
use tonic::Code;

const DIM: usize = 1280;
/// The graph path, searched with a wide beam: the catalogue is random
/// 1280-d vectors, which have no neighbourhoods for a greedy search to
/// follow, so at the default `ef_search` (32) a point of the 4,000 of the
/// full run can be missed by its own vector (p550 was, at rank 0 with
/// k = 200), which says nothing about the files. These checks are about the
/// data served; the graph's recall is measured on clustered data (churn,
/// `make bench`).
const SERVER_ENV: &[(&str, &str)] = &[
    ("LOOKBOOK__INDEX__EXACT_THRESHOLD", "0"),
    ("LOOKBOOK__INDEX__EF_SEARCH", "256"),
];
/// Concurrent verifiers.
const CHECKERS: usize = 4;

fn seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        })
}

#[derive(Debug, Clone, PartialEq)]
struct Content {
    embedding: Vec<f32>,
    attributes: BTreeMap<String, String>,
}

type Catalogue = Arc<BTreeMap<String, Content>>;

/// `LOOKBOOK_TORN_PRODUCTS` products (1,500 in the short run: each trial
/// rebuilds the index from all of them; 4,000 in the full one, above
/// `index.exact_threshold`'s default too, though every search here goes
/// through the graph anyway).
fn catalogue() -> Catalogue {
    let n = sized("TORN_PRODUCTS", 1_500, 4_000);
    Arc::new(
        (0..n)
            .map(|i| {
                (
                    format!("p{i}"),
                    Content {
                        // As the server stores it: AddProduct normalises
                        // (in f64), which may move the last bit of a vector
                        // normalised in f32, and the checks are bit for bit.
                        embedding: Embedding::normalize(&synthetic_vector(i, DIM), DIM)
                            .expect("a synthetic vector is a valid embedding")
                            .as_slice()
                            .to_vec(),
                        attributes: BTreeMap::from([
                            ("i".to_owned(), i.to_string()),
                            (
                                "colour".to_owned(),
                                ["red", "blue", "green"][i as usize % 3].to_owned(),
                            ),
                        ]),
                    },
                )
            })
            .collect(),
    )
}

/// The real binary, started on `data` with the catalogue loaded, then
/// stopped with SIGTERM so a dump of it is on disk.
async fn build_data_dir(data: &Path, products: &Catalogue) {
    let server = ServerProcess::spawn_with(data, SERVER_ENV).await;
    let mut c = connect(&server.url).await;
    let requests: Vec<proto::AddProductRequest> = products
        .iter()
        .map(|(id, p)| proto::AddProductRequest {
            product_id: id.clone(),
            image: Default::default(),
            embedding: Some(proto::Embedding {
                values: p.embedding.clone(),
            }),
            attributes: p.attributes.clone().into_iter().collect(),
        })
        .collect();
    let r = c
        .add_products(tokio_stream::iter(
            requests.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .expect("load the catalogue")
        .into_inner();
    assert_eq!(
        (r.added, r.failed),
        (products.len() as u64, 0),
        "{:?}",
        r.errors
    );
    let status = server.terminate();
    assert!(status.success(), "graceful SIGTERM exit: {status:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a copy's dir");
    for entry in std::fs::read_dir(from).expect("read a dir to copy") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Replaces `data`'s store and index dump with the pristine copies.
fn restore(pristine: &Path, data: &Path) {
    if data.exists() {
        std::fs::remove_dir_all(data).expect("clear the data dir");
    }
    copy_dir(pristine, data);
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel)).expect("read the dump dir") {
            let entry = entry.expect("dir entry");
            let rel = rel.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// A file's name for the figures: the generation folder's unique name
/// becomes `gen-*`.
fn label(rel: &Path) -> String {
    rel.components()
        .map(|c| {
            let s = c.as_os_str().to_string_lossy();
            if s.starts_with("gen-") {
                "gen-*".to_owned()
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Damage {
    Truncate,
    FlipBit,
    Garbage,
}

impl Damage {
    const ALL: [Damage; 3] = [Damage::Truncate, Damage::FlipBit, Damage::Garbage];

    fn name(self) -> &'static str {
        match self {
            Damage::Truncate => "truncate",
            Damage::FlipBit => "bit flip",
            Damage::Garbage => "garbage",
        }
    }
}

/// Damages `path` and says how. Garbage always changes at least one byte:
/// a "damage" that rewrote the same bytes would test nothing.
fn damage(path: &Path, kind: Damage, rng: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).expect("read the file to damage");
    let len = bytes.len() as u64;
    assert!(len > 0, "{} is empty", path.display());
    let how = match kind {
        Damage::Truncate => {
            let at = rng.below(len);
            bytes.truncate(at as usize);
            format!("truncated to {at} of {len} bytes")
        }
        Damage::FlipBit => {
            let at = rng.below(len);
            let bit = rng.below(8);
            bytes[at as usize] ^= 1 << bit;
            format!("bit {bit} of byte {at} of {len} flipped")
        }
        Damage::Garbage => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(4096));
            let range = at as usize..(at + n) as usize;
            let before = bytes[range.clone()].to_vec();
            for b in &mut bytes[range.clone()] {
                *b = rng.next() as u8;
            }
            if bytes[range.clone()] == before[..] {
                bytes[range.start] ^= 0xFF;
            }
            format!("{n} bytes of garbage at {at} of {len}")
        }
    };
    std::fs::write(path, &bytes).expect("write the damaged file");
    how
}

/// How a start of the real binary ended.
enum Start {
    Serving(Running),
    Exited { code: Option<i32>, stderr: String },
}

/// A server that reached SERVING, with everything it writes to stderr.
struct Running {
    server: ServerProcess,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    fn url(&self) -> &str {
        &self.server.url
    }

    /// SIGTERM; the exit status and all the server wrote to stderr.
    fn stop(self) -> (std::process::ExitStatus, String) {
        let status = self.server.terminate();
        self.reader.join().expect("stderr reader");
        let stderr = self.stderr.lock().expect("stderr lines").join("\n");
        (status, stderr)
    }
}

/// A panic report in a server's stderr: even a panic the server catches
/// and turns into an error prints one (and a backtrace with
/// `RUST_BACKTRACE` set), which an operator should never have to read.
fn panicked(stderr: &str) -> bool {
    stderr.contains("panicked at")
}

/// Starts the real binary on `data` and waits until it serves or exits.
async fn start(data: &Path) -> Start {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookbook"))
        .env("LOOKBOOK__HTTP__LISTEN", "127.0.0.1:0")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .current_dir(repo_root())
        .env("LOOKBOOK__TELEMETRY__LOG_FORMAT", "json")
        .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "info")
        .envs(SERVER_ENV.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lookbook serve");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let reader = std::thread::spawn({
        let lines = Arc::clone(&lines);
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(start) = line.find("\"addr\":\"").map(|s| s + 8)
                    && let Some(end) = line[start..].find('"').map(|e| start + e)
                    && let Ok(addr) = line[start..end].parse()
                {
                    let _ = addr_tx.send(addr);
                }
                lines.lock().expect("stderr lines").push(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut url = None;
    loop {
        if url.is_none()
            && let Ok(addr) = addr_rx.try_recv()
        {
            url = Some(format!("http://{addr}"));
        }
        if let Some(url) = &url
            && serving(url).await
        {
            return Start::Serving(Running {
                server: ServerProcess {
                    child,
                    url: url.clone(),
                    http: None,
                },
                stderr: lines,
                reader,
            });
        }
        // An exit after "listening" counts too: health is polled beside it.
        if let Some(status) = child.try_wait().expect("poll the server") {
            reader.join().expect("stderr reader");
            let stderr = lines.lock().expect("stderr lines").join("\n");
            return Start::Exited {
                code: status.code(),
                stderr,
            };
        }
        assert!(
            Instant::now() < deadline,
            "the server neither served nor exited within 180 s:\n{}",
            lines.lock().expect("stderr lines").join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether grpc.health.v1 reports SERVING at `url` now.
async fn serving(url: &str) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Ok(channel) = tonic::transport::Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "lookbook.v1.RecommenderService".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
}

async fn stats(c: &mut Client) -> proto::GetStatsResponse {
    c.get_stats(proto::GetStatsRequest {})
        .await
        .expect("GetStats succeeds")
        .into_inner()
}

/// Every product of the catalogue asked for by id and found by its own
/// embedding, `CHECKERS` at a time. Returns the ids not served (NotFound)
/// and every wrong answer.
async fn check_products(url: &str, products: &Catalogue) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = products.keys().cloned().collect();
    let mut tasks = Vec::new();
    for part in 0..CHECKERS {
        let mut c = connect(url).await;
        let products = Arc::clone(products);
        let ids: Vec<String> = ids.iter().skip(part).step_by(CHECKERS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut missing = Vec::new();
            let mut wrong = Vec::new();
            for id in ids {
                let want = &products[&id];
                let got = match c
                    .get_product(proto::GetProductRequest {
                        product_id: id.clone(),
                        view: proto::ProductView::Full.into(),
                    })
                    .await
                {
                    Ok(p) => p
                        .into_inner()
                        .product
                        .expect("GetProduct answers with the product"),
                    Err(s) if s.code() == Code::NotFound => {
                        missing.push(id);
                        continue;
                    }
                    Err(s) => {
                        wrong.push(format!("GetProduct {id}: {s}"));
                        continue;
                    }
                };
                let embedding = got.embedding.map(|e| e.values).unwrap_or_default();
                let identical = embedding.len() == want.embedding.len()
                    && embedding
                        .iter()
                        .zip(&want.embedding)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                if !identical {
                    wrong.push(format!(
                        "{id}: served embedding differs from the stored one"
                    ));
                }
                let attributes: BTreeMap<String, String> = got.attributes.into_iter().collect();
                if attributes != want.attributes {
                    wrong.push(format!("{id}: served attributes {attributes:?}"));
                }
                match c
                    .recommend_similar(similar_to_vector(want.embedding.clone(), 1))
                    .await
                {
                    Ok(r) => match r.into_inner().items.first() {
                        Some(top) if top.product_id == id && top.score > 0.9999 => {}
                        Some(top) => wrong.push(format!(
                            "{id}: its own embedding finds {} first (score {}); {}",
                            top.product_id,
                            top.score,
                            rank_with_wider_search(&mut c, &id, &want.embedding).await
                        )),
                        None => wrong.push(format!("{id}: its own embedding finds nothing")),
                    },
                    Err(s) => wrong.push(format!("RecommendSimilar for {id}: {s}")),
                }
            }
            (missing, wrong)
        }));
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for t in tasks {
        let (m, w) = t.await.expect("checker task");
        missing.extend(m);
        wrong.extend(w);
    }
    missing.sort();
    (missing, wrong)
}

/// For a failure message: where a product its own embedding did not find
/// first stands in a search of 200 (a miss of the search, or a product the
/// graph cannot reach).
async fn rank_with_wider_search(c: &mut Client, id: &str, embedding: &[f32]) -> String {
    match c
        .recommend_similar(similar_to_vector(embedding.to_vec(), 200))
        .await
    {
        Ok(r) => match r.into_inner().items.iter().position(|i| i.product_id == id) {
            Some(rank) => format!("rank {rank} with k = 200"),
            None => "not in the top 200 either".to_owned(),
        },
        Err(s) => format!("k = 200: {s}"),
    }
}

fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(2_000)..]
}

fn assert_none(failures: &[String], what: &str, var: &str, seed: u64) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures (replay with {var}={seed}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[derive(Default, Clone, Copy, serde::Serialize)]
struct Tally {
    trials: u64,
    detected: u64,
    served_correctly: u64,
}

/// Each file of a clean stop's dump, damaged many times over: never used,
/// the index rebuilt from the store, every product served as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_dump_files_are_detected_and_the_index_rebuilt() {
    let seed = seed("LOOKBOOK_TORN_SEED");
    let trials = sized("TORN_TRIALS", 14, 200);
    eprintln!(
        "torn dump files: seed {seed} (replay with LOOKBOOK_TORN_SEED={seed}), {trials} trials"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let pristine = dir.path().join("pristine");
    let data = dir.path().join("data");
    let products = catalogue();
    let n = products.len() as u64;
    build_data_dir(&pristine, &products).await;
    let files = files_under(&pristine.join("index"));
    let labels: Vec<String> = files.iter().map(|f| label(f)).collect();
    assert!(
        labels.iter().any(|l| l == "MANIFEST") && labels.iter().any(|l| l == "gen-*/graph.bin"),
        "a clean stop leaves a MANIFEST and a graph file: {labels:?}"
    );

    // Control: the pristine copy loads its dump and serves everything, so a
    // rejected dump below is the damage's doing.
    restore(&pristine, &data);
    let Start::Serving(server) = start(&data).await else {
        panic!("the pristine copy does not start");
    };
    let mut c = connect(server.url()).await;
    let s = stats(&mut c).await;
    assert!(s.index_from_dump, "the pristine copy loads its dump");
    assert_eq!(s.catalog_size, n);
    let (missing, wrong) = check_products(server.url(), &products).await;
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "the pristine copy: {} missing, {} wrong: {:?}",
        missing.len(),
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let (status, stderr) = server.stop();
    assert!(
        status.success() && !panicked(&stderr),
        "{status:?}: {stderr}"
    );

    let mut tally: BTreeMap<(String, &str), Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut startups = Vec::new();
    for trial in 0..trials {
        // Every (file, damage) pair in turn; offsets and lengths at random.
        let f = trial as usize % files.len();
        let kind = Damage::ALL[(trial as usize / files.len()) % Damage::ALL.len()];
        restore(&pristine, &data);
        let how = damage(&data.join("index").join(&files[f]), kind, &mut rng);
        let what = format!("trial {trial}: {} {how}", labels[f]);
        let t = tally.entry((labels[f].clone(), kind.name())).or_default();
        t.trials += 1;
        let begun = Instant::now();
        let server = match start(&data).await {
            Start::Serving(server) => server,
            Start::Exited { code, stderr } => {
                failures.push(format!(
                    "{what}: start-up failed with {code:?}:\n{}",
                    tail(&stderr)
                ));
                continue;
            }
        };
        startups.push(begun.elapsed().as_secs_f64());
        let mut c = connect(server.url()).await;
        let s = stats(&mut c).await;
        if s.index_from_dump {
            failures.push(format!("{what}: the damaged dump was used"));
        } else {
            t.detected += 1;
        }
        if s.catalog_size != n {
            failures.push(format!("{what}: catalogue size {}", s.catalog_size));
        }
        let (missing, wrong) = check_products(server.url(), &products).await;
        if missing.is_empty() && wrong.is_empty() {
            t.served_correctly += 1;
        } else {
            failures.push(format!(
                "{what}: {} products missing ({:?}), {} wrong answers: {:?}",
                missing.len(),
                &missing[..missing.len().min(5)],
                wrong.len(),
                &wrong[..wrong.len().min(5)]
            ));
        }
        let (status, stderr) = server.stop();
        if !status.success() {
            failures.push(format!("{what}: SIGTERM exit {status:?}"));
        }
        if panicked(&stderr) {
            failures.push(format!("{what}: a panic:\n{}", tail(&stderr)));
        }
        eprintln!(
            "{what}: detected {}, served correctly {}",
            !s.index_from_dump,
            missing.is_empty() && wrong.is_empty()
        );
    }

    let per_file: Vec<serde_json::Value> = tally
        .iter()
        .map(|((file, kind), t)| serde_json::json!({"file": file, "damage": kind, "tally": t}))
        .collect();
    let detected: u64 = tally.values().map(|t| t.detected).sum();
    let served: u64 = tally.values().map(|t| t.served_correctly).sum();
    let max_startup = startups.iter().copied().fold(0.0, f64::max);
    let figures = serde_json::json!({
        "seed": seed,
        "products": n,
        "trials": trials,
        "detected": detected,
        "served_correctly": served,
        "by_file_and_damage": per_file,
        "startup_seconds_max": max_startup,
        "failures": failures.len(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let rows: String = tally
        .iter()
        .map(|((file, kind), t)| {
            format!(
                "| `{file}` | {kind} | {} | {} | {} |\n",
                t.trials, t.detected, t.served_correctly
            )
        })
        .collect();
    let markdown = format!(
        "### Torn index files\n\n\
         {trials} trials (seed {seed}) on a {n}-product catalogue on the HNSW path: \
         one file of a clean stop's dump damaged per trial, then a restart of the real \
         binary.\n\n\
         | file | damage | trials | detected (dump not used) | every product served as stored |\n\
         |---|---|---|---|---|\n{rows}\n\
         Verified in every trial: the server became SERVING, GetStats showed the dump was not \
         used and the full catalogue, and each product's GetProduct embedding was \
         bit-identical to the stored one with equal attributes and its own embedding found it \
         first through the graph. Failures: {}.\n",
        failures.len()
    );
    report("torn_files", &figures, &markdown);
    assert_none(&failures, "torn dump files", "LOOKBOOK_TORN_SEED", seed);
}

/// What a damaged store file led to.
#[derive(Default, serde::Serialize)]
struct StoreOutcomes {
    trials: u64,
    start_refused: u64,
    served_everything: u64,
    served_leaving_out_rows: u64,
    rows_left_out: u64,
    /// Panic reports printed by the server or `lookbook check`.
    panic_reports: u64,
}

/// The store file truncated or overwritten with garbage at random places:
/// start-up stops with a clear error naming the file (no panic), or, if the
/// store is still readable, every product served is served exactly as
/// stored and what is left out is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_file_stops_start_up_or_serves_only_what_is_intact() {
    let seed = seed("LOOKBOOK_TORN_SEED");
    let trials = sized("TORN_STORE_TRIALS", 4, 40);
    eprintln!(
        "torn store file: seed {seed} (replay with LOOKBOOK_TORN_SEED={seed}), {trials} trials"
    );
    // Its own stream, so that one seed does not damage the same offsets in
    // the dump test and here.
    let mut rng = Rng::new(seed ^ 0x5708E);
    let dir = tempfile::tempdir().expect("temp dir");
    let pristine = dir.path().join("pristine");
    let data = dir.path().join("data");
    let products = catalogue();
    let n = products.len() as u64;
    build_data_dir(&pristine, &products).await;
    let store = Path::new("catalog.redb");
    assert!(
        pristine.join(store).is_file(),
        "the store file is {store:?}"
    );

    let mut outcomes = StoreOutcomes::default();
    let mut by_kind: HashMap<&str, u64> = HashMap::new();
    let mut failures = Vec::new();
    for trial in 0..trials {
        restore(&pristine, &data);
        let path = data.join(store);
        let how = if trial % 2 == 0 {
            damage(&path, Damage::Truncate, &mut rng)
        } else {
            // Garbage at a few places at once.
            (0..1 + rng.below(4))
                .map(|_| damage(&path, Damage::Garbage, &mut rng))
                .collect::<Vec<_>>()
                .join("; ")
        };
        *by_kind
            .entry(if trial % 2 == 0 {
                "truncate"
            } else {
                "garbage"
            })
            .or_default() += 1;
        let what = format!("trial {trial}: catalog.redb {how}");
        outcomes.trials += 1;
        let check = Command::new(env!("CARGO_BIN_EXE_lookbook"))
            .args(["check", "--data-dir"])
            .arg(&data)
            .current_dir(repo_root())
            .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "warn")
            .output()
            .expect("run lookbook check");
        let check_out = String::from_utf8_lossy(&check.stdout).into_owned();
        let check_err = String::from_utf8_lossy(&check.stderr).into_owned();
        if panicked(&check_err) {
            outcomes.panic_reports += 1;
            failures.push(format!(
                "{what}: `lookbook check` printed a panic:\n{}",
                tail(&check_err)
            ));
        }
        match start(&data).await {
            // Never SERVING: `start` returns as soon as health says so. (The
            // port is bound, NOT_SERVING, while the store loads.)
            Start::Exited { code, stderr } => {
                outcomes.start_refused += 1;
                if code != Some(1) {
                    failures.push(format!(
                        "{what}: start-up exited with {code:?} (1 expected; 101 is a panic):\n{}",
                        tail(&stderr)
                    ));
                }
                if !stderr.contains("catalog.redb") {
                    failures.push(format!(
                        "{what}: the error does not name the store file:\n{}",
                        tail(&stderr)
                    ));
                }
                if panicked(&stderr) {
                    outcomes.panic_reports += 1;
                    failures.push(format!(
                        "{what}: start-up printed a panic:\n{}",
                        tail(&stderr)
                    ));
                }
                if check.status.code() != Some(1) {
                    failures.push(format!(
                        "{what}: start-up refuses the store, but `lookbook check` exits {:?}:\n{}",
                        check.status.code(),
                        check_out
                    ));
                }
                eprintln!("{what}: start-up refused ({code:?})");
            }
            Start::Serving(server) => {
                let mut c = connect(server.url()).await;
                let s = stats(&mut c).await;
                let (missing, wrong) = check_products(server.url(), &products).await;
                let served = n - missing.len() as u64;
                if s.catalog_size != served {
                    failures.push(format!(
                        "{what}: catalogue size {}, but {served} products are served",
                        s.catalog_size
                    ));
                }
                if !wrong.is_empty() {
                    failures.push(format!(
                        "{what}: {} wrong answers: {:?}",
                        wrong.len(),
                        &wrong[..wrong.len().min(5)]
                    ));
                }
                if missing.is_empty() {
                    outcomes.served_everything += 1;
                } else {
                    outcomes.served_leaving_out_rows += 1;
                    outcomes.rows_left_out += missing.len() as u64;
                    // What start-up left out, the offline check reports.
                    if check.status.code() != Some(1)
                        || !check_out.contains(&format!("products readable: {served}"))
                    {
                        failures.push(format!(
                            "{what}: {} rows left out, but `lookbook check` exits {:?}:\n{}",
                            missing.len(),
                            check.status.code(),
                            check_out
                        ));
                    }
                }
                let (status, stderr) = server.stop();
                if !status.success() {
                    failures.push(format!("{what}: SIGTERM exit {status:?}"));
                }
                if panicked(&stderr) {
                    outcomes.panic_reports += 1;
                    failures.push(format!("{what}: a panic:\n{}", tail(&stderr)));
                }
                eprintln!(
                    "{what}: served {served} of {n}, {} wrong answers",
                    wrong.len()
                );
            }
        }
    }
    let figures = serde_json::json!({
        "seed": seed,
        "products": n,
        "trials_by_damage": by_kind,
        "outcomes": outcomes,
        "failures": failures.len(),
    });
    let markdown = format!(
        "### Torn store file\n\n\
         {trials} trials (seed {}) on a {n}-product catalogue: `catalog.redb` \
         truncated at a random offset, or overwritten with garbage at 1-4 random places, \
         then a restart of the real binary.\n\n\
         | outcome | trials |\n|---|---|\n\
         | start-up refused | {} |\n\
         | served every product exactly as stored | {} |\n\
         | served the others exactly, left out unreadable rows ({} rows in all) | {} |\n\
         | panic reports printed (server or `lookbook check`) | {} |\n\
         | failures | {} |\n\n\
         Required of a refusal: exit code 1 (not a panic's 101), an error naming \
         `catalog.redb`, no panic report, and `lookbook check` exiting 1 on the same file. \
         Required of a start: the catalogue size equal to the products served, each served \
         product's embedding bit-identical and attributes equal to what was stored and its own \
         embedding finding it first, and rows left out reported by `lookbook check`.\n",
        seed,
        outcomes.start_refused,
        outcomes.served_everything,
        outcomes.rows_left_out,
        outcomes.served_leaving_out_rows,
        outcomes.panic_reports,
        failures.len(),
    );
    report("torn_store", &figures, &markdown);
    assert_none(&failures, "torn store file", "LOOKBOOK_TORN_SEED", seed);
}
