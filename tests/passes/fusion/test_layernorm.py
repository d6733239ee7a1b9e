"""fuse_layernorm: decomposed LayerNorm in its exporter forms becomes LayerNormalization, outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from tests.helpers import op_types, optimize_and_compare

SHAPE = ["batch", 4, 6]


def _model(opset: int = 17, square: str = "pow", divide: str = "div", affine: str = "scale-bias",
           axes: tuple[int, ...] = (-1,), epsilon_under_root: bool = True, scale_shape=(6,)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(rng.standard_normal(scale_shape).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "beta")]

    def reduce(source: str, target: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node("ReduceMean", [source, "axes"], [target])
        return helper.make_node("ReduceMean", [source], [target], axes=list(axes))

    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    nodes = [reduce("x", "mean"), helper.make_node("Sub", ["x", "mean"], ["d"])]
    nodes.append(helper.make_node("Pow", ["d", "two"], ["d2"]) if square == "pow"
                 else helper.make_node("Mul", ["d", "d"], ["d2"]))
    nodes.append(reduce("d2", "var"))
    if epsilon_under_root:
        nodes += [helper.make_node("Add", ["var", "eps"], ["var_eps"]), helper.make_node("Sqrt", ["var_eps"], ["std"])]
    else:
        nodes += [helper.make_node("Sqrt", ["var"], ["root"]), helper.make_node("Add", ["root", "eps"], ["std"])]
    if divide == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv"]), helper.make_node("Mul", ["inv", "d"], ["n"])]
    last = "n"
    if "scale" in affine:
        nodes.append(helper.make_node("Mul", ["gamma", last] if affine.startswith("swapped") else [last, "gamma"],
                                      ["scaled"]))
        last = "scaled"
    if "bias" in affine:
        nodes.append(helper.make_node("Add", [last, "beta"], ["shifted"]))
        last = "shifted"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "layernorm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _feeds():
    return {"x": (np.random.default_rng(1).standard_normal((2, 4, 6)) * 5 + 3).astype(np.float32)}


@pytest.mark.parametrize("options", [
    {},
    {"opset": 18, "square": "mul"},
    {"divide": "reciprocal"},
    {"affine": "swapped-scale-bias"},
    {"affine": "scale"},
    {"affine": "none"},
    {"axes": (-2, -1), "scale_shape": (1, 6)},
    {"scale_shape": (1, 1, 6)},
], ids=["torchscript", "opset18-mul", "reciprocal", "swapped", "no-bias", "no-affine", "two-axes", "broadcast-scale"])
def test_decomposed_forms_become_layernormalization(options):
    result = optimize_and_compare(_model(**options), _feeds(), rtol=1e-4,
                                  passes="fuse_layernorm,eliminate_noops,remove_unused")
    assert op_types(result.model) == ["LayerNormalization"]
    node = next(iter(result.model.graph))
    assert node.attributes.get_int("axis") == -len(options.get("axes", (-1,)))
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-5)
    assert len(node.inputs) == (3 if "bias" in options.get("affine", "scale-bias") else 2)
    assert result.report.passes[0].changes == ["1 LayerNormalization"]


@pytest.mark.parametrize("options, reason", [
    ({"epsilon_under_root": False}, "ε is not added under the square root"),
    ({"axes": (-2,)}, "it normalizes over axes [-2], not trailing ones"),
    ({"scale_shape": (4, 1)}, "γ 'gamma' is not a constant over the normalized axes only"),
])
def test_near_misses_are_refused_with_a_reason(options, reason):
    result = optimize_and_compare(_model(**options), _feeds(), passes="fuse_layernorm")
    assert "LayerNormalization" not in op_types(result.model)
    assert any(reason in skipped for skipped in result.report.passes[0].skipped), result.report.passes[0].skipped


def test_a_mean_used_elsewhere_blocks_the_fusion():
    model = _model()
    model.graph.output.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 4, 1]))
    result = optimize_and_compare(model, _feeds(), passes="fuse_layernorm")
    assert "LayerNormalization" not in op_types(result.model)
    assert "also used outside the LayerNorm" in result.report.passes[0].skipped[0]


def test_below_opset_17_the_pass_says_it_needs_17():
    result = graphopt.optimize(_model(opset=16), passes="fuse_layernorm")
    assert "LayerNormalization" not in op_types(result.model)
    assert result.report.passes[0].skipped == ["needs opset >= 17, model has 16 (convert with --opset 17)"]
