"""quantize_dynamic: every emitted form runs in ONNX Runtime and computes the quantization math.

The reference is numpy doing what the kernels promise: x quantized to uint8 over its own
range (DynamicQuantizeLinear), int8 weights with per-channel or per-tensor scales, an exact
integer product, then the rescale. Agreement is to float rounding, not to "close to float".
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir
import pytest

import graphopt
from graphopt.errors import GuardRefused, InputError
from graphopt import model as model_io
from graphopt.passes.quantize.dynamic import QuantizeDynamic
from graphopt.passes.quantize.scales import dequantize, symmetric_int8
from graphopt.pipeline import PassManager
from tests.helpers import op_types, parse, run, statistics

_RNG = np.random.default_rng(0)
_W = _RNG.standard_normal((8, 6)).astype(np.float32) * np.array([0.01, 0.1, 1, 3, 0.5, 2], np.float32)
_B = _RNG.standard_normal(6).astype(np.float32)


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _quantize_activation(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear and back: the x the integer kernels effectively multiply."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((high - low) / 255)
    zero = np.clip(np.rint(-low / scale), 0, 255)
    q = np.clip(np.rint(x / scale) + zero, 0, 255)
    return ((q - zero) * scale).astype(np.float32)


def _reference(x: np.ndarray, weight: np.ndarray, per_channel: bool) -> np.ndarray:
    q, scale = symmetric_int8(weight, axis=1 if per_channel else None)
    return _quantize_activation(x) @ dequantize(q, scale, axis=1 if per_channel else None)


def _matmul_model(body: str = "m = MatMul(x, w)\n y = Add(m, b)") -> onnx.ModelProto:
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, S, 8] x) => (float[B, S, 6] y) <float[8, 6] w = {{{_floats(_W)}}}, float[6] b = {{{_floats(_B)}}}> {{
            {body} }}""")


def _x(shape=(2, 5, 8)) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(np.float32)


def test_scales_per_channel_and_per_tensor_match_a_direct_computation():
    q, scale = symmetric_int8(_W, axis=1)
    np.testing.assert_allclose(scale, np.abs(_W).max(axis=0) / 127, rtol=1e-7)
    np.testing.assert_array_equal(q, np.clip(np.rint(_W / scale), -127, 127).astype(np.int8))
    q, scale = symmetric_int8(_W, axis=None)
    assert scale.shape == () and np.isclose(scale, np.abs(_W).max() / 127)
    assert np.abs(dequantize(q, scale, None) - _W).max() <= scale / 2 + 1e-7
    # a per-tensor scale loses the small columns the per-channel one keeps
    per_tensor_error = np.abs(dequantize(q, scale, None) - _W)[:, 0].max()
    q1, s1 = symmetric_int8(_W, axis=1)
    assert np.abs(dequantize(q1, s1, 1) - _W)[:, 0].max() < per_tensor_error / 10


def test_an_all_zero_channel_gets_a_usable_scale():
    weight = _W.copy()
    weight[:, 2] = 0
    q, scale = symmetric_int8(weight, axis=1)
    assert scale[2] == 1 and not q[:, 2].any()


