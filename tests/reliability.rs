//! Reliability with callers that misbehave: writes cancelled at random
//! points, floods past every limit, costly queries abandoned half-way, and
//! SIGTERM while the server is busy. Every search here goes through the
//! HNSW graph (`exact_threshold = 0`), the path real catalogues take.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::*;
use lookbook::api::proto;
use tonic::{Code, Request};

const DIM: usize = 1280;

fn hnsw_config(dir: &std::path::Path) -> lookbook::config::Config {
    let mut cfg = test_config(dir);
    cfg.index.exact_threshold = 0;
    cfg
}

/// Adds `ids` (with their seeds' vectors) in one `AddProducts` stream.
async fn load(c: &mut Client, items: impl Iterator<Item = (String, u64)>) {
    let requests: Vec<proto::AddProductRequest> = items
        .map(|(id, seed)| embedding_request(&id, synthetic_vector(seed, DIM), &[]))
        .collect();
    let n = requests.len() as u64;
    let r = c
        .add_products(tokio_stream::iter(
            requests.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .expect("bulk load succeeds")
        .into_inner();
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.added + r.replaced, n);
}

async fn stats(c: &mut Client) -> proto::GetStatsResponse {
    c.get_stats(proto::GetStatsRequest {})
        .await
        .expect("GetStats succeeds")
        .into_inner()
}

/// Ids whose entry differs between two snapshots (`what` names the second).
fn assert_same(
    before: &HashMap<String, Option<Vec<f32>>>,
    after: &HashMap<String, Option<Vec<f32>>>,
    what: &str,
) {
    let mut differ: Vec<(&String, bool, bool)> = before
        .iter()
        .filter(|(id, e)| after.get(*id) != Some(e))
        .map(|(id, e)| (id, e.is_some(), after.get(id).is_some_and(Option::is_some)))
        .collect();
    differ.sort();
    assert!(
        differ.is_empty(),
        "{what}: {} of {} ids differ (id, present before, present after): {differ:?}",
        differ.len(),
        before.len()
    );
}

/// For each id: its embedding per GetProduct (`None`: not found), after
/// checking that the index returns the product itself first for it.
async fn snapshot(c: &mut Client, ids: &[String]) -> HashMap<String, Option<Vec<f32>>> {
    let mut out = HashMap::new();
    for id in ids {
        let got = c
            .get_product(proto::GetProductRequest {
                product_id: id.clone(),
                view: proto::ProductView::Full.into(),
            })
            .await;
        let embedding = match got {
            Ok(p) => p
                .into_inner()
                .product
                .expect("GetProduct answers with the product")
                .embedding
                .map(|e| e.values),
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => panic!("GetProduct {id}: {s}"),
        };
        if let Some(e) = &embedding {
            let r = c
                .recommend_similar(similar_to_vector(e.clone(), 1))
                .await
                .expect("RecommendSimilar succeeds")
                .into_inner();
            let top = r.items.first().expect("a non-empty catalogue answers");
            assert_eq!(
                &top.product_id, id,
                "the index's nearest to {id}'s own embedding (scored {})",
                top.score
            );
            assert!(
                top.score > 0.9999,
                "{id} scored {} against itself",
                top.score
            );
        }
        out.insert(id.clone(), embedding);
    }
    out
}

/// The outcome of a write as this test counts it. A call cut by its
/// deadline while h2 is still moving its frames can end in a client-side
/// transport error instead of CANCELLED (a reset stream, or a connection
/// closed by h2's guard against streams reset by the client): tonic makes
/// those UNKNOWN and keeps the transport error as the status's source, which
/// a status sent by the server never has. That is the same abandoned call,
/// whose write may or may not have committed, so it counts as cancelled; an
/// UNKNOWN the server sent stays UNKNOWN and fails the test.
fn outcome(s: &tonic::Status) -> Code {
    match s.code() {
        Code::Unknown if std::error::Error::source(s).is_some() => {
            eprintln!("write cut in transport: {}", s.message());
            Code::Cancelled
        }
        Code::ResourceExhausted => {
            eprintln!("write refused: {}", s.message());
            Code::ResourceExhausted
        }
        code => code,
    }
}

/// Cancelled writes at random points (1-5 ms deadlines, eight writers on
/// 24 shared ids, mixed with deletes and calls without a deadline) leave
/// every id's index entry equal to the store's: checked live, after a
/// restart from the dump, and after a restart that rebuilds the index from
/// the store alone (the store's vector is the truth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_writes_keep_the_index_in_step_with_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = hnsw_config(dir.path());
    // Every write waits its turn: this test is about cancellation, not shedding.
    cfg.server.max_pending_writes = 10_000;
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    load(
        &mut c,
        (0..2_000u64).map(|i| (format!("b{i}"), 1_000_000 + i)),
    )
    .await;
    let hot: Vec<String> = (0..24).map(|i| format!("h{i}")).collect();

    const WRITERS: u64 = 8;
    const OPS: u64 = 400;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = c.clone();
        let hot = hot.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x9E37_79B9 + w);
            let mut outcomes: HashMap<Code, u64> = HashMap::new();
            for j in 0..OPS {
                let id = &hot[rng.pick(hot.len())];
                let deadline =
                    (rng.below(100) < 85).then(|| Duration::from_millis(1 + rng.below(5)));
                // Each op draws from its own range of vector seeds (a bulk
                // stream uses seed..seed + 126), so no two products are
                // written with the same vector: a tie would let another id
                // be a hot id's nearest with the same score.
                let seed = 10_000_000 + w * 1_000_000 + j * 1_000;
                let kind = rng.below(100);
                if kind < 15 {
                    // A bulk stream: every hot id once, among replaced
                    // fillers. Its commit links ~100 vectors into the graph,
                    // which takes long enough for a later single write of
                    // the same id to finish its store commit meanwhile, so a
                    // caller that has gone must still hold the writer.
                    let mut items: Vec<proto::AddProductRequest> = hot
                        .iter()
                        .enumerate()
                        .map(|(n, h)| {
                            embedding_request(h, synthetic_vector(seed + n as u64, DIM), &[])
                        })
                        .collect();
                    items.extend((0..76u64).map(|n| {
                        let filler = format!("b{}", rng.below(2_000));
                        embedding_request(&filler, synthetic_vector(seed + 50 + n, DIM), &[])
                    }));
                    let mut r = Request::new(tokio_stream::iter(
                        items.into_iter().map(proto::AddProductsRequest::from),
                    ));
                    r.set_timeout(Duration::from_millis(5 + rng.below(40)));
                    let code = c
                        .add_products(r)
                        .await
                        .map_or_else(|s| outcome(&s), |_| Code::Ok);
                    *outcomes.entry(code).or_default() += 1;
                    continue;
                }
                let code = if kind < 85 {
                    let mut r =
                        Request::new(embedding_request(id, synthetic_vector(seed, DIM), &[]));
                    if let Some(d) = deadline {
                        r.set_timeout(d);
                    }
                    c.add_product(r).await.map(drop)
                } else {
                    let mut r = Request::new(proto::DeleteProductRequest {
                        product_id: id.clone(),
                    });
                    if let Some(d) = deadline {
                        r.set_timeout(d);
                    }
                    c.delete_product(r).await.map(drop)
                }
                .map_or_else(|s| outcome(&s), |()| Code::Ok);
                *outcomes.entry(code).or_default() += 1;
            }
            outcomes
        }));
    }
    let mut outcomes: HashMap<Code, u64> = HashMap::new();
    for t in tasks {
        for (code, n) in t.await.expect("writer task") {
            *outcomes.entry(code).or_default() += n;
        }
    }
    eprintln!("cancelled writes: outcomes {outcomes:?}");
    let cancelled = outcomes.get(&Code::DeadlineExceeded).copied().unwrap_or(0)
        + outcomes.get(&Code::Cancelled).copied().unwrap_or(0);
    let ok = outcomes.get(&Code::Ok).copied().unwrap_or(0);
    // So many cancelled calls also trip h2's own guard against streams reset
    // by the client (ENHANCE_YOUR_CALM, which tonic reports as
    // RESOURCE_EXHAUSTED): a refusal, which writes nothing either.
    let refused = outcomes.get(&Code::ResourceExhausted).copied().unwrap_or(0);
    assert_eq!(
        cancelled + ok + refused,
        WRITERS * OPS,
        "only OK, a deadline or a refusal: {outcomes:?}"
    );
    assert!(
        cancelled >= WRITERS * OPS / 10,
        "too few writes were cancelled to test anything: {outcomes:?}"
    );
    assert!(
        ok >= WRITERS * OPS / 20,
        "too few writes went through: {outcomes:?}"
    );
    // A write without a deadline queues behind every commit still running
    // for a caller that has gone.
    load(&mut c, [("sentinel".to_owned(), 5u64)].into_iter()).await;

    let live = snapshot(&mut c, &hot).await;
    assert!(live.values().any(Option::is_some), "some hot ids exist");
    server.stop().await;

    let server = TestServer::start(hnsw_config(dir.path())).await;
    let mut c = server.client().await;
    let s = stats(&mut c).await;
    assert!(s.index_from_dump, "restart loads the dump");
    // The dump written at the clean stop is the index as it was then; had
    // the index disagreed with the store, start-up would have had to
    // reconcile products (and would have hidden the disagreement).
    assert_eq!(
        s.index_reconciled_at_start, 0,
        "the index at the stop disagreed with the store"
    );
    assert_same(
        &live,
        &snapshot(&mut c, &hot).await,
        "after a restart from the dump",
    );
    server.stop().await;

    std::fs::remove_dir_all(dir.path().join("index")).expect("remove the dump");
    let server = TestServer::start(hnsw_config(dir.path())).await;
    let mut c = server.client().await;
    assert!(
        !stats(&mut c).await.index_from_dump,
        "no dump: rebuilt from the store"
    );
    assert_same(
        &live,
        &snapshot(&mut c, &hot).await,
        "rebuilt from the store",
    );
    server.stop().await;
}

