//! Damaged stored data: a product row with flipped bytes is detected by its
//! checksum, left out by id (never served, never the reason the service
//! cannot start), reported by `lookbook check`, and healed by a new write of
//! the id; a store file with garbage in it stops start-up with a clear error.
//! Shopper rows likewise: a damaged profile is rebuilt from the shopper's
//! history, a damaged history or trending row is skipped, each is reported
//! by key, and the next interaction replaces them.

mod common;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;
use lookbook::api::proto;
use redb::{ReadableDatabase, TableDefinition};
use tonic::Code;

const DIM: usize = 1280;
/// The store's products table, as `src/store/products.rs` defines it.
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
/// The store's shopper tables, as `src/store/users.rs` defines them.
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
const INTERACTIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("interactions");
const TRENDS: TableDefinition<&str, &[u8]> = TableDefinition::new("trending");

fn lookbook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookbook"))
        .args(args)
        .current_dir(repo_root())
        .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "warn")
        .output()
        .expect("run lookbook")
}

/// Stops an in-process server and waits (bounded) until nothing in this
/// process holds its store file open any more, since `lookbook check` needs
/// the file to itself (redb allows one opener). `stop` returns once the
/// server has drained and dumped, but some of its handles on the store are
/// dropped by threads that end on their own a moment later (the
/// interaction writer's among them); the real binary lets go at exit.
async fn stop(server: TestServer, data_dir: &std::path::Path) {
    server.stop().await;
    let store = data_dir.join("catalog.redb");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match redb::Database::open(&store) {
            Ok(db) => {
                drop(db);
                return;
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                assert!(
                    Instant::now() < deadline,
                    "the store is still open 10 s after the server stopped"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("open the store after the server stopped: {e}"),
        }
    }
}

/// Flips one byte in the middle of the value stored under `key` in
/// `table`, with redb itself (so the file stays a valid database: only the
/// row is wrong).
fn damage_row<K: redb::Key + 'static>(
    store: &std::path::Path,
    table: TableDefinition<K, &[u8]>,
    key: K::SelfType<'_>,
) {
    let db = redb::Database::open(store).expect("open the store file");
    let mut value = {
        let txn = db.begin_read().expect("read txn");
        let table = txn.open_table(table).expect("open the table");
        table
            .get(&key)
            .expect("read the row")
            .expect("the row exists")
            .value()
            .to_vec()
    };
    let mid = value.len() / 2;
    value[mid] ^= 0x5A;
    let txn = db.begin_write().expect("write txn");
    {
        let mut table = txn.open_table(table).expect("open the table");
        table
            .insert(key, value.as_slice())
            .expect("overwrite the row");
    }
    txn.commit().expect("commit the damage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_is_left_out_reported_and_healed_and_a_damaged_file_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8 path").to_owned();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    for i in 0..50u64 {
        c.add_product(embedding_request(
            &format!("p{i}"),
            synthetic_vector(i, DIM),
            &[],
        ))
        .await
        .expect("add");
    }
    stop(server, dir.path()).await;
    let clean = lookbook(&["check", "--data-dir", &data]);
    assert!(clean.status.success(), "{clean:?}");

    damage_row(&dir.path().join("catalog.redb"), PRODUCTS, "p7");
    let report = lookbook(&["check", "--data-dir", &data]);
    let stdout = String::from_utf8_lossy(&report.stdout);
    assert_eq!(report.status.code(), Some(1), "{report:?}");
    assert!(stdout.contains("products readable: 49"), "{stdout}");
    assert!(
        stdout.contains("\"p7\"") && stdout.contains("checksum mismatch"),
        "{stdout}"
    );

    // With the dump of the undamaged catalogue in place, and without one:
    // the service starts, serves the 49 others and never p7's bytes.
    for with_dump in [true, false] {
        if !with_dump {
            std::fs::remove_dir_all(dir.path().join("index")).expect("remove the dump");
        }
        let server = TestServer::start(test_config(dir.path())).await;
        let mut c = server.client().await;
        let stats = c
            .get_stats(proto::GetStatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(stats.catalog_size, 49, "with dump: {with_dump}");
        let missing = c
            .get_product(proto::GetProductRequest {
                product_id: "p7".into(),
                view: proto::ProductView::Full.into(),
            })
            .await
            .expect_err("the damaged product is not served");
        assert_eq!(missing.code(), Code::NotFound);
        let r = c
            .recommend_similar(similar_to_vector(synthetic_vector(8, DIM), 1))
            .await
            .expect("search")
            .into_inner();
        assert_eq!(r.items[0].product_id, "p8");
        stop(server, dir.path()).await;
    }

    // A new write of the id replaces the damaged row.
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    c.add_product(embedding_request("p7", synthetic_vector(7, DIM), &[]))
        .await
        .expect("re-add p7");
    stop(server, dir.path()).await;
    let healed = lookbook(&["check", "--data-dir", &data]);
    assert!(healed.status.success(), "{healed:?}");
    assert!(String::from_utf8_lossy(&healed.stdout).contains("products readable: 50"));

    // Garbage over the middle of the store file: start-up stops with an
    // error naming the store, never a panic's exit code (101), never serving.
    let store = dir.path().join("catalog.redb");
    let mut bytes = std::fs::read(&store).expect("read the store file");
    let start = bytes.len() / 3;
    let end = (start + 64 * 1024).min(bytes.len());
    for (i, b) in bytes[start..end].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    std::fs::write(&store, &bytes).expect("write the damaged store");
    let check = lookbook(&["check", "--data-dir", &data]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_lookbook"))
        .env("LOOKBOOK__HTTP__LISTEN", "127.0.0.1:0")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &data])
        .current_dir(repo_root())
        .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn lookbook serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.try_wait().expect("poll the server") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server kept running on a damaged store"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = serve.wait_with_output().expect("server output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("catalog.redb") || stderr.contains("store"),
        "the error names the store: {stderr}"
    );
}

