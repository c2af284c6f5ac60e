//! Catalogue management over gRPC: UpdateProduct (durable, seen by filters
//! at once, vector untouched), GetProducts, ListProducts (paging, stable
//! order, filters, tokens bound to their filter), ListAttributes, thumbnails
//! (made from photos, durable, dropped when the photo is replaced by an
//! embedding or the product deleted) and structured bulk errors.

mod common;

use common::*;
use lookbook::api::proto;
use tonic::Code;

const DIM: usize = 1280;

fn update(id: &str, set: &[(&str, &str)], remove: &[&str]) -> proto::UpdateProductRequest {
    proto::UpdateProductRequest {
        product_id: id.to_owned(),
        set_attributes: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        remove_attributes: remove.iter().map(|k| (*k).to_owned()).collect(),
    }
}

fn must(key: &str, values: &[&str]) -> proto::Filter {
    proto::Filter {
        must: vec![proto::AttributeFilter {
            key: key.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }],
        must_not: Vec::new(),
    }
}

async fn list_all(
    c: &mut Client,
    filter: Option<proto::Filter>,
    page_size: u32,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = c
            .list_products(proto::ListProductsRequest {
                page_size,
                page_token: token.clone(),
                filter: filter.clone(),
                view: 0,
            })
            .await
            .expect("ListProducts")
            .into_inner();
        pages += 1;
        let per_page = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        assert!(page.products.len() <= per_page);
        assert!(
            page.products.iter().all(|p| p.embedding.is_none()),
            "basic view"
        );
        ids.extend(page.products.into_iter().map(|p| p.product_id));
        if page.next_page_token.is_empty() {
            return (ids, pages);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_management_over_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    for i in 0..45u64 {
        let colour = ["Red", "Blue", "Green"][(i % 3) as usize];
        c.add_product(embedding_request(
            &format!("p{i:03}"),
            synthetic_vector(i, DIM),
            &[("baseColour", colour), ("stock", "in")],
        ))
        .await
        .expect("add");
    }
    // A photo: it gets a thumbnail.
    c.add_product(proto::AddProductRequest {
        product_id: "photo".into(),
        image: generated_png(9, 300, 400).into(),
        embedding: None,
        attributes: [("baseColour".to_owned(), "Red".to_owned())].into(),
    })
    .await
    .expect("add a photo");

    // UpdateProduct: set and remove, seen by the very next filtered query.
    let updated = c
        .update_product(update(
            "p004",
            &[("season", "Winter"), ("stock", "out")],
            &["baseColour"],
        ))
        .await
        .expect("UpdateProduct")
        .into_inner()
        .product
        .expect("the updated product");
    assert_eq!(updated.product_id, "p004");
    assert_eq!(
        updated.attributes,
        [
            ("season".to_owned(), "Winter".to_owned()),
            ("stock".to_owned(), "out".to_owned())
        ]
        .into()
    );
    let winter = c
        .recommend_similar(proto::RecommendSimilarRequest {
            filter: Some(must("season", &["Winter"])),
            ..similar_to_id("p001", 10)
        })
        .await
        .expect("filtered by the new attribute")
        .into_inner();
    assert_eq!(winter.items.len(), 1);
    assert_eq!(winter.items[0].product_id, "p004");
    let blue = c
        .recommend_similar(proto::RecommendSimilarRequest {
            filter: Some(must("baseColour", &["Blue"])),
            ..similar_to_id("p001", 100)
        })
        .await
        .expect("filtered by the removed attribute")
        .into_inner();
    assert!(
        blue.items.iter().all(|i| i.product_id != "p004"),
        "p004 lost its colour"
    );
    // Its vector is untouched.
    let full = c
        .get_product(proto::GetProductRequest {
            product_id: "p004".into(),
            view: proto::ProductView::Full.into(),
        })
        .await
        .expect("GetProduct")
        .into_inner()
        .product
        .expect("product");
    let stored = full.embedding.expect("full view").values;
    let sent = synthetic_vector(4, DIM);
    assert!(
        stored.iter().zip(&sent).all(|(a, b)| (a - b).abs() < 1e-6),
        "the vector is untouched (up to the server's renormalisation)"
    );
    // Bad updates.
    for (what, request, code) in [
        (
            "unknown product",
            update("zzz", &[("a", "b")], &[]),
            Code::NotFound,
        ),
        (
            "empty update",
            update("p001", &[], &[]),
            Code::InvalidArgument,
        ),
        (
            "set and remove",
            update("p001", &[("a", "b")], &["a"]),
            Code::InvalidArgument,
        ),
        (
            "empty key",
            update("p001", &[("", "b")], &[]),
            Code::InvalidArgument,
        ),
        (
            "bad id",
            update("", &[("a", "b")], &[]),
            Code::InvalidArgument,
        ),
    ] {
        let status = c.update_product(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }

    // GetProducts: request order, duplicates answered once, missing listed.
    let got = c
        .get_products(proto::GetProductsRequest {
            product_ids: vec!["p010".into(), "none".into(), "photo".into(), "p010".into()],
            view: 0,
        })
        .await
        .expect("GetProducts")
        .into_inner();
    let ids: Vec<&str> = got.products.iter().map(|p| p.product_id.as_str()).collect();
    assert_eq!(ids, ["p010", "photo"]);
    assert_eq!(got.missing_ids, ["none"]);
    assert!(got.products[1].has_thumbnail);
    assert!(!got.products[0].has_thumbnail);
    let too_many = proto::GetProductsRequest {
        product_ids: (0..1001).map(|i| format!("x{i}")).collect(),
        view: 0,
    };
    assert_eq!(
        c.get_products(too_many).await.expect_err("1001 ids").code(),
        Code::InvalidArgument
    );

    // ListProducts: every product once, in id order, whatever the page size.
    let mut expected: Vec<String> = (0..45).map(|i| format!("p{i:03}")).collect();
    expected.push("photo".into());
    for page_size in [1, 7, 46, 1000, 5000] {
        let (ids, pages) = list_all(&mut c, None, page_size).await;
        assert_eq!(ids, expected, "page size {page_size}");
        let per = page_size.min(1000) as usize;
        assert_eq!(pages, expected.len().div_ceil(per), "page size {page_size}");
    }
    // Page size 0 is the default, 100.
    let (_, pages) = list_all(&mut c, None, 0).await;
    assert_eq!(pages, 1);
    let (red, _) = list_all(&mut c, Some(must("baseColour", &["Red"])), 4).await;
    let want_red: Vec<String> = (0..45)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("p{i:03}"))
        .chain(["photo".to_owned()])
        .collect();
    assert_eq!(red, want_red);
    // A token from one filter is refused with another; garbage is refused.
    let first = c
        .list_products(proto::ListProductsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("first page")
        .into_inner();
    for (token, filter) in [
        (
            first.next_page_token.clone(),
            Some(must("baseColour", &["Red"])),
        ),
        ("not-a-token".to_owned(), None),
        ("6c6231".to_owned(), None),
    ] {
        let status = c
            .list_products(proto::ListProductsRequest {
                page_size: 2,
                page_token: token,
                filter,
                view: 0,
            })
            .await
            .expect_err("a foreign token");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    // ListAttributes: keys sorted, values by count.
    let facets = c
        .list_attributes(proto::ListAttributesRequest { max_values: 2 })
        .await
        .expect("ListAttributes")
        .into_inner();
    let keys: Vec<&str> = facets.attributes.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["baseColour", "season", "stock"]);
    let colour = &facets.attributes[0];
    assert_eq!(colour.distinct_values, 3);
    assert_eq!(colour.values.len(), 2);
    // 15 of the 45 plus the photo.
    assert_eq!(
        (colour.values[0].value.as_str(), colour.values[0].count),
        ("Red", 16)
    );

    // Updates, thumbnails and attributes survive a restart.
    server.stop().await;
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let after = c
        .get_products(proto::GetProductsRequest {
            product_ids: vec!["p004".into(), "photo".into()],
            view: 0,
        })
        .await
        .expect("GetProducts after restart")
        .into_inner();
    assert_eq!(after.products[0].attributes, updated.attributes);
    assert!(after.products[1].has_thumbnail, "the thumbnail is durable");
    let http = server.http_addr.expect("HTTP is on");
    let thumb = http_request(http, "GET", "/v1/products/photo/thumbnail", &[], b"").await;
    assert_eq!(thumb.status, 200);
    let image = image::load_from_memory(&thumb.body).expect("a JPEG");
    assert_eq!((image.width(), image.height()), (192, 256));
    // Replaced by an embedding: the old photo's thumbnail goes.
    c.add_product(embedding_request("photo", synthetic_vector(99, DIM), &[]))
        .await
        .expect("replace by embedding");
    let thumb = http_request(http, "GET", "/v1/products/photo/thumbnail", &[], b"").await;
    assert_eq!(thumb.status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_errors_are_structured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let items: Vec<proto::AddProductsRequest> = vec![
        embedding_request("ok-1", synthetic_vector(1, DIM), &[]).into(),
        embedding_request("", synthetic_vector(2, DIM), &[]).into(),
        proto::AddProductsRequest {
            product_id: "bad-photo".into(),
            image: b"not an image".to_vec().into(),
            ..Default::default()
        },
        embedding_request("short", vec![1.0; 3], &[]).into(),
        embedding_request("ok-2", synthetic_vector(3, DIM), &[]).into(),
    ];
    let r = c
        .add_products(tokio_stream::iter(items))
        .await
        .expect("AddProducts")
        .into_inner();
    assert_eq!((r.added, r.failed), (2, 3));
    let summary: Vec<(u64, &str, i32)> = r
        .errors
        .iter()
        .map(|e| (e.index, e.product_id.as_str(), e.code))
        .collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(
        summary,
        [
            (1, "", invalid),
            (2, "bad-photo", invalid),
            (3, "short", invalid)
        ]
    );
    assert!(
        r.errors
            .iter()
            .all(|e| !e.message.is_empty() && e.user_id.is_empty())
    );
    // Interactions: an unknown product is NOT_FOUND, a bad action INVALID_ARGUMENT.
    let interaction =
        |user: &str, product: &str, action: proto::Action| proto::RecordInteractionsRequest {
            interaction: Some(proto::Interaction {
                user_id: user.into(),
                product_id: product.into(),
                action: action.into(),
                timestamp_ms: 0,
            }),
        };
    let r = c
        .record_interactions(tokio_stream::iter(vec![
            interaction("u1", "ok-1", proto::Action::View),
            interaction("u1", "gone", proto::Action::View),
            interaction("u2", "ok-2", proto::Action::Unspecified),
        ]))
        .await
        .expect("RecordInteractions")
        .into_inner();
    assert_eq!((r.recorded, r.failed), (1, 2));
    let summary: Vec<(u64, &str, &str, i32)> = r
        .errors
        .iter()
        .map(|e| (e.index, e.user_id.as_str(), e.product_id.as_str(), e.code))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "u1", "gone", Code::NotFound as i32),
            (2, "u2", "ok-2", invalid)
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_is_a_property_of_the_data_dir() {
    use lookbook::domain::Metric;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.index.metric = Metric::Euclidean;
    let server = TestServer::start(config.clone()).await;
    let mut c = server.client().await;
    // Non-normalised embeddings are stored as sent under euclidean.
    let a: Vec<f32> = (0..DIM).map(|i| if i == 0 { 3.0 } else { 0.0 }).collect();
    let b: Vec<f32> = (0..DIM).map(|i| if i == 0 { 5.0 } else { 0.0 }).collect();
    let far: Vec<f32> = (0..DIM).map(|i| if i == 1 { 40.0 } else { 0.0 }).collect();
    for (id, v) in [("a", &a), ("b", &b), ("far", &far)] {
        c.add_product(embedding_request(id, v.clone(), &[]))
            .await
            .expect("add");
    }
    let stored = c
        .get_product(proto::GetProductRequest {
            product_id: "b".into(),
            view: proto::ProductView::Full.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(stored.embedding.expect("full").values, b, "kept as sent");
    // Scores are minus the Euclidean distance, nearest first.
    let r = c
        .recommend_similar(similar_to_id("a", 2))
        .await
        .expect("similar")
        .into_inner();
    let got: Vec<(&str, f32)> = r
        .items
        .iter()
        .map(|i| (i.product_id.as_str(), i.score))
        .collect();
    let to_far = -(3.0f32 * 3.0 + 40.0 * 40.0).sqrt();
    assert_eq!(got[0], ("b", -2.0));
    assert_eq!(got[1].0, "far");
    assert!((got[1].1 - to_far).abs() < 1e-3, "{got:?}");
    let stats = c
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.metric, proto::Metric::Euclidean as i32);
    server.stop().await;

    // The data dir refuses to start with another metric.
    let mut other = config.clone();
    other.index.metric = Metric::Cosine;
    let bound = lookbook::app::Bound::bind(other).await.expect("bind");
    let err = bound
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("another metric");
    assert!(err.to_string().contains("euclidean"), "{err}");
    // And still starts with its own.
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    let r = c
        .recommend_similar(similar_to_id("a", 1))
        .await
        .expect("similar after restart")
        .into_inner();
    assert_eq!(r.items[0].product_id, "b");
    server.stop().await;
}

/// `index.quantization` is a setting, not a property of the data: a data
/// dir serves the same answers, with exact scores, whichever mode it starts
/// in (the dump and the store hold full-precision vectors; codes are made
/// again at start). A quantized index keeps its full vectors in files under
/// `index-vectors/`, which start-up clears of anything a crash left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantization_changes_memory_not_answers() {
    use lookbook::index::Quantization;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // The graph is the point: no exact scans of a small catalogue.
    config.index.exact_threshold = 0;
    config.index.ef_search = 200;
    config.index.quantization = Quantization::Int8;
    let mut rng = Rng::new(16);
    let vectors: Vec<Vec<f32>> = (0..300)
        .map(|_| {
            let v: Vec<f32> = (0..DIM).map(|_| rng.gaussian()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    let server = TestServer::start(config.clone()).await;
    let mut c = server.client().await;
    for (i, v) in vectors.iter().enumerate() {
        c.add_product(embedding_request(&format!("p{i}"), v.clone(), &[]))
            .await
            .expect("add");
    }
    // Cosine scores of the top 10 for a few queries, computed here.
    let exact = |q: usize| -> Vec<(String, f32)> {
        let mut all: Vec<(String, f32)> = vectors
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != q)
            .map(|(i, v)| {
                let dot: f32 = v.iter().zip(&vectors[q]).map(|(a, b)| a * b).sum();
                (format!("p{i}"), dot)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(10);
        all
    };
    let queries = [0, 17, 123, 299];
    let answers = |mut c: Client| async move {
        let mut out = Vec::new();
        for q in queries {
            let r = c
                .recommend_similar(similar_to_id(&format!("p{q}"), 10))
                .await
                .expect("similar")
                .into_inner();
            out.push(
                r.items
                    .into_iter()
                    .map(|i| (i.product_id, i.score))
                    .collect::<Vec<_>>(),
            );
        }
        out
    };
    let first = answers(c.clone()).await;
    for (got, q) in first.iter().zip(queries) {
        let want = exact(q);
        assert_eq!(got.len(), 10);
        for ((gid, gs), (wid, ws)) in got.iter().zip(&want) {
            assert_eq!(gid, wid, "query p{q}: {got:?} vs {want:?}");
            assert!((gs - ws).abs() < 1e-4, "exact score: {gs} vs {ws}");
        }
    }
    let vector_dir = dir.path().join("index-vectors");
    assert!(
        vector_dir.is_dir(),
        "the full vectors live in {vector_dir:?}"
    );
    server.stop().await;

    // What a crash could leave behind is cleared at start; every mode
    // answers the same from the same data dir.
    for quantization in [Quantization::F16, Quantization::None, Quantization::Int8] {
        let stale = vector_dir.join("left-by-a-crash");
        std::fs::create_dir_all(&vector_dir).expect("dir");
        std::fs::write(&stale, b"stale").expect("write");
        let mut config = config.clone();
        config.index.quantization = quantization;
        let server = TestServer::start(config).await;
        assert!(!stale.exists(), "{quantization}: stale vector file kept");
        let c = server.client().await;
        assert_eq!(answers(c).await, first, "{quantization}");
        server.stop().await;
    }
}