@pytest.mark.parametrize("target, ops", [
    ("ort", ["DynamicQuantizeMatMul"]),
    ("portable", ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "Add"]),
])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_a_matmul_with_bias_runs_the_integer_math(target, ops, per_channel):
    model = _matmul_model()
    x = _x()
    result = graphopt.optimize(model, passes=[("quantize_dynamic", {"per_channel": per_channel})], target=target)
    assert op_types(result.model) == ops
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, _reference(x, _W, per_channel) + _B, rtol=1e-4, atol=1e-4)
    (want,) = run(model, {"x": x})
    assert np.corrcoef(got.reshape(-1), want.reshape(-1))[0, 1] > 0.999


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_matmuls_reading_one_input_quantize_it_once(target):
    w2 = (_W[::-1] * 0.5).copy()
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, S, 8] x) => (float[B, S, 6] y) <float[8, 6] w = {{{_floats(_W)}}}, float[8, 6] w2 = {{{_floats(w2)}}}> {{
            m = MatMul(x, w)
            n = MatMul(x, w2)
            y = Add(m, n) }}""")
    x = _x()
    result = graphopt.optimize(model, passes="quantize_dynamic", target=target)
    assert op_types(result.model).count("DynamicQuantizeLinear") == 1
    if target == "ort":
        assert op_types(result.model).count("MatMulIntegerToFloat") == 2
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, _reference(x, _W, True) + _reference(x, w2, True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("target", ["ort", "portable"])
def test_gemm_reads_as_matmul_and_bias(trans_b, target):
    weight = _W.T.copy() if trans_b else _W
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 8] x) => (float[N, 6] y) <float[{weight.shape[0]}, {weight.shape[1]}] w = {{{_floats(weight)}}},
                                             float[6] b = {{{_floats(_B)}}}> {{
            y = Gemm<transB = {trans_b}>(x, w, b) }}""")
    x = _x((4, 8))
    result = graphopt.optimize(model, passes="quantize_dynamic", target=target)
    assert "Gemm" not in op_types(result.model)
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, _reference(x, _W, True) + _B, rtol=1e-4, atol=1e-4)


