"""ONNX models made trainable in PyTorch: each operator computes what ONNX Runtime computes (the round
trip at fp32 tolerance) and passes gradients to the weights; the trained weights go back into the
same graph; an operator that cannot be trained is named before anything runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.train.trainable import TrainableGraph, round_trip, unsupported_ops

MS = "com.microsoft"
rng = np.random.default_rng(0)


def _f(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _i(values) -> np.ndarray:
    return np.asarray(values, np.int64)


# (id, nodes, feeds, initializers (trained when float and more than one value), opset)
CASES = [
    ("conv-groups-asymmetric-pads", [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], strides=[2, 1],
                                                      group=2, dilations=[1, 2])],
     {"x": _f(2, 4, 9, 9)}, {"w": _f(6, 2, 3, 3), "b": _f(6)}, 20),
    ("conv-same-upper", [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
     {"x": _f(1, 3, 8, 7)}, {"w": _f(4, 3, 4, 4)}, 20),
    ("conv-1d", [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[2, 2])], {"x": _f(2, 3, 10)},
     {"w": _f(5, 3, 5), "b": _f(5)}, 20),
    ("conv-transpose", [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1],
                                         output_padding=[1, 1])], {"x": _f(1, 4, 5, 5)}, {"w": _f(4, 3, 3, 3), "b": _f(3)}, 20),
    ("gemm-trans", [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)], {"x": _f(3, 8)},
     {"w": _f(5, 8), "b": _f(5)}, 20),
    ("matmul-batched", [helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": _f(2, 3, 4, 8)}, {"w": _f(8, 6)}, 20),
    ("batchnorm-relu-maxpool-ceil", [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"]),
                                     helper.make_node("Relu", ["n"], ["r"]),
                                     helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                                      pads=[1, 1, 0, 0], ceil_mode=1)],
     {"x": _f(2, 3, 8, 8)}, {"s": _f(3), "b": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.5}, 20),
    ("avgpool-exclude-pad", [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 1, 2])],
     {"x": _f(1, 2, 6, 6)}, {}, 20),
    ("avgpool-include-pad", [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                              pads=[1, 1, 1, 1], count_include_pad=1)], {"x": _f(1, 2, 6, 6)}, {}, 20),
    ("global-pools", [helper.make_node("GlobalAveragePool", ["x"], ["a"]), helper.make_node("GlobalMaxPool", ["x"], ["m"]),
                      helper.make_node("Add", ["a", "m"], ["y"])], {"x": _f(2, 3, 5, 5)}, {}, 20),
    ("layernorm-gelu-softmax", [helper.make_node("LayerNormalization", ["x", "s", "b"], ["n"], epsilon=1e-6),
                                helper.make_node("Gelu", ["n"], ["g"], approximate="tanh"),
                                helper.make_node("Softmax", ["g"], ["y"], axis=1)],
     {"x": _f(2, 4, 8)}, {"s": _f(8), "b": _f(8)}, 20),
    ("softmax-opset-11-flattens", [helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": _f(2, 3, 4)}, {}, 11),
    ("group-instance-norm", [helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=2),
                             helper.make_node("InstanceNormalization", ["g", "s", "b"], ["y"])],
     {"x": _f(2, 4, 5, 5)}, {"s": _f(4), "b": _f(4)}, 21),
    ("activations", [helper.make_node("PRelu", ["x", "p"], ["a"]), helper.make_node("HardSigmoid", ["a"], ["b"]),
                     helper.make_node("Mul", ["a", "b"], ["c"]), helper.make_node("LeakyRelu", ["c"], ["d"], alpha=0.2),
                     helper.make_node("Softplus", ["d"], ["e"]), helper.make_node("Elu", ["e"], ["f"], alpha=0.5),
                     helper.make_node("Clip", ["f", "lo", "hi"], ["y"])],
     {"x": _f(3, 4)}, {"p": _f(4), "lo": np.float32(-0.5), "hi": np.float32(1.5)}, 20),
    ("reduce-argmax-topk", [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
                            helper.make_node("ReduceL2", ["x", "axes"], ["l"], keepdims=0),
                            helper.make_node("Add", ["m", "l"], ["s"]),
                            helper.make_node("TopK", ["s", "k"], ["y", "idx"], axis=-1),
                            helper.make_node("ArgMax", ["s"], ["arg"], axis=1, select_last_index=1),
                            helper.make_node("Cast", ["idx"], ["idx_float"], to=TensorProto.FLOAT),
                            helper.make_node("Cast", ["arg"], ["arg_float"], to=TensorProto.FLOAT)],
     {"x": _f(2, 5, 6)}, {"axes": _i([1]), "k": _i([3])}, 20),
    ("shapes-and-indexing", [helper.make_node("Shape", ["x"], ["shape"], start=0, end=2),
                             helper.make_node("Concat", ["shape", "minus"], ["target"], axis=0),
                             helper.make_node("Reshape", ["x", "target"], ["r"]),
                             helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 1]),
                             helper.make_node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
                             helper.make_node("Gather", ["s", "index"], ["g"], axis=1),
                             helper.make_node("Unsqueeze", ["g", "axes"], ["u"]),
                             helper.make_node("Expand", ["u", "wide"], ["e"]),
                             helper.make_node("Mul", ["e", "w"], ["y"])],
     {"x": _f(2, 3, 4, 2)}, {"minus": _i([-1]), "starts": _i([-1, 0]), "ends": _i([-9, 3]), "axes": _i([0, 2]),
                             "steps": _i([-2, 2]), "index": _i(-1), "wide": _i([1, 3, 1]), "w": _f(1, 1, 2)}, 20),
    ("split-pad-tile-where", [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
                              helper.make_node("Pad", ["a", "pads"], ["p"], mode="reflect"),
                              helper.make_node("Tile", ["b", "reps"], ["t"]),
                              helper.make_node("Greater", ["p", "t"], ["c"]),
                              helper.make_node("Where", ["c", "p", "w"], ["y"])],
     {"x": _f(2, 5, 4)}, {"sizes": _i([2, 3]), "pads": _i([0, 1, 0, 0, 0, 0]), "reps": _i([1, 1, 1]), "w": _f(2, 3, 4)}, 20),
    ("gather-elements-nd-scatter", [helper.make_node("GatherElements", ["x", "idx"], ["g"], axis=1),
                                    helper.make_node("GatherND", ["g", "nd"], ["n"]),
                                    helper.make_node("ScatterND", ["w", "sc", "n"], ["y"])],
     {"x": _f(3, 4)}, {"idx": _i([[0, 3], [1, -1], [2, 2]]), "nd": _i([[0], [2]]), "w": _f(4, 2), "sc": _i([[1], [3]])}, 20),
    ("resize-nearest-and-linear", [helper.make_node("Resize", ["x", "", "scales"], ["a"], mode="nearest",
                                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                                   helper.make_node("Resize", ["x", "", "", "sizes"], ["b"], mode="linear"),
                                   helper.make_node("Add", ["a", "b"], ["y"])],
     {"x": _f(1, 2, 4, 4)}, {"scales": np.array([1, 1, 2, 2], np.float32), "sizes": _i([1, 2, 8, 8])}, 20),
    ("depth-space-cumsum-einsum", [helper.make_node("DepthToSpace", ["x"], ["d"], blocksize=2),
                                   helper.make_node("SpaceToDepth", ["d"], ["s"], blocksize=2),
                                   helper.make_node("CumSum", ["s", "axis"], ["c"], exclusive=1, reverse=1),
                                   helper.make_node("Einsum", ["c", "w"], ["y"], equation="bchw,cd->bdhw")],
     {"x": _f(1, 8, 3, 3)}, {"axis": _i(1), "w": _f(8, 5)}, 20),
    ("lstm-bidirectional-peepholes", [helper.make_node("LSTM", ["x", "w", "r", "b", "", "h0", "c0", "p"],
                                                       ["y", "yh", "yc"], hidden_size=5, direction="bidirectional")],
     {"x": _f(6, 2, 3)}, {"w": _f(2, 20, 3) * 0.5, "r": _f(2, 20, 5) * 0.5, "b": _f(2, 40) * 0.1, "h0": _f(2, 2, 5),
                          "c0": _f(2, 2, 5), "p": _f(2, 15) * 0.1}, 20),
    ("ms-attention-masked", [helper.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain=MS, num_heads=2)],
     {"x": _f(2, 5, 8), "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)}, {"w": _f(8, 24) * 0.3,
                                                                                          "b": _f(24)}, 20),
    ("ms-multi-head-attention-bias", [helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["y"],
                                                       domain=MS, num_heads=2, scale=0.3)],
     {"q": _f(2, 3, 8), "k": _f(2, 5, 8), "v": _f(2, 5, 8), "bias": _f(2, 1, 3, 5)}, {}, 20),
    ("onnx-attention-grouped-causal", [helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=4, kv_num_heads=2,
                                                        is_causal=1)],
     {"q": _f(2, 5, 16), "k": _f(2, 5, 8), "v": _f(2, 5, 8)}, {}, 23),
    ("ms-skip-layernorm-gelus", [helper.make_node("SkipLayerNormalization", ["x", "s", "g", "be", "bi"], ["n", "", "", "sum"],
                                                  domain=MS, epsilon=1e-5),
                                 helper.make_node("BiasGelu", ["n", "bi"], ["a"], domain=MS),
                                 helper.make_node("FastGelu", ["sum", "bi"], ["c"], domain=MS),
                                 helper.make_node("QuickGelu", ["c"], ["d"], domain=MS),
                                 helper.make_node("FusedMatMul", ["a", "d"], ["y"], domain=MS, transB=1, alpha=0.5)],
     {"x": _f(2, 3, 8), "s": _f(2, 3, 8)}, {"g": _f(8), "be": _f(8), "bi": _f(8)}, 20),
    ("ms-fused-conv-residual", [helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain=MS, activation="Relu",
                                                 pads=[1, 1, 1, 1])],
     {"x": _f(1, 3, 6, 6), "z": _f(1, 4, 6, 6)}, {"w": _f(4, 3, 3, 3), "b": _f(4)}, 20),
]


FROZEN = {"m", "v", "scales"}  # BatchNormalization's running statistics, Resize's scales


def _model(nodes, feeds, initializers, opset, outputs=None) -> onnx.ModelProto:
    """A model of `nodes`: its outputs are the values no node reads, typed as ONNX Runtime computes them."""
    used = {name for node in nodes for name in node.input}
    produced = [name for node in nodes for name in node.output if name]
    names = [name for name in produced if name not in used] or produced[-1:]
    declared = outputs or [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names]
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
              for name, array in feeds.items()]
    weights = [numpy_helper.from_array(np.asarray(array), name) for name, array in initializers.items()]
    graph = helper.make_graph(nodes, "case", inputs, declared, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                              ir_version=10)
    if outputs is None:  # typed by a first run (ORT accepts outputs declared without a shape)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(None, feeds)
        return _model(nodes, feeds, initializers, opset, [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            for name, value in zip(names, values)])
    return model


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_each_operator_computes_what_onnx_runtime_does_and_trains(case, tmp_path):
    _, nodes, feeds, initializers, opset = case
    path = tmp_path / "case.onnx"
    onnx.save(_model(nodes, feeds, initializers, opset), path)
    module = TrainableGraph(model_io.load(path))
    assert round_trip(module, path, feeds) < 1e-3  # round_trip itself fails beyond the fp32 tolerance
    outputs = module(*(torch.from_numpy(feeds[value.name]) for value in module.inputs))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    if len(module.weights):
        sum((output * torch.randn(output.shape)).sum() for output in outputs if output.requires_grad).backward()
    trained = {value.name: parameter for value, parameter in zip(module.trained, module.weights)}
    assert set(trained) == {name for name, array in initializers.items()
                            if np.asarray(array).dtype.kind == "f" and np.asarray(array).size > 1
                            and name not in FROZEN}
    for name, parameter in trained.items():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0, name


def test_trained_weights_go_back_into_the_same_graph(tmp_path):
    _, nodes, feeds, initializers, opset = CASES[0]
    source, written = tmp_path / "student.onnx", tmp_path / "trained.onnx"
    onnx.save(_model(nodes, feeds, initializers, opset), source)
    module = TrainableGraph(model_io.load(source))
    with torch.no_grad():
        module.weights[0].mul_(-2.0)
    module.write(written)
    before, after = onnx.load(source), onnx.load(written)
    assert [node.op_type for node in after.graph.node] == [node.op_type for node in before.graph.node]
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in after.graph.initializer}
    np.testing.assert_array_equal(weights["w"], -2.0 * initializers["w"])
    np.testing.assert_array_equal(weights["b"], initializers["b"])
    assert round_trip(module, written, feeds) < 1e-4  # ONNX Runtime on the written file computes the trained module


def test_weights_in_constant_nodes_are_trained_and_scalars_frozen(tmp_path):
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(_f(4, 3))),
             helper.make_node("Constant", [], ["scale"], value_float=0.5),
             helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "scale"], ["y"])]
    path = tmp_path / "constants.onnx"
    feeds = {"x": _f(2, 4)}
    onnx.save(_model(nodes, feeds, {}, 20), path)
    module = TrainableGraph(model_io.load(path))
    assert [tuple(parameter.shape) for parameter in module.weights] == [(4, 3)]
    assert round_trip(module, path, feeds) < 1e-5


def test_unsupported_operators_are_all_named_before_anything_runs(tmp_path):
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "w", "z"], ["m"]), helper.make_node("Cast", ["m"], ["y"], to=1)]
    path = tmp_path / "quantized.onnx"
    onnx.save(_model(nodes, {"x": _f(2, 4)}, {"w": np.ones((4, 3), np.uint8)}, 20), path)
    model = model_io.load(path)
    assert unsupported_ops(model) == {"DynamicQuantizeLinear": ["(unnamed)"], "MatMulInteger": ["(unnamed)"]}
    with pytest.raises(InputError, match=r"cannot be made trainable: DynamicQuantizeLinear \(1 node\(s\).*"
                                         r"MatMulInteger.*distill the float model, then quantize"):
        TrainableGraph(model)


def test_if_branches_read_the_outer_graph(tmp_path):
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other)]
    path = tmp_path / "if.onnx"
    onnx.save(_model(nodes, {"x": np.abs(_f(3, 3))}, {"w": _f(3, 3), "zero": np.float32(0)}, 20), path)
    module = TrainableGraph(model_io.load(path))
    assert round_trip(module, path, {"x": np.abs(_f(3, 3))}) < 1e-5
    assert round_trip(module, path, {"x": -np.abs(_f(3, 3))}) == 0.0
