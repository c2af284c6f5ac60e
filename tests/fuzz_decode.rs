//! A time-boxed fuzz harness on stable Rust (no `cargo fuzz`): seed images
//! in every accepted format (and a few refused ones) are mutated with a
//! seeded RNG (bit flips, byte overwrites, truncation, deletions, splices,
//! header field changes) and pushed through decode + preprocess, and random
//! requests through the proto -> domain conversions.
//!
//! Each must return, never panic, and fail only with a documented error kind.
//! It runs for 2 s per target by default (so `make test` stays quick); set
//! `LOOKBOOK_FUZZ_SECONDS` to run longer and `LOOKBOOK_FUZZ_SEED` to replay a
//! run (the seed is printed). A failing input is written to the temp dir.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Rng, encode};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba};
use lookbook::api::convert::{EmbedImages, InvalidRequest, RequestLimits};
use lookbook::api::proto;
use lookbook::catalog::{NewProduct, ProductContent};
use lookbook::encoder::{
    DecodeLimits, ImageError, InputSpec, ModelManifest, SizeLimit, preprocess,
};
use lookbook::personalize::Interaction;
use lookbook::recommend::{SimilarQuery, UserQuery};

fn budget() -> Duration {
    let seconds = std::env::var("LOOKBOOK_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

fn seed() -> u64 {
    std::env::var("LOOKBOOK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn seeds() -> Vec<Vec<u8>> {
    let photo = RgbImage::from_fn(40, 30, |x, y| {
        Rgb([(x * 6) as u8, (y * 8) as u8, ((x * 7 + y * 13) % 256) as u8])
    });
    let alpha = image::RgbaImage::from_fn(20, 16, |x, y| {
        Rgba([200, (x * 9) as u8, 30, (y * 15) as u8])
    });
    let mut progressive_like = encode(photo.clone(), ImageFormat::Jpeg);
    // A trailer after the end-of-image marker, as cameras append.
    progressive_like.extend_from_slice(b"\0\0trailer");
    vec![
        encode(photo.clone(), ImageFormat::Jpeg),
        progressive_like,
        encode(photo.clone(), ImageFormat::Png),
        encode(DynamicImage::from(photo.clone()).into_rgb16(), ImageFormat::Png),
        encode(DynamicImage::from(photo.clone()).into_luma8(), ImageFormat::Png),
        encode(DynamicImage::from(photo.clone()).into_luma8(), ImageFormat::Jpeg),
        encode(alpha.clone(), ImageFormat::Png),
        encode(photo, ImageFormat::WebP),
        encode(alpha, ImageFormat::WebP),
        // Refused formats must stay refused under mutation.
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec(),
        b"%PDF-1.7\n1 0 obj\n".to_vec(),
    ]
}

/// Offsets of width/height-like header fields, so that mutations hit them
/// often: PNG IHDR, JPEG SOF0, WebP VP8/VP8L/VP8X size fields.
fn header_fields(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    if bytes.starts_with(b"\x89PNG") {
        fields.extend([(16, 4), (20, 4), (24, 1), (25, 1)]);
    }
    if let Some(sof) = bytes.windows(2).position(|w| w == [0xFF, 0xC0]) {
        fields.extend([(sof + 5, 2), (sof + 7, 2), (sof + 9, 1)]);
    }
    if bytes.starts_with(b"RIFF") {
        fields.extend([(4, 4), (16, 4), (20, 4), (24, 4), (26, 2), (28, 2)]);
    }
    fields.retain(|(at, len)| at + len <= bytes.len());
    fields
}

fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        if b.is_empty() {
            break;
        }
        let at = rng.pick(b.len());
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.byte(),
            2 => b.truncate(at),
            3 => {
                let end = (at + 1 + rng.pick(64)).min(b.len());
                b.drain(at..end);
            }
            4 => {
                // Splice a chunk of another seed (or this one) in.
                let donor = &others[rng.pick(others.len())];
                if !donor.is_empty() {
                    let from = rng.pick(donor.len());
                    let end = (from + 1 + rng.pick(256)).min(donor.len());
                    b.splice(at..at, donor[from..end].iter().copied());
                }
            }
            5 => {
                // A header field set to an extreme or random value.
                let fields = header_fields(&b);
                if !fields.is_empty() {
                    let (field, len) = fields[rng.pick(fields.len())];
                    let fill = match rng.below(3) {
                        0 => 0xFF,
                        1 => 0x00,
                        _ => rng.byte(),
                    };
                    for byte in &mut b[field..field + len] {
                        *byte = if rng.chance(3) { rng.byte() } else { fill };
                    }
                }
            }
            _ => {
                let extra: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
                b.splice(at..at, extra);
            }
        }
    }
    b
}

