//! The client examples a storefront developer copies (examples/python over
//! gRPC, examples/node over HTTP/JSON), run as they are against the real
//! server with real product photos: each imports a product, asks for similar
//! products and for a shopper's recommendations, and must end with a RESULT
//! line that holds all three. `make test-deps` installs their venv.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use lookbook::dataset::read_catalog;

/// Products imported before the examples run, so that "similar" has
/// something to find.
const CATALOG: usize = 40;
/// Longest an example may run (it sets its own per-call deadlines too).
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether a dependency installed by `make test-deps` is there; outside CI
/// its absence skips (with a note), under CI it fails.
fn installed(test: &str, what: &Path, how: &str) -> bool {
    if what.exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {} is missing under CI=true; {how}", what.display());
    }
    eprintln!("SKIPPED {test}: {} is missing; {how}", what.display());
    false
}

/// Runs `command` to its end (bounded) and returns its stdout, failing the
/// test with both streams if it fails.
fn run(mut command: Command, what: &str) -> String {
    use std::io::Read as _;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if started.elapsed() > EXAMPLE_TIMEOUT {
            let _ = child.kill();
            panic!("{what}: still running after {EXAMPLE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(status.success(), "{what} failed ({status}):\n{out}\n{err}");
    eprintln!("{what}:\n{out}");
    out
}

/// The JSON after `RESULT ` on the example's last line.
fn result_of(output: &str, what: &str) -> serde_json::Value {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{what}: no RESULT line in\n{output}"));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{what}: RESULT is not JSON ({e}): {line}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_examples_run_against_the_real_server() {
    const TEST: &str = "clients";
    let Some(data) = fashion_data(TEST) else {
        return;
    };
    let root = repo_root();
    let python = root.join(".cache/clients-venv/bin/python");
    if !installed(
        TEST,
        &python,
        "run `make test-deps` (examples/setup-clients.sh)",
    ) {
        return;
    }
    let (entries, _) = read_catalog(&data).expect("read the sample catalogue");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let items: Vec<_> = entries[..CATALOG].iter().map(photo_request).collect();
    let r = c
        .add_products(tokio_stream::iter(
            items
                .into_iter()
                .map(lookbook::api::proto::AddProductsRequest::from),
        ))
        .await
        .expect("import the catalogue")
        .into_inner();
    assert_eq!(r.added as usize, CATALOG);

    let http = server.http_addr.expect("HTTP is on");
    let runs = [
        (
            "python (grpcio)",
            CATALOG,
            Command::new(&python),
            vec![
                root.join("examples/python/lookbook_client.py")
                    .display()
                    .to_string(),
                "--server".into(),
                server.addr.to_string(),
            ],
        ),
        (
            "node (fetch)",
            CATALOG + 1,
            Command::new("node"),
            vec![
                root.join("examples/node/client.mjs").display().to_string(),
                "--url".into(),
                format!("http://{http}"),
            ],
        ),
    ];
    for (what, photo, mut command, args) in runs {
        let entry = &entries[photo];
        let kind = entry
            .attributes
            .get("articleType")
            .cloned()
            .unwrap_or_default();
        command
            .args(&args)
            .args(["--photo", &entry.image.display().to_string()])
            .args(["--product-id", &format!("example-{}", entry.id)])
            .args(["--attribute", &format!("articleType={kind}")])
            .args(["--shopper", &format!("shopper-{photo}")])
            .env_remove("LOOKBOOK_TOKEN")
            .current_dir(&root);
        let output = tokio::task::spawn_blocking({
            let what = what.to_owned();
            move || run(command, &what)
        })
        .await
        .expect("the example runner");
        let result = result_of(&output, what);
        let similar = strings(&result["similar"]);
        let for_user = strings(&result["forUser"]);
        let reasons = strings(&result["reasons"]);
        assert_eq!(similar.len(), 5, "{what}: {result}");
        assert!(!for_user.is_empty(), "{what}: {result}");
        assert_eq!(reasons.len(), for_user.len(), "{what}: {result}");
        assert!(reasons.iter().all(|r| !r.is_empty()), "{what}: {result}");
        // The imported product is in the catalogue, with its thumbnail.
        let stored = http_request(
            http,
            "GET",
            &format!("/v1/products/example-{}", entry.id),
            &[],
            b"",
        )
        .await;
        assert_eq!(stored.status, 200, "{what}");
        assert_eq!(stored.json()["product"]["hasThumbnail"], true, "{what}");
    }
    server.stop().await;
}
