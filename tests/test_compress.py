"""graphopt compress and graphopt.compress: the stages in order after the float passes, one budget,
the guards; bad options are one line and exit 2 with nothing written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt.cli import main
from tests.helpers import run
from tests.passes.compress.test_prune import _mlp as _wide_mlp
from tests.passes.compress.test_prune_channels import _cnn, _mlp

_RNG = np.random.default_rng(21)


def _cosine(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.sum(first * second) / np.linalg.norm(first) / np.linalg.norm(second))


def test_compress_prunes_channels_validates_and_writes(tmp_path, capsys):
    path, out, report = tmp_path / "cnn.onnx", tmp_path / "cnn.pruned.onnx", tmp_path / "report.json"
    onnx.save(_cnn(), path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_RNG.standard_normal((64, 3, 8, 8)).astype(np.float32))
    assert main(["compress", str(path), str(out), "--prune-channels", "0.25", "--round-to", "1", "--calib", str(calib),
                 "--no-check-speed", "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "PASS (pruned)" in printed and "kept dense: fc (it reaches the graph output 'y')" in printed
    pruned = onnx.load(out)
    shapes = {tensor.name: tuple(tensor.dims) for tensor in pruned.graph.initializer}
    assert shapes["fc_pruned"] == (4, 11)  # 2 of the residual family's 8 channels, 1 of c3's 6
    x = _RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)
    assert _cosine(run(pruned, {"x": x})[0], run(_cnn(), {"x": x})[0]) > 0.98


def test_the_stages_run_in_order_under_one_budget_and_the_fallback_chooses_among_them():
    rng = np.random.default_rng(21)
    calibration = [{"x": rng.standard_normal((128, 16)).astype(np.float32)} for _ in range(8)]
    result = graphopt.compress(_mlp(), prune_channels=0.5, round_to=1, quantize="dynamic", calibration=calibration,
                               check_speed=False, min_cosine=0.97)
    assert result.validation.passed and result.fallback.met
    # half the neurons cost the budget more than int8 does: the pruning backs off to a quarter, int8 stays
    assert result.fallback.backed_off == {"prune_channels:up": "25% of channels removed"}
    assert set(result.fallback.sensitivity) == {"prune_channels:up", "quantize_dynamic:up", "quantize_dynamic:down/Gemm"}
    assert [(o.layer, o.form) for o in result.outcomes if o.changed] == [
        ("up", "25% of channels removed"), ("up", "int8"), ("down/Gemm", "int8")]
    x = calibration[0]["x"]
    assert _cosine(run(result.model, {"x": x})[0], run(_mlp(), {"x": x})[0]) > 0.97


def test_a_two_of_four_pattern_alone_is_half_the_weights_in_blocks_judged_by_the_size_guard():
    x = np.random.default_rng(22).standard_normal((64, 64)).astype(np.float32)
    result = graphopt.compress(_wide_mlp(), pattern="2:4", inputs={"x": x}, force=True, fallback=False)
    weights = [value.const_value.numpy() for value in result.model.graph.initializers.values()
               if value.name.endswith("_pruned")]
    assert weights and all(np.all((np.moveaxis(w, 0, -1).reshape(-1, 4) != 0).sum(axis=1) <= 2) for w in weights)
    assert result.latency is None and result.size.result_compressed < result.size.float_compressed
    assert {o.form for o in result.outcomes if o.changed} == {"2:4 pattern"}
    want = run(_wide_mlp(), {"x": x})[0]
    assert _cosine(run(result.model, {"x": x})[0], want) == pytest.approx(result.validation.input_sets[0].outputs[0].cosine,
                                                                          abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--prune-channels", "1.0"], "--prune-channels 1.0: it must be between 0 and 1"),
    (["--rank-ratio", "0"], "--rank-ratio 0.0: it must be between 0 and 1"),
    (["--low-rank", "1.5"], "--low-rank 1.5: it must be between 0 and 1"),
    (["--cluster-bits", "9"], "'--cluster-bits': 9 is not in the range 2<=x<=8"),
    (["--cluster-bits", "0"], "'--cluster-bits': 0 is not in the range 2<=x<=8"),
    ([], "nothing to do: give --prune-channels"),
    (["--cluster-bits", "4", "--quantize", "dynamic"], "--cluster-bits and --quantize dynamic both store"),
    (["--cluster-table-bits", "4"], "--cluster-table-bits sets the embedding tables' width for --cluster-bits"),
    (["--cluster-bits", "6", "--cluster-table-bits", "1"], "'--cluster-table-bits': 1 is not in the range 2<=x<=8"),
    (["--low-rank", "0.9", "--rank-ratio", "0.5"], "--low-rank and --rank-ratio both set a layer's rank"),
    (["--pattern", "2:4", "--sparsity", "0.7"], "--pattern 2:4 zeroes 50% of the weights, --sparsity 0.7 asks 70%"),
    (["--pattern", "4:2"], "pattern '4:2': give N:M with 0 < N < M"),
    (["--prune-channels", "0.5", "--exclude", "nothing_here"],
     "--exclude names no node or op type of the model (after the float passes): nothing_here"),
])
def test_bad_compress_options_are_one_line_exit_2(tmp_path, args, message, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save(_mlp(), path)
    before = path.read_bytes()
    assert main(["compress", str(path), "-o", str(out), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error, error
    assert not out.exists() and path.read_bytes() == before
