"""Symmetric int8 arithmetic: quantizing a weight a chunk of rows at a time changes no bit."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.passes.quantize import scales
from graphopt.passes.quantize.scales import QMAX, symmetric_int8

_RNG = np.random.default_rng(0)


def _direct(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The formula on the whole tensor at once: s = max|W| / 127, q = clip(round(W / s))."""
    reduce = None if axis is None else tuple(i for i in range(weight.ndim) if i != axis % weight.ndim)
    peak = np.abs(weight).max(axis=reduce, keepdims=axis is not None, initial=0.0)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale.reshape(-1) if axis is not None else scale.reshape(())


@pytest.mark.parametrize("weight", [
    _RNG.standard_normal((37, 23)) * _RNG.uniform(0.01, 3, 23),
    _RNG.standard_normal((64, 40)).T,  # a transposed view, as a Gemm's transB weight is read
    _RNG.standard_normal((5, 3, 7)),
    np.zeros((4, 3)),
], ids=["matrix", "transposed", "3d", "zeros"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_chunked_quantization_equals_the_direct_formula(weight, axis, monkeypatch):
    monkeypatch.setattr(scales, "_CHUNK_ELEMENTS", 50)  # several chunks, the last one partial
    weight = weight.astype(np.float32)
    q, scale = symmetric_int8(weight, axis)
    want_q, want_scale = _direct(weight, axis)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(scale, want_scale)
