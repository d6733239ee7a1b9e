"""fold_batchnorm: inference BatchNorm folds into Conv/ConvTranspose/Gemm; training mode does not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from tests.helpers import op_types, optimize_and_compare


def _bn_model(producer: str, opset: int = 17, **bn_attributes) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    if producer == "Conv":
        weight, x_shape, y_shape, channels = (8, 3, 3, 3), [2, 3, 6, 6], [2, 8, 4, 4], 8
        producer_node = helper.make_node("Conv", ["x", "w", "b"], ["p"])
    elif producer == "ConvTranspose":
        weight, x_shape, y_shape, channels = (4, 3, 3, 3), [2, 4, 5, 5], [2, 6, 7, 7], 6
        producer_node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["p"], group=2)
    else:
        weight, x_shape, y_shape, channels = (5, 6), [4, 6], [4, 5], 5
        producer_node = helper.make_node("Gemm", ["x", "w", "b"], ["p"], transB=1, beta=0.5)
    inits = {
        "w": rng.standard_normal(weight), "b": rng.standard_normal(channels),
        "gamma": rng.random(channels) + 0.5, "beta": rng.standard_normal(channels),
        "mean": rng.standard_normal(channels), "var": rng.random(channels) + 0.5,
    }
    bn = helper.make_node("BatchNormalization", ["p", "gamma", "beta", "mean", "var"], ["y"], **bn_attributes)
    graph = helper.make_graph(
        [producer_node, bn], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("producer", ["Conv", "ConvTranspose", "Gemm"])
def test_batchnorm_folds_into_producer(producer):
    result = optimize_and_compare(_bn_model(producer), passes="fold_batchnorm", rtol=1e-4)
    assert op_types(result.model) == [producer]


def test_training_mode_batchnorm_is_kept():
    # ONNX Runtime's inference build refuses training mode, so only the structure is checked.
    result = graphopt.optimize(_bn_model("Conv", training_mode=1), passes="fold_batchnorm")
    assert "BatchNormalization" in op_types(result.model)
    entry = result.report.passes[0]
    assert not entry.changes and len(entry.skipped) == 1
    assert entry.skipped[0].startswith("BatchNormalization into Conv refused at BatchNormalization")
    assert entry.skipped[0].endswith(": BatchNormalization runs in training mode")


def test_report_counts_what_each_rule_folded():
    result = optimize_and_compare(_bn_model("Conv"), passes="fold_batchnorm", rtol=1e-4)
    assert result.report.passes[0].changes == ["BatchNormalization into Conv: 1"]


def test_batchnorm_in_o1():
    result = optimize_and_compare(_bn_model("Conv"), preset="O1", rtol=1e-4)
    assert op_types(result.model) == ["Conv"]
