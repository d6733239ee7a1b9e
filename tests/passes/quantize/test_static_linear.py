"""quantize_static_linear: linear layers int8 with x at its calibrated scale, computing the quantization math in ONNX Runtime.

The reference is numpy doing what the kernels promise: x quantized at the scale and zero point
its calibrated range gives (values outside it saturate), int8 weights, an exact integer
product, then the rescale.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.passes import create_pass
from graphopt.passes.quantize.scales import dequantize, symmetric_int8
from graphopt.passes.quantize.static import activation_params
from graphopt.pipeline import PassManager
from tests.helpers import op_types, parse, run, statistics
from tests.passes.quantize.test_dynamic import _B, _W, _cosine, _floats, _masked_attention, _typed

_RNG = np.random.default_rng(11)
RANGE = (-1.5, 2.0)  # narrower than the test inputs: the ends saturate, as calibrated ranges do


def _static(x: np.ndarray, low: float, high: float, activation_type: str = "u8", symmetric: bool = False) -> np.ndarray:
    """QuantizeLinear at the calibrated range and back: the x the integer kernels multiply."""
    params = activation_params(low, high, activation_type, symmetric)
    qmin, qmax = (0, 255) if activation_type == "u8" else (-128, 127)
    q = np.clip(np.rint(x / np.float32(params.scale)) + params.zero_point, qmin, qmax)
    return ((q - params.zero_point) * np.float32(params.scale)).astype(np.float32)


def _quantize(model, ranges: dict, target: str, **options):
    ir_model = model if not isinstance(model, onnx.ModelProto) else model_io.from_proto(model)
    quantize = create_pass("quantize_static_linear", options)
    quantize.statistics = statistics(ranges=ranges)
    report = PassManager([quantize], target=target).run(ir_model)
    return ir_model, report.passes[0]


def _two_layers() -> onnx.ModelProto:
    """Two layers reading x (x·W + b and x·W2), the second's result read by a third layer."""
    w2 = _RNG.standard_normal((8, 6)).astype(np.float32)
    w3 = _RNG.standard_normal((6, 4)).astype(np.float32)
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, S, 8] x) => (float[B, S, 6] y, float[B, S, 4] z)
          <float[8, 6] w = {{{_floats(_W)}}}, float[6] b = {{{_floats(_B)}}}, float[8, 6] w2 = {{{_floats(w2)}}},
           float[6, 4] w3 = {{{_floats(w3)}}}> {{
            m = MatMul(x, w)
            y = Add(m, b)
            h = MatMul(x, w2)
            z = MatMul(h, w3) }}"""), w2, w3


@pytest.mark.parametrize("target, ops", [
    ("ort", ["QuantizeLinear", "MatMulIntegerToFloat", "MatMulIntegerToFloat", "QuantizeLinear",
             "MatMulIntegerToFloat"]),
    ("portable", ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul", "Add", "DequantizeLinear",
                  "MatMul", "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul"]),
])
@pytest.mark.parametrize("per_channel", [True, False])
def test_layers_run_the_integer_math_at_the_calibrated_scale(target, ops, per_channel):
    model, w2, w3 = _two_layers()
    x = _RNG.standard_normal((2, 5, 8)).astype(np.float32) * 1.2
    h_range = (-4.0, 5.0)
    quantized, report = _quantize(model, {"x": RANGE, "h": h_range}, target, per_channel=per_channel)
    # x quantized once for both layers that read it, at its calibrated scale: no run-time range
    assert op_types(quantized) == ops
    assert "3 MatMul/Gemm int8 (" + ("per-channel" if per_channel else "per-tensor") + \
        " weights, activations at calibrated scales)" in report.changes
    axis = 1 if per_channel else None

    def layer(value, weight, value_range):
        q, scale = symmetric_int8(weight, axis=axis)
        return _static(value, *value_range) @ dequantize(q, scale, axis)

    y, z = run(quantized, {"x": x})
    want_y = layer(x, _W, RANGE) + _B
    hidden = layer(x, w2, RANGE)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z, layer(hidden, w3, h_range), rtol=1e-4, atol=1e-4)
    assert np.abs(x).max() > 2.0  # saturated values took part, and the kernels clipped them as numpy did


def test_int8_symmetric_activations_run_the_same_math():
    model, w2, _ = _two_layers()
    x = _RNG.standard_normal((2, 5, 8)).astype(np.float32)
    quantized, _ = _quantize(model, {"x": RANGE, "h": (-4.0, 5.0)}, "ort", activation_type="s8", symmetric=True)
    q, scale = symmetric_int8(_W, axis=1)
    (y, _) = run(quantized, {"x": x})
    want = _static(x, *RANGE, activation_type="s8", symmetric=True) @ dequantize(q, scale, 1) + _B
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_attention_becomes_qattention_reading_x_at_its_calibrated_scale():
    model, d = _masked_attention("-3.4028234663852886e+38")
    rng = np.random.default_rng(0)  # its own draws, whichever tests ran before on this worker
    feeds = {"x": rng.standard_normal((2, 5, d)).astype(np.float32), "cond": rng.random((2, 1, 5, 5)) > 0.3}
    ranges = {"x": (-3.0, 3.0), "h0": (-2.0, 2.0)}
    result, report = _quantize(_typed(model), ranges, "ort")
    assert op_types(result) == ["Squeeze", "Cast", "QuantizeLinear", "QAttention", "QuantizeLinear", "QAttention"]
    assert "2 Attention → QAttention" in " ".join(report.changes)
    split, _ = _quantize(_typed(model), ranges, "ort", qattention=False)
    assert op_types(split).count("MultiHeadAttention") == 2 and "QuantizeLinear" in op_types(split)
    (want,) = run(model, feeds)
    (got,) = run(result, feeds)
    (same,) = run(split, feeds)
    np.testing.assert_allclose(got, same, rtol=1e-5, atol=1e-5)  # one packed product or three: the same int8 math
    assert _cosine(got, want) > 0.995


def test_a_layer_whose_input_has_no_range_stays_float_with_the_reason():
    model, _, _ = _two_layers()
    quantized, report = _quantize(model, {"x": RANGE}, "ort")  # h saw nothing finite: no histogram
    assert op_types(quantized).count("MatMul") == 1  # h·w3
    assert any("no finite calibrated range for 'h'" in reason for reason in report.skipped)
    attention, d = _masked_attention("-10000.0", layers=1)
    result, report = _quantize(_typed(attention), {}, "ort")
    assert op_types(result) == ["Where", "Attention"]
    assert any("Attention" in reason and "no finite calibrated range for 'x'" in reason for reason in report.skipped)


@pytest.mark.parametrize("options, message", [
    ({"activation_type": "u4"}, "choose u8 or s8"),
    ({"symmetric": True}, "uint8 needs its zero point"),
])
def test_bad_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        create_pass("quantize_static_linear", options)
