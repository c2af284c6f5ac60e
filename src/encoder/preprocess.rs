//! Image bytes to model input: decode, flatten to RGB, resize the shorter side,
//! centre-crop, normalise, written straight into one image's slot of the batch
//! tensor.
//!
//! Design choices, each because of a failure it prevents:
//! - The pixel count is checked from the header, before any pixel buffer exists,
//!   and the decoder additionally gets `image::Limits`, so a small file claiming
//!   100000x100000 pixels is refused instead of allocating tens of gigabytes.
//! - JPEGs must reach their end-of-image marker. The `image` crate runs zune-jpeg
//!   in lenient mode, which fills a truncated scan with grey and reports success;
//!   an interrupted upload would then be embedded as a mostly grey picture.
//! - Transparent pixels are composited onto white, not stripped of alpha: product
//!   cut-outs are made to be shown on white pages (and catalogue photos are shot on
//!   white), while the RGB stored under alpha = 0 is arbitrary (often black).
//! - EXIF orientation is applied, so a phone photo is embedded the way it is seen.
//! - The resize uses the convolution scheme of Pillow (which the model's reference
//!   preprocessing uses), via fast_image_resize's SIMD kernels, and resizes only the
//!   source region that ends up inside the crop. That equals resize-then-crop (the
//!   filter still reads pixels outside the region) but never materialises the full
//!   resized image, which for a 1x10000 strip would be 297x2970000 pixels.
//! - Sizes and crop offsets use the integer arithmetic of the reference Python
//!   pipeline (`models/verify_efficientnet_lite2.py`): longer side floored, crop
//!   offset `(side - size) / 2` floored.

use std::cell::RefCell;
use std::io::Cursor;
use std::time::{Duration, Instant};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::error::ImageError;
use super::manifest::{ColorOrder, InputSpec, Interpolation, Layout};

/// Bytes per decoded pixel in the worst case a decoder may allocate for
/// (16-bit RGBA); used to size the decoder's allocation limit.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Headroom over the pixel buffer for decoder-internal allocations.
const DECODER_SLACK_BYTES: u64 = 16 << 20;
/// Largest intermediate (resized, before the crop) image: 64 MP, about 190 MB
/// of RGB8, far above any real product photo (297 x 396 for a 3:4 photo).
const MAX_RESIZED_PIXELS: u64 = 64_000_000;
/// Largest resize buffer kept for the next image (16 MiB, about 5 MP).
const KEEP_RESIZED_BYTES: usize = 16 << 20;

/// Decodes `img_bytes`, prepares it as `spec` describes and writes the
/// `3 * size * size` normalised values, channel-major (CHW), into `out`.
///
/// Images with more than `max_pixels` pixels are refused from their header.
pub fn preprocess(
    img_bytes: &[u8],
    spec: &InputSpec,
    max_pixels: u64,
    out: &mut [f32],
) -> Result<(), ImageError> {
    preprocess_timed(img_bytes, spec, max_pixels, out).map(|_| ())
}

/// Wall time of each preprocessing stage of one image. The encoder adds
/// these up (see `EncoderStats`), so that `lookbook bench-encode` can show
/// where an image's time goes without a second, instrumented code path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Header checks, decode, orientation, flattening to RGB8.
    pub decode: Duration,
    /// Resize of the shorter side and the centre crop.
    pub resize: Duration,
    /// Conversion of the crop to normalised floats in the input tensor.
    pub normalise: Duration,
}

