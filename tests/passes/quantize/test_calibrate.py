"""Calibrators: minmax, percentile and entropy ranges against direct numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.passes.quantize.calibrate import (
    _clipped_divergence,
    calibrated_range,
    entropy_range,
    minmax_range,
    percentile_range,
)
from graphopt.runtime.histograms import Histogram

_RNG = np.random.default_rng(2)


def test_minmax_is_the_exact_extremes_with_zero_inside():
    values = _RNG.uniform(0.5, 3.0, 1000).astype(np.float32)
    assert minmax_range(Histogram.of(values)) == (0.0, float(values.max()))  # 0 is kept in the range
    values = -values
    assert minmax_range(Histogram.of(values)) == (float(values.min()), 0.0)


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.999])
def test_percentile_brackets_numpy_within_one_bin(percentile):
    values = _RNG.standard_t(3, 200_000).astype(np.float32)  # heavy tails
    histogram = Histogram.of(values)
    low, high = percentile_range(histogram, percentile)
    ordered = np.sort(values)  # the k-th smallest holds the quantile k / n
    want_low = ordered[math.ceil(values.size * (100.0 - percentile) / 100.0) - 1]
    want_high = ordered[math.ceil(values.size * percentile / 100.0) - 1]
    assert want_high <= high <= want_high + histogram.width  # taken outward, never more than a bin
    assert want_low - histogram.width <= low <= want_low
    assert high < values.max() and low > values.min()  # the tails are cut


def test_percentile_100_is_minmax():
    values = _RNG.standard_normal(5000).astype(np.float32)
    assert percentile_range(Histogram.of(values), 100.0) == minmax_range(Histogram.of(values))


def test_divergence_of_a_small_histogram_by_hand():
    counts = np.array([4, 2, 0, 1, 1])
    # clipped after 4 bins (the tail bin folded into the last), quantized into 2 groups of 2
    p = np.array([4, 2, 0, 2]) / 8
    q = np.array([3, 3, 0, 1]) / 7  # group sums 6 and 1, spread over their non-empty bins
    want = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    assert _clipped_divergence(counts, 4, 2) == pytest.approx(want)


def test_entropy_clips_rare_outliers_and_keeps_a_uniform_range():
    bulk = _RNG.standard_normal(400_000).astype(np.float32)
    outliers = np.float32([120.0, -150.0, 200.0])
    values = np.concatenate([bulk, outliers])
    low, high = entropy_range(Histogram.of(values))
    # the Gaussian's bulk, not minmax's ±200: 2048 bins up to 200 cannot clip below 128 of them (12.5)
    assert 2.5 < high <= 16 and -16 <= low < -2.5
    assert minmax_range(Histogram.of(values)) == (-150.0, 200.0)
    uniform = _RNG.uniform(-1, 1, 400_000).astype(np.float32)
    low, high = entropy_range(Histogram.of(uniform))
    assert high > 0.95 and low < -0.95  # nothing to gain by clipping a uniform distribution


def test_entropy_of_non_negative_data_keeps_zero_as_its_low_end():
    values = np.abs(_RNG.standard_normal(200_000)).astype(np.float32)  # a ReLU's output, say
    low, high = entropy_range(Histogram.of(values))
    assert low == 0.0 and 2.0 < high <= values.max()


def test_unknown_calibrator_and_bad_percentile_are_input_errors():
    histogram = Histogram.of(np.ones(4, np.float32))
    with pytest.raises(InputError, match="--calibrator 'kl'"):
        calibrated_range(histogram, "kl")
    with pytest.raises(InputError, match="--percentile 40"):
        percentile_range(histogram, 40)
