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


def test_optimize_with_pass_options(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "-q", "--passes",
                 "fold_constants:max_output_bytes=2048:infer_shapes=false,eliminate_noops"]) == 0
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Mul", "Relu"]
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) - 4}
    assert_same(run(onnx.load(model_path), feeds), run(onnx.load(out), feeds))


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
    (["--passes", "fold_constants:max_output_bytes=big"],
     "option fold_constants.max_output_bytes must be an integer, got 'big'"),
    (["--passes", "fold_constants:nope=1"], "pass 'fold_constants' has no option 'nope'"),
    (["--preset", "O9"], "unknown preset 'O9'"),
    (["--target", "gpu"], "'gpu' is not one of 'portable', 'ort'"),
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
from tests.runtime.models import fixed_reshape, perturbed, text_classifier  # noqa: E402


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
                 "--shape", "input_ids=2x8", "--threads", "1", "--inter-op", "1",
                 "--execution-mode", "parallel", "--spinning", "off",
                 "--session-config", "session.dynamic_block_base=2",
                 "--json", str(files["json"]), "--markdown", str(files["markdown"]),
                 "--plot", str(files["plot"])]) == 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and ("x faster" in printed or "x slower" in printed) and "spinning off" in printed
    metadata = json.loads(files["json"].read_text())["metadata"]
    assert metadata["threads"] == 1 and metadata["inter_op_threads"] == 1
    assert metadata["execution_mode"] == "parallel" and metadata["spinning"] is False
    assert metadata["session_config"]["session.dynamic_block_base"] == "2"
    assert files["plot"].stat().st_size > 1000 and "| model |" in files["markdown"].read_text()


def test_bench_with_user_inputs(classifier, tmp_path, capsys):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input_ids=np.ones((1, 5), np.int64), attention_mask=np.ones((1, 5), np.int64))
    assert main(["bench", str(classifier), "--inputs", str(inputs), "--runs", "2", "--warmup", "0"]) == 0
    assert "input_ids [1, 5]" in capsys.readouterr().out


