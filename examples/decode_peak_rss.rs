//! Peak resident memory of decoding one large image, for the decode budget
//! (`model.max_decoded_bytes`). Not part of the server.
//!
//! ```text
//! cargo run --release --example decode_peak_rss -- MODE IMAGE
//! ```
//! MODE: `after` (the encoder's `preprocess` with the default limits),
//! `unbudgeted` (`preprocess` with no byte budget), or `before` (the decode
//! path the encoder had before the budget: `DynamicImage` decode, then a full
//! RGBA8 copy, then RGB8). IMAGE: `rgba16` (an all-zero 6300 x 6300 16-bit
//! RGBA PNG, 39.7 MP), `rgb8` (an all-zero 7300 x 5475 8-bit RGB PNG, 40.0 MP)
//! or `rgba8` (the same size with alpha). The PNG is written row by row, so
//! generating it adds little to the peak; VmHWM is read before and after.

use std::io::Write as _;
use std::path::Path;

use image::DynamicImage;
use lookbook::encoder::{DecodeLimits, ModelManifest, preprocess};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

fn zero_png(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    bytes_per_px: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(color);
    encoder.set_depth(depth);
    let mut writer = encoder.write_header().expect("PNG header");
    let mut stream = writer.stream_writer().expect("PNG stream");
    let row = vec![0u8; w as usize * bytes_per_px];
    for _ in 0..h {
        stream.write_all(&row).expect("PNG row");
    }
    stream.finish().expect("PNG end");
    drop(writer);
    out
}

/// The pre-budget decode path: the whole image in the decoder's format,
/// then an RGBA8 copy, then RGB8 blended over white.
fn decode_before(bytes: &[u8]) -> usize {
    let img = image::load_from_memory(bytes).expect("decode");
    let rgba = match img {
        DynamicImage::ImageRgb8(rgb) => return rgb.len(),
        other if !other.color().has_alpha() => return other.into_rgb8().len(),
        other => other.into_rgba8(),
    };
    let mut rgb = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let alpha = u16::from(px[3]);
        for &c in &px[..3] {
            let blended = (u16::from(c) * alpha + 255 * (255 - alpha) + 127) / 255;
            rgb.push(blended as u8);
        }
    }
    rgb.len()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, which) = (
        args.get(1).map_or("after", String::as_str),
        args.get(2).map_or("rgba16", String::as_str),
    );
    let png = match which {
        "rgba16" => zero_png(6300, 6300, png::ColorType::Rgba, png::BitDepth::Sixteen, 8),
        "rgb8" => zero_png(7300, 5475, png::ColorType::Rgb, png::BitDepth::Eight, 3),
        "rgba8" => zero_png(7300, 5475, png::ColorType::Rgba, png::BitDepth::Eight, 4),
        other => panic!("unknown image {other}"),
    };
    let manifest = ModelManifest::load(Path::new("models/efficientnet_lite2.toml"))
        .expect("run from the repository root");
    let spec = manifest.input;
    let mut out = vec![0.0f32; spec.tensor_len()];
    let before = status_kib("VmHWM:");
    let outcome = match mode {
        "after" => format!(
            "{:?}",
            preprocess(&png, &spec, DecodeLimits::default(), &mut out)
        ),
        "unbudgeted" => format!(
            "{:?}",
            preprocess(
                &png,
                &spec,
                DecodeLimits {
                    max_decoded_bytes: u64::MAX,
                    ..DecodeLimits::default()
                },
                &mut out
            )
        ),
        "before" => format!("{} RGB bytes", decode_before(&png)),
        other => panic!("unknown mode {other}"),
    };
    let after = status_kib("VmHWM:");
    eprintln!(
        "{which} PNG ({} bytes), {mode}: {outcome}; VmHWM before {} MiB, after {} MiB (+{} MiB)",
        png.len(),
        before / 1024,
        after / 1024,
        (after - before) / 1024
    );
}
