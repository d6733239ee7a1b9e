"""The zoo list, --module factories, `graphopt export`, and `graphopt run` end to end."""

from __future__ import annotations

import json

import pytest

from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.export import ZOO, load_factory

EXPECTED_ZOO = {"minilm", "bert-base", "gpt2", "vit-base", "resnet18", "resnet50", "mobilenetv2",
                "convnext-tiny", "mlp", "cnn", "lstm", "digits-cnn"}

FACTORY = '''
import torch

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, features):
        return torch.relu(self.linear(features))

def build():
    torch.manual_seed(0)
    return {"module": Tiny(), "example_inputs": (torch.randn(2, 4),), "input_names": ["features"],
            "dynamic_axes": {"features": {0: "batch"}}}

def broken():
    raise RuntimeError("no weights here")

def wrong():
    return 42
'''


def test_zoo_lists_every_model(capsys):
    assert set(ZOO) == EXPECTED_ZOO
    assert main(["zoo"]) == 0
    printed = capsys.readouterr().out
    for name in EXPECTED_ZOO:
        assert name in printed


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(FACTORY)
    return path


@pytest.mark.parametrize("suffix, message", [
    (":build_it", "has no function 'build_it'"),
    (":broken", "broken() failed: RuntimeError: no weights here"),
    (":wrong", "must return (module, example_inputs) or a dict"),
    ("", "must look like path/to/file.py:factory"),
])
def test_bad_factories(factory_file, suffix, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_factory(f"{factory_file}{suffix}")


def test_missing_factory_file_is_exit_2_without_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--module", str(tmp_path / "nope.py") + ":build", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "does not exist" in error and "\n" not in error
    assert not out.exists()


def test_export_command_with_module(factory_file, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--module", f"{factory_file}:build", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dynamo exporter" in printed and "parity at features [3, 4]" in printed
    assert out.exists()


def test_export_command_unsupported_is_exit_2(tmp_path, capsys):
    path = tmp_path / "svd.py"
    path.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                    "        return torch.linalg.svd(x)[0]\n"
                    "def build():\n    return M(), (torch.rand(3, 3),)\n")
    out = tmp_path / "svd.onnx"
    assert main(["export", "--module", f"{path}:build", "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "could not export the module" in error and "svd" in error and "\n" not in error
    assert not out.exists()


def test_run_end_to_end(factory_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--module", f"{factory_file}:build", "--out", str(out), "--runs", "5",
                 "--warmup", "1"]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == ["latency.png", "model.O1.onnx", "model.onnx", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"] and report["export"]["exporter"] == "dynamo"
    assert report["passes"]["passes"][0]["name"] == "remove_unused"
    assert report["export"]["path"] == str(out / "model.onnx")
    bench = report["bench"]
    assert [entry["model"] for entry in bench["cases"][0]["models"]] == ["model.onnx", "model.O1.onnx"]
    assert bench["metadata"]["graph_optimization_level"] == "all" and bench["metadata"]["spinning"] is True
    assert report["validation"]["ort_graph_optimization_level"] == "disable"
    markdown = (out / "report.md").read_text()
    for section in ("## Passes", "## Validation", "**PASS", "## Latency", "p50 vs first", "against the exported model, model.O1.onnx 1.",
                    "Inputs: features [", "intra-op threads"):
        assert section in markdown


@pytest.mark.parametrize("args, message", [
    (["--preset", "O9"], "unknown preset 'O9'"),
    (["--target", "tpu"], "'tpu' is not one of 'portable', 'ort'"),
    (["--shape", "nope=1x2"], "--shape names unknown input 'nope'"),
    (["--tolerance", "custom"], "--tolerance custom needs"),
    (["--atol", "-1"], "--atol -1.0 is out of range"),
    (["--provider-option", "a=b"], "the CPU provider takes none"),
    (["--runs", "0"], "--runs must be >= 1"),
    (["--precision", "fp8"], "'fp8' is not one of 'bf16', 'fp16'"),
])
def test_run_checks_every_option_before_the_export(factory_file, tmp_path, monkeypatch, capsys, args, message):
    import graphopt.export

    def no_export(*args, **kwargs):
        raise AssertionError("the export ran")

    monkeypatch.setattr(graphopt.export, "export_spec", no_export)
    out = tmp_path / "run"
    assert main(["run", "--module", f"{factory_file}:build", "--out", str(out), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not out.exists() or not any(out.iterdir())


def test_run_digits_reports_accuracy(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["run", "--zoo", "digits-cnn", "--out", str(out), "--runs", "3", "--warmup", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["exported"] > 0.9
    assert report["accuracy"]["O1"] == report["accuracy"]["exported"]
    assert (out / "model.test.npz").exists() and (out / "model.calibration.npz").exists()


def test_run_quantize_static_calibrates_on_the_zoo_set_and_reports_int8_accuracy(tmp_path, monkeypatch):
    from graphopt.runtime.bench import ModelBench

    clock = {"model.O3.onnx": 2.0, "model.static.onnx": 1.0}
    monkeypatch.setattr(ModelBench, "p50_ms", property(lambda entry: clock.get(entry.model, 3.0)))
    out = tmp_path / "digits"
    assert main(["run", "--zoo", "digits-cnn", "--out", str(out), "--runs", "3", "--warmup", "1",
                 "--preset", "O3", "--quantize", "static"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert abs(report["accuracy"]["static"] - report["accuracy"]["O3"]) <= 0.005  # within half a point
    quantization = report["quantization"]
    assert len(quantization["changed"]) == 4 and quantization["validation"]["tolerance"]["name"] == "int8-static"
    assert len(quantization["validation"]["input_sets"]) == 16  # the held-out eighth of 128 training images
    assert (out / "model.static.onnx").exists()


MLP_FACTORY = '''
import torch

def build():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    return {"module": module, "example_inputs": (torch.randn(4, 64),), "input_names": ["features"],
            "dynamic_axes": {"features": {0: "batch"}}}
'''


def _bench_clock(monkeypatch, float_ms: float, lossy_ms: float, lossy: str = "dynamic") -> None:
    """The benchmark's p50s replaced (a 64-wide MLP's int8 gain is within machine noise), and the
    guard's clock for the timings it takes again: run judges the lossy model's speed (model.<lossy>.onnx)
    on its own benchmark, against the preset's float model (the export at 3 ms)."""
    from graphopt.runtime import guard
    from graphopt.runtime.bench import ModelBench

    clock = {"model.O1.onnx": float_ms, f"model.{lossy}.onnx": lossy_ms}
    monkeypatch.setattr(ModelBench, "p50_ms", property(lambda entry: clock.get(entry.model, 3.0)))

    def compare_latency(reference, result, config, feeds=None, runs=0, label="quantized"):
        before, after = (float_ms, lossy_ms) if label in ("quantized", lossy) else (3.0, float_ms)
        return guard.LatencyCheck(before, after, "cpu", {name: list(array.shape) for name, array in feeds.items()},
                                  label)

    monkeypatch.setattr(guard, "compare_latency", compare_latency)


def test_run_quantize_adds_the_int8_model_to_the_report_and_the_bench(tmp_path, monkeypatch, capsys):
    _bench_clock(monkeypatch, 2.0, 1.0)
    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    out = tmp_path / "run"
    assert main(["run", "--module", f"{factory}:build", "--out", str(out), "--runs", "3", "--warmup", "1",
                 "--quantize", "dynamic"]) == 0
    assert (out / "model.dynamic.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    quantization = report["quantization"]
    assert len(quantization["changed"]) == 2 and quantization["validation"]["passed"]
    assert quantization["result_bytes"] < quantization["float_bytes"] / 3
    assert [entry["model"] for entry in report["bench"]["cases"][0]["models"]] == \
        ["model.onnx", "model.O1.onnx", "model.dynamic.onnx"]
    markdown = (out / "report.md").read_text()
    assert "## Quantization" in markdown and "worst output cosine" in markdown
    assert "quantized 2" in capsys.readouterr().out


def test_run_quantize_refused_by_the_guard_writes_the_rest_and_exits_1(tmp_path, monkeypatch, capsys):
    _bench_clock(monkeypatch, 1.0, 2.0)
    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    out = tmp_path / "run"
    assert main(["run", "--module", f"{factory}:build", "--out", str(out), "--runs", "3", "--warmup", "1",
                 "--quantize", "dynamic"]) == 1
    assert not (out / "model.dynamic.onnx").exists() and (out / "model.O1.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    assert "slower than the float one" in report["quantization_refused"]
    assert report["quantization"]["validation"]["passed"]  # reported, with its timing, but not written
    assert [entry["model"] for entry in report["bench"]["cases"][0]["models"]][-1] == "model.dynamic.onnx"
    assert "float p50 1.000 ms, quantized p50 2.000 ms (2.00x slower)" in capsys.readouterr().err


def test_run_refuses_a_preset_model_slower_than_the_export_and_q_prints_one_line(tmp_path, monkeypatch, capsys):
    """The benchmark finds model.O1.onnx slower, a second timing agrees: it is not written, the run
    fails (exit 1) and says so; --no-check-speed writes it. `-q` keeps the one-line result."""
    from graphopt.runtime import guard
    from graphopt.runtime.bench import ModelBench
    from graphopt.runtime.guard import LatencyCheck

    clock = {"model.onnx": 1.0, "model.O1.onnx": 2.0}
    monkeypatch.setattr(ModelBench, "p50_ms", property(lambda entry: clock[entry.model]))
    retimed = []

    def compare_latency(reference, result, config, feeds=None, runs=0, label="quantized"):
        retimed.append(runs)
        return LatencyCheck(1.0, 1.5, "cpu", {name: list(array.shape) for name, array in feeds.items()}, label)

    monkeypatch.setattr(guard, "compare_latency", compare_latency)
    out = tmp_path / "mlp"
    assert main(["run", "--zoo", "mlp", "--out", str(out), "--runs", "3", "--warmup", "1", "-q"]) == 1
    captured = capsys.readouterr()
    assert "the optimized model was not written: the optimized model is slower than the export one" in captured.err
    assert "1.50x slower" in captured.err and retimed == [40] * 5
    (line,) = captured.out.strip().splitlines()
    assert line.startswith("mlp: FAIL; against the export: model.O1.onnx 2.00x slower; wrote ")
    assert not (out / "model.O1.onnx").exists() and (out / "model.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    assert "slower than the export" in report["optimized_refused"]
    assert "**the optimized model was not written" in (out / "report.md").read_text()
    assert main(["run", "--zoo", "mlp", "--out", str(tmp_path / "forced"), "--runs", "3", "--warmup", "1",
                 "--no-check-speed", "-q"]) == 0
    assert (tmp_path / "forced" / "model.O1.onnx").exists() and retimed == [40] * 5


def test_run_precision_writes_the_half_model_validated_and_benched(tmp_path, monkeypatch, capsys):
    """--precision fp16: model.fp16.onnx beside the preset's, its weights in float16 (half the bytes),
    its outputs within the fp16 tolerance of the export's in ONNX Runtime, in the bench and the report."""
    import numpy as np
    import onnx

    from graphopt.runtime.providers import create_session

    _bench_clock(monkeypatch, 2.0, 2.0, lossy="fp16")
    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    out = tmp_path / "run"
    assert main(["run", "--module", f"{factory}:build", "--out", str(out), "--runs", "3", "--warmup", "1",
                 "--precision", "fp16"]) == 0
    half = onnx.load(out / "model.fp16.onnx")
    stored = {tuple(init.dims): init.data_type for init in half.graph.initializer if len(init.dims) == 2}
    assert sorted(stored.values()) == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16]  # 64x8 < min_weights
    features = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    (expected,) = create_session(out / "model.onnx").run({"features": features})
    (actual,) = create_session(out / "model.fp16.onnx").run({"features": features})
    assert actual.dtype == np.float32  # inputs and outputs keep their dtype
    np.testing.assert_allclose(actual, expected, rtol=1e-2, atol=1e-2)
    assert np.abs(actual - expected).max() > 0  # the weights really were rounded
    report = json.loads((out / "report.json").read_text())
    precision = report["precision"]
    assert precision["validation"]["passed"] and precision["validation"]["tolerance"]["name"] == "fp16"
    assert precision["result_bytes"] < 0.6 * precision["float_bytes"] and report["precision_refused"] is None
    assert [entry["model"] for entry in report["bench"]["cases"][0]["models"]][-1] == "model.fp16.onnx"
    markdown = (out / "report.md").read_text()
    assert "## Reduced precision" in markdown and "computed in float32: the cpu EP has no fp16 kernel" in markdown
    assert "fp16 weights: 1 layer(s)" in capsys.readouterr().out


def test_run_precision_refused_by_the_guard_writes_the_rest_and_exits_1(tmp_path, monkeypatch, capsys):
    _bench_clock(monkeypatch, 1.0, 2.0, lossy="fp16")
    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    out = tmp_path / "run"
    assert main(["run", "--module", f"{factory}:build", "--out", str(out), "--runs", "3", "--warmup", "1",
                 "--precision", "fp16"]) == 1
    assert not (out / "model.fp16.onnx").exists() and (out / "model.O1.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    assert "slower than the float one" in report["precision_refused"] and report["precision"]["validation"]["passed"]
    assert "the fp16 model was not written" in capsys.readouterr().err
