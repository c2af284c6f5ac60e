//! Thumbnails: a small JPEG of a product photo, made by the encoder worker
//! from the image it has just decoded for the model (so a photo is decoded
//! once), for pages that show products.
//!
//! The long side is at most [`MAX_SIDE`] (smaller photos keep their size),
//! and the file at most [`MAX_BYTES`]: a photo that encodes larger at the
//! default quality (fine noise, dense patterns) is encoded again at lower
//! qualities, and at half the size if that is not enough, so a stored
//! thumbnail has a hard bound whatever the photo.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;

/// Longest side of a thumbnail, in pixels.
pub const MAX_SIDE: u32 = 256;
/// Largest thumbnail file. A 256 px catalogue photo at quality 80 is about
/// 8-15 KB; this leaves room for busy photos before quality is lowered.
pub const MAX_BYTES: usize = 48 * 1024;
/// JPEG qualities tried in turn until the file fits in `MAX_BYTES`.
const QUALITIES: [u8; 3] = [80, 60, 40];

/// Why no thumbnail was made (the product is still added; it has none).
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("resize: {0}")]
    Resize(String),
    #[error("JPEG encoding: {0}")]
    Encode(#[from] image::ImageError),
    #[error("even at {side} px and quality {quality} the thumbnail is {bytes} bytes")]
    TooLarge {
        side: u32,
        quality: u8,
        bytes: usize,
    },
}

/// `(width, height)` scaled so that the longer side is at most `max_side`,
/// never upscaled, never 0.
fn fitted(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= max_side {
        return (width.max(1), height.max(1));
    }
    let scale = |v: u32| {
        let scaled = u64::from(v) * u64::from(max_side) / u64::from(long);
        u32::try_from(scaled).unwrap_or(max_side).max(1)
    };
    (scale(width), scale(height))
}

fn resized(rgb: &RgbImage, max_side: u32) -> Result<RgbImage, ThumbnailError> {
    let (width, height) = rgb.dimensions();
    let (w, h) = fitted(width, height, max_side);
    if (w, h) == (width, height) {
        return Ok(rgb.clone());
    }
    let src = ImageRef::new(width, height, rgb.as_raw(), PixelType::U8x3)
        .map_err(|e| ThumbnailError::Resize(e.to_string()))?;
    let mut dst = Image::new(w, h, PixelType::U8x3);
    // Downscaling by large factors: a convolution filter (not nearest or
    // plain bilinear sampling) so fine patterns do not alias.
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .use_alpha(false);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| ThumbnailError::Resize(e.to_string()))?;
    RgbImage::from_raw(w, h, dst.into_vec())
        .ok_or_else(|| ThumbnailError::Resize("resized buffer has the wrong size".to_owned()))
}

fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, ThumbnailError> {
    let mut out = Vec::with_capacity(16 * 1024);
    JpegEncoder::new_with_quality(&mut out, quality).encode_image(img)?;
    Ok(out)
}

/// The thumbnail of a decoded photo: a JPEG of at most [`MAX_BYTES`] whose
/// long side is at most [`MAX_SIDE`].
pub fn make(rgb: &RgbImage) -> Result<Vec<u8>, ThumbnailError> {
    let mut last = (0, 0, 0);
    for side in [MAX_SIDE, MAX_SIDE / 2] {
        let small = resized(rgb, side)?;
        for quality in QUALITIES {
            let bytes = jpeg(&small, quality)?;
            if bytes.len() <= MAX_BYTES {
                return Ok(bytes);
            }
            last = (side, quality, bytes.len());
        }
    }
    let (side, quality, bytes) = last;
    Err(ThumbnailError::TooLarge {
        side,
        quality,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8]) -> RgbImage {
        image::load_from_memory(bytes).unwrap().to_rgb8()
    }

    #[test]
    fn fitted_keeps_aspect_and_never_upscales() {
        assert_eq!(fitted(1080, 1440, 256), (192, 256));
        assert_eq!(fitted(1440, 1080, 256), (256, 192));
        assert_eq!(fitted(60, 80, 256), (60, 80));
        assert_eq!(fitted(10_000, 1, 256), (256, 1));
        assert_eq!(fitted(0, 0, 256), (1, 1));
    }

    #[test]
    fn a_photo_becomes_a_small_jpeg_of_the_right_size() {
        let photo = RgbImage::from_fn(900, 1200, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let thumb = make(&photo).unwrap();
        assert!(thumb.len() <= MAX_BYTES, "{} bytes", thumb.len());
        assert_eq!(&thumb[..2], b"\xff\xd8", "a JPEG");
        let back = decoded(&thumb);
        assert_eq!(back.dimensions(), (192, 256));
        // The colours survive: the top-left corner is dark, as in the photo.
        let p = back.get_pixel(0, 0);
        assert!(p.0.iter().all(|&c| c < 40), "{p:?}");
    }

    #[test]
    fn noise_is_squeezed_under_the_byte_bound() {
        // White noise is the worst case for JPEG: quality 80 at 256 px is
        // far above the bound, so the lower qualities and sizes are reached.
        let mut state = 0x2545_f491_u32;
        let noise = RgbImage::from_fn(256, 256, |_, _| {
            let mut px = [0u8; 3];
            for c in &mut px {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *c = state as u8;
            }
            image::Rgb(px)
        });
        assert!(jpeg(&noise, QUALITIES[0]).unwrap().len() > MAX_BYTES);
        let thumb = make(&noise).unwrap();
        assert!(thumb.len() <= MAX_BYTES, "{} bytes", thumb.len());
        let side = decoded(&thumb).width();
        assert!(side == MAX_SIDE || side == MAX_SIDE / 2);
    }
}
