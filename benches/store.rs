//! What redb's quick-repair costs and buys (see `store`'s module docs): one
//! durable `put` of a 1280-d product into a store of 20,000, and opening a
//! crash image of that store, each with quick-repair on (what the service
//! runs) and off. A crash image is the file copied while the store is open:
//! its commits are on disk but it was never closed, exactly what `kill -9`
//! leaves, so opening it runs redb's recovery.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use lookbook::store::{Store, StoreOptions, StoredProduct};

const PRODUCTS: usize = 20_000;
const DIM: usize = 1280;

fn product(i: usize) -> StoredProduct {
    // Deterministic, incompressible-looking values; their meaning is irrelevant here.
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let embedding = (0..DIM)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1_u64 << 24) as f32 - 0.5
        })
        .collect();
    StoredProduct {
        id: format!("p{i:08}"),
        attributes: BTreeMap::from([("articleType".to_owned(), format!("t{}", i % 100))]),
        embedding,
        model: "bench".to_owned(),
        has_thumbnail: false,
    }
}

fn filled(path: &Path, options: StoreOptions) -> Store {
    let store = Store::open_with(path, options).expect("a fresh store in a temp dir");
    for start in (0..PRODUCTS).step_by(500) {
        let batch: Vec<StoredProduct> = (start..start + 500).map(product).collect();
        store.put_batch(&batch).expect("a valid batch");
    }
    store
}

fn bench(c: &mut Criterion) {
    for (name, quick_repair) in [("quick-repair on", true), ("quick-repair off", false)] {
        let options = StoreOptions { quick_repair };
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("catalog.redb");
        let store = filled(&path, options);
        let mut next = PRODUCTS;
        c.bench_function(&format!("store put 1 of 1280-d into 20K ({name})"), |b| {
            b.iter(|| {
                next += 1;
                black_box(store.put(&product(next)).expect("a valid product"));
            });
        });
        let image = dir.path().join("crash-image.redb");
        let copy = dir.path().join("opened.redb");
        std::fs::copy(&path, &image).expect("copy of an open store");
        let mut group = c.benchmark_group("store open after kill -9");
        group.sample_size(10);
        group.bench_function(format!("20K products ({name})"), |b| {
            b.iter_batched(
                || {
                    std::fs::copy(&image, &copy).expect("a fresh crash image");
                    // Flushed here, so that the first fsync of the open does
                    // not pay for writing the copy out.
                    std::fs::File::open(&copy)
                        .and_then(|f| f.sync_all())
                        .expect("the copy synced");
                },
                |_| black_box(Store::open_with(&copy, options).expect("recoverable")),
                BatchSize::PerIteration,
            );
        });
        group.finish();
        drop(store);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
