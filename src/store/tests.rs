//! Behavioural tests of [`Store`] against real files, including a kill -9 crash test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::meta::META;
use super::products::PRODUCTS;
use super::*;

fn temp_store() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path).unwrap();
    (dir, path, store)
}

fn product(id: &str, seed: u32) -> StoredProduct {
    StoredProduct {
        id: id.to_owned(),
        attributes: BTreeMap::from([
            ("colour".to_owned(), format!("c{seed}")),
            ("title".to_owned(), format!("Produkt „{id}“ ✓")),
        ]),
        embedding: (0..8).map(|i| (seed * 8 + i) as f32 * 0.25 - 1.0).collect(),
        model: "clip-vit-b32".to_owned(),
        has_thumbnail: false,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Field-by-field equality with embeddings compared bit for bit (NaN-safe).
fn assert_same(a: &StoredProduct, b: &StoredProduct) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.model, b.model);
    assert_eq!(a.attributes, b.attributes);
    assert_eq!(
        bits(&a.embedding),
        bits(&b.embedding),
        "embedding of {}",
        a.id
    );
}

fn scan_all(store: &Store) -> Vec<StoredProduct> {
    let mut out = Vec::new();
    store
        .scan(&mut |p| {
            out.push(p);
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<StoreError>();
}

#[test]
fn put_then_get_round_trips() {
    let (_dir, _path, store) = temp_store();
    let p = product("sku-1", 1);
    store.put(&p).unwrap();
    assert_same(&store.get("sku-1").unwrap().unwrap(), &p);
    assert_eq!(store.get("sku-2").unwrap(), None);
    assert_eq!(store.len().unwrap(), 1);
}

#[test]
fn put_reports_created_then_replaced_and_replaces() {
    let (_dir, _path, store) = temp_store();
    assert_eq!(store.put(&product("a", 1)).unwrap(), Upsert::Created);
    let newer = product("a", 2);
    assert_eq!(store.put(&newer).unwrap(), Upsert::Replaced);
    assert_same(&store.get("a").unwrap().unwrap(), &newer);
    assert_eq!(store.len().unwrap(), 1);
}

#[test]
fn delete_removes_and_reports_absence() {
    let (_dir, _path, store) = temp_store();
    store.put(&product("a", 1)).unwrap();
    store.put(&product("b", 2)).unwrap();
    let v = store.version().unwrap();

    assert!(store.delete("a").unwrap());
    assert_eq!(store.get("a").unwrap(), None);
    assert_eq!(store.len().unwrap(), 1);
    assert_eq!(store.version().unwrap(), v + 1);

    assert!(!store.delete("a").unwrap());
    assert_eq!(
        store.version().unwrap(),
        v + 1,
        "a no-op delete must not bump"
    );
    assert!(store.get("b").unwrap().is_some());
}

#[test]
fn version_bumps_on_every_write_and_persists() {
    let (_dir, path, store) = temp_store();
    assert_eq!(store.version().unwrap(), 0);
    store.put(&product("a", 1)).unwrap();
    assert_eq!(store.version().unwrap(), 1);
    store.put(&product("a", 2)).unwrap();
    assert_eq!(store.version().unwrap(), 2);
    store
        .put_batch(&[product("b", 3), product("c", 4)])
        .unwrap();
    assert_eq!(store.version().unwrap(), 3, "one bump per batch");
    store.put_batch(&[]).unwrap();
    assert_eq!(store.version().unwrap(), 3, "an empty batch writes nothing");
    store.delete("b").unwrap();
    assert_eq!(store.version().unwrap(), 4);
    store.set_catalog_model("other", 16).unwrap();
    assert_eq!(
        store.version().unwrap(),
        4,
        "metadata is not a product write"
    );

    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.version().unwrap(), 4);
    store.put(&product("d", 5)).unwrap();
    assert_eq!(store.version().unwrap(), 5);
}

#[test]
fn put_batch_with_duplicate_ids_keeps_the_later_one() {
    let (_dir, _path, store) = temp_store();
    store.put(&product("x", 0)).unwrap();
    let upserts = store
        .put_batch(&[
            product("a", 1),
            product("b", 2),
            product("a", 3),
            product("x", 4),
        ])
        .unwrap();
    assert_eq!(
        upserts,
        vec![
            Upsert::Created,
            Upsert::Created,
            Upsert::Replaced,
            Upsert::Replaced
        ]
    );
    assert_same(&store.get("a").unwrap().unwrap(), &product("a", 3));
    assert_same(&store.get("x").unwrap().unwrap(), &product("x", 4));
    assert_eq!(store.len().unwrap(), 3);
}

#[test]
fn reopen_preserves_everything_bit_identically() {
    let (_dir, path, store) = temp_store();
    let odd_floats = vec![
        f32::from_bits(0x7fc0_1234), // quiet NaN with payload
        f32::from_bits(0xff80_0001), // signalling NaN, negative
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::from_bits(1), // smallest subnormal
        f32::MAX,
    ];
    let mut written = vec![
        product("b", 1),
        StoredProduct {
            id: "a-odd".into(),
            attributes: BTreeMap::from([
                (String::new(), String::new()),
                ("k\0".into(), "v\n".into()),
            ]),
            embedding: odd_floats,
            model: String::new(),
            has_thumbnail: false,
        },
        StoredProduct {
            id: "c-empty".into(),
            attributes: BTreeMap::new(),
            embedding: Vec::new(),
            model: "m".into(),
            has_thumbnail: false,
        },
    ];
    store.put_batch(&written).unwrap();
    store.set_catalog_model("clip-vit-b32", 8).unwrap();
    let version = store.version().unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    written.sort_by(|a, b| a.id.cmp(&b.id));
    let read = scan_all(&store);
    assert_eq!(read.len(), written.len());
    for (r, w) in read.iter().zip(&written) {
        assert_same(r, w);
    }
    assert_eq!(store.version().unwrap(), version);
    assert_eq!(
        store.catalog_model().unwrap(),
        Some(("clip-vit-b32".to_owned(), 8))
    );
}

#[test]
fn scan_yields_id_order_and_stops_at_the_callbacks_error() {
    let (_dir, _path, store) = temp_store();
    for id in ["c", "a", "b", "d"] {
        store.put(&product(id, 0)).unwrap();
    }
    let ids: Vec<String> = scan_all(&store).into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);

    let mut seen = Vec::new();
    let err = store
        .scan(&mut |p| {
            seen.push(p.id.clone());
            if p.id == "b" {
                return Err(StoreError::Corrupt {
                    table: "test",
                    key: p.id,
                    reason: "stop".into(),
                });
            }
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { table: "test", .. }),
        "{err:?}"
    );
    assert_eq!(seen, ["a", "b"]);
}

