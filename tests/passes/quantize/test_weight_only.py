"""quantize_weight_only: every emitted form runs in ONNX Runtime and computes x @ the int4 weights.

The reference is numpy written out block by block (`_dequantized`): for each output column,
blocks of `block_size` values along K with scale max|w| / 7 and q = clip(round(w / s), -8, 7).
With float activations (accuracy_level 0, DequantizeLinear, the gathers) ONNX Runtime must
agree with x @ those weights to float rounding; accuracy_level 4 quantizes x to int8 as well.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt
from graphopt.errors import GuardRefused, InputError
from graphopt.passes.quantize.blocks import (
    block_error,
    dequantize_blocks,
    pack_uint4,
    quantize_blocks,
    to_blocks,
)
from graphopt.passes.quantize.scales import dequantize, symmetric_int8
from graphopt.passes.quantize.weight_only import QuantizeWeightOnly
from graphopt.pipeline import PassManager
from tests.helpers import op_types, parse, run, statistics

_RNG = np.random.default_rng(0)
_K, _N = 40, 6  # K is not a multiple of 16 or 32: the last block is padded
_W = _RNG.standard_normal((_K, _N)).astype(np.float32) * np.array([0.01, 0.1, 1, 3, 0.5, 2], np.float32)
_B = _RNG.standard_normal(_N).astype(np.float32)
_EXACT = {"accuracy_level": 0}


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _dequantized(weight: np.ndarray, block_size: int) -> np.ndarray:
    """Round-to-nearest blocked int4 and back, one column and one block at a time."""
    result = np.zeros_like(weight)
    for n in range(weight.shape[1]):
        for start in range(0, weight.shape[0], block_size):
            block = weight[start:start + block_size, n]
            peak = np.float32(np.abs(block).max())
            scale = np.float32(peak / np.float32(7)) if peak > 0 else np.float32(1)
            result[start:start + block_size, n] = np.clip(np.rint(block / scale), -8, 7) * scale
    return result


def _dequantized_with_zero_points(weight: np.ndarray, block_size: int, bits: int = 4) -> np.ndarray:
    """Asymmetric blocks and back: each block spans [min(w, 0), max(w, 0)] in 2^bits - 1 steps,
    zero point z = round(-low / s) + qmin, q = clip(round(w / s) + z, qmin, qmax), w ≈ s · (q - z)."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    result = np.zeros_like(weight)
    for n in range(weight.shape[1]):
        for start in range(0, weight.shape[0], block_size):
            block = weight[start:start + block_size, n]
            low, high = min(np.float32(block.min()), np.float32(0)), max(np.float32(block.max()), np.float32(0))
            scale = np.float32((high - low) / np.float32(qmax - qmin)) if high > low else np.float32(1)
            zero = np.clip(np.rint(-low / scale) + qmin, qmin, qmax)
            result[start:start + block_size, n] = (np.clip(np.rint(block / scale) + zero, qmin, qmax) - zero) * scale
    return result


def _dequantized_int8(weight: np.ndarray, block_size: int) -> np.ndarray:
    return _dequantized_with_zero_points(weight, block_size, bits=8)


def _heavy_tailed(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(2, shape).astype(np.float32)


def _model(opset: int = 18, body: str = "m = MatMul(x, w)\n y = Add(m, b)", weight: np.ndarray = _W) -> onnx.ModelProto:
    """x @ w (+ b) with x [B, S, K]; b is _B for the default weight, zeros for another."""
    k, n = weight.shape
    bias = _B if weight is _W else np.zeros(n, np.float32)
    return parse(f"""<ir_version: {10 if opset >= 21 else 9}, opset_import: ["" : {opset}]>
        g (float[B, S, {k}] x) => (float[B, S, {n}] y)
          <float[{k}, {n}] w = {{{_floats(weight)}}}, float[{n}] b = {{{_floats(bias)}}}> {{
            {body} }}""")


def _x(shape=(2, 5, _K)) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.reshape(-1), b.reshape(-1)) / np.linalg.norm(a) / np.linalg.norm(b))


