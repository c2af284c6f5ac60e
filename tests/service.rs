//! The service contract on synthetic data: validation and exact status
//! codes, upsert/replace/delete semantics, background rebuild, filters,
//! restart and crash durability, concurrency. Real photos are exercised in
//! `fashion_e2e.rs`.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use lookbook::api::proto::{self, recommend_similar_request::Query};
use tonic::Code;

const DIM: usize = 1280;

async fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A test server whose every search goes through the HNSW graph: with the
/// default `exact_threshold` (2048) the few hundred products of these tests
/// would be answered by exact scans and the graph path never reached.
fn hnsw_config(dir: &std::path::Path) -> lookbook::config::Config {
    let mut cfg = test_config(dir);
    cfg.index.exact_threshold = 0;
    cfg
}

async fn stats(client: &mut Client) -> proto::GetStatsResponse {
    client
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("RPC succeeds")
        .into_inner()
}

async fn catalog_size(client: &mut Client) -> u64 {
    client
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("RPC succeeds")
        .into_inner()
        .catalog_size
}

async fn add_synthetic(client: &mut Client, id: &str, seed: u64, attrs: &[(&str, &str)]) -> bool {
    client
        .add_product(embedding_request(id, synthetic_vector(seed, DIM), attrs))
        .await
        .unwrap_or_else(|s| panic!("add {id}: {s}"))
        .into_inner()
        .created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "lookbook.v1.RecommenderService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} should be SERVING");
    }
    // Reflection lists the service.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection response {first:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "lookbook.v1.RecommenderService")
    );

    let mut client = server.client().await;
    let stats = client
        .get_stats(proto::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.model, "efficientnet-lite2");
    assert_eq!(stats.dim as usize, DIM);
    assert_eq!(stats.catalog_size, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_exact_status_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.max_message_bytes = 16 * 1024 * 1024;
    cfg.model.max_pixels = 40_000_000;
    cfg.limits.max_k = 100;
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    assert!(add_synthetic(&mut c, "known", 1, &[("articleType", "Shirts")]).await);
    let before = catalog_size(&mut c).await;

    let png = generated_png(7, 64, 48);
    let jpeg = {
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    };
    let truncated = jpeg[..jpeg.len() / 2].to_vec();
    // A valid PNG header declaring 20000 x 20000 pixels (400 MP) and no data:
    // must be refused from the header, without allocating 1.2 GB.
    let bomb = {
        let mut v = Vec::new();
        v.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        v.extend_from_slice(&(ihdr.len() as u32).to_be_bytes());
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&ihdr);
        let crc = crc32fast::hash(&chunk);
        v.extend_from_slice(&chunk);
        v.extend_from_slice(&crc.to_be_bytes());
        v
    };

    let image_req = |bytes: Vec<u8>| proto::AddProductRequest {
        product_id: "new".into(),
        image: bytes.into(),
        embedding: None,
        attributes: Default::default(),
    };
    let embed_req = |bytes: Vec<u8>| proto::EmbedRequest {
        images: vec![bytes.into()],
    };
    let ia = Code::InvalidArgument;

    // Images.
    assert_eq!(
        code_of(
            c.embed(embed_req(b"definitely not an image".to_vec()))
                .await
        )
        .await,
        ia
    );
    assert_eq!(
        code_of(c.embed(embed_req(truncated.clone())).await).await,
        ia
    );
    assert_eq!(code_of(c.embed(embed_req(Vec::new())).await).await, ia);
    assert_eq!(code_of(c.embed(embed_req(bomb.clone())).await).await, ia);
    assert_eq!(
        code_of(c.embed(proto::EmbedRequest { images: vec![] }).await).await,
        ia
    );
    assert_eq!(
        code_of(c.add_product(image_req(b"not an image".to_vec())).await).await,
        ia
    );
    assert_eq!(code_of(c.add_product(image_req(truncated)).await).await, ia);
    assert_eq!(code_of(c.add_product(image_req(bomb)).await).await, ia);
    // Over the message limit (16 MiB here).
    let huge = vec![0u8; 17 * 1024 * 1024];
    assert_eq!(
        code_of(c.add_product(image_req(huge.clone())).await).await,
        Code::ResourceExhausted
    );
    assert_eq!(
        code_of(c.embed(embed_req(huge.clone())).await).await,
        Code::ResourceExhausted
    );
    let stream = futures::stream::iter([proto::AddProductsRequest::from(image_req(huge))]);
    assert_eq!(
        code_of(c.add_products(stream).await).await,
        Code::ResourceExhausted
    );

    // Ids and content.
    let v = || synthetic_vector(9, DIM);
    assert_eq!(
        code_of(c.add_product(embedding_request("", v(), &[])).await).await,
        ia
    );
    assert_eq!(
        code_of(
            c.add_product(embedding_request(&"x".repeat(257), v(), &[]))
                .await
        )
        .await,
        ia
    );
    let neither = proto::AddProductRequest {
        product_id: "new".into(),
        ..Default::default()
    };
    assert_eq!(code_of(c.add_product(neither).await).await, ia);
    let both = proto::AddProductRequest {
        product_id: "new".into(),
        image: png.clone().into(),
        embedding: Some(proto::Embedding { values: v() }),
        attributes: Default::default(),
    };
    assert_eq!(code_of(c.add_product(both).await).await, ia);
    assert_eq!(
        code_of(
            c.add_product(embedding_request("new", vec![0.1; DIM - 1], &[]))
                .await
        )
        .await,
        ia
    );
    let mut nan = v();
    nan[3] = f32::NAN;
    assert_eq!(
        code_of(c.add_product(embedding_request("new", nan, &[])).await).await,
        ia
    );
    let mut inf = v();
    inf[0] = f32::INFINITY;
    assert_eq!(
        code_of(c.add_product(embedding_request("new", inf, &[])).await).await,
        ia
    );

    // k and queries.
    assert_eq!(
        code_of(c.recommend_similar(similar_to_id("known", 0)).await).await,
        ia
    );
    assert_eq!(
        code_of(c.recommend_similar(similar_to_id("known", 101)).await).await,
        ia
    );
    let no_query = proto::RecommendSimilarRequest {
        k: 5,
        ..Default::default()
    };
    assert_eq!(code_of(c.recommend_similar(no_query).await).await, ia);
    assert_eq!(
        code_of(
            c.recommend_similar(similar_to_vector(vec![1.0; 3], 5))
                .await
        )
        .await,
        ia
    );
    let bad_image_query = proto::RecommendSimilarRequest {
        query: Some(Query::Image(b"garbage".to_vec().into())),
        k: 5,
        ..Default::default()
    };
    assert_eq!(
        code_of(c.recommend_similar(bad_image_query).await).await,
        ia
    );

    // Unknown products.
    let nf = Code::NotFound;
    assert_eq!(
        code_of(c.recommend_similar(similar_to_id("nope", 5)).await).await,
        nf
    );
    assert_eq!(
        code_of(
            c.get_product(proto::GetProductRequest {
                product_id: "nope".into(),
                view: proto::ProductView::Full.into(),
            })
            .await
        )
        .await,
        nf
    );
    let deleted = c
        .delete_product(proto::DeleteProductRequest {
            product_id: "nope".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!deleted.deleted);

    // Nothing changed.
    assert_eq!(catalog_size(&mut c).await, before);
    assert_eq!(
        code_of(
            c.get_product(proto::GetProductRequest {
                product_id: "new".into(),
                view: proto::ProductView::Full.into(),
            })
            .await
        )
        .await,
        nf
    );

    // A bulk import reports the bad items and adds the rest.
    let items = vec![
        embedding_request("bulk-1", synthetic_vector(11, DIM), &[]),
        embedding_request("", synthetic_vector(12, DIM), &[]),
        proto::AddProductRequest {
            product_id: "bulk-bad-image".into(),
            image: b"nope".to_vec().into(),
            ..Default::default()
        },
        proto::AddProductRequest {
            product_id: "bulk-png".into(),
            image: png.into(),
            ..Default::default()
        },
        embedding_request("bulk-2", vec![f32::NAN; DIM], &[]),
        embedding_request("known", synthetic_vector(13, DIM), &[]),
    ];
    let r = c
        .add_products(futures::stream::iter(
            items.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.added, r.replaced, r.failed), (2, 1, 3), "{r:?}");
    assert_eq!(r.errors.len(), 3);
    assert!(
        r.errors.iter().any(|e| e.index == 2
            && e.product_id == "bulk-bad-image"
            && e.code == Code::InvalidArgument as i32
            && !e.message.is_empty()),
        "{:?}",
        r.errors
    );
    assert_eq!(r.catalog_size, before + 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_replace_delete_and_background_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hnsw_config(dir.path());
    cfg.index.rebuild_dead_ratio = 0.1;
    cfg.index.rebuild_min_dead = 10;
    cfg.index.maintenance_interval = Duration::from_millis(100);
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    for i in 0..300u64 {
        assert!(
            add_synthetic(
                &mut c,
                &format!("p{i}"),
                i,
                &[("group", if i % 2 == 0 { "even" } else { "odd" })]
            )
            .await
        );
    }
    // A product added now is returned by the very next query.
    assert!(add_synthetic(&mut c, "fresh", 10_000, &[]).await);
    let r = c
        .recommend_similar(similar_to_vector(synthetic_vector(10_000, DIM), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items[0].product_id, "fresh");
    assert!(r.items[0].score > 0.999);

    // Replace 60 products with new vectors and delete 40.
    for i in 0..60u64 {
        assert!(
            !add_synthetic(
                &mut c,
                &format!("p{i}"),
                50_000 + i,
                &[("group", "replaced")]
            )
            .await
        );
    }
    for i in 60..100u64 {
        let r = c
            .delete_product(proto::DeleteProductRequest {
                product_id: format!("p{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.deleted);
    }
    let check = |c: Client| async move {
        let mut c = c;
        for i in 0..100u64 {
            // Old vector of a replaced/deleted product: the stale point must not come back.
            let r = c
                .recommend_similar(similar_to_vector(synthetic_vector(i, DIM), 10))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.items.len(), 10);
            for item in &r.items {
                let n: u64 = item
                    .product_id
                    .trim_start_matches('p')
                    .parse()
                    .unwrap_or(u64::MAX);
                assert!(
                    !(60..100).contains(&n),
                    "deleted {} returned",
                    item.product_id
                );
                if n < 60 {
                    assert_eq!(
                        item.attributes.get("group").map(String::as_str),
                        Some("replaced")
                    );
                    assert!(
                        item.score < 0.5,
                        "stale vector of {} matched",
                        item.product_id
                    );
                }
            }
        }
        for i in 0..60u64 {
            let r = c
                .recommend_similar(similar_to_vector(synthetic_vector(50_000 + i, DIM), 1))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.items[0].product_id, format!("p{i}"));
        }
    };
    check(c.clone()).await;
    assert_eq!(catalog_size(&mut c).await, 261);
    // The background rebuild runs and clears the dead points. Writes that
    // land while a rebuild runs are replayed into the new graph, so a few
    // dead points may remain, but never as many as the threshold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = c
            .get_stats(proto::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        let points = (s.catalog_size + s.deleted_pending) as f64;
        if s.index_rebuilds > 0
            && (s.deleted_pending < 10 || (s.deleted_pending as f64) < 0.1 * points)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rebuild did not happen: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(c.clone()).await;
    assert_eq!(catalog_size(&mut c).await, 261);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_return_k_when_k_match_even_when_rare() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    // 3000 products; 15 "rare" ones (0.5%), colours spread evenly.
    let mut items = Vec::new();
    for i in 0..3000u64 {
        let kind = if i % 200 == 7 { "rare" } else { "common" };
        let colour = ["Red", "Blue", "Green"][(i % 3) as usize];
        items.push(embedding_request(
            &format!("f{i}"),
            synthetic_vector(i, DIM),
            &[("kind", kind), ("colour", colour)],
        ));
    }
    let r = c
        .add_products(futures::stream::iter(
            items.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.added, 3000);
    let filter = |must: Vec<(&str, Vec<&str>)>, must_not: Vec<(&str, Vec<&str>)>| {
        let conv = |v: Vec<(&str, Vec<&str>)>| {
            v.into_iter()
                .map(|(k, vs)| proto::AttributeFilter {
                    key: k.into(),
                    values: vs.into_iter().map(Into::into).collect(),
                })
                .collect()
        };
        Some(proto::Filter {
            must: conv(must),
            must_not: conv(must_not),
        })
    };
    let ask =
        |f: Option<proto::Filter>, k: u32, exclude: Vec<String>| proto::RecommendSimilarRequest {
            query: Some(Query::Embedding(proto::Embedding {
                values: synthetic_vector(424_242, DIM),
            })),
            k,
            filter: f,
            exclude_ids: exclude,
            ..Default::default()
        };
    // Rare: 15 exist, ask for 10 -> 10, all rare.
    let r = c
        .recommend_similar(ask(
            filter(vec![("kind", vec!["rare"])], vec![]),
            10,
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 10);
    assert!(r.items.iter().all(|i| i.attributes["kind"] == "rare"));
    // Ask for more than exist -> all 15.
    let r = c
        .recommend_similar(ask(
            filter(vec![("kind", vec!["rare"])], vec![]),
            50,
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 15);
    // Rare and not Red, excluding two ids.
    let rare_not_red: Vec<u64> = (0..3000u64)
        .filter(|i| i % 200 == 7 && i % 3 != 0)
        .collect();
    let exclude: Vec<String> = rare_not_red
        .iter()
        .take(2)
        .map(|i| format!("f{i}"))
        .collect();
    let r = c
        .recommend_similar(ask(
            filter(vec![("kind", vec!["rare"])], vec![("colour", vec!["Red"])]),
            50,
            exclude.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), rare_not_red.len() - 2);
    assert!(
        r.items
            .iter()
            .all(|i| i.attributes["colour"] != "Red" && !exclude.contains(&i.product_id))
    );
    // Unselective must_not goes through the graph and still returns k, sorted.
    let r = c
        .recommend_similar(ask(
            filter(vec![], vec![("colour", vec!["Red", "Blue"])]),
            40,
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 40);
    assert!(r.items.iter().all(|i| i.attributes["colour"] == "Green"));
    assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));
    // Matches nothing -> empty, not an error.
    let r = c
        .recommend_similar(ask(filter(vec![("kind", vec!["none"])], vec![]), 5, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.items.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_product_and_survives_a_corrupt_or_missing_dump() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(hnsw_config(dir.path())).await;
    let mut c = server.client().await;
    for i in 0..200u64 {
        add_synthetic(&mut c, &format!("r{i}"), i, &[("n", &i.to_string())]).await;
    }
    let mut before = Vec::new();
    for i in 0..200u64 {
        before.push(
            c.get_product(proto::GetProductRequest {
                product_id: format!("r{i}"),
                view: proto::ProductView::Full.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .expect("GetProduct answers with the product"),
        );
    }
    server.stop().await;
    let dump = dir.path().join("index");
    assert!(dump.is_dir(), "graceful stop writes the index dump");

    // Restart from the dump: it is used, not rebuilt.
    verify_restart(dir.path(), &before, true).await;
    // One flipped bit in the graph file (the manifest intact): the dump is
    // rejected and the index rebuilt from the store. Each restart writes a
    // fresh dump at its graceful stop, so every case starts from a good one.
    let graph = graph_file(&dump);
    let mut flipped = std::fs::read(&graph).unwrap();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&graph, &flipped).unwrap();
    verify_restart(dir.path(), &before, false).await;
    // A truncated graph file: rejected.
    let graph = graph_file(&dump);
    let whole = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &whole[..whole.len() / 3]).unwrap();
    verify_restart(dir.path(), &before, false).await;
    // Garbage over part of every dump file: rejected.
    let files = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([graph_file(&dump)]);
    for path in files {
        if path.is_file() {
            let mut bytes = std::fs::read(&path).unwrap();
            let n = bytes.len();
            for b in bytes.iter_mut().skip(n / 3).take(64) {
                *b ^= 0xA5;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
    verify_restart(dir.path(), &before, false).await;
    // Missing dump: rebuild too; the stop after it wrote a good one again.
    std::fs::remove_dir_all(&dump).unwrap();
    verify_restart(dir.path(), &before, false).await;
    verify_restart(dir.path(), &before, true).await;
}

/// A checkpoint that does not match the store (here: copied from another
/// data directory) is reconciled with the store when the difference is
/// small: products it holds with other vectors are re-inserted and products
/// the store lacks are removed. When most products differ, the index is
/// built from the store's own vectors instead (a second scan at start-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_store_is_reconciled_or_rebuilt() {
    let other = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `other` holds r0..r39; `dir` holds r0..r29, of which r0..r9 were
    // replaced by new vectors.
    let server = TestServer::start(test_config(other.path())).await;
    let mut c = server.client().await;
    for i in 0..40u64 {
        assert!(add_synthetic(&mut c, &format!("r{i}"), i, &[]).await);
    }
    server.stop().await;
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    for i in 0..30u64 {
        assert!(add_synthetic(&mut c, &format!("r{i}"), i, &[]).await);
    }
    for i in 0..10u64 {
        assert!(!add_synthetic(&mut c, &format!("r{i}"), 1000 + i, &[]).await);
    }
    server.stop().await;
    let dump = dir.path().join("index");
    std::fs::remove_dir_all(&dump).unwrap();
    copy_dir(&other.path().join("index"), &dump);

    let server = TestServer::start(hnsw_config(dir.path())).await;
    let mut c = server.client().await;
    assert_eq!(catalog_size(&mut c).await, 30);
    let s = stats(&mut c).await;
    assert!(
        s.index_from_dump,
        "the checkpoint was reconciled, not dropped"
    );
    assert_eq!(
        s.index_reconciled_at_start, 20,
        "r0..r9 re-inserted with the store's vectors, r30..r39 removed"
    );
    let top = |r: tonic::Response<proto::RecommendSimilarResponse>| {
        r.into_inner().items.first().map(|i| i.product_id.clone())
    };
    for i in 0..30u64 {
        let seed = if i < 10 { 1000 + i } else { i };
        let r = c
            .recommend_similar(similar_to_vector(synthetic_vector(seed, DIM), 1))
            .await
            .expect("RPC succeeds");
        assert_eq!(top(r), Some(format!("r{i}")), "r{i} by its stored vector");
    }
    // A product only the checkpoint had is gone.
    let r = c
        .recommend_similar(similar_to_vector(synthetic_vector(35, DIM), 1))
        .await
        .expect("RPC succeeds");
    assert_ne!(top(r).as_deref(), Some("r35"));
    server.stop().await;

    // Most products differ: the checkpoint is dropped and the index built.
    let load = |path: std::path::PathBuf, offset: u64| async move {
        let server = TestServer::start(test_config(&path)).await;
        let mut c = server.client().await;
        let items: Vec<_> = (0..3000u64)
            .map(|i| embedding_request(&format!("m{i}"), synthetic_vector(offset + i, DIM), &[]))
            .collect();
        let r = c
            .add_products(futures::stream::iter(
                items.into_iter().map(proto::AddProductsRequest::from),
            ))
            .await
            .expect("bulk add succeeds")
            .into_inner();
        assert_eq!(r.added, 3000);
        server.stop().await;
    };
    let other = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    load(other.path().to_path_buf(), 0).await;
    load(dir.path().to_path_buf(), 50_000).await;
    let dump = dir.path().join("index");
    std::fs::remove_dir_all(&dump).unwrap();
    copy_dir(&other.path().join("index"), &dump);
    let server = TestServer::start(hnsw_config(dir.path())).await;
    let mut c = server.client().await;
    let s = stats(&mut c).await;
    assert_eq!(s.catalog_size, 3000);
    assert!(
        !s.index_from_dump,
        "a checkpoint of another catalogue was reconciled"
    );
    for i in (0..3000u64).step_by(97) {
        let r = c
            .recommend_similar(similar_to_vector(synthetic_vector(50_000 + i, DIM), 1))
            .await
            .expect("RPC succeeds");
        assert_eq!(top(r), Some(format!("m{i}")));
    }
    server.stop().await;
}

/// The graph file of the dump in force (inside its `gen-*` folder).
fn graph_file(dump: &std::path::Path) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dump)
        .expect("list the dump folder")
        .map(|e| e.expect("read a dump entry").path())
        .filter(|p| p.is_dir())
        .map(|p| p.join("graph.bin"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(found.len(), 1, "one current graph file: {found:?}");
    found.into_iter().next().expect("one graph file")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy's folder");
    for entry in std::fs::read_dir(from).expect("list the folder to copy") {
        let entry = entry.expect("read a folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("stat a folder entry").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy a file");
        }
    }
}

/// Starts a server on `dir` and checks it holds exactly `before`, and that
/// its index came from the dump or not, as `from_dump` says.
async fn verify_restart(dir: &std::path::Path, before: &[proto::Product], from_dump: bool) {
    let server = TestServer::start(hnsw_config(dir)).await;
    let mut c = server.client().await;
    let s = stats(&mut c).await;
    assert_eq!(s.catalog_size, before.len() as u64);
    assert_eq!(
        s.index_from_dump, from_dump,
        "index loaded from the dump: {}, expected {from_dump}",
        s.index_from_dump
    );
    assert_eq!(
        s.index_reconciled_at_start, 0,
        "a clean stop leaves a checkpoint that matches the store"
    );
    for p in before {
        let now = c
            .get_product(proto::GetProductRequest {
                product_id: p.product_id.clone(),
                view: proto::ProductView::Full.into(),
            })
            .await
            .expect("RPC succeeds")
            .into_inner()
            .product
            .expect("GetProduct answers with the product");
        assert_eq!(&now, p, "product {} changed across restart", p.product_id);
    }
    let r = c
        .recommend_similar(similar_to_id("r5", 3))
        .await
        .expect("RPC succeeds")
        .into_inner();
    assert_eq!(r.items.len(), 3);
    let r = c
        .recommend_similar(similar_to_vector(synthetic_vector(5, DIM), 1))
        .await
        .expect("RPC succeeds")
        .into_inner();
    assert_eq!(r.items[0].product_id, "r5");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_products_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let process = ServerProcess::spawn(dir.path()).await;
    let mut c = connect(&process.url).await;
    // Write in a background task and kill the server mid-stream.
    let writer = tokio::spawn({
        let mut c = c.clone();
        async move {
            let mut acked = Vec::new();
            for i in 0..100_000u64 {
                let id = format!("k{i}");
                match c
                    .add_product(embedding_request(
                        &id,
                        synthetic_vector(i, DIM),
                        &[("i", &i.to_string())],
                    ))
                    .await
                {
                    Ok(_) => acked.push(i),
                    Err(_) => break,
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    process.kill9();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "only {} writes before the kill",
        acked.len()
    );

    let process = ServerProcess::spawn(dir.path()).await;
    c = connect(&process.url).await;
    let size = catalog_size(&mut c).await as usize;
    // The write in flight at the kill may or may not have committed.
    assert!(
        size == acked.len() || size == acked.len() + 1,
        "size {size}, acked {}",
        acked.len()
    );
    for &i in &acked {
        let p = c
            .get_product(proto::GetProductRequest {
                product_id: format!("k{i}"),
                view: proto::ProductView::Full.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .expect("GetProduct answers with the product");
        let got = p.embedding.unwrap().values;
        let want = synthetic_vector(i, DIM);
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "k{i} embedding changed"
        );
        assert_eq!(p.attributes["i"], i.to_string());
    }
    let status = process.terminate();
    assert!(status.success(), "graceful SIGTERM exit: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_and_searches_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(hnsw_config(dir.path())).await;
    let c = server.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for w in 0..3u64 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut added = Vec::new();
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline && i < 2_000 {
                let seed = w * 1_000_000 + i;
                let id = format!("c{seed}");
                c.add_product(embedding_request(&id, synthetic_vector(seed, DIM), &[]))
                    .await
                    .unwrap();
                added.push(seed);
                i += 1;
            }
            added
        }));
    }
    for s in 0..3u64 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while tokio::time::Instant::now() < deadline {
                let r = c
                    .recommend_similar(similar_to_vector(synthetic_vector(s * 7 + n, DIM), 10))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));
                let ids: HashSet<_> = r.items.iter().map(|i| &i.product_id).collect();
                assert_eq!(ids.len(), r.items.len(), "duplicate results");
                n += 1;
            }
            Vec::new()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let mut c = c;
    assert_eq!(catalog_size(&mut c).await as usize, all.len());
    for seed in all {
        let r = c
            .recommend_similar(similar_to_vector(synthetic_vector(seed, DIM), 1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.items[0].product_id,
            format!("c{seed}"),
            "lost or unfindable c{seed}"
        );
    }
    server.stop().await;
}

#[test]
fn bad_config_exits_non_zero_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[index]\nm = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lookbook"))
        .args(["--config"])
        .arg(&path)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("index.m"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");

    // The environment layer is applied and validated too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lookbook"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("LOOKBOOK__LIMITS__MAX_K", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_k"));
}

/// `lookbook freshness` decides "visible" with the load tool's client and
/// a `must` filter on the products it added; that filter must admit exactly
/// those products, and the unfiltered query must still see everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_client_filters_by_attribute() {
    use lookbook::api::client::{Client as BenchClient, SimilarTo};
    use std::collections::BTreeMap;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = BenchClient::connect(&server.url(), 4 << 20)
        .await
        .expect("connect");
    let marked = |on: bool| {
        if on {
            BTreeMap::from([("bench".to_owned(), "fresh".to_owned())])
        } else {
            BTreeMap::new()
        }
    };
    let items: Vec<(String, Vec<f32>, BTreeMap<String, String>)> = (0..6_u64)
        .map(|i| {
            (
                format!("p{i}"),
                synthetic_vector(i, DIM),
                marked(i % 2 == 0),
            )
        })
        .collect();
    let summary = client
        .import_embeddings(futures::stream::iter(items))
        .await
        .expect("AddProducts");
    assert_eq!(summary.failed, 0, "{:?}", summary.errors);

    // Query by an unmarked product's vector: unfiltered it comes first,
    // filtered it is absent and only the marked products come back.
    let query = synthetic_vector(1, DIM);
    let all = client
        .similar(SimilarTo::Embedding(query.clone()), 10)
        .await
        .expect("RecommendSimilar");
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].id, "p1");
    let fresh = client
        .similar_where(SimilarTo::Embedding(query), 10, Some(("bench", "fresh")))
        .await
        .expect("RecommendSimilar with a filter");
    let ids: HashSet<&str> = fresh.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["p0", "p2", "p4"]));
    server.stop().await;
}
