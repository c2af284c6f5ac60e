//! Operations: the HTTP port (health, metrics), request ids, TLS on both
//! ports, bearer tokens, reflection off, and the drain on SIGTERM, against
//! the real server (in-process, or the real binary for signals).

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use lookbook::{
    api::proto::{self, recommender_service_client::RecommenderServiceClient},
    config::{Config, Overrides},
};
use tonic::{
    Code,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// Every series of a Prometheus text exposition: `name{labels}` -> value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of the series named `name` whose labels contain every `a="b"` of
/// `labels`.
fn metric(all: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(http: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

/// Polls `/metrics` until `check` holds (bounded): background work such
/// as checkpoints and rebuilds happens on its own schedule.
async fn scrape_until(
    http: SocketAddr,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = scrape(http).await;
        if check(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what} never showed in /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const RECOMMEND_SIMILAR: &str = "lookbook.v1.RecommenderService/RecommendSimilar";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_health_and_request_ids_follow_real_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // Checkpoints after a short quiet spell, rebuilds after a few deletes:
    // both show up within the test.
    config.index.maintenance_interval = Duration::from_millis(100);
    config.index.rebuild_min_dead = 4;
    config.index.rebuild_dead_ratio = 0.1;
    config.server.max_in_flight = 1;
    let server = TestServer::start(config).await;
    let http = server.http_addr.expect("the HTTP port is on");

    let before = scrape(http).await;
    assert_eq!(http_get(http, "/livez").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(http_get(http, "/nope").await.0, 404);

    let mut client = server.client().await;
    let dim = 1280;
    for i in 0..40 {
        client
            .add_product(embedding_request(
                &format!("m{i}"),
                synthetic_vector(i, dim),
                &[("colour", if i % 2 == 0 { "red" } else { "blue" })],
            ))
            .await
            .expect("add");
    }
    client
        .add_product(proto::AddProductRequest {
            product_id: "photo".to_owned(),
            image: generated_png(7, 320, 240).into(),
            embedding: None,
            attributes: HashMap::new(),
        })
        .await
        .expect("add a photo");
    for _ in 0..3 {
        client
            .recommend_similar(similar_to_id("m1", 5))
            .await
            .expect("similar");
    }
    let invalid = client
        .recommend_similar(similar_to_id("m1", 0))
        .await
        .expect_err("k = 0 is refused");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    client
        .record_interaction(proto::RecordInteractionRequest {
            interaction: Some(proto::Interaction {
                user_id: "ann".to_owned(),
                product_id: "m2".to_owned(),
                action: proto::Action::View as i32,
                timestamp_ms: 0,
            }),
        })
        .await
        .expect("record");
    for i in 0..10 {
        client
            .delete_product(proto::DeleteProductRequest {
                product_id: format!("m{i}"),
            })
            .await
            .expect("delete");
    }

    // A request id the caller sends comes back; one is made up otherwise.
    let mut request = tonic::Request::new(proto::GetStatsRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::from_static("trace-me-42"));
    let response = client.get_stats(request).await.expect("stats");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap()),
        Some("trace-me-42")
    );
    let response = client
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("stats");
    let generated = response
        .metadata()
        .get("x-request-id")
        .expect("a generated request id")
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 32, "{generated}");

    // With one call allowed in flight, an open AddProducts stream makes
    // the next call RESOURCE_EXHAUSTED.
    let (hold, stream) = tokio::sync::mpsc::channel::<proto::AddProductsRequest>(1);
    let mut streaming = server.client().await;
    let open = tokio::spawn(async move {
        streaming
            .add_products(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });
    let shed = loop {
        match client.get_stats(proto::GetStatsRequest {}).await {
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(status) => panic!("unexpected {status:?}"),
        }
    };
    assert!(shed.message().contains("overloaded"), "{shed:?}");
    drop(hold);
    open.await.expect("joins").expect("empty import");

    let after = scrape_until(http, "a checkpoint and a rebuild", |m| {
        metric(
            m,
            "lookbook_index_checkpoints_total",
            &[("result", "written")],
        ) > metric(
            &before,
            "lookbook_index_checkpoints_total",
            &[("result", "written")],
        ) && metric(m, "lookbook_index_rebuilds_total", &[("result", "swapped")])
            > metric(
                &before,
                "lookbook_index_rebuilds_total",
                &[("result", "swapped")],
            )
    })
    .await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    let similar = [("method", RECOMMEND_SIMILAR)];
    assert!(
        moved(
            "lookbook_grpc_requests_total",
            &[("method", RECOMMEND_SIMILAR), ("code", "OK")]
        ) >= 3.0
    );
    assert!(
        moved(
            "lookbook_grpc_requests_total",
            &[("method", RECOMMEND_SIMILAR), ("code", "INVALID_ARGUMENT")]
        ) >= 1.0
    );
    assert!(
        moved(
            "lookbook_grpc_requests_total",
            &[
                ("method", "lookbook.v1.RecommenderService/GetStats"),
                ("code", "RESOURCE_EXHAUSTED")
            ]
        ) >= 1.0
    );
    assert!(moved("lookbook_grpc_request_duration_seconds_count", &similar) >= 4.0);
    assert!(
        moved(
            "lookbook_grpc_request_duration_seconds_bucket",
            &[("method", RECOMMEND_SIMILAR), ("le", "+Inf")]
        ) >= 4.0
    );
    assert!(moved("lookbook_shed_total", &[("bound", "in_flight")]) >= 1.0);
    assert!(moved("lookbook_encoder_batch_images_count", &[]) >= 1.0);
    assert!(moved("lookbook_encoder_decode_seconds_count", &[]) >= 1.0);
    assert!(moved("lookbook_encoder_inference_seconds_count", &[]) >= 1.0);
    assert!(
        moved(
            "lookbook_store_commit_duration_seconds_count",
            &[("op", "delete")]
        ) >= 10.0
    );
    assert!(
        moved(
            "lookbook_interactions_recorded_total",
            &[("action", "view")]
        ) >= 1.0
    );
    assert!(moved("lookbook_index_checkpoint_duration_seconds_count", &[]) >= 1.0);
    assert!(moved("lookbook_index_rebuild_duration_seconds_count", &[]) >= 1.0);
    assert!(
        moved(
            "lookbook_http_requests_total",
            &[("route", "/livez"), ("status", "200")]
        ) >= 1.0
    );
    assert_eq!(metric(&after, "lookbook_encoder_queue_depth", &[]), 0.0);
    // Gauges of state are read at scrape time: products and shoppers of
    // every server in this process; this one's are included.
    assert!(metric(&after, "lookbook_catalog_products", &[]) >= 31.0);
    assert!(metric(&after, "lookbook_shoppers_total", &[]) >= 1.0);
    assert!(after.contains_key("lookbook_shoppers_resident"));
    assert!(after.contains_key("lookbook_index_dead_points"));
    assert!(metric(&after, "lookbook_index_points", &[]) >= 31.0);
    assert_eq!(metric(&after, "lookbook_ready", &[]), 1.0);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.http.listen = String::new();
    let server = TestServer::start(config).await;
    assert_eq!(server.http_addr, None);
    server.stop().await;
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, all made here.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("leaf key");
        let cert = CertificateParams::new(names)
            .expect("leaf params")
            .signed_by(&key, &issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]);
    let (client_cert, client_key) = leaf(vec!["a-client".to_owned()]);
    Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

async fn tls_channel(
    addr: SocketAddr,
    pki: &Pki,
    with_client_cert: bool,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .expect("client TLS config")
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// `GET path` over TLS; Err if the handshake or the request fails.
async fn https_get(
    addr: SocketAddr,
    path: &str,
    pki: &Pki,
    with_client_cert: bool,
) -> Result<(u16, String), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).expect("CA pem"))
        .expect("CA root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots);
    let config = if with_client_cert {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).expect("key"),
            )
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    if raw.is_empty() {
        return Err("connection closed without a response".to_owned());
    }
    Ok(parse_http(&raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_on_both_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let files = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.tls.cert_file = Some(write(files.path(), "server.crt", &pki.server_cert));
    config.tls.key_file = Some(write(files.path(), "server.key", &pki.server_key));
    config.tls.client_ca_file = Some(write(files.path(), "ca.crt", &pki.ca));
    config.server.reflection = false;
    let options = lookbook::api::client::ClientOptions {
        max_message_bytes: 4 << 20,
        ca_cert: Some(files.path().join("ca.crt")),
        client_cert: Some(write(files.path(), "client.crt", &pki.client_cert)),
        client_key: Some(write(files.path(), "client.key", &pki.client_key)),
        token: None,
    };
    let server = TlsServer::start(config, &options).await;

    // A client with a certificate the CA signed gets through, on both ports.
    let channel = tls_channel(server.addr, &pki, true)
        .await
        .expect("mutual TLS");
    let mut client = RecommenderServiceClient::new(channel.clone());
    client
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("stats over mutual TLS");
    assert_eq!(
        https_get(server.http, "/readyz", &pki, true).await,
        Ok((200, "ready\n".to_owned()))
    );
    // The CLI's client speaks it too.
    let url = format!("https://localhost:{}", server.addr.port());
    assert_eq!(
        lookbook::api::client::health(&url, &options)
            .await
            .expect("health over TLS"),
        "SERVING"
    );
    let mut typed = lookbook::api::client::Client::connect_with(&url, &options)
        .await
        .expect("typed client over TLS");
    assert_eq!(typed.stats().await.expect("stats").catalog_size, 0);

    // Without a client certificate, or in plaintext, nothing gets through.
    let refused = match tls_channel(server.addr, &pki, false).await {
        Err(_) => true,
        Ok(channel) => RecommenderServiceClient::new(channel)
            .get_stats(proto::GetStatsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    assert!(
        https_get(server.http, "/readyz", &pki, false)
            .await
            .is_err()
    );
    let plaintext = match Channel::from_shared(format!("http://{}", server.addr))
        .expect("url")
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => RecommenderServiceClient::new(channel)
            .get_stats(proto::GetStatsRequest {})
            .await
            .is_err(),
    };
    assert!(plaintext, "a plaintext client was served on the TLS port");

    // Reflection is off: its service is not there.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let asked = reflection
        .server_reflection_info(futures::stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await
        .expect_err("reflection is off");
    assert_eq!(asked.code(), Code::Unimplemented);
    server.stop().await;
}

/// `TestServer` waits for SERVING in plaintext; this one asks gRPC health
/// over TLS, as a client with `options` would.
struct TlsServer {
    addr: SocketAddr,
    http: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), lookbook::app::AppError>>,
}

impl TlsServer {
    async fn start(config: Config, options: &lookbook::api::client::ClientOptions) -> Self {
        let bound = lookbook::app::Bound::bind(config).await.expect("bind");
        let addr = bound.local_addr();
        let http = bound.http_addr().expect("HTTP on");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let url = format!("https://localhost:{}", addr.port());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match lookbook::api::client::health(&url, options).await {
                Ok(status) if status == "SERVING" => break,
                Ok(_) | Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the TLS server never reported SERVING"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Self {
            addr,
            http,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("server task panicked")
            .expect("server stopped with an error");
    }
}

const READ_TOKEN: &str = "read-0123456789abcdef0123456789abcdef";
const WRITE_TOKEN: &str = "write-0123456789abcdef0123456789abcdef";

/// What a call with `token` on `rpc` got: "OK" or the status code.
async fn call(channel: &Channel, token: Option<&str>, rpc: &str) -> Code {
    let mut client = RecommenderServiceClient::new(channel.clone());
    macro_rules! with_token {
        ($message:expr) => {{
            let mut request = tonic::Request::new($message);
            if let Some(token) = token {
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {token}").parse().expect("ascii"),
                );
            }
            request
        }};
    }
    let result = match rpc {
        "GetStats" => client
            .get_stats(with_token!(proto::GetStatsRequest {}))
            .await
            .map(|_| ()),
        "RecommendSimilar" => client
            .recommend_similar(with_token!(similar_to_vector(synthetic_vector(1, 1280), 3)))
            .await
            .map(|_| ()),
        "AddProduct" => client
            .add_product(with_token!(embedding_request(
                "p1",
                synthetic_vector(1, 1280),
                &[]
            )))
            .await
            .map(|_| ()),
        "DeleteProduct" => client
            .delete_product(with_token!(proto::DeleteProductRequest {
                product_id: "absent".to_owned(),
            }))
            .await
            .map(|_| ()),
        "ForgetUser" => client
            .forget_user(with_token!(proto::ForgetUserRequest {
                user_id: "ann".to_owned(),
            }))
            .await
            .map(|_| ()),
        "Health" => {
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
            HealthClient::new(channel.clone())
                .check(with_token!(HealthCheckRequest {
                    service: String::new(),
                }))
                .await
                .map(|_| ())
        }
        other => panic!("no such rpc {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_walk_the_whole_matrix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let read = write(
        files.path(),
        "read",
        &format!("# rotated monthly\n{READ_TOKEN}\n"),
    );
    let write_file = write(files.path(), "write", &format!("{WRITE_TOKEN}\n"));
    // Through the file layer, as an operator configures it.
    let toml = write(
        files.path(),
        "lookbook.toml",
        &format!(
            "[auth]\nread_tokens_file = {:?}\nwrite_tokens_file = {:?}\n",
            read.display().to_string(),
            write_file.display().to_string()
        ),
    );
    let loaded = Config::load(Some(&toml), &Overrides::default()).expect("config with tokens");
    let mut config = test_config(dir.path());
    config.tokens = loaded.tokens.clone();
    assert_eq!(
        (config.tokens.read.len(), config.tokens.write.len()),
        (1, 1)
    );
    let server = TestServer::start(config).await;
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let wrong = "wrong-0123456789abcdef0123456789abcdef";
    // (rpc, is a write): no or a wrong token is UNAUTHENTICATED; a read
    // token may read but not write; a write token may do both.
    for (rpc, write) in [
        ("GetStats", false),
        ("RecommendSimilar", false),
        ("AddProduct", true),
        ("DeleteProduct", true),
        ("ForgetUser", true),
    ] {
        let with_read = if write {
            Code::PermissionDenied
        } else {
            Code::Ok
        };
        for (token, expected) in [
            (None, Code::Unauthenticated),
            (Some(wrong), Code::Unauthenticated),
            (Some(READ_TOKEN), with_read),
            (Some(WRITE_TOKEN), Code::Ok),
        ] {
            assert_eq!(
                call(&channel, token, rpc).await,
                expected,
                "{rpc} with {token:?}"
            );
        }
    }
    for token in [None, Some(wrong), Some(READ_TOKEN)] {
        assert_eq!(
            call(&channel, token, "Health").await,
            Code::Ok,
            "health is open"
        );
    }
    // The write above really happened: the read token sees it.
    let mut typed = lookbook::api::client::Client::connect_with(
        &server.url(),
        &lookbook::api::client::ClientOptions {
            max_message_bytes: 4 << 20,
            token: Some(READ_TOKEN.to_owned()),
            ..Default::default()
        },
    )
    .await
    .expect("typed client with a token");
    assert_eq!(typed.stats().await.expect("stats").catalog_size, 1);
    assert!(
        typed.delete("p1").await.is_err(),
        "a read token cannot delete"
    );
    server.stop().await;
}

/// Starts the real binary with a drain delay; returns it with its HTTP port.
async fn spawn_with_drain(dir: &Path, delay: &str) -> (ServerProcess, SocketAddr) {
    let server = ServerProcess::spawn_with(dir, &[("LOOKBOOK__SERVER__DRAIN_DELAY", delay)]).await;
    let http = server.http.expect("the server printed its HTTP port");
    (server, http)
}

fn signal(server: &ServerProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn wait_not_ready(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(http, "/readyz").await;
        if status == 503 {
            assert_eq!(body, "shutting down\n");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_readiness_serves_through_the_delay_then_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, http) = spawn_with_drain(dir.path(), "3s").await;
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    let mut client = connect(&server.url).await;
    let signalled = Instant::now();
    signal(&server, "TERM");
    wait_not_ready(http).await;
    // gRPC health agrees, and calls are still served during the delay,
    // on the open connection and on a new one.
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let health = HealthClient::new(
        Channel::from_shared(server.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("a new connection during the delay"),
    )
    .check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("health answers");
    assert_eq!(
        health.get_ref().status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    client
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("served during the drain delay");
    assert_eq!(
        http_get(http, "/livez").await.0,
        200,
        "alive while draining"
    );
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .expect("joins")
        .expect("wait for the server");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(3),
        "exited after {took:?}, before the delay"
    );
    assert!(took < Duration::from_secs(3 + 20), "exited after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, http) = spawn_with_drain(dir.path(), "60s").await;
    signal(&server, "TERM");
    wait_not_ready(http).await;
    let second = Instant::now();
    signal(&server, "INT");
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .expect("joins")
        .expect("wait for the server");
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
}
