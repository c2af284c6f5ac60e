//! The page at `/` in headless Chromium (tests/browser/page.test.mjs, driven
//! by playwright-core), against the real server with part of the fashion
//! sample imported: upload a photo and see results with loaded thumbnails,
//! filter, follow a product's neighbours, act as a shopper and see the
//! personalized list change with reasons, the diversity toggle, keyboard
//! use, no console errors, and screenshots at desktop and phone widths
//! (kept in `target/browser-screenshots/`). `make test-deps` installs
//! Chromium and the npm packages.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use lookbook::{api::proto, dataset::read_catalog};

/// Products imported: enough for a filter to leave several results of one
/// articleType and for trending to have material, few enough to import in
/// seconds.
const CATALOG: usize = 300;
/// The page test's own limit (it enforces it and exits non-zero).
const PAGE_TEST_SECONDS: u64 = 180;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_real_browser() {
    const TEST: &str = "browser";
    let Some(data) = fashion_data(TEST) else {
        return;
    };
    let root = repo_root();
    let how = "run `make test-deps` (tests/browser/setup.sh)";
    if !installed(TEST, Path::new("/usr/bin/chromium"), how)
        || !installed(TEST, &root.join("node_modules/playwright-core"), how)
    {
        return;
    }
    let (entries, _) = read_catalog(&data).expect("read the sample catalogue");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let items: Vec<proto::AddProductsRequest> = entries[..CATALOG]
        .iter()
        .map(|e| photo_request(e).into())
        .collect();
    let r = c
        .add_products(tokio_stream::iter(items))
        .await
        .expect("import the catalogue")
        .into_inner();
    assert_eq!(r.added as usize, CATALOG, "{:?}", r.errors);

    let out = root.join("target/browser-screenshots");
    std::fs::create_dir_all(&out).expect("screenshot folder");
    let url = format!("http://{}", server.http_addr.expect("HTTP is on"));
    // A photo that is not in the catalogue, as a shopper would upload.
    let photo = entries[CATALOG].image.display().to_string();
    let mut command = Command::new("node");
    command
        .arg(root.join("tests/browser/page.test.mjs"))
        .args(["--url", &url, "--photo", &photo])
        .arg("--out")
        .arg(&out)
        .args(["--timeout", &PAGE_TEST_SECONDS.to_string()])
        .current_dir(&root);
    let output = tokio::task::spawn_blocking(move || {
        // The script bounds itself; this bound only guards against a hung
        // node process.
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start node");
        let started = std::time::Instant::now();
        loop {
            if child.try_wait().expect("wait for node").is_some() {
                break;
            }
            if started.elapsed() > Duration::from_secs(PAGE_TEST_SECONDS + 60) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("the page test's output")
    })
    .await
    .expect("the page test runner");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "the page test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    for shot in ["desktop.png", "phone.png"] {
        let bytes = std::fs::read(out.join(shot)).expect("a screenshot was saved");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
    server.stop().await;
}
