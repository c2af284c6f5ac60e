//! The HTTP/JSON API on the HTTP port, against the real server: every
//! route with good and bad input, the gRPC -> HTTP status mapping (checked
//! against what the gRPC port answers for the same request), tokens,
//! thumbnails and their caching, the OpenAPI document against the routes
//! actually served, and the page.

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::*;
use lookbook::{
    api::proto,
    config::{Config, Tokens},
};
use serde_json::{Value, json};
use tonic::Code;

const DIM: usize = 1280;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> HttpReply {
    http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str) -> HttpReply {
    http_request(addr, "GET", path, &[], b"").await
}

fn ok(reply: &HttpReply) -> Value {
    assert_eq!(
        reply.status,
        200,
        "expected 200, got {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["productId"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The HTTP status the README documents for a gRPC code.
fn mapped(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::Unavailable => 503,
        other => panic!("no expectation for {other:?}"),
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        other => panic!("no name for {other:?}"),
    }
}

/// An HTTP error reply carries the mapped status and the gRPC code's name.
fn assert_error(reply: &HttpReply, code: Code, what: &str) {
    assert_eq!(
        (reply.status, reply.error_status().as_str()),
        (mapped(code), code_name(code)),
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        !reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{what}: an error says why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_serves_the_catalogue_and_shoppers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let http = server.http_addr.expect("HTTP is on");

    // A photo: created, with a thumbnail.
    let photo = generated_png(3, 640, 480);
    let added = ok(&post(
        http,
        "/v1/products",
        &json!({"productId": "photo-1", "image": b64(&photo), "attributes": {"articleType": "Shirts", "baseColour": "Blue"}}),
    )
    .await);
    assert_eq!(added, json!({"created": true, "catalogSize": "1"}));
    // Embeddings: 30 more products, in two kinds.
    for i in 0..30u64 {
        let kind = if i % 2 == 0 { "Shirts" } else { "Watches" };
        let reply = post(
            http,
            "/v1/products",
            &json!({"productId": format!("e{i:02}"), "embedding": {"values": synthetic_vector(i, DIM)}, "attributes": {"articleType": kind}}),
        )
        .await;
        ok(&reply);
    }
    // Replacing answers created: false (omitted, as proto3 JSON omits defaults).
    let replaced = ok(&post(
        http,
        "/v1/products",
        &json!({"productId": "e00", "embedding": {"values": synthetic_vector(0, DIM)}, "attributes": {"articleType": "Shirts"}}),
    )
    .await);
    assert_eq!(replaced, json!({"catalogSize": "31"}));

    // GET one, basic and full.
    let basic = ok(&get(http, "/v1/products/photo-1").await);
    assert_eq!(basic["product"]["productId"], "photo-1");
    assert_eq!(basic["product"]["hasThumbnail"], true);
    assert!(basic["product"].get("embedding").is_none());
    let full = ok(&get(http, "/v1/products/e03?view=PRODUCT_VIEW_FULL").await);
    let values = full["product"]["embedding"]["values"].as_array().unwrap();
    assert_eq!(values.len(), DIM);
    assert!(
        full["product"].get("hasThumbnail").is_none(),
        "no photo, no thumbnail"
    );

    // The thumbnail: a small JPEG with caching headers, revalidated by ETag.
    let thumb = get(http, "/v1/products/photo-1/thumbnail").await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.header("content-type"), Some("image/jpeg"));
    assert!(thumb.header("cache-control").unwrap().contains("max-age"));
    let decoded = image::load_from_memory(&thumb.body).expect("a JPEG");
    assert_eq!((decoded.width(), decoded.height()), (256, 192));
    let etag = thumb.header("etag").expect("an ETag").to_owned();
    let again = http_request(
        http,
        "GET",
        "/v1/products/photo-1/thumbnail",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_error(
        &get(http, "/v1/products/e01/thumbnail").await,
        Code::NotFound,
        "a product added by embedding has no thumbnail",
    );

    // Similar by id, with a filter.
    let similar = ok(&post(
        http,
        "/v1/recommend/similar",
        &json!({"productId": "e00", "k": 5, "filter": {"must": [{"key": "articleType", "values": ["Watches"]}]}}),
    )
    .await);
    let items = &similar["items"];
    assert_eq!(ids(items).len(), 5);
    for item in items.as_array().unwrap() {
        assert_eq!(item["attributes"]["articleType"], "Watches");
        assert!(item["score"].as_f64().is_some());
    }

    // Similar to an uploaded photo (multipart): the photo's own product first.
    let boundary = "lookbook-test-boundary";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    form.extend_from_slice(&photo);
    form.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{{\"k\": 3}}\r\n--{boundary}--\r\n").as_bytes(),
    );
    let uploaded = http_request(
        http,
        "POST",
        "/v1/recommend/similar",
        &[(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )],
        &form,
    )
    .await;
    let uploaded = ok(&uploaded);
    let found = ids(&uploaded["items"]);
    assert_eq!(found.len(), 3);
    assert_eq!(found[0], "photo-1");
    assert_eq!(uploaded["items"][0]["hasThumbnail"], true);

    // PATCH: set and remove attributes; filters see it at once, the vector stays.
    let patched = http_request(
        http,
        "PATCH",
        "/v1/products/e02",
        &[("Content-Type", "application/json")],
        json!({"setAttributes": {"season": "Summer", "price": "19.99"}, "removeAttributes": ["articleType"]})
            .to_string()
            .as_bytes(),
    )
    .await;
    let patched = ok(&patched);
    assert_eq!(
        patched["product"]["attributes"],
        json!({"season": "Summer", "price": "19.99"})
    );
    let summer = ok(&post(
        http,
        "/v1/recommend/similar",
        &json!({"productId": "e04", "k": 10, "filter": {"must": [{"key": "season", "values": ["Summer"]}]}}),
    )
    .await);
    assert_eq!(ids(&summer["items"]), ["e02"]);
    let full_after = ok(&get(http, "/v1/products/e02?view=PRODUCT_VIEW_FULL").await);
    let stored: Vec<f32> = full_after["product"]["embedding"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let sent = synthetic_vector(2, DIM);
    assert!(
        stored.len() == DIM && stored.iter().zip(&sent).all(|(a, b)| (a - b).abs() < 1e-6),
        "the vector is untouched"
    );

    // List: pages in id order, a filter through the query string.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let path = if token.is_empty() {
            "/v1/products?pageSize=7".to_owned()
        } else {
            format!("/v1/products?pageSize=7&pageToken={token}")
        };
        let page = ok(&get(http, &path).await);
        let products = ids(&page["products"]);
        assert!(products.len() <= 7);
        seen.extend(products);
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "stable id order");
    assert_eq!(seen.len(), 31);
    let watches = ok(&get(http, "/v1/products?must=articleType:Watches&pageSize=100").await);
    assert_eq!(ids(&watches["products"]).len(), 15);
    assert!(watches.get("nextPageToken").is_none());
    // A token is bound to its filter.
    let first = ok(&get(http, "/v1/products?pageSize=2").await);
    let token = first["nextPageToken"].as_str().unwrap();
    assert_error(
        &get(
            http,
            &format!("/v1/products?pageSize=2&must=articleType:Watches&pageToken={token}"),
        )
        .await,
        Code::InvalidArgument,
        "a page token reused with another filter",
    );

    // Batch get: request order, missing ids listed.
    let batch = ok(&post(
        http,
        "/v1/products:batchGet",
        &json!({"productIds": ["e05", "nope", "photo-1", "e05"]}),
    )
    .await);
    assert_eq!(ids(&batch["products"]), ["e05", "photo-1"]);
    assert_eq!(batch["missingIds"], json!(["nope"]));

    // Facets.
    let facets = ok(&get(http, "/v1/attributes?maxValues=1").await);
    let article = facets["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "articleType")
        .expect("articleType facet")
        .clone();
    assert_eq!(article["distinctValues"], "2");
    assert_eq!(article["values"].as_array().unwrap().len(), 1);

    // A shopper: interactions, then recommendations with reasons.
    for (product, action) in [("e04", "ACTION_VIEW"), ("e06", "ACTION_ADD_TO_CART")] {
        let reply = post(
            http,
            "/v1/interactions",
            &json!({"interaction": {"userId": "s1", "productId": product, "action": action}}),
        )
        .await;
        assert_eq!(ok(&reply), json!({}));
    }
    let for_user = ok(&post(http, "/v1/recommend/user", &json!({"userId": "s1", "k": 5})).await);
    let items = for_user["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(
        items
            .iter()
            .all(|i| !i["reason"].as_str().unwrap_or_default().is_empty())
    );
    let forgot = http_request(http, "DELETE", "/v1/users/s1", &[], b"").await;
    assert_eq!(
        ok(&forgot),
        json!({"forgotten": true, "interactionsErased": "2"})
    );

    // Embed.
    let embedded = ok(&post(http, "/v1/embed", &json!({"images": [b64(&photo)]})).await);
    assert_eq!(embedded["dim"], DIM);
    assert_eq!(
        embedded["embeddings"][0]["values"]
            .as_array()
            .unwrap()
            .len(),
        DIM
    );

    // Stats.
    let stats = ok(&get(http, "/v1/stats").await);
    assert_eq!(stats["catalogSize"], "31");
    assert_eq!(stats["metric"], "METRIC_COSINE");

    // Delete: the product and its thumbnail go.
    let deleted = http_request(http, "DELETE", "/v1/products/photo-1", &[], b"").await;
    assert_eq!(ok(&deleted), json!({"deleted": true, "catalogSize": "30"}));
    assert_error(
        &get(http, "/v1/products/photo-1/thumbnail").await,
        Code::NotFound,
        "the thumbnail of a deleted product",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_grpc_status_mapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let http = server.http_addr.expect("HTTP is on");
    let mut c = server.client().await;
    ok(&post(
        http,
        "/v1/products",
        &json!({"productId": "a", "embedding": {"values": synthetic_vector(1, DIM)}}),
    )
    .await);

    // The same bad request on both ports: the HTTP status is the mapping of
    // the gRPC code, and the body names it.
    let grpc_code = |r: Result<tonic::Response<proto::RecommendSimilarResponse>, tonic::Status>| {
        r.expect_err("refused").code()
    };
    let cases: Vec<(&str, Value, proto::RecommendSimilarRequest)> = vec![
        (
            "k = 0",
            json!({"productId": "a", "k": 0}),
            similar_to_id("a", 0),
        ),
        (
            "unknown product",
            json!({"productId": "zz", "k": 3}),
            similar_to_id("zz", 3),
        ),
        (
            "wrong dimension",
            json!({"embedding": {"values": [1.0, 2.0]}, "k": 3}),
            similar_to_vector(vec![1.0, 2.0], 3),
        ),
        (
            "no query",
            json!({"k": 3}),
            proto::RecommendSimilarRequest {
                k: 3,
                ..Default::default()
            },
        ),
    ];
    for (what, body, grpc) in cases {
        let code = grpc_code(c.recommend_similar(grpc).await);
        assert_error(
            &post(http, "/v1/recommend/similar", &body).await,
            code,
            what,
        );
    }
    assert_error(
        &post(
            http,
            "/v1/products",
            &json!({"productId": "", "embedding": {"values": [1.0]}}),
        )
        .await,
        Code::InvalidArgument,
        "empty product id",
    );
    assert_error(
        &post(
            http,
            "/v1/products",
            &json!({"productId": "x", "image": b64(b"not an image")}),
        )
        .await,
        Code::InvalidArgument,
        "an undecodable photo",
    );
    assert_error(
        &post(
            http,
            "/v1/interactions",
            &json!({"interaction": {"userId": "u", "productId": "zz", "action": "ACTION_VIEW"}}),
        )
        .await,
        Code::NotFound,
        "an interaction with an unknown product",
    );
    assert_error(
        &post(
            http,
            "/v1/interactions",
            &json!({"interaction": {"userId": "u", "productId": "a"}}),
        )
        .await,
        Code::InvalidArgument,
        "an interaction without an action",
    );
    assert_error(
        &post(
            http,
            "/v1/recommend/user",
            &json!({"userId": "u", "k": 100000}),
        )
        .await,
        Code::InvalidArgument,
        "k above the limit",
    );
    assert_error(
        &post(http, "/v1/products:batchGet", &json!({"productIds": []})).await,
        Code::InvalidArgument,
        "no ids",
    );
    let patch = |body: Value| async move {
        http_request(
            http,
            "PATCH",
            "/v1/products/a",
            &[],
            body.to_string().as_bytes(),
        )
        .await
    };
    assert_error(
        &patch(json!({})).await,
        Code::InvalidArgument,
        "an empty update",
    );
    assert_error(
        &patch(json!({"setAttributes": {"k": "v"}, "removeAttributes": ["k"]})).await,
        Code::InvalidArgument,
        "set and remove one key",
    );
    assert_error(
        &patch(json!({"productId": "b", "setAttributes": {"k": "v"}})).await,
        Code::InvalidArgument,
        "another id in the body",
    );
    assert_error(
        &http_request(
            http,
            "PATCH",
            "/v1/products/zz",
            &[],
            br#"{"setAttributes": {"k": "v"}}"#,
        )
        .await,
        Code::NotFound,
        "updating an unknown product",
    );
    assert_error(
        &get(http, "/v1/products/zz").await,
        Code::NotFound,
        "GET unknown",
    );
    assert_error(
        &get(http, "/v1/products/a?view=EVERYTHING").await,
        Code::InvalidArgument,
        "bad view",
    );
    assert_error(
        &get(http, "/v1/products?pageToken=zzz").await,
        Code::InvalidArgument,
        "bad token",
    );
    assert_error(
        &get(http, "/v1/products?colour=red").await,
        Code::InvalidArgument,
        "unknown parameter",
    );
    // JSON that is not the message: malformed, a misspelt field, a wrong type.
    for body in [
        &b"{not json"[..],
        br#"{"productID": "a", "k": 3}"#,
        br#"{"productId": "a", "k": "three"}"#,
    ] {
        let reply = http_request(http, "POST", "/v1/recommend/similar", &[], body).await;
        assert_error(
            &reply,
            Code::InvalidArgument,
            &String::from_utf8_lossy(body),
        );
    }
    // proto3 JSON also accepts the proto field names.
    ok(&post(
        http,
        "/v1/recommend/similar",
        &json!({"product_id": "a", "k": 1}),
    )
    .await);
    // Larger than the message limit: refused before it is read whole.
    let huge = vec![b'x'; 64 << 20];
    let reply = http_request(http, "POST", "/v1/embed", &[], &huge).await;
    assert_eq!(
        (reply.status, reply.error_status().as_str()),
        (413, "RESOURCE_EXHAUSTED")
    );
    // Unknown routes and methods.
    let unknown = get(http, "/v1/nothing").await;
    assert_error(&unknown, Code::NotFound, "an unknown route");
    let wrong_method = http_request(http, "PUT", "/v1/products/a", &[], b"{}").await;
    assert_eq!(wrong_method.status, 405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tokens_follow_the_grpc_rules() {
    const READ: &str = "read-token-0123456789abcdef";
    const WRITE: &str = "write-token-0123456789abcdef";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config: Config = test_config(dir.path());
    config.tokens = Tokens {
        read: vec![Tokens::digest(READ.as_bytes())],
        write: vec![Tokens::digest(WRITE.as_bytes())],
    };
    let server = TestServer::start(config).await;
    let http = server.http_addr.expect("HTTP is on");
    let auth = |token: &str| format!("Bearer {token}");
    let add =
        json!({"productId": "a", "embedding": {"values": synthetic_vector(1, DIM)}}).to_string();
    let call = |method: &'static str, path: &'static str, token: Option<String>, body: String| async move {
        let header = token.map(|t| ("Authorization", t));
        let headers: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
        http_request(http, method, path, &headers, body.as_bytes()).await
    };
    // Writes: none or a wrong token 401, a read token 403, a write token OK.
    let none = call("POST", "/v1/products", None, add.clone()).await;
    assert_error(&none, Code::Unauthenticated, "no token");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert_error(
        &call(
            "POST",
            "/v1/products",
            Some(auth("wrong-token-0123456789abcdef")),
            add.clone(),
        )
        .await,
        Code::Unauthenticated,
        "a wrong token",
    );
    assert_error(
        &call("POST", "/v1/products", Some(auth(READ)), add.clone()).await,
        Code::PermissionDenied,
        "a read token writing",
    );
    ok(&call("POST", "/v1/products", Some(auth(WRITE)), add.clone()).await);
    // Reads: a read or write token; none is refused (thumbnails included).
    assert_error(
        &call("GET", "/v1/stats", None, String::new()).await,
        Code::Unauthenticated,
        "stats",
    );
    assert_error(
        &call("GET", "/v1/products/a/thumbnail", None, String::new()).await,
        Code::Unauthenticated,
        "thumbnail",
    );
    ok(&call("GET", "/v1/stats", Some(auth(READ)), String::new()).await);
    ok(&call("GET", "/v1/products/a", Some(auth(WRITE)), String::new()).await);
    assert_error(
        &call("DELETE", "/v1/users/u", Some(auth(READ)), String::new()).await,
        Code::PermissionDenied,
        "erasing a shopper with a read token",
    );
    // Health, metrics, the document and the page stay open.
    for path in ["/livez", "/readyz", "/metrics", "/openapi.json", "/"] {
        assert_eq!(
            call("GET", path, None, String::new()).await.status,
            200,
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let http = server.http_addr.expect("HTTP is on");
    let doc = ok(&get(http, "/openapi.json").await);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    // The routes the API promises are documented.
    let promised = [
        ("post", "/v1/embed"),
        ("post", "/v1/products"),
        ("get", "/v1/products"),
        ("get", "/v1/products/{productId}"),
        ("patch", "/v1/products/{productId}"),
        ("delete", "/v1/products/{productId}"),
        ("post", "/v1/products:batchGet"),
        ("get", "/v1/products/{productId}/thumbnail"),
        ("post", "/v1/recommend/similar"),
        ("post", "/v1/interactions"),
        ("post", "/v1/recommend/user"),
        ("delete", "/v1/users/{userId}"),
        ("get", "/v1/stats"),
        ("get", "/v1/attributes"),
    ];
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = promised
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);
    // Every documented route is served: called with a made-up id and an
    // empty body it is answered by its handler (a JSON status of the API,
    // never the router's "no route" 404 or 405).
    for (method, path) in &documented {
        let concrete = path
            .replace("{productId}", "no-such")
            .replace("{userId}", "no-such");
        let reply = http_request(http, &method.to_uppercase(), &concrete, &[], b"").await;
        assert_ne!(reply.status, 405, "{method} {path}");
        let body = String::from_utf8_lossy(&reply.body);
        assert!(!body.contains("no route"), "{method} {path}: {body}");
    }
    // And an undocumented one is not.
    let reply = http_request(http, "GET", "/v1/products/a/b", &[], b"").await;
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no route")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_unless_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let http = server.http_addr.expect("HTTP is on");
    let page = get(http, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    let html = String::from_utf8_lossy(&page.body);
    for asset in ["/ui/app.js", "/ui/app.css"] {
        assert!(html.contains(asset), "the page loads {asset}");
        assert_eq!(get(http, asset).await.status, 200, "{asset}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    server.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.http.ui = false;
    let server = TestServer::start(config).await;
    let http = server.http_addr.expect("HTTP is on");
    for path in ["/", "/ui/app.js"] {
        assert_eq!(
            get(http, path).await.status,
            404,
            "{path} with http.ui = false"
        );
    }
    // The API is still served.
    ok(&get(http, "/v1/stats").await);
    server.stop().await;
}
