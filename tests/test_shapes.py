"""Shape inference on the structure: ONNX's, and ONNX Runtime's symbolic one for named dims."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from graphopt import shapes
from graphopt.model import from_proto


def test_symbolic_inference_names_only_the_anonymous_dims():
    model = from_proto(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[batch, seq, 8] x) => (float[batch, seq, 8] y) {
            dims = Shape(x)
            two = Constant<value = int64[2] {0, 1}>()
            lead = Gather(dims, two)
            last = Constant<value = int64[1] {8}>()
            target = Concat<axis = 0>(lead, last)
            flat = Relu(x)
            y = Reshape(flat, target) }"""))
    shapes.infer_shapes(model)
    relu = next(node for node in model.graph if node.op_type == "Relu").outputs[0]
    reshaped = next(node for node in model.graph if node.op_type == "Reshape").outputs[0]
    # As a rewrite leaves them: a value with anonymous dims, one with a name of its own.
    relu.shape = ir.Shape([ir.SymbolicDim(None), ir.SymbolicDim(None), 8])
    reshaped.shape = ir.Shape([ir.SymbolicDim("kept"), ir.SymbolicDim(None), 8])
    assert shapes.infer_symbolic(model) == 2
    assert [getattr(dim, "value", dim) for dim in relu.shape.dims] == ["batch", "seq", 8]
    assert [getattr(dim, "value", dim) for dim in reshaped.shape.dims] == ["kept", "seq", 8]


def test_incomplete_symbolic_inference_writes_nothing(tmp_path, monkeypatch):
    # ONNX Runtime's own infer_shapes saves sym_shape_infer_temp.onnx into the working folder here.
    monkeypatch.chdir(tmp_path)
    model = from_proto(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
        g (float[N, 4] x) => (float[N, 4] y) { a = custom.Mystery(x)  y = Relu(a) }"""))
    shapes.infer_symbolic(model)
    assert list(tmp_path.iterdir()) == []
