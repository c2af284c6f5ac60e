//! Damaged stored data: a product row with flipped bytes is detected by its
//! checksum, left out by id (never served, never the reason the service
//! cannot start), reported by `lookbook check`, and healed by a new write of
//! the id; a store file with garbage in it stops start-up with a clear error.

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

fn lookbook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookbook"))
        .args(args)
        .current_dir(repo_root())
        .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "warn")
        .output()
        .expect("run lookbook")
}

/// Flips one byte in the middle of `id`'s stored value, with redb itself
/// (so the file stays a valid database: only the row is wrong).
fn damage_row(store: &std::path::Path, id: &str) {
    let db = redb::Database::open(store).expect("open the store file");
    let mut value = {
        let txn = db.begin_read().expect("read txn");
        let table = txn.open_table(PRODUCTS).expect("products table");
        table
            .get(id)
            .expect("read the row")
            .expect("the row exists")
            .value()
            .to_vec()
    };
    let mid = value.len() / 2;
    value[mid] ^= 0x5A;
    let txn = db.begin_write().expect("write txn");
    {
        let mut table = txn.open_table(PRODUCTS).expect("products table");
        table
            .insert(id, value.as_slice())
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
    server.stop().await;
    let clean = lookbook(&["check", "--data-dir", &data]);
    assert!(clean.status.success(), "{clean:?}");

    damage_row(&dir.path().join("catalog.redb"), "p7");
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
        server.stop().await;
    }

    // A new write of the id replaces the damaged row.
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    c.add_product(embedding_request("p7", synthetic_vector(7, DIM), &[]))
        .await
        .expect("re-add p7");
    server.stop().await;
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
