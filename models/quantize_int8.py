#!/usr/bin/env python3
"""Statically quantize EfficientNet-Lite2 to int8 (QDQ, per-channel), calibrated on real product photos.

Why: int8 weights and activations cut the model to a quarter of its size and
let ONNX Runtime run the convolutions with integer kernels, which is the
usual way to make a CPU encoder faster. ONNX Runtime's own tooling does it:

  1. `quant_pre_process`: ORT's basic graph optimisation and ONNX shape
     inference, as onnxruntime recommends before quantizing (its symbolic shape
     inference is skipped: it needs sympy, which the venv does not have, and it
     is meant for transformer-style dynamic shapes; here only the batch is
     dynamic and ONNX shape inference resolves every tensor);
  2. `quantize_static` with `QuantFormat.QDQ`, per-channel symmetric QInt8
     weights, QUInt8 activations, activation ranges calibrated (MinMax) by
     running the fp32 model on `--count` photos.

Weights of the convolutions that ONNX Runtime runs as u8s8 GEMMs (the stem and
every 1x1 conv: all but the depthwise ones) are reduced to 7 bits
(`reduce_range`). On x86 CPUs without VNNI (this project's AVX2 EPYC) those
GEMMs pair products with PMADDUBSW, which saturates at int16 when 8-bit
weights meet large activations (255 x 127 x 2 > 32767); measured here, full
8-bit weights drop precision@10 by 0.017 and 7-bit weights by 0.005. The
depthwise convolutions go through a different kernel that showed no
saturation: giving them back their 8 bits improved the embeddings (0.004 below
fp32). u8u8 (`--weight-type uint8`) avoids the saturation too, but ran about
9x slower than u8s8 here. Percentile and Entropy
calibration measured no better than MinMax.

Calibration photos: the `.jpg` files of `--calibration`, sorted by numeric id,
every (n // count)-th one starting from the first, the first `count` of those:
deterministic, and spread over the whole catalogue. Each is preprocessed
exactly as the fp32 pipeline does it (models/verify_efficientnet_lite2.py's
`preprocess`, driven by the fp32 manifest), and they are fed one at a time.

The output is deterministic for a given set of photos, onnxruntime and onnx
version (checked: repeated runs give the same sha256), so the manifest can pin
its sha256.

Usage (defaults are the shipped choice; the other options are for trying alternatives):
  .cache/venv/bin/python models/quantize_int8.py \\
      --calibration ../shared/data/fashion-sample/images --count 200 \\
      --output models/efficientnet_lite2_int8.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import tomllib
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

MODELS = Path(__file__).resolve().parent
sys.path.insert(0, str(MODELS))
from verify_efficientnet_lite2 import preprocess  # noqa: E402  (the one preprocessing)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
# Photos per calibration pass: the calibrator keeps every intermediate tensor of a pass
# in memory (about 90 MB per photo here), so passes are kept small.
CHUNK = 20


def calibration_photos(folder: Path, count: int) -> list[Path]:
    """`count` photos spread evenly over the folder, by numeric id (deterministic)."""
    photos = sorted(folder.glob("*.jpg"), key=lambda p: (int(p.stem) if p.stem.isdigit() else -1, p.name))
    if len(photos) < count:
        raise SystemExit(f"{folder} has {len(photos)} photos, fewer than --count {count}")
    step = len(photos) // count
    return photos[::step][:count]


class PhotoReader(CalibrationDataReader):
    """Feeds the preprocessed photos one by one; supports the strided (chunked) calibration."""

    def __init__(self, photos: list[Path], spec: dict):
        self.name = spec["name"]
        self.tensors = [preprocess(p, spec) for p in photos]
        self.set_range(0, len(self.tensors))

    def __len__(self) -> int:
        return len(self.tensors)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.tensors[start_index:end_index])

    def get_next(self):
        x = next(self.pending, None)
        return None if x is None else {self.name: x}


def depthwise_weights(model_path: Path) -> list[str]:
    """Weight initializers of the depthwise convolutions (Conv with group > 1)."""
    model = onnx.load(str(model_path))
    names = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            names.append(node.input[1])
    return names


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=MODELS / "efficientnet_lite2.toml", help="the fp32 model")
    parser.add_argument("--calibration", type=Path, required=True, help="folder of .jpg photos")
    parser.add_argument("--count", type=int, default=200, help="calibration photos")
    parser.add_argument("--output", type=Path, default=MODELS / "efficientnet_lite2_int8.onnx")
    parser.add_argument("--method", choices=sorted(METHODS), default="minmax", help="activation calibration")
    parser.add_argument("--weight-type", choices=sorted(WEIGHT_TYPES), default="int8")
    parser.add_argument(
        "--reduce-range",
        choices=("gemm", "all", "none"),
        default="gemm",
        help="7-bit weights for: the convolutions run as u8s8 GEMMs (all but depthwise; default), "
        "all of them, or none",
    )
    parser.add_argument("--exclude", default="", help="comma-separated node names to leave in float")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    parser.add_argument("--cache", type=Path, help="calibration-range cache (JSON), reused when present")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be positive")

    manifest = tomllib.loads(args.manifest.read_text())
    spec = manifest["input"]
    fp32 = args.manifest.parent / manifest["onnx"]
    photos = calibration_photos(args.calibration, args.count)
    print(f"quantize: calibrating on {len(photos)} photos ({photos[0].name} ... {photos[-1].name})", file=sys.stderr)

    ort.set_default_logger_severity(3)  # no optimizer chatter from the calibration sessions
    reader = PhotoReader(photos, spec) if not (args.cache and args.cache.is_file()) else None
    with tempfile.TemporaryDirectory(prefix="lookbook-quant.") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        overrides = {}
        if args.reduce_range == "gemm":
            overrides = {w: [{"axis": 0, "reduce_range": False}] for w in depthwise_weights(prepared)}
        out_tmp = args.output.with_name(args.output.name + f".tmp{os.getpid()}")
        quantize_static(
            str(prepared),
            str(out_tmp),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            per_channel=not args.per_tensor,
            reduce_range=args.reduce_range != "none",
            activation_type=QuantType.QUInt8,
            weight_type=WEIGHT_TYPES[args.weight_type],
            calibrate_method=METHODS[args.method],
            nodes_to_exclude=[n for n in args.exclude.split(",") if n],
            extra_options={
                # Calibrate in passes of CHUNK photos (bounded memory; same result for MinMax,
                # histograms are merged across passes for Percentile / Entropy).
                "CalibStridedMinMax": CHUNK if args.count % CHUNK == 0 else None,
                # Asymmetric ranges for every method (Percentile defaults to symmetric, which
                # would waste half the uint8 range on the non-negative ReLU6 outputs).
                "CalibTensorRangeSymmetric": False,
                "TensorQuantOverrides": overrides,
            },
            calibration_cache_path=str(args.cache) if args.cache else None,
        )
        os.replace(out_tmp, args.output)
    print(f"quantize: wrote {args.output} sha256 {sha256_of(args.output)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
