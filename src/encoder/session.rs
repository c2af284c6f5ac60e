//! ONNX Runtime glue: loading the shared library once per process, and one
//! model session per worker thread.
//!
//! The library is loaded with `ort::init_from`, which reports a missing or
//! incompatible file as an error (the environment-variable route panics). ONNX
//! Runtime allows one environment per process and `ort` keeps the first library it
//! loaded, so the loaded path is remembered: asking for the same library again
//! reuses the environment, asking for another one is an error rather than a
//! silent use of the first.
//!
//! Each worker owns a `Session` (running one needs `&mut`), so workers never
//! contend on a lock; the model is checked against the manifest when the session
//! is built, so a mismatched model fails at start-up, not on the first request.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};
use parking_lot::Mutex;

use super::error::{EncoderError, ort_err};
use super::manifest::ModelManifest;

/// The process's ONNX Runtime, once loaded.
struct Runtime {
    /// Canonical path of the loaded library; `ort` cannot load a second one.
    library: PathBuf,
    /// `None` while the library is loaded but building the environment failed;
    /// the next `load` retries the build.
    env: Option<Environment>,
}

/// A mutex rather than a `OnceLock`: a failed first load (wrong path in the
/// config) must leave the slot empty so that a corrected retry can succeed.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Loads ONNX Runtime from `library` (once per process) and returns its environment.
pub(crate) fn environment(library: &Path) -> Result<Environment, EncoderError> {
    let lib_err = |reason: String| EncoderError::Library {
        path: library.to_owned(),
        reason,
    };
    let canonical = library
        .canonicalize()
        .map_err(|err| lib_err(format!("cannot open it: {err}")))?;
    let mut slot = RUNTIME.lock();
    let runtime = match &mut *slot {
        Some(runtime) if runtime.library != canonical => {
            return Err(lib_err(format!(
                "this process already loaded ONNX Runtime from {}; only one library can be used per process",
                runtime.library.display()
            )));
        }
        Some(runtime) => runtime,
        None => {
            ort::init_from(&canonical).map_err(|err| lib_err(err.to_string()))?;
            tracing::info!(library = %canonical.display(), "loaded ONNX Runtime");
            slot.insert(Runtime {
                library: canonical,
                env: None,
            })
        }
    };
    if let Some(env) = &runtime.env {
        return Ok(env.clone());
    }
    let env = ort::init()
        .with_name("lookbook")
        .with_telemetry(false)
        .build()
        .map_err(|err| lib_err(format!("cannot create an environment: {}", err.message())))?;
    runtime.env = Some(env.clone());
    Ok(env)
}

/// One ONNX Runtime session plus what is needed to feed it.
#[derive(Debug)]
pub(crate) struct ModelSession {
    session: Session,
    input_name: String,
    output_name: String,
    /// `Some(1)` for a model exported with a fixed batch of one: batches are then
    /// run image by image. `None` when the batch dimension is dynamic.
    fixed_batch: Option<usize>,
    /// Values per output row the manifest promises (`output.dim`).
    dim: usize,
}

