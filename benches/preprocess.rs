//! Regression benchmark for image preprocessing (decode, resize, crop,
//! normalise into the input tensor) on a generated 225x300 JPEG, the size of
//! the Kaggle sample photos, with the default model's input spec. The model
//! itself is measured by `lookbook bench-encode` (`make bench`), which needs
//! ONNX Runtime; this one needs nothing but the manifest.

use std::hint::black_box;
use std::io::Cursor;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use image::{ImageFormat, Rgb, RgbImage};
use lookbook::encoder::{DecodeLimits, ModelManifest, preprocess};

/// A photo-like JPEG: smooth gradients plus texture, so the entropy decoder
/// has real work (a flat image would decode unrealistically fast).
fn photo(width: u32, height: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Jpeg)
        .expect("encoding a JPEG in memory cannot fail");
    out.into_inner()
}

fn bench(c: &mut Criterion) {
    let manifest = ModelManifest::load(Path::new("models/efficientnet_lite2.toml"))
        .expect("run from the repository root, where the default manifest lives");
    let spec = manifest.input;
    let jpeg = photo(225, 300);
    let mut out = vec![0.0f32; spec.tensor_len()];
    c.bench_function("preprocess 225x300 jpeg -> 3x260x260", |b| {
        b.iter(|| {
            preprocess(black_box(&jpeg), &spec, DecodeLimits::default(), &mut out)
                .expect("the generated JPEG is valid");
            black_box(&out);
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
