"""The streaming writer produces a file ONNX parses to the same model as onnx-ir's save."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from graphopt import writer
from tests.helpers import run


def _model_with_every_kind_of_weight() -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([3]))
    weights = {
        "f32": ir.tensor(np.arange(3, dtype=np.float32)),
        "f16": ir.tensor(np.arange(3, dtype=np.float16)),
        "bf16": ir.tensor(np.arange(3).astype(ml_dtypes.bfloat16)),
        "i4": ir.tensor(np.array([1, -2, 3], dtype=ml_dtypes.int4), dtype=ir.DataType.INT4),
        "b": ir.tensor(np.array([True, False, True])),
        "s": ir.StringTensor(np.array([b"a", b"bc"], dtype=object), name="s"),
        "empty": ir.tensor(np.zeros((0, 4), np.float32)),
    }
    values = {}
    for name, tensor in weights.items():
        tensor.name = name
        values[name] = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype),
                                const_value=tensor)
    node = ir.Node("", "Add", [x, values["f32"]], num_outputs=1)
    node.outputs[0].name = "y"
    node.outputs[0].dtype = ir.DataType.FLOAT
    node.outputs[0].shape = ir.Shape([3])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=list(values.values()),
                     opset_imports={"": 21}, name="g")
    return ir.Model(graph, ir_version=10)


def test_streamed_file_equals_onnx_ir_save(tmp_path):
    model = _model_with_every_kind_of_weight()
    ours, reference = tmp_path / "ours.onnx", tmp_path / "reference.onnx"
    writer.write_model(model, ours)
    ir.save(model, reference)
    mine, theirs = onnx.load(ours), onnx.load(reference)
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in mine.graph.initializer if t.data_type != 8} == \
        {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in theirs.graph.initializer if t.data_type != 8}
    mine.graph.ClearField("initializer")
    theirs.graph.ClearField("initializer")
    assert mine == theirs
    onnx.checker.check_model(ours, full_check=True)
    x = np.ones(3, np.float32)
    np.testing.assert_array_equal(run(onnx.load(ours), {"x": x})[0], x + np.arange(3))
    assert isinstance(model.graph.initializers["f32"].const_value, ir.Tensor)
