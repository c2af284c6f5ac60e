//! The model manifest: a TOML file committed next to each ONNX model that says
//! how images must be prepared for it and what it returns.
//!
//! Preprocessing constants live with the model, not in code, because they are a
//! property of how the network was trained; a mismatch (wrong mean, wrong crop)
//! silently degrades every embedding instead of failing. The manifest is therefore
//! parsed strictly: unknown keys are rejected (a misspelt `resize_shortr` must not
//! fall back to a default), numbers are range-checked here so that every error
//! names the file and the field, and the optional `sha256` pins the exact weights.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::EncoderError;

/// Largest accepted `input.size` / `input.resize_shorter`: far above any image
/// model in use, low enough that a typo cannot request gigabyte tensors.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// A validated model manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelManifest {
    /// Model name reported by the API.
    pub name: String,
    /// The `onnx` entry as written, relative to the manifest's folder.
    pub onnx: PathBuf,
    /// Expected SHA-256 of the `.onnx` file, lower-case hex; `None` when the
    /// manifest leaves it out or empty (then the file is not checked).
    pub sha256: Option<String>,
    /// `true` for random-weight models that are only good for shape and speed tests.
    pub synthetic: bool,
    /// Free text.
    pub description: String,
    /// Provenance (package, file, url, sha256, license, ...); informational only.
    pub source: toml::Table,
    /// How to turn an image into the model input.
    pub input: InputSpec,
    /// What the model returns.
    pub output: OutputSpec,
    /// `onnx` resolved against the manifest's folder.
    onnx_path: PathBuf,
}

/// How an image becomes the model's input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Name of the model's input tensor.
    pub name: String,
    /// Tensor layout; only NCHW exists so far.
    pub layout: Layout,
    /// Side of the square centre crop fed to the model (`1..=MAX_INPUT_SIDE`).
    pub size: u32,
    /// The shorter image side is resized to this before cropping (`size..=MAX_INPUT_SIDE`).
    pub resize_shorter: u32,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Channel order of the tensor.
    pub color: ColorOrder,
    /// Per-channel mean in 0..255 pixel units (finite).
    pub mean: [f32; 3],
    /// Per-channel divisor in 0..255 pixel units (finite, > 0).
    pub std: [f32; 3],
}

/// Tensor layout of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Batch, channel, height, width.
    Nchw,
}

/// Resampling filter used for the resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Pillow's BICUBIC: Catmull-Rom (a = -0.5), support widened on downscale.
    Bicubic,
    /// Pillow's BILINEAR: triangle filter, support widened on downscale.
    Bilinear,
}

/// Channel order of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorOrder {
    /// Red, green, blue.
    Rgb,
}

/// What the model returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Name of the embedding output tensor.
    pub name: String,
    /// Embedding dimension (> 0).
    pub dim: usize,
}

impl InputSpec {
    /// Number of `f32` values in one image's tensor: `3 * size * size`.
    pub fn tensor_len(&self) -> usize {
        let side = self.size as usize;
        3 * side * side
    }
}