#[test]
fn catalog_model_is_recorded_on_first_write_and_can_be_overwritten() {
    let (_dir, path, store) = temp_store();
    assert_eq!(store.catalog_model().unwrap(), None);
    store.put(&product("a", 1)).unwrap();
    assert_eq!(
        store.catalog_model().unwrap(),
        Some(("clip-vit-b32".to_owned(), 8))
    );

    let mut other = product("b", 2);
    other.model = "another".into();
    other.embedding.truncate(3);
    store.put(&other).unwrap();
    assert_eq!(
        store.catalog_model().unwrap(),
        Some(("clip-vit-b32".to_owned(), 8)),
        "only the first write records it"
    );

    store.set_catalog_model("siglip", 1152).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.catalog_model().unwrap(),
        Some(("siglip".to_owned(), 1152))
    );
}

#[test]
fn open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/store.redb");
    let store = Store::open(&path).unwrap();
    store.put(&product("a", 1)).unwrap();
    assert!(path.is_file());
}

#[test]
fn second_open_of_the_same_file_is_refused() {
    let (_dir, path, _store) = temp_store();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Open {
                source: redb::DatabaseError::DatabaseAlreadyOpen,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn open_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.redb");
    std::fs::write(&path, vec![0xa5u8; 8192]).unwrap();
    assert!(matches!(Store::open(&path), Err(StoreError::Open { .. })));
}

#[test]
fn malformed_values_are_reported_as_corrupt_not_panics() {
    let (_dir, _path, store) = temp_store();
    store.put(&product("good", 1)).unwrap();
    {
        let txn = store.db.begin_write().unwrap();
        {
            let mut products = txn.open_table(PRODUCTS).unwrap();
            products.insert("bad", &[1u8, 200, 0][..]).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("products_version", &[1u8, 2, 3][..]).unwrap();
            meta.insert("catalog_model", &[9u8][..]).unwrap();
        }
        txn.commit().unwrap();
    }

    let err = store.get("bad").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { table: "products", key, .. } if key == "bad"),
        "{err:?}"
    );
    assert_same(&store.get("good").unwrap().unwrap(), &product("good", 1));
    assert!(matches!(
        store.scan(&mut |_| Ok(())),
        Err(StoreError::Corrupt {
            table: "products",
            ..
        })
    ));
    assert!(matches!(
        store.version(),
        Err(StoreError::Corrupt { table: "meta", .. })
    ));
    assert!(matches!(
        store.catalog_model(),
        Err(StoreError::Corrupt { table: "meta", .. })
    ));
    // A write must not paper over a corrupt version with a fresh count.
    assert!(store.put(&product("new", 2)).is_err());
    assert_eq!(store.get("new").unwrap(), None, "failed write rolled back");
}

