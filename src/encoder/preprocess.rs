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

use super::error::{ImageError, SizeLimit};
use super::manifest::{ColorOrder, InputSpec, Interpolation, Layout};

/// Headroom over the decoded-buffer budget for decoder-internal allocations
/// (the PNG decoder's row buffers and inflate window, metadata chunks).
const DECODER_SLACK_BYTES: u64 = 16 << 20;
/// Largest intermediate (resized, before the crop) image: 64 MP, about 190 MB
/// of RGB8, far above any real product photo (297 x 396 for a 3:4 photo).
const MAX_RESIZED_PIXELS: u64 = 64_000_000;
/// Largest resize buffer kept for the next image (16 MiB, about 5 MP).
const KEEP_RESIZED_BYTES: usize = 16 << 20;

/// Decompression-bomb guards, both checked from the image header before any
/// pixel buffer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most pixels (width x height).
    pub max_pixels: u64,
    /// Largest buffer the decoder may fill, in its own pixel format
    /// (width x height x bytes per pixel: 3 for 8-bit RGB, 8 for 16-bit RGBA).
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: super::DEFAULT_MAX_PIXELS,
            max_decoded_bytes: super::DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

/// Decodes `img_bytes`, prepares it as `spec` describes and writes the
/// `3 * size * size` normalised values, channel-major (CHW), into `out`.
///
/// Images beyond `limits` are refused from their header.
pub fn preprocess(
    img_bytes: &[u8],
    spec: &InputSpec,
    limits: DecodeLimits,
    out: &mut [f32],
) -> Result<(), ImageError> {
    preprocess_timed(img_bytes, spec, limits, out).map(|_| ())
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
    limits: DecodeLimits,
    out: &mut [f32],
) -> Result<StageTimes, ImageError> {
    // The buffer is checked by `prepare_decoded`; a wrong one is a caller
    // bug, found after a decode instead of before.
    let started = Instant::now();
    let rgb = decode_rgb(img_bytes, limits)?;
    let decode = started.elapsed();
    prepare_decoded(&rgb, spec, out).map(|t| StageTimes { decode, ..t })
}