def _quantize(model, target: str, **options) -> graphopt.OptimizeResult:
    """The pass with symmetric blocks unless `symmetric=False` (the pass's default) is given."""
    options.setdefault("symmetric", True)
    return graphopt.optimize(model, passes=[("quantize_weight_only", options)], target=target)


def _initializers(model: ir.Model) -> dict[str, ir.TensorProtocol]:
    return {name: value.const_value for name, value in model.graph.initializers.items()}


# -- the arithmetic -------------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [16, 32, 64])
def test_round_to_nearest_blocks_match_a_direct_computation(block_size):
    weight = _heavy_tailed((_K, _N))
    weight[:, 1] = 0  # all-zero blocks
    q, scale, zero = quantize_blocks(weight, block_size)
    blocks = -(-_K // block_size)
    assert not zero.any()
    assert q.shape == (_N, blocks, block_size) and scale.shape == (_N, blocks)
    assert q.min() >= -8 and q.max() <= 7 and q.dtype == np.int8
    np.testing.assert_array_equal(dequantize_blocks(q, scale, zero, _K), _dequantized(weight, block_size))
    assert (scale[1] == 1).all() and not q[1].any()


def test_zero_point_blocks_match_a_direct_computation_with_less_error():
    weight = _heavy_tailed((_K, _N))
    weight[:, 1] = 0
    weight[:, 2] = np.abs(weight[:, 2])  # all positive: the zero point sits at -8
    q, scale, zero = quantize_blocks(weight, 16, symmetric=False)
    np.testing.assert_allclose(dequantize_blocks(q, scale, zero, _K), _dequantized_with_zero_points(weight, 16),
                               rtol=1e-6, atol=1e-7)
    assert (zero[2] == -8).all() and (scale[1] == 1).all() and (q[1] == zero[1][..., None]).all()  # zeros stay 0
    gaussian = np.random.default_rng(4).standard_normal((256, 64)).astype(np.float32)
    errors = [np.square(dequantize_blocks(*quantize_blocks(gaussian, 32, symmetric=symmetric), 256) - gaussian).sum()
              for symmetric in (True, False)]
    assert errors[1] < 0.75 * errors[0], errors


def test_packing_puts_the_first_value_in_the_low_nibble_offset_by_8():
    packed = pack_uint4(np.array([[-8, 7, 0, -1]], np.int8))
    assert packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, [[0xF0, 0x78]])


def test_mse_is_never_worse_than_round_to_nearest_and_better_on_heavy_tails():
    weight = _heavy_tailed((256, 16))
    blocks, ones = to_blocks(weight, 32), np.ones((8, 32), np.float32)
    rtn, mse = quantize_blocks(weight, 32, "rtn"), quantize_blocks(weight, 32, "mse")
    rtn_error, mse_error = block_error(blocks, *rtn, ones), block_error(blocks, *mse, ones)
    assert (mse_error <= rtn_error).all()
    assert (mse_error < rtn_error).any()
    total = [np.square(dequantize_blocks(*quantized, 256) - weight).sum() for quantized in (rtn, mse)]
    assert total[1] < total[0]
    assert rtn[0].min() == -7 and mse[0].min() == -8  # a clipped scale saturates at -8, not -7


def test_channel_weights_change_the_chosen_scales():
    weight = _heavy_tailed((256, 16))
    importance = np.where(np.arange(256) % 32 < 4, 100.0, 0.01).astype(np.float32)
    uniform = quantize_blocks(weight, 32, "mse")
    weighted = quantize_blocks(weight, 32, "mse", importance)
    assert not np.array_equal(uniform[1], weighted[1])
    blocks, weights = to_blocks(weight, 32), importance.reshape(8, 32)
    assert block_error(blocks, *weighted, weights).sum() < block_error(blocks, *uniform, weights).sum()