#[test]
fn concurrent_writers_through_an_arc_all_land() {
    let (_dir, _path, store) = temp_store();
    let store = Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..10 {
                    store.put(&product(&format!("t{t}-{i}"), i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.len().unwrap(), 40);
    assert_eq!(store.version().unwrap(), 40);
}

// ---------------------------------------------------------------------------------------------
// Crash consistency: a child process writes in a loop and acknowledges each committed
// transaction on stdout; the parent SIGKILLs it mid-stream and checks the reopened file.

/// Path of the database the child writes to; its absence makes the child test a no-op, so a
/// plain `cargo test -- --ignored` does not start an endless writer.
const CRASH_CHILD_DB: &str = "LOOKBOOK_STORE_CRASH_CHILD_DB";
/// Production-sized embeddings, so values span more than one 4 KiB page.
const CRASH_DIM: usize = 1280;
const CRASH_ROUNDS: usize = 3;
/// Transactions acknowledged per round before the kill.
const CRASH_ACKS_PER_ROUND: usize = 120;
/// Safety stop for the child if nobody kills it.
const CRASH_CHILD_MAX_TXNS: usize = 100_000;

fn crash_id(n: u64) -> String {
    format!("p{n:08}")
}

/// Number of products the transaction starting at product `n` writes: every fifth starts a
/// batch of 8, so both `put` and `put_batch` are crashed into. Being a function of `n` keeps
/// the transaction boundaries identical when a later round resumes from the stored count.
fn crash_txn_len(n: u64) -> u64 {
    if n.is_multiple_of(5) { 8 } else { 1 }
}

/// The product the child writes for `id`, derived from the id alone.
fn crash_product(id: &str) -> StoredProduct {
    // FNV-1a of the id seeds a splitmix64 stream.
    let mut state = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let embedding = (0..CRASH_DIM)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            f32::from_bits((z ^ (z >> 31)) as u32)
        })
        .collect();
    StoredProduct {
        id: id.to_owned(),
        attributes: BTreeMap::from([("id-again".to_owned(), id.to_owned())]),
        embedding,
        model: "crash-model".to_owned(),
        has_thumbnail: false,
    }
}

/// The test harness name of [`crash_child`] (module path without the crate name).
fn crash_child_test_name() -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{module}::crash_child")
}

#[test]
#[ignore = "child process of acknowledged_writes_survive_kill_9; does nothing when run directly"]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_DB) else {
        return;
    };
    let store = Store::open(Path::new(&path)).unwrap();
    // Resume after the surviving prefix, which ends on a transaction boundary.
    let mut n = store.len().unwrap();
    let mut out = std::io::stdout().lock();
    for _ in 0..CRASH_CHILD_MAX_TXNS {
        let len = crash_txn_len(n);
        if len == 1 {
            store.put(&crash_product(&crash_id(n))).unwrap();
        } else {
            let batch: Vec<_> = (n..n + len).map(|i| crash_product(&crash_id(i))).collect();
            store.put_batch(&batch).unwrap();
        }
        // Only now is the transaction acknowledged. A failed write means the parent is gone.
        writeln!(out, "ack {n} {len}").expect("parent closed the pipe");
        out.flush().expect("parent closed the pipe");
        n += len;
    }
}

