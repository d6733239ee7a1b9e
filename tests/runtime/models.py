"""Small models for the runtime tests: a text classifier with an embedding, an MLP, a deep CNN."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def text_classifier(vocab: int = 50, hidden: int = 8, classes: int = 6, seed: int = 0) -> onnx.ModelProto:
    """input_ids[batch, seq] -> Gather(embedding) -> masked mean -> MatMul -> logits[batch, classes]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "embedding"),
        numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"], name="embed"),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT, name="mask_cast"),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"], name="apply_mask"),
        helper.make_node("ReduceMean", ["masked", "axis1"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "w1"], ["h"], name="dense"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="dense_bias"),
        helper.make_node("Tanh", ["hb"], ["act"], name="activation"),
        helper.make_node("MatMul", ["act", "w2"], ["logits"], name="classifier"),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    graph = helper.make_graph(
        nodes, "text_classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def fixed_reshape() -> onnx.ModelProto:
    """x[N, 4] -> Reshape to [2, 4]: ONNX Runtime fails at run time for any N but 2."""
    return onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[2, 4] y) {
            shape = Constant<value = int64[2] {2, 4}>()
            y = Reshape(x, shape) }""")


def perturbed(model: onnx.ModelProto, initializer: str, delta: float = 1.0) -> onnx.ModelProto:
    """A copy with one element of one weight changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name == initializer:
            array = numpy_helper.to_array(tensor).copy()
            array.flat[0] += delta
            tensor.CopyFrom(numpy_helper.from_array(array, initializer))
    return copy


def hardswish_stack(blocks: int = 16, channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x[1, C, 32, 32] -> `blocks` x (3x3 Conv, hardswish written as Add/Clip/Mul/Div), paddle2onnx's
    MobileNetV3 block: its outputs grow to ~750, where fp32's own rounding noise exceeds atol."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array(value, np.float32), name)
             for name, value in (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    nodes, x = [], "x"
    for i in range(blocks):
        weight = rng.standard_normal((channels, channels, 3, 3)) * 1.8 / np.sqrt(channels * 9)
        inits += [numpy_helper.from_array(weight.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", [f"c{i}", "three"], [f"a{i}"]),
                  helper.make_node("Clip", [f"a{i}", "zero", "six"], [f"r{i}"]),
                  helper.make_node("Mul", [f"c{i}", f"r{i}"], [f"m{i}"]),
                  helper.make_node("Div", [f"m{i}", "six"], [f"h{i}"])]
        x = f"h{i}"
    graph = helper.make_graph(nodes, "hardswish_stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 32, 32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 32, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
