"""The CLI: commands work, bad input gives one line and exit 2, no output, input untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from graphopt.cli import main
from tests.helpers import assert_same, parse, run

MODEL_TEXT = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
        a = Identity(x)
        b = Mul(a, w)
        y = Relu(b) }"""


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(parse(MODEL_TEXT), path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_optimize_writes_model_and_report(model_path, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["optimize", str(model_path), "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "remove_unused" in printed and "nodes 3 → 2" in printed
    data = json.loads(report.read_text())
    assert data["passes"][0]["name"] == "remove_unused"
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) - 4}
    assert_same(run(onnx.load(model_path), feeds), run(onnx.load(out), feeds))


def test_optimize_with_pass_list_and_recipe(model_path, tmp_path):
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "a.onnx"),
                 "--passes", "eliminate_noops", "-q"]) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes: [eliminate_noops, remove_unused]\n")
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "b.onnx"),
                 "--recipe", str(recipe), "-q"]) == 0
    assert [n.op_type for n in onnx.load(tmp_path / "b.onnx").graph.node] == ["Mul", "Relu"]


def test_inspect_json(model_path, capsys):
    assert main(["inspect", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["op_counts"] == {"Identity": 1, "Mul": 1, "Relu": 1}
    assert info["inputs"][0]["shape"] == ["N", 4]


def test_inspect_tables(model_path, capsys):
    assert main(["inspect", str(model_path)]) == 0
    printed = capsys.readouterr().out
    assert "signature" in printed and "Relu" in printed and "parameters by dtype" in printed


def test_passes_lists_registry_and_presets(capsys):
    assert main(["passes"]) == 0
    printed = capsys.readouterr().out
    assert "fold_constants" in printed and "O1" in printed


def _non_onnx_protobuf() -> bytes:
    return onnx.numpy_helper.from_array(np.ones(16, np.float32), "t").SerializeToString()


def _empty_graph_model() -> bytes:
    graph = onnx.helper.make_graph([], "empty", [], [])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]).SerializeToString()


def _cycle_model() -> bytes:
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)
            y = Neg(a) }""")
    model.graph.node[0].input[0] = "y"
    return model.SerializeToString()


def _duplicate_names_model() -> bytes:
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)
            y = Neg(a) }""")
    model.graph.node[1].output[0] = "a"
    model.graph.output[0].name = "a"
    model.graph.node.append(onnx.helper.make_node("Abs", ["x"], ["a"]))
    return model.SerializeToString()


def _future_ir_version() -> bytes:
    model = parse(MODEL_TEXT)
    model.ir_version = 99
    return model.SerializeToString()