/// Product `m` of cluster `c` (`c{c}-{m}`): near its cluster's centre.
fn cluster_vector(cluster: u64, member: u64) -> Vec<f32> {
    let centre = synthetic_vector(cluster, DIM);
    let noise = synthetic_vector(1_000_000 + cluster * 1000 + member, DIM);
    let v: Vec<f32> = centre
        .iter()
        .zip(&noise)
        .map(|(c, n)| c + 0.4 * n)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

/// Records `items` (product, action, timestamp) for `user` in one call.
async fn record(c: &mut Client, user: &str, items: &[(&str, proto::Action, i64)]) {
    let requests: Vec<proto::RecordInteractionRequest> = items
        .iter()
        .map(|(product, action, at)| proto::RecordInteractionRequest {
            interaction: Some(proto::Interaction {
                user_id: user.to_owned(),
                product_id: (*product).to_owned(),
                action: *action as i32,
                timestamp_ms: *at,
            }),
        })
        .collect();
    let r = c
        .record_interactions(futures::stream::iter(
            requests
                .into_iter()
                .map(proto::RecordInteractionsRequest::from),
        ))
        .await
        .unwrap_or_else(|s| panic!("record for {user}: {s}"))
        .into_inner();
    assert_eq!(
        (r.recorded, r.failed),
        (items.len() as u64, 0),
        "{:?}",
        r.errors
    );
}

async fn for_user(c: &mut Client, user: &str) -> Vec<proto::Recommendation> {
    c.recommend_for_user(proto::RecommendForUserRequest {
        user_id: user.to_owned(),
        k: 10,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("RecommendForUser {user}: {s}"))
    .into_inner()
    .items
}

fn ids(items: &[proto::Recommendation]) -> Vec<&str> {
    items.iter().map(|i| i.product_id.as_str()).collect()
}

/// `lookbook check`'s exit code and report.
fn check(data: &str) -> (Option<i32>, String) {
    let out = lookbook(&["check", "--data-dir", data]);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_shopper_rows_are_rebuilt_or_skipped_reported_and_healed() {
    use proto::Action::{AddToCart, Click, Dislike, Purchase, View};

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8 path").to_owned();
    let store = dir.path().join("catalog.redb");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    for cluster in 0..3u64 {
        for m in 0..12u64 {
            c.add_product(embedding_request(
                &format!("c{cluster}-{m}"),
                cluster_vector(cluster, m),
                &[],
            ))
            .await
            .expect("add");
        }
    }
    // Fixed times, so that s1 and its twin get bit-identical profiles.
    let t = now_ms() - 600_000;
    let s1_items = [
        ("c1-0", View, t),
        ("c1-6", Purchase, t + 1_000),
        ("c2-2", Click, t + 2_000),
        ("c2-7", View, t + 3_000),
        ("c0-0", Dislike, t + 4_000),
    ];
    record(&mut c, "s1", &s1_items).await;
    record(&mut c, "s1-twin", &s1_items).await;
    record(
        &mut c,
        "s0",
        &[
            ("c0-1", View, t),
            ("c1-2", Click, t + 1_000),
            ("c0-5", Purchase, t + 2_000),
            ("c1-4", AddToCart, t + 3_000),
            ("c2-3", Dislike, t + 4_000),
        ],
    )
    .await;
    // s2's first row (sequence 0) is the purchase damaged below.
    record(
        &mut c,
        "s2",
        &[
            ("c0-3", Purchase, t),
            ("c0-4", View, t + 1_000),
            ("c2-0", Dislike, t + 2_000),
        ],
    )
    .await;
    record(
        &mut c,
        "s3",
        &[
            ("c2-1", View, t),
            ("c2-5", View, t + 1_000),
            ("c0-8", AddToCart, t + 2_000),
        ],
    )
    .await;
    let shoppers = ["s0", "s1", "s1-twin", "s2", "s3"];
    let mut before = Vec::new();
    for user in shoppers {
        before.push(for_user(&mut c, user).await);
    }
    let newcomer = for_user(&mut c, "newcomer").await;
    assert_eq!(before[1], before[2], "s1 and its twin are alike");
    assert_ne!(ids(&before[1]), ids(&newcomer), "s1 has a taste of its own");
    assert!(
        !ids(&before[3]).contains(&"c0-3"),
        "s2's purchase is excluded"
    );
    stop(server, dir.path()).await;
    let (code, report) = check(&data);
    assert_eq!(code, Some(0), "{report}");

    // Step 1: s1's profile row is damaged.
    damage_row(&store, PROFILES, "s1");
    let (code, report) = check(&data);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("shopper rows damaged: profiles 1 ")
            && report.contains("interactions 0, trending 0")
            && report.contains("table \"profiles\" at key \"s1\": checksum mismatch"),
        "{report}"
    );
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    // Its whole history is kept, so replaying it rebuilds the profile
    // exactly: s1 answers as before, and so does everyone else.
    for (user, expected) in shoppers.iter().zip(&before) {
        assert_eq!(&for_user(&mut c, user).await, expected, "{user}");
    }
    // The next interaction rewrites the profile, built on the rebuilt one.
    let next = [("c0-9", View, t + 5_000)];
    record(&mut c, "s1", &next).await;
    record(&mut c, "s1-twin", &next).await;
    let s1_healed = for_user(&mut c, "s1").await;
    assert_eq!(s1_healed, for_user(&mut c, "s1-twin").await);
    stop(server, dir.path()).await;
    let (code, report) = check(&data);
    assert_eq!(code, Some(0), "healed: {report}");
    assert!(
        report.contains("shopper rows damaged: profiles 0 "),
        "{report}"
    );

    // Step 2: s2's purchase row and the trending row of what it bought.
    damage_row(&store, INTERACTIONS, ("s2", 0));
    damage_row(&store, TRENDS, "c0-3");
    let (code, report) = check(&data);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("interactions 1, trending 1")
            && report.contains("table \"interactions\" at key \"s2#0\": checksum mismatch")
            && report.contains("table \"trending\" at key \"c0-3\": checksum mismatch"),
        "{report}"
    );
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    for (n, user) in shoppers.iter().enumerate() {
        let expected = match *user {
            "s1" | "s1-twin" => &s1_healed,
            "s2" => continue,
            _ => &before[n],
        };
        assert_eq!(&for_user(&mut c, user).await, expected, "{user}");
    }
    // s2's profile (which holds the purchase) is intact; the purchase row
    // is skipped, so nothing excludes c0-3 or explains with it any more:
    // it is the nearest product to s2's taste, and the rest keep their order.
    let s2 = for_user(&mut c, "s2").await;
    assert_eq!(ids(&s2)[0], "c0-3", "{s2:?}");
    assert_eq!(ids(&s2)[1..], ids(&before[3])[..9], "{s2:?}");
    assert!(
        s2.iter().all(|i| !i.reason.contains("c0-3 you")),
        "the skipped row is never served: {s2:?}"
    );
    // s2's next interaction deletes the damaged row and rewrites c0-3's
    // trending count.
    record(&mut c, "s2", &[("c0-3", View, t + 5_000)]).await;
    stop(server, dir.path()).await;
    let (code, report) = check(&data);
    assert_eq!(code, Some(0), "healed: {report}");
    assert!(report.contains("interactions 0, trending 0"), "{report}");
}