/// [`preprocess`], reporting how long each stage took.
pub fn preprocess_timed(
    img_bytes: &[u8],
    spec: &InputSpec,
    max_pixels: u64,
    out: &mut [f32],
) -> Result<StageTimes, ImageError> {
    let expected = spec.tensor_len();
    if out.len() != expected {
        return Err(ImageError::BufferSize {
            expected,
            actual: out.len(),
        });
    }
    let started = Instant::now();
    let rgb = decode_rgb(img_bytes, max_pixels)?;
    let decoded = Instant::now();
    // The resized image is materialised before the crop, so it is bounded
    // too. Only extreme aspect ratios reach the bound: a 1 x 10000 strip
    // would become 297 x 2970000.
    let (resized_w, resized_h) = resized_dims(rgb.width(), rgb.height(), spec.resize_shorter);
    if resized_w.saturating_mul(resized_h) > MAX_RESIZED_PIXELS {
        return Err(ImageError::TooLarge {
            width: u32::try_from(resized_w).unwrap_or(u32::MAX),
            height: u32::try_from(resized_h).unwrap_or(u32::MAX),
            max_pixels: MAX_RESIZED_PIXELS,
        });
    }
    SCRATCH.with_borrow_mut(|scratch| {
        resize_crop(&rgb, spec, scratch);
        let resized = Instant::now();
        normalise(&scratch.crop, spec, out);
        Ok(StageTimes {
            decode: decoded - started,
            resize: resized - decoded,
            normalise: resized.elapsed(),
        })
    })
}

/// Per-thread buffers reused from image to image, so that preprocessing
/// allocates only the decoded image itself.
struct Scratch {
    resizer: Resizer,
    /// The whole resized RGB8 image (before the crop).
    full: Vec<u8>,
    /// The cropped `size x size` RGB8 image.
    crop: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        resizer: Resizer::new(),
        full: Vec::new(),
        crop: Vec::new(),
    });
}

/// Decodes any supported image into 8-bit RGB, applying EXIF orientation and
/// compositing transparency onto white.
pub(crate) fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let undecodable = |err: image::ImageError| ImageError::Undecodable(err.to_string());
    let reader = guessed_reader(bytes)?;
    let format = reader.format();
    // Only the header is read here; decoders allocate pixel buffers when decoding.
    let mut header_reader = reader;
    header_reader.no_limits();
    let (width, height) = header_reader.into_dimensions().map_err(undecodable)?;
    if width == 0 || height == 0 {
        return Err(ImageError::Undecodable(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    let too_large = ImageError::TooLarge {
        width,
        height,
        max_pixels,
    };
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(too_large);
    }
    if format == Some(ImageFormat::Jpeg) {
        check_jpeg_complete(bytes).map_err(ImageError::Undecodable)?;
    }

    let mut reader = guessed_reader(bytes)?;
    let side_limit = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side_limit);
    limits.max_image_height = Some(side_limit);
    let max_alloc = max_pixels
        .saturating_mul(MAX_BYTES_PER_PIXEL)
        .saturating_add(DECODER_SLACK_BYTES);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let limit_or = |err: image::ImageError| match err {
        image::ImageError::Limits(_) => too_large.clone(),
        other => undecodable(other),
    };
    let mut decoder = reader.into_decoder().map_err(limit_or)?;
    if decoder.total_bytes() > max_alloc {
        return Err(too_large.clone());
    }
    let orientation = decoder.orientation().map_err(undecodable)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(limit_or)?;
    img.apply_orientation(orientation);
    Ok(flatten_on_white(img))
}

fn guessed_reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| ImageError::Undecodable(err.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::Undecodable(
            "not a JPEG, PNG or WebP image".to_owned(),
        ));
    }
    Ok(reader)
}

/// Converts to RGB8; pixels with alpha are blended over white.
fn flatten_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut rgb = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let alpha = u16::from(px[3]);
        for &c in &px[..3] {
            // c*a + 255*(255-a) <= 255*255, so the rounded quotient fits in a u8.
            let blended = (u16::from(c) * alpha + 255 * (255 - alpha) + 127) / 255;
            rgb.push(u8::try_from(blended).unwrap_or(u8::MAX));
        }
    }
    RgbImage::from_raw(width, height, rgb)
        .expect("the buffer holds exactly width * height RGB pixels")
}

/// Size the image takes once its shorter side is `shorter`, aspect ratio kept:
/// the longer side becomes `floor(longer * shorter / shorter_side)`, in integer
/// arithmetic, as the reference pipeline (`models/verify_efficientnet_lite2.py`)
/// and torchvision's `Resize` compute it (451x300 -> 446x297).
pub(crate) fn resized_dims(width: u32, height: u32, shorter: u32) -> (u64, u64) {
    let scaled = |long: u32, short: u32| u64::from(long) * u64::from(shorter) / u64::from(short);
    if width <= height {
        (u64::from(shorter), scaled(height, width))
    } else {
        (scaled(width, height), u64::from(shorter))
    }
}