impl ModelManifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, EncoderError> {
        let text = std::fs::read_to_string(path).map_err(|err| EncoderError::Manifest {
            path: path.to_owned(),
            reason: format!("cannot read: {err}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses manifest text; `path` is used for error messages and to resolve `onnx`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, EncoderError> {
        let fail = |reason: String| EncoderError::Manifest {
            path: path.to_owned(),
            reason,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|err| fail(err.to_string()))?;
        raw.validate(path).map_err(fail)
    }

    /// The `.onnx` file, resolved against the manifest's folder.
    pub fn onnx_path(&self) -> &Path {
        &self.onnx_path
    }
}

// The raw types mirror the TOML one to one. Numbers are read wider than they are
// stored (i64, f64) so that range problems surface from `validate` with the field
// name, rather than as a serde type error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    onnx: PathBuf,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    synthetic: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    source: toml::Table,
    input: RawInput,
    output: RawOutput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    layout: String,
    size: i64,
    resize_shorter: i64,
    interpolation: String,
    color: String,
    mean: Vec<f64>,
    std: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    dim: i64,
}

impl RawManifest {
    fn validate(self, path: &Path) -> Result<ModelManifest, String> {
        non_empty("name", &self.name)?;
        if self.onnx.as_os_str().is_empty() {
            return Err("onnx: must name the model file".to_owned());
        }
        let sha256 = match self.sha256.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(hex.to_ascii_lowercase())
            }
            Some(other) => {
                return Err(format!(
                    "sha256: expected 64 hexadecimal digits or \"\", got {other:?}"
                ));
            }
        };
        let input = self.input.validate()?;
        let output = self.output.validate()?;
        let folder = path.parent().unwrap_or(Path::new(""));
        Ok(ModelManifest {
            onnx_path: folder.join(&self.onnx),
            name: self.name,
            onnx: self.onnx,
            sha256,
            synthetic: self.synthetic,
            description: self.description,
            source: self.source,
            input,
            output,
        })
    }
}

impl RawInput {
    fn validate(self) -> Result<InputSpec, String> {
        non_empty("input.name", &self.name)?;
        let layout = match self.layout.as_str() {
            "NCHW" => Layout::Nchw,
            other => {
                return Err(format!(
                    "input.layout: only \"NCHW\" is supported, got {other:?}"
                ));
            }
        };
        let size = side("input.size", self.size, 1)?;
        let resize_shorter = side("input.resize_shorter", self.resize_shorter, size)?;
        let interpolation = match self.interpolation.as_str() {
            "bicubic" => Interpolation::Bicubic,
            "bilinear" => Interpolation::Bilinear,
            other => {
                return Err(format!(
                    "input.interpolation: expected \"bicubic\" or \"bilinear\", got {other:?}"
                ));
            }
        };
        let color = match self.color.as_str() {
            "RGB" => ColorOrder::Rgb,
            other => {
                return Err(format!(
                    "input.color: only \"RGB\" is supported, got {other:?}"
                ));
            }
        };
        let mean = per_channel("input.mean", &self.mean, |v| v.is_finite(), "finite")?;
        let std = per_channel(
            "input.std",
            &self.std,
            |v| v.is_finite() && v > 0.0,
            "finite and > 0",
        )?;
        Ok(InputSpec {
            name: self.name,
            layout,
            size,
            resize_shorter,
            interpolation,
            color,
            mean,
            std,
        })
    }
}

impl RawOutput {
    fn validate(self) -> Result<OutputSpec, String> {
        non_empty("output.name", &self.name)?;
        match usize::try_from(self.dim) {
            Ok(dim) if dim > 0 => Ok(OutputSpec {
                name: self.name,
                dim,
            }),
            _ => Err(format!("output.dim: must be > 0, got {}", self.dim)),
        }
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(format!("{field}: must not be empty"))
    } else {
        Ok(())
    }
}

fn side(field: &str, value: i64, min: u32) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(v) if (min..=MAX_INPUT_SIDE).contains(&v) => Ok(v),
        _ if min > 1 => Err(format!(
            "{field}: must be between input.size ({min}) and {MAX_INPUT_SIDE}, got {value}"
        )),
        _ => Err(format!(
            "{field}: must be between {min} and {MAX_INPUT_SIDE}, got {value}"
        )),
    }
}