impl ModelSession {
    /// Builds a session for the model bytes and checks its inputs and outputs
    /// against `manifest`.
    pub(crate) fn new(
        env: &Environment,
        manifest: &ModelManifest,
        model: &[u8],
        intra_threads: usize,
    ) -> Result<Self, EncoderError> {
        let session = Session::builder(env)
            .map_err(ort_err("create a session builder"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort_err("set the optimisation level"))?
            .with_intra_threads(intra_threads)
            .map_err(ort_err("set the intra-op thread count"))?
            .with_inter_threads(1)
            .map_err(ort_err("set the inter-op thread count"))?
            .commit_from_memory(model)
            .map_err(|err| EncoderError::Model {
                path: manifest.onnx_path().to_owned(),
                reason: format!("ONNX Runtime cannot load it: {}", err.message()),
            })?;
        let fixed_batch = check_io(&session, manifest)?;
        Ok(Self {
            session,
            input_name: manifest.input.name.clone(),
            output_name: manifest.output.name.clone(),
            fixed_batch,
            dim: manifest.output.dim,
        })
    }

    /// Runs `n` images of `height x width` (NCHW, contiguous in `input`) and
    /// replaces `rows` with the raw output, `n` rows of `dim` values. The
    /// model sees at most `max_per_run` images at a time (a fixed-batch
    /// model exactly its batch); returns the number of model runs.
    pub(crate) fn run(
        &mut self,
        input: &[f32],
        n: usize,
        (height, width): (usize, usize),
        max_per_run: usize,
        rows: &mut Vec<f32>,
    ) -> Result<usize, EncoderError> {
        let per_image = 3 * height * width;
        if n == 0 || per_image == 0 || input.len() != n * per_image {
            return Err(EncoderError::Runtime(format!(
                "input of {} values is not {n} images of 3x{height}x{width}",
                input.len()
            )));
        }
        rows.clear();
        // ONNX Runtime's CPU arena keeps what the largest run needed for the
        // life of the session: one run of 32 images of the default model held
        // ~825 MB of peak RSS against ~190 MB for runs of 4, at the same
        // images/s (`lookbook bench-encode --batch 4` vs `--batch 32` under
        // `/usr/bin/time -v`). So large calls are cut into runs.
        let chunk = self
            .fixed_batch
            .unwrap_or_else(|| n.min(max_per_run.max(1)));
        let mut runs = 0;
        for part in input.chunks(chunk * per_image) {
            runs += 1;
            let images = part.len() / per_image;
            let tensor = TensorRef::from_array_view(([images, 3, height, width], part))
                .map_err(ort_err("wrap the input tensor"))?;
            let outputs = self
                .session
                .run(ort::inputs![self.input_name.as_str() => tensor])
                .map_err(ort_err("run the model"))?;
            let value = outputs.get(&self.output_name).ok_or_else(|| {
                EncoderError::Runtime(format!("the model returned no {:?}", self.output_name))
            })?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(ort_err("read the model output"))?;
            if data.len() != images * self.dim {
                return Err(EncoderError::Runtime(format!(
                    "output {:?} has shape {shape} for {images} images; expected {images}x{}",
                    self.output_name, self.dim
                )));
            }
            rows.extend_from_slice(data);
        }
        Ok(runs)
    }
}

/// Checks the model's signature against the manifest; returns the fixed batch
/// size if the model has one.
fn check_io(session: &Session, manifest: &ModelManifest) -> Result<Option<usize>, EncoderError> {
    let fail = |reason: String| EncoderError::Model {
        path: manifest.onnx_path().to_owned(),
        reason,
    };
    let (spec, out_spec) = (&manifest.input, &manifest.output);
    let names = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| o.name().to_owned())
            .collect::<Vec<_>>()
    };
    let [input] = session.inputs() else {
        return Err(fail(format!(
            "the encoder feeds exactly one input, the model has {:?}",
            names(session.inputs())
        )));
    };
    if input.name() != spec.name {
        return Err(fail(format!(
            "manifest input.name is {:?} but the model's input is {:?}",
            spec.name,
            input.name()
        )));
    }
    let in_shape = float_tensor_shape(input.dtype())
        .ok_or_else(|| fail(format!("input {:?} is not a float32 tensor", spec.name)))?;
    let side = i64::from(spec.size);
    let fits = |dim: i64, want: i64| dim < 0 || dim == want;
    let fixed_batch = match in_shape {
        [batch, channels, height, width]
            if fits(*channels, 3) && fits(*height, side) && fits(*width, side) =>
        {
            match *batch {
                b if b < 0 => None,
                1 => Some(1),
                b => {
                    return Err(fail(format!(
                        "input {:?} has a fixed batch size of {b}; export it with a dynamic batch dimension (or 1)",
                        spec.name
                    )));
                }
            }
        }
        other => {
            return Err(fail(format!(
                "input {:?} has shape {other:?}; the manifest needs [N, 3, {side}, {side}]",
                spec.name
            )));
        }
    };

    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == out_spec.name)
        .ok_or_else(|| {
            fail(format!(
                "manifest output.name is {:?} but the model's outputs are {:?}",
                out_spec.name,
                names(session.outputs())
            ))
        })?;
    let out_shape = float_tensor_shape(output.dtype()).ok_or_else(|| {
        fail(format!(
            "output {:?} is not a float32 tensor",
            out_spec.name
        ))
    })?;
    // [N, dim] or e.g. [N, dim, 1, 1]; dynamic dimensions are checked per run.
    let per_row = out_shape.get(1..).unwrap_or_default();
    if out_shape.len() < 2
        || per_row.iter().all(|d| *d >= 0) && per_row.iter().product::<i64>() != out_spec.dim as i64
    {
        return Err(fail(format!(
            "output {:?} has shape {out_shape:?}; the manifest promises [N, {}]",
            out_spec.name, out_spec.dim
        )));
    }
    Ok(fixed_batch)
}

fn float_tensor_shape(dtype: &ValueType) -> Option<&[i64]> {
    match dtype {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Some(shape),
        _ => None,
    }
}
