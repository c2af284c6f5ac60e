//! Encoder tests against the real ONNX Runtime library and the tiny
//! global-average-pool model in `testdata/` (its embedding is the per-channel
//! mean of the normalised input, so expected values can be computed by hand).
//!
//! The library is found through `LOOKBOOK_ORT_LIB`, defaulting to the path
//! `models/setup.sh` installs it to.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::Bytes;
use image::{Rgb, RgbImage};
use ndarray::{Array4, Axis};

use super::preprocess::tests::{gradient, jpeg, png, png_header};
use super::*;

fn ort_lib() -> PathBuf {
    let path = std::env::var_os("LOOKBOOK_ORT_LIB").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/onnxruntime/libonnxruntime.so.1.31.1")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "ONNX Runtime library not found at {}: run models/setup.sh or set LOOKBOOK_ORT_LIB",
        path.display()
    );
    path
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/encoder/testdata")
        .join(name)
}

fn config(workers: usize, queue_capacity: usize) -> EncoderConfig {
    EncoderConfig {
        workers,
        intra_threads: 1,
        queue_capacity,
        max_batch: 8,
        ..EncoderConfig::new(testdata("tiny_gap.toml"), ort_lib())
    }
}

fn load(workers: usize, queue_capacity: usize) -> Encoder {
    Encoder::load(&config(workers, queue_capacity)).unwrap()
}

/// The tiny model's embedding of a solid colour, normalised.
fn expected_solid(encoder: &Encoder, rgb: [u8; 3]) -> Vec<f32> {
    let spec = &encoder.manifest().input;
    let raw: Vec<f32> = (0..3)
        .map(|c| (f32::from(rgb[c]) - spec.mean[c]) / spec.std[c])
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
    raw.iter().map(|v| v / norm).collect()
}

fn solid_png(rgb: [u8; 3]) -> Bytes {
    Bytes::from(png(RgbImage::from_pixel(40, 30, Rgb(rgb))))
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} != {b:?}");
    }
}

/// Polls `fut` once, so that it gets as far as its first await.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[test]
fn encoder_is_shareable() {
    fn shareable<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    shareable::<Encoder>();
}

#[tokio::test]
async fn embeds_unit_vectors_of_the_model_dimension() {
    let encoder = load(2, 8);
    assert_eq!(encoder.model_name(), "tiny-gap");
    assert_eq!(encoder.dim(), 3);
    let colour = [200, 30, 90];
    let out = encoder.embed(vec![solid_png(colour)]).await.unwrap();
    assert_eq!(out.len(), 1);
    let norm: f32 = out[0].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6, "norm {norm}");
    assert_close(&out[0], &expected_solid(&encoder, colour), 1e-6);
}

#[tokio::test]
async fn batch_equals_singles_in_order() {
    let encoder = load(2, 8);
    let images: Vec<Bytes> = vec![
        solid_png([200, 30, 90]),
        Bytes::from(jpeg(&gradient(225, 300), 90)),
        solid_png([10, 250, 128]),
        Bytes::from(png(gradient(300, 120))),
    ];
    let batch = encoder.embed(images.clone()).await.unwrap();
    assert_eq!(batch.len(), images.len());
    for (image, from_batch) in images.into_iter().zip(&batch) {
        let single = encoder.embed(vec![image]).await.unwrap();
        assert_close(&single[0], from_batch, 1e-6);
    }
    assert_close(&batch[0], &expected_solid(&encoder, [200, 30, 90]), 1e-6);
    assert_close(&batch[2], &expected_solid(&encoder, [10, 250, 128]), 1e-6);
    assert!(batch[1] != batch[3]);
}

/// Six concurrent single-image calls, one of them a broken image, to an
/// encoder with one worker and `batch_max_images` images per model run.
/// Returns each call's result, in order, and the model runs it took.
async fn concurrent_calls(
    batch_max_images: usize,
) -> (Vec<Result<Vec<Vec<f32>>, EncoderError>>, u64, Encoder) {
    let encoder = Encoder::load(&EncoderConfig {
        batch_max_images,
        // Long enough that all six calls, submitted in one poll, are taken
        // into one batch however slowly the worker thread gets scheduled.
        batch_max_delay: std::time::Duration::from_millis(500),
        ..config(1, 16)
    })
    .unwrap();
    let calls = (0..6u8).map(|i| {
        let image = if i == 3 {
            Bytes::from_static(b"not an image")
        } else {
            solid_png([40 * i, 200 - 30 * i, 7 * i])
        };
        encoder.embed(vec![image])
    });
    let results = futures::future::join_all(calls).await;
    let runs = encoder.stats().model_runs;
    (results, runs, encoder)
}

