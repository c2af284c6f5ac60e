"""Generate tiny_gap.onnx, the encoder's test fixture (a few hundred bytes).

The graph is GlobalAveragePool -> Flatten, so for an input of shape [N, 3, S, S]
the output `embedding` [N, 3] is the per-channel mean of each image. That makes
the expected embedding of a generated test image computable by hand (a solid
colour c gives (c - mean) / std per channel), which is why the fixture is a
pooling graph and not a random network. The batch and spatial dimensions are
symbolic so that batching and other input sizes can be exercised too.

Re-generate with:  python3 make_tiny_model.py   (needs `pip install onnx`)
"""

import pathlib

import onnx
from onnx import TensorProto, helper

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny_gap", [inp], [out])
    model = helper.make_model(
        graph,
        producer_name="lookbook-make_tiny_model",
        opset_imports=[helper.make_opsetid("", 13)],
    )
    # IR version 8 is read by every ONNX Runtime release we may be paired with.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    target = HERE / "tiny_gap.onnx"
    target.write_bytes(model.SerializeToString())
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