/// Runs `f`, turning a panic into a failure that names the input, which is
/// saved for replay.
fn no_panic<T>(what: &str, seed: u64, iteration: u64, input: &[u8], f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            let path =
                std::env::temp_dir().join(format!("lookbook-fuzz-{what}-{seed}-{iteration}.bin"));
            let _ = std::fs::write(&path, input);
            panic!(
                "{what} panicked on iteration {iteration} of seed {seed} (LOOKBOOK_FUZZ_SEED={seed}); input saved to {}",
                path.display()
            );
        }
    }
}

fn check_preprocess(bytes: &[u8], spec: &InputSpec, limits: DecodeLimits, out: &mut [f32]) -> bool {
    out.fill(f32::NAN);
    match preprocess(bytes, spec, limits, out) {
        Ok(()) => {
            assert!(out.iter().all(|v| v.is_finite()), "non-finite tensor value");
            true
        }
        Err(ImageError::Empty) => {
            assert!(bytes.is_empty(), "Empty for {} bytes", bytes.len());
            false
        }
        Err(ImageError::Undecodable(reason)) => {
            assert!(!reason.is_empty());
            false
        }
        Err(ImageError::TooLarge {
            width,
            height,
            limit,
        }) => {
            match limit {
                SizeLimit::Pixels { max_pixels } => {
                    // The declared size, or the resized intermediate, is over.
                    assert!(
                        max_pixels > 0
                            && (u64::from(width) * u64::from(height) > max_pixels
                                || max_pixels != limits.max_pixels)
                    );
                }
                SizeLimit::DecodedBytes { bytes, max_bytes } => {
                    assert_eq!(max_bytes, limits.max_decoded_bytes);
                    assert!(bytes > max_bytes);
                }
            }
            false
        }
        Err(err @ ImageError::BufferSize { .. }) => panic!("the encoder's own bug: {err:?}"),
    }
}

#[test]
fn fuzz_decode_and_preprocess() {
    let manifest = ModelManifest::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet_lite2.toml"),
    )
    .expect("the default manifest");
    let spec = manifest.input;
    let seeds = seeds();
    let mut out = vec![0.0f32; spec.tensor_len()];
    // The default limits, and a tight byte budget so that the budget check
    // itself is exercised by the small seeds.
    let default_limits = DecodeLimits::default();
    let tight = DecodeLimits {
        max_pixels: 2_000,
        max_decoded_bytes: 4_000,
    };
    // Every unmutated seed in an accepted format decodes.
    for (i, s) in seeds.iter().enumerate() {
        let ok = check_preprocess(s, &spec, default_limits, &mut out);
        assert_eq!(ok, i < seeds.len() - 2, "seed {i}");
    }
    let seed = seed();
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + budget();
    let (mut iterations, mut decoded) = (0u64, 0u64);
    while Instant::now() < deadline {
        let base = &seeds[rng.pick(seeds.len())];
        let input = mutate(&mut rng, base, &seeds);
        let limits = if rng.chance(4) { tight } else { default_limits };
        if no_panic("preprocess", seed, iterations, &input, || {
            check_preprocess(&input, &spec, limits, &mut out)
        }) {
            decoded += 1;
        }
        iterations += 1;
    }
    eprintln!("fuzz_decode: seed {seed}: {iterations} inputs, {decoded} decoded");
    assert!(iterations > 0);
}

const LIMITS: RequestLimits = RequestLimits {
    dim: 8,
    max_k: 50,
    max_product_id_bytes: 24,
    max_attributes: 4,
    max_attribute_bytes: 16,
    max_user_id_bytes: 12,
    max_examples: 4,
    metric: lookbook::domain::Metric::Cosine,
};