# -- ort: MatMulNBits --------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_matmul_nbits_computes_x_times_the_int4_weights(bias):
    model = _model(body="m = MatMul(x, w)\n y = Add(m, b)" if bias else "y = MatMul(x, w)")
    x = _x()
    result = _quantize(model, "ort", block_size=16, **_EXACT)
    assert op_types(result.model) == ["MatMulNBits"]
    (node,) = result.model.graph
    assert len(node.inputs) == (6 if bias else 3)
    assert {name: attr.value for name, attr in node.attributes.items()} == \
        {"K": _K, "N": _N, "bits": 4, "block_size": 16, "accuracy_level": 0}
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, x @ _dequantized(_W, 16) + (_B if bias else 0), rtol=1e-4, atol=1e-5)


def test_matmul_nbits_stores_blocks_along_k_as_unsigned_nibbles():
    result = _quantize(_model(), "ort", block_size=16)
    tensors = _initializers(result.model)
    packed, scales = tensors["w_int4"].numpy(), tensors["w_scale"].numpy()
    assert packed.shape == (_N, 3, 8) and packed.dtype == np.uint8 and scales.shape == (_N, 3)
    nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(_N, 3, 16).astype(np.int8) - 8
    np.testing.assert_array_equal(dequantize_blocks(nibbles, scales, np.zeros(scales.shape, np.int8), _K),
                                  _dequantized(_W, 16))


def test_accuracy_level_4_quantizes_activations_to_int8_and_stays_close():
    model = _model()
    x = _x()
    assert _quantize(model, "ort").model.graph.node(0).attributes["accuracy_level"].value == 0  # the default
    result = _quantize(model, "ort", accuracy_level=4)
    (node,) = result.model.graph
    assert node.attributes["accuracy_level"].value == 4 and node.attributes["block_size"].value == 32
    (got,) = run(result.model, {"x": x})
    assert _cosine(got, x @ _dequantized(_W, 32) + _B) > 0.999


