"""Fusion helpers: a dropped initializer lets its data go, memory-mapped or not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt
from graphopt.passes.match import drop_unused_initializers, new_initializer
from tests.helpers import run

_W = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)


@pytest.fixture
def external_model(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.numpy_helper.from_array(_W, "w")])
    path = tmp_path / "model.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=9),
              path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def _replace_weight(model: ir.Model, array: np.ndarray) -> ir.Value:
    """Point the MatMul at a new initializer holding `array` and drop the old one; returns the old."""
    node = next(iter(model.graph))
    old = node.inputs[1]
    node.replace_input_with(1, new_initializer(model.graph, array, "w_new"))
    drop_unused_initializers(model.graph, [old])
    return old


def test_a_dropped_external_weight_is_unmapped_and_its_value_forgets_it(external_model):
    original = graphopt.load(external_model)
    tensor = original.graph.initializers["w"].const_value
    assert isinstance(tensor, ir.ExternalTensor)
    candidate = original.clone()  # shares the tensor, as the quantizer's candidates do
    doubled = candidate.graph.initializers["w"].const_value.numpy() * 2
    assert tensor.raw is not None  # reading mapped the file

    dropped = _replace_weight(candidate, doubled)

    assert "w" not in candidate.graph.initializers and dropped.const_value is None
    assert tensor.raw is None  # no page of the float weight stays resident
    np.testing.assert_array_equal(tensor.numpy(), _W)  # the clone it came from still reads it
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(run(candidate, {"x": x})[0], x @ (2 * _W), rtol=1e-5, atol=1e-5)


def test_a_mapping_an_array_still_views_stays_open(external_model):
    model = graphopt.load(external_model)
    tensor = model.graph.initializers["w"].const_value
    view = tensor.numpy()[:2]  # a pass may keep a slice of a weight it read

    _replace_weight(model, np.zeros_like(_W))

    np.testing.assert_array_equal(view, _W[:2])
    np.testing.assert_array_equal(tensor.numpy(), _W)