fn string(rng: &mut Rng, max: usize) -> String {
    let bytes: Vec<u8> = (0..rng.pick(max + 1))
        .map(|_| match rng.below(4) {
            0 => rng.byte(),
            1 => b'\n',
            _ => b'a' + rng.below(26) as u8,
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn float(rng: &mut Rng) -> f32 {
    match rng.below(4) {
        0 => f32::from_bits(rng.next() as u32),
        1 => 0.0,
        _ => (rng.below(2000) as f32 - 1000.0) / 100.0,
    }
}

fn embedding(rng: &mut Rng) -> Option<proto::Embedding> {
    rng.chance(2).then(|| proto::Embedding {
        values: (0..if rng.chance(2) {
            LIMITS.dim
        } else {
            rng.pick(12)
        })
            .map(|_| float(rng))
            .collect(),
    })
}

fn ids(rng: &mut Rng) -> Vec<String> {
    (0..rng.below(6)).map(|_| string(rng, 30)).collect()
}

fn filter(rng: &mut Rng) -> Option<proto::Filter> {
    let clause = |rng: &mut Rng| proto::AttributeFilter {
        key: string(rng, 6),
        values: (0..rng.below(3)).map(|_| string(rng, 6)).collect(),
    };
    rng.chance(2).then(|| proto::Filter {
        must: (0..rng.below(3)).map(|_| clause(rng)).collect(),
        must_not: (0..rng.below(2)).map(|_| clause(rng)).collect(),
    })
}

fn diversity(rng: &mut Rng) -> Option<proto::Diversity> {
    rng.chance(2).then(|| proto::Diversity {
        mmr_lambda: float(rng),
        max_per_key: string(rng, 4),
        max_per_value: rng.below(4) as u32,
    })
}

/// Every conversion error renders a message a caller can act on.
fn documented(err: &InvalidRequest) {
    assert!(!err.to_string().is_empty());
}

#[test]
fn fuzz_request_conversion() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + budget();
    let now_ms = 1_700_000_000_000i64;
    let mut iterations = 0u64;
    let mut accepted = 0u64;
    while Instant::now() < deadline {
        let r = &mut rng;
        let which = r.below(5);
        let ok = no_panic("conversion", seed, iterations, &[], || match which {
            0 => {
                let req = proto::AddProductRequest {
                    product_id: string(r, 30),
                    image: Bytes::from((0..r.below(3)).map(|_| 1u8).collect::<Vec<_>>()),
                    embedding: embedding(r),
                    attributes: (0..r.below(6))
                        .map(|_| (string(r, 20), string(r, 20)))
                        .collect(),
                };
                match NewProduct::try_from((req, &LIMITS)) {
                    Ok(p) => {
                        assert!(
                            !p.id.as_str().is_empty()
                                && p.id.as_str().len() <= LIMITS.max_product_id_bytes
                        );
                        assert!(p.attributes.len() <= LIMITS.max_attributes);
                        if let ProductContent::Embedding(e) = &p.content {
                            assert_eq!(e.dim(), LIMITS.dim);
                            let norm = e.as_slice().iter().map(|v| v * v).sum::<f32>().sqrt();
                            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
                        }
                        true
                    }
                    Err(e) => {
                        documented(&e);
                        false
                    }
                }
            }
            1 => {
                let query = match r.below(4) {
                    0 => None,
                    1 => Some(proto::recommend_similar_request::Query::ProductId(string(
                        r, 30,
                    ))),
                    2 => Some(proto::recommend_similar_request::Query::Image(
                        Bytes::from_static(b"x"),
                    )),
                    _ => embedding(r).map(proto::recommend_similar_request::Query::Embedding),
                };
                let req = proto::RecommendSimilarRequest {
                    query,
                    k: r.below(70) as u32,
                    filter: filter(r),
                    exclude_ids: ids(r),
                    positive_ids: ids(r),
                    negative_ids: ids(r),
                    strategy: r.below(4) as i32 - 1,
                    diversity: diversity(r),
                };
                match SimilarQuery::try_from((req, &LIMITS)) {
                    Ok(q) => {
                        assert!(q.k >= 1 && q.k <= LIMITS.max_k as usize);
                        assert!(q.positives.len() + q.negatives.len() <= LIMITS.max_examples);
                        true
                    }
                    Err(e) => {
                        documented(&e);
                        false
                    }
                }
            }
            2 => {
                let req = proto::RecommendForUserRequest {
                    user_id: string(r, 16),
                    k: r.below(70) as u32,
                    filter: filter(r),
                    exclude_ids: ids(r),
                    context_product_ids: ids(r),
                    diversity: diversity(r),
                };
                match UserQuery::try_from((req, &LIMITS)) {
                    Ok(q) => {
                        assert!(q.k >= 1 && q.k <= LIMITS.max_k as usize);
                        true
                    }
                    Err(e) => {
                        documented(&e);
                        false
                    }
                }
            }
            3 => {
                let req = proto::RecordInteractionRequest {
                    interaction: if r.chance(8) {
                        None
                    } else {
                        Some(proto::Interaction {
                            user_id: string(r, 16),
                            product_id: string(r, 30),
                            action: r.below(8) as i32 - 1,
                            timestamp_ms: match r.below(3) {
                                0 => 0,
                                1 => r.next() as i64,
                                _ => now_ms - r.below(1_000_000) as i64,
                            },
                        })
                    },
                };
                match Interaction::try_from((req, &LIMITS, now_ms)) {
                    Ok(i) => {
                        assert!(i.timestamp_ms >= 0 && i.timestamp_ms <= now_ms + 24 * 3600 * 1000);
                        true
                    }
                    Err(e) => {
                        documented(&e);
                        false
                    }
                }
            }
            _ => {
                let req = proto::EmbedRequest {
                    images: (0..r.below(3))
                        .map(|_| Bytes::from_static(b"img"))
                        .collect(),
                };
                let n = req.images.len();
                match EmbedImages::try_from(req) {
                    Ok(EmbedImages(images)) => {
                        assert_eq!(images.len(), n);
                        assert!(n > 0);
                        true
                    }
                    Err(e) => {
                        assert_eq!(e, InvalidRequest::NoImages);
                        false
                    }
                }
            }
        });
        accepted += u64::from(ok);
        iterations += 1;
    }
    eprintln!("fuzz_request_conversion: seed {seed}: {iterations} requests, {accepted} accepted");
    assert!(iterations > 0);
}
