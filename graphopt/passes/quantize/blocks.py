"""Blocked int4 (or int8) weights, with or without zero points: the arithmetic of weight-only quantization, in numpy.

A weight [K, N] is cut, for each output column n, into blocks of `block_size` consecutive
elements along K (zero-padded to whole blocks); each block holds W ≈ s · (q − z) with
q = clip(round(W / s) + z, qmin, qmax), [-8, 7] for 4 bits and [-128, 127] for 8. Symmetric
blocks take z = 0 and s = r · max|W| / qmax; asymmetric ones span the block's own range,
s = r · (max − min) / (qmax − qmin) with min ≤ 0 ≤ max and z = round(−r · min / s) + qmin (one
zero point per block: for int4, 16 levels over [min, max] instead of 15 over [−max|W|, max|W|],
about 40% less squared error for +0.5 bit per 32 weights).
Round-to-nearest takes r = 1; the error-minimizing search takes, per block, the clipping ratio r
that minimizes Σ_k c_k (W − s·(q − z))², where c weighs the input channels (mean squared
activations; 1 when unknown).

GPTQ (Frantar et al., 2022) fixes the scales first, then quantizes the input channels one at a
time, moving each channel's error onto the channels not yet quantized so that the layer's output
error ‖X·W − X·Ŵ‖ shrinks; H = XᵀX / count, the Gram matrix of the inputs X, says how.
"""

from __future__ import annotations

import numpy as np

BITS = (4, 8)
# 1.0 first: a block keeps round-to-nearest's scale unless a smaller ratio is strictly better.
CLIP_RATIOS = np.linspace(1.0, 0.7, 20, dtype=np.float32)
_GPTQ_CHUNK = 128
_CHUNK_ELEMENTS = 1 << 20  # float32 elements per column chunk