/// A flood far past the limits: every call gets OK or RESOURCE_EXHAUSTED
/// (at once, not after queueing), health stays SERVING throughout, memory
/// stays bounded, and the server answers normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_shed_with_resource_exhausted_and_health_stays_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = hnsw_config(dir.path());
    cfg.server.max_in_flight = 24;
    cfg.server.search_concurrency = 1;
    cfg.server.max_pending_searches = 4;
    cfg.model.queue_capacity = 2;
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    load(&mut c, (0..3_000u64).map(|i| (format!("p{i}"), i))).await;
    let rss_before = own_rss_bytes();

    let clients = [
        server.client().await,
        server.client().await,
        server.client().await,
        server.client().await,
    ];
    let image = generated_png(7, 256, 256);
    let mut calls = Vec::new();
    for i in 0..400u64 {
        let mut c = clients[(i % 4) as usize].clone();
        let image = image.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let code = if i % 5 == 0 {
                c.embed(proto::EmbedRequest {
                    images: vec![image.into()],
                })
                .await
                .map_or_else(|s| s.code(), |_| Code::Ok)
            } else {
                let mut q = similar_to_vector(synthetic_vector(i, DIM), 50);
                q.diversity = Some(proto::Diversity {
                    mmr_lambda: 0.5,
                    ..Default::default()
                });
                c.recommend_similar(q)
                    .await
                    .map_or_else(|s| s.code(), |_| Code::Ok)
            };
            (i % 5 == 0, code, started.elapsed())
        }));
    }
    // Health checks while the flood runs.
    let url = server.url();
    let health = tokio::spawn(async move {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = tonic::transport::Channel::from_shared(url)
            .expect("valid url")
            .connect()
            .await
            .expect("connect");
        let mut h = HealthClient::new(channel);
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let s = h
                .check(HealthCheckRequest {
                    service: "lookbook.v1.RecommenderService".into(),
                })
                .await
                .expect("health answers during the flood")
                .into_inner()
                .status;
            statuses.push(s);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    });
    let mut by_kind: HashMap<(bool, Code), u64> = HashMap::new();
    let mut slowest_refusal = Duration::ZERO;
    for call in calls {
        let (embed, code, took) = call.await.expect("call task");
        *by_kind.entry((embed, code)).or_default() += 1;
        if code == Code::ResourceExhausted {
            slowest_refusal = slowest_refusal.max(took);
        }
    }
    eprintln!("flood outcomes (embed?, code): {by_kind:?}; slowest refusal {slowest_refusal:?}");
    for ((embed, code), n) in &by_kind {
        assert!(
            matches!(code, Code::Ok | Code::ResourceExhausted),
            "{n} {} calls got {code:?}",
            if *embed { "Embed" } else { "RecommendSimilar" }
        );
    }
    for embed in [false, true] {
        assert!(
            by_kind.get(&(embed, Code::Ok)).is_some_and(|&n| n > 0),
            "some served: {by_kind:?}"
        );
        assert!(
            by_kind
                .get(&(embed, Code::ResourceExhausted))
                .is_some_and(|&n| n > 0),
            "some shed: {by_kind:?}"
        );
    }
    let statuses = health.await.expect("health task");
    assert!(
        statuses.iter().all(|&s| s == 1),
        "SERVING throughout: {statuses:?}"
    );
    // The bound on what a flood may add: 24 calls in flight of at most a
    // 256x256 photo and a k = 50 answer each, the encoder's batch buffers,
    // allocator slack. 256 MiB is several times what that needs and far
    // below what unbounded queueing of 400 calls with photos would hold.
    let grown = own_rss_bytes().saturating_sub(rss_before);
    eprintln!("flood: RSS grew {} MiB", grown >> 20);
    assert!(
        grown < 256 << 20,
        "RSS grew {} MiB in the flood",
        grown >> 20
    );
    let r = c
        .recommend_similar(similar_to_vector(synthetic_vector(3, DIM), 10))
        .await
        .expect("a normal call after the flood")
        .into_inner();
    assert_eq!(r.items[0].product_id, "p3");
    server.stop().await;
}

