"""Symmetric int8 weights: the quantization arithmetic, in numpy, shared by the quantizers.

W ≈ s · q with q = round(W / s) clipped to [-127, 127] and s = max|W| / 127, over the whole
tensor or per output channel; -128 stays unused so that q and -q are both representable
(the kernels' u8 · s8 products then never leave int16 range in pairs on AVX2).
"""

from __future__ import annotations

import numpy as np

QMAX = 127


def symmetric_int8(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(q int8, scale float32): one scale for the tensor (axis None) or one per index of `axis`.
    A channel of zeros gets scale 1 (any scale represents it exactly)."""
    weight = np.asarray(weight, dtype=np.float32)
    if axis is None:
        peak = np.abs(weight).max(initial=0.0)
    else:
        reduce = tuple(index for index in range(weight.ndim) if index != axis % weight.ndim)
        peak = np.abs(weight).max(axis=reduce, keepdims=True, initial=0.0)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -QMAX, QMAX).astype(np.int8)
    return q, (scale.reshape(-1) if axis is not None else scale.reshape(()))


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """The float weights q · s stands for (for tests and error estimates)."""
    if axis is None:
        return q.astype(np.float32) * scale
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)