BAD_MODELS = {
    "truncated": lambda good: good[: len(good) // 2],
    "random bytes": lambda good: np.random.default_rng(1).bytes(4096),
    "empty file": lambda good: b"",
    "tensor, not a model": lambda good: _non_onnx_protobuf(),
    "empty graph": lambda good: _empty_graph_model(),
    "cycle": lambda good: _cycle_model(),
    "duplicate names": lambda good: _duplicate_names_model(),
    "future IR version": lambda good: _future_ir_version(),
}


@pytest.mark.parametrize("kind", BAD_MODELS)
def test_bad_model_is_one_line_exit_2_nothing_written(tmp_path, kind, capsys):
    path = tmp_path / "bad.onnx"
    path.write_bytes(BAD_MODELS[kind](parse(MODEL_TEXT).SerializeToString()))
    before = _digest(path)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(path), "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("graphopt: error:") and "\n" not in error
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


@pytest.mark.parametrize("args, message", [
    (["--passes", "no_such_pass"], "unknown pass 'no_such_pass'"),
    (["--preset", "O9"], "unknown preset 'O9'"),
    (["--target", "gpu"], "unknown target 'gpu'"),
    (["--recipe", "missing.toml"], "cannot read recipe"),
    (["--opset", "3"], "opset 7 and newer"),
])
def test_bad_options_are_one_line_exit_2(model_path, tmp_path, args, message, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not out.exists()


def test_missing_input_and_same_output(model_path, capsys):
    assert main(["optimize", str(model_path.with_name("nope.onnx")), "-o", "x.onnx"]) == 2
    assert "no such file" in capsys.readouterr().err
    before = _digest(model_path)
    assert main(["optimize", str(model_path), "-o", str(model_path)]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert _digest(model_path) == before


def test_usage_error_is_one_line_exit_2(capsys):
    assert main(["optimize"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("graphopt: error:") and "\n" not in error


def test_unknown_domain_op_passes_through(tmp_path):
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2] x) => (float[2] y) {
            a = Identity(x)
            y = com.example.Mystery(a) }""")
    path, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), "-o", str(out), "-q"]) == 0
    nodes = onnx.load(out).graph.node
    assert [(n.domain, n.op_type) for n in nodes] == [("com.example", "Mystery")]


def test_python_dash_m_runs_without_traceback(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    completed = subprocess.run([sys.executable, "-m", "graphopt", "inspect", str(path)],
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().startswith("graphopt: error:")


# Validation and benchmarks from the command line.

import onnx_ir as ir  # noqa: E402

from graphopt.passes import Pass, register  # noqa: E402
from tests.runtime.models import perturbed, text_classifier  # noqa: E402


@register("test_perturb_weights")
class _PerturbWeights(Pass):
    """Test pass: adds 1 to the first element of every float weight (breaks numerics)."""

    def call(self, model):
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype.kind == "f" and array.size:
                changed = array.copy()
                changed.flat[0] += 1.0
                value.const_value = ir.tensor(changed, name=value.name)
        return ir.passes.PassResult(model, modified=True)


@pytest.fixture
def classifier(tmp_path):
    path = tmp_path / "classifier.onnx"
    onnx.save(text_classifier(), path)
    return path


def test_validate_command_pass_and_fail(classifier, tmp_path, capsys):
    assert main(["validate", str(classifier), str(classifier)]) == 0
    assert "PASS (fp32)" in capsys.readouterr().out
    broken = tmp_path / "broken.onnx"
    onnx.save(perturbed(text_classifier(), "w2", 2.0), broken)
    assert main(["validate", str(classifier), str(broken)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "'classifier'" in printed
    assert main(["validate", str(classifier), str(broken), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False and data["divergence"]["node"] == "classifier"


def test_validate_command_bad_npz_is_exit_2(classifier, tmp_path, capsys):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, input_ids=np.zeros((1, 3), np.int64))
    assert main(["validate", str(classifier), str(classifier), "--inputs", str(inputs)]) == 2
    error = capsys.readouterr().err.strip()
    assert "no array for input 'attention_mask'" in error and "\n" not in error


def test_validate_command_cuda_is_one_line_exit_2(classifier, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    assert main(["validate", str(classifier), str(classifier), "--ep", "cuda"]) == 2
    error = capsys.readouterr().err.strip()
    assert "CUDA execution provider is not available" in error and "\n" not in error


def test_optimize_validate_refuses_a_model_that_changed(classifier, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(classifier), "-o", str(out), "--passes", "test_perturb_weights",
                 "--validate"]) == 1
    assert "does not match the input" in capsys.readouterr().err
    assert not out.exists()
    assert main(["optimize", str(classifier), "-o", str(out), "--passes", "test_perturb_weights",
                 "--validate", "--force"]) == 1
    assert out.exists()


def test_optimize_validate_each_names_the_pass(classifier, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(classifier), "-o", str(out), "--validate-each",
                 "--passes", "eliminate_noops,test_perturb_weights,remove_unused"]) == 1
    assert "pass test_perturb_weights changed the outputs" in capsys.readouterr().err
    assert not out.exists()


def test_optimize_validate_passes_and_reports(classifier, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["optimize", str(classifier), "-o", str(out), "--validate", "--report", str(report)]) == 0
    assert "PASS (fp32)" in capsys.readouterr().out
    assert json.loads(report.read_text())["validation"]["passed"] is True


def test_bench_command_writes_reports(classifier, tmp_path, capsys):
    optimized = tmp_path / "o1.onnx"
    assert main(["optimize", str(classifier), "-o", str(optimized), "-q"]) == 0
    files = {"json": tmp_path / "b.json", "markdown": tmp_path / "b.md", "plot": tmp_path / "b.png"}
    assert main(["bench", str(classifier), str(optimized), "--runs", "5", "--warmup", "1",
                 "--shape", "input_ids=2x8", "--threads", "1",
                 "--json", str(files["json"]), "--markdown", str(files["markdown"]),
                 "--plot", str(files["plot"])]) == 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "1.00x" in printed
    assert json.loads(files["json"].read_text())["threads"] == 1
    assert files["plot"].stat().st_size > 1000 and "| model |" in files["markdown"].read_text()