def test_an_embedding_table_becomes_int8_rows_with_row_scales():
    table = _RNG.standard_normal((50, 6)).astype(np.float32) * np.linspace(0.01, 5, 50, dtype=np.float32)[:, None]
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (int64[B, S] ids) => (float[B, S, 6] y) <float[50, 6] table = {{{_floats(table)}}}> {{
            y = Gather(table, ids) }}""")
    ids = _RNG.integers(0, 50, (2, 7)).astype(np.int64)
    result = graphopt.optimize(model, passes=[("quantize_dynamic", {"min_embedding_bytes": 0})])
    (got,) = run(result.model, {"ids": ids})
    q, scale = symmetric_int8(table, axis=0)
    np.testing.assert_allclose(got, dequantize(q, scale, 0)[ids], rtol=1e-6)
    sizes = {value.const_value.dtype.name: value.const_value.nbytes for value in result.model.graph.initializers.values()}
    assert sizes["INT8"] == table.size


def test_attention_keeps_its_mask_and_quantizes_the_qkv_projection():
    d, heads = 8, 2
    weight = _RNG.standard_normal((d, 3 * d)).astype(np.float32) * 0.3
    bias = _RNG.standard_normal(3 * d).astype(np.float32) * 0.1
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[B, S, {d}] x, float[B, 1, S, S] mask) => (float[B, S, {d}] y)
          <float[{d}, {3 * d}] w = {{{_floats(weight)}}}, float[{3 * d}] b = {{{_floats(bias)}}}> {{
            y = com.microsoft.Attention<num_heads = {heads}>(x, w, b, , , mask) }}""")
    x = _x((2, 5, d))
    mask = np.where(_RNG.random((2, 1, 5, 5)) > 0.3, 0, -10000).astype(np.float32)
    result = graphopt.optimize(model, passes="quantize_dynamic", target="ort")
    # three projections reading one quantized x: no Split copies the packed result
    assert op_types(result.model) == ["DynamicQuantizeLinear"] + ["MatMulIntegerToFloat"] * 3 + ["MultiHeadAttention"]
    assert "1 Attention QKV projections int8" in result.report.passes[0].changes[1]
    (want,) = run(model, {"x": x, "mask": mask})
    (got,) = run(result.model, {"x": x, "mask": mask})
    cosine = float(np.dot(got.reshape(-1), want.reshape(-1)) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.999


def _masked_attention(fill: str, layers: int = 2, cond_batch: str = "B") -> tuple[onnx.ModelProto, int]:
    """`layers` Attention nodes in a row, each adding Where(cond, 0, fill) to its scores (how both
    exporters write the padding mask)."""
    d, heads = 8, 2
    inits, body, x = [], [], "x"
    for layer in range(layers):
        weight = _RNG.standard_normal((d, 3 * d)).astype(np.float32) * 0.3
        bias = _RNG.standard_normal(3 * d).astype(np.float32) * 0.1
        inits += [f"float[{d}, {3 * d}] w{layer} = {{{_floats(weight)}}}",
                  f"float[{3 * d}] b{layer} = {{{_floats(bias)}}}"]
        out = "y" if layer == layers - 1 else f"h{layer}"
        body.append(f"{out} = com.microsoft.Attention<num_heads = {heads}, scale = 0.3>"
                    f"({x}, w{layer}, b{layer}, , , bias)")
        x = out
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[B, S, {d}] x, bool[{cond_batch}, 1, S, S] cond) => (float[B, S, {d}] y)
          <{", ".join(inits + [f"float[B, S, {d}] h{layer}" for layer in range(layers - 1)])},
           float zero = {{0.0}}, float fill = {{{fill}}}> {{
            bias = Where(cond, zero, fill)
            {chr(10).join(body)} }}""")
    return model, d


def _quantized_forms(model: onnx.ModelProto, per_channel: bool = True):
    """(QAttention form, split form: three int8 MatMuls and MultiHeadAttention)."""
    options = {"per_channel": per_channel}
    return (graphopt.optimize(model, passes=[("quantize_dynamic", options)], target="ort"),
            graphopt.optimize(model, passes=[("quantize_dynamic", {**options, "qattention": False})], target="ort"))


def _cosine(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.dot(got.reshape(-1), want.reshape(-1)) / np.linalg.norm(got) / np.linalg.norm(want))


@pytest.mark.parametrize("per_channel", [True, False])
def test_attention_with_a_where_mask_becomes_qattention_with_the_same_result(per_channel):
    model, d = _masked_attention("-3.4028234663852886e+38")
    result, split = _quantized_forms(model, per_channel)
    # one mask conversion shared by both layers
    assert op_types(result.model) == ["Squeeze", "Cast"] + ["DynamicQuantizeLinear", "QAttention"] * 2
    assert "2 Attention → QAttention" in result.report.passes[0].changes[0]
    assert op_types(split.model).count("MultiHeadAttention") == 2
    feeds = {"x": _x((2, 5, d)), "cond": _RNG.random((2, 1, 5, 5)) > 0.3}
    (want,) = run(model, feeds)
    (got,) = run(result.model, feeds)
    (same,) = run(split.model, feeds)
    np.testing.assert_allclose(got, same, rtol=1e-5, atol=1e-6)  # the same int8 math, the same mask
    assert _cosine(got, want) > 0.999


@pytest.mark.parametrize("fill", ["-3.4028234663852886e+38", "-inf"])
def test_a_query_that_may_attend_nothing_gets_what_the_original_computes(fill):
    # adding finfo.min everywhere leaves a uniform softmax; adding -inf, NaN: the mask_filter_value says which
    model, d = _masked_attention(fill, layers=1)
    result, split = _quantized_forms(model)
    assert "QAttention" in op_types(result.model)
    cond = _RNG.random((2, 1, 5, 5)) > 0.3
    cond[1, 0, 2, :] = False
    feeds = {"x": _x((2, 5, d)), "cond": cond}
    (want,) = run(model, feeds)
    (got,) = run(result.model, feeds)
    (same,) = run(split.model, feeds)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).any() == (fill == "-inf")
    np.testing.assert_allclose(got, same, rtol=1e-5, atol=1e-6)
    keep = ~np.isnan(want)
    assert _cosine(got[keep], want[keep]) > 0.999


def test_a_mask_that_broadcasts_over_the_batch_keeps_multiheadattention():
    # QAttention's mask has the batch dim of x; a [1, 1, S, S] cond would fail there at run time
    model, d = _masked_attention("-10000.0", layers=1, cond_batch="1")
    result = graphopt.optimize(model, passes="quantize_dynamic", target="ort")
    assert "QAttention" not in op_types(result.model) and "MultiHeadAttention" in op_types(result.model)
    feeds = {"x": _x((2, 5, d)), "cond": _RNG.random((1, 1, 5, 5)) > 0.3}
    (want,) = run(model, feeds)
    (got,) = run(result.model, feeds)
    assert _cosine(got, want) > 0.999


def test_excluded_nodes_stay_float_with_the_reason():
    model = _matmul_model("m = MatMul(x, w)\n y = Add(m, b)")
    with pytest.raises(GuardRefused, match="quantized 0 of 1 layers: 1 \\(MatMul 'MatMul'\\): excluded"):
        graphopt.optimize(model, passes=[("quantize_dynamic", {"exclude": "MatMul"})])
    result = graphopt.optimize(model, passes=[("quantize_dynamic", {"exclude": "MatMul"})], force=True)
    assert op_types(result.model) == ["MatMul", "Add"]
    assert "kept float: excluded" in result.report.passes[0].skipped[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 3}, "--bits 3"),
    ({"mode": "fancy"}, "--mode 'fancy': choose from dynamic, weight-only, static"),
    ({"exclude": ["no_such_node"]}, "--exclude names no node or op type of the model \\(after the float passes\\): no_such_node"),
    ({"preset": "int8-dynamic"}, "choose the float passes"),
])
def test_bad_quantize_options_are_clear_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        graphopt.quantize(_matmul_model(), **kwargs)


def test_quantize_validates_at_int8_tolerance_and_reports_the_size(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_model(), path)
    result = graphopt.quantize(path, tmp_path / "q.onnx", preset="O0", target="ort", check_speed=False)
    assert result.validation.passed and result.validation.tolerance.name == "int8"
    assert result.report.passes[-1].parameter_bytes_after < result.report.passes[-1].parameter_bytes_before
    assert result.result_bytes < result.float_bytes


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_chained_and_unnamed_matmuls_quantize_one_after_the_other(target):
    # Each MatMul reads the one before; quantizing the first replaces the value the second reads.
    square = _RNG.standard_normal((6, 6)).astype(np.float32)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, 8] x) => (float[B, 6] y) <float[8, 6] w = {{{_floats(_W)}}}, float[6, 6] v = {{{_floats(square)}}}> {{
            a = MatMul(x, w)
            b = MatMul(a, v)
            c = MatMul(a, v)
            y = Add(b, c) }}""")
    for node in model.graph.node:
        node.name = ""
    x = _x((3, 8))
    result = graphopt.optimize(model, passes="quantize_dynamic", target=target)
    (got,) = run(result.model, {"x": x})
    (want,) = run(model, {"x": x})
    assert "MatMul" not in op_types(result.model)
    assert float(np.dot(got.reshape(-1), want.reshape(-1)) / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999


class _Quantized:
    def __init__(self, model, report):
        self.model, self.report = model, report


def _outlier_pass(target: str, peaks: np.ndarray, **options) -> _Quantized:
    """quantize_dynamic with x's measured per-channel peaks, as graphopt.quantize hands them over."""
    quantize = QuantizeDynamic(**{"outlier_ratio": 6.0, **options})
    quantize.statistics = statistics(peaks={"x": peaks})
    model = model_io.from_proto(_matmul_model())
    return _Quantized(model, PassManager([quantize], target=target).run(model))


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_outlier_channels_stay_float_beside_the_int8_product(target):
    x = _x()
    x[..., 3] *= 300  # one channel dwarfs the others: per-tensor uint8 x would lose them
    peaks = np.abs(x).reshape(-1, 8).max(axis=0)
    result = _outlier_pass(target, peaks)
    assert "outlier input channels" in result.report.passes[0].changes[-1]
    assert op_types(result.model).count("MatMul") == 1 and "Gather" in op_types(result.model)
    (got,) = run(result.model, {"x": x})
    inliers, rows = x.copy(), _W.copy()
    inliers[..., 3], rows[3] = 0, 0
    want = _reference(inliers, rows, per_channel=True) + x[..., [3]] @ _W[[3]] + _B
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the point of it: far closer to float than quantizing x with its outlier
    (plain,) = run(graphopt.optimize(_matmul_model(), passes="quantize_dynamic", target=target).model, {"x": x})
    exact = x @ _W + _B
    assert np.abs(got - exact).max() < np.abs(plain - exact).max() / 10


def test_no_outliers_below_the_ratio_and_at_most_max_outliers():
    peaks = np.array([1, 1, 1, 5, 1, 1, 1, 1], np.float32)
    assert "Gather" not in op_types(_outlier_pass("ort", peaks).model)  # 5x the median: under 6
    peaks = np.array([100, 90, 80, 1, 1, 1, 1, 1], np.float32)
    model = _outlier_pass("ort", peaks, max_outliers=2).model
    channels = [value.const_value.numpy() for value in model.graph.initializers.values()
                if value.name.endswith("outlier_channels")]
    np.testing.assert_array_equal(channels[0], [0, 1])
    with pytest.raises(InputError, match="outlier_ratio must be above 1"):
        _outlier_pass("ort", peaks, outlier_ratio=0.5)


def test_the_bias_the_next_node_adds_moves_into_the_int8_kernel():
    # ort: Sum(x·W, residual, b) → DynamicQuantizeMatMul(x, …, b) + Sum(·, residual); BiasGelu → Gelu
    w2 = _RNG.standard_normal((6, 6)).astype(np.float32)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[B, S, 8] x, float[B, S, 6] r) => (float[B, S, 6] y)
          <float[8, 6] w = {{{_floats(_W)}}}, float[6] b = {{{_floats(_B)}}}, float[6, 6] v = {{{_floats(w2)}}}> {{
            m = MatMul(x, w)
            h = com.microsoft.BiasGelu(m, b)
            n = MatMul(h, v)
            y = Sum(n, r, b) }}""")
    x, r = _x(), _x((2, 5, 6))
    result = graphopt.optimize(_typed(model), passes="quantize_dynamic", target="ort")
    assert op_types(result.model) == ["DynamicQuantizeMatMul", "Gelu", "DynamicQuantizeMatMul", "Sum"]
    graph = result.model.graph
    assert [len(node.inputs) for node in graph] == [5, 1, 5, 2]
    (got,) = run(result.model, {"x": x, "r": r})
    q, scale = symmetric_int8(_W, axis=1)
    hidden = _quantize_activation(x) @ dequantize(q, scale, 1) + _B
    hidden = hidden * 0.5 * (1 + np.vectorize(math.erf)(hidden / np.sqrt(2)))
    np.testing.assert_allclose(got, _reference(hidden.astype(np.float32), w2, True) + r + _B, rtol=1e-4, atol=1e-4)


def _typed(model: onnx.ModelProto):
    """The model in onnx-ir with float32 on the outputs ONNX's inference leaves untyped (com.microsoft
    ops), as they are in an exported and fused model."""
    ir_model = model_io.from_proto(model)
    for node in ir_model.graph:
        for value in node.outputs:
            value.dtype = value.dtype or onnx_ir.DataType.FLOAT
    return ir_model


_W1 = _RNG.standard_normal((8, 12)).astype(np.float32)
_W2 = _RNG.standard_normal((12, 6)).astype(np.float32) * 0.3
_B1 = _RNG.standard_normal(12).astype(np.float32)


def _ffn(target: str) -> onnx.ModelProto:
    """x_in → x_in·W1 (+ b1) → Gelu → ·W2 → Sum with the residual: the FFN of a transformer layer,
    in the form graphopt's fusions leave it for each target."""
    up = "m = MatMul(x, w1)\n h = com.microsoft.BiasGelu(m, b1)" if target == "ort" else \
        "m = MatMul(x, w1)\n a = Add(m, b1)\n h = Gelu(a)"
    return parse(f"""<ir_version: 10, opset_import: ["" : 20, "com.microsoft" : 1]>
        g (float[B, S, 8] x, float[B, S, 6] r) => (float[B, S, 6] y)
          <float[8, 12] w1 = {{{_floats(_W1)}}}, float[12] b1 = {{{_floats(_B1)}}}, float[12, 6] w2 = {{{_floats(_W2)}}}> {{
            {up}
            n = MatMul(h, w2)
            y = Sum(n, r) }}""")