def test_bench_sweep_baseline_and_regression(classifier, tmp_path, capsys):
    saved = tmp_path / "base.json"
    assert main(["bench", str(classifier), "--runs", "3", "--warmup", "0", "--sweep", "batch=1",
                 "--sweep", "seq=4,8", "--save-baseline", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert "p50 ms by input_ids / attention_mask shape" in printed and "1x4" in printed and "1x8" in printed
    data = json.loads(saved.read_text())
    assert [case["input_shapes"]["input_ids"] for case in data["cases"]] == [[1, 4], [1, 8]]
    assert main(["bench", str(classifier), "--runs", "3", "--warmup", "0", "--sweep", "input_ids=1x4,1x8",
                 "--compare", str(saved), "--max-regression", "10000%"]) == 0
    assert "no p50 regression beyond" in capsys.readouterr().out
    for case in data["cases"]:
        case["models"][0]["p50_ms"] = 1e-6  # a baseline no real run can match
    saved.write_text(json.dumps(data))
    assert main(["bench", str(classifier), "--runs", "3", "--warmup", "0", "--sweep", "input_ids=1x4,1x8",
                 "--compare", str(saved)]) == 1
    captured = capsys.readouterr()
    assert "regressed" in captured.out and "2 p50 regression(s) beyond 5.0%" in captured.err


@pytest.mark.parametrize("args, message", [
    (["--runs", "5", "--seconds", "1"], "give --runs or --seconds, not both"),
    (["--provider-option", "device_id=1"], "the CPU provider takes none"),
    (["--session-config", "novalue"], "--session-config 'novalue' must look like KEY=VALUE"),
    (["--concurrency", "0"], "--concurrency must be between 1 and 256"),
    (["--inter-op", "0"], "--inter-op must be at least 1"),
    (["--compare", "base.json", "--max-regression", "lots"], "--max-regression 'lots' must be a percentage"),
    (["--compare", "base.json", "--max-regression", "0.05"], "must be a percentage such as 5%"),
    (["--max-regression", "5%"], "--max-regression applies to --compare"),
    (["--seconds", "inf"], "--seconds a finite number > 0"),
    (["--input-range", "input_ids=0.2:0.7"], "holds no integer"),
    (["--input-range", "input_ids=0:inf"], "both ends must be finite"),
    (["--ep", "auto", "--provider-option", "device_id=0"], "--ep auto found none"),
    (["--sweep", "seq=4", "--inputs", "x.npz"], "cannot be combined with --inputs"),
    (["--shape", "input_ids=1x8", "--shape", "attention_mask=1x4"], "shapes disagree on dimension 'seq'"),
    (["--input-range", "input_ids=0:500"], "outside the 50 rows of the embedding table"),
    (["--shape", "input_ids=1x600000000000"], "would take 4470.3 GiB"),
])
def test_bench_bad_options_are_one_line_exit_2(classifier, tmp_path, capsys, args, message):
    assert main(["bench", str(classifier), "--warmup", "0", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error, error


def test_runtime_failures_are_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed_reshape(), path)
    for command in (["bench", str(path), "--shape", "x=3x4", "--runs", "1"],
                    ["validate", str(path), str(path), "--shape", "x=3x4"],
                    ["optimize", str(path), str(tmp_path / "o.onnx"), "--validate"]):
        assert main(command) == 2, command
        error = capsys.readouterr().err.strip()
        assert error.startswith("graphopt: error: ONNX Runtime failed running") and "\n" not in error, error
    assert not (tmp_path / "o.onnx").exists()


def test_bench_compare_with_a_file_that_is_not_a_baseline(classifier, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text('{"passes": []}')
    assert main(["bench", str(classifier), "--compare", str(other)]) == 2
    assert "not a graphopt bench result" in capsys.readouterr().err
    other.write_text('{"format": "graphopt-bench/1", "cases": [{"models": [{"model": "m"}]}]}')
    assert main(["bench", str(classifier), "--compare", str(other)]) == 2
    assert "a damaged graphopt bench result" in capsys.readouterr().err


def test_bench_compare_that_matches_nothing_is_an_error(classifier, tmp_path, capsys):
    saved = tmp_path / "base.json"
    assert main(["bench", str(classifier), "--runs", "2", "--warmup", "0", "--save-baseline", str(saved)]) == 0
    capsys.readouterr()
    assert main(["bench", str(classifier), "--runs", "2", "--warmup", "0", "--shape", "input_ids=1x3",
                 "--compare", str(saved)]) == 2
    assert "nothing to compare" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "validate", "optimize"])
def test_output_paths_are_checked_before_any_work(classifier, tmp_path, capsys, command):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    out = tmp_path / "out.onnx"
    cases = {
        "bench": [["--json", str(folder)], ["--plot", str(folder)], ["--markdown", str(a_file / "b.md")]],
        "validate": [],
        "optimize": [["--report", str(folder)], ["--report", str(a_file / "r.json")]],
    }[command]
    for extra in cases:
        head = {"bench": ["bench", str(classifier), "--runs", "1"],
                "optimize": ["optimize", str(classifier), str(out)]}[command]
        assert main([*head, *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("graphopt: error:") and "\n" not in error
        assert not out.exists()


def test_optimize_output_positional_or_flag_once(classifier, tmp_path, capsys):
    out = tmp_path / "positional.onnx"
    assert main(["optimize", str(classifier), str(out), "-q"]) == 0 and out.exists()
    assert main(["optimize", str(classifier), str(out), "-o", str(tmp_path / "x.onnx")]) == 2
    assert main(["optimize", str(classifier)]) == 2
    assert "give the output once" in capsys.readouterr().err


def test_optimize_and_run_take_custom_tolerances(classifier, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(classifier), str(out), "--validate", "--tolerance", "custom",
                 "--atol", "1e-3", "-q"]) == 0
    assert main(["optimize", str(classifier), str(out), "--validate", "--min-cosine", "2"]) == 2
    assert "--min-cosine 2.0 is out of range" in capsys.readouterr().err


def test_write_failures_are_one_line_exit_2(classifier, tmp_path, capsys, monkeypatch):
    parent_is_file = tmp_path / "file"
    parent_is_file.write_text("")
    assert main(["optimize", str(classifier), str(parent_is_file / "out.onnx")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    import graphopt.model

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(graphopt.model.tempfile, "mkdtemp", refuse)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(classifier), str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"graphopt: error: {out}: cannot write: Permission denied" and not out.exists()


def test_read_only_folder_is_refused_before_work(classifier, tmp_path, capsys):
    import os

    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user can write into read-only folders (root)")
        assert main(["optimize", str(classifier), str(folder / "out.onnx")]) == 2
        assert "cannot write in" in capsys.readouterr().err
    finally:
        os.chmod(folder, 0o700)


def test_inspect_shows_symbolic_dims_and_literal_brackets(tmp_path, capsys):
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[batch, seq] x) => (float[batch, seq] y) { y = Relu(x) }""")
    model.graph.input[0].name = "[bold]x[/bold]"
    model.graph.node[0].input[0] = "[bold]x[/bold]"
    path = tmp_path / "dims.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "[batch, seq]" in printed and "[bold]x[/bold]" in printed


@pytest.mark.parametrize("opset, message", [
    (6, "opset 6 is below 7, the oldest graphopt supports"),
    (29, "opset 29 is newer than onnx"),
])
def test_opsets_outside_the_supported_window_warn(tmp_path, capsys, opset, message):
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]),
        opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=8)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), str(tmp_path / "out.onnx"), "-q"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("graphopt: warning: ") and message in warnings[0]


def test_errors_print_brackets_literally(tmp_path, capsys):
    missing = tmp_path / "[bold]model[/bold].onnx"
    assert main(["inspect", str(missing)]) == 2
    assert "[bold]model[/bold].onnx: no such file" in capsys.readouterr().err


QUANTIZABLE_TEXT = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 64] x) => (float[N, 32] y) <float[64, 32] w = {""" + ", ".join(
    f"{((i * 37) % 101 - 50) / 50}" for i in range(64 * 32)) + """}> {
        y = MatMul(x, w) }"""


def test_quantize_writes_a_smaller_validated_model(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(parse(QUANTIZABLE_TEXT), path)
    assert main(["quantize", str(path), "-o", str(out), "--target", "ort", "--no-check-speed"]) == 0
    printed = capsys.readouterr().out
    assert "PASS (int8)" in printed and "parameters 8.0 KiB → 2.1 KiB" in printed
    assert [node.op_type for node in onnx.load(out).graph.node] == ["DynamicQuantizeMatMul"]


@pytest.mark.parametrize("args, message", [
    (["--bits", "3"], "--bits 3: --mode dynamic quantizes to --bits 8"),
    (["--mode", "weight-only", "--block-size", "24"], "block"),
    (["--mode", "weight-only", "--embedding-block-size", "100"], "embedding_block_size must be a power of two"),
    (["--min-cosine", "0.99", "--max-drop", "0.01"], "give --min-cosine or --max-drop, not both"),
    (["--exclude", "nothing_here"], "--exclude names no node or op type of the model (after the float passes): nothing_here"),
])
def test_bad_quantize_options_are_one_line_exit_2(tmp_path, args, message, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(parse(QUANTIZABLE_TEXT), path)
    assert main(["quantize", str(path), "-o", str(out), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not out.exists()
