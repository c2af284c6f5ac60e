//! Shared harness for the integration tests: start the real server on
//! 127.0.0.1:0 (in-process, or as the real binary for crash tests), talk to
//! it with the generated tonic client, and find the real product photos.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use lookbook::{
    api::proto::{self, recommender_service_client::RecommenderServiceClient},
    app::Bound,
    config::{Config, Overrides},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub type Client = RecommenderServiceClient<Channel>;

/// Generous client limit so tests can send requests larger than the
/// server's limit and see the server refuse them.
pub const CLIENT_LIMIT: usize = 256 * 1024 * 1024;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real product photos, or `None` (with a note naming the test) when
/// they are absent outside CI. Under `CI=true` their absence fails the test.
pub fn fashion_data(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LOOKBOOK_FASHION_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data/fashion-sample"));
    if dir.join("styles.csv").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: the fashion sample is required under CI=true but {} has no styles.csv",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: fashion sample not found at {} (set LOOKBOOK_FASHION_DATA)",
        dir.display()
    );
    None
}

/// Configuration for a test server: default model (absolute paths, so the
/// tests do not depend on the working directory), a private data dir.
pub fn test_config(data_dir: &Path) -> Config {
    let mut cfg = Config::load(
        Some(&repo_root().join("tests/fixtures/empty.toml")),
        &Overrides {
            listen: Some("127.0.0.1:0".parse().expect("literal address")),
            data_dir: Some(data_dir.to_path_buf()),
        },
    )
    .expect("test configuration is valid");
    cfg.model.manifest = repo_root().join("models/efficientnet_lite2.toml");
    cfg.model.onnxruntime_library = repo_root().join(".cache/onnxruntime/libonnxruntime.so.1.31.1");
    cfg.telemetry.log_filter = "warn,lookbook=info".to_owned();
    // One line per call would bury the tests' own output.
    cfg.telemetry.access_log = false;
    // Every test server gets its own HTTP port, like its gRPC port.
    cfg.http.listen = "127.0.0.1:0".to_owned();
    cfg
}

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP port (health, metrics), unless the config turned it off.
    pub http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), lookbook::app::AppError>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        // Dropped at once: no test exports traces through this guard.
        drop(lookbook::telemetry::init(&config.telemetry).expect("telemetry set-up"));
        let bound = Bound::bind(config).await.expect("bind 127.0.0.1:0");
        let addr = bound.local_addr();
        let http_addr = bound.http_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let server = Self {
            addr,
            http_addr,
            shutdown,
            task,
        };
        server.wait_serving().await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    async fn wait_serving(&self) {
        wait_serving(&self.url()).await;
    }

    /// Graceful stop: drain, dump the index, return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("server task panicked")
            .expect("server stopped with an error");
    }
}

pub async fn connect(url: &str) -> Client {
    let channel = Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect()
        .await
        .expect("connect to test server");
    RecommenderServiceClient::new(channel)
        .max_decoding_message_size(CLIENT_LIMIT)
        .max_encoding_message_size(CLIENT_LIMIT)
}

/// `GET path` over plain HTTP/1.1; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP port");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .expect("read the response");
    parse_http(&raw)
}

/// A whole HTTP/1.1 response, body as bytes.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `error.status` of a JSON error body.
    pub fn error_status(&self) -> String {
        self.json()["error"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.status in {}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; binary-safe.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP port");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    // The server may answer (413, 401) before reading the whole body and
    // close, which breaks the rest of the upload; what it sent is still
    // there to read.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    assert!(!raw.is_empty(), "{method} {path}: no response");
    parse_reply(&raw)
}

/// Parses a raw HTTP/1.1 response read to its end.
pub fn parse_reply(raw: &[u8]) -> HttpReply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = rest;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                .expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

/// Status and body of a raw HTTP/1.1 response (`Content-Length` or
/// chunked bodies are both read to the end by the caller first).
pub fn parse_http(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// Polls grpc.health.v1 until the server reports SERVING (bounded).
pub async fn wait_serving(url: &str) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(channel) = Channel::from_shared(url.to_owned())
            .expect("valid url")
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(HealthCheckRequest {
                    service: "lookbook.v1.RecommenderService".into(),
                })
                .await
                && r.into_inner().status == 1
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server at {url} did not become SERVING within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real `lookbook` binary, for tests that kill -9 it.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    /// The HTTP port (health, metrics).
    pub http: Option<SocketAddr>,
}

impl ServerProcess {
    pub async fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with(data_dir, &[]).await
    }

    /// With extra `LOOKBOOK__...` configuration in its environment.
    pub async fn spawn_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lookbook"))
            .env("LOOKBOOK__HTTP__LISTEN", "127.0.0.1:0")
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .current_dir(repo_root())
            .env("LOOKBOOK__TELEMETRY__LOG_FORMAT", "json")
            .env("LOOKBOOK__TELEMETRY__LOG_FILTER", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lookbook serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        // The first log line naming the bound addresses tells us the ports.
        let (addr, http) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let field = |line: &str, name: &str| -> Option<SocketAddr> {
                let key = format!("\"{name}\":\"");
                let start = line.find(&key)? + key.len();
                let end = start + line[start..].find('"')?;
                line[start..end].parse::<SocketAddr>().ok()
            };
            let found = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.contains("listening")
                    .then(|| field(&line, "addr").map(|addr| (addr, field(&line, "http"))))
                    .flatten()
            });
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            found
        })
        .await
        .expect("reader task")
        .expect("server printed its listening address");
        let url = format!("http://{addr}");
        wait_serving(&url).await;
        Self { child, url, http }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read the server's /proc stat");
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, in clock ticks.
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        ticks / clock_ticks_per_second()
    }

    /// Resident memory of the server now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        vm_kib(&status, "VmRSS:") * 1024
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(status.success());
        self.child.wait().expect("wait for the server")
    }
}