def to_blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] → [N, k_blocks, block_size]: each output column's K values in blocks, zero-padded."""
    k, n = weight.shape
    padded = np.zeros((-(-k // block_size) * block_size, n), np.float32)
    padded[:k] = weight
    return np.ascontiguousarray(padded.T).reshape(n, -1, block_size)


def levels(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of a signed `bits`-bit integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def quantize_blocks(weight: np.ndarray, block_size: int, algorithm: str = "rtn",
                    channel_weights: np.ndarray | None = None, symmetric: bool = True,
                    bits: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q int8 in levels(bits) of shape [N, k_blocks, block_size], scale float32 [N, k_blocks], zero
    int8 [N, k_blocks], all 0 when `symmetric`) for a [K, N] weight; `algorithm` is "rtn" or "mse",
    `channel_weights` a [K] weighting for "mse". Output columns are independent: a few MiB of them
    at a time, so a memory-mapped table is only read, never copied whole."""
    weight = np.asarray(weight, np.float32)
    k, n = weight.shape
    q = np.empty((n, -(-k // block_size), block_size), np.int8)
    scale = np.empty(q.shape[:2], np.float32)
    zero = np.zeros(q.shape[:2], np.int8)
    importance = None
    if algorithm == "mse":
        channels = np.ones(k, np.float32) if channel_weights is None else channel_weights
        importance = to_blocks(np.reshape(channels, (-1, 1)), block_size)[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, k))
    for start in range(0, n, step):
        columns = slice(start, start + step)
        blocks = to_blocks(weight[:, columns], block_size)
        span = _span(blocks, symmetric)
        ratio = np.float32(1.0) if importance is None else \
            best_clip_ratios(blocks, span, importance, symmetric, bits)
        scale[columns], zero[columns] = _scale(span, ratio, symmetric, bits)
        q[columns] = _round(blocks, scale[columns], zero[columns], bits)
    return q, scale, zero


def gptq_blocks(weight: np.ndarray, hessian: np.ndarray, block_size: int, damp: float = 0.1,
                symmetric: bool = True, bits: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_blocks's (q, scale, zero) for a [K, N] weight, chosen by GPTQ with the [K, K] Gram
    matrix `hessian` of the layer's inputs.

    The scales and zero points are fixed first: the "mse" search weighted by diag H, on the weight
    whose dead channels (H_kk = 0) are zeroed. Then round_with_feedback rounds the channels.
    """
    weight = np.array(weight, np.float32)
    hessian = np.array(hessian, np.float64)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[dead] = 0.0
    _, scale, zero = quantize_blocks(weight, block_size, "mse", np.diag(hessian), symmetric, bits)
    qmin, qmax = levels(bits)
    channel_scale = np.repeat(scale, block_size, axis=1).T  # [K, N]
    channel_zero = np.repeat(zero, block_size, axis=1).T.astype(np.float32)

    def rounded(channel: int, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(row / channel_scale[channel]) + channel_zero[channel], qmin, qmax)
        return q, (q - channel_zero[channel]) * channel_scale[channel]

    q = round_with_feedback(weight, hessian, damp, rounded)
    return to_blocks(q, block_size).astype(np.int8), scale, zero


def round_with_feedback(weight: np.ndarray, hessian: np.ndarray, damp: float, rounded) -> np.ndarray:
    """GPTQ's loop on a [K, N] weight: its K input channels rounded in decreasing order of H_kk (H the
    [K, K] Gram matrix of its inputs, damped by `damp` times its mean diagonal), each one's error e
    spread over the channels after it, W[j] -= e · U[k, j] / U[k, k] with U the upper Cholesky factor of
    H⁻¹ — eagerly inside a chunk of `_GPTQ_CHUNK` channels, by one product past it. `rounded(k, row)`
    gives channel k's codes and the values they stand for; the codes come back in channel order. The
    arithmetic is in `weight`'s dtype."""
    k = weight.shape[0]
    hessian = np.array(hessian, np.float64)
    hessian[np.diag_indices(k)] += damp * max(float(np.mean(np.diag(hessian))), 1e-30)
    order = np.argsort(-np.diag(hessian), kind="stable")
    weight, hessian = weight[order], hessian[np.ix_(order, order)]
    inverse_factor = np.linalg.cholesky(np.linalg.inv(hessian)).T.astype(weight.dtype)
    codes = None
    for start in range(0, k, _GPTQ_CHUNK):
        stop = min(start + _GPTQ_CHUNK, k)
        chunk, factor = weight[start:stop], inverse_factor[start:stop, start:stop]
        errors = np.empty_like(chunk)
        for i in range(stop - start):
            code, value = rounded(int(order[start + i]), chunk[i])
            if codes is None:
                codes = np.empty((k, *code.shape), code.dtype)
            codes[start + i] = code
            errors[i] = (chunk[i] - value) / factor[i, i]
            chunk[i + 1:] -= np.outer(factor[i, i + 1:], errors[i])
        weight[stop:] -= inverse_factor[start:stop, stop:].T @ errors
    return codes[np.argsort(order)]


def best_clip_ratios(blocks: np.ndarray, span: tuple[np.ndarray, np.ndarray], importance: np.ndarray,
                     symmetric: bool = True, bits: int = 4) -> np.ndarray:
    """Per block, the ratio of CLIP_RATIOS whose scale reconstructs it with the least weighted
    squared error; `importance` [k_blocks, block_size] weighs the elements of every column's blocks."""
    best_ratio = np.ones(span[0].shape, np.float32)
    best_error = np.full(span[0].shape, np.inf, np.float32)
    for ratio in CLIP_RATIOS:
        scale, zero = _scale(span, ratio, symmetric, bits)
        error = block_error(blocks, _round(blocks, scale, zero, bits), scale, zero, importance)
        better = error < best_error
        best_ratio[better], best_error[better] = ratio, error[better]
    return best_ratio


def block_error(blocks: np.ndarray, q: np.ndarray, scale: np.ndarray, zero: np.ndarray,
                importance: np.ndarray) -> np.ndarray:
    """Σ importance · (W − s·(q − z))² of every block: [N, k_blocks]."""
    residual = blocks - (q - zero[..., None].astype(np.float32)) * scale[..., None]
    return np.einsum("nkb,nkb,kb->nk", residual, residual, importance)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, k: int) -> np.ndarray:
    """The float [K, N] weight that blocks s · (q − z) stand for (padding dropped)."""
    n = q.shape[0]
    values = (q.astype(np.float32) - zero[..., None].astype(np.float32)) * scale[..., None]
    return values.reshape(n, -1)[:, :k].T


def pack_unsigned(q: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' storage: int4 packed two per byte (pack_uint4), int8 as q + 128 in uint8 (the
    zero point it assumes when given none is 2^(bits-1), so a symmetric block stores z = 0)."""
    if bits == 4:
        return pack_uint4(q)
    return (q.astype(np.int16) + 128).astype(np.uint8)


def pack_uint4(q: np.ndarray) -> np.ndarray:
    """Two int4 values per byte along the last axis, low nibble first, stored as q + 8 (the zero
    point MatMulNBits assumes when it is given none; zero points are packed the same way); the
    last axis is padded to even length with zero."""
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), q.dtype)], axis=-1)
    unsigned = (q.astype(np.int16) + 8).astype(np.uint8)
    return unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)


def _span(blocks: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) each block's values must reach: ±max|W| when symmetric, else [min, max] around 0."""
    if symmetric:
        peak = np.abs(blocks).max(axis=-1)
        return -peak, peak
    return np.minimum(blocks.min(axis=-1), 0.0), np.maximum(blocks.max(axis=-1), 0.0)


def _scale(span: tuple[np.ndarray, np.ndarray], ratio, symmetric: bool, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) covering ratio · span: r · max|W| / qmax with zero 0 when symmetric, else
    r · (high − low) / (qmax − qmin) with its zero point; an all-zero block gets scale 1."""
    low, high = span
    qmin, qmax = levels(bits)
    if symmetric:
        return np.where(high > 0, high * ratio / qmax, 1.0).astype(np.float32), np.zeros(high.shape, np.int8)
    width = (high - low) * ratio
    scale = np.where(width > 0, width / (qmax - qmin), 1.0).astype(np.float32)
    zero = np.clip(np.rint(-low * ratio / scale) + qmin, qmin, qmax).astype(np.int8)
    return scale, zero


def _round(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], *levels(bits)).astype(np.int8)
