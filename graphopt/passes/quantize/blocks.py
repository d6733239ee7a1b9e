"""Blocked symmetric int4 weights: the arithmetic of weight-only quantization, in numpy.

A weight [K, N] is cut, for each output column n, into blocks of `block_size` consecutive
elements along K (zero-padded to whole blocks); each block holds W ≈ s · q with
q = clip(round(W / s), -8, 7) and s = r · max|W| / 7. Round-to-nearest takes r = 1; the
error-minimizing search takes, per block, the clipping ratio r that minimizes Σ_k c_k (W − s·q)²,
where c weighs the input channels (mean squared activations; 1 when unknown).

GPTQ (Frantar et al., 2022) fixes the scales first, then quantizes the input channels one at a
time, moving each channel's error onto the channels not yet quantized so that the layer's output
error ‖X·W − X·Ŵ‖ shrinks; H = XᵀX / count, the Gram matrix of the inputs X, says how.
"""

from __future__ import annotations

import numpy as np

QMIN, QMAX = -8, 7
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


def quantize_int4(weight: np.ndarray, block_size: int, algorithm: str = "rtn",
                  channel_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 in [-8, 7] of shape [N, k_blocks, block_size], scale float32 [N, k_blocks]) for a
    [K, N] weight; `algorithm` is "rtn" or "mse", `channel_weights` a [K] weighting for "mse".
    Output columns are independent: a few MiB of them at a time, so a memory-mapped table is
    only read, never copied whole."""
    weight = np.asarray(weight, np.float32)
    k, n = weight.shape
    q = np.empty((n, -(-k // block_size), block_size), np.int8)
    scale = np.empty(q.shape[:2], np.float32)
    importance = None
    if algorithm == "mse":
        channels = np.ones(k, np.float32) if channel_weights is None else channel_weights
        importance = to_blocks(np.reshape(channels, (-1, 1)), block_size)[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, k))
    for start in range(0, n, step):
        columns = slice(start, start + step)
        blocks = to_blocks(weight[:, columns], block_size)
        peak = np.abs(blocks).max(axis=-1)
        ratio = np.float32(1.0) if importance is None else best_clip_ratios(blocks, peak, importance)
        scale[columns] = _scale(peak, ratio)
        q[columns] = _round(blocks, scale[columns])
    return q, scale


def gptq_int4(weight: np.ndarray, hessian: np.ndarray, block_size: int,
              damp: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """quantize_int4's (q, scale) for a [K, N] weight, chosen by GPTQ with the [K, K] Gram matrix
    `hessian` of the layer's inputs.

    The scales are fixed first: the "mse" search weighted by diag H, on the weight whose dead
    channels (H_kk = 0) are zeroed. Then the channels are rounded in decreasing order of H_kk, and
    each one's error e (per output column) updates the channels after it by
    W[j] -= e · U[k, j] / U[k, k], U the upper Cholesky factor of H⁻¹ (H damped by `damp` times its
    mean diagonal). Updates are applied `_GPTQ_CHUNK` channels at a time, eagerly inside a chunk
    and by one product past it.
    """
    weight = np.array(weight, np.float32)
    k = weight.shape[0]
    hessian = np.array(hessian, np.float64)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[dead] = 0.0
    _, scale = quantize_int4(weight, block_size, "mse", np.diag(hessian))
    hessian[np.diag_indices(k)] += damp * np.mean(np.diag(hessian))

    order = np.argsort(-np.diag(hessian), kind="stable")
    weight, hessian = weight[order], hessian[np.ix_(order, order)]
    channel_scale = np.repeat(scale, block_size, axis=1)[:, order].T
    inverse_factor = np.linalg.cholesky(np.linalg.inv(hessian)).T.astype(np.float32)
    q = np.empty_like(weight)
    for start in range(0, k, _GPTQ_CHUNK):
        stop = min(start + _GPTQ_CHUNK, k)
        chunk, factor = weight[start:stop], inverse_factor[start:stop, start:stop]
        errors = np.empty_like(chunk)
        for i in range(stop - start):
            q[start + i] = np.clip(np.rint(chunk[i] / channel_scale[start + i]), QMIN, QMAX)
            errors[i] = (chunk[i] - q[start + i] * channel_scale[start + i]) / factor[i, i]
            chunk[i + 1:] -= np.outer(factor[i, i + 1:], errors[i])
        weight[stop:] -= inverse_factor[start:stop, stop:].T @ errors
    return to_blocks(q[np.argsort(order)], block_size).astype(np.int8), scale


def best_clip_ratios(blocks: np.ndarray, peak: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Per block, the ratio of CLIP_RATIOS whose scale reconstructs it with the least weighted
    squared error; `importance` [k_blocks, block_size] weighs the elements of every column's blocks."""
    best_ratio = np.ones(peak.shape, np.float32)
    best_error = np.full(peak.shape, np.inf, np.float32)
    for ratio in CLIP_RATIOS:
        scale = _scale(peak, ratio)
        error = block_error(blocks, _round(blocks, scale), scale, importance)
        better = error < best_error
        best_ratio[better], best_error[better] = ratio, error[better]
    return best_ratio


def block_error(blocks: np.ndarray, q: np.ndarray, scale: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Σ importance · (W − s·q)² of every block: [N, k_blocks]."""
    residual = blocks - q * scale[..., None]
    return np.einsum("nkb,nkb,kb->nk", residual, residual, importance)


def dequantize_int4(q: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    """The float [K, N] weight that blocks q · s stand for (padding dropped)."""
    n = q.shape[0]
    return (q.astype(np.float32) * scale[..., None]).reshape(n, -1)[:, :k].T


def pack_uint4(q: np.ndarray) -> np.ndarray:
    """Two int4 values per byte along the last axis, low nibble first, stored as q + 8 (the zero
    point MatMulNBits assumes when it is given none); the last axis must be even."""
    unsigned = (q.astype(np.int16) - QMIN).astype(np.uint8)
    return unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)


def _scale(peak: np.ndarray, ratio) -> np.ndarray:
    """r · max|W| / 7 per block; an all-zero block gets scale 1 (any scale holds it exactly)."""
    return np.where(peak > 0, peak * ratio / QMAX, 1.0).astype(np.float32)


def _round(blocks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(blocks / scale[..., None]), QMIN, QMAX).astype(np.int8)
