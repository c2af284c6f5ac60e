//! The simulated-shopper evaluation (`lookbook eval-personal`) on the real
//! photos, held to the protocol's claims: multi-interest beats a single
//! taste centroid for shoppers with 2-3 tastes, and both beat trending by a
//! wide margin. The photos' embeddings are cached under the target dir, so
//! only the first run pays for embedding them.

mod common;

use common::*;
use lookbook::tooling::eval_personal::{self, METHODS, Spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_interest_beats_single_centroid_and_trending() {
    let Some(data) = fashion_data("multi_interest_beats_single_centroid_and_trending") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let spec = Spec {
        shoppers: 300,
        seed: 11,
        k: 10,
        cache: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("eval-personal-embeddings.bin"),
    };
    let report = eval_personal::run(&config, &data, &spec).await.unwrap();
    eprintln!("{}", report.markdown());
    let [multi, single, trending, random] = METHODS.map(|m| report.method(m).unwrap());
    for tastes in [1, 2] {
        let (m, s) = (
            multi.by_tastes[tastes].taste_precision,
            single.by_tastes[tastes].taste_precision,
        );
        assert!(
            m > s + 0.05,
            "{} tastes: multi-interest {m:.4} vs single centroid {s:.4}",
            tastes + 1
        );
    }
    for personal in [multi, single] {
        let (p, t) = (
            personal.overall.taste_precision,
            trending.overall.taste_precision,
        );
        assert!(
            p > 5.0 * t && p > t + 0.2,
            "{}: {p:.4} vs trending {t:.4}",
            personal.name
        );
        assert!(personal.overall.hit > trending.overall.hit);
    }
    assert!(trending.overall.n == random.overall.n && random.overall.n == 300);
}
