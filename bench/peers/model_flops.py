#!/usr/bin/env python3
"""Count the FLOPs of an ONNX image model, per image, from its graph alone.

Why: throughput figures (images/s) mean more next to the work each image
costs, and the count must not depend on how a model is stored: the fp32
EfficientNet-Lite2 and its QDQ int8 variant (which keeps the Conv / Gemm
nodes, fed by DequantizeLinear) must give the same number.

Convention: FLOPs = 2 x multiply-accumulates (MACs) of the layers that
multiply: Conv (depthwise and grouped included, via the weight shape
[Cout, Cin/group, kh, kw]), ConvInteger, QLinearConv, com.microsoft FusedConv,
Gemm, MatMul, MatMulInteger, QLinearMatMul. Bias additions, activations,
residual Adds and pooling are not counted (they are < 1% here). Papers
(EfficientNet, MobileNet) usually quote "FLOPs" that are really MACs, so the
output gives both.

Shapes come from onnx shape inference, with the batch dimension set to
`--batch` (default 1) first, whether the model's input is fixed or symbolic;
the result is then divided by the batch, i.e. it is always per image.

Example:
  .cache/bench-venv/bin/python bench/peers/model_flops.py --model models/efficientnet_lite2.onnx --out flops.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import onnx
from onnx import numpy_helper, shape_inference

# Convolution op type -> index of its weight input.
CONV_OPS = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}
# Matrix-product op type -> index of its left input (whose last dimension is the reduced one).
MATMUL_OPS = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}


def set_batch(model: onnx.ModelProto, batch: int) -> None:
    """Fixes the first dimension of every graph input to `batch`."""
    initializers = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch


def known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """name -> static shape, for every tensor whose shape inference could fix."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def count(model: onnx.ModelProto, batch: int) -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
    """Returns (MACs per image, MACs per op type, nodes per op type, convolution MACs per kind)."""
    set_batch(model, batch)
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = known_shapes(model)
    # A DequantizeLinear output has its input's shape; propagate in case inference left it out.
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])

    def shape(name: str, node: onnx.NodeProto) -> list[int]:
        if name not in shapes:
            raise SystemExit(f"{node.op_type} node {node.name!r}: no static shape for {name!r}")
        return shapes[name]

    macs: dict[str, int] = defaultdict(int)
    nodes: dict[str, int] = defaultdict(int)
    conv_kinds: dict[str, int] = defaultdict(int)  # depthwise / pointwise (1x1) / other
    for node in model.graph.node:
        op = node.op_type
        if op in CONV_OPS:
            # Each output element of a (grouped) convolution takes Cin/group * kh * kw MACs, so
            # MACs = N * Hout * Wout * (Cout * Cin/group * kh * kw) = N * spatial(out) * size(weight).
            weight = shape(node.input[CONV_OPS[op]], node)
            out = shape(node.output[0], node)
            n = out[0] * math.prod(out[2:]) * math.prod(weight)
            if attr(node, "group", 1) > 1 and weight[1] == 1:
                conv_kinds["depthwise"] += n
            elif weight[2:] == [1, 1]:
                conv_kinds["pointwise"] += n
            else:
                conv_kinds["other"] += n
        elif op == "Gemm":
            a, b = shape(node.input[0], node), shape(node.input[1], node)
            m = a[1] if attr(node, "transA", 0) else a[0]
            k = a[0] if attr(node, "transA", 0) else a[1]
            cols = b[0] if attr(node, "transB", 0) else b[1]
            n = m * k * cols
        elif op in MATMUL_OPS:
            k = shape(node.input[MATMUL_OPS[op]], node)[-1]
            n = math.prod(shape(node.output[0], node)) * k  # each output element: one length-k dot product
        else:
            continue
        macs[op] += n
        nodes[op] += 1
    total = sum(macs.values())
    if total % batch:
        raise SystemExit(f"MACs {total} not divisible by the batch {batch}")
    per_image = lambda d: {k: v // batch for k, v in sorted(d.items())}  # noqa: E731
    return total // batch, per_image(macs), dict(sorted(nodes.items())), per_image(conv_kinds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file")
    parser.add_argument("--batch", type=int, default=1, help="batch size to infer shapes with (result is per image)")
    parser.add_argument("--out", type=Path, help="result JSON (default: stdout only)")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be positive")

    model = onnx.load(str(args.model))
    macs, by_op, nodes, conv_kinds = count(model, args.batch)
    result = {
        "model": str(args.model),
        "macs": macs,
        "flops": 2 * macs,
        "by_op": {op: {"nodes": nodes[op], "macs": m, "flops": 2 * m} for op, m in by_op.items()},
        "conv_macs_by_kind": conv_kinds,
        "convention": "flops = 2 x MACs of Conv/Gemm/MatMul (and their integer forms), per image; "
        "biases, activations, adds and pooling not counted",
    }
    print(f"{args.model}: {macs / 1e9:.4f} GMACs = {2 * macs / 1e9:.4f} GFLOPs per image", file=sys.stderr)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
