//! Personalization through the real server: taste from views and
//! purchases on the real product photos, multi-interest, exclusions,
//! dislikes, trending for new shoppers, context, diversity controls,
//! Qdrant-style positives/negatives; then durability (kill -9), ForgetUser
//! and every bad input's status code on synthetic vectors.

mod common;

use std::collections::HashMap;

use common::*;
use lookbook::{
    api::proto::{self, recommend_similar_request::Query},
    dataset::{self, ARTICLE_TYPE},
};
use tonic::Code;

const DIM: usize = 1280;
/// Cosine at which two catalogue photos are near-duplicates for this model
/// (distinct products of one articleType typically score 0.7-0.85).
const NEAR_DUPLICATE: f32 = 0.85;

fn interaction(
    user: &str,
    product: &str,
    action: proto::Action,
) -> proto::RecordInteractionRequest {
    proto::RecordInteractionRequest {
        interaction: Some(proto::Interaction {
            user_id: user.to_owned(),
            product_id: product.to_owned(),
            action: action as i32,
            timestamp_ms: 0,
        }),
    }
}

async fn record(c: &mut Client, user: &str, product: &str, action: proto::Action) {
    c.record_interaction(interaction(user, product, action))
        .await
        .unwrap_or_else(|s| panic!("record {user} {product}: {s}"));
}

fn for_user(user: &str, k: u32) -> proto::RecommendForUserRequest {
    proto::RecommendForUserRequest {
        user_id: user.to_owned(),
        k,
        ..Default::default()
    }
}

async fn recommend(
    c: &mut Client,
    req: proto::RecommendForUserRequest,
) -> Vec<proto::Recommendation> {
    c.recommend_for_user(req)
        .await
        .unwrap_or_else(|s| panic!("RecommendForUser: {s}"))
        .into_inner()
        .items
}

fn count_types(items: &[proto::Recommendation], types: &[&str]) -> usize {
    items
        .iter()
        .filter(|i| types.contains(&i.attributes[ARTICLE_TYPE].as_str()))
        .count()
}

/// Mean pairwise cosine distance of the items' embeddings.
fn intra_list_diversity(
    items: &[proto::Recommendation],
    vectors: &HashMap<String, Vec<f32>>,
) -> f32 {
    let mut sum = 0.0;
    let mut pairs = 0;
    for (a, x) in items.iter().enumerate() {
        for y in &items[a + 1..] {
            sum += 1.0 - dot(&vectors[&x.product_id], &vectors[&y.product_id]);
            pairs += 1;
        }
    }
    sum / pairs as f32
}

