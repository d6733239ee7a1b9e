"""Symmetric int8 weights: the quantization arithmetic, in numpy, shared by the quantizers.

W ≈ s · q with q = round(W / s) clipped to [-127, 127] and s = max|W| / 127, over the whole
tensor or per output channel; -128 stays unused so that q and -q are both representable
(the kernels' u8 · s8 products then never leave int16 range in pairs on AVX2).
"""

from __future__ import annotations

import numpy as np

QMAX = 127
# Rows are quantized a few MiB at a time: the float temporaries of round(W / s) stay that small
# however large W is (a memory-mapped weight is only read).
_CHUNK_ELEMENTS = 1 << 20


def symmetric_int8(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(q int8, scale float32): one scale for the tensor (axis None) or one per index of `axis`.
    A channel of zeros gets scale 1 (any scale represents it exactly)."""
    weight = np.asarray(weight, dtype=np.float32)
    shape = weight.shape
    weight = weight.reshape(1) if weight.ndim == 0 else weight
    axis = None if axis is None else axis % weight.ndim
    step = _chunk_rows(weight)
    parts = [slice(start, start + step) for start in range(0, max(len(weight), 1), step)]
    reduce = tuple(index for index in range(weight.ndim) if index != axis)
    peaks = [np.abs(weight[part]).max(axis=reduce, keepdims=True, initial=0.0) for part in parts]
    peak = np.concatenate(peaks) if axis == 0 else np.maximum.reduce(peaks)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    q = np.empty(weight.shape, np.int8)
    for part in parts:
        scaled = weight[part] / (scale[part] if axis == 0 else scale)
        np.rint(scaled, out=scaled)
        q[part] = np.clip(scaled, -QMAX, QMAX, out=scaled)
    return q.reshape(shape), (scale.reshape(-1) if axis is not None else scale.reshape(()))


def _chunk_rows(weight: np.ndarray) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, weight[:1].size))


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """The float weights q · s stands for (for tests and error estimates)."""
    if axis is None:
        return q.astype(np.float32) * scale
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)