/// Kills the child if the parent test panics before doing so.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Parses an `ack FIRST LEN` line into the product count it acknowledges (FIRST + LEN).
fn parse_ack(line: &str) -> Option<u64> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    let first: u64 = parts.next()?.parse().ok()?;
    let len: u64 = parts.next()?.parse().ok()?;
    Some(first + len)
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut acked: u64 = 0;

    for round in 0..CRASH_ROUNDS {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                crash_child_test_name().as_str(),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_DB, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();

        let mut acks = 0;
        while acks < CRASH_ACKS_PER_ROUND {
            let Some(line) = lines.next() else {
                let mut stderr = String::new();
                let _ = child.0.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("round {round}: child exited after {acks} acks:\n{stderr}");
            };
            if let Some(end) = parse_ack(&line.unwrap()) {
                acked = acked.max(end);
                acks += 1;
            }
        }
        child.0.kill().unwrap(); // SIGKILL, mid-transaction more often than not
        child.0.wait().unwrap();
        // Acks already in the pipe were committed before the kill too.
        for line in lines {
            if let Some(end) = parse_ack(&line.unwrap()) {
                acked = acked.max(end);
            }
        }

        let store = Store::open(&path).unwrap();
        let products = scan_all(&store);
        let present = products.len() as u64;
        for (i, p) in products.iter().enumerate() {
            // Ids form a gap-free prefix, and each product is exactly what was written.
            assert_eq!(
                p.id,
                crash_id(i as u64),
                "round {round}: hole before {}",
                p.id
            );
            assert_same(p, &crash_product(&p.id));
        }
        assert!(
            present >= acked,
            "round {round}: {acked} products acknowledged, {present} present"
        );
        // The prefix ends on a transaction boundary (no half batch), and the version counts
        // exactly the transactions that committed, so it was written atomically with them.
        let mut boundary = 0;
        let mut txns = 0;
        while boundary < present {
            boundary += crash_txn_len(boundary);
            txns += 1;
        }
        assert_eq!(boundary, present, "round {round}: partial batch survived");
        assert_eq!(store.version().unwrap(), txns, "round {round}");
        assert_eq!(store.len().unwrap(), present);
    }
}

fn user_write(user: &str, seqs: std::ops::Range<u64>, evicted: Vec<u64>) -> UserWrite {
    UserWrite {
        user: user.to_owned(),
        appended: seqs
            .clone()
            .map(|seq| {
                (
                    seq,
                    StoredInteraction {
                        product_id: format!("p{seq}"),
                        action: 1,
                        timestamp_ms: 1_000 + seq as i64,
                    },
                )
            })
            .collect(),
        evicted,
        profile: StoredProfile {
            reference_ms: 1_000 + seqs.end as i64,
            next_seq: seqs.end,
            interests: vec![StoredInterest {
                weight: 2.5,
                mean: vec![0.6, 0.8],
            }],
        },
    }
}

