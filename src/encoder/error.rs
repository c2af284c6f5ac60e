//! Errors of the encoder layer.
//!
//! The API layer maps these onto gRPC status codes, so each variant stands for
//! one caller-visible cause: bad input (with the offending image's position in
//! the request), back-pressure, shutdown, configuration problems found at
//! start-up, and ONNX Runtime failures. Per-image variants carry `index` so a
//! client sending a batch learns which image to fix.

use std::path::PathBuf;

/// Everything that can go wrong loading the encoder or embedding images.
///
/// `Clone` because one failed model run is the answer to every job in its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncoderError {
    /// The image at `index` in the request had zero bytes.
    #[error("image {index} is empty")]
    EmptyImage {
        /// Position of the image in the request.
        index: usize,
    },
    /// The image at `index` is not a complete JPEG, PNG or WebP image.
    #[error("image {index} could not be decoded: {reason}")]
    UndecodableImage {
        /// Position of the image in the request.
        index: usize,
        /// What the decoder objected to.
        reason: String,
    },
    /// The image header declares more pixels, or a larger decoded buffer,
    /// than the decompression-bomb guard allows.
    #[error("image {index} is {width}x{height} pixels, {limit}")]
    ImageTooLarge {
        /// Position of the image in the request.
        index: usize,
        /// Width declared by the image header.
        width: u32,
        /// Height declared by the image header.
        height: u32,
        /// Which limit it exceeds (`EncoderConfig::max_pixels` or
        /// `EncoderConfig::max_decoded_bytes`).
        limit: SizeLimit,
    },
    /// The request carried more images than one inference batch may hold.
    #[error("{count} images in one request; at most {max} are allowed")]
    TooManyImages {
        /// Images in the request.
        count: usize,
        /// The configured limit (`EncoderConfig::max_batch`).
        max: usize,
    },
    /// The job queue is full; the caller should retry later.
    #[error("the image encoder is overloaded (job queue full)")]
    Overloaded,
    /// The encoder is shutting down and accepts no more work.
    #[error("the image encoder is shutting down")]
    ShuttingDown,
    /// An ONNX Runtime call failed.
    #[error("ONNX Runtime failed to {op}: {message}")]
    Ort {
        /// The operation that failed, e.g. "run the model".
        op: &'static str,
        /// ONNX Runtime's message.
        message: String,
    },
    /// An internal invariant did not hold (a model output of the wrong size, a
    /// worker that panicked, ...).
    #[error("image encoder internal error: {0}")]
    Runtime(String),
    /// The model manifest could not be read or is invalid.
    #[error("model manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, naming the field where one is at fault.
        reason: String,
    },
    /// The ONNX model file is missing, fails its checksum, or does not match the manifest.
    #[error("model {}: {reason}", path.display())]
    Model {
        /// The `.onnx` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The ONNX Runtime shared library could not be loaded.
    #[error("ONNX Runtime library {}: {reason}", path.display())]
    Library {
        /// The library path from the configuration.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
    /// A field of `EncoderConfig` is out of range.
    #[error("invalid encoder configuration: {field} {reason}")]
    Config {
        /// The offending field of `EncoderConfig`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The size limit an image exceeds. Both are checked from the header, before
/// any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SizeLimit {
    /// More pixels than `max_pixels`.
    #[error("more than the limit of {max_pixels} pixels")]
    Pixels {
        /// The limit.
        max_pixels: u64,
    },
    /// Its decoded buffer, in the decoder's own pixel format (16-bit RGBA
    /// takes 8 bytes per pixel), would need `bytes`, more than `max_bytes`.
    #[error("{bytes} bytes once decoded, more than the limit of {max_bytes} bytes")]
    DecodedBytes {
        /// Size of the buffer the decoder would fill.
        bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
}

/// Why a single image could not be turned into a model input.
///
/// It carries no position: [`preprocess`](super::preprocess) sees one image at a
/// time. [`ImageError::at`] attaches the index when the error leaves the encoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Zero bytes.
    #[error("image is empty")]
    Empty,
    /// Not a complete image in a supported format.
    #[error("image could not be decoded: {0}")]
    Undecodable(String),
    /// The header declares more pixels, or a larger decoded buffer, than allowed.
    #[error("image is {width}x{height} pixels, {limit}")]
    TooLarge {
        /// Width declared by the header.
        width: u32,
        /// Height declared by the header.
        height: u32,
        /// The limit that was exceeded.
        limit: SizeLimit,
    },
    /// The caller's output slice does not have room for exactly one image tensor.
    #[error("output buffer holds {actual} values but one image needs {expected}")]
    BufferSize {
        /// `3 * size * size`.
        expected: usize,
        /// Length of the slice passed in.
        actual: usize,
    },
}

impl ImageError {
    /// Attaches the image's position in the request.
    pub fn at(self, index: usize) -> EncoderError {
        match self {
            Self::Empty => EncoderError::EmptyImage { index },
            Self::Undecodable(reason) => EncoderError::UndecodableImage { index, reason },
            Self::TooLarge {
                width,
                height,
                limit,
            } => EncoderError::ImageTooLarge {
                index,
                width,
                height,
                limit,
            },
            // The worker sizes its buffers itself, so reaching this is a bug in the
            // encoder, not the caller's fault.
            err @ Self::BufferSize { .. } => EncoderError::Runtime(format!("image {index}: {err}")),
        }
    }
}

/// Builds a `map_err` adapter for any ONNX Runtime error, including the builder
/// errors whose recovery payload keeps them from converting with `?`.
pub(crate) fn ort_err<R>(op: &'static str) -> impl FnOnce(ort::Error<R>) -> EncoderError {
    move |err| EncoderError::Ort {
        op,
        message: err.message().to_owned(),
    }
}