fn costly_query(seed: u64) -> proto::RecommendSimilarRequest {
    let mut q = similar_to_vector(synthetic_vector(seed, DIM), 1000);
    q.diversity = Some(proto::Diversity {
        mmr_lambda: 0.5,
        ..Default::default()
    });
    q
}

/// The costliest query the limits allow (k = 1000 with MMR on 5,000
/// products) gives its k distinct results at a bounded cost; once its
/// callers have gone, its work stops; and SIGTERM while such queries run
/// ends the process within `shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_queries_are_bounded_stop_when_abandoned_and_sigterm_ends_within_grace() {
    const GRACE_S: u64 = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let grace = format!("{GRACE_S}s");
    let server = ServerProcess::spawn_with(
        dir.path(),
        &[
            ("LOOKBOOK__INDEX__EXACT_THRESHOLD", "0"),
            ("LOOKBOOK__SERVER__SHUTDOWN_GRACE", &grace),
        ],
    )
    .await;
    let mut c = connect(&server.url).await;
    load(&mut c, (0..5_000u64).map(|i| (format!("p{i}"), i))).await;

    let cpu = server.cpu_seconds();
    let r = c
        .recommend_similar(costly_query(1))
        .await
        .expect("k = 1000 with MMR is served")
        .into_inner();
    let one_query_cpu = server.cpu_seconds() - cpu;
    assert_eq!(r.items.len(), 1000);
    let distinct: HashSet<&String> = r.items.iter().map(|i| &i.product_id).collect();
    assert_eq!(distinct.len(), 1000);
    eprintln!("k = 1000 with MMR on 5,000 products: {one_query_cpu:.2} s of server CPU");

    // Forty such queries whose callers give up after 50 ms.
    let mut calls = Vec::new();
    for i in 0..40u64 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            let mut r = Request::new(costly_query(100 + i));
            r.set_timeout(Duration::from_millis(50));
            c.recommend_similar(r)
                .await
                .map_or_else(|s| s.code(), |_| Code::Ok)
        }));
    }
    for call in calls {
        let code = call.await.expect("call task");
        assert!(
            matches!(code, Code::DeadlineExceeded | Code::Cancelled | Code::Ok),
            "{code:?}"
        );
    }
    // What keeps running after the callers have gone: at most the checks'
    // granularity, not the remaining queries (without cancellation each
    // running search would finish, `one_query_cpu` apiece).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = server.cpu_seconds();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_cpu = server.cpu_seconds() - cpu;
    eprintln!("after 40 abandoned costly queries: {idle_cpu:.2} s of CPU in the next 1.5 s");
    assert!(
        idle_cpu < 0.3,
        "abandoned searches kept running: {idle_cpu:.2} s of CPU"
    );

    // SIGTERM while costly queries keep arriving and running.
    let mut busy = Vec::new();
    for i in 0..6u64 {
        let mut c = c.clone();
        busy.push(tokio::spawn(async move {
            for j in 0..1_000u64 {
                if c.recommend_similar(costly_query(1_000 + i * 1_000 + j))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let status = server.terminate();
    let took = started.elapsed();
    eprintln!("SIGTERM under load: exited in {took:?} (grace {GRACE_S} s)");
    assert!(status.success(), "graceful exit: {status:?}");
    // The server plans to be gone 250 ms before the grace ends; the slack
    // is for starting `kill` and for a loaded machine.
    assert!(
        took < Duration::from_secs(GRACE_S) + Duration::from_millis(500),
        "exit took {took:?} with a grace of {GRACE_S} s"
    );
    for b in busy {
        b.await.expect("busy task");
    }
}