/// A test that fails while its server runs must not leave the process
/// behind, holding its data dir and using CPU under the tests after it.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        // `kill9` and `terminate` have reaped it already.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` (the tests forbid `unsafe`).
pub fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("getconf prints a number")
}

/// A `VmRSS:`/`VmHWM:`-style line of `/proc/<pid>/status`, in KiB.
pub fn vm_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc status"))
}

/// This test process's resident memory now, in bytes.
pub fn own_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    vm_kib(&status, "VmRSS:") * 1024
}

/// A deterministic unit vector for synthetic products.
pub fn synthetic_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

pub fn embedding_request(
    id: &str,
    values: Vec<f32>,
    attrs: &[(&str, &str)],
) -> proto::AddProductRequest {
    proto::AddProductRequest {
        product_id: id.to_owned(),
        image: Default::default(),
        embedding: Some(proto::Embedding { values }),
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// An `AddProduct` of a catalogue entry's real photo and attributes.
pub fn photo_request(e: &lookbook::dataset::CatalogEntry) -> proto::AddProductRequest {
    proto::AddProductRequest {
        product_id: e.id.clone(),
        image: std::fs::read(&e.image).expect("read a sample photo").into(),
        embedding: None,
        attributes: e.attributes.clone().into_iter().collect(),
    }
}

pub fn similar_to_id(id: &str, k: u32) -> proto::RecommendSimilarRequest {
    proto::RecommendSimilarRequest {
        query: Some(proto::recommend_similar_request::Query::ProductId(
            id.to_owned(),
        )),
        k,
        ..Default::default()
    }
}

pub fn similar_to_vector(values: Vec<f32>, k: u32) -> proto::RecommendSimilarRequest {
    proto::RecommendSimilarRequest {
        query: Some(proto::recommend_similar_request::Query::Embedding(
            proto::Embedding { values },
        )),
        k,
        ..Default::default()
    }
}

/// Dot product (cosine similarity of unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `img` encoded in memory as `format`.
pub fn encode(img: impl Into<image::DynamicImage>, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.into()
        .write_to(&mut out, format)
        .expect("encode in memory");
    out.into_inner()
}

/// A PNG generated in code: a gradient with a coloured square, so that
/// different seeds give visibly different images.
pub fn generated_png(seed: u8, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let inside = x > w / 4 && x < 3 * w / 4 && y > h / 4 && y < 3 * h / 4;
        if inside {
            image::Rgb([seed, 255 - seed, (seed / 2).wrapping_add(64)])
        } else {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode PNG in memory");
    out.into_inner()
}

/// Whether `make reliability` runs this test at its full size
/// (`LOOKBOOK_RELIABILITY_FULL=1`); `make test` runs the short variant.
pub fn full_run() -> bool {
    std::env::var("LOOKBOOK_RELIABILITY_FULL").is_ok_and(|v| v == "1")
}

/// A size for the short or the full run, overridable for one run with
/// `LOOKBOOK_<NAME>` (e.g. `LOOKBOOK_CRASH_ROUNDS=50`).
pub fn sized(name: &str, short: u64, full: u64) -> u64 {
    std::env::var(format!("LOOKBOOK_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full_run() { full } else { short })
}

/// Writes a reliability suite's figures for `make reliability`, which sets
/// `LOOKBOOK_RELIABILITY_OUT` and collates `<name>.md` sections into
/// `bench/RELIABILITY.md`; the JSON keeps the same figures machine-readable.
/// Without the variable (plain `make test`) the figures are only printed.
pub fn report(name: &str, figures: &serde_json::Value, markdown: &str) {
    eprintln!("{name}: {figures}");
    let Some(dir) = std::env::var_os("LOOKBOOK_RELIABILITY_OUT") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the reliability output dir");
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(figures).expect("figures serialise"),
    )
    .expect("write the figures");
    std::fs::write(dir.join(format!("{name}.md")), markdown).expect("write the section");
}

/// xorshift64*: a small, seedable stream of choices that is the same on
/// every platform, so a failing run is repeated from the seed it printed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // xorshift has a fixed point at 0.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0), from the high bits: the low bits of
    /// xorshift64* are weak (the lowest one alternates in long runs), which
    /// makes `% 2` of the whole word a coin with a fixed pattern.
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 24) % n
    }

    /// An index into something `len` long (`len` > 0).
    pub fn pick(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).expect("below len fits in usize")
    }

    /// True one time in `one_in`.
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    pub fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}
