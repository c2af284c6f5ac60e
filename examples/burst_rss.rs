//! Server memory around a burst of large photos, for the allocator choice in
//! `src/main.rs`. Not part of the server.
//!
//! ```text
//! cargo build --release --bins --examples
//! ./target/release/examples/burst_rss [PHOTOS] [SETTLE_SECONDS] [BINARY]
//! ```
//! Starts `BINARY serve` (default `./target/release/lookbook`; run from the
//! repository root:
//! default model and ONNX Runtime paths) with a temporary data dir, streams
//! PHOTOS (default 40) generated noisy JPEGs of about 13 MB (6000 x 4000)
//! through one `AddProducts` call, and prints the server's VmRSS before, its
//! peak (VmHWM) and its VmRSS 0, 2, 10 and SETTLE_SECONDS (default 30) s after.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::{Rgb, RgbImage};
use lookbook::api::proto::{self, recommender_service_client::RecommenderServiceClient};

fn status_mib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read the server's /proc status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("field in /proc status")
        / 1024
}

/// A 6000 x 4000 photo-like JPEG with strong noise, so it compresses to
/// about 13 MB; `seed` varies the noise.
fn noisy_jpeg(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let img = RgbImage::from_fn(6000, 4000, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = state.to_le_bytes();
        Rgb([
            ((x / 24) as u8).wrapping_add(n[0] / 13),
            ((y / 16) as u8).wrapping_add(n[1] / 13),
            128u8.wrapping_add(n[2] / 13),
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(&img)
        .expect("encode JPEG in memory");
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let photos: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(40);
    let settle: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let images: Vec<Bytes> = (0..4).map(|s| Bytes::from(noisy_jpeg(s))).collect();
    let sizes: Vec<usize> = images.iter().map(Bytes::len).collect();

    let data = tempfile::tempdir().expect("temp data dir");
    let binary = args
        .get(3)
        .map_or("./target/release/lookbook", String::as_str);
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("LOOKBOOK__TELEMETRY__LOG_FORMAT", "json")
        .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the lookbook binary");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr is piped");
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let addr = lines.by_ref().map_while(Result::ok).find_map(|line| {
            let start = line.find("\"addr\":\"")? + 8;
            let end = start + line[start..].find('"')?;
            line.contains("listening")
                .then(|| line[start..end].parse::<SocketAddr>().ok())?
        });
        std::thread::spawn(move || for _ in lines {});
        addr
    })
    .await
    .expect("reader")
    .expect("the server logged its address");
    let url = format!("http://{addr}");
    let mut client = loop {
        if let Ok(c) = RecommenderServiceClient::connect(url.clone()).await {
            break c.max_encoding_message_size(64 << 20);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Serving once GetStats answers (the model is loaded).
    while client.get_stats(proto::GetStatsRequest {}).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = status_mib(pid, "VmRSS:");

    let started = Instant::now();
    let requests = (0..photos).map(move |i| proto::AddProductsRequest {
        product_id: format!("p{i}"),
        image: images[i % images.len()].clone(),
        embedding: None,
        attributes: Default::default(),
    });
    let response = client
        .add_products(tokio_stream::iter(requests))
        .await
        .expect("AddProducts")
        .into_inner();
    let took = started.elapsed();
    let peak = status_mib(pid, "VmHWM:");
    let mut after = Vec::new();
    let t0 = Instant::now();
    for at in [0, 2, 10, settle] {
        let wait = Duration::from_secs(at).saturating_sub(t0.elapsed());
        tokio::time::sleep(wait).await;
        after.push((at, status_mib(pid, "VmRSS:")));
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "{photos} photos of {:?} bytes: added {} failed {} in {:.1} s; server VmRSS before {before} MiB, peak (VmHWM) {peak} MiB, after: {}",
        sizes,
        response.added,
        response.failed,
        took.as_secs_f64(),
        after
            .iter()
            .map(|(s, m)| format!("+{s}s {m} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
