"""fuse_gelu: the erf and tanh formulas in every product order become one Gelu, outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from tests.helpers import op_types, optimize_and_compare

HIDDEN = 6


def _model(body: list[onnx.NodeProto], opset: int = 20, bias: bool = False,
           extra_inits: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """h[batch, 6] -> (h [+ b]) = x -> body (x ... -> y)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "b"), *extra_inits]
    front = [helper.make_node("Add", ["h", "b"], ["x"])] if bias else [helper.make_node("Identity", ["h"], ["x"])]
    constants = {"sqrt2": 1.4142135381698608, "inv_sqrt2": 0.7071067690849304, "one": 1.0, "half": 0.5,
                 "three": 3.0, "cubic": 0.044714998453855515, "scale": 0.7978845834732056}
    inits += [numpy_helper.from_array(np.array(value, np.float32), name) for name, value in constants.items()]
    graph = helper.make_graph(
        front + body, "gelu",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _erf(order: str, divide: str = "sqrt2") -> list[onnx.NodeProto]:
    head = (helper.make_node("Div", ["x", divide], ["u"]) if divide != "inv_sqrt2"
            else helper.make_node("Mul", ["inv_sqrt2", "x"], ["u"]))
    nodes = [head, helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"])]
    tails = {
        "torchscript": [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])],
        "half-first": [helper.make_node("Mul", ["half", "a"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y"])],
        "half-x": [helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["a", "hx"], ["y"])],
    }
    return nodes + tails[order]


def _tanh(cube: str = "pow", cubic: str = "cubic") -> list[onnx.NodeProto]:
    if cube == "pow":
        cube_nodes = [helper.make_node("Pow", ["x", "three"], ["x3"])]
    else:
        cube_nodes = [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["x3"])]
    return [
        helper.make_node("Mul", ["x", "half"], ["hx"]),  # GPT-2's gelu_new order
        *cube_nodes,
        helper.make_node("Mul", ["x3", cubic], ["c"]),
        helper.make_node("Add", ["x", "c"], ["inner"]),
        helper.make_node("Mul", ["inner", "scale"], ["s"]),
        helper.make_node("Tanh", ["s"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["a"]),
        helper.make_node("Mul", ["hx", "a"], ["y"]),
    ]


def _feeds():
    return {"h": np.random.default_rng(1).standard_normal((3, HIDDEN)).astype(np.float32) * 3}


@pytest.mark.parametrize("body", [_erf("torchscript"), _erf("half-first"), _erf("half-x"),
                                  _erf("torchscript", divide="inv_sqrt2")],
                         ids=["torchscript", "half-first", "half-x", "mul-inverse"])
def test_erf_forms_become_onnx_gelu(body):
    result = optimize_and_compare(_model(body), _feeds(), passes="fuse_gelu,remove_unused")
    assert op_types(result.model) == ["Identity", "Gelu"]
    gelu = next(node for node in result.model.graph if node.op_type == "Gelu")
    assert gelu.attributes.get_string("approximate", "none") == "none"
    assert result.report.passes[0].changes == ["1 Gelu"]


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_tanh_forms_become_onnx_gelu_tanh(cube):
    result = optimize_and_compare(_model(_tanh(cube)), _feeds(), passes="fuse_gelu,remove_unused")
    assert op_types(result.model) == ["Identity", "Gelu"]
    gelu = next(node for node in result.model.graph if node.op_type == "Gelu")
    assert gelu.attributes.get_string("approximate") == "tanh"


def test_ort_target_emits_contrib_ops_and_folds_the_bias():
    erf = optimize_and_compare(_model(_erf("torchscript"), opset=17, bias=True), _feeds(),
                               passes="fuse_gelu,remove_unused", target="ort")
    assert [(node.domain, node.op_type) for node in erf.model.graph] == [("com.microsoft", "BiasGelu")]
    assert erf.model.opset_imports["com.microsoft"] == 1
    tanh = optimize_and_compare(_model(_tanh(), bias=True), _feeds(), passes="fuse_gelu,remove_unused",
                                target="ort")
    assert [node.op_type for node in tanh.model.graph] == ["FastGelu"]
    assert [value.name for value in next(iter(tanh.model.graph)).inputs] == ["h", "b"]
    plain = optimize_and_compare(_model(_erf("half-x"), opset=17), _feeds(), passes="fuse_gelu,remove_unused",
                                 target="ort")
    assert [(node.domain, node.op_type) for node in plain.model.graph] == [("", "Identity"), ("com.microsoft", "Gelu")]


def test_ort_target_folds_the_bias_into_an_existing_onnx_gelu():
    with_bias = _model([helper.make_node("Gelu", ["x"], ["y"])], bias=True)
    result = optimize_and_compare(with_bias, _feeds(), passes="fuse_gelu", target="ort")
    assert op_types(result.model) == ["BiasGelu"]
    portable = graphopt.optimize(_model([helper.make_node("Gelu", ["x"], ["y"])], bias=True), passes="fuse_gelu")
    assert op_types(portable.model) == ["Add", "Gelu"] and not portable.report.passes[0].modified


def test_portable_below_opset_20_refuses_with_the_reason():
    result = graphopt.optimize(_model(_erf("torchscript"), opset=17), passes="fuse_gelu")
    assert "Gelu" not in op_types(result.model)
    assert result.report.passes[0].skipped == [
        "Erf '' not fused: ONNX Gelu needs opset 20, the model has 17 (convert with --opset 20, or use --target ort)"]


def _replace(body, index, node):
    body = list(body)
    body[index] = node
    return body


@pytest.mark.parametrize("body, reason", [
    (_erf("torchscript", divide="three"), "Erf's input is x / 3, GELU needs x / √2"),
    (_replace(_erf("torchscript"), 2, helper.make_node("Add", ["e", "half"], ["a"])),
     "Erf's output is followed by + 0.5, GELU needs + 1"),
    (_replace(_erf("torchscript"), 4, helper.make_node("Mul", ["m", "one"], ["y"])),
     "x · (1 + …) is not multiplied by 0.5"),
    (_tanh(cubic="half"), "the cubic term is 0.5·x³, GELU needs 0.044715·x³"),
])
def test_near_misses_are_refused_with_a_reason(body, reason):
    result = optimize_and_compare(_model(body), _feeds(), passes="fuse_gelu")
    assert "Gelu" not in op_types(result.model)
    assert any(reason in skipped for skipped in result.report.passes[0].skipped), result.report.passes[0].skipped


def test_an_intermediate_used_elsewhere_blocks_the_fusion():
    model = _model(_erf("torchscript"))
    model.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", HIDDEN]))
    result = optimize_and_compare(model, _feeds(), passes="fuse_gelu")
    assert "Gelu" not in op_types(result.model)
    assert "also used outside the GELU" in result.report.passes[0].skipped[0]


def test_a_plain_tanh_is_left_alone_without_a_word():
    model = _model([helper.make_node("Tanh", ["x"], ["y"])])
    result = graphopt.optimize(model, passes="fuse_gelu")
    assert op_types(result.model) == ["Identity", "Tanh"] and not result.report.passes[0].skipped
