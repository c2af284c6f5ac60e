#!/usr/bin/env python3
"""Export torchvision's ResNet50 (IMAGENET1K_V1) to models/resnet50.onnx.

CANNOT RUN IN THE LOOKBOOK SANDBOX: it needs torch + torchvision (gigabytes)
and downloads resnet50-0676ba61.pth from download.pytorch.org, which no
package registry mirrors. Run it on a machine with that network access:

    python3 -m venv /tmp/export && /tmp/export/bin/pip install torch torchvision onnx onnxruntime pillow
    /tmp/export/bin/python models/export_resnet50.py
    # then, with the photos from `bash models/setup.sh` in .cache/fixtures/:
    /tmp/export/bin/python models/verify_efficientnet_lite2.py --manifest models/resnet50.toml

and point the service's model manifest setting at models/resnet50.toml. It
prints the full sha256 of the weights and of the .onnx; paste them into
models/resnet50.toml ([source].sha256 and sha256) to have them checked.

The exported graph matches the manifest's contract: input `input`
[N,3,224,224] float32 NCHW, ImageNet mean/std normalised; outputs `embedding`
[N,2048] (global-average-pooled features, i.e. the network with fc removed,
flattened, not normalised) and `logits` [N,1000].

Not tested here (no torch); written against torch >= 2.5 / torchvision >= 0.20.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

WEIGHTS_FILE = "resnet50-0676ba61.pth"
SHA256_PREFIX = "0676ba61"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("resnet50.onnx"))
    args = parser.parse_args()

    try:
        import numpy as np
        import onnxruntime as ort
        import torch
        import torchvision
        from torchvision.models import ResNet50_Weights
    except ImportError as e:
        raise SystemExit(f"{e}: this recipe needs torch, torchvision, numpy and onnxruntime (see the docstring)")

    weights = ResNet50_Weights.IMAGENET1K_V1
    if not weights.url.endswith("/" + WEIGHTS_FILE):
        raise SystemExit(f"torchvision's IMAGENET1K_V1 is {weights.url}, expected {WEIGHTS_FILE}")
    # check_hash makes torch.hub verify the sha256 prefix in the file name.
    state = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    if not weights_sha256.startswith(SHA256_PREFIX):
        raise SystemExit(f"{path}: sha256 {weights_sha256} does not start with {SHA256_PREFIX}")

    class Encoder(torch.nn.Module):
        """ResNet50 returning the pooled features and, from them, the ImageNet logits."""

        def __init__(self) -> None:
            super().__init__()
            net = torchvision.models.resnet50()
            net.load_state_dict(state)
            self.fc = net.fc
            net.fc = torch.nn.Identity()
            self.features = net

        def forward(self, x):
            embedding = torch.flatten(self.features(x), 1)
            return embedding, self.fc(embedding)

    model = Encoder().eval()
    example = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref_embedding, ref_logits = model(example)
        torch.onnx.export(
            model,
            (example,),
            str(args.output),
            input_names=["input"],
            output_names=["embedding", "logits"],
            dynamic_axes={"input": {0: "N"}, "embedding": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter keeps the names and dynamic batch as given
        )

    session = ort.InferenceSession(str(args.output), providers=["CPUExecutionProvider"])
    embedding, logits = session.run(["embedding", "logits"], {"input": example.numpy()})
    if embedding.shape != (2, 2048) or logits.shape != (2, 1000):
        raise SystemExit(f"unexpected output shapes {embedding.shape}, {logits.shape}")
    diff = max(
        float(np.abs(embedding - ref_embedding.numpy()).max()),
        float(np.abs(logits - ref_logits.numpy()).max()),
    )
    if diff > 1e-3:
        raise SystemExit(f"onnxruntime differs from torch by {diff}")

    onnx_sha256 = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"wrote {args.output}; onnxruntime matches torch (max |diff| {diff:.2e})")
    print(f"weights {WEIGHTS_FILE} sha256 = {weights_sha256}   -> [source].sha256 in models/resnet50.toml")
    print(f"{args.output.name} sha256 = {onnx_sha256}   -> sha256 in models/resnet50.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
