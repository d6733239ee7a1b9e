"""strip_debug_info and fix_shape: what they remove or fix, outputs unchanged in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt.cli import main
from graphopt.errors import InputError
from tests.helpers import assert_same, op_types, parse, run, to_proto

DYNAMIC = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, seq] x, float[batch, seq] mask) => (float[batch, seq] y) {
        masked = Mul(x, mask)
        shape = Shape(masked)
        flat_shape = Constant<value = int64[1] {-1}>()
        flat = Reshape(masked, flat_shape)
        relu = Relu(flat)
        y = Reshape(relu, shape) }"""


def _with_debug_info() -> onnx.ModelProto:
    model = parse(DYNAMIC)
    model.doc_string = "the model's own description"
    onnx.helper.set_model_props(model, {"author": "us"})
    model.graph.doc_string = "graph notes"
    for node in model.graph.node:
        node.doc_string = 'File "/home/someone/model.py", line 3'
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.stack_trace", "/home/someone/model.py:3"
    entry = model.graph.input[0].metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.fx_node", "%x"
    return model


def _feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((batch, seq)).astype(np.float32),
            "mask": np.ones((batch, seq), np.float32)}


def test_strip_debug_info_keeps_the_model_description():
    result = graphopt.optimize(_with_debug_info(), passes="strip_debug_info")
    proto = to_proto(result.model)
    assert proto.doc_string == "the model's own description"
    assert {p.key: p.value for p in proto.metadata_props} == {"author": "us"}
    assert not proto.graph.doc_string
    assert all(not node.doc_string and not node.metadata_props for node in proto.graph.node)
    assert not proto.graph.input[0].metadata_props
    assert result.report.passes[0].changes == ["removed 14 doc string(s) and metadata entries"]
    assert_same(run(parse(DYNAMIC), _feeds(2, 3)), run(proto, _feeds(2, 3)))


def test_o2_strips_and_keep_metadata_keeps(tmp_path):
    source = tmp_path / "debug.onnx"
    onnx.save(_with_debug_info(), source)
    stripped, kept = tmp_path / "stripped.onnx", tmp_path / "kept.onnx"
    assert main(["optimize", str(source), str(stripped), "--preset", "O2", "-q"]) == 0
    assert main(["optimize", str(source), str(kept), "--preset", "O2", "--keep-metadata", "-q"]) == 0
    assert not any(node.metadata_props for node in onnx.load(stripped).graph.node)
    assert any(node.metadata_props for node in onnx.load(kept).graph.node)
    assert_same(run(onnx.load(source), _feeds(2, 5)), run(onnx.load(stripped), _feeds(2, 5)))


def test_fix_shape_makes_shared_dims_static_and_folds_the_shape_arithmetic():
    result = graphopt.optimize(parse(DYNAMIC), fix_shapes={"x": (2, 5)}, validate=True)
    model = result.model
    assert [list(value.shape.dims) for value in model.graph.inputs] == [[2, 5], [2, 5]]
    assert list(model.graph.outputs[0].shape.dims) == [2, 5]
    assert "Shape" not in op_types(model)
    fix = next(entry for entry in result.report.passes if entry.name == "fix_shape")
    assert fix.changes == ["fixed x [batch, seq] → [2, 5]; mask [batch, seq] → [2, 5]"]
    assert result.validation.passed and result.validation.input_sets[0].shapes["x"] == [2, 5]
    assert_same(run(parse(DYNAMIC), _feeds(2, 5)), run(model, _feeds(2, 5)))


def test_validation_shapes_must_agree_with_the_fixed_ones():
    with pytest.raises(InputError, match="--shape x differs from --fix-shape x"):
        graphopt.optimize(parse(DYNAMIC), fix_shapes={"x": (2, 5)}, shapes={"x": (3, 5)}, validate=True)


@pytest.mark.parametrize("shapes, message", [
    ({"nope": (1, 2)}, "--fix-shape names unknown input 'nope'"),
    ({"x": (1, 2, 3)}, "--fix-shape x: rank 3 but the input has rank 2"),
    ({"x": (1, 2), "mask": (1, 3)}, "gives dimension 'seq' two sizes: 2 and 3"),
])
def test_fix_shape_refuses_what_does_not_fit(shapes, message):
    with pytest.raises(InputError, match=message):
        graphopt.optimize(parse(DYNAMIC), fix_shapes=shapes)


def test_fix_shape_from_the_command_line(tmp_path, capsys):
    source, out, report = tmp_path / "dynamic.onnx", tmp_path / "static.onnx", tmp_path / "report.json"
    onnx.save(parse(DYNAMIC), source)
    assert main(["optimize", str(source), str(out), "--fix-shape", "x=3x4", "--validate",
                 "--report", str(report)]) == 0
    assert "PASS" in capsys.readouterr().out
    static = onnx.load(out)
    assert [d.dim_value for d in static.graph.input[1].type.tensor_type.shape.dim] == [3, 4]
    assert_same(run(parse(DYNAMIC), _feeds(3, 4)), run(static, _feeds(3, 4)))
    assert main(["optimize", str(source), str(out), "--fix-shape", "x=3xq"]) == 2
    assert "--fix-shape 'x=3xq' must look like name=1x128" in capsys.readouterr().err