def test_attention_qkv_becomes_matmul_nbits_with_the_mask_kept():
    d, heads = 32, 2
    weight = _RNG.standard_normal((d, 3 * d)).astype(np.float32) * 0.3
    bias = _RNG.standard_normal(3 * d).astype(np.float32) * 0.1

    def attention(w: np.ndarray) -> onnx.ModelProto:
        return parse(f"""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
            g (float[B, S, {d}] x, float[B, 1, S, S] mask) => (float[B, S, {d}] y)
              <float[{d}, {3 * d}] w = {{{_floats(w)}}}, float[{3 * d}] b = {{{_floats(bias)}}}> {{
                y = com.microsoft.Attention<num_heads = {heads}>(x, w, b, , , mask) }}""")

    feeds = {"x": _x((2, 5, d)), "mask": np.where(_RNG.random((2, 1, 5, 5)) > 0.3, 0, -10000).astype(np.float32)}
    result = _quantize(attention(weight), "ort", block_size=16)
    assert op_types(result.model) == ["MatMulNBits", "Split", "MultiHeadAttention"]
    assert "1 Attention QKV projections int4" in result.report.passes[0].changes[1]
    (want,) = run(attention(_dequantized(weight, 16)), feeds)  # float attention over the int4 weights
    (got,) = run(result.model, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["ort", "portable"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_or_without_trans_b(trans_b, target):
    weight = _W.T.copy() if trans_b else _W
    model = parse(f"""<ir_version: 10, opset_import: ["" : 21]>
        g (float[M, {_K}] x) => (float[M, {_N}] y)
          <float[{weight.shape[0]}, {weight.shape[1]}] w = {{{_floats(weight)}}}, float[{_N}] b = {{{_floats(_B)}}}> {{
            y = Gemm<transB = {trans_b}>(x, w, b) }}""")
    x = _x((4, _K))
    result = _quantize(model, target, **_EXACT)
    assert op_types(result.model) == (["MatMulNBits"] if target == "ort" else ["DequantizeLinear", "Gemm"])
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, x @ _dequantized(_W, 32) + _B, rtol=1e-4, atol=1e-5)


def test_mse_reaches_the_kernel():
    weight = _heavy_tailed((64, 8))
    model = _model(body="y = MatMul(x, w)", weight=weight)
    x = _x((2, 3, 64))
    quantize = QuantizeWeightOnly(algorithm="mse", symmetric=True, **_EXACT)  # no statistics: unweighted
    quantized = ir.serde.deserialize_model(model)
    report = PassManager([quantize], target="ort").run(quantized)
    (got,) = run(quantized, {"x": x})
    np.testing.assert_allclose(got, x @ dequantize_blocks(*quantize_blocks(weight, 32, "mse"), 64), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, x @ _dequantized(weight, 32), rtol=1e-4, atol=1e-5)
    assert "1 MatMul/Gemm int4 (block 32, symmetric, mse): MatMulNBits" in report.passes[0].changes
    measured = _quantize(model, "ort", algorithm="mse", **_EXACT)  # a pass list: measured on the validation inputs
    assert measured.report.passes[-1].changes == report.passes[0].changes and measured.validation is None


def test_channel_weights_for_the_input_steer_the_pass():
    weight = _heavy_tailed((64, 8))
    model = ir.serde.deserialize_model(_model(body="y = MatMul(x, w)", weight=weight))
    quantize = QuantizeWeightOnly(algorithm="mse", accuracy_level=0, symmetric=True)
    quantize.target = "ort"
    importance = np.where(np.arange(64) % 32 < 4, 100.0, 0.01).astype(np.float32)
    quantize.statistics = statistics(mean_squares={"x": importance})
    quantize(model)
    scales = _initializers(model)["w_scale"].numpy()
    np.testing.assert_array_equal(scales, quantize_blocks(weight, 32, "mse", importance)[1])
    assert not np.array_equal(scales, quantize_blocks(weight, 32, "mse")[1])


def test_a_shared_weight_splits_when_its_inputs_weigh_channels_differently():
    weight = _heavy_tailed((64, 8))
    model = ir.serde.deserialize_model(_model(body="m = MatMul(x, w)\n r = Relu(x)\n n = MatMul(r, w)\n y = Add(m, n)",
                                              weight=weight))
    quantize = QuantizeWeightOnly(algorithm="mse", symmetric=True)
    quantize.target = "ort"
    importance = np.where(np.arange(64) % 32 < 4, 100.0, 0.01).astype(np.float32)
    quantize.statistics = statistics(mean_squares={"x": importance})
    quantize(model)
    scales = [tensor.numpy() for name, tensor in _initializers(model).items() if name.startswith("w_scale")]
    assert len(scales) == 2
    np.testing.assert_array_equal(scales[0], quantize_blocks(weight, 32, "mse", importance)[1])
    np.testing.assert_array_equal(scales[1], quantize_blocks(weight, 32, "mse")[1])


def test_channel_weights_of_the_wrong_length_are_an_input_error():
    quantize = QuantizeWeightOnly(algorithm="mse")
    quantize.target = "ort"
    quantize.statistics = statistics(mean_squares={"x": np.ones(_K + 1, np.float32)})
    with pytest.raises(InputError, match=f"channel weights for 'x' must be {_K} finite values"):
        quantize(ir.serde.deserialize_model(_model()))


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_zero_points_reach_the_kernel_by_default(target):
    x = _x()
    result = graphopt.optimize(_model(opset=21), passes=[("quantize_weight_only", {"block_size": 16, **_EXACT})],
                               target=target)
    tensors = _initializers(result.model)
    if target == "ort":
        (node,) = [node for node in result.model.graph if node.op_type == "MatMulNBits"]
        assert node.inputs[3].name == "w_zero" and tensors["w_zero"].shape == (_N, 2)  # 3 blocks, 2 per byte
    else:
        assert tensors["w_zero"].dtype == ir.DataType.INT4 and tensors["w_zero"].shape == (3, _N)
    assert "(block 16, zero points, rtn)" in result.report.passes[0].changes[0]
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, x @ _dequantized_with_zero_points(_W, 16) + _B, rtol=1e-4, atol=1e-5)


