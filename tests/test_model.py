"""Model I/O: checked loading, lazy external data, atomic saves, inspect."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt
from graphopt.cli import main
from graphopt.errors import InputError
from tests.helpers import assert_same, run


def _linear_model(size: int = 64, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "w")
    bias = onnx.numpy_helper.from_array(rng.standard_normal(size).astype(np.float32), "b")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", size])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", size])
    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]),
             onnx.helper.make_node("Add", ["h", "b"], ["a"]),
             onnx.helper.make_node("Identity", ["a"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "linear", [x], [y], [weight, bias])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=8)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def external_model(tmp_path):
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    onnx.save(_linear_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return path


def test_load_keeps_external_tensors_on_disk(external_model):
    model = graphopt.load(external_model)
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)


def test_save_external_model_keeps_external_data_and_input_untouched(external_model, tmp_path):
    before = {p: _digest(p) for p in external_model.parent.iterdir()}
    out = tmp_path / "out" / "model.onnx"
    result = graphopt.optimize(external_model, out)
    assert [p.name for p in result.written] == ["model.onnx", "model.onnx.data"]
    assert {p: _digest(p) for p in external_model.parent.iterdir()} == before
    feeds = {"x": np.ones((2, 64), np.float32)}
    assert_same(run(onnx.load(external_model), feeds), run(onnx.load(out), feeds))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_save_inline_on_request(external_model, tmp_path):
    out = tmp_path / "inline.onnx"
    graphopt.optimize(external_model, out, external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()
    assert onnx.load(out).graph.initializer[0].HasField("raw_data")


def test_save_refuses_the_input_and_its_data(external_model):
    model = graphopt.load(external_model)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        graphopt.save(model, external_model)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        graphopt.save(model, external_model.with_name("model.onnx.data"))


def test_save_to_a_sibling_name_does_not_clobber_input_data(external_model):
    model = graphopt.load(external_model)
    data_before = _digest(external_model.with_name("model.onnx.data"))
    written = graphopt.save(model, external_model.with_name("copy.onnx"))
    assert written[1].name == "copy.onnx.data"
    assert _digest(external_model.with_name("model.onnx.data")) == data_before


def test_interrupted_save_leaves_no_output(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    onnx.save(_linear_model(), path)
    model = graphopt.load(path)
    out = tmp_path / "out.onnx"

    def interrupted_midway(model, path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(graphopt.writer, "write_model", interrupted_midway)
    monkeypatch.setattr(ir, "save", interrupted_midway)
    for external_data in (False, True):
        with pytest.raises(KeyboardInterrupt):
            graphopt.save(model, out, external_data=external_data)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_missing_external_data_is_an_input_error(external_model):
    os.remove(external_model.with_name("model.onnx.data"))
    with pytest.raises(InputError, match="external data file 'model.onnx.data' is missing"):
        graphopt.load(external_model)


def test_truncated_external_data_is_an_input_error(external_model):
    data = external_model.with_name("model.onnx.data")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="too short"):
        graphopt.load(external_model)


def _move_data_behind_symlink(model_path, target):
    """Move the model's external data to `target` and leave a symlink in its place."""
    data = model_path.with_name("model.onnx.data")
    target.parent.mkdir(exist_ok=True)
    data.rename(target)
    data.symlink_to(target)


def test_external_data_symlinked_outside_the_folder_is_refused(external_model, tmp_path, capsys):
    _move_data_behind_symlink(external_model, tmp_path / "elsewhere" / "weights.data")
    with pytest.raises(InputError, match=r"links to .*weights\.data, outside the model's folder"):
        graphopt.load(external_model)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    for args in (["inspect", str(external_model)], ["optimize", str(external_model), "-o", str(out)]):
        assert main(args) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("graphopt: error:") and "outside the model's folder" in error
        assert "\n" not in error
    assert not out.exists()


def test_external_data_symlinked_inside_the_folder_loads(external_model, tmp_path):
    _move_data_behind_symlink(external_model, external_model.parent / "weights" / "w.data")
    assert isinstance(graphopt.load(external_model).graph.initializers["w"].const_value, ir.ExternalTensor)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    assert main(["optimize", str(external_model), "-o", str(out)]) == 0
    feeds = {"x": np.ones((2, 64), np.float32)}
    # onnx.load refuses symlinked data, so the reference is the model before it was saved.
    assert_same(run(_linear_model(), feeds), run(onnx.load(out), feeds))


def test_inspect_reports_signature_ops_and_parameters(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_linear_model(), path)
    info = graphopt.inspect(path)
    assert info.opsets == {"": 17} and info.ir_version == 8
    assert info.inputs[0].name == "x" and info.inputs[0].shape == ["batch", 64]
    assert info.op_counts == {"MatMul": 1, "Add": 1, "Identity": 1}
    assert info.parameters == 64 * 64 + 64
    assert info.parameters_by_dtype["float"]["bytes"] == (64 * 64 + 64) * 4
    assert info.file_bytes == path.stat().st_size


def test_inspect_counts_subgraph_nodes_and_custom_domains():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (bool c, float[2] x) => (float[2] y) {
            t = com.example.Custom(x)
            y = If(c) <then_branch = a () => (float[2] o) { o = Neg(t) },
                       else_branch = b () => (float[2] o) { o = Abs(t) }>
        }""")
    info = graphopt.inspect(graphopt.model.from_proto(model))
    assert info.op_counts == {"com.example::Custom": 1, "If": 1, "Neg": 1, "Abs": 1}


def test_convert_opset_keeps_outputs():
    model = _linear_model(opset=11)
    converted = graphopt.convert_opset(ir.serde.deserialize_model(model), 17)
    assert converted.opset_imports[""] == 17
    feeds = {"x": np.ones((1, 64), np.float32)}
    assert_same(run(model, feeds), run(converted, feeds))


def test_impossible_opset_conversion_is_an_input_error():
    with pytest.raises(InputError, match="cannot convert from opset 17 to 13"):
        graphopt.convert_opset(ir.serde.deserialize_model(_linear_model()), 13)
