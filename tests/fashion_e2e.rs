//! End to end on the real product photos (`LOOKBOOK_FASHION_DATA`): import
//! the whole sample through `AddProducts`, then check embeddings, similar
//! queries (by id, by embedding, by photo), retrieval quality, filters,
//! freshness of new products, and restart, all through the gRPC client.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use common::*;
use lookbook::{
    api::proto::{self, recommend_similar_request::Query},
    dataset::{self, ARTICLE_TYPE},
    tooling::eval,
};

fn read(path: &std::path::Path) -> bytes::Bytes {
    bytes::Bytes::from(std::fs::read(path).expect("read a sample photo"))
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fashion_sample_end_to_end() {
    let Some(data) = fashion_data("fashion_sample_end_to_end") else {
        return;
    };
    let (entries, _) = dataset::read_catalog(&data).unwrap();
    assert!(
        entries.len() > 2_900,
        "sample has {} products",
        entries.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;

    // --- Embed: 1280-d unit vectors, deterministic, batch == singles.
    let photos: Vec<bytes::Bytes> = entries[..4].iter().map(|e| read(&e.image)).collect();
    let single = |c: &mut Client, b: bytes::Bytes| {
        let mut c = c.clone();
        async move {
            let r = c
                .embed(proto::EmbedRequest { images: vec![b] })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.model, "efficientnet-lite2");
            assert_eq!(r.dim, 1280);
            r.embeddings.into_iter().next().unwrap().values
        }
    };
    let a1 = single(&mut c, photos[0].clone()).await;
    let a2 = single(&mut c, photos[0].clone()).await;
    assert_eq!(a1.len(), 1280);
    assert!((norm(&a1) - 1.0).abs() < 1e-4);
    assert_eq!(a1, a2, "the same photo twice gives the same vector");
    let batch = c
        .embed(proto::EmbedRequest {
            images: photos.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .embeddings;
    assert_eq!(batch.len(), 4);
    for (i, b) in batch.iter().enumerate() {
        let s = single(&mut c, photos[i].clone()).await;
        let max_diff = s
            .iter()
            .zip(&b.values)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max_diff < 1e-4,
            "batch item {i} differs from single by {max_diff}"
        );
    }

    // --- Import the whole sample through AddProducts.
    let started = std::time::Instant::now();
    let items: Vec<proto::AddProductRequest> = entries.iter().map(photo_request).collect();
    let r = c
        .add_products(futures::stream::iter(
            items.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .unwrap()
        .into_inner();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {} photos in {secs:.1} s ({:.1} products/s)",
        r.added,
        r.added as f64 / secs
    );
    assert_eq!(
        (r.added, r.failed),
        (entries.len() as u64, 0),
        "{:?}",
        r.errors
    );
    assert_eq!(r.catalog_size, entries.len() as u64);

    let labels: HashMap<&str, &str> = entries
        .iter()
        .map(|e| {
            (
                e.id.as_str(),
                e.attributes.get(ARTICLE_TYPE).map_or("", String::as_str),
            )
        })
        .collect();

    // --- Every stored embedding, for the exact-search reference.
    let mut vectors: Vec<(String, Vec<f32>)> = Vec::with_capacity(entries.len());
    for e in &entries {
        let p = c
            .get_product(proto::GetProductRequest {
                product_id: e.id.clone(),
                view: proto::ProductView::Full.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .expect("GetProduct answers with the product");
        assert_eq!(
            p.attributes.get(ARTICLE_TYPE),
            e.attributes.get(ARTICLE_TYPE)
        );
        vectors.push((p.product_id, p.embedding.unwrap().values));
    }

    // --- By product id: k results, sorted, the query excluded.
    let r = c
        .recommend_similar(similar_to_id(&entries[0].id, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 10);
    assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(r.items.iter().all(|i| i.product_id != entries[0].id));
    assert!(
        r.items
            .iter()
            .all(|i| i.attributes.contains_key(ARTICLE_TYPE))
    );

    // --- By a product's own embedding: itself first with score ~1. Over
    // many products, since about half of real vectors have an f32 self-dot
    // above 1 (the DistDot trap).
    let mut above_one = 0;
    for (id, v) in vectors.iter().step_by(5) {
        if v.iter().map(|x| x * x).sum::<f32>() > 1.0 {
            above_one += 1;
        }
        let r = c
            .recommend_similar(similar_to_vector(v.clone(), 5))
            .await
            .unwrap()
            .into_inner();
        // The sample has a few byte-identical photos under different ids;
        // those tie with the product itself (ties are ordered by id).
        let pos = r
            .items
            .iter()
            .position(|i| &i.product_id == id)
            .unwrap_or_else(|| panic!("{id} not found by its own vector: {:?}", r.items));
        assert!(
            r.items[pos].score > 0.999,
            "self score {}",
            r.items[pos].score
        );
        assert!(
            r.items[..pos]
                .iter()
                .all(|i| i.score >= r.items[pos].score - 1e-5),
            "{id} is not first by its own vector: {:?}",
            r.items
        );
    }
    assert!(above_one > 0, "no vector exercised the self-dot > 1 case");

    // --- By a new photo: a mirrored, re-encoded copy of a catalogue photo
    // finds the original among its nearest neighbours.
    let original = &entries[10];
    let mirrored = {
        let img = image::load_from_memory(&read(&original.image)).unwrap();
        let mut out = std::io::Cursor::new(Vec::new());
        img.fliph()
            .to_rgb8()
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let r = c
        .recommend_similar(proto::RecommendSimilarRequest {
            query: Some(Query::Image(mirrored.into())),
            k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 10);
    assert!(
        r.items.iter().any(|i| i.product_id == original.id),
        "mirrored photo of {} did not find it: {:?}",
        original.id,
        r.items.iter().map(|i| &i.product_id).collect::<Vec<_>>()
    );

    // --- Retrieval quality through the service, and HNSW recall vs exact.
    let classes = eval::query_labels(labels.values().copied());
    let mut sums = [0.0f64; 3];
    let mut recall = 0.0;
    let mut queries = 0usize;
    for (id, v) in &vectors {
        let label = labels[id.as_str()];
        if !classes.contains_key(label) {
            continue;
        }
        let r = c
            .recommend_similar(similar_to_id(id, 10))
            .await
            .unwrap()
            .into_inner();
        let got: Vec<&str> = r
            .items
            .iter()
            .map(|i| labels[i.product_id.as_str()])
            .collect();
        for (s, k) in sums.iter_mut().zip(eval::CUTOFFS) {
            *s += eval::precision_at(label, &got, k);
        }
        let mut exact: Vec<(f32, &str)> = vectors
            .iter()
            .filter(|(other, _)| other != id)
            .map(|(other, w)| (dot(v, w), other.as_str()))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: HashSet<&str> = exact.iter().take(10).map(|(_, id)| *id).collect();
        recall += r
            .items
            .iter()
            .filter(|i| truth.contains(i.product_id.as_str()))
            .count() as f64
            / 10.0;
        queries += 1;
    }
    let q = queries as f64;
    let (p1, p5, p10) = (sums[0] / q, sums[1] / q, sums[2] / q);
    let recall = recall / q;
    eprintln!(
        "end-to-end over {queries} queries: precision@1 {p1:.4} @5 {p5:.4} @10 {p10:.4}; HNSW recall@10 {recall:.4}"
    );
    assert!(p10 >= 0.74, "precision@10 {p10:.4} < 0.74");
    assert!(recall >= 0.97, "recall@10 {recall:.4} < 0.97");

    // --- Filters on real attributes, including one matching < 1% of the catalogue.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in labels.values() {
        *counts.entry(l).or_default() += 1;
    }
    let (rare, rare_n) = counts
        .iter()
        .filter(|(_, n)| (10..entries.len() / 100).contains(*n))
        .map(|(l, n)| (*l, *n))
        .max_by_key(|(l, n)| (*n, *l))
        .expect("an articleType under 1% with at least 10 products");
    eprintln!(
        "rare filter: articleType {rare} ({rare_n} of {} products)",
        entries.len()
    );
    let must = |key: &str, values: &[&str]| proto::AttributeFilter {
        key: key.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    };
    let r = c
        .recommend_similar(proto::RecommendSimilarRequest {
            query: Some(Query::ProductId(entries[0].id.clone())),
            k: 10,
            filter: Some(proto::Filter {
                must: vec![must(ARTICLE_TYPE, &[rare])],
                must_not: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 10);
    assert!(r.items.iter().all(|i| i.attributes[ARTICLE_TYPE] == rare));
    let r = c
        .recommend_similar(proto::RecommendSimilarRequest {
            query: Some(Query::ProductId(entries[0].id.clone())),
            k: 20,
            filter: Some(proto::Filter {
                must: vec![must("gender", &["Women"])],
                must_not: vec![must("baseColour", &["Black", "White"])],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 20);
    assert!(r.items.iter().all(|i| i.attributes["gender"] == "Women"
        && !["Black", "White"].contains(&i.attributes["baseColour"].as_str())));

    // --- Freshness: a product added now is returned by the next query;
    // replace and delete never return stale or deleted products.
    let new_photo = generated_png(200, 240, 320);
    let add = c
        .add_product(proto::AddProductRequest {
            product_id: "new-1".into(),
            image: new_photo.clone().into(),
            embedding: None,
            attributes: [("articleType".to_owned(), "Generated".to_owned())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(add.created);
    assert_eq!(add.catalog_size, entries.len() as u64 + 1);
    let by_photo = |photo: Vec<u8>| proto::RecommendSimilarRequest {
        query: Some(Query::Image(photo.into())),
        k: 5,
        ..Default::default()
    };
    let r = c
        .recommend_similar(by_photo(new_photo.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items[0].product_id, "new-1");
    assert!(r.items[0].score > 0.999);
    // Replace it with a very different photo: the old photo no longer finds it first with ~1.
    let replacement = read(&entries[20].image);
    let add = c
        .add_product(proto::AddProductRequest {
            product_id: "new-1".into(),
            image: replacement,
            embedding: None,
            attributes: [("articleType".to_owned(), "Replaced".to_owned())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!add.created);
    let r = c
        .recommend_similar(by_photo(new_photo))
        .await
        .unwrap()
        .into_inner();
    for i in &r.items {
        if i.product_id == "new-1" {
            assert!(i.score < 0.99, "stale vector of new-1 returned");
            assert_eq!(i.attributes[ARTICLE_TYPE], "Replaced");
        }
    }
    let r = c
        .recommend_similar(similar_to_id(&entries[20].id, 3))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.items
            .iter()
            .any(|i| i.product_id == "new-1" && i.score > 0.999),
        "the replacement is a copy of {}: {:?}",
        entries[20].id,
        r.items
    );
    let d = c
        .delete_product(proto::DeleteProductRequest {
            product_id: "new-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.deleted);
    let r = c
        .recommend_similar(similar_to_id(&entries[20].id, 10))
        .await
        .unwrap()
        .into_inner();
    assert!(r.items.iter().all(|i| i.product_id != "new-1"));

    // --- Restart: every product back with the same embedding.
    server.stop().await;
    let started = std::time::Instant::now();
    let server = TestServer::start(test_config(dir.path())).await;
    eprintln!(
        "restart with {} products: SERVING after {:.2} s",
        entries.len(),
        started.elapsed().as_secs_f64()
    );
    let mut c = server.client().await;
    let before: HashMap<String, Arc<Vec<f32>>> = vectors
        .into_iter()
        .map(|(id, v)| (id, Arc::new(v)))
        .collect();
    let stats = c
        .get_stats(proto::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.catalog_size, entries.len() as u64);
    for (id, v) in &before {
        let p = c
            .get_product(proto::GetProductRequest {
                product_id: id.clone(),
                view: proto::ProductView::Full.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .expect("GetProduct answers with the product");
        assert_eq!(
            &p.embedding.unwrap().values,
            v.as_ref(),
            "{id} changed across restart"
        );
    }
    server.stop().await;
}
