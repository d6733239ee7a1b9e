"""The lossy pipeline gives every way in the same result and the same checks: graphopt quantize,
optimize with a quantizing preset, a recipe, run --quantize and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import graphopt
from graphopt.cli import main
from graphopt.pipeline import PRESETS
from graphopt.runtime import guard
from tests.export.test_zoo_and_run import MLP_FACTORY



@pytest.fixture
def faster(monkeypatch):
    """The guards' and the benchmark's clocks, replaced: every quantized model runs at half the float
    one's time (a 64-wide MLP's real gain is within this machine's noise)."""
    from graphopt.runtime.bench import ModelBench

    def compare(float_model, builders, config, feeds=None, runs=0, label="quantized"):
        return [guard.LatencyCheck(2.0, 1.0, config.resolved_ep(), {"features": [1, 64]}, label) for _ in builders]

    monkeypatch.setattr(guard, "compare_latencies", compare)
    monkeypatch.setattr(ModelBench, "p50_ms", property(lambda entry: 1.0 if "dynamic" in entry.model or
                                                        "static" in entry.model else 2.0))


def _recipe(path: Path, last: str) -> Path:
    entries = ",\n".join(f'    "{name}"' for name in [*PRESETS["O3"], last])
    path.write_text(f"fixed_point = true\npasses = [\n{entries},\n]\n")
    return path


def _verdict(report_file: Path) -> dict:
    report = json.loads(report_file.read_text())
    validation = (report.get("quantization") or report)["validation"]
    return {"passed": validation["passed"], "tolerance": validation["tolerance"],
            "shapes": [run["shapes"] for run in validation["input_sets"]]}


def _every_way(tmp_path: Path, mode: str, ways: dict[str, list[str]]) -> tuple[dict, dict]:
    """The file and verdict of `run --quantize MODE` (in tmp_path/run), then of each command line."""
    written = {"run": (tmp_path / "run" / f"model.{mode}.onnx").read_bytes()}
    verdicts = {"run": _verdict(tmp_path / "run" / "report.json")}
    for way, argv in ways.items():
        out, report = tmp_path / f"{way}.onnx", tmp_path / f"{way}.json"
        assert main([item.format(out=out, report=report) for item in argv]) == 0, way
        written[way], verdicts[way] = out.read_bytes(), _verdict(report)
    return written, verdicts


def test_dynamic_int8_is_the_same_file_and_verdict_every_way_in(tmp_path, faster):
    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    assert main(["run", "--module", f"{factory}:build", "--out", str(tmp_path / "run"), "--preset", "O3",
                 "--quantize", "dynamic", "--runs", "3", "--warmup", "1"]) == 0
    source = tmp_path / "run" / "model.onnx"
    budget = ["--min-cosine", "0.99"]
    ways = {
        "quantize": ["quantize", str(source), "-o", "{out}", *budget, "--report", "{report}"],
        "optimize": ["optimize", str(source), "-o", "{out}", "--preset", "int8-dynamic", "--validate", *budget,
                     "--report", "{report}"],
        "recipe": ["optimize", str(source), "-o", "{out}", "--recipe", str(_recipe(tmp_path / "r.toml",
                                                                                   "quantize_dynamic")),
                   "--validate", *budget, "--report", "{report}"],
    }
    written, verdicts = _every_way(tmp_path, "dynamic", ways)
    api = graphopt.quantize(source, tmp_path / "api.onnx", min_cosine=0.99)
    written["api"] = (tmp_path / "api.onnx").read_bytes()
    verdicts["api"] = {"passed": api.validation.passed, "tolerance": api.validation.tolerance.to_dict(),
                       "shapes": [run.shapes for run in api.validation.input_sets]}
    assert all(data == written["run"] for data in written.values()), [way for way in written
                                                                       if written[way] != written["run"]]
    assert all(verdict == verdicts["run"] for verdict in verdicts.values()), verdicts
    assert verdicts["run"]["tolerance"]["min_cosine"] == 0.99 and verdicts["run"]["passed"]


def test_static_int8_is_the_same_file_and_verdict_every_way_in(tmp_path, faster):
    assert main(["run", "--zoo", "digits-cnn", "--out", str(tmp_path / "run"), "--preset", "O3", "--quantize",
                 "static", "--runs", "3", "--warmup", "1"]) == 0
    source, calib = tmp_path / "run" / "model.onnx", tmp_path / "run" / "model.calibration.npz"
    common = ["--calib", str(calib), "--min-cosine", "0.99", "--report", "{report}"]
    ways = {
        "quantize": ["quantize", str(source), "-o", "{out}", "--mode", "static", *common],
        "optimize": ["optimize", str(source), "-o", "{out}", "--preset", "int8-static", "--validate", *common],
        "recipe": ["optimize", str(source), "-o", "{out}", "--recipe", str(_recipe(tmp_path / "r.toml",
                                                                                   "quantize_static")),
                   "--validate", *common],
    }
    written, verdicts = _every_way(tmp_path, "static", ways)
    api = graphopt.quantize(source, tmp_path / "api.onnx", mode="static", calibration=calib, min_cosine=0.99)
    written["api"] = (tmp_path / "api.onnx").read_bytes()
    assert all(data == written["run"] for data in written.values())
    assert all(verdict == verdicts["run"] for verdict in verdicts.values()), verdicts
    assert len(verdicts["run"]["shapes"]) == 16 and api.validation.passed  # the held-out eighth of 128 images
    quantized = graphopt.inspect(tmp_path / "api.onnx").op_counts
    assert quantized.get("QuantizeLinear") and quantized.get("DequantizeLinear")
    assert np.isclose(api.validation.tolerance.min_cosine, 0.99)
