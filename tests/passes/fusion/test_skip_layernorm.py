"""The residual Add before a LayerNormalization: fuse_skip_layernorm (ort) makes it SkipLayerNormalization,
residual_sum (both targets) a Sum that ONNX Runtime's own SkipLayerNormalization fusion leaves alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxruntime as ort

import graphopt
from tests.helpers import op_types, optimize_and_compare, to_proto

HIDDEN = 8


def _model(skip_shape=("batch", "seq", HIDDEN), bias: bool = False, keep_sum: bool = False,
           beta: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["projected"])]
    if bias:
        nodes.append(helper.make_node("Add", ["projected", "b"], ["biased"]))
    nodes.append(helper.make_node("Add", ["biased" if bias else "projected", "skip"], ["total"]))
    nodes.append(helper.make_node("LayerNormalization", ["total", "gamma", "beta"] if beta else ["total", "gamma"],
                                  ["y"], axis=-1, epsilon=1e-6))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    if keep_sum:  # the residual stream continues past the LayerNorm (pre-LN transformers)
        nodes.append(helper.make_node("Relu", ["total"], ["residual"]))
        outputs.append(helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["batch", "seq", HIDDEN]))
    graph = helper.make_graph(
        nodes, "skip_layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
         helper.make_tensor_value_info("skip", TensorProto.FLOAT, list(skip_shape))],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _feeds(skip_batch: int = 2):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((2, 5, HIDDEN)).astype(np.float32),
            "skip": rng.standard_normal((skip_batch, 5, HIDDEN)).astype(np.float32)}


def _fused(model):
    return next(node for node in model.graph if node.op_type == "SkipLayerNormalization")


@pytest.mark.parametrize("options", [{}, {"bias": True}, {"beta": False}, {"bias": True, "beta": False}],
                         ids=["plain", "bias", "no-beta", "bias-no-beta"])
def test_residual_add_and_layernorm_become_one_node(options):
    result = optimize_and_compare(_model(**options), _feeds(), passes="fuse_skip_layernorm", target="ort")
    assert op_types(result.model) == ["MatMul", "SkipLayerNormalization"]
    node = _fused(result.model)
    assert node.domain == "com.microsoft" and node.attributes.get_float("epsilon") == pytest.approx(1e-6)
    names = [value.name if value is not None else "" for value in node.inputs]
    assert names == ["projected", "skip", "gamma", "beta" if options.get("beta", True) else "",
                     "b" if options.get("bias") else ""][:len(names)]
    assert result.report.passes[0].changes == ["1 SkipLayerNormalization"]


def test_a_sum_read_elsewhere_comes_from_the_fourth_output():
    result = optimize_and_compare(_model(keep_sum=True), _feeds(), passes="fuse_skip_layernorm", target="ort")
    node = _fused(result.model)
    assert len(node.outputs) == 4 and node.outputs[3].name == "total"
    assert op_types(result.model) == ["MatMul", "SkipLayerNormalization", "Relu"]


def test_a_broadcast_skip_is_refused_with_the_shapes():
    result = optimize_and_compare(_model(skip_shape=(1, "seq", HIDDEN)), _feeds(skip_batch=1),
                                  passes="fuse_skip_layernorm", target="ort")
    assert "SkipLayerNormalization" not in op_types(result.model)
    assert result.report.passes[0].skipped == [
        "LayerNormalization '' not fused with its residual Add: the residual operands' shapes "
        "[batch, seq, 8] and [1, seq, 8] are not provably equal"]


def test_portable_target_keeps_standard_ops():
    result = graphopt.optimize(_model(), passes="fuse_skip_layernorm")
    assert op_types(result.model) == ["MatMul", "Add", "LayerNormalization"]
    assert result.report.passes[0].skipped == ["not for target 'portable'"]


@pytest.mark.parametrize("target", ["portable", "ort"])
@pytest.mark.parametrize("options", [{}, {"bias": True}, {"keep_sum": True}], ids=["plain", "bias", "keep-sum"])
def test_residual_sum_computes_the_same_and_absorbs_the_bias(target, options):
    result = optimize_and_compare(_model(**options), _feeds(), passes="residual_sum", target=target)
    expected = ["MatMul", "Sum", "LayerNormalization"] + (["Relu"] if options.get("keep_sum") else [])
    assert op_types(result.model) == expected
    total = next(node for node in result.model.graph if node.op_type == "Sum")
    assert [value.name for value in total.inputs] == ["projected", "skip"] + (["b"] if options.get("bias") else [])
    assert total.outputs[0].name == "total"
    assert result.report.passes[0].changes == ["1 residual Add → Sum before LayerNormalization"]


def test_residual_sum_keeps_ort_from_fusing_skip_layernorm(tmp_path):
    """The point of the pass: ONNX Runtime's load-time fusion turns Add + LayerNormalization into its
    (slower on CPU) SkipLayerNormalization, and does not touch Sum + LayerNormalization."""
    def fused_by_ort(model) -> list[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "after_ort.onnx")
        ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]

    assert "SkipLayerNormalization" in fused_by_ort(_model())
    rewritten = graphopt.optimize(_model(), passes="residual_sum").model
    assert "SkipLayerNormalization" not in fused_by_ort(rewritten)


def test_residual_sum_leaves_a_bias_add_alone():
    model = _model()
    for node in model.graph.node:
        if node.op_type == "Add":
            node.input[1] = "b"  # LayerNorm(x·W + b): no residual
    result = graphopt.optimize(model, passes="residual_sum")
    assert op_types(result.model) == ["MatMul", "Add", "LayerNormalization"]
    assert not result.report.passes[0].modified
