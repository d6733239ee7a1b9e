"""Histogram: streamed over samples it is exactly the histogram of all of them; folding and merging."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.runtime.histograms import Histogram

_RNG = np.random.default_rng(11)


def _samples() -> list[np.ndarray]:
    """Zeros first (no limit yet), then growing and shrinking scales, both signs, a NaN."""
    scales = [0.0, 0.01, 0.3, 5.0, 0.2, 700.0, 1.0]
    samples = [(_RNG.standard_normal(257) * scale).astype(np.float32) for scale in scales]
    samples[3][7] = np.nan  # not counted
    return samples


def test_streamed_is_one_shot_bin_for_bin():
    samples = _samples()
    streamed = Histogram.empty(256)
    for sample in samples:
        streamed.add(sample)
    whole = np.concatenate(samples)
    once = Histogram.of(whole, bins=256)
    finite = whole[np.isfinite(whole)]
    peak = np.abs(finite).max()
    assert streamed.limit == once.limit and once.limit / 2 <= peak < once.limit  # the power of two above |x|
    assert streamed.low == once.low == finite.min() and streamed.high == once.high == finite.max()
    np.testing.assert_array_equal(streamed.counts, once.counts)
    assert streamed.total == finite.size


def test_counts_match_numpy_histogram_over_the_same_bins():
    values = (_RNG.standard_normal(10_000) * 3).astype(np.float32)
    histogram = Histogram.of(values, bins=512)
    want, _ = np.histogram(values, bins=histogram.edges())
    np.testing.assert_array_equal(histogram.counts, want)
    folded, _ = np.histogram(np.abs(values), bins=256, range=(0, histogram.limit))
    np.testing.assert_array_equal(histogram.folded(), folded)


def test_merging_two_workers_histograms_is_one_over_both():
    first, second = (_RNG.standard_normal(1000) * 0.5).astype(np.float32), (_RNG.standard_normal(500) * 40).astype(np.float32)
    merged = Histogram.of(first, bins=128)
    merged.merge(Histogram.of(second, bins=128))
    both = Histogram.of(np.concatenate([first, second]), bins=128)
    assert merged.limit == both.limit and merged.low == both.low and merged.high == both.high
    np.testing.assert_array_equal(merged.counts, both.counts)
    with pytest.raises(ValueError, match="do not merge"):
        merged.merge(Histogram.empty(64))


def test_bins_must_halve_twice():
    with pytest.raises(InputError, match="multiple of 4 bins"):
        Histogram.empty(30)
