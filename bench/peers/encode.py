#!/usr/bin/env python3
"""Python peer for image encoding: what a Python user would run instead of lookbook's encoder.

Encodes product photos with the model a lookbook manifest names, the plain
Python way: Pillow decodes and resizes, numpy normalises, and an onnxruntime
InferenceSession (default SessionOptions except `intra_op_num_threads`) runs
the model. The preprocessing is exactly the manifest's, the same steps as
models/verify_efficientnet_lite2.py (which the Rust encoder also follows):

  1. decode, convert to 8-bit RGB;
  2. resize so the shorter side is `resize_shorter` (longer side =
     floor(longer * resize_shorter / shorter)) with Pillow's `interpolation`;
  3. centre-crop `size` x `size` at ((w - size) // 2, (h - size) // 2);
  4. value = (pixel - mean[c]) / std[c], float32, NCHW.

The spec is read from the manifest with tomllib, so any manifest works (the
fp32 and the int8 EfficientNet-Lite2 alike). The first image is checked
against verify_efficientnet_lite2.preprocess, so the two cannot drift apart.

Why: it is the baseline lookbook's encoder is compared against, and it shows
where the time goes. The files are read into memory first (file I/O is not
timed); then, for each batch size, one untimed warm-up batch, and all images
are encoded batch by batch, timing each stage with time.perf_counter:

  decode     Image.open on the bytes + convert("RGB") + load
  resize     resize + centre crop
  normalise  to the float32 NCHW batch tensor (incl. stacking the batch)
  inference  session.run

Example:
  .cache/bench-venv/bin/python bench/peers/encode.py \\
      --manifest models/efficientnet_lite2.toml \\
      --images ../shared/data/fashion-sample/images --limit 512 --batch 1,16 --out result.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
import verify_efficientnet_lite2 as reference  # noqa: E402  (the reference preprocessing)

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
STAGES = ("decode", "resize", "normalise", "inference")


class Preprocessor:
    """The manifest's preprocessing, split into the three timed stages."""

    def __init__(self, spec: dict):
        if spec.get("color", "RGB") != "RGB" or spec.get("layout", "NCHW") != "NCHW":
            raise SystemExit("only RGB / NCHW inputs are supported")
        self.size = int(spec["size"])
        self.shorter = int(spec["resize_shorter"])
        self.resample = RESAMPLE[spec["interpolation"]]
        self.mean = np.asarray(spec["mean"], dtype=np.float32)
        self.std = np.asarray(spec["std"], dtype=np.float32)

    @staticmethod
    def decode(data: bytes) -> Image.Image:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.load()  # convert() already forces decoding; load() makes it explicit
        return img

    def resize(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w <= h:
            new = (self.shorter, h * self.shorter // w)
        else:
            new = (w * self.shorter // h, self.shorter)
        img = img.resize(new, resample=self.resample)
        left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def normalise(self, imgs: list[Image.Image]) -> np.ndarray:
        """Images of size x size -> one float32 [N, 3, size, size] tensor."""
        hwc = np.stack([np.asarray(img, dtype=np.float32) for img in imgs])  # N,H,W,C 0..255
        nchw = ((hwc - self.mean) / self.std).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(nchw, dtype=np.float32)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def run_batch(session, input_name, output_name, pre: Preprocessor, blobs: list[bytes], split: dict) -> None:
    """Encodes one batch, adding each stage's time to `split`."""
    t0 = time.perf_counter()
    decoded = [pre.decode(b) for b in blobs]
    t1 = time.perf_counter()
    cropped = [pre.resize(img) for img in decoded]
    t2 = time.perf_counter()
    x = pre.normalise(cropped)
    t3 = time.perf_counter()
    session.run([output_name], {input_name: x})
    t4 = time.perf_counter()
    split["decode"] += t1 - t0
    split["resize"] += t2 - t1
    split["normalise"] += t3 - t2
    split["inference"] += t4 - t3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "models/efficientnet_lite2.toml")
    parser.add_argument("--images", type=Path, required=True, help="folder of .jpg photos")
    parser.add_argument("--limit", type=int, default=512, help="encode the first N photos, sorted by name")
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra_op_num_threads")
    parser.add_argument("--out", type=Path, help="result JSON (default: stdout only)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.threads < 1 or args.limit < 1:
        parser.error("--batch, --threads and --limit must be positive")

    manifest = tomllib.loads(args.manifest.read_text())
    spec, out_spec = manifest["input"], manifest["output"]
    onnx_path = args.manifest.parent / manifest["onnx"]
    pre = Preprocessor(spec)

    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    if not paths:
        raise SystemExit(f"no .jpg files in {args.images}")
    blobs = [p.read_bytes() for p in paths]  # file I/O is not part of what is timed

    # The split stages must give the reference preprocessing's tensor exactly.
    mine = pre.normalise([pre.resize(pre.decode(blobs[0]))])
    if not np.array_equal(mine, reference.preprocess(paths[0], spec)):
        raise SystemExit("preprocessing differs from models/verify_efficientnet_lite2.py")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    input_name, output_name = spec["name"], out_spec["name"]

    runs = []
    for batch in batches:
        groups = [blobs[i : i + batch] for i in range(0, len(blobs), batch)]
        run_batch(session, input_name, output_name, pre, groups[0], dict.fromkeys(STAGES, 0.0))  # warm-up
        split = dict.fromkeys(STAGES, 0.0)
        latencies = []
        start = time.perf_counter()
        for group in groups:
            t = time.perf_counter()
            run_batch(session, input_name, output_name, pre, group, split)
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
        run = {
            "batch": batch,
            "images": len(blobs),
            "seconds": round(seconds, 4),
            "images_per_second": round(len(blobs) / seconds, 2),
            "latency_ms": {"p50": round(percentile_ms(latencies, 50), 3), "p99": round(percentile_ms(latencies, 99), 3)},
            "split_seconds": {k: round(v, 4) for k, v in split.items()},
            "split_share": {k: round(v / seconds, 4) for k, v in split.items()},
        }
        runs.append(run)
        shares = " ".join(f"{k} {100 * v:.1f}%" for k, v in run["split_share"].items())
        print(
            f"{manifest['name']} batch {batch}: {run['images_per_second']:.1f} images/s, "
            f"p50 {run['latency_ms']['p50']:.1f} ms, p99 {run['latency_ms']['p99']:.1f} ms per call; {shares}",
            file=sys.stderr,
        )

    result = {
        "peer": "python onnxruntime+pillow",
        "versions": {
            "onnxruntime": ort.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "model": manifest["name"],
        "threads": args.threads,
        "runs": runs,
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