def _gelu(value: np.ndarray) -> np.ndarray:
    return (value * 0.5 * (1 + np.vectorize(math.erf)(value / np.sqrt(2)))).astype(np.float32)


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_outlier_channels_carved_out_of_the_gelu_that_makes_them(target):
    x, r = _x(), _x((2, 5, 6))
    hidden = _gelu(x @ _W1 + _B1)
    outliers = [2, 7]
    w1, b1 = _W1.copy(), _B1.copy()
    w1[:, outliers] *= 40  # two hidden channels dwarf the others
    b1[outliers] += 5
    model = _ffn(target)
    for tensor in model.graph.initializer:
        if tensor.name in ("w1", "b1"):
            tensor.CopyFrom(onnx.numpy_helper.from_array({"w1": w1, "b1": b1}[tensor.name], tensor.name))
    hidden = _gelu(x @ w1 + b1)
    quantize = QuantizeDynamic(outlier_ratio=6.0)
    quantize.statistics = statistics(peaks={"h": np.abs(hidden).reshape(-1, 12).max(axis=0)})
    ir_model = _typed(model)
    report = PassManager([quantize], target=target).run(ir_model)
    assert "1 activations' outlier channels" in " ".join(report.passes[0].changes)
    ops = op_types(ir_model)
    assert "Gather" not in ops and ops.count("MatMul") == 2  # no mask, no gathered channels: two small float MatMuls
    (got,) = run(ir_model, {"x": x, "r": r})
    exact = hidden @ _W2 + r
    # the carved channels are exact; the rest is int8 with the outliers out of x's range
    inliers = hidden.copy()
    inliers[..., outliers] = 0
    q1, s1 = symmetric_int8(np.where(np.isin(np.arange(12), outliers), 0, w1), axis=1)
    main = _gelu(_quantize_activation(x) @ dequantize(q1, s1, 1) + np.where(np.isin(np.arange(12), outliers), 0, b1))
    rows = _W2.copy()
    rows[outliers] = 0
    q2, s2 = symmetric_int8(rows, axis=1)
    want = _quantize_activation(main) @ dequantize(q2, s2, 1) + hidden[..., outliers] @ _W2[outliers] + r
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    (plain,) = run(graphopt.optimize(_typed(model), passes="quantize_dynamic", target=target).model, {"x": x, "r": r})
    assert np.abs(got - exact).max() < np.abs(plain - exact).max() / 4


def test_carving_alone_is_exact_in_float():
    from graphopt.passes.quantize.outliers import carve

    model = _typed(_ffn("ort"))
    graph = model.graph
    x, r = _x(), _x((2, 5, 6))
    (want,) = run(_ffn("ort"), {"x": x, "r": r})
    hidden = next(node for node in graph if node.op_type == "BiasGelu").outputs[0]
    peaks = np.ones(12, np.float32)
    peaks[[4, 9]] = 50
    added = carve(graph, hidden, peaks, ratio=6, most=8, frozen=lambda node: False)
    assert len(added) == 2 and op_types(model).count("Sum") == 1
    sum_node = next(node for node in graph if node.op_type == "Sum")
    assert len(sum_node.inputs) == 3  # the outlier product joins the residual sum
    (got,) = run(model, {"x": x, "r": r})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert carve(graph, hidden, np.ones(12, np.float32), ratio=6, most=8, frozen=lambda node: False) == []
