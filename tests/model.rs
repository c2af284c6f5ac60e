//! The encoder against its references: the Rust pipeline reproduces Python
//! onnxruntime's embedding for the same input tensor (fixtures written by
//! `models/verify_efficientnet_lite2.py` during set-up, from photos that
//! scikit-image ships), and switching to the ResNet50 manifest is a config
//! change (checked on the seeded random-weight ResNet50, which is labelled
//! synthetic and says nothing about quality).

mod common;

use std::path::PathBuf;

use common::*;
use lookbook::{
    api::proto,
    encoder::{Encoder, EncoderConfig},
};

fn fixtures() -> PathBuf {
    repo_root().join(".cache/fixtures/efficientnet_lite2")
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make setup` first)", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn encoder_config(manifest: &str) -> EncoderConfig {
    let cfg = test_config(std::path::Path::new("/nonexistent"));
    EncoderConfig {
        manifest: repo_root().join(manifest),
        ..cfg.encoder()
    }
}

#[test]
fn rust_pipeline_matches_python_onnxruntime_to_1e_4() {
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("expected.json")).expect("fixtures from `make setup`"),
    )
    .unwrap();
    let tolerance = expected["tolerance"].as_f64().unwrap() as f32;
    assert!(tolerance <= 1e-4);
    let encoder = Encoder::load(&encoder_config("models/efficientnet_lite2.toml")).unwrap();
    assert_eq!(encoder.model_name(), "efficientnet-lite2");
    assert_eq!(encoder.dim(), 1280);
    let images = expected["images"].as_object().unwrap();
    assert!(images.len() >= 2);
    for (name, spec) in images {
        let input = read_f32(&fixtures().join(spec["input"].as_str().unwrap()));
        let want = read_f32(&fixtures().join(spec["embedding"].as_str().unwrap()));
        let tensor = ndarray::Array4::from_shape_vec((1, 3, 260, 260), input).unwrap();
        let got = encoder.run_tensor(tensor).unwrap();
        assert_eq!(got.shape(), &[1, 1280]);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max |rust - python| = {max_diff:e}");
        assert!(max_diff <= tolerance, "{name}: {max_diff} > {tolerance}");
    }
}

#[test]
fn resnet50_architecture_runs_through_its_manifest() {
    let encoder = Encoder::load(&encoder_config("models/resnet50_random.toml")).unwrap();
    assert_eq!(encoder.model_name(), "resnet50-random");
    assert_eq!(encoder.dim(), 2048);
    assert!(
        encoder.manifest().synthetic,
        "random weights must be labelled synthetic"
    );
    let a = generated_png(1, 300, 200);
    let b = generated_png(2, 180, 260);
    let out = encoder.embed_blocking(&[&a, &b]).unwrap();
    assert_eq!(out.len(), 2);
    for v in &out {
        assert_eq!(v.len(), 2048);
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_models_is_a_config_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.model.manifest = repo_root().join("models/resnet50_random.toml");
    let server = TestServer::start(cfg).await;
    let mut c = server.client().await;
    let stats = c
        .get_stats(proto::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.model.as_str(), stats.dim), ("resnet50-random", 2048));
    let r = c
        .embed(proto::EmbedRequest {
            images: vec![generated_png(3, 64, 64).into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.embeddings[0].values.len(), 2048);
    server.stop().await;

    // The same data dir cannot be opened with a different model: its
    // vectors would be meaningless.
    let cfg = test_config(dir.path());
    let bound = lookbook::app::Bound::bind(cfg).await.unwrap();
    let err = bound
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("resnet50-random"), "{err}");
}
