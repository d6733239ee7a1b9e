"""gptq_blocks: GPTQ's error-compensating int4 weights in quantize_blocks's format.

The reference for the update is the sequential form of Optimal Brain Quantization written out
with the explicit inverse Hessian (`_sequential_gptq`); the benefit is measured as the layer's
output error ‖X·W − X·Ŵ‖ on correlated inputs, against round-to-nearest.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.passes.quantize.blocks import dequantize_blocks, gptq_blocks, quantize_blocks, to_blocks

_RNG = np.random.default_rng(7)
_K, _N, _BLOCK = 80, 12, 32  # 80 = 2·32 + 16: the last block is half padding
_W = _RNG.standard_normal((_K, _N)).astype(np.float32)
_X = _RNG.standard_normal((512, _K)) @ _RNG.standard_normal((_K, _K))  # correlated input channels


def _gram(x: np.ndarray) -> np.ndarray:
    return x.T @ x / len(x)


def _output_error(x: np.ndarray, weight: np.ndarray, quantized: tuple) -> float:
    return float(np.linalg.norm(x @ weight - x @ dequantize_blocks(*quantized, weight.shape[0])))


def _sequential_gptq(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, block_size: int,
                     damp: float = 0.1) -> np.ndarray:
    """q [K, N]: channels in decreasing H_kk order, each rounded on its block's scale; its error
    moves onto the rest by −e · H⁻¹[k, rest] / H⁻¹[k, k], then k leaves H⁻¹ (Schur complement)."""
    weight = weight.astype(np.float64)
    hessian = hessian + damp * np.mean(np.diag(hessian)) * np.eye(len(hessian))
    inverse = np.linalg.inv(hessian)
    q = np.zeros_like(weight)
    rest = list(np.argsort(-np.diag(hessian), kind="stable"))
    while rest:
        k, rest = rest[0], rest[1:]
        channel_scale = scale[:, k // block_size].astype(np.float64)
        q[k] = np.clip(np.rint(weight[k] / channel_scale), -8, 7)
        error = (weight[k] - q[k] * channel_scale) / inverse[k, k]
        weight[rest] -= np.outer(inverse[rest, k], error)
        inverse[np.ix_(rest, rest)] -= np.outer(inverse[rest, k], inverse[k, rest]) / inverse[k, k]
    return q


def test_without_correlation_it_rounds_to_nearest_on_the_searched_scales():
    q, scale, zero = gptq_blocks(_W, 4.0 * np.eye(_K), _BLOCK)
    q_mse, scale_mse, _ = quantize_blocks(_W, _BLOCK, "mse", np.full(_K, 4.0))
    assert not zero.any()  # symmetric unless asked
    np.testing.assert_array_equal(scale, scale_mse)
    np.testing.assert_array_equal(q, q_mse)
    blocks = to_blocks(_W, _BLOCK)
    np.testing.assert_array_equal(q, np.clip(np.rint(blocks / scale[..., None]), -8, 7))


def test_matches_the_sequential_update_with_the_explicit_inverse_hessian():
    k = 160  # past one 128-channel chunk: the lazy update across chunks is exercised
    x = _RNG.standard_normal((1024, k)) @ _RNG.standard_normal((k, k))
    weight = _RNG.standard_normal((k, 8)).astype(np.float32)
    q, scale, _ = gptq_blocks(weight, _gram(x), _BLOCK)
    expected = _sequential_gptq(weight, _gram(x), scale, _BLOCK)
    assert np.mean(to_blocks(expected, _BLOCK) == q) > 0.99  # float32 against float64: a rare tie may flip


@pytest.mark.parametrize("symmetric", [True, False])
def test_output_error_is_well_below_round_to_nearest_on_correlated_inputs(symmetric):
    gptq_error = _output_error(_X, _W, gptq_blocks(_W, _gram(_X), _BLOCK, symmetric=symmetric))
    assert gptq_error <= 0.8 * _output_error(_X, _W, quantize_blocks(_W, _BLOCK, symmetric=symmetric))
    assert gptq_error < _output_error(_X, _W, quantize_blocks(_W, _BLOCK, "mse", np.diag(_gram(_X)), symmetric))


def test_zero_points_take_the_error_below_symmetric_gptqs():
    symmetric = _output_error(_X, _W, gptq_blocks(_W, _gram(_X), _BLOCK))
    q, scale, zero = gptq_blocks(_W, _gram(_X), _BLOCK, symmetric=False)
    assert zero.any() and zero.min() >= -8 and zero.max() <= 7
    assert _output_error(_X, _W, (q, scale, zero)) < 0.9 * symmetric


def test_format_is_quantize_blocks_with_zero_padding():
    q, scale, zero = gptq_blocks(_W, _gram(_X), _BLOCK)
    assert q.dtype == np.int8 and q.shape == (_N, 3, _BLOCK)
    assert scale.dtype == np.float32 and scale.shape == (_N, 3)
    assert q.min() >= -8 and q.max() <= 7
    np.testing.assert_array_equal(q[:, -1, _K % _BLOCK:], 0)
    blocks = to_blocks(_W, _BLOCK)
    assert np.all(scale * 7 <= np.abs(blocks).max(axis=-1) * (1 + 1e-6))  # clipped, never widened
    assert np.all(scale * 7 >= np.abs(blocks).max(axis=-1) * 0.69)
    assert dequantize_blocks(q, scale, zero, _K).shape == (_K, _N)


def test_a_dead_channel_is_zeroed_and_the_rest_still_compensates():
    x = _X.copy()
    x[:, 5] = 0.0
    quantized = gptq_blocks(_W, _gram(x), _BLOCK)
    assert np.all(np.isfinite(quantized[1]))
    np.testing.assert_array_equal(quantized[0][:, 0, 5], 0)
    assert _output_error(x, _W, quantized) <= 0.8 * _output_error(x, _W, quantize_blocks(_W, _BLOCK))