# -- int8 layers ------------------------------------------------------------------------------

def test_eight_bit_blocks_match_a_direct_computation_and_are_near_float():
    weight = _heavy_tailed((300, _N))
    q, scale, zero = quantize_blocks(weight, 128, symmetric=False, bits=8)
    assert q.shape == (_N, 3, 128) and q.min() >= -128 and q.max() <= 127 and zero.dtype == np.int8
    eight = dequantize_blocks(q, scale, zero, 300)
    np.testing.assert_allclose(eight, _dequantized_int8(weight, 128), rtol=1e-6, atol=1e-7)
    four = dequantize_blocks(*quantize_blocks(weight, 32, symmetric=False), 300)
    assert np.linalg.norm(eight - weight) < np.linalg.norm(four - weight) / 5  # heavy tails, 4x larger blocks


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_int8_layers_are_quantized_to_8_bits_in_blocks_of_128(target):
    model = parse(f"""<ir_version: 10, opset_import: ["" : 21]>
        g (float[B, S, {_K}] x) => (float[B, S, {_N}] y)
          <float[{_K}, {_N}] w = {{{_floats(_W)}}}, float[{_K}, {_N}] w2 = {{{_floats(_W[:, ::-1])}}}> {{
            h = MatMul(x, w)
            m = MatMul(x, w2)
            y = Add(h, m) }}""")
    model.graph.node[0].name, model.graph.node[1].name = "first", "second"
    x = _x()
    result = _quantize(model, target, symmetric=False, int8_layers="second", **_EXACT)
    tensors = _initializers(result.model)
    if target == "ort":
        first, second = [node for node in result.model.graph if node.op_type == "MatMulNBits"]
        assert first.attributes["bits"].value == 4 and first.attributes["block_size"].value == 32
        assert second.attributes["bits"].value == 8 and second.attributes["block_size"].value == 128
        assert tensors["w2_int8"].dtype == ir.DataType.UINT8 and tensors["w2_int8"].shape == (_N, 1, 128)
        assert tensors["w2_zero"].dtype == ir.DataType.UINT8 and tensors["w2_zero"].shape == (_N, 1)
    else:
        assert tensors["w2_int8"].dtype == ir.DataType.INT8 and tensors["w2_int8"].shape == (_K, _N)
        assert tensors["w2_zero"].dtype == ir.DataType.INT8 and tensors["w2_scale"].shape == (1, _N)
    assert "1 of them int8 (int8 layers: second)" in result.report.passes[0].changes
    (got,) = run(result.model, {"x": x})
    want = x @ _dequantized_with_zero_points(_W, 32) + x @ _dequantized_int8(_W[:, ::-1].copy(), 128)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_int8_blocks_are_the_largest_of_512_256_128_dividing_k():
    weight = _heavy_tailed((768, 4))
    model = _model(weight=weight)
    x = _x((2, 3, 768))
    result = _quantize(model, "ort", symmetric=False, int8_layers="MatMul", **_EXACT)
    (node,) = [node for node in result.model.graph if node.op_type == "MatMulNBits"]
    assert node.attributes["bits"].value == 8 and node.attributes["block_size"].value == 256
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, x @ _dequantized_int8(weight, 256), rtol=1e-4, atol=1e-4)