fn interactions_of(store: &Store) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    store
        .scan_interactions(
            &mut |(user, seq, _)| {
                out.push((user, seq));
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    assert!(damaged.is_empty(), "{damaged:?}");
    out
}

#[test]
fn interaction_commits_round_trip_evict_and_survive_reopen() {
    let (_dir, path, store) = temp_store();
    let version = store.version().unwrap();
    store
        .commit_interactions(&InteractionCommit {
            users: vec![
                user_write("ann", 0..3, vec![]),
                user_write("bo", 0..1, vec![]),
            ],
            trends: vec![(
                "p1".into(),
                StoredTrend {
                    score: 3.0,
                    at_ms: 42,
                },
            )],
            applied: None,
        })
        .unwrap();
    store
        .commit_interactions(&InteractionCommit {
            users: vec![user_write("ann", 3..4, vec![0])],
            trends: vec![],
            applied: None,
        })
        .unwrap();
    assert_eq!(
        store.version().unwrap(),
        version,
        "interactions do not touch the product version (the index dump stays valid)"
    );
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(
        interactions_of(&store),
        [("ann", 1), ("ann", 2), ("ann", 3), ("bo", 0)]
            .map(|(u, s)| (u.to_owned(), s))
            .to_vec(),
        "a user's history is contiguous and in arrival order; evicted rows are gone"
    );
    let mut profiles = Vec::new();
    let mut damaged = Vec::new();
    store
        .scan_profiles(
            &mut |p| {
                profiles.push(p);
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    assert_eq!(profiles.len(), 2);
    assert_eq!(profiles[0].1, user_write("ann", 3..4, vec![]).profile);
    let mut trends = Vec::new();
    store
        .scan_trends(
            &mut |t| {
                trends.push(t);
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    assert!(damaged.is_empty(), "{damaged:?}");
    assert_eq!(
        trends,
        vec![(
            "p1".to_owned(),
            StoredTrend {
                score: 3.0,
                at_ms: 42
            }
        )]
    );

    assert_eq!(store.forget_user("ann").unwrap(), (3, true));
    assert_eq!(store.forget_user("ann").unwrap(), (0, false));
    assert_eq!(interactions_of(&store), vec![("bo".to_owned(), 0)]);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(
        interactions_of(&store),
        vec![("bo".to_owned(), 0)],
        "forgetting is durable"
    );
}

#[test]
fn shoppers_load_one_by_one_without_their_neighbours() {
    let (_dir, _path, store) = temp_store();
    assert_eq!(store.shopper_counts().unwrap(), (0, 0));
    store
        .commit_interactions(&InteractionCommit {
            users: vec![
                user_write("an", 0..2, vec![]),
                user_write("ann", 0..3, vec![]),
                user_write("anna", 0..1, vec![]),
            ],
            trends: vec![],
            applied: None,
        })
        .unwrap();
    store
        .commit_interactions(&InteractionCommit {
            users: vec![user_write("ann", 3..4, vec![0])],
            trends: vec![],
            applied: None,
        })
        .unwrap();
    assert_eq!(store.shopper_counts().unwrap(), (3, 6));
    let loaded = store.load_shoppers(&["ann", "nobody", "an"]).unwrap();
    assert_eq!(loaded.len(), 3);
    assert_eq!(
        loaded[0].profile,
        Some(user_write("ann", 3..4, vec![]).profile)
    );
    assert_eq!(
        loaded[0]
            .history
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        vec![1, 2, 3],
        "in arrival order, evicted rows gone, no other user's rows"
    );
    assert_eq!(loaded[0].history[2].1.product_id, "p3");
    assert!(is_nothing(&loaded[1]), "unknown user: {:?}", loaded[1]);
    assert_eq!(loaded[2].history.len(), 2);
    assert!(
        loaded
            .iter()
            .all(|s| s.damaged_profile.is_none() && s.damaged_history.is_empty())
    );
    store.forget_user("ann").unwrap();
    let forgotten = store.load_shoppers(&["ann"]).unwrap();
    assert!(is_nothing(&forgotten[0]), "{forgotten:?}");
    assert_eq!(store.shopper_counts().unwrap(), (2, 3));
}

/// Whether nothing at all is stored for a shopper.
fn is_nothing(s: &StoredShopper) -> bool {
    s.profile.is_none()
        && s.history.is_empty()
        && s.damaged_profile.is_none()
        && s.damaged_history.is_empty()
}

/// The table and key a corrupt-value error names.
fn corrupt_at(e: &StoreError) -> (&'static str, &str) {
    match e {
        StoreError::Corrupt { table, key, .. } => (table, key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Applies `change` to the stored value under `key` of `table`, in place.
fn rewrite<K: redb::Key + 'static>(
    store: &Store,
    table: redb::TableDefinition<K, &'static [u8]>,
    key: K::SelfType<'_>,
    change: impl FnOnce(&mut Vec<u8>),
) {
    let txn = store.db.begin_write().unwrap();
    {
        let mut t = txn.open_table(table).unwrap();
        let mut value = t
            .get(&key)
            .unwrap()
            .expect("the row exists")
            .value()
            .to_vec();
        change(&mut value);
        t.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn damaged_shopper_rows_are_reported_by_key_and_the_rest_still_reads() {
    let (_dir, _path, store) = temp_store();
    let trend = |score| StoredTrend { score, at_ms: 42 };
    store
        .commit_interactions(&InteractionCommit {
            users: vec![
                user_write("ann", 0..3, vec![]),
                user_write("bo", 0..2, vec![]),
            ],
            trends: vec![("p1".into(), trend(1.0)), ("p2".into(), trend(2.0))],
            applied: None,
        })
        .unwrap();
    let flip = |v: &mut Vec<u8>| {
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
    };
    rewrite(&store, users::PROFILES, "ann", flip);
    rewrite(&store, users::INTERACTIONS, ("ann", 1), flip);
    rewrite(&store, users::TRENDS, "p1", flip);
    // A whole valid value under another key: bo's history row 1 as row 0.
    let bo1 =
        users::encode_interaction("bo", 1, &user_write("bo", 1..2, vec![]).appended[0].1).unwrap();
    rewrite(&store, users::INTERACTIONS, ("bo", 0), |v| *v = bo1);

    let loaded = store.load_shoppers(&["ann", "bo"]).unwrap();
    let ann = &loaded[0];
    assert!(ann.profile.is_none());
    let err = ann
        .damaged_profile
        .as_ref()
        .expect("ann's profile is damaged");
    assert_eq!(corrupt_at(err), ("profiles", "ann"));
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(
        ann.history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 2],
        "the readable rows are still returned"
    );
    assert_eq!(ann.damaged_history.len(), 1);
    assert_eq!(ann.damaged_history[0].0, 1);
    assert_eq!(
        corrupt_at(&ann.damaged_history[0].1),
        ("interactions", "ann#1")
    );
    let bo = &loaded[1];
    assert_eq!(bo.profile, Some(user_write("bo", 0..2, vec![]).profile));
    assert_eq!(
        bo.history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        corrupt_at(&bo.damaged_history[0].1),
        ("interactions", "bo#0")
    );

    // The scans hand over every readable row and name every damaged one.
    let mut damaged = Vec::new();
    let mut profiles = Vec::new();
    store
        .scan_profiles(
            &mut |(user, _)| {
                profiles.push(user);
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    let mut rows = Vec::new();
    store
        .scan_interactions(
            &mut |(user, seq, _)| {
                rows.push((user, seq));
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    let mut trends = Vec::new();
    store
        .scan_trends(
            &mut |(product, _)| {
                trends.push(product);
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    assert_eq!(profiles, ["bo"]);
    assert_eq!(
        rows,
        [("ann", 0), ("ann", 2), ("bo", 1)].map(|(u, s)| (u.to_owned(), s))
    );
    assert_eq!(trends, ["p2"]);
    assert_eq!(
        damaged.iter().map(corrupt_at).collect::<Vec<_>>(),
        [
            ("profiles", "ann"),
            ("interactions", "ann#1"),
            ("interactions", "bo#0"),
            ("trending", "p1"),
        ]
    );

    // Rewriting the profile and deleting the damaged row, as the next
    // commit for the shopper does, leaves nothing damaged.
    store
        .commit_interactions(&InteractionCommit {
            users: vec![user_write("ann", 3..4, vec![1])],
            trends: vec![("p1".into(), trend(3.0))],
            applied: None,
        })
        .unwrap();
    let ann = store.load_shoppers(&["ann"]).unwrap().remove(0);
    assert_eq!(ann.profile, Some(user_write("ann", 3..4, vec![]).profile));
    assert!(ann.damaged_profile.is_none() && ann.damaged_history.is_empty());
    assert_eq!(
        ann.history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 2, 3]
    );
}

#[test]
fn shopper_rows_of_format_v1_are_still_read() {
    let (_dir, _path, store) = temp_store();
    store
        .commit_interactions(&InteractionCommit {
            users: vec![user_write("ann", 0..1, vec![])],
            trends: vec![(
                "p1".into(),
                StoredTrend {
                    score: 1.5,
                    at_ms: 7,
                },
            )],
            applied: None,
        })
        .unwrap();
    // v1 is v2 with format byte 1 and no checksum.
    let to_v1 = |v: &mut Vec<u8>| {
        assert_eq!(v[0], 2, "new writes are v2");
        v[0] = 1;
        v.truncate(v.len() - 4);
    };
    rewrite(&store, users::PROFILES, "ann", to_v1);
    rewrite(&store, users::INTERACTIONS, ("ann", 0), to_v1);
    rewrite(&store, users::TRENDS, "p1", to_v1);
    let ann = store.load_shoppers(&["ann"]).unwrap().remove(0);
    let expected = user_write("ann", 0..1, vec![]);
    assert_eq!(ann.profile, Some(expected.profile));
    assert_eq!(ann.history, expected.appended);
    assert!(ann.damaged_profile.is_none() && ann.damaged_history.is_empty());
    let mut damaged = Vec::new();
    let mut trends = Vec::new();
    store
        .scan_trends(
            &mut |t| {
                trends.push(t);
                Ok(())
            },
            &mut damaged,
        )
        .unwrap();
    assert!(damaged.is_empty(), "{damaged:?}");
    assert_eq!(
        trends,
        [(
            "p1".to_owned(),
            StoredTrend {
                score: 1.5,
                at_ms: 7
            }
        )]
    );
}

/// A crash image (the file copied while the store is open: commits on disk,
/// never closed, what `kill -9` leaves) opens with every committed product.
/// With quick-repair (the default) it opens from the saved allocator state;
/// without, redb reads the whole file to repair it.
#[test]
fn a_crash_image_opens_without_a_full_repair() {
    for quick_repair in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open_with(&path, StoreOptions { quick_repair }).unwrap();
        assert!(
            !store.opened_with_full_repair(),
            "a new file needs no repair"
        );
        let products: Vec<StoredProduct> = (0..50).map(|i| product(&format!("p{i}"), i)).collect();
        store.put_batch(&products[..25]).unwrap();
        store.put(&products[25]).unwrap();
        store.put_batch(&products[26..]).unwrap();
        let image = dir.path().join("image.redb");
        std::fs::copy(&path, &image).unwrap();
        drop(store);

        let opened = Store::open_with(&image, StoreOptions { quick_repair }).unwrap();
        assert_eq!(
            opened.opened_with_full_repair(),
            !quick_repair,
            "quick_repair {quick_repair}"
        );
        assert_eq!(opened.len().unwrap(), 50);
        for p in &products {
            assert_same(&opened.get(&p.id).unwrap().expect("committed"), p);
        }
        drop(opened);
        let clean = Store::open(&path).unwrap();
        assert!(!clean.opened_with_full_repair(), "a clean close needs none");
    }
}

#[test]
fn applied_positions_commit_with_their_change_and_alone() {
    let (_dir, path, store) = temp_store();
    assert_eq!(store.applied().unwrap(), (0, 0));
    let p = StoredProduct {
        id: "p1".into(),
        attributes: Default::default(),
        embedding: vec![1.0, 0.0],
        model: "m".into(),
        has_thumbnail: false,
    };
    store
        .put_batch_applied(std::slice::from_ref(&p), &[], Some(Applied::Products(7)))
        .unwrap();
    assert_eq!(store.applied().unwrap(), (7, 0));
    // A delete of an absent id still records its position.
    assert!(
        !store
            .delete_applied("nope", Some(Applied::Products(9)))
            .unwrap()
    );
    assert_eq!(store.applied().unwrap(), (9, 0));
    // An empty batch records only the position, without a version bump.
    let version = store.version().unwrap();
    store
        .put_batch_applied(&[], &[], Some(Applied::Products(11)))
        .unwrap();
    assert_eq!(store.version().unwrap(), version);
    store
        .commit_interactions(&InteractionCommit {
            applied: Some(4),
            ..Default::default()
        })
        .unwrap();
    store.forget_user_applied("ann", Some(5)).unwrap();
    assert_eq!(store.applied().unwrap(), (11, 5));
    // Single-node writes leave the positions alone.
    store.put(&p).unwrap();
    assert!(store.delete("p1").unwrap());
    drop(store);
    assert_eq!(Store::open(&path).unwrap().applied().unwrap(), (11, 5));
}