fn filter(spec: &InputSpec) -> ResizeAlg {
    ResizeAlg::Convolution(match spec.interpolation {
        Interpolation::Bicubic => FilterType::CatmullRom,
        Interpolation::Bilinear => FilterType::Bilinear,
    })
}

/// Resizes the part of `rgb` that lands in the centre crop into `scratch.crop`.
fn resize_crop(rgb: &RgbImage, spec: &InputSpec, scratch: &mut Scratch) {
    let (width, height) = rgb.dimensions();
    let size = spec.size;
    let (resized_w, resized_h) = resized_dims(width, height, spec.resize_shorter);
    // Validation guarantees resize_shorter >= size, and resized_dims keeps both
    // sides >= resize_shorter, so the subtractions cannot underflow.
    let x0 = (resized_w - u64::from(size)) / 2;
    let y0 = (resized_h - u64::from(size)) / 2;
    // Resize the whole image, then crop, exactly as the reference pipeline
    // does. Resizing only the cropped source region (cheaper) was measured to
    // differ by one 8-bit step on ~13% of values for some upscales, because
    // the fixed-point weight tables differ between the two routes; exactness
    // against the reference wins. `preprocess` has already refused images
    // whose resized size exceeds `MAX_RESIZED_PIXELS`, so this buffer is bounded.
    let (rw, rh) = (
        u32::try_from(resized_w).expect("bounded by MAX_RESIZED_PIXELS in `preprocess`"),
        u32::try_from(resized_h).expect("bounded by MAX_RESIZED_PIXELS in `preprocess`"),
    );
    let src = ImageRef::new(width, height, rgb.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer always holds width * height RGB8 pixels");
    // Every byte is overwritten by the resize, so stale contents do not matter.
    scratch.full.resize(rw as usize * rh as usize * 3, 0);
    let mut full = Image::from_slice_u8(rw, rh, &mut scratch.full, PixelType::U8x3)
        .expect("the buffer was just sized to rw * rh RGB8 pixels");
    let options = ResizeOptions::new()
        .resize_alg(filter(spec))
        .use_alpha(false);
    scratch
        .resizer
        .resize(&src, &mut full, &options)
        .expect("pixel types match");
    scratch.crop.clear();
    let row_bytes = size as usize * 3;
    for y in y0..y0 + u64::from(size) {
        let start = (y * resized_w + x0) as usize * 3;
        scratch
            .crop
            .extend_from_slice(&scratch.full[start..start + row_bytes]);
    }
    // A rare huge photo must not pin its buffer for the thread's lifetime;
    // a 3:4 catalogue photo needs 0.35 MB.
    if scratch.full.capacity() > KEEP_RESIZED_BYTES {
        scratch.full = Vec::new();
    }
}

/// Writes `(pixel - mean[c]) / std[c]` in CHW order.
fn normalise(crop: &[u8], spec: &InputSpec, out: &mut [f32]) {
    let Layout::Nchw = spec.layout;
    let ColorOrder::Rgb = spec.color;
    // One table per channel: a lookup is cheaper than a subtract and a divide,
    // and gives bit-identical results.
    let mut lut = [[0.0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (f32::from(v as u8) - spec.mean[c]) / spec.std[c];
        }
    }
    let plane = crop.len() / 3;
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (((px, r), g), b) in crop
        .chunks_exact(3)
        .zip(red.iter_mut())
        .zip(green.iter_mut())
        .zip(blue.iter_mut())
    {
        *r = lut[0][usize::from(px[0])];
        *g = lut[1][usize::from(px[1])];
        *b = lut[2][usize::from(px[2])];
    }
}

/// Walks the JPEG marker structure and fails unless an end-of-image marker is
/// reached. Segment lengths are followed (so an EOI inside an embedded EXIF
/// thumbnail does not count) and entropy-coded data is scanned for the next
/// marker; bytes after EOI are allowed, as many cameras append data.
fn check_jpeg_complete(data: &[u8]) -> Result<(), String> {
    const TRUNCATED: &str = "truncated JPEG (the data ends before the end-of-image marker)";
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG stream (no start-of-image marker)".to_owned());
    }
    let mut pos = 2;
    loop {
        // Lenient decoders skip stray bytes between segments; so do we.
        let Some(offset) = data[pos..].iter().position(|&b| b == 0xFF) else {
            return Err(TRUNCATED.to_owned());
        };
        pos += offset;
        while data.get(pos) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        let Some(&marker) = data.get(pos) else {
            return Err(TRUNCATED.to_owned());
        };
        pos += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length field.
            0x00 | 0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = data.get(pos..pos + 2) else {
                    return Err(TRUNCATED.to_owned());
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 {
                    return Err(format!("corrupt JPEG (segment length {len} at byte {pos})"));
                }
                pos += len;
                if pos > data.len() {
                    return Err(TRUNCATED.to_owned());
                }
                if marker == 0xDA {
                    pos = skip_entropy_coded(data, pos).ok_or_else(|| TRUNCATED.to_owned())?;
                }
            }
        }
    }
}