/// The model input of an image already decoded by [`decode_rgb`] (the part
/// of [`preprocess_timed`] after decoding), for callers that use the decoded
/// image for something else too (thumbnails). `decode` is zero in the
/// result.
pub(crate) fn prepare_decoded(
    rgb: &RgbImage,
    spec: &InputSpec,
    out: &mut [f32],
) -> Result<StageTimes, ImageError> {
    let expected = spec.tensor_len();
    if out.len() != expected {
        return Err(ImageError::BufferSize {
            expected,
            actual: out.len(),
        });
    }
    let decoded = Instant::now();
    // The resized image is materialised before the crop, so it is bounded
    // too. Only extreme aspect ratios reach the bound: a 1 x 10000 strip
    // would become 297 x 2970000.
    let (resized_w, resized_h) = resized_dims(rgb.width(), rgb.height(), spec.resize_shorter);
    if resized_w.saturating_mul(resized_h) > MAX_RESIZED_PIXELS {
        return Err(ImageError::TooLarge {
            width: u32::try_from(resized_w).unwrap_or(u32::MAX),
            height: u32::try_from(resized_h).unwrap_or(u32::MAX),
            limit: SizeLimit::Pixels {
                max_pixels: MAX_RESIZED_PIXELS,
            },
        });
    }
    SCRATCH.with_borrow_mut(|scratch| {
        resize_crop(rgb, spec, scratch);
        let resized = Instant::now();
        normalise(&scratch.crop, spec, out);
        Ok(StageTimes {
            decode: Duration::ZERO,
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
///
/// Peak memory for one image is the decoder's buffer (at most
/// `limits.max_decoded_bytes`) plus, unless it is already 8-bit RGB or RGBA,
/// one 8-bit RGB copy (3 bytes per pixel); orientation other than the
/// identity adds one more RGB copy.
pub(crate) fn decode_rgb(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let undecodable = |err: image::ImageError| ImageError::Undecodable(err.to_string());
    let mut reader = guessed_reader(bytes)?;
    let format = reader.format();
    // Only headers are read until `from_decoder`. The allocation limit reaches
    // the PNG decoder's own buffers (metadata chunks, rows), so a lying header
    // cannot make it allocate past the budget; the pixel buffer itself is
    // checked below from the header's size and colour type. Side limits are
    // left to the checks below, which report the declared size.
    let max_alloc = limits.max_decoded_bytes.saturating_add(DECODER_SLACK_BYTES);
    let mut decoder_limits = Limits::no_limits();
    decoder_limits.max_alloc = Some(max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Undecodable(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    let too_large = |limit| ImageError::TooLarge {
        width,
        height,
        limit,
    };
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large(SizeLimit::Pixels {
            max_pixels: limits.max_pixels,
        }));
    }
    // `total_bytes` is width x height x the bytes per pixel of the colour
    // type the decoder will produce: what `from_decoder` allocates.
    let decoded_bytes = decoder.total_bytes();
    if decoded_bytes > limits.max_decoded_bytes {
        return Err(too_large(SizeLimit::DecodedBytes {
            bytes: decoded_bytes,
            max_bytes: limits.max_decoded_bytes,
        }));
    }
    if format == Some(ImageFormat::Jpeg) {
        check_jpeg_complete(bytes).map_err(ImageError::Undecodable)?;
    }
    let orientation = decoder.orientation().map_err(undecodable)?;
    let img = DynamicImage::from_decoder(decoder).map_err(|err| match err {
        image::ImageError::Limits(_) => too_large(SizeLimit::DecodedBytes {
            bytes: decoded_bytes,
            max_bytes: limits.max_decoded_bytes,
        }),
        other => undecodable(other),
    })?;
    let mut rgb = DynamicImage::ImageRgb8(flatten_on_white(img));
    rgb.apply_orientation(orientation);
    Ok(match rgb {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

/// The formats accepted, as the README's API section documents. Other formats
/// the `image` crate recognises from their magic bytes (GIF, BMP, TIFF, ...)
/// are refused by name rather than left to a missing decoder's message.
const ACCEPTED_FORMATS: [ImageFormat; 3] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP];

fn guessed_reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| ImageError::Undecodable(err.to_string()))?;
    match reader.format() {
        Some(format) if ACCEPTED_FORMATS.contains(&format) => Ok(reader),
        Some(format) => Err(ImageError::Undecodable(format!(
            "{format:?} images are not accepted; send JPEG, PNG or WebP"
        ))),
        None => Err(ImageError::Undecodable(
            "not a JPEG, PNG or WebP image".to_owned(),
        )),
    }
}

/// Blends one 8-bit colour sample with alpha `alpha` over white.
fn over_white(c: u8, alpha: u8) -> u8 {
    let alpha = u16::from(alpha);
    // c*a + 255*(255-a) <= 255*255, so the rounded quotient fits in a u8.
    let blended = (u16::from(c) * alpha + 255 * (255 - alpha) + 127) / 255;
    u8::try_from(blended).unwrap_or(u8::MAX)
}

/// 16-bit sample to 8 bits, rounded as the `image` crate's conversions do.
fn to_u8(v: u16) -> u8 {
    u8::try_from((u32::from(v) + 128) / 257).unwrap_or(u8::MAX)
}

/// Converts to RGB8; pixels with alpha are blended over white.
///
/// Written so that no intermediate image exists beside the decoded one and
/// the result: 8-bit RGBA is flattened in place, and the other alpha formats
/// go straight to RGB8 instead of through an RGBA8 copy (for a 16-bit RGBA
/// image that copy alone would be half the decoded buffer).
fn flatten_on_white(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => return rgb,
        DynamicImage::ImageRgba8(rgba) => {
            let mut buf = rgba.into_raw();
            let pixels = buf.len() / 4;
            // Pixel i moves from 4i to 3i: never past a pixel not yet read.
            for i in 0..pixels {
                let (r, g, b, a) = (buf[4 * i], buf[4 * i + 1], buf[4 * i + 2], buf[4 * i + 3]);
                buf[3 * i] = over_white(r, a);
                buf[3 * i + 1] = over_white(g, a);
                buf[3 * i + 2] = over_white(b, a);
            }
            buf.truncate(pixels * 3);
            buf.shrink_to_fit();
            buf
        }
        DynamicImage::ImageLumaA8(la) => rgb_from(
            la.as_raw()
                .chunks_exact(2)
                .map(|px| [over_white(px[0], px[1]); 3]),
        ),
        DynamicImage::ImageLumaA16(la) => rgb_from(
            la.as_raw()
                .chunks_exact(2)
                .map(|px| [over_white(to_u8(px[0]), to_u8(px[1])); 3]),
        ),
        DynamicImage::ImageRgba16(rgba) => rgb_from(rgba.as_raw().chunks_exact(4).map(|px| {
            let a = to_u8(px[3]);
            [0, 1, 2].map(|c| over_white(to_u8(px[c]), a))
        })),
        other if other.color().has_alpha() => {
            // Formats none of the accepted decoders produce (32-bit float):
            // correctness over memory.
            return flatten_on_white(DynamicImage::ImageRgba8(other.into_rgba8()));
        }
        other => return other.into_rgb8(),
    };
    RgbImage::from_raw(width, height, rgb)
        .expect("the buffer holds exactly width * height RGB pixels")
}

/// Collects RGB pixels into a buffer allocated once at its final size.
fn rgb_from(pixels: impl ExactSizeIterator<Item = [u8; 3]>) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(pixels.len() * 3);
    for px in pixels {
        rgb.extend_from_slice(&px);
    }
    rgb
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
    const LIMITS: DecodeLimits = DecodeLimits {
        max_pixels: MAX_PIXELS,
        max_decoded_bytes: 4 * MAX_PIXELS,
    };

    fn pixel_limit(max_pixels: u64) -> DecodeLimits {
        DecodeLimits {
            max_pixels,
            ..LIMITS
        }
    }

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
        preprocess(bytes, spec, LIMITS, &mut out)?;
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
        png_header_with(width, height, 8, 2)
    }

    /// Like [`png_header`], with the IHDR's bit depth and colour type
    /// (2 = RGB, 6 = RGBA).
    fn png_header_with(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
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
                limit: SizeLimit::Pixels {
                    max_pixels: MAX_PIXELS
                }
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
        assert!(preprocess(&ok, &spec, pixel_limit(200), &mut out).is_ok());
        assert!(matches!(
            preprocess(&ok, &spec, pixel_limit(199), &mut out),
            Err(ImageError::TooLarge {
                width: 20,
                height: 10,
                limit: SizeLimit::Pixels { max_pixels: 199 }
            })
        ));
    }

    #[test]
    fn wrong_output_length_is_reported() {
        let spec = spec(32, 36, "bicubic");
        let mut out = vec![0.0; 10];
        assert_eq!(
            preprocess(&png(gradient(4, 4)), &spec, LIMITS, &mut out),
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

    #[test]
    fn decode_budget_counts_bytes_per_pixel_from_the_header() {
        let spec = spec(32, 36, "bicubic");
        // 6300 x 6300 = 39.7 MP, under the pixel limit, but as 16-bit RGBA
        // its decoded buffer would be 317.5 MB.
        let err = run(&png_header_with(6300, 6300, 16, 6), &spec).unwrap_err();
        assert_eq!(
            err,
            ImageError::TooLarge {
                width: 6300,
                height: 6300,
                limit: SizeLimit::DecodedBytes {
                    bytes: 6300 * 6300 * 8,
                    max_bytes: 4 * MAX_PIXELS
                }
            }
        );
        // The same size as 8-bit RGB (119 MB) is within the budget: it gets
        // past the header checks and fails only on its (empty) pixel data.
        assert!(matches!(
            run(&png_header_with(6300, 6300, 8, 2), &spec),
            Err(ImageError::Undecodable(_))
        ));
        // Exactly the budget is allowed; one byte less is not.
        let ok = png(gradient(20, 10));
        let mut out = vec![0.0; spec.tensor_len()];
        let budget = |max_decoded_bytes| DecodeLimits {
            max_decoded_bytes,
            ..LIMITS
        };
        assert!(preprocess(&ok, &spec, budget(600), &mut out).is_ok());
        assert_eq!(
            preprocess(&ok, &spec, budget(599), &mut out),
            Err(ImageError::TooLarge {
                width: 20,
                height: 10,
                limit: SizeLimit::DecodedBytes {
                    bytes: 600,
                    max_bytes: 599
                }
            })
        );
        let wide = png(DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(
            20,
            10,
            Rgba([1u16, 2, 3, 4]),
        )));
        assert!(matches!(
            preprocess(&wide, &spec, budget(1599), &mut out),
            Err(ImageError::TooLarge {
                limit: SizeLimit::DecodedBytes { bytes: 1600, .. },
                ..
            })
        ));
        assert!(preprocess(&wide, &spec, budget(1600), &mut out).is_ok());
    }

    /// The flattening as it is specified: through the `image` crate's own
    /// conversion to RGBA8, then each pixel blended over white.
    fn flatten_reference(img: &DynamicImage) -> RgbImage {
        let rgba = img.to_rgba8();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let p = rgba.get_pixel(x, y).0;
            Rgb([0, 1, 2].map(|c| over_white(p[c], p[3])))
        })
    }

    #[test]
    fn every_pixel_format_flattens_like_the_rgba8_route() {
        let (w, h) = (23u32, 17u32);
        let v = |x: u32, y: u32, k: u32| ((x * 37 + y * 91 + k * 53) % 256) as u8;
        let v16 = |x: u32, y: u32, k: u32| u16::from(v(x, y, k)) * 257 + ((x + k) % 200) as u16;
        let images: Vec<DynamicImage> = vec![
            DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
                Rgb([v(x, y, 0), v(x, y, 1), v(x, y, 2)])
            })),
            DynamicImage::ImageRgba8(RgbaImage::from_fn(w, h, |x, y| {
                Rgba([v(x, y, 0), v(x, y, 1), v(x, y, 2), v(x, y, 3)])
            })),
            DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
                image::Luma([v(x, y, 0)])
            })),
            DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(w, h, |x, y| {
                image::LumaA([v(x, y, 0), v(x, y, 3)])
            })),
            DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(w, h, |x, y| {
                image::Luma([v16(x, y, 0)])
            })),
            DynamicImage::ImageLumaA16(image::ImageBuffer::from_fn(w, h, |x, y| {
                image::LumaA([v16(x, y, 0), v16(x, y, 3)])
            })),
            DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(w, h, |x, y| {
                Rgb([v16(x, y, 0), v16(x, y, 1), v16(x, y, 2)])
            })),
            DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([v16(x, y, 0), v16(x, y, 1), v16(x, y, 2), v16(x, y, 3)])
            })),
            DynamicImage::ImageRgba32F(image::ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([0, 1, 2, 3].map(|k| f32::from(v(x, y, k)) / 255.0))
            })),
        ];
        for img in images {
            let color = img.color();
            let want = flatten_reference(&img);
            assert_eq!(flatten_on_white(img), want, "{color:?}");
        }
    }

    #[test]
    fn sixteen_bit_greyscale_and_alpha_pngs_embed_like_their_8_bit_flattening() {
        let spec = spec(32, 36, "bilinear");
        let img = DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(50, 40, |x, y| {
            let a = if x < 25 { 65535 } else { (y * 1600) as u16 };
            Rgba([(x * 1300) as u16, (y * 1600) as u16, 40000, a])
        }));
        let want = run(&png(flatten_reference(&img)), &spec).unwrap();
        assert_eq!(run(&png(img), &spec).unwrap(), want);
        let grey = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(50, 40, |x, y| {
            image::LumaA([(x * 5) as u8, (y * 6) as u8])
        }));
        let want = run(&png(flatten_reference(&grey)), &spec).unwrap();
        assert_eq!(run(&png(grey), &spec).unwrap(), want);
    }

    #[test]
    fn other_recognised_formats_are_refused_by_name() {
        let spec = spec(32, 36, "bicubic");
        // A complete 1x1 GIF: recognised from its magic, but not accepted.
        let gif: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
        let bmp: &[u8] = b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00";
        for (bytes, name) in [(gif, "Gif"), (bmp, "Bmp")] {
            let err = run(bytes, &spec).unwrap_err();
            assert!(
                matches!(&err, ImageError::Undecodable(reason) if reason.contains(name) && reason.contains("not accepted")),
                "{err:?}"
            );
        }
        for text in [
            &b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"[..],
            b"hello, world\n",
        ] {
            assert!(matches!(run(text, &spec), Err(ImageError::Undecodable(_))));
        }
    }

    /// Outcome of preprocessing arbitrary input: a full tensor of finite
    /// values, or one of the per-image errors a caller may be sent. Never a
    /// buffer-size error (that would be the encoder's bug) and never a panic.
    fn assert_documented_outcome(
        bytes: &[u8],
        spec: &InputSpec,
        limits: DecodeLimits,
    ) -> Result<bool, TestCaseError> {
        let mut out = vec![f32::NAN; spec.tensor_len()];
        match preprocess(bytes, spec, limits, &mut out) {
            Ok(()) => {
                prop_assert!(
                    out.iter().all(|v| v.is_finite()),
                    "non-finite value in the tensor"
                );
                // Every value is a normalised 8-bit sample: within the range
                // the spec's mean and std give.
                let plane = out.len() / 3;
                for (c, chunk) in out.chunks_exact(plane).enumerate() {
                    let (lo, hi) = (
                        (0.0 - spec.mean[c]) / spec.std[c],
                        (255.0 - spec.mean[c]) / spec.std[c],
                    );
                    prop_assert!(chunk.iter().all(|v| (lo..=hi).contains(v)));
                }
                Ok(true)
            }
            Err(ImageError::Empty) => {
                prop_assert!(bytes.is_empty());
                Ok(false)
            }
            Err(ImageError::Undecodable(reason)) => {
                prop_assert!(!reason.is_empty());
                Ok(false)
            }
            Err(ImageError::TooLarge {
                width,
                height,
                limit,
            }) => {
                match limit {
                    SizeLimit::Pixels { max_pixels } => prop_assert!(
                        u64::from(width) * u64::from(height) > max_pixels
                            || max_pixels == MAX_RESIZED_PIXELS
                    ),
                    SizeLimit::DecodedBytes { bytes, max_bytes } => {
                        prop_assert!(bytes > max_bytes && max_bytes == limits.max_decoded_bytes);
                        prop_assert!(bytes >= u64::from(width) * u64::from(height));
                    }
                }
                Ok(false)
            }
            Err(err @ ImageError::BufferSize { .. }) => {
                Err(TestCaseError::fail(format!("unexpected {err:?}")))
            }
        }
    }

    /// Small valid seeds in every accepted format and pixel layout.
    fn seeds() -> Vec<Vec<u8>> {
        let rgb = gradient(24, 18);
        let mut webp = Cursor::new(Vec::new());
        DynamicImage::from(rgb.clone())
            .write_to(&mut webp, ImageFormat::WebP)
            .unwrap();
        vec![
            jpeg(&rgb, 80),
            png(rgb.clone()),
            png(DynamicImage::from(rgb.clone()).into_luma_alpha16()),
            png(DynamicImage::from(rgb).into_rgba8()),
            webp.into_inner(),
        ]
    }

    /// Applies one mutation chosen by `kind` at `at` (scaled to the length).
    fn mutate(bytes: &mut Vec<u8>, kind: u8, at: usize, value: u8) {
        if bytes.is_empty() {
            return;
        }
        let at = at % bytes.len();
        match kind % 5 {
            0 => bytes[at] ^= 1 << (value % 8),
            1 => bytes[at] = value,
            2 => bytes.truncate(at.max(1)),
            3 => {
                let end = (at + usize::from(value)).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {
                // Splice: repeat a chunk of the file at another place.
                let chunk: Vec<u8> = bytes[at..(at + usize::from(value)).min(bytes.len())].to_vec();
                let to = (at * 7 + usize::from(value)) % bytes.len();
                bytes.splice(to..to, chunk);
            }
        }
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
        fn arbitrary_bytes_get_a_tensor_or_a_documented_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let spec = spec(16, 16, "bilinear");
            let decoded = assert_documented_outcome(&bytes, &spec, LIMITS)?;
            // Random bytes are not an image (the odds of a valid header and
            // complete pixel data are nil); empty input is `Empty`.
            prop_assert!(!decoded);
        }

        #[test]
        fn arbitrary_bytes_after_a_magic_get_a_documented_error(
            magic in 0usize..4,
            tail in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let spec = spec(16, 16, "bilinear");
            let mut bytes = [
                &b"\xff\xd8\xff"[..],
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
                b"RIFF\x00\x01\x00\x00WEBPVP8 ",
                b"GIF89a",
            ][magic].to_vec();
            bytes.extend_from_slice(&tail);
            prop_assert!(!assert_documented_outcome(&bytes, &spec, LIMITS)?);
        }

        #[test]
        fn corrupted_jpegs_never_panic(cut in 0usize..4000, flip in 0usize..4000, bit in 0u8..8) {
            let spec = spec(16, 16, "bilinear");
            let mut bytes = jpeg(&gradient(40, 30), 80);
            let full_len = bytes.len();
            let flip = flip % bytes.len();
            bytes[flip] ^= 1 << bit;
            bytes.truncate(cut.max(1));
            let decoded = assert_documented_outcome(&bytes, &spec, LIMITS)?;
            // A JPEG cut before its end-of-image marker is always refused.
            if bytes.len() < full_len - 1 && decoded {
                prop_assert!(bytes.windows(2).any(|w| w == [0xFF, 0xD9]));
            }
        }

        #[test]
        fn mutated_images_get_a_tensor_or_a_documented_error(
            seed in 0usize..5,
            mutations in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
            tight_budget in any::<bool>(),
        ) {
            let spec = spec(16, 20, "bicubic");
            let mut bytes = seeds().swap_remove(seed);
            let unmutated = mutations.is_empty();
            for (kind, at, value) in mutations {
                mutate(&mut bytes, kind, at, value);
            }
            // A tight budget makes the byte check reachable for the seeds
            // (24 x 18 pixels: 1296 bytes as RGB8, 3456 as 16-bit grey+alpha).
            let limits = if tight_budget {
                DecodeLimits { max_pixels: MAX_PIXELS, max_decoded_bytes: 1500 }
            } else {
                LIMITS
            };
            let decoded = assert_documented_outcome(&bytes, &spec, limits)?;
            if unmutated && !tight_budget {
                prop_assert!(decoded, "a valid seed must decode");
            }
        }
    }
}
