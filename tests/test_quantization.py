"""graphopt.quantize's flow: the sensitivity fallback, the latency and kernel guards, the result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt.cli import main
from graphopt.errors import InputError, QuantizationRefused
from graphopt.passes.quantize.fallback import choose_float
from graphopt.runtime.guard import missing_kernels
from graphopt import model as model_io
from tests.helpers import op_types, parse

_RNG = np.random.default_rng(0)
_W1 = _RNG.standard_normal((16, 16)).astype(np.float32)
_W1[0] *= 1e-3  # the outlier channel of x barely reaches h: only the first layer suffers
_W2 = _RNG.standard_normal((16, 16)).astype(np.float32)


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _two_layers() -> onnx.ModelProto:
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, 16] x) => (float[B, 16] y) <float[16, 16] w1 = {{{_floats(_W1)}}},
                                                 float[16, 16] w2 = {{{_floats(_W2)}}}> {{
            h = MatMul(x, w1)
            y = MatMul(h, w2) }}""")
    model.graph.node[0].name, model.graph.node[1].name = "first", "second"
    return model


def _outlier_inputs() -> dict[str, np.ndarray]:
    x = _RNG.standard_normal((64, 16)).astype(np.float32)
    x[:, 0] *= 300  # one channel owns the int8 range of x: the first layer loses the rest
    return {"x": x}


def test_choose_float_keeps_the_most_sensitive_first_and_stops_at_the_budget():
    damage = {"a": 0.01, "b": 0.2, "c": 0.05}
    measure = lambda kept: 1.0 - sum(value for name, value in damage.items() if name not in kept)  # noqa: E731
    chosen = choose_float(["a", "b", "c"], measure, budget=0.98)
    assert chosen.met and chosen.kept_float == ("b", "c") and chosen.score == pytest.approx(0.99)
    assert chosen.sensitivity == pytest.approx({"a": 0.01, "b": 0.2, "c": 0.05})
    assert choose_float(["a", "b", "c"], measure, budget=0.5).kept_float == ()
    unmet = choose_float(["a"], measure, budget=0.99)
    assert not unmet.met and unmet.kept_float == ("a",) and unmet.score == pytest.approx(0.75)


def test_the_fallback_meets_a_budget_plain_quantization_misses(tmp_path):
    model, feeds = _two_layers(), _outlier_inputs()
    plain = graphopt.quantize(model, preset="O0", inputs=feeds, check_speed=False, force=True)
    assert plain.validation.input_sets[0].outputs[0].cosine < 0.9  # everything int8: far off
    result = graphopt.quantize(model, tmp_path / "q.onnx", preset="O0", inputs=feeds, check_speed=False,
                               min_cosine=0.999)
    assert result.fallback.met and result.fallback.kept_float == ("first",)
    assert result.validation.passed and result.validation.input_sets[0].outputs[0].cosine >= 0.999
    assert result.quantized == ["second"]
    assert result.kept_float[0][0] == "first" and "the fallback" in result.kept_float[0][1]
    written = onnx.load(tmp_path / "q.onnx")
    assert [node.name for node in written.graph.node if node.op_type == "MatMul"] == ["first"]


def test_max_drop_budgets_top1_agreement():
    result = graphopt.quantize(_two_layers(), preset="O0", inputs=_outlier_inputs(), check_speed=False,
                               max_drop=0.02)
    assert result.fallback.trials[0].score < 0.98 and result.fallback.kept_float == ("first",)
    assert result.validation.input_sets[0].outputs[0].top1_agreement >= 0.98


@pytest.mark.parametrize("kwargs, message", [
    ({"min_cosine": 0.99, "max_drop": 0.01}, "not both"),
    ({"min_cosine": 0.99, "validate": False}, "measured by validation"),
    ({"mode": "weight-only", "bits": 8}, "--bits 8: --mode weight-only quantizes to --bits 4"),
    ({"smooth": 1.5}, "alpha must be between 0 and 1"),
])
def test_bad_budget_options_are_clear_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        graphopt.quantize(_two_layers(), **kwargs)


def _tiny() -> onnx.ModelProto:
    """One 1×16·16×16 MatMul: quantizing it into five nodes can only make it slower."""
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 16] x) => (float[1, 16] y) <float[16, 16] w = {{{_floats(_W2)}}}> {{ y = MatMul(x, w) }}""")


def test_the_guard_refuses_a_slower_model_and_writes_nothing(tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(QuantizationRefused, match=r"slower than the float one: float p50 [\d.]+ ms, quantized p50 [\d.]+ ms"):
        graphopt.quantize(_tiny(), out, preset="O0")
    assert not out.exists()
    forced = graphopt.quantize(_tiny(), out, preset="O0", force=True)
    assert forced.latency.slower and out.exists()


def test_the_cli_guard_exits_1_with_both_numbers(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_tiny(), path)
    assert main(["quantize", str(path), "-o", str(out), "-q"]) == 1
    error = capsys.readouterr().err
    assert "float p50" in error and "quantized p50" in error and not out.exists()


def test_missing_kernels_names_ops_the_provider_cannot_run():
    model = model_io.from_proto(parse("""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[2] x) => (float[2] y) { t = Relu(x)
                                         y = com.microsoft.NoSuchKernel(t) }"""))
    assert missing_kernels(model, "cpu") == ["com.microsoft::NoSuchKernel"]


@pytest.mark.parametrize("target", ["portable", "ort"])
def test_every_op_the_quantizer_emits_has_a_cpu_kernel(target):
    result = graphopt.quantize(_two_layers(), preset="O0", target=target, inputs=_outlier_inputs(),
                               check_speed=False, force=True)
    assert missing_kernels(result.model, "cpu") == []
    assert "MatMul" not in op_types(result.model)


def test_the_guard_times_the_users_inputs_without_validation():
    feeds = {"x": np.ones((1, 16), np.float32)}
    with pytest.raises(QuantizationRefused, match=r"at x \[1, 16\]"):
        graphopt.quantize(_tiny(), preset="O0", validate=False, inputs=feeds)