/// Returns the position of the marker that ends the entropy-coded segment
/// starting at `pos`, or `None` if the data ends first. Inside the segment 0xFF
/// is followed by 0x00 (a stuffed byte) or a restart marker.
fn skip_entropy_coded(data: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        pos += data.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        match *data.get(pos + 1)? {
            0x00 | 0xD0..=0xD7 => pos += 2,
            _ => return Some(pos),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::encoder::manifest::ModelManifest;
    use image::codecs::jpeg::JpegEncoder;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};
    use proptest::prelude::*;
    use std::path::Path;

    const MAX_PIXELS: u64 = 40_000_000;

    pub(crate) fn spec(size: u32, resize_shorter: u32, interpolation: &str) -> InputSpec {
        let text = format!(
            r#"
name = "t"
onnx = "t.onnx"
[input]
name = "input"
layout = "NCHW"
size = {size}
resize_shorter = {resize_shorter}
interpolation = "{interpolation}"
color = "RGB"
mean = [100.0, 120.0, 140.0]
std = [50.0, 60.0, 70.0]
[output]
name = "embedding"
dim = 3
"#
        );
        ModelManifest::parse(&text, Path::new("t.toml"))
            .unwrap()
            .input
    }

    pub(crate) fn png(img: impl Into<DynamicImage>) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.into().write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    pub(crate) fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(img)
            .unwrap();
        out
    }

    /// A photo-like test image: smooth gradients plus some texture.
    pub(crate) fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let r = (x * 255 / width.max(1)) as u8;
            let g = (y * 255 / height.max(1)) as u8;
            let b = ((x * 7 + y * 13) % 256) as u8;
            Rgb([r, g, b])
        })
    }

    fn run(bytes: &[u8], spec: &InputSpec) -> Result<Vec<f32>, ImageError> {
        let mut out = vec![f32::NAN; spec.tensor_len()];
        preprocess(bytes, spec, MAX_PIXELS, &mut out)?;
        Ok(out)
    }

    fn expected(spec: &InputSpec, rgb: [u8; 3]) -> [f32; 3] {
        [0, 1, 2].map(|c| (f32::from(rgb[c]) - spec.mean[c]) / spec.std[c])
    }

    /// Asserts every value of each channel plane equals the normalised colour.
    fn assert_constant(tensor: &[f32], spec: &InputSpec, rgb: [u8; 3]) {
        let plane = tensor.len() / 3;
        for (c, want) in expected(spec, rgb).into_iter().enumerate() {
            let channel = &tensor[c * plane..(c + 1) * plane];
            assert!(
                channel.iter().all(|v| *v == want),
                "channel {c}: expected all {want}, got e.g. {:?}",
                channel.iter().find(|v| **v != want)
            );
        }
    }

    #[test]
    fn solid_colour_gives_the_normalised_constant() {
        for interpolation in ["bicubic", "bilinear"] {
            let spec = spec(32, 36, interpolation);
            let colour = [200, 30, 90];
            let img = RgbImage::from_pixel(50, 41, Rgb(colour));
            assert_constant(&run(&png(img), &spec).unwrap(), &spec, colour);
        }
    }

    #[test]
    fn one_pixel_image_works() {
        let spec = spec(32, 36, "bicubic");
        let img = RgbImage::from_pixel(1, 1, Rgb([10, 250, 128]));
        assert_constant(&run(&png(img), &spec).unwrap(), &spec, [10, 250, 128]);
    }

    #[test]
    fn landscape_and_portrait_keep_the_centre() {
        let spec = spec(32, 36, "bicubic");
        let (red, green, blue) = ([255, 0, 0], [0, 255, 0], [0, 0, 255]);
        // Three bands along the long side; only the middle one may reach the crop.
        let band = |t: u32| {
            Rgb(if t < 150 {
                red
            } else if t < 350 {
                green
            } else {
                blue
            })
        };
        let landscape = RgbImage::from_fn(500, 100, |x, _| band(x));
        let portrait = RgbImage::from_fn(100, 500, |_, y| band(y));
        assert_constant(&run(&png(landscape), &spec).unwrap(), &spec, green);
        assert_constant(&run(&png(portrait), &spec).unwrap(), &spec, green);
    }

    #[test]
    fn transparency_is_composited_on_white() {
        let spec = spec(32, 36, "bilinear");
        let clear = RgbaImage::from_pixel(40, 40, Rgba([0, 0, 0, 0]));
        assert_constant(&run(&png(clear), &spec).unwrap(), &spec, [255, 255, 255]);
        let opaque = RgbaImage::from_pixel(40, 40, Rgba([10, 20, 30, 255]));
        assert_constant(&run(&png(opaque), &spec).unwrap(), &spec, [10, 20, 30]);
        let half = RgbaImage::from_pixel(40, 40, Rgba([0, 0, 0, 128]));
        assert_constant(&run(&png(half), &spec).unwrap(), &spec, [127, 127, 127]);
    }

    #[test]
    fn output_is_channel_major() {
        let spec = spec(32, 32, "bilinear");
        // Left half red, right half blue: in CHW the red plane is high on the
        // left and the blue plane high on the right.
        let img = RgbImage::from_fn(32, 32, |x, _| {
            Rgb(if x < 16 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let t = run(&png(img), &spec).unwrap();
        let plane = 32 * 32;
        let at = |c: usize, y: usize, x: usize| t[c * plane + y * 32 + x];
        assert_eq!(at(0, 5, 0), expected(&spec, [255, 0, 0])[0]);
        assert_eq!(at(2, 5, 0), expected(&spec, [255, 0, 0])[2]);
        assert_eq!(at(0, 5, 31), expected(&spec, [0, 0, 255])[0]);
        assert_eq!(at(2, 5, 31), expected(&spec, [0, 0, 255])[2]);
    }

    #[test]
    fn rejects_empty_and_garbage() {
        let spec = spec(32, 36, "bicubic");
        assert_eq!(run(b"", &spec), Err(ImageError::Empty));
        let noise: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(matches!(
            run(&noise, &spec),
            Err(ImageError::Undecodable(_))
        ));
        let mut fake_png = b"\x89PNG\r\n\x1a\n".to_vec();
        fake_png.extend_from_slice(&noise);
        assert!(matches!(
            run(&fake_png, &spec),
            Err(ImageError::Undecodable(_))
        ));
    }

    #[test]
    fn truncated_jpeg_is_rejected_not_grey() {
        let spec = spec(32, 36, "bicubic");
        let full = jpeg(&gradient(225, 300), 90);
        assert!(run(&full, &spec).is_ok());
        let err = run(&full[..full.len() / 2], &spec).unwrap_err();
        assert!(
            matches!(&err, ImageError::Undecodable(reason) if reason.contains("truncated")),
            "{err:?}"
        );
        // Just the EOI marker missing is also truncation.
        assert!(run(&full[..full.len() - 2], &spec).is_err());
        // Data after EOI is tolerated.
        let mut trailing = full.clone();
        trailing.extend_from_slice(b"\0\0camera trailer");
        assert_eq!(run(&trailing, &spec).unwrap(), run(&full, &spec).unwrap());
    }

    #[test]
    fn an_end_marker_inside_metadata_does_not_hide_truncation() {
        let spec = spec(32, 36, "bicubic");
        let thumbnail = jpeg(&gradient(8, 8), 50);
        let main = jpeg(&gradient(225, 300), 90);
        // Insert an APP15 segment holding a complete JPEG (with its own EOI).
        let mut with_thumb = main[..2].to_vec();
        let len = u16::try_from(thumbnail.len() + 2).unwrap();
        with_thumb.extend_from_slice(&[0xFF, 0xEF]);
        with_thumb.extend_from_slice(&len.to_be_bytes());
        with_thumb.extend_from_slice(&thumbnail);
        with_thumb.extend_from_slice(&main[2..]);
        assert!(run(&with_thumb, &spec).is_ok());
        let cut = &with_thumb[..thumbnail.len() + (with_thumb.len() - thumbnail.len()) / 2];
        assert!(matches!(run(cut, &spec), Err(ImageError::Undecodable(_))));
    }

    #[test]
    fn truncated_png_and_webp_are_rejected() {
        let spec = spec(32, 36, "bicubic");
        let full = png(gradient(120, 90));
        assert!(run(&full, &spec).is_ok());
        assert!(matches!(
            run(&full[..full.len() / 2], &spec),
            Err(ImageError::Undecodable(_))
        ));
        let mut webp = Cursor::new(Vec::new());
        DynamicImage::from(gradient(120, 90))
            .write_to(&mut webp, ImageFormat::WebP)
            .unwrap();
        let webp = webp.into_inner();
        assert!(run(&webp, &spec).is_ok());
        assert!(matches!(
            run(&webp[..webp.len() / 2], &spec),
            Err(ImageError::Undecodable(_))
        ));
    }

    /// CRC-32 (IEEE) for hand-made PNG chunks.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }

    /// A well-formed PNG declaring `width x height` RGB8 whose pixel data is a
    /// few bytes: what a decompression bomb's header looks like.
    pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        png_chunk(&mut out, b"IHDR", &ihdr);
        // An empty zlib stream.
        png_chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        let spec = spec(32, 36, "bicubic");
        // Were it decoded, this would need 30 GB; the check must come first.
        let err = run(&png_header(100_000, 100_000), &spec).unwrap_err();
        assert_eq!(
            err,
            ImageError::TooLarge {
                width: 100_000,
                height: 100_000,
                max_pixels: MAX_PIXELS
            }
        );
        // A real JPEG whose frame header is patched to 60000x60000.
        let mut bomb = jpeg(&gradient(16, 16), 80);
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        bomb[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        assert!(matches!(
            run(&bomb, &spec),
            Err(ImageError::TooLarge {
                width: 60_000,
                height: 60_000,
                ..
            })
        ));
        // Exactly max_pixels is allowed; one pixel more is not.
        let ok = png(gradient(20, 10));
        let mut out = vec![0.0; spec.tensor_len()];
        assert!(preprocess(&ok, &spec, 200, &mut out).is_ok());
        assert!(matches!(
            preprocess(&ok, &spec, 199, &mut out),
            Err(ImageError::TooLarge {
                width: 20,
                height: 10,
                max_pixels: 199
            })
        ));
    }

    #[test]
    fn wrong_output_length_is_reported() {
        let spec = spec(32, 36, "bicubic");
        let mut out = vec![0.0; 10];
        assert_eq!(
            preprocess(&png(gradient(4, 4)), &spec, MAX_PIXELS, &mut out),
            Err(ImageError::BufferSize {
                expected: 3 * 32 * 32,
                actual: 10
            })
        );
    }

    /// APP1 segment with a big-endian EXIF block holding only an orientation tag.
    fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
        let mut payload = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        payload.extend_from_slice(&orientation.to_be_bytes());
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        seg.extend_from_slice(&payload);
        seg
    }

    #[test]
    fn exif_orientation_is_applied() {
        let spec = spec(32, 32, "bilinear");
        // Top half red, bottom half blue.
        let img = RgbImage::from_fn(64, 32, |_, y| {
            Rgb(if y < 16 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let plain = jpeg(&img, 95);
        let mut rotated = plain[..2].to_vec();
        rotated.extend_from_slice(&exif_orientation_segment(6)); // rotate 90° clockwise
        rotated.extend_from_slice(&plain[2..]);

        let red_plane = |t: &[f32], y: usize, x: usize| t[y * 32 + x];
        let high = expected(&spec, [255, 0, 0])[0];
        let low = expected(&spec, [0, 0, 255])[0];
        let near = |v: f32, want: f32| (v - want).abs() < 0.1;

        let t = run(&plain, &spec).unwrap();
        assert!(near(red_plane(&t, 2, 16), high) && near(red_plane(&t, 29, 16), low));
        // Rotated clockwise, the red top edge becomes the right edge.
        let t = run(&rotated, &spec).unwrap();
        assert!(near(red_plane(&t, 16, 29), high) && near(red_plane(&t, 16, 2), low));
    }

    #[test]
    fn resized_dims_keep_aspect_and_round() {
        assert_eq!(resized_dims(225, 300, 297), (297, 396));
        assert_eq!(resized_dims(300, 225, 297), (396, 297));
        assert_eq!(resized_dims(100, 100, 297), (297, 297));
        assert_eq!(resized_dims(1, 10_000, 297), (297, 2_970_000));
        // 297 * 451 / 300 = 446.49 and 297 * 301 / 200 = 446.985: both floor to 446.
        assert_eq!(resized_dims(451, 300, 297), (446, 297));
        assert_eq!(resized_dims(200, 301, 297), (297, 446));
    }

    /// Reference: resize the whole image, then crop.
    fn resize_then_crop(rgb: &RgbImage, spec: &InputSpec) -> Vec<u8> {
        let (w, h) = rgb.dimensions();
        let (rw, rh) = resized_dims(w, h, spec.resize_shorter);
        let (rw, rh) = (u32::try_from(rw).unwrap(), u32::try_from(rh).unwrap());
        let src = ImageRef::new(w, h, rgb.as_raw(), PixelType::U8x3).unwrap();
        let mut full = Image::new(rw, rh, PixelType::U8x3);
        Resizer::new()
            .resize(
                &src,
                &mut full,
                &ResizeOptions::new().resize_alg(filter(spec)),
            )
            .unwrap();
        let (x0, y0) = ((rw - spec.size) / 2, (rh - spec.size) / 2);
        let mut out = Vec::new();
        for y in y0..y0 + spec.size {
            let row = (y * rw + x0) as usize * 3;
            out.extend_from_slice(&full.buffer()[row..row + spec.size as usize * 3]);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn cropped_resize_equals_resize_then_crop(
            w in 1u32..400,
            h in 1u32..400,
            size in 8u32..64,
            extra in 0u32..40,
            bicubic in any::<bool>(),
        ) {
            let spec = spec(size, size + extra, if bicubic { "bicubic" } else { "bilinear" });
            let rgb = gradient(w, h);
            let mut scratch = Scratch { resizer: Resizer::new(), full: Vec::new(), crop: Vec::new() };
            resize_crop(&rgb, &spec, &mut scratch);
            let reference = resize_then_crop(&rgb, &spec);
            prop_assert_eq!(scratch.crop.len(), reference.len());
            let diffs: Vec<u8> = scratch
                .crop
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let worst = diffs.iter().copied().max().unwrap_or(0);
            let mean = diffs.iter().map(|d| f64::from(*d)).sum::<f64>() / diffs.len() as f64;
            // Both passes round to 8 bits with fixed-point weights whose precision
            // depends on the whole weight table, so the two routes may differ by a
            // rounding step per pass, rarely.
            prop_assert!(worst <= 2, "max difference {} for {}x{}", worst, w, h);
            prop_assert!(mean < 0.05, "mean difference {} for {}x{}", mean, w, h);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let spec = spec(16, 16, "bilinear");
            let _ = run(&bytes, &spec);
        }

        #[test]
        fn corrupted_jpegs_never_panic(cut in 0usize..4000, flip in 0usize..4000, bit in 0u8..8) {
            let spec = spec(16, 16, "bilinear");
            let mut bytes = jpeg(&gradient(40, 30), 80);
            let flip = flip % bytes.len();
            bytes[flip] ^= 1 << bit;
            bytes.truncate(cut.max(1));
            let _ = run(&bytes, &spec);
        }
    }
}