fn per_channel(
    field: &str,
    values: &[f64],
    ok: impl Fn(f32) -> bool,
    requirement: &str,
) -> Result<[f32; 3], String> {
    let &[a, b, c] = values else {
        return Err(format!(
            "{field}: expected 3 values (one per channel), got {}",
            values.len()
        ));
    };
    let mut out = [0.0f32; 3];
    for (i, (slot, value)) in out.iter_mut().zip([a, b, c]).enumerate() {
        // Narrowed first so that values outside f32's range become infinite and fail
        // the check instead of silently saturating.
        let narrowed = value as f32;
        if !ok(narrowed) {
            return Err(format!("{field}[{i}]: must be {requirement}, got {value}"));
        }
        *slot = narrowed;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"
name = "efficientnet-lite2"
onnx = "efficientnet_lite2.onnx"
sha256 = ""
synthetic = false
description = "test"

[source]
package = "x"
url = "https://example.invalid/model"

[input]
name = "input"
layout = "NCHW"
size = 260
resize_shorter = 297
interpolation = "bicubic"
color = "RGB"
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]

[output]
name = "embedding"
dim = 1280
"#;

    fn parse(text: &str) -> Result<ModelManifest, EncoderError> {
        ModelManifest::parse(text, Path::new("/models/m.toml"))
    }

    fn reason(text: &str) -> String {
        match parse(text) {
            Err(EncoderError::Manifest { path, reason }) => {
                assert_eq!(path, Path::new("/models/m.toml"));
                reason
            }
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_reference_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.name, "efficientnet-lite2");
        assert_eq!(m.onnx_path(), Path::new("/models/efficientnet_lite2.onnx"));
        assert_eq!(m.sha256, None);
        assert!(!m.synthetic);
        assert_eq!(m.source.get("package").and_then(|v| v.as_str()), Some("x"));
        assert_eq!(m.input.size, 260);
        assert_eq!(m.input.resize_shorter, 297);
        assert_eq!(m.input.interpolation, Interpolation::Bicubic);
        assert_eq!(m.input.mean, [127.0; 3]);
        assert_eq!(m.input.std, [128.0; 3]);
        assert_eq!(m.input.tensor_len(), 3 * 260 * 260);
        assert_eq!(
            m.output,
            OutputSpec {
                name: "embedding".into(),
                dim: 1280
            }
        );
    }

    #[test]
    fn optional_fields_default_and_integers_are_accepted_as_floats() {
        let text = GOOD
            .replace("sha256 = \"\"\n", "")
            .replace("synthetic = false\n", "")
            .replace("description = \"test\"\n", "")
            .replace(
                "[source]\npackage = \"x\"\nurl = \"https://example.invalid/model\"\n",
                "",
            )
            .replace("mean = [127.0, 127.0, 127.0]", "mean = [127, 127, 127]");
        let m = parse(&text).unwrap();
        assert!(m.source.is_empty());
        assert_eq!(m.description, "");
        assert_eq!(m.input.mean, [127.0; 3]);
    }

    #[test]
    fn sha256_is_normalised_and_checked_for_shape() {
        let hex = "AB".repeat(32);
        let m = parse(&GOOD.replace("sha256 = \"\"", &format!("sha256 = \"{hex}\""))).unwrap();
        assert_eq!(m.sha256, Some("ab".repeat(32)));
        assert!(reason(&GOOD.replace("sha256 = \"\"", "sha256 = \"abc\"")).starts_with("sha256:"));
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let cases = [
            ("layout = \"NCHW\"", "layout = \"NHWC\"", "input.layout"),
            ("size = 260", "size = 0", "input.size"),
            (
                "resize_shorter = 297",
                "resize_shorter = 200",
                "input.resize_shorter",
            ),
            (
                "interpolation = \"bicubic\"",
                "interpolation = \"lanczos\"",
                "input.interpolation",
            ),
            ("color = \"RGB\"", "color = \"BGR\"", "input.color"),
            (
                "mean = [127.0, 127.0, 127.0]",
                "mean = [127.0, 127.0]",
                "input.mean",
            ),
            (
                "std = [128.0, 128.0, 128.0]",
                "std = [128.0, 0.0, 128.0]",
                "input.std[1]",
            ),
            (
                "std = [128.0, 128.0, 128.0]",
                "std = [128.0, nan, 128.0]",
                "input.std[1]",
            ),
            ("dim = 1280", "dim = 0", "output.dim"),
            ("name = \"embedding\"", "name = \"\"", "output.name"),
        ];
        for (from, to, field) in cases {
            let r = reason(&GOOD.replace(from, to));
            assert!(r.starts_with(field), "{to:?}: {r}");
        }
    }

    #[test]
    fn rejects_unknown_and_missing_keys() {
        let r = reason(&GOOD.replace("resize_shorter = 297", "resize_shortr = 297"));
        assert!(r.contains("resize_shortr"), "{r}");
        let r = reason(&GOOD.replace("dim = 1280\n", ""));
        assert!(r.contains("dim"), "{r}");
        let r = reason(&GOOD.replace("size = 260", "size = \"260\""));
        assert!(r.contains("size"), "{r}");
    }

    #[test]
    fn load_reports_a_missing_file() {
        let err = ModelManifest::load(Path::new("/nonexistent/m.toml")).unwrap_err();
        assert!(
            matches!(&err, EncoderError::Manifest { path, .. } if path == Path::new("/nonexistent/m.toml")),
            "{err:?}"
        );
    }

    /// TOML spelling of an arbitrary f64, including the non-finite ones.
    fn toml_float(v: f64) -> String {
        if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 { "inf".into() } else { "-inf".into() }
        } else {
            format!("{v:?}")
        }
    }

    fn toml_floats(vs: &[f64]) -> String {
        let items: Vec<String> = vs.iter().map(|v| toml_float(*v)).collect();
        format!("[{}]", items.join(", "))
    }

    fn any_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            -300.0f64..300.0,
            Just(0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(1e300),
            proptest::num::f64::ANY,
        ]
    }

    proptest! {
        #[test]
        fn numeric_fields_validate_or_name_the_field(
            size in prop_oneof![-5i64..600, Just(i64::MAX), Just(4097)],
            resize_shorter in prop_oneof![-5i64..700, Just(i64::MIN), Just(5000)],
            mean in proptest::collection::vec(any_float(), 0..5),
            std in proptest::collection::vec(any_float(), 0..5),
            dim in -3i64..3000,
        ) {
            let text = GOOD
                .replace("size = 260", &format!("size = {size}"))
                .replace("resize_shorter = 297", &format!("resize_shorter = {resize_shorter}"))
                .replace("mean = [127.0, 127.0, 127.0]", &format!("mean = {}", toml_floats(&mean)))
                .replace("std = [128.0, 128.0, 128.0]", &format!("std = {}", toml_floats(&std)))
                .replace("dim = 1280", &format!("dim = {dim}"));

            let max = i64::from(MAX_INPUT_SIDE);
            let size_ok = (1..=max).contains(&size);
            let shorter_ok = size_ok && (size..=max).contains(&resize_shorter);
            let finite32 = |v: f64| (v as f32).is_finite();
            let mean_ok = mean.len() == 3 && mean.iter().all(|&v| finite32(v));
            let std_ok = std.len() == 3 && std.iter().all(|&v| finite32(v) && (v as f32) > 0.0);
            let dim_ok = dim > 0;

            match parse(&text) {
                Ok(m) => {
                    prop_assert!(size_ok && shorter_ok && mean_ok && std_ok && dim_ok);
                    prop_assert!(m.input.resize_shorter >= m.input.size);
                    prop_assert!(m.input.std.iter().all(|s| *s > 0.0 && s.is_finite()));
                }
                Err(EncoderError::Manifest { reason, .. }) => {
                    let named: Vec<&str> = [
                        (!size_ok, "input.size"),
                        (!shorter_ok, "input.resize_shorter"),
                        (!mean_ok, "input.mean"),
                        (!std_ok, "input.std"),
                        (!dim_ok, "output.dim"),
                    ]
                    .into_iter()
                    .filter(|(bad, _)| *bad)
                    .map(|(_, field)| field)
                    .collect();
                    prop_assert!(
                        named.iter().any(|field| reason.starts_with(field)),
                        "reason {reason:?} names none of the invalid fields {named:?}"
                    );
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }
}