/// Held by the tests of this file that run a server inside the test
/// process, so that one's allocations never land inside another's RSS
/// measurement.
static IN_PROCESS_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoppers_on_real_photos() {
    let _alone = IN_PROCESS_SERVER.lock().await;
    let Some(data) = fashion_data("shoppers_on_real_photos") else {
        return;
    };
    let (entries, _) = dataset::read_catalog(&data).unwrap();
    // A slice of the catalogue keeps the import short: up to 60 photos of
    // each of ten common articleTypes.
    let kinds = [
        "Tshirts",
        "Shirts",
        "Watches",
        "Casual Shoes",
        "Sports Shoes",
        "Tops",
        "Handbags",
        "Kurtas",
        "Heels",
        "Sunglasses",
    ];
    let mut per_kind: HashMap<&str, usize> = HashMap::new();
    let chosen: Vec<&dataset::CatalogEntry> = entries
        .iter()
        .filter(|e| {
            let Some(kind) = kinds
                .iter()
                .find(|k| e.attributes.get(ARTICLE_TYPE).map(String::as_str) == Some(**k))
            else {
                return false;
            };
            let n = per_kind.entry(kind).or_default();
            *n += 1;
            *n <= 60
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let items: Vec<proto::AddProductRequest> = chosen.iter().map(|e| photo_request(e)).collect();
    let r = c
        .add_products(futures::stream::iter(
            items.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.added, r.failed),
        (chosen.len() as u64, 0),
        "{:?}",
        r.errors
    );
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    for e in &chosen {
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
        vectors.insert(e.id.clone(), p.embedding.unwrap().values);
    }
    let of = |kind: &str, colours: &[&str]| -> Vec<String> {
        chosen
            .iter()
            .filter(|e| {
                e.attributes[ARTICLE_TYPE] == kind
                    && (colours.is_empty()
                        || colours.contains(&e.attributes["baseColour"].as_str()))
            })
            .map(|e| e.id.clone())
            .collect()
    };
    let blue_tshirts = of("Tshirts", &["Blue", "Navy Blue"]);
    let shoes = of("Casual Shoes", &[]);
    let watches = of("Watches", &[]);
    assert!(blue_tshirts.len() >= 8 && shoes.len() >= 10 && watches.len() >= 10);

    // --- Five blue Tshirts viewed: mostly Tshirts, explained by them.
    for id in &blue_tshirts[..5] {
        record(&mut c, "tshirt-fan", id, proto::Action::View).await;
    }
    let top = recommend(&mut c, for_user("tshirt-fan", 10)).await;
    assert_eq!(top.len(), 10);
    let tshirts = count_types(&top, &["Tshirts"]);
    assert!(tshirts >= 7, "{tshirts}/10 Tshirts: {top:?}");
    for item in &top {
        let viewed = blue_tshirts[..5]
            .iter()
            .any(|id| item.reason == format!("similar to {id} you viewed"));
        assert!(
            viewed,
            "reason {:?} names none of the viewed products",
            item.reason
        );
    }
    // Viewed products may come back (exclude_viewed = false by default).

    // --- Shoes and watches: both tastes in the top 10.
    for i in 0..5 {
        record(&mut c, "two-tastes", &shoes[i], proto::Action::View).await;
        record(&mut c, "two-tastes", &watches[i], proto::Action::Click).await;
    }
    let top = recommend(&mut c, for_user("two-tastes", 10)).await;
    let (s, w) = (
        count_types(&top, &["Casual Shoes", "Sports Shoes"]),
        count_types(&top, &["Watches"]),
    );
    assert!(
        s >= 3 && w >= 3,
        "shoes {s}, watches {w} in the top 10: {top:?}"
    );

    // --- Purchases never come back, even far down the list.
    for id in &blue_tshirts[..3] {
        record(&mut c, "buyer", id, proto::Action::Purchase).await;
    }
    let top = recommend(&mut c, for_user("buyer", 100)).await;
    assert_eq!(top.len(), 100);
    for id in &blue_tshirts[..3] {
        assert!(
            top.iter().all(|i| &i.product_id != id),
            "purchased {id} came back"
        );
    }
    assert!(top[0].reason.ends_with("you bought"), "{:?}", top[0].reason);

    // --- A dislike removes the disliked product's near-duplicates: pick,
    // among the shopper's recommendations, the product with the most
    // near-duplicates next to it, and dislike it.
    for id in &blue_tshirts[..5] {
        record(&mut c, "picky", id, proto::Action::View).await;
    }
    let before = recommend(&mut c, for_user("picky", 10)).await;
    let unviewed: Vec<&String> = before
        .iter()
        .map(|i| &i.product_id)
        .filter(|id| !blue_tshirts[..5].contains(id))
        .collect();
    let twins = |d: &String| -> Vec<String> {
        unviewed
            .iter()
            .filter(|id| **id != d && dot(&vectors[id.as_str()], &vectors[d]) >= NEAR_DUPLICATE)
            .map(|id| (*id).clone())
            .collect()
    };
    let disliked = (*unviewed
        .iter()
        .max_by_key(|d| twins(d).len())
        .expect("the top 10 holds unviewed products"))
    .clone();
    let near_duplicates = twins(&disliked);
    assert!(
        !near_duplicates.is_empty(),
        "precondition: {disliked} has near-duplicates in the top 10 before the dislike"
    );
    record(&mut c, "picky", &disliked, proto::Action::Dislike).await;
    let after = recommend(&mut c, for_user("picky", 10)).await;
    assert_eq!(after.len(), 10);
    let shown: Vec<&String> = after
        .iter()
        .map(|i| &i.product_id)
        .filter(|id| **id == disliked || near_duplicates.contains(id))
        .collect();
    assert!(
        shown.is_empty(),
        "disliked {disliked}, still shown {shown:?} of {near_duplicates:?}"
    );

    // --- Unknown shopper: trending, best first, filter respected.
    for fan in 0..5 {
        record(
            &mut c,
            &format!("fan-{fan}"),
            &watches[9],
            proto::Action::Purchase,
        )
        .await;
    }
    let top = recommend(&mut c, for_user("someone-new", 10)).await;
    assert_eq!(top.len(), 10);
    assert_eq!(top[0].product_id, watches[9], "{top:?}");
    assert!(
        top.iter()
            .all(|i| i.reason == "trending" || i.reason.starts_with("explore"))
    );
    assert_eq!(top[0].reason, "trending");
    let mut only_heels = for_user("someone-new", 10);
    only_heels.filter = Some(proto::Filter {
        must: vec![proto::AttributeFilter {
            key: ARTICLE_TYPE.into(),
            values: vec!["Heels".into()],
        }],
        must_not: vec![],
    });
    let top = recommend(&mut c, only_heels).await;
    assert_eq!(top.len(), 10, "never empty while products match: {top:?}");
    assert!(top.iter().all(|i| i.attributes[ARTICLE_TYPE] == "Heels"));

    // --- Context steers: a Tshirt shopper looking at a watch sees watches.
    let without = count_types(
        &recommend(&mut c, for_user("tshirt-fan", 10)).await,
        &["Watches"],
    );
    let mut looking = for_user("tshirt-fan", 10);
    looking.context_product_ids = vec![watches[12].clone()];
    let with = recommend(&mut c, looking).await;
    let with_count = count_types(&with, &["Watches"]);
    assert!(
        with_count > without,
        "watches: {with_count} with context vs {without} without"
    );
    assert!(
        with.iter().all(|i| i.product_id != watches[12]),
        "the context product itself is excluded"
    );
    let mut anonymous = for_user("", 10);
    anonymous.context_product_ids = vec![watches[12].clone()];
    let top = recommend(&mut c, anonymous).await;
    assert!(count_types(&top, &["Watches"]) >= 7, "{top:?}");
    assert!(
        top.iter()
            .all(|i| i.reason == format!("similar to {} you are looking at", watches[12]))
    );

    // --- max_per_value caps each value exactly; k is still met.
    let mut capped = for_user("two-tastes", 10);
    capped.diversity = Some(proto::Diversity {
        mmr_lambda: 0.0,
        max_per_key: ARTICLE_TYPE.into(),
        max_per_value: 3,
    });
    let top = recommend(&mut c, capped).await;
    assert_eq!(top.len(), 10);
    let mut per_type: HashMap<&str, usize> = HashMap::new();
    for i in &top {
        *per_type
            .entry(i.attributes[ARTICLE_TYPE].as_str())
            .or_default() += 1;
    }
    assert!(per_type.values().all(|n| *n <= 3), "{per_type:?}");
    let mut similar_capped = similar_to_id(&blue_tshirts[0], 10);
    similar_capped.diversity = Some(proto::Diversity {
        mmr_lambda: 0.0,
        max_per_key: "baseColour".into(),
        max_per_value: 2,
    });
    let top = c
        .recommend_similar(similar_capped)
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(top.len(), 10);
    let mut per_colour: HashMap<&str, usize> = HashMap::new();
    for i in &top {
        *per_colour
            .entry(i.attributes["baseColour"].as_str())
            .or_default() += 1;
    }
    assert!(per_colour.values().all(|n| *n <= 2), "{per_colour:?}");

    // --- MMR raises intra-list diversity measurably.
    let plain = c
        .recommend_similar(similar_to_id(&blue_tshirts[0], 10))
        .await
        .unwrap()
        .into_inner()
        .items;
    let mut diverse = similar_to_id(&blue_tshirts[0], 10);
    diverse.diversity = Some(proto::Diversity {
        mmr_lambda: 0.5,
        ..Default::default()
    });
    let diverse = c
        .recommend_similar(diverse)
        .await
        .unwrap()
        .into_inner()
        .items;
    let (d0, d1) = (
        intra_list_diversity(&plain, &vectors),
        intra_list_diversity(&diverse, &vectors),
    );
    assert!(d1 > d0 * 1.1, "MMR diversity {d1:.4} vs plain {d0:.4}");
    let mut diverse_user = for_user("tshirt-fan", 10);
    diverse_user.diversity = Some(proto::Diversity {
        mmr_lambda: 0.5,
        ..Default::default()
    });
    let diverse_user = recommend(&mut c, diverse_user).await;
    let plain_user = recommend(&mut c, for_user("tshirt-fan", 10)).await;
    assert!(
        intra_list_diversity(&diverse_user, &vectors) > intra_list_diversity(&plain_user, &vectors),
        "MMR raises diversity for shoppers too"
    );

    // --- Qdrant-style positives and negatives.
    let req = proto::RecommendSimilarRequest {
        positive_ids: vec![shoes[0].clone(), shoes[1].clone()],
        negative_ids: vec![watches[0].clone()],
        k: 10,
        ..Default::default()
    };
    let top = c
        .recommend_similar(req.clone())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(top.len(), 10);
    assert!(
        count_types(&top, &["Casual Shoes", "Sports Shoes"]) >= 7,
        "{top:?}"
    );
    let examples = [&shoes[0], &shoes[1], &watches[0]];
    assert!(top.iter().all(|i| !examples.contains(&&i.product_id)));
    let best = c
        .recommend_similar(proto::RecommendSimilarRequest {
            strategy: proto::Strategy::BestScore as i32,
            ..req
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(best.len(), 10);
    assert!(best.windows(2).all(|w| w[0].score >= w[1].score));
    for i in &best {
        let v = &vectors[&i.product_id];
        let pos = dot(v, &vectors[&shoes[0]]).max(dot(v, &vectors[&shoes[1]]));
        let neg = dot(v, &vectors[&watches[0]]);
        let expected = if pos > neg { pos } else { -(neg * neg) };
        assert!(
            (i.score - expected).abs() < 1e-3,
            "{} vs {expected}",
            i.score
        );
    }
    let away = c
        .recommend_similar(proto::RecommendSimilarRequest {
            negative_ids: vec![watches[0].clone()],
            strategy: proto::Strategy::BestScore as i32,
            k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(away.len(), 10);
    assert_eq!(count_types(&away, &["Watches"]), 0, "{away:?}");
    server.stop().await;
}

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

async fn add_cluster_products(c: &mut Client) {
    let items: Vec<proto::AddProductRequest> = (0..3u64)
        .flat_map(|cluster| {
            (0..20u64).map(move |m| {
                embedding_request(
                    &format!("c{cluster}-{m}"),
                    cluster_vector(cluster, m),
                    &[("cluster", &format!("c{cluster}"))],
                )
            })
        })
        .collect();
    let r = c
        .add_products(futures::stream::iter(
            items.into_iter().map(proto::AddProductsRequest::from),
        ))
        .await
        .expect("import the synthetic clusters")
        .into_inner();
    assert_eq!(r.added, 60);
}

async fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactions_are_durable_forgettable_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path()).await;
    let mut c = connect(&server.url).await;
    add_cluster_products(&mut c).await;

    // Bulk record with one bad item: the rest land.
    let mut batch: Vec<proto::RecordInteractionRequest> = (0..6)
        .map(|m| interaction("alice", &format!("c1-{m}"), proto::Action::View))
        .collect();
    batch.push(interaction("alice", "no-such-product", proto::Action::View));
    batch.push(interaction("alice", "c1-9", proto::Action::Purchase));
    let r = c
        .record_interactions(futures::stream::iter(
            batch
                .into_iter()
                .map(proto::RecordInteractionsRequest::from),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.recorded, r.failed), (7, 1), "{:?}", r.errors);
    assert!(
        r.errors[0].index == 6 && r.errors[0].user_id == "alice" && !r.errors[0].message.is_empty(),
        "{:?}",
        r.errors
    );
    let before = recommend(&mut c, for_user("alice", 10)).await;
    assert!(
        before.iter().all(|i| i.attributes["cluster"] == "c1"),
        "{before:?}"
    );
    assert!(before.iter().all(|i| i.product_id != "c1-9"), "purchased");

    // New products are recommendable as soon as AddProduct returns;
    // deleted ones vanish.
    let fresh = cluster_vector(1, 0);
    c.add_product(embedding_request("fresh", fresh, &[("cluster", "c1")]))
        .await
        .unwrap();
    let top = recommend(&mut c, for_user("alice", 60)).await;
    assert!(top.iter().any(|i| i.product_id == "fresh"));
    c.delete_product(proto::DeleteProductRequest {
        product_id: "fresh".into(),
    })
    .await
    .unwrap();
    let top = recommend(&mut c, for_user("alice", 60)).await;
    assert!(top.iter().all(|i| i.product_id != "fresh"));

    // Acknowledged interactions survive kill -9.
    server.kill9();
    let server = ServerProcess::spawn(dir.path()).await;
    let mut c = connect(&server.url).await;
    let after = recommend(&mut c, for_user("alice", 10)).await;
    let ids =
        |v: &[proto::Recommendation]| v.iter().map(|i| i.product_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "same taste after a crash");
    assert!(
        after.iter().all(|i| i.product_id != "c1-9"),
        "purchases survive too"
    );

    // ForgetUser leaves no trace: the next call treats alice as new.
    record(&mut c, "bob", "c2-0", proto::Action::Purchase).await;
    let f = c
        .forget_user(proto::ForgetUserRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(f.forgotten);
    assert_eq!(f.interactions_erased, 7);
    let newcomer = recommend(&mut c, for_user("never-seen", 10)).await;
    let forgotten = recommend(&mut c, for_user("alice", 10)).await;
    assert_eq!(ids(&forgotten), ids(&newcomer));
    assert!(
        forgotten
            .iter()
            .all(|i| i.reason == "trending" || i.reason.starts_with("explore"))
    );
    let again = c
        .forget_user(proto::ForgetUserRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.forgotten);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let server = ServerProcess::spawn(dir.path()).await;
    let mut c = connect(&server.url).await;
    let restarted = recommend(&mut c, for_user("alice", 10)).await;
    assert!(
        restarted
            .iter()
            .all(|i| i.reason == "trending" || i.reason.starts_with("explore")),
        "alice stays forgotten after a restart: {restarted:?}"
    );

    // Every bad input gets its exact status code.
    let ia = Code::InvalidArgument;
    let bad = |user: &str, product: &str, action: i32, ts: i64| proto::RecordInteractionRequest {
        interaction: Some(proto::Interaction {
            user_id: user.into(),
            product_id: product.into(),
            action,
            timestamp_ms: ts,
        }),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let cases = [
        (bad("u", "c0-0", 0, 0), ia),
        (bad("u", "c0-0", 99, 0), ia),
        (bad("", "c0-0", 1, 0), ia),
        (bad(&"u".repeat(257), "c0-0", 1, 0), ia),
        (bad("u", &"p".repeat(257), 1, 0), ia),
        (bad("u", "", 1, 0), ia),
        (bad("u", "c0-0", 1, now + 2 * 86_400_000), ia),
        (bad("u", "c0-0", 1, -1), ia),
        (proto::RecordInteractionRequest { interaction: None }, ia),
        (bad("u", "no-such-product", 1, 0), Code::NotFound),
        (bad("u", "c0-0", 1, now - 86_400_000), Code::Ok),
    ];
    for (req, code) in cases {
        assert_eq!(
            code_of(c.record_interaction(req.clone()).await).await,
            code,
            "{req:?}"
        );
    }
    let user_cases = [
        (for_user("u", 0), ia),
        (for_user(&"u".repeat(257), 5), ia),
        (
            proto::RecommendForUserRequest {
                context_product_ids: vec!["no-such-product".into()],
                ..for_user("u", 5)
            },
            Code::NotFound,
        ),
        (
            proto::RecommendForUserRequest {
                diversity: Some(proto::Diversity {
                    mmr_lambda: 2.0,
                    ..Default::default()
                }),
                ..for_user("u", 5)
            },
            ia,
        ),
        (
            proto::RecommendForUserRequest {
                diversity: Some(proto::Diversity {
                    max_per_key: "cluster".into(),
                    ..Default::default()
                }),
                ..for_user("u", 5)
            },
            ia,
        ),
    ];
    for (req, code) in user_cases {
        assert_eq!(
            code_of(c.recommend_for_user(req.clone()).await).await,
            code,
            "{req:?}"
        );
    }
    assert_eq!(
        code_of(
            c.forget_user(proto::ForgetUserRequest {
                user_id: String::new()
            })
            .await
        )
        .await,
        ia
    );
    let similar_cases = [
        (
            proto::RecommendSimilarRequest {
                negative_ids: vec!["c0-0".into()],
                k: 5,
                ..Default::default()
            },
            ia,
        ),
        (
            proto::RecommendSimilarRequest {
                positive_ids: vec!["no-such-product".into()],
                k: 5,
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            proto::RecommendSimilarRequest {
                query: Some(Query::ProductId("c0-0".into())),
                negative_ids: vec!["c0-0".into()],
                k: 5,
                ..Default::default()
            },
            ia,
        ),
        (
            proto::RecommendSimilarRequest {
                positive_ids: vec!["c0-0".into()],
                strategy: 5,
                k: 5,
                ..Default::default()
            },
            ia,
        ),
    ];
    for (req, code) in similar_cases {
        assert_eq!(
            code_of(c.recommend_similar(req.clone()).await).await,
            code,
            "{req:?}"
        );
    }
    server.kill9();
}

/// The test process's resident set (the server runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// The product shopper `n` views: one of the 60 cluster products.
fn product_of(n: u64) -> String {
    format!("c{}-{}", n % 3, (n / 3) % 20)
}

/// Records one view for each of shoppers `from..to` (`shopper-{n}`), over
/// four concurrent streams so that the writer's group commits fill up.
async fn record_one_each(c: &Client, from: u64, to: u64) {
    const STREAMS: u64 = 4;
    let per = (to - from).div_ceil(STREAMS);
    let calls = (0..STREAMS).map(|s| {
        let mut c = c.clone();
        let (lo, hi) = (from + s * per, (from + (s + 1) * per).min(to));
        async move {
            let items = (lo..hi)
                .map(|n| interaction(&format!("shopper-{n}"), &product_of(n), proto::Action::View));
            let r = c
                .record_interactions(futures::stream::iter(
                    items
                        .into_iter()
                        .map(proto::RecordInteractionsRequest::from),
                ))
                .await
                .unwrap_or_else(|s| panic!("record shoppers {lo}..{hi}: {s}"))
                .into_inner();
            assert_eq!((r.recorded, r.failed), (hi - lo, 0), "{:?}", r.errors);
        }
    });
    futures::future::join_all(calls).await;
}

/// Shoppers who do more than one thing, so that their answers depend on
/// everything that is reloaded: interests, history, exclusions, dislikes.
async fn record_rich_shopper(c: &mut Client, n: u64) {
    let user = format!("rich-{n}");
    let items = [
        (product_of(n), proto::Action::View),
        (product_of(n + 3), proto::Action::Click),
        (product_of(n + 1), proto::Action::Purchase),
        (product_of(n + 6), proto::Action::AddToCart),
        (product_of(n + 2), proto::Action::Dislike),
    ]
    .map(|(p, a)| interaction(&user, &p, a));
    let r = c
        .record_interactions(futures::stream::iter(
            items
                .into_iter()
                .map(proto::RecordInteractionsRequest::from),
        ))
        .await
        .unwrap_or_else(|s| panic!("record {user}: {s}"))
        .into_inner();
    assert_eq!(r.recorded, 5, "{:?}", r.errors);
}

/// Memory stays flat however many shoppers come by, and a shopper evicted
/// from memory gets exactly the answer they got while resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopper_memory_is_bounded_and_evicted_shoppers_answer_the_same() {
    const SHOPPERS: u64 = 200_000;
    const WARM_UP: u64 = 20_000;
    const RESIDENT: usize = 1_000;
    const RICH: u64 = 50;
    let _alone = IN_PROCESS_SERVER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.personalize.max_resident_shoppers = RESIDENT;
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    add_cluster_products(&mut c).await;

    // Answers recorded while these shoppers are among the most recent.
    let mut before = Vec::new();
    for n in 0..RICH {
        record_rich_shopper(&mut c, n).await;
        before.push(recommend(&mut c, for_user(&format!("rich-{n}"), 10)).await);
    }

    let started = std::time::Instant::now();
    record_one_each(&c, 0, WARM_UP).await;
    let warm = rss_bytes();
    record_one_each(&c, WARM_UP, SHOPPERS).await;
    let end = rss_bytes();
    let growth = end.saturating_sub(warm);
    eprintln!(
        "{SHOPPERS} shoppers recorded in {:.1} s; RSS {} MiB after {WARM_UP}, {} MiB after \
         {SHOPPERS} (+{} MiB)",
        started.elapsed().as_secs_f64(),
        warm >> 20,
        end >> 20,
        growth >> 20
    );
    // Kept in memory, the 180K shoppers recorded after the warm-up would
    // take ~7 KB each (a 1280-d interest plus bookkeeping): ~1.2 GB. With
    // 1,000 resident the set is full long before the warm-up ends, and the
    // growth left is allocator and buffer noise: 7 MiB measured (2 cores).
    // 64 MiB leaves 9x that as margin and is still a twentieth of what
    // keeping every shopper would cost.
    assert!(
        growth < 64 << 20,
        "RSS grew by {} MiB over {} shoppers with {RESIDENT} resident",
        growth >> 20,
        SHOPPERS - WARM_UP
    );

    // 200K newer shoppers have pushed the rich ones out of memory; their
    // answers come from their state read back from the store.
    for (n, expected) in before.iter().enumerate() {
        let user = format!("rich-{n}");
        let after = recommend(&mut c, for_user(&user, 10)).await;
        assert_eq!(&after, expected, "{user} after eviction");
        assert!(
            after
                .iter()
                .all(|i| i.product_id != product_of(n as u64 + 1)),
            "{user}'s purchase stays excluded"
        );
    }
    // One-view shoppers from the start (long evicted) still have a taste.
    let early = recommend(&mut c, for_user("shopper-0", 5)).await;
    assert!(
        early
            .iter()
            .all(|i| i.reason == format!("similar to {} you viewed", product_of(0))),
        "{early:?}"
    );
    server.stop().await;
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A measurement, not a check (run by hand, see the README's figures):
/// RSS growth over `LOOKBOOK_SHOPPERS` one-view shoppers with
/// `LOOKBOOK_RESIDENT` of them kept in memory (run it with a limit above
/// and below the shopper count: the difference over the count is the cost
/// of one resident shopper), and RecommendForUser latency for shoppers who
/// are not resident (loaded from the store) and who are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that prints numbers; run by hand"]
async fn measure_resident_memory_and_reload_latency() {
    let shoppers = env_u64("LOOKBOOK_SHOPPERS", 50_000);
    let resident = env_u64("LOOKBOOK_RESIDENT", 1_000);
    const WARM_UP: u64 = 5_000;
    const QUERIES: u64 = 2_000;
    let _alone = IN_PROCESS_SERVER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.personalize.max_resident_shoppers = resident as usize;
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    add_cluster_products(&mut c).await;
    record_one_each(&c, 0, WARM_UP).await;
    let before = rss_bytes();
    record_one_each(&c, WARM_UP, WARM_UP + shoppers).await;
    let after = rss_bytes();
    eprintln!(
        "MEASURE resident={resident} shoppers={shoppers}: RSS +{:.1} MiB ({:.0} B per shopper)",
        after.saturating_sub(before) as f64 / f64::from(1 << 20),
        after.saturating_sub(before) as f64 / shoppers as f64
    );
    let timings = |label: &str, users: Vec<u64>| {
        let mut c = c.clone();
        let label = label.to_owned();
        async move {
            let mut micros = Vec::with_capacity(users.len());
            for n in users {
                let t = std::time::Instant::now();
                let items = recommend(&mut c, for_user(&format!("shopper-{n}"), 10)).await;
                micros.push(t.elapsed().as_micros() as u64);
                assert_eq!(items.len(), 10);
            }
            micros.sort_unstable();
            let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
            eprintln!(
                "MEASURE {label} RecommendForUser (k=10, {} queries): p50 {} us, p99 {} us, \
                 max {} us",
                micros.len(),
                at(0.5),
                at(0.99),
                at(1.0)
            );
        }
    };
    // The first shoppers recorded, queried once each: not resident when
    // the limit is below the shopper count.
    timings("first-time (evicted)", (0..QUERIES).collect()).await;
    // The last few hundred again: resident now.
    let recent: Vec<u64> = (QUERIES - 500..QUERIES).collect();
    timings("resident", recent).await;
    server.stop().await;
}