#[tokio::test]
async fn concurrent_calls_are_coalesced_and_keep_their_own_results() {
    let (results, runs, encoder) = concurrent_calls(8).await;
    for (i, result) in results.iter().enumerate() {
        let i = i as u8;
        if i == 3 {
            // The broken image fails its own call only, at its own index.
            assert!(
                matches!(result, Err(EncoderError::UndecodableImage { index: 0, .. })),
                "{result:?}"
            );
        } else {
            let rows = result.as_ref().unwrap();
            let want = expected_solid(&encoder, [40 * i, 200 - 30 * i, 7 * i]);
            assert_close(&rows[0], &want, 1e-6);
        }
    }
    // Five good calls: without batching that is five model runs.
    assert!(runs <= 2, "{runs} model runs for five coalescable calls");
    let stats = encoder.stats();
    assert_eq!((stats.jobs_completed, stats.jobs_failed), (5, 1));
    assert_eq!(stats.images_embedded, 5);
}

#[tokio::test]
async fn batching_can_be_turned_off() {
    let (results, runs, _) = concurrent_calls(1).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    assert_eq!(runs, 5, "one model run per call when batch_max_images = 1");
}

#[tokio::test]
async fn a_call_larger_than_a_model_run_is_split_and_keeps_its_order() {
    let encoder = Encoder::load(&EncoderConfig {
        batch_max_images: 3,
        ..config(1, 4)
    })
    .unwrap();
    let colours: Vec<[u8; 3]> = (0..7u8).map(|i| [30 * i, 250 - 20 * i, 9 * i]).collect();
    let rows = encoder
        .embed(colours.iter().map(|&c| solid_png(c)).collect())
        .await
        .unwrap();
    let stats = encoder.stats();
    assert_eq!(stats.model_runs, 3, "7 images in runs of at most 3");
    assert_eq!(stats.images_embedded, 7);
    assert_eq!(rows.len(), 7);
    for (row, &c) in rows.iter().zip(&colours) {
        let single = encoder.embed(vec![solid_png(c)]).await.unwrap();
        assert_close(row, &single[0], 1e-6);
    }
    // The colours give clearly different rows, so a mixed-up order fails.
    assert!(rows.windows(2).all(|w| dot_distance(&w[0], &w[1]) > 1e-3));
}

fn dot_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

#[tokio::test]
async fn per_image_errors_carry_the_index() {
    let encoder = load(1, 8);
    let good = solid_png([1, 2, 3]);
    let full = jpeg(&gradient(225, 300), 90);
    let truncated = Bytes::copy_from_slice(&full[..full.len() / 2]);

    let err = encoder
        .embed(vec![good.clone(), good.clone(), truncated])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EncoderError::UndecodableImage { index: 2, .. }),
        "{err:?}"
    );

    let err = encoder
        .embed(vec![good.clone(), Bytes::new()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EncoderError::EmptyImage { index: 1 }),
        "{err:?}"
    );

    let bomb = Bytes::from(png_header(100_000, 100_000));
    let err = encoder.embed(vec![good.clone(), bomb]).await.unwrap_err();
    assert!(
        matches!(
            err,
            EncoderError::ImageTooLarge {
                index: 1,
                width: 100_000,
                height: 100_000,
                limit: SizeLimit::Pixels {
                    max_pixels: DEFAULT_MAX_PIXELS
                }
            }
        ),
        "{err:?}"
    );

    let err = encoder
        .embed(vec![good.clone(), Bytes::from_static(b"GIF89a not really")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EncoderError::UndecodableImage { index: 1, .. }),
        "{err:?}"
    );

    let err = encoder.embed(vec![good.clone(); 9]).await.unwrap_err();
    assert!(
        matches!(err, EncoderError::TooManyImages { count: 9, max: 8 }),
        "{err:?}"
    );

    assert!(encoder.embed(Vec::new()).await.unwrap().is_empty());
    // The failures did not hurt the worker.
    assert_eq!(encoder.embed(vec![good]).await.unwrap().len(), 1);
    let stats = encoder.stats();
    assert_eq!(
        (stats.jobs_failed, stats.jobs_completed),
        (3, 1),
        "{stats:?}"
    );
}

