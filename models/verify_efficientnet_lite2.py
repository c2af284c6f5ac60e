#!/usr/bin/env python3
"""Check a converted image model on real photos, and write the fixtures the Rust tests replay.

Classifies two photos that scikit-image ships (chelsea: a tabby cat; coffee: a
cup of espresso) with Python onnxruntime and fails unless both top-1 classes
are right. That catches every conversion mistake that matters (wrong padding,
BN folding, channel order, normalisation) while needing no data set.

Preprocessing is read from the model's manifest, not hard-coded, so this script
checks the manifest as much as the model; the Rust encoder implements the same
steps from the same fields:
  1. decode, convert to RGB (8-bit);
  2. resize so the shorter side is `resize_shorter`, the longer side being
     floor(longer * resize_shorter / shorter), with Pillow's `interpolation`;
  3. centre-crop `size` x `size`, left = (width - size) // 2, top = (height - size) // 2;
  4. value = (pixel - mean[c]) / std[c] with pixel in 0..255; NCHW float32.

It then writes, per image, the preprocessed input tensor and the `embedding`
output as raw little-endian f32 files plus expected.json, so the Rust side can
check that its own ONNX Runtime run reproduces the embedding (to 1e-4) without
depending on its image decoder matching Pillow bit for bit.

Defaults are for EfficientNet-Lite2; `--manifest models/resnet50.toml` checks
an exported ResNet50 the same way (any ImageNet-1k classifier with a `logits`
output works).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

MODELS = Path(__file__).resolve().parent
ROOT = MODELS.parent

# ImageNet-1k class indices: a few names, for readable output only.
CLASS_NAMES = {
    281: "tabby cat",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
    504: "coffee mug",
    967: "espresso",
    968: "cup",
}
# Which top-1 classes count as right. Chelsea is a tabby; the ImageNet cat
# classes are notoriously confusable, so any domestic cat class is accepted.
EXPECTED = {
    "chelsea": {281, 282, 283, 284, 285},
    "coffee": {967},
}
LOGITS = "logits"
TOLERANCE = 1e-4


def preprocess(path: Path, spec: dict) -> np.ndarray:
    size = int(spec["size"])
    shorter = int(spec["resize_shorter"])
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[spec["interpolation"]]
    if spec.get("color", "RGB") != "RGB" or spec.get("layout", "NCHW") != "NCHW":
        raise SystemExit("only RGB / NCHW inputs are supported")
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        if w <= h:
            new = (shorter, h * shorter // w)
        else:
            new = (w * shorter // h, shorter)
        img = img.resize(new, resample=resample)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        pixels = np.asarray(img, dtype=np.float32)  # HWC, 0..255
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    chw = ((pixels - mean) / std).transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=MODELS / "efficientnet_lite2.toml")
    parser.add_argument(
        "--images", type=Path, default=ROOT / ".cache/fixtures", help="folder with chelsea.png, coffee.png"
    )
    parser.add_argument("--out", type=Path, help="fixture folder (default: .cache/fixtures/<manifest stem>)")
    args = parser.parse_args()

    manifest = tomllib.loads(args.manifest.read_text())
    if manifest.get("synthetic", False):
        raise SystemExit(f"{args.manifest} is a synthetic model: nothing to classify")
    onnx_path = args.manifest.parent / manifest["onnx"]
    spec, out_spec = manifest["input"], manifest["output"]
    out_dir = args.out or ROOT / ".cache/fixtures" / args.manifest.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    # expected.json is written last and only on success: setup.sh treats it as the "verified" stamp.
    (out_dir / "expected.json").unlink(missing_ok=True)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    emb_name, dim = out_spec["name"], int(out_spec["dim"])

    ok = True
    images = {}
    batch = []
    for stem, accepted in EXPECTED.items():
        x = preprocess(args.images / f"{stem}.png", spec)
        embedding, logits = session.run([emb_name, LOGITS], {spec["name"]: x})
        if embedding.shape != (1, dim) or logits.shape != (1, 1000):
            raise SystemExit(f"unexpected output shapes {embedding.shape}, {logits.shape}")
        probs = softmax(logits[0].astype(np.float64))
        top5 = [int(i) for i in np.argsort(-logits[0], kind="stable")[:5]]
        right = top5[0] in accepted
        ok &= right
        print(f"{stem}: top-1 {'OK' if right else 'WRONG'} (accepted: {sorted(accepted)})")
        for rank, cls in enumerate(top5, 1):
            print(f"  {rank}. class {cls:3d} p={probs[cls]:.4f}  {CLASS_NAMES.get(cls, '')}".rstrip())

        write_atomic(out_dir / f"{stem}.input.f32", x.astype("<f4").tobytes())
        write_atomic(out_dir / f"{stem}.embedding.f32", embedding[0].astype("<f4").tobytes())
        images[stem] = {
            "source": f"skimage/data/{stem}.png",
            "input": f"{stem}.input.f32",
            "embedding": f"{stem}.embedding.f32",
            "top1": top5[0],
            "top5": top5,
        }
        batch.append((x, embedding))

    # The Rust side batches; make sure a batch of two gives the single-image answers.
    xs = np.concatenate([x for x, _ in batch])
    (batched,) = session.run([emb_name], {spec["name"]: xs})
    drift = max(float(np.abs(batched[i] - e[0]).max()) for i, (_, e) in enumerate(batch))
    print(f"batch of {len(batch)} vs single runs: max |diff| {drift:.2e}")
    ok &= drift <= TOLERANCE

    expected = {
        "model": manifest["name"],
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "input_name": spec["name"],
        "input_shape": [1, 3, int(spec["size"]), int(spec["size"])],
        "output_name": emb_name,
        "embedding_shape": [dim],
        "dtype": "f32le",
        "tolerance": TOLERANCE,
        "images": images,
    }
    if not ok:
        print("VERIFICATION FAILED", file=sys.stderr)
        return 1
    write_atomic(out_dir / "expected.json", (json.dumps(expected, indent=2, sort_keys=True) + "\n").encode())
    print(f"fixtures written to {out_dir.relative_to(ROOT) if out_dir.is_relative_to(ROOT) else out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