def test_an_int8_attention_or_table_takes_its_8_bit_form():
    d = 32
    weight = _RNG.standard_normal((d, 3 * d)).astype(np.float32) * 0.3
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[B, S, {d}] x) => (float[B, S, {d}] y)
          <float[{d}, {3 * d}] w = {{{_floats(weight)}}}, float[{3 * d}] b = {{{_floats(np.zeros(3 * d))}}}> {{
            y = com.microsoft.Attention<num_heads = 2>(x, w, b) }}""")
    model.graph.node[0].name = "attention"
    result = _quantize(model, "ort", int8_layers="attention")
    (projection,) = [node for node in result.model.graph if node.op_type == "MatMulNBits"]
    assert projection.attributes["bits"].value == 8
    table = _quantize(_embedding_model(), "ort", min_embedding_bytes=0, int8_layers="Gather")
    assert op_types(table.model) == ["Gather", "Gather", "Cast", "Mul"]  # int8 rows on both targets


# -- portable: DequantizeLinear ---------------------------------------------------------------

@pytest.mark.parametrize("block_size", [16, 32])
def test_portable_dequantizes_int4_blocks_before_the_matmul(block_size):
    model = _model(opset=21)
    x = _x()
    result = _quantize(model, "portable", block_size=block_size)
    assert op_types(result.model) == ["DequantizeLinear", "MatMul", "Add"]
    tensors = _initializers(result.model)
    assert tensors["w_int4"].dtype == ir.DataType.INT4 and tensors["w_int4"].shape == (_K, _N)
    assert tensors["w_scale"].shape == (-(-_K // block_size), _N)
    (got,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got, x @ _dequantized(_W, block_size) + _B, rtol=1e-4, atol=1e-5)


def test_portable_below_opset_21_converts_to_21_and_says_so_or_refuses_the_opset_asked_for():
    result = _quantize(_model(opset=18), "portable")
    assert result.model.opset_imports[""] == 21 and "DequantizeLinear" in op_types(result.model)
    assert any("converted the model from opset 18 to 21" in warning for warning in result.warnings)
    with pytest.raises(InputError, match="--opset 18: quantize_weight_only needs opset 21 or newer on --target portable"):
        graphopt.optimize(_model(opset=18), passes=["quantize_weight_only"], opset=18)
    x = _x()
    (got,) = run(result.model, {"x": x})
    (want,) = run(_quantize(_model(opset=21), "portable").model, {"x": x})  # what it gives a model at 21
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_matmuls_sharing_a_weight_share_its_int4_form(target):
    model = _model(opset=21, body="m = MatMul(x, w)\n r = Relu(x)\n n = MatMul(r, w)\n y = Add(m, n)")
    x = _x()
    result = _quantize(model, target, **_EXACT)
    assert sum(name.startswith("w_int4") for name in result.model.graph.initializers) == 1
    (got,) = run(result.model, {"x": x})
    weight = _dequantized(_W, 32)
    np.testing.assert_allclose(got, x @ weight + np.maximum(x, 0) @ weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_int4_parameters_take_an_eighth_of_float32_plus_scales(target):
    k, n = 256, 64
    weight = _heavy_tailed((k, n))
    model = _model(opset=21, weight=weight)
    result = _quantize(model, target)
    report = result.report.passes[0]
    assert report.parameter_bytes_before == k * n * 4 + n * 4
    assert report.parameter_bytes_after == k * n // 2 + (k // 32) * n * 4 + n * 4
    with_zero_points = _quantize(model, target, symmetric=False).report.passes[0]
    assert with_zero_points.parameter_bytes_after == report.parameter_bytes_after + (k // 32) * n // 2
    assert len(ir.serde.serialize_model(result.model).SerializeToString()) < model.ByteSize() / 5


# -- embedding tables -------------------------------------------------------------------------

_TABLE = _RNG.standard_normal((50, _K)).astype(np.float32) * np.linspace(0.01, 5, 50, dtype=np.float32)[:, None]


def _embedding_model() -> onnx.ModelProto:
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (int64[B, S] ids) => (float[B, S, {_K}] y) <float[50, {_K}] table = {{{_floats(_TABLE)}}}> {{
            y = Gather(table, ids) }}""")


