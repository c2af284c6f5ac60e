#!/usr/bin/env python3
"""Write a ResNet50-architecture ONNX model with seeded random weights.

NOT a trained model. It exists so that the service's shape handling, batching
and speed can be tested on the real ResNet50 v1.5 topology (and its 2048-d
embedding) without the ImageNet weights, which no package registry reachable
here ships. Topology as torchvision's resnet50: 7x7/2 stem, 3x3/2 max pool,
bottleneck stages of 3-4-6-3 blocks (stride on the 3x3 conv, "v1.5"), batch
norm folded into conv biases, ReLU, global average pool -> `embedding`
[N,2048], fully connected -> `logits` [N,1000]. Input `input` [N,3,224,224].

Weights are He-normal from numpy's legacy RandomState, whose stream numpy
guarantees not to change, so the file is byte-for-byte reproducible and its
manifest can pin the sha256. After writing, the model is run once in Python
onnxruntime to check the output shapes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
IMAGE_SIZE = 224
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
EMBEDDING = 2048
NUM_CLASSES = 1000
# Without batch norm, each residual add grows the activations; scaling each
# block's last conv down keeps them in a float-friendly range through 16 blocks.
RESIDUAL_SCALE = 0.2
OPSET = 17
IR_VERSION = 8


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int, scale: float = 1.0) -> str:
        std = np.sqrt(2.0 / (cin * k * k)) * scale
        w = (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.01).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, name + ".weight"))
        self.inits.append(numpy_helper.from_array(b, name + ".bias"))
        p = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, name + ".weight", name + ".bias"],
                [name],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[p, p, p, p],
            )
        )
        return name

    def relu(self, x: str) -> str:
        y = x + ".relu"
        self.nodes.append(helper.make_node("Relu", [x], [y], name=y))
        return y

    def bottleneck(self, x: str, name: str, cin: int, width: int, stride: int) -> str:
        cout = width * EXPANSION
        y = self.relu(self.conv(x, name + ".conv1", cin, width, 1, 1))
        y = self.relu(self.conv(y, name + ".conv2", width, width, 3, stride))
        y = self.conv(y, name + ".conv3", width, cout, 1, 1, RESIDUAL_SCALE)
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = self.conv(x, name + ".downsample", cin, cout, 1, stride)
        add = name + ".add"
        self.nodes.append(helper.make_node("Add", [y, shortcut], [add], name=add))
        return self.relu(add)

    def build(self) -> onnx.ModelProto:
        x = self.relu(self.conv("input", "conv1", 3, 64, 7, 2))
        self.nodes.append(
            helper.make_node(
                "MaxPool", [x], ["maxpool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
            )
        )
        x, cin = "maxpool", 64
        for s, (width, blocks, stride) in enumerate(STAGES, 1):
            for i in range(blocks):
                x = self.bottleneck(x, f"layer{s}.{i}", cin, width, stride if i == 0 else 1)
                cin = width * EXPANSION
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pool"], ["embedding"], name="flatten", axis=1))
        fc_w = (self.rng.standard_normal((NUM_CLASSES, EMBEDDING)) * np.sqrt(1.0 / EMBEDDING)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(fc_w, "fc.weight"))
        self.inits.append(numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "fc.bias"))
        self.nodes.append(
            helper.make_node("Gemm", ["embedding", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)
        )

        graph = helper.make_graph(
            self.nodes,
            "resnet50_random",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [
                helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING]),
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
            ],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="lookbook models/make_resnet50_random.py",
            producer_version="1",
            doc_string=f"ResNet50 v1.5 topology with RANDOM weights (seed {SEED}): NOT a trained model; shape and speed tests only.",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def check(path: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    embedding, logits = session.run(["embedding", "logits"], {"input": x})
    if embedding.shape != (2, EMBEDDING) or logits.shape != (2, NUM_CLASSES):
        raise SystemExit(f"wrong output shapes {embedding.shape}, {logits.shape}")
    if not (np.isfinite(embedding).all() and np.isfinite(logits).all()):
        raise SystemExit("non-finite outputs")
    if np.allclose(embedding[0], embedding[1]):
        raise SystemExit("embedding does not depend on the input")
    print(
        f"onnxruntime check: embedding {list(embedding.shape)}, logits {list(logits.shape)}, "
        f"embedding range [{embedding.min():.3g}, {embedding.max():.3g}]"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("resnet50_random.onnx"))
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime shape check")
    args = parser.parse_args()

    data = Builder(SEED).build().SerializeToString()
    tmp = args.output.with_name(args.output.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    if not args.no_check:
        check(tmp)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