#[test]
fn blocking_api_matches_async() {
    let encoder = load(1, 4);
    let jpeg_bytes = jpeg(&gradient(225, 300), 90);
    let png_bytes = png(gradient(120, 200));
    let blocking = encoder.embed_blocking(&[&jpeg_bytes, &png_bytes]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let asynchronous = runtime
        .block_on(encoder.embed(vec![Bytes::from(jpeg_bytes), Bytes::from(png_bytes)]))
        .unwrap();
    assert_eq!(blocking, asynchronous);
    assert!(matches!(
        encoder.embed_blocking(&[b"".as_slice()]),
        Err(EncoderError::EmptyImage { index: 0 })
    ));
}

#[test]
fn run_tensor_returns_the_raw_model_output() {
    let encoder = load(1, 4);
    // Arbitrary but reproducible values; the tiny model averages each channel.
    let input = Array4::from_shape_fn((2, 3, 32, 32), |(n, c, y, x)| {
        ((n * 7 + c * 5 + y * 3 + x) % 17) as f32 / 4.0 - 2.0
    });
    let out = encoder.run_tensor(input.clone()).unwrap();
    assert_eq!(out.dim(), (2, 3));
    for n in 0..2 {
        for c in 0..3 {
            let mean = input
                .index_axis(Axis(0), n)
                .index_axis(Axis(0), c)
                .mean()
                .unwrap();
            assert!(
                (out[[n, c]] - mean).abs() < 1e-5,
                "{} vs {mean}",
                out[[n, c]]
            );
        }
    }
    // The embed path is preprocess + this + L2 normalisation.
    let jpeg_bytes = jpeg(&gradient(225, 300), 90);
    let mut tensor = Array4::zeros((1, 3, 32, 32));
    preprocess(
        &jpeg_bytes,
        &encoder.manifest().input,
        DecodeLimits::default(),
        tensor.as_slice_mut().unwrap(),
    )
    .unwrap();
    let raw = encoder.run_tensor(tensor).unwrap();
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
    let expected: Vec<f32> = raw.iter().map(|v| v / norm).collect();
    assert_close(
        &encoder.embed_blocking(&[&jpeg_bytes]).unwrap()[0],
        &expected,
        1e-6,
    );
    // Wrong channel count is refused, not passed to the model.
    assert!(encoder.run_tensor(Array4::zeros((1, 4, 32, 32))).is_err());
}

#[tokio::test]
async fn full_queue_answers_overloaded_at_once() {
    let encoder = load(1, 1);
    // Each job takes the single worker long enough (a large PNG to decode) that
    // the calls below, submitted back to back, find it busy and the queue full.
    let big = Bytes::from(png(gradient(1500, 1500)));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let encoder = encoder.clone();
        let big = big.clone();
        calls.spawn(async move { encoder.embed(vec![big]).await });
    }
    let (mut ok, mut overloaded) = (0u64, 0u64);
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(v) => {
                assert_eq!(v.len(), 1);
                ok += 1;
            }
            Err(EncoderError::Overloaded) => overloaded += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        overloaded >= 1 && ok >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    let stats = encoder.stats();
    assert_eq!(stats.jobs_rejected, overloaded);
    assert_eq!(stats.jobs_completed, ok);
    // Still serving.
    assert_eq!(
        encoder
            .embed(vec![solid_png([9, 9, 9])])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn cancelled_jobs_are_skipped_and_the_pool_keeps_working() {
    let encoder = load(1, 8);
    let big = Bytes::from(png(gradient(1500, 1500)));
    let small = solid_png([200, 30, 90]);

    // Occupies the only worker for a while.
    let mut blocker = pin!(encoder.embed(vec![big; 8]));
    assert!(poll_once(blocker.as_mut()).await.is_none());
    {
        // Queued behind the blocker, then abandoned by its caller.
        let mut abandoned = pin!(encoder.embed(vec![small.clone()]));
        assert!(poll_once(abandoned.as_mut()).await.is_none());
    }
    let after = encoder.embed(vec![small]).await.unwrap();
    assert_close(&after[0], &expected_solid(&encoder, [200, 30, 90]), 1e-6);
    assert_eq!(blocker.await.unwrap().len(), 8);
    let stats = encoder.stats();
    assert_eq!(stats.jobs_cancelled, 1, "{stats:?}");
    assert_eq!(stats.jobs_completed, 2, "{stats:?}");
    assert_eq!(stats.images_embedded, 9, "{stats:?}");
}

#[test]
fn dropping_the_last_clone_stops_the_workers() {
    let encoder = load(2, 4);
    let clone = encoder.clone();
    drop(encoder);
    // Still served through the remaining clone.
    assert_eq!(
        clone
            .embed_blocking(&[&png(gradient(50, 50))])
            .unwrap()
            .len(),
        1
    );
    // Returns only once both workers have exited (the drop joins them).
    drop(clone);
}

fn write_manifest(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(testdata("tiny_gap.toml")).unwrap();
    let onnx = testdata("tiny_gap.onnx");
    let text = edit(text.replace(
        "onnx = \"tiny_gap.onnx\"",
        &format!("onnx = {:?}", onnx.to_str().unwrap()),
    ));
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load_with(manifest: PathBuf) -> Result<Encoder, EncoderError> {
    Encoder::load(&EncoderConfig {
        manifest,
        ..config(1, 1)
    })
}

#[test]
fn model_checksum_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let manifest = write_manifest(dir.path(), |t| {
        let start = t.find("sha256 = ").unwrap();
        let end = start + t[start..].find('\n').unwrap();
        format!("{}sha256 = \"{wrong}\"{}", &t[..start], &t[end..])
    });
    let err = load_with(manifest).unwrap_err();
    assert!(
        matches!(&err, EncoderError::Model { reason, .. } if reason.contains(&wrong)),
        "{err:?}"
    );
    // Without a checksum the model loads (with a warning).
    let manifest = write_manifest(dir.path(), |t| {
        t.lines()
            .filter(|l| !l.starts_with("sha256"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let encoder = load_with(manifest).unwrap();
    assert_eq!(encoder.model_sha256().len(), 64);
}

#[test]
fn model_signature_must_match_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("name = \"input\"", "name = \"pixels\"", "input.name"),
        ("name = \"embedding\"", "name = \"features\"", "output.name"),
        ("dim = 3", "dim = 1280", "[N, 1280]"),
    ];
    for (from, to, needle) in cases {
        let manifest = write_manifest(dir.path(), |t| t.replace(from, to));
        let err = load_with(manifest).unwrap_err();
        assert!(
            matches!(&err, EncoderError::Model { reason, .. } if reason.contains(needle)),
            "{to}: {err:?}"
        );
    }
}

#[test]
fn missing_files_and_bad_config_are_reported() {
    let err = load_with(PathBuf::from("/nonexistent/manifest.toml")).unwrap_err();
    assert!(matches!(err, EncoderError::Manifest { .. }), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), |t| {
        t.replace(
            testdata("tiny_gap.onnx").to_str().unwrap(),
            "/nonexistent/model.onnx",
        )
    });
    let err = load_with(manifest).unwrap_err();
    assert!(matches!(err, EncoderError::Model { .. }), "{err:?}");

    let err = Encoder::load(&EncoderConfig {
        onnxruntime_library: PathBuf::from("/nonexistent/libonnxruntime.so"),
        ..config(1, 1)
    })
    .unwrap_err();
    assert!(matches!(err, EncoderError::Library { .. }), "{err:?}");

    for (field, cfg) in [
        (
            "workers",
            EncoderConfig {
                workers: 0,
                ..config(1, 1)
            },
        ),
        (
            "intra_threads",
            EncoderConfig {
                intra_threads: 0,
                ..config(1, 1)
            },
        ),
        ("queue_capacity", config(1, 0)),
        (
            "max_batch",
            EncoderConfig {
                max_batch: 0,
                ..config(1, 1)
            },
        ),
        (
            "max_pixels",
            EncoderConfig {
                max_pixels: 0,
                ..config(1, 1)
            },
        ),
        (
            "max_decoded_bytes",
            EncoderConfig {
                max_decoded_bytes: 0,
                ..config(1, 1)
            },
        ),
    ] {
        let err = Encoder::load(&cfg).unwrap_err();
        assert!(
            matches!(err, EncoderError::Config { field: f, .. } if f == field),
            "{err:?}"
        );
    }
}

#[test]
fn one_onnxruntime_library_per_process() {
    let lib = ort_lib();
    // Make sure the real library is the one loaded, whatever test ran first.
    drop(load(1, 1));

    // The same file under another name is the same library: reused.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("libonnxruntime.so");
    std::os::unix::fs::symlink(lib.canonicalize().unwrap(), &link).unwrap();
    assert!(
        Encoder::load(&EncoderConfig {
            onnxruntime_library: link,
            ..config(1, 1)
        })
        .is_ok()
    );

    // A different file cannot be loaded next to it.
    let copy = dir.path().join("libonnxruntime-copy.so");
    std::fs::copy(&lib, &copy).unwrap();
    let err = Encoder::load(&EncoderConfig {
        onnxruntime_library: copy,
        ..config(1, 1)
    })
    .unwrap_err();
    assert!(
        matches!(&err, EncoderError::Library { reason, .. } if reason.contains("already loaded")),
        "{err:?}"
    );
}