def test_ort_gathers_int4_blocks_of_an_embedding_table():
    ids = _RNG.integers(0, 50, (2, 7)).astype(np.int64)
    result = _quantize(_embedding_model(), "ort", embedding_block_size=16, min_embedding_bytes=0, symmetric=True)
    assert op_types(result.model) == ["GatherBlockQuantized", "Cast"]
    gather = next(iter(result.model.graph))
    assert gather.attributes.get_int("block_size") == 16  # the table's own block size, not the MatMuls' 32
    tensors = _initializers(result.model)
    assert tensors["table_int4"].dtype == ir.DataType.INT4 and tensors["table_scale"].shape == (50, 3)
    assert tensors["table_scale"].dtype == ir.DataType.FLOAT16  # half the scales' bytes
    assert result.model.ir_version >= 10  # the IR version that has int4
    (got,) = run(result.model, {"ids": ids})
    assert got.dtype == np.float32
    # float16 scales and rows: within float16's precision of the float32 blocks (int4 steps are ~1/16)
    np.testing.assert_allclose(got, _dequantized(_TABLE.T, 16).T[ids], rtol=2e-3, atol=1e-6)


def test_ort_gathers_an_embedding_table_with_zero_points():
    ids = _RNG.integers(0, 50, (2, 7)).astype(np.int64)
    result = _quantize(_embedding_model(), "ort", embedding_block_size=16, min_embedding_bytes=0, symmetric=False)
    assert _initializers(result.model)["table_zero"].shape == (50, 3)
    (got,) = run(result.model, {"ids": ids})
    np.testing.assert_allclose(got, _dequantized_with_zero_points(_TABLE.T, 16).T[ids], rtol=2e-3, atol=1e-6)


def test_portable_embeddings_are_int8_rows_as_the_dynamic_pass_makes_them():
    ids = _RNG.integers(0, 50, (2, 7)).astype(np.int64)
    result = _quantize(_embedding_model(), "portable", min_embedding_bytes=0)
    assert op_types(result.model) == ["Gather", "Gather", "Cast", "Mul"]
    (got,) = run(result.model, {"ids": ids})
    np.testing.assert_allclose(got, dequantize(*symmetric_int8(_TABLE, axis=0), 0)[ids], rtol=1e-6)
    assert "1 embedding tables int8" in result.report.passes[0].changes[0]


def test_small_tables_and_embeddings_false_stay_float():
    for options in ({}, {"embeddings": False, "min_embedding_bytes": 0}):
        with pytest.raises(GuardRefused, match="nothing was quantized|quantized 0 of 1 layers"):
            _quantize(_embedding_model(), "ort", **options)
        result = graphopt.optimize(_embedding_model(), passes=[("quantize_weight_only", options)], target="ort",
                                   force=True)
        assert op_types(result.model) == ["Gather"]


# -- options ----------------------------------------------------------------------------------

def test_excluded_nodes_stay_float_with_the_reason():
    with pytest.raises(GuardRefused, match="quantized 0 of 1 layers: 1 \\(MatMul 'MatMul'\\): excluded"):
        _quantize(_model(), "ort", exclude="MatMul")
    result = graphopt.optimize(_model(), passes=[("quantize_weight_only", {"exclude": "MatMul"})], target="ort",
                               force=True)
    assert op_types(result.model) == ["MatMul", "Add"]
    assert "kept float: excluded" in result.report.passes[0].skipped[0]


@pytest.mark.parametrize("options, message", [
    ({"bits": 3}, "bits 3 is not supported"),
    ({"block_size": 24}, "block_size must be a power of two >= 16, got 24"),
    ({"block_size": 8}, "block_size must be a power of two >= 16, got 8"),
    ({"embedding_block_size": 100}, "embedding_block_size must be a power of two >= 16, got 100"),
    ({"algorithm": "hqq"}, "unknown algorithm 'hqq'"),
    ({"accuracy_level": 5}, "accuracy_level must be 0 to 4"),
    ({"exclude": "no_such_node"}, "--exclude names no node or op type"),
    ({"int8_layers": "no_such_node"}, "int8 layers names no node or op type"),
])
def test_bad_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        _quantize(_model(), "ort", **options)
